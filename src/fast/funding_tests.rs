//! Lazy funding (README, "Lazy funding") held to the reference engine, which pays every
//! holder at once: every message's result and events, every account's report and the at-risk
//! lists must be equal, and the fast engine must pass its audit after every message.

use std::sync::Arc;

use super::FastEngine;
use crate::{
    config::{Mode, SymbolIdx},
    engine::{At, Engine, RiskQuery},
    fixed::D8,
    protocol::{Command, Event},
    reference::ReferenceEngine,
    state::Image,
    synth,
};

/// `units` hundredths, in e8.
fn e2(units: i64) -> D8 {
    D8(i128::from(units) * 1_000_000)
}

/// A rate of `units` × 10^-8.
fn rate(units: i64) -> D8 {
    D8(i128::from(units))
}

const S0: SymbolIdx = SymbolIdx(0);
const S1: SymbolIdx = SymbolIdx(1);

/// Both engines fed the same messages (also used by `isolated_funding_tests.rs`).
pub(super) struct Both {
    pub(super) fast: FastEngine,
    reference: ReferenceEngine,
    line: u64,
}

impl Both {
    pub(super) fn new(fast: FastEngine) -> Both {
        let reference = ReferenceEngine::new(fast.cfg.clone());
        Both { fast, reference, line: 0 }
    }

    /// Every cross position settled within `rounds` lazy fundings of its symbol.
    fn with_rounds(rounds: u32) -> Both {
        Both::new(FastEngine::new(Arc::new(synth::config(2))).with_funding_settle_rounds(rounds))
    }

    pub(super) fn at(&self) -> At {
        At { line: self.line, seq: self.line }
    }

    /// Applies `cmd` to both; their results and events must be equal (events compared as a
    /// set: the SPEC leaves their order within a message free), and the fast engine must pass
    /// its audit. Returns the events.
    pub(super) fn apply(&mut self, cmd: Command) -> Vec<Event> {
        self.line += 1;
        let at = self.at();
        let (mut got, mut want) = (Vec::new(), Vec::new());
        let fast = self.fast.apply(&cmd, at, &mut |e| got.push(e));
        let reference = self.reference.apply(&cmd, at, &mut |e| want.push(e));
        assert_eq!(fast, reference, "line {}: {cmd:?}", self.line);
        assert_eq!(fast, Ok(()), "line {}: {cmd:?}: the tests here apply every message", self.line);
        let key = |e: &Event| format!("{e:?}");
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got, want, "line {}: {cmd:?}", self.line);
        assert_eq!(self.fast.audit(), Ok(()), "line {}: {cmd:?}", self.line);
        got
    }

    fn position(&mut self, account: u64, symbol: SymbolIdx, lots: i64, entry_e2: i64) {
        let size = D8(i128::from(lots) * 100_000); // step 0.001
        let entry_price = (lots != 0).then(|| e2(entry_e2));
        let cmd = Command::Position { account, symbol, size, entry_price, isolated_margin: None };
        self.apply(cmd);
    }

    fn mark(&mut self, symbol: SymbolIdx, price_e2: i64) -> Vec<Event> {
        self.apply(Command::Mark { symbol, price: e2(price_e2) })
    }

    fn fund(&mut self, symbol: SymbolIdx, units: i64) -> Vec<Event> {
        self.apply(Command::Funding { symbol, rate: rate(units) })
    }

    /// A full sweep recomputes every buffer, what each slot still owes taken off, and must
    /// find every flag as the messages left it: no event, and the audit passes after it.
    pub(super) fn sweep_finds_nothing(&mut self) {
        let mut swept = Vec::new();
        self.fast.sweep(self.at(), &mut |e| swept.push(e));
        assert!(swept.is_empty(), "{swept:?}");
        assert_eq!(self.fast.audit(), Ok(()));
    }

    /// Every account's report and the at-risk lists are equal.
    pub(super) fn same_reads(&self) {
        let at = self.at();
        for id in self.fast.accounts() {
            let got = self.fast.account_report(id, at);
            assert_eq!(got, self.reference.account_report(id, at), "account {id}");
        }
        for (symbol, mode) in [(None, None), (Some(S0), None), (None, Some(Mode::Cross))] {
            let q = RiskQuery { limit: 25, symbol, mode };
            assert_eq!(self.fast.at_risk(&q), self.reference.at_risk(&q), "{q:?}");
        }
    }

    /// The fast engine's snapshot image now (`copy_state`, as the daemon writes it),
    /// restored into a new engine: a restore under the same config makes no event.
    pub(super) fn restored(&self) -> FastEngine {
        let copy = self.fast.copy_state(None);
        let mut accounts = Vec::new();
        copy.each_account(&mut |a| {
            accounts.push(a.clone());
            Ok(())
        })
        .unwrap();
        let (marks, at) = (copy.marks(), self.at());
        let image = Image { marks, accounts, at, counters: Default::default() };
        let mut events = Vec::new();
        let cfg = self.fast.cfg.clone();
        let restored = FastEngine::restore(cfg, &image, false, &mut |e| events.push(e));
        assert!(events.is_empty(), "{events:?}");
        restored.expect("restores")
    }

    /// Whether some cross position still owes for a lazy funding (so that the lazy path,
    /// not the settled one, is what was compared).
    fn owes(&self) -> bool {
        (self.fast.cross.iter().zip(&self.fast.funding))
            .any(|(b, log)| b.fund_from.iter().any(|&f| f != log.end()))
    }
}

