//! Bad input stops `tutti run` before any work, with an error naming the line or row and the field.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use common::*;

/// Runs `tutti run` on `input` and returns stderr; asserts it failed and wrote nothing.
fn rejected(input: &Path) -> String {
    let out = input.with_extension("out.parquet");
    let (o, err) = run(tutti().arg("run").arg(input).arg("-o").arg(&out));
    assert!(
        !o.status.success(),
        "bad input was accepted: {}",
        input.display()
    );
    assert!(!out.exists(), "no output may be written for bad input");
    assert!(
        !input.with_extension("out.parquet.parts").exists(),
        "no work may start"
    );
    err
}

fn jsonl(dir: &Path, name: &str, lines: &[&str]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

fn parquet(dir: &Path, name: &str, columns: Vec<(&str, ArrayRef)>) -> std::path::PathBuf {
    let p = dir.join(name);
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let file = std::fs::File::create(&p).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    p
}

fn strings(v: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

#[test]
fn malformed_json_line_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let f = jsonl(
        dir.path(),
        "t.jsonl",
        &[
            r#"{"id": "a", "prompt": "x"}"#,
            r#"{"id": "b", "prompt": "y",}"#,
        ],
    );
    let err = rejected(&f);
    assert!(err.contains("t.jsonl:2:"), "{err}");
    assert!(err.contains("malformed JSON"), "{err}");
}

#[test]
fn wrong_json_type_names_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = jsonl(
        dir.path(),
        "t.jsonl",
        &[r#"{"id": "a", "prompt": "x", "budget_usd": "lots"}"#],
    );
    let err = rejected(&f);
    assert!(
        err.contains("t.jsonl:1:") && err.contains("`budget_usd`"),
        "{err}"
    );
}

#[test]
fn missing_id_and_prompt_name_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = jsonl(
        dir.path(),
        "a.jsonl",
        &[r#"{"id": "a", "prompt": "x"}"#, "", r#"{"prompt": "y"}"#],
    );
    let err = rejected(&f);
    assert!(err.contains("a.jsonl:3") && err.contains("`id`"), "{err}");
    let f = jsonl(dir.path(), "b.jsonl", &[r#"{"id": "a"}"#]);
    let err = rejected(&f);
    assert!(
        err.contains("b.jsonl:1") && err.contains("`prompt`"),
        "{err}"
    );
}

#[test]
fn duplicate_id_names_both_lines() {
    let dir = tempfile::tempdir().unwrap();
    let f = jsonl(
        dir.path(),
        "t.jsonl",
        &[
            r#"{"id": "a", "prompt": "x"}"#,
            r#"{"id": "b", "prompt": "y"}"#,
            r#"{"id": "a", "prompt": "z"}"#,
        ],
    );
    let err = rejected(&f);
    assert!(
        err.contains("t.jsonl:3") && err.contains("duplicate id `a`") && err.contains("line 1"),
        "{err}"
    );
}

#[test]
fn unknown_preference_key_names_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = jsonl(
        dir.path(),
        "t.jsonl",
        &[r#"{"id": "a", "prompt": "x", "preference": {"gpt-9": 1.0}}"#],
    );
    let err = rejected(&f);
    assert!(
        err.contains("t.jsonl:1") && err.contains("`preference`") && err.contains("gpt-9"),
        "{err}"
    );
}

#[test]
fn parquet_wrong_column_type_names_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let f = parquet(
        dir.path(),
        "t.parquet",
        vec![
            ("id", strings(&[Some("a")])),
            ("prompt", strings(&[Some("x")])),
            ("budget_usd", strings(&[Some("lots")])),
        ],
    );
    let err = rejected(&f);
    assert!(
        err.contains("t.parquet") && err.contains("`budget_usd`") && err.contains("float64"),
        "{err}"
    );
}

#[test]
fn parquet_null_or_missing_id_and_prompt_name_row_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = parquet(
        dir.path(),
        "null.parquet",
        vec![
            ("id", strings(&[Some("a"), None])),
            ("prompt", strings(&[Some("x"), Some("y")])),
        ],
    );
    let err = rejected(&f);
    assert!(err.contains("row 2") && err.contains("`id`"), "{err}");
    let f = parquet(
        dir.path(),
        "noprompt.parquet",
        vec![("id", strings(&[Some("a")]))],
    );
    let err = rejected(&f);
    assert!(err.contains("`prompt`"), "{err}");
}

#[test]
fn parquet_duplicate_id_names_both_rows() {
    let dir = tempfile::tempdir().unwrap();
    let f = parquet(
        dir.path(),
        "dup.parquet",
        vec![
            ("id", strings(&[Some("a"), Some("b"), Some("b")])),
            ("prompt", strings(&[Some("x"), Some("y"), Some("z")])),
            (
                "budget_usd",
                Arc::new(Float64Array::from(vec![0.1, 0.2, 0.3])) as ArrayRef,
            ),
        ],
    );
    let err = rejected(&f);
    assert!(
        err.contains("row 3") && err.contains("duplicate id `b`") && err.contains("row 2"),
        "{err}"
    );
}

#[test]
fn config_error_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(repo("configs/toolorchestra-sim.toml"))
        .unwrap()
        .replace(
            "answer-math-2 = \"qwen2.5-math-7b\"",
            "answer-math-2 = \"qwen-nope\"",
        );
    std::fs::write(&cfg, text).unwrap();
    let (o, err) = run(tutti()
        .arg("run")
        .arg(repo("examples/tasks.jsonl"))
        .arg("-o")
        .arg(dir.path().join("o.parquet"))
        .arg("--config")
        .arg(&cfg));
    assert!(!o.status.success());
    assert!(
        err.contains("bad.toml")
            && err.contains("aliases.answer-math-2")
            && err.contains("qwen-nope"),
        "{err}"
    );
}

