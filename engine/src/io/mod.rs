//! Data at the edges of the engine: the Arrow schemas of tasks and results, task input from JSON
//! Lines, Parquet or Arrow batches with validation that names the line or row and the field, and
//! durable, resumable Parquet result output.
//!
//! - [`schema`]: [`task_schema`] and [`result_schema`], defined once (DESIGN.md, "Arrow schemas").
//! - [`tasks`]: [`read_tasks`] for `tutti run TASKS`, [`TaskBatchDecoder`] for Arrow batches
//!   (Flight uploads), and writers that make task files for tests and benchmarks.
//! - [`results`]: [`results_to_batch`] / [`batch_to_results`], and [`ResultStore`], which commits
//!   results in segments while a job runs so that a killed run resumes without loss or duplicates.

pub mod results;
pub mod schema;
pub mod tasks;

pub use results::{
    batch_to_results, read_results, results_to_batch, ResultStore, ResultsError, StoreError,
};
pub use schema::{result_schema, task_schema};
pub use tasks::{
    read_tasks, tasks_to_batch, write_tasks_jsonl, write_tasks_parquet, FieldError, InputError,
    Location, Position, TaskBatchDecoder,
};
