//! The prefetch hint ([`Engine::prefetch`], `hint.rs`) never changes a result: an engine
//! given hints for random commands of the stream (ahead, behind, rejected ones, ids it does
//! not hold yet) between its applies gives the same events and ends in the same state as
//! one given none, and passes its audit.

use std::{io::Cursor, sync::Arc, time::Instant};

use super::FastEngine;
use crate::{
    config::Config,
    engine::{At, Engine, PrefetchStep, prefetch_steps},
    generator::{self, GenOptions},
    ingest::{Ingest, LineReader, Outcome},
    protocol::{Command, Event},
    synth::Rng,
};

/// The commands of a `liqscan gen` stream (snapshot, then the trade-heavy live mix).
fn stream(seed: u64) -> (Arc<Config>, Vec<(At, Command)>) {
    let mut opts = GenOptions::new(3_000, 6, 30_000, seed);
    opts.mark_ratio = 0.2;
    opts.fault_rate = 0.05;
    let cfg = Arc::new(Config::parse(&generator::config_text(opts.symbols)).unwrap());
    let text = generator::generate_string(&opts);
    let mut reader = LineReader::new(Cursor::new(text.into_bytes()), 1 << 16);
    let mut ingest = Ingest::new(cfg.clone());
    let mut commands = Vec::new();
    while let Some(line) = reader.next_line().unwrap() {
        let ingested = ingest.line(line, Instant::now());
        if let Outcome::Command { seq, cmd } = ingested.outcome {
            commands.push((At { line: ingested.line, seq }, cmd));
        }
    }
    (cfg, commands)
}

/// Every event, and every apply's outcome (rejects included), of `commands` on `engine`,
/// with `hint` called before each apply.
fn run(
    engine: &mut FastEngine,
    commands: &[(At, Command)],
    mut hint: impl FnMut(&FastEngine, usize),
) -> Vec<Result<Vec<Event>, String>> {
    let mut outcomes = Vec::with_capacity(commands.len());
    for (i, (at, cmd)) in commands.iter().enumerate() {
        hint(engine, i);
        let mut events = Vec::new();
        let result = engine.apply(cmd, *at, &mut |e| events.push(e));
        outcomes.push(result.map(|()| events).map_err(|r| format!("{r:?}")));
    }
    outcomes
}

#[test]
fn hints_never_change_events_or_state() {
    for seed in [1, 2] {
        let (cfg, commands) = stream(seed);
        let mut plain = FastEngine::new(cfg.clone());
        let want = run(&mut plain, &commands, |_, _| {});
        let mut hinted = FastEngine::new(cfg);
        let mut rng = Rng::new(seed);
        let n = commands.len() as u64;
        let got = run(&mut hinted, &commands, |engine, i| {
            // The pipeline's own hints, then a few at random anywhere in the stream.
            for (k, step) in prefetch_steps(2) {
                if let Some((_, cmd)) = commands.get(i + k) {
                    engine.prefetch(cmd, step);
                }
            }
            let steps = [
                PrefetchStep::Slot,
                PrefetchStep::Record,
                PrefetchStep::Pairs,
                PrefetchStep::Columns,
            ];
            for _ in 0..rng.below(4) {
                let step = steps[rng.below(4) as usize];
                engine.prefetch(&commands[rng.below(n) as usize].1, step);
            }
        });
        let applied = want.iter().filter(|o| o.is_ok()).count();
        let events: usize = want.iter().flatten().map(Vec::len).sum();
        let account_messages = commands.iter().filter(|(_, c)| c.account().is_some()).count();
        // The stream exercises what the hint reads: account messages, and events.
        assert!(account_messages > commands.len() / 2, "{account_messages} account messages");
        assert!(applied > commands.len() / 2, "{applied} applied");
        assert!(events > 100, "{events} events");
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "seed {seed}, command {i}: {:?}", commands[i]);
        }
        hinted.audit().unwrap();
        assert_eq!(hinted.accounts().collect::<Vec<_>>(), plain.accounts().collect::<Vec<_>>());
        assert_eq!(hinted.pairs().collect::<Vec<_>>(), plain.pairs().collect::<Vec<_>>());
        for id in plain.accounts() {
            let at = At { line: 0, seq: 0 };
            assert_eq!(hinted.account_report(id, at), plain.account_report(id, at), "account {id}");
        }
    }
}
