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
            config: &$reactor.driver.config,
            now: $now,
            out: &mut $reactor.out,
            stats: &$reactor.driver.stats,
        }
    };
}

mod admission;
pub mod epoll;
pub mod listener;
mod live;
pub mod per_ip;
mod resolver;
mod server;
mod shutdown;
pub mod sys;
pub mod uring;

pub use admission::Limits;
pub(crate) use admission::{AcceptPause, Admission};
pub use listener::ListenOptions;
pub use live::{Live, LiveSettings};
pub use server::{Backend, Listening, ReactorParts, Server, ServerConfig, StartError, Wake};
pub use shutdown::{Shutdown, ShutdownState};
