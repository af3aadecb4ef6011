//! Result output: [`TaskResult`] rows to and from Arrow, and [`ResultStore`], the durable,
//! resumable Parquet output of `tutti run TASKS -o OUT.parquet [--resume]`.
//!
//! While a job runs, results are committed in segments: each [`ResultStore::append`] writes one
//! complete Parquet file into `OUT.parquet.parts/` by write, fsync, rename, fsync of the directory.
//! A segment therefore either exists whole or not at all, and a `kill -9` at any moment loses
//! nothing that was committed. [`ResultStore::finish`] merges the segments into `OUT.parquet` and
//! de-duplicates by id, so a run killed even during the merge ends, after `--resume`, with every
//! id exactly once.
//!
//! Each segment is named by the checksum of its bytes (`seg-000007-<xxh3>.parquet`), which becomes
//! durable with the file in the same rename. Resuming checks every committed segment against it
//! before any task runs ([`verify_segment`]): a segment damaged after it was committed (a page
//! overwritten, the file cut short) stops the resume with the command that sets it aside, and
//! never reaches the final merge. The parquet crate writes no page checksums, so the check is
//! over the whole file. Segments written before checksums are checked by decoding every row.

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
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::{filter_record_batch, take};
use arrow::datatypes::{
    DataType, Field, FieldRef, Float64Type, Int32Type, Int64Type, Schema, SchemaRef,
};
use arrow::error::ArrowError;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;

use super::durable::{fs_error, sync_dir, write_durably, write_durably_as, FsError};
use super::openai_batch::{BatchEndpoint, OutputLine};
use super::schema::{
    call_fields, call_item_field, message_fields, message_item_field, result_schema, type_name,
    INPUT_INDEX,
};
use crate::task::{CallRecord, Message, Role, Status, TaskResult};

/// Builds a batch in [`result_schema`] from result rows, a column at a time.
pub(crate) fn results_to_batch(rows: &[TaskResult]) -> RecordBatch {
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
        Arc::new(trajectory_column(rows)),
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

/// The `trajectory` column: every recorded message in one struct array, cut by offsets; null for
/// a row without a trajectory.
fn trajectory_column(rows: &[TaskResult]) -> ListArray {
    let messages = || rows.iter().flat_map(|r| r.trajectory.iter().flatten());
    let fields: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            messages().map(|m| m.role.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            messages().map(|m| m.content.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            messages().map(|m| i64::from(m.tokens)),
        )),
    ];
    let values = StructArray::new(message_fields(), fields, None);
    let offsets = OffsetBuffer::from_lengths(
        rows.iter()
            .map(|r| r.trajectory.as_ref().map_or(0, Vec::len)),
    );
    let valid = NullBuffer::from_iter(rows.iter().map(|r| r.trajectory.is_some()));
    ListArray::new(
        Arc::new(message_item_field()),
        offsets,
        Arc::new(values),
        Some(valid),
    )
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
    #[error("row {row}: trajectory: unknown role `{role}`; expected user, assistant or tool")]
    Role { row: usize, role: String },
}

fn status_names() -> String {
    Status::ALL.map(Status::as_str).join(", ")
}

/// Reads result rows back from a batch in [`result_schema`] (columns are found by name): the
/// inverse of [`results_to_batch`].
pub(crate) fn batch_to_results(batch: &RecordBatch) -> Result<Vec<TaskResult>, ResultsError> {
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
    let trajectories = col(9).as_list::<i32>();
    let (errors, metadata) = (text(10), text(11));
    let rewards = col(12).as_primitive::<Float64Type>();
    let reward_infos = text(13);
    let orchestrator_costs = col(14).as_primitive::<Float64Type>();

    let message_values = trajectories.values().as_struct();
    let (roles, contents) = (
        message_values.column(0).as_string::<i32>(),
        message_values.column(1).as_string::<i32>(),
    );
    let message_tokens = message_values.column(2).as_primitive::<Int64Type>();
    let trajectory_offsets = trajectories.value_offsets();

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
            let trajectory = trajectories
                .is_valid(i)
                .then(|| {
                    let range = trajectory_offsets[i] as usize..trajectory_offsets[i + 1] as usize;
                    range
                        .map(|j| {
                            let role = roles.value(j);
                            Ok(Message {
                                role: Role::parse(role).ok_or_else(|| ResultsError::Role {
                                    row: i + 1,
                                    role: role.to_string(),
                                })?,
                                content: contents.value(j).to_string(),
                                tokens: u32::try_from(message_tokens.value(j)).unwrap_or(u32::MAX),
                            })
                        })
                        .collect::<Result<Vec<_>, ResultsError>>()
                })
                .transpose()?;
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
                trajectory,
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
    #[error(
        "output {}: tutti writes Parquet (.parquet) and JSON Lines (.jsonl, .ndjson){}",
        path.display(),
        match ext { Some(e) => format!("; `.{e}` is neither"), None => "; name the file with one of these extensions".into() }
    )]
    Format { path: PathBuf, ext: Option<String> },
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("{}: {source}", path.display())]
    Parquet { path: PathBuf, source: ParquetError },
    #[error("{}: {source}", path.display())]
    Arrow { path: PathBuf, source: ArrowError },
    #[error("{}: not a tutti result file: {source}", path.display())]
    NotResults { path: PathBuf, source: ResultsError },
    #[error(
        "{} is damaged: {reason}. Its rows cannot be trusted, so nothing was resumed. Move it \
         aside and resume again: its tasks run again, and every other committed row is kept.\n  \
         {}",
        path.display(),
        shell_command(&["mv", &path.to_string_lossy(), &aside.to_string_lossy()])
    )]
    Damaged {
        path: PathBuf,
        reason: String,
        /// Where to move it: beside the output, out of the segment directory.
        aside: PathBuf,
    },
}

