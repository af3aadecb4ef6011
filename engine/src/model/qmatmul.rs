//! Quantized matrix products that round and sum exactly as llama.cpp's CPU backend does on an
//! AVX2 machine, for the weight types of the common GGUF mixes (Q8_0, Q5_0, Q4_K, Q6_K).
//!
//! - Activations are quantized like ggml's `from_float` for the weight's `vec_dot_type`:
//!   Q8_0 as the AVX2 `quantize_row_q8_0` (`d = amax/127`, `id = 127/amax`, round half to
//!   even), Q8_K as `quantize_row_q8_K_ref` (`iscale = -127/max`, `nearest_int`).
//! - Q8_0, Q5_0 and Q6_K rows follow the AVX2 `ggml_vec_dot_*`: per block, 8 integer lanes
//!   (lane `l` holds elements `4l..4l+3` of every 32-element chunk) are scaled and summed into
//!   8 f32 lanes with fused multiply-adds, then reduced by `hsum_float_8`.
//! - Q4_K rows follow `ggml_gemv_q4_K_8x8_q8_K` (llama.cpp repacks Q4_K for AVX2): one f32
//!   accumulator for the scaled sums and one for the scaled minimums, subtracted at the end.
//! - F32 rows follow `ggml_vec_dot_f32` (4 x 8 lanes, `GGML_F32x8_REDUCE`), without
//!   quantizing the activations.
//!
//! These are llama.cpp's single-token (decode) kernels. For steps of several tokens llama.cpp
//! switches some products to other kernels (llamafile's tinyBLAS for f16 attention, 4-row
//! Q4_K GEMM tiles); this module keeps the decode arithmetic for every row, so that a row's
//! result never depends on what else is in the step.
//!
//! Integer parts are exact, so only the float steps above need to match. Every output row
//! depends only on its own activation row, whatever the number of rows.

// Lane-indexed loops mirror the SIMD code they reproduce.
#![allow(clippy::needless_range_loop)]

