//! Ingest of uploaded tasks: an [`Upload`] hands each Arrow batch to its own thread, which
//! validates it (the same [`TaskBatchDecoder`] as `tutti run`: schema, types, nulls, duplicate ids
//! across batches, preference keys, prompt size, task count) and appends it to the job's task file
//! under `incoming/`; [`Upload::finish`] makes the job durable and starts it.
//!
//! Open uploads are bounded: each holds an [`UploadSlot`], counted over the server
//! (`max_open_uploads`) and per connection (`max_uploads_per_connection`). The ingest thread is
//! started by the first batch, so an upload that has sent only its descriptor and schema holds
//! no thread and no file.

use std::fs::{self, File};
use std::io::BufWriter;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::FileWriter;

use super::error::{arrow_error, JobError};
use super::spec::{JobSpec, JobState, Manifest};
use super::store::{now_ms, write_manifest, Job, Jobs};
use crate::io::durable::{fs_error, rename_durably};
use crate::io::schema::task_schema;
use crate::io::tasks::{FieldError, InputError, TaskBatchDecoder};
use crate::task::Task;

/// One open upload's place under the limits; dropping it frees the place.
pub(crate) struct UploadSlot {
    jobs: Arc<Jobs>,
    peer: Option<SocketAddr>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut open = self.jobs.uploads.lock();
        open.total -= 1;
        if let Some(n) = open.per_connection.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.per_connection.remove(&self.peer);
            }
        }
    }
}

impl Jobs {
    /// Takes a place for a new upload from `peer`, or refuses at once when the server, or that
    /// connection, has as many uploads open as it takes.
    pub(crate) fn open_upload(
        self: &Arc<Self>,
        peer: Option<SocketAddr>,
    ) -> Result<UploadSlot, JobError> {
        let (max, per) = (
            self.limits.max_open_uploads,
            self.limits.max_uploads_per_connection,
        );
        let mut open = self.uploads.lock();
        if open.total >= max {
            return Err(JobError::Exhausted(format!(
                "the server has {max} uploads open and takes at most {max} \
                 (--max-open-uploads): finish or close an upload, or try again later"
            )));
        }
        let mine = open.per_connection.entry(peer).or_default();
        if *mine >= per {
            return Err(JobError::Exhausted(format!(
                "this connection ({}) has {per} uploads open and may have at most {per} \
                 (--max-uploads-per-connection): finish one first",
                peer.map_or("unknown peer".to_string(), |p| p.to_string())
            )));
        }
        *mine += 1;
        open.total += 1;
        Ok(UploadSlot {
            jobs: self.clone(),
            peer,
        })
    }

    /// Uploads open now, over all connections.
    pub(crate) fn open_uploads(&self) -> usize {
        self.uploads.lock().total
    }

    /// Starts an upload in `slot`: parses and checks the spec, refuses at once when the server
    /// has no room for more tasks.
    pub(crate) fn begin_upload(
        self: &Arc<Self>,
        slot: UploadSlot,
        cmd: &[u8],
    ) -> Result<Upload, JobError> {
        let spec = JobSpec::parse(cmd).map_err(JobError::Invalid)?;
        spec.check(self.engine.catalog())
            .map_err(JobError::Invalid)?;
        self.check_room(0)?;
        let id = uuid::Uuid::now_v7().to_string();
        let dir = self.dir.join("incoming").join(&id);
        fs::create_dir(&dir).map_err(fs_error("create directory", &dir))?;
        Ok(Upload {
            jobs: self.clone(),
            id,
            dir,
            spec,
            schema: None,
            tx: None,
            worker: None,
            _slot: slot,
        })
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
            let file = File::create(&path).map_err(fs_error("create", &path))?;
            FileWriter::try_new(BufWriter::with_capacity(1 << 20, file), schema)
                .map_err(arrow_error(&path))
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
                .map_err(arrow_error(&path))?;
        }
        let mut writer = match writer {
            Some(w) => w,
            None => open_writer(&task_schema())?,
        };
        writer.finish().map_err(arrow_error(&path))?;
        let file = writer
            .into_inner()
            .map_err(arrow_error(&path))?
            .into_inner()
            .map_err(|e| fs_error("write", &path)(e.into_error()))?;
        file.sync_all().map_err(fs_error("sync", &path))?;
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
        if let Err(e) = rename_durably(incoming, &dir, &jobs_dir) {
            self.pending.fetch_sub(tasks, Ordering::Relaxed);
            return Err(e.into());
        }
        let job = Arc::new(Job::new(id.clone(), dir, manifest));
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
}

/// What the service hands the ingest thread.
pub(crate) enum Ingest {
    Schema(SchemaRef),
    Batch(RecordBatch),
}

/// An upload in progress: batches go to its ingest thread, started by the first batch;
/// [`finish`](Upload::finish) makes the job durable and starts it. Dropped unfinished, it leaves
/// nothing behind and frees its slot.
pub(crate) struct Upload {
    jobs: Arc<Jobs>,
    id: String,
    dir: PathBuf,
    spec: JobSpec,
    /// The stream's schema, held until the ingest thread starts.
    schema: Option<SchemaRef>,
    tx: Option<std::sync::mpsc::SyncSender<Ingest>>,
    worker: Option<std::thread::JoinHandle<Result<u64, JobError>>>,
    _slot: UploadSlot,
}

impl Upload {
    /// Starts the ingest thread, handing it the schema seen so far.
    fn start_worker(&mut self) -> Result<(), JobError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        if let Some(schema) = self.schema.take() {
            tx.send(Ingest::Schema(schema))
                .expect("the receiver is still here");
        }
        let jobs = self.jobs.clone();
        let (id, incoming) = (self.id.clone(), self.dir.clone());
        let worker = std::thread::Builder::new()
            .name("tutti-ingest".into())
            .spawn(move || jobs.ingest(&id, &incoming, rx))
            .map_err(fs_error("start an ingest thread for", &self.dir))?;
        self.tx = Some(tx);
        self.worker = Some(worker);
        Ok(())
    }

    /// Hands over the stream's schema or one batch. An error here is final: the ingest thread
    /// has stopped on a bad batch (its error is returned) or on a storage failure.
    pub(crate) async fn send(&mut self, item: Ingest) -> Result<(), JobError> {
        if self.worker.is_none() {
            match item {
                Ingest::Schema(schema) => {
                    self.schema.get_or_insert(schema);
                    return Ok(());
                }
                Ingest::Batch(_) => self.start_worker()?,
            }
        }
        let tx = self.tx.clone().expect("open until finish");
        let sent = tokio::task::spawn_blocking(move || tx.send(item).is_ok())
            .await
            .expect("sending does not panic");
        if sent {
            return Ok(());
        }
        self.tx = None;
        Err(self
            .join()
            .await
            .err()
            .unwrap_or(JobError::Thread("ingest")))
    }

    async fn join(&mut self) -> Result<u64, JobError> {
        let worker = self.worker.take().expect("joined once");
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .expect("joining does not panic")
            .unwrap_or(Err(JobError::Thread("ingest")))
    }

    /// Ends the upload: waits for the task file to be complete and fsynced, writes the manifest,
    /// moves the job into place and starts it. When this returns, the job is durable.
    pub(crate) async fn finish(mut self) -> Result<Arc<Job>, JobError> {
        if self.worker.is_none() {
            self.start_worker()?;
        }
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
