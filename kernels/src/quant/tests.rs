//! Every SIMD kernel against its scalar reference, bit for bit, on random data.

use super::*;

/// xorshift64*: deterministic test data without dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn normalish(&mut self, scale: f32) -> f32 {
        (self.f32() + self.f32() + self.f32()) * scale
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 56) as u8).collect()
    }
    fn f16(&mut self, scale: f32) -> [u8; 2] {
        f32_to_f16(self.f32().abs() * scale + 1e-4).to_le_bytes()
    }
}

fn acts(rng: &mut Rng, m: usize, k: usize) -> Vec<f32> {
    (0..m * k)
        .map(|i| {
            // Some rows with large outliers, one all-zero block.
            if i < 32 {
                0.0
            } else if i % 97 == 0 {
                rng.normalish(40.0)
            } else {
                rng.normalish(1.0)
            }
        })
        .collect()
}

struct Acts8 {
    d: Vec<f32>,
    qs: Vec<i8>,
    m: usize,
}

fn quant8(x: &[f32], k: usize) -> Acts8 {
    let m = x.len() / k;
    let mut d = vec![0f32; m * k / QK8_0];
    let mut qs = vec![0i8; m * k];
    for (j, row) in x.chunks_exact(k).enumerate() {
        quantize_row_q8_0(
            row,
            &mut d[j * k / 32..(j + 1) * k / 32],
            &mut qs[j * k..(j + 1) * k],
        );
    }
    Acts8 { d, qs, m }
}

struct ActsK {
    d: Vec<f32>,
    qs: Vec<i8>,
    bsums: Vec<i16>,
    m: usize,
}

fn quantk(x: &[f32], k: usize) -> ActsK {
    let m = x.len() / k;
    let nb = k / QK_K;
    let mut d = vec![0f32; m * nb];
    let mut qs = vec![0i8; m * k];
    let mut bsums = vec![0i16; m * nb * 16];
    for (j, row) in x.chunks_exact(k).enumerate() {
        quantize_row_q8_k(
            row,
            &mut d[j * nb..(j + 1) * nb],
            &mut qs[j * k..(j + 1) * k],
            &mut bsums[j * nb * 16..(j + 1) * nb * 16],
        );
    }
    ActsK { d, qs, bsums, m }
}

fn assert_bits(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{what}: entry {i}: {x} vs {y}");
    }
}

/// Shapes: (n, k, m).
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 256, 1),
    (5, 512, 3),
    (37, 768, 8),
    (20, 256, 9),
    (33, 1024, 17),
    (16, 512, 32),
    (7, 256, 40),
    (3, 2048, 64),
    // Past the Q8_0 kernel's precomputed-scales limit (128 blocks).
    (4, 4352, 9),
];

fn row_sets(n: usize) -> Vec<Vec<u32>> {
    vec![
        (0..n as u32).collect(),
        vec![(n - 1) as u32, 0, (n / 2) as u32, (n - 1) as u32],
    ]
}

/// Runs `f` on the scalar and the dispatched kernel for a range and a list of rows and compares.
/// A product under test: `(simd, rows, out, ldo)`.
type Product<'a> = &'a dyn Fn(bool, Rows, &mut [f32], usize);

fn compare(n: usize, m: usize, what: &str, f: Product) {
    for list in row_sets(n) {
        let cases = [
            Rows::Range { start: 0, len: n },
            Rows::Range {
                start: n / 3,
                len: n - n / 3,
            },
            Rows::List(&list),
        ];
        for rows in cases {
            let ldo = rows.len() + 3;
            let mut want = vec![f32::NAN; m * ldo];
            let mut got = vec![f32::NAN; m * ldo];
            f(false, rows, &mut want, ldo);
            f(true, rows, &mut got, ldo);
            for j in 0..m {
                assert_bits(
                    &got[j * ldo..j * ldo + rows.len()],
                    &want[j * ldo..j * ldo + rows.len()],
                    &format!("{what} {rows:?} act row {j}"),
                );
            }
        }
    }
}

