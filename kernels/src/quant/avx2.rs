//! AVX2 + FMA kernels. Each one computes exactly the float operations of the [`super::scalar`]
//! reference in the same order, per (weight row, activation row) pair; only integer sums are
//! regrouped. Weight blocks are loaded (and for K-quants unpacked) once and used for a tile of
//! activation rows.

// Sub-block-indexed loops mirror the block layout.
#![allow(clippy::needless_range_loop)]

use super::scalar::{q4k_scales, reduce32};
use super::{f16_to_f32, Q8Acts, Q8KActs, Q8Weights, Rows, QK8_0, QK_K};
use core::arch::x86_64::*;

/// `hsum_float_8`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum8(x: __m256) -> f32 {
    let mut r = _mm256_extractf128_ps(x, 1);
    r = _mm_add_ps(r, _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// Weight rows kept hot in L1 while every activation tile passes over them.
const Q8_ROW_CHUNK: usize = 16;

/// Most blocks per row for the kernel with precomputed scale products ([`tile_q8_dp`]).
const Q8_MAX_NB: usize = 128;

/// One Q8_0 weight row against `M` activation rows (`ad`/`aq` point at the first one; rows are
/// `nb` scales and `nb * 32` quants apart).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_q8<const M: usize>(
    nb: usize,
    wd: *const f32,
    wq: *const i8,
    ad: *const f32,
    aq: *const i8,
) -> [f32; M] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); M];
    for b in 0..nb {
        let w = _mm256_loadu_si256(wq.add(32 * b) as *const __m256i);
        let aw = _mm256_sign_epi8(w, w);
        let dw = *wd.add(b);
        for (j, acc) in acc.iter_mut().enumerate() {
            let a = _mm256_loadu_si256(aq.add(j * nb * QK8_0 + 32 * b) as *const __m256i);
            let sa = _mm256_sign_epi8(a, w);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sa), ones);
            let d = _mm256_set1_ps(dw * *ad.add(j * nb + b));
            *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), *acc);
        }
    }
    let mut out = [0f32; M];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum8(a);
    }
    out
}

#[repr(align(32))]
struct Scales([f32; 8 * Q8_MAX_NB]);

/// [`tile_q8`] with the activation scales of the tile transposed (`adt[8 * b + j]`), so that
/// the 8 products `wd * ad` of a block are one vector multiply, kept in `dp` for the tile.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_q8_dp<const M: usize>(
    nb: usize,
    wd: *const f32,
    wq: *const i8,
    adt: &Scales,
    dp: &mut Scales,
    aq: *const i8,
) -> [f32; M] {
    for b in 0..nb {
        let v = _mm256_mul_ps(
            _mm256_set1_ps(*wd.add(b)),
            _mm256_load_ps(adt.0.as_ptr().add(8 * b)),
        );
        _mm256_store_ps(dp.0.as_mut_ptr().add(8 * b), v);
    }
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); M];
    let dp = dp.0.as_ptr();
    for b in 0..nb {
        let w = _mm256_loadu_si256(wq.add(32 * b) as *const __m256i);
        let aw = _mm256_sign_epi8(w, w);
        for (j, acc) in acc.iter_mut().enumerate() {
            let a = _mm256_loadu_si256(aq.add(j * nb * QK8_0 + 32 * b) as *const __m256i);
            let sa = _mm256_sign_epi8(a, w);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sa), ones);
            let d = _mm256_broadcast_ss(&*dp.add(8 * b + j));
            *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), *acc);
        }
    }
    let mut out = [0f32; M];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum8(a);
    }
    out
}

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm_q8_0(w: Q8Weights, rows: Rows, a: Q8Acts, out: &mut [f32], ldo: usize) {
    let (k, nb) = (w.k, w.k / QK8_0);
    let n_sel = rows.len();
    let fast = nb <= Q8_MAX_NB;
    let mut adt = Scales([0.0; 8 * Q8_MAX_NB]);
    let mut dp = Scales([0.0; 8 * Q8_MAX_NB]);
    let mut i0 = 0;
    while i0 < n_sel {
        let i1 = (i0 + Q8_ROW_CHUNK).min(n_sel);
        let mut j0 = 0;
        while j0 < a.m {
            let mj = (a.m - j0).min(8);
            let ad = a.d.as_ptr().add(j0 * nb);
            let aq = a.qs.as_ptr().add(j0 * k);
            if fast {
                for b in 0..nb {
                    for j in 0..8 {
                        adt.0[8 * b + j] = if j < mj { *ad.add(j * nb + b) } else { 0.0 };
                    }
                }
            }
            for i in i0..i1 {
                let r = rows.get(i);
                let wd = w.d.as_ptr().add(r * nb);
                let wq = w.qs.as_ptr().add(r * k);
                macro_rules! run {
                    ($m:literal) => {{
                        let v = if fast {
                            tile_q8_dp::<$m>(nb, wd, wq, &adt, &mut dp, aq)
                        } else {
                            tile_q8::<$m>(nb, wd, wq, ad, aq)
                        };
                        for (j, v) in v.into_iter().enumerate() {
                            out[(j0 + j) * ldo + i] = v;
                        }
                    }};
                }
                match mj {
                    8 => run!(8),
                    7 => run!(7),
                    6 => run!(6),
                    5 => run!(5),
                    4 => run!(4),
                    3 => run!(3),
                    2 => run!(2),
                    _ => run!(1),
                }
            }
            j0 += mj;
        }
        i0 = i1;
    }
}

