//! Per-sequence causal attention over a batched step.
//!
//! On the CPU a hand-written kernel computes each (query, head) row on its own, visiting
//! exactly that query's visible keys in a fixed order. A row's result is therefore bit-for-bit
//! the same whatever else is in the batch or however the prompt was chunked — with quantized
//! matmuls, whose activation rounding amplifies the last-bit noise of a shape-dependent GEMM,
//! this is what keeps batched logits equal to one-sequence-at-a-time logits. Other devices use
//! candle matmuls with an additive mask.

use super::ggml;
use super::ops::SeqSpan;
use super::KvCache;
use crate::error::{bail, Result};
use candle_core::{DType, Device, Storage, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Geometry and options of one attention layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnParams {
    pub layer: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplier applied to `q·k`.
    pub scale: f64,
    /// Whether the model scales Q before the product (Gemma: `ggml_scale` on Q, rounded to
    /// f16 afterwards) rather than the scores inside the softmax (Qwen, Llama).
    pub scale_q: bool,
    /// Sliding window: a query at position `p` sees keys at positions `> p - window`.
    pub window: Option<usize>,
    /// Optional soft-capping of attention logits (`cap * tanh(x / cap)`).
    pub softcap: Option<f64>,
}

impl AttnParams {
    /// First visible key position for a query at `qpos`.
    fn first_key(&self, qpos: usize) -> usize {
        self.window.map_or(0, |w| (qpos + 1).saturating_sub(w))
    }
}

/// Causal attention of every sequence's new tokens against its own cache.
///
/// `q` is `(tokens, n_heads, head_dim)`, `k`/`v` are `(tokens, n_kv_heads, head_dim)` for the
/// concatenated new tokens of all sequences; each sequence's keys and values are appended to
/// its cache. Returns `(tokens, n_heads * head_dim)`.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: &[SeqSpan],
    caches: &mut [&mut KvCache],
    p: AttnParams,
) -> Result<Tensor> {
    append(k, v, spans, caches, p.layer)?;
    if q.device().is_cpu() {
        attention_cpu(q, spans, caches, p)
    } else {
        attention_tensor(q, spans, caches, p)
    }
}

/// Appends each sequence's new keys and values to its cache.
fn append(
    k: &Tensor,
    v: &Tensor,
    spans: &[SeqSpan],
    caches: &mut [&mut KvCache],
    layer: usize,
) -> Result<()> {
    for (span, cache) in spans.iter().zip(caches.iter_mut()) {
        let ks = k.narrow(0, span.offset, span.len)?.transpose(0, 1)?;
        let vs = v.narrow(0, span.offset, span.len)?.transpose(0, 1)?;
        cache.append(layer, &ks, &vs)?;
    }
    Ok(())
}

/// Positions the attention rows are padded to, as llama.cpp pads its KV cache view (`n_kv`):
/// padded cells are masked, so they only decide which SIMD lane and which softmax chunk
/// each position falls in.
pub(crate) const KV_PAD: usize = 256;

