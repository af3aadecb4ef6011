//! Benchmarks of the whole engine: generated workloads, figures from hdrhistogram, and the naive
//! harness ToolOrchestra's evaluation uses, run on the same workload for comparison.
//!
//! Figures are measured, never asserted: tests check that a report is complete, not how fast.

pub(crate) mod ingest;
pub(crate) mod native;
pub(crate) mod workload;

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tutti_model::scheduler::BucketSnapshot;

use crate::cache::CacheStats;
use crate::catalog::Catalog;
use crate::config::{CachePolicy, Config};
use crate::engine::{Engine, EngineError, EngineOptions};
use crate::figures::{RunFigures, Savings};
use crate::ledger::LedgerSummary;
use crate::report::{Report, Tally};
use crate::task::Task;

pub use ingest::{flight_ingest, IngestReport};
pub use native::{run as native_decode, NativeDecodeReport, NativeDecodeSpec};
use workload::generate_for;
pub use workload::{sample, WorkloadSpec};

/// A seeded ToolOrchestra-shaped workload over `cfg`'s catalog (see [`WorkloadSpec`]).
pub fn generate(spec: &WorkloadSpec, cfg: &Config) -> Vec<Task> {
    generate_for(spec, &Catalog::new(cfg))
}

pub use crate::report::Latency;

/// The figures of one run of a workload.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub tasks: u64,
    pub wall_s: f64,
    pub tasks_per_s: f64,
    pub turns_per_s: f64,
    pub task_latency_ms: Latency,
    pub cost_usd: f64,
    pub cost_per_task_usd: f64,
    /// Every call that got an answer is one of: billed, a cache hit, or joined in flight.
    pub billed_calls: u64,
    pub cache_hits: u64,
    pub joined_calls: u64,
    /// Distinct requests among the calls: with the cache on, what `billed_calls` should equal.
    pub unique_calls: u64,
    pub coalescing_factor: f64,
    pub accuracy: f64,
    /// Tasks per final status.
    pub statuses: std::collections::BTreeMap<String, u64>,
    pub ledger: LedgerSummary,
    pub cache: CacheStats,
    /// Decode steps and the mean number of sequences in a step, for batching executors.
    pub decode_steps: u64,
    pub mean_batch: f64,
    /// Sequences per decode step (for the report's figure).
    #[serde(skip)]
    pub batch_size: Option<BucketSnapshot>,
    /// When each task ended, in seconds from the start (for the report's figure).
    #[serde(skip)]
    pub finished_s: Vec<f64>,
    /// The task-latency CDF (for the report's figure).
    #[serde(skip)]
    pub latency_cdf: Vec<(f64, f64)>,
    /// The figures `tutti run` and `job-stats` report, from the result rows.
    pub report: Report,
}

/// The naive harness's figures and how tutti compares.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    pub description: String,
    /// True when the baseline ran on a seeded sample of the workload rather than all of it.
    pub sampled: bool,
    #[serde(flatten)]
    pub run: RunReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct Speedup {
    pub tasks_per_s: f64,
    pub turns_per_s: f64,
    /// Baseline dollars per task over tutti's.
    pub cost_per_task: f64,
}

/// The whole benchmark report, as `tutti bench --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub profile: String,
    /// True when the orchestrator or any backend is simulated.
    pub simulated: bool,
    pub workload_tasks: usize,
    pub repeat_share: f64,
    pub tasks_per_s: f64,
    pub turns_per_s: f64,
    pub task_latency_ms: Latency,
    pub cost_usd: f64,
    pub billed_calls: u64,
    pub cache_hits: u64,
    pub joined_calls: u64,
    pub unique_calls: u64,
    pub coalescing_factor: f64,
    pub peak_rss_bytes: u64,
    pub run: RunReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup: Option<Speedup>,
}

