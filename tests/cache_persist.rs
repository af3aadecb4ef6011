//! The persistent cache tier: a re-run of the same job bills nothing for its deterministic calls.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn rerun_of_the_same_job_is_served_from_the_persistent_cache() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    write_tasks(&tasks, 300);
    let config = dir.path().join("cached.toml");
    let text = std::fs::read_to_string(repo("configs/toolorchestra-sim.toml")).unwrap();
    std::fs::write(&config, format!("{text}\npath = \"cache\"\n")).unwrap();

    let job = |out: &str| -> Value {
        let (o, err) = run(tutti()
            .arg("run")
            .arg(&tasks)
            .arg("-o")
            .arg(dir.path().join(out))
            .arg("--config")
            .arg(&config)
            .arg("--json"));
        assert!(o.status.success(), "{err}");
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let first = job("first.parquet");
    let billed = first["ledger"]["billed_calls"].as_u64().unwrap();
    assert!(billed > 300, "every task makes at least one call");
    assert!(
        dir.path().join("cache").exists(),
        "the cache lives beside the config"
    );

    let second = job("second.parquet");
    assert_eq!(second["ledger"]["billed_calls"], 0, "{second}");
    assert_eq!(
        second["ledger"]["cache_hits"].as_u64().unwrap(),
        billed
            + first["ledger"]["cache_hits"].as_u64().unwrap()
            + first["ledger"]["joined_calls"].as_u64().unwrap()
    );
    assert!(second["ledger"]["saved_usd"].as_f64().unwrap() > 0.0);
}
