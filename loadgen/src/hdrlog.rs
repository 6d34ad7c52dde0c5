//! `--hdr-log`: the run as a standard HdrHistogram interval log, and reading such logs back.
//!
//! Each interval is one untagged line of total latency (what any HdrHistogram tool plots),
//! then lines tagged `connect`, `handshake` and `tls` for the phases. What a histogram cannot
//! hold (errors by kind, handshakes cut short, resumed TLS sessions) rides in comment lines
//! that other readers skip:
//!
//! ```text
//! #[wsedge-loadgen interval 3 errors {"status_503":4}]
//! #[wsedge-loadgen summary {"ok":1200,"errors":{...},"unfinished":0,...}]
//! ```

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use std::collections::BTreeMap;

use crate::report::{Counters, ErrorKind, Report};

const COMMENT: &str = "wsedge-loadgen total latency (connection start to verified 101), \
                       microseconds; tagged lines: connect, handshake, tls";
const INTERVAL_PREFIX: &str = "#[wsedge-loadgen interval ";
const SUMMARY_PREFIX: &str = "#[wsedge-loadgen summary ";

/// A log being written: header first, then intervals as they close, the summary last.
pub struct LogWriter {
    file: std::io::BufWriter<std::fs::File>,
    serializer: V2DeflateSerializer,
    /// Everything written so far, for the closing summary.
    totals: Report,
    /// Wall-clock start, the zero of every interval timestamp.
    start: SystemTime,
}

impl LogWriter {
    /// Creates `path` and writes the header; intervals count from `start`.
    pub fn create(path: &Path, start: SystemTime) -> anyhow::Result<LogWriter> {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .add_comment(COMMENT)
            .with_start_time(start)
            .with_base_time(start)
            .with_max_value_divisor(1.0)
            .begin_log_with(&mut file, &mut serializer)?;
        // The column legend Java's HistogramLogWriter writes; readers skip it.
        writeln!(
            file,
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
        )?;
        Ok(LogWriter {
            file,
            serializer,
            totals: Report::default(),
            start,
        })
    }

    /// When the log's intervals start.
    pub fn start(&self) -> SystemTime {
        self.start
    }

    /// Writes one interval, `offset` after the start.
    pub fn interval(
        &mut self,
        offset: Duration,
        length: Duration,
        report: &Report,
    ) -> anyhow::Result<()> {
        // An empty builder writes no header: this only borrows the crate's line format.
        let mut writer = IntervalLogWriterBuilder::new()
            .with_max_value_divisor(1.0)
            .begin_log_with(&mut self.file, &mut self.serializer)?;
        let histograms = std::iter::once((None, &report.total)).chain(
            phases(report)
                .into_iter()
                .filter(|(_, h)| !h.is_empty())
                .map(|(tag, h)| (Tag::new(tag), h)),
        );
        for (tag, histogram) in histograms {
            writer
                .write_histogram(histogram, offset, length, tag)
                .map_err(|e| anyhow::anyhow!("writing an interval: {e:?}"))?;
        }
        if !report.errors.is_empty() {
            writeln!(
                self.file,
                "{INTERVAL_PREFIX}{:.3} errors {}]",
                offset.as_secs_f64(),
                errors_json(report)
            )?;
        }
        self.totals.merge(report);
        Ok(())
    }

    /// Writes the summary line and flushes; `duration` is how long the run took.
    pub fn finish(mut self, duration: Duration) -> anyhow::Result<()> {
        writeln!(
            self.file,
            "{SUMMARY_PREFIX}{}]",
            json!({
                "ok": self.totals.ok,
                "errors": errors_json(&self.totals),
                "unfinished": self.totals.unfinished,
                "tls_resumed": self.totals.tls_resumed,
                "clients_not_in": self.totals.clients_not_in,
                "timeline": crate::report::timeline_json(&self.totals.timeline),
                "duration_s": duration.as_secs_f64(),
            })
        )?;
        self.file.flush()?;
        Ok(())
    }
}

/// The phases written as tagged lines, beside the untagged total (`client_in` and
/// `attempts` are `reconnect`'s: when each client got in, and after how many attempts).
fn phases(report: &Report) -> [(&'static str, &Histogram<u64>); 5] {
    [
        ("connect", &report.connect),
        ("handshake", &report.handshake),
        ("tls", &report.tls),
        ("client_in", &report.clients_in),
        ("attempts", &report.attempts),
    ]
}

fn errors_json(report: &Report) -> Value {
    Value::Object(
        report
            .errors
            .iter()
            .map(|(kind, count)| (kind.name(), json!(count)))
            .collect(),
    )
}

/// Which histogram of an interval a line holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Total,
    Connect,
    Handshake,
    Tls,
    ClientIn,
    Attempts,
}

/// One histogram line read back, still compressed: a long log costs its text in memory,
/// not a dense histogram per interval.
#[derive(Debug, Clone)]
pub struct LoggedLine {
    /// Seconds since the epoch when the interval started.
    pub start: f64,
    pub length: f64,
    pub phase: Phase,
    pub encoded: String,
}

