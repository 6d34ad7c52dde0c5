//! Admission control, per reactor: the limits, the decision to admit or refuse a new
//! connection (503 over the reactor's share, 429 over an address's), the jitter of
//! `Retry-After`, the spread of the drain's closes, and the pause of accepting when
//! descriptors or memory run out. Shared by both backends, so that they decide alike.

use std::io;
use std::sync::atomic::Ordering;

use super::per_ip;
use crate::conn::ConnConfig;
use crate::stats::Counters;
use crate::sys;

/// How long accepting pauses when descriptors or memory run out.
const ACCEPT_PAUSE_MS: u64 = 100;

/// Accepting, paused after a failure that retrying at once would only repeat (EMFILE,
/// ENFILE, ENOMEM): the connection stays queued in the kernel meanwhile. Shared by the
/// backends so that they pause and log alike.
#[derive(Debug, Default)]
pub(crate) struct AcceptPause {
    until: u64,
    last_log: Option<u64>,
}

impl AcceptPause {
    /// Whether accepting is paused at `now`.
    pub(crate) fn is_paused(&self, now: u64) -> bool {
        now < self.until
    }

    /// When accepting may resume.
    pub(crate) fn resumes_at(&self) -> u64 {
        self.until
    }

    /// Pauses after `error`, counting it and logging at most once a second.
    pub(crate) fn pause(&mut self, now: u64, error: &io::Error, stats: &Counters) {
        self.until = now + ACCEPT_PAUSE_MS;
        Counters::bump(&stats.accept_pauses);
        if self.last_log.is_none_or(|t| now >= t + 1000) {
            self.last_log = Some(now);
            let what = if sys::is_resource_exhaustion(error) {
                "resources exhausted"
            } else {
                "accept failed"
            };
            tracing::warn!("{what}: {error}; pausing accept for {ACCEPT_PAUSE_MS} ms");
        }
    }
}

/// Admission limits and drain behaviour, per reactor (the server divides its totals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections a reactor holds (upgraded, handshaking and closing); 0: no limit.
    pub max_connections: usize,
    /// Handshakes in progress a reactor allows; 0: no limit.
    pub max_pending_handshakes: usize,
    /// Connections one client address (IPv4, or IPv6 /64) may hold; 0: no limit.
    pub max_connections_per_ip: u32,
    /// Handshakes per second one client address may start (token bucket); 0: no limit.
    pub max_handshakes_per_ip_per_sec: u64,
    /// `Retry-After` of a 503 is drawn uniformly from this range, in seconds, so that the
    /// refused clients do not all come back at the same instant.
    pub retry_after_secs: (u32, u32),
    /// Upgraded connections are closed at times spread uniformly over this window after a
    /// SIGTERM, in ms.
    pub drain_window_ms: u64,
    /// The close code sent when draining (1012 Service Restart, or 1001 Going Away).
    pub drain_close_code: u16,
}

impl Limits {
    /// One reactor's share of the server's totals, among `reactors`.
    pub fn share(&self, reactors: usize) -> Limits {
        let reactors = reactors.max(1);
        Limits {
            max_connections: self.max_connections.div_ceil(reactors),
            max_pending_handshakes: self.max_pending_handshakes.div_ceil(reactors),
            max_connections_per_ip: self.max_connections_per_ip.div_ceil(reactors as u32),
            max_handshakes_per_ip_per_sec: self
                .max_handshakes_per_ip_per_sec
                .div_ceil(reactors as u64),
            ..*self
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 0,
            max_pending_handshakes: 0,
            max_connections_per_ip: 0,
            max_handshakes_per_ip_per_sec: 0,
            retry_after_secs: (5, 30),
            drain_window_ms: 30_000,
            drain_close_code: 1012,
        }
    }
}

/// A reactor's admission control and drain schedule: counts handshakes in progress, refuses
/// over the limits with a jittered 503, and spreads the drain's closes.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    per_ip: per_ip::PerIpTable,
    handshaking: usize,
    rng: u64,
    drain_started: Option<u64>,
}

impl Admission {
    pub(crate) fn new(limits: Limits, seed: u64) -> Self {
        let per_ip = per_ip::PerIpTable::new(
            limits.max_connections_per_ip,
            limits.max_handshakes_per_ip_per_sec,
        );
        Admission {
            limits,
            per_ip,
            handshaking: 0,
            rng: seed | 1,
            drain_started: None,
        }
    }

