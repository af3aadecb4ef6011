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
//!
//! The arithmetic lives in [`tutti_kernels::quant`] (scalar references and AVX2 kernels chosen at
//! run time, equal bit for bit); this module converts the GGUF weights once, quantizes the
//! activation rows into reusable per-thread buffers and splits the weight rows over the rayon
//! threads, each writing its columns of the result directly.

use crate::error::{bail, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;
use std::cell::RefCell;
use tutti_kernels::quant::{self, Q8Acts, Q8KActs, Q8Weights, Rows, QK8_0, QK_K};

/// Most weight rows per parallel task (the task's output tile stays in L1/L2).
const MAX_ROWS_PER_TASK: usize = 128;

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

/// Quantized activation rows, reused from call to call.
#[derive(Default)]
struct ActBuf {
    d: Vec<f32>,
    qs: Vec<i8>,
    bsums: Vec<i16>,
}

thread_local! {
    /// The calling thread's activation buffers.
    static ACTS: RefCell<ActBuf> = RefCell::new(ActBuf::default());
    /// A worker's output tile.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's buffer in `cell`, or a fresh one if it is already in use (a
/// nested call on the same thread, e.g. a rayon worker that picked up another product while
/// waiting).
fn with_buf<T: Default, R>(
    cell: &'static std::thread::LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    cell.with(|c| match c.try_borrow_mut() {
        Ok(mut b) => f(&mut b),
        Err(_) => f(&mut T::default()),
    })
}

/// The result buffer, shared by the tasks that each write their own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint elements (their own columns) and the buffer outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Element `i` of the buffer (a method, so that closures capture the whole `OutPtr`).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

impl GgmlMatMul {
    /// Wraps `q` (shape `(n, k)`) when its type is supported.
    pub(super) fn new(q: &QTensor) -> Result<Option<Self>> {
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
            GgmlDType::Q4K => Weight::Q4K(raw[..n * k / QK_K * quant::Q4K_BYTES].to_vec()),
            GgmlDType::Q6K => Weight::Q6K(raw[..n * k / QK_K * quant::Q6K_BYTES].to_vec()),
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
    pub(super) fn out_dim(&self) -> usize {
        self.n
    }

    /// `x` is `(m, k)` row-major; returns `(m, n)`.
    pub(super) fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        if !x.len().is_multiple_of(self.k) {
            bail!("matmul: {} inputs for rows of {}", x.len(), self.k);
        }
        Ok(self.product(x, None))
    }

