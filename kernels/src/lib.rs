//! Policy-head kernels.
//!
//! The CPU routines here are the reference implementations: plain slices in, plain slices out, no
//! allocation. The policy head uses them to turn the orchestrator's scores over the tool catalog
//! (or the vocabulary) into a sampled choice. With the `cuda` feature (on by default), [`cuda`]
//! holds the same steps as CUDA kernels, compiled at run time, each checked against these.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod quant;
pub mod sampling;

pub use sampling::{
    apply_temperature, argmax, log_softmax_inplace, sample_index, softmax_inplace, top_k_mask,
    top_p_mask,
};
