//! Replays the fuzz corpora on stable: every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through the entry function its cargo fuzz target calls
//! (`fuzz/entries.rs`, the same file). An input may be refused; a panic fails the test, naming
//! the file. The long fuzzing runs are `scripts/fuzz.sh` (nightly; docs/fuzzing.md).
//!
//! `fuzz/known/<target>/` holds inputs that still panic inside a dependency (arrow-ipc, parquet);
//! `known_dependency_panics` (ignored) replays them: once it passes, they belong in `regressions/`.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../../fuzz/entries.rs"]
mod entries;

/// A fuzz target's entry function.
type Entry = fn(&[u8]);

const TARGETS: [(&str, Entry); 6] = [
    ("hermes", entries::hermes),
    ("config", entries::config),
    ("tasks_jsonl", entries::tasks_jsonl),
    ("tasks_parquet", entries::tasks_parquet),
    ("tasks_arrow_ipc", entries::tasks_arrow_ipc),
    ("job_spec", entries::job_spec),
];

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
    replay_from(target, entry, &["corpus", "regressions"]);
}

fn replay_from(target: &str, entry: fn(&[u8]), dirs: &[&str]) {
    let mut panicked = Vec::new();
    for path in inputs(target, dirs) {
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

#[test]
#[ignore = "inputs that still panic inside arrow-ipc or parquet (docs/fuzzing.md)"]
fn known_dependency_panics() {
    for (target, entry) in TARGETS {
        replay_from(target, entry, &["known"]);
    }
}
