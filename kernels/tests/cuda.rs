//! The CUDA kernels. Everywhere: every kernel file compiles to PTX for sm_80 and sm_90 with NVRTC
//! (which needs no GPU and no driver), and opening a GPU on a machine without a driver is an
//! error that says so. On a device: each kernel against its CPU reference.
//!
//! Without NVRTC, the compile test prints why it skips, unless `CI` is set (CI installs NVRTC
//! from PyPI) and then it fails. Without a GPU, the device tests print why they skip, unless
//! `TUTTI_REQUIRE_GPU` is set (the device check script sets it) and then they fail.
#![cfg(feature = "cuda")]

use half::{bf16, f16};
use tutti_kernels::cuda::{self, Attention, Gpu, GpuError, Weights};
use tutti_kernels::sampling::{
    apply_temperature, argmax, sample_index, softmax_inplace, top_k_mask, top_p_mask,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self, scale: f32) -> f32 {
        (self.unit() + self.unit() + self.unit() - 1.5) * 2.0 * scale
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal(scale)).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn gpu(test: &str) -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(e @ (GpuError::NoDriver | GpuError::NoDevice(..) | GpuError::NoNvrtc))
            if std::env::var_os("TUTTI_REQUIRE_GPU").is_none() =>
        {
            eprintln!("skipped {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

fn close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = abs + rel * w.abs();
        assert!(
            (g - w).abs() <= tol || (g.is_infinite() && g == w),
            "{what}[{i}]: GPU {g}, CPU {w} (tolerance {tol})"
        );
    }
}

#[test]
fn every_kernel_compiles_to_ptx_for_sm80_and_sm90() {
    if !cuda::nvrtc_present() {
        if std::env::var_os("CI").is_some() {
            panic!("{}", GpuError::NoNvrtc);
        }
        eprintln!("skipped: {}", GpuError::NoNvrtc);
        return;
    }
    let (major, minor) = cuda::nvrtc_version().expect("NVRTC's version");
    eprintln!("NVRTC {major}.{minor}");
    for source in cuda::SOURCES {
        for arch in ["compute_80", "compute_90"] {
            let ptx = cuda::compile(&source, arch)
                .unwrap_or_else(|e| panic!("{}", e))
                .to_src();
            let target = arch.replace("compute_", "sm_");
            assert!(
                ptx.contains(&format!(".target {target}")),
                "{} for {arch}",
                source.name
            );
            for kernel in source.kernels {
                assert!(
                    ptx.contains(&format!(".entry {kernel}(")),
                    "{} for {arch} has no kernel {kernel}",
                    source.name
                );
            }
        }
    }
}

#[test]
fn opening_a_gpu_without_a_driver_says_so() {
    if cuda::driver_present() {
        eprintln!("skipped: this machine has a CUDA driver");
        return;
    }
    let err = Gpu::open(0).expect_err("no driver here");
    assert!(matches!(err, GpuError::NoDriver), "{err}");
    assert!(err.to_string().contains("libcuda.so"), "{err}");
}

fn rms_norm_cpu(x: &[f32], w: &[f32], dim: usize, eps: f32, offset: f32) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|row| {
            let ss: f32 = row.iter().map(|v| v * v).sum();
            let scale = 1.0 / (ss / dim as f32 + eps).sqrt();
            row.iter()
                .zip(w)
                .map(move |(v, w)| v * scale * (w + offset))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn rms_norm_matches_cpu() {
    let Some(g) = gpu("rms_norm_matches_cpu") else {
        return;
    };
    let mut rng = Rng(1);
    for (rows, dim, offset) in [(1, 4096, 0.0), (7, 640, 1.0), (64, 128, 0.0)] {
        let x = rng.vec(rows * dim, 3.0);
        let w = rng.vec(dim, 1.0);
        let (dx, dw) = (g.upload(&x).unwrap(), g.upload(&w).unwrap());
        let mut dy = g.zeros::<f32>(rows * dim).unwrap();
        g.rms_norm(&dx, &dw, &mut dy, rows, dim, 1e-6, offset)
            .unwrap();
        let got = g.download(&dy).unwrap();
        close(
            "rms_norm",
            &got,
            &rms_norm_cpu(&x, &w, dim, 1e-6, offset),
            1e-5,
            1e-4,
        );
    }
}

/// A random Q8_0 matrix as GGUF bytes, and its dequantized values.
fn q8_0_matrix(rng: &mut Rng, rows: usize, dim: usize) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut values = Vec::new();
    for _ in 0..rows * dim / 32 {
        let d = f16::from_f32(rng.unit() * 0.02 + 0.001);
        bytes.extend_from_slice(&d.to_bits().to_le_bytes());
        for _ in 0..32 {
            let q = (rng.below(255) as i32 - 127) as i8;
            bytes.push(q as u8);
            values.push(d.to_f32() * q as f32);
        }
    }
    (bytes, values)
}