/// `words` as one shell command line, each quoted where the shell would split or expand it.
pub fn shell_command(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| shlex::try_quote(w).map_or_else(|_| format!("{w:?}"), |q| q.into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| fs_error(action, path)(source).into()
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

/// The format of a result output, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// `.parquet`: the result schema (plus [`InputColumns`] where given).
    Parquet,
    /// `.jsonl`, `.ndjson`: one JSON object per row, in the names and nesting of the result
    /// schema (nulls written); or OpenAI batch output lines (see [`OutputShape::openai_batch`]).
    JsonLines,
}

impl OutputFormat {
    /// The format `out` names, or why it names none (a `.csv` must not silently hold Parquet).
    pub fn of(out: &Path) -> Result<OutputFormat, StoreError> {
        let ext = out
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("parquet") => Ok(OutputFormat::Parquet),
            Some("jsonl" | "ndjson") => Ok(OutputFormat::JsonLines),
            _ => Err(StoreError::Format {
                path: out.to_path_buf(),
                ext,
            }),
        }
    }
}

/// What the merged output holds besides the result rows.
#[derive(Debug, Default)]
pub struct OutputShape {
    /// Each row's `input_index` and the input's extra columns, joined by id.
    pub input: Option<InputColumns>,
    /// A JSON Lines output is written as OpenAI batch output, for this endpoint (the tasks came
    /// as OpenAI batch requests).
    pub openai_batch: Option<BatchEndpoint>,
}

/// The input's side of the output: where each id sits in the input, and the columns the input
/// had beyond the task schema (one row per input row).
#[derive(Debug)]
pub struct InputColumns {
    index: HashMap<String, i64>,
    extras: Option<RecordBatch>,
    schema: SchemaRef,
}

impl InputColumns {
    /// `ids` in input order; `extras` with one row per id.
    pub fn new<'a>(
        ids: impl Iterator<Item = &'a str>,
        extras: Option<RecordBatch>,
    ) -> InputColumns {
        let index = ids
            .enumerate()
            .map(|(i, id)| (id.to_string(), i as i64))
            .collect();
        let schema = InputColumns::joined_schema(extras.as_ref().map(|e| e.schema()).as_ref());
        InputColumns {
            index,
            extras,
            schema,
        }
    }

    /// The schema of result rows joined to an input whose extra columns have `extras`.
    pub(crate) fn joined_schema(extras: Option<&SchemaRef>) -> SchemaRef {
        let mut fields: Vec<FieldRef> = result_schema().fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(INPUT_INDEX, DataType::Int64, true)));
        if let Some(extras) = extras {
            // Nullable: a row whose id the input does not have gets nulls.
            fields.extend(
                extras
                    .fields()
                    .iter()
                    .map(|f| Arc::new(f.as_ref().clone().with_nullable(true))),
            );
        }
        Arc::new(Schema::new(fields))
    }

    /// A batch in [`result_schema`] with `input_index` and the extra columns appended.
    fn join(&self, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        let ids = batch.column(0).as_string::<i32>();
        let rows: Int64Array = ids
            .iter()
            .map(|id| id.and_then(|id| self.index.get(id).copied()))
            .collect();
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(rows.clone()));
        if let Some(extras) = &self.extras {
            for column in extras.columns() {
                columns.push(take(column, &rows, None)?);
            }
        }
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

/// Durable, resumable result output: rows are committed in segment files beside the output while
/// a job runs, then merged into the output by `finish`. See the module docs
/// for the protocol.
#[derive(Debug)]
pub struct ResultStore {
    out: PathBuf,
    format: OutputFormat,
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
    pub(crate) fn open(
        out: &Path,
        resume: bool,
    ) -> Result<(ResultStore, HashSet<String>), StoreError> {
        let reopen = Reopen {
            resume,
            retry: Vec::new(),
        };
        ResultStore::open_with(out, &reopen)
    }

