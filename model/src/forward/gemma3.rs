//! Gemma 3 (text) forward pass, following llama.cpp's `gemma3` graph.
//!
//! - Embeddings are scaled by `sqrt(hidden)`; the output head reuses `token_embd` when the
//!   file has no `output.weight`.
//! - Each block: RMSNorm → attention (QK-norm per head, NEOX RoPE) → post-attention norm →
//!   residual; RMSNorm → GELU(tanh)-gated MLP → post-FFN norm → residual. The norm weights in
//!   GGUF already include Gemma's `+ 1`.
//! - Local layers use a sliding window and RoPE base 10 000 (or `rope.freq_base_swa`); every
//!   `pattern`-th layer (1-based) is global with `rope.freq_base` and the optional linear
//!   RoPE scaling.
//! - Queries are scaled by `1/sqrt(head_dim)` (`1/sqrt(hidden/heads)` for the 62-layer 27B,
//!   as llama.cpp does since GGUF does not store `query_pre_attn_scalar`).

use super::attention::{attention, AttnParams};
use super::ops::{
    embed, split_heads, Activation, GatedMlp, Linear, Meta, OutputHead, RmsNorm, Rope, Weights,
};
use super::{Batch, KvCache, ModelInfo};
use crate::error::Result;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use std::io::{Read, Seek};
use std::sync::Arc;

/// Default sliding-window pattern: layer `i` is global when `(i + 1) % 6 == 0`.
const DEFAULT_SWA_PATTERN: usize = 6;
/// RoPE base of the local (sliding-window) layers unless the file says otherwise.
const DEFAULT_SWA_ROPE_BASE: f64 = 10_000.0;

/// One transformer block.
#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    mlp: GatedMlp,
    post_ffn_norm: RmsNorm,
    /// Sliding window of local layers; `None` for global layers.
    window: Option<usize>,
}

/// A loaded Gemma 3 model.
pub(super) struct Gemma3 {
    pub(crate) info: ModelInfo,
    pub(crate) device: Device,
    embed: Arc<QTensor>,
    embed_scale: f64,
    blocks: Vec<Block>,
    pub(crate) head: OutputHead,
    rope_global: Rope,
    rope_local: Rope,
    attn_scale: f64,
    attn_softcap: Option<f64>,
}

