//! Criterion benches of the fast engine's hot paths: full-book sweep, one tick as a function
//! of the symbol's holder count, account messages (id lookup and pair tables) and the account
//! index's hash, NDJSON parse + validate, integer vs `Decimal` evaluation of the same
//! positions, and an account query as a function of the account's cross positions (both
//! engines). `cargo bench --bench engine`.

use std::{hint::black_box, str::FromStr, sync::Arc};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use liqscan::{
    config::SymbolIdx,
    engine::{At, Engine},
    fast::{FastEngine, book::Scale},
    fixed::D8,
    protocol::{Command, parse_envelope, validate},
    reference::ReferenceEngine,
    synth,
};
use rust_decimal::Decimal;

const AT: At = At { line: 0, seq: 0 };

// The allocator the `liqscan` binary runs with (see `src/main.rs`), so that resident memory
// and timings are those of the product.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn ignore(_: liqscan::protocol::Event) {}

fn book(accounts: u64, positions: u64, symbols: usize) -> FastEngine {
    let mut engine = FastEngine::new(Arc::new(synth::config(symbols)));
    for cmd in synth::book_commands(accounts, positions, symbols, 42) {
        engine.apply(&cmd, AT, &mut ignore).unwrap();
    }
    let prices = (0..symbols)
        .map(|s| (SymbolIdx(s as u16), D8(i128::from(synth::base_price_e2(s)) * 1_000_000)))
        .collect();
    engine.apply(&Command::Marks { prices }, AT, &mut ignore).unwrap();
    engine
}

fn sweep(c: &mut Criterion) {
    let mut engine = book(100_000, 300_000, 50);
    let mut g = c.benchmark_group("sweep");
    g.sample_size(20);
    g.throughput(Throughput::Elements(engine.n_positions() as u64));
    g.bench_function("full_book_300k_positions", |b| b.iter(|| engine.sweep(AT, &mut ignore)));
    // The same sweep on pools of one and two workers, in the same run: how a small book
    // scales (issue 14 target 5: two workers at least 1.7x one).
    for workers in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(workers).build().unwrap();
        let id = BenchmarkId::new("full_book_300k_positions_workers", workers);
        g.bench_function(id, |b| b.iter(|| pool.install(|| engine.sweep(AT, &mut ignore))));
    }
    g.finish();
}

fn tick(c: &mut Criterion) {
    let mut g = c.benchmark_group("tick");
    g.sample_size(10);
    for holders in [1_000u64, 100_000, 1_000_000] {
        let mut engine = book(holders, holders, 1);
        let base = synth::base_price_e2(0);
        let mut k = 0i64;
        g.throughput(Throughput::Elements(holders));
        g.bench_with_input(BenchmarkId::new("apply_evaluate", holders), &holders, |b, _| {
            b.iter(|| {
                k += 1;
                let price = D8(i128::from(base + k % 3 - 1) * 1_000_000);
                engine
                    .apply(&Command::Mark { symbol: SymbolIdx(0), price }, AT, &mut ignore)
                    .unwrap()
            })
        });
    }
    g.finish();
}

/// Per-message cost of account messages on a 100k-account book (3 positions an account,
/// 50 symbols): the account id lookup, then the message's own work. `balance`: lookup, wallet,
/// refresh of the account's cross positions. `orders`: lookup, pair, the pair-funds table
/// (an entry made, then removed). 1,000 known accounts in random order per iteration.
fn account_messages(c: &mut Criterion) {
    let mut engine = book(100_000, 300_000, 50);
    let mut rng = synth::Rng::new(11);
    let ids: Vec<u64> = (0..1_000).map(|_| rng.below(100_000)).collect();
    let mut g = c.benchmark_group("apply_1000_account_messages");
    g.throughput(Throughput::Elements(ids.len() as u64));
    let mut k = 0i128;
    g.bench_function("balance", |b| {
        b.iter(|| {
            k += 1;
            for &account in &ids {
                let wallet = D8((1_000_000 + k % 7) * 100_000_000);
                engine.apply(&Command::Balance { account, wallet }, AT, &mut ignore).unwrap();
            }
        })
    });
    let mut n = 0u64;
    g.bench_function("orders", |b| {
        b.iter(|| {
            n += 1;
            for &account in &ids {
                let cmd = Command::Orders {
                    account,
                    symbol: SymbolIdx(0),
                    open_orders: n % 2,
                    order_margin: D8(0),
                };
                engine.apply(&cmd, AT, &mut ignore).unwrap();
            }
        })
    });
    g.finish();
}

