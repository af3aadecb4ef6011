//! Against a real OpenAI-compatible server on loopback that nobody here wrote: llama.cpp's
//! `llama-server` serving the reference GGUF (installed by scripts/setup-llama-server.sh, which
//! .ci/run runs). Outside CI the tests skip, saying why, when the server or model is missing.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::llama;
use common::*;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tutti_engine::Ledger;
use tutti_engine::OpenAiBackend;
use tutti_engine::{Backend, Request};

/// A TCP proxy that counts the HTTP requests it forwards (by their request lines).
async fn counting_proxy(upstream: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = cr.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        let chunk = &buf[..n];
                        let posts = chunk.windows(6).filter(|w| w == b"POST /").count();
                        c.fetch_add(posts, Ordering::SeqCst);
                        if sw.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (port, count)
}

fn requests(n: usize) -> Vec<Request> {
    (0..n)
        .map(|i| Request {
            tool: "answer".into(),
            model: "gemma-3-270m".into(),
            prompt: format!("What is {i} + 2?"),
            max_tokens: 8,
            temperature: 0.0,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_completions_are_one_http_request_and_chat_calls_are_one_each() {
    let Some(server) = llama::start_server() else {
        return;
    };
    let (proxy, posts) = counting_proxy(server.port).await;
    let ledger = Arc::new(Ledger::new(&["local".into()]));

    let batch = OpenAiBackend::new(
        "local",
        &llama::backend_config("completions", proxy),
        ledger.clone(),
        0,
    )
    .unwrap();
    let answers: Vec<_> = batch.call_batch(requests(3)).collect().await;
    assert_eq!(answers.len(), 3);
    for (_, r) in &answers {
        let r = r.as_ref().expect("a completion");
        assert!(
            r.input_tokens > 0 && r.output_tokens > 0,
            "usage is billed: {r:?}"
        );
    }
    assert_eq!(
        posts.load(Ordering::SeqCst),
        1,
        "one /v1/completions request for the batch"
    );

    let chat =
        OpenAiBackend::new("local", &llama::backend_config("chat", proxy), ledger, 0).unwrap();
    let answers: Vec<_> = chat.call_batch(requests(3)).collect().await;
    assert!(answers
        .iter()
        .all(|(_, r)| r.as_ref().is_ok_and(|r| r.output_tokens > 0)));
    assert_eq!(posts.load(Ordering::SeqCst), 4, "one chat request per call");
}

#[test]
fn local_openai_config_runs_the_example_with_real_tool_calls() {
    let Some(server) = llama::start_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("index");
    let (o, err) = run(tutti()
        .arg("index")
        .arg(repo("examples/corpus/python-stdlib.jsonl"))
        .arg("-o")
        .arg(&index));
    assert!(o.status.success(), "{err}");
    let config = dir.path().join("local.toml");
    let text = std::fs::read_to_string(repo("configs/local-openai.toml"))
        .unwrap()
        .replace(
            "index = \"../.tutti/index\"",
            &format!("index = {:?}", index.display().to_string()),
        );
    // Grade with a model, as ToolOrchestra does.
    let text = format!("{text}\n[grading]\njudge = \"answer-2\"\n");
    std::fs::write(&config, text).unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(repo("examples/tasks.jsonl"))
        .unwrap()
        .lines()
        .take(6)
        .map(String::from)
        .collect();
    std::fs::write(&tasks, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("out.parquet");
    let (o, err) = run(tutti_run(&tasks, &out, &config).arg("--json").env(
        "TUTTI_OPENAI_BASE_URL",
        format!("http://127.0.0.1:{}/v1", server.port),
    ));
    assert!(o.status.success(), "{err}");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["rows"], 6);
    let ledger = &summary["ledger"];
    assert!(ledger["billed_calls"].as_u64().unwrap() >= 1, "{summary}");
    assert!(ledger["orchestrator_tokens"].as_u64().unwrap() > 0);
    assert!(ledger["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(
        ledger["tasks"]["failed"], 0,
        "every tool call is valid under the grammar: {summary}"
    );
    assert_eq!(result_ids(&out).len(), 6);
    let results = tutti_engine::io::read_results(&out).unwrap();
    for r in results
        .iter()
        .filter(|r| r.status == tutti_engine::Status::Answered)
    {
        let last = r.calls.last().expect("an answered task made calls");
        assert_eq!(
            &*last.tool, "judge",
            "the judge graded {}: {:?}",
            r.id, r.calls
        );
        assert!(r.correct.is_some());
    }
}
