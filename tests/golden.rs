//! Golden fixtures: each `fixtures/golden/NAME.ndjson` replayed on its config must produce
//! exactly `NAME.expected.ndjson` (order within one input line is free, `latency_ns` is
//! ignored). `LIQSCAN_BLESS=1 cargo test --test golden` rewrites the expected files; review
//! the diff by hand before committing it.

mod common;

use common::*;

/// (stream, config)
const CASES: &[(&str, &str)] = &[
    ("cross_basics", "multi_tier"),
    ("isolated_single_tier", "single_tier"),
    ("bad_input", "multi_tier"),
    ("brackets", "multi_tier"),
    ("extremes", "extremes"),
];

#[test]
fn golden_streams() {
    let bless = std::env::var_os("LIQSCAN_BLESS").is_some();
    for &(name, cfg) in CASES {
        let dir = root().join("fixtures/golden");
        let input = std::fs::read(dir.join(format!("{name}.ndjson"))).unwrap();
        let (out, _) = replay_reference(config(cfg), &input);
        let expected_path = dir.join(format!("{name}.expected.ndjson"));
        if bless {
            std::fs::write(&expected_path, &out).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        assert_same_events(name, &canonical(events(&out)), &canonical(events(&want)));
    }
}
