//! Per-core reactors: one pinned thread per core, each with its own listeners, its own
//! connections and its own timer wheel. Nothing on the connection path is shared.
//!
//! Where things happen: listener setup in [`listener`], the two drivers in [`epoll`] (where
//! `accept4` is called) and [`uring`], the raw syscalls behind safe wrappers in [`sys`]
//! (`unsafe` lives there and in the io_uring driver only).

/// The [`Ctx`](crate::conn::Ctx) of one call into a connection, from a reactor's fields
/// (a macro, not a method, so that it borrows only those fields and not the whole reactor).
macro_rules! ctx {
    ($reactor:ident, $now:expr) => {
        crate::conn::Ctx {
            config: &$reactor.config,
            now: $now,
            out: &mut $reactor.out,
            stats: &$reactor.stats,
        }
    };
}

pub mod epoll;
pub mod listener;
pub mod per_ip;
pub mod sys;
pub mod uring;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use crate::conn::ConnConfig;
use crate::stats::{Counters, Snapshot};
pub use listener::ListenOptions;

/// How long accepting pauses when descriptors or memory run out.
const ACCEPT_PAUSE_MS: u64 = 100;

/// Accepting, paused after a failure that retrying at once would only repeat (EMFILE,
/// ENFILE, ENOMEM): the connection stays queued in the kernel meanwhile. Shared by the
/// backends so that they pause and log alike.
#[derive(Debug, Default)]
pub(crate) struct AcceptPause {
    until: u64,
    last_log: Option<u64>,
}

impl AcceptPause {
    /// Whether accepting is paused at `now`.
    pub(crate) fn is_paused(&self, now: u64) -> bool {
        now < self.until
    }

    /// When accepting may resume.
    pub(crate) fn resumes_at(&self) -> u64 {
        self.until
    }

    /// Pauses after `error`, counting it and logging at most once a second.
    pub(crate) fn pause(&mut self, now: u64, error: &io::Error, stats: &Counters) {
        self.until = now + ACCEPT_PAUSE_MS;
        Counters::bump(&stats.accept_pauses);
        if self.last_log.is_none_or(|t| now >= t + 1000) {
            self.last_log = Some(now);
            let what = if sys::is_resource_exhaustion(error) {
                "resources exhausted"
            } else {
                "accept failed"
            };
            tracing::warn!("{what}: {error}; pausing accept for {ACCEPT_PAUSE_MS} ms");
        }
    }
}

/// Admission limits and drain behaviour, per reactor (the server divides its totals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections a reactor holds (upgraded, handshaking and closing); 0: no limit.
    pub max_connections: usize,
    /// Handshakes in progress a reactor allows; 0: no limit.
    pub max_pending_handshakes: usize,
    /// Connections one client address (IPv4, or IPv6 /64) may hold; 0: no limit.
    pub max_connections_per_ip: u32,
    /// Handshakes per second one client address may start (token bucket); 0: no limit.
    pub max_handshakes_per_ip_per_sec: u64,
    /// `Retry-After` of a 503 is drawn uniformly from this range, in seconds, so that the
    /// refused clients do not all come back at the same instant.
    pub retry_after_secs: (u32, u32),
    /// Upgraded connections are closed at times spread uniformly over this window after a
    /// SIGTERM, in ms.
    pub drain_window_ms: u64,
    /// The close code sent when draining (1012 Service Restart, or 1001 Going Away).
    pub drain_close_code: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 0,
            max_pending_handshakes: 0,
            max_connections_per_ip: 0,
            max_handshakes_per_ip_per_sec: 0,
            retry_after_secs: (5, 30),
            drain_window_ms: 30_000,
            drain_close_code: 1012,
        }
    }
}

/// A reactor's admission control and drain schedule: counts handshakes in progress, refuses
/// over the limits with a jittered 503, and spreads the drain's closes.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    per_ip: per_ip::PerIpTable,
    handshaking: usize,
    rng: u64,
    drain_started: Option<u64>,
}

impl Admission {
    pub(crate) fn new(limits: Limits, seed: u64) -> Self {
        let per_ip = per_ip::PerIpTable::new(
            limits.max_connections_per_ip,
            limits.max_handshakes_per_ip_per_sec,
        );
        Admission {
            limits,
            per_ip,
            handshaking: 0,
            rng: seed | 1,
            drain_started: None,
        }
    }