fn liquidations(events: &[Event]) -> Vec<(u64, Option<String>)> {
    let l = events.iter().filter_map(|e| match e {
        Event::Liquidation(l) => Some((l.account, l.symbol.as_deref().map(String::from))),
        _ => None,
    });
    l.collect()
}

/// Forty accounts, longs and shorts of many sizes in two symbols, with wallets from thin to
/// thick; both marks set.
fn book(both: &mut Both) {
    both.mark(S0, 10_000);
    both.mark(S1, 30_000);
    for a in 1..=40u64 {
        let lots = (a as i64 * 37) % 900 + 1;
        let sign = if a % 2 == 0 { 1 } else { -1 };
        both.position(a, S0, sign * lots * 10, 10_000 - (a as i64 % 5) * 10);
        if a % 3 != 0 {
            both.position(a, S1, -sign * lots, 30_000 + (a as i64 % 7) * 10);
        }
        // From 0.4 % to 12 % of the S0 notional (lots × 0.001 × 100).
        let wallet = lots * 10 * (a as i64 % 30 + 4) / 10;
        both.apply(Command::Balance { account: a, wallet: e2(wallet) });
    }
}

/// Hundreds of small fundings of both signs leave pending payments unsettled; reads equal the
/// reference's throughout, and a later fall of the mark liquidates exactly what the reference
/// liquidates.
#[test]
fn many_lazy_fundings_then_a_mark_that_liquidates() {
    let mut both = Both::with_rounds(super::DEFAULT_FUNDING_SETTLE_ROUNDS);
    book(&mut both);
    let mut rng = synth::Rng::new(5);
    let mut fired = 0;
    for k in 0..400 {
        let s = if rng.below(3) == 0 { S1 } else { S0 };
        let units = rng.below(2_001) as i64 - 1_000; // ±0.00001
        fired += both.fund(s, units).len();
        if k % 50 == 0 {
            both.same_reads();
        }
    }
    assert!(both.owes(), "some payments are still lazy");
    both.same_reads();
    let mut liquidated = Vec::new();
    for price in [9_950, 9_900, 9_800, 9_700, 9_500, 10_400, 10_800, 11_500] {
        liquidated.extend(liquidations(&both.mark(S0, price)));
        both.same_reads();
    }
    assert!(liquidated.len() >= 5, "the moves liquidate: {liquidated:?} ({fired} before)");
}

/// One funding alone makes an account liquidatable, for a long and a short, paying at a
/// positive and at a negative rate; the side that receives stays healthy.
#[test]
fn a_funding_alone_tips_an_account() {
    for (long, units) in [(true, 200_000), (false, -200_000)] {
        let mut both = Both::with_rounds(super::DEFAULT_FUNDING_SETTLE_ROUNDS);
        both.mark(S0, 10_000);
        let lots = if long { 1000 } else { -1000 };
        // 1 unit at 100: maintenance 0.4; a buffer of 0.1 over it. The other side receives.
        both.position(1, S0, lots, 10_000);
        both.apply(Command::Balance { account: 1, wallet: e2(50) });
        both.position(2, S0, -lots, 10_000);
        both.apply(Command::Balance { account: 2, wallet: e2(50) });
        // Small fundings first, paid lazily within the budget.
        for _ in 0..3 {
            assert!(both.fund(S0, if long { 1 } else { -1 }).is_empty());
        }
        // 0.002 of 100 is 0.2: account 1 pays it and falls below maintenance.
        let events = both.fund(S0, units);
        assert_eq!(liquidations(&events), vec![(1, None)], "long {long}");
        both.same_reads();
        // Paying again does not report it again (nothing re-armed it).
        assert!(both.fund(S0, units / 100).is_empty());
        both.same_reads();
    }
}

