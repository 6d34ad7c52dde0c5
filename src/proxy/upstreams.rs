//! Choosing an upstream: round-robin or least-connections, skipping the ones that just
//! refused a connection and the ones at their connection limit.
//!
//! Live connections are counted per reactor, not shared: `SO_REUSEPORT` spreads clients
//! evenly over the reactors, so each reactor balancing its own share balances the whole
//! without a shared counter on every connection's path. A connection is counted from the
//! moment its upstream is chosen until its [`Lease`] is dropped with the upstream side.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use super::health::{Failure, HealthBoard, UpstreamStatus};
use super::pending::{Limiter, PendingLimit};
use super::Upstream;

/// How long an upstream that refused a connection is passed over, in ms.
pub const REFUSED_BACKOFF_MS: u64 = 1_000;

/// How the next upstream is chosen (`--upstream-balance`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Balance {
    /// In turn, each as often as its weight (smooth weighted round-robin, as nginx does).
    #[default]
    RoundRobin,
    /// The one with the fewest live connections for its weight (ties in turn): long-lived
    /// WebSockets make round-robin unfair to an upstream added late.
    LeastConnections,
    /// By a hash of the client's key (`--upstream-hash-key`), rendezvous-style and
    /// weighted: the same key goes to the same upstream while it is up and under its cap; a
    /// request without the key goes round-robin.
    Hash,
}

/// One reactor's view of the upstreams (each reactor keeps its own: no shared state but
/// the health each [`UpstreamStatus`] carries).
#[derive(Debug, Clone)]
pub struct Upstreams {
    members: Vec<Member>,
    next: usize,
}

#[derive(Debug, Clone)]
struct Member {
    addr: SocketAddr,
    weight: u32,
    drain: bool,
    /// Smooth weighted round-robin's running score.
    current: i64,
    status: Arc<UpstreamStatus>,
    slot: Rc<Slot>,
}

/// This reactor's bookkeeping for one upstream, shared with the leases on it.
#[derive(Debug)]
struct Slot {
    /// Live connections to it from this reactor.
    live: Cell<u32>,
    /// Until when it is passed over after refusing, in the reactor's ms clock.
    down_until: Cell<u64>,
    /// When a reload removed it or marked it `drain` ([`NOT_RETIRED`]: it serves).
    retired_at: Cell<u64>,
    /// Upgrades forwarded to it from this reactor and not answered yet.
    pending: Cell<u32>,
    /// How many may be (`--upstream-max-pending`).
    limiter: RefCell<Limiter>,
    /// The upstream's shared gauges: this slot's limit is counted in them while it lives.
    status: Arc<UpstreamStatus>,
}

const NOT_RETIRED: u64 = u64::MAX;

impl Slot {
    fn new(status: Arc<UpstreamStatus>) -> Slot {
        let limiter = Limiter::new(PendingLimit::Auto, 1);
        status.limit_moved(0, limiter.limit());
        Slot {
            live: Cell::new(0),
            down_until: Cell::new(0),
            retired_at: Cell::new(NOT_RETIRED),
            pending: Cell::new(0),
            limiter: RefCell::new(limiter),
            status,
        }
    }

    fn has_room(&self) -> bool {
        self.pending.get() < self.limiter.borrow().limit()
    }

    /// Runs `change` on the limiter, keeping the shared gauge of limits in step.
    fn adjust(&self, change: impl FnOnce(&mut Limiter)) {
        let mut limiter = self.limiter.borrow_mut();
        let before = limiter.limit();
        change(&mut limiter);
        self.status.limit_moved(before, limiter.limit());
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.status.limit_moved(self.limiter.borrow().limit(), 0);
    }
}

/// A live connection to an upstream, counted (on this reactor, and server-wide for
/// `/metrics`) until dropped.
#[derive(Debug)]
pub struct Lease {
    slot: Rc<Slot>,
    status: Arc<UpstreamStatus>,
    addr: SocketAddr,
    /// Counted among the upstream's pending upgrades until it answers ([`Lease::answered`])
    /// or the lease ends.
    pending: Cell<bool>,
    /// When the upgrade was sent on its way, for the answer's latency.
    since: std::time::Instant,
}

