//! Startup: binding every listener, one reactor thread per core on the chosen backend, and
//! the handle that joins them.

use std::io;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::{epoll, listener, uring, Limits, ListenOptions, Live, Shutdown};
use crate::conn::ConnConfig;
use crate::stats::{Counters, Snapshot};

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

/// A listening socket, and whether its connections speak TLS.
#[derive(Debug)]
pub struct Listening {
    /// The socket (non-blocking, `SO_REUSEPORT`).
    pub socket: std::net::TcpListener,
    /// It is a `--listen-tls` one.
    pub tls: bool,
}

impl Listening {
    /// Another descriptor for the same socket.
    pub fn try_clone(&self) -> io::Result<Listening> {
        Ok(Listening {
            socket: self.socket.try_clone()?,
            tls: self.tls,
        })
    }
}

/// What each backend's reactor is built from.
pub struct ReactorParts {
    /// This reactor's listeners: one per listen address, and any extra handed over by a
    /// process that ran more reactors.
    pub listeners: Vec<Listening>,
    /// The TLS settings every TLS listener's connections use (swapped on reload).
    pub tls: Option<crate::tls::SharedTlsConfig>,
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
    /// The settings a reload changes, and how many reactors share the limits.
    pub live: Arc<Live>,
    /// Reactors in the server.
    pub reactors: usize,
    /// This reactor's place among them.
    pub index: usize,
}

impl ReactorParts {
    /// Splits the parts into the reactor's driver (every decision) and what its backend
    /// keeps: the listeners, and whether they defer accept.
    pub fn split(self) -> (crate::session::Driver, Vec<Listening>, bool) {
        let driver = crate::session::Driver::new(
            self.config,
            self.stats,
            self.limits,
            self.seed,
            self.shutdown,
            self.tls,
            Arc::clone(self.live.health()),
        )
        .with_live(self.live, self.reactors, self.index);
        (driver, self.listeners, self.defer_accept)
    }
}

pub use crate::policy::Wake;

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
    /// Addresses to listen on for TLS (`wss://`), terminated with `tls`.
    pub listen_tls: Vec<SocketAddr>,
    /// TLS settings, when there are TLS listeners (swapped on reload).
    pub tls: Option<crate::tls::SharedTlsConfig>,
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
    /// Keep a second descriptor of every listening socket, to hand over (`--takeover`).
    pub handover: bool,
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

/// A running server: its reactor threads and what they listen on.
pub struct Server {
    threads: Vec<JoinHandle<io::Result<()>>>,
    local_addrs: Vec<SocketAddr>,
    shutdown: Arc<Shutdown>,
    counters: Vec<Arc<Counters>>,
    /// A second descriptor of each listening socket, until taken to be handed over.
    handover: Vec<Listening>,
    live: Arc<Live>,
}

impl Server {
    /// Binds every listener, then starts one reactor per thread. Errors (a port in use,
    /// no permission) are reported here, before any thread runs.
    pub fn start(config: ServerConfig) -> Result<Server, StartError> {
        Server::start_with(config, Vec::new())
    }

