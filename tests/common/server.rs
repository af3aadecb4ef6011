//! A real `tutti serve` process on loopback, and a Flight client for it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use tutti_engine::flight::{JobClient, JobInfo};
use tutti_engine::io::tasks_to_batch;
use tutti_engine::Task;

use super::{repo, tutti};

/// The bundled simulated catalog, slowed so a job of a thousand tasks takes several seconds
/// (calls of ~0.1–1 s, 128 tasks live): room to kill or cancel it mid-way.
pub fn slow_sim_config(dir: &Path) -> PathBuf {
    super::sim_config(dir, 0.005, 128)
}

/// A running server; killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub stderr: mpsc::Receiver<String>,
    /// `http://ADDR/` of `--metrics-listen` and of `--http`, when given.
    pub metrics_url: Option<String>,
    pub page_url: Option<String>,
}

impl Server {
    /// Starts `tutti serve --listen 127.0.0.1:0 --data-dir DIR ARGS…` and waits for its address.
    /// Without `--config` in `ARGS`, the server runs the simulated ToolOrchestra config.
    pub fn start(data_dir: &Path, args: &[&str]) -> Server {
        let mut cmd = tutti();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args);
        if !args.contains(&"--config") {
            cmd.arg("--config")
                .arg(repo("configs/toolorchestra-sim.toml"));
        }
        let mut child = cmd
            .env_remove("TUTTI_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tutti serve");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut metrics_url, mut page_url) = (None, None);
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("the server printed its address");
            let after = |marker: &str| {
                line.split(marker)
                    .nth(1)
                    .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            };
            if let Some(u) = after("tutti: metrics on ") {
                metrics_url = Some(u);
            } else if let Some(u) = after("tutti: the live job page on ") {
                page_url = Some(u);
            } else if let Some(u) = after("serving Arrow Flight on ") {
                break u;
            }
        };
        Server {
            child,
            url,
            stderr: rx,
            metrics_url,
            page_url,
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn client(&self, token: Option<&str>) -> JobClient {
        JobClient::connect(&self.url, token).await.expect("connect")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` arithmetic tasks with ids `task-0`…
pub fn tasks(n: usize) -> Vec<Task> {
    (0..n)
        .map(|i| {
            let (a, b) = (i % 97 + 2, i % 89 + 3);
            Task {
                id: format!("task-{i}"),
                prompt: format!("What is {a} + {b}?"),
                preference: Vec::new(),
                budget_usd: None,
                max_turns: None,
                reference: Some((a + b).to_string()),
                metadata: None,
                ..Default::default()
            }
        })
        .collect()
}

pub fn batches(tasks: &[Task], rows: usize) -> Vec<RecordBatch> {
    tasks.chunks(rows).map(tasks_to_batch).collect()
}

/// Polls the job until `done(info)` holds; panics after a minute.
pub async fn wait_for(
    client: &mut JobClient,
    job: &str,
    done: impl Fn(&JobInfo) -> bool,
) -> JobInfo {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = client.info(job).await.expect("job info");
        if done(&info) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting; last: {:?}",
            info.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every (id, status) of the job's results so far.
pub async fn result_rows(client: &mut JobClient, job: &str) -> Vec<(String, String)> {
    use arrow::array::AsArray;
    use futures::TryStreamExt;
    let batches: Vec<RecordBatch> = client
        .results(job)
        .await
        .expect("do_get")
        .try_collect()
        .await
        .expect("result batches");
    let mut rows = Vec::new();
    for b in batches {
        assert_eq!(b.schema(), tutti_engine::io::result_schema());
        let ids = b.column_by_name("id").unwrap().as_string::<i32>();
        let statuses = b.column_by_name("status").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            rows.push((ids.value(i).to_string(), statuses.value(i).to_string()));
        }
    }
    rows
}
