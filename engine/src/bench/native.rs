//! `--profile native-decode`: the in-process model's throughput on this machine.
//!
//! Decode: `n` live sequences (1, 8, 32, 64), continuing one short prompt prefilled once, each
//! from its own first token, step together through batched forward passes, one new token each
//! per step; the median step time gives ms per step and aggregate decode tokens/s. Prefill: one prompt of
//! `prefill_tokens` tokens in chunks of 512. Shared prefix: a small job of `job_tasks` tasks
//! runs through the engine with the native executor, and the runtime's counters show how often
//! the shared system prompt was prefilled (once) against how many tasks used it, and the rows
//! the policy head computed for its calls. Tool decision: one call decoded under the grammar,
//! its rows and step times against the same steps computing the whole output projection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::catalog::Catalog;
use crate::config::{BackendSettings, Config};
use crate::engine::{Engine, EngineOptions};
use crate::task::Task;
use tutti_model::head::Sampling;
use tutti_model::head::{CallHead, CallPolicy};
use tutti_model::{argmax_rows, KvCache, Model, Rows, SeqStep, Tokenizer};

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
    /// Calls the policy head completed under the grammar in the job, the tokens chosen under
    /// it and the output rows computed for them (the allowed tokens only).
    pub grammar_calls: u64,
    pub grammar_steps: u64,
    pub grammar_rows: u64,
    pub wall_s: f64,
}

/// One tool call decoded under the grammar (greedy, one sequence), step by step, against the
/// same steps computing the whole output projection.
#[derive(Debug, Clone, Serialize)]
pub struct ToolDecisionReport {
    /// The call chosen.
    pub call: String,
    /// Its tokens, from `<tool_call>` to `</tool_call>`.
    pub call_tokens: u64,
    /// Output rows computed for the whole call, and the most for one token.
    pub rows_per_call: u64,
    pub max_rows_per_token: u64,
    /// Rows of the full output projection (the vocabulary).
    pub vocab_rows: u64,
    /// Median decode step of that sequence with the grammar's rows, and the same steps with
    /// every row; their difference is what the grammar saves per token.
    pub ms_per_step_grammar: f64,
    pub ms_per_step_full: f64,
    /// The whole call: sum of its steps, with the grammar's rows and with every row.
    pub ms_per_call_grammar: f64,
    pub ms_per_call_full: f64,
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
    pub tool_decision: ToolDecisionReport,
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
    Ok(argmax_rows(&model.step(&mut seqs, false)?.last)?)
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

/// Decodes one tool call under the bundled default config's grammar, timing each step, then
/// replays the same tokens computing every output row.
fn tool_decision(model: &Model, tok: &Tokenizer) -> anyhow::Result<ToolDecisionReport> {
    let cfg: Config = crate::config::bundled("default").expect("bundled");
    let catalog = Catalog::new(&cfg);
    let grammar = Arc::new(crate::executor::native::catalog_grammar(&catalog, tok));
    let policy = Arc::new(CallPolicy::new(
        grammar,
        &catalog.preference(&[]).bias,
        f64::INFINITY,
        0,
    ));
    let prompt = tok.encode(
        "Task: what is 17 times 31? Pick a tool to answer with.",
        true,
        false,
    );
    // Every timed step feeds one token: the prompt's last, then the call's.
    let (&last, context) = prompt.split_last().expect("a prompt");
    let prefilled = |model: &Model| -> anyhow::Result<KvCache> {
        let mut cache = model.new_cache();
        step(model, &[context.to_vec()], std::slice::from_mut(&mut cache))?;
        Ok(cache)
    };
    let timed = |cache: &mut KvCache, feed: u32, rows: Rows<'_>| {
        let t0 = Instant::now();
        let mut seq = [SeqStep {
            tokens: &[feed],
            cache,
        }];
        let out = model.step_rows(&mut seq, &[rows]);
        (out, t0.elapsed().as_secs_f64() * 1000.0)
    };
    let mut head = CallHead::new(policy);
    let mut rng = SmallRng::seed_from_u64(0);
    let mut cache = prefilled(model)?;
    let mut feed = last;
    let (mut tokens, mut grammar_ms) = (Vec::new(), Vec::new());
    let (mut rows_per_call, mut max_rows) = (0u64, 0u64);
    while head.chosen().is_none() && tokens.len() < 256 {
        let tutti_model::head::Next::Only(ids) = head.rows() else {
            anyhow::bail!("the catalog's call opens at once, under the grammar");
        };
        let ids = ids.to_vec();
        let (out, ms) = timed(&mut cache, feed, Rows::Only(&ids));
        let mut logits = out?.pop().expect("one sequence");
        grammar_ms.push(ms);
        rows_per_call += ids.len() as u64;
        max_rows = max_rows.max(ids.len() as u64);
        feed = head
            .choose_call(&mut logits, &Sampling::GREEDY, &mut rng)
            .ok_or_else(|| anyhow::anyhow!("no token continues the call"))?;
        tokens.push(feed);
    }
    let mut cache = prefilled(model)?;
    let mut full_ms = Vec::new();
    for &t in std::iter::once(&last).chain(&tokens[..tokens.len() - 1]) {
        let (out, ms) = timed(&mut cache, t, Rows::All);
        out?;
        full_ms.push(ms);
    }
    Ok(ToolDecisionReport {
        call: tok.decode(&tokens, false),
        call_tokens: tokens.len() as u64,
        rows_per_call,
        max_rows_per_token: max_rows,
        vocab_rows: model.info().vocab as u64,
        ms_per_call_grammar: grammar_ms.iter().sum(),
        ms_per_call_full: full_ms.iter().sum(),
        ms_per_step_grammar: median(grammar_ms),
        ms_per_step_full: median(full_ms),
    })
}

/// A job of `tasks` tasks through the engine on the bundled default config, with `model` as
/// the orchestrator and every expert: one turn each, a few tokens, to count prefix prefills.
async fn shared_prefix_job(model: &Path, tasks: usize) -> anyhow::Result<SharedPrefixReport> {
    let mut cfg: Config = crate::config::bundled("default").expect("bundled");
    let path = model.to_string_lossy().into_owned();
    cfg.orchestrator.model = Some(path.clone());
    cfg.orchestrator.max_turns = 1;
    cfg.orchestrator.max_tokens = 8;
    for b in &mut cfg.backends {
        if let BackendSettings::Native(m) = &mut b.settings {
            m.model = Some(path.clone());
            m.generation.max_tokens = 8;
        }
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
        grammar_calls: s.grammar_calls.load(Ordering::Relaxed),
        grammar_steps: s.grammar_steps.load(Ordering::Relaxed),
        grammar_rows: s.grammar_rows.load(Ordering::Relaxed),
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
    let tool_decision = tokio::task::block_in_place(|| tool_decision(&model, &tok))?;
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
        tool_decision,
        shared_prefix,
    })
}