/// The account index's lookup (a `hashbrown::HashTable<u32>` of indices into an id column, as
/// in `FastEngine`) under three hashes, on 1M random ids, 1,000 random hits an iteration:
/// FxHash (unkeyed, invertible: what the index used), SipHash-1-3 under a random key (std's
/// `RandomState`: what it uses), and foldhash seeded at random (the faster keyed option).
fn account_index_hash(c: &mut Criterion) {
    use std::hash::BuildHasher;

    use hashbrown::HashTable;

    fn table(ids: &[u64], hasher: &impl BuildHasher) -> HashTable<u32> {
        let mut t = HashTable::new();
        for (k, &id) in ids.iter().enumerate() {
            t.insert_unique(hasher.hash_one(id), k as u32, |&a| hasher.hash_one(ids[a as usize]));
        }
        t
    }
    fn lookups(t: &HashTable<u32>, ids: &[u64], probe: &[u64], hasher: &impl BuildHasher) -> u64 {
        let find = |id: u64| t.find(hasher.hash_one(id), |&a| ids[a as usize] == id);
        probe.iter().map(|&id| u64::from(*find(id).unwrap())).sum()
    }
    let mut rng = synth::Rng::new(3);
    let ids: Vec<u64> = (0..1_000_000).map(|_| rng.next_u64()).collect();
    let probe: Vec<u64> = (0..1_000).map(|_| ids[rng.below(ids.len() as u64) as usize]).collect();
    let fx = rustc_hash::FxBuildHasher;
    let sip = std::hash::RandomState::new();
    let fold = foldhash::fast::SeedableRandomState::with_seed(
        sip.hash_one(1u64),
        Box::leak(Box::new(foldhash::SharedSeed::from_u64(sip.hash_one(2u64)))),
    );
    let mut g = c.benchmark_group("account_index_1000_lookups_in_1m");
    g.throughput(Throughput::Elements(probe.len() as u64));
    let t = table(&ids, &fx);
    g.bench_function("fxhash_unkeyed", |b| b.iter(|| lookups(&t, &ids, &probe, &fx)));
    let t = table(&ids, &sip);
    g.bench_function("siphash13_keyed", |b| b.iter(|| lookups(&t, &ids, &probe, &sip)));
    let t = table(&ids, &fold);
    g.bench_function("foldhash_keyed", |b| b.iter(|| lookups(&t, &ids, &probe, &fold)));
    g.finish();
}

fn parse(c: &mut Criterion) {
    let cfg = synth::config(50);
    let lines = synth::mark_lines(50, 10_000, 3);
    let lines: Vec<&str> = lines.lines().collect();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("ndjson_marks_parse_validate", |b| {
        b.iter(|| {
            for l in &lines {
                let p = parse_envelope(l.as_bytes()).unwrap();
                black_box(validate(&p.envelope, &cfg).unwrap());
            }
        })
    });
    // Harness baseline: only splitting the same bytes into lines.
    let text = lines.join("\n");
    g.bench_function("baseline_line_split", |b| {
        b.iter(|| black_box(text.as_bytes().split(|&c| c == b'\n').count()))
    });
    g.finish();
}

