//! The fuzz targets' properties (`fuzz/checks.rs`) on the committed corpus and every
//! regression input, under `cargo test` on the stable toolchain: what a fuzzer once found
//! stays fixed. `fuzz/README.md` says how to run the fuzzers themselves.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::PathBuf;

/// Every file under `fuzz/corpus/<target>` and `fuzz/regressions/<target>`.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn line_path_corpus_and_regressions() {
    let inputs = inputs("line_path");
    assert!(!inputs.is_empty(), "the line_path corpus is committed");
    for (path, bytes) in inputs {
        let result = std::panic::catch_unwind(|| checks::line_path(&bytes));
        assert!(result.is_ok(), "line_path fails on {}", path.display());
    }
}

#[test]
fn config_corpus_and_regressions() {
    let inputs = inputs("config");
    assert!(!inputs.is_empty(), "the config corpus is committed");
    for (path, bytes) in inputs {
        let result = std::panic::catch_unwind(|| checks::config(&bytes));
        assert!(result.is_ok(), "config fails on {}", path.display());
    }
}