/// A run that fails at start-up (here: its model file is missing) commits nothing, so the same
/// command run again fails for the same reason, not because the first run left its output behind.
#[test]
fn a_run_that_failed_at_start_up_does_not_block_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = jsonl(dir.path(), "t.jsonl", &[r#"{"id": "a", "prompt": "p"}"#]);
    let text = std::fs::read_to_string(repo("configs/default.toml")).unwrap();
    let config = dir.path().join("missing-model.toml");
    let missing = dir.path().join("no-such-model.gguf");
    let text = text.replace(
        "~/.cache/tutti/models/gemma-3-270m-Q4_K_M.gguf",
        missing.to_str().unwrap(),
    );
    std::fs::write(&config, text).unwrap();
    let out = dir.path().join("out.parquet");
    for attempt in 0..2 {
        let (o, err) = run(&mut tutti_run(&tasks, &out, &config));
        assert!(!o.status.success(), "attempt {attempt}: {err}");
        assert!(
            err.contains("no-such-model.gguf"),
            "attempt {attempt}: {err}"
        );
        assert!(!err.contains("already exists"), "attempt {attempt}: {err}");
    }
}

/// `configs/toolorchestra-sim.toml` with `edit` applied (each `(from, to)` replaced once), written
/// as `name` in `dir`; returns its path and the 1-based line where `marker` is.
fn sim_config_with(
    dir: &Path,
    name: &str,
    edits: &[(&str, &str)],
    marker: &str,
) -> (PathBuf, usize) {
    let mut text = std::fs::read_to_string(repo("configs/toolorchestra-sim.toml")).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{from}");
        text = text.replacen(from, to, 1);
    }
    let at = text.find(marker).unwrap_or_else(|| panic!("{marker}"));
    let line = text[..at].matches('\n').count() + 1;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    (path, line)
}

/// A sandbox for the `enhance_reasoning` tool: its code runs in a `python` backend (written
/// before `[aliases]` by [`sandbox_backend`]).
const WITH_SANDBOX: (&str, &str) = (
    "Write Python code that helps solve the problem.\"",
    "Write Python code that helps solve the problem.\"\nthen = \"sandbox\"",
);

fn sandbox_backend(keys: &str) -> String {
    format!("[[backends]]\nname = \"sandbox\"\nkind = \"python\"\n{keys}\n\n[aliases]\n")
}

/// Runs `tutti run` on the bundled example with `config`; asserts it failed before any work and
/// returns stderr.
fn config_refused(dir: &Path, config: &Path) -> String {
    let out = dir.join(format!(
        "{}.out.parquet",
        config.file_stem().unwrap().to_str().unwrap()
    ));
    let (o, err) = run(&mut tutti_run(&repo("examples/tasks.jsonl"), &out, config));
    assert!(
        !o.status.success(),
        "{} was accepted: {err}",
        config.display()
    );
    assert!(!out.exists(), "no output may be written: {err}");
    let parts = out.with_extension("parquet.parts");
    assert!(!parts.exists(), "no work may start: {err}");
    err
}

