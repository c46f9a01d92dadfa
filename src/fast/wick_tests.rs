//! Wicks (README, "Wicks"): a mark that fires thousands of items emits its isolated items
//! while it scans its isolated book (or lists them, built later on the rayon workers when
//! there are many and the engine is set so, `FastEngine::with_parallel_events`), then
//! refreshes its cross accounts with prefetching, a chunk at a time, each chunk's events
//! before the next chunk. Held to the
//! reference engine message by message: equal events (as a set; the SPEC leaves their order
//! within a message free), the fast engine's audit passing after each, and the events of one
//! run in the same order whatever the rayon pool.

use std::sync::Arc;

use super::FastEngine;
use crate::{
    config::{Mode, SymbolIdx},
    engine::{At, Engine},
    fixed::D8,
    protocol::{Command, Event},
    reference::ReferenceEngine,
    synth,
};

const SYMBOLS: usize = 4;

/// Symbol `s` at `pct_e1` tenths of a percent of its base price, on its 0.01 tick.
fn price(s: usize, pct_e1: i64) -> D8 {
    D8(i128::from(synth::base_price_e2(s) * pct_e1 / 1000) * 1_000_000)
}

/// A message with at least this many liquidations builds them on the rayon workers here.
const PARALLEL_EVENTS: usize = 128;

/// A 3,000-account book on both engines, every symbol marked at its base price.
fn book() -> (FastEngine, ReferenceEngine) {
    book_marked(SYMBOLS)
}

/// A 3,000-account book on both engines, the first `marked` symbols marked at their base
/// price.
fn book_marked(marked: usize) -> (FastEngine, ReferenceEngine) {
    let cfg = Arc::new(synth::config(SYMBOLS));
    let fast = FastEngine::new(cfg.clone()).with_parallel_events(PARALLEL_EVENTS);
    let (mut fast, mut reference) = (fast, ReferenceEngine::new(cfg));
    let at = At { line: 0, seq: 0 };
    let marks = Command::Marks { prices: (0..marked).map(|s| (sym(s), price(s, 1000))).collect() };
    for cmd in synth::book_commands(3_000, 9_000, SYMBOLS, 11).chain([marks]) {
        fast.apply(&cmd, at, &mut |_| {}).unwrap();
        reference.apply(&cmd, at, &mut |_| {}).unwrap();
    }
    (fast, reference)
}

fn sym(s: usize) -> SymbolIdx {
    SymbolIdx(s as u16)
}

/// Applies `cmds` to both engines; returns the fast engine's events per message, in its
/// order, after checking each message's against the reference's and the audit.
fn run(
    fast: &mut FastEngine,
    reference: &mut ReferenceEngine,
    cmds: &[Command],
) -> Vec<Vec<Event>> {
    let mut all = Vec::new();
    for (k, cmd) in cmds.iter().enumerate() {
        let at = At { line: k as u64 + 1, seq: k as u64 + 1 };
        let (mut got, mut want) = (Vec::new(), Vec::new());
        assert_eq!(fast.apply(cmd, at, &mut |e| got.push(e)), Ok(()));
        assert_eq!(reference.apply(cmd, at, &mut |e| want.push(e)), Ok(()));
        let key = |e: &Event| format!("{e:?}");
        let mut sorted = got.clone();
        sorted.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(sorted, want, "message {k}: {cmd:?}");
        assert_eq!(fast.audit(), Ok(()), "message {k}: {cmd:?}");
        all.push(got);
    }
    all
}

/// Wicks down and back on symbol 0 alone, then `marks` messages that move the symbols
/// apart (an account fired by one symbol's fall may be held up by another's rise, and
/// recover in the same message), then a one-message wick and its return.
fn wicks() -> Vec<Command> {
    let mark = |pct_e1| Command::Mark { symbol: sym(0), price: price(0, pct_e1) };
    let marks = |pcts: [i64; SYMBOLS]| Command::Marks {
        prices: (0..SYMBOLS).map(|s| (sym(s), price(s, pcts[s]))).collect(),
    };
    vec![
        mark(985),
        mark(960),
        mark(1000),
        mark(930),
        mark(1010),
        marks([950, 1040, 1000, 970]),
        marks([1040, 940, 960, 1000]),
        marks([1000, 1000, 1000, 1000]),
        mark(900),
        mark(1000),
        marks([880, 880, 880, 880]),
        marks([1000, 1000, 1000, 1000]),
    ]
}

