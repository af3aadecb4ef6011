//! `tutti run`: a bulk job from a task file to a Parquet file, committed as results finish.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tutti_engine::io::{near_task_column, preference_check, read_task_file};
use tutti_engine::io::{
    shell_command, InputColumns, OutputFormat, OutputShape, Reopen, ResultStore, StoreError,
};
use tutti_engine::jobs::run_job;
use tutti_engine::metrics::{JobProgress, JobSource};
use tutti_engine::Tally;
use tutti_engine::{Engine, EngineOptions, Status};

/// Plain progress lines when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The exit status when tasks of this run ended `failed`.
pub const EXIT_TASKS_FAILED: u8 = 2;

#[derive(Args)]
#[command(after_help = "\
Exit status:
  0    every task run now ended with a result: answered, max_turns or budget_exhausted
  2    some task ended `failed` (a server, environment or the orchestrator failed it, or it wrote
       too many malformed calls): the summary and the `error` column say why, and
       `--retry failed` runs those tasks again
  1    the run did not start (bad config or tasks, an unreachable backend) or stopped on an
       error; what was committed is kept, and --resume continues
  130  interrupted (Ctrl-C); --resume continues")]
pub struct RunArgs {
    /// Tasks: JSON Lines (.jsonl, .ndjson, .json) or Parquet (.parquet) with the task schema,
    /// or OpenAI batch JSON Lines (`custom_id`, `body`); `-` reads JSON Lines from standard
    /// input. Other columns are passed through to the results.
    tasks: PathBuf,
    /// Output file: Parquet (.parquet) or JSON Lines (.jsonl, .ndjson; OpenAI batch output
    /// lines when the tasks were OpenAI batch requests). Rows are committed beside it in
    /// OUT.parts/ as they finish and merged into it at the end, with each task's `input_index`
    /// and the input's other columns.
    #[arg(short, long)]
    output: PathBuf,
    /// Config file; without one, the bundled configs/default.toml (the reference model,
    /// in-process).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue an interrupted run: ids already in the output are skipped.
    #[arg(long)]
    resume: bool,
    /// Run again the tasks whose latest row has one of these statuses (comma-separated: failed,
    /// cancelled, max_turns, budget_exhausted, answered); their new rows replace the old ones.
    /// Implies --resume.
    #[arg(long, value_delimiter = ',', value_name = "STATUSES")]
    retry: Vec<String>,
    /// Run only the first N tasks of the input.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Check everything and run nothing: the config, the tasks, the output (and what --resume
    /// would skip), that every server can be reached, and that the engine builds (models and
    /// indexes load).
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON summary object on stdout.
    #[arg(long)]
    json: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics while the run lasts (and the live page at
    /// http://ADDR/); port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    exposure: crate::HttpExposure,
}

/// A damaged result segment's error (which says the `mv` that sets it aside), followed by this
/// very command: run again, it resumes without that segment and runs its tasks again.
fn with_rerun(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::Damaged { .. } => {
            let argv: Vec<String> = std::env::args().collect();
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            anyhow::anyhow!("{e}\n  {}", shell_command(&argv))
        }
        e => e.into(),
    }
}

