//! Isolated positions paid by a funding (`FastEngine::pay_isolated`): a payer's trigger is
//! moved by the funding's `funding_move` for its side instead of searched again, and must
//! still fire before the state can flip. Held to the exact state at every mark (unit test) and to the reference engine
//! message for message, with the fast engine's audit after each.

use std::sync::Arc;

use super::{
    E8_TO_Q16, FastEngine,
    book::{Scale, moved_trigger},
    commands::funding_move,
    div_1e12_round_half_even,
    funding_tests::Both,
    isolated_trigger,
};
use crate::{
    config::{Mode, SymbolIdx},
    engine::Engine,
    fixed::D8,
    protocol::{Command, Event},
    synth::{self, Rng},
};

const S0: SymbolIdx = SymbolIdx(0);

/// For positions of every side, state and bracket of the synthetic symbol (five brackets,
/// mmr 0.4 % to 5 %), and fundings whose payment runs from 10^-8 to far past the buffer: the
/// funding's move for the side is at least the move the position's own payment needs
/// (`⌈|pay| · 10^8 / slope⌉`), and whenever the moved trigger is given, the term after the
/// payment is on the flag's side at the trigger's edge mark (so, being monotone, on its
/// whole safe side) and the mark is on that side; whenever the state at the mark flipped,
/// no trigger is given.
#[test]
fn a_moved_trigger_fires_before_the_state_can_flip() {
    let cfg = synth::config(1);
    let sc = Scale::new(cfg.symbol(S0));
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let (mut moved, mut declined, mut flips) = (0, 0, 0);
    for _ in 0..20_000 {
        // Up to 10,000 lots of 0.001 at marks 1.00 to 20,000.00: notionals across brackets.
        let lots = (1 + rng.below(10_000) as i64) * if rng.below(2) == 0 { 1 } else { -1 };
        let t = 100 + rng.below(2_000_000) as i64;
        let notional_q16 = sc.notional_n12(lots, t) * 10_000;
        // A margin from 0.1 % to 20 % of the notional, an entry within 5 % of the mark.
        let margin_q16 = notional_q16 * (1 + rng.below(200) as i128) / 1000;
        let entry_t = t * (950 + rng.below(100) as i64) / 1000;
        let base = margin_q16 - sc.value_q16(lots, entry_t);
        let liquidatable = sc.buffer_q16(lots, base, t) < 0;
        let old = isolated_trigger(&sc, lots, base, t, liquidatable);
        // Towards the flip: a healthy position pays, a liquidatable one receives. The
        // funding's per-lot payment c (10^-20) is drawn so that the payment's size (e8) is
        // about `magnitude`, with a random remainder below one lot's share.
        let magnitude = match rng.below(3) {
            0 => 1 + rng.below(1_000) as i128,
            1 => 1 + (notional_q16 / E8_TO_Q16) * rng.below(100) as i128 / 100_000,
            _ => 1 + (notional_q16 / E8_TO_Q16) * rng.below(100) as i128 / 1000,
        };
        let q = i128::from(lots.unsigned_abs());
        let per_lot = magnitude * 1_000_000_000_000 / q + rng.below(1_000_000_000_000) as i128;
        // The sign of c that makes this position pay (pay > 0) or receive (pay < 0).
        let pays = !liquidatable;
        let c = if (lots > 0) == pays { per_lot } else { -per_lot };
        let pay_e8 = div_1e12_round_half_even(i128::from(lots) * c);
        if pay_e8 == 0 {
            continue;
        }
        assert_eq!(pay_e8 > 0, pays, "lots {lots} c {c}");
        let d = funding_move(&sc, c, lots > 0);
        let slope = sc.slope_floor_q16(lots);
        let own = (pay_e8.abs() * E8_TO_Q16 + slope - 1) / slope;
        assert!(i128::from(d) >= own, "lots {lots} c {c}: move {d} below the needed {own}");
        let paid = base - pay_e8 * E8_TO_Q16;
        let flipped = (sc.buffer_q16(lots, paid, t) < 0) != liquidatable;
        flips += u32::from(flipped);
        match moved_trigger(old, d, t) {
            None => declined += 1,
            Some(m) => {
                moved += 1;
                assert!(!flipped, "lots {lots} t {t}: a flipped position kept a moved trigger");
                assert!(!super::book::fires(m, t), "lots {lots} t {t}: {m} fires at the mark");
                let edge = m.abs();
                let f = sc.buffer_q16(lots, paid, edge);
                let kept = if liquidatable { f <= -1 } else { f >= 0 };
                assert!(kept, "lots {lots} t {t} old {old} pay {pay_e8}: term {f} at edge {edge}");
            }
        }
    }
    assert!(moved > 10_000 && declined > 100 && flips > 50, "{moved}, {declined}, {flips}");
}

