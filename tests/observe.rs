//! What a user watches a job with: the Prometheus metrics (parsed with the reference Python
//! parser, matched exactly against the job's own results) and the live job page (in headless
//! Chromium, asserted on its DOM).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::server::{batches, wait_for, Server};
use common::*;
use serde_json::Value;
use tutti_engine::{Status, Task};

/// `n` tasks whose prompts repeat every 40 tasks: repeated calls, so the cache and the collapsing
/// of identical calls in flight both have work.
fn repeating_tasks(n: usize) -> Vec<Task> {
    (0..n)
        .map(|i| Task {
            id: format!("task-{i}"),
            prompt: format!("What is {} + 3?", i % 40),
            ..Default::default()
        })
        .collect()
}

/// A plain HTTP/1.1 GET on loopback; the body, after checking the status is 200.
fn get(base: &str, path: &str) -> String {
    let addr = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut s = TcpStream::connect(&addr).expect("connect to the HTTP server");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// The samples of an exposition, parsed by prometheus_client's parser.
fn parse(exposition: &str) -> Vec<(String, Value, f64)> {
    let mut child = Command::new("python3")
        .arg(repo("tests/python/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the exposition does not parse: {}\n{exposition}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["labels"].clone(),
                s["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(samples: &[(String, Value, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[k] == *v))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        .2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_during_and_after_a_job_match_its_final_ledger() {
    if !python_imports("import prometheus_client", "prometheus-client") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = server_config(dir.path());
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = server.metrics_url.clone().expect("the metrics address");
    let mut client = server.client(None).await;
    let n = 600;
    let job = client
        .submit(b"{}", batches(&repeating_tasks(n), 200))
        .await
        .unwrap();

    // During the job: the exposition parses, and counts only grow.
    let info = wait_for(&mut client, &job, |i| i.status["rows"].as_u64() > Some(0)).await;
    let first = parse(&get(&metrics, "/metrics"));
    let finished = |s: &[(String, Value, f64)]| -> f64 {
        s.iter()
            .filter(|(name, _, _)| name == "tutti_tasks_finished_total")
            .map(|x| x.2)
            .sum()
    };
    assert_eq!(
        sample(&first, "tutti_job_tasks", &[("job", &job)]),
        n as f64
    );
    let done_first = sample(&first, "tutti_job_tasks_done", &[("job", &job)]);
    assert!(done_first >= info.status["rows"].as_f64().unwrap());
    assert!(finished(&first) >= done_first && finished(&first) <= n as f64);

    wait_for(&mut client, &job, |i| i.status["state"] == "done").await;
    let last = parse(&get(&metrics, "/metrics"));
    assert!(finished(&last) >= finished(&first));

    // After it: the counters are the job's ledger, as its results record it.
    let out = dir.path().join("results.parquet");
    let (o, err) = run(tutti()
        .args(["results", &job, "--server", &server.url, "-o"])
        .arg(&out));
    assert!(o.status.success(), "{err}");
    let rows = tutti_engine::io::read_results(&out).unwrap();
    assert_eq!(rows.len(), n);
    for status in Status::ALL {
        let want = rows.iter().filter(|r| r.status == status).count() as f64;
        let got = sample(
            &last,
            "tutti_tasks_finished_total",
            &[("status", status.as_str())],
        );
        assert_eq!(got, want, "tasks {}", status.as_str());
    }
    let calls: Vec<_> = rows.iter().flat_map(|r| &r.calls).collect();
    let billed = calls.iter().filter(|c| !c.cached).count() as f64;
    let unbilled = calls.iter().filter(|c| c.cached).count() as f64;
    assert_eq!(sample(&last, "tutti_calls_billed_total", &[]), billed);
    let hits = sample(&last, "tutti_cache_hits_total", &[]);
    let joined = sample(&last, "tutti_calls_joined_total", &[]);
    assert!(hits > 0.0, "repeated prompts hit the cache");
    assert_eq!(hits + joined, unbilled);
    let tokens: i64 = rows.iter().map(|r| r.orchestrator_tokens).sum();
    assert_eq!(
        sample(&last, "tutti_orchestrator_tokens_total", &[]),
        tokens as f64
    );
    let turns: i32 = rows.iter().map(|r| r.turns).sum();
    assert_eq!(sample(&last, "tutti_turns_total", &[]), turns as f64);
    let spent: f64 = rows.iter().map(|r| r.cost_usd).sum();
    let metric_spent = sample(&last, "tutti_spent_usd_total", &[]);
    assert!(
        (metric_spent - spent).abs() <= 1e-9 * spent.max(1.0),
        "{metric_spent} vs {spent}"
    );
    for (alias, want) in per_alias(&rows) {
        assert_eq!(
            sample(&last, "tutti_alias_calls_total", &[("alias", &alias)]),
            want as f64
        );
    }
    assert_eq!(
        sample(&last, "tutti_job_tasks_done", &[("job", &job)]),
        n as f64
    );
    assert_eq!(sample(&last, "tutti_jobs", &[("state", "done")]), 1.0);
    assert_eq!(sample(&last, "tutti_tasks_live", &[]), 0.0);
    let steps = sample(&last, "tutti_decode_batch_size_count", &[]);
    assert!(steps > 0.0);
    assert_eq!(
        sample(&last, "tutti_decode_batch_size_bucket", &[("le", "+Inf")]),
        steps
    );
}

fn per_alias(rows: &[tutti_engine::TaskResult]) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for c in rows.iter().flat_map(|r| &r.calls) {
        *m.entry(c.alias.to_string()).or_default() += 1;
    }
    m
}

/// The simulated catalog, slowed so a job lasts a few seconds.
fn server_config(dir: &Path) -> PathBuf {
    sim_config(dir, 0.003, 64)
}

#[test]
fn tutti_run_serves_metrics_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    write_tasks(&tasks, 50);
    let out = dir.path().join("out.parquet");
    let (o, err) = run(
        tutti_run(&tasks, &out, &repo("configs/toolorchestra-sim.toml"))
            .args(["--metrics-listen", "127.0.0.1:0"]),
    );
    assert!(o.status.success(), "{err}");
    assert!(err.contains("tutti: metrics on http://127.0.0.1:"), "{err}");
    assert_eq!(result_ids(&out).len(), 50);
}

/// Headless Chromium as the environment's notes start it: no sandbox (root), no GPU, no
/// background networking (the machine's network is closed), a fresh profile.
fn chromium(profile: &Path) -> Option<Command> {
    let bin = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(bin) = bin else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium (apt-get install chromium)"
        );
        eprintln!("skipped: no chromium (apt-get install chromium)");
        return None;
    };
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,700",
        // Time for the page's script to fetch and render (virtual time waits on the network).
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .stderr(Stdio::null());
    Some(cmd)
}

