//! The margin arithmetic of SPEC section 4, exactly, on [`Exact`] numbers.
//!
//! Every function here is one formula of the SPEC. The reference engine composes them; the
//! fast engine must agree with them bit for bit (its differential tests compare against the
//! reference engine, which calls these).

use num_bigint::BigInt;

use crate::{
    config::{Bracket, Symbol},
    exact::{Exact, round8_ratio},
};

/// `notional = |size| * P`
pub fn notional(size: &Exact, mark: &Exact) -> Exact {
    &size.abs() * mark
}

/// `upnl = size * (P - entry)`
pub fn upnl(size: &Exact, mark: &Exact, entry: &Exact) -> Exact {
    size * &(mark - entry)
}

/// The first bracket with `notional < notional_cap`, else the last one.
pub fn bracket<'a>(sym: &'a Symbol, notional: &Exact) -> &'a Bracket {
    &sym.brackets[sym.bracket_index_by(|cap| *notional < Exact::from_d8(cap))]
}

/// `mm = notional * mmr - cum` in the notional's bracket.
pub fn maintenance(sym: &Symbol, notional: &Exact) -> Exact {
    let b = bracket(sym, notional);
    &(notional * &Exact::from_d8(b.mmr)) - &Exact::from_d8(b.cum)
}

/// `im = ceil8(notional / leverage)`
pub fn initial(notional: &Exact, leverage: u64) -> Exact {
    notional.div_int_ceil8(leverage)
}

/// Margin ratio `round8(maintenance / margin balance)`; `None` when the balance is <= 0.
pub fn margin_ratio(maintenance: &Exact, balance: &Exact) -> Option<Exact> {
    balance.is_positive().then(|| round8_ratio(maintenance, balance))
}

/// The funding payment `round8(size * P * rate)`: positive means the position pays.
pub fn funding_payment(size: &Exact, mark: &Exact, rate: &Exact) -> Exact {
    (&(size * mark) * rate).round8()
}

