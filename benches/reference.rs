//! Baselines of the reference engine: NDJSON parse + validate rate, and replay throughput
//! on a mark-heavy stream over a small book. The fast engine's benches compare against these.

use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use liqscan::{
    config::Config,
    protocol::{parse_envelope, validate},
    reference::ReferenceEngine,
    replay,
};

fn config() -> Arc<Config> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/config/multi_tier.json");
    Arc::new(Config::load(std::path::Path::new(path)).unwrap())
}

/// 100 cross accounts with BTC and ETH positions, then `n` alternating marks.
fn stream(n: usize) -> Vec<u8> {
    let mut s = String::new();
    for a in 0..100 {
        s += &format!("{{\"type\":\"balance\",\"account\":{a},\"wallet\":\"5000\"}}\n");
        s += &format!(
            "{{\"type\":\"position\",\"account\":{a},\"symbol\":\"BTCUSDT\",\"size\":\"0.{a:03}\",\"entry_price\":\"30000\"}}\n"
        );
        s += &format!(
            "{{\"type\":\"position\",\"account\":{a},\"symbol\":\"ETHUSDT\",\"size\":\"-{a}.5\",\"entry_price\":\"2000\"}}\n"
        );
    }
    for i in 0..n {
        let (sym, base) = if i % 2 == 0 { ("BTCUSDT", 30000) } else { ("ETHUSDT", 2000) };
        let px = base + (i % 200) as i64 - 100;
        s += &format!("{{\"type\":\"mark\",\"symbol\":\"{sym}\",\"price\":\"{px}.1\"}}\n");
    }
    s.into_bytes()
}

fn bench(c: &mut Criterion) {
    let cfg = config();
    let line = br#"{"type":"position","account":42,"symbol":"BTCUSDT","size":"0.5","entry_price":"65010.25","seq":812}"#;
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_validate_position", |b| {
        b.iter(|| {
            let p = parse_envelope(black_box(line)).unwrap();
            black_box(validate(&p.envelope, &cfg).unwrap())
        })
    });
    g.finish();

    let input = stream(2_000);
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.throughput(Throughput::Elements(input.iter().filter(|&&b| b == b'\n').count() as u64));
    g.bench_function("reference_marks_100_accounts", |b| {
        b.iter(|| {
            let mut engine = ReferenceEngine::new(cfg.clone());
            replay::replay(cfg.clone(), &mut engine, &input[..], std::io::sink()).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
