//! The shutdown signal the reactors share: running, draining, aborting.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Wakes a reactor blocked in its event loop.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABORTING: u8 = 2;

/// The shutdown signal shared by the reactors (read once per loop turn, never per
/// connection).
#[derive(Default)]
pub struct Shutdown {
    state: AtomicU8,
    /// The listening sockets went to a process that took over: a drain leaves the
    /// connections queued on them to it.
    handed_over: AtomicBool,
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

    /// A new process has taken the listening sockets over (`--takeover`) and is serving:
    /// drain as on the first SIGTERM, but leave what is queued on the listeners to it.
    pub fn hand_over(&self) -> ShutdownState {
        self.handed_over.store(true, Ordering::Release);
        self.state.fetch_max(DRAINING, Ordering::AcqRel);
        self.wake_all();
        self.state()
    }

    /// Whether the listening sockets were handed over (see [`Shutdown::hand_over`]).
    pub fn is_handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }

    /// Exits at once (SIGQUIT).
    pub fn escalate_to_abort(&self) -> ShutdownState {
        self.state.fetch_max(ABORTING, Ordering::AcqRel);
        self.wake_all();
        self.state()
    }

    pub(crate) fn register(&self, waker: Wake) {
        if let Ok(mut wakers) = self.wakers.lock() {
            wakers.push(waker);
        }
    }

    /// Wakes every reactor, so that it looks at the shared state at once (a reload or a
    /// lookup published new settings) instead of at its next event.
    pub fn wake_reactors(&self) {
        self.wake_all();
    }

    fn wake_all(&self) {
        if let Ok(wakers) = self.wakers.lock() {
            for wake in wakers.iter() {
                wake();
            }
        }
    }
}
