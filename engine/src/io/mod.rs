//! Data at the edges of the engine: the Arrow schemas of tasks and results, task input from JSON
//! Lines, Parquet or Arrow batches with validation that names the line or row and the field, and
//! durable, resumable result output (Parquet or JSON Lines).
//!
//! - `schema`: [`task_schema`] and [`result_schema`], defined once (DESIGN.md, "Arrow schemas").
//! - `tasks`: [`read_tasks`] for `tutti run TASKS`, `TaskBatchDecoder` for Arrow batches
//!   (Flight uploads), and writers that make task files for tests and benchmarks.
//! - `results`: `results_to_batch` / `batch_to_results`, and [`ResultStore`], which commits
//!   results in segments while a job runs so that a killed run resumes without loss or duplicates,
//!   then merges them into Parquet or JSON Lines with the input's index and extra columns.
//! - `openai_batch`: OpenAI batch JSON Lines requests in and output lines out.

pub mod contain;
pub(crate) mod durable;
pub(crate) mod openai_batch;
pub(crate) mod results;
pub(crate) mod schema;
pub(crate) mod tasks;

pub use results::{
    read_results, shell_command, CommitFailure, CommitRetry, InputColumns, OnCommitError,
    OutputFormat, OutputShape, Reopen, ResultStore, StoreError,
};
pub use schema::{result_schema, task_schema};
pub use tasks::{
    near_task_column, preference_check, read_task_bytes, read_task_file, read_tasks,
    tasks_to_batch, write_tasks_jsonl, write_tasks_parquet, FieldError, InputError, Location,
    Position, TaskBatchDecoder, TaskFile,
};
