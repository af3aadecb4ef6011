//! cargo fuzz target `tasks_arrow_ipc`: see `entries::tasks_arrow_ipc`.
#![no_main]

#[path = "../entries.rs"]
#[allow(dead_code)]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entries::tasks_arrow_ipc(data));
