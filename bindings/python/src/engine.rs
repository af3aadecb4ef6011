//! `_Engine` and `_Run`: an engine with its own async runtime, and one run over a table of tasks.
//!
//! A run validates the whole table first (so a bad row is an exception before anything runs),
//! then goes down the same path as `tutti run`: [`run_job`] skips the ids already done, drives
//! the engine and commits results to a [`ResultStore`] (the caller's output file, or a temporary
//! one), and each committed group comes back joined to its input rows as one record batch. The
//! GIL is released while the iterator waits; it wakes every [`SIGNAL_POLL`] to let Ctrl-C
//! through, which cancels the run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::Schema;
use arrow::ffi_stream::RecordBatchStreamReader;
use arrow::record_batch::RecordBatch;
use arrow_pyarrow::PyArrowType;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;
use pyo3::prelude::*;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tutti_engine::config::{self, Config};
use tutti_engine::io::{preference_check, OutputShape, Reopen, ResultStore};
use tutti_engine::jobs::{run_job, TaskTable};
use tutti_engine::{chain, preflight, Engine, EngineOptions, Tally, TaskResult};

use crate::errors::{config_error, task_error, tutti_error};

/// How often a waiting iterator takes the GIL back to check for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// The names of the bundled configs.
pub(crate) fn profile_names() -> Vec<&'static str> {
    config::PROFILES.iter().map(|(name, _)| *name).collect()
}

/// An engine built from a config, with the runtime its coalescers and episodes run on.
#[pyclass(name = "_Engine", module = "tutti._tutti", frozen)]
pub(crate) struct PyEngine {
    engine: Arc<Engine>,
    cfg: Config,
    /// The cancel tokens of the runs started here, for `cancel()`.
    runs: Mutex<Vec<CancellationToken>>,
    rt: Option<Runtime>,
    /// Problems the start-up check found that do not stop a run.
    warnings: Vec<String>,
}

impl Drop for PyEngine {
    fn drop(&mut self) {
        for run in self.runs.get_mut().drain(..) {
            run.cancel();
        }
        // Without waiting: a worker may be waiting for the GIL, which the dropping thread holds.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl PyEngine {
    fn rt(&self) -> &Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the engine")
    }
}

