//! Choosing an upstream: round-robin or least-connections, skipping the ones that just
//! refused a connection and the ones at their connection limit.
//!
//! Live connections are counted per reactor, not shared: `SO_REUSEPORT` spreads clients
//! evenly over the reactors, so each reactor balancing its own share balances the whole
//! without a shared counter on every connection's path. A connection is counted from the
//! moment its upstream is chosen until its [`Lease`] is dropped with the upstream side.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

/// How long an upstream that refused a connection is passed over, in ms.
pub const REFUSED_BACKOFF_MS: u64 = 1_000;

/// How the next upstream is chosen (`--upstream-balance`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// The one with the fewest live connections (ties in turn): long-lived WebSockets make
    /// round-robin unfair to an upstream added late.
    LeastConnections,
    /// By a hash of the client's key (`--upstream-hash-key`), rendezvous-style: the same key
    /// goes to the same upstream while it is up and under its cap; a request without the key
    /// goes round-robin.
    Hash,
}

/// One reactor's view of the upstreams (each reactor keeps its own: no shared state).
#[derive(Debug, Clone)]
pub struct Upstreams {
    addrs: Vec<SocketAddr>,
    /// Until when each upstream is passed over, in the reactor's ms clock.
    down_until: Vec<u64>,
    /// Live connections to each upstream from this reactor.
    live: Vec<Rc<Cell<u32>>>,
    next: usize,
}

/// A live connection to an upstream, counted until dropped.
#[derive(Debug)]
pub struct Lease(Rc<Cell<u32>>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// What [`Upstreams::pick`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Try this one.
    Upstream(usize, SocketAddr),
    /// Every upstream is at its connection limit.
    Full,
    /// There are no upstreams.
    None,
}

impl Upstreams {
    /// A pool over `addrs`, starting at `start` (reactors start at different ones so that
    /// their first connections spread).
    pub fn new(addrs: &[SocketAddr], start: usize) -> Self {
        Upstreams {
            addrs: addrs.to_vec(),
            down_until: vec![0; addrs.len()],
            live: addrs.iter().map(|_| Rc::new(Cell::new(0))).collect(),
            next: if addrs.is_empty() {
                0
            } else {
                start % addrs.len()
            },
        }
    }

    /// The pool after a reload changed the list to `addrs`: an upstream that stays keeps its
    /// count of live connections (and its backoff), a new one starts at zero.
    pub fn reconfigured(&self, addrs: &[SocketAddr]) -> Self {
        let mut pool = Upstreams::new(addrs, self.next);
        for (index, addr) in addrs.iter().enumerate() {
            if let Some(old) = self.addrs.iter().position(|a| a == addr) {
                pool.live[index] = Rc::clone(&self.live[old]);
                pool.down_until[index] = self.down_until[old];
            }
        }
        pool
    }

    /// How many upstreams there are.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Live connections to upstream `index` from this reactor.
    pub fn live(&self, index: usize) -> u32 {
        self.live.get(index).map_or(0, |l| l.get())
    }

    /// Counts a connection to upstream `index` until the lease is dropped.
    pub fn lease(&self, index: usize) -> Option<Lease> {
        let live = self.live.get(index)?;
        live.set(live.get().saturating_add(1));
        Some(Lease(Rc::clone(live)))
    }

    /// The next upstream to try, by `balance` (and the client's hashed `key`), among those
    /// under `cap` live connections (0: no cap) and not recently refused; when every one
    /// under the cap was refused, the next such in turn anyway (one of them may be back).
    pub fn pick(&mut self, now: u64, balance: Balance, cap: u32, key: Option<u64>) -> Pick {
        let count = self.addrs.len();
        if count == 0 {
            return Pick::None;
        }
        let start = self.next;
        let in_turn = (0..count).map(|i| (start + i) % count);
        let open: Vec<usize> = in_turn
            .filter(|&i| cap == 0 || self.live[i].get() < cap)
            .collect();
        let Some(&first_open) = open.first() else {
            return Pick::Full;
        };
        let up = open.iter().copied().filter(|&i| self.down_until[i] <= now);
        let index = match (balance, key) {
            (Balance::Hash, Some(key)) => {
                up.max_by_key(|&i| super::affinity::score(key, self.addrs[i]))
            }
            (Balance::RoundRobin | Balance::Hash, _) => up.min_by_key(|_| 0),
            // `min_by_key` keeps the first of equals: ties go in turn.
            (Balance::LeastConnections, _) => up.min_by_key(|&i| self.live[i].get()),
        }
        .unwrap_or(first_open);
        self.next = (index + 1) % count;
        Pick::Upstream(index, self.addrs[index])
    }

