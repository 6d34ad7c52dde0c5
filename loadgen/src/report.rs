//! What a run measured: counts, errors by kind, latency histograms, and how to print them.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Why one connection did not upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The server refused the TCP connection.
    ConnectRefused,
    /// The TCP connect did not complete within `--connect-timeout`.
    ConnectTimeout,
    /// No local port or address was left (EADDRNOTAVAIL): add `--source-ips`.
    PortsExhausted,
    /// This process ran out of descriptors.
    OutOfDescriptors,
    /// The server reset the connection.
    Reset,
    /// The server closed before a complete response.
    ClosedEarly,
    /// No complete response within `--handshake-timeout`.
    HandshakeTimeout,
    /// The server answered with this status instead of 101.
    Status(u16),
    /// 101 with a `Sec-WebSocket-Accept` that does not match the key.
    BadAccept,
    /// 101 naming a subprotocol that was not offered.
    BadSubprotocol,
    /// A response that is not a valid upgrade for another reason.
    BadResponse,
    /// The TLS handshake failed (an alert, a certificate the client refused).
    Tls,
    /// `--h2`: the server reset the stream, or went away before answering it.
    StreamRefused,
    /// Any other socket error.
    Other,
}

impl ErrorKind {
    /// The key used in summaries and JSON.
    pub fn name(self) -> String {
        match self {
            ErrorKind::ConnectRefused => "connect_refused".into(),
            ErrorKind::ConnectTimeout => "connect_timeout".into(),
            ErrorKind::PortsExhausted => "ports_exhausted".into(),
            ErrorKind::OutOfDescriptors => "out_of_descriptors".into(),
            ErrorKind::Reset => "reset".into(),
            ErrorKind::ClosedEarly => "closed_early".into(),
            ErrorKind::HandshakeTimeout => "handshake_timeout".into(),
            ErrorKind::Status(code) => format!("status_{code}"),
            ErrorKind::BadAccept => "bad_accept".into(),
            ErrorKind::BadSubprotocol => "bad_subprotocol".into(),
            ErrorKind::Tls => "tls".into(),
            ErrorKind::BadResponse => "bad_response".into(),
            ErrorKind::StreamRefused => "stream_refused".into(),
            ErrorKind::Other => "other".into(),
        }
    }

    /// The kind a `name()` stands for (reading logs back).
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        if let Some(code) = name.strip_prefix("status_") {
            return code.parse().ok().map(ErrorKind::Status);
        }
        [
            ErrorKind::ConnectRefused,
            ErrorKind::ConnectTimeout,
            ErrorKind::PortsExhausted,
            ErrorKind::OutOfDescriptors,
            ErrorKind::Reset,
            ErrorKind::ClosedEarly,
            ErrorKind::HandshakeTimeout,
            ErrorKind::BadAccept,
            ErrorKind::BadSubprotocol,
            ErrorKind::BadResponse,
            ErrorKind::StreamRefused,
            ErrorKind::Tls,
            ErrorKind::Other,
        ]
        .into_iter()
        .find(|kind| kind.name() == name)
    }

    /// Classifies a socket error.
    pub fn from_io(error: &std::io::Error) -> ErrorKind {
        match error.raw_os_error() {
            Some(libc::ECONNREFUSED) => ErrorKind::ConnectRefused,
            Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => ErrorKind::PortsExhausted,
            Some(libc::EMFILE | libc::ENFILE) => ErrorKind::OutOfDescriptors,
            Some(libc::ECONNRESET | libc::EPIPE) => ErrorKind::Reset,
            Some(libc::ETIMEDOUT) => ErrorKind::ConnectTimeout,
            _ => ErrorKind::Other,
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes at 3 significant digits; growing only for logs of other tools
    // (recording clamps to the bounds).
    let mut histogram =
        Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
    histogram.auto(true);
    histogram
}

/// What one worker (or the merged run) measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Verified upgrades.
    pub ok: u64,
    /// Failures by kind.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Intended start (or connect start) to 101 parsed, in µs.
    pub total: Histogram<u64>,
    /// TCP connect, in µs.
    pub connect: Histogram<u64>,
    /// Request sent to 101 parsed, in µs.
    pub handshake: Histogram<u64>,
    /// `wss://`: ClientHello sent to the TLS handshake done, in µs.
    pub tls: Histogram<u64>,
    /// Slowloris: connect to the server cutting the connection off, in µs.
    pub cutoff: Histogram<u64>,
    /// `wss://`: TLS handshakes that resumed an earlier session (`--tls-resume`).
    pub tls_resumed: u64,
    /// Slowloris clients the server never cut off.
    pub never_cut: u64,
    /// Handshakes still in flight when the run ended (neither success nor error).
    pub unfinished: u64,
    /// `reconnect`: when each client got in, from the run's start, in µs.
    pub clients_in: Histogram<u64>,
    /// `reconnect`: the attempts each client made until it got in.
    pub attempts: Histogram<u64>,
    /// `reconnect`: clients still not in when the run ended.
    pub clients_not_in: u64,
    /// `reconnect`: what happened in each tenth of a second from the run's start.
    pub timeline: Vec<Moment>,
}

/// `reconnect`: one tenth of a second of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moment {
    /// Attempts begun.
    pub attempts: u64,
    /// Attempts answered with a status other than 101.
    pub refused: u64,
    /// Clients that got in.
    pub clients_in: u64,
}

/// The length of one [`Moment`].
pub const MOMENT: Duration = Duration::from_millis(100);

