//! With the `otlp` feature, `tutti run` exports its spans to the collector the standard OTEL
//! variables name: a real HTTP server on loopback receives them (http/protobuf).
//! `cargo test --features otlp --test otlp`.
#![cfg(feature = "otlp")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::*;

/// Every request a collector received: its path and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Accepts OTLP exports on loopback.
fn collector() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut request = String::new();
                if reader.read_line(&mut request).unwrap_or(0) == 0 {
                    break;
                }
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                keep.lock().unwrap().push((path, body));
                stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    )
                    .unwrap();
            }
        }
    });
    (port, seen)
}

#[test]
fn spans_of_a_run_reach_the_otlp_collector() {
    let (port, seen) = collector();
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    write_tasks(&tasks, 5);
    let out = dir.path().join("out.parquet");
    let (o, err) = run(
        tutti_run(&tasks, &out, &repo("configs/toolorchestra-sim.toml")).env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
    );
    assert!(o.status.success(), "{err}");
    let seen = seen.lock().unwrap();
    assert!(
        !seen.is_empty(),
        "the spans were exported before the command ended"
    );
    assert!(seen.iter().all(|(path, _)| path == "/v1/traces"));
    let bodies: Vec<u8> = seen.iter().flat_map(|(_, b)| b.clone()).collect();
    for name in [
        "tutti.job",
        "tutti.episode",
        "tutti.turn",
        "tutti.call",
        "task-4",
    ] {
        assert!(
            bodies.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name} was exported"
        );
    }
}