    fn random_below(&mut self, bound: u64) -> u64 {
        // xorshift64*: jitter needs spread, not secrecy.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }

    /// Whether admission needs the client's address (a per-address limit is set).
    pub(crate) fn wants_peer(&self) -> bool {
        self.per_ip.enabled()
    }

    /// A `Retry-After` drawn from the configured range, whichever way round its ends were
    /// given (the library does not require `Limits` to come from the CLI's checks).
    fn retry_after(&mut self) -> u32 {
        let (a, b) = self.limits.retry_after_secs;
        let (low, high) = (a.min(b), a.max(b));
        let offset = self.random_below(u64::from(high - low) + 1);
        low.saturating_add(u32::try_from(offset).unwrap_or(u32::MAX))
    }

    /// The answer to a client the reactor cannot serve for lack of resources (no descriptor
    /// for its upstream connection): 503 with a jittered `Retry-After`, as over a limit.
    pub(crate) fn overloaded(&mut self) -> crate::handshake::Rejection {
        crate::handshake::Rejection::Overloaded {
            retry_after_secs: self.retry_after(),
        }
    }

    /// Decides on a connection just accepted from `peer`, with `open` connections already
    /// held. `Ok(ip_key)` admits it (its handshake and address are counted; pass the key to
    /// [`Admission::connection_closed`]); `Err` is the refusal to send: 503 over the
    /// reactor's limits, 429 over the address's.
    pub(crate) fn admit(
        &mut self,
        open: usize,
        peer: Option<std::net::IpAddr>,
        now: u64,
    ) -> Result<u64, crate::handshake::Rejection> {
        let over_connections =
            self.limits.max_connections > 0 && open >= self.limits.max_connections;
        let over_pending = self.limits.max_pending_handshakes > 0
            && self.handshaking >= self.limits.max_pending_handshakes;
        if over_connections || over_pending {
            let retry_after_secs = self.retry_after();
            return Err(crate::handshake::Rejection::Overloaded { retry_after_secs });
        }
        let mut ip_key = 0;
        if let Some(ip) = peer.filter(|_| self.per_ip.enabled()) {
            let key = per_ip::key(ip);
            if self.per_ip.admit(key, now).is_err() {
                let retry_after_secs = self.retry_after();
                return Err(crate::handshake::Rejection::RateLimited { retry_after_secs });
            }
            ip_key = key;
        }
        self.handshaking += 1;
        Ok(ip_key)
    }

    /// An admitted connection from the address with `ip_key` (0: untracked) closed.
    pub(crate) fn connection_closed(&mut self, ip_key: u64, now: u64) {
        if ip_key != 0 {
            self.per_ip.release(ip_key, now);
        }
    }

    /// A counted handshake ended (upgraded, refused, timed out or closed).
    pub(crate) fn handshake_ended(&mut self) {
        self.handshaking = self.handshaking.saturating_sub(1);
    }

    /// Starts the drain clock.
    pub(crate) fn start_drain(&mut self, now: u64) {
        self.drain_started.get_or_insert(now);
    }

    /// When an upgraded connection should be closed in this drain, and with which code.
    pub(crate) fn drain_close(&mut self) -> (u64, crate::conn::frame::CloseCode) {
        let start = self.drain_started.unwrap_or(0);
        let at = start + self.random_below(self.limits.drain_window_ms);
        (
            at,
            crate::conn::frame::CloseCode(self.limits.drain_close_code),
        )
    }

    /// End-of-turn bookkeeping shared by the backends: publishes this reactor's gauges (one
    /// relaxed store each per turn, not per connection) and says whether a drain's window is
    /// over, so that the reactor must exit with `open` connections left.
    pub(crate) fn end_turn(
        &self,
        stats: &Counters,
        open: usize,
        now: u64,
        config: &ConnConfig,
    ) -> bool {
        stats.open.store(open as u64, Ordering::Relaxed);
        stats
            .handshaking
            .store(self.handshaking as u64, Ordering::Relaxed);
        let over = self
            .drain_deadline(config.handshake_timeout_ms, config.linger_ms)
            .is_some_and(|deadline| now >= deadline);
        if over {
            tracing::warn!(
                connections = open,
                "drain window over; closing what is left"
            );
        }
        over
    }

    /// After this time a draining reactor exits even with connections left.
    fn drain_deadline(&self, handshake_timeout_ms: u64, linger_ms: u64) -> Option<u64> {
        self.drain_started
            .map(|start| start + self.limits.drain_window_ms.max(handshake_timeout_ms) + linger_ms)
    }
}

/// The I/O backend that drives the reactors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Readiness with epoll (`mio`).
    Epoll,
    /// Completions with io_uring: multishot accept, provided buffers.
    Uring,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Epoll => "epoll",
            Backend::Uring => "io_uring",
        })
    }
}