/// The CPU kernel; see the module documentation.
///
/// It reproduces llama.cpp's non-flash CPU attention over an f16 cache: `Q·K` as
/// `mul_mat(K f16, Q)` (Q, already scaled, rounded to f16; `ggml_vec_dot_f16` order), the
/// masked softmax of `ggml_soft_max_ext` (`ggml_v_expf`, f64 sum, `1/sum` scale), and
/// `mul_mat(V^T f16, P)` with the probabilities rounded to f16.
fn attention_cpu(
    q: &Tensor,
    spans: &[SeqSpan],
    caches: &[&mut KvCache],
    p: AttnParams,
) -> Result<Tensor> {
    let hd = p.head_dim;
    let group = p.n_heads / p.n_kv_heads;
    let n_tokens = q.dim(0)?;
    let scale = p.scale as f32;
    let (q_scale, kq_scale) = if p.scale_q {
        (scale, 1.0)
    } else {
        (1.0, scale)
    };
    // ggml_scale on Q (Gemma), then the f32 -> f16 conversion of mul_mat's src1.
    let q: Vec<f32> = q
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|x| ggml::round_f16(x * q_scale))
        .collect();
    let mut out = vec![0f32; n_tokens * p.n_heads * hd];
    // Read views of every sequence's cache segments, so that one parallel pass covers the rows
    // of all sequences (a fork-join per sequence costs more than a decode row's work).
    let segments: Vec<_> = caches
        .iter()
        .take(spans.len())
        .map(|cache| cache.segments(p.layer))
        .collect();
    let guards: Vec<Vec<_>> = segments
        .iter()
        .map(|segs| {
            segs.iter()
                .map(|s| (s.k.storage_and_layout(), s.v.storage_and_layout(), s))
                .collect()
        })
        .collect();
    let mut all_views = Vec::with_capacity(guards.len());
    for seq in &guards {
        let mut views = Vec::with_capacity(seq.len());
        for ((ks, kl), (vs, vl), seg) in seq {
            let (Storage::Cpu(ks), Storage::Cpu(vs)) = (&**ks, &**vs) else {
                bail!("CPU attention on a non-CPU cache");
            };
            views.push(KvView {
                k: &ks.as_slice::<f16>()?[kl.start_offset()..],
                v: &vs.as_slice::<f16>()?[vl.start_offset()..],
                cap: seg.k.dim(1)?,
                start: seg.start,
                hd,
            });
        }
        all_views.push(views);
    }
    // The sequence of each token row of `q`/`out`.
    let mut token_seq = vec![usize::MAX; n_tokens];
    for (s, span) in spans.iter().enumerate() {
        token_seq[span.offset..span.offset + span.len].fill(s);
    }
    let all_views = &all_views;
    let token_seq = &token_seq;
    out.par_chunks_mut(hd)
        .zip(q.par_chunks(hd))
        .enumerate()
        .for_each_init(
            || {
                let acc = vec![0f32; ggml::F16_STEP * hd];
                let bufs = (vec![0f32; hd], vec![0f32; hd]);
                (Vec::new(), Vec::new(), bufs, acc, Vec::<f64>::new())
            },
            |(scores, probs, (krow, vrow), acc, tail), (row, (dst, qv))| {
                let (t, h) = (row / p.n_heads, row % p.n_heads);
                let seq = token_seq[t];
                if seq == usize::MAX {
                    return;
                }
                let (span, views) = (&spans[seq], &all_views[seq]);
                let i = t - span.offset;
                let kv = h / group;
                let qpos = span.start_pos + i;
                let first = p.first_key(qpos);
                let n_kv = (qpos + 1).div_ceil(KV_PAD) * KV_PAD;
                // Scores of the visible keys; the rest of the row is masked (-inf).
                scores.clear();
                scores.resize(n_kv, f32::NEG_INFINITY);
                let mut max = f32::NEG_INFINITY;
                #[allow(clippy::needless_range_loop)] // j is a position, not just an index
                for j in first..=qpos {
                    let (kr, _) = KvView::rows(views, kv, j);
                    kr.convert_to_f32_slice(krow);
                    let mut s = ggml::dot_f16_acc(krow, qv) * kq_scale;
                    if let Some(c) = p.softcap {
                        // llama.cpp: scale by 1/cap, tanh, scale by cap.
                        s = (s * (1.0 / c as f32)).tanh() * c as f32;
                    }
                    max = max.max(s);
                    scores[j] = s;
                }
                probs.clear();
                probs.resize(n_kv, 0.0);
                let sum = ggml::softmax_sum(scores, probs, max);
                let inv = (1.0 / sum) as f32;
                // P·V as `ggml_vec_dot_f16` over the row of n_kv positions: position j
                // goes to lane j % 32 (fused multiply-adds in order of j) while j is below
                // the last multiple of 32, and is added in f64 after the reduction above it.
                let np = n_kv & !(ggml::F16_STEP - 1);
                acc.fill(0.0);
                tail.clear();
                tail.resize(hd, 0.0);
                for j in first..=qpos {
                    let pj = ggml::round_f16(probs[j] * inv);
                    let (_, v) = KvView::rows(views, kv, j);
                    v.convert_to_f32_slice(vrow);
                    if j < np {
                        let lane = &mut acc[(j % ggml::F16_STEP) * hd..][..hd];
                        for (a, &v) in lane.iter_mut().zip(vrow.iter()) {
                            *a = v.mul_add(pj, *a);
                        }
                    } else {
                        for (t, &v) in tail.iter_mut().zip(vrow.iter()) {
                            *t += (v * pj) as f64;
                        }
                    }
                }
                reduce_lanes(acc, hd, tail, dst);
            },
        );
    Ok(Tensor::from_vec(
        out,
        (n_tokens, p.n_heads * hd),
        &Device::Cpu,
    )?)
}