use anyhow::{bail, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

const QK8_0: usize = 32;
const QK_K: usize = 256;

/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 32;

/// A weight in one of the supported layouts (`forward` requires `k` to be a multiple of 32).
enum Weight {
    /// Q8_0 blocks, or Q5_0 blocks widened to Q8_0 (the same integers and scales): per row
    /// `k / 32` scales and `k` quants.
    Q8 { d: Vec<f32>, qs: Vec<i8> },
    /// Raw `block_q4_K` bytes (144 per 256 elements).
    Q4K(Vec<u8>),
    /// Raw `block_q6_K` bytes (210 per 256 elements).
    Q6K(Vec<u8>),
    /// Plain f32 rows.
    F32(Vec<f32>),
}

/// `y = x W^T` for a weight of shape `(n, k)` with ggml's CPU numerics.
pub(crate) struct GgmlMatMul {
    weight: Weight,
    n: usize,
    k: usize,
}

/// Quantized activations of one row.
enum Act {
    /// Q8_0: block scales (the f16 value as f32) and quants.
    Q8_0 { d: Vec<f32>, qs: Vec<i8> },
    /// Q8_K: block scales, quants and sums of 16.
    Q8K {
        d: Vec<f32>,
        qs: Vec<i8>,
        bsums: Vec<i32>,
    },
    /// Unquantized (f32 weights).
    F32(Vec<f32>),
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

impl GgmlMatMul {
    /// Wraps `q` (shape `(n, k)`) when its type is supported.
    pub fn new(q: &QTensor) -> Result<Option<Self>> {
        let (n, k) = q.shape().dims2()?;
        let dtype = q.dtype();
        let block = match dtype {
            GgmlDType::Q8_0 | GgmlDType::Q5_0 => QK8_0,
            GgmlDType::Q4K | GgmlDType::Q6K => QK_K,
            GgmlDType::F32 => 32,
            _ => return Ok(None),
        };
        if k % block != 0 {
            return Ok(None);
        }
        let raw = q.data()?;
        let weight = match dtype {
            GgmlDType::Q8_0 => {
                let nb = n * k / QK8_0;
                let mut d = Vec::with_capacity(nb);
                let mut qs = Vec::with_capacity(n * k);
                for blk in raw.chunks_exact(34).take(nb) {
                    d.push(f16_at(blk, 0));
                    qs.extend(blk[2..34].iter().map(|&b| b as i8));
                }
                Weight::Q8 { d, qs }
            }
            GgmlDType::Q5_0 => {
                let nb = n * k / QK8_0;
                let mut d = Vec::with_capacity(nb);
                let mut qs = vec![0i8; n * k];
                for (blk, out) in raw.chunks_exact(22).take(nb).zip(qs.chunks_exact_mut(32)) {
                    d.push(f16_at(blk, 0));
                    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                    for j in 0..16 {
                        let lo = (blk[6 + j] & 0x0f) as i32 | ((((qh >> j) & 1) as i32) << 4);
                        let hi = (blk[6 + j] >> 4) as i32 | ((((qh >> (j + 16)) & 1) as i32) << 4);
                        out[j] = (lo - 16) as i8;
                        out[j + 16] = (hi - 16) as i8;
                    }
                }
                Weight::Q8 { d, qs }
            }
            GgmlDType::Q4K => Weight::Q4K(raw[..n * k / QK_K * 144].to_vec()),
            GgmlDType::Q6K => Weight::Q6K(raw[..n * k / QK_K * 210].to_vec()),
            GgmlDType::F32 => Weight::F32(
                raw[..n * k * 4]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            _ => unreachable!(),
        };
        Ok(Some(Self { weight, n, k }))
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// `x` is `(m, k)` row-major; returns `(m, n)`.
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        if !x.len().is_multiple_of(self.k) {
            bail!("matmul: {} inputs for rows of {}", x.len(), self.k);
        }
        let m = x.len() / self.k;
        let acts: Vec<Act> = x.chunks_exact(self.k).map(|r| self.quantize(r)).collect();
        // Column-major partial results: (n, m).
        let mut t = vec![0f32; self.n * m];
        t.par_chunks_mut(ROWS_PER_TASK * m)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * ROWS_PER_TASK;
                for (r, out) in out.chunks_exact_mut(m).enumerate() {
                    let row = first + r;
                    for (o, a) in out.iter_mut().zip(&acts) {
                        *o = self.dot(row, a);
                    }
                }
            });
        let mut y = vec![0f32; m * self.n];
        for row in 0..self.n {
            for i in 0..m {
                y[i * self.n + row] = t[row * m + i];
            }
        }
        Ok(y)
    }

    /// Only the weight rows `rows` (output features) for `x` of shape `(m, k)`: returns
    /// `(m, rows.len())`, column `j` holding feature `rows[j]`. Each value equals the same entry
    /// of [`GgmlMatMul::forward`] bit for bit. The policy head uses it to score the few tokens a
    /// grammar allows without computing the whole vocabulary.
    pub fn forward_rows(&self, x: &[f32], rows: &[u32]) -> Result<Vec<f32>> {
        if !x.len().is_multiple_of(self.k) {
            bail!("matmul: {} inputs for rows of {}", x.len(), self.k);
        }
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= self.n) {
            bail!("matmul: row {bad} out of range ({} rows)", self.n);
        }
        let mut y = Vec::with_capacity(x.len() / self.k * rows.len());
        for row in x.chunks_exact(self.k) {
            let a = self.quantize(row);
            y.extend(rows.iter().map(|&r| self.dot(r as usize, &a)));
        }
        Ok(y)
    }

    fn quantize(&self, row: &[f32]) -> Act {
        match self.weight {
            Weight::Q8 { .. } => quantize_q8_0(row),
            Weight::Q4K(_) | Weight::Q6K(_) => quantize_q8_k(row),
            Weight::F32(_) => Act::F32(row.to_vec()),
        }
    }

    fn dot(&self, row: usize, a: &Act) -> f32 {
        match (&self.weight, a) {
            (Weight::Q8 { d, qs }, Act::Q8_0 { d: ad, qs: aq }) => {
                let nb = self.k / QK8_0;
                dot_q8_0(
                    &d[row * nb..(row + 1) * nb],
                    &qs[row * self.k..(row + 1) * self.k],
                    ad,
                    aq,
                )
            }
            (Weight::Q4K(raw), Act::Q8K { d, qs, bsums }) => {
                let nb = self.k / QK_K;
                dot_q4k(&raw[row * nb * 144..(row + 1) * nb * 144], d, qs, bsums)
            }
            (Weight::Q6K(raw), Act::Q8K { d, qs, bsums }) => {
                let nb = self.k / QK_K;
                dot_q6k(&raw[row * nb * 210..(row + 1) * nb * 210], d, qs, bsums)
            }
            (Weight::F32(w), Act::F32(x)) => {
                crate::model::ggml::dot_f16_acc(&w[row * self.k..(row + 1) * self.k], x)
            }
            _ => unreachable!("activation type follows the weight type"),
        }
    }
}

