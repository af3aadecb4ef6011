//! The entry functions of the fuzz targets, in one place: each `fuzz_targets/<name>.rs` (cargo
//! fuzz, nightly) calls `entries::<name>`, and `engine/tests/fuzz_corpus.rs` (stable, part of
//! `cargo test --workspace`) replays every file of `fuzz/corpus/<name>/` and
//! `fuzz/regressions/<name>/` through the same function.
//!
//! Each takes any bytes and calls the public function that reads that input in tutti: an error
//! is a correct answer, a panic (or an abort) is a bug. Where a function accepts its input, the
//! entry also checks that what it made reads back the same way.

use std::cell::OnceCell;
use std::io::Cursor;
use std::path::Path;

use arrow::ipc::reader::StreamReader;
use tutti_engine::config::{bundled, Config};
use tutti_engine::io::contain::{contain, quiet_contained_panics};
use tutti_engine::io::{
    preference_check, read_task_bytes, tasks_to_batch, FieldError, TaskBatchDecoder,
};
use tutti_engine::jobs::check_job_spec;
use tutti_engine::Task;

/// The check a server makes of each task's preference: the catalog of the simulated
/// `control-plane` profile (aliases `cost`, `latency` and its own), built once per thread.
fn with_check<R>(f: impl FnOnce(&dyn Fn(&Task) -> Result<(), FieldError>) -> R) -> R {
    type Check = Box<dyn Fn(&Task) -> Result<(), FieldError>>;
    thread_local! {
        static CHECK: OnceCell<Check> = const { OnceCell::new() };
    }
    CHECK.with(|cell| {
        let check = cell.get_or_init(|| {
            let cfg = bundled("control-plane").expect("a bundled profile");
            Box::new(preference_check(&cfg))
        });
        f(check.as_ref())
    })
}

/// Tasks accepted from one format are accepted again, unchanged, as an Arrow batch (the form
/// they take in a Flight upload and in a served job's task file).
fn tasks_read_back(tasks: &[Task]) {
    if tasks.is_empty() {
        return;
    }
    let batch = tasks_to_batch(tasks);
    let again = with_check(|check| {
        let mut decoder =
            TaskBatchDecoder::new("read back", &batch.schema(), check).expect("the task schema");
        decoder.decode(&batch)
    })
    .unwrap_or_else(|e| panic!("accepted tasks refused as a batch: {e}"));
    assert_eq!(again, tasks, "accepted tasks read back differently");
}

/// A model's reply, parsed for its Hermes tool call (`tutti_model::hermes::parse`, as the
/// episode loop parses every orchestrator turn). A parsed call's own text parses to a call of
/// the same name with the same argument keys.
pub fn hermes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(call) = tutti_model::hermes::parse(&text) {
        let again = tutti_model::hermes::parse(&call.text())
            .unwrap_or_else(|e| panic!("a call's own text does not parse: {e}"));
        assert_eq!(again.name, call.name);
        assert!(
            again.arguments.keys().eq(call.arguments.keys()),
            "a call's own text parses to other arguments"
        );
    }
}

/// Config TOML, as `tutti run --config` and `tutti serve --config` load it (`Config::parse`:
/// the kind keys, serde, `validate`), then the catalog built from an accepted config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::parse(text, "fuzz.toml") {
        let check = preference_check(&cfg);
        let _ = check(&Task::default());
    }
}

/// A JSON Lines task file (`tutti run TASKS.jsonl`; OpenAI batch lines when the first line has
/// `custom_id`).
pub fn tasks_jsonl(data: &[u8]) {
    let read = with_check(|check| read_task_bytes(Path::new("fuzz.jsonl"), data.to_vec(), check));
    if let Ok(file) = read {
        tasks_read_back(&file.tasks);
    }
}

/// A Parquet task file (`tutti run TASKS.parquet`).
///
/// A panic tutti contains (`tutti_engine::io::contain`: arrow-ipc and parquet panic on some
/// malformed files, and tutti turns that into an error naming the file) is an answer, not a
/// finding: `quiet_contained_panics` keeps it from libFuzzer's hook, which aborts. Any panic
/// that escapes tutti still reaches that hook.
pub fn tasks_parquet(data: &[u8]) {
    quiet_contained_panics();
    let read = with_check(|check| read_task_bytes(Path::new("fuzz.parquet"), data.to_vec(), check));
    if let Ok(file) = read {
        tasks_read_back(&file.tasks);
    }
}

/// An Arrow IPC stream of task batches, decoded and validated batch by batch with the
/// `TaskBatchDecoder` a Flight upload uses (`jobs::ingest`): the schema first, then each batch,
/// row numbers and duplicate ids across batches. Decoding is contained as the server contains
/// it (`flight::service`, DoPut).
pub fn tasks_arrow_ipc(data: &[u8]) {
    quiet_contained_panics();
    let Ok(Ok(reader)) = contain(|| StreamReader::try_new(Cursor::new(data), None)) else {
        return;
    };
    let schema = reader.schema();
    let mut batches = reader.into_iter();
    with_check(|check| {
        let Ok(mut decoder) = TaskBatchDecoder::new("job fuzz", &schema, check) else {
            return;
        };
        // The server polls its IPC decoder the same way: each message in a contained read.
        while let Ok(Some(Ok(batch))) = contain(|| batches.next()) {
            if decoder.decode(&batch).is_err() {
                return;
            }
        }
    });
}

/// A Flight job spec: the DoPut descriptor's CMD bytes (JSON), as the server parses it.
pub fn job_spec(data: &[u8]) {
    let _ = check_job_spec(data);
}
