//! Building blocks shared by the architectures: GGUF weight access, linear layers,
//! RMSNorm, rotary embeddings and per-sequence attention over a batched step.

use super::qmatmul::GgmlMatMul;
use super::{ggml, LoadOptions, Rows, StepOutput};
use crate::error::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};
use rayon::prelude::*;
use std::io::{Read, Seek};

/// Elements from which the row-wise CPU ops (norms, gated activations) split their rows over
/// the threads.
const PAR_MIN_ELEMS: usize = 8192;
use std::sync::Arc;

/// Reads typed metadata of one architecture (`{arch}.{key}`) from a GGUF header.
pub(crate) struct Meta<'a> {
    pub ct: &'a gguf_file::Content,
    pub arch: String,
}

impl<'a> Meta<'a> {
    /// Wraps the header; the architecture comes from `general.architecture`.
    pub(crate) fn new(ct: &'a gguf_file::Content) -> Result<Self> {
        let arch = ct
            .metadata
            .get("general.architecture")
            .context("missing general.architecture")?
            .to_string()?
            .clone();
        Ok(Self { ct, arch })
    }

    fn get(&self, key: &str) -> Option<&gguf_file::Value> {
        self.ct.metadata.get(&format!("{}.{key}", self.arch))
    }

    /// An integer value, if present.
    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        use gguf_file::Value::*;
        Ok(match self.get(key) {
            None => None,
            Some(U8(v)) => Some(*v as usize),
            Some(U16(v)) => Some(*v as usize),
            Some(U32(v)) => Some(*v as usize),
            Some(U64(v)) => Some(*v as usize),
            Some(I8(v)) => Some(*v as usize),
            Some(I16(v)) => Some(*v as usize),
            Some(I32(v)) => Some(*v as usize),
            Some(I64(v)) => Some(*v as usize),
            Some(v) => bail!("{}.{key}: expected an integer, got {v:?}", self.arch),
        })
    }

    /// A required integer value.
    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .with_context(|| format!("missing GGUF key {}.{key}", self.arch))
    }

    /// A float value, if present.
    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        use gguf_file::Value::*;
        Ok(match self.get(key) {
            None => None,
            Some(F32(v)) => Some(*v as f64),
            Some(F64(v)) => Some(*v),
            Some(v) => bail!("{}.{key}: expected a float, got {v:?}", self.arch),
        })
    }

    /// A string value, if present.
    pub(crate) fn opt_string(&self, key: &str) -> Option<&str> {
        self.get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    /// An array of integers (e.g. a per-layer setting), if present.
    pub(crate) fn opt_usize_array(&self, key: &str) -> Result<Option<Vec<usize>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v.to_vec()?;
        let out = arr
            .iter()
            .map(|x| match x {
                gguf_file::Value::Bool(b) => Ok(*b as usize),
                other => Ok(other
                    .to_u32()
                    .or_else(|_| other.to_i32().map(|v| v as u32))?
                    as usize),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(out))
    }
}

/// Loads tensors by name from a GGUF file.
pub(crate) struct Weights<'a, R> {
    pub ct: &'a gguf_file::Content,
    pub reader: &'a mut R,
    pub device: Device,
    pub options: LoadOptions,
}

impl<R: Read + Seek> Weights<'_, R> {
    /// Whether the file has tensor `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.ct.tensor_infos.contains_key(name)
    }

    /// The quantized tensor `name`.
    pub(crate) fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.ct
            .tensor(self.reader, name, &self.device)
            .with_context(|| format!("loading tensor {name}"))
    }

    /// A linear layer from weight `name` (stored `(out, in)`).
    pub(crate) fn linear(&mut self, name: &str) -> Result<Linear> {
        let mut q = self.qtensor(name)?;
        if self.options.requantize_q5_to_q8
            && matches!(q.dtype(), GgmlDType::Q5_0 | GgmlDType::Q5_1)
        {
            q = QTensor::quantize(&q.dequantize(&self.device)?, GgmlDType::Q8_0)?;
        }
        Linear::new(Arc::new(q))
    }

    /// An RMSNorm whose weight is `name`, dequantized to f32.
    pub(crate) fn rms_norm(&mut self, name: &str, eps: f64) -> Result<RmsNorm> {
        let weight = self.qtensor(name)?.dequantize(&self.device)?;
        RmsNorm::new(weight, eps)
    }
}

