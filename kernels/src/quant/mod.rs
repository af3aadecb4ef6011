//! Quantized matrix products `y = x W^T` with llama.cpp's CPU numerics (AVX2 build), for the
//! weight types of the common GGUF mixes: Q8_0 (and Q5_0 widened to Q8_0 integers), Q4_K, Q6_K
//! and F32.
//!
//! - Activations are quantized like ggml's `from_float` for the weight's `vec_dot_type`:
//!   [`quantize_row_q8_0`] (`d = amax/127`, `id = 127/amax`, round half to even) and
//!   [`quantize_row_q8_k`] (`iscale = -127/max`).
//! - Q8_0 and Q6_K dot products follow the AVX2 `ggml_vec_dot_*`: per block, 8 integer lanes (lane
//!   `l` holds elements `4l..4l+3` of every 32-element chunk) are scaled and summed into 8 f32
//!   lanes with fused multiply-adds (`fma(wd * ad, lane, acc)`), then reduced by `hsum_float_8`.
//! - Q4_K follows `ggml_gemv_q4_K_8x8_q8_K`: one f32 accumulator for the scaled sums and one for
//!   the scaled minimums, subtracted at the end.
//! - F32 follows `ggml_vec_dot_f32` (4 x 8 lanes, `GGML_F32x8_REDUCE`).
//!
//! Integer sums are exact, so only those float steps fix the result: every output equals the
//! [`scalar`] reference bit for bit, and depends only on its own weight row and activation row,
//! whatever else is in the call.
//!
//! The `gemm_*` entry points take a set of weight rows ([`Rows`]) and `m` quantized activation
//! rows and write `out[j * ldo + i]` for activation row `j` and the `i`-th selected weight row.
//! On x86-64 with AVX2 and FMA (detected once at run time) they run SIMD kernels that load and
//! decode each weight block once for all the activation rows; elsewhere the scalar reference.
//! Nothing allocates.

pub mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(test)]
mod tests;

/// Elements per Q8_0 block.
pub const QK8_0: usize = 32;
/// Elements per K-quant super-block.
pub const QK_K: usize = 256;
/// Bytes per `block_q4_K`.
pub const Q4K_BYTES: usize = 144;
/// Bytes per `block_q6_K`.
pub const Q6K_BYTES: usize = 210;

pub use scalar::{dot_f32, hsum8, reduce32};

/// The AVX2 `quantize_row_q8_0` of one row: `d` gets `x.len() / 32` scales (the f16 value as
/// f32), `qs` the `x.len()` quants; equal to [`scalar::quantize_row_q8_0`] for finite inputs.
pub fn quantize_row_q8_0(x: &[f32], d: &mut [f32], qs: &mut [i8]) {
    let nb = x.len() / QK8_0;
    assert!(d.len() >= nb && qs.len() >= nb * QK8_0);
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx2 {
        // SAFETY: AVX2 and FMA are available; the lengths were checked above.
        return unsafe { avx2::quantize_row_q8_0(x, d, qs) };
    }
    scalar::quantize_row_q8_0(x, d, qs)
}

/// `quantize_row_q8_K_ref` of one row: `d` gets `x.len() / 256` scales, `qs` the quants and
/// `bsums` the sums of each 16 quants; equal to [`scalar::quantize_row_q8_k`] for finite inputs.
pub fn quantize_row_q8_k(x: &[f32], d: &mut [f32], qs: &mut [i8], bsums: &mut [i16]) {
    let nb = x.len() / QK_K;
    assert!(d.len() >= nb && qs.len() >= nb * QK_K && bsums.len() >= nb * 16);
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx2 {
        // SAFETY: AVX2 and FMA are available; the lengths were checked above.
        return unsafe { avx2::quantize_row_q8_k(x, d, qs, bsums) };
    }
    scalar::quantize_row_q8_k(x, d, qs, bsums)
}

/// f16 bits to f32.
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// f32 to f16 bits, rounding to nearest even.
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// The weight rows a product covers.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// `len` consecutive rows from `start`.
    Range { start: usize, len: usize },
    /// The listed rows, in order (repeats allowed).
    List(&'a [u32]),
}

impl Rows<'_> {
    /// Number of rows.
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Rows::Range { len, .. } => *len,
            Rows::List(l) => l.len(),
        }
    }

    /// Whether there are no rows.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th row.
    #[inline]
    pub fn get(&self, i: usize) -> usize {
        match self {
            Rows::Range { start, .. } => start + i,
            Rows::List(l) => l[i] as usize,
        }
    }
}

/// A Q8_0 weight of shape `(n, k)`: `n * k / 32` block scales and `n * k` quants, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Q8Weights<'a> {
    pub d: &'a [f32],
    pub qs: &'a [i8],
    /// Elements per row (a multiple of 32).
    pub k: usize,
}

/// `m` activation rows quantized to Q8_0 ([`quantize_row_q8_0`] row after row).
#[derive(Debug, Clone, Copy)]
pub struct Q8Acts<'a> {
    pub d: &'a [f32],
    pub qs: &'a [i8],
    pub m: usize,
}

/// `m` activation rows quantized to Q8_K ([`quantize_row_q8_k`] row after row).
#[derive(Debug, Clone, Copy)]
pub struct Q8KActs<'a> {
    pub d: &'a [f32],
    pub qs: &'a [i8],
    pub bsums: &'a [i16],
    pub m: usize,
}

