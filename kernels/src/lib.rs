//! Policy-head kernels.
//!
//! The CPU routines here are the reference implementations: plain slices in, plain slices out, no
//! allocation. Later GPU kernels are checked against them. The policy head uses them to turn the
//! orchestrator's scores over the tool catalog (or the vocabulary) into a sampled choice.

pub mod quant;
pub mod sampling;

pub use sampling::{
    apply_temperature, argmax, log_softmax_inplace, sample_index, softmax_inplace, top_k_mask,
    top_p_mask,
};