/// `dst[d] = reduce32(acc[l * hd + d] for l in 0..32) + tail[d]` (the sum in f64, rounded to
/// f32) for every `d < hd`: eight columns at a time, each with exactly the additions of
/// [`ggml::reduce32`].
fn reduce_lanes(acc: &[f32], hd: usize, tail: &[f64], dst: &mut [f32]) {
    let mut d = 0;
    while d + 8 <= hd {
        let row = |l: usize| -> [f32; 8] {
            acc[l * hd + d..l * hd + d + 8]
                .try_into()
                .expect("8 columns")
        };
        let mut x = [[0f32; 8]; 8];
        for (lp, x) in x.iter_mut().enumerate() {
            let (a, b, c, e) = (row(lp), row(8 + lp), row(16 + lp), row(24 + lp));
            for i in 0..8 {
                x[i] = (a[i] + c[i]) + (b[i] + e[i]);
            }
        }
        for i in 0..8 {
            let t = [
                x[0][i] + x[4][i],
                x[1][i] + x[5][i],
                x[2][i] + x[6][i],
                x[3][i] + x[7][i],
            ];
            let r = (t[0] + t[1]) + (t[2] + t[3]);
            dst[d + i] = (r as f64 + tail[d + i]) as f32;
        }
        d += 8;
    }
    for d in d..hd {
        let mut lanes = [0f32; 32];
        for (l, x) in lanes.iter_mut().enumerate() {
            *x = acc[l * hd + d];
        }
        dst[d] = (ggml::reduce32(&lanes) as f64 + tail[d]) as f32;
    }
}

/// One segment of a sequence's cache as f16 slices (see [`KvCache::segments`]).
struct KvView<'a> {
    k: &'a [f16],
    v: &'a [f16],
    /// Positions per KV head in the buffers.
    cap: usize,
    /// Position of the segment's first row.
    start: usize,
    hd: usize,
}

impl KvView<'_> {
    /// The key and value rows of KV head `kv` at position `pos`, from whichever segment holds it.
    #[inline]
    fn rows<'b>(views: &'b [KvView<'_>], kv: usize, pos: usize) -> (&'b [f16], &'b [f16]) {
        let seg = views
            .iter()
            .rev()
            .find(|s| s.start <= pos)
            .expect("the first segment starts at position 0");
        let at = (kv * seg.cap + pos - seg.start) * seg.hd;
        (&seg.k[at..at + seg.hd], &seg.v[at..at + seg.hd])
    }
}