#[test]
fn dispatch_picks_simd_here() {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        assert_eq!(level(), Level::Avx2);
        return;
    }
    assert_eq!(level(), Level::Scalar);
}

#[test]
fn q8_0_gemm_is_bit_exact() {
    let mut rng = Rng(0x1234_5678);
    for &(n, k, m) in SHAPES {
        // Q8_0 weights: full i8 range; and Q5_0-like weights widened to -16..15.
        for widened in [false, true] {
            let wq: Vec<i8> = (0..n * k)
                .map(|_| {
                    let b = (rng.next() >> 56) as i8;
                    if widened {
                        (b as i32).rem_euclid(32) as i8 - 16
                    } else {
                        b.max(-127)
                    }
                })
                .collect();
            let wd: Vec<f32> = (0..n * k / 32)
                .map(|_| f16_to_f32(u16::from_le_bytes(rng.f16(0.05))))
                .collect();
            let x = acts(&mut rng, m, k);
            let a = quant8(&x, k);
            let w = Q8Weights { d: &wd, qs: &wq, k };
            let acts = Q8Acts {
                d: &a.d,
                qs: &a.qs,
                m: a.m,
            };
            compare(n, m, "q8_0", &|simd, rows, out, ldo| {
                if simd {
                    gemm_q8_0(w, rows, acts, out, ldo)
                } else {
                    scalar::gemm_q8_0(w, rows, acts, out, ldo)
                }
            });
        }
    }
}

fn q4k_weights(rng: &mut Rng, n: usize, k: usize) -> Vec<u8> {
    let mut w = Vec::with_capacity(n * k / QK_K * Q4K_BYTES);
    for _ in 0..n * k / QK_K {
        w.extend(rng.f16(0.02));
        w.extend(rng.f16(0.02));
        w.extend(rng.bytes(140));
    }
    w
}

fn q6k_weights(rng: &mut Rng, n: usize, k: usize) -> Vec<u8> {
    let mut w = Vec::with_capacity(n * k / QK_K * Q6K_BYTES);
    for _ in 0..n * k / QK_K {
        w.extend(rng.bytes(192));
        // Scales: the full i8 range.
        w.extend(rng.bytes(16));
        w.extend(rng.f16(0.01));
    }
    w
}

#[test]
fn k_quant_gemms_are_bit_exact() {
    let mut rng = Rng(0xdead_beef);
    for &(n, k, m) in SHAPES {
        let x = acts(&mut rng, m, k);
        let a = quantk(&x, k);
        let acts = Q8KActs {
            d: &a.d,
            qs: &a.qs,
            bsums: &a.bsums,
            m: a.m,
        };
        let w4 = q4k_weights(&mut rng, n, k);
        compare(n, m, "q4_k", &|simd, rows, out, ldo| {
            if simd {
                gemm_q4_k(&w4, k, rows, acts, out, ldo)
            } else {
                scalar::gemm_q4_k(&w4, k, rows, acts, out, ldo)
            }
        });
        let w6 = q6k_weights(&mut rng, n, k);
        compare(n, m, "q6_k", &|simd, rows, out, ldo| {
            if simd {
                gemm_q6_k(&w6, k, rows, acts, out, ldo)
            } else {
                scalar::gemm_q6_k(&w6, k, rows, acts, out, ldo)
            }
        });
    }
}

#[test]
fn f32_gemm_is_bit_exact() {
    let mut rng = Rng(42);
    for &(n, k, m) in SHAPES {
        for k in [k, k + 7] {
            let w: Vec<f32> = (0..n * k).map(|_| rng.normalish(1.0)).collect();
            let x = acts(&mut rng, m, k);
            compare(n, m, "f32", &|simd, rows, out, ldo| {
                if simd {
                    gemm_f32(&w, k, rows, &x, m, out, ldo)
                } else {
                    scalar::gemm_f32(&w, k, rows, &x, m, out, ldo)
                }
            });
            for j in 0..m {
                let (wr, xr) = (&w[..k], &x[j * k..(j + 1) * k]);
                assert_eq!(dot_f32_fast(wr, xr).to_bits(), dot_f32(wr, xr).to_bits());
            }
        }
    }
}

