//! The job store: every job of a data directory, its durable record (manifest), its counts, and
//! what clients read back (state, progress, counts, result segments).
//!
//! Layout of the data directory:
//! ```text
//! DIR/incoming/<id>/            an upload in progress; removed at start-up (never acknowledged)
//! DIR/jobs/<id>/manifest.json   the job's record (spec, task count, state), replaced atomically
//! DIR/jobs/<id>/tasks.arrow     the accepted tasks as uploaded (Arrow IPC file)
//! DIR/jobs/<id>/results.parquet.parts/seg-N-SUM.parquet   committed results (see io::results)
//! ```
//! An upload is written under `incoming/`, fsynced, and renamed into `jobs/` before the client
//! gets its job id (see [`super::ingest`]): an acknowledged job survives `kill -9`. Results are
//! committed in segments by the one runner ([`super::runner`]); a restarted server reads the ids
//! already committed and runs only the other tasks, so every accepted task ends with exactly one
//! row. Every committed segment is checked against its checksum at start-up: a job with a
//! damaged segment is not resumed (its error says which file to move aside before the next
//! start), and the server serves the other jobs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::error::JobError;
use super::runner::{run_job, JobTasks};
use super::spec::{JobState, Manifest};
use crate::engine::Engine;
use crate::io::durable::{fs_error, write_durably, FsError};
use crate::io::results::{
    batch_to_results, committed_segments, read_result_batches, verify_segment, CommitRetry,
    ResultStore, StoreError,
};
use crate::metrics::{JobProgress, JobSource};
use crate::report::{Report, Tally};
use crate::task::Status;

/// The first wait before a job's failed storage work is tried again.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Server-wide limits on what clients may send.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest gRPC message (one Flight data message: one record batch) accepted.
    pub max_message_bytes: usize,
    /// Most tasks in one job.
    pub max_tasks_per_job: u64,
    /// Most accepted tasks without a result yet, over all jobs; a job beyond it is refused until
    /// others finish.
    pub max_pending_tasks: u64,
    /// Largest prompt of one task, in bytes.
    pub max_prompt_bytes: usize,
    /// Most uploads (DoPut streams) open at once, over all clients.
    pub max_open_uploads: usize,
    /// Most uploads open at once on one connection (one peer address and port).
    pub max_uploads_per_connection: usize,
    /// An upload that sends no message for this long is ended and everything it held freed.
    pub upload_idle_timeout: std::time::Duration,
    /// The longest wait between two tries of a job's storage work that failed (a commit of
    /// results, opening its files): the server retries until it works, doubling the wait from
    /// 100 ms up to this, with the error in the job's status meanwhile.
    pub storage_retry_max_delay: std::time::Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_message_bytes: 64 << 20,
            max_tasks_per_job: 10_000_000,
            max_pending_tasks: 20_000_000,
            max_prompt_bytes: 1 << 20,
            max_open_uploads: 256,
            max_uploads_per_connection: 16,
            upload_idle_timeout: std::time::Duration::from_secs(60),
            storage_retry_max_delay: std::time::Duration::from_secs(30),
        }
    }
}

/// One job: its record, its counts, and the token that cancels it.
pub(crate) struct Job {
    pub id: String,
    pub(super) dir: PathBuf,
    pub(super) manifest: Mutex<Manifest>,
    /// Sums over the committed rows, rebuilt from them after a restart.
    pub(super) tally: Mutex<Tally>,
    pub(super) cancel: CancellationToken,
    /// The last failure of this job's runner (storage trouble); the job resumes on restart.
    error: Mutex<Option<String>>,
}

