//! Scalar re-implementations of ggml-cpu's numerics (x86-64, AVX2 + FMA + F16C build), so the
//! CPU forward pass rounds where llama.cpp rounds and sums in the order llama.cpp sums.
//!
//! - [`dot_f16_acc`]: `ggml_vec_dot_f16` — 4 vectors of 8 f32 lanes (element `i` goes to
//!   accumulator `i % 32`), fused multiply-adds, then `GGML_F32x8_REDUCE`.
//! - [`v_expf`]: `ggml_v_expf`, the vectorized exp of `ggml_vec_soft_max_f32`.
//! - [`softmax_sum`]: the AVX2 branch of `ggml_vec_soft_max_f32` (chunks of 8, each reduced in
//!   f32 and added to an f64 sum).
//! - [`geglu`]: `ggml_vec_geglu_f32` with `GGML_GELU_FP16` (f16 table lookup).
//! - [`rms_norm_row`]: `ggml_compute_forward_rms_norm_f32` followed by the weight `ggml_mul`.
//! - [`rope_cache`]: `ggml_rope_cache_init` (theta multiplied by `theta_scale` step by step).

// Lane-indexed loops mirror the SIMD code they reproduce.
#![allow(clippy::needless_range_loop)]

use half::f16;
use std::sync::OnceLock;

/// Elements per `ggml_vec_dot_f16` step on AVX (`GGML_F16_STEP`).
pub(crate) const F16_STEP: usize = 32;

/// Reduces the 32 lanes of a `ggml_vec_dot_f16` accumulator as `GGML_F32x8_REDUCE` does on AVX.
pub(crate) use tutti_kernels::quant::reduce32;

/// `ggml_vec_dot_f16` of two f16 vectors given as f32 (already rounded to f16); `n` must be a
/// multiple of 32 (the remainder would be summed in f64).
#[inline]
pub(crate) fn dot_f16_acc(x: &[f32], y: &[f32]) -> f32 {
    // The same arithmetic as `tutti_kernels::quant::dot_f32`, with AVX2 where available.
    tutti_kernels::quant::dot_f32_fast(x, y)
}

/// `ggml_v_expf` (AVX2 + FMA), lane by lane.
#[inline]
pub(crate) fn v_expf(x: f32) -> f32 {
    let fb = f32::from_bits;
    let r = fb(0x4b40_0000);
    let z = x.mul_add(fb(0x3fb8_aa3b), r);
    let n = z - r;
    let b = (-n).mul_add(fb(0x35bf_be8e), (-n).mul_add(fb(0x3f31_7200), x));
    let e = z.to_bits().wrapping_shl(23);
    let k = fb(e.wrapping_add(1f32.to_bits()));
    let c = n.abs() > 126.0;
    let u = b * b;
    let j = fb(0x3c07_2010)
        .mul_add(b, fb(0x3d2b_9f17))
        .mul_add(u, fb(0x3e2a_af33).mul_add(b, fb(0x3eff_fedb)))
        .mul_add(u, fb(0x3f7f_fff6) * b);
    if !c {
        return j.mul_add(k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = fb(g.wrapping_add(0x7f00_0000));
    let s2 = fb(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// `ggml_vec_soft_max_f32`: writes `exp(x - max)` to `y` and returns the f64 sum.
pub(crate) fn softmax_sum(x: &[f32], y: &mut [f32], max: f32) -> f64 {
    let n = x.len();
    let mut sum = 0f64;
    let mut i = 0;
    while i + 8 <= n {
        // A fully masked chunk: `ggml_v_expf(-inf)` is +0 and adding +0 to the (non-negative)
        // sum changes nothing, so the chunk is skipped with the same result.
        if x[i..i + 8].iter().all(|&v| v == f32::NEG_INFINITY) {
            y[i..i + 8].fill(0.0);
            i += 8;
            continue;
        }
        let mut v = [0f32; 8];
        for l in 0..8 {
            v[l] = v_expf(x[i + l] - max);
            y[i + l] = v[l];
        }
        let h = [v[4] + v[0], v[5] + v[1], v[6] + v[2], v[7] + v[3]];
        let s = (h[0] + h[2]) + (h[1] + h[3]);
        sum += s as f64;
        i += 8;
    }
    for i in i..n {
        let v = (x[i] - max).exp();
        sum += v as f64;
        y[i] = v;
    }
    sum
}

/// `ggml_gelu_f32` (tanh approximation) as GCC compiles it for x86-64 with FMA: the
/// `1.0f + GELU_COEF_A*x*x` term is contracted into one fused multiply-add.
fn gelu_f32(x: f32) -> f32 {
    const GELU_COEF_A: f32 = 0.044715;
    #[allow(clippy::excessive_precision)]
    const SQRT_2_OVER_PI: f32 = 0.797_884_560_802_865_4;
    (0.5 * x) * (1.0 + ((SQRT_2_OVER_PI * x) * (GELU_COEF_A * x).mul_add(x, 1.0)).tanh())
}

/// `ggml_table_gelu_f16`: GELU of every f16 value, rounded to f16.
fn gelu_table() -> &'static [f16] {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|i| f16::from_f32(gelu_f32(f16::from_bits(i).to_f32())))
            .collect()
    })
}

/// `ggml_vec_geglu_f32` with `GGML_GELU_FP16`: `y = gelu(x) * g`.
pub(crate) fn geglu(x: &[f32], g: &[f32], y: &mut [f32]) {
    let table = gelu_table();
    for ((y, &x), &g) in y.iter_mut().zip(x).zip(g) {
        *y = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * g
        } else {
            table[f16::from_f32(x).to_bits() as usize].to_f32() * g
        };
    }
}