/// `y = x W^T` with a (possibly quantized) weight of shape `(out, in)`.
///
/// Every row of the result depends only on the same row of `x`, bit for bit, whatever the
/// number of rows. On the CPU, Q8_0/Q5_0/Q4_K/Q6_K weights go through [`GgmlMatMul`], which
/// also reproduces llama.cpp's rounding; other types use candle, where on x86-64 a single row
/// times a Q6_K weight would take a GEMV kernel that sums in another order than the tiled
/// kernel used for several rows, so a lone row is padded to two there.
#[derive(Clone)]
pub(crate) struct Linear {
    weight: QMatMul,
    ggml: Option<Arc<GgmlMatMul>>,
    pad_single_row: bool,
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linear")
            .field("weight", &self.weight)
            .field("ggml", &self.ggml.is_some())
            .finish()
    }
}

impl Linear {
    /// Wraps a weight; f32/f16 weights are dequantized once, others stay quantized.
    pub(crate) fn new(weight: Arc<QTensor>) -> Result<Self> {
        let pad_single_row = cfg!(target_arch = "x86_64") && weight.dtype() == GgmlDType::Q6K;
        let ggml = if weight.device().is_cpu() {
            GgmlMatMul::new(&weight)?.map(Arc::new)
        } else {
            None
        };
        Ok(Self {
            weight: QMatMul::from_arc(weight)?,
            ggml,
            pad_single_row,
        })
    }

    /// Applies the layer to `x` of shape `(tokens, in)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(g) = &self.ggml {
            let rows = x.dim(0)?;
            let y = g.forward(&x.flatten_all()?.to_vec1::<f32>()?)?;
            return Ok(Tensor::from_vec(y, (rows, g.out_dim()), x.device())?);
        }
        if self.pad_single_row && x.dim(0)? == 1 {
            let padded = Tensor::cat(&[x, x], 0)?;
            return Ok(self.weight.forward(&padded)?.narrow(0, 0, 1)?);
        }
        Ok(self.weight.forward(x)?)
    }

    /// Only the output features `rows` of the layer for `x` of shape `(tokens, in)`:
    /// `(tokens, rows.len())`, each value equal to the same entry of [`Linear::forward`].
    pub(crate) fn forward_rows(&self, x: &Tensor, rows: &[u32]) -> Result<Tensor> {
        let tokens = x.dim(0)?;
        if let Some(g) = &self.ggml {
            let y = g.forward_rows(&x.flatten_all()?.to_vec1::<f32>()?, rows)?;
            return Ok(Tensor::from_vec(y, (tokens, rows.len()), x.device())?);
        }
        let ids = Tensor::from_slice(rows, rows.len(), x.device())?;
        Ok(self.forward(x)?.index_select(&ids, 1)?)
    }
}

/// Root-mean-square norm over the last dimension: `x / rms(x) * weight`.
///
/// Gemma's `(1 + weight)` form needs no special case: llama.cpp's converter stores the
/// `+ 1` in the GGUF weights already.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    /// The weight on the host, for the CPU path.
    weight_host: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    /// A norm with the given weight vector.
    pub(crate) fn new(weight: Tensor, eps: f64) -> Result<Self> {
        let weight_host = weight
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        Ok(Self {
            weight,
            weight_host,
            eps: eps as f32,
        })
    }

    /// Normalizes the last dimension of `x` (any rank; made contiguous first).
    ///
    /// On the CPU this follows ggml: the sum of squares in f64, `1/sqrtf(mean + eps)` in f32,
    /// then the scaled row times the weight.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let dim = self.weight_host.len();
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let mut ys = vec![0f32; xs.len()];
            let norm = |(xr, yr): (&[f32], &mut [f32])| {
                ggml::rms_norm_row(xr, &self.weight_host, self.eps, yr)
            };
            // Rows are independent; a batch of them is split over the threads.
            if xs.len() >= PAR_MIN_ELEMS {
                xs.par_chunks_exact(dim)
                    .zip(ys.par_chunks_exact_mut(dim))
                    .for_each(norm);
            } else {
                xs.chunks_exact(dim)
                    .zip(ys.chunks_exact_mut(dim))
                    .for_each(norm);
            }
            return Ok(Tensor::from_vec(ys, x.shape(), x.device())?);
        }
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.weight,
            self.eps,
        )?)
    }
}

/// Rotary position embedding in the NEOX layout (pairs `i` and `i + head_dim/2`), the
/// layout llama.cpp uses for Gemma 3 and Qwen 3.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    /// Rotated pairs (`rot_dim / 2`).
    pairs: usize,
    /// `powf(base, -2 / rot_dim)` in f32, as ggml computes it.
    theta_scale: f32,
    /// Linear position scale (1.0 for none).
    freq_scale: f32,
    device: Device,
}

