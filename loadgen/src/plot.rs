//! `--plot FILE.svg`: pictures of a run for people, drawn with `plotters` into SVG that any
//! browser shows. Four kinds: the latency percentile distribution (storm, rate, merge),
//! latency against offered rate (ramp), a reconnect storm's recovery (reconnect), and
//! contenders side by side (benches/compare.sh).

use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use plotters::chart::DualCoordChartContext;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

use crate::report::human_us;

const SIZE: (u32, u32) = (960, 560);
/// Distinct on white and in grey print (the matplotlib "tab10" colours).
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn color(index: usize) -> RGBColor {
    COLORS[index % COLORS.len()]
}
const FONT: &str = "sans-serif";

/// The latency unit a chart uses: µs while everything fits in 2 ms, else ms.
fn unit_for(max_us: f64) -> (&'static str, f64) {
    if max_us >= 2000.0 {
        ("ms", 1e-3)
    } else {
        ("µs", 1.0)
    }
}

fn failed(e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!("drawing: {e:?}")
}

/// The legend: top left, on a light box.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(failed)
}

fn write(root: &DrawingArea<SVGBackend<'_>, Shift>, path: &Path) -> anyhow::Result<()> {
    root.present()
        .map_err(failed)
        .with_context(|| format!("writing {}", path.display()))
}

/// A log-axis tick: enough digits to tell 0.2 from 0.5.
fn tick(y: f64) -> String {
    match y {
        y if y >= 10.0 => format!("{y:.0}"),
        y if y >= 1.0 => format!("{y:.1}"),
        _ => format!("{y:.2}"),
    }
}

/// A percentile on the usual HdrHistogram axis, where 90%, 99%, 99.9% lie equally apart:
/// `x = log10(1 / (1 - q))`.
fn percentile_label(x: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.ceil() as usize).saturating_sub(2);
    format!("{percent:.decimals$}%")
}

