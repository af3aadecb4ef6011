//! tutti's in-process model runtime. It knows models, tokens and calls, nothing of backends,
//! catalogs or episodes.
//!
//! - [`Model`] (`forward/`): a GGUF file (`gemma3`, `qwen3`) loaded on candle, stepped over any
//!   mix of sequences at once, each with its own [`KvCache`]; [`Tokenizer`] (`tokenizer/`): the
//!   file's SentencePiece or byte-level BPE vocabulary and its chat template.
//! - [`scheduler`]: continuous batching, generic over a [`scheduler::StepRunner`].
//! - [`runtime`]: [`runtime::NativeRuntime`], a model behind its scheduler, whose runner keeps
//!   each sequence's cache across turns, shares prefixes and runs the policy head.
//! - [`head`]: the policy head: grammars of valid calls (a catalog's, or functions' JSON
//!   schemas with llguidance), preference bias and budget masks, seeded sampling.
//! - [`hermes`]: the tool-call protocol the model writes; [`chat_template`]: conversations to
//!   prompt text.
//! - `testing` (feature `testing`): tiny random-weight models built in memory.

#![warn(unreachable_pub)]

pub mod chat_template;
mod error;
mod forward;
pub mod head;
pub mod hermes;
pub mod runtime;
pub mod scheduler;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod tokenizer;

#[cfg(test)]
mod tests;

pub use error::ModelError;
pub use forward::{argmax_rows, KvCache, LoadOptions, Model, ModelInfo, Rows, SeqStep, StepOutput};
pub use tokenizer::Tokenizer;