impl LoggedLine {
    /// Decompresses the histogram.
    pub fn decode(&self, deserializer: &mut Deserializer) -> anyhow::Result<Histogram<u64>> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.encoded)
            .context("an interval's histogram is not base64")?;
        deserializer
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| anyhow::anyhow!("an interval's histogram: {e:?}"))
    }
}

/// A log read back.
#[derive(Debug, Clone)]
pub struct RunLog {
    /// Seconds since the epoch when the run started.
    pub start: f64,
    pub lines: Vec<LoggedLine>,
    /// Errors of each interval, by the interval's start (seconds since the epoch).
    pub interval_errors: Vec<(f64, Counters)>,
    /// The summary line's counters, when the log came from wsedge-loadgen.
    pub totals: Option<Counters>,
    pub duration: Option<f64>,
}

/// Reads an interval log: wsedge-loadgen's, or any other standard one (untagged lines as
/// total latency, in the log's own unit).
pub fn read(path: &Path) -> anyhow::Result<RunLog> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("{} is not an HdrHistogram interval log", path.display()))
}

fn parse(text: &[u8]) -> anyhow::Result<RunLog> {
    let mut start = None;
    let mut base = None;
    let mut lines = Vec::new();
    for entry in IntervalLogIterator::new(text) {
        match entry.map_err(|e| anyhow::anyhow!("{e:?}"))? {
            LogEntry::StartTime(t) => start = start.or(Some(t.as_secs_f64())),
            LogEntry::BaseTime(t) => base = base.or(Some(t.as_secs_f64())),
            LogEntry::Interval(line) => {
                let phase = match line.tag().as_ref().map(Tag::as_str) {
                    None => Phase::Total,
                    Some("connect") => Phase::Connect,
                    Some("handshake") => Phase::Handshake,
                    Some("tls") => Phase::Tls,
                    Some("client_in") => Phase::ClientIn,
                    Some("attempts") => Phase::Attempts,
                    Some(_) => continue,
                };
                lines.push(LoggedLine {
                    start: line.start_timestamp().as_secs_f64(),
                    length: line.duration().as_secs_f64(),
                    phase,
                    encoded: line.encoded_histogram().to_owned(),
                });
            }
        }
    }
    let text = String::from_utf8_lossy(text);
    let mut interval_errors = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(INTERVAL_PREFIX) {
            let (offset, errors) = rest
                .trim_end_matches(']')
                .split_once(" errors ")
                .context("an interval comment without errors")?;
            let offset: f64 = offset.parse().context("an interval comment's time")?;
            let mut report = Counters::default();
            add_errors(&mut report.errors, &serde_json::from_str(errors)?)?;
            interval_errors.push((offset, report));
        }
    }
    let summary = text
        .lines()
        .filter_map(|l| l.strip_prefix(SUMMARY_PREFIX))
        .map(|s| serde_json::from_str::<Value>(s.trim_end_matches(']')))
        .next_back()
        .transpose()
        .context("the summary line is not JSON")?;
    let (totals, duration) = match summary {
        Some(summary) => {
            let mut totals = Counters::default();
            add_errors(&mut totals.errors, &summary["errors"])?;
            totals.ok = summary["ok"].as_u64().context("the summary has no ok")?;
            totals.unfinished = summary["unfinished"].as_u64().unwrap_or(0);
            totals.tls_resumed = summary["tls_resumed"].as_u64().unwrap_or(0);
            totals.clients_not_in = summary["clients_not_in"].as_u64().unwrap_or(0);
            totals.timeline = crate::report::timeline_from_json(&summary["timeline"]);
            (Some(totals), summary["duration_s"].as_f64())
        }
        None => (None, None),
    };
    // Timestamps count from BaseTime if there is one, else from StartTime when they are
    // small (the heuristic of the Java reader), else from the epoch.
    let year = 365.0 * 86_400.0;
    let zero = match (base, start) {
        (Some(base), _) => base,
        (None, Some(start)) if lines.iter().all(|l| l.start < start - year) => start,
        _ => 0.0,
    };
    for line in &mut lines {
        line.start += zero;
    }
    for (offset, _) in &mut interval_errors {
        *offset += zero;
    }
    let start = start
        .or_else(|| lines.first().map(|l| l.start))
        .unwrap_or(0.0);
    if lines.is_empty() && totals.is_none() {
        bail!("it holds no interval");
    }
    Ok(RunLog {
        start,
        lines,
        interval_errors,
        totals,
        duration,
    })
}

fn add_errors(into: &mut BTreeMap<ErrorKind, u64>, errors: &Value) -> anyhow::Result<()> {
    let Some(errors) = errors.as_object() else {
        return Ok(());
    };
    for (name, count) in errors {
        let kind = ErrorKind::from_name(name).with_context(|| format!("unknown error {name:?}"))?;
        *into.entry(kind).or_default() += count.as_u64().unwrap_or(0);
    }
    Ok(())
}

/// The wall clock as seconds since the epoch.
pub fn epoch_secs(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