/// Latency at every percentile, one line per series (empty histograms are left out).
pub fn percentiles(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> anyhow::Result<()> {
    let series: Vec<_> = series.iter().filter(|(_, h)| !h.is_empty()).collect();
    // Resolve the tail only as far as the samples do: 1,000 samples say nothing of 99.99%.
    let samples = series.iter().map(|(_, h)| h.len()).max().unwrap_or(10);
    let x_max = (samples as f64).log10().floor().clamp(1.0, 6.0);
    let q_max = 1.0 - 10f64.powf(-x_max);
    let max_us = series
        .iter()
        .map(|(_, h)| h.value_at_quantile(q_max))
        .max()
        .unwrap_or(1) as f64;
    let (unit, scale) = unit_for(max_us);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, 0f64..(max_us * scale * 1.1).max(1.0))
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc(format!("latency ({unit})"))
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()
        .map_err(failed)?;
    for (index, (name, histogram)) in series.iter().enumerate() {
        let color = color(index);
        let points: Vec<(f64, f64)> = (0..=400)
            .map(|k| {
                let x = x_max * f64::from(k) / 400.0;
                let q = 1.0 - 10f64.powf(-x);
                (x, histogram.value_at_quantile(q) as f64 * scale)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(failed)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    legend(&mut chart)?;
    write(&root, path)
}

/// A reconnect storm's recovery: attempts, refusals and clients in per second on the left
/// axis; on the right, the share of clients in and (with `--server-pid`) the server's CPU.
/// `timeline` holds [`crate::report::Moment`]s of a tenth of a second each.
pub fn recovery(
    path: &Path,
    title: &str,
    timeline: &[crate::report::Moment],
    clients: u64,
    server_cpu: &[(f64, f64)],
) -> anyhow::Result<()> {
    let step = crate::report::MOMENT.as_secs_f64();
    let x_max = (timeline.len() as f64 * step)
        .max(server_cpu.last().map_or(0.0, |p| p.0))
        .max(step);
    type Pick = fn(&crate::report::Moment) -> u64;
    let rates: [(&str, Pick); 3] = [
        ("attempts/s", |m| m.attempts),
        ("refusals/s", |m| m.refused),
        ("clients in/s", |m| m.clients_in),
    ];
    let y_max = timeline
        .iter()
        .map(|m| m.attempts.max(m.clients_in))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        / step
        * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let percent_max = server_cpu.iter().map(|p| p.1).fold(100.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .right_y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(failed)?
        .set_secondary_coord(0f64..x_max, 0f64..percent_max);
    chart
        .configure_mesh()
        .x_desc("seconds from the start of the storm")
        .y_desc("per second")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(failed)?;
    chart
        .configure_secondary_axes()
        .y_desc("% (clients in; server CPU of one core)")
        .draw()
        .map_err(failed)?;
    for (index, (name, pick)) in rates.iter().enumerate() {
        let color = color(index);
        let points: Vec<(f64, f64)> = timeline
            .iter()
            .enumerate()
            .map(|(i, m)| ((i as f64 + 0.5) * step, pick(m) as f64 / step))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(failed)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    let mut inside = 0u64;
    let share: Vec<(f64, f64)> = timeline
        .iter()
        .enumerate()
        .map(|(i, m)| {
            inside += m.clients_in;
            (
                (i + 1) as f64 * step,
                100.0 * inside as f64 / clients.max(1) as f64,
            )
        })
        .collect();
    let black = BLACK;
    chart
        .draw_secondary_series(LineSeries::new(share, black.stroke_width(3)))
        .map_err(failed)?
        .label("clients in, % (right axis)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], black.stroke_width(3)));
    if !server_cpu.is_empty() {
        server_cpu_line(
            &mut chart,
            server_cpu,
            "server CPU, % of one core (right axis)",
        )?;
    }
    legend(&mut *chart)?;
    write(&root, path)
}

/// The server's CPU as a dashed grey line on a chart's right-hand axis; returns its colour.
fn server_cpu_line<'a, X, Y>(
    chart: &mut DualCoordChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<X, Y>,
        Cartesian2d<RangedCoordf64, RangedCoordf64>,
    >,
    points: &[(f64, f64)],
    label: &str,
) -> anyhow::Result<RGBColor>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged,
{
    let grey = RGBColor(110, 110, 110);
    chart
        .draw_secondary_series(DashedLineSeries::new(
            points.to_vec(),
            3,
            3,
            grey.stroke_width(2),
        ))
        .map_err(failed)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2)));
    Ok(grey)
}

/// One step of a ramp, as the ramp plot needs it.
#[derive(Debug, Clone, Copy)]
pub struct RampStep {
    pub offered: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// The server's CPU time over the step per second of it (`--server-pid`): 1.0 is one
    /// core busy.
    pub server_cpu_share: Option<f64>,
}

/// p50, p99 and p99.9 against the offered rate, on a log latency axis, with the SLO as a
/// dashed line and the knee (the highest rate that met the SLO) marked; with the server's
/// CPU, a dotted line of it on a right-hand axis.
pub fn ramp(
    path: &Path,
    title: &str,
    steps: &[RampStep],
    slo_us: Option<u64>,
    knee: Option<f64>,
) -> anyhow::Result<()> {
    let lowest = steps.iter().map(|s| s.p50_us).min().unwrap_or(1).max(1) as f64;
    let highest = steps
        .iter()
        .map(|s| s.p999_us)
        .chain(slo_us)
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let (unit, scale) = unit_for(highest);
    let rate_max = steps.iter().map(|s| s.offered).fold(1.0, f64::max) * 1.05;
    let (y_low, y_high) = (lowest * scale / 1.5, highest * scale * 1.5);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let cpu: Vec<(f64, f64)> = steps
        .iter()
        .filter_map(|s| s.server_cpu_share.map(|c| (s.offered, c * 100.0)))
        .collect();
    let cpu_max = cpu.iter().map(|p| p.1).fold(100.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .right_y_label_area_size(if cpu.is_empty() { 0 } else { 80 })
        .build_cartesian_2d(0f64..rate_max, (y_low..y_high).log_scale())
        .map_err(failed)?
        .set_secondary_coord(0f64..rate_max, 0f64..cpu_max);
    chart
        .configure_mesh()
        .x_desc("offered rate (upgrades/s)")
        .y_desc(format!("latency ({unit}, log scale)"))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| tick(*y))
        .draw()
        .map_err(failed)?;
    type Pick = fn(&RampStep) -> u64;
    let lines: [(&str, Pick); 3] = [
        ("p50", |s| s.p50_us),
        ("p99", |s| s.p99_us),
        ("p99.9", |s| s.p999_us),
    ];
    for (index, (name, pick)) in lines.iter().enumerate() {
        let color = color(index);
        let points: Vec<(f64, f64)> = steps
            .iter()
            .map(|s| (s.offered, (pick(s).max(1) as f64) * scale))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(failed)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(failed)?;
    }
    if !cpu.is_empty() {
        chart
            .configure_secondary_axes()
            .y_desc("server CPU (% of one core)")
            .draw()
            .map_err(failed)?;
        let grey = server_cpu_line(&mut chart, &cpu, "server CPU (right axis)")?;
        chart
            .draw_secondary_series(
                cpu.into_iter()
                    .map(|p| Cross::new(p, 4, grey.stroke_width(2))),
            )
            .map_err(failed)?;
    }
    if let Some(slo) = slo_us {
        let y = slo as f64 * scale;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, y), (rate_max, y)],
                8,
                6,
                BLACK.stroke_width(2),
            ))
            .map_err(failed)?
            .label(format!("SLO: p99 under {}", human_us(slo)))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    if let Some(knee) = knee {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(knee, y_low), (knee, y_high)],
                BLACK.stroke_width(1),
            )))
            .map_err(failed)?
            .label(format!("knee {knee:.0}/s"))
            .legend(|(x, y)| PathElement::new(vec![(x + 10, y - 6), (x + 10, y + 6)], BLACK));
        chart
            .draw_series(std::iter::once(Text::new(
                format!("knee {knee:.0}/s"),
                (knee, y_high / 1.3),
                (FONT, 16),
            )))
            .map_err(failed)?;
    }
    legend(&mut *chart)?;
    write(&root, path)
}