/// What each backend's reactor is built from.
pub struct ReactorParts {
    /// This reactor's listeners, one per listen address.
    pub listeners: Vec<std::net::TcpListener>,
    /// The listeners use `TCP_DEFER_ACCEPT`: a request is queued by the time of accept.
    pub defer_accept: bool,
    /// Per-connection behaviour.
    pub config: Arc<ConnConfig>,
    /// This reactor's counters.
    pub stats: Arc<Counters>,
    /// The server-wide shutdown signal.
    pub shutdown: Arc<Shutdown>,
    /// This reactor's share of the limits.
    pub limits: Limits,
    /// Seed for jitter (distinct per reactor).
    pub seed: u64,
}

/// Wakes a reactor blocked in its event loop.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

// One per thread, moved once: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Runner {
    Epoll(epoll::Reactor),
    Uring(uring::Reactor),
}

impl Runner {
    fn run(self) -> io::Result<()> {
        match self {
            Runner::Epoll(reactor) => reactor.run(),
            Runner::Uring(reactor) => reactor.run(),
        }
    }
}

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses to listen on (port 0 picks one port, shared by all reactors).
    pub listen: Vec<SocketAddr>,
    /// Number of reactor threads.
    pub threads: usize,
    /// Pin reactor `i` to CPU `i` (modulo the CPUs available).
    pub pin: bool,
    /// The I/O backend.
    pub backend: Backend,
    /// Listener settings.
    pub listen_options: ListenOptions,
    /// Per-connection behaviour.
    pub conn: ConnConfig,
    /// Admission limits (server totals; each reactor takes its share) and drain behaviour.
    pub limits: Limits,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A reactor could not set up its event loop.
    #[error("cannot set up a reactor: {0}")]
    Reactor(io::Error),
    /// A reactor thread could not be spawned.
    #[error("cannot start a reactor thread: {0}")]
    Spawn(io::Error),
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABORTING: u8 = 2;

/// The shutdown signal shared by the reactors (read once per loop turn, never per
/// connection).
#[derive(Default)]
pub struct Shutdown {
    state: AtomicU8,
    wakers: Mutex<Vec<Wake>>,
}

/// What the reactors should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownState {
    /// Serving.
    Running,
    /// Stop accepting, finish handshakes, close upgraded connections with the drain close
    /// code (`--drain-close-code`, 1012 by default) spread over the drain window, exit.
    Draining,
    /// Exit now.
    Aborting,
}

impl Shutdown {
    /// The current state.
    pub fn state(&self) -> ShutdownState {
        match self.state.load(Ordering::Acquire) {
            RUNNING => ShutdownState::Running,
            DRAINING => ShutdownState::Draining,
            _ => ShutdownState::Aborting,
        }
    }

    /// Starts a graceful drain (first signal), or aborts if one is already under way.
    pub fn escalate(&self) -> ShutdownState {
        let next = if self.state.load(Ordering::Acquire) == RUNNING {
            DRAINING
        } else {
            ABORTING
        };
        self.state.fetch_max(next, Ordering::AcqRel);
        self.wake_all();
        self.state()
    }

    /// Exits at once (SIGQUIT).
    pub fn escalate_to_abort(&self) -> ShutdownState {
        self.state.fetch_max(ABORTING, Ordering::AcqRel);
        self.wake_all();
        self.state()
    }

    fn register(&self, waker: Wake) {
        if let Ok(mut wakers) = self.wakers.lock() {
            wakers.push(waker);
        }
    }

    fn wake_all(&self) {
        if let Ok(wakers) = self.wakers.lock() {
            for wake in wakers.iter() {
                wake();
            }
        }
    }
}

/// A running server: its reactor threads and what they listen on.
pub struct Server {
    threads: Vec<JoinHandle<io::Result<()>>>,
    local_addrs: Vec<SocketAddr>,
    shutdown: Arc<Shutdown>,
    counters: Vec<Arc<Counters>>,
}

