//! A connection's life above [`Conn`], decided once for both backends.
//!
//! [`Conn`] decides the protocol: what to answer, what a frame means, when a deadline is.
//! Around it, a reactor decides whether a new connection is admitted or refused, counts the
//! handshakes in progress, tells open connections when the drain closes them, waits for
//! output to be flushed before a close or a half-close and gives up on it at the flush
//! deadline, and accounts for every connection when it closes. Those decisions live here,
//! in the [`Driver`] (one per reactor) and the [`Session`] (one per connection); the epoll
//! and io_uring backends only carry them out with their own syscalls or ring operations,
//! as quinn drives quinn-proto.
//!
//! A backend's part, per event:
//! 1. a new socket: [`Driver::accepted`] gives the connection and what to do with it;
//! 2. bytes or an end from the peer: [`Conn`]'s calls, then [`Session::after`] with the
//!    [`Next`] and whether output still waits;
//! 3. after every event on a connection: [`Driver::settle`] (accounting, drain, a deadline
//!    that has passed), then [`Driver::arm`] for the one deadline to arm;
//! 4. each turn, every connection [`Driver::next_expired`] hands out: settled as in 3;
//! 5. the socket closed: [`Driver::closed`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::conn::{Conn, ConnConfig, Ctx, Next};
use crate::handshake::Rejection;
use crate::http2::{self, Http2};
use crate::policy::{
    AcceptPause, Admission, AfterBurst, KeyExchange, KeyExchangeJudge, Limits, Live, Shutdown,
    ShutdownState,
};
use crate::proxy::health::Failure;
use crate::proxy::{Link, Peers, Pick, Upstreams};
use crate::stats::Counters;
use crate::sys;
use crate::timer::TimerWheel;
use crate::transport::{Hello, Outbox, TlsEnd, Transport};

mod connection;
mod fleet;
mod inbound;
mod queue;
mod streams;
pub mod turn;
use crate::proxy::stream_sockets::StreamSockets;
use connection::NO_SEND_DEADLINE;
pub use connection::{Action, AfterFlush, Backlog, Event, Parts, Session, UpstreamFailure};
use fleet::Fleet;
use inbound::{HeaderRead, InboundHeaders};
use queue::{Patience, WaitQueue, Waiting};
pub use streams::Origin;
use streams::WaitsAs;
pub use turn::Backend;

/// One reactor's decisions about its connections: admission, accounting, drain, deadlines,
/// and in proxy mode which upstream to try and what its failure means.
pub struct Driver {
    /// Settings every connection shares.
    config: Arc<ConnConfig>,
    /// This reactor's counters.
    stats: Arc<Counters>,
    admission: Admission,
    accept_pause: AcceptPause,
    draining: bool,
    /// Proxy mode: this reactor's view of the upstreams and its health checks.
    fleet: Fleet,
    /// Proxy mode with HTTP/2 (`--h2`, `--h2c`): the streams' upstream sockets.
    stream_sockets: Option<StreamSockets>,
    /// Each connection's one armed deadline, by its key.
    wheel: TimerWheel,
    /// The process's shutdown signal.
    shutdown: Arc<Shutdown>,
    /// The zero of this reactor's clock.
    epoch: std::time::Instant,
    /// Loop turns ended, and the turn whose expired deadlines were taken from the wheel.
    turn: u64,
    expired_turn: u64,
    /// Connections whose deadline passed, not yet handed out.
    fired: Vec<usize>,
    /// TLS settings for connections accepted on TLS listeners (each takes the current ones).
    tls: Option<crate::tls::SharedTlsConfig>,
    /// Plaintext decrypted from one read, before the connection takes it.
    plaintext: Vec<u8>,
    /// `--accept-proxy-protocol`: the headers being read and the clients they named.
    inbound: InboundHeaders,
    /// Settings a reload publishes, the generation in use, and how many reactors share
    /// the limits.
    live: Option<(Arc<Live>, u64, usize)>,
    /// A reload retired an upstream with relays here: every connection is to be settled,
    /// so that those relays get their close times.
    resettle: bool,
    /// Descriptors or memory ran out: the next turn settles every connection, and those
    /// lingering after their answer with nothing left to send are closed at once
    /// (`reclaiming`), so that the clients queued in the kernel get their descriptors
    /// instead of waiting out the lingers one by one (nginx reuses lingering connections
    /// the same way when it runs short).
    reclaim_wanted: bool,
    reclaiming: bool,
    /// Proxy mode: clients waiting for an upstream with room for their upgrade.
    waiting: WaitQueue,
    /// The waiting client [`Driver::next_waiting`] handed out last, while it is being sent
    /// on: if its own upstream still has no room (a hashed or sticky client, while others
    /// have room), it goes to `bounced`, not back into `waiting`.
    handed_out: Option<Waiting>,
    /// Waiting clients handed out this turn that had to wait again: back in `waiting` once
    /// the turn's hand-outs are over, so that one client cannot be handed out again and
    /// again in one turn (the turn would never end) and the others still get their chance.
    bounced: Vec<Waiting>,
    /// How many connections wait so now (the queue may hold stale entries besides).
    queued_now: usize,
    /// Proxy mode over HTTP/2: the connection whose waiting stream [`Driver::next_waiting`]
    /// handed out last, to be settled (its streams then take the room there is).
    stream_handed_out: Option<usize>,
    /// The connection being settled for it: a stream of it that must wait again is kept
    /// aside (`bounced`) until the turn's hand-outs are over.
    stream_handed_out_now: Option<usize>,
    /// How long waiting clients were seen to bear before they left.
    patience: Patience,
    /// Whether a TLS client is still worth its key exchange.
    key_exchanges: KeyExchangeJudge,
    /// TLS clients whose ClientHello waits for a key exchange in a later turn.
    hellos: WaitQueue,
    /// Key exchanges granted this turn.
    key_exchanges_this_turn: usize,
    /// The queued ClientHello [`Driver::next_key_exchange`] gave back last.
    granted: Option<usize>,
    /// ClientHellos queued and still waiting (the queue may hold stale entries besides):
    /// while there are, the reactor does not sleep.
    hellos_waiting: usize,
    /// When a burst of handshakes is over, to give their memory back.
    after_burst: AfterBurst,
}

/// Key exchanges a turn starts at most. A turn finishes the handshakes it started before
/// it starts more: their clients' next flights are read as the next turn's events, and the
/// ClientHellos past this many wait in a queue ([`Driver::next_key_exchange`]), newest
/// first under overload. Without it a storm's ClientHellos, all ready at once, would each
/// get their key exchange before any client's Finished is read (an event loop serves its
/// ready list in order), and no handshake would end until every one had begun: past the
/// clients' patience, all of them. 16 exchanges are about 2 ms of a core.
pub const KEY_EXCHANGES_PER_TURN: usize = 16;

