//! Result output: [`TaskResult`] rows to and from Arrow, and [`ResultStore`], the durable,
//! resumable Parquet output of `tutti run TASKS -o OUT.parquet [--resume]`.
//!
//! While a job runs, results are committed in segments: each [`ResultStore::append`] writes one
//! complete Parquet file into `OUT.parquet.parts/` by write, fsync, rename, fsync of the directory.
//! A segment therefore either exists whole or not at all, and a `kill -9` at any moment loses
//! nothing that was committed. [`ResultStore::finish`] merges the segments into `OUT.parquet` and
//! de-duplicates by id, so a run killed even during the merge ends, after `--resume`, with every
//! id exactly once.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int32Array, Int64Array, ListArray,
    RecordBatch, StringArray, StructArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use arrow::error::ArrowError;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;

use super::schema::{call_fields, call_item_field, result_schema, type_name};
use crate::task::{CallRecord, Status, TaskResult};

/// Builds a batch in [`result_schema`] from result rows, a column at a time.
pub fn results_to_batch(rows: &[TaskResult]) -> RecordBatch {
    let strings = |f: fn(&TaskResult) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let opt_strings = |f: fn(&TaskResult) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        strings(|r| &r.id),
        strings(|r| r.status.as_str()),
        opt_strings(|r| r.answer.as_deref()),
        Arc::new(rows.iter().map(|r| r.correct).collect::<BooleanArray>()),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.turns))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.cost_usd),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.latency_ms),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.orchestrator_tokens),
        )),
        Arc::new(calls_column(rows)),
        opt_strings(|r| r.trajectory.as_deref()),
        opt_strings(|r| r.error.as_deref()),
        opt_strings(|r| r.metadata.as_deref()),
        Arc::new(rows.iter().map(|r| r.reward).collect::<Float64Array>()),
        opt_strings(|r| r.reward_info.as_deref()),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.orchestrator_cost_usd),
        )),
    ];
    RecordBatch::try_new(result_schema(), columns).expect("columns match the result schema")
}

/// The `calls` column: the calls of all rows flattened into one struct array, cut by offsets.
fn calls_column(rows: &[TaskResult]) -> ListArray {
    let calls = || rows.iter().flat_map(|r| r.calls.iter());
    let strings = |f: fn(&CallRecord) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(calls().map(f)))
    };
    let cached: Vec<bool> = calls().map(|c| c.cached).collect();
    let fields: Vec<ArrayRef> = vec![
        strings(|c| &c.tool),
        strings(|c| &c.alias),
        strings(|c| &c.backend),
        Arc::new(BooleanArray::from(cached)),
        Arc::new(Int64Array::from_iter_values(
            calls().map(|c| c.input_tokens),
        )),
        Arc::new(Int64Array::from_iter_values(
            calls().map(|c| c.output_tokens),
        )),
        Arc::new(Float64Array::from_iter_values(calls().map(|c| c.cost_usd))),
        Arc::new(Int64Array::from_iter_values(calls().map(|c| c.latency_ms))),
    ];
    let values = StructArray::new(call_fields(), fields, None);
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.calls.len()));
    ListArray::new(Arc::new(call_item_field()), offsets, Arc::new(values), None)
}

/// Why a batch could not be read as result rows.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("missing column `{column}`")]
    MissingColumn { column: String },
    #[error("column `{column}`: expected {expected}, found {found}")]
    ColumnType {
        column: String,
        expected: String,
        found: String,
    },
    #[error("column `{column}` has nulls but the result schema requires a value")]
    Null { column: String },
    #[error(
        "row {row}: unknown status `{status}`; expected one of {}",
        status_names()
    )]
    Status { row: usize, status: String },
}

fn status_names() -> String {
    Status::ALL.map(Status::as_str).join(", ")
}

