//! How many upgrades one upstream is given at once (`--upstream-max-pending`): forwarded
//! requests not yet answered. An app server's session setup costs it CPU; past what it can
//! set up at once, more in flight only lengthen every answer until clients give up on
//! answers the app is still computing. A fixed N, or `auto`: the limit found as it goes
//! from the answers' latency (additive increase while they come within a target, decrease
//! past it), as Netflix's concurrency-limits and Envoy's adaptive concurrency find a
//! request limit. Established relays never count.

use std::time::Duration;

/// `--upstream-max-pending N|auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PendingLimit {
    /// At most N forwarded upgrades unanswered per upstream (server total, split over the
    /// reactors).
    Fixed(u32),
    /// Found from the upstream's answer latency.
    #[default]
    Auto,
}

impl PendingLimit {
    /// Parses `N` (at least 1) or `auto`.
    pub fn parse(value: &str) -> Result<PendingLimit, String> {
        match value {
            "auto" => Ok(PendingLimit::Auto),
            _ => match value.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(PendingLimit::Fixed(n)),
                _ => Err(format!(
                    "{value:?} is neither a number of upgrades (1 or more) nor auto"
                )),
            },
        }
    }
}

impl std::fmt::Display for PendingLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PendingLimit::Fixed(n) => write!(f, "{n}"),
            PendingLimit::Auto => f.write_str("auto"),
        }
    }
}

/// Where `auto` starts, per reactor and upstream: a few at once, which any app server takes.
pub const AUTO_START: u32 = 4;
/// The most `auto` grows to, per reactor and upstream.
pub const AUTO_MAX: u32 = 1_000;
/// `auto` keeps an upstream's answer latency under this many times its own (the least seen
/// while it was not queued)...
const TARGET_TIMES_FLOOR: u64 = 4;
/// ...or this, whichever is longer, in µs: an app that answers within it is not in
/// trouble, however many are in flight. A latency target, as CoDel's: in a steady state
/// the limit does not bind (the clients are not made to wait at the edge, which costs the
/// edge a little per client); when a herd arrives and answers take seconds, it does.
const TARGET_FLOOR_US: u64 = 20_000;
/// The latency floor is the least latency of answers that came while the upstream had at
/// most half its limit in flight (not queued behind others); after this many such answers
/// it becomes the least of them, so that it follows an upstream that became slower for
/// good (a new release, a smaller machine). Under sustained load no such answer comes and
/// the floor stays: a floor learned from queued answers would creep up with the queue.
const FLOOR_WINDOW: u32 = 200;

/// One reactor's limit for one upstream.
#[derive(Debug, Clone)]
pub struct Limiter {
    kind: PendingLimit,
    /// The limit now.
    limit: u32,
    /// The answer latency of an upstream not queued, in µs (`u64::MAX`: none seen yet).
    floor: u64,
    /// The least of the unqueued answers since the floor was last renewed, and how many.
    floor_next: u64,
    samples: u32,
}

impl Limiter {
    /// A limiter for `kind`, this reactor's share of a fixed limit among `reactors`.
    pub fn new(kind: PendingLimit, reactors: usize) -> Limiter {
        let limit = match kind {
            PendingLimit::Fixed(n) => n.div_ceil(reactors.max(1) as u32).max(1),
            PendingLimit::Auto => AUTO_START,
        };
        Limiter {
            kind,
            limit,
            floor: u64::MAX,
            floor_next: u64::MAX,
            samples: 0,
        }
    }

    /// How many may be pending now.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The upstream answered one upgrade after `latency` with `pending` in flight (before
    /// this one ended): `auto` moves its limit.
    pub fn answered(&mut self, latency: Duration, pending: u32) {
        if self.kind != PendingLimit::Auto {
            return;
        }
        let us = (latency.as_micros() as u64).max(1);
        if self.floor == u64::MAX {
            self.floor = us;
        }
        if pending <= self.limit / 2 {
            self.floor = self.floor.min(us);
            self.floor_next = self.floor_next.min(us);
            self.samples += 1;
            if self.samples >= FLOOR_WINDOW {
                self.floor = self.floor_next;
                self.floor_next = u64::MAX;
                self.samples = 0;
            }
        }
        let target = (self.floor.saturating_mul(TARGET_TIMES_FLOOR)).max(TARGET_FLOOR_US);
        if us > target {
            self.limit = self.limit.saturating_sub(1).max(1);
        } else if pending + 1 >= self.limit {
            // Grown only when the limit is what holds clients back, not an idle upstream.
            self.limit = (self.limit + 1).min(AUTO_MAX);
        }
    }

