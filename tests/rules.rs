//! SPEC sections 5 and 6 end to end on the reference engine: one test per reject code, per
//! sequencing rule, the re-arming rules, and bad input that must never stop a run.

mod common;

use common::*;
use serde_json::Value;

/// Replays `lines` (joined by newlines) on the multi-tier config.
fn run(lines: &[&str]) -> Vec<Value> {
    run_on("multi_tier", lines)
}

fn run_on(cfg: &str, lines: &[&str]) -> Vec<Value> {
    let input = lines.join("\n");
    events(&replay_reference(config(cfg), input.as_bytes()).0)
}

fn of_type<'a>(evs: &'a [Value], ty: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["type"] == ty).collect()
}

/// The single reject of a run, asserting its line and code.
fn assert_reject(evs: &[Value], line: u64, code: &str) {
    let rejects = of_type(evs, "reject");
    assert_eq!(rejects.len(), 1, "{evs:#?}");
    assert_eq!(rejects[0]["line"], line, "{evs:#?}");
    assert_eq!(rejects[0]["code"], code, "{evs:#?}");
    assert!(!rejects[0]["reason"].as_str().unwrap().is_empty(), "a reject carries a human reason");
}

const BTC_LONG: &str =
    r#"{"type":"position","account":1,"symbol":"BTCUSDT","size":"1","entry_price":"30000"}"#;

// --- one test per reject code ------------------------------------------------------------

