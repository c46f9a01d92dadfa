//! `GET /metrics` (SPEC 9.3): the Prometheus text exposition (format 0.0.4).
//!
//! Two kinds of figures: those the daemon's own tasks keep ([`Metrics`]: connections,
//! subscribers, refusals; `prometheus-client` counters and gauges shared by the tasks), and
//! those of the stream ([`EngineFigures`]: messages, rejects, liquidations, latencies), read on
//! the engine thread between two messages so that one scrape is one consistent point.
//!
//! `prometheus-client` has no summary type (client_rust issue #40), so the three latency
//! summaries are written after its output in the exposition format's own summary form:
//! `name{quantile="0.5"}` ... `name{quantile="1"}`, `name_sum`, `name_count`, quantiles from
//! the HDR histograms. With `--state-dir`, `liqscan_snapshot_age_seconds` and the snapshot
//! writer's figures (SPEC 9.4).

use std::fmt::{self, Write as _};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

use crate::{
    engine::Engine,
    latency::Latency,
    pipeline::{Point, REJECT_CODES},
};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The quantiles of every latency summary.
pub const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

/// Which listener refused a connection over its bound.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

/// The figures the daemon's tasks keep. Cloning shares them.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// 1 while an engine connection is being read (stdin counts as connected until its end).
    pub engine_connected: Gauge,
    /// Engine connections accepted.
    pub engine_connections: Counter,
    /// Cut-off last lines dropped when an engine connection ended mid-line.
    pub engine_cut_off_lines: Counter,
    /// Subscribers connected now.
    pub subscribers: Gauge,
    /// Subscribers cut because their buffer overflowed.
    pub subscribers_dropped: Counter,
    /// Connections refused over `--max-subscribers` / `--max-http-connections`.
    pub connections_refused: Family<ListenerLabel, Counter>,
    /// HTTP requests answered 400.
    pub http_bad_requests: Counter,
    /// The snapshot writer's figures, with `--state-dir` (SPEC 9.4).
    pub snapshots: Option<std::sync::Arc<crate::state::store::Stats>>,
}

/// The `liqscan_snapshot*` figures (SPEC 9.4), read from the writer's atomics.
#[derive(Debug)]
struct SnapshotFigures(std::sync::Arc<crate::state::store::Stats>);

