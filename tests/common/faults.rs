//! A fault-injecting HTTP proxy of our own, for tests: it sits between the engine and a real
//! server and, for a seeded share of requests, answers 500, answers 429 with Retry-After, or resets
//! the connection instead of forwarding; it can also delay requests it forwards. It logs, per
//! request, the call id found in the body and what it did, so tests can check retries and billing.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Forwarded,
    Http500,
    Http429,
    Reset,
}

#[derive(Clone)]
pub struct Faults {
    /// Share of requests that fail (split evenly between 500, 429 and reset).
    pub fail: f64,
    /// Share of forwarded requests that are delayed, and by how much.
    pub delay: f64,
    pub delay_by: Duration,
    pub seed: u64,
}

pub struct FaultProxy {
    pub port: u16,
    /// (marker found in the request body, what the proxy did).
    pub log: Arc<Mutex<Vec<(String, Fate)>>>,
}

/// Starts the proxy in front of `upstream` on the current runtime.
pub async fn start(upstream: u16, faults: Faults, marker: &'static str) -> FaultProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(faults.seed)));
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (faults, log, rng) = (faults.clone(), l.clone(), rng.clone());
            tokio::spawn(serve(client, upstream, faults, log, rng, marker));
        }
    });
    FaultProxy { port, log }
}

/// Reads one HTTP/1.1 request or response (headers and a Content-Length body).
async fn read_message(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf);
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: u16,
    faults: Faults,
    log: Arc<Mutex<Vec<(String, Fate)>>>,
    rng: Arc<Mutex<SmallRng>>,
    marker: &'static str,
) {
    while let Some(request) = read_message(&mut client).await {
        let text = String::from_utf8_lossy(&request);
        let id = text
            .find(marker)
            .map(|i| {
                text[i..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '-')
                    .collect::<String>()
            })
            .unwrap_or_default();
        let (fate, delayed) = {
            let mut r = rng.lock();
            let fate = if r.random::<f64>() < faults.fail {
                match r.random_range(0..3) {
                    0 => Fate::Http500,
                    1 => Fate::Http429,
                    _ => Fate::Reset,
                }
            } else {
                Fate::Forwarded
            };
            (fate, r.random::<f64>() < faults.delay)
        };
        log.lock().push((id, fate));
        let reply: Vec<u8> = match fate {
            Fate::Reset => {
                // Abort with RST instead of FIN. A zero linger does not block on drop, which is
                // what the deprecation warns about.
                #[allow(deprecated)]
                let _ = client.set_linger(Some(Duration::ZERO));
                return;
            }
            Fate::Http500 => b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 12\r\n\r\ninjected 500".to_vec(),
            Fate::Http429 => {
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0.05\r\nContent-Length: 12\r\n\r\ninjected 429".to_vec()
            }
            Fate::Forwarded => {
                if delayed {
                    tokio::time::sleep(faults.delay_by).await;
                }
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                if up.write_all(&request).await.is_err() {
                    return;
                }
                match read_message(&mut up).await {
                    Some(r) => r,
                    None => return,
                }
            }
        };
        if client.write_all(&reply).await.is_err() {
            return;
        }
    }
}
