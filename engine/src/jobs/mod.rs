//! Jobs: the one path of a batch of tasks from accepted input to committed results, for a local
//! `tutti run` and for the jobs `tutti serve` accepts alike. Nothing here knows Flight; the
//! Flight service is a thin adapter over [`Jobs`].
//!
//! - `runner`: [`run_job`], the one runner: reads the tasks, skips the ids already committed,
//!   drives the engine and commits results in groups.
//! - `store`: [`Jobs`], the data directory of a server: manifests, counts rebuilt from committed
//!   results at start-up, resume of unfinished jobs, cancel.
//! - `ingest`: `Upload`, validation and durable acceptance of uploaded batches.
//! - `table`: [`TaskTable`], tasks held in memory as Arrow batches (the Python module's
//!   tables), validated once and decoded a chunk at a time, with results joined back to them.
//! - `spec`: a job's spec (name, defaults, overrides) and its manifest.

pub(crate) mod error;
pub(crate) mod ingest;
pub(crate) mod runner;
pub(crate) mod spec;
pub(crate) mod store;
pub(crate) mod table;

pub use error::JobError;
pub use runner::{run_job, TaskSource};
pub use spec::{check_job_spec, JobState};
pub use store::{Jobs, ServerLimits};
pub use table::TaskTable;