impl Collector for SnapshotFigures {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.0;
        let newest = s.newest_unix_ns.load(Relaxed);
        if newest > 0 {
            let age = crate::state::store::now_unix_ns().saturating_sub(newest) as f64 / 1e9;
            let g = ConstGauge::new(age);
            g.encode(e.encode_descriptor(
                "liqscan_snapshot_age_seconds",
                "Seconds since the newest snapshot on disk was taken (written or restored).",
                None,
                g.metric_type(),
            )?)?;
        }
        counter(
            &mut e,
            "liqscan_snapshots_written",
            "Snapshots written.",
            s.written.load(Relaxed),
        )?;
        counter(
            &mut e,
            "liqscan_snapshots_skipped",
            "Snapshots due while the previous one was still being written (or the control queue was full).",
            s.skipped.load(Relaxed),
        )?;
        counter(
            &mut e,
            "liqscan_snapshots_failed",
            "Snapshots given up: a write failed, or the sinks did not confirm delivery in time.",
            s.failed.load(Relaxed),
        )?;
        gauge(
            &mut e,
            "liqscan_snapshot_bytes",
            "Size of the last snapshot written.",
            s.last_bytes.load(Relaxed),
        )?;
        for (name, help, ns) in [
            (
                "liqscan_snapshot_write_seconds",
                "Time the last snapshot took to encode, write and sync.",
                s.last_write_ns.load(Relaxed),
            ),
            (
                "liqscan_snapshot_stall_seconds",
                "Time the engine thread stopped to copy the state for the last snapshot.",
                s.last_stall_ns.load(Relaxed),
            ),
            (
                "liqscan_snapshot_stall_max_seconds",
                "Longest such stop since start.",
                s.max_stall_ns.load(Relaxed),
            ),
        ] {
            let g = ConstGauge::new(seconds(ns));
            g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

/// A latency distribution as the exposition shows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencyFigures {
    /// Values at [`QUANTILES`], in ns.
    pub quantiles_ns: [u64; 5],
    pub sum_ns: u64,
    pub count: u64,
}

impl LatencyFigures {
    fn of(latency: &Latency) -> Self {
        let h = latency.histogram();
        let mut quantiles_ns = [0; 5];
        // One pass over the counts for all five (the histogram is empty: all 0).
        for (slot, v) in quantiles_ns.iter_mut().zip(h.value_at_quantiles(QUANTILES)) {
            *slot = v;
        }
        LatencyFigures { quantiles_ns, sum_ns: latency.sum_ns(), count: h.len() }
    }
}

/// The stream's figures at one point, read on the engine thread.
#[derive(Debug, Clone, Default)]
pub struct EngineFigures {
    pub messages: u64,
    pub rejects_by_code: [u64; 8],
    pub gaps: u64,
    pub duplicates: u64,
    /// `[cross, isolated]`.
    pub liquidations_by_mode: [u64; 2],
    pub last_seq: u64,
    pub accounts: u64,
    pub positions: u64,
    pub event: LatencyFigures,
    pub ts_to_event: LatencyFigures,
    pub apply: LatencyFigures,
    /// Control requests answered before this one.
    pub control: LatencyFigures,
}

impl EngineFigures {
    /// Reads the figures; runs on the engine thread as a control request. Costs a pass over
    /// each histogram's counts and the engine's position count (one sum per symbol).
    pub fn read(engine: &dyn Engine, point: &Point<'_>) -> Self {
        let s = point.summary;
        EngineFigures {
            messages: s.messages,
            rejects_by_code: s.rejects_by_code,
            gaps: s.gaps,
            duplicates: s.duplicates,
            liquidations_by_mode: s.liquidations_by_mode,
            last_seq: point.at.seq,
            accounts: engine.n_accounts(),
            positions: engine.n_positions(),
            event: LatencyFigures::of(&s.event_latency),
            ts_to_event: LatencyFigures::of(&s.ts_latency),
            apply: LatencyFigures::of(&s.apply_latency),
            control: LatencyFigures::of(&s.control_latency),
        }
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

/// A gauge of a u64, written whole: a seq may be up to 2^64 - 1 (it was written as an i64,
/// `liqscan_last_seq` 9223372036854775807 after seq 2^64 - 1).
fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for EngineFigures {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        counter(&mut e, "liqscan_messages", "Messages read (non-blank lines).", self.messages)?;
        {
            let mut family = e.encode_descriptor(
                "liqscan_rejects",
                "Reject events, by reject code (SPEC section 5).",
                None,
                MetricType::Counter,
            )?;
            for (code, n) in REJECT_CODES.iter().zip(self.rejects_by_code) {
                let labels = [("code", code.as_str())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        counter(&mut e, "liqscan_gaps", "Gap events (a seq above the last + 1).", self.gaps)?;
        counter(&mut e, "liqscan_duplicates", "Messages dropped as duplicates.", self.duplicates)?;
        {
            let mut family = e.encode_descriptor(
                "liqscan_liquidations",
                "Liquidation events, by item mode.",
                None,
                MetricType::Counter,
            )?;
            for (mode, n) in ["cross", "isolated"].into_iter().zip(self.liquidations_by_mode) {
                ConstCounter::new(n).encode(family.encode_family(&[("mode", mode)])?)?;
            }
        }
        gauge(&mut e, "liqscan_last_seq", "The last effective seq applied.", self.last_seq)?;
        gauge(&mut e, "liqscan_accounts", "Accounts held.", self.accounts)?;
        gauge(&mut e, "liqscan_positions", "Non-zero positions held.", self.positions)
    }
}

/// Writes one summary in the text format.
fn write_summary(out: &mut String, name: &str, help: &str, f: &LatencyFigures) -> fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} summary")?;
    for (q, ns) in QUANTILES.iter().zip(f.quantiles_ns) {
        writeln!(out, "{name}{{quantile=\"{q}\"}} {}", seconds(ns))?;
    }
    writeln!(out, "{name}_sum {}", seconds(f.sum_ns))?;
    writeln!(out, "{name}_count {}", f.count)
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The whole exposition: the daemon's figures, the stream's, the latency summaries.
pub fn render(metrics: &Metrics, figures: EngineFigures) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    let m = metrics.clone();
    registry.register(
        "liqscan_engine_connected",
        "1 while the engine stream is connected",
        m.engine_connected,
    );
    registry.register(
        "liqscan_engine_connections",
        "Engine connections accepted",
        m.engine_connections,
    );
    registry.register(
        "liqscan_engine_cut_off_lines",
        "Cut-off last lines dropped when an engine connection ended mid-line",
        m.engine_cut_off_lines,
    );
    registry.register("liqscan_subscribers", "Event subscribers connected", m.subscribers);
    registry.register(
        "liqscan_subscribers_dropped",
        "Subscribers disconnected because their buffer overflowed",
        m.subscribers_dropped,
    );
    // Both listeners' series from the start, at 0 (a labelled family shows none until used).
    for listener in ["events", "http"] {
        let _ = m.connections_refused.get_or_create(&ListenerLabel { listener });
    }
    registry.register(
        "liqscan_connections_refused",
        "Connections refused over a bound, by listener",
        m.connections_refused,
    );
    registry.register(
        "liqscan_http_bad_requests",
        "HTTP requests answered 400",
        m.http_bad_requests,
    );
    let latencies = [
        ("liqscan_event_latency_seconds", "Line read to event handed to the sinks.", figures.event),
        (
            "liqscan_ts_to_event_latency_seconds",
            "Sender ts to event handed to the sinks, for messages with ts.",
            figures.ts_to_event,
        ),
        ("liqscan_apply_latency_seconds", "Apply and evaluate time per command.", figures.apply),
        (
            "liqscan_control_hold_seconds",
            "Time each query (HTTP /accounts, /at-risk, /metrics) held the engine thread.",
            figures.control,
        ),
    ];
    registry.register_collector(Box::new(figures));
    if let Some(stats) = &metrics.snapshots {
        registry.register_collector(Box::new(SnapshotFigures(stats.clone())));
    }
    let mut out = String::with_capacity(8 << 10);
    prometheus_text::encode(&mut out, &registry)?;
    for (name, help, f) in &latencies {
        write_summary(&mut out, name, help, f)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream's gauges are written whole up to u64::MAX (a seq past 2^63 was written as
    /// i64::MAX).
    #[test]
    fn gauges_hold_every_u64() {
        for v in [0, 1 << 63, u64::MAX - 1, u64::MAX] {
            let figures = EngineFigures { last_seq: v, accounts: v, ..EngineFigures::default() };
            let text = render(&Metrics::default(), figures).unwrap();
            for name in ["liqscan_last_seq", "liqscan_accounts"] {
                let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
                assert_eq!(line, format!("{name} {v}"), "{text}");
            }
        }
    }
}
