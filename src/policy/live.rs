//! Settings that a reload (SIGHUP with `--config`) changes while the reactors run: the
//! per-connection behaviour (handshake rules, upstreams, timeouts) and the admission limits.
//! The signal thread publishes a new generation; each reactor looks once per loop turn (one
//! atomic load) and takes it for the connections it accepts from then on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Limits;
use crate::conn::ConnConfig;
use crate::proxy::health::HealthBoard;

/// One generation of the reloadable settings.
#[derive(Debug)]
pub struct LiveSettings {
    /// Per-connection behaviour.
    pub conn: Arc<ConnConfig>,
    /// Admission limits, server totals (each reactor takes its share).
    pub limits: Limits,
}

/// The current generation, shared by the signal thread and every reactor, and the
/// upstreams' health, which outlives generations (by address).
#[derive(Debug)]
pub struct Live {
    generation: AtomicU64,
    settings: ArcSwap<LiveSettings>,
    health: Arc<HealthBoard>,
}

impl Live {
    /// Generation 0: the settings the server started with.
    pub fn new(conn: Arc<ConnConfig>, limits: Limits) -> Live {
        Live {
            generation: AtomicU64::new(0),
            settings: ArcSwap::from_pointee(LiveSettings { conn, limits }),
            health: Arc::default(),
        }
    }

    /// Publishes new settings: connections accepted from the reactors' next turn on use them.
    /// Upstreams that stay keep their health.
    pub fn publish(&self, conn: ConnConfig, limits: Limits) {
        self.health
            .keep_only(conn.proxy.upstreams.iter().map(|u| u.addr));
        self.settings.store(Arc::new(LiveSettings {
            conn: Arc::new(conn),
            limits,
        }));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Every upstream's health, by address.
    pub fn health(&self) -> &Arc<HealthBoard> {
        &self.health
    }

    /// The settings now.
    pub fn current(&self) -> Arc<LiveSettings> {
        self.settings.load_full()
    }

    /// Publishes `upstreams` (a new lookup of the names) in place of those of `seen`,
    /// unless another generation was published since (a reload did its own lookup): false
    /// then, and nothing changes.
    pub fn publish_upstreams(
        &self,
        seen: &Arc<LiveSettings>,
        upstreams: Vec<crate::proxy::Upstream>,
    ) -> bool {
        let mut conn = ConnConfig::clone(&seen.conn);
        self.health.keep_only(upstreams.iter().map(|u| u.addr));
        conn.proxy.upstreams = upstreams;
        let next = Arc::new(LiveSettings {
            conn: Arc::new(conn),
            limits: seen.limits,
        });
        let previous = self.settings.compare_and_swap(seen, next);
        let swapped = Arc::ptr_eq(&*previous, seen);
        if swapped {
            self.generation.fetch_add(1, Ordering::Release);
        }
        swapped
    }

    /// The settings, if a generation newer than `seen` was published (and which one).
    pub fn newer_than(&self, seen: u64) -> Option<(u64, Arc<LiveSettings>)> {
        let generation = self.generation.load(Ordering::Acquire);
        (generation != seen).then(|| (generation, self.settings.load_full()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Upstream;

    fn with_upstreams(addrs: &[&str]) -> ConnConfig {
        let proxy = crate::proxy::ProxyConfig {
            upstreams: addrs
                .iter()
                .map(|a| Upstream::at(a.parse().unwrap()))
                .collect(),
            ..Default::default()
        };
        ConnConfig {
            policy: crate::handshake::Policy::default(),
            after: crate::conn::AfterUpgrade::Proxy,
            handshake_timeout_ms: 1000,
            h2c: false,
            client_patience_ms: 1000,
            idle_timeout_ms: 0,
            send_timeout_ms: 30_000,
            max_message_bytes: 64,
            linger_ms: 100,
            proxy,
        }
    }

    #[test]
    fn a_reload_keeps_the_health_of_upstreams_that_stay() {
        let live = Live::new(
            Arc::new(with_upstreams(&["10.0.0.1:80", "10.0.0.2:80"])),
            Limits::default(),
        );
        let (stays, leaves) = (
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        for _ in 0..3 {
            live.health().status(stays).check_failed(1, 3);
            live.health().status(leaves).check_failed(1, 3);
        }
        live.publish(
            with_upstreams(&["10.0.0.1:80", "10.0.0.3:80"]),
            Limits::default(),
        );
        assert!(
            !live.health().status(stays).is_up(),
            "still down after the reload"
        );
        assert!(
            live.health().status(leaves).is_up(),
            "a returning address starts afresh"
        );
    }
}
