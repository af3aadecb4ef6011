//! What a `tutti serve` bounds and refuses (issue 19): open uploads (in all and per
//! connection), idle uploads, job names and specs, a storage error while committing, token files
//! others may read, plain text beyond loopback; and TLS with pyarrow and the CLI client.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::FlightDescriptor;
use common::server::{batches, result_rows, slow_sim_config, tasks, wait_for, Server};
use common::{pyarrow, run, tutti};
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::Code;
use tutti_engine::flight::JobClient;

const TOKEN: &str = "s3cret-token";

fn token_file(dir: &Path) -> String {
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

/// Polls `check` until it holds; a hang guard of two minutes, not a timing assertion.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Threads of the server named `name` (from /proc), and all its threads.
fn threads(pid: u32, name: &str) -> (usize, usize) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let mut named = 0;
    let mut all = 0;
    for t in tasks.flatten() {
        all += 1;
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            named += 1;
        }
    }
    (named, all)
}

/// An upload held open: its descriptor and schema sent, then one batch when `batch` is given,
/// then nothing until the sender is dropped. Resolves when the server answers (a refusal comes
/// at once; an accepted upload answers only when it ends).
async fn open_upload(
    mut client: FlightServiceClient<Channel>,
    batch: Option<RecordBatch>,
) -> (
    tokio::sync::mpsc::Sender<RecordBatch>,
    tokio::task::JoinHandle<tonic::Status>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<RecordBatch>(1);
    if let Some(b) = batch {
        tx.send(b).await.unwrap();
    }
    let batches =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) },
        );
    let data = FlightDataEncoderBuilder::new()
        .with_schema(tutti_engine::io::task_schema())
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(b"{}".to_vec())))
        .build(batches)
        .map(|d| d.expect("encodes"));
    let answer = tokio::spawn(async move {
        match client.do_put(data).await {
            Ok(mut replies) => match replies.get_mut().message().await {
                Err(status) => status,
                Ok(_) => tonic::Status::ok("the upload ended"),
            },
            Err(status) => status,
        }
    });
    (tx, answer)
}

async fn channel(url: &str) -> FlightServiceClient<Channel> {
    let http = url.replace("grpc://", "http://");
    FlightServiceClient::new(Channel::from_shared(http).unwrap().connect().await.unwrap())
}

