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
        interval_log::{
            IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, LogIteratorError, Tag,
        },
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
        // Constant bounds that hdrhistogram accepts (1 <= low, high >= 2 * low, 3 digits).
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
        // Both were made by `Latency::default` or `read_log` (which adds into one): the same
        // bounds, and a histogram always takes another of its own bounds.
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
            .map_err(|e| io::Error::other(format!("cannot write histogram {name}: {e}")))?;
    }
    Ok(())
}

/// Reads an HdrHistogram interval log: one distribution per tag (untagged intervals under
/// `""`), intervals of the same tag added up, in order of first appearance.
///
/// Errors are sentences for a person: the line that is not part of a log (with its first
/// characters), or the interval whose histogram cannot be decoded and why.
pub fn read_log(text: &[u8]) -> Result<Vec<(String, Latency)>, String> {
    let mut out: Vec<(String, Latency)> = Vec::new();
    let mut deserializer = Deserializer::new();
    for entry in IntervalLogIterator::new(text) {
        let interval = match entry {
            Ok(LogEntry::Interval(interval)) => interval,
            Ok(_) => continue,
            Err(LogIteratorError::ParseError { offset }) => {
                return Err(not_a_log_line(text, offset));
            }
        };
        let name = interval.tag().map(|t| t.as_str().to_owned()).unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(interval.encoded_histogram())
            .map_err(|e| format!("interval {name:?}: its histogram is not base64 ({e})"))?;
        let hist: Histogram<u64> = deserializer
            .deserialize(&mut &bytes[..])
            .map_err(|e| format!("interval {name:?}: its histogram cannot be decoded ({e})"))?;
        let i = match out.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                out.push((name, Latency::default()));
                out.len() - 1
            }
        };
        out[i].1.hist.add(&hist).map_err(|e| {
            format!("interval {:?}: values beyond liqscan's one-hour range ({e})", out[i].0)
        })?;
    }
    Ok(out)
}

/// "line 3 is not part of an HdrHistogram interval log: "{"default_m..."".
fn not_a_log_line(text: &[u8], offset: usize) -> String {
    // The iterator reports an offset inside `text`; clamp anyway, a wrong offset must not
    // turn a parse error into a panic.
    let offset = offset.min(text.len());
    let line = 1 + text[..offset].iter().filter(|&&b| b == b'\n').count();
    let rest = &text[offset..];
    let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len()).min(40);
    let shown = String::from_utf8_lossy(&rest[..end]);
    format!("line {line} is not part of an HdrHistogram interval log (it reads \"{shown}\")")
}

/// The time of `clock` (a Linux clock id such as `libc::CLOCK_THREAD_CPUTIME_ID` for this
/// thread's CPU time, or `libc::CLOCK_MONOTONIC`) in ns; the examples that measure the engine
/// (`examples/apply_kinds`, `fundings`, `wick`) read their clocks through it.
#[allow(unsafe_code)]
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; `clock_gettime` writes only into it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(rc, 0, "clock {clock} cannot be read");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
        let err = read_log(b"Tag=x,0.0,1.0,2.0,not-base64!\n").err().unwrap();
        assert!(err.starts_with("interval \"x\": its histogram is not base64"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused_in_words() {
        // (label, text, expected message)
        let cases: [(&str, &[u8], &str); 3] = [
            (
                "TC1 JSON",
                b"{\"default_margin_mode\":\"cross\"}\n",
                r#"line 1 is not part of an HdrHistogram interval log (it reads "{"default_margin_mode":"cross"}")"#,
            ),
            (
                "TC2 after a comment",
                b"#[a comment]\nhello\n",
                r#"line 2 is not part of an HdrHistogram interval log (it reads "hello")"#,
            ),
            (
                "TC3 bad histogram",
                b"Tag=x,0.0,1.0,2.0,AAAA\n",
                "interval \"x\": its histogram cannot be decoded",
            ),
        ];
        for (label, text, want) in cases {
            let err = read_log(text).err().unwrap();
            assert!(err.starts_with(want), "{label}: {err}");
            assert!(!err.contains("ParseError") && !err.contains("offset"), "{label}: {err}");
        }
    }
}
