//! One upstream's health as every reactor sees it: up or down, its live connections, its
//! failures by kind and its last check. Written by the reactor that checks it and by any
//! reactor whose client met a failure there; read by every reactor's pick (one relaxed load)
//! and by `/metrics`. Atomics only: nothing here takes a lock.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed};

/// What went wrong with an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A client's connection to it failed (refused, unreachable, reset).
    Refused,
    /// It did not accept a client's connection, or did not answer it, in time.
    Timeout,
    /// It answered a client with an invalid 101, or closed before answering.
    InvalidAnswer,
    /// An active health check failed.
    CheckFailed,
}

impl Failure {
    /// Every kind, in counter order.
    pub const ALL: [Failure; 4] = [
        Failure::Refused,
        Failure::Timeout,
        Failure::InvalidAnswer,
        Failure::CheckFailed,
    ];

    /// The `kind` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Timeout => "timeout",
            Failure::InvalidAnswer => "invalid_answer",
            Failure::CheckFailed => "check_failed",
        }
    }
}

/// One upstream's shared health state.
#[derive(Debug)]
pub struct UpstreamStatus {
    up: AtomicBool,
    /// Consecutive outcomes: passes (> 0) or failures (< 0).
    streak: AtomicI32,
    /// Relayed connections, all reactors.
    live: AtomicU32,
    /// Upgrades forwarded and not answered yet, all reactors.
    pending: AtomicU32,
    /// The reactors' limits on those, summed.
    pending_limit: AtomicU32,
    failures: [AtomicU64; Failure::ALL.len()],
    checks_passed: AtomicU64,
    /// Duration of the last active check, in µs.
    last_check_us: AtomicU64,
}

impl Default for UpstreamStatus {
    /// An upstream starts up: clients are not refused while the first checks run.
    fn default() -> Self {
        UpstreamStatus {
            up: AtomicBool::new(true),
            streak: AtomicI32::new(0),
            live: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            pending_limit: AtomicU32::new(0),
            failures: Default::default(),
            checks_passed: AtomicU64::new(0),
            last_check_us: AtomicU64::new(0),
        }
    }
}

impl UpstreamStatus {
    /// Whether it is in rotation.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// An active check passed after `micros`; true when that brought it back up (the
    /// `rise`-th pass in a row).
    pub fn check_passed(&self, micros: u64, rise: u32) -> bool {
        self.last_check_us.store(micros, Relaxed);
        self.checks_passed.fetch_add(1, Relaxed);
        let streak = self.bump_streak(1);
        streak >= rise.min(i32::MAX as u32) as i32 && self.flip(true)
    }

    /// A failure of `kind`; true when that took it out of rotation (the `fall`-th failure
    /// in a row; `None`: failures are counted but never take it out).
    pub fn failed(&self, kind: Failure, fall: Option<u32>) -> bool {
        self.failures[kind as usize].fetch_add(1, Relaxed);
        let streak = self.bump_streak(-1);
        fall.is_some_and(|fall| -streak >= fall.min(i32::MAX as u32) as i32 && self.flip(false))
    }

    /// An active check failed after `micros` (the time it took to fail).
    pub fn check_failed(&self, micros: u64, fall: u32) -> bool {
        self.last_check_us.store(micros, Relaxed);
        self.failed(Failure::CheckFailed, Some(fall))
    }

    /// A client was served (a valid 101): a run of failures is broken. Only a failure
    /// streak is written to, so that a healthy upstream's line is only read per client.
    pub fn served(&self) {
        if self.streak.load(Relaxed) < 0 {
            self.streak.store(0, Relaxed);
        }
    }

    /// Counts a relayed connection (until [`UpstreamStatus::connection_ended`]).
    pub fn connection_started(&self) {
        self.live.fetch_add(1, Relaxed);
    }

    /// A counted connection ended.
    pub fn connection_ended(&self) {
        let _ = self
            .live
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// An upgrade was forwarded (counted until [`UpstreamStatus::pending_ended`]).
    pub fn pending_started(&self) {
        self.pending.fetch_add(1, Relaxed);
    }

    /// A forwarded upgrade was answered, or given up.
    pub fn pending_ended(&self) {
        let _ = self
            .pending
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// A reactor's limit on pending upgrades moved from `before` to `after`.
    pub fn limit_moved(&self, before: u32, after: u32) {
        if after >= before {
            self.pending_limit.fetch_add(after - before, Relaxed);
        } else {
            let _ = self
                .pending_limit
                .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(before - after)));
        }
    }

    /// Upgrades pending now and the reactors' limits on them, summed.
    pub fn pending(&self) -> (u32, u32) {
        (self.pending.load(Relaxed), self.pending_limit.load(Relaxed))
    }

    /// Relayed connections now, all reactors.
    pub fn live(&self) -> u32 {
        self.live.load(Relaxed)
    }

    /// Failures of `kind` so far.
    pub fn failures(&self, kind: Failure) -> u64 {
        self.failures[kind as usize].load(Relaxed)
    }

    /// Active checks passed so far.
    pub fn checks_passed(&self) -> u64 {
        self.checks_passed.load(Relaxed)
    }

    /// How long the last active check took, in µs (0: none yet).
    pub fn last_check_micros(&self) -> u64 {
        self.last_check_us.load(Relaxed)
    }

    /// Extends the streak in `direction` (+1 or -1), restarting it if it ran the other way.
    fn bump_streak(&self, direction: i32) -> i32 {
        let previous = self.streak.fetch_update(Relaxed, Relaxed, |s| {
            Some(if s.signum() == direction {
                s.saturating_add(direction)
            } else {
                direction
            })
        });
        match previous {
            Ok(s) | Err(s) if s.signum() == direction => s.saturating_add(direction),
            _ => direction,
        }
    }

    /// Sets up or down; true if that changed it (so that only one caller logs the change).
    fn flip(&self, up: bool) -> bool {
        self.up.compare_exchange(!up, up, Relaxed, Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_in_a_row_and_rises_after_rise_passes() {
        let status = UpstreamStatus::default();
        assert!(status.is_up());
        assert!(!status.check_failed(10, 3));
        assert!(!status.check_failed(10, 3));
        status.check_passed(10, 2);
        assert!(!status.check_failed(10, 3), "a pass broke the run");
        assert!(!status.check_failed(10, 3));
        assert!(status.check_failed(10, 3), "third failure in a row");
        assert!(!status.is_up());
        assert!(
            !status.check_failed(10, 3),
            "already down: no second change"
        );
        assert!(!status.check_passed(10, 2));
        assert!(status.check_passed(10, 2));
        assert!(status.is_up());
        assert_eq!(status.failures(Failure::CheckFailed), 6);
    }

    #[test]
    fn passive_failures_count_toward_fall_only_with_a_fall() {
        let status = UpstreamStatus::default();
        for _ in 0..10 {
            assert!(!status.failed(Failure::Refused, None));
        }
        assert!(status.is_up());
        status.served();
        assert!(!status.failed(Failure::Timeout, Some(2)));
        assert!(status.failed(Failure::InvalidAnswer, Some(2)));
        assert_eq!(status.failures(Failure::Refused), 10);
    }

    #[test]
    fn live_connections_never_go_below_zero() {
        let status = UpstreamStatus::default();
        status.connection_started();
        status.connection_ended();
        status.connection_ended();
        assert_eq!(status.live(), 0);
    }
}
