//! bytes → the config loader; a config it accepts must run on both engines alike (see
//! `../checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config(data));