    /// `open`, where a task whose latest row has a status in
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
            format: OutputFormat::of(out)?,
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
        let format = OutputFormat::of(out)?;
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
            match format {
                OutputFormat::Parquet => read_statuses(out, &mut latest)?,
                OutputFormat::JsonLines => for_each_output_line(out, |line, _, id, status| {
                    let status = Status::parse(&status).ok_or_else(|| StoreError::Line {
                        path: out.to_path_buf(),
                        line,
                        message: format!(
                            "unknown status `{status}`; expected one of {}",
                            status_names()
                        ),
                    })?;
                    latest.insert(id, status);
                    Ok(())
                })?,
            }
        }
        let segments = committed_segments(out)?;
        for segment in &segments {
            verify_segment(segment)?;
        }
        for segment in &segments {
            read_statuses(segment, &mut latest)?;
        }
        Ok(latest
            .into_iter()
            .filter(|(_, status)| !reopen.retry.contains(status))
            .map(|(id, _)| id)
            .collect())
    }

    /// The directory of committed segments.
    #[cfg(test)]
    pub(crate) fn parts_dir(&self) -> &Path {
        &self.parts
    }

    /// Commits rows as one new segment. When it returns `Ok`, the rows survive a crash. An empty
    /// slice writes nothing.
    pub(crate) fn append(&mut self, rows: &[TaskResult]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let batch = results_to_batch(rows);
        // The number moves on only once the segment is durable: the caller retries a failed
        // commit with the same rows, so should a step after the rename fail (the directory's
        // fsync), the retry writes the same rows under the same number; the same bytes give the
        // same checksum, so it replaces that segment instead of adding a second copy.
        let seq = self.next_segment;
        let tmp = self.parts.join(format!("seg-{seq:06}.parquet.tmp"));
        let parts = &self.parts;
        write_durably_as(
            &tmp,
            parts,
            |file| {
                let mut summed = Checksummed::new(file);
                write_parquet(&mut summed, &tmp, result_schema(), |writer| {
                    writer.write(&batch).map_err(parquet_error(&tmp))
                })?;
                Ok::<_, StoreError>(summed.digest())
            },
            |checksum| parts.join(segment_name(seq, checksum)),
        )?;
        self.next_segment += 1;
        Ok(())
    }

    /// Merges the previous output (when resuming) and every segment into the output file, keeping
    /// the last row of each id (a task re-run by `--retry` replaces its earlier row), then removes
    /// the segment directory. Returns the number of rows in the output. Batches are streamed
    /// twice, the first time reading ids only; only the ids are held in memory.
    #[cfg(test)]
    pub(crate) fn finish(self) -> Result<u64, StoreError> {
        self.finish_with(&OutputShape::default())
    }

    /// `finish`, writing the output in `shape`: with the input's columns
    /// joined on, and for JSON Lines, OpenAI batch lines where asked. Rows of a previous JSON
    /// Lines output are kept as they were written.
    pub fn finish_with(self, shape: &OutputShape) -> Result<u64, StoreError> {
        let previous = self
            .out
            .try_exists()
            .map_err(io_error("inspect", &self.out))?;
        let segments: Vec<PathBuf> = self.segments(false)?.into_iter().map(|(_, p)| p).collect();

        // Where each id was seen last: (source, row within the source); source 0 is the previous
        // output, 1.. the segments in commit order.
        let mut last: HashMap<String, (usize, usize)> = HashMap::new();
        if previous {
            let mut row = 0;
            match self.format {
                OutputFormat::Parquet => for_each_id(&self.out, |id| {
                    last.insert(id.to_string(), (0, row));
                    row += 1;
                })?,
                OutputFormat::JsonLines => for_each_output_line(&self.out, |_, _, id, _| {
                    last.insert(id, (0, row));
                    row += 1;
                    Ok(())
                })?,
            }
        }
        for (s, segment) in segments.iter().enumerate() {
            let mut row = 0;
            for_each_id(segment, |id| {
                last.insert(id.to_string(), (s + 1, row));
                row += 1;
            })?;
        }
        let mut rows = 0u64;
        let out_dir = self.out_dir();
        let tmp = self.merge_tmp();
        write_durably(&tmp, &self.out, &out_dir, |file| match self.format {
            OutputFormat::Parquet => {
                let schema = shape
                    .input
                    .as_ref()
                    .map_or_else(result_schema, |i| i.schema.clone());
                write_parquet(file, &tmp, schema, |writer| {
                    let sources = previous.then_some(&self.out).into_iter().chain(&segments);
                    let first = if previous { 0 } else { 1 };
                    for (s, source) in sources.enumerate() {
                        kept_rows(&last, s + first, source, |batch| {
                            rows += batch.num_rows() as u64;
                            let batch = shape.join(source, batch)?;
                            writer.write(&batch).map_err(parquet_error(&tmp))
                        })?;
                    }
                    Ok(())
                })
            }
            OutputFormat::JsonLines => {
                let mut w = io::BufWriter::new(file);
                if previous {
                    rows += previous_lines(&last, &self.out, &tmp, &mut w)?;
                }
                for (s, segment) in segments.iter().enumerate() {
                    kept_rows(&last, s + 1, segment, |batch| {
                        rows += batch.num_rows() as u64;
                        shape.write_lines(segment, batch, &tmp, &mut w)
                    })?;
                }
                io::Write::flush(&mut w).map_err(io_error("write", &tmp))
            }
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
            if let Some((seq, _)) = parse_segment_name(name) {
                segments.push((seq, path));
            }
        }
        segments.sort();
        Ok(segments)
    }
}

