//! The Flight ingest benchmark: DoPut of a large job to a real server on loopback, timed from the
//! first message to the acknowledgement, which the server sends only once the tasks are durable
//! (written and fsynced) in its data directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::config::Config;
use crate::engine::{Engine, EngineOptions};
use crate::flight::{serve, Auth, JobClient};
use crate::io::tasks::tasks_to_batch;
use crate::jobs::{Jobs, ServerLimits};
use crate::task::Task;

/// Rows per record batch the client sends.
pub(crate) const INGEST_BATCH_ROWS: usize = 8192;

/// One timed upload.
#[derive(Debug, Clone, Serialize)]
pub struct IngestRun {
    pub seconds: f64,
    pub rows_per_s: f64,
    pub mib_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub rows: usize,
    /// In-memory size of the uploaded batches.
    pub bytes: usize,
    pub batch_rows: usize,
    pub runs: Vec<IngestRun>,
    /// Median over the runs.
    pub rows_per_s: f64,
    pub mib_per_s: f64,
    /// Bytes of the task file the server wrote (and fsynced) per job.
    pub task_file_bytes: u64,
}

/// Uploads `tasks` as a job `repeats` times to a server with its data directory in `data_dir`,
/// run by `cfg` (each job is cancelled right after its acknowledgement, so that running it does
/// not load the next upload).
pub async fn flight_ingest(
    cfg: &Config,
    tasks: &[Task],
    repeats: usize,
    data_dir: &Path,
) -> anyhow::Result<IngestReport> {
    let engine = Arc::new(Engine::new(cfg, EngineOptions::default())?);
    let limits = ServerLimits {
        max_tasks_per_job: tasks.len() as u64 + 1,
        max_pending_tasks: tasks.len() as u64 * (repeats as u64 + 1),
        ..ServerLimits::default()
    };
    let jobs = Jobs::open(data_dir, engine, limits)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("grpc://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        jobs.clone(),
        Auth::new(None),
        None,
        async {
            let _ = stopped.await;
        },
    ));

    let batches: Vec<_> = tasks
        .chunks(INGEST_BATCH_ROWS)
        .map(tasks_to_batch)
        .collect();
    let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    let mut client = JobClient::connect(&url, None).await?;
    let mut runs = Vec::with_capacity(repeats);
    let mut task_file_bytes = 0;
    for _ in 0..repeats {
        let t0 = Instant::now();
        let id = client.submit(b"{}", batches.clone()).await?;
        let seconds = t0.elapsed().as_secs_f64();
        runs.push(IngestRun {
            seconds,
            rows_per_s: tasks.len() as f64 / seconds,
            mib_per_s: bytes as f64 / seconds / (1 << 20) as f64,
        });
        client.cancel(&id).await?;
        task_file_bytes =
            std::fs::metadata(data_dir.join("jobs").join(&id).join("tasks.arrow"))?.len();
        // Let the cancelled job write its rows before the next upload is timed.
        while client.info(&id).await?.state() == "running" {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let _ = stop.send(());
    server.await??;
    let median = |f: fn(&IngestRun) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(IngestReport {
        rows: tasks.len(),
        bytes,
        batch_rows: INGEST_BATCH_ROWS,
        rows_per_s: median(|r| r.rows_per_s),
        mib_per_s: median(|r| r.mib_per_s),
        runs,
        task_file_bytes,
    })
}