#[test]
fn gathered_projection_matches_cpu_for_bf16_f16_and_q8_0() {
    let Some(g) = gpu("gathered_projection_matches_cpu_for_bf16_f16_and_q8_0") else {
        return;
    };
    let mut rng = Rng(2);
    let (vocab, dim, seqs) = (1000, 1024, 5);
    let h = rng.vec(seqs * dim, 1.0);
    // Each sequence its own set of rows, of its own size.
    let mut rows = Vec::new();
    let mut seq_of = Vec::new();
    for s in 0..seqs {
        for _ in 0..(3 + 40 * s) {
            rows.push(rng.below(vocab) as u32);
            seq_of.push(s as u32);
        }
    }
    let w = rng.vec(vocab * dim, 0.05);
    let (q8, q8_values) = q8_0_matrix(&mut rng, vocab, dim);
    let cases: Vec<(&str, Weights, Vec<f32>)> = vec![
        (
            "bf16",
            Weights::Bf16(
                g.upload(
                    &w.iter()
                        .map(|&v| bf16::from_f32(v).to_bits())
                        .collect::<Vec<_>>(),
                )
                .unwrap(),
            ),
            w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        ),
        (
            "f16",
            Weights::F16(
                g.upload(
                    &w.iter()
                        .map(|&v| f16::from_f32(v).to_bits())
                        .collect::<Vec<_>>(),
                )
                .unwrap(),
            ),
            w.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        ),
        ("q8_0", Weights::Q8_0(g.upload(&q8).unwrap()), q8_values),
    ];
    let dh = g.upload(&h).unwrap();
    let (drows, dseq) = (g.upload(&rows).unwrap(), g.upload(&seq_of).unwrap());
    for (name, weights, values) in cases {
        let mut out = g.zeros::<f32>(rows.len()).unwrap();
        g.gather_logits(
            &dh,
            &weights,
            vocab,
            &drows,
            &dseq,
            &mut out,
            rows.len(),
            dim,
        )
        .unwrap();
        let got = g.download(&out).unwrap();
        let want: Vec<f32> = rows
            .iter()
            .zip(&seq_of)
            .map(|(&r, &s)| {
                let wr = &values[r as usize * dim..][..dim];
                let hr = &h[s as usize * dim..][..dim];
                wr.iter().zip(hr).map(|(a, b)| a * b).sum()
            })
            .collect();
        close(name, &got, &want, 1e-3, 1e-3);
        // The whole vocabulary gives the same values at the gathered rows.
        let mut dense = g.zeros::<f32>(seqs * vocab).unwrap();
        g.logits(&dh, &weights, vocab, &mut dense, seqs, dim)
            .unwrap();
        let dense = g.download(&dense).unwrap();
        let picked: Vec<f32> = rows
            .iter()
            .zip(&seq_of)
            .map(|(&r, &s)| dense[s as usize * vocab + r as usize])
            .collect();
        close(name, &picked, &got, 1e-5, 1e-5);
    }
}

/// The CPU head's `pick` after the bias: greedy, or temperature, softmax and inverse CDF. Also
/// says whether the draw sat within `margin` of a bucket edge, where a last-bit difference in
/// `exp` may move it.
fn pick_cpu(row: &mut [f32], temperature: f32, u: f32) -> (Option<usize>, bool) {
    if temperature <= 0.0 {
        return (argmax(row), false);
    }
    apply_temperature(row, temperature);
    softmax_inplace(row);
    let total: f32 = row.iter().sum();
    let target = u.clamp(0.0, 1.0) * total;
    let mut acc = 0.0;
    let mut near = false;
    for &p in row.iter() {
        acc += p;
        near |= (acc - target).abs() <= 1e-5 * total;
    }
    (sample_index(row, u), near)
}