#[test]
fn wicks_give_the_reference_events_and_build_many_in_parallel() {
    let (mut fast, mut reference) = book();
    let events = run(&mut fast, &mut reference, &wicks());
    let liquidations =
        |evs: &Vec<Event>| evs.iter().filter(|e| matches!(e, Event::Liquidation(_))).count();
    let most = events.iter().map(liquidations).max().unwrap();
    assert!(most >= PARALLEL_EVENTS, "a wick must take the parallel path (most {most})");
    let small = events.iter().map(liquidations).filter(|&n| n > 0 && n < PARALLEL_EVENTS);
    assert!(small.count() > 0, "some message must take the one-by-one path");
    let kinds = events.iter().flatten().filter_map(|e| match e {
        Event::Liquidation(l) => Some(l.mode),
        _ => None,
    });
    let isolated = kinds.clone().filter(|&m| m == Mode::Isolated).count();
    assert!(isolated > 0 && isolated < kinds.count(), "both kinds of item must liquidate");

    // The same stream on one rayon worker (chunks built one after another) gives the events
    // in the same order: the order does not depend on how the chunks were scheduled.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let (mut fast1, mut reference1) = book();
    let one = pool.install(|| run(&mut fast1, &mut reference1, &wicks()));
    assert_eq!(one, events);
}

/// A mark's isolated items leave while its isolated book is scanned, before its cross book
/// is moved (`tick_isolated`), where they used to be listed and built when the message ended:
/// the events and their order are the same either way, and so is the state. Both ways run
/// the wicks and two `marks` messages that move one symbol for the first time (its isolated
/// items are listed, as every first mark's are) and another that was marked before (emitted
/// at once), in both orders, on a book whose last symbol has no mark yet.
#[test]
fn isolated_items_emitted_during_the_scan_equal_the_listed_ones() {
    let last = SYMBOLS - 1;
    let mixed = |first_mark_first: bool, pct_e1: i64| {
        let mut prices = vec![(sym(0), price(0, pct_e1)), (sym(last), price(last, 880))];
        if first_mark_first {
            prices.reverse();
        }
        Command::Marks { prices }
    };
    let run_with = |inline: bool, first_mark_first: bool| {
        let (mut fast, mut reference) = book_marked(last);
        // usize::MAX: emitted during the scan; any other threshold lists them (and this one
        // builds them one by one, as the listed path does below its threshold).
        fast.parallel_events = if inline { usize::MAX } else { usize::MAX - 1 };
        let cmds: Vec<Command> =
            [mixed(first_mark_first, 890)].into_iter().chain(wicks()).collect();
        let events = run(&mut fast, &mut reference, &cmds);
        (events, refresh_state(&fast))
    };
    for first_mark_first in [false, true] {
        let (events, state) = run_with(true, first_mark_first);
        let isolated_symbols: Vec<std::sync::Arc<str>> = events[0]
            .iter()
            .filter_map(|e| match e {
                Event::Liquidation(l) if l.mode == Mode::Isolated => l.symbol.clone(),
                _ => None,
            })
            .collect();
        let names: std::collections::HashSet<_> = isolated_symbols.iter().collect();
        assert_eq!(names.len(), 2, "both symbols' isolated items liquidate: {names:?}");
        let (listed_events, listed_state) = run_with(false, first_mark_first);
        assert_eq!(events, listed_events, "the events and their order");
        assert!(state == listed_state, "the state after the stream");
    }
}

/// Ranked refreshes (the default) and book-order ones (`with_ranked_refreshes(false)`, as
/// `liqscan gen` runs) give the same events as the reference, message by message, and leave
/// the same state; only the order of cross events within a wick differs, and it does in at
/// least one message (so the ticks did rank the accounts they touched).
#[test]
fn ranked_refreshes_change_only_the_order_of_cross_events() {
    let run_with = |ranked: bool| {
        let (fast, mut reference) = book();
        let mut fast = fast.with_ranked_refreshes(ranked);
        fast.parallel_events = usize::MAX;
        let events = run(&mut fast, &mut reference, &wicks());
        (events, refresh_state(&fast))
    };
    let (ranked, ranked_state) = run_with(true);
    let (book_order, book_state) = run_with(false);
    assert!(ranked_state == book_state, "the state after the stream");
    let key = |e: &Event| format!("{e:?}");
    let mut reordered = 0;
    for (k, (a, b)) in ranked.iter().zip(&book_order).enumerate() {
        let (mut sa, mut sb) = (a.clone(), b.clone());
        sa.sort_by_key(key);
        sb.sort_by_key(key);
        assert_eq!(sa, sb, "message {k}: the same events");
        reordered += usize::from(a != b);
    }
    assert!(reordered > 0, "some wick's cross events come in another order");
}