/// A payment that brings an isolated long's buffer exactly to zero keeps it healthy (the
/// edge, `f >= 0`); one more 10^-8 on the next funding makes it liquidatable, and that
/// funding must emit. The same at the next mark one tick down after the first funding.
#[test]
fn a_payment_exactly_at_the_edge_and_one_past_it() {
    for fall_after in [false, true] {
        let mut both = both();
        mark(&mut both, 10_000); // 100.00
        both.apply(Command::MarginMode { account: 1, symbol: S0, mode: Mode::Isolated });
        // 1 lot of 0.001... 10 (10,000 lots) at 100.00: notional 1,000, mm 4 (0.4 %).
        let lots = 10_000;
        let sc = Scale::new(both.fast.cfg.symbol(S0));
        let mm_e8 = sc.mm_q16(sc.notional_n12(lots, 10_000)) / E8_TO_Q16;
        // A rate of 10^-5 pays 1,000 × 10^-5 = 0.01 (10^6 e8); the margin leaves exactly that
        // above maintenance.
        let margin = D8(mm_e8 + 1_000_000);
        let size = D8(i128::from(lots) * 100_000);
        let entry_price = Some(D8(100 * 100_000_000));
        let cmd = Command::Position {
            account: 1,
            symbol: S0,
            size,
            entry_price,
            isolated_margin: Some(margin),
        };
        assert!(both.apply(cmd).is_empty());
        assert!(fund(&mut both, 1_000).is_empty(), "at the edge: healthy");
        let slot = both.fast.pair(both.fast.lookup(1).unwrap(), S0).unwrap().slot as usize;
        assert_eq!(sc.buffer_q16(lots, both.fast.isolated[0].base_now_q16(slot), 10_000), 0);
        let events = if fall_after { mark(&mut both, 9_999) } else { fund(&mut both, 1) };
        assert_eq!(events.len(), 1, "one past the edge: liquidatable ({fall_after})");
        assert!(matches!(&events[0], Event::Liquidation(l) if l.account == 1));
    }
}

/// Both engines on the one-symbol synthetic config.
fn both() -> Both {
    Both::new(FastEngine::new(Arc::new(synth::config(1))))
}

/// A mark of `S0` at `price_e2` hundredths.
fn mark(both: &mut Both, price_e2: i64) -> Vec<Event> {
    both.apply(Command::Mark { symbol: S0, price: D8(i128::from(price_e2) * 1_000_000) })
}

/// A funding of `S0` at `units` × 10^-8.
fn fund(both: &mut Both, units: i64) -> Vec<Event> {
    both.apply(Command::Funding { symbol: S0, rate: D8(i128::from(units)) })
}

/// Sixty isolated longs and shorts with margins from thin to thick, under hundreds of
/// fundings of both signs (most small, some large) and a mark walking around 100.00: every
/// message's events equal the reference engine's and the audit passes after each, so no
/// moved trigger let an item cross unseen.
#[test]
fn isolated_fundings_and_marks_equal_the_reference() {
    let mut both = both();
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
    let mut price = 10_000i64;
    mark(&mut both, price);
    for a in 1..=60u64 {
        both.apply(Command::MarginMode { account: a, symbol: S0, mode: Mode::Isolated });
        let lots = (1 + rng.below(5_000) as i128) * if a % 2 == 0 { 1 } else { -1 };
        // A margin of 0.5 % to 6 % of the notional (lots × 0.001 × 100).
        let margin_e2 = lots.abs() * 10 * (5 + rng.below(55) as i128) / 1000;
        let cmd = Command::Position {
            account: a,
            symbol: S0,
            size: D8(lots * 100_000),
            entry_price: Some(D8(i128::from(price) * 1_000_000)),
            isolated_margin: Some(D8(margin_e2 * 1_000_000 + 1)),
        };
        both.apply(cmd);
    }
    let mut liquidations = 0;
    for _ in 0..600 {
        let events = match rng.below(4) {
            0 => {
                price = (price + rng.below(41) as i64 - 20).max(1);
                mark(&mut both, price)
            }
            1 => fund(&mut both, rng.below(20_001) as i64 - 10_000),
            _ => fund(&mut both, rng.below(401) as i64 - 200),
        };
        liquidations += events.iter().filter(|e| matches!(e, Event::Liquidation(_))).count();
    }
    assert!(liquidations > 0, "the fundings and marks liquidated some items");
}