/// A liquidatable account recovers through funding receipts, and a payment then makes it
/// liquidatable again, which is reported again.
#[test]
fn a_liquidatable_account_recovers_by_receipts() {
    let mut both = Both::with_rounds(super::DEFAULT_FUNDING_SETTLE_ROUNDS);
    both.mark(S0, 10_000);
    both.position(1, S0, 1000, 10_000);
    both.apply(Command::Balance { account: 1, wallet: e2(30) }); // 0.3 < 0.4: liquidatable
    both.position(2, S0, -3000, 10_000);
    both.apply(Command::Balance { account: 2, wallet: e2(10_000) });
    assert!(both.fast.accounts.hot[0].liquidatable);
    // Long receives at a negative rate: 0.05 a time, each rounded on its own.
    for _ in 0..3 {
        assert!(both.fund(S0, -50_000).is_empty());
    }
    assert!(!both.fast.accounts.hot[0].liquidatable, "0.3 + 0.15 >= 0.4: recovered");
    both.same_reads();
    let events = both.fund(S0, 100_000);
    assert_eq!(liquidations(&events), vec![(1, None)]);
    both.same_reads();
}

/// Closing a position that owes for lazy fundings pays what it owes first (and the position
/// moved into its slot keeps what it owes); reopening starts owing nothing for the past.
#[test]
fn closing_and_reopening_settle_what_is_owed() {
    let mut both = Both::with_rounds(super::DEFAULT_FUNDING_SETTLE_ROUNDS);
    book(&mut both);
    for k in 0..30 {
        both.fund(S0, 300 + k);
        both.fund(S1, -700 + k);
    }
    assert!(both.owes());
    // Account 3 sits early in S0's book: closing it moves the last slot into its place.
    both.position(3, S0, 0, 0);
    both.same_reads();
    for k in 0..10 {
        both.fund(S0, -500 - k);
    }
    both.position(3, S0, 500, 10_050);
    both.position(8, S0, -20, 9_990); // changes a position that owes
    both.apply(Command::Transfer { account: 5, amount: e2(-1) });
    both.apply(Command::Transfer { account: 6, amount: e2(250) });
    for k in 0..10 {
        both.fund(S0, 900 - 90 * k);
    }
    both.same_reads();
    for a in 1..=40 {
        both.position(a, S1, 0, 0);
    }
    both.same_reads();
}

/// The progressive settle in rounds of 3 fundings: a hundred fundings, with positions closed
/// (moving the last slot of the book below the round's cursor), opened and changed between
/// them, keep every log at most 6 entries long and every slot owing for at most 6 fundings (the
/// audit checks each slot below the cursor against the round's start after every message),
/// and nothing differs from the reference.
#[test]
fn settle_rounds_bound_the_log_through_closes_and_opens() {
    let mut both = Both::with_rounds(3);
    book(&mut both);
    let mut rng = synth::Rng::new(9);
    let mut closed = 0;
    for k in 0..100 {
        let units = rng.below(40_001) as i64 - 20_000;
        both.fund(if k % 4 == 0 { S1 } else { S0 }, units);
        for (log, b) in both.fast.funding.iter().zip(&both.fast.cross) {
            assert!(log.c.len() <= 6, "{} entries", log.c.len());
            assert!(b.fund_from.iter().all(|&f| log.end().wrapping_sub(f) <= 6));
        }
        // Close an early slot of S0 (the last slot moves into its place) or reopen one.
        let a = 1 + rng.below(40);
        match rng.below(3) {
            0 if both.fast.cross[0].len() > 10 => {
                both.position(a, S0, 0, 0);
                closed += 1;
            }
            1 => both.position(a, S0, (a as i64 % 7 + 1) * 30, 10_000 - 20 * (a as i64 % 4)),
            _ => {}
        }
        if k % 10 == 0 {
            both.same_reads();
        }
    }
    assert!(closed >= 10, "closes ran: {closed}");
    both.mark(S0, 9_000);
    both.same_reads();
}