/// The naive harness of ToolOrchestra's evaluation: two tasks at a time, one orchestrator decode
/// and one request per backend call at a time, no cache, no collapsing of identical calls.
pub(crate) fn naive(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    c.orchestrator.max_live_tasks = 2;
    c.orchestrator.max_seqs = 1;
    for b in &mut c.backends {
        b.max_batch = 1;
        b.max_wait_ms = 0;
        b.cache = CachePolicy::Off;
    }
    c.cache.path = None;
    c
}

/// Runs `tasks` on a fresh engine built from `cfg` and measures it. Must run inside a runtime.
pub(crate) async fn run_workload(
    cfg: &Config,
    tasks: Vec<Task>,
    observe: Option<&EngineHook>,
) -> Result<RunReport, EngineError> {
    let engine = Arc::new(Engine::new(
        cfg,
        EngineOptions {
            record_trajectories: false,
            count_unique_calls: true,
            host: None,
        },
    )?);
    if let Some(hook) = observe {
        (hook.0)(engine.clone());
    }
    let n = tasks.len() as u64;
    let (tx, mut rx) = mpsc::channel::<crate::task::TaskResult>(4096);
    let started = Instant::now();
    let collect = tokio::spawn(async move {
        let mut tally = Tally::default();
        let mut finished_s = Vec::new();
        while let Some(r) = rx.recv().await {
            tally.add(&r);
            finished_s.push(started.elapsed().as_secs_f64());
        }
        (tally, finished_s)
    });
    engine
        .run(futures::stream::iter(tasks), tx, CancellationToken::new())
        .await;
    let (tally, finished_s) = collect.await.expect("collector does not panic");
    let wall_s = started.elapsed().as_secs_f64();
    let report = tally.report(wall_s);
    engine.flush();
    let ledger = engine.ledger();
    let (steps, seq_steps) = engine.scheduler_stats().map_or((0, 0), |s| {
        use std::sync::atomic::Ordering::Relaxed;
        (s.steps.load(Relaxed), s.seq_steps.load(Relaxed))
    });
    Ok(RunReport {
        tasks: n,
        wall_s,
        tasks_per_s: n as f64 / wall_s,
        turns_per_s: ledger.turns as f64 / wall_s,
        task_latency_ms: report.task_latency_ms,
        cost_usd: ledger.cost_usd,
        cost_per_task_usd: if n == 0 {
            0.0
        } else {
            ledger.cost_usd / n as f64
        },
        billed_calls: ledger.billed_calls,
        cache_hits: ledger.cache_hits,
        joined_calls: ledger.joined_calls,
        unique_calls: ledger.unique_calls.unwrap_or(0),
        coalescing_factor: ledger.coalescing_factor,
        accuracy: if ledger.graded == 0 {
            0.0
        } else {
            ledger.correct as f64 / ledger.graded as f64
        },
        statuses: ledger.tasks.clone(),
        cache: engine.cache_stats(),
        decode_steps: steps,
        mean_batch: if steps == 0 {
            0.0
        } else {
            seq_steps as f64 / steps as f64
        },
        batch_size: engine.scheduler_stats().map(|s| s.batch_size.snapshot()),
        finished_s,
        latency_cdf: tally.latency_cdf(),
        ledger,
        report,
    })
}

/// The runs of a benchmark as the report's figures draw them: tutti's run, then the baseline's.
pub fn figures(b: &BenchReport) -> Vec<RunFigures> {
    let one = |label: &str, r: &RunReport| RunFigures {
        label: label.to_string(),
        report: r.report.clone(),
        latency_cdf: r.latency_cdf.clone(),
        finished_s: r.finished_s.clone(),
        batch_size: r.batch_size.clone(),
        savings: Some(Savings {
            billed_calls: r.ledger.billed_calls,
            cache_hits: r.ledger.cache_hits,
            joined_calls: r.ledger.joined_calls,
            spent_usd: r.ledger.cost_usd,
            saved_usd: r.ledger.saved_usd,
        }),
    };
    let mut runs = vec![one("tutti", &b.run)];
    if let Some(base) = &b.baseline {
        runs.push(one("baseline (naive harness)", &base.run));
    }
    runs
}

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub profile: String,
    pub workload: WorkloadSpec,
    /// Tasks to run instead of a generated workload (`tutti bench --tasks-file`).
    pub tasks: Option<Vec<Task>>,
    /// Run the naive harness too, on at most this many tasks of the same workload.
    pub baseline_tasks: Option<usize>,
    /// Called with tutti's engine once it is built, before the workload starts (the command
    /// serves its metrics with it); not called for the baseline's.
    pub observe: Option<EngineHook>,
}