/// Reads result rows back from a batch in [`result_schema`] (columns are found by name): the
/// inverse of [`results_to_batch`].
pub fn batch_to_results(batch: &RecordBatch) -> Result<Vec<TaskResult>, ResultsError> {
    let batch = conform(batch)?;
    let col = |i: usize| batch.column(i);
    let text = |i: usize| col(i).as_string::<i32>();
    let (ids, statuses, answers) = (text(0), text(1), text(2));
    let correct = col(3).as_boolean();
    let turns = col(4).as_primitive::<Int32Type>();
    let costs = col(5).as_primitive::<Float64Type>();
    let latencies = col(6).as_primitive::<Int64Type>();
    let tokens = col(7).as_primitive::<Int64Type>();
    let calls = col(8).as_list::<i32>();
    let (trajectories, errors, metadata) = (text(9), text(10), text(11));
    let rewards = col(12).as_primitive::<Float64Type>();
    let reward_infos = text(13);
    let orchestrator_costs = col(14).as_primitive::<Float64Type>();

    let call_values = calls.values().as_struct();
    let call_text = |i: usize| call_values.column(i).as_string::<i32>();
    let call_int = |i: usize| call_values.column(i).as_primitive::<Int64Type>();
    let (tools, aliases, backends) = (call_text(0), call_text(1), call_text(2));
    let cached = call_values.column(3).as_boolean();
    let (input_tokens, output_tokens) = (call_int(4), call_int(5));
    let call_costs = call_values.column(6).as_primitive::<Float64Type>();
    let call_latencies = call_int(7);

    let opt_text = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
    let offsets = calls.value_offsets();
    (0..batch.num_rows())
        .map(|i| {
            let status = Status::parse(statuses.value(i)).ok_or_else(|| ResultsError::Status {
                row: i + 1,
                status: statuses.value(i).to_string(),
            })?;
            let calls: Vec<CallRecord> = (offsets[i] as usize..offsets[i + 1] as usize)
                .map(|j| CallRecord {
                    tool: tools.value(j).into(),
                    alias: aliases.value(j).into(),
                    backend: backends.value(j).into(),
                    cached: cached.value(j),
                    input_tokens: input_tokens.value(j),
                    output_tokens: output_tokens.value(j),
                    cost_usd: call_costs.value(j),
                    latency_ms: call_latencies.value(j),
                })
                .collect();
            let orchestrator_cost_usd = if orchestrator_costs.is_valid(i) {
                orchestrator_costs.value(i)
            } else {
                costs.value(i) - calls.iter().map(|c| c.cost_usd).sum::<f64>()
            };
            Ok(TaskResult {
                id: ids.value(i).to_string(),
                status,
                answer: opt_text(answers, i),
                correct: correct.is_valid(i).then(|| correct.value(i)),
                turns: turns.value(i),
                cost_usd: costs.value(i),
                latency_ms: latencies.value(i),
                orchestrator_tokens: tokens.value(i),
                orchestrator_cost_usd,
                calls,
                trajectory: opt_text(trajectories, i),
                error: opt_text(errors, i),
                metadata: opt_text(metadata, i),
                reward: rewards.is_valid(i).then(|| rewards.value(i)),
                reward_info: opt_text(reward_infos, i),
            })
        })
        .collect()
}

/// Reorders a batch's columns by name into [`result_schema`], checking each type and that the
/// required columns have no nulls, so later downcasts cannot fail.
fn conform(batch: &RecordBatch) -> Result<RecordBatch, ResultsError> {
    let schema = result_schema();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let name = field.name();
        let Ok(i) = batch.schema().index_of(name) else {
            // Files written before a nullable column existed read it as null.
            if field.is_nullable() {
                columns.push(arrow::array::new_null_array(
                    field.data_type(),
                    batch.num_rows(),
                ));
                continue;
            }
            return Err(ResultsError::MissingColumn {
                column: name.clone(),
            });
        };
        let column = batch.column(i);
        if column.data_type() != field.data_type() {
            return Err(ResultsError::ColumnType {
                column: name.clone(),
                expected: type_name(field.data_type()),
                found: type_name(column.data_type()),
            });
        }
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(ResultsError::Null {
                column: name.clone(),
            });
        }
        columns.push(column.clone());
    }
    Ok(RecordBatch::try_new(schema, columns).expect("columns were checked against the schema"))
}

/// Why the result output could not be opened, written or merged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{} already exists; pass --resume to continue that run, or remove it to start over",
        path.display()
    )]
    Exists { path: PathBuf },
    #[error("output path {} does not name a file", path.display())]
    NotAFile { path: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parquet { path: PathBuf, source: ParquetError },
    #[error("{}: {source}", path.display())]
    Arrow { path: PathBuf, source: ArrowError },
    #[error("{}: not a tutti result file: {source}", path.display())]
    NotResults { path: PathBuf, source: ResultsError },
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn parquet_error<'a>(path: &'a Path) -> impl FnOnce(ParquetError) -> StoreError + 'a {
    move |source| StoreError::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

/// How [`ResultStore::open_with`] treats an output that already holds rows.
#[derive(Debug, Clone, Default)]
pub struct Reopen {
    /// Continue it: the ids it holds are done (an existing output is an error otherwise).
    pub resume: bool,
    /// With `resume`: tasks whose latest row has one of these statuses run again (`--retry`).
    pub retry: Vec<Status>,
}

/// Durable, resumable result output: rows are committed in segment files beside the output while
/// a job runs, then merged into the output by [`finish`](ResultStore::finish). See the module docs
/// for the protocol.
#[derive(Debug)]
pub struct ResultStore {
    out: PathBuf,
    parts: PathBuf,
    next_segment: u64,
}

