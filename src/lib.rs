//! wsedge: a WebSocket edge for Linux that absorbs connection storms.
//!
//! The crate is split so that protocol logic never touches a socket:
//!
//! - [`handshake`]: the RFC 6455 opening handshake as a pure function of the bytes
//!   received so far (parse, validate, negotiate, write the answer), plus the client-side
//!   check the load generator uses to verify servers.
//! - [`conn`]: the per-connection state machine (handshake, echo framing, close
//!   handshake, timeouts), bytes and time in, bytes and socket actions out.
//! - [`proxy`]: the proxy mode's forwarded request, upstream check and relay pipes.
//! - [`session`]: a connection's life above the protocol (admission, accounting, drain,
//!   flush and its deadline), decided once for both backends.
//! - [`transport`]: the bytes on the wire that a socket has not taken yet.
//! - [`timer`]: the hashed timer wheel that enforces the deadlines.
//! - [`check`]: `wsedge check URL`, one diagnosed handshake.
//! - [`config`]: the command-line flags and their validation.
//! - [`metrics`]: the Prometheus endpoint.
//! - [`reactor`]: the per-core threads, listeners and the I/O backends that drive it all.
#![warn(missing_docs)]

pub mod activation;
pub mod check;
pub mod config;
pub mod conn;
pub mod handshake;
pub mod http2;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reactor;
pub mod reload;
pub mod session;
pub mod stats;
pub mod sys;
pub mod takeover;
pub mod timer;
pub mod tls;
pub mod transport;
pub mod values;
