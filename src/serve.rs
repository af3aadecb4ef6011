//! `tutti serve`: the Arrow Flight job server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tonic::transport::{Identity, ServerTlsConfig};
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
    /// File holding the bearer token clients must send (else the TUTTI_TOKEN variable); it must
    /// not be readable by others (chmod 600). Required, with --tls-cert, to listen on an address
    /// other than loopback.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve over TLS with this certificate chain (PEM); clients connect to grpc+tls://HOST:PORT.
    /// Required, with a token, to listen on an address other than loopback. See docs/serving.md.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
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
    /// Most uploads (DoPut streams) open at once over all clients; past it a new upload is
    /// refused at once with RESOURCE_EXHAUSTED. Each open upload may hold a thread and a file.
    #[arg(long, default_value_t = ServerLimits::default().max_open_uploads)]
    max_open_uploads: usize,
    /// Most uploads open at once on one connection (peer address and port).
    #[arg(long, default_value_t = ServerLimits::default().max_uploads_per_connection)]
    max_uploads_per_connection: usize,
    /// Seconds an upload may go without sending a message; a silent one is ended
    /// (DEADLINE_EXCEEDED) and nothing of it kept.
    #[arg(long, value_name = "SECONDS", default_value_t = ServerLimits::default().upload_idle_timeout.as_secs_f64())]
    upload_idle_timeout: f64,
    /// A job's storage work that fails (a commit of results on EMFILE, ENOSPC or EIO; opening
    /// its files) is retried until it works, the wait doubling from 0.1 s up to this many
    /// seconds; the error is in the job's status (`error`) and the log meanwhile.
    #[arg(long, value_name = "SECONDS", default_value_t = ServerLimits::default().storage_retry_max_delay.as_secs_f64())]
    storage_retry_max_delay: f64,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free port). Read-only and
    /// without a token: bind it where job ids, counts and error messages may be seen.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve the live job page at http://ADDR/ (and /metrics, /api/jobs there too). Read-only and
    /// without a token, like --metrics-listen.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    #[command(flatten)]
    exposure: crate::HttpExposure,
}

/// The bearer token: from `--token-file`, else from TUTTI_TOKEN. A token file others may read,
/// or others may write, is refused.
pub fn read_token(file: Option<&PathBuf>) -> Result<Option<String>> {
    let token = match file {
        Some(f) => {
            check_private(f)?;
            Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the token file {}", f.display()))?
                    .trim()
                    .to_string(),
            )
        }
        None => std::env::var("TUTTI_TOKEN").ok(),
    };
    match token {
        Some(t) if t.is_empty() => bail!("the bearer token is empty"),
        t => Ok(t),
    }
}

/// Refuses a secret file that others may read (world) or change (group or world).
fn check_private(file: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file)
        .with_context(|| format!("cannot read the token file {}", file.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o026 != 0 {
        bail!(
            "the token file {} has mode {mode:03o}: others can {}; make it private with \
             `chmod 600 {}`",
            file.display(),
            if mode & 0o022 != 0 {
                "change it"
            } else {
                "read it"
            },
            file.display()
        );
    }
    Ok(())
}

/// The TLS identity of `--tls-cert` and `--tls-key`.
fn tls_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig> {
    let read = |p: &Path, what: &str| {
        std::fs::read(p).with_context(|| format!("cannot read the TLS {what} {}", p.display()))
    };
    let (cert_pem, key_pem) = (read(cert, "certificate")?, read(key, "key")?);
    for (pem, what, path) in [
        (&cert_pem, "CERTIFICATE", cert),
        (&key_pem, "PRIVATE KEY", key),
    ] {
        if !String::from_utf8_lossy(pem).contains(&format!("{what}-----")) {
            bail!(
                "{} holds no PEM `{what}` block: expected a PEM file (see docs/serving.md)",
                path.display()
            );
        }
    }
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem)))
}

pub fn main(args: ServeArgs) -> Result<ExitCode> {
    let token = read_token(args.token_file.as_ref())?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        _ => None,
    };
    if !args.listen.ip().is_loopback() {
        let missing: Vec<&str> = [
            (
                token.is_none(),
                "a token (--token-file FILE, or TUTTI_TOKEN)",
            ),
            (tls.is_none(), "TLS (--tls-cert PEM --tls-key PEM)"),
        ]
        .iter()
        .filter(|m| m.0)
        .map(|m| m.1)
        .collect();
        if !missing.is_empty() {
            bail!(
                "refusing to listen on {} without {}: beyond loopback anyone who can reach the \
                 port could submit jobs or read results, and a token sent in clear text can be \
                 read on the way; see docs/serving.md",
                args.listen,
                missing.join(" and without ")
            );
        }
    }
    for (flag, seconds) in [
        ("--upload-idle-timeout", args.upload_idle_timeout),
        ("--storage-retry-max-delay", args.storage_retry_max_delay),
    ] {
        if !(seconds.is_finite() && seconds > 0.0 && seconds < 1e9) {
            bail!("{flag}: expected a positive number of seconds, got {seconds}");
        }
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
        max_open_uploads: args.max_open_uploads,
        max_uploads_per_connection: args.max_uploads_per_connection,
        upload_idle_timeout: Duration::from_secs_f64(args.upload_idle_timeout),
        storage_retry_max_delay: Duration::from_secs_f64(args.storage_retry_max_delay),
    };
    let metrics_listener = args
        .metrics_listen
        .map(|addr| crate::bind_http(addr, "metrics", args.exposure))
        .transpose()?;
    let page_listener = args
        .http
        .map(|addr| crate::bind_http(addr, "the live job page", args.exposure))
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
            "tutti: serving Arrow Flight on {}://{addr} (data dir {}, {} jobs, {resumed} resumed{})",
            if tls.is_some() { "grpc+tls" } else { "grpc" },
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
        serve(listener, jobs, Auth::new(token), tls, shutdown).await?;
        stop_http.cancel();
        engine.flush();
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
