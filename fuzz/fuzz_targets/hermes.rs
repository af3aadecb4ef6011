//! cargo fuzz target `hermes`: see `entries::hermes`.
#![no_main]

#[path = "../entries.rs"]
#[allow(dead_code)]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entries::hermes(data));
