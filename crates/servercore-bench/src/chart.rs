//! The `--chart FILE.svg` figure (plotters, SVG backend): latency against
//! load. Left, echo p99 (and p50) round-trip latency against the number of
//! clients; right, the broadcast chat round-trip latency distribution
//! (p50 … max). One line per implementation.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::{BroadcastResult, EchoResult, Latency};

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 500;
const PERCENTILES: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

fn color(implementation: &str) -> RGBColor {
    match implementation {
        "uring" => RGBColor(31, 119, 180),
        "poll" => RGBColor(44, 160, 44),
        "tokio" => RGBColor(255, 127, 14),
        _ => RGBColor(90, 90, 90),
    }
}

/// Writes the chart to `path` as SVG.
pub fn write(
    path: &Path,
    implementations: &[String],
    echo: &[EchoResult],
    broadcast: &[BroadcastResult],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("chart: {e}"))?;
    let (left, right) = root.split_horizontally(WIDTH / 2);
    echo_panel(&left, implementations, echo).map_err(|e| anyhow!("chart: {e}"))?;
    broadcast_panel(&right, implementations, broadcast).map_err(|e| anyhow!("chart: {e}"))?;
    root.present().map_err(|e| anyhow!("chart: {e}"))?;
    Ok(())
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn empty_panel(area: &DrawingArea<SVGBackend<'_>, Shift>, text: &str) -> DrawResult {
    area.draw(&Text::new(
        text.to_string(),
        (40, (HEIGHT / 2) as i32),
        ("sans-serif", 18).into_font(),
    ))?;
    Ok(())
}

/// A tick label with at most three significant digits and no trailing
/// zeros: `0.25`, `1.5`, `40`.
fn axis_label(value: f64) -> String {
    let text = if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn log_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (low, high) = values
        .filter(|v| *v > 0.0 && v.is_finite())
        .fold((f64::MAX, f64::MIN), |(low, high), v| {
            (low.min(v), high.max(v))
        });
    (low <= high).then(|| (low / 1.6, high * 1.6))
}

fn echo_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    implementations: &[String],
    echo: &[EchoResult],
) -> DrawResult {
    let ms = |us: u64| us.max(1) as f64 / 1000.0;
    // The client counts are load levels, evenly spaced whatever their
    // values, each labelled with its count.
    let mut counts: Vec<usize> = echo.iter().map(|r| r.clients).collect();
    counts.sort_unstable();
    counts.dedup();
    if counts.is_empty() {
        return empty_panel(area, "echo: not measured");
    }
    let level = |clients: usize| counts.iter().position(|&c| c == clients).unwrap_or(0) as f64;
    let x_high = counts.len() as f64 - 0.6;
    let Some((y_low, y_high)) = log_range(
        echo.iter()
            .filter(|r| r.latency.count > 0)
            .flat_map(|r| [ms(r.latency.p50_us), ms(r.latency.p99_us)]),
    ) else {
        return empty_panel(area, "echo: no latency samples");
    };
    let mut chart = ChartBuilder::on(area)
        .caption("echo: round-trip latency vs clients", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(-0.4f64..x_high, (y_low..y_high).log_scale())?;
    let label_counts = counts.clone();
    let x_label = move |x: &f64| {
        let index = x.round();
        if (x - index).abs() < 1e-6 && index >= 0.0 {
            label_counts
                .get(index as usize)
                .map_or_else(String::new, |count| count.to_string())
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(counts.len().max(2))
        .y_labels(12)
        .x_desc("concurrent clients (128 B ping-pong)")
        .y_desc("latency, ms (solid p99, dashed p50)")
        .x_label_formatter(&x_label)
        .y_label_formatter(&|y| axis_label(*y))
        .draw()?;
    for name in implementations {
        let mut rows: Vec<&EchoResult> = echo
            .iter()
            .filter(|r| &r.implementation == name && r.latency.count > 0)
            .collect();
        if rows.is_empty() {
            continue;
        }
        rows.sort_by_key(|r| r.clients);
        let colour = color(name);
        let p99: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (level(r.clients), ms(r.latency.p99_us)))
            .collect();
        let p50: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (level(r.clients), ms(r.latency.p50_us)))
            .collect();
        chart
            .draw_series(LineSeries::new(p99.clone(), colour.stroke_width(2)))?
            .label(format!("{name} p99"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart.draw_series(p99.iter().map(|p| Circle::new(*p, 4, colour.filled())))?;
        chart.draw_series(DashedLineSeries::new(
            p50.clone(),
            6,
            4,
            colour.stroke_width(1),
        ))?;
        chart.draw_series(
            p50.iter()
                .map(|p| Circle::new(*p, 3, colour.stroke_width(1))),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn percentiles(latency: &Latency) -> [u64; 5] {
    [
        latency.p50_us,
        latency.p90_us,
        latency.p99_us,
        latency.p999_us,
        latency.max_us,
    ]
}

fn broadcast_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    implementations: &[String],
    broadcast: &[BroadcastResult],
) -> DrawResult {
    let ms = |us: u64| us.max(1) as f64 / 1000.0;
    let measured: Vec<&BroadcastResult> =
        broadcast.iter().filter(|r| r.latency.count > 0).collect();
    let Some((y_low, y_high)) = log_range(
        measured
            .iter()
            .flat_map(|r| percentiles(&r.latency).map(ms)),
    ) else {
        return empty_panel(area, "broadcast: not measured");
    };
    let sessions = measured.first().map_or(0, |r| r.sessions);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("broadcast: chat round-trip latency, {sessions} sessions"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(-0.3f64..4.3f64, (y_low..y_high).log_scale())?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(5)
        .y_labels(12)
        .x_label_formatter(&|x| {
            let index = x.round();
            if (x - index).abs() < 1e-6 && (0.0..5.0).contains(&index) {
                PERCENTILES[index as usize].to_string()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| axis_label(*y))
        .x_desc("percentile")
        .y_desc("latency, ms")
        .draw()?;
    for name in implementations {
        let Some(result) = measured.iter().find(|r| &r.implementation == name) else {
            continue;
        };
        let colour = color(name);
        let points: Vec<(f64, f64)> = percentiles(&result.latency)
            .iter()
            .enumerate()
            .map(|(i, us)| (i as f64, ms(*us)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(axis_label(0.30000000000001), "0.3");
        assert_eq!(axis_label(0.125), "0.125");
        assert_eq!(axis_label(2.5), "2.5");
        assert_eq!(axis_label(40.0), "40");
        assert_eq!(axis_label(500.0), "500");
    }

    #[test]
    fn log_range_pads_and_skips_non_positive() {
        assert_eq!(log_range([0.0, -1.0].into_iter()), None);
        let (low, high) = log_range([10.0, 0.0, 100.0].into_iter()).unwrap();
        assert!(low < 10.0 && high > 100.0);
    }
}
