//! cargo fuzz target `job_spec`: see `entries::job_spec`.
#![no_main]

#[path = "../entries.rs"]
#[allow(dead_code)]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entries::job_spec(data));
