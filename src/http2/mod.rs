//! WebSockets over HTTP/2 (RFC 8441): one client connection carrying many WebSockets, each
//! an extended CONNECT stream, on TLS listeners with ALPN `h2` (`--h2`) or plain ones with
//! prior knowledge (`--h2c`).
//!
//! The h2 crate's server connection is driven here with no runtime and no I/O: the bytes
//! the reactor read go into an in-memory [`pipe`], the connection is polled with a waker
//! that does nothing (it is polled again after every read, deadline and drain: nothing
//! else can move it), and the frames it writes come out into the caller's output, which
//! the backend seals and sends like any other. Both backends therefore run it unchanged,
//! below the driver. Each stream runs the same [`Conn`](crate::conn::Conn) an HTTP/1.1
//! client gets ([`stream`]).
//!
//! # Bounds
//! - At most [`MAX_STREAMS`] streams at once (more are refused with `REFUSED_STREAM` by
//!   h2), [`MAX_STREAMS_PER_CONNECTION`] over the connection's life (then `GOAWAY`, as
//!   nginx's `keepalive_requests`), and [`MAX_UNANSWERED_RESETS`] streams reset by the
//!   client before their answer (rapid reset, CVE-2023-44487: then `GOAWAY` with
//!   `ENHANCE_YOUR_CALM`); h2 itself bounds the resets of streams not yet accepted.
//! - A header block, CONTINUATION frames included, is at most [`MAX_HEADER_LIST`] bytes
//!   decoded (HPACK bombs, CONTINUATION floods): h2 refuses more.
//! - Each stream's window is [`STREAM_WINDOW`], the connection's the sum of its streams',
//!   so that one stream holding its window never stalls another; a stream's output waits
//!   for the client's window at most [`stream::MAX_UNSENT`] bytes and `--send-timeout-ms`.
//! - A connection with no stream is closed (`GOAWAY`) after `--handshake-timeout-ms`, the
//!   bound on a connection that has not upgraded anything; a stream's deadlines are its
//!   connection's (idle, close, drain).
//! - PING and SETTINGS floods: their answers go out with the rest of the output, and the
//!   reading stops while the socket has not taken it (back-pressure), under
//!   `--send-timeout-ms`.

pub mod client;
mod pipe;
mod stream;
mod upstream;

pub use crate::proxy::stream_sockets::{NoSockets, SocketId, Sockets};
pub use stream::{h2_response, write_http1_request, STANDIN_KEY};
pub use upstream::{Keys, Open, Opened};

use bytes::Bytes;
use h2::server::{Connection, Handshake};
use h2::Reason;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::conn::frame::CloseCode;
use crate::conn::{Ctx, Next};
use crate::handshake::Refusal;
use crate::proxy::Peers;
use crate::stats::Counters;
use pipe::Pipe;
use stream::{Ended, Stream};

/// What admits each new stream, at a time: the driver's admission control (the address's
/// handshakes a second), or the refusal the stream gets instead of its answer.
pub type Admit<'a> = &'a mut dyn FnMut(u64) -> Result<(), Refusal>;

/// Admits every stream: for the calls that read no new input (deadlines, the drain, the
/// end of input), where no stream can arrive: [`Http2::receive`] takes in every stream
/// its bytes open before it returns.
fn admit_all(_: u64) -> Result<(), Refusal> {
    Ok(())
}

/// Streams open at once on one connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const MAX_STREAMS: u32 = 100;
/// Streams over one connection's life; then a graceful `GOAWAY`.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1000;
/// Streams the client may reset before their answer; then `GOAWAY ENHANCE_YOUR_CALM`.
pub const MAX_UNANSWERED_RESETS: u32 = 100;
/// A stream's receive window (`SETTINGS_INITIAL_WINDOW_SIZE`).
pub const STREAM_WINDOW: u32 = 64 * 1024;
/// Largest decoded header block (`SETTINGS_MAX_HEADER_LIST_SIZE`).
pub const MAX_HEADER_LIST: u32 = 16 * 1024;