/// A job as clients see it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct JobStatus {
    pub job_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub state: JobState,
    /// Results written over tasks accepted, from 0 to 1.
    pub progress: f64,
    pub tasks: u64,
    /// Results written so far.
    pub rows: u64,
    /// Rows per status.
    pub counts: BTreeMap<&'static str, u64>,
    /// Dollars spent on the rows written so far.
    pub cost_usd: f64,
    pub created_ms: u64,
    pub cancel_requested: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Job {
    pub(super) fn new(id: String, dir: PathBuf, manifest: Manifest) -> Job {
        Job {
            id,
            dir,
            manifest: Mutex::new(manifest),
            tally: Mutex::new(Tally::default()),
            cancel: CancellationToken::new(),
            error: Mutex::new(None),
        }
    }

    fn results_path(&self) -> PathBuf {
        self.dir.join("results.parquet")
    }

    pub(super) fn tasks_path(&self) -> PathBuf {
        self.dir.join("tasks.arrow")
    }

    pub(crate) fn state(&self) -> JobState {
        self.manifest.lock().state
    }

    pub(crate) fn status(&self) -> JobStatus {
        let m = self.manifest.lock().clone();
        let c = self.tally.lock();
        JobStatus {
            job_id: self.id.clone(),
            name: m.spec.name.clone(),
            state: m.state,
            progress: if m.tasks == 0 {
                1.0
            } else {
                c.tasks() as f64 / m.tasks as f64
            },
            tasks: m.tasks,
            rows: c.tasks(),
            counts: Status::ALL
                .iter()
                .map(|s| (s.as_str(), c.status(*s)))
                .collect(),
            cost_usd: c.cost_usd(),
            created_ms: m.created_ms,
            cancel_requested: m.cancel_requested,
            error: self.error.lock().clone(),
        }
    }

    /// The job as the metrics and the live page show it.
    pub(crate) fn progress(&self) -> JobProgress {
        let m = self.manifest.lock().clone();
        let mut p = JobProgress::from_tally(
            self.id.clone(),
            m.state.as_str(),
            m.tasks,
            0,
            &self.tally.lock(),
            m.created_ms,
        );
        p.name = m.spec.name;
        p.error = self.error.lock().clone();
        p
    }

    /// The figures of the rows committed so far, over the time since the job was accepted
    /// (until it ended).
    pub(crate) fn report(&self) -> Report {
        let m = self.manifest.lock().clone();
        let end = m.finished_ms.unwrap_or_else(now_ms);
        let wall_s = end.saturating_sub(m.created_ms) as f64 / 1000.0;
        self.tally.lock().report(wall_s)
    }

    /// The committed result segments, in commit order: what a reader may stream now.
    pub(crate) fn result_segments(&self) -> Result<Vec<PathBuf>, JobError> {
        Ok(committed_segments(&self.results_path())?)
    }

    /// Asks the job to stop: live episodes end `cancelled`, tasks not started are written
    /// `cancelled` without running. The request is made durable first. Returns the state, which
    /// stays `running` until every row is written. Blocking (it fsyncs).
    pub(crate) fn cancel(&self) -> Result<JobState, JobError> {
        let mut m = self.manifest.lock();
        if m.state == JobState::Running && !m.cancel_requested {
            let mut next = m.clone();
            next.cancel_requested = true;
            write_manifest(&self.dir, &next)?;
            *m = next;
        }
        if m.state == JobState::Running {
            self.cancel.cancel();
        }
        Ok(m.state)
    }

    fn finish(&self) -> Result<JobState, JobError> {
        let mut m = self.manifest.lock();
        let mut next = m.clone();
        next.state = if m.cancel_requested {
            JobState::Cancelled
        } else {
            JobState::Done
        };
        next.finished_ms = Some(now_ms());
        write_manifest(&self.dir, &next)?;
        *m = next;
        Ok(m.state)
    }
}