/// `hsum_float_8`.
#[inline]
fn hsum8(a: &[f32; 8]) -> f32 {
    let r = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// Integer lanes of one 32-element chunk: lane `l` sums elements `4l..4l+3`.
#[inline(always)]
fn lanes32(w: &[i8], a: &[i8], scale: impl Fn(usize) -> i32, out: &mut [i32; 8]) {
    for l in 0..8 {
        let mut s = 0i32;
        for e in 4 * l..4 * l + 4 {
            s += scale(e) * (w[e] as i32 * a[e] as i32);
        }
        out[l] += s;
    }
}

/// The AVX2 `quantize_row_q8_0`.
fn quantize_q8_0(x: &[f32]) -> Act {
    let mut d = Vec::with_capacity(x.len() / QK8_0);
    let mut qs = Vec::with_capacity(x.len());
    for blk in x.chunks_exact(QK8_0) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        d.push(f16::from_f32(amax / 127.0).to_f32());
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        qs.extend(blk.iter().map(|v| (v * id).round_ties_even() as i8));
    }
    Act::Q8_0 { d, qs }
}

/// `quantize_row_q8_K_ref`.
fn quantize_q8_k(x: &[f32]) -> Act {
    let nb = x.len() / QK_K;
    let mut d = Vec::with_capacity(nb);
    let mut qs = vec![0i8; x.len()];
    let mut bsums = vec![0i32; nb * QK_K / 16];
    for (b, blk) in x.chunks_exact(QK_K).enumerate() {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in blk {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            d.push(0.0);
            continue;
        }
        let iscale = -127.0f32 / max;
        let q = &mut qs[b * QK_K..(b + 1) * QK_K];
        for (q, &v) in q.iter_mut().zip(blk) {
            *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            bsums[b * 16 + j] = q[16 * j..16 * j + 16].iter().map(|&v| v as i32).sum();
        }
        d.push(1.0 / iscale);
    }
    Act::Q8K { d, qs, bsums }
}

/// `ggml_vec_dot_q8_0_q8_0` / `ggml_vec_dot_q5_0_q8_0` (AVX2).
fn dot_q8_0(wd: &[f32], wq: &[i8], ad: &[f32], aq: &[i8]) -> f32 {
    let mut acc = [0f32; 8];
    for (b, (&wd, &ad)) in wd.iter().zip(ad).enumerate() {
        let mut lanes = [0i32; 8];
        lanes32(
            &wq[b * 32..b * 32 + 32],
            &aq[b * 32..b * 32 + 32],
            |_| 1,
            &mut lanes,
        );
        let d = wd * ad;
        for l in 0..8 {
            acc[l] = d.mul_add(lanes[l] as f32, acc[l]);
        }
    }
    hsum8(&acc)
}