/// Cosine and sine tables for the positions of one step, each `(tokens, head_dim / 2)`.
pub(crate) struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// A rotary embedding over `rot_dim` dimensions with frequency `base` and a linear
    /// position scale (1.0 for none).
    pub(super) fn new(rot_dim: usize, base: f64, freq_scale: f64, device: &Device) -> Result<Self> {
        Ok(Self {
            pairs: rot_dim / 2,
            theta_scale: (base as f32).powf(-2.0f32 / rot_dim as f32),
            freq_scale: freq_scale as f32,
            device: device.clone(),
        })
    }

    /// Tables for `positions` (f32, shape `(tokens,)`), computed as `ggml_rope_cache_init`
    /// does: the angle of pair `i` is `pos * theta_scale^i` by repeated f32 multiplication.
    pub(super) fn tables(&self, positions: &Tensor) -> Result<RopeTables> {
        let pos = positions.to_vec1::<f32>()?;
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for &p in &pos {
            for (c, s) in ggml::rope_cache(p, self.freq_scale, self.theta_scale, self.pairs) {
                cos.push(c);
                sin.push(s);
            }
        }
        let shape = (pos.len(), self.pairs);
        Ok(RopeTables {
            cos: Tensor::from_vec(cos, shape, &self.device)?,
            sin: Tensor::from_vec(sin, shape, &self.device)?,
        })
    }
}

impl RopeTables {
    /// Rotates `x` of shape `(tokens, heads, head_dim)`.
    ///
    /// On the CPU the rotation is computed as llama.cpp's x86-64 build computes it (GCC
    /// contracts it into fused multiply-adds): `x0' = fma(x0, cos, -(x1 sin))`,
    /// `x1' = fma(x0, sin, x1 cos)`.
    pub(super) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let (t, h, d) = x.dims3()?;
            let half = self.cos.dim(1)?;
            let (cos, sin) = (self.cos.to_vec2::<f32>()?, self.sin.to_vec2::<f32>()?);
            let mut v = x.flatten_all()?.to_vec1::<f32>()?;
            for (i, row) in v.chunks_exact_mut(h * d).enumerate() {
                let (c, s) = (&cos[i], &sin[i]);
                for head in row.chunks_exact_mut(d) {
                    for j in 0..half {
                        let (x0, x1) = (head[j], head[j + half]);
                        head[j] = x0.mul_add(c[j], -(x1 * s[j]));
                        head[j + half] = x0.mul_add(s[j], x1 * c[j]);
                    }
                }
            }
            return Ok(Tensor::from_vec(v, (t, h, d), x.device())?);
        }
        let x = x.contiguous()?.unsqueeze(0)?;
        Ok(candle_nn::rotary_emb::rope_thd(&x, &self.cos, &self.sin)?.squeeze(0)?)
    }
}

/// Where one sequence's new tokens sit in a batched step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeqSpan {
    /// First row of the sequence in the concatenated token matrix.
    pub offset: usize,
    /// Number of new tokens.
    pub len: usize,
    /// Position of the first new token (the cache length before the step).
    pub start_pos: usize,
}

/// `gelu_tanh(gate(x)) * up(x)` or `silu(gate(x)) * up(x)` followed by `down`.
#[derive(Debug, Clone)]
pub(crate) struct GatedMlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub act: Activation,
}

/// Gate activation of a [`GatedMlp`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Activation {
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
    /// SiLU / swish (Qwen, Llama).
    Silu,
}

impl GatedMlp {
    /// Loads `blk.{i}.ffn_{gate,up,down}.weight`.
    pub(super) fn load<R: Read + Seek>(
        w: &mut Weights<'_, R>,
        i: usize,
        act: Activation,
    ) -> Result<Self> {
        Ok(Self {
            gate: w.linear(&format!("blk.{i}.ffn_gate.weight"))?,
            up: w.linear(&format!("blk.{i}.ffn_up.weight"))?,
            down: w.linear(&format!("blk.{i}.ffn_down.weight"))?,
            act,
        })
    }