/// A funding's share of the progressive settle is settled after it, `SETTLE_SLOTS_PER_MESSAGE`
/// slots a message (none by a funding's own message), not by the funding; the next
/// funding of the symbol finishes what is left of it first, and the last share of a round
/// runs to the end of the book, where the round ends. Reads equal the reference's, and the
/// audit passes after every message (slots below the cursor settled in the round).
#[test]
fn a_fundings_share_is_settled_by_the_messages_after_it() {
    let mut both = Both::with_rounds(3);
    book(&mut both);
    let per = super::SETTLE_SLOTS_PER_MESSAGE as u32;
    let len = both.fast.cross[0].len() as u32;
    assert!(len > 3 * per, "a share of more than one step: {len} slots");
    let cursor = |both: &Both| both.fast.funding[0].cursor;
    both.fund(S0, 700);
    let share = len.div_ceil(3);
    assert_eq!(cursor(&both), 0, "the funding settled none of its share");
    let mut messages = 0;
    while cursor(&both) < share {
        let before = cursor(&both);
        both.apply(Command::Query { account: 1 });
        assert_eq!(cursor(&both), (before + per).min(share), "one step a message");
        messages += 1;
        assert!(messages <= share, "the share is done within a bounded number of messages");
    }
    assert!(both.fast.settle_queue.is_empty(), "nothing left due");
    both.apply(Command::Query { account: 2 });
    assert_eq!(cursor(&both), share, "no step past the share");
    both.same_reads();
    // Two fundings in a row: the second finishes the first's share before its own.
    both.fund(S0, -300);
    let due = share + (len - share).div_ceil(2);
    assert_eq!(both.fast.funding[0].due, due);
    assert_eq!(cursor(&both), share);
    both.fund(S0, 500);
    assert_eq!(both.fast.funding[0].due, u32::MAX, "the round's last share: to the end");
    assert_eq!(cursor(&both), due, "the second's share finished, none of its own");
    for k in 0.. {
        both.apply(Command::Query { account: 3 });
        if cursor(&both) == 0 {
            break;
        }
        assert!(k < len, "the round ends within a bounded number of messages");
    }
    let log = &both.fast.funding[0];
    assert_eq!((log.round_start, log.round_fundings, log.c.len()), (log.end(), 0, 3));
    both.same_reads();
    both.mark(S0, 9_000);
    both.same_reads();
    both.sweep_finds_nothing();
}

/// A daemon's long run: thousands of fundings and no other message on a book whose holders
/// never trade (so each funding's share of the progressive settle is settled by the next
/// funding of its symbol). The log holds at most `2 · DEFAULT_FUNDING_SETTLE_ROUNDS` entries, so what an
/// untouched holder owes (what `/at-risk`, a snapshot and a sweep compute) stays bounded,
/// and the reads and a sweep equal the reference's.
#[test]
fn a_long_run_of_fundings_keeps_the_log_bounded() {
    let rounds = super::DEFAULT_FUNDING_SETTLE_ROUNDS;
    let mut both = Both::with_rounds(rounds);
    book(&mut both);
    let mut rng = synth::Rng::new(13);
    let mut longest = 0;
    for k in 0..3_000 {
        let units = rng.below(2_001) as i64 - 1_000;
        both.fund(if k % 3 == 0 { S1 } else { S0 }, units);
        for (log, b) in both.fast.funding.iter().zip(&both.fast.cross) {
            longest = longest.max(log.c.len());
            let owes = b.fund_from.iter().map(|&f| log.end().wrapping_sub(f)).max();
            assert!(owes.unwrap_or(0) <= 2 * rounds, "a slot owes for {owes:?} fundings");
        }
        if k % 500 == 0 {
            both.same_reads();
        }
    }
    assert!(longest <= 2 * rounds as usize && longest >= rounds as usize, "{longest}");
    assert!(both.owes());
    both.same_reads();
    // The sweep recomputes every buffer, what each slot still owes taken off, and finds
    // every flag as the messages left it.
    both.sweep_finds_nothing();
    both.same_reads();
}

