//! Per-client-address limits in fixed memory: connections held and handshakes per second
//! (a token bucket), keyed by IPv4 address or IPv6 /64.
//!
//! The table never grows: a slot is found by linear probing over a short window; when the
//! window is full, the stalest idle entry is reused, and when every entry in it holds
//! connections the client is let through untracked (failing open rather than refusing
//! clients we cannot account for). Each reactor keeps its own table and enforces its share
//! of the limits, since `SO_REUSEPORT` spreads one address's connections over reactors.

use std::net::IpAddr;

const SLOTS: usize = 16_384;
const PROBES: usize = 8;
/// An idle entry (no connection) untouched this long may be reused.
const STALE_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// 0: empty.
    key: u64,
    connections: u32,
    /// Handshake tokens, in thousandths.
    tokens_milli: u64,
    last_ms: u64,
}

/// Why a client address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It holds too many connections.
    Connections,
    /// It opens handshakes faster than allowed.
    Rate,
}

/// The per-address table of one reactor.
#[derive(Debug)]
pub struct PerIpTable {
    entries: Box<[Entry]>,
    max_connections: u32,
    /// Handshakes per second allowed per address; 0: no rate limit.
    rate_per_sec: u64,
}

/// The table key of an address: the IPv4 address, or the /64 of an IPv6 address (one
/// subscriber usually owns a whole /64).
pub fn key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => 0xFFFF_0000_0000_0000 | u64::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => 0xFFFF_0000_0000_0000 | u64::from(u32::from(v4)),
            // 0 marks an empty slot; the /64 ::/64 is not a real client anyway.
            None => ((u128::from(v6) >> 64) as u64).max(1),
        },
    }
}

impl Entry {
    /// Takes one handshake from the address's bucket (refilled at `rate` a second, `rate`
    /// deep), if one is left; always, without a rate.
    fn take_handshake(&mut self, rate: u64, now: u64) -> bool {
        if rate == 0 {
            return true;
        }
        let burst = rate * 1000;
        let refill = now.saturating_sub(self.last_ms) * rate;
        self.tokens_milli = (self.tokens_milli + refill).min(burst);
        self.last_ms = now;
        if self.tokens_milli < 1000 {
            return false;
        }
        self.tokens_milli -= 1000;
        true
    }
}

impl PerIpTable {
    /// A table enforcing `max_connections` (0: none) and `rate_per_sec` (0: none).
    pub fn new(max_connections: u32, rate_per_sec: u64) -> Self {
        PerIpTable {
            entries: vec![Entry::default(); SLOTS].into_boxed_slice(),
            max_connections,
            rate_per_sec,
        }
    }

    /// New limits for the connections admitted from now on (a reload).
    pub fn set_limits(&mut self, max_connections: u32, rate_per_sec: u64) {
        self.max_connections = max_connections;
        self.rate_per_sec = rate_per_sec;
    }

    /// Whether any limit is set (if not, addresses need not even be looked up).
    pub fn enabled(&self) -> bool {
        self.max_connections > 0 || self.rate_per_sec > 0
    }

    fn slot(&mut self, key: u64, now: u64) -> Option<usize> {
        let start = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 50) as usize % SLOTS;
        let mut reusable: Option<usize> = None;
        for probe in 0..PROBES {
            let index = (start + probe) % SLOTS;
            let entry = &self.entries[index];
            if entry.key == key {
                return Some(index);
            }
            let free = entry.key == 0
                || (entry.connections == 0 && now.saturating_sub(entry.last_ms) >= STALE_MS);
            if free && reusable.is_none() {
                reusable = Some(index);
            }
        }
        let index = reusable?;
        let burst = self.rate_per_sec.max(1) * 1000;
        self.entries[index] = Entry {
            key,
            connections: 0,
            tokens_milli: burst,
            last_ms: now,
        };
        Some(index)
    }

    /// Admits one new connection from `key` at `now` (ms), or says why not.
    pub fn admit(&mut self, key: u64, now: u64) -> Result<(), Refusal> {
        let (max_connections, rate) = (self.max_connections, self.rate_per_sec);
        let Some(index) = self.slot(key, now) else {
            return Ok(());
        };
        let entry = &mut self.entries[index];
        if max_connections > 0 && entry.connections >= max_connections {
            return Err(Refusal::Connections);
        }
        if !entry.take_handshake(rate, now) {
            return Err(Refusal::Rate);
        }
        entry.last_ms = now;
        entry.connections += 1;
        Ok(())
    }

    /// HTTP/2: one more WebSocket on a connection from `key` at `now`: it spends one of the
    /// address's handshakes a second, as a new connection does (the connection count is
    /// not touched: the stream rides a connection already counted).
    pub fn admit_stream(&mut self, key: u64, now: u64) -> Result<(), Refusal> {
        let rate = self.rate_per_sec;
        if rate == 0 {
            return Ok(());
        }
        let Some(index) = self.slot(key, now) else {
            return Ok(());
        };
        match self.entries[index].take_handshake(rate, now) {
            true => Ok(()),
            false => Err(Refusal::Rate),
        }
    }

    /// A connection admitted from `key` closed.
    pub fn release(&mut self, key: u64, now: u64) {
        let start = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 50) as usize % SLOTS;
        for probe in 0..PROBES {
            let entry = &mut self.entries[(start + probe) % SLOTS];
            if entry.key == key {
                entry.connections = entry.connections.saturating_sub(1);
                entry.last_ms = now;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> u64 {
        key(s.parse().unwrap())
    }

    #[test]
    fn connections_per_address_are_capped_and_released() {
        let mut table = PerIpTable::new(2, 0);
        assert_eq!(table.admit(ip("10.0.0.1"), 0), Ok(()));
        assert_eq!(table.admit(ip("10.0.0.1"), 0), Ok(()));
        assert_eq!(table.admit(ip("10.0.0.1"), 0), Err(Refusal::Connections));
        assert_eq!(
            table.admit(ip("10.0.0.2"), 0),
            Ok(()),
            "another address is not affected"
        );
        table.release(ip("10.0.0.1"), 5);
        assert_eq!(table.admit(ip("10.0.0.1"), 5), Ok(()));
    }

    #[test]
    fn handshake_rate_is_a_token_bucket() {
        let mut table = PerIpTable::new(0, 2);
        assert_eq!(table.admit(ip("10.0.0.1"), 0), Ok(()));
        assert_eq!(table.admit(ip("10.0.0.1"), 0), Ok(()));
        assert_eq!(table.admit(ip("10.0.0.1"), 0), Err(Refusal::Rate));
        assert_eq!(table.admit(ip("10.0.0.1"), 499), Err(Refusal::Rate));
        assert_eq!(
            table.admit(ip("10.0.0.1"), 500),
            Ok(()),
            "one token per 500 ms at 2/s"
        );
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_bit_prefix() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:10.0.0.1"), ip("10.0.0.1"));
    }

    #[test]
    fn memory_stays_fixed_and_idle_entries_are_reused() {
        let mut table = PerIpTable::new(1, 0);
        for n in 0..100_000u32 {
            let key = 0xFFFF_0000_0000_0000 | u64::from(n);
            if table.admit(key, u64::from(n)).is_ok() {
                table.release(key, u64::from(n));
            }
        }
        assert_eq!(table.entries.len(), SLOTS);
        // A full window of busy entries fails open rather than refusing.
        let mut busy = PerIpTable::new(1, 0);
        let admitted = (0..200_000u64)
            .filter(|n| busy.admit(0xFFFF_0000_0000_0000 | n, 0).is_ok())
            .count();
        assert_eq!(admitted, 200_000);
    }
}