/// What to do with a TLS connection whose ClientHello is in ([`Driver::before_key_exchange`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloStep {
    /// Read it: its key exchange is spent now.
    Read,
    /// Leave it: it waits for a later turn, and the backend gives it back through
    /// [`Driver::next_key_exchange`] (uring: hold the bytes already received).
    Wait,
    /// Shed: carry this out (a reset, nothing answered).
    Shed(Next),
}

/// What a reactor does at the start of a loop turn, after its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Go on serving (or draining).
    Serve,
    /// A drain begins (accepting has stopped): take what the listeners hold, close them,
    /// and settle every connection so that it gets its close time.
    StartDrain,
    /// Exit now (an abort), with whatever is open.
    Exit,
    /// An upstream was retired: settle every connection (its relays get their close
    /// times), and go on serving.
    Resettle,
    /// Descriptors or memory ran out: settle the connections [`Driver::reclaimable`] lists
    /// (those lingering are closed), and go on serving.
    Reclaim,
}

impl Driver {
    /// A reactor's driver, with its share of the limits, a seed for its jitter, and the
    /// board of the upstreams' health it shares with the other reactors.
    pub fn new(
        config: Arc<ConnConfig>,
        stats: Arc<Counters>,
        limits: Limits,
        seed: u64,
        shutdown: Arc<Shutdown>,
        tls: Option<crate::tls::SharedTlsConfig>,
        health: Arc<crate::proxy::health::HealthBoard>,
    ) -> Self {
        let fleet = Fleet::new(&config.proxy, health, seed);
        let stream_sockets = streams::sockets_for(&config, fleet.checks_fd());
        Driver {
            config,
            stats,
            admission: Admission::new(limits, seed),
            accept_pause: AcceptPause::default(),
            draining: false,
            fleet,
            stream_sockets,
            wheel: TimerWheel::new(0),
            shutdown,
            epoch: std::time::Instant::now(),
            turn: 1,
            expired_turn: 0,
            fired: Vec::new(),
            tls,
            plaintext: Vec::new(),
            inbound: InboundHeaders::default(),
            live: None,
            resettle: false,
            reclaim_wanted: false,
            reclaiming: false,
            waiting: WaitQueue::default(),
            handed_out: None,
            bounced: Vec::new(),
            queued_now: 0,
            stream_handed_out: None,
            stream_handed_out_now: None,
            patience: Patience::default(),
            key_exchanges: KeyExchangeJudge::default(),
            hellos: WaitQueue::default(),
            key_exchanges_this_turn: 0,
            granted: None,
            hellos_waiting: 0,
            after_burst: AfterBurst::default(),
        }
    }

    /// Whether upgraded connections are relayed to upstreams (proxy mode).
    pub fn relays(&self) -> bool {
        self.config.after == crate::conn::AfterUpgrade::Proxy
    }

    /// Follows the reloads published on `live`, taking its share of the limits among
    /// `reactors`, as reactor `index` of them.
    pub fn with_live(mut self, live: Arc<Live>, reactors: usize, index: usize) -> Self {
        let generation = live.newer_than(u64::MAX).map_or(0, |(g, _)| g);
        self.live = Some((live, generation, reactors));
        self.fleet.place(index, reactors, &self.config.proxy);
        self
    }

    /// Takes a newer generation of the settings, if one was published: connections accepted
    /// from now on follow it (a connection in its handshake answers by the new rules).
    fn follow_reload(&mut self, now: u64) {
        let Some((live, seen, reactors)) = self.live.as_mut() else {
            return;
        };
        let Some((generation, settings)) = live.newer_than(*seen) else {
            return;
        };
        *seen = generation;
        let reactors = *reactors;
        let (new, old) = (&settings.conn.proxy, &self.config.proxy);
        self.resettle |= self.fleet.reconfigure(new, old, now);
        self.config = Arc::clone(&settings.conn);
        self.admission.set_limits(settings.limits.share(reactors));
    }

    /// Milliseconds since the reactor started: the clock of every deadline.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// What to do at the start of a loop turn, from the process's shutdown signal; a drain
    /// asked for begins here.
    pub fn turn(&mut self, now: u64) -> Turn {
        self.follow_reload(now);
        self.fleet.run_checks(&self.config.proxy, now);
        self.reclaiming = std::mem::take(&mut self.reclaim_wanted);
        match self.shutdown.state() {
            ShutdownState::Aborting => Turn::Exit,
            ShutdownState::Draining if !self.draining => {
                self.start_draining(now);
                Turn::StartDrain
            }
            _ if std::mem::take(&mut self.resettle) => Turn::Resettle,
            _ if self.reclaiming => Turn::Reclaim,
            _ => Turn::Serve,
        }
    }

    /// The connections a [`Turn::Reclaim`] settles: every one whose deadline falls within
    /// the linger, which includes every lingering one, found on the wheel rather than by
    /// visiting every connection (a reactor may hold millions).
    pub fn reclaimable(&self, now: u64) -> Vec<usize> {
        let mut keys = Vec::new();
        let until = now.saturating_add(self.config.linger_ms);
        self.wheel.due_by(until, |key| keys.push(key as usize));
        keys
    }

    /// Proxy mode: the next upstream for a client that has tried `attempts` (counted here);
    /// [`Pick::None`] once every upstream was tried for it (its answer is then
    /// [`Conn::on_upstream_failed`], 502), [`Pick::Full`] when every upstream holds its share
    /// of `--upstream-max-connections`.
    pub fn next_upstream(
        &mut self,
        attempts: &mut usize,
        affinity: (Option<u64>, Option<u64>),
        now: u64,
    ) -> Pick {
        self.fleet.next(&self.config.proxy, attempts, affinity, now)
    }

    /// Proxy mode: opens a connection for this client, which has tried `attempts` upstreams,
    /// to the next upstream with `open` (the backend's socket and connect). An upstream that
    /// cannot be opened is passed over and the next one tried; `Err` is the client's answer:
    /// a 502 once every upstream was tried, a 503 when every upstream is at its connection
    /// limit or the edge itself has no descriptor, memory or port left.
    ///
    /// When every upstream that could take the client has its most upgrades pending
    /// (`--upstream-max-pending`), the client waits at the edge (`Err(Next::Continue)`,
    /// nothing to do) until [`Driver::next_waiting`] hands it out again, or its wait runs
    /// out (503).
    pub fn open_upstream<S>(
        &mut self,
        (key, parts): (usize, &mut Parts),
        tried: (usize, Option<IpAddr>),
        now: u64,
        out: &mut Vec<u8>,
        open: impl FnMut(SocketAddr, Option<IpAddr>) -> io::Result<S>,
    ) -> Result<(Link, S), Next> {
        let tls = parts.transport.is_tls();
        let waits = WaitsAs::Connection(key);
        self.open_for((&mut parts.conn, waits, tls), tried, now, out, open)
    }