/// Scales and minimums of the 8 sub-blocks of a `block_q4_K` (`get_scale_min_k4`).
fn q4k_scales(s: &[u8]) -> ([i32; 8], [i32; 8]) {
    let (mut sc, mut mn) = ([0i32; 8], [0i32; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = (s[j] & 63) as i32;
            mn[j] = (s[j + 4] & 63) as i32;
        } else {
            sc[j] = ((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4)) as i32;
            mn[j] = ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as i32;
        }
    }
    (sc, mn)
}

/// One row of `ggml_gemv_q4_K_8x8_q8_K` (AVX2).
fn dot_q4k(w: &[u8], ad: &[f32], aq: &[i8], bsums: &[i32]) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    let mut q = [0i8; QK_K];
    for (b, blk) in w.chunks_exact(144).enumerate() {
        let d = f16_at(blk, 0);
        let dmin = f16_at(blk, 2);
        let (sc, mn) = q4k_scales(&blk[4..16]);
        let qs = &blk[16..144];
        for c in 0..4 {
            for l in 0..32 {
                q[64 * c + l] = (qs[32 * c + l] & 0x0f) as i8;
                q[64 * c + 32 + l] = (qs[32 * c + l] >> 4) as i8;
            }
        }
        let a = &aq[b * QK_K..(b + 1) * QK_K];
        let mut isum = 0i32;
        for sub in 0..8 {
            let mut s = 0i32;
            for e in 32 * sub..32 * sub + 32 {
                s += q[e] as i32 * a[e] as i32;
            }
            isum += sc[sub] * s;
        }
        let mut imin = 0i32;
        for sub in 0..8 {
            imin += mn[sub] * (bsums[b * 16 + 2 * sub] + bsums[b * 16 + 2 * sub + 1]);
        }
        acc = (isum as f32).mul_add(d * ad[b], acc);
        acc_min = (imin as f32).mul_add(dmin * ad[b], acc_min);
    }
    acc - acc_min
}