/// Issue 19, B5: values that validated and then misbehaved (a scheduler thread panicking on
/// `time_scale = 1e300`, every sandbox run `[killed by signal 11]`) and cross-reference errors that
/// named the wrong key without a line. Each is refused naming the file, the line and the key.
#[test]
fn config_values_that_misbehaved_are_refused_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    // (file name, edits of the bundled config, the offending line, its key)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "scale.toml",
            vec![("time_scale = 0.001", "time_scale = 1e300".into())],
            "time_scale = 1e300",
            "simulation.time_scale",
        ),
        (
            "seqs.toml",
            vec![("max_seqs = 256", "max_seqs = 0".into())],
            "max_seqs = 0",
            "orchestrator.max_seqs",
        ),
        (
            "concurrency.toml",
            vec![("max_concurrency = 128", "max_concurrency = 0".into())],
            "max_concurrency = 0",
            "backends[0].max_concurrency",
        ),
        (
            "preference.toml",
            vec![("preference_scale = 2.0", "preference_scale = -1e300".into())],
            "preference_scale = -1e300",
            "orchestrator.preference_scale",
        ),
        (
            "memory.toml",
            vec![
                (WITH_SANDBOX.0, WITH_SANDBOX.1.into()),
                ("[aliases]\n", sandbox_backend("memory_mb = 0")),
            ],
            "memory_mb = 0",
            "backends[0].memory_mb",
        ),
        (
            "endpoint.toml",
            vec![(
                "[aliases]\n",
                "[[backends]]\nname = \"remote\"\nkind = \"openai\"\n\
                 endpoint = \"not a url\"\n\n[aliases]\n"
                    .into(),
            )],
            "endpoint = \"not a url\"",
            "backends[0].endpoint",
        ),
    ];
    for (name, edits, marker, key) in cases {
        let edits: Vec<(&str, &str)> = edits.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let (config, line) = sim_config_with(dir.path(), name, &edits, marker);
        let err = config_refused(dir.path(), &config);
        assert!(
            err.contains(&format!("{name}:{line}:1: key `{key}`: expected")),
            "{name}: expected line {line} and key `{key}`: {err}"
        );
    }
}

/// A `python` backend whose interpreter does not exist, one whose memory limit is too small for
/// Python to start, and a `retrieval` backend without its index: each is refused before any task,
/// by `tutti run` and by `tutti serve`, naming the backend.
#[test]
fn a_missing_interpreter_or_index_is_refused_before_any_task() {
    let dir = tempfile::tempdir().unwrap();
    let missing_index = dir.path().join("no-such-index");
    let retrieval = format!(
        "[[backends]]\nname = \"docs\"\nkind = \"retrieval\"\nindex = \"{}\"\n\n[aliases]\n",
        missing_index.display()
    );
    let cases = [
        (
            "python.toml",
            sandbox_backend("python = \"/no/such/python3\""),
            "no/such/python3",
        ),
        (
            "tiny.toml",
            sandbox_backend("memory_mb = 2"),
            "killed by signal",
        ),
        ("index.toml", retrieval, "no-such-index"),
    ];
    for (name, backend, named) in cases {
        // The retrieval backend serves no tool: every backend is checked, used or not.
        let mut edits = vec![("[aliases]\n", backend.as_str())];
        if name != "index.toml" {
            edits.push(WITH_SANDBOX);
        }
        let (config, _) = sim_config_with(dir.path(), name, &edits, "[aliases]");
        let err = config_refused(dir.path(), &config);
        assert!(
            err.contains("no task was run") && err.contains(named),
            "{name}: {err}"
        );
        let data = dir.path().join(format!("{name}.data"));
        let (o, err) = run(tutti()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .arg("--config")
            .arg(&config));
        assert!(!o.status.success(), "{name}: the server started: {err}");
        assert!(
            err.contains("the server did not start") && err.contains(named),
            "{name}: {err}"
        );
    }
}

/// Issue 19, B5: a preference weight of 1e308 overflowed its score silently.
#[test]
fn an_overflowing_preference_weight_names_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = jsonl(
        dir.path(),
        "t.jsonl",
        &[
            r#"{"id": "a", "prompt": "x"}"#,
            r#"{"id": "b", "prompt": "y", "preference": {"cost": 1e308}}"#,
        ],
    );
    let err = rejected(&f);
    assert!(
        err.contains("t.jsonl:2") && err.contains("preference.cost") && err.contains("1e308"),
        "{err}"
    );
}