/// The paying cumulatives `U` and `V` restart from zero before either passes a limit
/// (2^125, out of reach within SPEC section 1 while a book has holders; lowered here to
/// 10^17, about twenty fundings' worth), moving every funding trigger by what they were
/// (`Book::rebase_fund_triggers`): through dozens of restarts, fundings that tip accounts
/// and receipts that recover them fire exactly as the reference engine's payments decide.
#[test]
fn paying_cumulatives_restart_past_their_limit() {
    let limit = 100_000_000_000_000_000;
    let cfg = Arc::new(synth::config(2));
    let fast = FastEngine::new(cfg).with_fund_paid_limit(limit).with_funding_settle_rounds(4);
    let mut both = Both::new(fast);
    book(&mut both);
    let mut rng = synth::Rng::new(17);
    let (mut restarts, mut events) = (0, 0);
    for k in 0..400 {
        let before = both.fast.funding[0].paid;
        // From −0.0005 to 0.0015, 0.0005 on average: at a mark near 100, c = ticks · rate_e8
        // · 10^7 is 5·10^15 on average, so `U` passes 10^17 every twenty fundings or so (and
        // `V`, which falls as much, restarts with it); longs pay, and thin ones tip.
        let units = rng.below(200_001) as i64 - 50_000;
        events += both.fund(if k % 5 == 0 { S1 } else { S0 }, units).len();
        // Without a restart an entry adds `2 · FUND_ROUNDING` to `U + V`.
        let after = both.fast.funding[0].paid;
        let sum = |p: [i128; 2]| p[0] + p[1];
        if after != before && sum(after) != sum(before) + 2 * super::FUND_ROUNDING {
            restarts += 1;
        }
        assert!(after.iter().all(|p| p.abs() <= limit), "{after:?}");
        if k % 30 == 0 {
            both.same_reads();
            let m = 9_800 + rng.below(400) as i64;
            events += both.mark(S0, m).len();
        }
    }
    assert!(restarts >= 5, "restarts: {restarts}");
    assert!(events > 0, "some funding or mark changed a state");
    both.same_reads();
}

/// Near the amount limit the lazy shortcut does not hold: the funding takes the exact path,
/// which reads every holder's true wallet, rejects naming the lowest account id, and when
/// nothing leaves the range pays every holder at once, lazily owed payments included.
#[test]
fn near_the_limit_the_exact_path_names_the_lowest_id() {
    let mut both = Both::with_rounds(super::DEFAULT_FUNDING_SETTLE_ROUNDS);
    book(&mut both);
    for k in 0..20 {
        both.fund(S0, 1_000 + k);
    }
    assert!(both.owes());
    let near = 99_999_999_999_999_000; // 999,999,999,999,990.00 in hundredths
    // Accounts 90 and 70 (made in that order) short S0, at the negative end of the range.
    for a in [90, 70] {
        both.position(a, S0, -1000, 10_000);
        both.apply(Command::Balance { account: a, wallet: e2(-near) });
    }
    // Account 80 long, at the top.
    both.position(80, S0, 1000, 10_000);
    both.apply(Command::Balance { account: 80, wallet: e2(near) });
    // Shorts pay at a negative rate: 70 and 90 would leave the range; 70 is named.
    let (mut got, mut want) = (Vec::new(), Vec::new());
    let cmd = Command::Funding { symbol: S0, rate: rate(-100_000_000 + 1) };
    let at = At { line: 999, seq: 999 };
    let fast = both.fast.apply(&cmd, at, &mut |e| got.push(e));
    let reference = both.reference.apply(&cmd, at, &mut |e| want.push(e));
    assert!(fast.is_err());
    assert_eq!(fast, reference);
    assert!(format!("{fast:?}").contains("wallet"), "{fast:?}");
    assert_eq!(both.fast.audit(), Ok(()));
    both.same_reads();
    // A funding whose largest payment (18 on 9 units) added to the largest wallet could
    // leave the range takes the exact path though no wallet leaves it (longs pay 0.02,
    // shorts receive): every holder is paid at once, what it owed lazily as well.
    let bound = both.fast.wallet_bound_e8;
    both.fund(S0, 2_000_000);
    assert!(both.fast.wallet_bound_e8 < bound + 1_800_000_000, "paid at once, not lazily");
    let (b, log) = (&both.fast.cross[0], &both.fast.funding[0]);
    assert!(b.fund_from.iter().all(|&f| f == log.end()), "every holder settled");
    both.same_reads();
    both.fund(S1, -2_000);
    both.same_reads();
}

