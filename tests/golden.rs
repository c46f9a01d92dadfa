//! Golden fixtures: each `fixtures/golden/NAME.ndjson` replayed on its config must produce
//! exactly `NAME.expected.ndjson` (order within one input line is free, `latency_ns` is
//! ignored). `LIQSCAN_BLESS=1 cargo test --test golden` rewrites the expected files; review
//! the diff by hand before committing it.
//!
//! The generated fixtures in `fixtures/gen/` must also be exactly what `liqscan gen` writes
//! today for the arguments below (so they can be remade, and the generator stays
//! deterministic), and both engines must give their expected events.

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

/// (name, `liqscan gen` arguments besides --config-out and --out); the same lines are in
/// `fixtures/README.md`.
const GENERATED: &[(&str, &str)] = &[
    ("snapshot_mix", "--accounts 200 --symbols 8 --messages 10000 --seed 1"),
    ("faults", "--accounts 100 --symbols 6 --messages 6000 --seed 2 --fault-rate 0.05"),
    (
        "live_open",
        "--accounts 300 --symbols 10 --messages 8000 --seed 3 --no-snapshot --mark-ratio 0.7",
    ),
];

#[test]
fn generated_fixtures_are_reproducible_and_golden() {
    common::long_test("generated_fixtures_are_reproducible_and_golden");
    let bless = std::env::var_os("LIQSCAN_BLESS").is_some();
    let dir = root().join("fixtures/gen");
    let tmp = std::env::temp_dir().join(format!("liqscan-golden-gen-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for &(name, args) in GENERATED {
        let (cfg_path, out_path) = (tmp.join("config.json"), tmp.join("stream.ndjson"));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_liqscan"))
            .arg("gen")
            .args(args.split(' '))
            .arg("--config-out")
            .arg(&cfg_path)
            .arg("--out")
            .arg(&out_path)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let input = std::fs::read(dir.join(format!("{name}.ndjson"))).unwrap();
        let cfg_text = std::fs::read(dir.join(format!("{name}.config.json"))).unwrap();
        assert!(input == std::fs::read(&out_path).unwrap(), "{name}: gen writes another stream");
        assert!(cfg_text == std::fs::read(&cfg_path).unwrap(), "{name}: gen writes another config");

        let cfg = std::sync::Arc::new(
            liqscan::config::Config::load(&dir.join(format!("{name}.config.json"))).unwrap(),
        );
        let (out, _) = replay_reference(cfg.clone(), &input);
        let expected_path = dir.join(format!("{name}.expected.ndjson"));
        if bless {
            std::fs::write(&expected_path, &out).unwrap();
            continue;
        }
        let want = canonical(events(&std::fs::read_to_string(&expected_path).unwrap()));
        assert_same_events(name, &canonical(events(&out)), &want);
        let mut fast = liqscan::fast::FastEngine::new(cfg.clone());
        let mut fast_out = Vec::new();
        liqscan::replay::replay(cfg, &mut fast, &input[..], &mut fast_out).unwrap();
        let fast_out = String::from_utf8(fast_out).unwrap();
        assert_same_events(&format!("{name} (fast)"), &canonical(events(&fast_out)), &want);
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn golden_streams() {
    common::long_test("golden_streams");
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