/// The client preface that opens an HTTP/2 connection with prior knowledge (RFC 9113 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `first` (a plain connection's first bytes) can be the start of the HTTP/2
/// preface.
pub fn starts_preface(first: &[u8]) -> bool {
    let n = first.len().min(PREFACE.len());
    n > 0 && first[..n] == PREFACE[..n]
}

/// How much input is handed to the connection at a time: a frame of the default maximum
/// size and its header.
const FEED: usize = 16 * 1024 + 9;

/// Rounds of reading, answering and sending per call: each round moves what the last one
/// made possible; a call ends once a round moves nothing.
const ROUNDS: usize = 8;

enum State {
    /// The preface and SETTINGS are being exchanged.
    Starting(Handshake<Pipe, Bytes>),
    Open(Connection<Pipe, Bytes>),
    /// The connection ended (its GOAWAY, if any, is in the output).
    Ended,
    /// Ended, and its GOAWAY sent with the write side shut: what the client still sends
    /// is read and dropped until it closes or this time passes, so that a close with
    /// unread input (a reset) cannot destroy the GOAWAY before the client reads it.
    Lingering(u64),
}

/// One client's HTTP/2 connection and its streams.
pub struct Http2 {
    pipe: Pipe,
    state: State,
    streams: Vec<Stream>,
    /// Each stream's request written as HTTP/1.1, reused.
    scratch: Vec<u8>,
    /// While no stream is open: when the connection is closed.
    idle_until: u64,
    opened: u32,
    unanswered_resets: u32,
    going_away: bool,
    /// In a drain: when this connection's GOAWAY goes out (a time of the drain window, as
    /// a WebSocket's Close gets one, so that a drain does not turn every client away at
    /// once); `NO_DEADLINE` outside a drain.
    goaway_at: u64,
    /// Proxy mode: the streams' upstreams and who they are for.
    proxy: Option<Box<ProxySide>>,
    /// The client's socket has not taken all output: the upstreams are not read meanwhile
    /// (what they send could not go anywhere).
    output_waits: bool,
}

/// Proxy mode: what an HTTP/2 connection needs to open and feed its streams' upstreams.
pub struct ProxySide {
    /// The reactor's key of the client's connection, which owns the upstream sockets.
    pub owner: usize,
    /// The client as the upstreams see it (forwarding headers, PROXY v2).
    pub peers: Peers,
    /// Each stream's fresh `Sec-WebSocket-Key`.
    keys: Keys,
    /// The upstreams' bytes are read into this.
    buffer: Box<[u8]>,
}

/// Bytes read from an upstream at a time (a frame's worth of DATA).
const UPSTREAM_READ: usize = 16 * 1024;

impl ProxySide {
    /// For the connection the backend knows as `owner`, from the client `peers` names.
    pub fn new(owner: usize, peers: Peers) -> Box<ProxySide> {
        Box::new(ProxySide {
            owner,
            peers,
            keys: Keys::default(),
            buffer: vec![0; UPSTREAM_READ].into_boxed_slice(),
        })
    }
}

const NO_DEADLINE: u64 = u64::MAX;

impl Http2 {
    /// The connection of a client that is known to speak HTTP/2 (ALPN `h2`, or the preface
    /// on a `--h2c` listener), at `now`; in proxy mode with what its streams' upstreams
    /// need.
    pub fn new(cx: &Ctx<'_>, proxy: Option<Box<ProxySide>>) -> Box<Http2> {
        let pipe = Pipe::default();
        let state = State::Starting(
            h2::server::Builder::new()
                .enable_connect_protocol()
                .max_concurrent_streams(MAX_STREAMS)
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(STREAM_WINDOW * MAX_STREAMS)
                .max_header_list_size(MAX_HEADER_LIST)
                .max_send_buffer_size(stream::MAX_UNSENT)
                .handshake(pipe.clone()),
        );
        Box::new(Http2 {
            pipe,
            state,
            streams: Vec::new(),
            scratch: Vec::new(),
            idle_until: cx.now.saturating_add(cx.config.handshake_timeout_ms),
            opened: 0,
            unanswered_resets: 0,
            going_away: false,
            goaway_at: NO_DEADLINE,
            proxy,
            output_waits: false,
        })
    }