/// A snapshot taken while payments are owed holds the true wallets: the restored engine
/// (empty funding logs) reports every account as the original does and passes its audit.
#[test]
fn a_snapshot_after_lazy_fundings_restores_equal() {
    let mut both = Both::with_rounds(super::DEFAULT_FUNDING_SETTLE_ROUNDS);
    book(&mut both);
    for k in 0..25 {
        both.fund(S0, 2_000 - 150 * k);
        both.fund(S1, 777);
    }
    assert!(both.owes());
    let at = both.at();
    let restored = both.restored();
    assert_eq!(restored.audit(), Ok(()));
    assert!(restored.funding.iter().all(|log| log.c.is_empty()));
    for id in both.fast.accounts() {
        assert_eq!(restored.account_report(id, at), both.fast.account_report(id, at), "{id}");
    }
    // And it goes on as the original: the same fundings give the same events.
    let mut again = Both { fast: restored, reference: both.reference, line: both.line };
    for k in 0..10 {
        again.fund(S0, 5_000 * (k - 5));
    }
    again.mark(S0, 9_600);
    again.same_reads();
}

/// What a position owes (`owed_e8`, 64-bit when the product fits) equals the sum of each
/// payment rounded on its own by the general division, at ties, around them, past 2^64 and at
/// the largest magnitudes, both signs.
#[test]
fn owed_payments_equal_the_general_rounding() {
    let e12 = 10i128.pow(12);
    let mut rng = synth::Rng::new(21);
    for _ in 0..20_000 {
        let bits = rng.below(50);
        let sign = if rng.below(2) == 0 { 1 } else { -1 };
        let lots = (1 + rng.below(1 << bits)) as i64 * sign;
        let log: Vec<i128> = (0..rng.below(6))
            .map(|_| {
                let c = match rng.below(4) {
                    0 => e12 / 2 * (2 * i128::from(rng.below(1000)) + 1),
                    1 => i128::from(rng.below(u64::MAX)) * i128::from(rng.below(1 << 20)),
                    2 => 10i128.pow(37) / i128::from(lots.unsigned_abs()),
                    _ => i128::from(rng.below(1 << 40)),
                };
                // Within SPEC section 1's limits a payment is below 10^37 before rounding.
                let c = c % (10i128.pow(37) / i128::from(lots.unsigned_abs()) + 1);
                if rng.below(2) == 0 { c } else { -c }
            })
            .collect();
        let want: i128 =
            log.iter().map(|&c| super::div_round_half_even(i128::from(lots) * c, e12)).sum();
        assert_eq!(super::owed_e8(lots, &log), want, "{lots} × {log:?}");
    }
}

/// A log's 64-bit payments ([`super::FundingLog::owed`]: entries split at 10^12) equal the
/// general ones ([`super::owed_e8`]) from every entry on: at ties of either parity, for
/// negative entries, for lots on both sides of the 2^24 limit, and with an entry too large
/// to split in the log (then every slot takes the general path until it is dropped).
#[test]
fn split_payments_equal_the_general_ones() {
    let e12 = 10i128.pow(12);
    let mut rng = synth::Rng::new(22);
    let (mut fast_paths, mut ties) = (0, 0);
    for round in 0..4_000 {
        let mut log = super::FundingLog { first: u32::MAX - 3, ..Default::default() };
        let n = 1 + rng.below(31) as usize;
        let lots_bits = [10, 20, 24, 25][round % 4];
        let q = 1 + rng.below(1 << lots_bits);
        for _ in 0..n {
            let c = match rng.below(5) {
                // A tie for this q: q · c = 10^12 · (odd or even) + 10^12 / 2.
                0 if q % 2 == 1 => {
                    ties += 1;
                    (e12 / 2) * (2 * i128::from(rng.below(1 << 20)) + 1)
                }
                1 => i128::from(rng.below(1 << 40)) * i128::from(rng.below(1 << 30)),
                2 if round % 50 == 0 => 10i128.pow(31) + i128::from(rng.below(1000)),
                _ => i128::from(rng.below(1 << 45)),
            };
            log.push(if rng.below(2) == 0 { c } else { -c });
        }
        for lots in [q as i64, -(q as i64)] {
            for k in 0..=n {
                let from = log.first.wrapping_add(k as u32);
                let want = super::owed_e8(lots, &log.c[k..]);
                assert_eq!(log.owed(lots, from), want, "{lots} from {k} of {:?}", log.c);
                fast_paths += usize::from(log.wide == 0 && q < 1 << 24);
            }
        }
        // Dropping the first entries keeps the split in step with the entries.
        let drop = rng.below(n as u64 + 1) as usize;
        log.drop_first(drop);
        log.first = log.first.wrapping_add(drop as u32);
        assert_eq!(log.split.len(), log.c.len());
        assert_eq!(log.wide, log.c.iter().filter(|&&c| super::Split::of(c).is_none()).count());
        let lots = q as i64;
        assert_eq!(log.owed(lots, log.first), super::owed_e8(lots, &log.c));
    }
    assert!(fast_paths > 10_000 && ties > 1_000, "{fast_paths} fast, {ties} ties");
}

