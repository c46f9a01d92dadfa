//! The fast engine against the reference engine on random streams of every message type:
//! identical events line by line (order within a line is free), the same accounts and
//! (account, symbol) pairs held afterwards (a rejected message makes none), the fast engine's
//! trigger index agrees with its books afterwards, and a full-book sweep then finds nothing new.

mod common;

use std::sync::Arc;

use common::*;
use liqscan::{
    config::{Config, Mode, SymbolIdx},
    engine::{At, Engine, RiskQuery},
    fast::FastEngine,
    protocol::{Command, Event},
    reference::ReferenceEngine,
    replay,
};
use proptest::prelude::*;

/// (symbol, tick decimals, min ticks, max ticks, step decimals, max lots) on multi_tier:
/// ranges that cross bracket edges and make liquidations common.
const SYMBOLS: [(&str, u32, i64, i64, u32, i64); 3] = [
    ("BTCUSDT", 1, 250_000, 350_000, 3, 12_000),
    ("ETHUSDT", 2, 150_000, 250_000, 3, 120_000),
    ("SOLUSDT", 3, 50_000, 150_000, 1, 20_000),
];

fn dec(units: i64, decimals: u32) -> String {
    let neg = units < 0;
    let u = units.unsigned_abs();
    let p = 10u64.pow(decimals);
    let s = if decimals == 0 {
        format!("{u}")
    } else {
        format!("{}.{:0width$}", u / p, u % p, width = decimals as usize)
    };
    if neg { format!("-{s}") } else { s }
}

fn price(sym: usize) -> impl Strategy<Value = String> {
    let (_, td, lo, hi, _, _) = SYMBOLS[sym];
    (lo..=hi).prop_map(move |t| dec(t, td))
}

fn amount(max_e2: i64) -> impl Strategy<Value = String> {
    (-max_e2..=max_e2).prop_map(|c| dec(c, 2))
}

