//! `tutti report`: a results file as an HTML page with figures.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use tutti_engine::figures::{write_report, RunFigures};
use tutti_engine::Tally;

#[derive(Args)]
pub struct ReportArgs {
    /// The results of a run: the Parquet file of `tutti run` or `tutti results`.
    results: PathBuf,
    /// The folder to write index.html and the figures into (created if needed).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn main(args: ReportArgs) -> Result<ExitCode> {
    let rows = tutti_engine::io::read_results(&args.results)
        .with_context(|| format!("cannot read the results {}", args.results.display()))?;
    let mut tally = Tally::default();
    rows.iter().for_each(|r| tally.add(r));
    let label = args
        .results
        .file_name()
        .map_or("results".into(), |n| n.to_string_lossy().into_owned());
    let run = RunFigures {
        label: label.clone(),
        // A results file does not record how long the run took: rates are left at zero.
        report: tally.report(0.0),
        latency_cdf: tally.latency_cdf(),
        finished_s: Vec::new(),
        batch_size: None,
        savings: None,
    };
    let notes = vec![format!(
        "{} result rows of {}. A results file does not record the run's duration, so rates are \
         not shown as measured.",
        rows.len(),
        args.results.display()
    )];
    let files = write_report(
        &args.output,
        &format!("tutti report: {label}"),
        &[run],
        &notes,
    )?;
    eprintln!(
        "tutti: report in {} ({} figures)",
        files.index.display(),
        files.figures.len()
    );
    Ok(ExitCode::SUCCESS)
}