    /// Proxy mode: what its streams' upstreams need.
    pub fn proxy_side(&self) -> Option<&ProxySide> {
        self.proxy.as_deref()
    }

    /// Whether the client's socket has not taken all output yet (the upstreams are not
    /// read meanwhile).
    pub fn set_output_waiting(&mut self, waits: bool) {
        self.output_waits = waits;
    }

    /// Proxy mode: whether a stream waits for an upstream connection.
    pub fn wants_upstreams(&self) -> bool {
        self.streams.iter().any(Stream::wants_upstream)
    }

    /// Proxy mode: whether a stream's upstream failed before answering, and the next is
    /// to be tried.
    pub fn retries_upstreams(&self) -> bool {
        self.streams.iter().any(Stream::retries_upstream)
    }

    /// Proxy mode: `open` gives each stream waiting for one its upstream connection, or
    /// its refusal; [`Http2::relay`] then carries the answers.
    pub fn open_upstreams(&mut self, open: Open<'_>, now: u64, linger_ms: u64) {
        for stream in self.streams.iter_mut().filter(|s| s.wants_upstream()) {
            stream.open_upstream(open, now, linger_ms);
        }
    }

    /// Proxy mode: each stream whose wait for an upstream with room ran out by `now` gets
    /// `refuse`'s answer.
    pub fn refuse_overdue_waits(&mut self, refuse: Open<'_>, now: u64, linger_ms: u64) {
        let overdue = |s: &&mut Stream| s.wants_upstream() && s.waited_out(now);
        for stream in self.streams.iter_mut().filter(overdue) {
            stream.open_upstream(refuse, now, linger_ms);
        }
    }

    /// Proxy mode: moves the streams' bytes to and from their upstreams (after the
    /// upstreams' sockets were reported ready, and after every other call).
    pub fn relay(&mut self, cx: &mut Ctx<'_>, io: &mut dyn Sockets) -> Next {
        match self.state {
            State::Lingering(_) => Next::Continue,
            _ => self.drive(cx, &mut admit_all, io),
        }
    }

    /// Bytes from the client, handed in a frame's worth at a time: the connection reads
    /// all it is given, so the pipe never holds more than [`FEED`] (a large read kept whole
    /// would leave the allocator's heap fragmented behind it).
    pub fn receive(
        &mut self,
        bytes: &[u8],
        cx: &mut Ctx<'_>,
        admit: Admit<'_>,
        io: &mut dyn Sockets,
    ) -> Next {
        if bytes.is_empty() {
            // The TLS handshake just ended: the server's SETTINGS go out with its last flight.
            return match self.state {
                State::Lingering(_) => Next::Continue,
                _ => self.drive(cx, admit, io),
            };
        }
        for chunk in bytes.chunks(FEED) {
            if let State::Lingering(_) = self.state {
                return Next::Continue;
            }
            self.pipe.push(chunk);
            let next = self.drive(cx, admit, io);
            if next != Next::Continue {
                return next;
            }
        }
        Next::Continue
    }

    /// The client closed its side. Everything it sent was read (and its streams admitted)
    /// as it came: what is left to do is answer and end.
    pub fn on_eof(&mut self, cx: &mut Ctx<'_>, io: &mut dyn Sockets) -> Next {
        self.pipe.close_input();
        let _ = self.drive(cx, &mut admit_all, io);
        self.close(cx.stats, io);
        Next::Close
    }