    /// Applies the MLP to `(tokens, hidden)`.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate.forward(x)?;
        let up = self.up.forward(x)?;
        if gate.device().is_cpu() && gate.dtype() == DType::F32 {
            // ggml's fused geglu/swiglu: GELU through the f16 table, SiLU with ggml_v_expf.
            let (g, u) = (
                gate.flatten_all()?.to_vec1::<f32>()?,
                up.flatten_all()?.to_vec1::<f32>()?,
            );
            let mut h = vec![0f32; g.len()];
            let cols = gate.dim(D::Minus1)?;
            let act = |((g, u), h): ((&[f32], &[f32]), &mut [f32])| match self.act {
                Activation::GeluTanh => ggml::geglu(g, u, h),
                Activation::Silu => ggml::swiglu(g, u, h),
            };
            // Rows are independent; a batch of them is split over the threads.
            if g.len() >= PAR_MIN_ELEMS {
                g.par_chunks_exact(cols)
                    .zip(u.par_chunks_exact(cols))
                    .zip(h.par_chunks_exact_mut(cols))
                    .for_each(act);
            } else {
                g.chunks_exact(cols)
                    .zip(u.chunks_exact(cols))
                    .zip(h.chunks_exact_mut(cols))
                    .for_each(act);
            }
            return self
                .down
                .forward(&Tensor::from_vec(h, gate.shape(), gate.device())?);
        }
        let gate = match self.act {
            Activation::GeluTanh => gate.gelu()?,
            Activation::Silu => gate.silu()?,
        };
        self.down.forward(&(gate * up)?)
    }
}

/// Rows `rows` of a `(tokens, dim)` matrix.
pub(crate) fn select_rows(x: &Tensor, rows: &[u32]) -> Result<Tensor> {
    let idx = Tensor::new(rows, x.device())?;
    Ok(x.index_select(&idx, 0)?)
}

/// Final norm, vocabulary projection and optional logit soft-capping.
#[derive(Debug, Clone)]
pub(crate) struct OutputHead {
    pub norm: RmsNorm,
    pub lm_head: Linear,
    /// `cap * tanh(x / cap)` on the logits (Gemma 2 style), when set.
    pub softcap: Option<f64>,
}

impl OutputHead {
    /// Logits for the last token of each sequence and, if `all`, for every token.
    pub(crate) fn forward(&self, x: &Tensor, spans: &[SeqSpan], all: bool) -> Result<StepOutput> {
        let last_rows: Vec<u32> = spans
            .iter()
            .map(|s| (s.offset + s.len - 1) as u32)
            .collect();
        if all {
            let logits = self.logits(x)?;
            let last = select_rows(&logits, &last_rows)?;
            Ok(StepOutput {
                last,
                all: Some(logits),
            })
        } else {
            let last = self.logits(&select_rows(x, &last_rows)?)?;
            Ok(StepOutput { last, all: None })
        }
    }

    /// The output rows each sequence asks for, from its last token: all logits, only some
    /// (each equal to the same entry of the full logits), or none.
    pub(crate) fn select(
        &self,
        x: &Tensor,
        spans: &[SeqSpan],
        rows: &[Rows<'_>],
    ) -> Result<Vec<Vec<f32>>> {
        let mut out = vec![Vec::new(); spans.len()];
        let last = |s: &SeqSpan| (s.offset + s.len - 1) as u32;
        let full: Vec<usize> = (0..spans.len())
            .filter(|&i| matches!(rows[i], Rows::All))
            .collect();
        if !full.is_empty() {
            let picked: Vec<u32> = full.iter().map(|&i| last(&spans[i])).collect();
            let logits = self.logits(&select_rows(x, &picked)?)?;
            for (&i, row) in full.iter().zip(logits.to_vec2::<f32>()?) {
                out[i] = row;
            }
        }
        for (i, r) in rows.iter().enumerate() {
            if let Rows::Only(ids) = r {
                let h = self.norm.forward(&select_rows(x, &[last(&spans[i])])?)?;
                let logits = self.softcap(self.lm_head.forward_rows(&h, ids)?)?;
                out[i] = logits.flatten_all()?.to_vec1::<f32>()?;
            }
        }
        Ok(out)
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.softcap(self.lm_head.forward(&self.norm.forward(x)?)?)
    }

    fn softcap(&self, logits: Tensor) -> Result<Tensor> {
        Ok(match self.softcap {
            Some(c) => ((logits / c)?.tanh()? * c)?,
            None => logits,
        })
    }
}

/// Embedding lookup on a quantized table, returning f32 `(tokens, hidden)`.
pub(crate) fn embed(table: &QTensor, ids: &Tensor) -> Result<Tensor> {
    Ok(table.embedding(ids)?.to_dtype(DType::F32)?)
}

/// Shape helper: `(tokens, heads * head_dim)` to `(tokens, heads, head_dim)`.
pub(crate) fn split_heads(x: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let t = x.dim(0)?;
    Ok(x.reshape((t, heads, head_dim))?)
}

/// Index of the maximum of each row of `(rows, vocab)` logits.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}
