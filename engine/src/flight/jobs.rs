//! The server's jobs: the durable job store in the data directory, ingest of uploaded tasks, the
//! runner that drives each job's tasks through the engine, and what clients read back (state,
//! progress, counts, result batches).
//!
//! Layout of the data directory:
//! ```text
//! DIR/incoming/<id>/            an upload in progress; removed at start-up (never acknowledged)
//! DIR/jobs/<id>/manifest.json   the job's record (spec, task count, state), replaced atomically
//! DIR/jobs/<id>/tasks.arrow     the accepted tasks as uploaded (Arrow IPC file)
//! DIR/jobs/<id>/results.parquet.parts/seg-N.parquet   committed results (see io::results)
//! ```
//! An upload is written under `incoming/`, fsynced, and renamed into `jobs/` before the client
//! gets its job id: an acknowledged job survives `kill -9`. Results are committed in segments
//! (write, fsync, rename); a restarted server reads the ids already committed and runs only the
//! other tasks, so every accepted task ends with exactly one row.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::spec::{JobSpec, JobState, Manifest};
use crate::engine::Engine;
use crate::io::results::{
    batch_to_results, commit_stream, committed_segments, read_result_batches, ResultStore,
    StoreError, COMMIT_ROWS,
};
use crate::io::schema::task_schema;
use crate::io::tasks::{FieldError, InputError, TaskBatchDecoder};
use crate::report::{Report, Tally};
use crate::task::{Status, Task};

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
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_message_bytes: 64 << 20,
            max_tasks_per_job: 10_000_000,
            max_pending_tasks: 20_000_000,
            max_prompt_bytes: 1 << 20,
        }
    }
}

/// Why a job operation failed; the service maps each to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The client's input is wrong (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// A limit would be exceeded (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Exhausted(String),
    #[error("no job `{0}`")]
    NotFound(String),
    /// The server's own storage failed (INTERNAL).
    #[error("job store: {0}")]
    Store(String),
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        JobError::Store(e.to_string())
    }
}

fn io_err<'a>(what: &str, path: &'a Path) -> impl FnOnce(io::Error) -> JobError + 'a {
    let what = what.to_string();
    move |e| JobError::Store(format!("cannot {what} {}: {e}", path.display()))
}

/// One job: its record, its counts, and the token that cancels it.
pub struct Job {
    pub id: String,
    dir: PathBuf,
    manifest: Mutex<Manifest>,
    /// Sums over the committed rows, rebuilt from them after a restart.
    tally: Mutex<Tally>,
    cancel: CancellationToken,
    /// The last failure of this job's runner (storage trouble); the job resumes on restart.
    error: Mutex<Option<String>>,
}

