//! tutti's engine: the catalog, episodes, executors, backends, coalescer, cache and ledger (the
//! core), and the edges that bring tasks in and results out: [`io`] (task and result files),
//! [`jobs`] (the one runner of `tutti run` and served jobs, and the job store), [`flight`] (the
//! Arrow Flight service over the jobs) and [`bench`](mod@bench) (benchmarks). The model itself lives in
//! `tutti-model`.
//!
//! The path of a task: [`io`] reads and validates it, [`jobs::run_job`] skips what is already
//! committed and hands the rest to the [`Engine`], which runs an episode per task: the executor
//! decides a turn, the call is resolved through the `Catalog` and sent to its backend through
//! a coalescer (batching, single-flight, the [`ResultCache`]), and everything is accounted in the
//! [`Ledger`]. Results go back through [`jobs`] and [`io`].
//!
//! This is the crate's whole surface: the modules below, and the re-exports at the root.

#![warn(unreachable_pub)]

pub mod bench;
pub mod config;
pub mod figures;
pub mod flight;
pub mod http;
pub mod io;
pub mod jobs;
pub mod metrics;
pub mod preflight;

mod backend;
mod breaker;
mod cache;
mod catalog;
mod coalesce;
mod engine;
mod environment;
mod episode;
mod error;
mod executor;
mod ledger;
mod limits;
mod policy;
mod report;
mod task;
#[cfg(test)]
mod test_support;

pub use backend::openai::OpenAiBackend;
pub use backend::retrieval::RetrievalIndex;
pub use backend::{Backend, BackendError, BatchItem, CacheKey, HostBackends, Request, Response};
pub use cache::{CacheStats, CachedResult, ResultCache};
pub use config::Config;
pub use engine::{Engine, EngineError, EngineOptions};
pub use environment::SessionCounts;
pub use error::chain;
pub use ledger::{AliasSummary, BackendSummary, Ledger, LedgerSummary};
pub use report::{Latency, Report, Tally};
pub use task::{Action, CallRecord, Message, Role, Status, Task, TaskResult};