    /// The socket closes, for any reason: streams without an answer were abandoned, and
    /// the streams' upstreams are reset.
    pub fn close(&mut self, stats: &Counters, io: &mut dyn Sockets) {
        for stream in &mut self.streams {
            stream.on_connection_closed(io, stats);
        }
        self.streams.clear();
        if !matches!(self.state, State::Lingering(_)) {
            self.state = State::Ended;
        }
    }

    /// When [`Http2::on_timeout`] is due.
    pub fn deadline(&self, send_timeout_ms: u64) -> Option<u64> {
        if let State::Lingering(until) = self.state {
            return Some(until);
        }
        let goaway = (!self.going_away && self.goaway_at != NO_DEADLINE).then_some(self.goaway_at);
        let streams = self
            .streams
            .iter()
            .filter_map(|s| s.deadline(send_timeout_ms))
            .min();
        let own = match self.streams.is_empty() {
            true => Some(self.idle_until),
            false => streams,
        };
        match (own, goaway) {
            (Some(own), Some(goaway)) => Some(own.min(goaway)),
            (own, goaway) => own.or(goaway),
        }
    }

    /// A deadline passed: the streams' are carried out; a connection with no stream left
    /// since `--handshake-timeout-ms` is closed with `GOAWAY`.
    pub fn on_timeout(&mut self, cx: &mut Ctx<'_>, io: &mut dyn Sockets) -> Next {
        if let State::Lingering(until) = self.state {
            return match cx.now >= until {
                true => Next::Close,
                false => Next::Continue,
            };
        }
        if !self.going_away && cx.now >= self.goaway_at {
            self.go_away();
        }
        let send_timeout = cx.config.send_timeout_ms;
        for stream in &mut self.streams {
            if stream.deadline(send_timeout).is_some_and(|at| at <= cx.now) {
                stream.on_timeout(cx);
            }
        }
        if self.streams.is_empty() && cx.now >= self.idle_until {
            match &mut self.state {
                State::Open(conn) => conn.abrupt_shutdown(Reason::NO_ERROR),
                // The preface or SETTINGS never came: nothing to say.
                _ => self.state = State::Ended,
            }
        }
        self.drive(cx, &mut admit_all, io)
    }

    /// The server drains: `GOAWAY` (no new stream) at a time `close_at` gives the
    /// connection (at once without a WebSocket open), and each open WebSocket its Close at
    /// the time `close_at` gives it.
    pub fn on_shutdown(
        &mut self,
        mut close_at: impl FnMut() -> (u64, CloseCode),
        cx: &mut Ctx<'_>,
        io: &mut dyn Sockets,
    ) -> Next {
        if self.goaway_at == NO_DEADLINE {
            self.goaway_at = match self.streams.iter().any(|s| s.is_open()) {
                true => close_at().0,
                false => cx.now,
            };
        }
        if !self.going_away && cx.now >= self.goaway_at {
            self.go_away();
        }
        for stream in self.streams.iter_mut().filter(|s| s.is_open()) {
            let (at, code) = close_at();
            stream.on_shutdown(at, code, cx);
        }
        self.drive(cx, &mut admit_all, io)
    }

    /// A graceful `GOAWAY`: no stream past those open; the connection ends with its last.
    fn go_away(&mut self) {
        self.going_away = true;
        match &mut self.state {
            State::Open(conn) => conn.graceful_shutdown(),
            State::Starting(_) => self.state = State::Ended,
            State::Ended | State::Lingering(_) => {}
        }
    }