/// Entry numbers wrap at 2^32 (a log's `first`, its round's start and every `fund_from` are
/// numbers modulo 2^32): an engine whose logs start 20 entries below the wrap goes through
/// it in rounds of 4 fundings, with reads, closes and a sweep, as the reference does.
#[test]
fn funding_entry_numbers_wrap_at_2_to_the_32() {
    let mut fast = FastEngine::new(Arc::new(synth::config(2))).with_funding_settle_rounds(4);
    for log in &mut fast.funding {
        (log.first, log.round_start) = (u32::MAX - 20, u32::MAX - 20);
    }
    let mut both = Both::new(fast);
    book(&mut both);
    let mut rng = synth::Rng::new(23);
    for k in 0..120 {
        both.fund(if k % 3 == 0 { S1 } else { S0 }, rng.below(4_001) as i64 - 2_000);
        if k % 20 == 0 {
            both.same_reads();
            both.position(1 + rng.below(40), S0, 0, 0);
        }
    }
    assert!(both.fast.funding.iter().all(|log| log.first < 1_000), "the numbers wrapped");
    assert!(both.owes());
    both.same_reads();
    both.sweep_finds_nothing();
}

/// A funding at rate 0 pays `round8(0) = 0` to every holder: it changes nothing, so the
/// engine skips it (no log entry, no settle, no isolated pass). Cross and isolated holders
/// keep every wallet, margin, trigger and log as they were, and the reads equal the
/// reference's before and after a later funding and mark.
#[test]
fn a_funding_at_rate_zero_changes_nothing() {
    let mut both = Both::with_rounds(3);
    book(&mut both);
    // Accounts 3, 9 and 15 hold no S1 position (`book`): isolated ones of 50 lots there.
    for a in [3u64, 9, 15] {
        both.apply(Command::MarginMode { account: a, symbol: S1, mode: Mode::Isolated });
        let size = D8(50 * 100_000);
        let (entry_price, isolated_margin) = (Some(e2(30_000)), Some(e2(40 + a as i64)));
        both.apply(Command::Position {
            account: a,
            symbol: S1,
            size,
            entry_price,
            isolated_margin,
        });
    }
    assert_eq!(both.fast.isolated[1].len(), 3);
    both.fund(S0, 7_000);
    // Its share of the progressive settle, which later messages would settle, settled now.
    while !both.fast.settle_queue.is_empty() {
        both.fast.settle_deferred();
    }
    let before = (
        both.fast.funding[0].c.clone(),
        both.fast.cross[0].fund_from.to_vec(),
        both.fast.cross[0].len(),
    );
    let (wallets, margins) =
        (both.fast.accounts.wallet_e8.to_vec(), both.fast.isolated[1].isolated_e8.to_vec());
    let triggers: Vec<i64> =
        (0..both.fast.isolated[1].len()).map(|k| both.fast.isolated[1].trigger(k)).collect();
    assert!(both.fund(S0, 0).is_empty());
    assert!(both.fund(S1, 0).is_empty());
    let after = (
        both.fast.funding[0].c.clone(),
        both.fast.cross[0].fund_from.to_vec(),
        both.fast.cross[0].len(),
    );
    assert_eq!(before, after);
    assert_eq!(wallets, both.fast.accounts.wallet_e8.to_vec());
    assert_eq!(margins, both.fast.isolated[1].isolated_e8.to_vec());
    let now: Vec<i64> =
        (0..both.fast.isolated[1].len()).map(|k| both.fast.isolated[1].trigger(k)).collect();
    assert_eq!(triggers, now);
    both.same_reads();
    both.fund(S1, -9_000);
    both.mark(S0, 9_000);
    both.same_reads();
    both.sweep_finds_nothing();
}