/// Reads a config: `kind` says what `value` is (`path`, `profile`, `toml` text, or `json` text of
/// a dict).
fn load_config(kind: &str, value: &str) -> Result<Config, String> {
    let error = |e: &dyn std::error::Error| e.to_string();
    match kind {
        "path" => Config::load(Path::new(value)).map_err(|e| error(&e)),
        "profile" => config::bundled(value).ok_or_else(|| {
            format!(
                "no bundled config `{value}` (and no such file); the bundled ones are {}",
                profile_names().join(", ")
            )
        }),
        "toml" => Config::parse(value, "<config string>").map_err(|e| error(&e)),
        "json" => {
            let json: serde_json::Value = serde_json::from_str(value).map_err(|e| error(&e))?;
            let toml = toml::Value::try_from(&json)
                .and_then(|v| toml::to_string(&v))
                .map_err(|e| format!("the config dict cannot be written as TOML: {e}"))?;
            Config::parse(&toml, "<config dict>").map_err(|e| error(&e))
        }
        other => Err(format!("unknown config kind `{other}`")),
    }
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (kind, value, trajectories = true))]
    fn new(py: Python<'_>, kind: &str, value: &str, trajectories: bool) -> PyResult<PyEngine> {
        let cfg = load_config(kind, value).map_err(|m| config_error(py, m))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("tutti")
            .build()
            .map_err(|e| tutti_error(py, format!("cannot start the async runtime: {e}")))?;
        let opts = EngineOptions {
            record_trajectories: trajectories,
            host: Some(Arc::new(crate::vllm_rs::Host)),
            ..EngineOptions::default()
        };
        let built = py.detach(|| {
            rt.block_on(async {
                let checked = preflight::check(&cfg).await;
                if !checked.ok() {
                    return Err(format!(
                        "{} of the {} servers and programs this config reaches cannot be \
                         reached:\n  {}",
                        checked.problems.len(),
                        checked.checked.max(checked.problems.len()),
                        checked.problems.join("\n  ")
                    ));
                }
                let engine = Engine::new(&cfg, opts).map_err(|e| chain(&e))?;
                Ok((engine, checked.warnings))
            })
        });
        let (engine, warnings) = built.map_err(|m| tutti_error(py, m))?;
        Ok(PyEngine {
            engine: Arc::new(engine),
            cfg,
            runs: Mutex::new(Vec::new()),
            rt: Some(rt),
            warnings,
        })
    }

    /// Start-up warnings (problems that do not stop a run).
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// Validates `tasks` (an Arrow C stream) and starts running them; returns the run, which
    /// yields the committed result batches.
    #[pyo3(signature = (tasks, output = None, resume = false, trajectories = true))]
    fn start(
        &self,
        py: Python<'_>,
        tasks: PyArrowType<RecordBatchStreamReader>,
        output: Option<PathBuf>,
        resume: bool,
        trajectories: bool,
    ) -> PyResult<PyRun> {
        let reader = tasks.0;
        let check = preference_check(&self.cfg);
        let table = py
            .detach(|| TaskTable::read("tasks", reader, &check))
            .map_err(|e| task_error(py, &e))?;
        let reopen = Reopen {
            resume,
            retry: Vec::new(),
        };
        // Without an output, results are committed to a temporary store removed with the run.
        let (out, scratch) = match output {
            Some(out) => (out, None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("tutti-run-")
                    .tempdir()
                    .map_err(|e| {
                        tutti_error(py, format!("cannot make a scratch directory: {e}"))
                    })?;
                (dir.path().join("results.parquet"), Some(dir))
            }
        };
        let (store, done) =
            ResultStore::open_with(&out, &reopen).map_err(|e| tutti_error(py, chain(&e)))?;
        let skipped = done.len() as u64;
        let total = table.len() as u64;
        let schema = table.result_schema();

        let cancel = CancellationToken::new();
        {
            let mut runs = self.runs.lock();
            runs.retain(|r| !r.is_cancelled());
            runs.push(cancel.clone());
        }
        let (tx, rx) = crossbeam_channel::unbounded::<RecordBatch>();
        let engine = self.engine.clone();
        let run_cancel = cancel.clone();
        // Cancelled once the run ends too, so that `runs` forgets it at the next start.
        let ended = cancel.clone().drop_guard();
        let write_output = scratch.is_none();
        let handle = self.rt().spawn(async move {
            let _ended = ended;
            let started = Instant::now();
            let mut tally = Tally::default();
            let mut join_error = None;
            let joiner = table.clone();
            let committed = |rows: &[TaskResult]| {
                rows.iter().for_each(|r| tally.add(r));
                match joiner.join(rows) {
                    Ok(batch) => {
                        // The iterator may be gone (dropped unfinished): the rows stay committed.
                        let _ = tx.send(batch);
                    }
                    Err(e) => {
                        join_error.get_or_insert(e);
                    }
                }
            };
            let store = run_job(
                &engine,
                table.clone(),
                done,
                store,
                trajectories,
                run_cancel,
                tutti_engine::io::CommitRetry::none(),
                committed,
            )
            .await
            .map_err(|e| chain(&e))?;
            if let Some(e) = join_error {
                return Err(format!("cannot join results to their input rows: {e}"));
            }
            engine.flush();
            let rows = if write_output {
                let finished = tokio::task::spawn_blocking(move || {
                    let shape = OutputShape {
                        input: Some(table.input_columns().map_err(|e| e.to_string())?),
                        openai_batch: None,
                    };
                    store.finish_with(&shape).map_err(|e| chain(&e))
                });
                Some(finished.await.map_err(|_| "the result writer panicked")??)
            } else {
                None
            };
            let report = tally.report(started.elapsed().as_secs_f64());
            let summary = serde_json::json!({
                "rows": rows,
                "report": report,
                "ledger": engine.ledger(),
            });
            Ok(summary.to_string())
        });
        Ok(PyRun {
            rx,
            outcome: Mutex::new(Outcome::Running(handle)),
            rt: self.rt().handle().clone(),
            cancel,
            schema: Arc::new(schema.as_ref().clone()),
            total,
            skipped,
            _scratch: scratch,
        })
    }

    /// Cancels every run of this engine: live episodes end `cancelled`, tasks not started are
    /// reported `cancelled`; each run still yields a row for every task.
    fn cancel(&self) {
        for run in self.runs.lock().drain(..) {
            run.cancel();
        }
    }

    /// The engine's ledger so far, as JSON: tokens, calls and dollars per backend.
    fn ledger_json(&self) -> String {
        serde_json::to_string(&self.engine.ledger()).expect("the ledger serializes")
    }
}

