//! The policy head on a GPU, on Qwen3-8B's shapes (hidden 4096, vocabulary 151,936, bf16 output
//! projection of 1.24 GB; random weights): the time of one batched decision — final norm,
//! projection over each sequence's allowed rows (300 here, a catalog's worth), bias and budget
//! mask, softmax, sampling — against the bytes it must read, and, for free text, the
//! whole-vocabulary logits with fused top-k/top-p sampling. Medians of 50 runs after 5 warm-ups,
//! timed on the host around a stream synchronisation. Without a GPU it prints why and exits 0.
//!
//! `cargo bench -p tutti-kernels --bench gpu_head` (or the binary `cargo bench --no-run` builds,
//! carried to a GPU machine: `scripts/device-check.sh`).

use std::time::Instant;

use tutti_kernels::cuda::{CudaSlice, Gpu, GpuError, Weights};

const DIM: usize = 4096;
const VOCAB: usize = 151_936;
const ROWS: usize = 300;

fn median_us(g: &Gpu, mut run: impl FnMut() -> Result<(), GpuError>) -> Result<f64, GpuError> {
    for _ in 0..5 {
        run()?;
    }
    g.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        run()?;
        g.synchronize()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> Result<(), GpuError> {
    let g = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => {
            println!("gpu_head: no GPU here ({e}); nothing measured");
            return Ok(());
        }
    };
    println!("gpu_head on {} ({})", g.name(), g.arch());
    let mut seed = 7u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let weights: Vec<u16> = (0..VOCAB * DIM)
        .map(|_| half::bf16::from_f32((next() % 2001) as f32 * 1e-5 - 0.01).to_bits())
        .collect();
    let w = Weights::Bf16(g.upload(&weights)?);
    drop(weights);
    let norm: CudaSlice<f32> = g.upload(&vec![1.0f32; DIM])?;
    println!("batch | head decision us | GB read | GB/s | full-vocab logits+sample us | GB/s");
    for batch in [1usize, 8, 32, 64, 128, 256] {
        let h: Vec<f32> = (0..batch * DIM)
            .map(|_| (next() % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let h = g.upload(&h)?;
        let mut normed = g.zeros::<f32>(batch * DIM)?;
        let n = batch * ROWS;
        let rows: Vec<u32> = (0..n).map(|_| next() % VOCAB as u32).collect();
        let seq_of: Vec<u32> = (0..n).map(|k| (k / ROWS) as u32).collect();
        let offsets: Vec<u32> = (0..=batch).map(|s| (s * ROWS) as u32).collect();
        let (rows, seq_of, offsets) = (g.upload(&rows)?, g.upload(&seq_of)?, g.upload(&offsets)?);
        let bias = g.zeros::<f32>(n)?;
        let temperature = g.upload(&vec![0.7f32; batch])?;
        let uniforms = g.upload(&vec![0.5f32; batch])?;
        let top_k = g.upload(&vec![40i32; batch])?;
        let top_p = g.upload(&vec![0.9f32; batch])?;
        let mut logits = g.zeros::<f32>(n)?;
        let mut full = g.zeros::<f32>(batch * VOCAB)?;
        let mut chosen = g.zeros::<i32>(batch)?;
        let head = median_us(&g, || {
            g.rms_norm(&h, &norm, &mut normed, batch, DIM, 1e-6, 0.0)?;
            g.gather_logits(&normed, &w, VOCAB, &rows, &seq_of, &mut logits, n, DIM)?;
            g.head_choose(
                &mut logits,
                &bias,
                &offsets,
                &temperature,
                &uniforms,
                &mut chosen,
                batch,
            )
        })?;
        let head_bytes = (n * DIM * 2 + batch * DIM * 4 * 3) as f64;
        let free = median_us(&g, || {
            g.rms_norm(&h, &norm, &mut normed, batch, DIM, 1e-6, 0.0)?;
            g.logits(&normed, &w, VOCAB, &mut full, batch, DIM)?;
            g.sample_full(
                &mut full,
                VOCAB,
                &temperature,
                &top_k,
                &top_p,
                &uniforms,
                &mut chosen,
                batch,
            )
        })?;
        // The dense kernel reads the matrix once per sequence (L2 absorbs some of it).
        let free_bytes = (VOCAB * DIM * 2 * batch + batch * VOCAB * 4 * 3) as f64;
        println!(
            "{batch:5} | {head:16.1} | {:7.3} | {:6.0} | {free:27.1} | {:6.0}",
            head_bytes / 1e9,
            head_bytes / head / 1e3,
            free_bytes / free / 1e3
        );
    }
    Ok(())
}
