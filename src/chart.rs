//! The latency chart: HdrHistogram's "percentile spectrum", one line per distribution,
//! drawn as SVG with plotters.
//!
//! The x axis is log-scaled in 1 / (1 - percentile), so 90 %, 99 %, 99.9 %, ... sit one step
//! apart and the tail gets the room it deserves; the y axis is log-scaled latency.

use std::path::Path;

use plotters::prelude::*;

use crate::latency::Latency;

/// Line colours, in series order (colour-blind friendly: Okabe-Ito).
const COLOURS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

/// `x` on the chart's axis for percentile `q` (0..100).
fn x_of(q: f64) -> f64 {
    -(1.0 - q / 100.0).max(1e-12).log10()
}

/// "90%", "99.9%" for whole x; nothing in between.
fn percentile_label(x: f64) -> String {
    if (x - x.round()).abs() > 1e-6 {
        return String::new();
    }
    // The axis runs from 0 to at most 7; anything else (plotters may ask about values
    // outside the range) gets no label rather than a wrapped repeat count.
    match x.round() as i32 {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        k @ 3..=12 => format!("99.{}%", "9".repeat((k - 2) as usize)),
        _ => String::new(),
    }
}

/// Nanoseconds as a short human value: 850 ns, 12 µs, 3.5 ms, 2 s.
pub fn human_ns(ns: f64) -> String {
    let (v, unit) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "µs")
    } else {
        (ns, "ns")
    };
    if v >= 10.0 || (v - v.round()).abs() < 1e-9 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

/// Why a chart was not drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// Every distribution was empty: there is nothing to draw (not a failure to write).
    #[error("no latency values to plot")]
    Empty,
    /// Drawing or writing the file failed (the path, and the backend's reason).
    #[error("{0}")]
    Draw(String),
}

/// Draws `series` (name, distribution in ns) to an SVG file. Empty distributions are left
/// out; at least one must hold values ([`ChartError::Empty`] otherwise). A file that cannot
/// be written is [`ChartError::Draw`].
pub fn percentile_spectrum(
    path: &Path,
    title: &str,
    series: &[(String, Latency)],
) -> Result<(), ChartError> {
    let series: Vec<&(String, Latency)> =
        series.iter().filter(|(_, l)| !l.histogram().is_empty()).collect();
    if series.is_empty() {
        return Err(ChartError::Empty);
    }
    // x reaches the percentile that one sample in the largest series still resolves.
    let most = series.iter().map(|(_, l)| l.histogram().len()).max().unwrap_or(1) as f64;
    let x_max = most.log10().ceil().clamp(2.0, 7.0);
    let lo = series.iter().map(|(_, l)| l.histogram().min()).min().unwrap_or(1).max(1) as f64;
    let hi = series.iter().map(|(_, l)| l.histogram().max()).max().unwrap_or(1).max(2) as f64;
    let (y_lo, y_hi) = (10f64.powf(lo.log10().floor()), 10f64.powf(hi.log10().ceil()));

    // Drawn into memory, then written here: plotters' file target writes through a
    // `BufWriter` it drops unflushed, so a full disk would pass unnoticed.
    let mut svg = String::new();
    draw_svg(&mut svg, title, &series, x_max, (y_lo, y_hi))?;
    std::fs::write(path, svg)
        .map_err(|e| ChartError::Draw(format!("cannot write chart {}: {e}", path.display())))
}

fn draw_svg(
    svg: &mut String,
    title: &str,
    series: &[&(String, Latency)],
    x_max: f64,
    (y_lo, y_hi): (f64, f64),
) -> Result<(), ChartError> {
    let root = SVGBackend::with_string(svg, (1000, 620)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| ChartError::Draw(format!("cannot draw chart: {e}"));
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(18)
        .margin_right(48)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(0f64..x_max, (y_lo..y_hi).log_scale())
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_labels(x_max as usize + 1) // x_max is clamped to 2..=7 above
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| human_ns(*y))
        .x_desc("percentile")
        .y_desc("latency")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(draw)?;
    for (i, (name, latency)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()]; // in range: a remainder
        let h = latency.histogram();
        let points = h
            .iter_quantiles(4)
            .map(|v| (x_of(v.quantile_iterated_to() * 100.0), v.value_iterated_to() as f64))
            .filter(|&(x, _)| x <= x_max)
            .map(|(x, y)| (x, y.max(y_lo)));
        let s = latency.summary();
        let label = format!(
            "{name}  n={}  p50 {}  p99 {}  p99.9 {}  max {}",
            s.count,
            human_ns(s.p50 as f64),
            human_ns(s.p99 as f64),
            human_ns(s.p999 as f64),
            human_ns(s.max as f64)
        );
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(draw)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(4.0), "99.99%");
        assert_eq!(percentile_label(2.5), "");
        assert_eq!(percentile_label(-1.0), "", "no label (and no panic) outside the axis");
        assert_eq!(percentile_label(1e9), "");
        assert!((x_of(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(human_ns(850.0), "850 ns");
        assert_eq!(human_ns(12_300.0), "12 µs");
        assert_eq!(human_ns(3_500_000.0), "3.5 ms");
        assert_eq!(human_ns(1e9), "1 s");
    }

    #[test]
    fn draws_one_line_per_series() {
        let dir = std::env::temp_dir().join(format!("liqscan-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.svg");
        let (mut a, mut b) = (Latency::default(), Latency::default());
        for i in 1..=10_000u64 {
            a.record(1_000 + i * i / 50);
            b.record(200 + i);
        }
        let series = vec![("event".to_owned(), a), ("apply".to_owned(), b)];
        percentile_spectrum(&path, "test", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        // Each series is drawn in its colour twice: its line and its legend mark.
        for colour in ["#0072B2", "#D55E00"] {
            let drawn = svg.lines().filter(|l| l.contains("<polyline") && l.contains(colour));
            assert_eq!(drawn.count(), 2, "{colour}");
        }
        assert!(svg.contains("event  n=10000") && svg.contains("99.9%"), "{svg}");
        assert!(percentile_spectrum(&path, "t", &[("x".into(), Latency::default())]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
