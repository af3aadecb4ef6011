//! Bad input stops `tutti run` before any work, with an error naming the line or row and the field.

mod common;

use std::path::Path;
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