impl Server {
    /// Binds every listener, then starts one reactor per thread. Errors (a port in use,
    /// no permission) are reported here, before any thread runs.
    pub fn start(config: ServerConfig) -> Result<Server, StartError> {
        let threads = config.threads.max(1);
        let mut local_addrs = Vec::with_capacity(config.listen.len());
        let mut per_reactor: Vec<Vec<std::net::TcpListener>> = Vec::with_capacity(threads);
        for reactor in 0..threads {
            let mut listeners = Vec::with_capacity(config.listen.len());
            for (i, requested) in config.listen.iter().enumerate() {
                // Port 0: the first bind picks the port, the other reactors join it.
                let addr = local_addrs.get(i).copied().unwrap_or(*requested);
                let listener = listener::bind(addr, config.listen_options)
                    .map_err(|source| StartError::Bind { addr, source })?;
                if reactor == 0 {
                    let bound = listener
                        .local_addr()
                        .map_err(|source| StartError::Bind { addr, source })?;
                    local_addrs.push(bound);
                }
                listeners.push(listener);
            }
            per_reactor.push(listeners);
        }

        let shutdown = Arc::new(Shutdown::default());
        let conn_config = Arc::new(config.conn.clone());
        let cores = if config.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut counters = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        let (ready_tx, ready_rx) = mpsc::channel();
        for (index, listeners) in per_reactor.into_iter().enumerate() {
            let stats = Arc::new(Counters::default());
            counters.push(Arc::clone(&stats));
            let parts = ReactorParts {
                listeners,
                defer_accept: config.listen_options.defer_accept_secs > 0,
                config: Arc::clone(&conn_config),
                stats,
                shutdown: Arc::clone(&shutdown),
                limits: Limits {
                    max_connections: config.limits.max_connections.div_ceil(threads),
                    max_pending_handshakes: config.limits.max_pending_handshakes.div_ceil(threads),
                    max_connections_per_ip: config
                        .limits
                        .max_connections_per_ip
                        .div_ceil(threads as u32),
                    max_handshakes_per_ip_per_sec: config
                        .limits
                        .max_handshakes_per_ip_per_sec
                        .div_ceil(threads as u64),
                    ..config.limits
                },
                seed: 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(index as u64 + 1)
                    ^ std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
            };
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let backend = config.backend;
            let ready = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("wsedge-reactor-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            tracing::warn!(reactor = index, "could not pin to CPU {}", core.id);
                        }
                    }
                    // Built on its own thread: an io_uring set up for a single issuer must be
                    // created by the thread that submits to it.
                    let built = match backend {
                        Backend::Epoll => {
                            epoll::Reactor::new(parts).map(|(r, wake)| (Runner::Epoll(r), wake))
                        }
                        Backend::Uring => {
                            uring::Reactor::new(parts).map(|(r, wake)| (Runner::Uring(r), wake))
                        }
                    };
                    match built {
                        Ok((runner, wake)) => {
                            let _ = ready.send(Ok(wake));
                            runner.run()
                        }
                        Err(error) => {
                            let _ = ready.send(Err(error));
                            Ok(())
                        }
                    }
                })
                .map_err(StartError::Spawn)?;
            handles.push(handle);
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..threads {
            match ready_rx.recv() {
                Ok(Ok(wake)) => shutdown.register(wake),
                Ok(Err(error)) => failure = Some(error),
                Err(_) => failure = Some(io::Error::other("a reactor thread exited during setup")),
            }
        }
        if let Some(error) = failure {
            shutdown.escalate_to_abort();
            for handle in handles {
                let _ = handle.join();
            }
            return Err(StartError::Reactor(error));
        }
        Ok(Server {
            threads: handles,
            local_addrs,
            shutdown,
            counters,
        })
    }

    /// The bound addresses, in the order of [`ServerConfig::listen`].
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The handle that stops the server.
    pub fn shutdown(&self) -> Arc<Shutdown> {
        Arc::clone(&self.shutdown)
    }

    /// Each reactor's counters, for scrapes.
    pub fn counters(&self) -> Vec<Arc<Counters>> {
        self.counters.clone()
    }

    /// Totals over all reactors so far.
    pub fn stats(&self) -> Snapshot {
        Counters::sum(self.counters.iter().map(|c| &**c))
    }

    /// Waits for every reactor to exit (after a shutdown) and returns the totals.
    pub fn join(self) -> io::Result<Snapshot> {
        let mut result = Ok(());
        for handle in self.threads {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => result = Err(error),
                Err(_) => result = Err(io::Error::other("a reactor thread panicked")),
            }
        }
        result.map(|()| Counters::sum(self.counters.iter().map(|c| &**c)))
    }
}