impl Lease {
    /// When the upstream was retired (removed or marked `drain`), if it was: the relay is
    /// then closed within the drain window from that time.
    pub fn retired_at(&self) -> Option<u64> {
        Some(self.slot.retired_at.get()).filter(|&at| at != NOT_RETIRED)
    }

    /// The upstream's shared health.
    pub fn status(&self) -> &UpstreamStatus {
        &self.status
    }

    /// The upstream's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream answered the upgrade (a 101 or a refusal): it is no longer pending, and
    /// how long the answer took teaches `auto` its limit.
    pub fn answered(&self) {
        if !self.pending.replace(false) {
            return;
        }
        let pending = self.slot.pending.get().saturating_sub(1);
        self.slot.pending.set(pending);
        self.status.pending_ended();
        let latency = self.since.elapsed();
        self.slot
            .adjust(|limiter| limiter.answered(latency, pending));
    }

    /// What was sent is not an upgrade (a plain request under `--http-path`): it is not
    /// counted among the upstream's pending upgrades, and its answer teaches `auto` nothing
    /// (a long poll is answered when the app has something to say, 25 s later).
    pub fn not_an_upgrade(&self) {
        if self.pending.replace(false) {
            let pending = self.slot.pending.get().saturating_sub(1);
            self.slot.pending.set(pending);
            self.status.pending_ended();
        }
    }

    /// Whether the upgrade is still unanswered.
    pub fn is_pending(&self) -> bool {
        self.pending.get()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.pending.replace(false) {
            self.slot
                .pending
                .set(self.slot.pending.get().saturating_sub(1));
            self.status.pending_ended();
        }
        self.slot.live.set(self.slot.live.get().saturating_sub(1));
        self.status.connection_ended();
    }
}

/// What [`Upstreams::pick`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Try this one.
    Upstream(usize, SocketAddr),
    /// Every upstream that is up is at its connection limit.
    Full,
    /// Every upstream that could take the client has its most upgrades pending
    /// (`--upstream-max-pending`): the client waits for one to answer.
    Busy,
    /// Every upstream is down (failed its health checks) or draining.
    NoneUp,
    /// There are no upstreams.
    None,
}

impl Upstreams {
    /// A pool over `upstreams`, starting at `start` (reactors start at different ones so
    /// that their first connections spread).
    pub fn new(upstreams: &[Upstream], health: &HealthBoard, start: usize) -> Self {
        Upstreams {
            members: upstreams
                .iter()
                .map(|u| Member {
                    addr: u.addr,
                    weight: u.weight.max(1),
                    drain: u.drain,
                    current: 0,
                    status: health.status(u.addr),
                    slot: Rc::new(Slot::new(health.status(u.addr))),
                })
                .collect(),
            next: if upstreams.is_empty() {
                0
            } else {
                start % upstreams.len()
            },
        }
    }

    /// The pool after a reload (or a lookup) changed the list to `upstreams` at `now`: an
    /// upstream that stays keeps its count of live connections and its backoff, a new one
    /// starts at zero; one that was removed, or is now marked `drain`, is retired: its
    /// relays are to be closed over the drain window. The flag says whether any relay on
    /// this reactor has to be told (settle every connection then).
    pub fn reconfigured(
        &self,
        upstreams: &[Upstream],
        health: &HealthBoard,
        now: u64,
    ) -> (Self, bool) {
        let mut pool = Upstreams::new(upstreams, health, self.next);
        for member in &mut pool.members {
            if let Some(old) = self.members.iter().find(|m| m.addr == member.addr) {
                member.slot = Rc::clone(&old.slot);
                member.current = old.current;
            }
        }
        let mut retired_with_relays = false;
        for old in &self.members {
            let kept = pool
                .members
                .iter()
                .find(|m| m.addr == old.addr)
                .filter(|m| !m.drain);
            let slot = &old.slot;
            match kept {
                Some(_) => slot.retired_at.set(NOT_RETIRED),
                None if slot.retired_at.get() == NOT_RETIRED => {
                    slot.retired_at.set(now);
                    retired_with_relays |= slot.live.get() > 0;
                }
                None => {}
            }
        }
        (pool, retired_with_relays)
    }