async fn open_uploads(client: &mut JobClient, job: &str) -> u64 {
    client.stats(job).await.unwrap()["server_open_uploads"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_caps_are_refused_at_once_and_a_running_job_is_unhurt() {
    let dir = tempfile::tempdir().unwrap();
    let config = slow_sim_config(dir.path()).display().to_string();
    let (total_cap, per_connection) = (100, 16);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--config",
            &config,
            "--max-open-uploads",
            &total_cap.to_string(),
            "--max-uploads-per-connection",
            &per_connection.to_string(),
            "--upload-idle-timeout",
            "3600",
        ],
    );
    let pid = server.child.id();
    let mut client = server.client(None).await;
    let n = 1000;
    let job = client.submit(b"{}", batches(&tasks(n), 500)).await.unwrap();

    let refused = Arc::new(AtomicUsize::new(0));
    let mut held = Vec::new();
    let mut refusals = Vec::new();
    // One connection asks for 20 uploads, each sending a batch: 16 are taken (each holding an
    // ingest thread), 4 refused by the per-connection cap.
    let first = channel(&server.url).await;
    let one = batches(&tasks(3), 3).remove(0);
    for _ in 0..20 {
        held.push(open_upload(first.clone(), Some(one.clone())).await);
    }
    let mut answers = Vec::new();
    for (tx, answer) in held.drain(..) {
        if answer.is_finished() {
            refusals.push(answer.await.unwrap());
        } else {
            answers.push((tx, answer));
        }
    }
    // Whichever finished already, wait for the rest: exactly 4 refusals must come.
    until("4 per-connection refusals", async || {
        let done = answers.iter().filter(|a| a.1.is_finished()).count();
        refusals.len() + done >= 4
    })
    .await;
    let (finished, open): (Vec<_>, Vec<_>) = answers.into_iter().partition(|a| a.1.is_finished());
    for (_, a) in finished {
        refusals.push(a.await.unwrap());
    }
    assert_eq!(refusals.len(), 4);
    assert_eq!(open.len(), per_connection);
    for status in &refusals {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("--max-uploads-per-connection"),
            "{status:?}"
        );
    }
    let held = open;

    // 3,980 more on 7 other connections, sending only their schema: the server holds 100 in all
    // and refuses the rest at once.
    let mut rest = Vec::new();
    for c in 0..7 {
        let conn = channel(&server.url).await;
        for _ in 0..(3980 / 7 + usize::from(c < 3980 % 7)) {
            let (tx, answer) = open_upload(conn.clone(), None).await;
            let refused = refused.clone();
            let watched = tokio::spawn(async move {
                let status = answer.await.unwrap();
                refused.fetch_add(1, Ordering::SeqCst);
                status
            });
            rest.push((tx, watched));
        }
    }
    assert_eq!(rest.len(), 3980);
    let expected_refusals = 3980 - (total_cap - per_connection);
    until("every refusal past the cap", async || {
        refused.load(Ordering::SeqCst) >= expected_refusals
    })
    .await;
    let (gone, still): (Vec<_>, Vec<_>) = rest.into_iter().partition(|a| a.1.is_finished());
    assert_eq!(gone.len(), expected_refusals);
    assert_eq!(still.len(), total_cap - per_connection);
    for (_, watched) in gone {
        let status = watched.await.unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let msg = status.message();
        assert!(
            msg.contains("--max-open-uploads") || msg.contains("--max-uploads-per-connection"),
            "{msg}"
        );
    }
    assert_eq!(open_uploads(&mut client, &job).await, total_cap as u64);
    // Only the uploads that sent a batch hold an ingest thread; the server's threads stay
    // bounded (one per upload, before the cap, was 4,004 threads).
    until("16 ingest threads", async || {
        threads(pid, "tutti-ingest").0 == per_connection
    })
    .await;
    let (ingest, all) = threads(pid, "tutti-ingest");
    eprintln!("4,000 uploads asked for: {ingest} ingest threads, {all} threads in all");
    assert!(all < 700, "{all} threads");

    // Closing the uploads frees everything; the job finishes with every row exactly once.
    drop(held);
    drop(still);
    until("the uploads to be freed", async || {
        open_uploads(&mut client, &job).await == 0
    })
    .await;
    until("no ingest thread", async || {
        threads(pid, "tutti-ingest").0 == 0
    })
    .await;
    let info = wait_for(&mut client, &job, |i| i.state() != "running").await;
    assert_eq!(info.state(), "done");
    let rows = result_rows(&mut client, &job).await;
    let ids: std::collections::HashSet<_> = rows.iter().map(|r| &r.0).collect();
    assert_eq!((rows.len(), ids.len()), (n, n));
    assert!(!dir
        .path()
        .join("data/incoming")
        .read_dir()
        .unwrap()
        .any(|_| true));
    // And a new upload is taken again.
    client.submit(b"{}", batches(&tasks(3), 3)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upload_is_closed_after_the_idle_timeout_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--upload-idle-timeout", "0.5"]);
    let pid = server.child.id();
    let one = batches(&tasks(3), 3).remove(0);
    let (tx, answer) = open_upload(channel(&server.url).await, Some(one)).await;
    let status = answer.await.unwrap();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("--upload-idle-timeout"),
        "{status:?}"
    );
    drop(tx);
    let mut client = server.client(None).await;
    assert!(client.jobs().await.unwrap().is_empty(), "no job was made");
    until("the ingest thread to end", async || {
        threads(pid, "tutti-ingest").0 == 0
    })
    .await;
    assert!(!dir
        .path()
        .join("data/incoming")
        .read_dir()
        .unwrap()
        .any(|_| true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_name_a_big_spec_and_an_array_spec_are_refused_naming_key_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut client = server.client(None).await;
    let one = batches(&tasks(3), 3);
    // As found: a 30 MB name.
    let name = "n".repeat(30 << 20);
    let spec = serde_json::json!({ "name": name }).to_string();
    let err = client
        .submit(spec.as_bytes(), one.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("at most 65536"), "{err}");
    let spec = serde_json::json!({ "name": "n".repeat(257) }).to_string();
    let err = client
        .submit(spec.as_bytes(), one.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("key `name`") && msg.contains("at most 256"),
        "{msg}"
    );
    let err = client
        .submit(br#"["nightly", {}, {}]"#, one.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("must be a JSON object"), "{err}");
    assert!(client.jobs().await.unwrap().is_empty());
}

/// A job of `n` tasks running on a server whose simulated latencies are scaled by
/// `time_scale`, with storage retries at most 0.2 s apart; returns once the server says the
/// job runs (its store is open).
async fn a_running_job(dir: &Path, time_scale: f64, n: usize) -> (Server, JobClient, String) {
    let config = common::sim_config(dir, time_scale, 64)
        .display()
        .to_string();
    let server = Server::start(
        &dir.join("data"),
        &["--config", &config, "--storage-retry-max-delay", "0.2"],
    );
    let mut client = server.client(None).await;
    let job = client.submit(b"{}", batches(&tasks(n), 100)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let started = format!("job {job}: running");
    while !server
        .stderr
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("the server says the job runs")
        .contains(&started)
    {}
    (server, client, job)
}

/// Waits for a job that was cancelled to end: cancelled, no error left, every task one row.
async fn ends_cancelled_with_every_row_once(client: &mut JobClient, job: &str, n: usize) {
    let info = wait_for(client, job, |i| i.state() != "running").await;
    assert_eq!(info.state(), "cancelled");
    assert!(info.status.get("error").is_none(), "{}", info.status);
    let rows = result_rows(client, job).await;
    let ids: std::collections::HashSet<_> = rows.iter().map(|r| &r.0).collect();
    assert_eq!((rows.len(), ids.len()), (n, n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_fails_is_retried_visibly_and_the_job_ends_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Calls take hours: nothing ends until the job is cancelled. Once the server says the job
    // runs, its store is open (a broken store before that is the job's start failing, retried
    // as a resume: not what this test is about).
    let n = 200;
    let (_server, mut client, job) = a_running_job(dir.path(), 100.0, n).await;
    // The store breaks: its segment directory becomes a file (ENOTDIR for every commit).
    let data = dir.path().join("data");
    let parts = data.join(format!("jobs/{job}/results.parquet.parts"));
    let away = data.join(format!("jobs/{job}/parts.away"));
    std::fs::rename(&parts, &away).unwrap();
    std::fs::write(&parts, b"not a directory").unwrap();
    // Cancelling makes every row at once; none can be committed.
    client.cancel(&job).await.unwrap();
    held_back_with_error(&mut client, &job, "cannot commit results").await;
    // The store mends: the job ends, every row exactly once, no error left.
    std::fs::remove_file(&parts).unwrap();
    std::fs::rename(&away, &parts).unwrap();
    ends_cancelled_with_every_row_once(&mut client, &job, n).await;
}

/// Replaces the limits on open files of process `pid`; returns the limits it had.
fn swap_open_files_limit(pid: u32, new: impl FnOnce(libc::rlimit) -> libc::rlimit) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reads the current limits into `old`.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = new(old);
    // SAFETY: `new` is a valid rlimit; the old value was read above.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old
}

/// Waits until the job's status `error` holds `needle`; the job is still running with no rows.
/// Returns the error.
async fn held_back_with_error(client: &mut JobClient, job: &str, needle: &str) -> String {
    let info = wait_for(client, job, |i| {
        i.status["error"]
            .as_str()
            .is_some_and(|e| e.contains(needle))
    })
    .await;
    eprintln!("held back: {}", info.status);
    assert_eq!(info.state(), "running");
    assert_eq!(info.rows(), 0);
    info.status["error"].as_str().unwrap().to_owned()
}

/// B4 as found: a running job's storage failed with EMFILE (descriptors exhausted) and the job
/// stayed `running` with no rows and no word until a restart. Here the server's limit on open
/// files drops to 0 just as a job starts: the error shows in the job's status (mostly the
/// opening of its task file, retried as a resume; sometimes its first commit, retried as a
/// commit: the ENOTDIR test above pins that path), and once the limit is back the job goes
/// on and ends, every row once, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_out_of_descriptors_shows_in_the_status_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The simulated latencies in full (tool calls take seconds to minutes): no task can end in
    // the moment between the job starting and the limit dropping.
    let n = 200;
    let (server, mut client, job) = a_running_job(dir.path(), 1.0, n).await;
    let pid = server.child.id();
    // Every descriptor the server would open from now on is refused (EMFILE: a soft limit of
    // 0 admits no new one, whatever it closes meanwhile); those it has, such as this client's
    // connection, stay open. Whatever storage work comes next fails: the job's files still
    // being opened (the job is resumed, as a restart would), or the first commit.
    let limits = swap_open_files_limit(pid, |old| libc::rlimit {
        rlim_cur: 0,
        rlim_max: old.rlim_max,
    });
    let error = held_back_with_error(&mut client, &job, "Too many open files").await;
    assert!(
        error.contains("cannot commit results") || error.contains("resuming the job"),
        "{error}"
    );
    // Descriptors again: the rows held back are committed, and cancelling ends the rest.
    swap_open_files_limit(pid, |_| limits);
    client.cancel(&job).await.unwrap();
    ends_cancelled_with_every_row_once(&mut client, &job, n).await;
}

#[test]
fn a_token_file_others_may_read_or_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    for mode in [0o644, 0o604, 0o620] {
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        let (out, err) = run(tutti()
            .args(["serve", "--listen", "127.0.0.1:0", "--token-file", &token])
            .arg("--data-dir")
            .arg(dir.path().join("data")));
        assert!(!out.status.success());
        assert!(
            err.contains(&token)
                && err.contains(&format!("mode {mode:03o}"))
                && err.contains("chmod 600"),
            "{err}"
        );
    }
}

/// A certificate authority and a server certificate it signed for 127.0.0.1 and localhost, made
/// with the openssl CLI as docs/serving.md shows: (CA certificate, server certificate, key).
fn certificate(dir: &Path) -> (String, String, String) {
    let path = |name: &str| dir.join(name).display().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (ca_key, ca) = (path("ca.key"), path("ca.pem"));
    let (key, csr, cert, ext) = (
        path("server.key"),
        path("server.csr"),
        path("server.pem"),
        path("server.ext"),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tutti test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=tutti-test",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (ca, cert, key)
}

#[test]
fn beyond_loopback_both_tls_and_a_token_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let (_, cert, key) = certificate(dir.path());
    let serve = |extra: &[&str]| {
        run(tutti()
            .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env_remove("TUTTI_TOKEN"))
    };
    let (out, err) = serve(&["--token-file", &token]);
    assert!(!out.status.success());
    assert!(
        err.contains("without TLS (--tls-cert PEM --tls-key PEM)"),
        "{err}"
    );
    assert!(!err.contains("without a token"), "{err}");
    let (out, err) = serve(&["--tls-cert", &cert, "--tls-key", &key]);
    assert!(!out.status.success());
    assert!(err.contains("without a token (--token-file"), "{err}");
    assert!(!err.contains("without TLS"), "{err}");
    let (out, err) = serve(&[]);
    assert!(!out.status.success());
    assert!(
        err.contains("without a token") && err.contains("without TLS"),
        "{err}"
    );
}

#[test]
fn tls_round_trip_with_pyarrow_and_the_cli_client() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificate(dir.path());
    let token = token_file(dir.path());
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--token-file",
            &token,
        ],
    );
    assert!(
        server.url.starts_with("grpc+tls://127.0.0.1:"),
        "{}",
        server.url
    );

    // The CLI client, with the certificate as its authority.
    let tasks_file = dir.path().join("tasks.jsonl");
    common::write_tasks(&tasks_file, 50);
    let (out, err) = run(tutti()
        .args([
            "submit",
            tasks_file.to_str().unwrap(),
            "--wait",
            "--tls-ca",
            &ca,
        ])
        .env("TUTTI_SERVER", &server.url)
        .env("TUTTI_TOKEN", TOKEN));
    assert!(out.status.success(), "{err}");
    assert!(err.contains("50/50"), "{err}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (out, err) = run(tutti()
        .args(["status", &id, "--json", "--tls-ca", &ca])
        .env("TUTTI_SERVER", &server.url)
        .env("TUTTI_TOKEN", TOKEN));
    assert!(out.status.success(), "{err}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["rows"], 50);
    // Without the authority the CLI says what to give; in plain text the server does not answer.
    let (out, err) = run(tutti()
        .args(["status", &id])
        .env("TUTTI_SERVER", &server.url)
        .env("TUTTI_TOKEN", TOKEN)
        .env_remove("TUTTI_TLS_CA"));
    assert!(!out.status.success());
    assert!(err.contains("--tls-ca"), "{err}");
    let plain = server.url.replace("grpc+tls://", "grpc://");
    let (out, _) = run(tutti()
        .args(["status", &id])
        .env("TUTTI_SERVER", &plain)
        .env("TUTTI_TOKEN", TOKEN));
    assert!(!out.status.success());

    if !pyarrow() {
        return;
    }
    let script = r#"
import sys, pyarrow as pa, pyarrow.flight as fl
url, token, ca = sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read()
client = fl.connect(url, tls_root_certs=ca)
opts = fl.FlightCallOptions(headers=[(b"authorization", b"Bearer " + token.encode())])
table = pa.table({"id": [f"t{i}" for i in range(20)], "prompt": ["What is 2 + 3?"] * 20})
writer, reader = client.do_put(fl.FlightDescriptor.for_command(b"{}"), table.schema, options=opts)
writer.write_table(table)
writer.done_writing()
import json
job = json.loads(reader.read().to_pybytes())["job_id"]
writer.close()
import time
while True:
    info = client.get_flight_info(fl.FlightDescriptor.for_path("jobs", job), options=opts)
    if json.loads(info.app_metadata)["state"] != "running":
        break
    time.sleep(0.05)
rows = client.do_get(info.endpoints[0].ticket, options=opts).read_all()
print(rows.num_rows, len(set(rows.column("id").to_pylist())))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &server.url, TOKEN, &ca])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "20 20");
}