/// The interleaved order (the isolated events, during the tick or, with parallel events off
/// here, listed; then the cross accounts refreshed `WICK_CHUNK` at a time by
/// `finish_message`, each chunk's events before the next chunk): a wick that
/// touches several chunks' worth of accounts, on one symbol and as a `marks` message that
/// fires several symbols at once, emits every item exactly once (no duplicate, nothing
/// lost: equal to the reference engine's set), isolated items before cross items (they need
/// no refresh), and in the same order on every run.
#[test]
fn interleaved_chunks_emit_every_item_once() {
    use std::collections::HashSet;
    let (mut fast, mut reference) = book();
    // Serial event building, so that the order is the chunked one.
    fast.parallel_events = usize::MAX;
    let n_before = fast.positions_evaluated();
    let cmds = [
        Command::Mark { symbol: sym(0), price: price(0, 900) },
        Command::Marks { prices: (0..SYMBOLS).map(|s| (sym(s), price(s, 1000))).collect() },
        Command::Marks { prices: (0..SYMBOLS).map(|s| (sym(s), price(s, 870))).collect() },
    ];
    let events = run(&mut fast, &mut reference, &cmds);
    // Several chunks of accounts were refreshed, so chunk boundaries fell inside the fired
    // set (a chunk is of accounts: an account's positions are refreshed in one go, and its
    // event, listing all of them, comes after its chunk).
    assert!(
        fast.positions_evaluated() - n_before > 4 * super::WICK_CHUNK as u64,
        "the wicks must refresh several chunks"
    );
    for (k, evs) in events.iter().enumerate() {
        let items: Vec<(u64, Mode, Option<String>)> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Liquidation(l) => {
                    Some((l.account, l.mode, l.symbol.as_deref().map(String::from)))
                }
                _ => None,
            })
            .collect();
        let unique: HashSet<_> = items.iter().cloned().collect();
        assert_eq!(unique.len(), items.len(), "message {k}: an item emitted twice");
        let first_cross = items.iter().position(|i| i.1 == Mode::Cross).unwrap_or(items.len());
        assert!(
            items[first_cross..].iter().all(|i| i.1 == Mode::Cross),
            "message {k}: isolated events come before cross events (they need no refresh)"
        );
    }
    let cross = |k: usize| {
        events[k].iter().filter(|e| matches!(e, Event::Liquidation(l) if l.mode == Mode::Cross))
    };
    assert!(cross(0).count() > 1 && cross(2).count() > 1, "both wicks liquidate cross items");
    let symbols: HashSet<_> = events[2]
        .iter()
        .filter_map(|e| match e {
            Event::Liquidation(l) if l.mode == Mode::Isolated => l.symbol.clone(),
            _ => None,
        })
        .collect();
    assert!(symbols.len() > 1, "the marks message fires several symbols: {symbols:?}");
    // The same stream again gives the same order.
    let (mut fast2, mut reference2) = book();
    fast2.parallel_events = usize::MAX;
    assert_eq!(run(&mut fast2, &mut reference2, &cmds), events);
}

/// Everything a refresh writes, per account and per slot: stored wallet, flag and reserve;
/// each cross slot's funding start, trigger and funding trigger; each isolated slot's flag and
/// trigger.
fn refresh_state(e: &FastEngine) -> Vec<i128> {
    let mut v = Vec::new();
    for (i, hot) in e.accounts.hot.iter().enumerate() {
        v.extend([e.accounts.wallet_e8[i], i128::from(hot.liquidatable), hot.reserve_q16]);
    }
    for book in &e.cross {
        for slot in 0..book.len() {
            v.push(i128::from(book.fund_from[slot]));
            v.extend([i128::from(book.trigger(slot)), book.fund_trigger(slot)]);
        }
    }
    for book in &e.isolated {
        for slot in 0..book.len() {
            v.extend([i128::from(book.liquidatable[slot]), i128::from(book.trigger(slot))]);
        }
    }
    v
}

