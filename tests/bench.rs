//! `tutti bench` reports every figure, accounts every task and call, and the cache bills each
//! distinct request once.
//! Figures are checked for presence and consistency, never for speed.

mod common;

use common::*;
use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let (o, err) = run(tutti().arg("bench").args(args).arg("--json"));
    assert!(o.status.success(), "{err}");
    serde_json::from_slice(&o.stdout).unwrap()
}

fn finished(report: &Value) -> u64 {
    report["run"]["statuses"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

#[test]
fn toolorchestra_sim_with_baseline_reports_every_field() {
    let r = bench(&[
        "--profile",
        "toolorchestra-sim",
        "--tasks",
        "300",
        "--baseline",
        "--baseline-tasks",
        "20",
    ]);
    for key in [
        "tasks_per_s",
        "turns_per_s",
        "cost_usd",
        "billed_calls",
        "cache_hits",
        "coalescing_factor",
        "peak_rss_bytes",
    ] {
        assert!(r[key].is_number(), "missing {key}: {r}");
    }
    for q in ["p50", "p90", "p99", "max"] {
        assert!(
            r["task_latency_ms"][q].is_u64(),
            "missing task_latency_ms.{q}"
        );
    }
    assert_eq!(finished(&r), 300, "every task ends with a status");
    assert!(r["baseline"]["sampled"].as_bool().unwrap());
    assert_eq!(r["baseline"]["tasks"], 20);
    assert!(r["speedup"]["tasks_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(r["simulated"], true);
}

#[test]
fn repeated_subqueries_are_billed_once() {
    let args = [
        "--profile",
        "control-plane",
        "--tasks",
        "5000",
        "--repeat-share",
        "0.3",
    ];
    let cached = bench(&args);
    let mut off = args.to_vec();
    off.push("--no-cache");
    let uncached = bench(&off);
    assert_eq!(finished(&cached), 5000);
    assert_eq!(finished(&uncached), 5000);
    let n = |r: &Value, key: &str| r[key].as_u64().unwrap_or_else(|| panic!("no {key}: {r}"));
    // The episodes are deterministic, so both runs make the same calls; without the cache every
    // one of them is billed.
    let calls = n(&uncached, "billed_calls");
    assert_eq!(n(&uncached, "cache_hits"), 0);
    assert_eq!(n(&uncached, "joined_calls"), 0);
    assert_eq!(n(&cached, "unique_calls"), n(&uncached, "unique_calls"));
    assert!(
        n(&cached, "unique_calls") < calls,
        "the workload repeats requests"
    );
    // With it, each distinct request is billed exactly once, and every call is counted once: billed,
    // answered from the cache, or joined to an identical call in flight.
    assert_eq!(
        n(&cached, "billed_calls"),
        n(&cached, "unique_calls"),
        "{cached}"
    );
    assert_eq!(
        n(&cached, "billed_calls") + n(&cached, "cache_hits") + n(&cached, "joined_calls"),
        calls
    );
}

#[test]
fn flight_ingest_reports_rows_per_second() {
    let r = bench(&[
        "--profile",
        "flight-ingest",
        "--tasks",
        "20000",
        "--repeats",
        "2",
    ]);
    assert_eq!(r["rows"], 20000);
    assert_eq!(r["runs"].as_array().unwrap().len(), 2);
    assert!(r["rows_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["mib_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["task_file_bytes"].as_u64().unwrap() > 0, "{r}");
}

/// Whether a TrueType font for the figures is installed; CI installs one (fonts-dejavu-core).
fn font() -> bool {
    let found = std::env::var_os("TUTTI_FONT").is_some()
        || [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ]
        .iter()
        .any(|p| std::path::Path::new(p).is_file());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install a font (apt-get install fonts-dejavu-core)"
        );
        eprintln!("skipped: no font for the figures (apt-get install fonts-dejavu-core)");
    }
    found
}

/// Each named figure exists as a non-empty PNG and SVG, and the page shows it.
fn check_figures(dir: &std::path::Path, names: &[&str]) -> String {
    let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page loads nothing from the network"
    );
    for name in names {
        let png = std::fs::read(dir.join(format!("{name}.png"))).unwrap();
        assert!(
            png.len() > 1000 && png.starts_with(b"\x89PNG"),
            "{name}.png"
        );
        let svg = std::fs::read_to_string(dir.join(format!("{name}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("</svg>"), "{name}.svg");
        assert!(
            page.contains(&format!("src=\"{name}.svg\"")),
            "{name} on the page"
        );
    }
    page
}

#[test]
fn bench_with_baseline_writes_a_report_page_with_every_figure() {
    if !font() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (o, err) = run(tutti().args([
        "bench",
        "--tasks",
        "400",
        "--repeat-share",
        "0.3",
        "--baseline",
        "--baseline-tasks",
        "20",
        "--report",
        out.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{err}");
    assert!(err.contains("tutti: report in"), "{err}");
    let page = check_figures(
        &out,
        &[
            "latency_cdf",
            "throughput",
            "batch_size",
            "alias_calls",
            "alias_cost",
            "savings",
        ],
    );
    assert!(
        page.contains("baseline (naive harness)"),
        "both runs side by side"
    );
    assert!(
        page.contains("simulated"),
        "the page says the backends were simulated"
    );
}

#[test]
fn a_results_file_becomes_a_report_with_the_figures_it_has_data_for() {
    if !font() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    write_tasks(&tasks, 30);
    let results = dir.path().join("results.parquet");
    let (o, err) = run(&mut tutti_run(
        &tasks,
        &results,
        &repo("configs/toolorchestra-sim.toml"),
    ));
    assert!(o.status.success(), "{err}");
    let out = dir.path().join("report");
    let (o, err) = run(tutti().arg("report").arg(&results).arg("-o").arg(&out));
    assert!(o.status.success(), "{err}");
    let page = check_figures(
        &out,
        &["latency_cdf", "alias_calls", "alias_cost", "savings"],
    );
    assert!(!out.join("throughput.png").exists());
    assert!(
        page.contains("No throughput figure"),
        "the page says why it is missing"
    );
    // A file that is not results gets a clear error naming it.
    let (o, err) = run(tutti().arg("report").arg(&tasks).arg("-o").arg(&out));
    assert!(!o.status.success());
    assert!(err.contains("tasks.jsonl"), "{err}");
}