impl ResultStore {
    /// Opens the output `out` (for example `results.parquet`), with its segments in the sibling
    /// directory `results.parquet.parts/`.
    ///
    /// Without `resume`, an existing output or segment directory is an error: the user must pass
    /// `--resume` or remove it. With `resume`, returns the ids already done, in the output (if it
    /// exists) or in any committed segment, so that the caller skips them; leftover temporary
    /// files of an interrupted write are deleted.
    pub fn open(out: &Path, resume: bool) -> Result<(ResultStore, HashSet<String>), StoreError> {
        let reopen = Reopen {
            resume,
            retry: Vec::new(),
        };
        ResultStore::open_with(out, &reopen)
    }

    /// [`open`](ResultStore::open), where a task whose latest row has a status in
    /// `reopen.retry` does not count as done: it runs again, and its new row replaces the old
    /// one when the output is merged.
    pub fn open_with(
        out: &Path,
        reopen: &Reopen,
    ) -> Result<(ResultStore, HashSet<String>), StoreError> {
        let done = ResultStore::done(out, reopen)?;
        let parts = parts_of(out)?;
        let mut store = ResultStore {
            out: out.to_path_buf(),
            parts,
            next_segment: 0,
        };
        if !store
            .parts
            .try_exists()
            .map_err(io_error("inspect", &store.parts))?
        {
            let dir = store.out_dir();
            fs::create_dir_all(&dir).map_err(io_error("create directory", &dir))?;
            fs::create_dir(&store.parts).map_err(io_error("create directory", &store.parts))?;
            sync_dir(&dir)?;
        }
        if reopen.resume {
            let merge_tmp = store.merge_tmp();
            if merge_tmp
                .try_exists()
                .map_err(io_error("inspect", &merge_tmp))?
            {
                fs::remove_file(&merge_tmp).map_err(io_error("remove", &merge_tmp))?;
            }
            for (seq, _) in store.segments(true)? {
                store.next_segment = store.next_segment.max(seq + 1);
            }
        }
        Ok((store, done))
    }

    /// What [`open_with`](ResultStore::open_with) would return as done, changing nothing on
    /// disk (`--dry-run`): the same refusal of an existing output without `resume`, and, with
    /// it, the ids whose latest row (the output's, then each segment's in commit order) has a
    /// status not in `reopen.retry`.
    pub fn done(out: &Path, reopen: &Reopen) -> Result<HashSet<String>, StoreError> {
        let parts = parts_of(out)?;
        let exists = |p: &Path| p.try_exists().map_err(io_error("inspect", p));
        let (out_exists, parts_exist) = (exists(out)?, exists(&parts)?);
        if !reopen.resume {
            if out_exists {
                return Err(StoreError::Exists {
                    path: out.to_path_buf(),
                });
            }
            // An empty parts directory is what a run that stopped before committing any row
            // leaves (it failed at start-up): nothing to resume, so it does not block this one.
            let started = parts_exist
                && fs::read_dir(&parts)
                    .map_err(io_error("list", &parts))?
                    .next()
                    .is_some();
            if started {
                return Err(StoreError::Exists { path: parts });
            }
            return Ok(HashSet::new());
        }
        let mut latest: HashMap<String, Status> = HashMap::new();
        if out_exists {
            read_statuses(out, &mut latest)?;
        }
        for segment in committed_segments(out)? {
            read_statuses(&segment, &mut latest)?;
        }
        Ok(latest
            .into_iter()
            .filter(|(_, status)| !reopen.retry.contains(status))
            .map(|(id, _)| id)
            .collect())
    }

    /// The output file this store finishes into.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// The directory of committed segments.
    pub fn parts_dir(&self) -> &Path {
        &self.parts
    }

    /// Commits rows as one new segment. When it returns `Ok`, the rows survive a crash. An empty
    /// slice writes nothing.
    pub fn append(&mut self, rows: &[TaskResult]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let batch = results_to_batch(rows);
        // The number is taken before writing: should a step after the rename fail, a retry must
        // not replace this segment. A gap in the numbers is harmless.
        let name = format!("seg-{:06}.parquet", self.next_segment);
        self.next_segment += 1;
        let segment = self.parts.join(&name);
        let tmp = self.parts.join(format!("{name}.tmp"));
        write_durably(&tmp, &segment, &self.parts, |writer| {
            writer.write(&batch).map_err(parquet_error(&tmp))
        })
    }