    /// Upstream `index` refused a connection (or could not be reached) with `error`.
    /// Logged once per backoff, not once per client: a down upstream under a storm would
    /// otherwise flood the log.
    pub fn refused(&mut self, index: usize, now: u64, error: &std::io::Error) {
        let Some(until) = self.down_until.get_mut(index) else {
            return;
        };
        if *until <= now {
            tracing::warn!(
                upstream = %self.addrs[index],
                %error,
                "upstream refused a connection; passing it over for {REFUSED_BACKOFF_MS} ms"
            );
        }
        *until = now + REFUSED_BACKOFF_MS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
    }

    fn pool() -> Upstreams {
        let addrs: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        Upstreams::new(&addrs, 0)
    }

    #[test]
    fn round_robin() {
        let mut pool = pool();
        let picks: Vec<usize> = (0..4).map(|_| index(pool.pick(0, RR, 0, None))).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
    }

    const RR: Balance = Balance::RoundRobin;

    fn index(pick: Pick) -> usize {
        match pick {
            Pick::Upstream(index, _) => index,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn least_connections_fills_the_emptiest_first_and_leases_count() {
        let mut pool = pool();
        let held: Vec<Lease> = [0, 0, 1].iter().filter_map(|&i| pool.lease(i)).collect();
        let least = Balance::LeastConnections;
        assert_eq!(index(pool.pick(0, least, 0, None)), 2);
        let third = pool.lease(2);
        assert_eq!(
            index(pool.pick(0, least, 0, None)),
            1,
            "1 and 2 hold one each: in turn"
        );
        drop(held);
        drop(third);
        assert_eq!((pool.live(0), pool.live(1), pool.live(2)), (0, 0, 0));
    }

    #[test]
    fn upstreams_at_the_cap_are_passed_over_and_all_full_is_said() {
        let mut pool = pool();
        let _held: Vec<Lease> = [0, 1].iter().filter_map(|&i| pool.lease(i)).collect();
        assert_eq!(index(pool.pick(0, RR, 1, None)), 2);
        let _third = pool.lease(2);
        assert_eq!(pool.pick(0, RR, 1, None), Pick::Full);
        assert_eq!(index(pool.pick(0, RR, 2, None)), 0, "a higher cap has room");
    }

    #[test]
    fn a_reload_keeps_the_counts_of_upstreams_that_stay() {
        let pool = pool();
        let held = pool.lease(1);
        let addrs: Vec<SocketAddr> = ["127.0.0.1:2", "127.0.0.1:9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let mut reloaded = pool.reconfigured(&addrs);
        assert_eq!((reloaded.live(0), reloaded.live(1)), (1, 0));
        assert_eq!(
            index(reloaded.pick(0, Balance::LeastConnections, 0, None)),
            1
        );
        drop(held);
        assert_eq!(
            reloaded.live(0),
            0,
            "the old lease is released in the new pool"
        );
    }

    #[test]
    fn a_refuser_is_skipped_until_its_backoff_ends() {
        let mut pool = pool();
        pool.refused(1, 100, &refused());
        let picks: Vec<usize> = (0..3).map(|_| index(pool.pick(200, RR, 0, None))).collect();
        assert_eq!(picks, [0, 2, 0]);
        assert_eq!(index(pool.pick(100 + REFUSED_BACKOFF_MS, RR, 0, None)), 1);
    }

    #[test]
    fn when_all_refused_the_next_is_tried_anyway() {
        let mut pool = pool();
        for i in 0..3 {
            pool.refused(i, 0, &refused());
        }
        assert_eq!(index(pool.pick(1, RR, 0, None)), 0);
        assert_eq!(index(pool.pick(1, RR, 0, None)), 1);
    }
}