/// One contender of a head-to-head.
#[derive(Debug, Clone)]
pub struct Contender {
    pub name: String,
    pub upgrades_per_sec: f64,
    pub cpu_us_per_upgrade: f64,
}

/// Two bar charts side by side: server CPU per upgrade (shorter is better) and upgrades per
/// second (longer is better), one bar per contender, best CPU first.
pub fn contenders(path: &Path, title: &str, rows: &[Contender]) -> anyhow::Result<()> {
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| a.cpu_us_per_upgrade.total_cmp(&b.cpu_us_per_upgrade));
    let height = (160 + 44 * rows.len() as u32).max(320);
    let root = SVGBackend::new(path, (SIZE.0 + 240, height)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let root = root.titled(title, (FONT, 22)).map_err(failed)?;
    let panels = root.split_evenly((1, 2));
    type Pick = fn(&Contender) -> f64;
    type Show = fn(f64) -> String;
    let charts: [(&str, Pick, Show); 2] = [
        (
            "server CPU per upgrade (µs)",
            |c| c.cpu_us_per_upgrade,
            |v| format!("{v:.1} µs"),
        ),
        (
            "upgrades per second",
            |c| c.upgrades_per_sec,
            |v| format!("{v:.0}/s"),
        ),
    ];
    for (panel, (axis, pick, show)) in panels.iter().zip(charts) {
        let max = rows.iter().map(pick).fold(1e-9, f64::max);
        let n = rows.len() as f64;
        let mut chart = ChartBuilder::on(panel)
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(8)
            .build_cartesian_2d(0f64..max * 1.7, 0f64..n.max(1.0))
            .map_err(failed)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_desc(axis)
            .x_labels(5)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(failed)?;
        for (index, row) in rows.iter().enumerate() {
            // The best row on top.
            let y = n - index as f64 - 1.0;
            let value = pick(row);
            let color = color(index);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y + 0.15), (value, y + 0.85)],
                    color.filled(),
                )))
                .map_err(failed)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!(" {}: {}", row.name, show(value)),
                    (value, y + 0.62),
                    (FONT, 15),
                )))
                .map_err(failed)?;
        }
    }
    write(&root, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_labels_read_as_nines() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(4.0), "99.99%");
    }
}