/// The IPC messages of an Arrow IPC stream file, as the FlightData a client would send for
/// them (the first with the job's descriptor). Stops at the first message it cannot frame.
fn flight_messages(stream: &[u8]) -> Vec<arrow_flight::FlightData> {
    let mut messages = Vec::new();
    let mut rest = stream;
    let word = |b: &[u8]| i32::from_le_bytes(b[..4].try_into().unwrap());
    while rest.len() >= 8 {
        let skip = if word(rest) == -1 { 4 } else { 0 };
        let len = word(&rest[skip..]);
        let Ok(len) = usize::try_from(len) else { break };
        let start = skip + 4;
        if len == 0 || rest.len() < start + len {
            break;
        }
        let header = &rest[start..start + len];
        let Ok(message) = arrow::ipc::root_as_message(header) else {
            break;
        };
        let body_len = usize::try_from(message.bodyLength()).unwrap_or(0);
        let body_end = (start + len + body_len).min(rest.len());
        let mut data = arrow_flight::FlightData::new()
            .with_data_header(header.to_vec())
            .with_data_body(rest[start + len..body_end].to_vec());
        if messages.is_empty() {
            data = data.with_descriptor(FlightDescriptor::new_cmd(b"{}".to_vec()));
        }
        messages.push(data);
        rest = &rest[body_end..];
    }
    messages
}

