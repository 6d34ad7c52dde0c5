//! Proxy mode, one reactor's part of the upstream fleet: which upstream a client gets next
//! (and on each retry), this reactor's share of the active health checks and when they run,
//! and what a reload's new list of upstreams means for both.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::proxy::health::{Checker, HealthBoard};
use crate::proxy::{Lease, Pick, ProxyConfig, Upstreams};

/// One reactor's view of the upstreams and its health checks.
pub struct Fleet {
    upstreams: Upstreams,
    /// Every upstream's health, shared by the reactors.
    health: Arc<HealthBoard>,
    /// This reactor's active checks (`None`: passive only, or none could start).
    checker: Option<Checker>,
    /// The checks' descriptor was reported readable since they last ran.
    checks_ready: bool,
    /// This reactor's place among `reactors`: which upstreams it checks, and its share of
    /// each upstream's connection limit.
    index: usize,
    reactors: usize,
    /// The `--upstream-source` whose turn is next.
    next_source: usize,
    /// When running out of local ports toward an upstream was last logged.
    ports_logged: Option<u64>,
}

impl Fleet {
    /// The fleet as `proxy` gives it, with rotations starting at `seed` (reactors start at
    /// different upstreams, so that their first connections spread).
    pub fn new(proxy: &ProxyConfig, health: Arc<HealthBoard>, seed: u64) -> Fleet {
        // Only with checks configured at start: the backends watch the checker's descriptor
        // from their start, and a descriptor nobody uses is one less for clients.
        let checker = match proxy.health.is_none() || proxy.upstreams.is_empty() {
            true => None,
            false => Checker::new()
                .inspect_err(|error| tracing::warn!(%error, "no health checks on this reactor"))
                .ok(),
        };
        let mut fleet = Fleet {
            upstreams: Upstreams::new(&proxy.upstreams, &health, seed as usize),
            health,
            checker,
            checks_ready: false,
            index: 0,
            reactors: 1,
            next_source: 0,
            ports_logged: None,
        };
        fleet.upstreams.set_pending_limit(proxy.max_pending, 1);
        fleet.assign_checks(proxy, 0);
        fleet
    }

    /// How many reactors share the upstreams.
    pub fn reactors(&self) -> usize {
        self.reactors
    }

    /// Whether some upstream has room for one more upgrade (under `cap` live connections).
    pub fn has_room(&self, cap: u32) -> bool {
        self.upstreams.has_room(cap)
    }

    /// This reactor is `index` of `reactors`: it takes its share of the checks.
    pub fn place(&mut self, index: usize, reactors: usize, proxy: &ProxyConfig) {
        (self.index, self.reactors) = (index, reactors.max(1));
        // Reactors start their turns at different sources, as at different upstreams.
        self.next_source = index;
        self.upstreams
            .set_pending_limit(proxy.max_pending, self.reactors);
        self.assign_checks(proxy, 0);
    }

    /// Gives the checker this reactor's share of the upstreams to check: every
    /// `reactors`-th, from its index (draining ones are not checked).
    fn assign_checks(&mut self, proxy: &ProxyConfig, now: u64) {
        let (reactors, index) = (self.reactors, self.index);
        let Some(checker) = self.checker.as_mut() else {
            return;
        };
        let interval = proxy.health.as_ref().map_or(0, |h| h.interval_ms);
        let mine: Vec<_> = match proxy.health {
            None => Vec::new(),
            Some(_) => proxy
                .upstreams
                .iter()
                .enumerate()
                .filter(|(n, u)| n % reactors == index && !u.drain)
                .map(|(_, u)| (u.addr, self.health.status(u.addr)))
                .collect(),
        };
        checker.assign(&mine, now, interval);
    }

    /// The descriptor of this reactor's health checks, to watch for readability.
    pub fn checks_fd(&self) -> Option<RawFd> {
        self.checker.as_ref().map(Checker::fd)
    }

    /// The health checks' descriptor was reported readable: they run this turn.
    pub fn checks_ready(&mut self) {
        self.checks_ready = true;
    }