#[test]
fn reject_malformed() {
    let evs = run(&[r#"{"type":"mark""#, r#"{"type":"query","account":1}"#]);
    assert_reject(&evs, 1, "malformed");
    assert_eq!(of_type(&evs, "reject")[0]["seq"], Value::Null);
}

#[test]
fn reject_invalid() {
    let evs = run(&[r#"{"type":"mark","symbol":"BTCUSDT","price":"1e3"}"#]);
    assert_reject(&evs, 1, "invalid");
    assert_eq!(of_type(&evs, "reject")[0]["seq"], 1);
}

#[test]
fn reject_unknown_symbol() {
    assert_reject(
        &run(&[r#"{"type":"funding","symbol":"XRPUSDT","rate":"0.0001"}"#]),
        1,
        "unknown_symbol",
    );
}

#[test]
fn reject_mode_locked_by_position_and_by_orders() {
    let evs = run(&[
        BTC_LONG,
        r#"{"type":"margin_mode","account":1,"symbol":"BTCUSDT","mode":"isolated"}"#,
    ]);
    assert_reject(&evs, 2, "mode_locked");
    let evs = run(&[
        r#"{"type":"orders","account":1,"symbol":"ETHUSDT","open_orders":1}"#,
        r#"{"type":"margin_mode","account":1,"symbol":"ETHUSDT","mode":"isolated"}"#,
        r#"{"type":"margin_mode","account":1,"symbol":"ETHUSDT","mode":"cross"}"#,
    ]);
    // Line 3 asks for the mode the pair already has: a no-op, not a reject.
    assert_reject(&evs, 2, "mode_locked");
}

#[test]
fn reject_leverage_exceeds_max() {
    // No position: notional 0, first bracket, max 125.
    let evs = run(&[
        r#"{"type":"leverage","account":1,"symbol":"BTCUSDT","leverage":125}"#,
        r#"{"type":"leverage","account":1,"symbol":"BTCUSDT","leverage":126}"#,
    ]);
    assert_reject(&evs, 2, "leverage_exceeds_max");
}

/// An open-orders count past u64 is rejected as invalid, and its reason says it is too large
/// (not that it is no integer).
#[test]
fn reject_open_orders_past_u64_says_too_large() {
    let evs = run(&[
        r#"{"type":"orders","account":1,"symbol":"BTCUSDT","open_orders":18446744073709551616,"order_margin":"0"}"#,
        r#"{"type":"orders","account":1,"symbol":"BTCUSDT","open_orders":-1,"order_margin":"0"}"#,
    ]);
    let rejects = of_type(&evs, "reject");
    assert_eq!(rejects.len(), 2, "{evs:#?}");
    assert!(rejects.iter().all(|r| r["code"] == "invalid"), "{evs:#?}");
    let reason = |k: usize| rejects[k]["reason"].as_str().unwrap().to_owned();
    assert!(reason(0).contains("is above the largest count"), "{evs:#?}");
    assert!(reason(1).contains("is not an integer >= 0"), "{evs:#?}");
}

/// A leverage past u64 is still an integer (validation saturates it): the reason says it was
/// at least u64::MAX rather than naming a value that was never sent.
#[test]
fn reject_leverage_past_u64_says_or_more() {
    let evs = run(&[
        r#"{"type":"leverage","account":1,"symbol":"BTCUSDT","leverage":184467440737095516160000}"#,
        r#"{"type":"leverage","account":1,"symbol":"BTCUSDT","leverage":500}"#,
    ]);
    let rejects = of_type(&evs, "reject");
    assert_eq!(rejects.len(), 2, "{evs:#?}");
    let reason = |k: usize| rejects[k]["reason"].as_str().unwrap().to_owned();
    assert!(reason(0).starts_with(&format!("leverage {} or more exceeds", u64::MAX)), "{evs:#?}");
    assert!(reason(1).starts_with("leverage 500 exceeds"), "{evs:#?}");
    assert!(rejects.iter().all(|r| r["code"] == "leverage_exceeds_max"), "{evs:#?}");
}

#[test]
fn reject_wrong_mode() {
    // TC1 isolated_margin field on a cross pair
    let evs = run(&[
        r#"{"type":"position","account":1,"symbol":"BTCUSDT","size":"1","entry_price":"1","isolated_margin":"5"}"#,
    ]);
    assert_reject(&evs, 1, "wrong_mode");
    // TC2 isolated_margin message on a cross pair
    let evs = run(&[
        BTC_LONG,
        r#"{"type":"isolated_margin","account":1,"symbol":"BTCUSDT","amount":"5"}"#,
    ]);
    assert_reject(&evs, 2, "wrong_mode");
    // TC3 isolated pair without a position; TC4 position missing isolated_margin
    let evs = run_on(
        "single_tier",
        &[
            r#"{"type":"isolated_margin","account":1,"symbol":"BTC-PERP","amount":"5"}"#,
            r#"{"type":"position","account":1,"symbol":"BTC-PERP","size":"1","entry_price":"1"}"#,
        ],
    );
    let rejects = of_type(&evs, "reject");
    assert_eq!(rejects.len(), 2);
    assert!(rejects.iter().all(|r| r["code"] == "wrong_mode"));
}

#[test]
fn reject_insufficient_margin() {
    let evs = run(&[
        r#"{"type":"balance","account":1,"wallet":"100"}"#,
        r#"{"type":"orders","account":1,"symbol":"ETHUSDT","open_orders":1,"order_margin":"40"}"#,
        r#"{"type":"transfer","account":1,"amount":"-60"}"#,
        r#"{"type":"transfer","account":1,"amount":"-60.00000001"}"#,
        r#"{"type":"query","account":1}"#,
    ]);
    // available = 100 - 40 = 60: withdrawing exactly 60 is allowed, a unit more is not.
    assert_reject(&evs, 4, "insufficient_margin");
    assert_eq!(of_type(&evs, "account")[0]["wallet"], "40");
}

#[test]
fn reject_no_mark() {
    let evs = run(&[
        r#"{"type":"balance","account":1,"wallet":"100000"}"#,
        BTC_LONG,
        r#"{"type":"transfer","account":1,"amount":"-1"}"#,
        r#"{"type":"funding","symbol":"BTCUSDT","rate":"0.0001"}"#,
        r#"{"type":"transfer","account":1,"amount":"1"}"#,
    ]);
    let rejects = of_type(&evs, "reject");
    assert_eq!(rejects.len(), 2, "{evs:#?}");
    assert!(rejects.iter().all(|r| r["code"] == "no_mark"));
    assert_eq!((rejects[0]["line"].clone(), rejects[1]["line"].clone()), (3.into(), 4.into()));
}

// --- sequencing ---------------------------------------------------------------------------

#[test]
fn duplicate_is_dropped_silently_and_counted() {
    let input = [
        r#"{"type":"query","account":1,"seq":1}"#,
        r#"{"type":"query","account":1,"seq":1}"#,
        r#"{"type":"mark","symbol":"NOPE","price":"1","seq":1}"#,
    ]
    .join("\n");
    let (out, summary) = replay_reference(config("multi_tier"), input.as_bytes());
    let evs = events(&out);
    assert_eq!(evs.len(), 1, "a duplicate, even an invalid one, emits nothing: {evs:#?}");
    assert_eq!(summary.duplicates, 2);
}

#[test]
fn gap_is_reported_then_the_message_applies() {
    let evs = run(&[
        r#"{"type":"query","account":1}"#,
        r#"{"type":"query","account":1,"seq":5}"#,
        r#"{"type":"query","account":1}"#,
    ]);
    let gaps = of_type(&evs, "gap");
    assert_eq!(gaps.len(), 1);
    assert_eq!(
        (gaps[0]["line"].clone(), gaps[0]["expected"].clone(), gaps[0]["got"].clone()),
        (2.into(), 2.into(), 5.into())
    );
    let seqs: Vec<_> = of_type(&evs, "account").iter().map(|a| a["seq"].clone()).collect();
    assert_eq!(seqs, [1, 5, 6]);
}

#[test]
fn malformed_and_ill_typed_seq_consume_no_seq() {
    let evs = run(&[
        r#"{"type":"query","account":1}"#,
        r#"not json"#,
        r#"{"type":"query","account":1,"seq":"two"}"#,
        r#"{"type":"query","account":1}"#,
    ]);
    let rejects = of_type(&evs, "reject");
    assert_eq!(rejects.len(), 2);
    assert!(rejects.iter().all(|r| r["seq"].is_null()));
    assert_eq!(rejects[0]["code"], "malformed");
    assert_eq!(rejects[1]["code"], "invalid");
    let seqs: Vec<_> = of_type(&evs, "account").iter().map(|a| a["seq"].clone()).collect();
    assert_eq!(seqs, [1, 2], "no seq consumed, no gap");
    assert!(of_type(&evs, "gap").is_empty());
}

/// SPEC section 6: after effective seq 2^64 − 1 a message without `seq` has none to take:
/// `invalid` with `"seq": null`, on every such message, and an explicit seq is a duplicate.
#[test]
fn no_seq_left_after_the_top_of_the_range() {
    let top = format!(r#"{{"type":"query","account":1,"seq":{}}}"#, u64::MAX);
    let evs = run(&[
        &top,
        r#"{"type":"query","account":1}"#,
        r#"{"type":"balance","account":2,"wallet":"5"}"#,
        &top,
    ]);
    let accounts = of_type(&evs, "account");
    assert_eq!(accounts.len(), 1, "{evs:#?}");
    assert_eq!(accounts[0]["seq"], u64::MAX);
    let rejects = of_type(&evs, "reject");
    assert_eq!(rejects.len(), 2, "{evs:#?}");
    for (r, line) in rejects.iter().zip([2, 3]) {
        assert_eq!((r["line"].as_u64(), r["code"].as_str()), (Some(line), Some("invalid")));
        assert!(r["seq"].is_null(), "{r}");
    }
}

#[test]
fn rejected_messages_consume_their_seq() {
    let evs = run(&[
        r#"{"type":"mark","symbol":"BTCUSDT","price":"-1"}"#,
        r#"{"type":"query","account":1,"seq":2}"#,
    ]);
    assert!(of_type(&evs, "gap").is_empty(), "{evs:#?}");
}

#[test]
fn blank_lines_count_as_lines_but_not_messages() {
    let input = "\n   \n{\"type\":\"query\",\"account\":1}\n\n";
    let (out, summary) = replay_reference(config("multi_tier"), input.as_bytes());
    let evs = events(&out);
    assert_eq!(evs[0]["line"], 3);
    assert_eq!(evs[0]["seq"], 1);
    assert_eq!((summary.lines, summary.messages), (4, 1));
}

// --- evaluation and re-arming -------------------------------------------------------------

/// Account 1: W 1116, long 1 BTC at 30000; liquidatable strictly below mark 29000.
const SETUP: [&str; 2] = [r#"{"type":"balance","account":1,"wallet":"1116"}"#, BTC_LONG];

fn mark(p: &str) -> String {
    format!(r#"{{"type":"mark","symbol":"BTCUSDT","price":"{p}"}}"#)
}

fn liquidation_lines(evs: &[Value]) -> Vec<u64> {
    of_type(evs, "liquidation").iter().map(|e| e["line"].as_u64().unwrap()).collect()
}

#[test]
fn equal_to_maintenance_is_safe_one_tick_below_is_not() {
    let (m1, m2) = (mark("29000"), mark("28999.9"));
    let evs = run(&[SETUP[0], SETUP[1], &m1, &m2]);
    assert_eq!(liquidation_lines(&evs), [4]);
}

#[test]
fn reported_once_while_marks_move_again_after_position() {
    let marks: Vec<String> = ["28000", "27000", "28500", "26000"].iter().map(|p| mark(p)).collect();
    let mut lines: Vec<&str> = SETUP.to_vec();
    lines.extend(marks.iter().map(String::as_str));
    lines.push(BTC_LONG); // line 7: the engine acted on the account: re-armed
    let m = mark("25000");
    lines.push(&m); // line 8: still liquidatable, not re-armed
    let evs = run(&lines);
    assert_eq!(liquidation_lines(&evs), [3, 7]);
}

#[test]
fn balance_transfer_and_margin_messages_rearm() {
    let m = mark("28000");
    let evs = run(&[
        SETUP[0],
        SETUP[1],
        &m,
        r#"{"type":"balance","account":1,"wallet":"1000"}"#,
        r#"{"type":"transfer","account":1,"amount":"1"}"#,
        r#"{"type":"orders","account":1,"symbol":"BTCUSDT","open_orders":1}"#,
        r#"{"type":"leverage","account":1,"symbol":"BTCUSDT","leverage":10}"#,
    ]);
    // orders and leverage neither change the item's inputs nor re-arm it.
    assert_eq!(liquidation_lines(&evs), [3, 4, 5]);
}

#[test]
fn one_message_wick_is_reported() {
    let (down, up) = (mark("20000"), mark("30000"));
    let evs = run(&[SETUP[0], SETUP[1], &up, &down, &up, &down]);
    assert_eq!(liquidation_lines(&evs), [4, 6]);
}

#[test]
fn never_twice_for_one_message() {
    // One cross account holding two symbols, both moved by one `marks` message.
    let evs = run(&[
        r#"{"type":"balance","account":2,"wallet":"100"}"#,
        r#"{"type":"position","account":2,"symbol":"BTCUSDT","size":"1","entry_price":"30000"}"#,
        r#"{"type":"position","account":2,"symbol":"ETHUSDT","size":"10","entry_price":"2000"}"#,
        r#"{"type":"marks","prices":{"BTCUSDT":"29000","ETHUSDT":"1900"}}"#,
    ]);
    let liqs = of_type(&evs, "liquidation");
    assert_eq!(liqs.len(), 1);
    assert_eq!(liqs[0]["positions"].as_array().unwrap().len(), 2);
    assert_eq!(liqs[0]["symbol"], Value::Null);
}

#[test]
fn isolated_items_are_independent_of_the_cross_item() {
    let evs = run_on(
        "single_tier",
        &[
            r#"{"type":"balance","account":3,"wallet":"1000000"}"#,
            r#"{"type":"position","account":3,"symbol":"BTC-PERP","size":"1","entry_price":"50000","isolated_margin":"2000"}"#,
            r#"{"type":"position","account":3,"symbol":"ETH-PERP","size":"1","entry_price":"3000","isolated_margin":"3000"}"#,
            r#"{"type":"marks","prices":{"BTC-PERP":"48000","ETH-PERP":"3000"}}"#,
        ],
    );
    // BTC: 2000 - 2000 = 0 < 960; ETH: 3000 >= 60. The big wallet does not help BTC.
    let liqs = of_type(&evs, "liquidation");
    assert_eq!(liqs.len(), 1);
    assert_eq!(
        (liqs[0]["mode"].clone(), liqs[0]["symbol"].clone()),
        ("isolated".into(), "BTC-PERP".into())
    );
}

#[test]
fn funding_moves_wallet_or_isolated_margin_and_may_go_negative() {
    let evs = run_on(
        "single_tier",
        &[
            r#"{"type":"position","account":4,"symbol":"BTC-PERP","size":"1","entry_price":"50000","isolated_margin":"1"}"#,
            r#"{"type":"margin_mode","account":5,"symbol":"BTC-PERP","mode":"cross"}"#,
            r#"{"type":"position","account":5,"symbol":"BTC-PERP","size":"-2","entry_price":"50000"}"#,
            r#"{"type":"mark","symbol":"BTC-PERP","price":"50000"}"#,
            r#"{"type":"funding","symbol":"BTC-PERP","rate":"0.0001"}"#,
            r#"{"type":"query","account":4}"#,
            r#"{"type":"query","account":5}"#,
        ],
    );
    let accts = of_type(&evs, "account");
    // Long pays 1 * 50000 * 0.0001 = 5 from its isolated margin: 1 - 5 = -4.
    assert_eq!(accts[0]["positions"][0]["isolated_margin"], "-4");
    // Short receives 10 into its wallet.
    assert_eq!(accts[1]["wallet"], "10");
}

#[test]
fn rejected_marks_message_changes_nothing() {
    let evs = run(&[
        &mark("30000"),
        r#"{"type":"marks","prices":{"BTCUSDT":"20000","ETHUSDT":"0.001"}}"#,
        SETUP[0],
        SETUP[1],
        r#"{"type":"query","account":1}"#,
    ]);
    assert_reject(&evs, 2, "invalid");
    assert_eq!(of_type(&evs, "account")[0]["positions"][0]["mark_price"], "30000");
    assert!(of_type(&evs, "liquidation").is_empty());
}

// --- bad input never stops a run ----------------------------------------------------------

#[test]
fn bad_input_each_rejected_and_the_run_goes_on() {
    let mut input: Vec<u8> = Vec::new();
    let mut push = |line: &[u8]| {
        input.extend_from_slice(line);
        input.push(b'\n');
    };
    // (line, expected code)
    let long = {
        let mut l = br#"{"type":"query","account":1,"pad":""#.to_vec();
        l.extend(std::iter::repeat_n(b'x', 2 << 20));
        l.extend(br#""}"#);
        l
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (br#"{"type":"mark","symbol":"BTCUSDT","pri"#.to_vec(), "malformed"),
        (br#"42"#.to_vec(), "malformed"),
        (long, "malformed"),
        (b"{\"type\":\"query\",\"account\":\xc3\x28}".to_vec(), "malformed"),
        (br#"{"type":"mark","symbol":"BTCUSDT","price":2.5e4}"#.to_vec(), "invalid"),
        (br#"{"type":"mark","symbol":"BTCUSDT","price":NaN}"#.to_vec(), "malformed"),
        (br#"{"type":"mark","symbol":"BTCUSDT","price":"-1"}"#.to_vec(), "invalid"),
        (br#"{"type":"mark","symbol":"BTCUSDT","price":0}"#.to_vec(), "invalid"),
        (br#"{"type":"mark","symbol":"ZZZ","price":"1"}"#.to_vec(), "unknown_symbol"),
    ];
    for (line, _) in &cases {
        push(line);
    }
    push(br#"{"type":"query","account":1}"#);
    let (out, summary) = replay_reference(config("multi_tier"), &input);
    let evs = events(&out);
    let codes: Vec<&str> =
        of_type(&evs, "reject").iter().map(|r| r["code"].as_str().unwrap()).collect();
    let want: Vec<&str> = cases.iter().map(|c| c.1).collect();
    assert_eq!(codes, want);
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "account", "the run went on to the end");
    assert_eq!(last["line"], cases.len() as u64 + 1);
    assert_eq!(summary.rejects, cases.len() as u64);
}

#[test]
fn ts_latency_is_recorded_for_messages_that_carry_ts() {
    // ts = 1 ns after the epoch: the sender-to-hand-off latency is decades, saturating at the
    // histogram's top (one hour); the message without ts adds nothing to it.
    let input = "{\"type\":\"query\",\"account\":1,\"ts\":1}\n{\"type\":\"query\",\"account\":1}";
    let (_, summary) = replay_reference(config("multi_tier"), input.as_bytes());
    assert_eq!(summary.event_latency.summary().count, 2);
    let ts = summary.ts_latency.summary();
    assert_eq!(ts.count, 1);
    assert!(ts.p50 >= 3_000_000_000_000, "{ts:?}");
}