    /// Only the weight rows `rows` (output features) for `x` of shape `(m, k)`: returns
    /// `(m, rows.len())`, column `j` holding feature `rows[j]`. Each value equals the same entry
    /// of [`GgmlMatMul::forward`] bit for bit (the kernels compute every (row, activation)
    /// pair on its own). The policy head uses it to score the few tokens a grammar allows
    /// without computing the whole vocabulary.
    pub(super) fn forward_rows(&self, x: &[f32], rows: &[u32]) -> Result<Vec<f32>> {
        if !x.len().is_multiple_of(self.k) {
            bail!("matmul: {} inputs for rows of {}", x.len(), self.k);
        }
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= self.n) {
            bail!("matmul: row {bad} out of range ({} rows)", self.n);
        }
        Ok(self.product(x, Some(rows)))
    }

    /// `(m, cols)` for all weight rows (`rows` = `None`) or the listed ones.
    fn product(&self, x: &[f32], rows: Option<&[u32]>) -> Vec<f32> {
        let m = x.len() / self.k;
        let cols = rows.map_or(self.n, |r| r.len());
        if m == 0 || cols == 0 {
            return vec![0f32; m * cols];
        }
        // Every element is written by exactly one task below; leaving the buffer uninitialized
        // saves a serial pass over it (the head's result is tens of megabytes) and lets the
        // workers take its page faults in parallel.
        let mut y: Vec<f32> = Vec::with_capacity(m * cols);
        with_buf(&ACTS, |acts| {
            self.quantize(x, m, acts);
            let threads = rayon::current_num_threads().max(1);
            let per_task = cols
                .div_ceil(threads * 4)
                .next_multiple_of(16)
                .clamp(16, MAX_ROWS_PER_TASK);
            let tasks = cols.div_ceil(per_task);
            let out = OutPtr(y.spare_capacity_mut().as_mut_ptr().cast::<f32>());
            let acts = &*acts;
            let run = |t: usize| {
                let c0 = t * per_task;
                let len = per_task.min(cols - c0);
                let sel = match rows {
                    None => Rows::Range { start: c0, len },
                    Some(r) => Rows::List(&r[c0..c0 + len]),
                };
                with_buf(&TILE, |tile| {
                    tile.resize(m * len, 0.0);
                    self.gemm(sel, m, acts, x, tile, len);
                    for j in 0..m {
                        // SAFETY: `y` has `m * cols` elements and outlives the tasks; task `t`
                        // alone writes columns `c0..c0 + len` of each row.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                tile.as_ptr().add(j * len),
                                out.at(j * cols + c0),
                                len,
                            );
                        }
                    }
                });
            };
            if tasks == 1 {
                run(0);
            } else {
                (0..tasks).into_par_iter().for_each(run);
            }
        });
        // SAFETY: the tasks have written all `m * cols` elements (each task covers `len` columns
        // of every one of the `m` rows, and the tasks cover all `cols` columns); a panicking task
        // unwinds past this point.
        unsafe { y.set_len(m * cols) };
        y
    }

    /// Quantizes the `m` rows of `x` into `buf` for the weight's activation type.
    fn quantize(&self, x: &[f32], m: usize, buf: &mut ActBuf) {
        let k = self.k;
        match self.weight {
            Weight::Q8 { .. } => {
                let nb = k / QK8_0;
                buf.d.resize(m * nb, 0.0);
                buf.qs.resize(m * k, 0);
                for (j, row) in x.chunks_exact(k).enumerate() {
                    quant::quantize_row_q8_0(
                        row,
                        &mut buf.d[j * nb..(j + 1) * nb],
                        &mut buf.qs[j * k..(j + 1) * k],
                    );
                }
            }
            Weight::Q4K(_) | Weight::Q6K(_) => {
                let nb = k / QK_K;
                buf.d.resize(m * nb, 0.0);
                buf.qs.resize(m * k, 0);
                buf.bsums.resize(m * nb * 16, 0);
                for (j, row) in x.chunks_exact(k).enumerate() {
                    quant::quantize_row_q8_k(
                        row,
                        &mut buf.d[j * nb..(j + 1) * nb],
                        &mut buf.qs[j * k..(j + 1) * k],
                        &mut buf.bsums[j * nb * 16..(j + 1) * nb * 16],
                    );
                }
            }
            Weight::F32(_) => {}
        }
    }

    /// `out[j * ldo + i]` for the selected rows and the `m` quantized rows in `acts`
    /// (or the raw rows `x` for f32 weights).
    fn gemm(&self, rows: Rows, m: usize, acts: &ActBuf, x: &[f32], out: &mut [f32], ldo: usize) {
        let k = self.k;
        let ka = || Q8KActs {
            d: &acts.d,
            qs: &acts.qs,
            bsums: &acts.bsums,
            m,
        };
        match &self.weight {
            Weight::Q8 { d, qs } => {
                let a = Q8Acts {
                    d: &acts.d,
                    qs: &acts.qs,
                    m,
                };
                quant::gemm_q8_0(Q8Weights { d, qs, k }, rows, a, out, ldo)
            }
            Weight::Q4K(w) => quant::gemm_q4_k(w, k, rows, ka(), out, ldo),
            Weight::Q6K(w) => quant::gemm_q6_k(w, k, rows, ka(), out, ldo),
            Weight::F32(w) => quant::gemm_f32(w, k, rows, x, m, out, ldo),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Tensor};

    /// Dequantized activations of one row, as the weight's kernel quantizes them.
    fn dequant_act(w: &Weight, row: &[f32]) -> Vec<f64> {
        let k = row.len();
        let (block, q8) = match w {
            Weight::F32(_) => return row.iter().map(|&v| v as f64).collect(),
            Weight::Q8 { .. } => (QK8_0, true),
            _ => (QK_K, false),
        };
        let mut d = vec![0f32; k / block];
        let mut qs = vec![0i8; k];
        if q8 {
            quant::quantize_row_q8_0(row, &mut d, &mut qs);
        } else {
            let mut bsums = vec![0i16; k / 16];
            quant::quantize_row_q8_k(row, &mut d, &mut qs, &mut bsums);
        }
        qs.iter()
            .enumerate()
            .map(|(i, &q)| d[i / block] as f64 * q as f64)
            .collect()
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
                let a = dequant_act(&ours.weight, row);
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

    /// A row's result is the same whatever else is in the product, and the parallel split
    /// (many tasks) gives the same values as one row at a time.
    #[test]
    fn rows_are_independent_of_the_batch() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q5_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::F32,
        ] {
            let (n, k, m) = (1000, 512, 11);
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
            let q = QTensor::quantize(&w, dtype)?;
            let ours = GgmlMatMul::new(&q)?.expect("supported");
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let full = ours.forward(&x)?;
            let all: Vec<u32> = (0..n as u32).rev().collect();
            let listed = ours.forward_rows(&x, &all)?;
            for i in 0..m {
                let one = ours.forward(&x[i * k..(i + 1) * k])?;
                for r in 0..n {
                    let f = full[i * n + r];
                    assert_eq!(one[r].to_bits(), f.to_bits(), "{dtype:?} row {r}");
                    let l = listed[i * n + (n - 1 - r)];
                    assert_eq!(l.to_bits(), f.to_bits(), "{dtype:?} listed row {r}");
                }
            }
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
