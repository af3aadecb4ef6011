//! The Arrow Flight job service, driven over real gRPC: a pyarrow client round trip, a server
//! killed mid-job and restarted, cancellation, authentication, and every kind of bad input.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::server::{batches, result_rows, slow_sim_config, tasks, wait_for, Server};
use common::{pyarrow, run, tutti};
use std::sync::Arc;
use tonic::Code;

const TOKEN: &str = "s3cret-token";

fn token_file(dir: &std::path::Path) -> String {
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    // A token file others may read is refused.
    let private = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
    std::fs::set_permissions(&path, private).unwrap();
    path.display().to_string()
}

#[test]
fn pyarrow_round_trip_of_10000_tasks() {
    if !pyarrow() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--token-file", &token_file(dir.path())],
    );
    let out = Command::new("python3")
        .arg(common::repo("tests/python/flight_round_trip.py"))
        .args([&server.url, TOKEN, "10000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the pyarrow client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("pyarrow round trip: {summary}");
    assert_eq!(summary["rows"], 10000);
}

#[test]
fn the_bundled_pyarrow_example_runs() {
    if !pyarrow() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let out = Command::new("python3")
        .arg(common::repo("examples/flight_client.py"))
        .arg(&server.url)
        .env_remove("TUTTI_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("done: 100% (100 results)"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_job_resumes_every_id_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = slow_sim_config(dir.path()).display().to_string();
    let n = 1500;
    let mut server = Server::start(&data, &["--config", &config]);
    let mut client = server.client(None).await;
    let job = client.submit(b"{}", batches(&tasks(n), 500)).await.unwrap();
    // Kill it once some results are durable and many tasks are still running.
    let info = wait_for(&mut client, &job, |i| i.rows() > 0).await;
    server.kill();
    assert!(
        info.rows() < n as u64,
        "the job ended before the kill: {:?}",
        info.status
    );
    drop(client);

    let server = Server::start(&data, &["--config", &config]);
    let mut client = server.client(None).await;
    let before = client.info(&job).await.unwrap();
    assert_eq!(before.tasks(), n as u64, "the accepted tasks survived");
    assert!(before.rows() >= info.rows(), "committed results survived");
    let done = wait_for(&mut client, &job, |i| i.state() != "running").await;
    assert_eq!(done.state(), "done");
    let rows = result_rows(&mut client, &job).await;
    assert_eq!(rows.len(), n, "one row per accepted task");
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (id, _) in &rows {
        *count.entry(id).or_default() += 1;
    }
    assert_eq!(count.len(), n);
    assert!(count.values().all(|&c| c == 1), "an id came back twice");
    assert!((0..n).all(|i| count.contains_key(format!("task-{i}").as_str())));
}

/// Issue 19: a served job's segment damaged while the server was down (bytes of a page
/// overwritten) is found when the server starts, not when a client reads it: the job is not
/// resumed and says which file to move aside, the server serves other jobs meanwhile, and after
/// that `mv` and a restart the job ends with every id exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_segment_holds_its_job_back_and_the_server_serves_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = slow_sim_config(dir.path()).display().to_string();
    let n = 1500;
    let mut server = Server::start(&data, &["--config", &config]);
    let mut client = server.client(None).await;
    let job = client.submit(b"{}", batches(&tasks(n), 500)).await.unwrap();
    let info = wait_for(&mut client, &job, |i| i.rows() > 0).await;
    server.kill();
    assert!(info.rows() < n as u64, "the job ended before the kill");
    drop(client);

    let parts = data.join("jobs").join(&job).join("results.parquet.parts");
    let mut segments: Vec<_> = std::fs::read_dir(&parts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    segments.sort();
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    bytes[64..80].fill(0xff);
    std::fs::write(&segments[0], &bytes).unwrap();

    let mut server = Server::start(&data, &["--config", &config]);
    let mut client = server.client(None).await;
    let held = client.info(&job).await.unwrap();
    assert_eq!(held.state(), "running");
    let error = held.status["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains(&format!("{} is damaged", segments[0].display())),
        "{:?}",
        held.status
    );
    let other = client.submit(b"{}", batches(&tasks(20), 20)).await.unwrap();
    let done = wait_for(&mut client, &other, |i| i.state() != "running").await;
    assert_eq!((done.state(), done.rows()), ("done", 20));
    let still = client.info(&job).await.unwrap();
    assert_eq!(still.rows(), held.rows(), "the damaged job was not resumed");
    server.kill();
    drop(client);

    let mv = error
        .lines()
        .find_map(|l| l.strip_prefix("  mv "))
        .unwrap_or_else(|| panic!("no mv command in: {error}"));
    let moved = Command::new("sh")
        .arg("-c")
        .arg(format!("mv {mv}"))
        .status()
        .unwrap();
    assert!(moved.success());
    let server = Server::start(&data, &["--config", &config]);
    let mut client = server.client(None).await;
    let done = wait_for(&mut client, &job, |i| i.state() != "running").await;
    assert_eq!(done.state(), "done", "{:?}", done.status);
    let rows = result_rows(&mut client, &job).await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (id, _) in &rows {
        *count.entry(id).or_default() += 1;
    }
    assert_eq!((rows.len(), count.len()), (n, n), "every id exactly once");
}

/// Requests sent to backends so far (counted as each batch is sent), from the server's ledger.
async fn backend_requests(client: &mut tutti_engine::flight::JobClient, job: &str) -> u64 {
    let stats = client.stats(job).await.unwrap();
    stats["server"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["sent"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_live_episodes_and_issues_no_more_calls() {
    let dir = tempfile::tempdir().unwrap();
    let config = slow_sim_config(dir.path()).display().to_string();
    let server = Server::start(&dir.path().join("data"), &["--config", &config]);
    let mut client = server.client(None).await;
    let n = 2000;
    let job = client
        .submit(b"{}", batches(&tasks(n), 1000))
        .await
        .unwrap();
    wait_for(&mut client, &job, |i| i.rows() >= 50).await;
    let reply = client.cancel(&job).await.unwrap();
    assert_eq!(reply["cancel_requested"], true, "{reply}");
    let info = wait_for(&mut client, &job, |i| i.state() != "running").await;
    assert_eq!(info.state(), "cancelled");

    // Nothing more reaches a backend after the job has stopped.
    let requests = backend_requests(&mut client, &job).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(backend_requests(&mut client, &job).await, requests);

    let rows = result_rows(&mut client, &job).await;
    assert_eq!(rows.len(), n, "every task has a row");
    let cancelled = rows.iter().filter(|r| r.1 == "cancelled").count();
    let unique: std::collections::HashSet<_> = rows.iter().map(|r| &r.0).collect();
    assert_eq!(unique.len(), n);
    assert!(
        cancelled > n / 2,
        "most tasks were cut short: {cancelled} of {n}"
    );
    assert_eq!(info.status["counts"]["cancelled"], cancelled as u64);

    // Cancelling again, or a finished job, changes nothing.
    let again = client.cancel(&job).await.unwrap();
    assert_eq!(again["state"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_cancel_flight_info_action_cancels() {
    use arrow_flight::{CancelFlightInfoRequest, CancelStatus};
    let dir = tempfile::tempdir().unwrap();
    let config = slow_sim_config(dir.path()).display().to_string();
    let server = Server::start(&dir.path().join("data"), &["--config", &config]);
    let mut client = server.client(None).await;
    let job = client
        .submit(b"", batches(&tasks(1000), 1000))
        .await
        .unwrap();
    let descriptor = tutti_engine::flight::job_descriptor(&job);
    let info = client
        .flight()
        .get_flight_info(descriptor.clone())
        .await
        .unwrap();
    let poll = client.flight().poll_flight_info(descriptor).await.unwrap();
    assert!(
        poll.flight_descriptor.is_some(),
        "a running job is polled again"
    );
    let status = client
        .flight()
        .cancel_flight_info(CancelFlightInfoRequest::new(info))
        .await
        .unwrap();
    assert!(
        [
            CancelStatus::Cancelling as i32,
            CancelStatus::Cancelled as i32
        ]
        .contains(&status.status),
        "{status:?}"
    );
    let done = wait_for(&mut client, &job, |i| i.state() != "running").await;
    assert_eq!(done.state(), "cancelled");
    let poll = client
        .flight()
        .poll_flight_info(tutti_engine::flight::job_descriptor(&job))
        .await
        .unwrap();
    assert!(
        poll.flight_descriptor.is_none(),
        "an ended job needs no more polling"
    );
    assert_eq!(poll.progress, Some(1.0));
}

fn expect_code(
    result: Result<impl std::fmt::Debug, tutti_engine::flight::ClientError>,
    code: Code,
    needles: &[&str],
) {
    let err = result.expect_err("the server refused it");
    assert_eq!(err.code(), Some(code), "{err}");
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "`{n}` not in: {msg}");
    }
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|c| c.1).collect(),
    )
    .unwrap()
}

fn strings(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_status_that_names_the_column_or_row() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--token-file",
            &token_file(dir.path()),
            "--max-message-bytes",
            "200000",
            "--max-tasks-per-job",
            "5000",
        ],
    );
    let mut client = server.client(Some(TOKEN)).await;

    // Wrong schema: a column of the wrong type, an unknown column.
    let wrong_type = batch(vec![
        ("id", strings(&[Some("a")])),
        ("prompt", Arc::new(Int64Array::from(vec![1]))),
    ]);
    expect_code(
        client.submit(b"{}", vec![wrong_type]).await,
        Code::InvalidArgument,
        &["prompt", "int64"],
    );
    let unknown = batch(vec![
        ("id", strings(&[Some("a")])),
        ("prompt", strings(&[Some("p")])),
        ("colour", strings(&[Some("red")])),
    ]);
    expect_code(
        client.submit(b"{}", vec![unknown]).await,
        Code::InvalidArgument,
        &["colour"],
    );
    // A missing `id` column, and a null id at row 2 of the second batch (row 4 overall).
    let no_id = batch(vec![("prompt", strings(&[Some("p")]))]);
    expect_code(
        client.submit(b"{}", vec![no_id]).await,
        Code::InvalidArgument,
        &["id"],
    );
    let first = batch(vec![
        ("id", strings(&[Some("a"), Some("b")])),
        ("prompt", strings(&[Some("p"), Some("q")])),
    ]);
    let null_id = batch(vec![
        ("id", strings(&[Some("c"), None])),
        ("prompt", strings(&[Some("p"), Some("q")])),
    ]);
    expect_code(
        client.submit(b"{}", vec![first.clone(), null_id]).await,
        Code::InvalidArgument,
        &["row 4", "id"],
    );
    // Duplicate ids, across batches: both rows named.
    expect_code(
        client
            .submit(b"{}", vec![first.clone(), first.clone()])
            .await,
        Code::InvalidArgument,
        &["`a`", "row 1", "row 3"],
    );
    // A spec that is not JSON, and one with a key a client may not set.
    expect_code(
        client.submit(b"{name: oops", vec![first.clone()]).await,
        Code::InvalidArgument,
        &["job spec", "JSON"],
    );
    expect_code(
        client
            .submit(br#"{"backends": []}"#, vec![first.clone()])
            .await,
        Code::InvalidArgument,
        &["unknown field `backends`"],
    );
    // An unknown preference key, in a task and in the spec's defaults.
    expect_code(
        client
            .submit(
                br#"{"defaults": {"preference": {"gpt-6": 1.0}}}"#,
                vec![first.clone()],
            )
            .await,
        Code::InvalidArgument,
        &["defaults.preference", "gpt-6"],
    );
    // An oversize message: one batch over --max-message-bytes.
    let big = "x".repeat(300_000);
    let oversize = batch(vec![
        ("id", strings(&[Some("big")])),
        ("prompt", strings(&[Some(big.as_str())])),
    ]);
    expect_code(
        client.submit(b"{}", vec![oversize]).await,
        Code::ResourceExhausted,
        &["--max-message-bytes"],
    );
    // Too many tasks for one job.
    expect_code(
        client.submit(b"{}", batches(&tasks(6000), 1000)).await,
        Code::InvalidArgument,
        &["--max-tasks-per-job", "5000"],
    );
    // An unknown job id, for each call that takes one.
    expect_code(
        client.info("no-such-job").await,
        Code::NotFound,
        &["no-such-job"],
    );
    expect_code(
        client.cancel("no-such-job").await,
        Code::NotFound,
        &["no-such-job"],
    );
    expect_code(
        client.stats("no-such-job").await,
        Code::NotFound,
        &["no-such-job"],
    );
    match client.results("no-such-job").await {
        Err(e) => assert_eq!(e.code(), Some(Code::NotFound), "{e}"),
        Ok(_) => panic!("DoGet of an unknown job succeeded"),
    }

    // None of it created a job, and the server still works.
    assert!(client.jobs().await.unwrap().is_empty());
    let job = client.submit(b"{}", vec![first]).await.unwrap();
    let info = wait_for(&mut client, &job, |i| i.state() == "done").await;
    assert_eq!(info.rows(), 2);
    assert!(!dir
        .path()
        .join("data/incoming")
        .read_dir()
        .unwrap()
        .any(|_| true));

    // A wrong token, or none, is unauthenticated.
    let mut wrong = server.client(Some("guess")).await;
    expect_code(
        wrong.jobs().await,
        Code::Unauthenticated,
        &["wrong bearer token"],
    );
    let mut none = server.client(None).await;
    expect_code(
        none.info(&job).await,
        Code::Unauthenticated,
        &["authorization"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_refuses_new_jobs_with_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let config = slow_sim_config(dir.path()).display().to_string();
    let server = Server::start(
        &dir.path().join("data"),
        &["--config", &config, "--max-pending-tasks", "1500"],
    );
    let mut client = server.client(None).await;
    let job = client
        .submit(b"{}", batches(&tasks(1000), 1000))
        .await
        .unwrap();
    expect_code(
        client.submit(b"{}", batches(&tasks(1000), 1000)).await,
        Code::ResourceExhausted,
        &["--max-pending-tasks"],
    );
    client.cancel(&job).await.unwrap();
    wait_for(&mut client, &job, |i| i.state() == "cancelled").await;
    // Room again once the first job has ended.
    client
        .submit(b"{}", batches(&tasks(1000), 1000))
        .await
        .unwrap();
}

#[test]
fn listening_beyond_loopback_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = run(tutti()
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("TUTTI_TOKEN"));
    assert!(!out.status.success());
    assert!(err.contains("without a token"), "{err}");
}

#[test]
fn the_cli_client_submits_waits_and_fetches_results() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--token-file", &token_file(dir.path())],
    );
    let tasks_file = dir.path().join("tasks.jsonl");
    common::write_tasks(&tasks_file, 300);
    let cli = |args: &[&str]| {
        let (out, err) = run(tutti()
            .args(args)
            .env("TUTTI_SERVER", &server.url)
            .env("TUTTI_TOKEN", TOKEN));
        assert!(out.status.success(), "{args:?}: {err}");
        (String::from_utf8(out.stdout).unwrap(), err)
    };
    let (id, err) = cli(&[
        "submit",
        tasks_file.to_str().unwrap(),
        "--wait",
        "--name",
        "cli",
        "--preference",
        "cost=1,latency=0.5",
    ]);
    let id = id.trim().to_string();
    assert!(err.contains("done") && err.contains("300/300"), "{err}");
    let (status, _) = cli(&["status", &id, "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["state"], "done");
    assert_eq!(status["name"], "cli");
    assert!(status["cost_usd"].as_f64().unwrap() > 0.0, "{status}");
    let (line, _) = cli(&["status", &id]);
    assert!(
        line.contains("300/300 rows") && line.contains('$'),
        "{line}"
    );
    let (list, _) = cli(&["jobs"]);
    assert!(list.contains(&id), "{list}");
    let out = dir.path().join("results.parquet");
    cli(&["results", &id, "-o", out.to_str().unwrap()]);
    // An existing output is not replaced silently.
    let (o, err) = run(tutti()
        .args(["results", &id, "-o", out.to_str().unwrap()])
        .env("TUTTI_SERVER", &server.url)
        .env("TUTTI_TOKEN", TOKEN));
    assert!(!o.status.success());
    assert!(
        err.contains("already exists; pass --force to replace it"),
        "{err}"
    );
    cli(&["results", &id, "-o", out.to_str().unwrap(), "--force"]);
    let mut ids = common::result_ids(&out);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300);
    let (_, err) = cli(&["cancel", &id]);
    assert!(err.contains("already done"), "{err}");
}

#[test]
fn a_schema_of_large_strings_is_accepted() {
    // pyarrow users often have large_string columns; the server casts them.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = server.client(None).await;
        let ids: ArrayRef = Arc::new(arrow::array::LargeStringArray::from(vec!["a", "b"]));
        let prompts: ArrayRef = Arc::new(arrow::array::LargeStringArray::from(vec!["1+1", "2+2"]));
        let b = batch(vec![("id", ids), ("prompt", prompts)]);
        assert_eq!(b.schema().field(0).data_type(), &DataType::LargeUtf8);
        let job = client.submit(b"{}", vec![b]).await.unwrap();
        let info = wait_for(&mut client, &job, |i| i.state() == "done").await;
        assert_eq!(info.rows(), 2);
    });
}
