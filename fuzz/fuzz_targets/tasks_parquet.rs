//! cargo fuzz target `tasks_parquet`: see `entries::tasks_parquet`.
#![no_main]

#[path = "../entries.rs"]
#[allow(dead_code)]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entries::tasks_parquet(data));