/// A wick's refreshes planned on the workers (`wick.rs`) give the events of the one-by-one
/// refreshes, in the same order, and leave the same state after every message: wallets,
/// flags, reserves, every trigger and funding start. The stream first pays lazy fundings on
/// every symbol (so that the plans' settles pay something), then runs the wicks, with the
/// parallel path taken for every touched set (threshold 1) and for the big ones only (64), on
/// a two-worker pool; the counts of triggers read (which depend on the guards the commits
/// widen) are equal too.
#[test]
fn parallel_refreshes_equal_one_by_one_refreshes() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let fundings: Vec<Command> = (0..SYMBOLS)
        .flat_map(|s| [1, -2, 3].map(|r| Command::Funding { symbol: sym(s), rate: D8(r * 10_000) }))
        .collect();
    let cmds: Vec<Command> = fundings.into_iter().chain(wicks()).collect();
    let run_with = |threshold: usize| {
        let (mut fast, mut reference) = book();
        fast.parallel_refresh = threshold;
        fast.parallel_events = usize::MAX;
        let mut states = Vec::new();
        let mut events = Vec::new();
        for cmd in &cmds {
            events
                .extend(pool.install(|| run(&mut fast, &mut reference, std::slice::from_ref(cmd))));
            states.push((refresh_state(&fast), fast.positions_evaluated(), fast.triggers_read()));
        }
        (events, states)
    };
    let (serial_events, serial_states) = run_with(usize::MAX);
    let most = serial_events.iter().map(Vec::len).max().unwrap();
    assert!(most > 300, "a wick must touch several waves' worth of accounts (most events {most})");
    for threshold in [1, 64] {
        let (events, states) = run_with(threshold);
        assert_eq!(events, serial_events, "threshold {threshold}: events and their order");
        for (k, (got, want)) in states.iter().zip(&serial_states).enumerate() {
            assert!(got == want, "threshold {threshold}: state after message {k} differs");
        }
    }
}

/// Room made for a wick's lists ([`FastEngine::with_wick_scratch`]) changes no event and no
/// order, whether the wicks fit in it or outgrow it; the lists start empty with that room.
#[test]
fn wick_scratch_changes_no_event() {
    let cmds = wicks();
    let (mut plain, mut reference) = book();
    let want = run(&mut plain, &mut reference, &cmds);
    for entries in [1, 64, 1 << 12] {
        let (fast, mut reference) = book();
        let mut fast = fast.with_wick_scratch(entries);
        for (len, room) in [
            (fast.touched.len(), fast.touched.capacity()),
            (fast.fired.len(), fast.fired.capacity()),
            (fast.fired_old.len(), fast.fired_old.capacity()),
            (fast.ranked.len(), fast.ranked.capacity()),
            (fast.order.len(), fast.order.capacity()),
            (fast.emit_isolated.len(), fast.emit_isolated.capacity()),
            (fast.emit_cross.len(), fast.emit_cross.capacity()),
            (fast.terms.len(), fast.terms.capacity()),
        ] {
            assert!(len == 0 && room >= entries, "{len} entries, room for {room} < {entries}");
        }
        assert_eq!(run(&mut fast, &mut reference, &cmds), want, "scratch of {entries}");
    }
}

/// [`FastEngine::rank`] gives the order of a stable sort by rank key (the unranked last):
/// ties, which the unstable sort it runs breaks by the index in `touched`, stay in their
/// order.
#[test]
fn ranking_orders_as_a_stable_sort_by_key() {
    use super::book::AccountIdx;
    let (mut fast, _) = book();
    let n = 300usize;
    let touched: Vec<AccountIdx> = (0..n).map(|i| AccountIdx((n - i) as u32 * 7)).collect();
    // Every third account unranked; five key values among the rest, so most keys tie.
    let keys: Vec<Option<i128>> =
        (0..n).map(|i| (i % 3 != 0).then_some(((i * 7919) % 5) as i128 - 2)).collect();
    fast.ranked =
        keys.iter().enumerate().filter_map(|(k, key)| Some((k as u32, (*key)?))).collect();
    let mut want: Vec<(i128, AccountIdx)> =
        touched.iter().zip(&keys).map(|(&a, key)| (key.unwrap_or(i128::MAX), a)).collect();
    want.sort_by_key(|&(key, _)| key);
    let mut got = touched.clone();
    fast.rank(&mut got);
    assert_eq!(got, want.iter().map(|&(_, a)| a).collect::<Vec<_>>());
    assert!(fast.ranked.is_empty(), "rank clears the ranked list");
}