    /// How many upstreams there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Live connections to upstream `index` from this reactor.
    pub fn live(&self, index: usize) -> u32 {
        self.members.get(index).map_or(0, |m| m.slot.live.get())
    }

    /// Counts a connection to upstream `index` until the lease is dropped.
    pub fn lease(&self, index: usize) -> Option<Lease> {
        let member = self.members.get(index)?;
        member
            .slot
            .live
            .set(member.slot.live.get().saturating_add(1));
        member.status.connection_started();
        member
            .slot
            .pending
            .set(member.slot.pending.get().saturating_add(1));
        member.status.pending_started();
        Some(Lease {
            slot: Rc::clone(&member.slot),
            status: Arc::clone(&member.status),
            addr: member.addr,
            pending: Cell::new(true),
            since: std::time::Instant::now(),
        })
    }

    /// The next upstream to try, by `balance` (and the client's hashed `key`), among those
    /// up, not draining, under `cap` live connections (0: no cap) and not recently refused;
    /// when every one of those was refused, the next in turn anyway (one may be back).
    pub fn pick(&mut self, now: u64, balance: Balance, cap: u32, key: Option<u64>) -> Pick {
        let count = self.members.len();
        if count == 0 {
            return Pick::None;
        }
        let start = self.next;
        let members = &self.members;
        let in_turn = (0..count).map(|i| (start + i) % count);
        let up = in_turn.filter(|&i| !members[i].drain && members[i].status.is_up());
        let open: Vec<usize> = up
            .clone()
            .filter(|&i| cap == 0 || members[i].slot.live.get() < cap)
            .collect();
        if open.is_empty() {
            return match up.count() {
                0 => Pick::NoneUp,
                _ => Pick::Full,
            };
        }
        let hashed = balance == Balance::Hash && key.is_some();
        // A hashed client waits for its own upstream; any other takes one with room.
        let ready: Vec<usize> = match hashed {
            true => open.clone(),
            false => open
                .iter()
                .copied()
                .filter(|&i| members[i].slot.has_room())
                .collect(),
        };
        let Some(&first_open) = ready.first() else {
            return Pick::Busy;
        };
        let fresh = ready
            .iter()
            .copied()
            .filter(|&i| members[i].slot.down_until.get() <= now);
        let index = match (balance, key) {
            (Balance::Hash, Some(key)) => fresh.max_by(|&a, &b| {
                let score = |i: usize| {
                    super::affinity::weighted_score(key, members[i].addr, members[i].weight)
                };
                score(a).total_cmp(&score(b))
            }),
            // Fewest connections for the weight: live_a / w_a < live_b / w_b, multiplied
            // out; `min_by` keeps the first of equals, so ties go in turn.
            (Balance::LeastConnections, _) => fresh.min_by(|&a, &b| {
                let load = |i: usize, j: usize| {
                    u64::from(members[i].slot.live.get()) * u64::from(members[j].weight)
                };
                load(a, b).cmp(&load(b, a))
            }),
            (Balance::RoundRobin | Balance::Hash, _) => self.weighted_turn(fresh.collect()),
        }
        .unwrap_or(first_open);
        if !self.members[index].slot.has_room() {
            return Pick::Busy;
        }
        self.next = (index + 1) % count;
        Pick::Upstream(index, self.members[index].addr)
    }