    /// New limits (a reload) for the connections admitted from now on; the counts of those
    /// already admitted stay.
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.per_ip.set_limits(
            limits.max_connections_per_ip,
            limits.max_handshakes_per_ip_per_sec,
        );
        self.limits = limits;
    }

    fn random_below(&mut self, bound: u64) -> u64 {
        // xorshift64*: jitter needs spread, not secrecy.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }

    /// Whether admission needs the client's address (a per-address limit is set).
    pub(crate) fn wants_peer(&self) -> bool {
        self.per_ip.enabled()
    }

    /// A `Retry-After` drawn from the configured range, whichever way round its ends were
    /// given (the library does not require `Limits` to come from the CLI's checks).
    fn retry_after(&mut self) -> u32 {
        let (a, b) = self.limits.retry_after_secs;
        let (low, high) = (a.min(b), a.max(b));
        let offset = self.random_below(u64::from(high - low) + 1);
        low.saturating_add(u32::try_from(offset).unwrap_or(u32::MAX))
    }

    /// The answer to a client the reactor cannot serve for lack of resources (no descriptor
    /// for its upstream connection): 503 with a jittered `Retry-After`, as over a limit.
    pub(crate) fn overloaded(&mut self) -> crate::handshake::Refusal {
        crate::handshake::Refusal::Overloaded {
            retry_after_secs: self.retry_after(),
        }
    }

    /// Decides on a connection just accepted from `peer`, with `open` connections already
    /// held. `Ok(ip_key)` admits it (its handshake and address are counted; pass the key to
    /// [`Admission::connection_closed`]); `Err` is the refusal to send: 503 over the
    /// reactor's limits, 429 over the address's.
    pub(crate) fn admit(
        &mut self,
        open: usize,
        peer: Option<std::net::IpAddr>,
        now: u64,
    ) -> Result<u64, crate::handshake::Refusal> {
        let over_connections =
            self.limits.max_connections > 0 && open >= self.limits.max_connections;
        let over_pending = self.limits.max_pending_handshakes > 0
            && self.handshaking >= self.limits.max_pending_handshakes;
        if over_connections || over_pending {
            let retry_after_secs = self.retry_after();
            return Err(crate::handshake::Refusal::Overloaded { retry_after_secs });
        }
        let mut ip_key = 0;
        if let Some(ip) = peer.filter(|_| self.per_ip.enabled()) {
            let key = per_ip::key(ip);
            if self.per_ip.admit(key, now).is_err() {
                let retry_after_secs = self.retry_after();
                return Err(crate::handshake::Refusal::RateLimited { retry_after_secs });
            }
            ip_key = key;
        }
        self.handshaking += 1;
        Ok(ip_key)
    }

    /// Per-address admission for a client whose address arrived after the accept (in a
    /// PROXY header): its key in the per-address table (0: untracked), or the refusal.
    pub(crate) fn admit_address(
        &mut self,
        ip: std::net::IpAddr,
        now: u64,
    ) -> Result<u64, crate::handshake::Refusal> {
        if !self.per_ip.enabled() {
            return Ok(0);
        }
        let key = per_ip::key(ip);
        match self.per_ip.admit(key, now) {
            Ok(()) => Ok(key),
            Err(_) => Err(crate::handshake::Refusal::RateLimited {
                retry_after_secs: self.retry_after(),
            }),
        }
    }

    /// Proxy mode: every upstream is at its connection limit: 503 with a jittered
    /// `Retry-After`, as for the edge's own limits.
    pub(crate) fn upstreams_full(&mut self) -> crate::handshake::Refusal {
        crate::handshake::Refusal::UpstreamsFull {
            retry_after_secs: self.retry_after(),
        }
    }

    /// The 503 for a client when every upstream is down or draining, with a jittered
    /// `Retry-After`.
    pub(crate) fn upstreams_busy(&mut self) -> crate::handshake::Refusal {
        crate::handshake::Refusal::UpstreamsBusy {
            retry_after_secs: self.retry_after(),
        }
    }

    pub(crate) fn no_upstream_up(&mut self) -> crate::handshake::Refusal {
        crate::handshake::Refusal::NoUpstreamUp {
            retry_after_secs: self.retry_after(),
        }
    }

    /// When a relay to an upstream retired at `retired_at` closes: spread over the drain
    /// window from then, as a shutdown drain spreads its closes.
    pub(crate) fn retired_close(
        &mut self,
        retired_at: u64,
    ) -> (u64, crate::conn::frame::CloseCode) {
        let at = retired_at + self.random_below(self.limits.drain_window_ms);
        (
            at,
            crate::conn::frame::CloseCode(self.limits.drain_close_code),
        )
    }

    /// An admitted connection from the address with `ip_key` (0: untracked) closed.
    pub(crate) fn connection_closed(&mut self, ip_key: u64, now: u64) {
        if ip_key != 0 {
            self.per_ip.release(ip_key, now);
        }
    }

    /// A counted handshake ended (upgraded, refused, timed out or closed).
    pub(crate) fn handshake_ended(&mut self) {
        self.handshaking = self.handshaking.saturating_sub(1);
    }

    /// Starts the drain clock.
    pub(crate) fn start_drain(&mut self, now: u64) {
        self.drain_started.get_or_insert(now);
    }

    /// When an upgraded connection should be closed in this drain, and with which code.
    pub(crate) fn drain_close(&mut self) -> (u64, crate::conn::frame::CloseCode) {
        let start = self.drain_started.unwrap_or(0);
        let at = start + self.random_below(self.limits.drain_window_ms);
        (
            at,
            crate::conn::frame::CloseCode(self.limits.drain_close_code),
        )
    }

    /// End-of-turn bookkeeping shared by the backends: publishes this reactor's gauges (one
    /// relaxed store each per turn, not per connection) and says whether a drain's window is
    /// over, so that the reactor must exit with `open` connections left.
    pub(crate) fn end_turn(
        &self,
        stats: &Counters,
        open: usize,
        now: u64,
        config: &ConnConfig,
    ) -> bool {
        stats.open.store(open as u64, Ordering::Relaxed);
        stats
            .handshaking
            .store(self.handshaking as u64, Ordering::Relaxed);
        let over = self
            .drain_deadline(config.handshake_timeout_ms, config.linger_ms)
            .is_some_and(|deadline| now >= deadline);
        if over {
            tracing::warn!(
                connections = open,
                "drain window over; closing what is left"
            );
        }
        over
    }

    /// After this time a draining reactor exits even with connections left.
    fn drain_deadline(&self, handshake_timeout_ms: u64, linger_ms: u64) -> Option<u64> {
        self.drain_started
            .map(|start| start + self.limits.drain_window_ms.max(handshake_timeout_ms) + linger_ms)
    }
}