/// A function given the benchmark's engine (see [`BenchSpec::observe`]).
#[derive(Clone)]
pub struct EngineHook(pub Arc<dyn Fn(Arc<Engine>) + Send + Sync>);

impl std::fmt::Debug for EngineHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineHook")
    }
}

/// One line on the config a benchmark ran: executor, batching and cache.
pub fn describe_config(cfg: &Config) -> String {
    let o = &cfg.orchestrator;
    format!(
        "orchestrator executor `{:?}`, up to {} tasks live and {} sequences per decode step; {} \
         backends",
        o.executor,
        o.max_live_tasks,
        o.max_seqs,
        cfg.backends.len()
    )
}

/// Runs a benchmark: the workload on tutti, then optionally the naive harness.
pub async fn run_bench(cfg: &Config, spec: &BenchSpec) -> Result<BenchReport, EngineError> {
    let catalog = crate::catalog::Catalog::new(cfg);
    let tasks = match &spec.tasks {
        Some(given) => given.clone(),
        None => generate_for(&spec.workload, &catalog),
    };
    let workload_tasks = tasks.len();
    let baseline_tasks = spec.baseline_tasks.map(|k| {
        let sampled = k < tasks.len();
        (
            sampled,
            if sampled {
                sample(&tasks, k, spec.workload.seed)
            } else {
                tasks.clone()
            },
        )
    });
    let run = run_workload(cfg, tasks, spec.observe.as_ref()).await?;
    let peak_rss_bytes = peak_rss_bytes();
    let (baseline, speedup) = match baseline_tasks {
        Some((sampled, subset)) => {
            let k = subset.len();
            let b = run_workload(&naive(cfg), subset, None).await?;
            let speedup = Speedup {
                tasks_per_s: run.tasks_per_s / b.tasks_per_s,
                turns_per_s: run.turns_per_s / b.turns_per_s,
                cost_per_task: b.cost_per_task_usd / run.cost_per_task_usd,
            };
            let description = format!(
                "naive harness (2 tasks at a time, no batching, no coalescing, no cache) on {}",
                if sampled {
                    format!("a seeded sample of {k} tasks of the workload; rates are compared")
                } else {
                    "the whole workload".to_string()
                }
            );
            (
                Some(BaselineReport {
                    description,
                    sampled,
                    run: b,
                }),
                Some(speedup),
            )
        }
        None => (None, None),
    };
    Ok(BenchReport {
        profile: spec.profile.clone(),
        simulated: cfg.orchestrator.executor == crate::config::ExecutorKind::Sim
            || cfg
                .backends
                .iter()
                .any(|b| b.kind() == crate::config::BackendKind::Sim),
        workload_tasks,
        repeat_share: spec.workload.repeat_share,
        tasks_per_s: run.tasks_per_s,
        turns_per_s: run.turns_per_s,
        task_latency_ms: run.task_latency_ms,
        cost_usd: run.cost_usd,
        billed_calls: run.billed_calls,
        cache_hits: run.cache_hits,
        joined_calls: run.joined_calls,
        unique_calls: run.unique_calls,
        coalescing_factor: run.coalescing_factor,
        peak_rss_bytes,
        run,
        baseline,
        speedup,
    })
}

/// The process's peak resident set size (VmHWM), or 0 where /proc is not available.
pub(crate) fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