/// Writes `manifest.json` in `dir` atomically and durably.
pub(super) fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), JobError> {
    let tmp = dir.join("manifest.json.tmp");
    let path = dir.join("manifest.json");
    let body = serde_json::to_vec_pretty(m).expect("manifests serialise");
    write_durably::<FsError>(&tmp, &path, dir, |f| {
        std::io::Write::write_all(f, &body).map_err(fs_error("write", &tmp))
    })?;
    Ok(())
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The uploads open now: how many in all, and per connection (see `super::ingest::UploadSlot`).
#[derive(Debug, Default)]
pub(crate) struct OpenUploads {
    pub(super) total: usize,
    pub(super) per_connection: std::collections::HashMap<Option<std::net::SocketAddr>, usize>,
}

/// Every job of a data directory, and the engine that runs them.
pub struct Jobs {
    pub(super) dir: PathBuf,
    pub(super) engine: Arc<Engine>,
    pub(super) jobs: RwLock<BTreeMap<String, Arc<Job>>>,
    /// Accepted tasks without a committed result, over all jobs.
    pub(super) pending: AtomicU64,
    /// The uploads open now, per connection.
    pub(super) uploads: Mutex<OpenUploads>,
    pub limits: ServerLimits,
}

impl Jobs {
    /// Opens (or creates) the data directory `dir`, drops uploads that were never acknowledged,
    /// loads every job and resumes the unfinished ones. Must be called inside a tokio runtime.
    pub fn open(
        dir: &Path,
        engine: Arc<Engine>,
        limits: ServerLimits,
    ) -> Result<Arc<Jobs>, JobError> {
        let jobs_dir = dir.join("jobs");
        let incoming = dir.join("incoming");
        fs::create_dir_all(&jobs_dir).map_err(fs_error("create directory", &jobs_dir))?;
        if incoming.exists() {
            fs::remove_dir_all(&incoming).map_err(fs_error("remove", &incoming))?;
        }
        fs::create_dir_all(&incoming).map_err(fs_error("create directory", &incoming))?;
        let this = Arc::new(Jobs {
            dir: dir.to_path_buf(),
            engine,
            jobs: RwLock::new(BTreeMap::new()),
            pending: AtomicU64::new(0),
            uploads: Mutex::new(OpenUploads::default()),
            limits,
        });
        let entries = fs::read_dir(&jobs_dir).map_err(fs_error("list", &jobs_dir))?;
        let mut resume = Vec::new();
        for entry in entries {
            let path = entry.map_err(fs_error("list", &jobs_dir))?.path();
            let manifest_path = path.join("manifest.json");
            let text = match fs::read(&manifest_path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("skipping {}: {e}", path.display());
                    continue;
                }
            };
            let manifest: Manifest =
                serde_json::from_slice(&text).map_err(|source| JobError::Manifest {
                    path: manifest_path.clone(),
                    source,
                })?;
            let job = Arc::new(Job::new(manifest.id.clone(), path, manifest));
            let mut tally = Tally::default();
            let mut damaged = None;
            for segment in job.result_segments()? {
                match verify_segment(&segment) {
                    Ok(()) => {}
                    Err(e @ StoreError::Damaged { .. }) => {
                        damaged.get_or_insert(e);
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
                for batch in read_result_batches(&segment)? {
                    let rows =
                        batch_to_results(&batch?).map_err(|source| StoreError::NotResults {
                            path: segment.clone(),
                            source,
                        })?;
                    rows.iter().for_each(|r| tally.add(r));
                }
            }
            let m = job.manifest.lock().clone();
            if m.state == JobState::Running {
                this.pending
                    .fetch_add(m.tasks.saturating_sub(tally.tasks()), Ordering::Relaxed);
                match damaged {
                    None => resume.push(job.clone()),
                    Some(e) => {
                        let message = format!(
                            "{e}\nThe job was not resumed: stop the server, run the command \
                             above, and start the server again; the job then resumes."
                        );
                        tracing::error!("job {}: {message}", job.id);
                        *job.error.lock() = Some(message);
                    }
                }
            } else if let Some(e) = damaged {
                // A finished job's rows are what clients read back: say which file is damaged.
                tracing::error!("job {}: {e}", job.id);
                *job.error.lock() = Some(e.to_string());
            }
            *job.tally.lock() = tally;
            this.jobs.write().insert(job.id.clone(), job);
        }
        for job in resume {
            tokio::spawn(this.clone().run(job));
        }
        Ok(this)
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine that runs this server's jobs.
    pub fn engine_arc(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    pub(crate) fn get(&self, id: &str) -> Result<Arc<Job>, JobError> {
        self.jobs
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| JobError::NotFound(id.to_string()))
    }

    /// How many jobs there are, and how many of them are running.
    pub fn counts(&self) -> (usize, usize) {
        let jobs = self.jobs.read();
        let running = jobs
            .values()
            .filter(|j| j.state() == JobState::Running)
            .count();
        (jobs.len(), running)
    }

    /// Every job, oldest first (ids are time-ordered).
    pub(crate) fn list(&self) -> Vec<Arc<Job>> {
        self.jobs.read().values().cloned().collect()
    }

    /// Tasks accepted and not finished, over all jobs.
    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Refuses when `more` tasks on top of those pending would pass `max_pending_tasks`.
    pub(super) fn check_room(&self, more: u64) -> Result<(), JobError> {
        let pending = self.pending();
        let max = self.limits.max_pending_tasks;
        if pending + more > max || (more == 0 && pending >= max) {
            return Err(JobError::Exhausted(format!(
                "the server has {pending} unfinished tasks and takes at most {max} \
                 (--max-pending-tasks); submit again when some jobs have finished"
            )));
        }
        Ok(())
    }

    /// Drives a job to its end. Storage trouble (descriptors, space, I/O) never leaves it
    /// silently stuck: a failed commit is retried in place, and a failure anywhere else (opening
    /// the store or the task file, the final manifest) resumes the job here after a backoff, as a
    /// restart would; meanwhile the error is in the job's status and the log.
    pub(super) async fn run(self: Arc<Self>, job: Arc<Job>) {
        let max = self.limits.storage_retry_max_delay;
        let mut delay = FIRST_RETRY_DELAY.min(max);
        loop {
            match self.drive(&job).await {
                Ok(()) => return,
                Err(e) => {
                    let message = format!(
                        "{}; resuming the job in {:.1} s",
                        crate::error::chain(&e),
                        delay.as_secs_f64()
                    );
                    tracing::error!("job {}: {message}", job.id);
                    *job.error.lock() = Some(message);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(max);
                }
            }
        }
    }

    /// How a job's runner retries a commit: until it works, the error on the job meanwhile.
    fn commit_retry(&self, job: &Arc<Job>) -> CommitRetry {
        let job = job.clone();
        CommitRetry {
            retry_for: Duration::MAX,
            first_delay: FIRST_RETRY_DELAY.min(self.limits.storage_retry_max_delay),
            max_delay: self.limits.storage_retry_max_delay,
            on_error: Box::new(move |failure| match failure {
                Some(failure) => {
                    let message = format!(
                        "cannot commit results (attempt {}): {}; retrying in {:.1} s",
                        failure.attempt,
                        crate::error::chain(failure.error),
                        failure.wait.as_secs_f64()
                    );
                    tracing::error!("job {}: {message}", job.id);
                    *job.error.lock() = Some(message);
                }
                None => {
                    tracing::info!("job {}: results are committed again", job.id);
                    *job.error.lock() = None;
                }
            }),
        }
    }

    /// The job's tasks through [`run_job`], its counts updated with each commit, then its
    /// manifest marked finished.
    async fn drive(&self, job: &Arc<Job>) -> Result<(), JobError> {
        let out = job.results_path();
        let (store, done) = tokio::task::spawn_blocking(move || ResultStore::open(&out, true))
            .await
            .expect("opening the store does not panic")?;
        tracing::info!(
            "job {}: running; {} tasks already have results",
            job.id,
            done.len()
        );
        let spec = job.manifest.lock().spec.clone();
        let keep = spec.keep_trajectories();
        let tasks = JobTasks {
            path: job.tasks_path(),
            label: format!("job {}", job.id),
            spec,
        };
        let committed = {
            let job = job.clone();
            let pending = &self.pending;
            move |rows: &[crate::task::TaskResult]| {
                let mut tally = job.tally.lock();
                rows.iter().for_each(|r| tally.add(r));
                pending.fetch_sub(rows.len() as u64, Ordering::Relaxed);
            }
        };
        let span = tracing::info_span!("tutti.job", job = %job.id);
        let retry = self.commit_retry(job);
        // Started (again): any error of an earlier try is over.
        *job.error.lock() = None;
        run_job(
            &self.engine,
            tasks,
            done,
            store,
            keep,
            job.cancel.clone(),
            retry,
            committed,
        )
        .instrument(span)
        .await?;
        let finished = job.clone();
        let state = tokio::task::spawn_blocking(move || finished.finish())
            .await
            .expect("writing a manifest does not panic")?;
        let report = job.report();
        let statuses: Vec<String> = report
            .statuses
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        tracing::info!(
            "job {} {}: {} rows ({}) in {:.1} s, ${:.4}",
            job.id,
            state.as_str(),
            report.tasks,
            statuses.join(", "),
            report.wall_s,
            report.cost_usd
        );
        Ok(())
    }
}

impl JobSource for Jobs {
    /// Every job, oldest first.
    fn jobs(&self) -> Vec<JobProgress> {
        let mut jobs: Vec<JobProgress> = self.list().iter().map(|j| j.progress()).collect();
        jobs.sort_by(|a, b| (a.created_ms, &a.job_id).cmp(&(b.created_ms, &b.job_id)));
        jobs
    }
}
