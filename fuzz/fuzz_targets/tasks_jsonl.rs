//! cargo fuzz target `tasks_jsonl`: see `entries::tasks_jsonl`.
#![no_main]

#[path = "../entries.rs"]
#[allow(dead_code)]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entries::tasks_jsonl(data));