/// Activation rows whose accumulators one pass over a weight row keeps.
const K_GROUP: usize = 32;

#[repr(align(32))]
struct Quants([u8; QK_K]);

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn f16_ptr(p: *const u8) -> f32 {
    f16_to_f32(u16::from_le_bytes([*p, *p.add(1)]))
}

/// Horizontal integer sums of two vectors.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum_2x_i32(v: __m256i, u: __m256i) -> (i32, i32) {
    let h = _mm256_hadd_epi32(v, u);
    let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    let t = _mm_hadd_epi32(s, s);
    (_mm_cvtsi128_si32(t), _mm_extract_epi32(t, 1))
}

/// Integer sums of one unpacked Q4_K block against `J` activation rows: (`isum`, `imin`).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4k_rows<const J: usize>(
    q: &Quants,
    scv: &[__m256i; 8],
    mn16: __m256i,
    aq: [*const i8; J],
    bs: [*const i16; J],
) -> [(i32, i32); J] {
    let mut v = [_mm256_setzero_si256(); J];
    for s in 0..8 {
        let qv = _mm256_load_si256(q.0.as_ptr().add(32 * s) as *const __m256i);
        for jj in 0..J {
            let av = _mm256_loadu_si256(aq[jj].add(32 * s) as *const __m256i);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(qv, av), scv[s]);
            v[jj] = _mm256_add_epi32(v[jj], p);
        }
    }
    let mut out = [(0, 0); J];
    for jj in 0..J {
        let u = _mm256_madd_epi16(mn16, _mm256_loadu_si256(bs[jj] as *const __m256i));
        out[jj] = hsum_2x_i32(v[jj], u);
    }
    out
}

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm_q4_k(
    w: &[u8],
    k: usize,
    rows: Rows,
    a: Q8KActs,
    out: &mut [f32],
    ldo: usize,
) {
    let nb = k / QK_K;
    let m4 = _mm256_set1_epi8(0x0f);
    let mut q = Quants([0; QK_K]);
    let mut scv = [_mm256_setzero_si256(); 8];
    for i in 0..rows.len() {
        let wr = w.as_ptr().add(rows.get(i) * nb * 144);
        let mut j0 = 0;
        while j0 < a.m {
            let g = (a.m - j0).min(K_GROUP);
            let mut acc = [0f32; K_GROUP];
            let mut acc_min = [0f32; K_GROUP];
            for b in 0..nb {
                let blk = wr.add(b * 144);
                let d = f16_ptr(blk);
                let dmin = f16_ptr(blk.add(2));
                let (sc, mn) = q4k_scales(core::slice::from_raw_parts(blk.add(4), 12));
                for s in 0..8 {
                    scv[s] = _mm256_set1_epi16(sc[s] as i16);
                }
                let mn16 = _mm256_setr_epi16(
                    mn[0] as i16,
                    mn[0] as i16,
                    mn[1] as i16,
                    mn[1] as i16,
                    mn[2] as i16,
                    mn[2] as i16,
                    mn[3] as i16,
                    mn[3] as i16,
                    mn[4] as i16,
                    mn[4] as i16,
                    mn[5] as i16,
                    mn[5] as i16,
                    mn[6] as i16,
                    mn[6] as i16,
                    mn[7] as i16,
                    mn[7] as i16,
                );
                for c in 0..4 {
                    let x = _mm256_loadu_si256(blk.add(16 + 32 * c) as *const __m256i);
                    let dst = q.0.as_mut_ptr().add(64 * c) as *mut __m256i;
                    _mm256_store_si256(dst, _mm256_and_si256(x, m4));
                    _mm256_store_si256(dst.add(1), _mm256_and_si256(_mm256_srli_epi16(x, 4), m4));
                }
                let mut jj = 0;
                while jj < g {
                    let j = j0 + jj;
                    let at = |j: usize| {
                        (
                            a.qs.as_ptr().add(j * k + b * QK_K),
                            a.bsums.as_ptr().add((j * nb + b) * 16),
                        )
                    };
                    let mut upd = |jj: usize, (isum, imin): (i32, i32)| {
                        let adb = a.d[(j0 + jj) * nb + b];
                        acc[jj] = (isum as f32).mul_add(d * adb, acc[jj]);
                        acc_min[jj] = (imin as f32).mul_add(dmin * adb, acc_min[jj]);
                    };
                    if jj + 2 <= g {
                        let (a0, b0) = at(j);
                        let (a1, b1) = at(j + 1);
                        let [r0, r1] = q4k_rows::<2>(&q, &scv, mn16, [a0, a1], [b0, b1]);
                        upd(jj, r0);
                        upd(jj + 1, r1);
                        jj += 2;
                    } else {
                        let (a0, b0) = at(j);
                        let [r0] = q4k_rows::<1>(&q, &scv, mn16, [a0], [b0]);
                        upd(jj, r0);
                        jj += 1;
                    }
                }
            }
            for jj in 0..g {
                out[(j0 + jj) * ldo + i] = acc[jj] - acc_min[jj];
            }
            j0 += g;
        }
    }
}