    /// [`Driver::open_upstream`] for `conn`, a client connection's or an HTTP/2 stream's
    /// (`waits`), whose client spoke TLS if `tls`.
    fn open_for<S>(
        &mut self,
        (conn, waits, tls): (&mut Conn, WaitsAs, bool),
        (mut attempts, client): (usize, Option<IpAddr>),
        now: u64,
        out: &mut Vec<u8>,
        mut open: impl FnMut(SocketAddr, Option<IpAddr>) -> io::Result<S>,
    ) -> Result<(Link, S), Next> {
        self.unqueue(conn, now);
        // The client's key, for hash balancing: the same upstream on every attempt's order.
        let affinity = match (&self.config.proxy.hash_key, conn.request_head()) {
            (Some(hash_key), Some(head)) => hash_key.hash_of(head, client),
            _ => None,
        };
        // The upstream the client's sticky cookie names, if it has one (owned values: no
        // borrow of the configuration held across the loop).
        let sticky = self.config.proxy.sticky_cookie.is_some();
        let pin = match (&self.config.proxy.sticky_cookie, conn.request_head()) {
            (Some(name), Some(head)) => crate::proxy::sticky::requested_id(head, name),
            _ => None,
        };
        loop {
            let (index, addr) = match self.next_upstream(&mut attempts, (affinity, pin), now) {
                Pick::Upstream(index, addr) => (index, addr),
                Pick::None => return Err(conn.on_upstream_failed(&mut self.cx(now, out))),
                Pick::Full => {
                    let refusal = self.admission.upstreams_full();
                    return Err(conn.refuse(refusal, &mut self.cx(now, out)));
                }
                Pick::NoneUp => {
                    let refusal = self.admission.no_upstream_up();
                    return Err(conn.refuse(refusal, &mut self.cx(now, out)));
                }
                Pick::Busy => {
                    return Err(match waits {
                        WaitsAs::Connection(key) => self.wait_for_room(key, conn, now, out),
                        WaitsAs::Stream(owner) => self.stream_waits(owner, conn, now, out),
                    })
                }
            };
            if sticky {
                // A client not already on this upstream learns it with the answer.
                let id = crate::proxy::sticky::upstream_id(addr);
                conn.set_sticky_cookie((pin != Some(id)).then_some((id, tls)));
            }
            if let WaitsAs::Connection(key) = waits {
                self.sent_on(key, now);
            }
            let lease = self.fleet.lease(index);
            if conn.is_http_request() {
                lease.as_ref().inspect(|lease| lease.not_an_upgrade());
            }
            let link = Link::with_lease(index, attempts, lease);
            let source = self.fleet.source_for(&self.config.proxy, addr);
            let error = match open(addr, source) {
                Ok(socket) => return Ok((link, socket)),
                Err(error) => error,
            };
            if let UpstreamFailure::Answer(next) =
                self.failed_to_open(conn, &link, &error, now, out)
            {
                return Err(next);
            }
        }
    }

    /// Whether some upstream has room for one more upgrade from this reactor.
    pub(super) fn upstream_room(&self) -> bool {
        let proxy = &self.config.proxy;
        let cap = (proxy.max_connections_per_upstream).div_ceil(self.fleet.reactors() as u32);
        self.fleet.has_room(cap)
    }

    /// Proxy mode, before the forwarded request is written: when no upstream has room, the
    /// client waits (or is refused) at once, and nothing is written for it
    /// ([`Driver::open_upstream`] would find the same, later).
    pub fn hold_if_busy(
        &mut self,
        (key, parts): (usize, &mut Parts),
        now: u64,
        out: &mut Vec<u8>,
    ) -> Option<Next> {
        if self.upstream_room() {
            return None;
        }
        let conn = &mut parts.conn;
        self.unqueue(conn, now);
        Some(self.wait_for_room(key, conn, now, out))
    }

    /// No upstream has room for the client's upgrade: it waits at the edge for
    /// `--upstream-queue-ms`, or is refused at once when there is no wait.
    fn wait_for_room(&mut self, key: usize, conn: &mut Conn, now: u64, out: &mut Vec<u8>) -> Next {
        let mut until = now.saturating_add(self.config.proxy.queue_ms);
        if let (Some(bound), Some(accepted)) = (self.patience.bound(now), conn.accepted_at()) {
            // Refused, with a time to come back, before it would give up on its own.
            until = until.min(accepted.saturating_add(bound));
        }
        if let Some(bounced) = self.handed_out.take().filter(|w| w.key == key) {
            // Handed out this turn and still no room for it: the same wait, kept aside
            // until the turn's hand-outs are over.
            conn.queue(bounced.until);
            self.queued_now += 1;
            self.bounced.push(bounced);
            return Next::Continue;
        }
        if until <= now || self.draining {
            return self.shed(conn, now, out);
        }
        conn.queue(until);
        self.waiting.push(key, now, until);
        self.queued_now += 1;
        Counters::bump(&self.stats.upstream_queued);
        Next::Continue
    }

    /// The client leaves the queue (it goes on its way, is refused, or left).
    fn unqueue(&mut self, conn: &mut Conn, now: u64) {
        if conn.is_queued() {
            conn.unqueue(now, &self.config);
            self.queued_now = self.queued_now.saturating_sub(1);
        }
    }

    /// A client the upstreams have no room for is refused: 503, with a Retry-After
    /// spreading the refused clients' returns.
    pub(super) fn shed(&mut self, conn: &mut Conn, now: u64, out: &mut Vec<u8>) -> Next {
        Counters::bump(&self.stats.upstream_shed);
        let refusal = self.admission.upstreams_busy();
        conn.refuse(refusal, &mut self.cx(now, out))
    }

    /// Proxy mode: the next waiting client to send on, if an upstream has room for it and
    /// it still waits (`parts` gives [`Parts::waits_until`] of the backend's connection
    /// `key`); the backend then calls [`Driver::open_upstream`] for it.
    pub fn next_waiting(
        &mut self,
        now: u64,
        parts: impl Fn(usize) -> Option<u64>,
    ) -> Option<usize> {
        self.handed_out = None;
        self.stream_handed_out_now = None;
        if self.waiting.is_empty() && self.bounced.is_empty() {
            return None;
        }
        while self.upstream_room() {
            let Some(waiting) = self.waiting.pop(now) else {
                break;
            };
            if let Some(owner) = streams::waiting_stream_of(waiting.key) {
                // Its connection is settled next (`Driver::take_stream_handed_out`), and
                // the hand-outs go on after.
                self.stream_handed_out = Some(owner);
                return None;
            }
            if parts(waiting.key) == Some(waiting.until) {
                self.handed_out = Some(waiting);
                return Some(waiting.key);
            }
        }
        for bounced in self.bounced.drain(..) {
            self.waiting.restore(bounced);
        }
        None
    }

