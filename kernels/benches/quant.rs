//! Quantized GEMM throughput per weight type on the reference model's shapes, with `m`
//! activation rows. FLOP = `2 * n * k * m`; bytes = weight bytes read.
//!
//! `cargo bench -p tutti-kernels --bench quant`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tutti_kernels::quant::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
    fn f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng(99);
    let mut g = c.benchmark_group("quant");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    // (label, n, k)
    let q8_shapes = [
        ("head_262144x640", 262_144, 640),
        ("ffn_up_2048x640", 2048, 640),
    ];
    let k_shapes = [("ffn_down_640x2048", 640, 2048)];
    for &m in &[1usize, 8, 32] {
        for &(label, n, k) in &q8_shapes {
            let wq: Vec<i8> = (0..n * k).map(|_| (rng.byte() as i8).max(-127)).collect();
            let wd: Vec<f32> = (0..n * k / 32).map(|_| rng.f32().abs() * 0.01).collect();
            let x: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
            let mut ad = vec![0f32; m * k / 32];
            let mut aq = vec![0i8; m * k];
            for j in 0..m {
                quantize_row_q8_0(
                    &x[j * k..(j + 1) * k],
                    &mut ad[j * k / 32..(j + 1) * k / 32],
                    &mut aq[j * k..(j + 1) * k],
                );
            }
            let mut out = vec![0f32; m * n];
            let w = Q8Weights { d: &wd, qs: &wq, k };
            let a = Q8Acts { d: &ad, qs: &aq, m };
            let id = BenchmarkId::new(format!("q8_0/{label}"), m);
            g.throughput(Throughput::Elements((2 * n * k * m) as u64));
            g.bench_function(id.clone(), |b| {
                b.iter(|| {
                    gemm_q8_0(
                        w,
                        Rows::Range { start: 0, len: n },
                        a,
                        black_box(&mut out),
                        n,
                    )
                })
            });
            g.throughput(Throughput::Bytes((n * k + n * k / 32 * 2) as u64));
            g.bench_function(BenchmarkId::new(format!("q8_0_bytes/{label}"), m), |b| {
                b.iter(|| {
                    gemm_q8_0(
                        w,
                        Rows::Range { start: 0, len: n },
                        a,
                        black_box(&mut out),
                        n,
                    )
                })
            });
        }
        for &(label, n, k) in &k_shapes {
            let nb = k / QK_K;
            let x: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
            let mut ad = vec![0f32; m * nb];
            let mut aq = vec![0i8; m * k];
            let mut bs = vec![0i16; m * nb * 16];
            for j in 0..m {
                quantize_row_q8_k(
                    &x[j * k..(j + 1) * k],
                    &mut ad[j * nb..(j + 1) * nb],
                    &mut aq[j * k..(j + 1) * k],
                    &mut bs[j * nb * 16..(j + 1) * nb * 16],
                );
            }
            let a = Q8KActs {
                d: &ad,
                qs: &aq,
                bsums: &bs,
                m,
            };
            let mut out = vec![0f32; m * n];
            for (name, bytes) in [("q4_k", Q4K_BYTES), ("q6_k", Q6K_BYTES)] {
                let mut w: Vec<u8> = (0..n * nb * bytes).map(|_| rng.byte()).collect();
                for blk in w.chunks_exact_mut(bytes) {
                    // Small positive f16 scales.
                    let (at, at2) = if bytes == Q4K_BYTES {
                        (0, 2)
                    } else {
                        (208, 208)
                    };
                    blk[at..at + 2].copy_from_slice(&f32_to_f16(0.01).to_le_bytes());
                    blk[at2..at2 + 2].copy_from_slice(&f32_to_f16(0.01).to_le_bytes());
                }
                let f = if bytes == Q4K_BYTES {
                    gemm_q4_k
                } else {
                    gemm_q6_k
                };
                g.throughput(Throughput::Elements((2 * n * k * m) as u64));
                g.bench_function(BenchmarkId::new(format!("{name}/{label}"), m), |b| {
                    b.iter(|| {
                        f(
                            &w,
                            k,
                            Rows::Range { start: 0, len: n },
                            a,
                            black_box(&mut out),
                            n,
                        )
                    })
                });
                g.throughput(Throughput::Bytes((n * nb * bytes) as u64));
                g.bench_function(BenchmarkId::new(format!("{name}_bytes/{label}"), m), |b| {
                    b.iter(|| {
                        f(
                            &w,
                            k,
                            Rows::Range { start: 0, len: n },
                            a,
                            black_box(&mut out),
                            n,
                        )
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