    /// `--sticky-cookie`: the upstream whose id is `id`, if it can take the client now: up,
    /// not draining, under `cap` live connections and not recently refused. With no room for
    /// one more pending upgrade it is [`Pick::Busy`] (the client waits for its own). `None`:
    /// no such upstream, or it cannot serve; the client is balanced as one without a cookie
    /// (and gets a new cookie).
    pub fn pick_pinned(&mut self, id: u64, now: u64, cap: u32) -> Option<Pick> {
        let index = self
            .members
            .iter()
            .position(|m| super::sticky::upstream_id(m.addr) == id)?;
        let member = &self.members[index];
        let usable = !member.drain
            && member.status.is_up()
            && (cap == 0 || member.slot.live.get() < cap)
            && member.slot.down_until.get() <= now;
        if !usable {
            return None;
        }
        if !member.slot.has_room() {
            return Some(Pick::Busy);
        }
        Some(Pick::Upstream(index, member.addr))
    }

    /// Whether some upstream up, not draining and under its connection cap has room for
    /// one more pending upgrade: a client waiting for one can be sent on.
    pub fn has_room(&self, cap: u32) -> bool {
        self.members.iter().any(|m| {
            !m.drain
                && m.status.is_up()
                && (cap == 0 || m.slot.live.get() < cap)
                && m.slot.has_room()
        })
    }

    /// Applies `--upstream-max-pending` (this reactor's share among `reactors`) to every
    /// upstream.
    pub fn set_pending_limit(&self, kind: PendingLimit, reactors: usize) {
        for member in &self.members {
            member
                .slot
                .adjust(|limiter| limiter.reconfigure(kind, reactors));
        }
    }

    /// Upgrades pending at upstream `index` from this reactor, and its limit.
    pub fn pending(&self, index: usize) -> (u32, u32) {
        self.members.get(index).map_or((0, 0), |m| {
            (m.slot.pending.get(), m.slot.limiter.borrow().limit())
        })
    }

    /// Smooth weighted round-robin over `candidates` (in turn order): each gains its weight,
    /// the highest is chosen and pays the sum. With equal weights it is plain round-robin.
    fn weighted_turn(&mut self, candidates: Vec<usize>) -> Option<usize> {
        let total: i64 = candidates
            .iter()
            .map(|&i| i64::from(self.members[i].weight))
            .sum();
        let mut best: Option<(usize, i64)> = None;
        for &i in &candidates {
            let member = &mut self.members[i];
            member.current += i64::from(member.weight);
            if best.is_none_or(|(_, current)| member.current > current) {
                best = Some((i, member.current));
            }
        }
        let (chosen, _) = best?;
        self.members[chosen].current -= total;
        Some(chosen)
    }