/// The liquidation price of a position of `size` at `entry` backed by `m` (the isolated
/// margin, or for cross `W + sum over the account's other cross positions of (upnl - mm)`).
///
/// Solves `m + size * (P - entry) = |size| * P * mmr_k - cum_k` for P in each bracket k and
/// keeps the root that lies in that bracket's own range. Margin balance minus maintenance is
/// continuous in P (the maintenance amounts make it so) and strictly monotone (its slope is
/// `size - |size| * mmr`, non-zero because mmr < 1), so exactly one bracket holds the root;
/// bracket 0 is taken to extend below zero so that a root <= 0 is found there too. The result
/// is `round8(root)`, or `None` when the root is not > 0.
pub fn liquidation_price(sym: &Symbol, size: &Exact, entry: &Exact, m: &Exact) -> Option<Exact> {
    // Callers report liquidation prices of non-zero positions only.
    assert!(!size.is_zero(), "liquidation price of a flat position");
    let q = size.abs();
    let last = sym.brackets.len() - 1; // a loaded symbol has at least one bracket
    for (k, b) in sym.brackets.iter().enumerate() {
        let mmr = Exact::from_d8(b.mmr);
        let mut num = &(m + &Exact::from_d8(b.cum)) - &(size * entry);
        let mut den = &(&q * &mmr) - size;
        // |size| * mmr - size is zero only if mmr = 1 (long) or -1: the config keeps 0 < mmr < 1.
        assert!(!den.is_zero(), "mmr < 1 makes the slope non-zero");
        if den.signum() < 0 {
            num = -&num;
            den = -&den;
        }
        // root = num / den with den > 0; its notional q * root lies in [floor, cap) iff
        // q * num >= floor * den and q * num < cap * den (exact big-integer products).
        let q_num: BigInt = q.raw() * num.raw();
        let above_floor = k == 0 || q_num >= Exact::from_d8(b.floor).raw() * den.raw();
        let below_cap = k == last || q_num < Exact::from_d8(b.cap).raw() * den.raw();
        if above_floor && below_cap {
            return num.is_positive().then(|| round8_ratio(&num, &den));
        }
    }
    unreachable!("a continuous strictly monotone function has a root in some bracket")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::D8;

    fn x(s: &str) -> Exact {
        Exact::from_d8(D8::parse(s, 8).unwrap())
    }

    /// Three brackets: [0,50000) 125x 0.4%, [50000,250000) 100x 0.5% (cum 50),
    /// [250000, ...) 50x 1% (cum 50 + 250000*0.005 = 1300).
    fn btc() -> Symbol {
        crate::config::three_bracket_btc()
    }

    #[test]
    fn maintenance_by_bracket() {
        let s = btc();
        // (notional, mm)
        let cases = [
            ("10000", "40"),         // TC1: 10000 * 0.004
            ("49999.9", "199.9996"), // TC2: just below the first edge
            ("50000", "200"),        // TC3: at the edge, bracket 1: 50000*0.005 - 50
            ("100000", "450"),       // TC4: 100000*0.005 - 50
            ("250000", "1200"),      // TC5: 250000*0.01 - 1300
            ("2000000", "18700"),    // TC6: above the last cap, last bracket
        ];
        for (n, mm) in cases {
            assert_eq!(maintenance(&s, &x(n)).to_string(), mm, "{n}");
        }
    }

    #[test]
    fn maintenance_is_continuous_at_every_edge() {
        let s = btc();
        let eps = x("0.00000001");
        for b in &s.brackets[..s.brackets.len() - 1] {
            let edge = Exact::from_d8(b.cap);
            let below = maintenance(&s, &(&edge - &eps));
            let at = maintenance(&s, &edge);
            // The left limit at the edge, with the lower bracket's rate.
            let left = &(&edge * &Exact::from_d8(b.mmr)) - &Exact::from_d8(b.cum);
            assert_eq!(left, at, "edge {}", b.cap);
            assert!(below < at);
        }
    }

    #[test]
    fn initial_margin_rounds_up() {
        // 1 BTC at 65000.1, 7x: 9285.72857142... -> 9285.72857143
        assert_eq!(initial(&x("65000.1"), 7).to_string(), "9285.72857143");
        assert_eq!(initial(&x("100"), 20).to_string(), "5");
    }

    #[test]
    fn funding_rounds_ties_to_even() {
        // size 1, mark 0.5, rate 0.00000001 -> 0.000000005 -> tie -> 0
        assert_eq!(funding_payment(&x("1"), &x("0.5"), &x("0.00000001")).to_string(), "0");
        // size 3 -> 0.000000015 -> 0.00000002
        assert_eq!(funding_payment(&x("3"), &x("0.5"), &x("0.00000001")).to_string(), "0.00000002");
        // short pays negative (receives) when the rate is positive
        assert_eq!(
            funding_payment(&x("-5"), &x("0.5"), &x("0.00000001")).to_string(),
            "-0.00000002"
        );
    }

    #[test]
    fn liquidation_prices_by_hand() {
        let s = btc();
        // (label, size, entry, M, expected)
        let cases = [
            // TC1 long, first bracket: M=1000, size 1, entry 30000, mmr .004 cum 0:
            // P = (1000 + 0 - 30000) / (0.004 - 1) = 29000/0.996 = 29116.46586345...
            ("TC1 long b0", "1", "30000", "1000", Some("29116.46586345")),
            // TC2 short, first bracket: size -1, entry 30000, M 1000:
            // P = (1000 + 30000) / (0.004 + 1) = 31000/1.004 = 30876.49402390...
            ("TC2 short b0", "-1", "30000", "1000", Some("30876.4940239")),
            // TC3 long, second bracket: size 2, entry 60000, M 5000, mmr .005 cum 50:
            // P = (5000 + 50 - 120000) / (0.01 - 2) = 114950/1.99 = 57763.81909547...
            // notional 2*57763.8 = 115527.6 in [50000, 250000) -> bracket 1 holds it.
            ("TC3 long b1", "2", "60000", "5000", Some("57763.81909548")),
            // TC4 short, third bracket: size -10, entry 60000, M 20000, mmr .01 cum 1300:
            // P = (20000 + 1300 + 600000) / (0.1 + 10) = 621300/10.1 = 61514.85148514...
            ("TC4 short b2", "-10", "60000", "20000", Some("61514.85148515")),
            // TC5 long fully backed: root <= 0 -> null.
            ("TC5 long no root", "1", "100", "1000", None),
        ];
        for (label, size, entry, m, want) in cases {
            let got = liquidation_price(&s, &x(size), &x(entry), &x(m)).map(|p| p.to_string());
            assert_eq!(got.as_deref(), want, "{label}");
        }
    }

    #[test]
    fn liquidation_price_zeroes_the_buffer() {
        // At the unrounded root, balance == maintenance; check the rounded one is within a
        // unit either side: balance - mm changes sign across [P - 1e-8, P + 1e-8].
        let s = btc();
        let (size, entry, m) = (x("2"), x("60000"), x("5000"));
        let p = liquidation_price(&s, &size, &entry, &m).unwrap();
        let f = |p: &Exact| &(&m + &upnl(&size, p, &entry)) - &maintenance(&s, &notional(&size, p));
        let eps = x("0.00000001");
        assert!(f(&(&p - &eps)).signum() < 0);
        assert!(f(&(&p + &eps)).signum() > 0);
    }

    #[test]
    fn margin_ratio_null_when_balance_not_positive() {
        assert_eq!(margin_ratio(&x("1"), &x("0")), None);
        assert_eq!(margin_ratio(&x("1"), &x("-1")), None);
        assert_eq!(margin_ratio(&x("1"), &x("3")).unwrap().to_string(), "0.33333333");
    }
}
