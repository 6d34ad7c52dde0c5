//! Per-core reactors: one pinned thread per core, each with its own listeners, its own
//! connections and its own timer wheel. Nothing on the connection path is shared.
//!
//! Where things happen: listener setup in [`listener`], `accept4` and the event loop in
//! [`epoll`], the syscalls that need `unsafe` in [`sys`].

pub mod epoll;
pub mod listener;
pub mod sys;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::conn::ConnConfig;
use crate::stats::{Counters, Snapshot};
pub use listener::ListenOptions;

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses to listen on (port 0 picks one port, shared by all reactors).
    pub listen: Vec<SocketAddr>,
    /// Number of reactor threads.
    pub threads: usize,
    /// Pin reactor `i` to CPU `i` (modulo the CPUs available).
    pub pin: bool,
    /// Listener settings.
    pub listen_options: ListenOptions,
    /// Per-connection behaviour.
    pub conn: ConnConfig,
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
    /// The event loop could not be created.
    #[error("cannot create the event loop: {0}")]
    Poll(io::Error),
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
    wakers: Mutex<Vec<Arc<mio::Waker>>>,
}

/// What the reactors should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownState {
    /// Serving.
    Running,
    /// Stop accepting, finish handshakes, close upgraded connections with 1001, exit.
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

    fn register(&self, waker: Arc<mio::Waker>) {
        if let Ok(mut wakers) = self.wakers.lock() {
            wakers.push(waker);
        }
    }

    fn wake_all(&self) {
        if let Ok(wakers) = self.wakers.lock() {
            for waker in wakers.iter() {
                // A reactor that cannot be woken still sees the flag on its next timer tick.
                let _ = waker.wake();
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
        let mut reactors = Vec::with_capacity(threads);
        let mut counters = Vec::with_capacity(threads);
        for listeners in per_reactor {
            let stats = Arc::new(Counters::default());
            let (reactor, waker) = epoll::Reactor::new(
                listeners,
                config.listen_options.defer_accept_secs > 0,
                Arc::clone(&conn_config),
                Arc::clone(&stats),
                Arc::clone(&shutdown),
            )
            .map_err(StartError::Poll)?;
            shutdown.register(waker);
            counters.push(stats);
            reactors.push(reactor);
        }
        let mut handles = Vec::with_capacity(threads);
        for (index, reactor) in reactors.into_iter().enumerate() {
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let handle = std::thread::Builder::new()
                .name(format!("wsedge-reactor-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            tracing::warn!(reactor = index, "could not pin to CPU {}", core.id);
                        }
                    }
                    reactor.run()
                })
                .map_err(StartError::Spawn)?;
            handles.push(handle);
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
