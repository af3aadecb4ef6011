//! Scalar references: llama.cpp's AVX2 numerics written lane by lane, one (weight row,
//! activation row) dot product at a time. The SIMD kernels must equal these bit for bit.

// Lane-indexed loops mirror the SIMD code they reproduce.
#![allow(clippy::needless_range_loop)]

use super::{f16_to_f32, f32_to_f16, Q8Acts, Q8KActs, Q8Weights, Rows, QK8_0, QK_K};

/// `hsum_float_8`.
#[inline]
pub fn hsum8(a: &[f32; 8]) -> f32 {
    let r = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// `GGML_F32x8_REDUCE` of the 4 x 8 lanes of a `ggml_vec_dot_f16`/`f32` accumulator (lane `l`
/// of vector `a` at index `8a + l`).
#[inline]
pub fn reduce32(acc: &[f32; 32]) -> f32 {
    let mut x = [[0f32; 8]; 4];
    for a in 0..4 {
        x[a].copy_from_slice(&acc[8 * a..8 * a + 8]);
    }
    for l in 0..8 {
        x[0][l] += x[2][l];
        x[1][l] += x[3][l];
    }
    for l in 0..8 {
        x[0][l] += x[1][l];
    }
    let t0 = [
        x[0][0] + x[0][4],
        x[0][1] + x[0][5],
        x[0][2] + x[0][6],
        x[0][3] + x[0][7],
    ];
    (t0[0] + t0[1]) + (t0[2] + t0[3])
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

/// The AVX2 `quantize_row_q8_0` of one row: `d` gets `x.len() / 32` scales (the f16 value as
/// f32), `qs` the `x.len()` quants.
pub fn quantize_row_q8_0(x: &[f32], d: &mut [f32], qs: &mut [i8]) {
    for ((blk, d), q) in x
        .chunks_exact(QK8_0)
        .zip(d.iter_mut())
        .zip(qs.chunks_exact_mut(QK8_0))
    {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        *d = f16_to_f32(f32_to_f16(amax / 127.0));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (q, v) in q.iter_mut().zip(blk) {
            *q = (v * id).round_ties_even() as i8;
        }
    }
}

/// `quantize_row_q8_K_ref` of one row: `d` gets `x.len() / 256` scales, `qs` the quants and
/// `bsums` the sums of each 16 quants.
pub fn quantize_row_q8_k(x: &[f32], d: &mut [f32], qs: &mut [i8], bsums: &mut [i16]) {
    for (b, blk) in x.chunks_exact(QK_K).enumerate() {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in blk {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let q = &mut qs[b * QK_K..(b + 1) * QK_K];
        let bs = &mut bsums[b * 16..b * 16 + 16];
        if amax == 0.0 {
            d[b] = 0.0;
            q.fill(0);
            bs.fill(0);
            continue;
        }
        let iscale = -127.0f32 / max;
        for (q, &v) in q.iter_mut().zip(blk) {
            *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
        for j in 0..16 {
            bs[j] = q[16 * j..16 * j + 16].iter().map(|&v| v as i16).sum();
        }
        d[b] = 1.0 / iscale;
    }
}

/// `ggml_vec_dot_q8_0_q8_0` / `ggml_vec_dot_q5_0_q8_0` (AVX2) of one row: `wd`/`ad` are the
/// block scales, `wq`/`aq` the quants.
pub fn dot_q8_0(wd: &[f32], wq: &[i8], ad: &[f32], aq: &[i8]) -> f32 {
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

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// Scales and minimums of the 8 sub-blocks of a `block_q4_K` (`get_scale_min_k4`).
pub fn q4k_scales(s: &[u8]) -> ([i32; 8], [i32; 8]) {
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

/// One row of `ggml_gemv_q4_K_8x8_q8_K` (AVX2): `w` is the row's raw `block_q4_K` bytes (144
/// per 256 elements). One f32 accumulator for the scaled sums and one for the scaled minimums,
/// subtracted at the end.
pub fn dot_q4k(w: &[u8], ad: &[f32], aq: &[i8], bsums: &[i16]) -> f32 {
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
            imin += mn[sub] * (bsums[b * 16 + 2 * sub] as i32 + bsums[b * 16 + 2 * sub + 1] as i32);
        }
        acc = (isum as f32).mul_add(d * ad[b], acc);
        acc_min = (imin as f32).mul_add(dmin * ad[b], acc_min);
    }
    acc - acc_min
}

/// `ggml_vec_dot_q6_K_q8_K` (AVX2) of one row (`w`: 210 raw bytes per 256 elements). The quants
/// are multiplied unsigned (0..63) and the offset of 32 is taken off afterwards per integer lane:
/// lane `l` loses `32 * (sc[2l] * bsum[2l] + sc[2l+1] * bsum[2l+1])` (`q8sclsub`), so each
/// lane's integer sum — and hence the f32 accumulation — differs from a signed per-element
/// product.
pub fn dot_q6k(w: &[u8], ad: &[f32], aq: &[i8], bsums: &[i16]) -> f32 {
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
            lanes[l] -= 32 * (sc[2 * l] * bs[2 * l] as i32 + sc[2 * l + 1] * bs[2 * l + 1] as i32);
            acc[l] = d.mul_add(lanes[l] as f32, acc[l]);
        }
    }
    hsum8(&acc)
}

/// `ggml_vec_dot_f16`/`ggml_vec_dot_f32` on AVX (values given as f32): element `i` of each
/// 32-element step goes to accumulator `i % 32` (fused multiply-adds), `GGML_F32x8_REDUCE`,
/// and the elements past the last multiple of 32 are added in f64.
pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let n = x.len();
    let np = n & !31;
    let mut acc = [0f32; 32];
    for (xc, yc) in x[..np].chunks_exact(32).zip(y[..np].chunks_exact(32)) {
        for l in 0..32 {
            acc[l] = xc[l].mul_add(yc[l], acc[l]);
        }
    }
    let mut sum = reduce32(&acc) as f64;
    for i in np..n {
        sum += (x[i] * y[i]) as f64;
    }
    sum as f32
}

/// [`super::gemm_q8_0`], one dot product at a time.
pub fn gemm_q8_0(w: Q8Weights, rows: Rows, a: Q8Acts, out: &mut [f32], ldo: usize) {
    let (k, nb) = (w.k, w.k / QK8_0);
    for i in 0..rows.len() {
        let r = rows.get(i);
        let (wd, wq) = (&w.d[r * nb..(r + 1) * nb], &w.qs[r * k..(r + 1) * k]);
        for j in 0..a.m {
            let (ad, aq) = (&a.d[j * nb..(j + 1) * nb], &a.qs[j * k..(j + 1) * k]);
            out[j * ldo + i] = dot_q8_0(wd, wq, ad, aq);
        }
    }
}

/// The dot product of one K-quant row with one Q8_K row.
type DotK = fn(&[u8], &[f32], &[i8], &[i16]) -> f32;

#[allow(clippy::too_many_arguments)]
fn gemm_k(
    w: &[u8],
    bytes: usize,
    k: usize,
    rows: Rows,
    a: Q8KActs,
    out: &mut [f32],
    ldo: usize,
    dot: DotK,
) {
    let nb = k / QK_K;
    for i in 0..rows.len() {
        let r = rows.get(i);
        let wr = &w[r * nb * bytes..(r + 1) * nb * bytes];
        for j in 0..a.m {
            out[j * ldo + i] = dot(
                wr,
                &a.d[j * nb..(j + 1) * nb],
                &a.qs[j * k..(j + 1) * k],
                &a.bsums[j * nb * 16..(j + 1) * nb * 16],
            );
        }
    }
}

/// [`super::gemm_q4_k`], one dot product at a time.
pub fn gemm_q4_k(w: &[u8], k: usize, rows: Rows, a: Q8KActs, out: &mut [f32], ldo: usize) {
    gemm_k(w, 144, k, rows, a, out, ldo, dot_q4k)
}

/// [`super::gemm_q6_k`], one dot product at a time.
pub fn gemm_q6_k(w: &[u8], k: usize, rows: Rows, a: Q8KActs, out: &mut [f32], ldo: usize) {
    gemm_k(w, 210, k, rows, a, out, ldo, dot_q6k)
}

/// [`super::gemm_f32`], one dot product at a time.
pub fn gemm_f32(w: &[f32], k: usize, rows: Rows, x: &[f32], m: usize, out: &mut [f32], ldo: usize) {
    for i in 0..rows.len() {
        let r = rows.get(i);
        for j in 0..m {
            out[j * ldo + i] = dot_f32(&w[r * k..(r + 1) * k], &x[j * k..(j + 1) * k]);
        }
    }
}