    /// Runs the health checks if their descriptor was readable or one is due.
    pub fn run_checks(&mut self, proxy: &ProxyConfig, now: u64) {
        let (Some(checker), Some(settings)) = (self.checker.as_mut(), proxy.health.as_ref()) else {
            return;
        };
        let ready = std::mem::take(&mut self.checks_ready);
        if ready || checker.next_due().is_some_and(|due| due <= now) {
            checker.run(settings, now, ready);
        }
    }

    /// When the next health check is due.
    pub fn next_check_due(&self) -> Option<u64> {
        self.checker.as_ref().and_then(Checker::next_due)
    }

    /// A reload replaced `old` with `new`: the upstreams and the checks follow. True when
    /// an upstream with relays here was retired (they get their close times).
    pub fn reconfigure(&mut self, new: &ProxyConfig, old: &ProxyConfig, now: u64) -> bool {
        let upstreams_changed = new.upstreams != old.upstreams;
        let mut retired = false;
        if upstreams_changed {
            let health = &self.health;
            let (pool, any_retired) = self.upstreams.reconfigured(&new.upstreams, health, now);
            self.upstreams = pool;
            retired = any_retired;
        }
        if upstreams_changed || new.max_pending != old.max_pending {
            self.upstreams
                .set_pending_limit(new.max_pending, self.reactors);
        }
        if upstreams_changed || new.health != old.health {
            if self.checker.is_none() && new.health.is_some() && self.index == 0 {
                tracing::warn!(
                    "health checks turned on by a reload start at the next restart \
                     (passive checks apply now)"
                );
            }
            self.assign_checks(new, now);
        }
        retired
    }

    /// The next upstream for a client that has tried `attempts` (counted here);
    /// [`Pick::None`] once every upstream was tried for it, [`Pick::Full`] when every
    /// upstream holds this reactor's share of `--upstream-max-connections`.
    ///
    /// `pin` is the upstream id a client's sticky cookie names: its first attempt goes there
    /// while that upstream can take it; a retry (after it refused) is balanced.
    pub fn next(
        &mut self,
        proxy: &ProxyConfig,
        attempts: &mut usize,
        (key, pin): (Option<u64>, Option<u64>),
        now: u64,
    ) -> Pick {
        if *attempts >= self.upstreams.len() {
            return Pick::None;
        }
        let cap = proxy
            .max_connections_per_upstream
            .div_ceil(self.reactors as u32);
        let pinned = pin
            .filter(|_| *attempts == 0)
            .and_then(|id| self.upstreams.pick_pinned(id, now, cap));
        let picked = match pinned {
            Some(pick) => pick,
            None => self.upstreams.pick(now, proxy.balance, cap, key),
        };
        if let Pick::Upstream(..) = picked {
            *attempts += 1;
        }
        picked
    }

    /// The local address to open a connection to `upstream` from: the `--upstream-source`
    /// addresses of its family take turns (`None`: the kernel's choice).
    pub fn source_for(&mut self, proxy: &ProxyConfig, upstream: SocketAddr) -> Option<IpAddr> {
        let family = |ip: &&IpAddr| ip.is_ipv4() == upstream.is_ipv4();
        let count = proxy.sources.iter().filter(family).count();
        if count == 0 {
            return None;
        }
        self.next_source = self.next_source.wrapping_add(1);
        proxy
            .sources
            .iter()
            .filter(family)
            .nth(self.next_source % count)
            .copied()
    }

    /// No local port was left toward `upstream` (`EADDRNOTAVAIL` at connect): said at most
    /// once a second, as what it is.
    pub fn ports_exhausted(&mut self, upstream: SocketAddr, now: u64) {
        if self.ports_logged.is_some_and(|at| now < at + 1000) {
            return;
        }
        self.ports_logged = Some(now);
        tracing::warn!(
            %upstream,
            "no local port left toward the upstream (connections in TIME_WAIT, or too many at \
             once): add --upstream-source addresses or widen net.ipv4.ip_local_port_range"
        );
    }

    /// A connection to upstream `index` begins: counted until the lease is dropped.
    pub fn lease(&self, index: usize) -> Option<Lease> {
        self.upstreams.lease(index)
    }
}