#[test]
fn head_decisions_equal_the_cpu_head_for_equal_seeds() {
    let Some(g) = gpu("head_decisions_equal_the_cpu_head_for_equal_seeds") else {
        return;
    };
    let mut rng = Rng(3);
    let seqs = 4096;
    let mut logits = Vec::new();
    let mut bias = Vec::new();
    let mut offsets = vec![0u32];
    let mut temperature = Vec::new();
    let mut uniforms = Vec::new();
    for s in 0..seqs {
        let n = 1 + rng.below(300);
        for _ in 0..n {
            logits.push(rng.normal(4.0));
            // Preference bias, and a row beyond the budget now and then.
            bias.push(if rng.below(10) == 0 {
                f32::NEG_INFINITY
            } else {
                rng.normal(1.0)
            });
        }
        offsets.push(logits.len() as u32);
        temperature.push([0.0, 0.3, 0.7, 1.0, 1.5][s % 5]);
        uniforms.push(rng.unit());
    }
    let mut dl = g.upload(&logits).unwrap();
    let mut chosen = g.zeros::<i32>(seqs).unwrap();
    g.head_choose(
        &mut dl,
        &g.upload(&bias).unwrap(),
        &g.upload(&offsets).unwrap(),
        &g.upload(&temperature).unwrap(),
        &g.upload(&uniforms).unwrap(),
        &mut chosen,
        seqs,
    )
    .unwrap();
    let got = g.download(&chosen).unwrap();
    let mut compared = 0;
    for s in 0..seqs {
        let (lo, hi) = (offsets[s] as usize, offsets[s + 1] as usize);
        let mut row: Vec<f32> = logits[lo..hi]
            .iter()
            .zip(&bias[lo..hi])
            .map(|(l, b)| l + b)
            .collect();
        let (want, near_edge) = pick_cpu(&mut row, temperature[s], uniforms[s]);
        if near_edge {
            continue;
        }
        compared += 1;
        assert_eq!(got[s], want.map_or(-1, |i| i as i32), "sequence {s}");
    }
    assert!(
        compared > seqs * 9 / 10,
        "only {compared} of {seqs} compared"
    );
}

/// The CPU's whole-vocabulary sampling (the model head's `sample_token`).
fn sample_token_cpu(row: &mut [f32], t: f32, k: usize, p: f32, u: f32) -> (Option<usize>, bool) {
    if t <= 0.0 {
        return (argmax(row), false);
    }
    apply_temperature(row, t);
    if k > 0 && k < row.len() {
        let mut scratch = vec![0f32; row.len()];
        top_k_mask(row, k, &mut scratch);
    }
    softmax_inplace(row);
    if p < 1.0 {
        let mut order = vec![0u32; row.len()];
        top_p_mask(row, p, &mut order);
    }
    let total: f32 = row.iter().sum();
    let target = u * total;
    let (mut acc, mut near) = (0.0f32, false);
    for &x in row.iter() {
        acc += x;
        near |= (acc - target).abs() <= 1e-4 * total;
    }
    (sample_index(row, u), near)
}