    /// [`Server::start`] on listening sockets `inherited` from a process that ran before
    /// (`--takeover`): a listen address served by inherited sockets takes them (one per
    /// reactor; more sockets than reactors are shared out, fewer are topped up with new
    /// `SO_REUSEPORT` ones on the same address), so no socket is closed and nothing queued
    /// on one is lost. Inherited sockets on an address no longer asked for are served too.
    pub fn start_with(
        config: ServerConfig,
        inherited: Vec<Listening>,
    ) -> Result<Server, StartError> {
        let threads = config.threads.max(1);
        let requested: Vec<(SocketAddr, bool)> = config
            .listen
            .iter()
            .map(|&a| (a, false))
            .chain(config.listen_tls.iter().map(|&a| (a, true)))
            .collect();
        let mut inherited: Vec<(Listening, Option<SocketAddr>)> = inherited
            .into_iter()
            .map(|l| {
                let addr = l.socket.local_addr().ok();
                (l, addr)
            })
            .collect();
        let mut local_addrs = Vec::with_capacity(requested.len());
        let mut per_reactor: Vec<Vec<Listening>> = (0..threads).map(|_| Vec::new()).collect();
        for &(requested, tls) in &requested {
            let serves = |(l, addr): &(Listening, Option<SocketAddr>)| {
                l.tls == tls
                    && addr.is_some_and(|a| {
                        a.ip() == requested.ip()
                            && (requested.port() == 0 || a.port() == requested.port())
                    })
            };
            let (mine, rest): (Vec<_>, Vec<_>) = inherited.into_iter().partition(serves);
            inherited = rest;
            let mut bound = mine.first().and_then(|(_, addr)| *addr);
            // A socket passed without SO_REUSEPORT (a systemd socket unit without
            // `ReusePort=yes`) cannot be joined by new ones: reactors then share it.
            let shared = match mine.first() {
                Some((first, _)) => Some(first.try_clone().map_err(StartError::Reactor)?),
                None => None,
            };
            let mut mine = mine.into_iter().map(|(l, _)| l);
            for listeners in per_reactor.iter_mut() {
                let listening = match mine.next() {
                    Some(listening) => listening,
                    None => {
                        // Port 0: the first bind picks the port, the other reactors join it.
                        let addr = bound.unwrap_or(requested);
                        let socket = match (listener::bind(addr, config.listen_options), &shared) {
                            (Ok(socket), _) => socket,
                            (Err(e), Some(shared)) if e.kind() == io::ErrorKind::AddrInUse => {
                                shared.socket.try_clone().map_err(StartError::Reactor)?
                            }
                            (Err(source), _) => return Err(StartError::Bind { addr, source }),
                        };
                        if bound.is_none() {
                            let local = socket
                                .local_addr()
                                .map_err(|source| StartError::Bind { addr, source })?;
                            bound = Some(local);
                        }
                        Listening { socket, tls }
                    }
                };
                listeners.push(listening);
            }
            for (index, extra) in mine.enumerate() {
                per_reactor[index % threads].push(extra);
            }
            local_addrs.push(bound.unwrap_or(requested));
        }
        for (index, (listening, addr)) in inherited.into_iter().enumerate() {
            tracing::warn!(
                "a handed-over listening socket on {} is no longer asked for: served until \
                 the next restart without it",
                addr.map_or("an unknown address".into(), |a| a.to_string())
            );
            per_reactor[index % threads].push(listening);
        }
        let handover = match config.handover {
            true => per_reactor
                .iter()
                .flatten()
                .map(Listening::try_clone)
                .collect::<io::Result<Vec<_>>>()
                .map_err(StartError::Reactor)?,
            false => Vec::new(),
        };

        let shutdown = Arc::new(Shutdown::default());
        let conn_config = Arc::new(config.conn.clone());
        let live = Arc::new(Live::new(Arc::clone(&conn_config), config.limits));
        super::resolver::spawn(&live, &shutdown).map_err(StartError::Reactor)?;
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
                tls: config.tls.clone(),
                defer_accept: config.listen_options.defer_accept_secs > 0,
                config: Arc::clone(&conn_config),
                stats,
                shutdown: Arc::clone(&shutdown),
                limits: config.limits.share(threads),
                live: Arc::clone(&live),
                reactors: threads,
                index,
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
            handover,
            live,
        })
    }

    /// With [`ServerConfig::handover`]: a second descriptor of every listening socket the
    /// reactors serve, for a process that takes over (once; empty after).
    pub fn take_listening_sockets(&mut self) -> Vec<Listening> {
        std::mem::take(&mut self.handover)
    }

    /// The bound addresses: those of [`ServerConfig::listen`], then of
    /// [`ServerConfig::listen_tls`].
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The settings a reload publishes to the reactors.
    pub fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live)
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
