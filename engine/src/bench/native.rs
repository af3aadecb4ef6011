//! `--profile native-decode`: the in-process model's throughput on this machine.
//!
//! Decode: `n` live sequences (1, 8, 32, 64), continuing one short prompt prefilled once, each
//! from its own first token, step together through batched forward passes, one new token each
//! per step; the median step time gives ms per step and aggregate decode tokens/s. Prefill: one prompt of
//! `prefill_tokens` tokens in chunks of 512. Shared prefix: a small job of `job_tasks` tasks
//! runs through the engine with the native executor, and the runtime's counters show how often
//! the shared system prompt was prefilled (once) against how many tasks used it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{BackendKind, Config};
use crate::engine::{Engine, EngineOptions};
use crate::model::{argmax_rows, KvCache, Model, SeqStep, Tokenizer};
use crate::task::Task;

/// What to measure.
#[derive(Debug, Clone)]
pub struct NativeDecodeSpec {
    pub model: PathBuf,
    pub batch_sizes: Vec<usize>,
    /// Decode steps timed at each batch size.
    pub steps: usize,
    /// Length of the prompt whose prefill is timed.
    pub prefill_tokens: usize,
    /// Tasks of the shared-prefix job.
    pub job_tasks: usize,
}

impl NativeDecodeSpec {
    pub fn new(model: PathBuf) -> Self {
        NativeDecodeSpec {
            model,
            batch_sizes: vec![1, 8, 32, 64],
            steps: 8,
            prefill_tokens: 512,
            job_tasks: 16,
        }
    }
}

