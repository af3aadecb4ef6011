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