    /// The upstream a client's connection went to failed with `kind` (refused, timed out
    /// or answered wrongly): counted against its health (`fall`: with active checks, the
    /// failures in a row that take it out); a refusal also passes it over on this reactor
    /// for [`REFUSED_BACKOFF_MS`]. Logged once per backoff, not once per client.
    pub fn failed(
        lease: &Lease,
        kind: Failure,
        now: u64,
        fall: Option<u32>,
        error: &dyn std::fmt::Display,
    ) {
        let slot = &lease.slot;
        if kind == Failure::Refused {
            if slot.down_until.get() <= now {
                tracing::warn!(
                    upstream = %lease.addr,
                    %error,
                    "upstream refused a connection; passing it over for {REFUSED_BACKOFF_MS} ms"
                );
            }
            slot.down_until.set(now + REFUSED_BACKOFF_MS);
        }
        if kind == Failure::Timeout && lease.is_pending() {
            // Too slow to answer: fewer at once.
            slot.adjust(Limiter::failed);
        }
        if lease.status.failed(kind, fall) {
            tracing::warn!(upstream = %lease.addr, kind = kind.label(), "upstream out of rotation");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RR: Balance = Balance::RoundRobin;

    fn list(specs: &[&str]) -> Vec<Upstream> {
        specs
            .iter()
            .map(|spec| {
                let target = super::super::UpstreamTarget::parse(spec).unwrap();
                Upstream {
                    weight: target.weight,
                    drain: target.drain,
                    ..Upstream::at(target.literal().unwrap())
                }
            })
            .collect()
    }

    fn pool() -> Upstreams {
        Upstreams::new(
            &list(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]),
            &HealthBoard::default(),
            0,
        )
    }

    fn index(pick: Pick) -> usize {
        match pick {
            Pick::Upstream(index, _) => index,
            other => panic!("{other:?}"),
        }
    }

    fn refuse(pool: &Upstreams, i: usize, now: u64) {
        let lease = pool.lease(i).unwrap();
        Upstreams::failed(&lease, Failure::Refused, now, None, &"refused");
    }

    #[test]
    fn round_robin() {
        let mut pool = pool();
        let picks: Vec<usize> = (0..4).map(|_| index(pool.pick(0, RR, 0, None))).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
    }

    #[test]
    fn weighted_round_robin_interleaves_by_weight() {
        let mut pool = Upstreams::new(
            &list(&["127.0.0.1:1 weight=3", "127.0.0.1:2"]),
            &HealthBoard::default(),
            0,
        );
        let picks: Vec<usize> = (0..8).map(|_| index(pool.pick(0, RR, 0, None))).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6, "{picks:?}");
        assert!(
            picks.windows(4).all(|w| w.contains(&1)),
            "smooth: {picks:?}"
        );
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
    fn least_connections_weighs_the_count() {
        let mut pool = Upstreams::new(
            &list(&["127.0.0.1:1 weight=2", "127.0.0.1:2"]),
            &HealthBoard::default(),
            0,
        );
        let _held: Vec<Lease> = [0, 0, 1].iter().filter_map(|&i| pool.lease(i)).collect();
        // 2 of weight 2 against 1 of weight 1: equal, the first in turn.
        assert_eq!(index(pool.pick(0, Balance::LeastConnections, 0, None)), 0);
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
    fn down_and_draining_upstreams_get_no_client() {
        let upstreams = list(&["127.0.0.1:1", "127.0.0.1:2 drain", "127.0.0.1:3"]);
        let health = HealthBoard::default();
        let mut pool = Upstreams::new(&upstreams, &health, 0);
        for _ in 0..3 {
            health.status(upstreams[2].addr).check_failed(1, 3);
        }
        let picks: Vec<usize> = (0..3).map(|_| index(pool.pick(0, RR, 0, None))).collect();
        assert_eq!(picks, [0, 0, 0]);
        for _ in 0..3 {
            health.status(upstreams[0].addr).check_failed(1, 3);
        }
        assert_eq!(pool.pick(0, RR, 0, None), Pick::NoneUp);
    }

    #[test]
    fn a_reload_keeps_the_counts_of_upstreams_that_stay_and_retires_the_others() {
        let pool = pool();
        let held = pool.lease(1);
        let removed = pool.lease(0).unwrap();
        let (mut reloaded, retired) = pool.reconfigured(
            &list(&["127.0.0.1:2", "127.0.0.1:9"]),
            &HealthBoard::default(),
            50,
        );
        assert!(retired, "a removed upstream had a relay");
        assert_eq!(removed.retired_at(), Some(50));
        assert_eq!(held.as_ref().unwrap().retired_at(), None);
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
        let (_, retired) =
            reloaded.reconfigured(&list(&["127.0.0.1:2 drain"]), &HealthBoard::default(), 60);
        assert!(!retired, "nothing relayed on what was retired");
    }

    #[test]
    fn a_refuser_is_skipped_until_its_backoff_ends() {
        let mut pool = pool();
        refuse(&pool, 1, 100);
        let picks: Vec<usize> = (0..3).map(|_| index(pool.pick(200, RR, 0, None))).collect();
        assert_eq!(picks, [0, 2, 0]);
        let back: Vec<usize> = (0..3)
            .map(|_| index(pool.pick(100 + REFUSED_BACKOFF_MS, RR, 0, None)))
            .collect();
        assert!(
            back.contains(&1),
            "back in turn after its backoff: {back:?}"
        );
    }

    #[test]
    fn when_all_refused_the_next_is_tried_anyway() {
        let mut pool = pool();
        for i in 0..3 {
            refuse(&pool, i, 0);
        }
        assert_eq!(index(pool.pick(1, RR, 0, None)), 0);
        assert_eq!(index(pool.pick(1, RR, 0, None)), 1);
    }
}
