//! `tutti bench`: runs a benchmark profile and prints its figures.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use tutti_engine::bench::{self, BenchReport, BenchSpec, RunReport, WorkloadSpec};

#[derive(Args)]
pub struct BenchArgs {
    /// Bundled profile: `toolorchestra-sim` (end-to-end simulated ToolOrchestra workload),
    /// `control-plane` (instant backends, all tasks live: tutti's own cost per turn) or
    /// `flight-ingest` (DoPut of `--tasks` rows to a server on loopback, timed to the durable ack)
    /// or `native-decode` (the in-process model's decode tokens/s at 1, 8, 32 and 64 sequences).
    #[arg(long, default_value = "toolorchestra-sim")]
    profile: String,
    /// Use this config instead of the profile's.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Tasks in the generated workload.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Share of tasks that repeat an earlier task (and so all its sub-queries).
    #[arg(long, default_value_t = 0.0)]
    repeat_share: f64,
    /// Turn the result cache off (and with it the collapsing of identical in-flight calls).
    #[arg(long)]
    no_cache: bool,
    /// Also run the naive harness (2 tasks at a time, no batching, no cache) on the same workload.
    #[arg(long)]
    baseline: bool,
    /// Tasks the naive harness runs at most (a seeded sample of the workload when fewer).
    #[arg(long, default_value_t = 200)]
    baseline_tasks: usize,
    /// Run these tasks (JSONL or Parquet) instead of a generated workload: with `--config`, this
    /// benchmarks a real deployment with the same figures as the simulated profiles.
    #[arg(long)]
    tasks_file: Option<PathBuf>,
    /// Workload seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object with every figure on stdout.
    #[arg(long)]
    json: bool,
    /// flight-ingest: uploads timed (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// native-decode: the GGUF model (default: the reference model in ~/.cache/tutti/models).
    #[arg(long)]
    model: Option<PathBuf>,
    /// native-decode: decode steps timed at each batch size (the median is reported).
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// native-decode: length of the prompt whose prefill is timed.
    #[arg(long, default_value_t = 512)]
    prefill_tokens: usize,
    /// native-decode: tasks of the job that counts shared-prefix prefills.
    #[arg(long, default_value_t = 16)]
    job_tasks: usize,
    /// Also write a report into this folder: index.html (opens offline) and PNG/SVG figures.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Serve Prometheus metrics of tutti's run at http://ADDR/metrics while it lasts.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    exposure: crate::HttpExposure,
}

