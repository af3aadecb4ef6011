//! The Arrow Flight job service, a thin adapter over [`crate::jobs`]: clients submit jobs of tasks
//! with DoPut, follow them with GetFlightInfo / PollFlightInfo, read results with DoGet and cancel
//! with DoAction.

pub(crate) mod client;
pub(crate) mod service;

pub use client::{ClientError, JobClient, JobInfo};
pub use service::{job_descriptor, serve, Auth};