    /// Proxy mode: a waiting client handed out by [`Driver::next_waiting`] is on its way
    /// (its upstream had room): what it waited is counted.
    fn sent_on(&mut self, key: usize, now: u64) {
        if let Some(waiting) = self.handed_out.take().filter(|w| w.key == key) {
            Counters::add(
                &self.stats.upstream_queue_wait_ms,
                now.saturating_sub(waiting.since),
            );
        }
    }

    /// A connection ends (its client left, or it is closed) while it waits at the edge:
    /// counted as a client that left while waiting, for whom nothing was forwarded, and
    /// what it bore teaches the queue the clients' patience.
    fn leave_queue(&mut self, conn: &mut Conn, now: u64) {
        if !conn.is_queued() {
            return;
        }
        self.queued_now = self.queued_now.saturating_sub(1);
        Counters::bump(&self.stats.upstream_left_waiting);
        if let Some(accepted) = conn.accepted_at() {
            self.patience.left_after(now.saturating_sub(accepted), now);
        }
    }

    /// A link to upstream `index`, counted as [`Driver::open_upstream`] counts one.
    #[cfg(test)]
    pub(crate) fn link_to(&self, index: usize) -> Link {
        Link::with_lease(index, 1, self.fleet.lease(index))
    }

    /// Proxy mode: opening a socket to the upstream of `link`, or connecting it, failed
    /// with `error`. Running out of a local resource is the edge's overload, not the
    /// upstream's fault (and not counted against it); anything else passes the upstream
    /// over and counts against its health.
    pub fn upstream_failed(
        &mut self,
        parts: &mut Parts,
        link: &Link,
        error: &io::Error,
        now: u64,
        out: &mut Vec<u8>,
    ) -> UpstreamFailure {
        self.failed_to_open(&mut parts.conn, link, error, now, out)
    }