/// The page's DOM as Chromium rendered it, and its screenshot written to `png`.
fn render(profile: &Path, url: &str, png: &Path) -> Option<String> {
    let dom = chromium(profile)?
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    assert!(dom.status.success());
    let shot = chromium(profile)?
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(shot.status.success());
    Some(String::from_utf8(dom.stdout).unwrap())
}

/// `data-done` of the job's row in the rendered page.
fn done_shown(dom: &str, job: &str) -> u64 {
    let row = dom
        .split("<tr ")
        .find(|r| r.contains(&format!("data-job=\"{job}\"")))
        .unwrap_or_else(|| panic!("no row for the job in the page:\n{dom}"));
    let v = row.split("data-done=\"").nth(1).unwrap();
    v[..v.find('"').unwrap()].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_a_running_job_advancing() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("chromium");
    if chromium(&profile).is_none() {
        return;
    }
    // Slow enough that the job outlasts two renders by far; it is cancelled at the end.
    let config = sim_config(dir.path(), 0.02, 16);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
        ],
    );
    let page = server.page_url.clone().expect("the page address");
    let mut client = server.client(None).await;
    let n = 5000;
    let job = client
        .submit(
            b"{\"name\": \"watched\"}",
            batches(&repeating_tasks(n), 1000),
        )
        .await
        .unwrap();
    wait_for(&mut client, &job, |i| i.status["rows"].as_u64() > Some(0)).await;

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let (first_png, second_png) = (shots.join("live-page-1.png"), shots.join("live-page-2.png"));
    let first = render(&profile, &page, &first_png).unwrap();
    let done_first = done_shown(&first, &job);
    assert!(first.contains("watched"), "the job's name is shown");
    assert!(done_first > 0 && done_first < n as u64, "{done_first}");
    // Wait for the server to have written more rows than the page showed (counted, not timed).
    wait_for(&mut client, &job, |i| {
        i.status["rows"].as_u64().unwrap() > done_first
    })
    .await;
    let second = render(&profile, &page, &second_png).unwrap();
    let done_second = done_shown(&second, &job);
    assert!(
        done_second > done_first,
        "the page's progress advanced: {done_first} then {done_second}"
    );
    assert!(second.contains(&format!(" {done_second} / {n} (")));
    let (a, b) = (
        std::fs::read(&first_png).unwrap(),
        std::fs::read(&second_png).unwrap(),
    );
    assert!(a.starts_with(b"\x89PNG") && b.starts_with(b"\x89PNG"));
    assert_ne!(a, b, "the two screenshots differ");
    client.cancel(&job).await.unwrap();
    // The JSON behind the page is the job's status.
    let snapshot: Value = serde_json::from_str(&get(&page, "/api/jobs")).unwrap();
    assert_eq!(snapshot["jobs"][0]["job_id"], job.as_str());
    assert_eq!(snapshot["jobs"][0]["tasks"], n);
}

#[test]
fn a_metrics_port_in_use_stops_the_run_before_anything_is_written() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    write_tasks(&tasks, 5);
    let out = dir.path().join("out.parquet");
    let (o, err) = run(
        tutti_run(&tasks, &out, &repo("configs/toolorchestra-sim.toml"))
            .args(["--metrics-listen", &addr]),
    );
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr} for metrics")),
        "{err}"
    );
    // Nothing was started: the same command runs as a new one once the port is free.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
