//! Qwen 3 (dense) forward pass, following llama.cpp's `qwen3` graph.
//!
//! Each block: RMSNorm → attention (GQA, per-head QK RMSNorm before NEOX RoPE, scale
//! `1/sqrt(head_dim)`) → residual; RMSNorm → SwiGLU MLP → residual. The output head is
//! `output.weight`, or the tied `token_embd` when absent.

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
    ffn_norm: RmsNorm,
    mlp: GatedMlp,
}

/// A loaded Qwen 3 model.
pub(super) struct Qwen3 {
    pub(crate) info: ModelInfo,
    pub(crate) device: Device,
    embed: Arc<QTensor>,
    blocks: Vec<Block>,
    pub(crate) head: OutputHead,
    rope: Rope,
}

impl Qwen3 {
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
        let rope_base = meta.opt_f64("rope.freq_base")?.unwrap_or(1_000_000.0);

        let embed = Arc::new(w.qtensor("token_embd.weight")?);
        let vocab = embed.shape().dims2()?.0;
        let lm_head = if w.has("output.weight") {
            w.linear("output.weight")?
        } else {
            Linear::new(embed.clone())?
        };
        let mut blocks = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            blocks.push(Block {
                attn_norm: w.rms_norm(&p("attn_norm"), eps)?,
                wq: w.linear(&p("attn_q"))?,
                wk: w.linear(&p("attn_k"))?,
                wv: w.linear(&p("attn_v"))?,
                wo: w.linear(&p("attn_output"))?,
                q_norm: w.rms_norm(&p("attn_q_norm"), eps)?,
                k_norm: w.rms_norm(&p("attn_k_norm"), eps)?,
                ffn_norm: w.rms_norm(&p("ffn_norm"), eps)?,
                mlp: GatedMlp::load(w, i, Activation::Silu)?,
            });
        }
        let head = OutputHead {
            norm: w.rms_norm("output_norm.weight", eps)?,
            lm_head,
            softcap: None,
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
            rope: Rope::new(head_dim, rope_base, 1.0, &device)?,
            device,
            embed,
            blocks,
            head,
        })
    }

    /// Runs one batched step up to the output head: `(tokens, hidden)` final hidden states
    /// (before the output norm); see [`super::Model::step`].
    pub(crate) fn hidden(&self, batch: &Batch, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let info = &self.info;
        let (hd, nh, nkv) = (info.head_dim, info.n_heads, info.n_kv_heads);
        let rope = self.rope.tables(&batch.positions)?;
        let mut x = embed(&self.embed, &batch.ids)?;
        for (layer, b) in self.blocks.iter().enumerate() {
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
                scale: 1.0 / (hd as f64).sqrt(),
                scale_q: false,
                window: None,
                softcap: None,
            };
            let a = attention(&q, &k, &v, &batch.spans, caches, params)?;
            x = (x + b.wo.forward(&a)?)?;
            let m = b.mlp.forward(&b.ffn_norm.forward(&x)?)?;
            x = (x + m)?;
        }
        Ok(x)
    }
}
