//! A fired cross position re-triggered alone (README, "Session 12: a fired position
//! re-triggered alone"; `FastEngine::retrigger_alone`): taken while the account's reserve
//! covers what the position lost past its trigger, skipped (a refresh of the whole account)
//! when it does not, and exact either way: every message is held to the reference engine
//! (events and results) with the fast engine's audit (flags, triggers, reserve and the edge
//! invariant) after it, through `funding_tests::Both`.

use std::sync::Arc;

use super::{FastEngine, funding_tests::Both};
use crate::{
    config::SymbolIdx,
    fixed::D8,
    protocol::{Command, Event},
    synth,
};

const S0: SymbolIdx = SymbolIdx(0);
const S1: SymbolIdx = SymbolIdx(1);

/// `units` hundredths, in e8 (a price on the synthetic config's 0.01 tick, or a wallet).
fn e2(units: i64) -> D8 {
    D8(i128::from(units) * 1_000_000)
}

fn both() -> Both {
    Both::new(FastEngine::new(Arc::new(synth::config(2))))
}

fn position(both: &mut Both, account: u64, symbol: SymbolIdx, lots: i64, entry_e2: i64) {
    let size = D8(i128::from(lots) * 100_000); // step 0.001
    let entry_price = Some(e2(entry_e2));
    let cmd = Command::Position { account, symbol, size, entry_price, isolated_margin: None };
    both.apply(cmd);
}

fn balance(both: &mut Both, account: u64, wallet_e2: i64) {
    both.apply(Command::Balance { account, wallet: e2(wallet_e2) });
}

fn mark(both: &mut Both, symbol: SymbolIdx, price_e2: i64) -> Vec<Event> {
    both.apply(Command::Mark { symbol, price: e2(price_e2) })
}

/// What one message cost: (positions evaluated, positions re-triggered alone).
fn counted(both: &mut Both, f: impl FnOnce(&mut Both) -> Vec<Event>) -> (u64, u64, Vec<Event>) {
    let (evaluated, alone) = (both.fast.positions_evaluated(), both.fast.positions_retriggered());
    let events = f(both);
    let fast = &both.fast;
    (fast.positions_evaluated() - evaluated, fast.positions_retriggered() - alone, events)
}

fn liquidations(events: &[Event]) -> usize {
    events.iter().filter(|e| matches!(e, Event::Liquidation(_))).count()
}

/// One account, long 1 in S0 and long 10 in S1, wallet 10: S0 falling a few ticks a
/// message fires its position again and again, each time re-triggered alone (one position
/// evaluated, not the account's two) while the reserve covers it; a jump far past the
/// trigger refreshes the account (both positions evaluated).
#[test]
fn a_fired_position_is_re_triggered_alone_while_the_reserve_covers_it() {
    let mut both = both();
    mark(&mut both, S0, 10_000);
    mark(&mut both, S1, 1_000);
    position(&mut both, 1, S0, 1_000, 10_000);
    position(&mut both, 1, S1, 10_000, 1_000);
    balance(&mut both, 1, 1_000);
    let (mut alone_msgs, mut refreshed_msgs) = (0, 0);
    for k in 1..=400 {
        let (evaluated, alone, events) = counted(&mut both, |b| mark(b, S0, 10_000 - 2 * k));
        assert_eq!(liquidations(&events), 0, "the account stays healthy down to 92.00");
        match (evaluated, alone) {
            (0, 0) => {}
            // Its own position alone.
            (1, 1) => alone_msgs += 1,
            // The whole account: both positions, none alone.
            (2, 0) => refreshed_msgs += 1,
            other => panic!("message {k}: evaluated and re-triggered alone {other:?}"),
        }
    }
    assert!(alone_msgs >= 2, "re-triggered alone {alone_msgs} times");
    assert!(refreshed_msgs >= 1, "the reserve runs out now and then: {refreshed_msgs}");

    // S1 halves, far past its position's trigger: what that position lost past it (~50) is
    // more than the reserve (a small part of the buffer), so the account is refreshed whole,
    // and it has crossed (wallet 10 against a loss of 8 on S0 and 50 on S1).
    let (evaluated, alone, events) = counted(&mut both, |b| mark(b, S1, 500));
    assert_eq!((evaluated, alone), (2, 0), "a jump past the reserve refreshes the account");
    assert_eq!(liquidations(&events), 1);
}

