//! The forward pass: GGUF loading and batched steps on candle.
//!
//! A [`Model`] runs *selectively batched* steps: each step takes any mix of sequences, each
//! with one or more new tokens (a prefill chunk or a single decode token) and its own
//! [`KvCache`]. Projections and MLPs run once over the concatenated tokens of all sequences;
//! attention runs per sequence against that sequence's cache.

mod attention;
mod gemma3;
mod ggml;
mod kv_cache;
mod ops;
mod qmatmul;
mod qwen3;

pub use kv_cache::KvCache;
pub use ops::argmax_rows;

use crate::tokenizer::Tokenizer;

use crate::error::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use ops::SeqSpan;
use std::io::{Read, Seek};
use std::path::Path;

/// One sequence's share of a batched step.
pub struct SeqStep<'a> {
    /// New tokens, at positions `cache.len()..cache.len() + tokens.len()`. Must not be empty.
    pub tokens: &'a [u32],
    /// The sequence's cache; the new tokens are appended to it.
    pub cache: &'a mut KvCache,
}

/// Which output-head rows a sequence wants from a step (see [`Model::step_rows`]).
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// None: a prefill chunk that does not sample.
    None,
    /// The whole vocabulary.
    All,
    /// Only these token ids, in this order (a grammar's allowed continuations).
    Only(&'a [u32]),
}

/// Logits produced by a step.
#[derive(Debug)]
pub struct StepOutput {
    /// `(sequences, vocab)`: logits of each sequence's last new token, in input order.
    pub last: Tensor,
    /// `(tokens, vocab)`: logits of every new token (sequences concatenated in input order),
    /// when requested.
    pub all: Option<Tensor>,
}

/// Architecture-independent facts about a loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// `general.architecture`, e.g. `gemma3`.
    pub arch: String,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Rows of the output projection.
    pub vocab: usize,
    /// Trained context length (`{arch}.context_length`), if stated.
    pub context_length: Option<usize>,
}

/// Loading options.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Re-quantize Q5_0/Q5_1 matrices to Q8_0 at load time. candle 0.11 has no SIMD kernel
    /// for Q5 types (about 3 GMAC/s against 10+ for Q8_0 on one AVX2 core), so this speeds
    /// decode up markedly, at the cost of 8.5 instead of 5.5-6 bits per weight and logits a
    /// little further from llama.cpp's (the weights are rounded once more).
    pub requantize_q5_to_q8: bool,
}

/// A loaded model of one of the supported architectures (`gemma3`, `qwen3`).
pub struct Model(Arch);

enum Arch {
    /// Gemma 3 (text).
    Gemma3(gemma3::Gemma3),
    /// Qwen 3 (dense).
    Qwen3(qwen3::Qwen3),
}