pub fn main(args: RunArgs, verbosity: crate::Verbosity) -> Result<ExitCode> {
    if args.config.is_none() && !verbosity.quiet {
        eprintln!(
            "tutti: no --config given: using the bundled configs/default.toml (the reference \
             model in-process: ~/.cache/tutti/models/gemma-3-270m-Q4_K_M.gguf)"
        );
    }
    OutputFormat::of(&args.output)?;
    let retry = args
        .retry
        .iter()
        .map(|s| {
            Status::parse(s.trim()).ok_or_else(|| {
                let names: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                anyhow::anyhow!(
                    "--retry: unknown status `{s}`; expected some of {}",
                    names.join(", ")
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let reopen = Reopen {
        resume: args.resume || !retry.is_empty(),
        retry,
    };
    let cfg = crate::load_config(args.config.as_ref(), "default")?;
    let file = read_task_file(&args.tasks, &preference_check(&cfg))?;
    let extras = file.extra_columns();
    if !extras.is_empty() && !verbosity.quiet {
        let named: Vec<String> = extras
            .iter()
            .map(|c| match near_task_column(c) {
                Some(task_column) => format!("{c} (did you mean `{task_column}`?)"),
                None => c.clone(),
            })
            .collect();
        eprintln!(
            "tutti: passing these input columns through to the results: {}",
            named.join(", ")
        );
    }
    let shape = OutputShape {
        input: Some(InputColumns::new(
            file.tasks.iter().map(|t| t.id.as_str()),
            file.extras,
        )),
        openai_batch: file.openai_batch,
    };
    let mut tasks = file.tasks;
    if let Some(n) = args.limit {
        tasks.truncate(n);
    }
    // Refuses an existing output without --resume before anything is reached or written.
    let done = ResultStore::done(&args.output, &reopen).map_err(with_rerun)?;
    let total = tasks.len() as u64;
    let skipped = tasks.iter().filter(|t| done.contains(&t.id)).count() as u64;

    let rt = crate::runtime()?;
    let reached = crate::preflight(&rt, &cfg, "no task was run")?;
    if args.dry_run {
        // Building the engine loads the in-process models and indexes and refuses kinds that
        // are not built; then it is dropped unused.
        rt.block_on(async { Engine::new(&cfg, EngineOptions::default()).map(drop) })?;
        eprintln!(
            "tutti: dry run: the config and {} tasks are valid; {} would run now ({} already \
             done); {} servers and programs reached; nothing was run or written",
            total,
            total - skipped,
            skipped,
            reached
        );
        return Ok(ExitCode::SUCCESS);
    }
    let metrics_listener = args
        .metrics_listen
        .map(|addr| crate::bind_http(addr, "metrics", args.exposure))
        .transpose()?;
    let (store, done) = ResultStore::open_with(&args.output, &reopen).map_err(with_rerun)?;

    let show_progress = !verbosity.quiet;
    let job = Arc::new(RunJob::new(&args.output, total, skipped));
    let summary = rt.block_on(async move {
        let engine = Arc::new(Engine::new(&cfg, EngineOptions::default())?);
        let cancel = CancellationToken::new();
        let mut progress = Progress::new(total, skipped, show_progress);
        let started = Instant::now();
        let stop_http = CancellationToken::new();
        if let Some(listener) = metrics_listener {
            let observer = tutti_engine::http::Observer::new(engine.clone(), job.clone());
            crate::serve_http(listener, observer, "metrics", stop_http.clone())?;
        }
        let committed = |rows: &[tutti_engine::TaskResult]| {
            job.commit(rows);
            progress.advance(rows.len() as u64)
        };
        let store = {
            let span = tracing::info_span!("tutti.job", job = %job.id);
            let run = run_job(
                &engine,
                tasks,
                done,
                store,
                true,
                cancel.clone(),
                tutti_engine::io::CommitRetry::none(),
                committed,
            )
            .instrument(span);
            tokio::pin!(run);
            tokio::select! {
                store = &mut run => store?,
                _ = tokio::signal::ctrl_c() => {
                    cancel.cancel();
                    eprintln!(
                        "tutti: interrupted; results committed so far are kept: \
                         run the same command with --resume to finish"
                    );
                    std::process::exit(130);
                }
            }
        };
        engine.flush();
        job.finish();
        stop_http.cancel();
        progress.finish();
        let rows = tokio::task::spawn_blocking(move || store.finish_with(&shape))
            .await
            .context("the result writer panicked")??;
        let wall_s = started.elapsed().as_secs_f64();
        let sessions = engine.env_sessions().map(|c| {
            (
                c.opened.load(std::sync::atomic::Ordering::Relaxed),
                c.closed.load(std::sync::atomic::Ordering::Relaxed),
            )
        });
        let report = job.tally.lock().expect("not poisoned").report(wall_s);
        anyhow::Ok((rows, engine.ledger(), report, sessions))
    })?;
    let (rows, ledger, report, sessions) = summary;
    let failed = report
        .statuses
        .get(Status::Failed.as_str())
        .copied()
        .unwrap_or(0);
    if args.json {
        let out = serde_json::json!({
            "output": args.output,
            "rows": rows,
            "run_now": report.tasks,
            "skipped_already_done": skipped,
            "report": report,
            "ledger": ledger,
            "env_sessions": sessions.map(|(opened, closed)| serde_json::json!({"opened": opened, "closed": closed})),
        });
        println!("{out}");
    } else if !verbosity.quiet {
        eprintln!(
            "tutti: {} rows in {} ({} run now, {} already done)",
            rows,
            args.output.display(),
            report.tasks,
            skipped
        );
        for line in report.lines() {
            eprintln!("{line}");
        }
        let (retries, opens, fallbacks) = ledger.backends.iter().fold((0, 0, 0), |(a, b, c), x| {
            (a + x.retries, b + x.breaker_opens, c + x.fallbacks)
        });
        if retries + opens + fallbacks > 0 {
            eprintln!(
                "  {:<10} {retries} retries, {opens} circuit-breaker opens, {fallbacks} calls \
                 served by fallbacks",
                "recovery"
            );
        }
        if let Some((opened, closed)) = sessions {
            eprintln!(
                "  {:<10} environment sessions: {opened} opened, {closed} closed",
                "sessions"
            );
        }
        if failed > 0 {
            eprintln!(
                "tutti: {failed} tasks failed; once the cause is fixed, `--retry failed` runs \
                 them again"
            );
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(EXIT_TASKS_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// A progress bar on a terminal, plain periodic lines otherwise.
/// The one job of `tutti run`: the tally of the rows it commits (the run's report), and what the
/// metrics and the live page show of it.
struct RunJob {
    id: String,
    tasks: u64,
    done_before: u64,
    created_ms: u64,
    tally: Mutex<Tally>,
    state: Mutex<&'static str>,
}

impl RunJob {
    fn new(output: &std::path::Path, total: u64, skipped: u64) -> RunJob {
        RunJob {
            id: output.display().to_string(),
            tasks: total,
            done_before: skipped,
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            tally: Mutex::new(Tally::default()),
            state: Mutex::new("running"),
        }
    }

    fn commit(&self, rows: &[tutti_engine::TaskResult]) {
        let mut tally = self.tally.lock().expect("not poisoned");
        rows.iter().for_each(|r| tally.add(r));
    }

    fn finish(&self) {
        *self.state.lock().expect("not poisoned") = "done";
    }
}

impl JobSource for RunJob {
    fn jobs(&self) -> Vec<JobProgress> {
        vec![JobProgress::from_tally(
            self.id.clone(),
            &self.state.lock().expect("not poisoned"),
            self.tasks,
            self.done_before,
            &self.tally.lock().expect("not poisoned"),
            self.created_ms,
        )]
    }
}

struct Progress {
    bar: Option<ProgressBar>,
    show: bool,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    /// Progress of `total` tasks, `done` of them before this run; silent unless `show`.
    fn new(total: u64, done: u64, show: bool) -> Progress {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
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
            show,
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
            None if self.show && self.last_line.elapsed() >= PLAIN_PROGRESS_EVERY => {
                self.last_line = Instant::now();
                self.line();
            }
            None => {}
        }
    }

    fn line(&self) {
        eprintln!(
            "tutti: {}/{} tasks done ({:.0}%), {:.0} s elapsed",
            self.done,
            self.total,
            100.0 * self.done as f64 / self.total.max(1) as f64,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Clears the bar (the summary that follows starts on a line of its own) and says how far
    /// the run got.
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.show {
            self.line();
        }
    }
}