/// Which implementation the `gemm_*` functions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Scalar,
    Avx2,
}

/// The implementation chosen for this machine (detected once).
pub fn level() -> Level {
    use std::sync::atomic::{AtomicU8, Ordering};
    static LEVEL: AtomicU8 = AtomicU8::new(0);
    match LEVEL.load(Ordering::Relaxed) {
        1 => Level::Scalar,
        2 => Level::Avx2,
        _ => {
            let l = detect();
            LEVEL.store(if l == Level::Avx2 { 2 } else { 1 }, Ordering::Relaxed);
            l
        }
    }
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Level::Avx2;
        }
    }
    Level::Scalar
}

fn check_out(rows: &Rows, m: usize, out: &[f32], ldo: usize) {
    assert!(ldo >= rows.len(), "ldo {ldo} < {} rows", rows.len());
    if m > 0 && !rows.is_empty() {
        assert!(out.len() >= (m - 1) * ldo + rows.len(), "output too short");
    }
}

fn check_rows(rows: &Rows, n: usize) {
    match rows {
        Rows::Range { start, len } => assert!(start + len <= n, "rows out of range"),
        Rows::List(l) => assert!(l.iter().all(|&r| (r as usize) < n), "row out of range"),
    }
}

/// `out[j * ldo + i] = dot(W[rows[i]], a[j])` for a Q8_0 weight and Q8_0 activations.
pub fn gemm_q8_0(w: Q8Weights, rows: Rows, a: Q8Acts, out: &mut [f32], ldo: usize) {
    let (k, nb) = (w.k, w.k / QK8_0);
    assert!(k.is_multiple_of(QK8_0) && w.qs.len() == w.d.len() * QK8_0);
    assert!(a.d.len() >= a.m * nb && a.qs.len() >= a.m * k);
    check_rows(&rows, w.qs.len().checked_div(k).unwrap_or(0));
    check_out(&rows, a.m, out, ldo);
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx2 {
        // SAFETY: AVX2 and FMA are available; the shapes were checked above.
        return unsafe { avx2::gemm_q8_0(w, rows, a, out, ldo) };
    }
    scalar::gemm_q8_0(w, rows, a, out, ldo)
}

fn check_k(w: &[u8], bytes: usize, k: usize, rows: &Rows, a: &Q8KActs, out: &[f32], ldo: usize) {
    let nb = k / QK_K;
    assert!(k.is_multiple_of(QK_K));
    assert!(a.d.len() >= a.m * nb && a.qs.len() >= a.m * k && a.bsums.len() >= a.m * nb * 16);
    check_rows(rows, w.len().checked_div(nb * bytes).unwrap_or(0));
    check_out(rows, a.m, out, ldo);
}

/// `out[j * ldo + i] = dot(W[rows[i]], a[j])` for a Q4_K weight (`w`: raw `block_q4_K` bytes,
/// rows of `k` elements) and Q8_K activations.
pub fn gemm_q4_k(w: &[u8], k: usize, rows: Rows, a: Q8KActs, out: &mut [f32], ldo: usize) {
    check_k(w, Q4K_BYTES, k, &rows, &a, out, ldo);
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx2 {
        // SAFETY: AVX2 and FMA are available; the shapes were checked above.
        return unsafe { avx2::gemm_q4_k(w, k, rows, a, out, ldo) };
    }
    scalar::gemm_q4_k(w, k, rows, a, out, ldo)
}

/// `out[j * ldo + i] = dot(W[rows[i]], a[j])` for a Q6_K weight (`w`: raw `block_q6_K` bytes,
/// rows of `k` elements) and Q8_K activations.
pub fn gemm_q6_k(w: &[u8], k: usize, rows: Rows, a: Q8KActs, out: &mut [f32], ldo: usize) {
    check_k(w, Q6K_BYTES, k, &rows, &a, out, ldo);
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx2 {
        // SAFETY: AVX2 and FMA are available; the shapes were checked above.
        return unsafe { avx2::gemm_q6_k(w, k, rows, a, out, ldo) };
    }
    scalar::gemm_q6_k(w, k, rows, a, out, ldo)
}

/// `out[j * ldo + i] = dot_f32(W[rows[i]], x[j])` for an f32 weight with rows of `k` and `m`
/// f32 activation rows.
pub fn gemm_f32(w: &[f32], k: usize, rows: Rows, x: &[f32], m: usize, out: &mut [f32], ldo: usize) {
    assert!(x.len() >= m * k);
    check_rows(&rows, w.len().checked_div(k).unwrap_or(0));
    check_out(&rows, m, out, ldo);
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx2 {
        // SAFETY: AVX2 and FMA are available; the shapes were checked above.
        return unsafe { avx2::gemm_f32(w, k, rows, x, m, out, ldo) };
    }
    scalar::gemm_f32(w, k, rows, x, m, out, ldo)
}

/// [`dot_f32`] with the SIMD kernel when available (same result bit for bit).
pub fn dot_f32_fast(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx2 {
        // SAFETY: AVX2 and FMA are available; the lengths are equal.
        return unsafe { avx2::dot_f32(x.as_ptr(), y.as_ptr(), x.len()) };
    }
    dot_f32(x, y)
}