    fn failed_to_open(
        &mut self,
        conn: &mut Conn,
        link: &Link,
        error: &io::Error,
        now: u64,
        out: &mut Vec<u8>,
    ) -> UpstreamFailure {
        if error.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
            // Out of local ports toward this upstream: accepting more clients is not what
            // ran out, so it goes on; this client comes back later.
            Counters::bump(&self.stats.upstream_ports_exhausted);
            if let Some(addr) = link.lease().map(|lease| lease.addr()) {
                self.fleet.ports_exhausted(addr, now);
            }
            let refusal = self.admission.overloaded();
            return UpstreamFailure::Answer(conn.refuse(refusal, &mut self.cx(now, out)));
        }
        if sys::is_local_exhaustion(error) {
            return UpstreamFailure::Answer(self.exhausted(conn, error, now, out));
        }
        Counters::bump(&self.stats.upstream_connect_failures);
        if let Some(lease) = link.lease() {
            Upstreams::failed(
                lease,
                Failure::Refused,
                now,
                self.config.proxy.fall(),
                error,
            );
        }
        UpstreamFailure::TryNext
    }

    /// Proxy mode: the edge could not take on an upstream socket it opened (an epoll
    /// registration failed). The upstream is not at fault: running out of memory or of
    /// epoll watches is the edge's overload (503, accepting paused); any other error is
    /// this client's 502, logged.
    pub fn upstream_unusable(
        &mut self,
        parts: &mut Parts,
        error: &io::Error,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Next {
        self.unusable_for(&mut parts.conn, error, now, out)
    }

    fn unusable_for(
        &mut self,
        conn: &mut Conn,
        error: &io::Error,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Next {
        if sys::is_local_exhaustion(error) || error.raw_os_error() == Some(libc::ENOSPC) {
            return self.exhausted(conn, error, now, out);
        }
        tracing::warn!(%error, "cannot watch an upstream socket");
        conn.on_upstream_failed(&mut self.cx(now, out))
    }

    /// Carries `event` to the connection; its output is appended to `out`. Carry out what
    /// it returns.
    pub fn handle(
        &mut self,
        parts: &mut Parts,
        event: Event<'_>,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Next {
        if let (Some(h2), Event::PeerClosed) = (parts.h2.as_deref_mut(), event) {
            let mut none = http2::NoSockets;
            let (mut cx, io) = streams::h2_call(
                (&self.config, &self.stats),
                (&mut self.stream_sockets, &mut none),
                (now, out),
            );
            return h2.on_eof(&mut cx, io);
        }
        let conn = &mut parts.conn;
        if event == Event::PeerClosed {
            self.leave_queue(conn, now);
            count_wasted_key_exchange(conn, &parts.transport, &self.stats);
        }
        let mut cx = self.cx(now, out);
        match event {
            Event::PeerClosed => conn.on_eof(&mut cx),
            Event::UpstreamConnected => {
                conn.on_upstream_connected(&cx);
                Next::Continue
            }
            Event::UpstreamData(bytes) => conn.on_upstream_data(bytes, &mut cx),
            Event::UpstreamClosed => conn.on_upstream_eof(&mut cx),
            Event::UpstreamFailed => conn.on_upstream_failed(&mut cx),
            Event::Relayed => {
                conn.on_relayed(&cx);
                Next::Continue
            }
        }
    }

    /// Proxy mode, the upstream's 101 checked: the relay `link` begins with `answer` (the
    /// 101 and whatever followed it) toward the client, and toward the upstream what the
    /// client sent after its request, held back until now; the client's TLS session, if it
    /// has one, becomes the link's. `answer` is emptied.
    pub fn begin_relay(&self, parts: &mut Parts, link: &mut Link, answer: &mut Vec<u8>) {
        if let Some(lease) = link.lease() {
            lease.answered();
        }
        if parts.conn.is_exchange() {
            let end = parts.conn.take_answer_end();
            link.begin_exchange(&mut parts.transport, answer, end);
        } else {
            let held = parts.conn.take_held_client_bytes();
            link.begin(&mut parts.transport, answer, &held);
        }
        answer.clear();
    }

    /// Proxy mode: appends to `out` the request to send the upstream now connected for
    /// the connection (only the request: see [`Conn::write_upstream_request`]).
    pub fn upstream_request(
        &mut self,
        parts: &mut Parts,
        peers: Peers,
        now: u64,
        out: &mut Vec<u8>,
    ) {
        self.unqueue(&mut parts.conn, now);
        parts
            .conn
            .write_upstream_request(peers, &mut self.cx(now, out));
    }

    /// Proxy mode: how the upstream learns the client's address.
    pub fn forwarding(&self) -> crate::proxy::Forwarding {
        self.config.proxy.forwarding
    }

    /// Proxy mode: whether the upstream choice needs the client's address (hashing by it).
    pub fn hashes_client_ip(&self) -> bool {
        matches!(
            self.config.proxy.hash_key,
            Some(crate::proxy::HashKey::ClientIp)
        )
    }

    /// Whether new connections are taken now (not draining, not paused).
    pub fn accepting(&self, now: u64) -> bool {
        !self.draining && !self.accept_pause.is_paused(now)
    }

    /// Accepting failed with `error` (out of descriptors or memory): pauses it, so that the
    /// failure is not retried at once (queued clients wait in the kernel meanwhile). Returns
    /// false if accepting was paused already. Lingering connections are reclaimed at the
    /// next turn either way.
    pub fn pause_accepting(&mut self, now: u64, error: &io::Error) -> bool {
        self.reclaim_wanted |= sys::is_resource_exhaustion(error);
        if self.accept_pause.is_paused(now) {
            return false;
        }
        self.accept_pause.pause(now, error, &self.stats);
        true
    }

    /// Whether [`Driver::accepted`] needs the client's address (a per-address limit is set).
    pub fn wants_peer(&self) -> bool {
        self.admission.wants_peer() || self.config.proxy.accept_from.is_some()
    }

    /// The client's address as a balancer's PROXY header gave it, if it did: the one for
    /// the upstream's `X-Forwarded-For` or PROXY header (else the socket's peer).
    pub fn client_addr(&self, parts: &Parts) -> Option<SocketAddr> {
        self.inbound.client(parts.session.inbound)
    }

    /// A socket was accepted from `peer` (on a TLS listener: `tls`), with `open` connections
    /// already held: the new connection, its session, its transport, and what to do with it.
    /// Over a limit, a plain client's 503 or 429 is in `out`, sent without reading the
    /// request; a TLS client is refused before any key exchange is spent: its connection is
    /// shut down unanswered.
    pub fn accepted(
        &mut self,
        open: usize,
        peer: Option<IpAddr>,
        tls: bool,
        now: u64,
        out: &mut Vec<u8>,
    ) -> (Parts, Next) {
        Counters::bump(&self.stats.accepted);
        let mut conn = Conn::new(&self.config, now);
        let from_balancer = self
            .config
            .proxy
            .accept_from
            .as_ref()
            .map(|trusted| peer.is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip))));
        if from_balancer == Some(false) {
            // Only balancers may speak here: a direct client's address cannot be told apart
            // from a forged header. Nothing is answered (the peer speaks no HTTP to us).
            Counters::bump(&self.stats.proxy_protocol_refused[0]);
            return (Parts::refused(conn), Next::Close);
        }
        // Behind a balancer the client's address comes with the header: per-address
        // admission waits for it.
        let peer = peer.filter(|_| from_balancer.is_none());
        let ip_key = match self.admission.admit(open, peer, now) {
            Ok(ip_key) => ip_key,
            Err(refusal) => {
                Counters::bump(&self.stats.admission_rejections);
                let next = conn.refuse(refusal, &mut self.cx(now, out));
                if tls {
                    out.clear();
                }
                return (Parts::refused(conn), next);
            }
        };
        // Admitted: from here the session carries the accounting, whatever happens next.
        let session = Session {
            handshaking: true,
            ip_key,
            awaits_proxy_header: from_balancer.is_some(),
            ..Session::default()
        };
        let (transport, next) = match Transport::accepted(self.tls.as_ref().filter(|_| tls)) {
            Some(transport) => (transport, Next::Continue),
            None => (Transport::Plain, Next::Close),
        };
        let parts = Parts {
            conn,
            session,
            h2: None,
            transport,
            outbox: Outbox::default(),
        };
        (parts, next)
    }

    /// A TLS connection's first bytes (its ClientHello) are in, not read yet, and `waited`
    /// is what the kernel says of the client ([`sys::waited`]): a client that left, or that
    /// would give up before its handshake could end (`--client-patience`), is shed before
    /// any work is spent on it; past this turn's [`KEY_EXCHANGES_PER_TURN`] the others wait
    /// for a later turn.
    pub fn before_key_exchange(
        &mut self,
        key: usize,
        parts: &mut Parts,
        waited: Option<sys::Waited>,
        now: u64,
    ) -> HelloStep {
        let verdict = (self.key_exchanges).judge(waited, self.config.client_patience_ms);
        if verdict != KeyExchange::Spend {
            self.leave_hellos(&mut parts.transport);
            parts.conn.shed(&self.stats);
            // A reset: the client (if still there) fails its attempt at once and backs
            // off, and no FIN handshake or TIME_WAIT is kept for it.
            parts.session.given_up = true;
            return HelloStep::Shed(Next::Close);
        }
        match parts.transport.hello() {
            Hello::Granted => HelloStep::Read,
            Hello::Queued if self.granted == Some(key) => {
                self.granted = None;
                self.leave_hellos(&mut parts.transport);
                parts.transport.set_hello(Hello::Granted);
                HelloStep::Read
            }
            Hello::Queued => HelloStep::Wait,
            Hello::Unasked if self.key_exchanges_this_turn < KEY_EXCHANGES_PER_TURN => {
                self.key_exchanges_this_turn += 1;
                parts.transport.set_hello(Hello::Granted);
                HelloStep::Read
            }
            Hello::Unasked => match parts.conn.deadline() {
                Some(until) => {
                    parts.transport.set_hello(Hello::Queued);
                    self.hellos.push(key, now, until);
                    self.hellos_waiting += 1;
                    HelloStep::Wait
                }
                None => HelloStep::Read,
            },
        }
    }

    /// A connection's ClientHello stops waiting in the queue (granted, shed, or closed).
    fn leave_hellos(&mut self, transport: &mut Transport) {
        if transport.hello() == Hello::Queued {
            transport.set_hello(Hello::Unasked);
            self.hellos_waiting = self.hellos_waiting.saturating_sub(1);
        }
    }

    /// The next queued ClientHello this turn has a key exchange left for (the oldest while
    /// the queue drains, the newest once it is congested), as its key; `parts` gives the
    /// backend's connection for a key. The backend then reads it (epoll) or hands in the
    /// bytes it held (uring): [`Driver::before_key_exchange`] still judges the client first.
    pub fn next_key_exchange<'p>(
        &mut self,
        now: u64,
        parts: impl Fn(usize) -> Option<&'p Parts>,
    ) -> Option<usize> {
        while self.key_exchanges_this_turn < KEY_EXCHANGES_PER_TURN {
            let waiting = self.hellos.pop(now)?;
            let still = parts(waiting.key).is_some_and(|found| {
                found.transport.hello() == Hello::Queued
                    && found.conn.deadline() == Some(waiting.until)
            });
            if still {
                self.key_exchanges_this_turn += 1;
                self.granted = Some(waiting.key);
                return Some(waiting.key);
            }
        }
        None
    }

    /// Bytes read from the connection's socket: through its transport (TLS: decrypted, the
    /// handshake's records queued in `outbox`), the plaintext goes to the connection. Plain
    /// HTTP on a TLS listener gets a plaintext 400; a TLS failure closes once its alert is
    /// out; `close_notify` is the end of the stream.
    ///
    /// Behind a balancer (`--accept-proxy-protocol`) the PROXY header comes first: read
    /// whole, it names the client (admitted per address then), and what follows it goes on
    /// as above; a missing or malformed header closes the connection, unanswered.
    pub fn received(
        &mut self,
        origin: Origin<'_>,
        parts: &mut Parts,
        bytes: &[u8],
        now: u64,
        out: &mut Vec<u8>,
    ) -> Next {
        let Parts {
            conn,
            session,
            h2,
            transport,
            outbox,
        } = parts;
        let mut parts = Client {
            conn,
            h2,
            transport,
            outbox,
            ip_key: session.ip_key,
            origin,
            told: session.inbound,
        };
        if !session.awaits_proxy_header {
            return self.received_after_header(&mut parts, bytes, now, out);
        }
        let (client, rest) = match self.inbound.read(&mut session.inbound, bytes) {
            HeaderRead::Partial => return Next::Continue,
            HeaderRead::Complete { client, rest } => (client, rest),
            HeaderRead::Invalid(why) => {
                tracing::debug!(why, "PROXY header refused");
                Counters::bump(&self.stats.proxy_protocol_refused[1]);
                return Next::Close;
            }
        };
        session.awaits_proxy_header = false;
        // The slot that names the client exists from this read on.
        parts.told = session.inbound;
        if let Some(client) = client {
            match self.admission.admit_address(client.ip(), now) {
                Ok(ip_key) => {
                    session.ip_key = ip_key;
                    parts.ip_key = ip_key;
                }
                Err(refusal) => {
                    Counters::bump(&self.stats.admission_rejections);
                    let next = parts.conn.refuse(refusal, &mut self.cx(now, out));
                    if parts.transport.is_tls() {
                        // No key exchange is spent on it: the connection just ends.
                        out.clear();
                        return Next::Close;
                    }
                    return next;
                }
            }
        }
        match rest.is_empty() {
            true => Next::Continue,
            false => self.received_after_header(&mut parts, &rest, now, out),
        }
    }

    fn received_after_header(
        &mut self,
        client: &mut Client<'_>,
        bytes: &[u8],
        now: u64,
        out: &mut Vec<u8>,
    ) -> Next {
        let Client {
            conn,
            h2,
            transport,
            outbox,
            ip_key,
            origin,
            told,
        } = client;
        let output_waits = !outbox.is_empty();
        let relays = self.stream_sockets.is_some();
        let (admission, stats) = (&mut self.admission, &self.stats);
        let ip_key = *ip_key;
        let mut admit = |now| admit_stream(admission, stats, ip_key, now);
        let mut none = http2::NoSockets;
        let (mut cx, io) = streams::h2_call(
            (&self.config, stats),
            (&mut self.stream_sockets, &mut none),
            (now, out),
        );
        let received = transport.receive(bytes, &mut self.plaintext, outbox, stats);
        let speaks_h2 = match transport.is_tls() {
            true => transport.speaks_h2(),
            false => cx.config.h2c && !conn.has_input() && http2::starts_preface(received.data),
        };
        if h2.is_none() && speaks_h2 && conn.is_handshaking() {
            Counters::bump(&cx.stats.h2_connections);
            conn.became_http2();
            let forwarding = cx.config.proxy.forwarding;
            let side = (*origin, *told);
            let tls = transport.is_tls();
            let proxy = match relays {
                true => streams::proxy_side(&self.inbound, forwarding, side, tls),
                false => None,
            };
            **h2 = Some(Http2::new(&cx, proxy));
        }
        if let Some(h2) = h2.as_deref_mut() {
            h2.set_output_waiting(output_waits);
            let next = match received.end {
                TlsEnd::Open => h2.receive(received.data, &mut cx, &mut admit, io),
                TlsEnd::Closed => {
                    let _ = h2.receive(received.data, &mut cx, &mut admit, io);
                    h2.on_eof(&mut cx, io)
                }
                TlsEnd::PlainHttp | TlsEnd::Failed(_) => {
                    h2.close(cx.stats, io);
                    Next::Close
                }
            };
            return match next {
                Next::Continue => self.serve_streams(h2, output_waits, now, out),
                next => next,
            };
        }
        let mut next = Next::Continue;
        if !received.data.is_empty() {
            let started = conn.accepted_at().filter(|_| conn.is_handshaking());
            next = conn.on_data(received.data, &mut cx);
            if let Some(started) = started.filter(|_| !conn.is_handshaking()) {
                self.key_exchanges.finished(now.saturating_sub(started));
            }
        }
        match received.end {
            TlsEnd::Open => next,
            TlsEnd::Closed if next == Next::Continue => {
                count_wasted_key_exchange(conn, transport, cx.stats);
                conn.on_eof(&mut cx)
            }
            TlsEnd::Closed => next,
            TlsEnd::PlainHttp => {
                **transport = Transport::Plain;
                conn.refuse(Rejection::PlainHttpToTlsPort, &mut cx)
            }
            TlsEnd::Failed(_) => Next::Close,
        }
    }

    /// The edge has no descriptor, memory or port left for this client's upstream
    /// connection: it is overloaded, the upstream is not at fault. Accepting pauses (queued
    /// clients wait in the kernel instead of being accepted into the same fate) and the
    /// client is told to come back later (503 with a jittered `Retry-After`).
    pub fn exhausted(
        &mut self,
        conn: &mut Conn,
        error: &io::Error,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Next {
        self.pause_accepting(now, error);
        let refusal = self.admission.overloaded();
        conn.refuse(refusal, &mut self.cx(now, out))
    }

    /// After every event on an open connection, and when its armed deadline has passed
    /// ([`Driver::next_expired`]): ends the handshake count once the handshake is over, in a
    /// drain gives an upgraded connection its close time, and carries out a deadline that
    /// has passed (output the socket has not taken is in the outbox, and, while relaying,
    /// `relay` says what waits toward the client). Carry out what it returns.
    pub fn settle(
        &mut self,
        parts: &mut Parts,
        (relay, link): (Backlog, Option<&Link>),
        now: u64,
        out: &mut Vec<u8>,
    ) -> Next {
        let backlog = Backlog::of(&mut parts.outbox, relay);
        let (conn, session) = (&mut parts.conn, &mut parts.session);
        if let Some(h2) = parts.h2.as_deref_mut() {
            return self.settle_http2(h2, conn, session, backlog, now, out);
        }
        self.settle_state(conn, session, (backlog, link), now, out)
    }

    /// [`Driver::settle`] for a connection that speaks HTTP/2: its streams carry the
    /// deadlines and the drain (`GOAWAY`, then each WebSocket its Close).
    fn settle_http2(
        &mut self,
        h2: &mut Http2,
        conn: &Conn,
        session: &mut Session,
        backlog: Backlog,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Next {
        self.track_send(session, backlog, now);
        self.count_handshake_end(conn, session);
        h2.set_output_waiting(backlog.waiting);
        self.refuse_overdue_waits(h2, now);
        let mut none = http2::NoSockets;
        let (mut cx, io) = streams::h2_call(
            (&self.config, &self.stats),
            (&mut self.stream_sockets, &mut none),
            (now, out),
        );
        if self.draining {
            let admission = &mut self.admission;
            let next = h2.on_shutdown(|| admission.drain_close(), &mut cx, io);
            if next != Next::Continue {
                return next;
            }
        }
        if backlog.waiting && now >= session.send_deadline {
            Counters::bump(&self.stats.send_timeouts);
            session.given_up = true;
            return Next::Close;
        }
        if session.after_flush == AfterFlush::Close {
            // The last output is on its way; the send deadline (the linger) bounds it.
            return Next::Continue;
        }
        let next = match h2.deadline(self.config.send_timeout_ms) {
            Some(at) if at <= now => h2.on_timeout(&mut cx, io),
            _ => Next::Continue,
        };
        match next {
            Next::Continue => self.serve_streams(h2, backlog.waiting, now, out),
            next => next,
        }
    }

    /// [`Driver::settle`] with the whole backlog known.
    pub(crate) fn settle_state(
        &mut self,
        conn: &mut Conn,
        session: &mut Session,
        (backlog, link): (Backlog, Option<&Link>),
        now: u64,
        out: &mut Vec<u8>,
    ) -> Next {
        self.track_send(session, backlog, now);
        if self.reclaiming && conn.is_lingering() && !backlog.waiting {
            Counters::bump(&self.stats.lingering_reclaimed);
            return Next::Close;
        }
        self.count_handshake_end(conn, session);
        if let Some(lease) = link.and_then(Link::lease) {
            let next = self.settle_upstream(conn, lease, now, out);
            if next != Next::Continue {
                return next;
            }
        }
        if self.draining && conn.is_open() {
            let (close_at, code) = self.admission.drain_close();
            let next = conn.on_shutdown(close_at, code, &mut self.cx(now, out));
            if next != Next::Continue {
                return next;
            }
        }
        if self.deadline(conn, session).is_some_and(|at| at <= now) {
            return self.deadline_passed(conn, session, backlog.waiting, now, out);
        }
        Next::Continue
    }

    /// The handshake is over (answered, or the connection became HTTP/2): it stops counting
    /// as one in progress.
    fn count_handshake_end(&mut self, conn: &Conn, session: &mut Session) {
        if session.handshaking && !conn.is_handshaking() {
            session.handshaking = false;
            self.admission.handshake_ended();
        }
    }

    /// Every state has a deadline, sending included: while output waits for the client, it
    /// must take some every `--send-timeout-ms` (nginx's `send_timeout`: progress, not the
    /// whole), and once a close waits for the flush, all of it within the linger.
    fn track_send(&self, session: &mut Session, backlog: Backlog, now: u64) {
        if !backlog.waiting {
            session.send_deadline = NO_SEND_DEADLINE;
            return;
        }
        let closing = session.awaits_flush();
        let bound = match closing {
            true => self.config.linger_ms,
            false => self.config.send_timeout_ms,
        };
        let fresh = now.saturating_add(bound);
        session.send_deadline = match session.send_deadline {
            NO_SEND_DEADLINE => fresh,
            _ if backlog.progressed && !closing => fresh,
            at => at.min(fresh),
        };
    }

    /// Proxy mode: what the connection's upstream did is counted for its health, and a
    /// relay to a retired upstream gets its close time within the drain window.
    fn settle_upstream(
        &mut self,
        conn: &mut Conn,
        lease: &crate::proxy::Lease,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Next {
        conn.report_upstream(lease, now, self.config.proxy.fall());
        if !conn.is_relaying() {
            return Next::Continue;
        }
        match lease.retired_at() {
            Some(retired_at) if !self.draining => {
                let (close_at, code) = self.admission.retired_close(retired_at);
                conn.on_shutdown(close_at, code, &mut self.cx(now, out))
            }
            _ => Next::Continue,
        }
    }

    /// The connection's close is under way (its slot waits for operations in flight): it
    /// stops counting as open and as a handshake in progress now, not when the slot goes.
    pub fn closing(&mut self, parts: &mut Parts) {
        let (conn, session) = (&mut parts.conn, &mut parts.session);
        self.leave_queue(conn, self.now());
        self.leave_hellos(&mut parts.transport);
        count_wasted_key_exchange(conn, &parts.transport, &self.stats);
        conn.on_closed(&self.stats);
        if let Some(h2) = parts.h2.as_deref_mut() {
            let mut none = http2::NoSockets;
            let io = streams::sockets_or(&mut self.stream_sockets, &mut none);
            h2.close(&self.stats, io);
        }
        if std::mem::take(&mut session.handshaking) {
            self.admission.handshake_ended();
        }
    }

    /// A deadline passed. Output the peer did not take by the send deadline is given up,
    /// with the connection; otherwise it is the connection's own deadline.
    fn deadline_passed(
        &mut self,
        conn: &mut Conn,
        session: &mut Session,
        output_waiting: bool,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Next {
        if conn.is_queued() {
            // Waited its --upstream-queue-ms: nothing was forwarded, and no upstream will
            // have room soon enough.
            self.unqueue(conn, now);
            return self.shed(conn, now, out);
        }
        let send_overdue = now >= session.send_deadline;
        if session.after_flush == AfterFlush::Close || (output_waiting && send_overdue) {
            // Output given up is counted however the connection was ending, as io_uring's
            // linked send is (`flush_overdue`).
            if output_waiting && send_overdue {
                Counters::bump(&self.stats.send_timeouts);
            }
            session.given_up = true;
            return Next::Close;
        }
        conn.on_timeout(&mut self.cx(now, out))
    }

    /// Arms connection `key`'s one deadline ([`Driver::timer`]), replacing what was armed.
    pub fn arm(&mut self, key: usize, parts: &mut Parts, now: u64) {
        let at = self.timer(parts, now);
        self.wheel.set(key as u32, at);
    }

    /// Disarms connection `key`'s deadline: it is closing.
    pub fn disarm(&mut self, key: usize) {
        self.wheel.cancel(key as u32);
    }

    /// Connection `key` is closing with its last output still being sent (io_uring: a send
    /// linked to the close): the send gets the linger to finish, and is given up after it
    /// ([`Driver::flush_overdue`]), so that a client that never reads cannot hold the
    /// descriptor and the output.
    pub fn closing_after_send(&mut self, key: usize, parts: &mut Parts, now: u64) {
        let session = &mut parts.session;
        session.after_flush = AfterFlush::Close;
        session.send_deadline = now.saturating_add(self.config.linger_ms);
        self.wheel.set(key as u32, Some(session.send_deadline));
    }

    /// Whether the last output of a connection closing after it
    /// ([`Driver::closing_after_send`]) is overdue: true once, then the send is cancelled.
    pub fn flush_overdue(&mut self, parts: &mut Parts, now: u64) -> bool {
        let session = &mut parts.session;
        if session.given_up || now < session.send_deadline {
            return false;
        }
        session.given_up = true;
        Counters::bump(&self.stats.send_timeouts);
        true
    }

    /// The next connection whose armed deadline has passed by `now` (disarmed): settle it
    /// ([`Driver::settle`] carries the deadline out). Deadlines that pass while these are
    /// handled wait for the next turn.
    pub fn next_expired(&mut self, now: u64) -> Option<usize> {
        if self.fired.is_empty() && self.expired_turn != self.turn {
            self.expired_turn = self.turn;
            let fired = &mut self.fired;
            self.wheel.expire(now, |key| fired.push(key as usize));
        }
        self.fired.pop()
    }

    /// How long the loop may wait for events: until the next deadline, and with listeners
    /// left unwatched while accepting is paused (`paused_listeners`), until the pause ends.
    pub fn wait(&self, now: u64, paused_listeners: bool) -> Option<std::time::Duration> {
        if self.reclaim_wanted || self.hellos_waiting > 0 {
            return Some(std::time::Duration::ZERO);
        }
        let mut wait = self.wheel.next_wake(now);
        if let Some(due) = self.fleet.next_check_due() {
            let check = due.saturating_sub(now);
            wait = Some(wait.map_or(check, |w| w.min(check)));
        }
        if paused_listeners && !self.draining {
            let resume = self.accept_pause.resumes_at().saturating_sub(now);
            wait = Some(wait.map_or(resume, |w| w.min(resume)));
        }
        wait.map(std::time::Duration::from_millis)
    }

    /// The one deadline to arm for this connection: the earlier of its own and the send
    /// deadline (which, once a close awaits the flush, is the linger at the latest).
    pub fn timer(&self, parts: &mut Parts, now: u64) -> Option<u64> {
        let (conn, session) = (&parts.conn, &mut parts.session);
        if session.awaits_flush() && session.send_deadline == NO_SEND_DEADLINE {
            session.send_deadline = now.saturating_add(self.config.linger_ms);
        }
        let own = self.deadline(conn, session);
        match parts.h2.as_deref() {
            Some(h2) => match (h2.deadline(self.config.send_timeout_ms), own) {
                (Some(streams), Some(own)) => Some(streams.min(own)),
                (streams, own) => streams.or(own),
            },
            None => own,
        }
    }

    /// The earlier of the connection's own deadline and the send deadline.
    fn deadline(&self, conn: &Conn, session: &Session) -> Option<u64> {
        let send = (session.send_deadline != NO_SEND_DEADLINE).then_some(session.send_deadline);
        match (conn.deadline(), send) {
            (Some(own), Some(send)) => Some(own.min(send)),
            (own, send) => own.or(send),
        }
    }

    /// Connection `key`'s socket is closed and its slot freed: the last of its accounting.
    pub fn closed(&mut self, key: usize, parts: &mut Parts, now: u64) {
        let (conn, session) = (&mut parts.conn, &mut parts.session);
        self.wheel.cancel(key as u32);
        self.inbound.release(&mut session.inbound);
        self.leave_queue(conn, now);
        self.leave_hellos(&mut parts.transport);
        count_wasted_key_exchange(conn, &parts.transport, &self.stats);
        conn.on_closed(&self.stats);
        if let Some(h2) = parts.h2.as_deref_mut() {
            let mut none = http2::NoSockets;
            let io = streams::sockets_or(&mut self.stream_sockets, &mut none);
            h2.close(&self.stats, io);
        }
        if session.handshaking {
            self.admission.handshake_ended();
        }
        self.admission.connection_closed(session.ip_key, now);
        Counters::bump(&self.stats.closed);
    }

    /// A drain begins: no more accepting; open connections get their close times as they
    /// are settled.
    pub fn start_draining(&mut self, now: u64) {
        self.draining = true;
        self.admission.start_drain(now);
    }

    /// Whether the reactor is draining.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// At the start of a drain: whether to accept what is queued on the listeners before
    /// closing them (closing would reset those clients), or to leave it to the process the
    /// sockets were handed over to, which serves the same queues.
    pub fn takes_queued_connections(&self) -> bool {
        !self.shutdown.is_handed_over()
    }

    /// End of a loop turn with `open` connections (`idle`: none, and no accept in flight):
    /// publishes the gauges; true when the reactor must exit: its drain is done, or the
    /// drain's window is over (with what is left).
    pub fn end_turn(&mut self, open: usize, idle: bool, now: u64) -> bool {
        self.turn += 1;
        self.key_exchanges_this_turn = 0;
        if (self.after_burst).trim_now(self.admission.handshaking(), now) {
            sys::return_free_memory();
        }
        (self.stats.upstream_waiting)
            .store(self.queued_now as u64, std::sync::atomic::Ordering::Relaxed);
        let window_over = (self.admission).end_turn(&self.stats, open, now, &self.config);
        (self.draining && idle) || window_over
    }

    fn cx<'a>(&'a self, now: u64, out: &'a mut Vec<u8>) -> Ctx<'a> {
        Ctx {
            config: &self.config,
            now,
            out,
            stats: &self.stats,
        }
    }
}

/// What reading a connection touches: all of its [`Parts`] but the session, and the
/// client's address in the per-address table.
struct Client<'a> {
    conn: &'a mut Conn,
    h2: &'a mut Option<Box<Http2>>,
    transport: &'a mut Transport,
    outbox: &'a mut Outbox,
    ip_key: u64,
    origin: Origin<'a>,
    /// Behind a balancer: the PROXY header's slot, which names the client.
    told: Option<inbound::InboundSlot>,
}

/// HTTP/2: a new stream from the address `ip_key` is admitted as a new connection would be
/// (its handshakes a second); a refusal is counted as admission control's.
fn admit_stream(
    admission: &mut Admission,
    stats: &Counters,
    ip_key: u64,
    now: u64,
) -> Result<(), crate::handshake::Refusal> {
    let admitted = admission.admit_stream(ip_key, now);
    if admitted.is_err() {
        Counters::bump(&stats.admission_rejections);
    }
    admitted
}

/// A connection closing: if its client leaves before its answer after a TLS key exchange
/// was spent on it, that exchange was work for no one.
fn count_wasted_key_exchange(conn: &Conn, transport: &Transport, stats: &Counters) {
    if conn.is_handshaking() && transport.spent_key_exchange() {
        Counters::bump(&stats.tls_handshakes_wasted);
    }
}

#[cfg(test)]
mod tests;
