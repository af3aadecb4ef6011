//! The Arrow Flight job service: clients submit jobs of tasks with DoPut, follow them with
//! GetFlightInfo / PollFlightInfo, read results with DoGet and cancel with DoAction. Jobs are kept
//! in a data directory and survive a crash of the server (see [`jobs`]).

pub mod client;
pub mod jobs;
pub mod service;
pub mod spec;

pub use client::{ClientError, JobClient, JobInfo};
pub use jobs::{Jobs, ServerLimits};
pub use service::{serve, Auth};
pub use spec::{JobSpec, JobState};