/// The per-position liquidation test (`isolated margin + upnl - mm`) on 100 000 positions:
/// the engine's i128 fixed point against the same formula in `rust_decimal`.
fn integer_vs_decimal(c: &mut Criterion) {
    let cfg = synth::config(1);
    let sym = cfg.symbol(SymbolIdx(0));
    let scale = Scale::new(sym);
    let mut rng = synth::Rng::new(5);
    let n = 100_000;
    let ticks = synth::base_price_e2(0);
    let entry_e8 = ticks * 1_000_000; // the synthetic tick is 0.01
    // (lots, isolated margin in e8), the same positions in both representations.
    let raw: Vec<(i64, i64)> = (0..n)
        .map(|_| (rng.below(2_000_000) as i64 - 1_000_000, rng.below(1_000_000_000_000) as i64))
        .collect();
    let pos: Vec<(i64, i128)> = raw
        .iter()
        .map(|&(lots, margin_e8)| {
            (lots, i128::from(margin_e8) * 100_000_000 - scale.cost_q16(lots, entry_e8))
        })
        .collect();
    let dec: Vec<(Decimal, Decimal, Decimal)> = raw
        .iter()
        .map(|&(lots, margin_e8)| {
            (Decimal::new(lots, 3), Decimal::new(entry_e8, 8), Decimal::new(margin_e8, 8))
        })
        .collect();
    let brackets: Vec<(Decimal, Decimal, Decimal)> = sym
        .brackets
        .iter()
        .map(|b| {
            (
                Decimal::from_i128_with_scale(b.cap.0, 8),
                Decimal::from_i128_with_scale(b.mmr.0, 8),
                Decimal::from_i128_with_scale(b.cum.0, 8),
            )
        })
        .collect();
    let mark =
        Decimal::from_str(&format!("{}.{:02}", (ticks + 7) / 100, (ticks + 7) % 100)).unwrap();
    let integer =
        || pos.iter().filter(|&&(lots, base)| scale.buffer_q16(lots, base, ticks + 7) < 0).count();
    let decimal = || {
        dec.iter()
            .filter(|(size, entry, margin)| {
                let notional = size.abs() * mark;
                let (_, mmr, cum) = brackets
                    .iter()
                    .find(|(cap, _, _)| notional < *cap)
                    .unwrap_or(brackets.last().unwrap());
                let mm = notional * mmr - cum;
                *margin + size * (mark - entry) < mm
            })
            .count()
    };
    // The sweep's path: the mark prepared once, then over the columns, per position a
    // bracket count and one multiplication.
    let quote = liqscan::fast::book::Quote::new(&scale, ticks + 7);
    let (lots, base): (Vec<i64>, Vec<i128>) = pos.iter().copied().unzip();
    let quoted = || {
        let mut below = 0;
        quote.each_term(&lots, &base, |_, term| below += usize::from(term < 0));
        below
    };
    let liquidatable = integer();
    assert_eq!(liquidatable, decimal(), "both representations decide alike");
    assert_eq!(liquidatable, quoted(), "the prepared mark decides alike");
    assert!(liquidatable > 0 && liquidatable < n, "a mix of liquidatable and safe positions");
    let mut g = c.benchmark_group("evaluate_100k_positions");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("i128_fixed_point", |b| b.iter(integer));
    g.bench_function("i128_prepared_mark", |b| b.iter(quoted));
    g.bench_function("rust_decimal", |b| b.iter(decimal));
    g.finish();
}

/// One account holding `n` cross positions (one per symbol, every symbol marked 1 % above
/// its entry), applied to `engine`.
fn one_account_book(engine: &mut dyn Engine, n: usize) {
    let wallet = D8(1_000_000 * 100_000_000);
    engine.apply(&Command::Balance { account: 7, wallet }, AT, &mut ignore).unwrap();
    for s in 0..n {
        let (symbol, px_e2) = (SymbolIdx(s as u16), i128::from(synth::base_price_e2(s)));
        let size = D8(if s % 2 == 0 { 10_000_000 } else { -10_000_000 }); // ±0.1
        let entry_price = Some(D8(px_e2 * 1_000_000));
        let position =
            Command::Position { account: 7, symbol, size, entry_price, isolated_margin: None };
        engine.apply(&position, AT, &mut ignore).unwrap();
    }
    let prices =
        (0..n).map(|s| (SymbolIdx(s as u16), D8(i128::from(synth::base_price_e2(s)) * 1_010_000)));
    engine.apply(&Command::Marks { prices: prices.collect() }, AT, &mut ignore).unwrap();
}

/// A `query` of an account holding 10, 1 000 and 10 000 cross positions, on both engines: an
/// account report costs O(positions) (each position's liquidation price takes its own term
/// out of one total), so the time per position stays flat.
fn query(c: &mut Criterion) {
    let cfg = Arc::new(synth::config(10_000));
    let mut g = c.benchmark_group("query");
    g.sample_size(10);
    for n in [10usize, 1_000, 10_000] {
        let mut fast = FastEngine::new(cfg.clone());
        let mut reference = ReferenceEngine::new(cfg.clone());
        g.throughput(Throughput::Elements(n as u64));
        for (name, engine) in [
            ("fast", &mut fast as &mut dyn Engine),
            ("reference", &mut reference as &mut dyn Engine),
        ] {
            one_account_book(engine, n);
            let mut positions = 0;
            engine
                .apply(&Command::Query { account: 7 }, AT, &mut |e| {
                    if let liqscan::protocol::Event::Account(a) = e {
                        positions = a.positions.len();
                    }
                })
                .unwrap();
            assert_eq!(positions, n, "the account holds its positions");
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| engine.apply(&Command::Query { account: 7 }, AT, &mut ignore).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    sweep,
    tick,
    account_messages,
    account_index_hash,
    parse,
    integer_vs_decimal,
    query
);
criterion_main!(benches);
