//! What can go wrong loading or running a model: [`ModelError`], with the underlying error
//! (I/O, candle, the tokenizer's regex) kept as its source.

use std::io;

/// Why a model could not be loaded or stepped.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file (its metadata, tokenizer or tensors) or a step's request is not one this runtime
    /// can run; the message says what was found.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A tensor operation or GGUF read (candle).
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The tokenizer's pre-tokenizer pattern.
    #[error(transparent)]
    Regex(#[from] Box<fancy_regex::Error>),
    /// A chat template that does not parse or fails to render (`what` says which).
    #[error("chat_template {what}: {source}")]
    Template {
        what: &'static str,
        #[source]
        source: minijinja::Error,
    },
    /// What was being done when `source` happened.
    #[error("{what}: {source}")]
    Context {
        what: String,
        #[source]
        source: Box<ModelError>,
    },
}

pub(crate) type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Returns an [`ModelError::Invalid`] with a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::ModelError::Invalid(format!($($arg)*)))
    };
}
pub(crate) use bail;

/// Says what was being done when an error happened (or what was missing, for an `Option`).
pub(crate) trait Context<T> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;

    fn context(self, what: &str) -> Result<T>
    where
        Self: Sized,
    {
        self.with_context(|| what.to_string())
    }
}

impl<T, E: Into<ModelError>> Context<T> for std::result::Result<T, E> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| ModelError::Context {
            what: what(),
            source: Box::new(e.into()),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(|| ModelError::Invalid(what()))
    }
}