/// The counters of the shared-prefix job.
#[derive(Debug, Clone, Serialize)]
pub struct SharedPrefixReport {
    /// Tasks in the job.
    pub tasks: u64,
    /// Times the shared prefix was prefilled (1 for a job, whatever its size).
    pub prefix_prefills: u64,
    pub prefix_tokens: u64,
    /// Sequences that continued the shared prefix instead of prefilling it.
    pub prefix_hits: u64,
    /// Context tokens prefilled by the job, the shared prefix not included.
    pub prefill_tokens: u64,
    pub wall_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NativeDecodeReport {
    pub model: String,
    pub arch: String,
    pub threads: usize,
    /// Aggregate decode tokens per second, keyed by live sequences ("1", "8", "32", "64").
    pub decode_tokens_per_s: BTreeMap<String, f64>,
    /// Median milliseconds per batched decode step, same keys.
    pub ms_per_step: BTreeMap<String, f64>,
    pub prefill_tokens_per_s: f64,
    pub shared_prefix: SharedPrefixReport,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// One batched step over `caches`, each fed its own tokens; returns the argmax of each.
fn step(model: &Model, feeds: &[Vec<u32>], caches: &mut [KvCache]) -> anyhow::Result<Vec<u32>> {
    let mut seqs: Vec<SeqStep<'_>> = feeds
        .iter()
        .zip(caches.iter_mut())
        .map(|(t, c)| SeqStep {
            tokens: t,
            cache: c,
        })
        .collect();
    argmax_rows(&model.step(&mut seqs, false)?.last)
}

/// Times decode steps at `n` live sequences: the median step, in seconds. The sequences share
/// a prompt prefilled once (continued by reference, as tasks share their system prompt), then
/// each takes its own first token, so they decode different text.
fn decode(model: &Model, tok: &Tokenizer, n: usize, steps: usize) -> anyhow::Result<f64> {
    let prompt = tok.encode(
        "Task: what is 17 times 31? Think step by step, then answer with one number.",
        true,
        false,
    );
    let mut shared = model.new_cache();
    step(model, &[prompt], std::slice::from_mut(&mut shared))?;
    let shared = std::sync::Arc::new(shared);
    let mut caches: Vec<KvCache> = (0..n)
        .map(|_| KvCache::with_prefix(shared.clone()))
        .collect();
    let firsts: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            let t = tok.encode(&format!(" {i}"), false, false);
            vec![t[0]]
        })
        .collect();
    let mut next = step(model, &firsts, &mut caches)?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let feeds: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        let t0 = Instant::now();
        next = step(model, &feeds, &mut caches)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// Times the prefill of one `len`-token prompt, in chunks of 512: tokens per second.
fn prefill(model: &Model, tok: &Tokenizer, len: usize) -> anyhow::Result<f64> {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(len / 8 + 1);
    let mut tokens = tok.encode(&text, true, false);
    tokens.truncate(len.max(1));
    let mut cache = model.new_cache();
    let t0 = Instant::now();
    for chunk in tokens.chunks(512) {
        step(model, &[chunk.to_vec()], std::slice::from_mut(&mut cache))?;
    }
    Ok(tokens.len() as f64 / t0.elapsed().as_secs_f64())
}

/// A job of `tasks` tasks through the engine on the bundled default config, with `model` as
/// the orchestrator and every expert: one turn each, a few tokens, to count prefix prefills.
async fn shared_prefix_job(model: &Path, tasks: usize) -> anyhow::Result<SharedPrefixReport> {
    let mut cfg: Config = super::profile("default").expect("bundled");
    let path = model.to_string_lossy().into_owned();
    cfg.orchestrator.model = Some(path.clone());
    cfg.orchestrator.max_turns = 1;
    cfg.orchestrator.max_tokens = 8;
    for b in cfg
        .backends
        .iter_mut()
        .filter(|b| b.kind == BackendKind::Native)
    {
        b.model = Some(path.clone());
        b.max_tokens = 8;
    }
    let engine = Engine::new(&cfg, EngineOptions::default())?;
    let work: Vec<Task> = (0..tasks)
        .map(|i| Task {
            id: format!("prefix-{i}"),
            prompt: format!("What is {} * {}?", 100 + i, 7 + i),
            ..Default::default()
        })
        .collect();
    let (tx, mut rx) = mpsc::channel(1024);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let t0 = Instant::now();
    engine
        .run(futures::stream::iter(work), tx, CancellationToken::new())
        .await;
    drain.await?;
    let wall_s = t0.elapsed().as_secs_f64();
    let s = engine
        .native_stats()
        .expect("the default config's orchestrator is native");
    Ok(SharedPrefixReport {
        tasks: tasks as u64,
        prefix_prefills: s.prefix_prefills.load(Ordering::Relaxed),
        prefix_tokens: s.prefix_tokens.load(Ordering::Relaxed),
        prefix_hits: s.prefix_hits.load(Ordering::Relaxed),
        prefill_tokens: s.prefill_tokens.load(Ordering::Relaxed),
        wall_s,
    })
}

/// Runs the benchmark; must be called inside a tokio runtime.
pub async fn run(spec: &NativeDecodeSpec) -> anyhow::Result<NativeDecodeReport> {
    let (model, tok) = Model::load(&spec.model)?;
    let mut decode_tokens_per_s = BTreeMap::new();
    let mut ms_per_step = BTreeMap::new();
    for &n in &spec.batch_sizes {
        let s = tokio::task::block_in_place(|| decode(&model, &tok, n, spec.steps.max(1)))?;
        decode_tokens_per_s.insert(n.to_string(), n as f64 / s);
        ms_per_step.insert(n.to_string(), s * 1000.0);
    }
    let prefill_tokens_per_s =
        tokio::task::block_in_place(|| prefill(&model, &tok, spec.prefill_tokens))?;
    let arch = model.info().arch.clone();
    drop(model);
    let shared_prefix = shared_prefix_job(&spec.model, spec.job_tasks).await?;
    Ok(NativeDecodeReport {
        model: spec.model.display().to_string(),
        arch,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        decode_tokens_per_s,
        ms_per_step,
        prefill_tokens_per_s,
        shared_prefix,
    })
}
