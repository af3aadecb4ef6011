//! The one path of a job's tasks, for `tutti run` and `tutti serve` alike: tasks are read on a
//! blocking thread, the ids already committed are skipped here and nowhere else, the rest run on
//! the engine, and their results are committed in groups by [`commit_stream`] (the one function
//! that commits results).

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use arrow::ipc::reader::FileReader;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::{arrow_error, JobError};
use super::spec::JobSpec;
use crate::engine::Engine;
use crate::io::durable::fs_error;
use crate::io::results::{commit_stream, CommitRetry, ResultStore, COMMIT_ROWS};
use crate::io::tasks::TaskBatchDecoder;
use crate::task::{Task, TaskResult};

/// Where a job's tasks come from. Reading is blocking (files); [`run_job`] runs it on a blocking
/// thread.
pub trait TaskSource: Send + 'static {
    /// Hands every task, in input order, to `each`, and stops early when `each` says `false`.
    fn each(self, each: &mut dyn FnMut(Task) -> bool) -> Result<(), JobError>;
}

/// Tasks already read and validated (`tutti run`'s input file).
impl TaskSource for Vec<Task> {
    fn each(self, each: &mut dyn FnMut(Task) -> bool) -> Result<(), JobError> {
        for task in self {
            if !each(task) {
                break;
            }
        }
        Ok(())
    }
}

/// A served job's accepted tasks: its Arrow IPC task file, with the job spec's defaults applied.
/// The rows were validated at ingest; here they are only decoded.
pub(super) struct JobTasks {
    pub path: PathBuf,
    /// Names the job in errors.
    pub label: String,
    pub spec: JobSpec,
}

impl TaskSource for JobTasks {
    fn each(self, each: &mut dyn FnMut(Task) -> bool) -> Result<(), JobError> {
        let path = &self.path;
        let file = File::open(path).map_err(fs_error("open", path))?;
        let reader = FileReader::try_new(BufReader::new(file), None).map_err(arrow_error(path))?;
        let stored = |source| JobError::Tasks {
            path: path.clone(),
            source: Box::new(source),
        };
        let mut decoder =
            TaskBatchDecoder::accepted(&self.label, &reader.schema()).map_err(stored)?;
        for batch in reader {
            let batch = batch.map_err(arrow_error(path))?;
            for mut task in decoder.decode(&batch).map_err(stored)? {
                self.spec.apply(&mut task);
                if !each(task) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Runs the tasks of `source` whose ids are not in `done` on `engine`, and commits their results
/// to `store` as they finish (every `COMMIT_ROWS` rows or 250 ms), calling `committed` with
/// each group once it is durable. Without `keep_trajectories` each row's trajectory is dropped
/// before it is written. A failed commit is retried as `retry` says. `cancel` ends live episodes
/// `cancelled` and writes the tasks not yet started as `cancelled`. Returns the store once every
/// result is committed.
// Each argument is a separate choice of the three callers (`tutti run`, `tutti serve`, Python);
// a struct bundling them would only rename the list.
#[allow(clippy::too_many_arguments)]
pub async fn run_job(
    engine: &Engine,
    source: impl TaskSource,
    done: HashSet<String>,
    store: ResultStore,
    keep_trajectories: bool,
    cancel: CancellationToken,
    retry: CommitRetry,
    committed: impl FnMut(&[TaskResult]) + Send,
) -> Result<ResultStore, JobError> {
    let (task_tx, mut task_rx) = mpsc::channel::<Task>(COMMIT_ROWS);
    let reader = tokio::task::spawn_blocking(move || {
        source.each(&mut |task| done.contains(&task.id) || task_tx.blocking_send(task).is_ok())
    });
    let tasks = futures::stream::poll_fn(move |cx| task_rx.poll_recv(cx));
    let (tx, rx) = mpsc::channel(4 * COMMIT_ROWS);
    let writer = commit_stream(rx, store, keep_trajectories, retry, committed);
    let (_, written) = tokio::join!(engine.run(tasks, tx, cancel), writer);
    let store = written?;
    reader
        .await
        .map_err(|_| JobError::Thread("task reader"))??;
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineOptions;
    use crate::io::results::read_results;
    use crate::test_support::{config, Scripted};
    use std::sync::Arc;
    use tutti_model::hermes::model_call_text;

    fn tasks(n: usize) -> Vec<Task> {
        (0..n)
            .map(|i| Task {
                id: format!("t{i}"),
                prompt: format!("task {i}"),
                ..Task::default()
            })
            .collect()
    }

    /// Runs `tasks` with `done` already committed; returns the rows committed now and the ids
    /// the callback saw.
    async fn run(tasks: Vec<Task>, done: &[&str], keep: bool) -> (Vec<TaskResult>, Vec<String>) {
        let engine = Engine::with_executor(
            &config(""),
            EngineOptions::default(),
            Arc::new(Scripted::new(&[model_call_text("answer", "a-1")])),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.parquet");
        let (store, _) = ResultStore::open(&out, false).unwrap();
        let done: HashSet<String> = done.iter().map(|s| s.to_string()).collect();
        let mut seen = Vec::new();
        let store = run_job(
            &engine,
            tasks,
            done,
            store,
            keep,
            CancellationToken::new(),
            CommitRetry::none(),
            |rows: &[TaskResult]| seen.extend(rows.iter().map(|r| r.id.clone())),
        )
        .await
        .unwrap();
        store.finish().unwrap();
        (read_results(&out).unwrap(), seen)
    }

    #[tokio::test]
    async fn committed_ids_are_skipped_and_every_other_task_is_committed_once() {
        let (rows, mut seen) = run(tasks(50), &["t3", "t10", "t49"], true).await;
        assert_eq!(rows.len(), 47);
        seen.sort();
        let mut expected: Vec<String> = (0..50)
            .map(|i| format!("t{i}"))
            .filter(|id| !["t3", "t10", "t49"].contains(&id.as_str()))
            .collect();
        expected.sort();
        assert_eq!(seen, expected);
        assert!(rows.iter().all(|r| r.trajectory.is_some()));
    }

    #[tokio::test]
    async fn without_trajectories_rows_are_written_without_them() {
        let (rows, _) = run(tasks(5), &[], false).await;
        assert_eq!(rows.len(), 5);
        assert!(rows.iter().all(|r| r.trajectory.is_none()));
    }
}
