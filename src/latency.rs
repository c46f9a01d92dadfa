//! Latency histograms (HdrHistogram), their percentile summaries, and the HdrHistogram
//! interval log that carries them to other tools (`--hdr-out`, `liqscan plot`).

use std::{
    io::{self, Write},
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use hdrhistogram::{
    Histogram,
    serialization::{
        Deserializer, V2DeflateSerializer,
        interval_log::{IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag},
    },
};

/// The highest value tracked: one hour in nanoseconds. Larger values saturate.
const MAX_NS: u64 = 3_600_000_000_000;

/// The percentiles reported everywhere.
pub const PERCENTILES: [(&str, f64); 4] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)];

/// One latency distribution in nanoseconds.
#[derive(Clone)]
pub struct Latency {
    hist: Histogram<u64>,
    /// The exact sum of the values recorded (saturating), for Prometheus' `_sum`; the log
    /// format does not carry it, so a distribution read back from a log has 0.
    sum_ns: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            hist: Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds"),
            sum_ns: 0,
        }
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
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    pub fn merge(&mut self, other: &Latency) {
        self.hist.add(&other.hist).expect("histograms with the same bounds merge");
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    /// The sum of every value recorded, in ns (saturating at `u64::MAX`, about 584 years).
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
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

/// Writes named distributions as an HdrHistogram interval log, the format of the Java
/// `HistogramLogWriter` that `HistogramLogProcessor`, HdrHistogram's plotters and this crate
/// read: one interval per distribution, tagged with its name (a tag has no spaces or commas),
/// values in nanoseconds. The empty ones are left out.
pub fn write_log<W: Write>(
    out: &mut W,
    started: SystemTime,
    elapsed: Duration,
    series: &[(&str, &Latency)],
) -> io::Result<()> {
    writeln!(out, "#[liqscan {} latency histograms, values in ns]", env!("CARGO_PKG_VERSION"))?;
    let start = started.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    writeln!(out, "#[StartTime: {:.3} (seconds since epoch)]", start.as_secs_f64())?;
    writeln!(out, "#[BaseTime: {:.3} (seconds since epoch)]", start.as_secs_f64())?;
    writeln!(
        out,
        r#""StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram""#
    )?;
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new().begin_log_with(out, &mut serializer)?;
    for (name, latency) in series {
        if latency.hist.is_empty() {
            continue;
        }
        let tag = Tag::new(name).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("bad histogram tag {name:?}"))
        })?;
        log.write_histogram(&latency.hist, Duration::ZERO, elapsed, Some(tag))
            .map_err(|e| io::Error::other(format!("cannot write histogram {name}: {e:?}")))?;
    }
    Ok(())
}

/// Reads an HdrHistogram interval log: one distribution per tag (untagged intervals under
/// `""`), intervals of the same tag added up, in order of first appearance.
pub fn read_log(text: &[u8]) -> Result<Vec<(String, Latency)>, String> {
    let mut out: Vec<(String, Latency)> = Vec::new();
    let mut deserializer = Deserializer::new();
    for entry in IntervalLogIterator::new(text) {
        let LogEntry::Interval(interval) =
            entry.map_err(|e| format!("not an HdrHistogram interval log: {e:?}"))?
        else {
            continue;
        };
        let name = interval.tag().map(|t| t.as_str().to_owned()).unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(interval.encoded_histogram())
            .map_err(|e| format!("interval {name:?}: bad base64: {e}"))?;
        let hist: Histogram<u64> = deserializer
            .deserialize(&mut &bytes[..])
            .map_err(|e| format!("interval {name:?}: bad histogram: {e:?}"))?;
        let i = match out.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                out.push((name, Latency::default()));
                out.len() - 1
            }
        };
        out[i].1.hist.add(&hist).map_err(|e| format!("interval {:?}: {e:?}", out[i].0))?;
    }
    Ok(out)
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

    #[test]
    fn log_round_trips() {
        let (mut a, mut b) = (Latency::default(), Latency::default());
        for ns in 1..=5000 {
            a.record(ns * 100);
            b.record(ns * 7 + 3);
        }
        let mut text = Vec::new();
        let series = [("event", &a), ("apply", &b), ("empty", &Latency::default())];
        write_log(&mut text, SystemTime::now(), Duration::from_secs(2), &series).unwrap();
        let back = read_log(&text).unwrap();
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["event", "apply"], "empty ones left out");
        assert_eq!(back[0].1.summary(), a.summary());
        assert_eq!(back[1].1.summary(), b.summary());
        assert!(read_log(b"Tag=x,0.0,1.0,2.0,not-base64!\n").is_err());
    }
}
