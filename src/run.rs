//! `tutti run`: a bulk job from a task file to a Parquet file, committed as results finish.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tutti_engine::catalog::Catalog;
use tutti_engine::io::results::{commit_stream, ResultStore, COMMIT_ROWS};
use tutti_engine::io::tasks::{read_tasks, FieldError};
use tutti_engine::{Engine, EngineOptions, TaskResult};

/// Plain progress lines when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct RunArgs {
    /// Tasks: JSON Lines (.jsonl) or Parquet (.parquet) with the task schema.
    tasks: PathBuf,
    /// Output Parquet file.
    #[arg(short, long)]
    output: PathBuf,
    /// Config file; without one, the bundled simulated ToolOrchestra catalog (a simulation).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue an interrupted run: ids already in the output are skipped.
    #[arg(long)]
    resume: bool,
    /// Print one JSON summary object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn main(args: RunArgs) -> Result<ExitCode> {
    if args.config.is_none() {
        eprintln!(
            "tutti: no --config given: using the bundled configs/default.toml (the reference \
             model in-process: ~/.cache/tutti/models/gemma-3-270m-Q4_K_M.gguf)"
        );
    }
    let cfg = crate::load_config(args.config.as_ref(), "default")?;
    let catalog = Catalog::new(&cfg);
    let check = |t: &tutti_engine::Task| {
        catalog
            .check_preference(&t.preference)
            .map_err(|message| FieldError {
                field: "preference".into(),
                message,
            })
    };
    let tasks = read_tasks(&args.tasks, &check)?;
    let (store, done) = ResultStore::open(&args.output, args.resume)?;
    let total = tasks.len() as u64;
    let todo: Vec<_> = tasks
        .into_iter()
        .filter(|t| !done.contains(&t.id))
        .collect();
    let skipped = total - todo.len() as u64;

    let rt = crate::runtime()?;
    let summary = rt.block_on(async move {
        let engine = Engine::new(&cfg, EngineOptions::default())?;
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(4 * COMMIT_ROWS);
        let progress = Progress::new(total, skipped);
        let writer = tokio::spawn(write_results(rx, store, progress));
        let run = engine.run(futures::stream::iter(todo), tx, cancel.clone());
        tokio::pin!(run);
        let interrupted = tokio::select! {
            _ = &mut run => false,
            _ = tokio::signal::ctrl_c() => {
                cancel.cancel();
                true
            }
        };
        if interrupted {
            eprintln!(
                "tutti: interrupted; results committed so far are kept: \
                 run the same command with --resume to finish"
            );
            std::process::exit(130);
        }
        engine.flush();
        let (rows, rewards) = writer.await.context("the result writer panicked")??;
        let sessions = engine.env_sessions().map(|c| {
            (
                c.opened.load(std::sync::atomic::Ordering::Relaxed),
                c.closed.load(std::sync::atomic::Ordering::Relaxed),
            )
        });
        anyhow::Ok((rows, engine.ledger(), rewards, sessions))
    })?;
    let (rows, ledger, rewards, sessions) = summary;
    if args.json {
        let out = serde_json::json!({
            "output": args.output,
            "rows": rows,
            "skipped_already_done": skipped,
            "ledger": ledger,
            "rewards": rewards.count,
            "mean_reward": rewards.mean(),
            "env_sessions": sessions.map(|(opened, closed)| serde_json::json!({"opened": opened, "closed": closed})),
        });
        println!("{out}");
    } else {
        let statuses: Vec<String> = ledger
            .tasks
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        eprintln!(
            "tutti: {} rows in {} ({} run now: {}; {} already done); cost ${:.4}, {} billed calls, {} cache hits, {} joined in flight",
            rows,
            args.output.display(),
            ledger.finished(),
            statuses.join(", "),
            skipped,
            ledger.cost_usd,
            ledger.billed_calls,
            ledger.cache_hits,
            ledger.joined_calls
        );
        let (retries, opens, fallbacks) = ledger.backends.iter().fold((0, 0, 0), |(a, b, c), x| {
            (a + x.retries, b + x.breaker_opens, c + x.fallbacks)
        });
        if retries + opens + fallbacks > 0 {
            eprintln!("tutti: {retries} retries, {opens} circuit-breaker opens, {fallbacks} calls served by fallbacks");
        }
        if let Some((opened, closed)) = sessions {
            eprintln!(
                "tutti: {} of this run's episodes got a reward (mean {:.3}); environment sessions: {opened} opened, {closed} closed",
                rewards.count,
                rewards.mean().unwrap_or(0.0)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The rewards environments gave this run's episodes.
#[derive(Default)]
struct Rewards {
    count: u64,
    sum: f64,
}

impl Rewards {
    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// Commits results as they come (see [`commit_stream`]), then merges the output.
async fn write_results(
    rx: mpsc::Receiver<TaskResult>,
    store: ResultStore,
    mut progress: Progress,
) -> Result<(u64, Rewards)> {
    let mut rewards = Rewards::default();
    let store = commit_stream(rx, store, true, |rows| {
        for r in rows.iter().filter_map(|r| r.reward) {
            rewards.count += 1;
            rewards.sum += r;
        }
        progress.advance(rows.len() as u64)
    })
    .await?;
    progress.finish();
    let rows = tokio::task::spawn_blocking(move || store.finish())
        .await
        .context("the result writer panicked")??;
    Ok((rows, rewards))
}

/// A progress bar on a terminal, plain periodic lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(total: u64, done: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} tasks ({per_sec}, eta {eta})",
                )
                .expect("valid template"),
            );
            bar.set_position(done);
            bar
        });
        Progress {
            bar,
            total,
            done,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.last_line.elapsed() >= PLAIN_PROGRESS_EVERY => {
                self.last_line = Instant::now();
                self.line();
            }
            None => {}
        }
    }

    fn line(&self) {
        eprintln!(
            "tutti: {}/{} tasks done ({:.1}%), {:.0} s elapsed",
            self.done,
            self.total,
            100.0 * self.done as f64 / self.total.max(1) as f64,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish(),
            None => self.line(),
        }
    }
}
