//! `tutti run` killed with SIGKILL mid-run and resumed ends with every task exactly once.

mod common;

use std::collections::HashSet;

use common::*;

#[test]
fn killed_run_resumes_to_every_id_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    let out = dir.path().join("out.parquet");
    let parts = dir.path().join("out.parquet.parts");
    write_tasks(&tasks, 10_000);
    // The first run is slowed (calls of ~0.2–2 s, 128 tasks live) so it cannot finish in the few
    // seconds before it is killed, however loaded the machine; the resumed run is the usual
    // simulation. Which results are already done does not depend on the config.
    let slow = sim_config(dir.path(), 0.02, 128);
    let config = repo("configs/toolorchestra-sim.toml");

    let mut child = tutti()
        .arg("run")
        .arg(&tasks)
        .arg("-o")
        .arg(&out)
        .arg("--config")
        .arg(&slow)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until some results are committed, then kill without warning.
    wait_for_segments(&mut child, &parts, 2, 120);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!out.exists(), "the run was killed before it finished");

    // Without --resume the leftovers are refused rather than silently overwritten.
    let (o, err) = run(&mut tutti_run(&tasks, &out, &config));
    assert!(!o.status.success());
    assert!(err.contains("--resume"), "{err}");

    let (o, err) = run(tutti_run(&tasks, &out, &config).arg("--resume"));
    assert!(o.status.success(), "{err}");
    let ids = result_ids(&out);
    assert_eq!(ids.len(), 10_000);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 10_000);
    assert!(!parts.exists(), "segments are merged away");
}

#[test]
fn bundled_example_runs_end_to_end_in_simulation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.parquet");
    let (o, err) = run(tutti()
        .arg("run")
        .arg(repo("examples/tasks.jsonl"))
        .arg("-o")
        .arg(&out)
        .arg("--config")
        .arg(repo("configs/toolorchestra-sim.toml"))
        .arg("--json"));
    assert!(o.status.success(), "{err}");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let n = std::fs::read_to_string(repo("examples/tasks.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(summary["rows"], n as u64);
    assert_eq!(result_ids(&out).len(), n);
}
