//! The client commands of a tutti server: `submit`, `status`, `results`, `cancel`, `jobs`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parquet::arrow::ArrowWriter;
use tutti_engine::flight::{JobClient, JobInfo};
use tutti_engine::io::result_schema;
use tutti_engine::io::{read_tasks, tasks_to_batch};

/// Rows per record batch of an upload.
const UPLOAD_BATCH_ROWS: usize = 8192;
/// How often `submit --wait` asks for progress.
const POLL_EVERY: Duration = Duration::from_millis(250);

#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The server: grpc://HOST:PORT, or grpc+tls://HOST:PORT for a server with TLS (also
    /// TUTTI_SERVER).
    #[arg(long, env = "TUTTI_SERVER", default_value = "grpc://127.0.0.1:50051")]
    server: String,
    /// File holding the bearer token (else the TUTTI_TOKEN variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// For grpc+tls:// servers: the certificate (PEM) of the authority that signed the server's
    /// certificate, or the server's own when it is self-signed (also TUTTI_TLS_CA).
    #[arg(long, env = "TUTTI_TLS_CA", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
}

impl ServerArgs {
    async fn connect(&self) -> Result<JobClient> {
        let token = crate::serve::read_token(self.token_file.as_ref())?;
        let ca = self
            .tls_ca
            .as_ref()
            .map(|p| {
                std::fs::read(p).with_context(|| format!("cannot read --tls-ca {}", p.display()))
            })
            .transpose()?;
        Ok(JobClient::connect_with_ca(&self.server, token.as_deref(), ca.as_deref()).await?)
    }
}

#[derive(Args)]
pub struct SubmitArgs {
    /// Tasks: JSON Lines (.jsonl) or Parquet (.parquet) with the task schema.
    tasks: PathBuf,
    #[command(flatten)]
    server: ServerArgs,
    /// A name for the job.
    #[arg(long)]
    name: Option<String>,
    /// Budget in dollars for tasks that give none.
    #[arg(long)]
    budget_usd: Option<f64>,
    /// Turn limit for tasks that give none.
    #[arg(long)]
    max_turns: Option<i32>,
    /// Preference for tasks that give none: comma-separated KEY=WEIGHT pairs, each key an alias
    /// or `cost` / `latency` (for example `cost=1,gpt-5=-0.5`).
    #[arg(long, value_name = "KEY=WEIGHT,...", value_parser = parse_preference)]
    preference: Option<BTreeMap<String, f64>>,
    /// Leave trajectories out of the result rows.
    #[arg(long)]
    no_trajectories: bool,
    /// Wait for the job to end, showing progress.
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
pub struct JobArgs {
    /// The job id.
    job: String,
    #[command(flatten)]
    server: ServerArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ResultsArgs {
    /// The job id.
    job: String,
    /// Output Parquet file (results written so far).
    #[arg(short, long)]
    output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
pub struct JobsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print JSON, one object per line.
    #[arg(long)]
    json: bool,
}

fn line(info: &JobInfo) -> String {
    let counts = info.status["counts"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!(
        "{}  {:<9} {:>3.0}%  {}/{} rows{}  ${:.4}{}",
        info.status["job_id"].as_str().unwrap_or("?"),
        info.state(),
        100.0 * info.progress(),
        info.rows(),
        info.tasks(),
        if counts.is_empty() {
            String::new()
        } else {
            format!(" ({counts})")
        },
        info.status["cost_usd"].as_f64().unwrap_or(0.0),
        info.status["name"]
            .as_str()
            .map(|n| format!("  {n}"))
            .unwrap_or_default()
    )
}

pub fn submit(args: SubmitArgs) -> Result<ExitCode> {
    let tasks = read_tasks(&args.tasks, &|_| Ok(()))?;
    let spec = serde_json::json!({
        "name": args.name,
        "defaults": {
            "budget_usd": args.budget_usd,
            "max_turns": args.max_turns,
            "preference": args.preference,
        },
        "overrides": if args.no_trajectories {
            serde_json::json!({ "trajectories": false })
        } else {
            serde_json::json!({})
        },
    });
    let spec = strip_nulls(spec);
    let batches: Vec<_> = tasks
        .chunks(UPLOAD_BATCH_ROWS)
        .map(tasks_to_batch)
        .collect();
    crate::runtime()?.block_on(async move {
        let mut client = args.server.connect().await?;
        let id = client
            .submit(spec.to_string().as_bytes(), batches)
            .await
            .context("the job was not accepted")?;
        println!("{id}");
        if !args.wait {
            eprintln!("tutti: job {id} accepted ({} tasks)", tasks.len());
            return Ok(ExitCode::SUCCESS);
        }
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(tasks.len() as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} tasks ({per_sec}, eta {eta})",
                )
                .expect("valid template"),
            );
            bar
        });
        let info = loop {
            let info = client.info(&id).await?;
            if let Some(bar) = &bar {
                bar.set_position(info.rows());
            }
            if info.state() != "running" {
                break info;
            }
            tokio::time::sleep(POLL_EVERY).await;
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        eprintln!("tutti: {}", line(&info));
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// `cost=1,gpt-5=-0.5` as a preference map.
fn parse_preference(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut weights = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, weight) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not KEY=WEIGHT"))?;
        let weight: f64 = weight
            .trim()
            .parse()
            .map_err(|_| format!("`{pair}`: the weight is not a number"))?;
        if !weight.is_finite() {
            return Err(format!("`{pair}`: the weight is not finite"));
        }
        if weights.insert(key.trim().to_string(), weight).is_some() {
            return Err(format!("`{}` is given twice", key.trim()));
        }
    }
    Ok(weights)
}

/// Removes null members, so the spec carries only what the user gave.
fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        other => other,
    }
}

