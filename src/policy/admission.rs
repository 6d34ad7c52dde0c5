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

/// How a refusal's `Retry-After` is chosen (`--retry-after-secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// Uniformly from this range, in seconds, so that the refused clients do not all come
    /// back at the same instant.
    Range(u32, u32),
    /// Paced by what this reactor measures it upgrades a second: the refused clients'
    /// returns are given successive slots at that rate,
    /// so that they come back over the time the server (or its app fleet) needs for them,
    /// not as one wave.
    Auto,
}

impl RetryAfter {
    /// Parses `MIN-MAX` (or one number) in seconds, or `auto`.
    pub fn parse(value: &str) -> Result<RetryAfter, String> {
        if value == "auto" {
            return Ok(RetryAfter::Auto);
        }
        let (low, high) = value.split_once('-').unwrap_or((value, value));
        match (low.trim().parse::<u32>(), high.trim().parse::<u32>()) {
            (Ok(low), Ok(high)) if low <= high && high <= 86_400 => {
                Ok(RetryAfter::Range(low, high))
            }
            _ => Err(
                "a range is MIN-MAX seconds with MIN <= MAX <= 86400, e.g. 5-30, or auto".into(),
            ),
        }
    }
}

impl std::fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetryAfter::Range(low, high) => write!(f, "{low}-{high}s"),
            RetryAfter::Auto => f.write_str("auto"),
        }
    }
}

/// `--retry-after-secs auto`: the longest wait given, in seconds.
pub const AUTO_RETRY_AFTER_MAX_SECS: u32 = 300;
/// `--retry-after-secs auto`: the rate assumed before any is measured, per reactor and
/// second (a storm's first refusals may come before its first upgrades).
const AUTO_RATE_FLOOR: f64 = 50.0;

/// This reactor's upgrades a second, measured over windows of at least half a second, and
/// the return slots given to refused clients.
#[derive(Debug, Default)]
struct Pacing {
    /// Upgrades counted at the start of the window, and when it started.
    window: Option<(u64, u64)>,
    /// Smoothed upgrades a second (0: none measured yet).
    rate: f64,
    /// The next free return slot, in the reactor's ms clock (fractional: at thousands a
    /// second, slots are closer than a millisecond).
    next_return: f64,
    now: u64,
}

impl Pacing {
    fn observe(&mut self, upgraded: u64, now: u64) {
        self.now = now;
        let Some((count, since)) = self.window else {
            self.window = Some((upgraded, now));
            return;
        };
        let elapsed = now.saturating_sub(since);
        if elapsed < 500 {
            return;
        }
        let rate = upgraded.saturating_sub(count) as f64 * 1000.0 / elapsed as f64;
        // A window without upgrades says nothing of what the fleet can take while it is
        // stuck or idle: the estimate is kept.
        if rate > 0.0 {
            self.rate = match self.rate {
                0.0 => rate,
                old => 0.7 * old + 0.3 * rate,
            };
        }
        self.window = Some((upgraded, now));
    }

    /// The next refused client's wait, in seconds: its return slot. The clients waiting at
    /// the edge are not counted ahead of it: they are being refused too when their wait
    /// runs out, or served by then, and the newest waiting go first (a returner is one).
    fn next(&mut self) -> u32 {
        let rate = self.rate.max(AUTO_RATE_FLOOR);
        let gap = (1000.0 / rate).max(0.01);
        let now = self.now as f64;
        let slot = self.next_return.max(now);
        self.next_return = slot + gap;
        let secs = ((slot - now) / 1000.0).ceil().max(1.0);
        (secs as u32).min(AUTO_RETRY_AFTER_MAX_SECS)
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
    /// How the `Retry-After` of a 503 or 429 is chosen.
    pub retry_after_secs: RetryAfter,
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
            retry_after_secs: RetryAfter::Range(5, 30),
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
    pacing: Pacing,
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
            pacing: Pacing::default(),
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
    /// given (the library does not require `Limits` to come from the CLI's checks), or the
    /// next return slot (`auto`).
    fn retry_after(&mut self) -> u32 {
        let (a, b) = match self.limits.retry_after_secs {
            RetryAfter::Range(a, b) => (a, b),
            RetryAfter::Auto => return self.pacing.next(),
        };
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

    /// HTTP/2: a new stream on a connection from the address `ip_key` (0: untracked):
    /// `--max-handshakes-per-ip-per-sec` applies to it as to a new connection; the refusal
    /// is the same 429 with `Retry-After`.
    pub(crate) fn admit_stream(
        &mut self,
        ip_key: u64,
        now: u64,
    ) -> Result<(), crate::handshake::Refusal> {
        if ip_key == 0 || self.per_ip.admit_stream(ip_key, now).is_ok() {
            return Ok(());
        }
        Err(crate::handshake::Refusal::RateLimited {
            retry_after_secs: self.retry_after(),
        })
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

    /// Handshakes in progress now.
    pub(crate) fn handshaking(&self) -> usize {
        self.handshaking
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
        &mut self,
        stats: &Counters,
        open: usize,
        now: u64,
        config: &ConnConfig,
    ) -> bool {
        if self.limits.retry_after_secs == RetryAfter::Auto {
            self.pacing
                .observe(stats.upgraded.load(Ordering::Relaxed), now);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The Retry-After of `count` clients refused at once, at `rate` upgrades a second, by
    /// how many got each value.
    fn paced(rate: u64, count: usize) -> std::collections::BTreeMap<u32, usize> {
        let mut pacing = Pacing::default();
        pacing.observe(0, 0);
        pacing.observe(rate, 1000);
        let mut by_secs = std::collections::BTreeMap::new();
        for _ in 0..count {
            *by_secs.entry(pacing.next()).or_default() += 1;
        }
        by_secs
    }

    #[test]
    fn auto_gives_the_refused_return_slots_at_the_measured_rate() {
        let by_secs = paced(400, 2_000);
        // 400 a second: 2,000 returns spread over 5 seconds, about 400 in each.
        assert_eq!(by_secs.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        for (secs, count) in &by_secs {
            assert!((399..=402).contains(count), "{secs} s: {count}");
        }
    }

    #[test]
    fn auto_assumes_a_rate_before_any_is_measured_and_caps_the_wait() {
        let mut pacing = Pacing::default();
        pacing.observe(0, 0);
        let first: Vec<u32> = (0..200).map(|_| pacing.next()).collect();
        assert_eq!(first.iter().filter(|&&s| s == 1).count(), 51);
        assert!(first.iter().all(|&s| s <= 4));
        let mut pacing = Pacing::default();
        pacing.observe(0, 0);
        for _ in 0..50 * 400 {
            pacing.next();
        }
        assert_eq!(pacing.next(), AUTO_RETRY_AFTER_MAX_SECS);
    }

    #[test]
    fn the_flag_takes_a_range_or_auto() {
        assert_eq!(RetryAfter::parse("auto"), Ok(RetryAfter::Auto));
        assert_eq!(RetryAfter::parse("5-30"), Ok(RetryAfter::Range(5, 30)));
        assert_eq!(RetryAfter::parse("7"), Ok(RetryAfter::Range(7, 7)));
        for bad in ["30-5", "x", "1-99999", ""] {
            assert!(RetryAfter::parse(bad).is_err(), "{bad}");
        }
    }
}