pub fn main(args: BenchArgs) -> Result<ExitCode> {
    if !(0.0..1.0).contains(&args.repeat_share) {
        bail!(
            "--repeat-share must be in [0, 1), found {}",
            args.repeat_share
        );
    }
    if args.profile == "flight-ingest" {
        return ingest(&args);
    }
    if args.profile == "native-decode" {
        return native_decode(&args);
    }
    let mut cfg = match &args.config {
        Some(p) => tutti_engine::Config::load(p)?,
        None => match tutti_engine::config::bundled(&args.profile) {
            Some(c) => c,
            None => bail!(
                "unknown profile `{}`; the profiles are: {}",
                args.profile,
                tutti_engine::config::PROFILES
                    .iter()
                    .map(|p| p.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    if args.no_cache {
        for b in &mut cfg.backends {
            b.cache = tutti_engine::config::CachePolicy::Off;
        }
        cfg.cache.path = None;
    }
    let tasks = match &args.tasks_file {
        Some(path) => {
            let check = tutti_engine::io::preference_check(&cfg);
            Some(tutti_engine::io::read_tasks(path, &check)?)
        }
        None => None,
    };
    let spec = BenchSpec {
        tasks,
        profile: args
            .config
            .as_ref()
            .map_or(args.profile.clone(), |p| p.display().to_string()),
        workload: WorkloadSpec {
            tasks: args.tasks,
            seed: args.seed,
            repeat_share: args.repeat_share,
            ..WorkloadSpec::default()
        },
        baseline_tasks: args.baseline.then_some(args.baseline_tasks),
        observe: match args.metrics_listen {
            None => None,
            Some(addr) => {
                // Taken once, by tutti's run; the baseline's engine is not served.
                let listener =
                    std::sync::Mutex::new(Some(crate::bind_http(addr, "metrics", args.exposure)?));
                Some(bench::EngineHook(std::sync::Arc::new(move |engine| {
                    let Some(listener) = listener.lock().expect("not poisoned").take() else {
                        return;
                    };
                    let observer =
                        tutti_engine::http::Observer::new(engine, std::sync::Arc::new(NoJobs));
                    let forever = tokio_util::sync::CancellationToken::new();
                    if let Err(e) = crate::serve_http(listener, observer, "metrics", forever) {
                        eprintln!("tutti: warning: no metrics: {e:#}");
                    }
                })))
            }
        },
    };
    if args.report.is_some() {
        tutti_engine::figures::load_font()?;
    }
    let report = crate::runtime()?.block_on(bench::run_bench(&cfg, &spec))?;
    if let Some(dir) = &args.report {
        let title = format!("tutti bench: {}", report.profile);
        let mut notes = vec![format!(
            "{} tasks{}; {}",
            report.workload_tasks,
            if report.simulated {
                " (simulated backends or orchestrator: a workload model, not real models)"
            } else {
                ""
            },
            tutti_engine::bench::describe_config(&cfg)
        )];
        if let Some(b) = &report.baseline {
            notes.push(format!("Baseline: {}.", b.description));
        }
        let files =
            tutti_engine::figures::write_report(dir, &title, &bench::figures(&report), &notes)?;
        eprintln!(
            "tutti: report in {} ({} figures)",
            files.index.display(),
            files.figures.len()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_run(name: &str, r: &RunReport) {
    println!("{name}");
    for line in r.report.lines() {
        println!("{line}");
    }
    println!(
        "  {:<10} {} billed ({} distinct requests), {} cache hits, {} joined in flight; \
         coalescing factor {:.2} (calls served per backend batch)",
        "backends",
        r.billed_calls,
        r.unique_calls,
        r.cache_hits,
        r.joined_calls,
        r.coalescing_factor
    );
    let (retries, opens, fallbacks) = r.ledger.backends.iter().fold((0, 0, 0), |(a, b, c), x| {
        (a + x.retries, b + x.breaker_opens, c + x.fallbacks)
    });
    if retries + opens + fallbacks > 0 {
        println!(
            "  {:<10} {retries} retries, {opens} breaker opens, {fallbacks} fallbacks",
            "recovery"
        );
    }
    if r.decode_steps > 0 {
        println!(
            "  {:<10} {} decode steps, {:.1} sequences per step",
            "decode", r.decode_steps, r.mean_batch
        );
    }
}

fn print_report(r: &BenchReport) {
    println!(
        "tutti bench — {}{}",
        r.profile,
        if r.simulated {
            " — SIMULATION: simulated parts, real engine; latencies are in simulated time \
             (compressed by the config's time_scale)"
        } else {
            ""
        }
    );
    print_run("tutti", &r.run);
    println!(
        "  {:<10} {:.1} MiB",
        "peak RSS",
        r.peak_rss_bytes as f64 / (1 << 20) as f64
    );
    if let (Some(b), Some(s)) = (&r.baseline, &r.speedup) {
        print_run(&format!("baseline: {}", b.description), &b.run);
        println!(
            "speedup: tutti runs {:.1}x the tasks/s and {:.1}x the turns/s of the baseline; \
             per task it spends ${:.6} against the baseline's ${:.6}",
            s.tasks_per_s, s.turns_per_s, r.run.cost_per_task_usd, b.run.cost_per_task_usd
        );
    }
}

fn ingest(args: &BenchArgs) -> Result<ExitCode> {
    let cfg = match &args.config {
        Some(p) => tutti_engine::Config::load(p)?,
        None => tutti_engine::config::bundled("control-plane").expect("bundled"),
    };
    let workload = WorkloadSpec {
        tasks: args.tasks,
        seed: args.seed,
        ..WorkloadSpec::default()
    };
    let tasks = bench::generate(&workload, &cfg);
    let dir = tempfile::Builder::new().prefix("tutti-ingest-").tempdir()?;
    let report = crate::runtime()?.block_on(bench::flight_ingest(
        &cfg,
        &tasks,
        args.repeats.max(1),
        dir.path(),
    ))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "tutti bench — flight-ingest (DoPut over loopback gRPC, timed to the durable ack)"
        );
        println!(
            "  rows             {} in batches of {} ({:.1} MiB in memory, task file {:.1} MiB)",
            report.rows,
            report.batch_rows,
            report.bytes as f64 / (1 << 20) as f64,
            report.task_file_bytes as f64 / (1 << 20) as f64
        );
        for r in &report.runs {
            println!(
                "  run              {:.3} s: {:.0} rows/s, {:.1} MiB/s",
                r.seconds, r.rows_per_s, r.mib_per_s
            );
        }
        println!(
            "  median           {:.0} rows/s, {:.1} MiB/s",
            report.rows_per_s, report.mib_per_s
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--profile native-decode`: the in-process model's decode and prefill throughput.
fn native_decode(args: &BenchArgs) -> Result<ExitCode> {
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/tutti/models/gemma-3-270m-Q4_K_M.gguf")
        }
    };
    if !model.exists() {
        bail!(
            "model file {} not found (scripts/setup-model.sh installs the reference model; \
             --model picks another)",
            model.display()
        );
    }
    let mut spec = bench::NativeDecodeSpec::new(model);
    spec.steps = args.steps;
    spec.prefill_tokens = args.prefill_tokens;
    spec.job_tasks = args.job_tasks;
    let r = crate::runtime()?.block_on(bench::native_decode(&spec))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "native decode: {} ({}), {} threads",
        r.model, r.arch, r.threads
    );
    println!("  live seqs   tokens/s   ms/step");
    for n in spec.batch_sizes.iter().map(|n| n.to_string()) {
        println!(
            "  {:>9}   {:>8.1}   {:>7.1}",
            n, r.decode_tokens_per_s[&n], r.ms_per_step[&n]
        );
    }
    println!("  prefill     {:.1} tokens/s", r.prefill_tokens_per_s);
    let d = &r.tool_decision;
    println!(
        "  tool decision: {} ({} tokens): {} rows computed ({} at most per token; the vocabulary \
         has {}); {:.1} ms/step against {:.1} ms/step with every row ({:.1} ms against {:.1} \
         ms per call)",
        d.call,
        d.call_tokens,
        d.rows_per_call,
        d.max_rows_per_token,
        d.vocab_rows,
        d.ms_per_step_grammar,
        d.ms_per_step_full,
        d.ms_per_call_grammar,
        d.ms_per_call_full
    );
    let p = &r.shared_prefix;
    println!(
        "  shared prefix: {} tasks, prefilled {} time(s) ({} tokens), continued by {} sequences",
        p.tasks, p.prefix_prefills, p.prefix_tokens, p.prefix_hits
    );
    Ok(ExitCode::SUCCESS)
}

/// A benchmark has no jobs to show: its metrics are the engine's alone.
struct NoJobs;

impl tutti_engine::metrics::JobSource for NoJobs {
    fn jobs(&self) -> Vec<tutti_engine::metrics::JobProgress> {
        Vec::new()
    }
}
