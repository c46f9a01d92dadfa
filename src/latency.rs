//! Latency histograms (HdrHistogram) and their percentile summaries.

use hdrhistogram::Histogram;

/// The highest value tracked: one hour in nanoseconds. Larger values saturate.
const MAX_NS: u64 = 3_600_000_000_000;

/// The percentiles reported everywhere.
pub const PERCENTILES: [(&str, f64); 4] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)];

/// One latency distribution in nanoseconds.
#[derive(Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency { hist: Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds") }
    }
}

/// Percentiles of one distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        self.hist.add(&other.hist).expect("histograms with the same bounds merge");
    }

    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    pub fn summary(&self) -> Summary {
        let h = &self.hist;
        if h.is_empty() {
            return Summary::default();
        }
        let [p50, p90, p99, p999] = PERCENTILES.map(|(_, q)| h.value_at_percentile(q));
        Summary { count: h.len(), p50, p90, p99, p999, max: h.max() }
    }
}

impl Summary {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count, "p50": self.p50, "p90": self.p90,
            "p99": self.p99, "p999": self.p999, "max": self.max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_data() {
        let mut l = Latency::default();
        for ns in 1..=1000 {
            l.record(ns * 1000);
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((499_000..=501_000).contains(&s.p50), "{s:?}");
        assert!((989_000..=991_000).contains(&s.p99), "{s:?}");
        assert!(s.max >= 999_000 && s.max <= 1_001_000, "{s:?}");
    }
}
