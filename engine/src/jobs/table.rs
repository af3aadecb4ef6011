//! Tasks held in memory as Arrow batches (a Python caller's `pyarrow.Table`): validated once, in
//! full, before anything runs, then decoded a chunk at a time as the engine takes them, so a
//! table of a million tasks is never a million `Task`s at once. The batches are the caller's own
//! buffers (imported through the Arrow C stream interface, not copied); chunks are zero-copy
//! slices of them.
//!
//! Results are joined back to the input as the rows are committed: each gets its `input_index`
//! and the input's extra columns, in the schema of `tutti run`'s output
//! (`InputColumns::schema`). Only the tasks in flight are kept in the map from id to row.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, RecordBatchReader, StringArray};
use arrow::compute::{cast, interleave};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::error::ArrowError;
use parking_lot::Mutex;

use super::error::JobError;
use super::runner::TaskSource;
use crate::io::results::{results_to_batch, InputColumns};
use crate::io::schema::TASK_COLUMNS;
use crate::io::tasks::{FieldError, InputError, Location, Position, TaskBatchDecoder};
use crate::task::{Task, TaskResult};

/// Rows decoded at a time: the most `Task`s that exist at once for one table, besides those in
/// flight.
const CHUNK_ROWS: usize = 4096;

/// A validated table of tasks; cheap to clone (the chunks are shared).
#[derive(Clone)]
pub struct TaskTable {
    inner: Arc<Inner>,
}

struct Inner {
    /// Names the input in errors.
    label: String,
    /// The input in slices of at most `CHUNK_ROWS` rows.
    chunks: Vec<RecordBatch>,
    /// The row number of each chunk's first row.
    starts: Vec<usize>,
    /// The columns beyond the task schema, one batch per chunk (zero columns when none).
    extras: Vec<RecordBatch>,
    /// The schema of joined result batches: the result schema, `input_index`, the extras.
    schema: SchemaRef,
    /// The input row of each task handed to the engine whose result has not been joined yet.
    in_flight: Mutex<HashMap<String, usize>>,
}

