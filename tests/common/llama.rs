//! A real llama-server for tests: found where scripts/setup-llama-server.sh installs it (and .ci/run
//! runs that script); outside CI a test skips, saying why, when it is missing.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tutti_engine::Config;

use super::repo;

pub fn cache_dir() -> PathBuf {
    std::env::var_os("TUTTI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tutti"))
}

/// The server binary and model, or why the test cannot run.
pub fn installed() -> Option<(PathBuf, PathBuf)> {
    let server = cache_dir().join("llama-server/bin/llama-server");
    let model = cache_dir().join("models/gemma-3-270m-Q4_K_M.gguf");
    if server.exists() && model.exists() {
        return Some((server, model));
    }
    let why = format!(
        "{} or {} is missing; run scripts/setup-llama-server.sh",
        server.display(),
        model.display()
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install llama-server: {why}"
    );
    eprintln!("skipped: {why}");
    None
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running llama-server, stopped on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_server() -> Option<Server> {
    let (bin, model) = installed()?;
    let port = free_port();
    let child = Command::new(bin)
        .args(["-m"])
        .arg(model)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "-np",
            "4",
            "-c",
            "8192",
            "-t",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200")
        });
        if ok {
            return Some(server);
        }
        assert!(
            Instant::now() < deadline,
            "llama-server did not become healthy"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `openai` backend of `configs/local-openai.toml`, on the server at `port`.
pub fn backend_config(api: &str, port: u16) -> tutti_engine::config::OpenAiBackendConfig {
    let text = std::fs::read_to_string(repo("configs/local-openai.toml")).unwrap();
    let mut cfg = Config::parse(&text, "local-openai.toml").unwrap();
    let tutti_engine::config::BackendSettings::Openai(mut b) = cfg.backends.remove(0).settings
    else {
        panic!("the first backend of local-openai.toml is an `openai` one");
    };
    b.endpoint = Some(format!("http://127.0.0.1:{port}/v1"));
    b.endpoint_env = None;
    b.api = if api == "chat" {
        tutti_engine::config::OpenAiApi::Chat
    } else {
        tutti_engine::config::OpenAiApi::Completions
    };
    b.generation.max_tokens = 8;
    b
}