/// `n` isolated positions on `S0` at 100.00, alternately long and short, with margins of 3 %
/// to 8 % of their notional (and a wallet of 1,000 each): small fundings flip none of them.
fn isolated_book(both: &mut Both, n: u64) {
    mark(both, 10_000);
    for a in 1..=n {
        both.apply(Command::Balance { account: a, wallet: D8(1_000 * 100_000_000) });
        both.apply(Command::MarginMode { account: a, symbol: S0, mode: Mode::Isolated });
        let lots = (100 + 37 * a as i128 % 900) * if a % 2 == 0 { 1 } else { -1 };
        let margin_e2 = lots.abs() * 10 * (30 + (a as i128 * 7) % 50) / 1000;
        both.apply(Command::Position {
            account: a,
            symbol: S0,
            size: D8(lots * 100_000),
            entry_price: Some(D8(100 * 100_000_000)),
            isolated_margin: Some(D8(margin_e2 * 1_000_000)),
        });
    }
}

/// A funding that, from the guards, flips no isolated position leaves its pass pending
/// (`book::PendingPass`): the messages after it run 32 slots each, the readers (reports,
/// at-risk, a snapshot image) take what it owes off, and everything that reads the book's
/// triggers or changes a slot finishes it first (a mark, an isolated margin move, a close
/// that moves the last slot, the next funding, a sweep), with every event, read and audit
/// equal to the reference engine's.
#[test]
fn a_pending_isolated_pass_is_finished_before_the_book_is_read_or_changed() {
    let mut both = both();
    isolated_book(&mut both, 200);
    let pending = |both: &Both| both.fast.isolated[0].pending.map(|p| p.from);
    // Waits, then runs 32 slots a message.
    assert!(fund(&mut both, 300).is_empty());
    assert_eq!(pending(&both), Some(0), "the pass waits");
    both.same_reads();
    both.apply(Command::Query { account: 3 });
    assert_eq!(pending(&both), Some(32), "a message runs 32 slots");
    both.same_reads();
    for _ in 0..10 {
        both.apply(Command::Query { account: 4 });
    }
    assert_eq!(pending(&both), None, "done within a bounded number of messages");
    // Each forcing point, right after a funding.
    let forcing: [&dyn Fn(&mut Both); 5] = [
        &|b| {
            mark(b, 9_650);
        },
        &|b| {
            let amount = D8(5 * 1_000_000);
            b.apply(Command::IsolatedMargin { account: 8, symbol: S0, amount });
        },
        &|b| {
            b.apply(Command::Position {
                account: 9,
                symbol: S0,
                size: D8(0),
                entry_price: None,
                isolated_margin: None,
            });
        },
        &|b| {
            fund(b, -250);
        },
        &|b| b.sweep_finds_nothing(),
    ];
    for (k, force) in forcing.iter().enumerate() {
        assert!(fund(&mut both, 200 + 10 * k as i64).is_empty());
        assert_eq!(pending(&both), Some(0), "case {k}: the pass waits");
        force(&mut both);
        assert!(
            both.fast.isolated[0].pending.is_none_or(|p| p.from == 0 && k == 3),
            "case {k}: finished (or, after a funding, the new one waits)"
        );
        both.same_reads();
    }
    // A snapshot image taken while a pass waits holds the paid margins: the restored engine
    // reports every account as the original does.
    mark(&mut both, 10_000);
    assert!(fund(&mut both, 400).is_empty());
    assert!(pending(&both).is_some());
    let (at, restored) = (both.at(), both.restored());
    assert_eq!(restored.audit(), Ok(()));
    for id in both.fast.accounts() {
        assert_eq!(restored.account_report(id, at), both.fast.account_report(id, at), "{id}");
    }
}

/// A funding that tips an isolated position runs its pass at once, so the liquidation is an
/// event of that funding message, as the reference engine has it.
#[test]
fn a_funding_that_may_flip_runs_its_pass_at_once() {
    let mut both = both();
    isolated_book(&mut both, 60);
    // A large rate: some position's moved trigger would fire at the mark.
    let events = fund(&mut both, 4_000_000);
    assert!(!events.is_empty(), "the funding liquidated some positions");
    assert_eq!(both.fast.isolated[0].pending.map(|p| p.from), None, "the pass ran at once");
    both.same_reads();
}