    /// Polls the connection and its streams until nothing moves; their output is appended
    /// to `cx.out`. [`Next::Close`] once the connection has ended.
    fn drive(&mut self, cx: &mut Ctx<'_>, admit: Admit<'_>, io: &mut dyn Sockets) -> Next {
        let mut task = Context::from_waker(Waker::noop());
        let may_read = !self.output_waits;
        for _ in 0..ROUNDS {
            let mut progress = self.poll_connection(&mut task, cx, admit);
            for stream in &mut self.streams {
                progress |= stream.pump(&mut task, cx);
                if let Some(proxy) = self.proxy.as_deref_mut() {
                    progress |= stream.relay(io, may_read, &mut proxy.buffer, cx);
                }
                progress |= stream.flush(cx.now, cx.stats);
            }
            self.retire(cx, io);
            if !progress {
                break;
            }
        }
        // What the streams queued last goes out as frames.
        self.poll_connection(&mut task, cx, admit);
        self.pipe.take_output(cx.out);
        match self.state {
            State::Ended => {
                self.close(cx.stats, io);
                self.pipe.drop_input();
                self.state = State::Lingering(cx.now.saturating_add(cx.config.linger_ms));
                Next::HalfClose
            }
            _ => Next::Continue,
        }
    }

    /// Moves the connection: frames read and written, new streams taken; false when
    /// nothing came.
    fn poll_connection(
        &mut self,
        task: &mut Context<'_>,
        cx: &mut Ctx<'_>,
        admit: Admit<'_>,
    ) -> bool {
        if let State::Starting(handshake) = &mut self.state {
            match Pin::new(handshake).poll(task) {
                Poll::Pending => return false,
                Poll::Ready(Ok(conn)) => self.state = State::Open(conn),
                Poll::Ready(Err(error)) => {
                    tracing::debug!(%error, "HTTP/2 connection failed to start");
                    self.state = State::Ended;
                    return true;
                }
            }
        }
        let State::Open(conn) = &mut self.state else {
            return false;
        };
        let mut progress = false;
        loop {
            match conn.poll_accept(task) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok((request, mut respond)))) => {
                    progress = true;
                    let (head, recv) = request.into_parts();
                    if let Some(why) = stream::malformed(&head) {
                        // RFC 9113 8.1.1: a malformed request is a stream error, not a
                        // request to answer.
                        tracing::debug!(why, "HTTP/2 request malformed");
                        respond.send_reset(Reason::PROTOCOL_ERROR);
                        continue;
                    }
                    Counters::bump(&cx.stats.h2_streams);
                    self.opened += 1;
                    let admitted = admit(cx.now);
                    let fresh;
                    let key: &[u8] = match self.proxy.as_deref_mut() {
                        Some(proxy) => {
                            fresh = proxy.keys.fresh();
                            &fresh
                        }
                        None => STANDIN_KEY,
                    };
                    let halves = (recv, respond);
                    let stream =
                        Stream::open(&head, halves, (admitted, key), &mut self.scratch, cx);
                    self.streams.push(stream);
                    if self.opened >= MAX_STREAMS_PER_CONNECTION && !self.going_away {
                        self.going_away = true;
                        conn.graceful_shutdown();
                    }
                    // A stream that arrives in a drain before this connection's GOAWAY is
                    // served; it closes with the others.
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(%error, "HTTP/2 connection error");
                    self.state = State::Ended;
                    return true;
                }
                Poll::Ready(None) => {
                    self.state = State::Ended;
                    return true;
                }
            }
        }
        progress
    }

    /// Drops the streams that ended; too many reset before their answer ends the
    /// connection.
    fn retire(&mut self, cx: &Ctx<'_>, io: &mut dyn Sockets) {
        let before = self.streams.len();
        let mut resets = 0;
        self.streams.retain_mut(|s| match s.ended() {
            Ended::No => true,
            Ended::Done => {
                s.release(io);
                false
            }
            Ended::ResetUnanswered => {
                s.release(io);
                resets += 1;
                false
            }
        });
        self.unanswered_resets += resets;
        if self.unanswered_resets > MAX_UNANSWERED_RESETS {
            if let State::Open(conn) = &mut self.state {
                tracing::debug!("HTTP/2: too many streams reset before their answer");
                conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
            }
        }
        if before > 0 && self.streams.is_empty() {
            self.idle_until = cx.now.saturating_add(cx.config.handshake_timeout_ms);
        }
    }
}

#[cfg(test)]
mod tests;
