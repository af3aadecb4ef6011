//! Replays the fuzz corpora on stable: every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through the entry function its cargo fuzz target calls
//! (`fuzz/entries.rs`, the same file). An input may be refused; a panic fails the test, naming
//! the file. The long fuzzing runs are `scripts/fuzz.sh` (nightly; docs/fuzzing.md).
//!
//! Some regressions are inputs that arrow-ipc or parquet 60.1 panic on: tutti contains those
//! panics (`tutti_engine::io::contain`) and answers with an error, which is what they check.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../../fuzz/entries.rs"]
mod entries;

/// The files of one target under `dirs` of `fuzz/`, in name order. The corpus must not be
/// empty: a target whose seeds went missing would pass here without testing anything.
fn inputs(target: &str, dirs: &[&str]) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for &dir in dirs {
        let Ok(entries) = fs::read_dir(fuzz.join(dir).join(target)) else {
            assert_ne!(dir, "corpus", "fuzz/corpus/{target}/ is missing");
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        assert!(
            dir != "corpus" || !found.is_empty(),
            "fuzz/corpus/{target}/ is empty"
        );
        found.sort();
        files.extend(found);
    }
    files
}

fn replay(target: &str, entry: fn(&[u8])) {
    let mut panicked = Vec::new();
    for path in inputs(target, &["corpus", "regressions"]) {
        let data = fs::read(&path).expect("a corpus file");
        if catch_unwind(AssertUnwindSafe(|| entry(&data))).is_err() {
            panicked.push(path.display().to_string());
        }
    }
    assert!(
        panicked.is_empty(),
        "{target}: {} input(s) panicked: {}",
        panicked.len(),
        panicked.join(", ")
    );
}

#[test]
fn hermes_corpus_replays_without_a_panic() {
    replay("hermes", entries::hermes);
}

#[test]
fn config_corpus_replays_without_a_panic() {
    replay("config", entries::config);
}

#[test]
fn tasks_jsonl_corpus_replays_without_a_panic() {
    replay("tasks_jsonl", entries::tasks_jsonl);
}

#[test]
fn tasks_parquet_corpus_replays_without_a_panic() {
    replay("tasks_parquet", entries::tasks_parquet);
}

#[test]
fn tasks_arrow_ipc_corpus_replays_without_a_panic() {
    replay("tasks_arrow_ipc", entries::tasks_arrow_ipc);
}

#[test]
fn job_spec_corpus_replays_without_a_panic() {
    replay("job_spec", entries::job_spec);
}

/// The Parquet files parquet 60.1 panics on (found by fuzzing) are refused as unreadable,
/// naming the file, as any other broken Parquet file is.
#[test]
fn parquet_files_the_reader_panics_on_are_refused_naming_the_file() {
    let check = |_: &tutti_engine::Task| Ok(());
    let files = inputs("tasks_parquet", &["regressions"]);
    assert!(!files.is_empty());
    for path in files {
        let bytes = fs::read(&path).unwrap();
        let error = tutti_engine::io::read_task_bytes(Path::new("in.parquet"), bytes, &check)
            .map(|f| f.tasks.len())
            .expect_err("refused");
        let message = error.to_string();
        assert!(
            message.starts_with("in.parquet: not a readable Parquet file: "),
            "{}: {message}",
            path.display()
        );
    }
}