/// A job as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
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
    fn results_path(&self) -> PathBuf {
        self.dir.join("results.parquet")
    }

    fn tasks_path(&self) -> PathBuf {
        self.dir.join("tasks.arrow")
    }

    pub fn state(&self) -> JobState {
        self.manifest.lock().state
    }

    pub fn status(&self) -> JobStatus {
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

    /// The figures of the rows committed so far, over the time since the job was accepted
    /// (until it ended).
    pub fn report(&self) -> Report {
        let m = self.manifest.lock().clone();
        let end = m.finished_ms.unwrap_or_else(now_ms);
        let wall_s = end.saturating_sub(m.created_ms) as f64 / 1000.0;
        self.tally.lock().report(wall_s)
    }

    /// The committed result segments, in commit order: what a reader may stream now.
    pub fn result_segments(&self) -> Result<Vec<PathBuf>, JobError> {
        Ok(committed_segments(&self.results_path())?)
    }

    /// Asks the job to stop: live episodes end `cancelled`, tasks not started are written
    /// `cancelled` without running. The request is made durable first. Returns the state, which
    /// stays `running` until every row is written. Blocking (it fsyncs).
    pub fn cancel(&self) -> Result<JobState, JobError> {
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

/// Writes `manifest.json` in `dir` atomically and durably (temporary file, fsync, rename, fsync of
/// the directory).
fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), JobError> {
    let tmp = dir.join("manifest.json.tmp");
    let path = dir.join("manifest.json");
    let body = serde_json::to_vec_pretty(m).expect("manifests serialise");
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(&body).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), JobError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Every job of a data directory, and the engine that runs them.
pub struct Jobs {
    dir: PathBuf,
    engine: Arc<Engine>,
    jobs: RwLock<BTreeMap<String, Arc<Job>>>,
    /// Accepted tasks without a committed result, over all jobs.
    pending: AtomicU64,
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
        fs::create_dir_all(&jobs_dir).map_err(io_err("create directory", &jobs_dir))?;
        if incoming.exists() {
            fs::remove_dir_all(&incoming).map_err(io_err("remove", &incoming))?;
        }
        fs::create_dir_all(&incoming).map_err(io_err("create directory", &incoming))?;
        let this = Arc::new(Jobs {
            dir: dir.to_path_buf(),
            engine,
            jobs: RwLock::new(BTreeMap::new()),
            pending: AtomicU64::new(0),
            limits,
        });
        let entries = fs::read_dir(&jobs_dir).map_err(io_err("list", &jobs_dir))?;
        let mut resume = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_err("list", &jobs_dir))?.path();
            let manifest_path = path.join("manifest.json");
            let text = match fs::read(&manifest_path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("skipping {}: {e}", path.display());
                    continue;
                }
            };
            let manifest: Manifest = serde_json::from_slice(&text)
                .map_err(|e| JobError::Store(format!("{}: {e}", manifest_path.display())))?;
            let job = Arc::new(Job {
                id: manifest.id.clone(),
                dir: path,
                tally: Mutex::new(Tally::default()),
                cancel: CancellationToken::new(),
                error: Mutex::new(None),
                manifest: Mutex::new(manifest),
            });
            let mut tally = Tally::default();
            for segment in job.result_segments()? {
                for batch in read_result_batches(&segment)? {
                    let rows = batch_to_results(&batch?)
                        .map_err(|e| JobError::Store(format!("{}: {e}", segment.display())))?;
                    rows.iter().for_each(|r| tally.add(r));
                }
            }
            let m = job.manifest.lock().clone();
            if m.state == JobState::Running {
                this.pending
                    .fetch_add(m.tasks.saturating_sub(tally.tasks()), Ordering::Relaxed);
                resume.push(job.clone());
            }
            *job.tally.lock() = tally;
            this.jobs.write().insert(job.id.clone(), job);
        }
        for job in resume {
            tokio::spawn(this.clone().run(job));
        }
        Ok(this)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn get(&self, id: &str) -> Result<Arc<Job>, JobError> {
        self.jobs
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| JobError::NotFound(id.to_string()))
    }

    /// Every job, oldest first (ids are time-ordered).
    pub fn list(&self) -> Vec<Arc<Job>> {
        self.jobs.read().values().cloned().collect()
    }

    /// Tasks accepted and not finished, over all jobs.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Starts an upload: parses and checks the spec, refuses at once when the server is full.
    pub fn begin_upload(self: &Arc<Self>, cmd: &[u8]) -> Result<Upload, JobError> {
        let spec = JobSpec::parse(cmd).map_err(JobError::Invalid)?;
        spec.check(self.engine.catalog())
            .map_err(JobError::Invalid)?;
        self.check_room(0)?;
        let id = uuid::Uuid::now_v7().to_string();
        let dir = self.dir.join("incoming").join(&id);
        fs::create_dir(&dir).map_err(io_err("create directory", &dir))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let worker = {
            let jobs = self.clone();
            let (id, dir) = (id.clone(), dir.clone());
            std::thread::Builder::new()
                .name("tutti-ingest".into())
                .spawn(move || jobs.ingest(&id, &dir, rx))
                .map_err(|e| JobError::Store(format!("cannot start an ingest thread: {e}")))?
        };
        Ok(Upload {
            jobs: self.clone(),
            id,
            dir,
            spec,
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    /// Refuses when `more` tasks on top of those pending would pass `max_pending_tasks`.
    fn check_room(&self, more: u64) -> Result<(), JobError> {
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

    /// The ingest thread of one upload: validates each batch (schema, types, required fields,
    /// duplicate ids, preference keys, prompt size, task count) and appends it to the job's task
    /// file. Returns the number of tasks once the file is complete and fsynced.
    fn ingest(
        &self,
        id: &str,
        dir: &Path,
        rx: std::sync::mpsc::Receiver<Ingest>,
    ) -> Result<u64, JobError> {
        let catalog = self.engine.catalog();
        let max_prompt = self.limits.max_prompt_bytes;
        let check = |t: &Task| {
            if t.prompt.len() > max_prompt {
                return Err(FieldError::new(
                    "prompt",
                    format!(
                        "the prompt is {} bytes; the server takes at most {max_prompt} \
                         (--max-prompt-bytes)",
                        t.prompt.len()
                    ),
                ));
            }
            catalog
                .check_preference(&t.preference)
                .map_err(|message| FieldError::new("preference", message))
        };
        let label = format!("job {id}");
        let invalid = |e: InputError| JobError::Invalid(e.to_string());
        let path = dir.join("tasks.arrow");
        let mut decoder: Option<TaskBatchDecoder> = None;
        let mut writer: Option<FileWriter<BufWriter<File>>> = None;
        let mut rows = 0u64;
        let max_rows = self.limits.max_tasks_per_job;
        let open_writer = |schema: &SchemaRef| -> Result<FileWriter<BufWriter<File>>, JobError> {
            let file = File::create(&path).map_err(io_err("create", &path))?;
            FileWriter::try_new(BufWriter::with_capacity(1 << 20, file), schema)
                .map_err(|e| JobError::Store(format!("{}: {e}", path.display())))
        };
        for item in rx {
            let batch = match item {
                Ingest::Schema(schema) => {
                    if decoder.is_none() {
                        decoder =
                            Some(TaskBatchDecoder::new(&label, &schema, &check).map_err(invalid)?);
                        writer = Some(open_writer(&schema)?);
                    }
                    continue;
                }
                Ingest::Batch(b) => b,
            };
            if decoder.is_none() {
                let schema = batch.schema();
                decoder = Some(TaskBatchDecoder::new(&label, &schema, &check).map_err(invalid)?);
                writer = Some(open_writer(&schema)?);
            }
            rows += batch.num_rows() as u64;
            if rows > max_rows {
                return Err(JobError::Invalid(format!(
                    "{label}: more than {max_rows} tasks; the server takes at most {max_rows} \
                     per job (--max-tasks-per-job): split the job"
                )));
            }
            decoder
                .as_mut()
                .expect("set above")
                .decode(&batch)
                .map_err(invalid)?;
            writer
                .as_mut()
                .expect("set with the decoder")
                .write(&batch)
                .map_err(|e| JobError::Store(format!("{}: {e}", path.display())))?;
        }
        let mut writer = match writer {
            Some(w) => w,
            None => open_writer(&task_schema())?,
        };
        writer
            .finish()
            .map_err(|e| JobError::Store(format!("{}: {e}", path.display())))?;
        let file = writer
            .into_inner()
            .map_err(|e| JobError::Store(format!("{}: {e}", path.display())))?
            .into_inner()
            .map_err(|e| JobError::Store(format!("{}: {}", path.display(), e.error())))?;
        file.sync_all().map_err(io_err("sync", &path))?;
        Ok(rows)
    }

    /// Makes an ingested job durable and known, and starts it. Blocking (fsyncs).
    fn commit_upload(
        self: &Arc<Self>,
        id: String,
        incoming: &Path,
        spec: JobSpec,
        tasks: u64,
    ) -> Result<Arc<Job>, JobError> {
        let manifest = Manifest {
            id: id.clone(),
            spec,
            tasks,
            created_ms: now_ms(),
            finished_ms: None,
            state: JobState::Running,
            cancel_requested: false,
        };
        write_manifest(incoming, &manifest)?;
        // Reserve room before the job becomes visible; give it back if the rename fails.
        let reserved = self.pending.fetch_add(tasks, Ordering::Relaxed);
        if reserved + tasks > self.limits.max_pending_tasks {
            self.pending.fetch_sub(tasks, Ordering::Relaxed);
            return Err(JobError::Exhausted(format!(
                "the server has {reserved} unfinished tasks and takes at most {} \
                 (--max-pending-tasks); this job has {tasks}: submit again when some jobs have \
                 finished",
                self.limits.max_pending_tasks
            )));
        }
        let jobs_dir = self.dir.join("jobs");
        let dir = jobs_dir.join(&id);
        let renamed = fs::rename(incoming, &dir)
            .map_err(io_err("move into place", &dir))
            .and_then(|_| sync_dir(&jobs_dir));
        if let Err(e) = renamed {
            self.pending.fetch_sub(tasks, Ordering::Relaxed);
            return Err(e);
        }
        let job = Arc::new(Job {
            id: id.clone(),
            dir,
            manifest: Mutex::new(manifest),
            tally: Mutex::new(Tally::default()),
            cancel: CancellationToken::new(),
            error: Mutex::new(None),
        });
        tracing::info!(
            "job {id} accepted: {tasks} tasks{}",
            job.manifest
                .lock()
                .spec
                .name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
        self.jobs.write().insert(id, job.clone());
        tokio::spawn(self.clone().run(job.clone()));
        Ok(job)
    }

    /// Drives a job to its end; a storage failure is recorded on the job (which then resumes
    /// on the next start).
    async fn run(self: Arc<Self>, job: Arc<Job>) {
        if let Err(e) = self.drive(&job).await {
            tracing::error!("job {}: {e}", job.id);
            *job.error.lock() = Some(e.to_string());
        }
    }

    async fn drive(&self, job: &Arc<Job>) -> Result<(), JobError> {
        let out = job.results_path();
        let (store, done) = tokio::task::spawn_blocking(move || ResultStore::open(&out, true))
            .await
            .expect("opening the store does not panic")?;
        let spec = job.manifest.lock().spec.clone();
        let keep = spec.keep_trajectories();

        // Tasks stream from the task file, read on a blocking thread, skipping those done.
        let (task_tx, mut task_rx) = mpsc::channel::<Task>(COMMIT_ROWS);
        let reader = {
            let (path, id) = (job.tasks_path(), job.id.clone());
            let engine = self.engine.clone();
            tokio::task::spawn_blocking(move || {
                read_job_tasks(&path, &id, &engine, &spec, &done, task_tx)
            })
        };
        let tasks = futures::stream::poll_fn(move |cx| task_rx.poll_recv(cx));

        let (tx, rx) = mpsc::channel(4 * COMMIT_ROWS);
        let writer = {
            let job = job.clone();
            let pending = &self.pending;
            commit_stream(rx, store, keep, move |rows| {
                let mut tally = job.tally.lock();
                rows.iter().for_each(|r| tally.add(r));
                pending.fetch_sub(rows.len() as u64, Ordering::Relaxed);
            })
        };
        let (_, written) = tokio::join!(self.engine.run(tasks, tx, job.cancel.clone()), writer);
        written?;
        reader.await.expect("the task reader does not panic")?;
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

/// Reads a job's accepted tasks, skipping `done`, applying the spec's defaults, and sends them.
fn read_job_tasks(
    path: &Path,
    id: &str,
    engine: &Engine,
    spec: &JobSpec,
    done: &HashSet<String>,
    tx: mpsc::Sender<Task>,
) -> Result<(), JobError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let reader = FileReader::try_new(io::BufReader::new(file), None)
        .map_err(|e| JobError::Store(format!("{}: {e}", path.display())))?;
    let catalog = engine.catalog();
    let check = |t: &Task| {
        catalog
            .check_preference(&t.preference)
            .map_err(|message| FieldError::new("preference", message))
    };
    let label = format!("job {id}");
    let mut decoder = TaskBatchDecoder::new(&label, &reader.schema(), &check)
        .map_err(|e| JobError::Store(format!("{}: {e}", path.display())))?;
    for batch in reader {
        let batch = batch.map_err(|e| JobError::Store(format!("{}: {e}", path.display())))?;
        let tasks = decoder
            .decode(&batch)
            .map_err(|e| JobError::Store(format!("{}: {e}", path.display())))?;
        for mut task in tasks {
            if done.contains(&task.id) {
                continue;
            }
            spec.apply(&mut task);
            if tx.blocking_send(task).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// What the service hands the ingest thread.
pub enum Ingest {
    Schema(SchemaRef),
    Batch(RecordBatch),
}

/// An upload in progress: batches go to its ingest thread; [`finish`](Upload::finish) makes the
/// job durable and starts it. Dropped unfinished, it leaves nothing behind.
pub struct Upload {
    jobs: Arc<Jobs>,
    id: String,
    dir: PathBuf,
    spec: JobSpec,
    tx: Option<std::sync::mpsc::SyncSender<Ingest>>,
    worker: Option<std::thread::JoinHandle<Result<u64, JobError>>>,
}

impl Upload {
    /// Hands over the stream's schema or one batch. An error here is final: the ingest thread
    /// has stopped on a bad batch (its error is returned) or on a storage failure.
    pub async fn send(&mut self, item: Ingest) -> Result<(), JobError> {
        let tx = self.tx.clone().expect("open until finish");
        let sent = tokio::task::spawn_blocking(move || tx.send(item).is_ok())
            .await
            .expect("sending does not panic");
        if sent {
            return Ok(());
        }
        self.tx = None;
        Err(self.join().await.err().unwrap_or_else(|| {
            JobError::Store("the ingest thread stopped without an error".into())
        }))
    }

    async fn join(&mut self) -> Result<u64, JobError> {
        let worker = self.worker.take().expect("joined once");
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .expect("joining does not panic")
            .unwrap_or_else(|_| Err(JobError::Store("the ingest thread panicked".into())))
    }

    /// Ends the upload: waits for the task file to be complete and fsynced, writes the manifest,
    /// moves the job into place and starts it. When this returns, the job is durable.
    pub async fn finish(mut self) -> Result<Arc<Job>, JobError> {
        self.tx = None;
        let tasks = self.join().await?;
        let (jobs, id, dir, spec) = (
            self.jobs.clone(),
            self.id.clone(),
            self.dir.clone(),
            self.spec.clone(),
        );
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _guard = handle.enter();
            jobs.commit_upload(id, &dir, spec, tasks)
        })
        .await
        .expect("committing an upload does not panic")
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Finished uploads have moved their directory; this removes abandoned ones.
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