pub fn status(args: JobArgs) -> Result<ExitCode> {
    crate::runtime()?.block_on(async move {
        let mut client = args.server.connect().await?;
        let info = client.info(&args.job).await?;
        if args.json {
            println!("{}", info.status);
        } else {
            println!("{}", line(&info));
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

pub fn cancel(args: JobArgs) -> Result<ExitCode> {
    crate::runtime()?.block_on(async move {
        let mut client = args.server.connect().await?;
        let reply = client.cancel(&args.job).await?;
        if args.json {
            println!("{reply}");
        } else {
            eprintln!(
                "tutti: job {}: {}",
                args.job,
                match reply["state"].as_str() {
                    Some("running") => "cancelling (unfinished tasks will end `cancelled`)",
                    Some("cancelled") => "cancelled",
                    Some("done") => "already done: nothing to cancel",
                    _ => "unexpected reply",
                }
            );
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

pub fn jobs(args: JobsArgs) -> Result<ExitCode> {
    crate::runtime()?.block_on(async move {
        let mut client = args.server.connect().await?;
        for info in client.jobs().await? {
            if args.json {
                println!("{}", info.status);
            } else {
                println!("{}", line(&info));
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

pub fn results(args: ResultsArgs) -> Result<ExitCode> {
    crate::runtime()?.block_on(async move {
        let mut client = args.server.connect().await?;
        let mut stream = client.results(&args.job).await?;
        let out = &args.output;
        if out.exists() && !args.force {
            anyhow::bail!(
                "{} already exists; pass --force to replace it",
                out.display()
            );
        }
        let tmp = out.with_extension("parquet.tmp");
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut writer = ArrowWriter::try_new(file, result_schema(), None)?;
        let mut rows = 0;
        while let Some(batch) = stream.try_next().await? {
            rows += batch.num_rows();
            writer.write(&batch)?;
        }
        writer.close()?;
        std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!(
            "tutti: {rows} result rows of job {} in {}",
            args.job,
            out.display()
        );
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
