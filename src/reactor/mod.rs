//! Per-core reactors: one pinned thread per core, each with its own listeners, its own
//! connections and its own timer wheel. Nothing on the connection path is shared.
//!
//! Where things happen: listener setup in [`listener`], the two backends in [`epoll`] (where
//! `accept4` is called) and [`uring`], the raw syscalls behind safe wrappers in [`sys`].
//! `unsafe` lives in `sys`, the io_uring backend, and where descriptors cross a process
//! boundary (`takeover`, `activation`), each block with its `SAFETY:` line.

pub mod epoll;
pub mod listener;
mod resolver;
mod server;
pub mod uring;

// The policy the reactors carry out, and the syscalls they make, live below them; named
// here too, where users of the library found them.
pub use crate::policy::{per_ip, Limits, Live, LiveSettings, Shutdown, ShutdownState};
pub use crate::sys;
pub use listener::ListenOptions;
pub use server::{Backend, Listening, ReactorParts, Server, ServerConfig, StartError, Wake};
