//! The read side of SPEC section 9.3 on both engines, on a book whose figures are worked out
//! by hand: the at-risk order (liquidatable first, null ratios, exact ratio order, ties),
//! items left out for a missing mark, the filters and the limit; and `account_report` equal
//! to a `query` event.

mod common;

use common::*;
use liqscan::{
    config::{Mode, SymbolIdx},
    engine::{At, Engine, RiskQuery},
    fast::FastEngine,
    protocol::{Command, Event, RiskItem},
    reference::ReferenceEngine,
    replay,
};

const BTC: SymbolIdx = SymbolIdx(0); // BTC-PERP: tick 0.5, step 0.0001, mmr 0.02
const ETH: SymbolIdx = SymbolIdx(1); // ETH-PERP: tick 0.05, step 0.001, mmr 0.02

fn iso(account: u64, symbol: &str, size: &str, entry: &str, margin: &str) -> String {
    format!(
        r#"{{"type":"position","account":{account},"symbol":"{symbol}","size":"{size}","entry_price":"{entry}","isolated_margin":"{margin}"}}"#
    )
}

fn cross(account: u64, wallet: &str, positions: &[(&str, &str, &str)]) -> Vec<String> {
    let mut lines =
        vec![format!(r#"{{"type":"balance","account":{account},"wallet":"{wallet}"}}"#)];
    for (symbol, size, entry) in positions {
        lines.push(format!(
            r#"{{"type":"margin_mode","account":{account},"symbol":"{symbol}","mode":"cross"}}"#
        ));
        lines.push(format!(
            r#"{{"type":"position","account":{account},"symbol":"{symbol}","size":"{size}","entry_price":"{entry}"}}"#
        ));
    }
    lines
}

/// The book, with BTC-PERP marked at 10000 and ETH-PERP not yet. Figures at marks BTC 10000
/// and ETH 1000 (mm = 0.02 · notional everywhere):
/// - TC1 account 1, isolated BTC long 1 @ 10000, margin 150: balance 150, mm 200, ratio
///   1.33333333, liquidatable.
/// - TC2 account 2, isolated BTC long 1 @ 10000, margin 400: balance 400, mm 200, ratio 0.5.
/// - TC3 account 3, cross, wallet 100, BTC short 1 @ 9500: upnl −500, balance −400, mm 200:
///   null ratio, liquidatable.
/// - TC4 account 4, cross, wallet 1000, ETH long 1 @ 1000 and BTC long 0.1 @ 10000: balance
///   1000, mm 20 + 20 = 40, ratio 0.04 (left out while ETH has no mark).
/// - TC5 account 5, isolated ETH long 2 @ 1000, margin 40: balance 40 = mm 40: ratio 1, not
///   liquidatable (strictly below is needed).
/// - TC6 account 6, isolated ETH long 10 @ 1000, margin 150: balance 150, mm 200: ratio
///   1.33333333 exactly as TC1's, so the lower account id (1) goes first.
/// - TC7 account 7, cross, wallet −50, ETH long 1 @ 1000: balance −50, mm 20: null.
/// - TC7b account 7 also holds isolated BTC long 1 @ 10100, margin 50: balance −50: null,
///   after the account's cross item on the tie.
/// - TC8 account 8, isolated BTC long 1 @ 10100, margin 50: balance 50 − 100 = −50: null.
/// - TC10 account 10, isolated BTC long 1 @ 10000, margin 399.99999999: ratio
///   200 / 399.99999999 = 0.500000000013 (shown "0.5" like TC2's), exactly above TC2's, so it
///   goes before account 2.
fn book() -> Vec<String> {
    let mut lines = vec![r#"{"type":"mark","symbol":"BTC-PERP","price":"10000"}"#.to_string()];
    lines.push(iso(1, "BTC-PERP", "1", "10000", "150"));
    lines.push(iso(2, "BTC-PERP", "1", "10000", "400"));
    lines.extend(cross(3, "100", &[("BTC-PERP", "-1", "9500")]));
    lines.extend(cross(4, "1000", &[("ETH-PERP", "1", "1000"), ("BTC-PERP", "0.1", "10000")]));
    lines.push(iso(5, "ETH-PERP", "2", "1000", "40"));
    lines.push(iso(6, "ETH-PERP", "10", "1000", "150"));
    lines.extend(cross(7, "-50", &[("ETH-PERP", "1", "1000")]));
    lines.push(iso(7, "BTC-PERP", "1", "10100", "50"));
    lines.push(iso(8, "BTC-PERP", "1", "10100", "50"));
    lines.push(iso(10, "BTC-PERP", "1", "10000", "399.99999999"));
    lines
}

const ETH_MARK: &str = r#"{"type":"mark","symbol":"ETH-PERP","price":"1000"}"#;

fn engines(lines: &[String]) -> Vec<(&'static str, Box<dyn Engine>)> {
    let cfg = config("single_tier");
    let input = lines.join("\n");
    let mut out = Vec::new();
    let mut reference = ReferenceEngine::new(cfg.clone());
    replay::replay(cfg.clone(), &mut reference, input.as_bytes(), &mut out).unwrap();
    let mut fast = FastEngine::new(cfg.clone());
    replay::replay(cfg.clone(), &mut fast, input.as_bytes(), &mut out).unwrap();
    let rejects = String::from_utf8(out).unwrap();
    assert!(!rejects.contains("reject"), "the book is valid: {rejects}");
    vec![("reference", Box::new(reference)), ("fast", Box::new(fast))]
}

fn q(limit: usize, symbol: Option<SymbolIdx>, mode: Option<Mode>) -> RiskQuery {
    RiskQuery { limit, symbol, mode }
}

/// The items as (account, isolated symbol index).
fn ids(items: &[RiskItem]) -> Vec<(u64, Option<&str>)> {
    items.iter().map(|i| (i.account, i.symbol.as_deref())).collect()
}

/// (label, query, the items expected, in order)
type Case = (&'static str, RiskQuery, Vec<(u64, Option<&'static str>)>);

const B: Option<&str> = Some("BTC-PERP");
const E: Option<&str> = Some("ETH-PERP");

#[test]
fn at_risk_order_filters_and_missing_marks() {
    let before_eth: [Case; 2] = [
        // TC4, TC5, TC6, TC7 need the ETH mark: left out.
        (
            "all, no ETH mark",
            q(100, None, None),
            vec![(3, None), (7, B), (8, B), (1, B), (10, B), (2, B)],
        ),
        ("ETH, no ETH mark", q(100, Some(ETH), None), vec![]),
    ];
    let with_eth: [Case; 9] = [
        (
            "all",
            q(100, None, None),
            vec![
                (3, None), // null ratios first, by account id
                (7, None), // the account's cross item before its isolated one
                (7, B),
                (8, B),
                (1, B), // 4/3, tie with account 6 by account id
                (6, E),
                (5, E),  // ratio 1, not liquidatable
                (10, B), // 0.500000000013 > 0.5
                (2, B),
                (4, None), // 0.04
            ],
        ),
        ("limit 2", q(2, None, None), vec![(3, None), (7, None)]),
        ("limit 0", q(0, None, None), vec![]),
        ("cross", q(100, None, Some(Mode::Cross)), vec![(3, None), (7, None), (4, None)]),
        (
            "isolated",
            q(100, None, Some(Mode::Isolated)),
            vec![(7, B), (8, B), (1, B), (6, E), (5, E), (10, B), (2, B)],
        ),
        // Cross accounts holding ETH (7, and 4 which also holds BTC), isolated ETH items.
        ("ETH", q(100, Some(ETH), None), vec![(7, None), (6, E), (5, E), (4, None)]),
        ("BTC cross", q(100, Some(BTC), Some(Mode::Cross)), vec![(3, None), (4, None)]),
        (
            "BTC isolated, limit 3",
            q(3, Some(BTC), Some(Mode::Isolated)),
            vec![(7, B), (8, B), (1, B)],
        ),
        ("symbol outside the config", q(100, Some(SymbolIdx(9)), None), vec![]),
    ];
    let mut lines = book();
    for (name, engine) in engines(&lines) {
        for (label, query, want) in &before_eth {
            assert_eq!(ids(&engine.at_risk(query)), *want, "{name}: {label}");
        }
    }
    lines.push(ETH_MARK.to_string());
    for (name, engine) in engines(&lines) {
        for (label, query, want) in &with_eth {
            assert_eq!(ids(&engine.at_risk(query)), *want, "{name}: {label}");
        }
        // The figures of a few items, worked out above.
        let all = engine.at_risk(&q(100, None, None));
        fn figures(i: &RiskItem) -> (String, String, Option<String>, bool) {
            let ratio = i.margin_ratio.as_ref().map(|r| r.text());
            (i.margin_balance.text(), i.maintenance_margin.text(), ratio, i.liquidatable)
        }
        let want =
            |b: &str, m: &str, r: Option<&str>, l| (b.into(), m.into(), r.map(Into::into), l);
        assert_eq!(figures(&all[0]), want("-400", "200", None, true), "{name}: TC3");
        assert_eq!(figures(&all[4]), want("150", "200", Some("1.33333333"), true), "{name}: TC1");
        assert_eq!(figures(&all[6]), want("40", "40", Some("1"), false), "{name}: TC5");
        assert_eq!(
            figures(&all[7]),
            want("399.99999999", "200", Some("0.5"), false),
            "{name}: TC10"
        );
        assert_eq!(figures(&all[9]), want("1000", "40", Some("0.04"), false), "{name}: TC4");
        // TC1's liquidation price: (150 − 10000) / (0.02 − 1) = 10051.0204081632… → round8.
        let p = &all[4].positions;
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].size.text(), p[0].entry_price.text(), p[0].mark_price.text()),
            ("1".into(), "10000".into(), "10000".into())
        );
        let liquidation_price = p[0].liquidation_price.as_ref().map(|x| x.text());
        assert_eq!(liquidation_price.as_deref(), Some("10051.02040816"), "{name}");
        // A cross item lists all its positions, in symbol order.
        let tc4: Vec<&str> = all[9].positions.iter().map(|p| &*p.symbol).collect();
        assert_eq!(tc4, ["BTC-PERP", "ETH-PERP"], "{name}");
        let mut json = String::new();
        all[0].write_json(&mut json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["account"], 3);
        assert_eq!((v["mode"].as_str(), v["symbol"].is_null()), (Some("cross"), true));
        assert_eq!((v["margin_ratio"].is_null(), v["liquidatable"].as_bool()), (true, Some(true)));
        assert!(v["positions"][0]["liquidation_price"].is_string());
    }
}

/// `account_report` is the `account` event a `query` emits at that point, on both engines;
/// `None` for an account never mentioned.
#[test]
fn account_report_equals_a_query() {
    let mut lines = book();
    lines.push(ETH_MARK.to_string());
    let at = At { line: 40, seq: 41 };
    for (name, mut engine) in engines(&lines) {
        for account in [1, 3, 4, 7, 10] {
            let report = engine.account_report(account, at).expect("the account is held");
            let mut events = Vec::new();
            engine.apply(&Command::Query { account }, at, &mut |e| events.push(e)).unwrap();
            assert_eq!(events, vec![Event::Account(report)], "{name}: account {account}");
        }
        assert_eq!(engine.account_report(9, at), None, "{name}: never mentioned");
    }
}