/// Device-generic attention with candle matmuls and an additive mask.
fn attention_tensor(
    q: &Tensor,
    spans: &[SeqSpan],
    caches: &[&mut KvCache],
    p: AttnParams,
) -> Result<Tensor> {
    let group = p.n_heads / p.n_kv_heads;
    let mut outs = Vec::with_capacity(spans.len());
    for (span, cache) in spans.iter().zip(caches.iter()) {
        let n = span.len;
        let total = span.start_pos + n;
        let first_key = p.first_key(span.start_pos);
        let n_keys = total - first_key;
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        for seg in cache.segments(p.layer) {
            let end = (seg.start + seg.k.dim(1)?).min(total);
            let from = first_key.max(seg.start);
            if from < end {
                ks.push(seg.k.narrow(1, from - seg.start, end - from)?);
                vs.push(seg.v.narrow(1, from - seg.start, end - from)?);
            }
        }
        let k_all = Tensor::cat(&ks, 1)?.to_dtype(DType::F32)?;
        let v_all = Tensor::cat(&vs, 1)?.to_dtype(DType::F32)?.contiguous()?;
        let qs = q.narrow(0, span.offset, n)?.transpose(0, 1)?.contiguous()?;
        // Heads sharing a KV head are stacked as extra query rows: (kv, group * n, hd).
        let qg = qs.reshape((p.n_kv_heads, group * n, p.head_dim))?;
        let mut att = (qg.matmul(&k_all.t()?)? * p.scale)?;
        if let Some(cap) = p.softcap {
            att = ((att / cap)?.tanh()? * cap)?;
        }
        if n > 1 {
            let mask = causal_mask(n, span.start_pos, first_key, n_keys, p, q.device())?;
            att = att
                .reshape((p.n_kv_heads, group, n, n_keys))?
                .broadcast_add(&mask)?
                .reshape((p.n_kv_heads, group * n, n_keys))?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let out = att
            .matmul(&v_all)?
            .reshape((p.n_heads, n, p.head_dim))?
            .transpose(0, 1)?
            .reshape((n, p.n_heads * p.head_dim))?;
        outs.push(out);
    }
    Ok(Tensor::cat(&outs, 0)?)
}

/// Additive mask `(n, n_keys)`: 0 where query `i` (position `start_pos + i`) may see key `j`
/// (position `first_key + j`), `-inf` elsewhere.
fn causal_mask(
    n: usize,
    start_pos: usize,
    first_key: usize,
    n_keys: usize,
    p: AttnParams,
    device: &Device,
) -> Result<Tensor> {
    let mut mask = vec![0f32; n * n_keys];
    for i in 0..n {
        let qpos = start_pos + i;
        for j in 0..n_keys {
            let kpos = first_key + j;
            if kpos > qpos || kpos < p.first_key(qpos) {
                mask[i * n_keys + j] = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Tensor::from_vec(mask, (n, n_keys), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The column-wise reduction equals `reduce32` of each column, bit for bit.
    #[test]
    fn reduce_lanes_matches_reduce32() {
        for hd in [8usize, 13, 256] {
            let acc: Vec<f32> = (0..32 * hd)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1.37e-3)
                .collect();
            let tail: Vec<f64> = (0..hd).map(|d| d as f64 * 0.1).collect();
            let mut got = vec![0f32; hd];
            reduce_lanes(&acc, hd, &tail, &mut got);
            for d in 0..hd {
                let lanes: [f32; 32] = std::array::from_fn(|l| acc[l * hd + d]);
                let want = (ggml::reduce32(&lanes) as f64 + tail[d]) as f32;
                assert_eq!(got[d].to_bits(), want.to_bits(), "hd {hd} column {d}");
            }
        }
    }

    /// The CPU kernel and the device-generic path agree (to f16 precision), with and without a
    /// window.
    #[test]
    fn cpu_kernel_matches_tensor_path() -> Result<()> {
        for window in [None, Some(3)] {
            let p = AttnParams {
                layer: 0,
                n_heads: 4,
                n_kv_heads: 2,
                head_dim: 16,
                scale: 0.25,
                scale_q: window.is_some(),
                window,
                softcap: Some(30.0),
            };
            let new_cache = || KvCache::new(1, 2, 16, DType::F16, &Device::Cpu);
            let (mut a1, mut b1, mut a2, mut b2) =
                (new_cache(), new_cache(), new_cache(), new_cache());
            // Step 1: prefill 5 and 3 tokens; step 2: a 2-token chunk and a decode token.
            for (step, lens) in [[5usize, 3], [2, 1]].iter().enumerate() {
                let n: usize = lens.iter().sum();
                let q = Tensor::randn(0f32, 1.0, (n, 4, 16), &Device::Cpu)?;
                let k = Tensor::randn(0f32, 1.0, (n, 2, 16), &Device::Cpu)?;
                let v = Tensor::randn(0f32, 1.0, (n, 2, 16), &Device::Cpu)?;
                let start = if step == 0 { [0, 0] } else { [5, 3] };
                let spans = [
                    SeqSpan {
                        offset: 0,
                        len: lens[0],
                        start_pos: start[0],
                    },
                    SeqSpan {
                        offset: lens[0],
                        len: lens[1],
                        start_pos: start[1],
                    },
                ];
                let mut c1 = [&mut a1, &mut b1];
                append(&k, &v, &spans, &mut c1, 0)?;
                let cpu = attention_cpu(&q, &spans, &c1, p)?;
                let mut c2 = [&mut a2, &mut b2];
                append(&k, &v, &spans, &mut c2, 0)?;
                let generic = attention_tensor(&q, &spans, &c2, p)?;
                let diff = (cpu - generic)?.abs()?.max_all()?.to_scalar::<f32>()?;
                // f16 rounding of Q and of the probabilities on the CPU path.
                assert!(diff < 1e-2, "window {window:?} step {step}: diff {diff}");
                for c in [&mut a1, &mut b1, &mut a2, &mut b2] {
                    c.commit();
                }
            }
        }
        Ok(())
    }
}
