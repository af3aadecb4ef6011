//! tutti's engine: everything that is not a kernel or a binding.
//!
//! The path of a task: [`io`] reads and validates it, [`engine::Engine`] starts an episode
//! ([`episode`]) that asks the [`executor`] for turns (batched by the [`scheduler`]), resolves
//! each tool call through the [`catalog`], and calls the backend through its coalescer
//! ([`coalesce`], with the [`cache`] in front), accounting everything in the [`ledger`]. Results go
//! back through [`io`]. [`bench`] drives the same engine with generated workloads.

pub mod backend;
pub mod breaker;
pub mod cache;
pub mod catalog;
pub mod coalesce;
pub mod config;
pub mod engine;
pub mod environment;
mod episode;
pub mod error;
pub mod executor;
pub mod flight;
pub mod io;
pub mod jobs;
pub mod ledger;
pub mod limits;
pub mod policy;
pub mod preflight;
pub mod report;
pub mod task;

pub use config::Config;
pub use engine::{Engine, EngineOptions};
pub use task::{Status, Task, TaskResult};
pub mod bench;