/// Integer lanes of one unpacked Q6_K block against `J` activation rows, offset taken off.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q6k_rows<const J: usize>(
    q: &Quants,
    scv: &[__m256i; 8],
    sc16: __m256i,
    aq: [*const i8; J],
    bs: [*const i16; J],
) -> [__m256i; J] {
    let mut v = [_mm256_setzero_si256(); J];
    for c in 0..8 {
        let qv = _mm256_load_si256(q.0.as_ptr().add(32 * c) as *const __m256i);
        for jj in 0..J {
            let av = _mm256_loadu_si256(aq[jj].add(32 * c) as *const __m256i);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(qv, av), scv[c]);
            v[jj] = _mm256_add_epi32(v[jj], p);
        }
    }
    for jj in 0..J {
        let corr = _mm256_madd_epi16(sc16, _mm256_loadu_si256(bs[jj] as *const __m256i));
        v[jj] = _mm256_sub_epi32(v[jj], _mm256_slli_epi32(corr, 5));
    }
    v
}

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm_q6_k(
    w: &[u8],
    k: usize,
    rows: Rows,
    a: Q8KActs,
    out: &mut [f32],
    ldo: usize,
) {
    let nb = k / QK_K;
    let m4 = _mm256_set1_epi8(0x0f);
    let m30 = _mm256_set1_epi8(0x30);
    let mut q = Quants([0; QK_K]);
    let mut scv = [_mm256_setzero_si256(); 8];
    for i in 0..rows.len() {
        let wr = w.as_ptr().add(rows.get(i) * nb * 210);
        let mut j0 = 0;
        while j0 < a.m {
            let g = (a.m - j0).min(K_GROUP);
            let mut acc = [_mm256_setzero_ps(); K_GROUP];
            for b in 0..nb {
                let blk = wr.add(b * 210);
                for h in 0..2 {
                    let ql0 = _mm256_loadu_si256(blk.add(64 * h) as *const __m256i);
                    let ql1 = _mm256_loadu_si256(blk.add(64 * h + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i);
                    let o0 = _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                    );
                    let o1 = _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                    );
                    let o2 = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                        _mm256_and_si256(qh, m30),
                    );
                    let o3 = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                    );
                    let dst = q.0.as_mut_ptr().add(128 * h) as *mut __m256i;
                    _mm256_store_si256(dst, o0);
                    _mm256_store_si256(dst.add(1), o1);
                    _mm256_store_si256(dst.add(2), o2);
                    _mm256_store_si256(dst.add(3), o3);
                }
                let scb = blk.add(192) as *const i8;
                for c in 0..8 {
                    scv[c] = _mm256_set_m128i(
                        _mm_set1_epi16(*scb.add(2 * c + 1) as i16),
                        _mm_set1_epi16(*scb.add(2 * c) as i16),
                    );
                }
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(scb as *const __m128i));
                let wd = f16_ptr(blk.add(208));
                let at = |j: usize| {
                    (
                        a.qs.as_ptr().add(j * k + b * QK_K),
                        a.bsums.as_ptr().add((j * nb + b) * 16),
                    )
                };
                let mut jj = 0;
                while jj < g {
                    let j = j0 + jj;
                    if jj + 2 <= g {
                        let (a0, b0) = at(j);
                        let (a1, b1) = at(j + 1);
                        let l = q6k_rows::<2>(&q, &scv, sc16, [a0, a1], [b0, b1]);
                        for (t, l) in l.into_iter().enumerate() {
                            let d = _mm256_set1_ps(a.d[(j + t) * nb + b] * wd);
                            acc[jj + t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(l), acc[jj + t]);
                        }
                        jj += 2;
                    } else {
                        let (a0, b0) = at(j);
                        let [l] = q6k_rows::<1>(&q, &scv, sc16, [a0], [b0]);
                        let d = _mm256_set1_ps(a.d[j * nb + b] * wd);
                        acc[jj] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(l), acc[jj]);
                        jj += 1;
                    }
                }
            }
            for jj in 0..g {
                out[(j0 + jj) * ldo + i] = hsum8(acc[jj]);
            }
            j0 += g;
        }
    }
}