    /// Merges the previous output (when resuming) and every segment into the output file, keeping
    /// the last row of each id (a task re-run by `--retry` replaces its earlier row), then removes
    /// the segment directory. Returns the number of rows in the output. Batches are streamed
    /// twice, the first time reading ids only; only the ids are held in memory.
    pub fn finish(self) -> Result<u64, StoreError> {
        let mut sources = Vec::new();
        if self
            .out
            .try_exists()
            .map_err(io_error("inspect", &self.out))?
        {
            sources.push(self.out.clone());
        }
        sources.extend(self.segments(false)?.into_iter().map(|(_, path)| path));

        // Where each id was seen last: (source, row within the source).
        let mut last: HashMap<String, (usize, usize)> = HashMap::new();
        for (s, source) in sources.iter().enumerate() {
            let mut row = 0;
            for_each_id(source, |id| {
                last.insert(id.to_string(), (s, row));
                row += 1;
            })?;
        }
        let mut rows = 0u64;
        let out_dir = self.out_dir();
        let tmp = self.merge_tmp();
        write_durably(&tmp, &self.out, &out_dir, |writer| {
            for (s, source) in sources.iter().enumerate() {
                let mut row = 0;
                for batch in read_batches(source, &[])? {
                    let batch = batch.map_err(|e| StoreError::Arrow {
                        path: source.clone(),
                        source: e,
                    })?;
                    let batch = conform(&batch).map_err(|e| StoreError::NotResults {
                        path: source.clone(),
                        source: e,
                    })?;
                    let ids = batch.column(0).as_string::<i32>();
                    // `conform` checked that ids have no nulls.
                    let keep: BooleanArray = ids
                        .iter()
                        .map(|id| {
                            let here = (s, row);
                            row += 1;
                            Some(last.get(id.unwrap_or_default()) == Some(&here))
                        })
                        .collect();
                    let batch = if keep.true_count() == batch.num_rows() {
                        batch
                    } else {
                        filter_record_batch(&batch, &keep).map_err(|e| StoreError::Arrow {
                            path: source.clone(),
                            source: e,
                        })?
                    };
                    rows += batch.num_rows() as u64;
                    writer.write(&batch).map_err(parquet_error(&tmp))?;
                }
            }
            Ok(())
        })?;
        // Everything is in the output now; a crash before this completes leaves segments whose
        // rows the next merge finds again: each id's last row is the one already chosen.
        fs::remove_dir_all(&self.parts).map_err(io_error("remove directory", &self.parts))?;
        sync_dir(&out_dir)?;
        Ok(rows)
    }

    fn out_dir(&self) -> PathBuf {
        match self.out.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// The temporary file the merge writes before renaming it over the output.
    fn merge_tmp(&self) -> PathBuf {
        let name = self.out.file_name().expect("checked in open");
        with_suffix(&self.out, name, ".tmp")
    }

    /// Committed segments in commit order. With `clean`, leftover `.tmp` files are deleted.
    fn segments(&self, clean: bool) -> Result<Vec<(u64, PathBuf)>, StoreError> {
        let entries = fs::read_dir(&self.parts).map_err(io_error("list", &self.parts))?;
        let mut segments = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_error("list", &self.parts))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".tmp") {
                if clean {
                    fs::remove_file(&path).map_err(io_error("remove", &path))?;
                }
                continue;
            }
            let seq = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(".parquet"));
            if let Some(seq) = seq.and_then(|s| s.parse::<u64>().ok()) {
                segments.push((seq, path));
            }
        }
        segments.sort();
        Ok(segments)
    }
}

/// Results are committed when this many are waiting…
pub const COMMIT_ROWS: usize = 2048;
/// …or when the oldest uncommitted one has waited this long.
pub const COMMIT_EVERY: Duration = Duration::from_millis(250);

/// Commits the results arriving on `rx` in groups (every [`COMMIT_ROWS`] rows or
/// [`COMMIT_EVERY`]), calling `committed` with each group once it is durable. Without
/// `keep_trajectories` the trajectory of each row is dropped first. Returns the store when the
/// channel has closed and everything received is committed.
pub async fn commit_stream(
    mut rx: mpsc::Receiver<TaskResult>,
    mut store: ResultStore,
    keep_trajectories: bool,
    mut committed: impl FnMut(&[TaskResult]) + Send,
) -> Result<ResultStore, StoreError> {
    let mut pending: Vec<TaskResult> = Vec::new();
    let mut oldest: Option<Instant> = None;
    loop {
        let timeout = oldest.map_or(COMMIT_EVERY, |t| COMMIT_EVERY.saturating_sub(t.elapsed()));
        let next = tokio::time::timeout(timeout, rx.recv()).await;
        let closed = matches!(next, Ok(None));
        if let Ok(Some(mut r)) = next {
            if !keep_trajectories {
                r.trajectory = None;
            }
            pending.push(r);
            oldest.get_or_insert_with(Instant::now);
        }
        let due = oldest.is_some_and(|t| t.elapsed() >= COMMIT_EVERY);
        if !pending.is_empty() && (closed || due || pending.len() >= COMMIT_ROWS) {
            let batch = std::mem::take(&mut pending);
            let (s, batch) =
                tokio::task::spawn_blocking(move || store.append(&batch).map(|_| (store, batch)))
                    .await
                    .expect("the result writer does not panic")?;
            store = s;
            oldest = None;
            committed(&batch);
        }
        if closed {
            return Ok(store);
        }
    }
}

