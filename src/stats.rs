//! Per-reactor counters. Each reactor owns its own set (no shared cache lines on the
//! connection path); readers sum them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::handshake::Rejection;

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

/// What one reactor has seen. Written only by its reactor thread; read by scrapes.
#[derive(Debug, Default)]
pub struct Counters {
    /// Rejections by kind ([`Rejection::kind_index`]).
    pub rejections: CounterArray<{ Rejection::KINDS.len() }>,
    /// Handshake latency histogram: counts per bucket of [`HANDSHAKE_BUCKETS_MS`], then +Inf.
    pub handshake_ms: [AtomicU64; HANDSHAKE_BUCKETS_MS.len() + 1],
    /// Sum of handshake latencies, in ms.
    pub handshake_ms_sum: AtomicU64,
    /// Connections held now (gauge, set once per loop turn).
    pub open: AtomicU64,
    /// Handshakes in progress now (gauge, set once per loop turn).
    pub handshaking: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Handshakes answered with 101.
    pub upgraded: AtomicU64,
    /// Handshakes refused with an HTTP status (including 408).
    pub rejected: AtomicU64,
    /// Connections closed at the handshake timeout (with or without 408).
    pub handshake_timeouts: AtomicU64,
    /// Upgraded connections closed for idleness (1001).
    pub idle_timeouts: AtomicU64,
    /// Connections given up because the client took none of their output for
    /// `--send-timeout-ms`, or not all of it within the linger at a close.
    pub send_timeouts: AtomicU64,
    /// Upgraded connections failed with a close code (1002, 1007, 1009).
    pub protocol_errors: AtomicU64,
    /// Connections closed, for any reason.
    pub closed: AtomicU64,
    /// Times accepting paused for lack of descriptors or memory (EMFILE, ENFILE, ...).
    pub accept_pauses: AtomicU64,
    /// Connections refused with 503 by admission control.
    pub admission_rejections: AtomicU64,
    /// Proxy mode: upstream connection attempts that failed (refused, unreachable, reset).
    pub upstream_connect_failures: AtomicU64,
    /// Proxy mode: upstreams that did not connect or answer in time (504).
    pub upstream_timeouts: AtomicU64,
    /// Proxy mode: upstream refusals (a status other than 101) passed to the client.
    pub upstream_refusals_passed: AtomicU64,
    /// Handshakes the client abandoned: it closed or reset the connection before any
    /// outcome (101, a status, or the timeout). With the other outcomes it accounts for every
    /// accepted connection: see [`Snapshot::unaccounted`].
    pub handshakes_abandoned: AtomicU64,
    /// TLS handshakes completed, by [`TlsHandshake::index`]: version, full or resumed.
    pub tls_handshakes: [AtomicU64; TlsHandshake::KINDS],
    /// TLS handshakes that failed, by [`TlsFailure`] (the connection also ends as
    /// abandoned).
    pub tls_failures: [AtomicU64; TlsFailure::ALL.len()],
    /// Connections refused for their PROXY protocol header: [untrusted sender, missing or
    /// malformed header] (`--accept-proxy-protocol`).
    pub proxy_protocol_refused: [AtomicU64; 2],
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
    pub fn record_rejection(&self, rejection: Rejection) {
        Counters::bump(&self.rejected);
        Counters::bump(&self.rejections[rejection.kind_index()]);
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

    /// The sum of several reactors' counters.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Counters>) -> Snapshot {
        let mut total = Snapshot::default();
        for c in all {
            total.accepted += c.accepted.load(Relaxed);
            total.upgraded += c.upgraded.load(Relaxed);
            total.rejected += c.rejected.load(Relaxed);
            total.handshake_timeouts += c.handshake_timeouts.load(Relaxed);
            total.idle_timeouts += c.idle_timeouts.load(Relaxed);
            total.send_timeouts += c.send_timeouts.load(Relaxed);
            total.protocol_errors += c.protocol_errors.load(Relaxed);
            total.closed += c.closed.load(Relaxed);
            total.accept_pauses += c.accept_pauses.load(Relaxed);
            total.admission_rejections += c.admission_rejections.load(Relaxed);
            total.upstream_connect_failures += c.upstream_connect_failures.load(Relaxed);
            total.upstream_timeouts += c.upstream_timeouts.load(Relaxed);
            total.upstream_refusals_passed += c.upstream_refusals_passed.load(Relaxed);
            total.handshakes_abandoned += c.handshakes_abandoned.load(Relaxed);
            total.timeouts_answered += c.rejections[Rejection::Timeout.kind_index()].load(Relaxed);
        }
        total
    }
}

/// Plain totals, for logging.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Snapshot {
    pub accepted: u64,
    pub upgraded: u64,
    pub rejected: u64,
    pub handshake_timeouts: u64,
    pub idle_timeouts: u64,
    pub send_timeouts: u64,
    pub protocol_errors: u64,
    pub closed: u64,
    pub accept_pauses: u64,
    pub admission_rejections: u64,
    pub upstream_connect_failures: u64,
    pub upstream_timeouts: u64,
    pub upstream_refusals_passed: u64,
    pub handshakes_abandoned: u64,
    /// Handshake timeouts answered with 408 (counted in `rejected` and `handshake_timeouts`).
    pub timeouts_answered: u64,
}

impl Snapshot {
    /// Accepted connections whose handshake has no outcome counted yet: those in progress
    /// (0 once the server is idle). Every accepted connection ends in exactly one of:
    /// upgraded, rejected (a status, 408 and admission refusals included), an upstream's
    /// refusal passed on, a silent handshake timeout, or abandoned by the client.
    pub fn unaccounted(&self) -> i128 {
        let silent_timeouts =
            i128::from(self.handshake_timeouts) - i128::from(self.timeouts_answered);
        i128::from(self.accepted)
            - i128::from(self.upgraded)
            - i128::from(self.rejected)
            - i128::from(self.upstream_refusals_passed)
            - silent_timeouts
            - i128::from(self.handshakes_abandoned)
    }
}