impl TaskTable {
    /// Reads every batch of `reader` and validates every row (the task schema; a non-empty id
    /// unique in the table; `max_turns >= 1`; a finite `budget_usd >= 0`; then `check`, such as
    /// [`preference_check`](crate::io::preference_check)). The first problem is returned, naming
    /// `label`, the row and the column. Columns beyond the task schema are kept, to be joined
    /// to the results.
    pub fn read(
        label: impl Into<String>,
        reader: impl RecordBatchReader,
        check: &dyn Fn(&Task) -> Result<(), FieldError>,
    ) -> Result<TaskTable, InputError> {
        let label = label.into();
        let arrow_error = |source| InputError::Arrow {
            input: label.clone(),
            source,
        };
        let mut decoder =
            TaskBatchDecoder::with_extras(label.clone(), &reader.schema(), check)?.without_id_set();
        let mut chunks = Vec::new();
        let mut starts = Vec::new();
        let mut rows = 0;
        for batch in reader {
            let batch = batch.map_err(arrow_error)?;
            let mut offset = 0;
            while offset < batch.num_rows() {
                let len = CHUNK_ROWS.min(batch.num_rows() - offset);
                let chunk = batch.slice(offset, len);
                // Validation only: the tasks are decoded again, a chunk at a time, as they run.
                drop(decoder.decode(&chunk)?);
                starts.push(rows);
                chunks.push(chunk);
                rows += len;
                offset += len;
            }
        }
        check_unique_ids(&label, &chunks, &starts)?;
        let extras = decoder.into_extra_batches();
        let extra_schema = extras
            .first()
            .map_or_else(|| Arc::new(Schema::empty()), |b| b.schema());
        let schema = InputColumns::joined_schema(Some(&extra_schema));
        Ok(TaskTable {
            inner: Arc::new(Inner {
                label,
                chunks,
                starts,
                extras,
                schema,
                in_flight: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// How many tasks the table holds.
    pub fn len(&self) -> usize {
        self.inner.chunks.iter().map(|c| c.num_rows()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The schema of [`join`](TaskTable::join)'s batches, which is that of `tutti run`'s
    /// Parquet output for this input.
    pub fn result_schema(&self) -> SchemaRef {
        self.inner.schema.clone()
    }

    /// The input's side of a merged output (for a run that writes one): every id in input order
    /// and the extra columns. Copies the ids and the extra columns.
    pub fn input_columns(&self) -> Result<InputColumns, ArrowError> {
        let mut ids: Vec<String> = Vec::with_capacity(self.len());
        for chunk in &self.inner.chunks {
            let column = chunk.column(chunk.schema().index_of("id")?);
            let column = cast(column, &DataType::Utf8)?;
            let column = column
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to utf8");
            ids.extend(column.iter().map(|id| id.unwrap_or_default().to_string()));
        }
        let extras = match self.inner.extras.first() {
            Some(first) if first.num_columns() > 0 => Some(arrow::compute::concat_batches(
                &first.schema(),
                &self.inner.extras,
            )?),
            _ => None,
        };
        Ok(InputColumns::new(ids.iter().map(String::as_str), extras))
    }

    /// Result rows as one batch of [`result_schema`](TaskTable::result_schema): each row with
    /// its task's input row and extra columns (null for an id this table did not hand out).
    pub fn join(&self, rows: &[TaskResult]) -> Result<RecordBatch, ArrowError> {
        let batch = results_to_batch(rows);
        let found: Vec<Option<usize>> = {
            let mut in_flight = self.inner.in_flight.lock();
            rows.iter().map(|r| in_flight.remove(&r.id)).collect()
        };
        let index: Int64Array = found.iter().map(|r| r.map(|r| r as i64)).collect();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(index));
        let extras = &self.inner.extras;
        let width = extras.first().map_or(0, |b| b.num_columns());
        if width > 0 {
            // (chunk, row within the chunk) of each result; a row the table did not hand out
            // points at a null row appended after the chunks.
            let nulls: Vec<ArrayRef> = extras[0]
                .schema()
                .fields()
                .iter()
                .map(|f| arrow::array::new_null_array(f.data_type(), 1))
                .collect();
            let at: Vec<(usize, usize)> = found
                .iter()
                .map(|row| match row {
                    Some(row) => {
                        let chunk = self.inner.starts.partition_point(|s| *s <= *row) - 1;
                        (chunk, row - self.inner.starts[chunk])
                    }
                    None => (extras.len(), 0),
                })
                .collect();
            for (c, null) in nulls.iter().enumerate() {
                let mut sources: Vec<&dyn Array> =
                    extras.iter().map(|b| b.column(c).as_ref()).collect();
                sources.push(null.as_ref());
                columns.push(interleave(&sources, &at)?);
            }
        }
        RecordBatch::try_new(self.inner.schema.clone(), columns)
    }
}

/// Refuses an id that appears twice, as a decoder's set of ids would (naming the first row that
/// repeats an id, and where the id was first seen), from a sorted list of (hash, row): 12 bytes
/// a row where a set of every id would hold each id again.
fn check_unique_ids(
    label: &str,
    chunks: &[RecordBatch],
    starts: &[usize],
) -> Result<(), InputError> {
    let arrow_error = |source| InputError::Arrow {
        input: label.to_string(),
        source,
    };
    let mut ids: Vec<StringArray> = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let column = chunk.column(chunk.schema().index_of("id").map_err(arrow_error)?);
        let column = cast(column, &DataType::Utf8).map_err(arrow_error)?;
        ids.push(
            column
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to utf8")
                .clone(),
        );
    }
    let id_at = |row: usize| {
        let chunk = starts.partition_point(|s| *s <= row) - 1;
        ids[chunk].value(row - starts[chunk])
    };
    let mut hashed: Vec<(u64, u32)> = Vec::with_capacity(starts.last().map_or(0, |s| s + 4096));
    for (c, column) in ids.iter().enumerate() {
        for i in 0..column.len() {
            let row = u32::try_from(starts[c] + i).map_err(|_| InputError::Arrow {
                input: label.to_string(),
                source: ArrowError::InvalidArgumentError("more than 4 billion tasks".into()),
            })?;
            hashed.push((xxhash_rust::xxh3::xxh3_64(column.value(i).as_bytes()), row));
        }
    }
    hashed.sort_unstable();
    // The earliest row that repeats an earlier one's id, with that earlier row.
    let mut repeat: Option<(usize, usize)> = None;
    for group in hashed.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
        // Rows ascend within a group; ids of one hash are almost always equal.
        for (k, &(_, row)) in group.iter().enumerate().skip(1) {
            let row = row as usize;
            let first = group[..k]
                .iter()
                .map(|&(_, r)| r as usize)
                .find(|&r| id_at(r) == id_at(row));
            if let Some(first) = first {
                if repeat.is_none_or(|(earliest, _)| row < earliest) {
                    repeat = Some((row, first));
                }
                break;
            }
        }
    }
    match repeat {
        // Rows are 1-based in messages.
        Some((row, first)) => Err(InputError::DuplicateId {
            at: Location {
                input: label.to_string(),
                position: Position::Row(row + 1),
            },
            id: id_at(row).to_string(),
            first: Position::Row(first + 1),
        }),
        None => Ok(()),
    }
}

impl TaskSource for TaskTable {
    fn each(self, each: &mut dyn FnMut(Task) -> bool) -> Result<(), JobError> {
        let inner = &self.inner;
        let Some(first) = inner.chunks.first() else {
            return Ok(());
        };
        let stored = |source| JobError::Tasks {
            path: inner.label.clone().into(),
            source: Box::new(source),
        };
        // The task columns only: the extras were kept at validation and are joined to results.
        let schema = first.schema();
        let task_columns: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| TASK_COLUMNS.contains(&schema.field(i).name().as_str()))
            .collect();
        let project = |chunk: &RecordBatch| {
            chunk.project(&task_columns).map_err(|source| {
                stored(InputError::Arrow {
                    input: inner.label.clone(),
                    source,
                })
            })
        };
        let mut decoder =
            TaskBatchDecoder::accepted(&inner.label, &project(first)?.schema()).map_err(stored)?;
        for (chunk, start) in inner.chunks.iter().zip(&inner.starts) {
            let tasks = decoder.decode(&project(chunk)?).map_err(stored)?;
            for (i, task) in tasks.into_iter().enumerate() {
                inner.in_flight.lock().insert(task.id.clone(), start + i);
                if !each(task) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ended_early;
    use crate::task::Status;
    use arrow::array::{AsArray, Int32Array};
    use arrow::datatypes::{Field, Int64Type};

    fn table(ids: Vec<String>) -> RecordBatch {
        let n = ids.len();
        let prompts: StringArray = (0..n).map(|i| Some(format!("prompt {i}"))).collect();
        let extra: Int32Array = (0..n as i32).map(|i| Some(i * 10)).collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("prompt", DataType::Utf8, false),
                Field::new("extra", DataType::Int32, false),
            ])),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(prompts),
                Arc::new(extra),
            ],
        )
        .unwrap()
    }

    fn read(batches: Vec<RecordBatch>) -> Result<TaskTable, InputError> {
        let schema = batches[0].schema();
        let reader =
            arrow::record_batch::RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
        TaskTable::read("tasks", reader, &|_| Ok(()))
    }

    #[test]
    fn a_repeated_id_is_named_at_its_second_row_across_chunks_and_batches() {
        let mut ids: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
        ids[9_000] = "t5".into();
        ids[9_500] = "t7".into();
        let batch = table(ids);
        let e = read(vec![batch.slice(0, 6_000), batch.slice(6_000, 4_000)])
            .err()
            .expect("refused");
        assert_eq!(
            e.to_string(),
            "tasks: row 9001: duplicate id `t5` (first seen on row 6)"
        );
        assert_eq!(e.field(), Some("id"));
    }

    #[test]
    fn tasks_come_out_in_order_and_results_join_their_row_and_extra_columns() {
        let batch = table((0..9_000).map(|i| format!("t{i}")).collect());
        let table = read(vec![batch.slice(0, 5_000), batch.slice(5_000, 4_000)]).unwrap();
        assert_eq!(table.len(), 9_000);
        let mut seen = Vec::new();
        table
            .clone()
            .each(&mut |t| {
                seen.push(t.id);
                true
            })
            .unwrap();
        assert_eq!(seen.len(), 9_000);
        assert_eq!(seen[8_999], "t8999");

        let result = |id: &str| ended_early(id.into(), None, Status::Answered, None);
        let joined = table
            .join(&[result("t8000"), result("t3"), result("stranger")])
            .unwrap();
        assert_eq!(joined.schema(), table.result_schema());
        let index = joined
            .column_by_name("input_index")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(
            index.iter().collect::<Vec<_>>(),
            [Some(8_000), Some(3), None]
        );
        let extra = joined
            .column_by_name("extra")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int32Type>();
        assert_eq!(
            extra.iter().collect::<Vec<_>>(),
            [Some(80_000), Some(30), None]
        );
        // Joined once: the row is forgotten after its result.
        let again = table.join(&[result("t3")]).unwrap();
        assert!(again.column_by_name("input_index").unwrap().is_null(0));
    }
}