#[test]
fn full_vocabulary_sampling_equals_the_cpu_for_equal_seeds() {
    let Some(g) = gpu("full_vocabulary_sampling_equals_the_cpu_for_equal_seeds") else {
        return;
    };
    let mut rng = Rng(4);
    let (vocab, seqs) = (32_000, 64);
    let logits = rng.vec(vocab * seqs, 3.0);
    let settings: Vec<(f32, i32, f32)> = (0..seqs)
        .map(|s| match s % 6 {
            0 => (0.0, 0, 1.0),
            1 => (1.0, 0, 1.0),
            2 => (0.7, 40, 1.0),
            3 => (0.7, 0, 0.9),
            4 => (1.2, 100, 0.8),
            _ => (0.5, 1, 1.0),
        })
        .collect();
    let uniforms: Vec<f32> = (0..seqs).map(|_| rng.unit()).collect();
    let mut dl = g.upload(&logits).unwrap();
    let mut chosen = g.zeros::<i32>(seqs).unwrap();
    g.sample_full(
        &mut dl,
        vocab,
        &g.upload(&settings.iter().map(|s| s.0).collect::<Vec<_>>())
            .unwrap(),
        &g.upload(&settings.iter().map(|s| s.1).collect::<Vec<_>>())
            .unwrap(),
        &g.upload(&settings.iter().map(|s| s.2).collect::<Vec<_>>())
            .unwrap(),
        &g.upload(&uniforms).unwrap(),
        &mut chosen,
        seqs,
    )
    .unwrap();
    let got = g.download(&chosen).unwrap();
    let probs = g.download(&dl).unwrap();
    for s in 0..seqs {
        let (t, k, p) = settings[s];
        let mut row = logits[s * vocab..][..vocab].to_vec();
        let (want, near_edge) = sample_token_cpu(&mut row, t, k as usize, p, uniforms[s]);
        let gpu_row = &probs[s * vocab..][..vocab];
        if t > 0.0 {
            // The top-p cut compares a running mass with p; the GPU sums in another order, so
            // an entry whose mass lands the sum within rounding of p may fall on either side:
            // at most one such entry, and then the renormalised row differs, so the row is not
            // compared further.
            let differ = gpu_row
                .iter()
                .zip(&row)
                .filter(|(g, c)| (**g > 0.0) != (**c > 0.0))
                .count();
            assert!(
                differ <= 1,
                "sequence {s}: {differ} entries kept by only one side"
            );
            if differ == 1 {
                continue;
            }
            close("probabilities", gpu_row, &row, 1e-6, 1e-3);
        }
        if !near_edge {
            assert_eq!(
                got[s],
                want.map_or(-1, |i| i as i32),
                "sequence {s} ({t}, {k}, {p})"
            );
        }
    }
}