/// `ggml_vec_dot_q6_K_q8_K` (AVX2). The quants are multiplied unsigned (0..63) and the
/// offset of 32 is taken off afterwards per integer lane: lane `l` loses
/// `32 * (sc[2l] * bsum[2l] + sc[2l+1] * bsum[2l+1])` (`q8sclsub`), so each lane's integer
/// sum — and hence the f32 accumulation — differs from a signed per-element product.
fn dot_q6k(w: &[u8], ad: &[f32], aq: &[i8], bsums: &[i32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut q = [0i8; QK_K];
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let (ql, qh) = (&blk[0..128], &blk[128..192]);
        let sc: [i32; 16] = std::array::from_fn(|i| blk[192 + i] as i8 as i32);
        let d = ad[b] * f16_at(blk, 208);
        for h in 0..2 {
            let (ql, qh) = (&ql[64 * h..], &qh[32 * h..]);
            let out = &mut q[128 * h..];
            for l in 0..32 {
                out[l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8;
                out[l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8;
                out[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8;
                out[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8;
            }
        }
        let a = &aq[b * QK_K..(b + 1) * QK_K];
        let mut lanes = [0i32; 8];
        for c in 0..8 {
            let (lo, hi) = (sc[2 * c], sc[2 * c + 1]);
            lanes32(
                &q[32 * c..32 * c + 32],
                &a[32 * c..32 * c + 32],
                |e| if e < 16 { lo } else { hi },
                &mut lanes,
            );
        }
        let bs = &bsums[b * 16..b * 16 + 16];
        for l in 0..8 {
            lanes[l] -= 32 * (sc[2 * l] * bs[2 * l] + sc[2 * l + 1] * bs[2 * l + 1]);
            acc[l] = d.mul_add(lanes[l] as f32, acc[l]);
        }
    }
    hsum8(&acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Tensor};

    /// Dequantized activations of one row.
    fn dequant_act(a: &Act) -> Vec<f64> {
        match a {
            Act::Q8_0 { d, qs } => qs
                .iter()
                .enumerate()
                .map(|(i, &q)| d[i / 32] as f64 * q as f64)
                .collect(),
            Act::F32(x) => x.iter().map(|&v| v as f64).collect(),
            Act::Q8K { d, qs, .. } => qs
                .iter()
                .enumerate()
                .map(|(i, &q)| d[i / 256] as f64 * q as f64)
                .collect(),
        }
    }

    /// The kernels compute the exact product of the dequantized operands up to f32 rounding
    /// (this catches any mistake in the integer unpacking, whatever the scale bits).
    #[test]
    fn kernels_are_exact_on_quantized_operands() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q5_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::F32,
        ] {
            let (n, k) = (48, 1024);
            let w = (Tensor::randn(0f32, 1.0, (n, k), &dev)?
                * Tensor::randn(0f32, 3.0, (n, 1), &dev)?.broadcast_as((n, k))?)?;
            let q = QTensor::quantize(&w, dtype)?;
            let wd = q.dequantize(&dev)?.to_vec2::<f32>()?;
            let ours = GgmlMatMul::new(&q)?.expect("supported");
            let x = Tensor::randn(0f32, 2.0, (2, k), &dev)?.to_vec2::<f32>()?;
            for row in &x {
                let got = ours.forward(row)?;
                let act = match ours.weight {
                    Weight::Q8 { .. } => quantize_q8_0(row),
                    Weight::F32(_) => Act::F32(row.clone()),
                    _ => quantize_q8_k(row),
                };
                let a = dequant_act(&act);
                for (r, g) in got.iter().enumerate() {
                    let want: f64 = wd[r].iter().zip(&a).map(|(w, a)| *w as f64 * a).sum();
                    let mag: f64 = wd[r]
                        .iter()
                        .zip(&a)
                        .map(|(w, a)| (*w as f64 * a).abs())
                        .sum();
                    assert!(
                        (*g as f64 - want).abs() <= 1e-5 * mag,
                        "{dtype:?} row {r}: {g} vs {want}"
                    );
                }
            }
        }
        Ok(())
    }

    /// Selected rows equal the same columns of the full product, bit for bit.
    #[test]
    fn selected_rows_equal_the_full_product() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::F32,
        ] {
            let (n, k, m) = (40, 512, 3);
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
            let q = QTensor::quantize(&w, dtype)?;
            let ours = GgmlMatMul::new(&q)?.expect("supported");
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let full = ours.forward(&x)?;
            let rows = [7u32, 0, 39, 7];
            let some = ours.forward_rows(&x, &rows)?;
            for i in 0..m {
                for (j, &r) in rows.iter().enumerate() {
                    let (a, b) = (some[i * rows.len() + j], full[i * n + r as usize]);
                    assert_eq!(a.to_bits(), b.to_bits(), "{dtype:?} row {r}");
                }
            }
            assert!(ours.forward_rows(&x, &[40]).is_err());
        }
        Ok(())
    }

    /// Each kernel agrees with candle's quantized matmul to quantization precision.
    #[test]
    fn kernels_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q5_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let w = Tensor::randn(0f32, 1.0, (64, 512), &dev)?;
            let x = Tensor::randn(0f32, 1.0, (3, 512), &dev)?;
            let q = QTensor::quantize(&w, dtype)?;
            let ours = GgmlMatMul::new(&q)?.expect("supported");
            let got = ours.forward(&x.flatten_all()?.to_vec1::<f32>()?)?;
            let want = candle_core::quantized::QMatMul::from_qtensor(q)?
                .forward(&x)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 0.02 * scale, "{dtype:?}: {a} vs {b}");
            }
        }
        Ok(())
    }
}