/// The rows of the Parquet result file `path` (source number `s` of a merge) that are their id's
/// `last`, batch by batch, conformed to the result schema.
fn kept_rows(
    last: &HashMap<String, (usize, usize)>,
    s: usize,
    path: &Path,
    mut f: impl FnMut(RecordBatch) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut row = 0;
    for batch in read_batches(path, &[])? {
        let arrow_error = |source| StoreError::Arrow {
            path: path.to_path_buf(),
            source,
        };
        let batch =
            conform(&batch.map_err(arrow_error)?).map_err(|source| StoreError::NotResults {
                path: path.to_path_buf(),
                source,
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
        if keep.true_count() == batch.num_rows() {
            f(batch)?;
        } else {
            f(filter_record_batch(&batch, &keep).map_err(arrow_error)?)?;
        }
    }
    Ok(())
}

impl OutputShape {
    /// `batch` (result rows read from `path`) with the input's columns joined on.
    fn join(&self, path: &Path, batch: RecordBatch) -> Result<RecordBatch, StoreError> {
        match &self.input {
            Some(input) => input.join(&batch).map_err(|source| StoreError::Arrow {
                path: path.to_path_buf(),
                source,
            }),
            None => Ok(batch),
        }
    }

    /// Writes result rows (read from `path`) as JSON Lines in this shape into `w` (the file
    /// `tmp`).
    fn write_lines(
        &self,
        path: &Path,
        batch: RecordBatch,
        tmp: &Path,
        w: &mut impl io::Write,
    ) -> Result<(), StoreError> {
        let Some(endpoint) = self.openai_batch else {
            let batch = self.join(path, batch)?;
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::LineDelimited>(w);
            return writer
                .write(&batch)
                .and_then(|_| writer.finish())
                .map_err(|source| StoreError::Arrow {
                    path: tmp.to_path_buf(),
                    source,
                });
        };
        let results = batch_to_results(&batch).map_err(|source| StoreError::NotResults {
            path: path.to_path_buf(),
            source,
        })?;
        let created_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for r in &results {
            let line = super::openai_batch::output_line(r, endpoint, created_s);
            serde_json::to_writer(&mut *w, &line)
                .map_err(io::Error::from)
                .and_then(|_| w.write_all(b"\n"))
                .map_err(io_error("write", tmp))?;
        }
        Ok(())
    }
}

/// Copies the lines of a previous JSON Lines output that are their id's `last` (as source 0)
/// into `w`, as they were written; returns how many.
fn previous_lines(
    last: &HashMap<String, (usize, usize)>,
    path: &Path,
    tmp: &Path,
    w: &mut impl io::Write,
) -> Result<u64, StoreError> {
    let (mut row, mut kept) = (0, 0);
    for_each_output_line(path, |_, text, id, _| {
        if last.get(&id) == Some(&(0, row)) {
            w.write_all(text.as_bytes())
                .and_then(|_| w.write_all(b"\n"))
                .map_err(io_error("write", tmp))?;
            kept += 1;
        }
        row += 1;
        Ok(())
    })?;
    Ok(kept)
}

/// The id and status of one line of a JSON Lines output; `line` is its number, for the error.
fn output_line_id(path: &Path, line: usize, text: &str) -> Result<(String, String), StoreError> {
    let problem = |message: String| StoreError::Line {
        path: path.to_path_buf(),
        line,
        message,
    };
    let parsed: OutputLine =
        serde_json::from_str(text).map_err(|e| problem(format!("not a result line: {e}")))?;
    parsed
        .id_and_status()
        .map_err(|what| problem(format!("not a result line: {what}")))
}

/// Calls `f` with the line number, text, id and status of each line of a JSON Lines output
/// (blank lines are skipped).
fn for_each_output_line(
    path: &Path,
    mut f: impl FnMut(usize, &str, String, String) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let file = File::open(path).map_err(io_error("open", path))?;
    for (i, line) in io::BufRead::lines(io::BufReader::new(file)).enumerate() {
        let line = line.map_err(io_error("read", path))?;
        if line.trim().is_empty() {
            continue;
        }
        let (id, status) = output_line_id(path, i + 1, &line)?;
        f(i + 1, &line, id, status)?;
    }
    Ok(())
}

/// Results are committed when this many are waiting…
pub(crate) const COMMIT_ROWS: usize = 2048;
/// …or when the oldest uncommitted one has waited this long.
pub(crate) const COMMIT_EVERY: Duration = Duration::from_millis(250);

/// What [`commit_stream`] does when a commit fails (a storage error: EMFILE, ENOSPC, EIO): try
/// the same rows again after a backoff (doubling from `first_delay` up to `max_delay`) for as
/// long as `retry_for` allows, calling `on_error` with each failure and with `None` once a
/// commit succeeds again, so the trouble is visible while it lasts. While it retries, no new
/// results are taken: the engine's episodes wait on the full channel.
pub struct CommitRetry {
    /// How long to keep retrying one group before the commit fails; zero fails at once.
    pub retry_for: Duration,
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Called with each failed attempt and with `None` when a commit succeeds after failures.
    pub on_error: Box<OnCommitError>,
}

/// What [`CommitRetry::on_error`] calls.
pub type OnCommitError = dyn FnMut(Option<CommitFailure<'_>>) + Send;

/// One failed try of a commit.
pub struct CommitFailure<'a> {
    pub error: &'a StoreError,
    /// 1 for the first try.
    pub attempt: u32,
    /// The wait before the next try.
    pub wait: Duration,
}

impl CommitRetry {
    /// Fail at the first error (`tutti run` and the Python module: the caller resumes).
    pub fn none() -> CommitRetry {
        CommitRetry {
            retry_for: Duration::ZERO,
            first_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            on_error: Box::new(|_| {}),
        }
    }
}

/// Commits the results arriving on `rx` in groups (every [`COMMIT_ROWS`] rows or
/// [`COMMIT_EVERY`]), calling `committed` with each group once it is durable; a failed commit is
/// retried as `retry` says. Without `keep_trajectories` the trajectory of each row is dropped
/// first. Returns the store when the channel has closed and everything received is committed.
pub(crate) async fn commit_stream(
    mut rx: mpsc::Receiver<TaskResult>,
    mut store: ResultStore,
    keep_trajectories: bool,
    mut retry: CommitRetry,
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
            let mut batch = std::mem::take(&mut pending);
            let started = Instant::now();
            let mut delay = retry.first_delay;
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                let (s, b, result) = tokio::task::spawn_blocking(move || {
                    let result = store.append(&batch);
                    (store, batch, result)
                })
                .await
                .expect("the result writer does not panic");
                (store, batch) = (s, b);
                match result {
                    Ok(()) if attempt == 1 => break,
                    Ok(()) => {
                        (retry.on_error)(None);
                        break;
                    }
                    Err(e) if started.elapsed() >= retry.retry_for => return Err(e),
                    Err(e) => {
                        (retry.on_error)(Some(CommitFailure {
                            error: &e,
                            attempt,
                            wait: delay,
                        }));
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(retry.max_delay);
                    }
                }
            }
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
pub(crate) fn committed_segments(out: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let parts = parts_of(out)?;
    if !parts.try_exists().map_err(io_error("inspect", &parts))? {
        return Ok(Vec::new());
    }
    let store = ResultStore {
        out: out.to_path_buf(),
        format: OutputFormat::Parquet,
        parts,
        next_segment: 0,
    };
    Ok(store.segments(false)?.into_iter().map(|(_, p)| p).collect())
}

/// The batches of a result file, each checked and reordered into [`result_schema`].
pub(crate) fn read_result_batches(
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
    contained(path, || {
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
    })
}

/// Calls `f` with each id of a result file in order, reading only the `id` column.
fn for_each_id(path: &Path, mut f: impl FnMut(&str)) -> Result<(), StoreError> {
    contained(path, || {
        for batch in read_batches(path, &["id"])? {
            let batch = batch.map_err(|source| StoreError::Arrow {
                path: path.to_path_buf(),
                source,
            })?;
            let ids = text_column(path, &batch, "id")?;
            ids.iter().flatten().for_each(&mut f);
        }
        Ok(())
    })
}

/// Records the status of each row of a result file under its id (a later row replaces an
/// earlier one), reading only the `id` and `status` columns.
fn read_statuses(path: &Path, latest: &mut HashMap<String, Status>) -> Result<(), StoreError> {
    contained(path, || {
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
    })
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

/// Runs a read of the Parquet file at `path`; a panic inside the reader (see `io::contain`)
/// becomes an error that names the file.
fn contained<T>(
    path: &Path,
    read: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    super::contain::contain(read).unwrap_or_else(|panic| {
        Err(StoreError::Parquet {
            path: path.to_path_buf(),
            source: ParquetError::General(format!("the Parquet reader failed on it: {panic}")),
        })
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

/// Writes a Snappy-compressed Parquet file of `schema` into `file` (at `path`, for errors).
fn write_parquet<W: io::Write + Send>(
    file: W,
    path: &Path,
    schema: SchemaRef,
    fill: impl FnOnce(&mut ArrowWriter<W>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(file, schema, Some(props)).map_err(parquet_error(path))?;
    fill(&mut writer)?;
    writer.close().map_err(parquet_error(path))?;
    Ok(())
}

/// A committed segment's file name: its number and the xxh3 checksum of its bytes.
fn segment_name(seq: u64, checksum: u64) -> String {
    format!("seg-{seq:06}-{checksum:016x}.parquet")
}

/// The number and checksum of a segment's file name (`seg-000007-<16 hex digits>.parquet`; no
/// checksum in `seg-000007.parquet`, written before checksums); `None` for any other file.
fn parse_segment_name(name: &str) -> Option<(u64, Option<u64>)> {
    let stem = name.strip_prefix("seg-")?.strip_suffix(".parquet")?;
    match stem.split_once('-') {
        Some((seq, sum)) if sum.len() == 16 => {
            Some((seq.parse().ok()?, Some(u64::from_str_radix(sum, 16).ok()?)))
        }
        Some(_) => None,
        None => Some((stem.parse().ok()?, None)),
    }
}

/// A writer that keeps the xxh3 checksum of every byte written through it.
struct Checksummed<W> {
    inner: W,
    hasher: xxhash_rust::xxh3::Xxh3,
}

impl<W> Checksummed<W> {
    fn new(inner: W) -> Checksummed<W> {
        Checksummed {
            inner,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
        }
    }

    fn digest(&self) -> u64 {
        self.hasher.digest()
    }
}

impl<W: io::Write> io::Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Checks that a committed segment is whole, as it was committed: its bytes against the checksum
/// in its name, or, for a segment written before checksums, every row decoded. A mismatch, a
/// file cut short or rows that do not decode are [`StoreError::Damaged`], naming where to move
/// the file so that a resume runs its tasks again.
pub(crate) fn verify_segment(path: &Path) -> Result<(), StoreError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let Some((seq, checksum)) = parse_segment_name(name) else {
        return Ok(());
    };
    let damaged = |reason: String| {
        let parts = path.parent().unwrap_or(Path::new("."));
        let out_name = parts
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let out_name = out_name.strip_suffix(".parts").unwrap_or(&out_name);
        StoreError::Damaged {
            path: path.to_path_buf(),
            reason,
            aside: parts
                .parent()
                .unwrap_or(Path::new("."))
                .join(format!("{out_name}.seg-{seq:06}.damaged")),
        }
    };
    match checksum {
        Some(expected) => {
            let mut file = File::open(path).map_err(io_error("open", path))?;
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut len = 0u64;
            loop {
                let n = io::Read::read(&mut file, &mut buf).map_err(io_error("read", path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            let found = hasher.digest();
            if found != expected {
                return Err(damaged(format!(
                    "its {len} bytes do not match the checksum it was committed with \
                     ({found:016x}, not {expected:016x}): it was cut short or overwritten"
                )));
            }
            Ok(())
        }
        None => {
            let decoded = read_result_batches(path)
                .and_then(|mut batches| batches.try_for_each(|b| b.map(drop)));
            decoded.map_err(|e| match e {
                StoreError::Io(e) => StoreError::Io(e),
                other => damaged(format!("its rows do not decode ({other})")),
            })
        }
    }
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
            trajectory: Some(vec![Message {
                role: Role::Assistant,
                content: "<tool_call>".into(),
                tokens: 3,
            }]),
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
        assert_eq!(segment_files(&parts).len(), 2);
        assert!(segment_files(&parts)[1].starts_with("seg-000001-"));
        assert_eq!(store.finish().unwrap(), 2);
    }

    /// The file names in a segment directory, sorted.
    fn segment_files(parts: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(parts)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A committed segment damaged afterwards, inside a page with its footer intact (it would
    /// still open) or cut short, is refused when the store is reopened, before anything runs,
    /// naming it and where to move it; once moved there, the store resumes without its ids, and
    /// the merge neither reads nor needs it.
    #[test]
    fn a_segment_damaged_after_commit_is_refused_at_open_until_moved_aside() {
        let (dir, out) = out_path();
        let (mut store, _) = ResultStore::open(&out, false).unwrap();
        store.append(&results(&["a", "b"])).unwrap();
        store.append(&results(&["c"])).unwrap();
        store.append(&results(&["d"])).unwrap();
        let parts = store.parts_dir().to_path_buf();
        drop(store);
        let names = segment_files(&parts);
        let (in_a_page, cut) = (parts.join(&names[0]), parts.join(&names[2]));
        let mut bytes = fs::read(&in_a_page).unwrap();
        bytes[64..80].fill(0xff);
        fs::write(&in_a_page, &bytes).unwrap();
        let len = fs::metadata(&cut).unwrap().len();
        File::options()
            .write(true)
            .open(&cut)
            .unwrap()
            .set_len(len / 2)
            .unwrap();

        let mut set_aside = Vec::new();
        for damaged in [&in_a_page, &cut] {
            let e = ResultStore::open(&out, true).unwrap_err();
            let StoreError::Damaged { path, aside, .. } = &e else {
                panic!("{e}");
            };
            assert_eq!(path, damaged);
            assert_eq!(aside.parent(), Some(dir.path()));
            let message = e.to_string();
            assert!(
                message.contains(&format!("\n  mv {} {}", path.display(), aside.display())),
                "{message}"
            );
            assert_eq!(
                segment_files(&parts).len(),
                3 - set_aside.len(),
                "nothing is written or removed"
            );
            fs::rename(path, aside).unwrap();
            set_aside.push(aside.clone());
        }
        let (mut store, done) = ResultStore::open(&out, true).unwrap();
        assert_eq!(done, HashSet::from(["c".to_string()]));
        store.append(&results(&["a", "b", "d"])).unwrap();
        assert_eq!(store.finish().unwrap(), 4);
        let mut ids: Vec<String> = read_results(&out)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        assert!(
            set_aside.iter().all(|p| p.exists()),
            "the damaged files are kept"
        );
    }

    #[test]
    fn a_broken_segment_is_an_error_naming_it() {
        let (_dir, out) = out_path();
        let (store, _) = ResultStore::open(&out, false).unwrap();
        // Written before segments carried checksums: checked by decoding it.
        let segment = store.parts_dir().join("seg-000000.parquet");
        drop(store);
        fs::write(&segment, b"not parquet").unwrap();
        let e = ResultStore::open(&out, true).unwrap_err().to_string();
        assert!(
            e.contains("seg-000000.parquet is damaged")
                && e.contains("out.parquet.seg-000000.damaged"),
            "{e}"
        );
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

    /// Input columns for ids `a`..: `input_index` from the id's place, and a `category` column.
    fn input_columns(ids: &[&str]) -> InputColumns {
        let category: StringArray = ids.iter().map(|id| Some(format!("cat-{id}"))).collect();
        let extras =
            RecordBatch::try_from_iter([("category", Arc::new(category) as ArrayRef)]).unwrap();
        InputColumns::new(ids.iter().copied(), Some(extras))
    }

    #[test]
    fn the_output_joins_the_input_index_and_extra_columns_by_id() {
        let (_dir, out) = out_path();
        let (mut store, _) = ResultStore::open(&out, false).unwrap();
        // Completion order differs from input order; `zz` is not in the input.
        store.append(&results(&["c", "a"])).unwrap();
        store.append(&results(&["zz", "b"])).unwrap();
        let shape = OutputShape {
            input: Some(input_columns(&["a", "b", "c"])),
            openai_batch: None,
        };
        assert_eq!(store.finish_with(&shape).unwrap(), 4);
        let batches: Vec<RecordBatch> = read_batches(&out, &[])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let table = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        let schema = table.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names[names.len() - 2..], [INPUT_INDEX, "category"]);
        let got: Vec<(String, Option<i64>, Option<String>)> = (0..table.num_rows())
            .map(|i| {
                let index = table
                    .column_by_name(INPUT_INDEX)
                    .unwrap()
                    .as_primitive::<Int64Type>();
                let category = table.column_by_name("category").unwrap().as_string::<i32>();
                (
                    table.column(0).as_string::<i32>().value(i).to_string(),
                    index.is_valid(i).then(|| index.value(i)),
                    category.is_valid(i).then(|| category.value(i).to_string()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("c".into(), Some(2), Some("cat-c".into())),
                ("a".into(), Some(0), Some("cat-a".into())),
                ("zz".into(), None, None),
                ("b".into(), Some(1), Some("cat-b".into())),
            ]
        );
        // The file still reads as results, and a resumed merge rejoins rather than doubles.
        assert_eq!(read_results(&out).unwrap().len(), 4);
        let (store, _) = ResultStore::open(&out, true).unwrap();
        assert_eq!(store.finish_with(&shape).unwrap(), 4);
        use arrow::record_batch::RecordBatchReader;
        let schema = read_batches(&out, &[]).unwrap().schema();
        assert_eq!(schema.fields().len(), result_schema().fields().len() + 2);
    }

    /// The non-blank lines of a JSON Lines file, parsed.
    fn json_lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_jsonl_output_holds_nested_rows_and_resumes_with_retry() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("results.jsonl");
        let shape = OutputShape {
            input: Some(input_columns(&["a", "b", "c"])),
            openai_batch: None,
        };
        let (mut store, _) = ResultStore::open(&out, false).unwrap();
        let mut first = results(&["a", "b", "c"]);
        first[1].status = Status::Failed;
        store.append(&first).unwrap();
        assert_eq!(store.finish_with(&shape).unwrap(), 3);
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 3);
        let a = &lines[0];
        assert_eq!(
            (a["id"].as_str(), a["input_index"].as_i64()),
            (Some("a"), Some(0))
        );
        assert_eq!(a["category"], "cat-a");
        assert_eq!(a["trajectory"][0]["role"], "assistant");
        assert_eq!(a["trajectory"][0]["tokens"], 3);
        assert!(a["calls"].is_array());
        assert!(
            a.as_object().unwrap().contains_key("error"),
            "nulls are written: {a}"
        );

        let reopen = Reopen {
            resume: true,
            retry: vec![Status::Failed],
        };
        let (mut store, done) = ResultStore::open_with(&out, &reopen).unwrap();
        assert_eq!(done, HashSet::from(["a", "c"].map(String::from)));
        store.append(&results(&["b"])).unwrap();
        assert_eq!(store.finish_with(&shape).unwrap(), 3);
        let lines = json_lines(&out);
        let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            ["a", "c", "b"],
            "kept lines first, as written, then the re-run"
        );
        assert_eq!(lines[0], a.clone());
        assert_eq!(lines[2]["status"], "answered");
        assert_eq!(lines[2]["input_index"], 1);
    }

    #[test]
    fn an_openai_batch_output_has_one_line_per_task_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        let shape = OutputShape {
            input: None,
            openai_batch: Some(BatchEndpoint::Chat),
        };
        let (mut store, _) = ResultStore::open(&out, false).unwrap();
        // `a` answered, `b` reached max_turns.
        store.append(&results(&["a", "b"])).unwrap();
        store.finish_with(&shape).unwrap();
        let lines = json_lines(&out);
        assert_eq!(lines[0]["custom_id"], "a");
        assert_eq!(
            lines[0]["response"]["body"]["choices"][0]["message"]["content"],
            "answer of a"
        );
        assert_eq!(lines[0]["error"], serde_json::Value::Null);
        assert_eq!(lines[1]["response"], serde_json::Value::Null);
        assert_eq!(lines[1]["error"]["code"], "max_turns");
        let reopen = Reopen {
            resume: true,
            retry: vec![Status::MaxTurns],
        };
        let done = ResultStore::done(&out, &reopen).unwrap();
        assert_eq!(done, HashSet::from(["a".to_string()]));
    }

    #[test]
    fn an_output_format_tutti_does_not_write_is_named() {
        for (name, want) in [
            ("x.csv", "output x.csv: tutti writes Parquet (.parquet) and JSON Lines (.jsonl, .ndjson); `.csv` is neither"),
            ("x", "output x: tutti writes Parquet (.parquet) and JSON Lines (.jsonl, .ndjson); name the file with one of these extensions"),
        ] {
            let e = ResultStore::open(Path::new(name), false).unwrap_err();
            assert_eq!(e.to_string(), want);
        }
        assert_eq!(
            OutputFormat::of(Path::new("r.NDJSON")).unwrap(),
            OutputFormat::JsonLines
        );
    }

    #[test]
    fn a_broken_jsonl_output_line_is_named_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        std::fs::write(
            &out,
            "{\"id\": \"a\", \"status\": \"answered\"}\n\n{\"id\": \"b\"}\n",
        )
        .unwrap();
        let e = ResultStore::open(&out, true).unwrap_err().to_string();
        assert!(
            e.ends_with("out.jsonl:3: not a result line: no `status`"),
            "{e}"
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
        let segment = committed_segments(&out).unwrap().remove(0);
        read_statuses(&segment, &mut latest).unwrap();
        assert_eq!(
            latest,
            HashMap::from([
                ("x".to_string(), Status::Answered),
                ("y".to_string(), Status::MaxTurns)
            ])
        );
    }
}