/// Position `lots` (a long when positive) alone in S0 at 100.00 with a thin wallet, then
/// the mark moved one tick a message against it until well past its liquidation, and back
/// the same way past its recovery and down again: every message is held to the reference
/// engine (the liquidation on the exact tick, the audit's flags after each). A fired
/// position's bound is its term at the last tick its trigger kept (`|trigger|`): with the
/// first tick past it instead, a mark moving one tick at a time would never look like a
/// loss and the account would be re-triggered alone past its liquidation, which this test
/// catches (at the liquidation message, and the audit's stale flag right after).
fn one_tick_at_a_time(lots: i64) {
    let mut both = both();
    mark(&mut both, S0, 10_000);
    position(&mut both, 1, S0, lots, 10_000);
    balance(&mut both, 1, 300);
    let dir = if lots > 0 { -1 } else { 1 };
    let (mut alone, mut liquidated) = (0, 0);
    let mut price = 10_000;
    // Against the position until 1 % past its liquidation (~2.6 % away), back 2 % (it
    // recovers), then against it again (it crosses a second time).
    for (steps, sign) in [(360, dir), (200, -dir), (200, dir)] {
        for _ in 0..steps {
            price += sign;
            let (_, a, events) = counted(&mut both, |b| mark(b, S0, price));
            alone += a;
            liquidated += liquidations(&events);
        }
    }
    assert!(alone >= 2, "re-triggered alone {alone} times on the way");
    assert_eq!(liquidated, 2, "liquidated on the way down and again after its recovery");
}

#[test]
fn a_long_falling_one_tick_at_a_time_liquidates_on_its_tick() {
    one_tick_at_a_time(1_000);
}

#[test]
fn a_short_rising_one_tick_at_a_time_liquidates_on_its_tick() {
    one_tick_at_a_time(-1_000);
}

/// Many accounts in two symbols, marks moving by random small steps, `marks` messages
/// moving both at once (an account may fire in both: it is refreshed whole), and balance
/// changes the reserve absorbs between: the path taken often, every message equal to the
/// reference and the audit passing.
#[test]
fn random_small_moves_equal_the_reference() {
    let mut both = both();
    mark(&mut both, S0, 10_000);
    mark(&mut both, S1, 1_000);
    let mut rng = synth::Rng::new(12);
    for a in 1..=60u64 {
        let lots = 200 + rng.below(3_000) as i64;
        let side = if rng.below(2) == 0 { 1 } else { -1 };
        position(&mut both, a, S0, side * lots, 9_950 + rng.below(100) as i64);
        if a % 3 != 0 {
            position(&mut both, a, S1, -side * lots * 5, 995 + rng.below(10) as i64);
        }
        balance(&mut both, a, (lots / 10) * (4 + rng.below(40) as i64) / 10);
    }
    let (mut p0, mut p1) = (10_000i64, 1_000i64);
    let (mut alone, mut liquidated) = (0, 0);
    for k in 0..1_500 {
        let step = |rng: &mut synth::Rng, by: u64| rng.below(2 * by + 1) as i64 - by as i64;
        let (_, a, events) = counted(&mut both, |b| match k % 5 {
            0 => {
                (p0, p1) = (p0 + step(&mut rng, 6), p1 + step(&mut rng, 1));
                b.apply(Command::Marks { prices: vec![(S0, e2(p0)), (S1, e2(p1))] })
            }
            4 => {
                let account = 1 + rng.below(60);
                let wallet = 20 + rng.below(400) as i64;
                b.apply(Command::Balance { account, wallet: e2(wallet) })
            }
            _ => {
                p0 += step(&mut rng, 6);
                mark(b, S0, p0)
            }
        });
        alone += a;
        liquidated += liquidations(&events);
    }
    assert!(alone >= 50, "re-triggered alone {alone} times");
    assert!(liquidated >= 1, "some account liquidated ({liquidated})");
}
