//! Fault injection between the engine and a real llama-server: retries with backoff bill nothing
//! twice and are counted; with the server down the breaker opens and the fallback alias serves.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::faults::{self, Fate, Faults};
use common::llama as support;
use futures::StreamExt;
use tutti_engine::Ledger;
use tutti_engine::OpenAiBackend;
use tutti_engine::{Backend, Request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_through_twenty_percent_failures() {
    let Some(server) = support::start_server() else {
        return;
    };
    let faults = Faults {
        fail: 0.2,
        delay: 0.05,
        delay_by: Duration::from_millis(100),
        seed: 11,
    };
    let proxy = faults::start(server.port, faults, "call-").await;
    let ledger = Arc::new(Ledger::new(&["local".into()]));
    let mut cfg = support::backend_config("chat", proxy.port);
    cfg.retries = 4;
    cfg.retry_base_ms = 10;
    cfg.generation.max_tokens = 1;
    let backend = OpenAiBackend::new("local", &cfg, ledger.clone(), 0).unwrap();

    let mut ok = 0;
    let mut failed = Vec::new();
    for chunk in 0..20 {
        let reqs: Vec<Request> = (0..50)
            .map(|i| Request {
                tool: "answer".into(),
                model: "gemma-3-270m".into(),
                prompt: format!("call-{:04} What is 2 + 2?", chunk * 50 + i),
                max_tokens: 1,
                temperature: 0.0,
            })
            .collect();
        let answers: Vec<_> = backend.call_batch(reqs.clone()).collect().await;
        assert_eq!(answers.len(), 50);
        for (i, r) in answers {
            match r {
                Ok(_) => ok += 1,
                Err(_) => failed.push(format!("call-{:04}", chunk * 50 + i)),
            }
        }
    }
    let log = proxy.log.lock().clone();
    let mut attempts: HashMap<String, Vec<Fate>> = HashMap::new();
    for (id, fate) in log {
        attempts.entry(id).or_default().push(fate);
    }
    assert_eq!(attempts.len(), 1000, "every call reached the proxy");
    for (id, fates) in &attempts {
        let forwarded = fates.iter().filter(|f| **f == Fate::Forwarded).count();
        assert!(
            forwarded <= 1,
            "{id} reached the server {forwarded} times: billed twice"
        );
        if forwarded == 1 {
            assert_eq!(
                fates.last(),
                Some(&Fate::Forwarded),
                "{id}: no retry after a success"
            );
        } else {
            assert_eq!(
                fates.len(),
                5,
                "{id} failed before its retry budget (1 + 4 retries) ran out"
            );
            assert!(failed.contains(id));
        }
    }
    assert_eq!(ok + failed.len(), 1000);
    let total: usize = attempts.values().map(Vec::len).sum();
    let retries = ledger.summary().backends[0].retries;
    assert_eq!(retries as usize, total - 1000, "every retry is counted");
    assert!(
        retries > 150,
        "about a fifth of 1,000 calls were retried: {retries}"
    );
    eprintln!(
        "1,000 calls: {ok} ok, {} failed after 5 tries, {retries} retries",
        failed.len()
    );
}

#[test]
fn with_the_server_down_the_breaker_opens_and_the_fallback_serves() {
    let Some(server) = support::start_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = std::fs::read_to_string(common::repo("configs/local-openai.toml")).unwrap();
    let template = &local[local.find("chat_template = '''").unwrap()..];
    let template = &template[..template[20..].find("'''").unwrap() + 23];
    let down = support::free_port(); // nothing listens there
    let url = |port: u16| format!("http://127.0.0.1:{port}/v1");
    let config = format!(
        r#"
[orchestrator]
executor = "openai"
endpoint = "{orchestrator}"
api = "completions"
grammar = true
{template}
max_turns = 4
max_seqs = 4
max_tokens = 48
temperature = 0.0

[[tools]]
name = "answer"
aliases = ["answer-1"]

[aliases]
answer-1 = "primary"
backup-answer = "backup"

[[backends]]
name = "primary"
kind = "openai"
endpoint = "{primary}"
retries = 0
breaker_failures = 2
breaker_cooldown_ms = 600000
fallback = "backup-answer"
max_tokens = 8
max_concurrency = 1
max_batch = 1

[[backends]]
name = "backup"
kind = "openai"
endpoint = "{backup}"
max_tokens = 8
"#,
        orchestrator = url(server.port),
        primary = url(down),
        backup = url(server.port),
    );
    let cfg = dir.path().join("fallback.toml");
    std::fs::write(&cfg, config).unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    common::write_tasks(&tasks, 6);
    let out = dir.path().join("out.parquet");
    let (o, err) = common::run(
        common::tutti()
            .arg("run")
            .arg(&tasks)
            .arg("-o")
            .arg(&out)
            .arg("--config")
            .arg(&cfg)
            .arg("--json"),
    );
    assert!(o.status.success(), "{err}");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let backends = summary["ledger"]["backends"].as_array().unwrap();
    let primary = &backends[0];
    let backup = &backends[1];
    assert_eq!(primary["backend"], "primary");
    assert!(primary["breaker_opens"].as_u64().unwrap() >= 1, "{summary}");
    assert!(primary["fallbacks"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(
        primary["sent"], 2,
        "two failures opened the breaker, nothing was sent after: {summary}"
    );
    assert_eq!(primary["failures"], 2);
    assert!(
        backup["sent"].as_u64().unwrap() >= 1,
        "the fallback served: {summary}"
    );
    assert!(
        summary["ledger"]["tasks"]["answered"].as_u64().unwrap() >= 4,
        "{summary}"
    );
}
