//! One connection's state as the driver keeps it and a backend holds it ([`Parts`]: the
//! protocol, the [`Session`] above it, the transport, the outbox), what the backend reports
//! about it ([`Event`], [`Backlog`]) and what it is told to do ([`Action`], [`AfterFlush`],
//! [`UpstreamFailure`]).

use crate::conn::{Conn, Next};
use crate::http2::Http2;
use crate::transport::{Outbox, Transport};

use super::inbound::InboundSlot;
#[cfg(doc)]
use super::Driver;

/// What waits for a connection's output to be flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterFlush {
    /// Nothing: keep reading.
    #[default]
    Nothing,
    /// Shut down the write side (a rejection: then discard input until the peer closes).
    ShutdownWrite,
    /// Close the socket.
    Close,
}

/// What a backend does with the socket once it has sent (or queued) a call's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep reading.
    Continue,
    /// Shut down the write side now (all output is out).
    ShutdownWrite,
    /// Close now (all output is out).
    Close,
    /// Close with a reset: the client did not take its output in time, and the kernel must
    /// not keep it (an orphaned socket holds its send buffer while it probes a zero window).
    Reset,
    /// Output still waits: stop reading; what follows the flush is in the session.
    AwaitFlush,
    /// Proxy mode: connect to an upstream.
    ConnectUpstream,
    /// Proxy mode: start relaying.
    Relay,
}

/// One connection's state above [`Conn`]: 24 bytes.
#[derive(Debug)]
pub struct Session {
    /// Counted by admission control as a handshake in progress, until it is not.
    pub(super) handshaking: bool,
    /// The client's address in the per-address table (0: not tracked).
    pub(super) ip_key: u64,
    pub(super) after_flush: AfterFlush,
    /// The peer did not take the output by the send deadline: the close does not wait
    /// for it any more.
    pub(super) given_up: bool,
    /// While output waits for the client: when the connection is given up unless the client
    /// takes some of it (`--send-timeout-ms` from the last progress), or, once a close
    /// awaits the flush, all of it (the linger). [`NO_SEND_DEADLINE`]: nothing waits. A
    /// plain `u64`, not an `Option`, keeps a session at 24 bytes.
    pub(super) send_deadline: u64,
    /// `--accept-proxy-protocol`: the PROXY header has not been read yet.
    pub(super) awaits_proxy_header: bool,
    /// `--accept-proxy-protocol`: the header read so far, then the client it named.
    pub(super) inbound: Option<InboundSlot>,
}

pub(super) const NO_SEND_DEADLINE: u64 = u64::MAX;

impl Default for Session {
    fn default() -> Self {
        Session {
            handshaking: false,
            ip_key: 0,
            after_flush: AfterFlush::Nothing,
            given_up: false,
            awaits_proxy_header: false,
            inbound: None,
            send_deadline: NO_SEND_DEADLINE,
        }
    }
}

impl Session {
    /// What the backend does after a call that returned `next`, with `output_waiting` when
    /// the socket has not taken all output yet: a close or half-close waits for the flush.
    pub fn after(&mut self, next: Next, output_waiting: bool) -> Action {
        match (next, output_waiting) {
            (Next::Close, _) if self.given_up => Action::Reset,
            (Next::Continue, _) => Action::Continue,
            (Next::Proxy, _) => Action::ConnectUpstream,
            (Next::Relay, _) => Action::Relay,
            (Next::Close, false) => Action::Close,
            (Next::HalfClose, false) => Action::ShutdownWrite,
            (Next::Close, true) => {
                self.after_flush = AfterFlush::Close;
                Action::AwaitFlush
            }
            (Next::HalfClose, true) => {
                self.after_flush = AfterFlush::ShutdownWrite;
                Action::AwaitFlush
            }
        }
    }

    /// The output is all out: what was waiting for it, now due.
    pub fn flushed(&mut self) -> AfterFlush {
        std::mem::take(&mut self.after_flush)
    }

    /// Whether a close or half-close waits for the output: the socket is not read meanwhile.
    pub fn awaits_flush(&self) -> bool {
        self.after_flush != AfterFlush::Nothing
    }

    /// Whether the connection is counted as a handshake in progress.
    pub fn is_handshaking(&self) -> bool {
        self.handshaking
    }
}