/// Found by fuzzing (issue 19): arrow-ipc 60.1 panics on some malformed IPC messages rather
/// than return an error. In an upload that panic is the upload's INVALID_ARGUMENT, and the
/// server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_ipc_decoder_panics_on_is_refused_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let crashes = common::repo("fuzz/regressions/tasks_arrow_ipc");
    let mut files: Vec<_> = std::fs::read_dir(&crashes)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", crashes.display());
    for file in files {
        let messages = flight_messages(&std::fs::read(&file).unwrap());
        assert!(
            messages.len() >= 2,
            "{}: a schema and a batch",
            file.display()
        );
        let mut client = channel(&server.url).await;
        let status = match client.do_put(futures::stream::iter(messages)).await {
            Ok(mut replies) => replies.get_mut().message().await.expect_err("refused"),
            Err(status) => status,
        };
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{}: {status:?}",
            file.display()
        );
        assert!(
            status.message().contains("malformed Arrow IPC data"),
            "{}: {status:?}",
            file.display()
        );
    }
    let mut client = server.client(None).await;
    assert!(client.jobs().await.unwrap().is_empty(), "no job was made");
    let job = client.submit(b"{}", batches(&tasks(3), 3)).await.unwrap();
    assert!(!job.is_empty());
}

/// The HTTP routes take no token: beyond loopback only when the operator says so.
#[test]
fn http_routes_beyond_loopback_need_http_public() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--http", "--metrics-listen"] {
        let (out, err) = run(tutti()
            .args(["serve", "--listen", "127.0.0.1:0", flag, "0.0.0.0:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data")));
        assert!(!out.status.success(), "{flag}");
        assert!(
            err.contains("refusing to serve") && err.contains("--http-public"),
            "{flag}: {err}"
        );
    }
    let (out, err) = run(tutti()
        .arg("run")
        .arg(common::repo("examples/tasks.jsonl"))
        .arg("--config")
        .arg(common::repo("configs/toolorchestra-sim.toml"))
        .arg("-o")
        .arg(dir.path().join("out.parquet"))
        .args(["--metrics-listen", "0.0.0.0:0"]));
    assert!(!out.status.success());
    assert!(err.contains("--http-public"), "{err}");
    // Said outright, it is served.
    let server = Server::start(
        &dir.path().join("data"),
        &["--http", "0.0.0.0:0", "--http-public"],
    );
    let page = server.page_url.clone().expect("the page's address");
    assert!(page.contains("0.0.0.0:"), "{page}");
}
