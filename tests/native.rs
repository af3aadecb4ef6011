//! The native executor end to end on the reference model (Gemma 3 270M Q4_K_M, installed by
//! `scripts/setup-model.sh`, which `.ci/run` runs): the README's main command with the default
//! config, `tutti generate`, and the native-decode benchmark. Each test skips, saying why, when
//! the model is not installed.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;

use common::*;

fn reference_model() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let p = PathBuf::from(home).join(".cache/tutti/models/gemma-3-270m-Q4_K_M.gguf");
    if p.exists() {
        Some(p)
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the reference model {} (scripts/setup-model.sh)",
            p.display()
        );
        eprintln!(
            "skipping: reference model {} not found (scripts/setup-model.sh installs it)",
            p.display()
        );
        None
    }
}

#[test]
fn the_default_config_runs_example_tasks_on_the_reference_model() {
    if reference_model().is_none() {
        return;
    }
    // The first tasks of the bundled example (the whole file takes minutes on this CPU
    // runtime; the note of issue 5 has the full run).
    let n = 4;
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(repo("examples/tasks.jsonl"))
        .unwrap()
        .lines()
        .take(n)
        .map(String::from)
        .collect();
    std::fs::write(&tasks, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("results.parquet");
    let (o, err) = run(tutti()
        .arg("run")
        .arg(&tasks)
        .arg("-o")
        .arg(&out)
        .arg("--json"));
    assert!(o.status.success(), "{err}");
    assert!(err.contains("configs/default.toml"), "{err}");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["rows"], n as u64, "{summary}");
    let ids = result_ids(&out);
    assert_eq!(ids.len(), n);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), n);
    // The orchestrator really ran: the model read and wrote tokens, turn after turn.
    let ledger = &summary["ledger"];
    assert!(
        ledger["orchestrator_tokens"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(ledger["turns"].as_u64().unwrap() >= n as u64, "{summary}");
}

#[test]
fn generate_prints_llama_cpps_greedy_completion() {
    let Some(model) = reference_model() else {
        return;
    };
    let (o, err) = run(tutti()
        .arg("generate")
        .arg("--model")
        .arg(&model)
        .arg("--prompt")
        .arg("The capital of France is")
        .arg("--max-tokens")
        .arg("24")
        .arg("--greedy"));
    assert!(o.status.success(), "{err}");
    assert!(err.contains("[2, 818, 5279, 529, 7001, 563]"), "{err}");
    // llama.cpp's pure greedy completion (llama-server, temperature 0, no repeat penalty).
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        " the capital of the country of France. It is the largest city in France. It is the \
         capital of the country of\n"
    );
}

#[test]
fn native_decode_bench_reports_every_batch_size_and_one_prefix_prefill() {
    let Some(model) = reference_model() else {
        return;
    };
    let (o, err) = run(tutti()
        .args(["bench", "--profile", "native-decode", "--json"])
        .args(["--steps", "1", "--prefill-tokens", "64", "--job-tasks", "4"])
        .arg("--model")
        .arg(&model));
    assert!(o.status.success(), "{err}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["1", "8", "32", "64"] {
        assert!(r["decode_tokens_per_s"][key].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["ms_per_step"][key].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(r["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
    let p = &r["shared_prefix"];
    let tasks = p["tasks"].as_u64().unwrap();
    assert!(tasks > 1);
    assert_eq!(
        p["prefix_prefills"], 1,
        "the shared prefix is prefilled once per job: {p}"
    );
    assert_eq!(p["prefix_hits"].as_u64().unwrap(), tasks, "{p}");
    // Each task's one turn ended in a call the grammar completed, computing few rows.
    assert_eq!(p["grammar_calls"].as_u64().unwrap(), tasks, "{p}");
    let steps = p["grammar_steps"].as_u64().unwrap();
    assert!(p["grammar_rows"].as_u64().unwrap() <= steps * 300, "{p}");
    let d = &r["tool_decision"];
    let vocab = d["vocab_rows"].as_u64().unwrap();
    assert_eq!(vocab, 262_144, "{d}");
    assert!(d["call_tokens"].as_u64().unwrap() > 0, "{d}");
    assert!(d["max_rows_per_token"].as_u64().unwrap() <= 300, "{d}");
    assert!(d["rows_per_call"].as_u64().unwrap() <= 2000, "{d}");
    let call = d["call"].as_str().unwrap();
    assert!(
        call.starts_with("<tool_call>{\"name\": ") && call.ends_with("}}</tool_call>"),
        "{d}"
    );
}
