//! Per-reactor counters. Each reactor owns its own set (no shared cache lines on the
//! connection path); readers sum them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::handshake::{Answer, Rejection};

/// Upper bounds of the handshake latency buckets (accept to 101 written), in ms: the
/// reactor's clock ticks in ms.
pub const HANDSHAKE_BUCKETS_MS: [u64; 13] =
    [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// Counters by kind, of any number (`Default` is derived for arrays of at most 32 only).
#[derive(Debug)]
pub struct CounterArray<const N: usize>(pub [AtomicU64; N]);

impl<const N: usize> Default for CounterArray<N> {
    fn default() -> Self {
        CounterArray(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl<const N: usize> std::ops::Deref for CounterArray<N> {
    type Target = [AtomicU64; N];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Writes the list of event counters once: from it come [`Events`] (the atomics a reactor
/// bumps), [`Snapshot`] (their sums), [`EVENT_FAMILIES`] (the `/metrics` families) and
/// [`Snapshot::named`] (the stop line). A new counter is one line here.
macro_rules! event_counters {
    ($( $(#[doc = $doc:literal])* $field:ident => $metric:literal, $help:literal; )*) => {
        /// Events one reactor counts: written only by its reactor thread, read by scrapes.
        #[derive(Debug, Default)]
        pub struct Events {
            $( $(#[doc = $doc])* pub $field: AtomicU64, )*
        }

        /// Plain totals of [`Events`] over reactors, for logging and checks.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot {
            $( $(#[doc = $doc])* pub $field: u64, )*
            /// Handshake timeouts answered with 408 (counted in `rejected` and
            /// `handshake_timeouts`).
            pub timeouts_answered: u64,
        }

        impl Snapshot {
            fn add(&mut self, events: &Events) {
                $( self.$field += events.$field.load(Relaxed); )*
            }

            /// Every event total with its name, in the list's order.
            pub fn named(&self) -> [(&'static str, u64); EVENT_FAMILIES.len()] {
                [$( (stringify!($field), self.$field), )*]
            }
        }

        /// Each event counter's `/metrics` family: its name (`_total` is added), its help
        /// and where it is.
        pub const EVENT_FAMILIES: [(&str, &str, fn(&Events) -> &AtomicU64);
            [$(stringify!($field)),*].len()] = [$( ($metric, $help, |e| &e.$field), )*];
    };
}

event_counters! {
    /// Connections accepted.
    accepted => "wsedge_accepted_connections", "Connections accepted.";
    /// Handshakes answered with 101.
    upgraded => "wsedge_upgrades", "Handshakes answered with 101.";
    /// Handshakes refused with an HTTP status (including 408).
    rejected => "wsedge_rejected_handshakes", "Handshakes refused with an HTTP status.";
    /// Connections closed at the handshake timeout (with or without 408).
    handshake_timeouts => "wsedge_handshake_timeouts", "Connections closed at the handshake timeout.";
    /// Upgraded connections closed for idleness (1001).
    idle_timeouts => "wsedge_idle_timeouts", "Upgraded connections closed for idleness.";
    /// Connections given up because the client took none of their output for
    /// `--send-timeout-ms`, or not all of it within the linger at a close.
    send_timeouts => "wsedge_send_timeouts",
        "Connections given up because the client did not take their output in time.";
    /// Upgraded connections failed with a close code (1002, 1007, 1009).
    protocol_errors => "wsedge_protocol_errors", "Upgraded connections failed with a close code.";
    /// Connections closed, for any reason.
    closed => "wsedge_closed_connections", "Connections closed.";
    /// Times accepting paused for lack of descriptors or memory (EMFILE, ENFILE, ...).
    accept_pauses => "wsedge_accept_pauses", "Times accepting paused for lack of descriptors or memory.";
    /// Connections lingering after their answer, closed early because descriptors or
    /// memory ran out and clients were queued for them.
    lingering_reclaimed => "wsedge_lingering_reclaimed",
        "Lingering connections closed early for lack of descriptors or memory.";
    /// Connections refused with 503 or 429 by admission control.
    admission_rejections => "wsedge_admission_rejections",
        "Connections refused by admission control (503, 429).";
    /// Proxy mode: upstream connection attempts that failed (refused, unreachable, reset).
    upstream_connect_failures => "wsedge_upstream_connect_failures",
        "Proxy mode: upstream connection attempts refused or failed.";
    /// Proxy mode: upstream connections that found no local port left (`EADDRNOTAVAIL`),
    /// answered 503: see `--upstream-source`.
    upstream_ports_exhausted => "wsedge_upstream_ports_exhausted",
        "Proxy mode: upstream connections refused for want of a local port.";
    /// Proxy mode: upstreams that did not connect or answer in time (504).
    upstream_timeouts => "wsedge_upstream_timeouts",
        "Proxy mode: upstreams that did not connect or answer in time (504).";
    /// Proxy mode: upstream refusals (a status other than 101) passed to the client.
    upstream_refusals_passed => "wsedge_upstream_refusals_passed",
        "Proxy mode: upstream answers other than 101 passed to the client.";
    /// Proxy mode: plain HTTP requests forwarded under `--http-path` whose upstream answer
    /// was passed on (an outcome of their own, beside upgrades).
    http_forwarded => "wsedge_http_forwarded",
        "Proxy mode: plain HTTP requests (--http-path) whose upstream answer was passed on.";
    /// Proxy mode: clients that waited at the edge for an upstream with room for their
    /// upgrade (`--upstream-max-pending`).
    upstream_queued => "wsedge_upstream_queued",
        "Proxy mode: clients that waited at the edge for an upstream with room.";
    /// Proxy mode: milliseconds waited by the clients sent on from the queue, summed.
    upstream_queue_wait_ms => "wsedge_upstream_queue_wait_ms",
        "Proxy mode: milliseconds clients waited at the edge before being sent on, summed.";
    /// Proxy mode: clients refused with 503 because no upstream had room within
    /// `--upstream-queue-ms`.
    upstream_shed => "wsedge_upstream_shed",
        "Proxy mode: clients refused (503) because no upstream had room in time.";
    /// Proxy mode: clients that left while they waited; nothing was forwarded for them.
    upstream_left_waiting => "wsedge_upstream_left_waiting",
        "Proxy mode: clients that left while waiting at the edge (nothing forwarded).";
    /// Proxy mode: clients that left after their upgrade was sent on to an upstream (or
    /// while it was being), before its answer: work the app did for no one.
    upstream_abandoned_pending => "wsedge_upstream_abandoned_pending",
        "Proxy mode: clients that left after their upgrade was forwarded, before the answer.";
    /// Handshakes the client abandoned: it closed or reset the connection before any
    /// outcome (101, a status, or the timeout). With the other outcomes it accounts for every
    /// accepted connection: see [`Snapshot::unaccounted`].
    handshakes_abandoned => "wsedge_handshakes_abandoned",
        "Handshakes the client closed or reset before any outcome.";
    /// TLS connections reset before any work was spent on them (no ClientHello read, no
    /// key exchange): the client had already left, or could not be answered within
    /// `--client-patience`. An outcome of its own (not also counted as abandoned).
    shed_before_work => "wsedge_shed_before_work",
        "TLS connections reset before any work: the client had left, or was past its patience.";
    /// TLS key exchanges spent on clients that left (or timed out) before their answer:
    /// work done for no one. These connections end as abandoned or timed out.
    tls_handshakes_wasted => "wsedge_tls_handshakes_wasted",
        "TLS key exchanges spent on clients that left before their answer.";
    /// Connections that became HTTP/2 (`--h2`, `--h2c`): an outcome of their own, since
    /// their WebSockets are streams, each with its own outcome.
    h2_connections => "wsedge_h2_connections",
        "Connections that became HTTP/2 (their WebSockets are streams).";
    /// HTTP/2 streams opened: each ends in one outcome (upgraded, rejected, timed out,
    /// abandoned), as an HTTP/1.1 connection does.
    h2_streams => "wsedge_h2_streams", "HTTP/2 streams opened, each an upgrade or a request.";
}

/// What one reactor has seen: its [`Events`] (reached through this struct too), and the
/// counts by kind, gauges and histograms beside them. Written only by its reactor thread;
/// read by scrapes.
#[derive(Debug, Default)]
pub struct Counters {
    /// The event counters.
    pub events: Events,
    /// Rejections and refusals by kind ([`Answer::kind_index`]).
    pub rejections: CounterArray<{ Answer::KINDS.len() }>,
    /// Handshake latency histogram: counts per bucket of [`HANDSHAKE_BUCKETS_MS`], then +Inf.
    pub handshake_ms: [AtomicU64; HANDSHAKE_BUCKETS_MS.len() + 1],
    /// Sum of handshake latencies, in ms.
    pub handshake_ms_sum: AtomicU64,
    /// Connections held now (gauge, set once per loop turn).
    pub open: AtomicU64,
    /// Handshakes in progress now (gauge, set once per loop turn).
    pub handshaking: AtomicU64,
    /// Proxy mode: clients waiting at the edge for an upstream with room (gauge, set once
    /// per loop turn).
    pub upstream_waiting: AtomicU64,
    /// TLS handshakes completed, by [`TlsHandshake::index`]: version, full or resumed.
    pub tls_handshakes: [AtomicU64; TlsHandshake::KINDS],
    /// TLS handshakes that failed, by [`TlsFailure`] (the connection also ends as
    /// abandoned).
    pub tls_failures: [AtomicU64; TlsFailure::ALL.len()],
    /// Connections refused for their PROXY protocol header: [untrusted sender, missing or
    /// malformed header] (`--accept-proxy-protocol`).
    pub proxy_protocol_refused: [AtomicU64; 2],
}

impl std::ops::Deref for Counters {
    type Target = Events;
    fn deref(&self) -> &Events {
        &self.events
    }
}

/// Why a connection was refused for its PROXY header, by index in
/// [`Counters::proxy_protocol_refused`].
pub const PROXY_PROTOCOL_REASONS: [&str; 2] = ["untrusted", "malformed"];

/// A completed TLS handshake, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsHandshake {
    /// TLS 1.3 (else 1.2).
    pub tls13: bool,
    /// A session resumed (a ticket or a session ID), not a full key exchange.
    pub resumed: bool,
}

impl TlsHandshake {
    /// Kinds counted: 1.2 and 1.3, full and resumed.
    pub const KINDS: usize = 4;

    /// Its counter.
    pub fn index(self) -> usize {
        usize::from(self.tls13) * 2 + usize::from(self.resumed)
    }
}

/// Why a TLS handshake failed, as counted (the alert sent says it to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// No version both sides speak (`protocol_version`).
    Version,
    /// No ALPN protocol in common: the client wanted only `h2` (`no_application_protocol`).
    Alpn,
    /// No cipher suite, group or signature scheme in common (`handshake_failure`).
    NoCommonParameters,
    /// Bytes that are not a well-formed TLS message (`decode_error`, `unexpected_message`).
    Malformed,
    /// The client sent an alert of its own (it refused our certificate, usually).
    ClientAlert,
    /// Anything else.
    Other,
}

impl TlsFailure {
    /// Every kind, in counter order.
    pub const ALL: [TlsFailure; 6] = [
        TlsFailure::Version,
        TlsFailure::Alpn,
        TlsFailure::NoCommonParameters,
        TlsFailure::Malformed,
        TlsFailure::ClientAlert,
        TlsFailure::Other,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::Version => "protocol_version",
            TlsFailure::Alpn => "no_application_protocol",
            TlsFailure::NoCommonParameters => "handshake_failure",
            TlsFailure::Malformed => "malformed",
            TlsFailure::ClientAlert => "client_alert",
            TlsFailure::Other => "other",
        }
    }

    /// Sorts a rustls error.
    pub fn of(error: &rustls::Error) -> TlsFailure {
        use rustls::{Error, PeerIncompatible};
        match error {
            Error::PeerIncompatible(
                PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::Tls13RequiredForQuic
                | PeerIncompatible::SupportedVersionsExtensionRequired,
            ) => TlsFailure::Version,
            Error::NoApplicationProtocol => TlsFailure::Alpn,
            Error::PeerIncompatible(_) => TlsFailure::NoCommonParameters,
            Error::InvalidMessage(_)
            | Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. } => TlsFailure::Malformed,
            Error::AlertReceived(_) => TlsFailure::ClientAlert,
            _ => TlsFailure::Other,
        }
    }
}

impl Counters {
    /// Counts one rejection by kind (the total `rejected` counter too).
    #[inline]
    pub fn record_rejection(&self, answer: Answer) {
        Counters::bump(&self.rejected);
        Counters::bump(&self.rejections[answer.kind_index()]);
    }

    /// Records one handshake's latency, accept to 101 written, in ms.
    #[inline]
    pub fn record_handshake_ms(&self, ms: u64) {
        let bucket = HANDSHAKE_BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(HANDSHAKE_BUCKETS_MS.len());
        Counters::bump(&self.handshake_ms[bucket]);
        self.handshake_ms_sum.fetch_add(ms, Relaxed);
    }

    /// Adds one to `counter`.
    #[inline]
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Adds `n` to `counter`.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The sum of several reactors' counters.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Counters>) -> Snapshot {
        let mut total = Snapshot::default();
        for c in all {
            total.add(&c.events);
            total.timeouts_answered += c.rejections[Rejection::Timeout.kind_index()].load(Relaxed);
        }
        total
    }
}

impl Snapshot {
    /// Accepted connections whose handshake has no outcome counted yet: those in progress
    /// (0 once the server is idle). Every accepted connection ends in exactly one of:
    /// upgraded, rejected (a status, 408 and admission refusals included), an upstream's
    /// refusal passed on, a plain HTTP request's answer passed on, a silent handshake timeout, abandoned by the client, or shed
    /// before any work; or it became HTTP/2, and each of its streams counts as an accepted
    /// connection would.
    pub fn unaccounted(&self) -> i128 {
        let silent_timeouts =
            i128::from(self.handshake_timeouts) - i128::from(self.timeouts_answered);
        i128::from(self.accepted) + i128::from(self.h2_streams)
            - i128::from(self.h2_connections)
            - i128::from(self.upgraded)
            - i128::from(self.rejected)
            - i128::from(self.upstream_refusals_passed)
            - i128::from(self.http_forwarded)
            - silent_timeouts
            - i128::from(self.handshakes_abandoned)
            - i128::from(self.shed_before_work)
    }
}