/// A row's result does not depend on the other rows of the call.
#[test]
fn results_do_not_depend_on_the_batch() {
    let mut rng = Rng(7);
    let (n, k, m) = (24, 512, 13);
    let wq: Vec<i8> = rng
        .bytes(n * k)
        .into_iter()
        .map(|b| (b as i8).max(-127))
        .collect();
    let wd: Vec<f32> = (0..n * k / 32).map(|_| rng.f32().abs() * 0.01).collect();
    let x = acts(&mut rng, m, k);
    let a = quant8(&x, k);
    let w = Q8Weights { d: &wd, qs: &wq, k };
    let mut all = vec![0f32; m * n];
    let all_acts = Q8Acts {
        d: &a.d,
        qs: &a.qs,
        m,
    };
    gemm_q8_0(w, Rows::Range { start: 0, len: n }, all_acts, &mut all, n);
    for j in 0..m {
        let one = Q8Acts {
            d: &a.d[j * k / 32..(j + 1) * k / 32],
            qs: &a.qs[j * k..(j + 1) * k],
            m: 1,
        };
        let mut y = vec![0f32; n];
        gemm_q8_0(w, Rows::Range { start: 0, len: n }, one, &mut y, n);
        assert_bits(&y, &all[j * n..(j + 1) * n], "single row");
    }
}

#[test]
fn q8_0_quantizer_is_bit_exact() {
    let mut rng = Rng(11);
    for k in [32usize, 256, 640, 2048] {
        let mut x = acts(&mut rng, 3, k);
        // Ties at .5 after scaling, negative zero, a tiny block.
        x[40] = -0.0;
        for v in &mut x[64..96] {
            *v *= 1e-30;
        }
        let nb = x.len() / 32;
        let (mut d1, mut q1) = (vec![0f32; nb], vec![0i8; x.len()]);
        let (mut d2, mut q2) = (vec![0f32; nb], vec![0i8; x.len()]);
        quantize_row_q8_0(&x, &mut d1, &mut q1);
        scalar::quantize_row_q8_0(&x, &mut d2, &mut q2);
        assert_bits(&d1, &d2, "q8_0 scales");
        assert_eq!(q1, q2, "q8_0 quants");
    }
    // Exact halves: 127 / amax times these lands on .5.
    let mut x = vec![0f32; 32];
    x[0] = 127.0;
    for (i, v) in x.iter_mut().enumerate().skip(1) {
        *v = i as f32 - 15.5;
    }
    let (mut d1, mut q1) = ([0f32; 1], [0i8; 32]);
    let (mut d2, mut q2) = ([0f32; 1], [0i8; 32]);
    quantize_row_q8_0(&x, &mut d1, &mut q1);
    scalar::quantize_row_q8_0(&x, &mut d2, &mut q2);
    assert_eq!((d1, q1), (d2, q2));
}

#[test]
fn q8_k_quantizer_is_bit_exact() {
    let mut rng = Rng(12);
    for k in [256usize, 512, 2048] {
        let mut x = acts(&mut rng, 2, k);
        // Equal magnitudes of both signs (the first one sets the sign), and an all-zero block.
        x[300] = 50.0;
        x[301] = -50.0;
        x[k - 5] = -60.0;
        x[k + 7] = 60.0;
        if k >= 512 {
            x[k..k + 256].fill(0.0);
            x[k + 7] = 0.0;
        }
        let nb = x.len() / QK_K;
        let mut a = (vec![0f32; nb], vec![0i8; x.len()], vec![0i16; nb * 16]);
        let mut b = (vec![0f32; nb], vec![0i8; x.len()], vec![0i16; nb * 16]);
        quantize_row_q8_k(&x, &mut a.0, &mut a.1, &mut a.2);
        scalar::quantize_row_q8_k(&x, &mut b.0, &mut b.1, &mut b.2);
        assert_bits(&a.0, &b.0, "q8_k scales");
        assert_eq!(a.1, b.1, "q8_k quants");
        assert_eq!(a.2, b.2, "q8_k sums");
    }
}
