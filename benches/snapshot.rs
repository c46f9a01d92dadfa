//! Snapshot figures (SPEC section 9.4, issue 13) on the book `scripts/bench.sh` measures:
//! 1M accounts, 3M positions, 50 Zipf-skewed symbols. Prints one JSON object:
//! - `stall_ms`: how long the engine thread stops to copy its state ([`Engine::copy_state`]),
//!   the first time (buffers allocated and faulted in) and then into the buffers the writer
//!   hands back after readying them (`StateCopy::warm`; median and max of 9), which is every
//!   snapshot after the first (the daemon readies a first copy before the stream starts);
//! - `write_ms`, `bytes`: encoding the copy, writing, fsync, rename, fsync of the directory;
//! - `restore_ms`: reading and verifying the file, decoding it, and rebuilding the engine
//!   (every trigger computed anew), which the restored engine's audit then checks.
//!
//! `cargo bench --bench snapshot`; LIQSCAN_BENCH_ACCOUNTS / _POSITIONS change the book.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use liqscan::{
    config::SymbolIdx,
    engine::{At, Engine},
    fast::FastEngine,
    fixed::D8,
    protocol::Command,
    state::{
        Image,
        file::{self, EngineTag, Meta},
        image::{Counters, config_hash},
        store::{self, StateDir},
    },
    synth,
};

// The allocator the `liqscan` binary runs with, so that copy times are those of the product.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The book of `benches/figures.rs`: every account's balance and positions, then every
/// symbol marked at its base price.
fn book(accounts: u64, positions: u64, symbols: usize) -> FastEngine {
    let mut engine = FastEngine::new(Arc::new(synth::config(symbols)));
    let at = At { line: 0, seq: 0 };
    for cmd in synth::book_commands(accounts, positions, symbols, 42) {
        engine.apply(&cmd, at, &mut |_| {}).expect("the generated book is valid");
    }
    let prices = (0..symbols)
        .map(|s| (SymbolIdx(s as u16), D8(i128::from(synth::base_price_e2(s)) * 1_000_000)))
        .collect();
    engine.apply(&Command::Marks { prices }, at, &mut |_| {}).unwrap();
    engine
}

fn main() {
    let accounts = env("LIQSCAN_BENCH_ACCOUNTS", 1_000_000);
    let positions = env("LIQSCAN_BENCH_POSITIONS", 3_000_000);
    let symbols = 50;
    let built = Instant::now();
    let engine = book(accounts, positions, symbols);
    let build_s = built.elapsed().as_secs_f64();
    let cfg = Arc::new(synth::config(symbols));

    // The stall: the first copy, then copies into the previous copy's buffers.
    let t = Instant::now();
    let mut copy = engine.copy_state(None);
    let first = t.elapsed();
    // Copies into buffers the writer readied (`StateCopy::warm`, as it does after each
    // write), and into the previous copy's buffers without that.
    let mut warm = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..9 {
        copy.warm();
        let t = Instant::now();
        copy = engine.copy_state(Some(copy.into_any()));
        warm.push(t.elapsed());
        let t = Instant::now();
        copy = engine.copy_state(Some(copy.into_any()));
        plain.push(t.elapsed());
    }
    warm.sort();
    plain.sort();

    // What the copy writes (books without triggers, account columns, flattened pairs), and
    // how long a plain memcpy of that many bytes into a resident buffer takes on this
    // machine now, on one thread and on all rayon threads (best of 5): the stall's floor, to
    // read the stall against on a shared machine.
    let (n_cross, n_isolated) = engine.book_sizes();
    let copied = n_cross * 28
        + n_isolated * 45
        + engine.n_accounts() * (40 + 4)
        + n_cross * 12
        + n_isolated * 12;
    let src = vec![1u8; copied];
    let mut dst = vec![0u8; copied];
    let best = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .min()
            .unwrap()
    };
    let memcpy_one = best(&mut || dst.copy_from_slice(&src));
    let memcpy_all = best(&mut || {
        use rayon::prelude::*;
        dst.par_chunks_mut(1 << 20)
            .zip(src.par_chunks(1 << 20))
            .for_each(|(d, s)| d.copy_from_slice(s));
    });
    drop((src, dst));

    // The write, as the writer thread does it.
    let dir = std::env::temp_dir().join(format!("liqscan-bench-snapshot-{}", std::process::id()));
    let state = StateDir::open(&dir).unwrap();
    let meta = Meta {
        engine: EngineTag::Fast,
        config_hash: config_hash(&cfg),
        symbols: cfg.symbols.iter().map(|s| s.name.clone()).collect(),
        prelude_line: 1,
        last_seq: 1,
        counters: Counters::default(),
        created_unix_ns: store::now_unix_ns(),
    };
    let written = state.write(&*copy, &meta).unwrap();
    let bytes = written.header.body_bytes + file::HEADER_BYTES as u64;

    // The restore, as the daemon does it at start.
    let t = Instant::now();
    let raw = std::fs::read(&written.path).unwrap();
    let header = file::verify(&raw).unwrap();
    let read_verify = t.elapsed();
    let t = Instant::now();
    let (prelude, images) = file::decode(&raw, &header).unwrap();
    drop(raw);
    let image = Image::for_config(prelude, images, header.last_seq, &cfg).unwrap();
    let decode = t.elapsed();
    let t = Instant::now();
    let mut events = 0;
    let restored = FastEngine::restore(cfg.clone(), &image, false, &mut |_| events += 1).unwrap();
    let rebuild = t.elapsed();
    assert_eq!(events, 0, "no flag disagrees after a restore under the same config");
    assert_eq!(restored.n_positions(), engine.n_positions());
    restored.audit().expect("the restored engine passes its audit");
    let at = At { line: 1, seq: 1 };
    for id in (0..accounts).step_by(997) {
        assert_eq!(restored.account_report(id, at), engine.account_report(id, at), "{id}");
    }
    let _ = std::fs::remove_dir_all(&dir);

    let out = serde_json::json!({
        "accounts": accounts,
        "positions": engine.n_positions(),
        "symbols": symbols,
        "book_build_s": (build_s * 10.0).round() / 10.0,
        "stall_ms": {
            "first_copy": ms(first),
            "reused_median": ms(warm[warm.len() / 2]),
            "reused_max": ms(warm[warm.len() - 1]),
            "reused_min": ms(warm[0]),
            "reused_unwarmed_median": ms(plain[plain.len() / 2]),
            "bytes_copied": copied,
            "memcpy_same_bytes_one_thread": ms(memcpy_one),
            "memcpy_same_bytes_all_threads": ms(memcpy_all),
            "reused_median_over_memcpy_all_threads": ((warm[warm.len() / 2].as_secs_f64() / memcpy_all.as_secs_f64()) * 100.0).round() / 100.0,
        },
        "bytes": bytes,
        "bytes_per_position": (bytes as f64 / engine.n_positions() as f64 * 10.0).round() / 10.0,
        "write_ms": ms(written.elapsed),
        "restore_ms": {
            "read_and_verify": ms(read_verify),
            "decode": ms(decode),
            "rebuild": ms(rebuild),
            "total": ms(read_verify + decode + rebuild),
        },
        "rayon_threads": rayon::current_num_threads(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
