//! Several runs' interval logs as one run: histograms summed (never percentiles averaged),
//! intervals lined up on the wall clock, errors by kind added.

use std::collections::BTreeMap;

use hdrhistogram::serialization::Deserializer;
use serde_json::{json, Value};

use crate::hdrlog::{LoggedLine, Phase, RunLog};
use crate::report::{human_us, Report};

/// What the text report and `--json` show of one merged interval.
#[derive(Debug, Clone)]
pub struct IntervalFigures {
    /// Seconds from the merged run's start.
    pub offset: f64,
    pub length: f64,
    pub ok: u64,
    pub errors: u64,
    pub p99_us: u64,
}

/// The merged run.
#[derive(Debug, Clone)]
pub struct Merged {
    pub report: Report,
    /// Earliest start to latest end, in seconds.
    pub duration: f64,
    pub intervals: Vec<IntervalFigures>,
}

/// Merges runs, handing each merged interval to `each` (offset and length in seconds) as it
/// is complete. Intervals of different runs share a slot when they start within half an
/// interval of each other: runs started together (`--start-at`) line up exactly, and a skew
/// of a few milliseconds between machines changes nothing. One slot's histograms are
/// decompressed at a time, so a long log costs its text, not a histogram per interval.
pub fn merge(
    logs: &[RunLog],
    mut each: impl FnMut(f64, f64, &Report) -> anyhow::Result<()>,
) -> anyhow::Result<Merged> {
    let start = logs.iter().map(|l| l.start).fold(f64::INFINITY, f64::min);
    let start = if start.is_finite() { start } else { 0.0 };
    let grid = logs
        .iter()
        .flat_map(|l| l.lines.iter().map(|i| i.length))
        .fold(0.0_f64, f64::max)
        .max(1e-3);
    let slot_of = |at: f64| ((at - start).max(0.0) / grid).round() as u64;
    let mut slots: BTreeMap<u64, Vec<&LoggedLine>> = BTreeMap::new();
    let mut end = start;
    for log in logs {
        for line in &log.lines {
            slots.entry(slot_of(line.start)).or_default().push(line);
            end = end.max(line.start + line.length);
        }
        if let Some(duration) = log.duration {
            end = end.max(log.start + duration);
        }
    }
    let mut slot_errors: BTreeMap<u64, Report> = BTreeMap::new();
    for (at, counters) in logs.iter().flat_map(|l| &l.interval_errors) {
        let errors = &mut slot_errors.entry(slot_of(*at)).or_default().errors;
        for (kind, count) in &counters.errors {
            *errors.entry(*kind).or_default() += count;
        }
    }
    let mut deserializer = Deserializer::new();
    let mut report = Report::default();
    let mut intervals = Vec::with_capacity(slots.len());
    for (slot, members) in slots {
        let mut interval = slot_errors.remove(&slot).unwrap_or_default();
        let mut length = 0.0_f64;
        for line in members {
            length = length.max(line.length);
            let histogram = line.decode(&mut deserializer)?;
            let target = match line.phase {
                Phase::Total => {
                    interval.ok += histogram.len();
                    &mut interval.total
                }
                Phase::Connect => &mut interval.connect,
                Phase::Handshake => &mut interval.handshake,
                Phase::Tls => &mut interval.tls,
                Phase::ClientIn => &mut interval.clients_in,
                Phase::Attempts => &mut interval.attempts,
            };
            target
                .add(&histogram)
                .map_err(|e| anyhow::anyhow!("an interval's values are out of range: {e:?}"))?;
        }
        let offset = slot as f64 * grid;
        each(offset, length, &interval)?;
        intervals.push(IntervalFigures {
            offset,
            length,
            ok: interval.ok,
            errors: interval.errors_total(),
            p99_us: interval.total.value_at_quantile(0.99),
        });
        report.merge(&interval);
    }
    // The summary lines count what intervals cannot (handshakes cut short, resumed
    // sessions); when every run has one, they are the truth for the counters.
    if !logs.is_empty() && logs.iter().all(|l| l.totals.is_some()) {
        report.ok = 0;
        report.errors.clear();
        for totals in logs.iter().filter_map(|l| l.totals.as_ref()) {
            report.ok += totals.ok;
            report.unfinished += totals.unfinished;
            report.tls_resumed += totals.tls_resumed;
            report.clients_not_in += totals.clients_not_in;
            crate::report::add_timeline(&mut report.timeline, &totals.timeline);
            for (kind, count) in &totals.errors {
                *report.errors.entry(*kind).or_default() += count;
            }
        }
    }
    Ok(Merged {
        report,
        duration: end - start,
        intervals,
    })
}

/// Each interval's rate and tail, for `--json`.
pub fn intervals_json(intervals: &[IntervalFigures]) -> Value {
    intervals
        .iter()
        .map(|i| {
            json!({
                "offset_s": i.offset,
                "length_s": i.length,
                "ok": i.ok,
                "upgrades_per_sec": i.ok as f64 / i.length.max(1e-9),
                "errors_total": i.errors,
                "p99_us": i.p99_us,
            })
        })
        .collect()
}

/// The per-interval lines of the text report.
pub fn print_intervals(intervals: &[IntervalFigures]) {
    println!("  per interval:");
    for i in intervals {
        println!(
            "  {:>7.1}s  {:>9.0} upgrades/s  p99 {:>9}  errors {:>7}",
            i.offset,
            i.ok as f64 / i.length.max(1e-9),
            human_us(i.p99_us),
            i.errors
        );
    }
}