enum Outcome {
    Running(JoinHandle<Result<String, String>>),
    /// A thread is waiting for the end.
    Waiting,
    /// The summary JSON, once the run has ended well.
    Done(String),
    Failed(String),
}

/// One run: an iterator over its committed result batches, in commit order.
#[pyclass(name = "_Run", module = "tutti._tutti", frozen)]
pub(crate) struct PyRun {
    rx: Receiver<RecordBatch>,
    outcome: Mutex<Outcome>,
    rt: tokio::runtime::Handle,
    cancel: CancellationToken,
    schema: Arc<Schema>,
    total: u64,
    skipped: u64,
    /// The scratch store of a run without an output, removed when the run is dropped.
    _scratch: Option<tempfile::TempDir>,
}

impl PyRun {
    /// Waits for the run's end (the GIL released) and keeps its outcome.
    fn finish(&self, py: Python<'_>) -> PyResult<String> {
        loop {
            // The lock is only held for a moment, never while waiting without the GIL.
            let running = {
                let mut outcome = self.outcome.lock();
                match std::mem::replace(&mut *outcome, Outcome::Waiting) {
                    Outcome::Running(handle) => Some(handle),
                    Outcome::Waiting => None,
                    Outcome::Done(summary) => {
                        *outcome = Outcome::Done(summary.clone());
                        return Ok(summary);
                    }
                    Outcome::Failed(message) => {
                        *outcome = Outcome::Failed(message.clone());
                        return Err(tutti_error(py, message));
                    }
                }
            };
            match running {
                Some(handle) => {
                    let rt = self.rt.clone();
                    let ended = py.detach(move || rt.block_on(handle));
                    *self.outcome.lock() = match ended {
                        Ok(Ok(summary)) => Outcome::Done(summary),
                        Ok(Err(message)) => Outcome::Failed(message),
                        Err(e) => Outcome::Failed(format!("the run panicked: {e}")),
                    };
                }
                // Another thread is waiting for the end: wait for it to record the outcome.
                None => py.detach(|| std::thread::sleep(SIGNAL_POLL)),
            }
        }
    }
}

#[pymethods]
impl PyRun {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyArrowType<RecordBatch>>> {
        loop {
            let rx = self.rx.clone();
            match py.detach(move || rx.recv_timeout(SIGNAL_POLL)) {
                Ok(batch) => return Ok(Some(PyArrowType(batch))),
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(interrupt) = py.check_signals() {
                        // Ctrl-C: cancel, let the run write its `cancelled` rows, then raise.
                        self.cancel.cancel();
                        let _ = self.finish(py);
                        return Err(interrupt);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.finish(py)?;
                    return Ok(None);
                }
            }
        }
    }

    /// Cancels this run (from any thread): live episodes end `cancelled` and tasks not started
    /// are reported `cancelled`, so every task still gets a row.
    fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The schema of the result batches: `tutti run`'s output schema for this input.
    #[getter]
    fn schema(&self) -> PyArrowType<Schema> {
        PyArrowType(self.schema.as_ref().clone())
    }

    /// Tasks in the input.
    #[getter]
    fn total(&self) -> u64 {
        self.total
    }

    /// Tasks skipped because the output already had them (`resume=True`).
    #[getter]
    fn skipped(&self) -> u64 {
        self.skipped
    }

    /// After the last batch: the run's summary as JSON (`rows` written to the output, the
    /// `report` of statuses and latencies, the engine's `ledger`).
    fn summary_json(&self, py: Python<'_>) -> PyResult<String> {
        self.finish(py)
    }
}