fn message() -> impl Strategy<Value = String> {
    let acct = 1u64..=4;
    let sym = 0usize..3;
    prop_oneof![
        30 => sym.clone().prop_flat_map(price_msg),
        4 => (price(0), price(1), price(2)).prop_map(|(a, b, c)| format!(
            r#"{{"type":"marks","prices":{{"BTCUSDT":"{a}","ETHUSDT":"{b}","SOLUSDT":"{c}"}}}}"#)),
        8 => (acct.clone(), amount(2_000_000)).prop_map(|(a, w)| format!(
            r#"{{"type":"balance","account":{a},"wallet":"{w}"}}"#)),
        5 => (acct.clone(), amount(500_000)).prop_map(|(a, x)| format!(
            r#"{{"type":"transfer","account":{a},"amount":"{x}"}}"#)),
        22 => (acct.clone(), sym.clone(), any::<u8>()).prop_flat_map(|(a, s, k)| {
            let (name, _, _, _, sd, max_lots) = SYMBOLS[s];
            (Just((a, name, k)), -max_lots..=max_lots, price(s), 0i64..=800_000).prop_map(
                move |((a, name, k), lots, entry, margin)| {
                    let lots = if k % 7 == 0 { 0 } else { lots };
                    let margin = match k % 3 {
                        0 => String::new(),
                        _ => format!(r#","isolated_margin":"{}""#, dec(margin, 2)),
                    };
                    format!(
                        r#"{{"type":"position","account":{a},"symbol":"{name}","size":"{}","entry_price":"{entry}"{margin}}}"#,
                        dec(lots, sd)
                    )
                },
            )
        }),
        4 => (acct.clone(), sym.clone(), any::<bool>()).prop_map(|(a, s, iso)| format!(
            r#"{{"type":"margin_mode","account":{a},"symbol":"{}","mode":"{}"}}"#,
            SYMBOLS[s].0, if iso { "isolated" } else { "cross" })),
        4 => (acct.clone(), sym.clone(), 1u32..=130).prop_map(|(a, s, l)| format!(
            r#"{{"type":"leverage","account":{a},"symbol":"{}","leverage":{l}}}"#, SYMBOLS[s].0)),
        4 => (acct.clone(), sym.clone(), 0u32..3, 0i64..=200_000).prop_map(|(a, s, n, m)| format!(
            r#"{{"type":"orders","account":{a},"symbol":"{}","open_orders":{n},"order_margin":"{}"}}"#,
            SYMBOLS[s].0, dec(m, 2))),
        7 => (acct.clone(), sym.clone(), amount(300_000)).prop_map(|(a, s, x)| format!(
            r#"{{"type":"isolated_margin","account":{a},"symbol":"{}","amount":"{x}"}}"#, SYMBOLS[s].0)),
        4 => (sym.clone(), -100_000i64..=100_000).prop_map(|(s, r)| format!(
            r#"{{"type":"funding","symbol":"{}","rate":"{}"}}"#, SYMBOLS[s].0, dec(r, 8))),
        4 => acct.clone().prop_map(|a| format!(r#"{{"type":"query","account":{a}}}"#)),
        2 => Just(r#"{"type":"mark","symbol":"BTCUSDT","price":"30000.05"}"#.to_string()),
        1 => Just(r#"{"type":"mark","symbol":"XRPUSDT","price":"1"}"#.to_string()),
        1 => Just(r#"{"type":"mark","symbol":"#.to_string()),
        2 => (1u64..40).prop_map(|q| format!(r#"{{"type":"query","account":1,"seq":{q}}}"#)),
    ]
}

/// Messages that mostly name accounts (any u64) and pairs the stream has not seen, most of
/// them rejected by a state rule: withdrawals, margin moves, positions in the wrong mode,
/// leverage above the max, funding before a mark. Some are applied and do make what they
/// name (deposits, orders, leverage within the max, a mode change, a position in the
/// right mode), so both sides of SPEC section 5's rule are held to the reference.
fn fresh_message() -> impl Strategy<Value = String> {
    let acct =
        prop_oneof![1 => 1u64..=4, 4 => 5u64..=1_000_000, 1 => Just(0u64), 1 => Just(u64::MAX)];
    let sym = 0usize..3;
    prop_oneof![
        8 => (acct.clone(), 1i64..=50_000_000).prop_map(|(a, x)| format!(
            r#"{{"type":"transfer","account":{a},"amount":"-{}"}}"#, dec(x, 2))),
        1 => (acct.clone(), 1i64..=50_000_000).prop_map(|(a, x)| format!(
            r#"{{"type":"transfer","account":{a},"amount":"{}"}}"#, dec(x, 2))),
        5 => (acct.clone(), sym.clone(), any::<bool>(), 1i64..=5_000).prop_flat_map(|(a, s, m, lots)| {
            let (name, _, _, _, sd, _) = SYMBOLS[s];
            price(s).prop_map(move |entry| {
                let margin = if m { r#","isolated_margin":"100""# } else { "" };
                format!(
                    r#"{{"type":"position","account":{a},"symbol":"{name}","size":"{}","entry_price":"{entry}"{margin}}}"#,
                    dec(lots, sd)
                )
            })
        }),
        4 => (acct.clone(), sym.clone(), 126u64..=1_000_000).prop_map(|(a, s, l)| format!(
            r#"{{"type":"leverage","account":{a},"symbol":"{}","leverage":{l}}}"#, SYMBOLS[s].0)),
        1 => (acct.clone(), sym.clone(), 1u64..=20).prop_map(|(a, s, l)| format!(
            r#"{{"type":"leverage","account":{a},"symbol":"{}","leverage":{l}}}"#, SYMBOLS[s].0)),
        5 => (acct.clone(), sym.clone(), amount(300_000)).prop_map(|(a, s, x)| format!(
            r#"{{"type":"isolated_margin","account":{a},"symbol":"{}","amount":"{x}"}}"#, SYMBOLS[s].0)),
        2 => (acct.clone(), sym.clone(), any::<bool>()).prop_map(|(a, s, iso)| format!(
            r#"{{"type":"margin_mode","account":{a},"symbol":"{}","mode":"{}"}}"#,
            SYMBOLS[s].0, if iso { "isolated" } else { "cross" })),
        1 => (acct.clone(), sym.clone(), 0u32..3).prop_map(|(a, s, n)| format!(
            r#"{{"type":"orders","account":{a},"symbol":"{}","open_orders":{n},"order_margin":"1"}}"#,
            SYMBOLS[s].0)),
        2 => (sym.clone(), -100_000i64..=100_000).prop_map(|(s, r)| format!(
            r#"{{"type":"funding","symbol":"{}","rate":"{}"}}"#, SYMBOLS[s].0, dec(r, 8))),
        3 => acct.prop_map(|a| format!(r#"{{"type":"query","account":{a}}}"#)),
    ]
}

fn price_msg(s: usize) -> impl Strategy<Value = String> {
    price(s).prop_map(move |p| {
        format!(r#"{{"type":"mark","symbol":"{}","price":"{p}"}}"#, SYMBOLS[s].0)
    })
}

/// What an engine holds: its account ids and its (account id, symbol) pairs, sorted.
type Holdings = (Vec<u64>, Vec<(u64, u16)>);

fn holdings_fast(engine: &FastEngine) -> Holdings {
    let mut accounts: Vec<u64> = engine.accounts().collect();
    let mut pairs: Vec<(u64, u16)> = engine.pairs().map(|(a, s)| (a, s.0)).collect();
    accounts.sort_unstable();
    pairs.sort_unstable();
    (accounts, pairs)
}

fn holdings_reference(engine: &ReferenceEngine) -> Holdings {
    let mut accounts: Vec<u64> = engine.accounts().collect();
    let mut pairs: Vec<(u64, u16)> = engine.pairs().map(|(a, s)| (a, s.0)).collect();
    accounts.sort_unstable();
    pairs.sort_unstable();
    (accounts, pairs)
}

/// Asserts equal holdings, naming the first account or pair only one side holds.
fn assert_same_holdings(what: &str, got: &Holdings, want: &Holdings) {
    fn first_difference<T: Ord + Copy + std::fmt::Debug>(got: &[T], want: &[T]) -> String {
        let only_got = got.iter().find(|x| want.binary_search(x).is_err());
        let only_want = want.iter().find(|x| got.binary_search(x).is_err());
        format!("only in got: {only_got:?}, only in want: {only_want:?}")
    }
    assert!(
        got.0 == want.0,
        "{what}: accounts differ ({} vs {}): {}",
        got.0.len(),
        want.0.len(),
        first_difference(&got.0, &want.0)
    );
    assert!(
        got.1 == want.1,
        "{what}: pairs differ ({} vs {}): {}",
        got.1.len(),
        want.1.len(),
        first_difference(&got.1, &want.1)
    );
}

fn run_both(cfg: Arc<Config>, input: &[u8]) -> (Vec<String>, Vec<String>, FastEngine) {
    let mut reference = ReferenceEngine::new(cfg.clone());
    let mut fast = FastEngine::new(cfg.clone());
    let (mut out_ref, mut out_fast) = (Vec::new(), Vec::new());
    replay::replay(cfg.clone(), &mut reference, input, &mut out_ref).unwrap();
    replay::replay(cfg.clone(), &mut fast, input, &mut out_fast).unwrap();
    // Both hold the same accounts and pairs: an applied message makes what it first names,
    // a rejected one nothing (SPEC section 5), in both alike.
    assert_same_holdings(
        "fast vs reference",
        &holdings_fast(&fast),
        &holdings_reference(&reference),
    );
    // The same stream once more with every book evaluated on rayon workers, so the parallel
    // paths (normally for books of 16k+ positions) are held to the reference too.
    let mut parallel = FastEngine::new(cfg.clone()).with_parallel_min(1);
    let mut out_par = Vec::new();
    replay::replay(cfg, &mut parallel, input, &mut out_par).unwrap();
    assert_same_holdings(
        "parallel vs reference",
        &holdings_fast(&parallel),
        &holdings_reference(&reference),
    );
    let norm = |o: Vec<u8>| canonical(events(&String::from_utf8(o).unwrap()));
    let fast_events = norm(out_fast);
    assert_same_events("parallel vs sequential fast engine", &norm(out_par), &fast_events);
    // Its sweep (workers splitting every book) finds nothing the messages missed either.
    assert_eq!(parallel.audit(), Ok(()), "the parallel engine's index disagrees with its books");
    let mut swept = Vec::new();
    parallel.sweep(At { line: 0, seq: 0 }, &mut |e| swept.push(e));
    assert!(swept.is_empty(), "a parallel sweep found items the messages missed: {swept:?}");
    assert_same_reads(&mut reference, &mut fast, &mut parallel);
    (norm(out_ref), fast_events, fast)
}

/// The at-risk queries every stream is read with: several limits (none, one, a few, all),
/// each filter alone and both together.
fn risk_queries() -> Vec<RiskQuery> {
    let q =
        |limit, symbol: Option<u16>, mode| RiskQuery { limit, symbol: symbol.map(SymbolIdx), mode };
    vec![
        q(usize::MAX, None, None),
        q(0, None, None),
        q(1, None, None),
        q(3, None, None),
        q(usize::MAX, Some(0), None),
        q(2, Some(1), None),
        q(usize::MAX, None, Some(Mode::Cross)),
        q(usize::MAX, None, Some(Mode::Isolated)),
        q(usize::MAX, Some(2), Some(Mode::Cross)),
        q(1, Some(0), Some(Mode::Isolated)),
    ]
}

/// The read side after a stream: every engine gives the same at-risk answers, and each
/// engine's `account_report` equals the `account` event its own `query` emits, for every
/// account the reference engine holds (the fast engine must hold it too and report alike).
fn assert_same_reads(
    reference: &mut ReferenceEngine,
    fast: &mut FastEngine,
    parallel: &mut FastEngine,
) {
    for q in risk_queries() {
        let want = reference.at_risk(&q);
        assert!(want.len() <= q.limit, "{q:?}: {} items", want.len());
        assert_eq!(fast.at_risk(&q), want, "at-risk answers differ for {q:?}");
        assert_eq!(parallel.at_risk(&q), want, "at-risk answers differ (parallel) for {q:?}");
    }
    let at = At { line: 77, seq: 91 };
    for account in 0..=5u64 {
        let want = reference.account_report(account, at);
        for engine in [reference as &mut dyn Engine, fast as &mut dyn Engine] {
            let report = engine.account_report(account, at);
            let mut queried = Vec::new();
            engine.apply(&Command::Query { account }, at, &mut |e| queried.push(e)).unwrap();
            if let Some(report) = &report {
                assert_eq!(queried, vec![Event::Account(report.clone())], "account {account}");
            }
            if want.is_some() {
                assert_eq!(report, want, "account {account}: reports differ");
            }
        }
    }
}

static ANNOUNCED_MATCHES: std::sync::Once = std::sync::Once::new();
static ANNOUNCED_NO_TRACE: std::sync::Once = std::sync::Once::new();

/// Says once per property that it is running (it takes tens of seconds in a debug build).
fn announce_once(once: &std::sync::Once, name: &str) {
    once.call_once(|| long_test(name));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn fast_engine_matches_reference(lines in prop::collection::vec(message(), 1..60)) {
        announce_once(&ANNOUNCED_MATCHES, "fast_engine_matches_reference (3,000 streams)");
        let input = lines.join("\n");
        let (want, got, mut fast) = run_both(config("multi_tier"), input.as_bytes());
        assert_same_events("fast vs reference", &got, &want);
        prop_assert_eq!(fast.audit(), Ok(()), "the trigger index disagrees with the books");
        let mut swept = Vec::new();
        fast.sweep(At { line: 0, seq: 0 }, &mut |e| swept.push(e));
        prop_assert!(swept.is_empty(), "a sweep found items the messages missed: {:?}", swept);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// Streams rich in rejected messages that name fresh accounts and pairs, on a config
    /// whose pairs default to cross and on one whose pairs default to isolated: the same
    /// events, and (checked in `run_both`) the same accounts and pairs held afterwards.
    #[test]
    fn rejected_messages_leave_no_trace(
        lines in prop::collection::vec(prop_oneof![2 => message(), 3 => fresh_message()], 1..80),
        isolated in any::<bool>(),
    ) {
        announce_once(&ANNOUNCED_NO_TRACE, "rejected_messages_leave_no_trace (600 streams)");
        let input = lines.join("\n");
        let cfg = config(if isolated { "single_tier" } else { "multi_tier" });
        let (want, got, fast) = run_both(cfg, input.as_bytes());
        assert_same_events("fresh names: fast vs reference", &got, &want);
        prop_assert_eq!(fast.audit(), Ok(()));
    }
}

/// A million rejected withdrawals by unknown accounts once left ~100 MB behind in the fast
/// engine. Here 20,000 of them, every one rejected, leave no account on either engine; the
/// same number of deposits makes exactly that many accounts, so the count is not vacuous.
#[test]
fn rejected_withdrawals_by_unknown_accounts_make_no_account() {
    let withdrawals: Vec<String> = (0..20_000u64)
        .map(|k| {
            let a = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            format!(r#"{{"type":"transfer","account":{a},"amount":"-1"}}"#)
        })
        .collect();
    let (want, got, fast) = run_both(config("multi_tier"), withdrawals.join("\n").as_bytes());
    assert_same_events("rejected withdrawals", &got, &want);
    assert_eq!(got.len(), 20_000);
    assert!(got.iter().all(|e| e.contains("insufficient_margin")), "{:?}", got.first());
    assert_eq!(fast.accounts().count(), 0);
    assert_eq!(fast.pairs().count(), 0);
    let deposits: Vec<String> = withdrawals.iter().map(|l| l.replace("\"-1\"", "\"1\"")).collect();
    let (_, got, fast) = run_both(config("multi_tier"), deposits.join("\n").as_bytes());
    assert!(got.is_empty(), "deposits are applied silently: {:?}", got.first());
    assert_eq!(fast.accounts().count(), 20_000);
}

/// A `funding` message is all or nothing (SPEC section 5): when one holder's new balance would
/// leave SPEC section 1's range, no holder is paid, cross or isolated, on either engine; the
/// same message at a rate that keeps every balance in range then pays them all.
#[test]
fn funding_rejected_for_one_holder_pays_no_one() {
    let pos = |a: u32, extra: &str| {
        format!(
            r#"{{"type":"position","account":{a},"symbol":"BTCUSDT","size":"1","entry_price":"30000"{extra}}}"#
        )
    };
    let query = |a: u32| format!(r#"{{"type":"query","account":{a}}}"#);
    let lines = [
        r#"{"type":"balance","account":1,"wallet":"999999999999999"}"#.to_string(),
        r#"{"type":"balance","account":2,"wallet":"1000"}"#.to_string(),
        r#"{"type":"balance","account":3,"wallet":"1000"}"#.to_string(),
        r#"{"type":"margin_mode","account":3,"symbol":"BTCUSDT","mode":"isolated"}"#.to_string(),
        pos(1, ""),
        pos(2, ""),
        pos(3, r#","isolated_margin":"500""#),
        r#"{"type":"mark","symbol":"BTCUSDT","price":"30000"}"#.to_string(),
        // Longs receive 300 at -0.01: account 1's wallet would reach 10^15 + 299.
        r#"{"type":"funding","symbol":"BTCUSDT","rate":"-0.01"}"#.to_string(),
        query(1),
        query(2),
        query(3),
        // Longs pay 300 at +0.01: every balance stays in range.
        r#"{"type":"funding","symbol":"BTCUSDT","rate":"0.01"}"#.to_string(),
        query(1),
        query(2),
        query(3),
    ];
    let (want, got, fast) = run_both(config("multi_tier"), lines.join("\n").as_bytes());
    assert_same_events("funding all or nothing", &got, &want);
    assert_eq!(fast.audit(), Ok(()));
    let evs: Vec<serde_json::Value> =
        got.iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let rejects: Vec<&serde_json::Value> = evs.iter().filter(|v| v["type"] == "reject").collect();
    assert_eq!(rejects.len(), 1, "{got:?}");
    assert_eq!(
        (rejects[0]["line"].as_u64(), rejects[0]["code"].as_str()),
        (Some(9), Some("invalid"))
    );
    let seen: Vec<(String, String)> = evs
        .iter()
        .filter(|v| v["type"] == "account")
        .map(|v| {
            let p = &v["positions"][0];
            (v["wallet"].as_str().unwrap().to_string(), p["isolated_margin"].to_string())
        })
        .collect();
    let want = [
        ("999999999999999", "null"),
        ("1000", "null"),
        ("1000", r#""500""#),
        ("999999999999699", "null"),
        ("700", "null"),
        ("1000", r#""200""#),
    ];
    let want: Vec<(String, String)> =
        want.iter().map(|(w, m)| (w.to_string(), m.to_string())).collect();
    assert_eq!(seen, want);
}

/// Long walks of small marks over accounts with several cross positions, where the random
/// streams above (at most 60 lines) cannot reach: each position's share of its account's
/// room is spent a tick at a time, on one symbol or on all at once (`marks`), down into
/// liquidation, up out of it and down again. The fast engine must see every crossing the
/// reference engine sees, on the same line.
#[test]
fn long_walks_spend_cross_budgets_exactly() {
    let mut rng = liqscan::synth::Rng::new(23);
    let mut lines = Vec::new();
    for a in 1..=8u64 {
        lines.push(format!(r#"{{"type":"balance","account":{a},"wallet":"{}"}}"#, 4_000 + 900 * a));
        if a > 6 {
            lines.push(format!(
                r#"{{"type":"margin_mode","account":{a},"symbol":"ETHUSDT","mode":"isolated"}}"#
            ));
        }
        for (s, &(name, td, lo, hi, sd, _)) in SYMBOLS.iter().enumerate() {
            let lots = [3_000, 40_000, 5_000][s] * (1 + a as i64 % 3);
            let size = if (a + s as u64).is_multiple_of(2) { lots } else { -lots };
            let entry = dec((lo + hi) / 2, td);
            let margin =
                if a > 6 && name == "ETHUSDT" { r#","isolated_margin":"900""# } else { "" };
            lines.push(format!(
                r#"{{"type":"position","account":{a},"symbol":"{name}","size":"{}","entry_price":"{entry}"{margin}}}"#,
                dec(size, sd)
            ));
        }
    }
    // Each symbol walks from its middle in steps of 0 to 40 ticks, with a drift that turns
    // every 700 lines, reflected at its range.
    let mut ticks: Vec<i64> = SYMBOLS.iter().map(|&(_, _, lo, hi, _, _)| (lo + hi) / 2).collect();
    let mut step = |s: usize, k: usize, rng: &mut liqscan::synth::Rng| {
        let (_, td, lo, hi, _, _) = SYMBOLS[s];
        let drift = if (k / 700).is_multiple_of(2) { -12 } else { 12 };
        let next = ticks[s] + drift * (s as i64 + 1) + rng.below(41) as i64 - 20;
        ticks[s] = if next < lo || next > hi { ticks[s] - (next - ticks[s]) } else { next };
        (SYMBOLS[s].0, dec(ticks[s], td))
    };
    for k in 0..4_000 {
        if rng.below(5) == 0 {
            let prices: Vec<String> = (0..SYMBOLS.len())
                .map(|s| {
                    let (name, p) = step(s, k, &mut rng);
                    format!(r#""{name}":"{p}""#)
                })
                .collect();
            lines.push(format!(r#"{{"type":"marks","prices":{{{}}}}}"#, prices.join(",")));
        } else {
            let (name, p) = step(rng.below(SYMBOLS.len() as u64) as usize, k, &mut rng);
            lines.push(format!(r#"{{"type":"mark","symbol":"{name}","price":"{p}"}}"#));
        }
    }
    let input = lines.join("\n");
    let (want, got, fast) = run_both(config("multi_tier"), input.as_bytes());
    assert_same_events("long walks", &got, &want);
    assert_eq!(fast.audit(), Ok(()));
    // The walk must exercise what it is for: many crossings, and items that crossed again
    // after recovering (a liquidation event on the same item more than once).
    let liquidations: Vec<&String> = got.iter().filter(|e| e.contains("liquidation")).collect();
    let mut items: Vec<String> = liquidations
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            format!("{}/{}/{}", v["account"], v["mode"], v["symbol"])
        })
        .collect();
    let total = items.len();
    items.sort();
    items.dedup();
    assert!(total >= 20, "the walk liquidates often: {total} events");
    assert!(total > items.len() + 10, "items re-cross: {total} events on {} items", items.len());
}

/// What a pair holds besides its position: open orders lock its mode and count in available
/// balance; an isolated `position` message closing to size 0 leaves its margin with the pair
/// (SPEC section 3), where used margin counts it while the pair is isolated and not while it
/// is cross, until an isolated position replaces it. The fast engine keeps these in a side
/// table and the reference engine in every pair; both must report alike.
#[test]
fn flat_pairs_keep_orders_and_isolated_margin() {
    let pos = |size: &str, extra: &str| {
        format!(
            r#"{{"type":"position","account":1,"symbol":"BTCUSDT","size":"{size}","entry_price":"30000"{extra}}}"#
        )
    };
    let mode = |m: &str| {
        format!(r#"{{"type":"margin_mode","account":1,"symbol":"BTCUSDT","mode":"{m}"}}"#)
    };
    let orders = |n: u32, m: &str| {
        format!(
            r#"{{"type":"orders","account":1,"symbol":"BTCUSDT","open_orders":{n},"order_margin":"{m}"}}"#
        )
    };
    let query = r#"{"type":"query","account":1}"#.to_string();
    let lines = [
        r#"{"type":"balance","account":1,"wallet":"10000"}"#.to_string(),
        r#"{"type":"mark","symbol":"BTCUSDT","price":"30000"}"#.to_string(),
        mode("isolated"),
        pos("0.1", r#","isolated_margin":"500""#),
        query.clone(),
        pos("0", r#","isolated_margin":"120""#),
        query.clone(),
        orders(2, "50"),
        r#"{"type":"transfer","account":1,"amount":"-9960"}"#.to_string(),
        mode("cross"),
        orders(0, "0"),
        mode("cross"),
        query.clone(),
        pos("0.2", ""),
        query.clone(),
        pos("0", ""),
        mode("isolated"),
        query.clone(),
        pos("0.1", r#","isolated_margin":"300""#),
        pos("0", ""),
        query,
    ];
    let (want, got, fast) = run_both(config("multi_tier"), lines.join("\n").as_bytes());
    assert_same_events("flat pairs", &got, &want);
    assert_eq!(fast.audit(), Ok(()));
    let used: Vec<String> = (got.iter())
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter(|v| v["type"] == "account")
        .map(|v| v["used_margin"].as_str().unwrap_or("null").to_string())
        .collect();
    // The idle 120 counts while isolated (second and fifth query), not while cross (third);
    // the last isolated position took it, and closing without a margin left 0.
    assert_eq!(used.len(), 6, "{got:?}");
    assert_eq!((used[1].as_str(), used[2].as_str(), used[4].as_str()), ("120", "0", "120"));
    assert_eq!(used[5], "0");
    let rejects: Vec<&String> = got.iter().filter(|e| e.contains("reject")).collect();
    assert_eq!(rejects.len(), 2, "the withdrawal past order margin and the locked mode");
}

#[test]
fn golden_streams_match_on_the_fast_engine() {
    for (name, cfg) in [
        ("cross_basics", "multi_tier"),
        ("isolated_single_tier", "single_tier"),
        ("bad_input", "multi_tier"),
        ("brackets", "multi_tier"),
        ("extremes", "extremes"),
    ] {
        let input = std::fs::read(root().join(format!("fixtures/golden/{name}.ndjson"))).unwrap();
        let (want, got, _) = run_both(config(cfg), &input);
        assert_same_events(name, &got, &want);
    }
}

/// The random streams are not vacuous: over a fixed-seed sample they produce liquidations of
/// both modes, every state-dependent reject code, and at-risk items of both modes with null
/// and numeric ratios. (An isolated item left between zero and its maintenance at a stream's
/// end is too rare here: `tests/at_risk.rs` holds that case by hand.)
#[test]
fn random_streams_exercise_the_rules() {
    use proptest::{
        strategy::ValueTree,
        test_runner::{Config as RunnerConfig, TestRng, TestRunner},
    };
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let strategy = prop::collection::vec(message(), 1..60);
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..300 {
        let lines = strategy.new_tree(&mut runner).unwrap().current();
        let (want, _, fast) = run_both(config("multi_tier"), lines.join("\n").as_bytes());
        // The at-risk answers compared after each stream hold every kind of item.
        for item in fast.at_risk(&risk_queries()[0]) {
            let state = match (item.liquidatable, &item.margin_ratio) {
                (true, None) => "null_ratio",
                (true, Some(_)) => "liquidatable",
                (false, _) => "healthy",
            };
            *seen.entry(format!("at_risk/{}/{state}", item.mode.as_str())).or_default() += 1;
        }
        for e in want {
            let v: serde_json::Value = serde_json::from_str(&e).unwrap();
            let key = match v["type"].as_str().unwrap() {
                "liquidation" => format!("liquidation/{}", v["mode"].as_str().unwrap()),
                "reject" => format!("reject/{}", v["code"].as_str().unwrap()),
                t => t.to_string(),
            };
            *seen.entry(key).or_default() += 1;
        }
    }
    for key in [
        "liquidation/cross",
        "liquidation/isolated",
        "gap",
        "account",
        "reject/malformed",
        "reject/invalid",
        "reject/unknown_symbol",
        "reject/mode_locked",
        "reject/leverage_exceeds_max",
        "reject/wrong_mode",
        "reject/insufficient_margin",
        "reject/no_mark",
        "at_risk/cross/null_ratio",
        "at_risk/cross/liquidatable",
        "at_risk/cross/healthy",
        "at_risk/isolated/null_ratio",
        "at_risk/isolated/healthy",
    ] {
        assert!(seen.get(key).copied().unwrap_or(0) > 0, "no {key} in {seen:?}");
    }
}

/// Back-pressure: with one line per batch and one batch in flight, the pipeline blocks at
/// every step (and the engine parks at once, without polling), and still yields the same
/// events in the same order; so does a paced replay.
#[test]
fn smallest_queues_and_pacing_give_the_same_events() {
    let input = std::fs::read(root().join("fixtures/golden/cross_basics.ndjson")).unwrap();
    let cfg = config("multi_tier");
    let mut outputs = Vec::new();
    let smallest = replay::Options {
        batch_lines: 1,
        queue_batches: 1,
        rate: None,
        idle_spin: std::time::Duration::ZERO,
        ..replay::Options::default()
    };
    // 22 lines at 400 lines/s: at least 50 ms.
    let paced = replay::Options { rate: Some(400.0), ..replay::Options::default() };
    for opts in [replay::Options::default(), smallest, paced] {
        let started = std::time::Instant::now();
        let mut engine = FastEngine::new(cfg.clone());
        let mut out = Vec::new();
        let summary =
            replay::replay_with(cfg.clone(), &mut engine, &input[..], &mut out, opts).unwrap();
        assert_eq!(summary.liquidations, 6);
        if opts.rate.is_some() {
            assert!(started.elapsed() >= std::time::Duration::from_millis(50), "not paced");
        }
        let text = String::from_utf8(out).unwrap();
        outputs.push(events(&text).iter().map(|v| v.to_string()).collect::<Vec<_>>());
    }
    assert_same_events("batch 1, queue 1 vs default", &outputs[1], &outputs[0]);
    assert_same_events("paced vs default", &outputs[2], &outputs[0]);
}

/// A live stream: each line's events come out before the next line is sent. Without handing
/// partial batches on, the engine would wait for a batch to fill and this would hang.
#[test]
fn live_stream_is_not_held_back_by_batching() {
    use std::{
        io::{BufReader, Write},
        sync::mpsc,
        time::Duration,
    };

    struct ChannelWriter(mpsc::Sender<Vec<u8>>);
    impl Write for ChannelWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let (pipe_rx, mut pipe_tx) = std::io::pipe().unwrap();
    let (events_tx, events_rx) = mpsc::channel();
    let cfg = config("multi_tier");
    let replay = std::thread::spawn(move || {
        let mut engine = FastEngine::new(cfg.clone());
        replay::replay(cfg, &mut engine, BufReader::new(pipe_rx), ChannelWriter(events_tx)).unwrap()
    });
    for account in 1..=5 {
        writeln!(pipe_tx, r#"{{"type":"query","account":{account}}}"#).unwrap();
        pipe_tx.flush().unwrap();
        let chunk = events_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the event of a sent line arrives before the next line is sent");
        let text = String::from_utf8(chunk).unwrap();
        assert!(text.contains(&format!(r#""account":{account}"#)), "{text}");
    }
    drop(pipe_tx);
    assert_eq!(replay.join().unwrap().accounts, 5);
}
