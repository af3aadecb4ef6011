//! `tutti serve`: the Arrow Flight job server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use tutti_engine::flight::{serve, Auth};
use tutti_engine::jobs::{Jobs, ServerLimits};
use tutti_engine::{Engine, EngineOptions};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the address is printed).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Where jobs are kept (tasks, results, manifests); a restarted server resumes them.
    #[arg(long, default_value = ".tutti/server")]
    data_dir: PathBuf,
    /// Config file; without one, the bundled configs/default.toml (the reference model,
    /// in-process).
    #[arg(long)]
    config: Option<PathBuf>,
    /// File holding the bearer token clients must send (else the TUTTI_TOKEN variable). Required
    /// to listen on an address other than loopback.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Largest gRPC message accepted (one record batch of an upload), in bytes.
    #[arg(long, default_value_t = ServerLimits::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Most tasks in one job.
    #[arg(long, default_value_t = ServerLimits::default().max_tasks_per_job)]
    max_tasks_per_job: u64,
    /// Most accepted tasks without a result, over all jobs; uploads beyond it are refused.
    #[arg(long, default_value_t = ServerLimits::default().max_pending_tasks)]
    max_pending_tasks: u64,
    /// Largest prompt of one task, in bytes.
    #[arg(long, default_value_t = ServerLimits::default().max_prompt_bytes)]
    max_prompt_bytes: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free port). Read-only and
    /// without a token: bind it where job ids, counts and error messages may be seen.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve the live job page at http://ADDR/ (and /metrics, /api/jobs there too). Read-only and
    /// without a token, like --metrics-listen.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
}

/// The bearer token: from `--token-file`, else from TUTTI_TOKEN.
pub fn read_token(file: Option<&PathBuf>) -> Result<Option<String>> {
    let token = match file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("TUTTI_TOKEN").ok(),
    };
    match token {
        Some(t) if t.is_empty() => bail!("the bearer token is empty"),
        t => Ok(t),
    }
}

pub fn main(args: ServeArgs) -> Result<ExitCode> {
    let token = read_token(args.token_file.as_ref())?;
    if token.is_none() && !args.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {} without a token: anyone who can reach it could submit \
             jobs; give --token-file or set TUTTI_TOKEN",
            args.listen
        );
    }
    if args.config.is_none() {
        eprintln!(
            "tutti: no --config given: using the bundled configs/default.toml (the reference \
             model in-process: ~/.cache/tutti/models/gemma-3-270m-Q4_K_M.gguf)"
        );
    }
    let cfg = crate::load_config(args.config.as_ref(), "default")?;
    let limits = ServerLimits {
        max_message_bytes: args.max_message_bytes,
        max_tasks_per_job: args.max_tasks_per_job,
        max_pending_tasks: args.max_pending_tasks,
        max_prompt_bytes: args.max_prompt_bytes,
    };
    let metrics_listener = args
        .metrics_listen
        .map(|addr| crate::bind_http(addr, "metrics"))
        .transpose()?;
    let page_listener = args
        .http
        .map(|addr| crate::bind_http(addr, "the live job page"))
        .transpose()?;
    let rt = crate::runtime()?;
    crate::preflight(&rt, &cfg, "the server did not start")?;
    rt.block_on(async move {
        let engine = Arc::new(Engine::new(&cfg, EngineOptions::default())?);
        let jobs = Jobs::open(&args.data_dir, engine.clone(), limits)
            .with_context(|| format!("cannot open the data directory {}", args.data_dir.display()))?;
        let stop_http = tokio_util::sync::CancellationToken::new();
        let observer = tutti_engine::http::Observer::new(engine.clone(), jobs.clone());
        if let Some(listener) = metrics_listener {
            crate::serve_http(listener, observer.clone(), "metrics", stop_http.clone())?;
        }
        if let Some(listener) = page_listener {
            crate::serve_http(listener, observer, "the live job page", stop_http.clone())?;
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let (all, resumed) = jobs.counts();
        eprintln!(
            "tutti: serving Arrow Flight on grpc://{addr} (data dir {}, {} jobs, {resumed} resumed{})",
            args.data_dir.display(),
            all,
            if token.is_some() { ", bearer token required" } else { "" }
        );
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("tutti: shutting down; unfinished jobs resume at the next start");
        };
        serve(listener, jobs, Auth::new(token), shutdown).await?;
        stop_http.cancel();
        engine.flush();
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