/// The committed segments of the output `out` (as [`ResultStore::open`] names them), in commit
/// order; none when the segment directory does not exist.
pub fn committed_segments(out: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let parts = parts_of(out)?;
    if !parts.try_exists().map_err(io_error("inspect", &parts))? {
        return Ok(Vec::new());
    }
    let store = ResultStore {
        out: out.to_path_buf(),
        parts,
        next_segment: 0,
    };
    Ok(store.segments(false)?.into_iter().map(|(_, p)| p).collect())
}

/// The batches of a result file, each checked and reordered into [`result_schema`].
pub fn read_result_batches(
    path: &Path,
) -> Result<impl Iterator<Item = Result<RecordBatch, StoreError>> + use<>, StoreError> {
    let path = path.to_path_buf();
    let reader = read_batches(&path, &[])?;
    Ok(reader.map(move |batch| {
        let batch = batch.map_err(|source| StoreError::Arrow {
            path: path.clone(),
            source,
        })?;
        conform(&batch).map_err(|source| StoreError::NotResults {
            path: path.clone(),
            source,
        })
    }))
}

/// Reads every result row of a Parquet file in [`result_schema`].
pub fn read_results(path: &Path) -> Result<Vec<TaskResult>, StoreError> {
    let mut rows = Vec::new();
    for batch in read_batches(path, &[])? {
        let batch = batch.map_err(|source| StoreError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        rows.extend(
            batch_to_results(&batch).map_err(|source| StoreError::NotResults {
                path: path.to_path_buf(),
                source,
            })?,
        );
    }
    Ok(rows)
}

/// Calls `f` with each id of a result file in order, reading only the `id` column.
fn for_each_id(path: &Path, mut f: impl FnMut(&str)) -> Result<(), StoreError> {
    for batch in read_batches(path, &["id"])? {
        let batch = batch.map_err(|source| StoreError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        let ids = text_column(path, &batch, "id")?;
        ids.iter().flatten().for_each(&mut f);
    }
    Ok(())
}

/// Records the status of each row of a result file under its id (a later row replaces an
/// earlier one), reading only the `id` and `status` columns.
fn read_statuses(path: &Path, latest: &mut HashMap<String, Status>) -> Result<(), StoreError> {
    for batch in read_batches(path, &["id", "status"])? {
        let batch = batch.map_err(|source| StoreError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        let ids = text_column(path, &batch, "id")?;
        let statuses = text_column(path, &batch, "status")?;
        for (i, (id, status)) in ids.iter().zip(statuses.iter()).enumerate() {
            let (Some(id), Some(status)) = (id, status) else {
                continue;
            };
            let status = Status::parse(status).ok_or_else(|| StoreError::NotResults {
                path: path.to_path_buf(),
                source: ResultsError::Status {
                    row: i + 1,
                    status: status.to_string(),
                },
            })?;
            latest.insert(id.to_string(), status);
        }
    }
    Ok(())
}

/// The utf8 column `name` of a batch read with a projection.
fn text_column<'a>(
    path: &Path,
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a StringArray, StoreError> {
    let column = batch
        .column_by_name(name)
        .expect("the projection holds the column");
    column
        .as_string_opt::<i32>()
        .ok_or_else(|| StoreError::NotResults {
            path: path.to_path_buf(),
            source: ResultsError::ColumnType {
                column: name.into(),
                expected: "utf8".into(),
                found: type_name(column.data_type()),
            },
        })
}

/// Opens a Parquet file for reading batches, of the named columns only when `columns` is not
/// empty.
fn read_batches(path: &Path, columns: &[&str]) -> Result<ParquetRecordBatchReader, StoreError> {
    let file = File::open(path).map_err(io_error("open", path))?;
    let mut builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error(path))?;
    if !columns.is_empty() {
        let mut roots = Vec::with_capacity(columns.len());
        for column in columns {
            let Ok(root) = builder.schema().index_of(column) else {
                let source = ResultsError::MissingColumn {
                    column: column.to_string(),
                };
                return Err(StoreError::NotResults {
                    path: path.to_path_buf(),
                    source,
                });
            };
            roots.push(root);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        builder = builder.with_projection(mask);
    }
    builder.build().map_err(parquet_error(path))
}

/// Writes a Snappy-compressed Parquet file in [`result_schema`] at `tmp`, fsyncs it, renames it to
/// `dest` and fsyncs `dir`, the directory of both: afterwards `dest` is complete and durable, and
/// before that moment it was untouched. On failure the temporary file is removed.
fn write_durably(
    tmp: &Path,
    dest: &Path,
    dir: &Path,
    fill: impl FnOnce(&mut ArrowWriter<&mut File>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let result = (|| {
        let mut file = File::create(tmp).map_err(io_error("create", tmp))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer = ArrowWriter::try_new(&mut file, result_schema(), Some(props))
            .map_err(parquet_error(tmp))?;
        fill(&mut writer)?;
        writer.close().map_err(parquet_error(tmp))?;
        file.sync_all().map_err(io_error("sync", tmp))
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    fs::rename(tmp, dest).map_err(io_error("rename into place", dest))?;
    sync_dir(dir)
}

/// Makes a directory's entries (a rename, a new file) durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync directory", dir))?;
    Ok(())
}

/// `path` with `suffix` appended to its file name `name`: `out.parquet` -> `out.parquet.parts`.
/// The segment directory of the output `out`: `OUT.parts` beside it.
fn parts_of(out: &Path) -> Result<PathBuf, StoreError> {
    match out.file_name() {
        Some(name) => Ok(with_suffix(out, name, ".parts")),
        None => Err(StoreError::NotAFile {
            path: out.to_path_buf(),
        }),
    }
}

fn with_suffix(path: &Path, name: &std::ffi::OsStr, suffix: &str) -> PathBuf {
    let mut name = OsString::from(name);
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use tempfile::TempDir;

    fn result(id: &str, calls: usize) -> TaskResult {
        let status = [Status::Answered, Status::MaxTurns][calls % 2];
        TaskResult {
            id: id.into(),
            status,
            answer: (status == Status::Answered).then(|| format!("answer of {id}")),
            correct: match calls % 3 {
                0 => None,
                1 => Some(true),
                _ => Some(false),
            },
            turns: calls as i32 + 1,
            cost_usd: 0.001 * calls as f64,
            latency_ms: 100 * calls as i64,
            orchestrator_tokens: 512,
            orchestrator_cost_usd: 0.0001,
            calls: (0..calls)
                .map(|j| CallRecord {
                    tool: "answer".into(),
                    alias: format!("answer-{j}").into(),
                    backend: "gpt-5-mini".into(),
                    cached: j % 2 == 1,
                    input_tokens: 10 + j as i64,
                    output_tokens: 20,
                    cost_usd: 0.0004,
                    latency_ms: 900,
                })
                .collect(),
            trajectory: Some("[]".into()),
            error: (calls == 3).then(|| "backend timed out".into()),
            metadata: None,
            reward: calls.is_multiple_of(2).then_some(calls as f64 / 4.0),
            reward_info: calls.is_multiple_of(2).then(|| r#"{"db": 1.0}"#.into()),
        }
    }

    fn results(ids: &[&str]) -> Vec<TaskResult> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| result(id, i % 4))
            .collect()
    }

    fn out_path() -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.parquet");
        (dir, out)
    }

    fn sorted_ids(rows: &[TaskResult]) -> Vec<String> {
        let mut ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn batch_round_trips_and_has_the_result_schema() {
        let rows = results(&["a", "b", "c", "d", "e"]);
        let batch = results_to_batch(&rows);
        assert_eq!(batch.schema(), result_schema());
        assert_eq!(batch_to_results(&batch).unwrap(), rows);
        assert_eq!(batch_to_results(&batch.slice(2, 2)).unwrap(), rows[2..4]);
        assert!(batch_to_results(&results_to_batch(&[])).unwrap().is_empty());
    }

    #[test]
    fn batch_to_results_names_a_bad_column() {
        let batch = results_to_batch(&results(&["a"]));
        let schema = Schema::new(vec![Field::new("id", DataType::Int32, false)]);
        let bad = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(Int32Array::from(vec![1]))])
            .unwrap();
        let e = batch_to_results(&bad).unwrap_err().to_string();
        assert_eq!(e, "column `id`: expected utf8, found int32");
        let e = batch_to_results(&batch.project(&[0]).unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "missing column `status`");

        let mut columns = batch.columns().to_vec();
        columns[1] = Arc::new(StringArray::from(vec!["done"]));
        let bad = RecordBatch::try_new(batch.schema(), columns).unwrap();
        let e = batch_to_results(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("row 1: unknown status `done`; expected one of answered"),
            "{e}"
        );
    }

    #[test]
    fn append_twice_then_finish_gives_every_row() {
        let (_dir, out) = out_path();
        let (mut store, done) = ResultStore::open(&out, false).unwrap();
        assert!(done.is_empty());
        let rows = results(&["a", "b", "c", "d", "e"]);
        store.append(&rows[..2]).unwrap();
        store.append(&[]).unwrap();
        store.append(&rows[2..]).unwrap();
        let parts = store.parts_dir().to_path_buf();
        assert_eq!(parts, out.with_file_name("out.parquet.parts"));
        assert_eq!(fs::read_dir(&parts).unwrap().count(), 2);
        assert_eq!(store.finish().unwrap(), 5);
        assert_eq!(read_results(&out).unwrap(), rows);
        assert!(!parts.exists());
        assert!(!out.with_file_name("out.parquet.tmp").exists());
    }

    #[test]
    fn finish_with_no_rows_writes_an_empty_output() {
        let (_dir, out) = out_path();
        let (store, _) = ResultStore::open(&out, false).unwrap();
        assert_eq!(store.finish().unwrap(), 0);
        assert!(read_results(&out).unwrap().is_empty());
    }

    #[test]
    fn a_run_that_committed_nothing_does_not_block_the_next() {
        let (_dir, out) = out_path();
        // A run that failed at start-up: its parts directory exists, with nothing in it.
        let (store, _) = ResultStore::open(&out, false).unwrap();
        drop(store);
        let (mut store, done) = ResultStore::open(&out, false).unwrap();
        assert!(done.is_empty());
        store.append(&results(&["a"])).unwrap();
        assert_eq!(store.finish().unwrap(), 1);
        assert_eq!(read_results(&out).unwrap().len(), 1);
    }

    #[test]
    fn open_without_resume_refuses_existing_output() {
        let (_dir, out) = out_path();
        let (mut store, _) = ResultStore::open(&out, false).unwrap();
        store.append(&results(&["a"])).unwrap();
        drop(store);
        let e = ResultStore::open(&out, false).unwrap_err().to_string();
        assert!(
            e.contains("out.parquet.parts already exists; pass --resume"),
            "{e}"
        );

        let (store, _) = ResultStore::open(&out, true).unwrap();
        store.finish().unwrap();
        let e = ResultStore::open(&out, false).unwrap_err().to_string();
        assert!(e.ends_with("out.parquet already exists; pass --resume to continue that run, or remove it to start over"), "{e}");
    }

    #[test]
    fn resume_after_a_crash_returns_done_ids_and_finishes_each_id_once() {
        let (_dir, out) = out_path();
        let (mut store, _) = ResultStore::open(&out, false).unwrap();
        store.append(&results(&["a", "b"])).unwrap();
        store.append(&results(&["c"])).unwrap();
        drop(store); // killed before finish

        let (mut store, done) = ResultStore::open(&out, true).unwrap();
        assert_eq!(done, HashSet::from(["a".into(), "b".into(), "c".into()]));
        store.append(&results(&["d", "e"])).unwrap();
        // The new segment must not overwrite an old one.
        assert_eq!(fs::read_dir(store.parts_dir()).unwrap().count(), 3);
        drop(store); // killed again

        let (store, done) = ResultStore::open(&out, true).unwrap();
        assert_eq!(done.len(), 5);
        assert_eq!(store.finish().unwrap(), 5);
        assert_eq!(
            sorted_ids(&read_results(&out).unwrap()),
            ["a", "b", "c", "d", "e"]
        );

        // Resuming a finished run continues from its output.
        let (mut store, done) = ResultStore::open(&out, true).unwrap();
        assert_eq!(done.len(), 5);
        store.append(&results(&["f"])).unwrap();
        assert_eq!(store.finish().unwrap(), 6);
        assert_eq!(
            sorted_ids(&read_results(&out).unwrap()),
            ["a", "b", "c", "d", "e", "f"]
        );
    }

    #[test]
    fn stray_tmp_files_are_ignored_and_removed() {
        let (_dir, out) = out_path();
        let (mut store, _) = ResultStore::open(&out, false).unwrap();
        store.append(&results(&["a"])).unwrap();
        let parts = store.parts_dir().to_path_buf();
        drop(store);
        // A segment cut short by a crash, and a merge cut short by a crash.
        fs::write(parts.join("seg-000001.parquet.tmp"), b"PAR1 truncated").unwrap();
        fs::write(out.with_file_name("out.parquet.tmp"), b"PAR1").unwrap();

        let (mut store, done) = ResultStore::open(&out, true).unwrap();
        assert_eq!(done, HashSet::from(["a".to_string()]));
        assert!(!parts.join("seg-000001.parquet.tmp").exists());
        assert!(!out.with_file_name("out.parquet.tmp").exists());
        store.append(&results(&["b"])).unwrap();
        assert!(parts.join("seg-000001.parquet").exists());
        assert_eq!(store.finish().unwrap(), 2);
    }

    #[test]
    fn a_broken_segment_is_an_error_naming_it() {
        let (_dir, out) = out_path();
        let (store, _) = ResultStore::open(&out, false).unwrap();
        let segment = store.parts_dir().join("seg-000000.parquet");
        drop(store);
        fs::write(&segment, b"not parquet").unwrap();
        let e = ResultStore::open(&out, true).unwrap_err().to_string();
        assert!(e.contains("seg-000000.parquet"), "{e}");
    }

    #[test]
    fn finish_keeps_the_last_row_of_an_id_in_output_and_segment() {
        let (_dir, out) = out_path();
        let (mut store, _) = ResultStore::open(&out, false).unwrap();
        store.append(&results(&["a", "b"])).unwrap();
        store.finish().unwrap();

        // As if a merge was killed after renaming the output but before removing the segments
        // (the same rows in both), or a task re-ran (a later row for `b`): the last row wins.
        let (mut store, _) = ResultStore::open(&out, true).unwrap();
        let mut again = results(&["b", "c"]);
        again[0].answer = Some("a later answer".into());
        store.append(&again).unwrap();
        store.append(&results(&["c"])).unwrap();
        assert_eq!(store.finish().unwrap(), 3);
        let rows = read_results(&out).unwrap();
        assert_eq!(sorted_ids(&rows), ["a", "b", "c"]);
        let b = rows.iter().find(|r| r.id == "b").unwrap();
        assert_eq!(b, &again[0]);
    }

    #[test]
    fn dedup_within_and_across_segments_spans_batches() {
        let (_dir, out) = out_path();
        let (mut store, _) = ResultStore::open(&out, false).unwrap();
        let ids: Vec<String> = (0..3000).map(|i| format!("t-{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        store.append(&results(&ids)).unwrap();
        store.append(&results(&ids[1000..2500])).unwrap();
        assert_eq!(store.finish().unwrap(), 3000);
        let mut rows = read_results(&out).unwrap();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        let mut expected = results(&ids);
        expected.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(rows, expected);
    }

    #[test]
    fn retry_reruns_tasks_whose_latest_row_has_a_retried_status() {
        let (_dir, out) = out_path();
        let (mut store, _) = ResultStore::open(&out, false).unwrap();
        let mut first = results(&["a", "b", "c", "d"]);
        first[1].status = Status::Failed;
        first[2].status = Status::Cancelled;
        first[3].status = Status::Failed;
        store.append(&first).unwrap();
        // `d` was already retried once, and answered.
        store.append(&results(&["d"])).unwrap();
        store.finish().unwrap();

        let reopen = Reopen {
            resume: true,
            retry: vec![Status::Failed],
        };
        let done = ResultStore::done(&out, &reopen).unwrap();
        assert_eq!(
            done,
            HashSet::from(["a", "c", "d"].map(String::from)),
            "only `b`, failed in its latest row, runs again"
        );
        let (mut store, done_again) = ResultStore::open_with(&out, &reopen).unwrap();
        assert_eq!(done_again, done);
        store.append(&results(&["b"])).unwrap();
        assert_eq!(store.finish().unwrap(), 4);
        let rows = read_results(&out).unwrap();
        let status = |id: &str| rows.iter().find(|r| r.id == id).unwrap().status;
        assert_eq!(
            ["a", "b", "c", "d"].map(status),
            [
                Status::Answered,
                Status::Answered,
                Status::Cancelled,
                Status::Answered
            ]
        );
    }

    #[test]
    fn done_changes_nothing_on_disk() {
        let (dir, out) = out_path();
        let reopen = Reopen::default();
        assert!(ResultStore::done(&out, &reopen).unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn resume_reads_ids_and_statuses_only() {
        // The projection must not choke on other columns.
        let (_dir, out) = out_path();
        let (mut store, _) = ResultStore::open(&out, false).unwrap();
        store.append(&results(&["x", "y"])).unwrap();
        let mut latest = HashMap::new();
        read_statuses(&store.parts_dir().join("seg-000000.parquet"), &mut latest).unwrap();
        assert_eq!(
            latest,
            HashMap::from([
                ("x".to_string(), Status::Answered),
                ("y".to_string(), Status::MaxTurns)
            ])
        );
    }
}
