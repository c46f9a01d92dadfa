//! bytes → lines → envelope → sequencing → validation → apply, on both engines, which must
//! agree event for event (see `../checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::line_path(data));