impl Default for Report {
    fn default() -> Self {
        Report {
            ok: 0,
            errors: BTreeMap::new(),
            total: histogram(),
            connect: histogram(),
            handshake: histogram(),
            tls: histogram(),
            cutoff: histogram(),
            tls_resumed: 0,
            never_cut: 0,
            unfinished: 0,
            clients_in: histogram(),
            attempts: histogram(),
            clients_not_in: 0,
            timeline: Vec::new(),
        }
    }
}

/// What a log keeps beside its histograms.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub ok: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
    pub unfinished: u64,
    pub tls_resumed: u64,
    pub clients_not_in: u64,
    pub timeline: Vec<Moment>,
}

/// Records a duration in µs (at least 1: the histogram starts there).
pub fn record(histogram: &mut Histogram<u64>, duration: Duration) {
    let _ = histogram.record((duration.as_micros() as u64).clamp(1, 600_000_000));
}

impl Report {
    /// Counts one failure.
    pub fn fail(&mut self, kind: ErrorKind) {
        *self.errors.entry(kind).or_default() += 1;
    }

    /// The moment `since_start` falls in, added if new (a run is bounded in time, so the
    /// timeline is too).
    pub fn moment(&mut self, since_start: Duration) -> &mut Moment {
        let index = (since_start.as_millis() / MOMENT.as_millis()) as usize;
        if self.timeline.len() <= index {
            self.timeline.resize(index + 1, Moment::default());
        }
        &mut self.timeline[index]
    }

    /// All failures.
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds another worker's figures.
    pub fn merge(&mut self, other: &Report) {
        self.ok += other.ok;
        for (kind, count) in &other.errors {
            *self.errors.entry(*kind).or_default() += count;
        }
        let _ = self.total.add(&other.total);
        let _ = self.connect.add(&other.connect);
        let _ = self.handshake.add(&other.handshake);
        let _ = self.tls.add(&other.tls);
        let _ = self.cutoff.add(&other.cutoff);
        self.never_cut += other.never_cut;
        self.tls_resumed += other.tls_resumed;
        self.unfinished += other.unfinished;
        let _ = self.clients_in.add(&other.clients_in);
        let _ = self.attempts.add(&other.attempts);
        self.clients_not_in += other.clients_not_in;
        add_timeline(&mut self.timeline, &other.timeline);
    }
}

/// Adds `other` to `into`, moment by moment.
pub fn add_timeline(into: &mut Vec<Moment>, other: &[Moment]) {
    if into.len() < other.len() {
        into.resize(other.len(), Moment::default());
    }
    for (sum, moment) in into.iter_mut().zip(other) {
        sum.attempts += moment.attempts;
        sum.refused += moment.refused;
        sum.clients_in += moment.clients_in;
    }
}

/// The timeline as `[[attempts, refused, clients_in], …]`, a tenth of a second each.
pub fn timeline_json(timeline: &[Moment]) -> Value {
    timeline
        .iter()
        .map(|m| json!([m.attempts, m.refused, m.clients_in]))
        .collect()
}

/// Reads [`timeline_json`] back.
pub fn timeline_from_json(value: &Value) -> Vec<Moment> {
    value
        .as_array()
        .map(|moments| {
            moments
                .iter()
                .map(|m| {
                    let at = |i: usize| m.get(i).and_then(Value::as_u64).unwrap_or(0);
                    Moment {
                        attempts: at(0),
                        refused: at(1),
                        clients_in: at(2),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// p50, p90, p99, p99.9 and max, in µs, as JSON.
pub fn percentiles(histogram: &Histogram<u64>) -> Value {
    json!({
        "p50": histogram.value_at_quantile(0.5),
        "p90": histogram.value_at_quantile(0.9),
        "p99": histogram.value_at_quantile(0.99),
        "p99_9": histogram.value_at_quantile(0.999),
        "max": histogram.max(),
    })
}

/// A duration in µs for people: `850 µs`, `12.3 ms`, `1.20 s`.
pub fn human_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=999_999 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// One summary line for a latency histogram.
pub fn latency_line(name: &str, histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        return format!("  {name:<10} (none)");
    }
    format!(
        "  {name:<10} p50 {:>9}  p90 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}",
        human_us(histogram.value_at_quantile(0.5)),
        human_us(histogram.value_at_quantile(0.9)),
        human_us(histogram.value_at_quantile(0.99)),
        human_us(histogram.value_at_quantile(0.999)),
        human_us(histogram.max())
    )
}

/// The JSON object every subcommand prints with `--json` (keys are a contract).
pub fn json(report: &Report, duration: Duration, extra: Value) -> Value {
    let secs = duration.as_secs_f64().max(1e-9);
    let errors: serde_json::Map<String, Value> = report
        .errors
        .iter()
        .map(|(k, v)| (k.name(), json!(v)))
        .collect();
    let mut object = json!({
        "upgrades_per_sec": report.ok as f64 / secs,
        "ok": report.ok,
        "errors_total": report.errors_total(),
        "errors": errors,
        "latency_us": percentiles(&report.total),
        "connect_latency_us": percentiles(&report.connect),
        "handshake_latency_us": percentiles(&report.handshake),
        "tls_latency_us": percentiles(&report.tls),
        "tls_resumed": report.tls_resumed,
        "duration_s": secs,
        "unfinished": report.unfinished,
    });
    if let (Some(object), Value::Object(extra)) = (object.as_object_mut(), extra) {
        object.extend(extra);
    }
    object
}