/// `ggml_vec_dot_f32` (see [`super::scalar::dot_f32`]).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_f32(x: *const f32, y: *const f32, n: usize) -> f32 {
    let np = n & !31;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < np {
        for (t, acc) in acc.iter_mut().enumerate() {
            let (xv, yv) = (
                _mm256_loadu_ps(x.add(i + 8 * t)),
                _mm256_loadu_ps(y.add(i + 8 * t)),
            );
            *acc = _mm256_fmadd_ps(xv, yv, *acc);
        }
        i += 32;
    }
    let mut lanes = [0f32; 32];
    for (t, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * t), *acc);
    }
    let mut sum = reduce32(&lanes) as f64;
    for i in np..n {
        sum += (*x.add(i) * *y.add(i)) as f64;
    }
    sum as f32
}

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm_f32(
    w: &[f32],
    k: usize,
    rows: Rows,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    ldo: usize,
) {
    for i in 0..rows.len() {
        let wr = w.as_ptr().add(rows.get(i) * k);
        for j in 0..m {
            out[j * ldo + i] = dot_f32(wr, x.as_ptr().add(j * k), k);
        }
    }
}

/// [`super::scalar::quantize_row_q8_0`] (the AVX2 `quantize_row_q8_0`: the same products and
/// round-half-to-even, 32 lanes at a time).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_row_q8_0(x: &[f32], d: &mut [f32], qs: &mut [i8]) {
    let sign = _mm256_set1_ps(-0.0);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (b, d) in d.iter_mut().enumerate().take(x.len() / QK8_0) {
        let p = x.as_ptr().add(b * QK8_0);
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let mut mx = _mm256_andnot_ps(sign, v[0]);
        for v in &v[1..] {
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, *v));
        }
        let mut m4 = _mm_max_ps(_mm256_extractf128_ps(mx, 1), _mm256_castps256_ps128(mx));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        *d = f16_to_f32(super::f32_to_f16(amax / 127.0));
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q = v.map(|v| {
            _mm256_cvtps_epi32(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(_mm256_mul_ps(v, id)))
        });
        let lo = _mm256_packs_epi32(q[0], q[1]);
        let hi = _mm256_packs_epi32(q[2], q[3]);
        let all = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), perm);
        _mm256_storeu_si256(qs.as_mut_ptr().add(b * QK8_0) as *mut __m256i, all);
    }
}

/// [`super::scalar::quantize_row_q8_k`] with the block maximum and the rounding done 8 lanes at
/// a time (the same products and round-half-to-even; the first element of largest magnitude
/// picks the sign, as in the reference).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_row_q8_k(x: &[f32], d: &mut [f32], qs: &mut [i8], bsums: &mut [i16]) {
    let sign = _mm256_set1_ps(-0.0);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..x.len() / QK_K {
        let p = x.as_ptr().add(b * QK_K);
        let mut mx = _mm256_setzero_ps();
        for t in 0..QK_K / 8 {
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * t))));
        }
        let mut m4 = _mm_max_ps(_mm256_extractf128_ps(mx, 1), _mm256_castps256_ps128(mx));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let q = &mut qs[b * QK_K..(b + 1) * QK_K];
        let bs = &mut bsums[b * 16..b * 16 + 16];
        if amax == 0.0 {
            d[b] = 0.0;
            q.fill(0);
            bs.fill(0);
            continue;
        }
        let blk = &x[b * QK_K..(b + 1) * QK_K];
        let max = *blk
            .iter()
            .find(|v| v.abs() == amax)
            .expect("the maximum is one of the elements");
        let iscale = -127.0f32 / max;
        let is = _mm256_set1_ps(iscale);
        for c in 0..QK_K / 32 {
            let v: [__m256i; 4] = core::array::from_fn(|t| {
                let y = _mm256_mul_ps(is, _mm256_loadu_ps(p.add(32 * c + 8 * t)));
                _mm256_cvtps_epi32(_mm256_round_ps::<
                    { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                >(y))
            });
            let lo = _mm256_packs_epi32(v[0], v[1]);
            let hi = _mm256_packs_epi32(v[2], v[3]);
            let all = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), perm);
            _mm256_storeu_si256(q.as_mut_ptr().add(32 * c) as *mut __m256i, all);
        }
        for (j, s) in bs.iter_mut().enumerate() {
            *s = q[16 * j..16 * j + 16].iter().map(|&v| v as i16).sum();
        }
        d[b] = 1.0 / iscale;
    }
}