impl Model {
    /// Loads the weights described by `ct` from `reader` onto `device`.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn from_gguf<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        Self::from_gguf_with(ct, reader, device, &LoadOptions::default())
    }

    /// [`Model::from_gguf`] with explicit options.
    pub(crate) fn from_gguf_with<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<Self> {
        let meta = ops::Meta::new(ct)?;
        let mut weights = ops::Weights {
            ct,
            reader,
            device: device.clone(),
            options: options.clone(),
        };
        match meta.arch.as_str() {
            "gemma3" => Ok(Model(Arch::Gemma3(gemma3::Gemma3::load(
                &meta,
                &mut weights,
            )?))),
            "qwen3" => Ok(Model(Arch::Qwen3(qwen3::Qwen3::load(&meta, &mut weights)?))),
            other => bail!("unsupported architecture {other:?}"),
        }
    }

    /// Loads model and tokenizer from a GGUF file on the CPU.
    pub fn load(path: impl AsRef<Path>) -> Result<(Self, Tokenizer)> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// [`Model::load`] with explicit options.
    pub(crate) fn load_with(
        path: impl AsRef<Path>,
        options: &LoadOptions,
    ) -> Result<(Self, Tokenizer)> {
        let path = path.as_ref();
        let mut file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let ct = gguf_file::Content::read(&mut file)
            .with_context(|| format!("reading GGUF header of {}", path.display()))?;
        let tokenizer = Tokenizer::from_gguf(&ct)?;
        let model = Self::from_gguf_with(&ct, &mut file, &Device::Cpu, options)?;
        Ok((model, tokenizer))
    }

    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        match &self.0 {
            Arch::Gemma3(m) => &m.info,
            Arch::Qwen3(m) => &m.info,
        }
    }

    /// The device the weights live on.
    pub(crate) fn device(&self) -> &Device {
        match &self.0 {
            Arch::Gemma3(m) => &m.device,
            Arch::Qwen3(m) => &m.device,
        }
    }

    /// An empty cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        let i = self.info();
        KvCache::new(
            i.n_layers,
            i.n_kv_heads,
            i.head_dim,
            // llama.cpp's default cache type (`-ctk f16 -ctv f16`).
            DType::F16,
            self.device(),
        )
    }

    /// Runs one batched step over `seqs` and appends their new tokens to their caches.
    ///
    /// With `all_logits`, logits of every new token are returned too (for parity tests or
    /// scoring); otherwise only each sequence's last token goes through the output head.
    /// On error no cache advances.
    pub fn step(&self, seqs: &mut [SeqStep<'_>], all_logits: bool) -> Result<StepOutput> {
        let (x, spans) = self.hidden(seqs)?;
        self.head().forward(&x, &spans, all_logits)
    }

    /// Runs one batched step like [`Model::step`], computing for each sequence's last token
    /// only the output rows `rows[i]` asks for: the whole vocabulary, a grammar's few allowed
    /// tokens (a few dozen rows of the projection instead of all of them), or nothing for a
    /// prefill chunk. Returns one vector per sequence, in the order of its `Rows`.
    pub fn step_rows(&self, seqs: &mut [SeqStep<'_>], rows: &[Rows<'_>]) -> Result<Vec<Vec<f32>>> {
        if rows.len() != seqs.len() {
            bail!("{} row requests for {} sequences", rows.len(), seqs.len());
        }
        let vocab = self.info().vocab;
        for r in rows {
            if let Rows::Only(ids) = r {
                if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                    bail!("output row {bad} out of range (vocab {vocab})");
                }
            }
        }
        let (x, spans) = self.hidden(seqs)?;
        self.head().select(&x, &spans, rows)
    }

    fn head(&self) -> &ops::OutputHead {
        match &self.0 {
            Arch::Gemma3(m) => &m.head,
            Arch::Qwen3(m) => &m.head,
        }
    }

    /// The final hidden states of a step's new tokens, caches advanced (or, on error, not).
    fn hidden(&self, seqs: &mut [SeqStep<'_>]) -> Result<(Tensor, Vec<SeqSpan>)> {
        if seqs.is_empty() {
            bail!("empty step");
        }
        let mut spans = Vec::with_capacity(seqs.len());
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for s in seqs.iter() {
            if s.tokens.is_empty() {
                bail!("a sequence in the step has no new tokens");
            }
            let start_pos = s.cache.len();
            spans.push(SeqSpan {
                offset: ids.len(),
                len: s.tokens.len(),
                start_pos,
            });
            ids.extend_from_slice(s.tokens);
            positions.extend((start_pos..start_pos + s.tokens.len()).map(|p| p as f32));
        }
        let vocab = self.info().vocab;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            bail!("token id {bad} out of range (vocab {vocab})");
        }
        let n = ids.len();
        let batch = Batch {
            ids: Tensor::from_vec(ids, n, self.device())?,
            positions: Tensor::from_vec(positions, n, self.device())?,
            spans,
        };
        let mut caches: Vec<&mut KvCache> = seqs.iter_mut().map(|s| &mut *s.cache).collect();
        let out = match &self.0 {
            Arch::Gemma3(m) => m.hidden(&batch, &mut caches),
            Arch::Qwen3(m) => m.hidden(&batch, &mut caches),
        };
        for c in caches.iter_mut() {
            if out.is_ok() {
                c.commit();
            } else {
                c.rollback();
            }
        }
        Ok((out?, batch.spans))
    }
}

/// The inputs of one step, shared by the architectures.
pub(crate) struct Batch {
    /// `(tokens,)` u32 ids, sequences concatenated.
    pub ids: Tensor,
    /// `(tokens,)` f32 positions.
    pub positions: Tensor,
    /// Where each sequence's tokens sit.
    pub spans: Vec<SeqSpan>,
}