#[test]
fn rope_and_gated_activations_match_cpu() {
    let Some(g) = gpu("rope_and_gated_activations_match_cpu") else {
        return;
    };
    let mut rng = Rng(5);
    let (tokens, heads, hd, max_pos) = (6, 4, 128, 4096);
    let half = hd / 2;
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for pos in 0..max_pos {
        for i in 0..half {
            let freq = 1.0 / 1_000_000f32.powf(2.0 * i as f32 / hd as f32);
            cos.push((pos as f32 * freq).cos());
            sin.push((pos as f32 * freq).sin());
        }
    }
    let positions: Vec<i32> = (0..tokens).map(|_| rng.below(max_pos) as i32).collect();
    let x = rng.vec(tokens * heads * hd, 1.0);
    let mut dx = g.upload(&x).unwrap();
    g.rope(
        &mut dx,
        &g.upload(&cos).unwrap(),
        &g.upload(&sin).unwrap(),
        &g.upload(&positions).unwrap(),
        heads,
        hd,
    )
    .unwrap();
    let mut want = x.clone();
    for t in 0..tokens {
        let p = positions[t] as usize;
        for h in 0..heads {
            let head = &mut want[(t * heads + h) * hd..][..hd];
            for i in 0..half {
                let (c, s) = (cos[p * half + i], sin[p * half + i]);
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * c - b * s;
                head[i + half] = a * s + b * c;
            }
        }
    }
    close("rope", &g.download(&dx).unwrap(), &want, 1e-6, 1e-5);

    let n = 10_000;
    let (gate, up) = (rng.vec(n, 4.0), rng.vec(n, 1.0));
    let (dg, du) = (g.upload(&gate).unwrap(), g.upload(&up).unwrap());
    for gelu in [false, true] {
        let mut out = g.zeros::<f32>(n).unwrap();
        g.gated(&dg, &du, &mut out, n, gelu).unwrap();
        let want: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(&a, &b)| {
                let act = if gelu {
                    0.5 * a * (1.0 + (0.797_884_6 * (a + 0.044715 * a * a * a)).tanh())
                } else {
                    a / (1.0 + (-a).exp())
                };
                act * b
            })
            .collect();
        close(
            if gelu { "gelu" } else { "silu" },
            &g.download(&out).unwrap(),
            &want,
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn paged_attention_matches_dense_attention_on_the_cpu() {
    let Some(g) = gpu("paged_attention_matches_dense_attention_on_the_cpu") else {
        return;
    };
    let mut rng = Rng(6);
    let (heads, kv_heads, hd, block) = (8, 2, 128, 16);
    let kv_dim = kv_heads * hd;
    let lens = [1usize, 17, 300, 1024];
    let max_blocks = 1024 / block;
    let total_blocks = lens.iter().map(|l| l.div_ceil(block)).sum::<usize>() + 3;
    // Blocks handed out in a shuffled order, so a sequence's blocks are not contiguous.
    let mut free: Vec<i32> = (0..total_blocks as i32).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, rng.below(i + 1));
    }
    let mut tables = vec![0i32; lens.len() * max_blocks];
    let mut slots = Vec::new();
    let mut keys = Vec::new();
    let mut values = Vec::new();
    for (s, &len) in lens.iter().enumerate() {
        for b in 0..len.div_ceil(block) {
            tables[s * max_blocks + b] = free.pop().unwrap();
        }
        for pos in 0..len {
            slots.push(tables[s * max_blocks + pos / block] * block as i32 + (pos % block) as i32);
        }
        keys.push(rng.vec(len * kv_dim, 1.0));
        values.push(rng.vec(len * kv_dim, 1.0));
    }
    let mut k_cache = g.zeros::<u16>(total_blocks * block * kv_dim).unwrap();
    let mut v_cache = g.zeros::<u16>(total_blocks * block * kv_dim).unwrap();
    g.kv_store(
        &g.upload(&keys.concat()).unwrap(),
        &g.upload(&values.concat()).unwrap(),
        &mut k_cache,
        &mut v_cache,
        &g.upload(&slots).unwrap(),
        kv_dim,
    )
    .unwrap();
    // One query per sequence at its last position, and for the longest a few earlier ones too.
    let mut q_seq = Vec::new();
    let mut q_len = Vec::new();
    for (s, &len) in lens.iter().enumerate() {
        q_seq.push(s as i32);
        q_len.push(len as i32);
    }
    for len in [5, 600] {
        q_seq.push(3);
        q_len.push(len);
    }
    let q = rng.vec(q_seq.len() * heads * hd, 1.0);
    let scale = 1.0 / (hd as f32).sqrt();
    for window in [0usize, 256] {
        let mut out = g.zeros::<f32>(q.len()).unwrap();
        let shape = Attention {
            tokens: q_seq.len(),
            heads,
            kv_heads,
            head_dim: hd,
            block_size: block,
            max_blocks,
            scale,
            window,
        };
        g.paged_attention(
            &g.upload(&q).unwrap(),
            &k_cache,
            &v_cache,
            &g.upload(&tables).unwrap(),
            &g.upload(&q_seq).unwrap(),
            &g.upload(&q_len).unwrap(),
            &mut out,
            shape,
        )
        .unwrap();
        let got = g.download(&out).unwrap();
        let round = |x: f32| bf16::from_f32(x).to_f32();
        let mut want = vec![0f32; q.len()];
        for t in 0..q_seq.len() {
            let s = q_seq[t] as usize;
            let len = q_len[t] as usize;
            let start = if window > 0 && len > window {
                len - window
            } else {
                0
            };
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                let qh = &q[(t * heads + h) * hd..][..hd];
                let scores: Vec<f32> = (start..len)
                    .map(|pos| {
                        let k = &keys[s][pos * kv_dim + kvh * hd..][..hd];
                        qh.iter().zip(k).map(|(a, b)| a * scale * round(*b)).sum()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                let o = &mut want[(t * heads + h) * hd..][..hd];
                for (i, pos) in (start..len).enumerate() {
                    let v = &values[s][pos * kv_dim + kvh * hd..][..hd];
                    for d in 0..hd {
                        o[d] += e[i] / z * round(v[d]);
                    }
                }
            }
        }
        close(
            &format!("attention (window {window})"),
            &got,
            &want,
            1e-4,
            1e-3,
        );
    }
}
