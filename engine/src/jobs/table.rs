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
use crate::io::tasks::{FieldError, InputError, TaskBatchDecoder};
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
        let mut decoder = TaskBatchDecoder::with_extras(label.clone(), &reader.schema(), check)?;
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
