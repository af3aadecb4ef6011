//! What can go wrong with a job, and whose fault it is.

use std::path::{Path, PathBuf};

use arrow::error::ArrowError;

use crate::io::durable::FsError;
use crate::io::results::StoreError;
use crate::io::tasks::InputError;

/// Why a job operation failed; the service maps each to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The client's input is wrong (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// A limit would be exceeded (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Exhausted(String),
    #[error("no job `{0}`")]
    NotFound(String),
    /// The server's own storage failed (INTERNAL), and so do the rest below.
    #[error("job store: {0}")]
    Store(#[from] StoreError),
    #[error("job store: {0}")]
    Fs(#[from] FsError),
    #[error("job store: {}: {source}", path.display())]
    Arrow {
        path: PathBuf,
        #[source]
        source: ArrowError,
    },
    #[error("job store: {}: {source}", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A stored task file no longer decodes.
    #[error("job store: {}: {source}", path.display())]
    Tasks {
        path: PathBuf,
        #[source]
        source: Box<InputError>,
    },
    #[error("job store: the {0} thread failed")]
    Thread(&'static str),
}

impl JobError {}

pub(super) fn arrow_error(path: &Path) -> impl FnOnce(ArrowError) -> JobError + '_ {
    move |source| JobError::Arrow {
        path: path.to_path_buf(),
        source,
    }
}