impl Gemma3 {
    /// Reads hyper-parameters from `meta` and weights from `w`.
    pub(crate) fn load<R: Read + Seek>(meta: &Meta<'_>, w: &mut Weights<'_, R>) -> Result<Self> {
        let hidden = meta.usize("embedding_length")?;
        let n_layers = meta.usize("block_count")?;
        let n_heads = meta.usize("attention.head_count")?;
        let n_kv_heads = meta
            .opt_usize("attention.head_count_kv")?
            .unwrap_or(n_heads);
        let head_dim = meta
            .opt_usize("attention.key_length")?
            .unwrap_or(hidden / n_heads);
        let eps = meta
            .opt_f64("attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-6);
        let window = meta.opt_usize("attention.sliding_window")?;
        let rope_base = meta.opt_f64("rope.freq_base")?.unwrap_or(1_000_000.0);
        let rope_base_local = meta
            .opt_f64("rope.freq_base_swa")?
            .unwrap_or(DEFAULT_SWA_ROPE_BASE);
        let rope_scale = match (
            meta.opt_string("rope.scaling.type"),
            meta.opt_f64("rope.scaling.factor")?,
        ) {
            (Some("linear") | None, Some(f)) if f > 0.0 => 1.0 / f,
            _ => 1.0,
        };
        // The pattern is either a period or (newer converters) a per-layer array of flags
        // that are true for sliding-window layers.
        let is_local: Vec<bool> = match meta.opt_usize_array("attention.sliding_window_pattern") {
            Ok(Some(flags)) if flags.len() == n_layers => flags.iter().map(|&f| f != 0).collect(),
            _ => {
                let period = meta
                    .opt_usize("attention.sliding_window_pattern")
                    .ok()
                    .flatten()
                    .unwrap_or(DEFAULT_SWA_PATTERN);
                (0..n_layers)
                    .map(|i| period == 0 || (i + 1) % period != 0)
                    .collect()
            }
        };
        let attn_scale = if n_layers == 62 {
            1.0 / ((hidden / n_heads) as f64).sqrt()
        } else {
            1.0 / (head_dim as f64).sqrt()
        };

        let embed = Arc::new(w.qtensor("token_embd.weight")?);
        let vocab = embed.shape().dims2()?.0;
        let lm_head = if w.has("output.weight") {
            w.linear("output.weight")?
        } else {
            Linear::new(embed.clone())?
        };
        let mut blocks = Vec::with_capacity(n_layers);
        for (i, &local) in is_local.iter().enumerate() {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            blocks.push(Block {
                attn_norm: w.rms_norm(&p("attn_norm"), eps)?,
                wq: w.linear(&p("attn_q"))?,
                wk: w.linear(&p("attn_k"))?,
                wv: w.linear(&p("attn_v"))?,
                wo: w.linear(&p("attn_output"))?,
                q_norm: w.rms_norm(&p("attn_q_norm"), eps)?,
                k_norm: w.rms_norm(&p("attn_k_norm"), eps)?,
                post_attn_norm: w.rms_norm(&p("post_attention_norm"), eps)?,
                ffn_norm: w.rms_norm(&p("ffn_norm"), eps)?,
                mlp: GatedMlp::load(w, i, Activation::GeluTanh)?,
                post_ffn_norm: w.rms_norm(&p("post_ffw_norm"), eps)?,
                window: if local { window } else { None },
            });
        }
        let head = OutputHead {
            norm: w.rms_norm("output_norm.weight", eps)?,
            lm_head,
            softcap: meta
                .opt_f64("final_logit_softcapping")?
                .filter(|c| *c > 0.0),
        };
        let device = w.device.clone();
        Ok(Self {
            info: ModelInfo {
                arch: meta.arch.clone(),
                n_layers,
                hidden,
                n_heads,
                n_kv_heads,
                head_dim,
                vocab,
                context_length: meta.opt_usize("context_length")?,
            },
            rope_global: Rope::new(head_dim, rope_base, rope_scale, &device)?,
            rope_local: Rope::new(head_dim, rope_base_local, 1.0, &device)?,
            device,
            embed,
            embed_scale: (hidden as f64).sqrt(),
            blocks,
            head,
            attn_scale,
            attn_softcap: meta.opt_f64("attn_logit_softcapping")?.filter(|c| *c > 0.0),
        })
    }

    /// Runs one batched step up to the output head: `(tokens, hidden)` final hidden states
    /// (before the output norm); see [`super::Model::step`].
    pub(crate) fn hidden(&self, batch: &Batch, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let info = &self.info;
        let (hd, nh, nkv) = (info.head_dim, info.n_heads, info.n_kv_heads);
        let rope_global = self.rope_global.tables(&batch.positions)?;
        let rope_local = self.rope_local.tables(&batch.positions)?;
        let mut x = (embed(&self.embed, &batch.ids)? * self.embed_scale)?;
        for (layer, b) in self.blocks.iter().enumerate() {
            let rope = if b.window.is_some() {
                &rope_local
            } else {
                &rope_global
            };
            let h = b.attn_norm.forward(&x)?;
            let q = b
                .q_norm
                .forward(&split_heads(&b.wq.forward(&h)?, nh, hd)?)?;
            let k = b
                .k_norm
                .forward(&split_heads(&b.wk.forward(&h)?, nkv, hd)?)?;
            let v = split_heads(&b.wv.forward(&h)?, nkv, hd)?;
            let (q, k) = (rope.apply(&q)?, rope.apply(&k)?);
            let params = AttnParams {
                layer,
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                scale: self.attn_scale,
                scale_q: true,
                window: b.window,
                softcap: self.attn_softcap,
            };
            let a = attention(&q, &k, &v, &batch.spans, caches, params)?;
            let a = b.post_attn_norm.forward(&b.wo.forward(&a)?)?;
            x = (x + a)?;
            let m = b.mlp.forward(&b.ffn_norm.forward(&x)?)?;
            x = (x + b.post_ffn_norm.forward(&m)?)?;
        }
        Ok(x)
    }
}