    /// The upstream did not answer an upgrade in time, or failed it: `auto` halves.
    pub fn failed(&mut self) {
        if self.kind == PendingLimit::Auto {
            self.limit = (self.limit / 2).max(1);
        }
    }

    /// A reload changed the kind or the number of reactors: a fixed limit is taken as
    /// given, `auto` keeps what it learned.
    pub fn reconfigure(&mut self, kind: PendingLimit, reactors: usize) {
        if kind != self.kind || kind != PendingLimit::Auto {
            *self = Limiter::new(kind, reactors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app that serves one setup at a time, each taking `cost`: with `n` in flight the
    /// last waits n·cost.
    fn serial_app_latency(cost: Duration, in_flight: u32) -> Duration {
        cost * in_flight.max(1)
    }

    #[test]
    fn auto_keeps_a_slow_app_s_answers_near_the_target() {
        let mut limiter = Limiter::new(PendingLimit::Auto, 1);
        let cost = Duration::from_millis(2);
        for _ in 0..5_000 {
            let in_flight = limiter.limit();
            limiter.answered(serial_app_latency(cost, in_flight), in_flight - 1);
        }
        // Its answers come within 4x what they took with 4 in flight: 32 ms, 16 at once.
        let limit = limiter.limit();
        assert!((15..=17).contains(&limit), "{limit}");
    }

    #[test]
    fn auto_does_not_bind_while_answers_come_within_the_target() {
        let mut limiter = Limiter::new(PendingLimit::Auto, 1);
        for _ in 0..5_000 {
            let in_flight = limiter.limit();
            // A fast app: 50 µs each, one at a time; 64 in flight wait 3.2 ms.
            let latency = Duration::from_micros(50) * in_flight;
            limiter.answered(latency, in_flight - 1);
        }
        assert!(limiter.limit() >= 64, "{}", limiter.limit());
    }

    #[test]
    fn auto_grows_for_an_app_that_serves_many_at_once() {
        let mut limiter = Limiter::new(PendingLimit::Auto, 1);
        for _ in 0..5_000 {
            let in_flight = limiter.limit();
            // 64 workers: latency flat until 64 in flight.
            let latency = Duration::from_millis(2) * in_flight.div_ceil(64);
            limiter.answered(latency, in_flight - 1);
        }
        assert!(limiter.limit() >= 60, "{}", limiter.limit());
    }

    #[test]
    fn auto_follows_an_upstream_that_became_slower_for_good() {
        let mut limiter = Limiter::new(PendingLimit::Auto, 1);
        let cost = Duration::from_millis(2);
        for _ in 0..2_000 {
            let in_flight = limiter.limit();
            limiter.answered(serial_app_latency(cost, in_flight), in_flight - 1);
        }
        let before = limiter.limit();
        // Now 64 workers at 10 ms each, under light load for a while, then under a storm.
        let slower = |n: u32| Duration::from_millis(10) * n.div_ceil(64);
        assert!(before < 64);
        for _ in 0..FLOOR_WINDOW {
            limiter.answered(slower(1), 0);
        }
        for _ in 0..5_000 {
            let in_flight = limiter.limit();
            limiter.answered(slower(in_flight), in_flight - 1);
        }
        assert!(limiter.limit() >= 60, "{before} then {}", limiter.limit());
    }

    #[test]
    fn auto_does_not_grow_while_the_upstream_is_not_busy() {
        let mut limiter = Limiter::new(PendingLimit::Auto, 1);
        for _ in 0..1_000 {
            limiter.answered(Duration::from_millis(2), 0);
        }
        assert_eq!(limiter.limit(), AUTO_START);
    }

    #[test]
    fn failures_halve_auto_and_leave_a_fixed_limit() {
        let mut limiter = Limiter::new(PendingLimit::Auto, 1);
        limiter.limit = 40;
        limiter.failed();
        assert_eq!(limiter.limit(), 20);
        let mut fixed = Limiter::new(PendingLimit::Fixed(10), 4);
        assert_eq!(fixed.limit(), 3);
        fixed.failed();
        fixed.answered(Duration::from_secs(5), 2);
        assert_eq!(fixed.limit(), 3);
    }

    #[test]
    fn the_flag_takes_a_number_or_auto() {
        assert_eq!(PendingLimit::parse("auto"), Ok(PendingLimit::Auto));
        assert_eq!(PendingLimit::parse("20"), Ok(PendingLimit::Fixed(20)));
        for bad in ["0", "-1", "many", ""] {
            assert!(PendingLimit::parse(bad).is_err(), "{bad}");
        }
    }
}
