//! Configs at every limit of SPEC section 2 run through the real binary on both engines and
//! give the same events; one step past each limit, the config is refused with exit 2 and the
//! rule.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::{assert_same_events, canonical, events};
use liqscan::fixed::D8;
use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("liqscan-limits-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `liqscan replay` on `engine`; returns (exit code, stdout, stderr).
fn replay(config: &Path, input: &Path, engine: &str) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_liqscan"))
        .args(["replay", "--engine", engine, "--config"])
        .arg(config)
        .arg(input)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code(), text(out.stdout), text(out.stderr))
}

/// Replays `stream` on `config` with both engines; both must exit 0 and give the same
/// events. Returns those events.
fn both_engines(name: &str, config: &str, stream: &str) -> Vec<Value> {
    let dir = scratch(name);
    let (cfg, input) = (dir.join("config.json"), dir.join("input.ndjson"));
    std::fs::write(&cfg, config).unwrap();
    std::fs::write(&input, stream).unwrap();
    let mut runs = Vec::new();
    for engine in ["fast", "reference"] {
        let (code, stdout, stderr) = replay(&cfg, &input, engine);
        assert_eq!(code, Some(0), "{name} on the {engine} engine: {stderr}");
        assert!(!stderr.contains("panicked"), "{name} on the {engine} engine: {stderr}");
        runs.push(events(&stdout));
    }
    let reference = runs.pop().unwrap();
    let fast = runs.pop().unwrap();
    assert_same_events(name, &canonical(fast), &canonical(reference.clone()));
    std::fs::remove_dir_all(&dir).unwrap();
    reference
}

fn one_symbol_config(tick: &str, step: &str, brackets: &str, default_leverage: &str) -> String {
    format!(
        r#"{{"default_margin_mode":"cross","default_leverage":{default_leverage},"symbols":[
        {{"symbol":"X","tick_size":"{tick}","step_size":"{step}","brackets":[{brackets}]}}]}}"#
    )
}

/// The largest multiple of `unit` below `limit` (both in units of 10^-8).
fn largest_below(limit: i128, unit: D8) -> D8 {
    D8((limit - 1) / unit.0 * unit.0)
}