/// What a connection's output to its client is doing, as the backend saw it: bytes wait for
/// the client's socket (the outbox, or while relaying the pipe toward the client), and
/// whether the socket took any of them since the last [`Driver::settle`]. A client that stops
/// reading is given up when it takes nothing for `--send-timeout-ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Bytes wait for the client's socket.
    pub waiting: bool,
    /// The client's socket took bytes since the last settle.
    pub progressed: bool,
}

impl Backlog {
    /// What waits in the connection's `outbox` and, while relaying, in the relay toward the
    /// client (`relay`); the outbox's progress is taken.
    pub fn of(outbox: &mut Outbox, relay: Backlog) -> Backlog {
        Backlog {
            waiting: relay.waiting || !outbox.is_empty(),
            progressed: relay.progressed | outbox.take_progress(),
        }
    }
}

/// Something that happened to a connection, or to its upstream before the relay started,
/// as a backend reports it to [`Driver::handle`]: the driver hands it to the connection,
/// which the backends never call themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The client closed its side (a read returned 0).
    PeerClosed,
    /// Proxy mode: the upstream connection is established; its answer is awaited.
    UpstreamConnected,
    /// Proxy mode: bytes from the upstream before the relay (its answer).
    UpstreamData(&'a [u8]),
    /// Proxy mode: the upstream closed before the relay started.
    UpstreamClosed,
    /// Proxy mode: no upstream could be reached, or the connection to it failed.
    UpstreamFailed,
    /// Proxy mode: relayed bytes moved either way (the connection is not idle).
    Relayed,
}

/// One connection's state as a backend holds it: the protocol, the session above it, the
/// transport and the output the socket has not taken. The backend moves the bytes; what they
/// mean is decided by the driver.
pub struct Parts {
    /// The protocol state: the driver's alone (a backend asks [`Parts`]).
    pub(super) conn: Conn,
    /// The state above it: the driver's alone.
    pub(super) session: Session,
    /// Once the client speaks HTTP/2 (`--h2`, `--h2c`): its streams, each with its own
    /// protocol state; `conn` is then done. The driver's alone.
    pub(super) h2: Option<Box<Http2>>,
    /// Plain TCP or TLS.
    pub transport: Transport,
    /// Output the socket has not taken yet.
    pub outbox: Outbox,
}

impl Parts {
    /// Whether bytes are relayed between client and upstream (proxy mode, after the 101).
    pub fn is_relaying(&self) -> bool {
        self.conn.is_relaying()
    }

    /// Whether this is a TLS connection nothing has been read from: before its first read
    /// the backend asks [`Driver::before_key_exchange`] whether to read it at all.
    pub fn awaits_client_hello(&self) -> bool {
        self.transport.awaits_client_hello()
    }

    /// Whether the connection needs its upstream socket (proxy mode): once this turns
    /// false, the backend closes the upstream side.
    pub fn wants_upstream(&self) -> bool {
        self.conn.wants_upstream()
    }

    /// Proxy mode: while the request waits at the edge for an upstream with room, when
    /// the wait ends (what [`Driver::next_waiting`] checks a queue entry against).
    pub fn waits_until(&self) -> Option<u64> {
        self.conn
            .is_queued()
            .then(|| self.conn.deadline())
            .flatten()
    }

    /// Whether it was admitted (counted as a handshake in progress) rather than refused at
    /// accept.
    pub fn is_admitted(&self) -> bool {
        self.session.is_handshaking()
    }

    /// Whether a close or half-close waits for the output to go out.
    pub fn awaits_flush(&self) -> bool {
        self.session.awaits_flush()
    }

    /// What the backend does after a call that returned `next` ([`Session::after`]).
    pub fn after(&mut self, next: Next, output_waiting: bool) -> Action {
        self.session.after(next, output_waiting)
    }

    /// The output went out: what waited for it ([`Session::flushed`]).
    pub fn flushed(&mut self) -> AfterFlush {
        self.session.flushed()
    }

    /// A connection refused at accept: plain, outside any accounting.
    pub(super) fn refused(conn: Conn) -> Parts {
        Parts {
            conn,
            session: Session::default(),
            h2: None,
            transport: Transport::Plain,
            outbox: Outbox::default(),
        }
    }
}

/// What a failed upstream connection attempt means for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The upstream is at fault (refused, unreachable, reset): it is passed over for a while
    /// and the next one is tried for this client ([`Driver::next_upstream`]).
    TryNext,
    /// The edge itself has no descriptor, memory or port left: carry out this (a 503 with
    /// `Retry-After`; accepting is paused). No other upstream would fare better.
    Answer(Next),
}