/// `ggml_silu_f32`-based `ggml_vec_swiglu_f32` (AVX2): `y = silu(x) * g`, with
/// `ggml_v_expf` for whole chunks of 8 and `expf` for the rest.
pub(crate) fn swiglu(x: &[f32], g: &[f32], y: &mut [f32]) {
    let full = x.len() & !7;
    for (i, ((y, &x), &g)) in y.iter_mut().zip(x).zip(g).enumerate() {
        let e = if i < full { v_expf(-x) } else { (-x).exp() };
        *y = (x / (1.0 + e)) * g;
    }
}

/// RMS norm of one row followed by the weight multiply, as ggml computes them.
pub(crate) fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let mut sum = 0f64;
    for &v in x {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0f32 / (mean + eps).sqrt();
    for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
        *y = (x * scale) * w;
    }
}

/// `ggml_rope_cache_init` for one position without YaRN: `(cos, sin)` per rotated pair.
pub(crate) fn rope_cache(
    pos: f32,
    freq_scale: f32,
    theta_scale: f32,
    pairs: usize,
) -> Vec<(f32, f32)> {
    let mut theta = pos;
    (0..pairs)
        .map(|_| {
            let t = freq_scale * theta;
            theta *= theta_scale;
            (t.cos(), t.sin())
        })
        .collect()
}

/// Rounds to f16 and back (`GGML_CPU_FP32_TO_FP16`, round to nearest even).
#[inline]
pub(crate) fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_expf_is_close_to_exp() {
        for i in -2000..200 {
            let x = i as f32 * 0.05;
            let (a, b) = (v_expf(x), x.exp());
            assert!(
                (a - b).abs() <= 4.0 * f32::EPSILON * b.max(f32::MIN_POSITIVE),
                "{x}: {a} {b}"
            );
        }
        assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(v_expf(0.0), 1.0);
    }

    /// Skipping fully masked chunks gives the same values and sum as computing them.
    #[test]
    fn softmax_sum_skips_masked_chunks_exactly() {
        let n = 256;
        let x: Vec<f32> = (0..n)
            .map(|i| {
                if i < 100 && i % 3 != 0 {
                    (i as f32 * 0.37).sin() * 4.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut y = vec![1f32; n];
        let sum = softmax_sum(&x, &mut y, max);
        // The same computation without the skip.
        let (mut want_sum, mut want_y) = (0f64, vec![0f32; n]);
        for c in 0..n / 8 {
            let v: [f32; 8] = std::array::from_fn(|l| v_expf(x[8 * c + l] - max));
            want_y[8 * c..8 * c + 8].copy_from_slice(&v);
            let h = [v[4] + v[0], v[5] + v[1], v[6] + v[2], v[7] + v[3]];
            want_sum += ((h[0] + h[2]) + (h[1] + h[3])) as f64;
        }
        assert_eq!(sum.to_bits(), want_sum.to_bits());
        for (a, b) in y.iter().zip(&want_y) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }

    #[test]
    fn gelu_table_matches_formula() {
        let (mut x, mut g, mut y) = (vec![0.0f32; 5], vec![1.0f32; 5], vec![0.0f32; 5]);
        x.copy_from_slice(&[-11.0, -1.0, 0.0, 0.5, 12.0]);
        g[4] = 2.0;
        geglu(&x, &g, &mut y);
        assert_eq!(y[0], 0.0);
        assert_eq!(y[4], 24.0);
        assert!((y[3] - 0.345_714).abs() < 1e-3);
    }
}
