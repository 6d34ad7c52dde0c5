//! Choosing an upstream: round-robin, skipping the ones that just refused a connection.

use std::net::SocketAddr;

/// How long an upstream that refused a connection is passed over, in ms.
pub const REFUSED_BACKOFF_MS: u64 = 1_000;

/// One reactor's view of the upstreams (each reactor keeps its own: no shared state).
#[derive(Debug, Clone)]
pub struct Upstreams {
    addrs: Vec<SocketAddr>,
    /// Until when each upstream is passed over, in the reactor's ms clock.
    down_until: Vec<u64>,
    next: usize,
}

impl Upstreams {
    /// A pool over `addrs`, starting at `start` (reactors start at different ones so that
    /// their first connections spread).
    pub fn new(addrs: &[SocketAddr], start: usize) -> Self {
        Upstreams {
            addrs: addrs.to_vec(),
            down_until: vec![0; addrs.len()],
            next: if addrs.is_empty() {
                0
            } else {
                start % addrs.len()
            },
        }
    }

    /// How many upstreams there are.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The next upstream to try: round-robin over those not recently refused; when every
    /// one was, the next in turn anyway (one of them may be back).
    pub fn pick(&mut self, now: u64) -> Option<(usize, SocketAddr)> {
        let count = self.addrs.len();
        if count == 0 {
            return None;
        }
        let start = self.next;
        let index = (0..count)
            .map(|i| (start + i) % count)
            .find(|&i| self.down_until[i] <= now)
            .unwrap_or(start);
        self.next = (index + 1) % count;
        Some((index, self.addrs[index]))
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
        let picks: Vec<usize> = (0..4).map(|_| pool.pick(0).unwrap().0).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
    }

    #[test]
    fn a_refuser_is_skipped_until_its_backoff_ends() {
        let mut pool = pool();
        pool.refused(1, 100, &refused());
        let picks: Vec<usize> = (0..3).map(|_| pool.pick(200).unwrap().0).collect();
        assert_eq!(picks, [0, 2, 0]);
        assert_eq!(pool.pick(100 + REFUSED_BACKOFF_MS).unwrap().0, 1);
    }

    #[test]
    fn when_all_refused_the_next_is_tried_anyway() {
        let mut pool = pool();
        for i in 0..3 {
            pool.refused(i, 0, &refused());
        }
        assert_eq!(pool.pick(1).unwrap().0, 0);
        assert_eq!(pool.pick(1).unwrap().0, 1);
    }
}
