//! The `tutti` command: argument parsing and wiring. The work lives in `tutti-engine`.

mod bench;
mod client;
mod generate;
#[cfg(feature = "otlp")]
mod otlp;
mod report;
mod run;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;
use tutti_engine::Config;

/// Episodes allocate small strings from many threads at once; glibc's allocator serialises them
/// on arena locks (a third of the control-plane profile), mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tutti",
    version,
    about = "High-throughput batch routing engine for tool-orchestrating agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print less: no progress and no summary, only warnings and errors (and --json output).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Print more: -v logs what each part does (info), -vv debug detail. TUTTI_LOG, when set,
    /// wins (a tracing filter, such as `tutti_engine::coalesce=debug`).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
}

/// How much the command prints, from `-q` / `-v`.
#[derive(Debug, Clone, Copy)]
pub struct Verbosity {
    pub quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a bulk job: tasks from JSONL or Parquet, results to Parquet, resumable.
    Run(run::RunArgs),
    /// Benchmark the engine: a generated workload (simulated profiles), a task file on a real
    /// deployment, Flight ingest, or in-process decode.
    Bench(bench::BenchArgs),
    /// Build a retrieval index (BM25) from a JSON Lines corpus with fields id, title, text.
    Index(IndexArgs),
    /// Serve batch jobs over Arrow Flight (durable: a restarted server resumes its jobs).
    Serve(serve::ServeArgs),
    /// Submit a task file to a server as a job; prints the job id.
    Submit(client::SubmitArgs),
    /// Show a job's state and progress.
    Status(client::JobArgs),
    /// Write a job's results so far to a Parquet file.
    Results(client::ResultsArgs),
    /// Cancel a job: live episodes stop, unfinished tasks end `cancelled`.
    Cancel(client::JobArgs),
    /// List the server's jobs.
    Jobs(client::JobsArgs),
    /// Write a run's results as an HTML page with figures (latency CDF, calls and dollars per
    /// alias, cache savings).
    Report(report::ReportArgs),
    /// Raw completion with an in-process GGUF model (no chat template): a smoke test.
    Generate(generate::GenerateArgs),
}

#[derive(clap::Args)]
struct IndexArgs {
    /// The corpus: JSON Lines, one document per line with `id`, `title` (optional) and `text`.
    corpus: PathBuf,
    /// The index directory to create (must not exist or be empty).
    #[arg(short, long)]
    output: PathBuf,
}

fn index(args: IndexArgs) -> Result<ExitCode> {
    let stats = tutti_engine::RetrievalIndex::build(&args.corpus, &args.output)?;
    eprintln!(
        "tutti: indexed {} documents into {} in {:.2} s ({:.0} documents/s)",
        stats.documents,
        args.output.display(),
        stats.seconds,
        stats.docs_per_s()
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A malformed input file or upload that a reader panics on ends in an error naming it;
    // the panic itself is no news to the user.
    tutti_engine::io::contain::quiet_contained_panics();
    // A server says what happens to each job (info) unless told to be quiet.
    let serving = matches!(cli.command, Command::Serve(_));
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) if serving => "warn,tutti=info,tutti_engine=info",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TUTTI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(log);
    #[cfg(feature = "otlp")]
    let _exporter = match otlp::layer() {
        Ok(Some((spans, exporter))) => {
            registry.with(spans).init();
            Some(exporter)
        }
        Ok(None) => {
            registry.init();
            None
        }
        Err(e) => {
            eprintln!("tutti: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(not(feature = "otlp"))]
    registry.init();
    let verbosity = Verbosity { quiet: cli.quiet };
    let result = match cli.command {
        Command::Run(args) => run::main(args, verbosity),
        Command::Bench(args) => bench::main(args),
        Command::Index(args) => index(args),
        Command::Serve(args) => serve::main(args),
        Command::Submit(args) => client::submit(args),
        Command::Status(args) => client::status(args),
        Command::Results(args) => client::results(args),
        Command::Cancel(args) => client::cancel(args),
        Command::Jobs(args) => client::jobs(args),
        Command::Generate(args) => generate::main(args),
        Command::Report(args) => report::main(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tutti: error: {}", tutti_engine::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The config of `--config`, or of the bundled profile `default_profile` when none is given.
fn load_config(path: Option<&PathBuf>, default_profile: &str) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => tutti_engine::config::bundled(default_profile)
            .with_context(|| format!("no bundled profile `{default_profile}`")),
    }
}

/// Whether the HTTP routes may listen beyond loopback (flattened into the commands that serve
/// them).
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct HttpExposure {
    /// Let --metrics-listen / --http listen on an address other than loopback. They are
    /// read-only and take no token: whoever reaches the port sees job ids, names, counts and
    /// error messages.
    #[arg(long)]
    http_public: bool,
}

/// Binds `addr` for the HTTP routes of `what` (metrics, the live page), before any work starts,
/// so that a port in use stops the command at once. Beyond loopback only with --http-public.
fn bind_http(
    addr: std::net::SocketAddr,
    what: &str,
    exposure: HttpExposure,
) -> Result<std::net::TcpListener> {
    if !addr.ip().is_loopback() && !exposure.http_public {
        anyhow::bail!(
            "refusing to serve {what} on {addr}: beyond loopback, and these routes take no token \
             (anyone who reaches the port sees job ids, names, counts and error messages); \
             bind 127.0.0.1, or pass --http-public to mean it"
        );
    }
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} for {what}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves the HTTP routes (`/metrics`, the live page, `/api/jobs`) on `listener` on the current
/// runtime until `shutdown` is cancelled; prints the address.
fn serve_http(
    listener: std::net::TcpListener,
    observer: tutti_engine::http::Observer,
    what: &str,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let bound = listener.local_addr()?;
    eprintln!("tutti: {what} on http://{bound}/");
    tokio::spawn(async move {
        if let Err(e) = observer
            .serve(listener, async move { shutdown.cancelled().await })
            .await
        {
            tracing::error!("the HTTP server on {bound} stopped: {e}");
        }
    });
    Ok(())
}

/// Reaches every server and program `cfg` names (`tutti_engine::preflight`), printing warnings;
/// a problem is an error that says `stopped` (what did not happen because of it). Returns how
/// many were reached.
fn preflight(rt: &tokio::runtime::Runtime, cfg: &Config, stopped: &str) -> Result<usize> {
    let checked = rt.block_on(tutti_engine::preflight::check(cfg));
    for w in &checked.warnings {
        eprintln!("tutti: warning: {w}");
    }
    if !checked.ok() {
        anyhow::bail!(
            "{} of the {} servers and programs this config reaches cannot be reached; {stopped}:\n  {}",
            checked.problems.len(),
            checked.checked.max(checked.problems.len()),
            checked.problems.join("\n  ")
        );
    }
    Ok(checked.checked)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