/// A stream that drives symbol X to the extremes its tick and step allow: the largest and
/// smallest prices and sizes, wallets and margins at 10^15, funding at rates near 1, order
/// margins at their limit, cross and isolated items, queries, and lines one step past each
/// message limit.
fn extreme_stream(tick: D8, step: D8) -> String {
    let p_hi = largest_below(1_000_000_000 * 100_000_000, tick);
    let s_hi = largest_below(100_000_000 * 100_000_000, step);
    let (p_lo, s_lo) = (tick, step);
    let big = "999999999999999.99999999";
    let lines = [
        format!(r#"{{"type":"balance","account":1,"wallet":"{big}"}}"#),
        format!(r#"{{"type":"mark","symbol":"X","price":"{p_hi}"}}"#),
        format!(
            r#"{{"type":"position","account":1,"symbol":"X","size":"{s_hi}","entry_price":"{p_hi}"}}"#
        ),
        r#"{"type":"query","account":1}"#.to_owned(),
        format!(
            r#"{{"type":"position","account":1,"symbol":"X","size":"-{s_hi}","entry_price":"{p_lo}"}}"#
        ),
        r#"{"type":"query","account":1}"#.to_owned(),
        r#"{"type":"balance","account":2,"wallet":"0.00000001"}"#.to_owned(),
        format!(
            r#"{{"type":"position","account":2,"symbol":"X","size":"{s_lo}","entry_price":"{p_hi}"}}"#
        ),
        r#"{"type":"funding","symbol":"X","rate":"0.99999999"}"#.to_owned(),
        r#"{"type":"funding","symbol":"X","rate":"-0.00000001"}"#.to_owned(),
        r#"{"type":"transfer","account":2,"amount":"-0.00000001"}"#.to_owned(),
        r#"{"type":"margin_mode","account":3,"symbol":"X","mode":"isolated"}"#.to_owned(),
        format!(
            r#"{{"type":"position","account":3,"symbol":"X","size":"{s_hi}","entry_price":"{p_hi}","isolated_margin":"{big}"}}"#
        ),
        r#"{"type":"isolated_margin","account":3,"symbol":"X","amount":"-0.00000001"}"#.to_owned(),
        r#"{"type":"leverage","account":3,"symbol":"X","leverage":1}"#.to_owned(),
        r#"{"type":"leverage","account":3,"symbol":"X","leverage":4294967296}"#.to_owned(),
        format!(
            r#"{{"type":"orders","account":3,"symbol":"X","open_orders":18446744073709551615,"order_margin":"{big}"}}"#
        ),
        r#"{"type":"query","account":3}"#.to_owned(),
        format!(r#"{{"type":"mark","symbol":"X","price":"{p_lo}"}}"#),
        r#"{"type":"query","account":1}"#.to_owned(),
        r#"{"type":"query","account":3}"#.to_owned(),
        r#"{"type":"mark","symbol":"X","price":"1000000000"}"#.to_owned(),
        r#"{"type":"position","account":4,"symbol":"X","size":"100000000","entry_price":"1"}"#
            .to_owned(),
        format!(r#"{{"type":"mark","symbol":"X","price":"{p_hi}"}}"#),
        format!(r#"{{"type":"balance","account":1,"wallet":"-{big}"}}"#),
        r#"{"type":"funding","symbol":"X","rate":"0.00000001"}"#.to_owned(),
        r#"{"type":"query","account":2}"#.to_owned(),
        r#"{"type":"query","account":1}"#.to_owned(),
    ];
    lines.join("\n") + "\n"
}

fn count(evs: &[Value], ty: &str) -> usize {
    evs.iter().filter(|e| e["type"] == ty).count()
}

#[test]
fn single_symbol_configs_at_every_limit_run_the_same_on_both_engines() {
    let top = r#"{"notional_cap":"999999999999999.99","max_leverage":1,"mmr":"0.9999"}"#;
    let four = format!(
        r#"{{"notional_cap":"0.01","max_leverage":9999,"mmr":"0.0001"}},
        {{"notional_cap":"1000000","max_leverage":100,"mmr":"0.0005"}},
        {{"notional_cap":"999999999999999.98","max_leverage":2,"mmr":"0.25"}},{top}"#
    );
    let huge_leverage = "100000000000000000000000000000000000000000";
    // (label, tick, step, brackets, default_leverage)
    let cases = [
        ("largest tick, 4 + 8 decimals", "999999999.9999", "0.00000001", four.as_str(), "20"),
        ("largest tick, 8 + 4 decimals", "999999999.99999999", "0.0001", four.as_str(), "1"),
        ("largest step, 4 + 8 decimals", "0.0001", "99999999.99999999", four.as_str(), "20"),
        ("largest step, 8 + 4 decimals", "0.00000001", "99999999.9999", four.as_str(), "20"),
        ("largest tick and step", "999999999", "99999999", four.as_str(), "3"),
        ("smallest tick and step, one bracket", "0.00000001", "0.0001", top, huge_leverage),
        ("huge default leverage", "0.01", "0.01", four.as_str(), huge_leverage),
    ];
    for (label, tick, step, brackets, lev) in cases {
        let stream = extreme_stream(D8::parse(tick, 8).unwrap(), D8::parse(step, 8).unwrap());
        let evs = both_engines(label, &one_symbol_config(tick, step, brackets, lev), &stream);
        // Lines 22 and 23 are one step past the price and size limits.
        for line in [22, 23] {
            let reject = evs.iter().find(|e| e["line"] == line);
            assert_eq!(reject.map(|e| &e["code"]), Some(&Value::from("invalid")), "{label}");
        }
        // Every query is answered, and account 1 is liquidated at least once.
        assert_eq!(count(&evs, "account"), 7, "{label}: {evs:?}");
        assert!(count(&evs, "liquidation") >= 1, "{label}: {evs:?}");
    }
}

#[test]
fn configs_one_step_past_a_limit_are_refused_with_the_rule() {
    let one = r#"{"notional_cap":"100","max_leverage":10,"mmr":"0.01"}"#;
    // (label, config, fragments the message must hold)
    let cases = [
        ("tick 10^9", one_symbol_config("1000000000", "1", one, "20"), vec!["X", "below 10^9"]),
        ("step 10^8", one_symbol_config("1", "100000000", one, "20"), vec!["X", "below 10^8"]),
        ("step 10^11", one_symbol_config("1", "100000000000", one, "20"), vec!["below 10^8"]),
        (
            "13 decimals",
            one_symbol_config("0.00000001", "0.00001", one, "20"),
            vec!["X", "more than 12"],
        ),
        (
            "cap 10^15",
            one_symbol_config(
                "1",
                "1",
                r#"{"notional_cap":"1000000000000000","max_leverage":1,"mmr":"0.5"}"#,
                "20",
            ),
            vec!["X", "bracket 0", "below 10^15"],
        ),
        (
            "cap with 3 decimals",
            one_symbol_config(
                "1",
                "1",
                r#"{"notional_cap":"100.001","max_leverage":1,"mmr":"0.5"}"#,
                "20",
            ),
            vec!["X", "bracket 0", "more than 2 decimal places"],
        ),
        (
            "mmr with 5 decimals",
            one_symbol_config(
                "1",
                "1",
                r#"{"notional_cap":"100","max_leverage":1,"mmr":"0.00001"}"#,
                "20",
            ),
            vec!["X", "bracket 0", "more than 4 decimal places"],
        ),
        (
            "leverage 10^4 at the smallest mmr",
            one_symbol_config(
                "1",
                "1",
                r#"{"notional_cap":"100","max_leverage":10000,"mmr":"0.0001"}"#,
                "20",
            ),
            vec!["X", "bracket 0", "below 1/max_leverage"],
        ),
        ("default leverage 0", one_symbol_config("1", "1", one, "0"), vec!["default_leverage"]),
        ("65,536 symbols", many_symbols(65_536), vec!["65536 symbols", "at most 65535"]),
    ];
    let dir = scratch("refused");
    let (cfg, input) = (dir.join("config.json"), dir.join("input.ndjson"));
    std::fs::write(&input, "").unwrap();
    for (label, config, fragments) in cases {
        std::fs::write(&cfg, config).unwrap();
        for engine in ["fast", "reference"] {
            let (code, stdout, stderr) = replay(&cfg, &input, engine);
            assert_eq!(code, Some(2), "{label} ({engine}): {stderr}");
            assert!(stdout.is_empty(), "{label}");
            for f in &fragments {
                assert!(stderr.contains(f), "{label} ({engine}): {f:?} not in {stderr}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A config of `n` symbols S0, S1, ... with tick and step 1 and two brackets.
fn many_symbols(n: usize) -> String {
    let list: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"symbol":"S{i}","tick_size":"1","step_size":"1","brackets":[{{"notional_cap":"1000","max_leverage":10,"mmr":"0.01"}},{{"notional_cap":"100000","max_leverage":5,"mmr":"0.02"}}]}}"#
            )
        })
        .collect();
    format!(
        r#"{{"default_margin_mode":"cross","default_leverage":20,"symbols":[{}]}}"#,
        list.join(",")
    )
}

/// One `marks` message setting every one of `n` symbols to `price`: with 65,535 symbols it
/// is just under the 1 MiB line limit.
fn all_marks(n: usize, price: u32) -> String {
    let prices: Vec<String> = (0..n).map(|i| format!(r#""S{i}":"{price}""#)).collect();
    let line = format!("{{\"type\":\"marks\",\"prices\":{{{}}}}}\n", prices.join(","));
    assert!(line.len() < liqscan::protocol::MAX_LINE_BYTES, "{} bytes", line.len());
    line
}

/// Positions of `account` in the symbols `range`, one line each.
fn positions(account: u64, range: std::ops::Range<usize>) -> String {
    range
        .map(|i| {
            format!(
                "{{\"type\":\"position\",\"account\":{account},\"symbol\":\"S{i}\",\"size\":\"1\",\"entry_price\":\"100\"}}\n"
            )
        })
        .collect()
}

/// The full symbol count: every symbol index in use, marks on all of them, accounts holding
/// the first and the last symbols. (One account in every symbol is the ignored test below:
/// both engines refresh an account per position message, which makes 65,535 positions of
/// one account quadratic, minutes in a debug build.)
#[test]
fn the_largest_symbol_count_runs_the_same_on_both_engines() {
    common::long_test("the_largest_symbol_count_runs_the_same_on_both_engines");
    const N: usize = 65_535;
    let mut stream = String::from("{\"type\":\"balance\",\"account\":1,\"wallet\":\"150\"}\n");
    stream += "{\"type\":\"balance\",\"account\":2,\"wallet\":\"150\"}\n";
    stream += &positions(1, 0..64);
    stream += &positions(2, N - 64..N);
    stream += &all_marks(N, 100);
    // Each account: balance 150 against maintenance 64 * 100 * 0.01 = 64; at 98 its balance
    // is 150 - 128 = 22 < 62.72: both are liquidated by the second `marks` line.
    stream += &all_marks(N, 98);
    stream += "{\"type\":\"query\",\"account\":2}\n";
    let evs = both_engines("65,535 symbols", &many_symbols(N), &stream);
    assert_eq!(count(&evs, "liquidation"), 2, "{evs:?}");
    assert_eq!(count(&evs, "reject"), 0, "{evs:?}");
    let answer = evs.iter().find(|e| e["type"] == "account").unwrap();
    assert_eq!(answer["positions"].as_array().unwrap().len(), 64);
    assert_eq!(answer["positions"][63]["symbol"], "S65534");
}

/// One account holding a cross position in every one of 65,535 symbols: the fast engine
/// counts an account's cross positions in 16 bits, which must not wrap (with 65,536 symbols
/// it did, and the next `marks` divided by zero). The big account stays healthy: a
/// liquidation event or a query of it lists 65,535 positions, each liquidation price summing
/// all the others, which is quadratic on both engines today (hours on the reference engine).
/// Slow in a debug build; run it with `cargo test --release --test limits -- --ignored`.
#[test]
#[ignore = "minutes in a debug build: cargo test --release --test limits -- --ignored"]
fn one_account_in_every_one_of_65535_symbols() {
    const N: usize = 65_535;
    let mut stream = String::from("{\"type\":\"balance\",\"account\":1,\"wallet\":\"700000\"}\n");
    stream += &positions(1, 0..N);
    stream += "{\"type\":\"balance\",\"account\":2,\"wallet\":\"2\"}\n";
    stream += &positions(2, 0..1);
    stream += &all_marks(N, 100);
    stream += "{\"type\":\"mark\",\"symbol\":\"S0\",\"price\":\"98\"}\n";
    stream += &all_marks(N, 99);
    // Account 1: balance 700000 - 65535 against maintenance about 65535: safe throughout.
    // Account 2: balance 2 against maintenance 1 at 100; at 98 its balance is 0 < 0.98.
    let evs = both_engines("one account, 65,535 symbols", &many_symbols(N), &stream);
    assert_eq!(count(&evs, "reject"), 0, "{evs:?}");
    let liquidated: Vec<u64> = evs.iter().filter_map(|e| e["account"].as_u64()).collect();
    assert_eq!(liquidated, [2], "{evs:?}");
}

// ---- random streams on a config at the limits, through the library ---------------------

mod random {
    use std::sync::Arc;

    use liqscan::{
        config::Config, engine::At, fast::FastEngine, fixed::D8, reference::ReferenceEngine, replay,
    };
    use proptest::prelude::*;

    use super::{largest_below, one_symbol_config};
    use crate::common::{assert_same_events, canonical, events};

    /// Three symbols at the grid limits, each with brackets up to the largest cap.
    fn config() -> (Arc<Config>, Vec<(D8, D8)>) {
        let brackets = r#"{"notional_cap":"0.01","max_leverage":9999,"mmr":"0.0001"},
            {"notional_cap":"1000000","max_leverage":100,"mmr":"0.0005"},
            {"notional_cap":"999999999999999.98","max_leverage":2,"mmr":"0.25"},
            {"notional_cap":"999999999999999.99","max_leverage":1,"mmr":"0.9999"}"#;
        let grids = [
            ("999999999.9999", "0.00000001"),
            ("0.0001", "99999999.99999999"),
            ("0.00000001", "0.0001"),
        ];
        let symbols: Vec<String> = grids
            .iter()
            .enumerate()
            .map(|(i, (tick, step))| {
                let one = one_symbol_config(tick, step, brackets, "20");
                let start = one.find(r#"{"symbol""#).unwrap();
                let end = one.rfind("]}").unwrap();
                one[start..end].replacen(r#""symbol":"X""#, &format!(r#""symbol":"L{i}""#), 1)
            })
            .collect();
        let text = format!(
            r#"{{"default_margin_mode":"cross","default_leverage":100000000000000000000,"symbols":[{}]}}"#,
            symbols.join(",")
        );
        let cfg = Arc::new(Config::parse(&text).unwrap());
        let grids = grids
            .iter()
            .map(|(t, s)| (D8::parse(t, 8).unwrap(), D8::parse(s, 8).unwrap()))
            .collect();
        (cfg, grids)
    }

    /// A multiple of `unit` below `limit` (units of 10^-8): the smallest, the largest, or
    /// one in between.
    fn on_grid(unit: D8, limit: i128) -> impl Strategy<Value = D8> + Clone {
        let top = largest_below(limit, unit).0 / unit.0;
        prop_oneof![Just(1i128), Just(top), 1..=top].prop_map(move |k| D8(k * unit.0))
    }

    fn amount() -> impl Strategy<Value = String> {
        let big = 99_999_999_999_999_999_999_999i128; // 10^15 - 10^-8
        prop_oneof![Just(big), Just(-big), Just(1), Just(-1), -big..=big]
            .prop_map(|raw| D8(raw).to_string())
    }

    fn message(grids: Vec<(D8, D8)>) -> impl Strategy<Value = String> {
        let price = 1_000_000_000 * 100_000_000;
        let size = 100_000_000 * 100_000_000;
        (0..grids.len(), 1..4u64, any::<bool>()).prop_flat_map(move |(s, account, short)| {
            let (tick, step) = grids[s];
            let sym = format!("L{s}");
            let (p, q, e) = (on_grid(tick, price), on_grid(step, size), on_grid(D8(1), price));
            prop_oneof![
                4 => p.clone().prop_map({
                    let sym = sym.clone();
                    move |p| format!(r#"{{"type":"mark","symbol":"{sym}","price":"{p}"}}"#)
                }),
                1 => p.clone().prop_map({
                    let sym = sym.clone();
                    move |p| format!(r#"{{"type":"marks","prices":{{"{sym}":"{p}"}}}}"#)
                }),
                2 => amount().prop_map(move |w| {
                    format!(r#"{{"type":"balance","account":{account},"wallet":"{w}"}}"#)
                }),
                1 => amount().prop_map(move |a| {
                    format!(r#"{{"type":"transfer","account":{account},"amount":"{a}"}}"#)
                }),
                4 => (q, e).prop_map({
                    let sym = sym.clone();
                    move |(q, e)| {
                        let q = if short { format!("-{q}") } else { q.to_string() };
                        format!(
                            r#"{{"type":"position","account":{account},"symbol":"{sym}","size":"{q}","entry_price":"{e}"}}"#
                        )
                    }
                }),
                1 => (1..10_000u64).prop_map({
                    let sym = sym.clone();
                    move |l| {
                        format!(
                            r#"{{"type":"leverage","account":{account},"symbol":"{sym}","leverage":{l}}}"#
                        )
                    }
                }),
                1 => prop_oneof![Just("0.99999999"), Just("-0.99999999"), Just("0.00000001")]
                    .prop_map({
                        let sym = sym.clone();
                        move |r| format!(r#"{{"type":"funding","symbol":"{sym}","rate":"{r}"}}"#)
                    }),
                1 => Just(format!(r#"{{"type":"query","account":{account}}}"#)),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn random_streams_at_the_limits_agree(lines in prop::collection::vec(message(config().1), 1..40)) {
            let (cfg, _) = config();
            let input = lines.join("\n");
            let mut reference = ReferenceEngine::new(cfg.clone());
            let mut fast = FastEngine::new(cfg.clone());
            let (mut want, mut got) = (Vec::new(), Vec::new());
            replay::replay(cfg.clone(), &mut reference, input.as_bytes(), &mut want).unwrap();
            replay::replay(cfg, &mut fast, input.as_bytes(), &mut got).unwrap();
            let norm = |o: Vec<u8>| canonical(events(&String::from_utf8(o).unwrap()));
            assert_same_events("fast vs reference at the limits", &norm(got), &norm(want));
            prop_assert_eq!(fast.audit(), Ok(()));
            let mut swept = Vec::new();
            fast.sweep(At { line: 0, seq: 0 }, &mut |e| swept.push(e));
            prop_assert!(swept.is_empty(), "a sweep found items the messages missed: {:?}", swept);
        }
    }
}
