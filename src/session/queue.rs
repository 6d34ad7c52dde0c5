//! Proxy mode: the clients waiting at the edge for an upstream with room for one more
//! upgrade (`--upstream-max-pending`), each until its wait runs out (`--upstream-queue-ms`).
//!
//! Adaptive LIFO (Facebook's "Fail at Scale"): while the queue drains, the oldest waiting
//! client goes first; once it has not been empty for [`CONGESTED_AFTER_MS`], the newest
//! goes first. Under overload the newest are the likeliest to still be there: the oldest
//! have given up or soon will, and serving them first would spend the app's time on
//! clients that leave before their answer, one after the other.

use std::collections::VecDeque;

/// How long the queue must have stayed non-empty before the newest are served first.
pub const CONGESTED_AFTER_MS: u64 = 100;

/// A client is made to wait at most this share of the patience its peers showed: refused
/// (with a time to come back) before it gives up on its own, it returns when told instead
/// of at its backoff's whim, and no answer is computed for a client already gone.
const PATIENCE_SHARE: f64 = 0.8;
/// What was learned of the clients' patience is forgotten this long after the last client
/// that left while waiting: clients may have become more patient since.
const PATIENCE_MEMORY_MS: u64 = 60_000;
/// Departures seen (within the memory) before they bound anyone's wait: a few clients
/// closing a tab say nothing of the others.
const PATIENCE_SAMPLES: u32 = 32;

/// How long clients bear from their connection to their answer before they give up,
/// learned from those that left while waiting at the edge (a smoothed mean).
#[derive(Debug, Default)]
pub struct Patience {
    estimate_ms: Option<f64>,
    last_departure: u64,
    samples: u32,
}

impl Patience {
    /// A client left `waited` ms after it connected.
    pub fn left_after(&mut self, waited: u64, now: u64) {
        let waited = waited as f64;
        if now.saturating_sub(self.last_departure) >= PATIENCE_MEMORY_MS {
            self.samples = 0;
        }
        self.estimate_ms = Some(match (self.estimate_ms, self.samples) {
            (Some(old), 1..) => 0.9 * old + 0.1 * waited,
            _ => waited,
        });
        self.samples = self.samples.saturating_add(1);
        self.last_departure = now;
    }

    /// How long after its connection a client may be kept waiting, when clients were seen
    /// to give up (`None`: nothing known, or forgotten).
    pub fn bound(&self, now: u64) -> Option<u64> {
        match self.estimate_ms {
            Some(ms)
                if self.samples >= PATIENCE_SAMPLES
                    && now.saturating_sub(self.last_departure) < PATIENCE_MEMORY_MS =>
            {
                Some((ms * PATIENCE_SHARE) as u64)
            }
            _ => None,
        }
    }
}

/// One waiting client: its connection's key, when it began to wait and when its wait ends
/// (the connection's deadline while it waits: an entry whose connection no longer waits
/// until then is stale, its key perhaps reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub key: usize,
    pub since: u64,
    pub until: u64,
}

/// The queue of one reactor, in arrival order. Entries are not removed when their client
/// leaves or is refused: the caller checks each one it takes ([`Waiting::until`]), and
/// entries whose wait is over are dropped from the old end, so the queue never holds more
/// than the clients that began to wait within one wait.
#[derive(Debug, Default)]
pub struct WaitQueue {
    order: VecDeque<Waiting>,
    /// Since when the queue has not been empty.
    busy_since: Option<u64>,
}

impl WaitQueue {
    /// Client `key` waits from `now` until `until`.
    pub fn push(&mut self, key: usize, now: u64, until: u64) {
        self.busy_since.get_or_insert(now);
        self.order.push_back(Waiting {
            key,
            since: now,
            until,
        });
    }

    /// The next client to send on: the oldest while the queue drains, the newest once it is
    /// congested. Entries whose wait is over by `now` are dropped on the way.
    pub fn pop(&mut self, now: u64) -> Option<Waiting> {
        while self.order.front().is_some_and(|w| w.until <= now) {
            self.order.pop_front();
        }
        let congested = self
            .busy_since
            .is_some_and(|since| now.saturating_sub(since) >= CONGESTED_AFTER_MS);
        let next = match congested {
            true => self.order.pop_back(),
            false => self.order.pop_front(),
        };
        if self.order.is_empty() {
            self.busy_since = None;
        }
        next
    }

    /// Puts back a client taken out by [`WaitQueue::pop`] that has to wait on, with its
    /// wait as it was.
    pub fn restore(&mut self, waiting: Waiting) {
        self.busy_since.get_or_insert(waiting.since);
        self.order.push_back(waiting);
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_first_while_it_drains_newest_first_once_congested() {
        let mut queue = WaitQueue::default();
        for key in 0..4 {
            queue.push(key, 0, 10_000);
        }
        assert_eq!(queue.pop(10).map(|w| w.key), Some(0));
        assert_eq!(queue.pop(CONGESTED_AFTER_MS).map(|w| w.key), Some(3));
        assert_eq!(queue.pop(CONGESTED_AFTER_MS).map(|w| w.key), Some(2));
        assert_eq!(queue.pop(CONGESTED_AFTER_MS).map(|w| w.key), Some(1));
        assert_eq!(queue.pop(CONGESTED_AFTER_MS), None);
        // Drained: the next episode starts in order again.
        queue.push(7, 5_000, 15_000);
        queue.push(8, 5_000, 15_000);
        assert_eq!(queue.pop(5_001).map(|w| w.key), Some(7));
    }

    #[test]
    fn clients_are_made_to_wait_less_than_they_were_seen_to_bear_and_this_is_forgotten() {
        let mut patience = Patience::default();
        assert_eq!(patience.bound(0), None);
        for _ in 0..PATIENCE_SAMPLES - 1 {
            patience.left_after(300, 1_000);
        }
        assert_eq!(patience.bound(1_000), None, "a few departures bound no one");
        let mut patience = Patience::default();
        for _ in 0..50 {
            patience.left_after(5_000, 1_000);
        }
        assert_eq!(patience.bound(1_000), Some(4_000));
        assert_eq!(patience.bound(1_000 + PATIENCE_MEMORY_MS), None);
    }

    #[test]
    fn waits_that_ran_out_are_dropped_from_the_old_end() {
        let mut queue = WaitQueue::default();
        queue.push(1, 0, 100);
        queue.push(2, 50, 150);
        queue.push(3, 120, 220);
        assert_eq!(queue.pop(160).map(|w| w.key), Some(3));
        assert!(queue.is_empty());
    }
}
