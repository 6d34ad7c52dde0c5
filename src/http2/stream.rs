//! One HTTP/2 stream carrying one WebSocket (RFC 8441), or one request that is refused.
//!
//! The stream's header block is written as the HTTP/1.1 request it stands for
//! ([`write_http1_request`]: an extended CONNECT with `:protocol` becomes the `GET` with
//! `Upgrade`) and handed to the same [`Conn`] an HTTP/1.1 client has, so that every rule
//! (path, origin, token, subprotocols, version, the status of a refusal) is decided in one
//! place. Its answer comes back as an HTTP/1.1 head, turned into the HTTP/2 response
//! ([`h2_response`]: `200` for a `101`), then its frames as DATA: the stream's end is the
//! socket's FIN, a reset its RST.

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode};
use std::io;
use std::task::{Context, Poll};

use super::upstream::{Open, Upstream};
use crate::conn::frame::CloseCode;
use crate::conn::{Conn, Ctx, Next};
use crate::handshake::Refusal;
use crate::proxy::stream_sockets::Sockets;
use crate::proxy::Link;
use crate::stats::Counters;

/// The key given to the connection for a stream's upgrade served here: RFC 8441 has none
/// (the stream is the proof that the server speaks WebSocket), and its accept value is not
/// sent. A proxied stream gets a fresh one instead, which its upstream's `101` must answer.
pub const STANDIN_KEY: &[u8; 24] = b"dGhlIHNhbXBsZSBub25jZQ==";

/// Output a stream may hold for a client whose window is closed: past this its input is
/// not read (its own window closes in turn); other streams are not held up.
pub(super) const MAX_UNSENT: usize = 64 * 1024;

const NO_DEADLINE: u64 = u64::MAX;

/// Headers of the connection's HTTP/1.1 answer that HTTP/2 does not carry (RFC 9113
/// 8.2.2) or that RFC 8441 leaves out.
const NOT_CARRIED: [&str; 7] = [
    "connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "sec-websocket-accept",
];

/// Headers of the client's request that the HTTP/1.1 form writes itself, or that HTTP/2
/// frames itself (the body's length).
const NOT_PASSED: [&str; 4] = [
    "sec-websocket-key",
    "content-length",
    "transfer-encoding",
    "host",
];

/// Writes `head` (an HTTP/2 request) as the HTTP/1.1 request it stands for into `out`. An
/// extended CONNECT becomes a `GET` with `Upgrade: <:protocol>` and `key` as its
/// `Sec-WebSocket-Key`, so that the connection judges it as it would the classic upgrade;
/// any other request keeps its method, and gets what an HTTP/1.1 client would.
pub fn write_http1_request(head: &http::request::Parts, key: &[u8], out: &mut Vec<u8>) {
    let protocol = head.extensions.get::<h2::ext::Protocol>();
    let uri = &head.uri;
    let target = match (&head.method, protocol) {
        (&Method::CONNECT, None) => uri.authority().map_or("", |a| a.as_str()),
        _ => uri.path_and_query().map_or("/", |p| p.as_str()),
    };
    let method = match protocol {
        Some(_) if head.method == Method::CONNECT => "GET",
        _ => head.method.as_str(),
    };
    for part in [method, " ", target, " HTTP/1.1\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
    let authority = uri.authority();
    if let Some(authority) = authority {
        line(out, b"host", authority.as_str().as_bytes());
    }
    if let (Some(protocol), &Method::CONNECT) = (protocol, &head.method) {
        line(out, b"upgrade", protocol.as_str().as_bytes());
        line(out, b"connection", b"upgrade");
        line(out, b"sec-websocket-key", key);
    }
    for (name, value) in &head.headers {
        let replaced = NOT_PASSED.contains(&name.as_str());
        // Without :authority the request's own Host stands.
        if replaced && !(name == http::header::HOST && authority.is_none()) {
            continue;
        }
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Why a request h2 let through is malformed all the same (RFC 9113 8.2.1, 8.3.1, 8.5),
/// if it is: such a stream is reset, not answered.
pub fn malformed(head: &http::request::Parts) -> Option<&'static str> {
    let padded = |v: &[u8]| {
        let blank = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
        blank(v.first()) || blank(v.last())
    };
    if head.headers.values().any(|v| padded(v.as_bytes())) {
        return Some("a field value starts or ends with whitespace");
    }
    let authority = head.uri.authority().map(|a| a.as_str());
    let host = head.headers.get(http::header::HOST).map(|h| h.as_bytes());
    if let (Some(authority), Some(host)) = (authority, host) {
        if authority.as_bytes() != host {
            return Some("Host differs from :authority");
        }
    }
    let extended = head.extensions.get::<h2::ext::Protocol>().is_some();
    if head.method == Method::CONNECT && !extended && authority.is_none() {
        return Some("CONNECT without :authority");
    }
    None
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The connection's HTTP/1.1 answer head at the start of `answer`, as an HTTP/2 response,
/// with the head's length; `None` while the head is incomplete. `101` becomes `200`;
/// headers HTTP/2 does not carry are left out.
pub fn h2_response(answer: &[u8]) -> Option<Result<(Response<()>, usize), ()>> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut slots);
    let head_len = match parsed.parse(answer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Err(())),
    };
    let status = match parsed.code {
        Some(101) => StatusCode::OK,
        Some(code) => match StatusCode::from_u16(code) {
            Ok(status) => status,
            Err(_) => return Some(Err(())),
        },
        None => return Some(Err(())),
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    for header in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(header.name.as_bytes()) else {
            continue;
        };
        if NOT_CARRIED.contains(&name.as_str()) {
            continue;
        }
        if let Ok(value) = HeaderValue::from_bytes(header.value) {
            response.headers_mut().append(name, value);
        }
    }
    Some(Ok((response, head_len)))
}

/// Where the stream's answer stands.
enum Reply {
    /// Not answered yet.
    Head(SendResponse<Bytes>),
    /// Answered: its body (the WebSocket's frames) goes here.
    Body(SendStream<Bytes>),
    /// Reset, or the answer failed.
    Gone,
}

/// How a stream ended, for the connection's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// Still open.
    No,
    /// Both sides ended it, or it was reset after its answer.
    Done,
    /// The client reset it before it was answered (the rapid-reset pattern when repeated).
    ResetUnanswered,
}

/// Proxy mode: where the stream's upstream stands.
enum Proxied {
    /// Served here (echo, close), or its upstream is done with.
    No,
    /// Its request is valid and waits for the driver to open an upstream connection; the
    /// last one tried failed with this, if one did.
    Wanted(Option<Box<(Link, io::Error)>>),
    Open(Box<Upstream>),
}

/// One stream: its connection, its two halves, and the output the client's window has not
/// taken yet.
pub(super) struct Stream {
    conn: Conn,
    recv: RecvStream,
    reply: Reply,
    /// The connection's output not sent yet: its HTTP/1.1 head until answered, then frames
    /// (or, proxied, the upstream's bytes).
    unsent: Vec<u8>,
    /// The connection has said all it will: END_STREAM once `unsent` is out.
    ends: bool,
    /// END_STREAM sent.
    ended_here: bool,
    /// END_STREAM received.
    ended_there: bool,
    /// Once ended here: when the stream is reset unless the client ends it too.
    linger_until: u64,
    /// Output waits for the client's window since then (`--send-timeout-ms` bounds it).
    stalled_since: Option<u64>,
    ended: Ended,
    proxied: Proxied,
    /// Upstreams tried for it (proxy mode).
    attempts: usize,
}

impl Stream {
    /// A stream whose header block `head` arrived at `cx.now`: its connection judges it at
    /// once (written as HTTP/1.1 with `key` into `scratch`), unless admission control
    /// refused it (`admitted`), when it gets that refusal.
    pub fn open(
        head: &http::request::Parts,
        (recv, respond): (RecvStream, SendResponse<Bytes>),
        (admitted, key): (Result<(), Refusal>, &[u8]),
        scratch: &mut Vec<u8>,
        cx: &mut Ctx<'_>,
    ) -> Stream {
        let mut stream = Stream {
            conn: Conn::new(cx.config, cx.now),
            recv,
            reply: Reply::Head(respond),
            unsent: Vec::new(),
            ends: false,
            ended_here: false,
            ended_there: false,
            linger_until: NO_DEADLINE,
            stalled_since: None,
            ended: Ended::No,
            proxied: Proxied::No,
            attempts: 0,
        };
        let next = match admitted {
            Ok(()) => {
                scratch.clear();
                write_http1_request(head, key, scratch);
                stream.with_cx(cx, |conn, cx| conn.on_data(scratch, cx))
            }
            // Refused as a new connection would be, without its request read.
            Err(refusal) => stream.with_cx(cx, |conn, cx| conn.refuse(refusal, cx)),
        };
        stream.after(next, cx.now, cx.config.linger_ms);
        stream
    }

    /// Runs `call` on the stream's connection with its output going to `unsent`.
    fn with_cx(
        &mut self,
        cx: &mut Ctx<'_>,
        call: impl FnOnce(&mut Conn, &mut Ctx<'_>) -> Next,
    ) -> Next {
        let mut own = Ctx {
            config: cx.config,
            now: cx.now,
            out: &mut self.unsent,
            stats: cx.stats,
        };
        call(&mut self.conn, &mut own)
    }

    fn after(&mut self, next: Next, now: u64, linger_ms: u64) {
        match next {
            Next::Continue => {}
            Next::Proxy => self.proxied = Proxied::Wanted(None),
            // The upstream's 101 is in `unsent`, to become the stream's 200.
            Next::Relay => {}
            Next::Close | Next::HalfClose => {
                if let Proxied::Wanted(_) = self.proxied {
                    self.proxied = Proxied::No;
                }
                self.end_here(now, linger_ms);
            }
        }
    }

    /// The stream's side ends (END_STREAM once `unsent` is out); the client is given the
    /// linger to end its own.
    fn end_here(&mut self, now: u64, linger_ms: u64) {
        if !self.ends {
            self.ends = true;
            self.linger_until = now.saturating_add(linger_ms);
        }
    }

    /// How the stream ended, if it did.
    pub fn ended(&self) -> Ended {
        self.ended
    }

    /// When [`Stream::on_timeout`] is due.
    pub fn deadline(&self, send_timeout_ms: u64) -> Option<u64> {
        let stalled = self
            .stalled_since
            .map_or(NO_DEADLINE, |at| at.saturating_add(send_timeout_ms));
        let own = self.conn.deadline().unwrap_or(NO_DEADLINE);
        let at = own.min(stalled).min(self.linger_until);
        (at != NO_DEADLINE).then_some(at)
    }

    /// Reads what the client sent on the stream into its connection (proxied: toward its
    /// upstream); false when nothing came. Not while its output waits for the client's
    /// window: that closes the stream's own window (back-pressure per stream); proxied,
    /// not before the relay began, nor while the upstream has not taken the last DATA.
    pub fn pump(&mut self, task: &mut Context<'_>, cx: &mut Ctx<'_>) -> bool {
        let mut progress = false;
        while self.ended == Ended::No && !self.ended_there && self.unsent.len() < MAX_UNSENT {
            let toward_upstream = match &mut self.proxied {
                Proxied::Wanted(_) => break,
                // After the upstream's FIN its socket still reads: the client may go on.
                Proxied::Open(_) if !self.conn.is_relaying() => break,
                Proxied::Open(upstream) if !upstream.toward.is_empty() => break,
                Proxied::Open(upstream) => Some(upstream),
                Proxied::No => None,
            };
            match self.recv.poll_data(task) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(data))) => {
                    progress = true;
                    if let Some(upstream) = toward_upstream {
                        // Its capacity goes back to the client as the upstream takes it.
                        upstream.toward.extend_from_slice(&data);
                        continue;
                    }
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if self.ends {
                        continue;
                    }
                    let next = self.with_cx(cx, |conn, cx| conn.on_data(&data, cx));
                    self.after(next, cx.now, cx.config.linger_ms);
                }
                Poll::Ready(None) => {
                    progress = true;
                    self.ended_there = true;
                    if let Some(upstream) = toward_upstream {
                        upstream.fin_owed = true;
                    } else if !self.ends {
                        let next = self.with_cx(cx, |conn, cx| conn.on_eof(cx));
                        self.after(next, cx.now, cx.config.linger_ms);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    progress = true;
                    self.reset_by_peer(&error, cx.stats);
                }
            }
        }
        progress
    }

    fn reset_by_peer(&mut self, error: &h2::Error, stats: &Counters) {
        tracing::debug!(%error, "HTTP/2 stream ended by the client");
        self.ended = match self.reply {
            Reply::Head(_) => Ended::ResetUnanswered,
            _ => Ended::Done,
        };
        self.reply = Reply::Gone;
        self.conn.on_closed(stats);
    }

    /// Proxy mode: whether the stream waits for an upstream connection, and how many it
    /// tried.
    pub fn wants_upstream(&self) -> bool {
        self.ended == Ended::No && matches!(self.proxied, Proxied::Wanted(_))
    }

    /// Proxy mode: whether it waited for an upstream with room until its wait ran out.
    pub fn waited_out(&self, now: u64) -> bool {
        self.conn.is_queued() && self.conn.deadline().is_some_and(|at| at <= now)
    }

    /// Proxy mode: whether its upstream failed before answering (the next is to be tried).
    pub fn retries_upstream(&self) -> bool {
        self.ended == Ended::No && matches!(self.proxied, Proxied::Wanted(Some(_)))
    }

    /// Proxy mode: `open` gives the stream the upstream connection it waits for, or its
    /// refusal (502, 503).
    pub fn open_upstream(&mut self, open: Open<'_>, now: u64, linger_ms: u64) {
        let Proxied::Wanted(failed) = std::mem::replace(&mut self.proxied, Proxied::No) else {
            return;
        };
        match open(
            &mut self.conn,
            self.attempts,
            failed.map(|f| *f),
            &mut self.unsent,
        ) {
            Ok(opened) => {
                self.attempts = opened.link.attempts;
                self.proxied = Proxied::Open(Box::new(Upstream::new(opened)));
            }
            // No upstream has room yet: the request waits, queued, under its deadline.
            Err(Next::Continue) if self.conn.is_queued() => self.proxied = Proxied::Wanted(None),
            Err(next) => self.after(next, now, linger_ms),
        }
    }

    /// Proxy mode: moves bytes between the stream and its upstream socket (read from it
    /// only while `may_read`: the client's socket has taken its output); false when
    /// nothing moved. The upstream's answer is judged by the connection first.
    pub fn relay(
        &mut self,
        io: &mut dyn Sockets,
        may_read: bool,
        buffer: &mut [u8],
        cx: &mut Ctx<'_>,
    ) -> bool {
        if self.ended != Ended::No {
            return false;
        }
        let mut upstream = match std::mem::replace(&mut self.proxied, Proxied::No) {
            Proxied::Open(upstream) => upstream,
            other => {
                self.proxied = other;
                return false;
            }
        };
        let moved = self.relay_with(&mut upstream, io, may_read, buffer, cx);
        if let Some(lease) = upstream.link.lease() {
            self.conn
                .report_upstream(lease, cx.now, cx.config.proxy.fall());
        }
        match moved {
            Err(error) => {
                self.upstream_broke(upstream, error, io, cx);
                true
            }
            Ok(progress) => {
                if self.ends && !upstream.ended && !self.conn.is_relaying() {
                    // Refused, failed or timed out (the answer is in `unsent`), or the
                    // relay was ended at the edge (idle, drain): the upstream side is done.
                    io.close(upstream.id, !upstream.relaying);
                } else {
                    self.proxied = Proxied::Open(upstream);
                }
                progress
            }
        }
    }

    fn relay_with(
        &mut self,
        upstream: &mut Upstream,
        io: &mut dyn Sockets,
        may_read: bool,
        buffer: &mut [u8],
        cx: &mut Ctx<'_>,
    ) -> io::Result<bool> {
        let mut progress = false;
        if !upstream.toward.is_empty() {
            let n = io.send(upstream.id, &upstream.toward)?;
            if n > 0 {
                progress = true;
                upstream.toward.drain(..n);
                let request = n.min(upstream.request_left);
                upstream.request_left -= request;
                let data = n - request;
                if data > 0 {
                    let _ = self.recv.flow_control().release_capacity(data);
                    self.conn.on_relayed(cx);
                }
                if !upstream.link.confirmed {
                    upstream.link.confirmed = true;
                    self.conn.on_upstream_connected(cx);
                }
                if upstream.toward.is_empty() {
                    upstream.toward = Vec::new();
                }
            }
        }
        if upstream.fin_owed && !upstream.fin_sent && upstream.toward.is_empty() {
            upstream.fin_sent = true;
            io.shut_write(upstream.id);
        }
        while may_read && !upstream.ended && !self.ends && self.unsent.len() < MAX_UNSENT {
            let room = (MAX_UNSENT - self.unsent.len()).min(buffer.len());
            let n = match io.receive(upstream.id, &mut buffer[..room]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            progress = true;
            upstream.answered = true;
            if n == 0 {
                upstream.ended = true;
                if upstream.relaying {
                    // The upstream's FIN is the stream's END_STREAM.
                    self.end_here(cx.now, cx.config.linger_ms);
                } else {
                    let next = self.with_cx(cx, |conn, cx| conn.on_upstream_eof(cx));
                    self.after(next, cx.now, cx.config.linger_ms);
                }
                break;
            }
            let data = &buffer[..n];
            if upstream.relaying {
                self.unsent.extend_from_slice(data);
                self.conn.on_relayed(cx);
                continue;
            }
            let next = self.with_cx(cx, |conn, cx| conn.on_upstream_data(data, cx));
            self.after(next, cx.now, cx.config.linger_ms);
            if next == Next::Relay {
                upstream.relaying = true;
                if let Some(lease) = upstream.link.lease() {
                    lease.answered();
                }
                // The client's DATA is not read before the answer: nothing was held.
                drop(self.conn.take_held_client_bytes());
            }
        }
        Ok(progress)
    }

    /// Proxy mode: the upstream socket failed. Before any answer the next upstream is
    /// tried (the driver counts the failure against this one); in the relay the stream is
    /// reset, as a relayed socket's survivor is.
    fn upstream_broke(
        &mut self,
        upstream: Box<Upstream>,
        error: io::Error,
        io: &mut dyn Sockets,
        cx: &mut Ctx<'_>,
    ) {
        io.close(upstream.id, true);
        if upstream.relaying {
            tracing::debug!(%error, "HTTP/2 stream: upstream reset");
            self.reset(Reason::CANCEL, cx.stats);
        } else if upstream.answered {
            let next = self.with_cx(cx, |conn, cx| conn.on_upstream_failed(cx));
            self.after(next, cx.now, cx.config.linger_ms);
        } else {
            self.proxied = Proxied::Wanted(Some(Box::new((upstream.link, error))));
        }
    }

    /// Proxy mode: closes the stream's upstream socket, if it has one (with a RST when
    /// `reset`, or when it was abandoned before its relay: a RST spares the edge a port in
    /// TIME_WAIT, as for a relayed client).
    fn close_upstream(&mut self, io: &mut dyn Sockets, reset: bool) {
        if let Proxied::Open(upstream) = std::mem::replace(&mut self.proxied, Proxied::No) {
            io.close(upstream.id, reset || !upstream.relaying);
        }
    }

    /// The stream is retired: its upstream socket goes with it (reset unless both sides
    /// ended it).
    pub fn release(&mut self, io: &mut dyn Sockets) {
        let clean = self.ended_here && self.ended_there;
        self.close_upstream(io, !clean);
    }

    /// Sends what the connection wrote, as far as the client's window allows; false when
    /// nothing moved.
    pub fn flush(&mut self, now: u64, stats: &Counters) -> bool {
        let mut progress = false;
        if let Reply::Head(respond) = &mut self.reply {
            let (response, head_len) = match h2_response(&self.unsent) {
                None => return false,
                Some(Ok(answer)) => answer,
                Some(Err(())) => {
                    // The connection's own answer (or the upstream's checked 101) did not
                    // parse here: said as what it is.
                    tracing::warn!("HTTP/2 stream: the answer head did not parse");
                    respond.send_reset(Reason::INTERNAL_ERROR);
                    return self.gone(stats);
                }
            };
            self.unsent.drain(..head_len);
            let empty = self.ends && self.unsent.is_empty();
            match respond.send_response(response, empty) {
                Ok(body) => self.reply = Reply::Body(body),
                Err(_) => return self.gone(stats),
            }
            self.ended_here = empty;
            progress = true;
        }
        let Reply::Body(body) = &mut self.reply else {
            return progress;
        };
        if !self.unsent.is_empty() {
            body.reserve_capacity(self.unsent.len());
            let n = body.capacity().min(self.unsent.len());
            if n > 0 {
                let last = self.ends && n == self.unsent.len();
                let chunk = Bytes::copy_from_slice(&self.unsent[..n]);
                if body.send_data(chunk, last).is_err() {
                    return self.gone(stats);
                }
                self.unsent.drain(..n);
                if self.unsent.is_empty() {
                    self.unsent = Vec::new();
                }
                self.ended_here = last;
                self.stalled_since = None;
                progress = true;
            } else if self.stalled_since.is_none() {
                self.stalled_since = Some(now);
            }
        } else if self.ends && !self.ended_here {
            if body.send_data(Bytes::new(), true).is_err() {
                return self.gone(stats);
            }
            self.ended_here = true;
            progress = true;
        }
        if self.ended_here && self.ended_there && self.ended == Ended::No {
            self.ended = Ended::Done;
            self.conn.on_closed(stats);
        }
        progress
    }

    fn gone(&mut self, stats: &Counters) -> bool {
        self.reply = Reply::Gone;
        self.ended = Ended::Done;
        self.conn.on_closed(stats);
        true
    }

    /// Resets the stream (the connection is done with it, or it is past a deadline).
    fn reset(&mut self, reason: Reason, stats: &Counters) {
        match std::mem::replace(&mut self.reply, Reply::Gone) {
            Reply::Head(mut respond) => respond.send_reset(reason),
            Reply::Body(mut body) => body.send_reset(reason),
            Reply::Gone => {}
        }
        self.ended = Ended::Done;
        self.conn.on_closed(stats);
    }

    /// A deadline of the stream's passed: the lingering end or a stalled output resets it;
    /// the connection's own (idle, close, drain, the upstream's answer) is carried out by
    /// the connection.
    pub fn on_timeout(&mut self, cx: &mut Ctx<'_>) {
        let now = cx.now;
        if now >= self.linger_until {
            return self.reset(Reason::CANCEL, cx.stats);
        }
        let stalled_until = self
            .stalled_since
            .map(|at| at.saturating_add(cx.config.send_timeout_ms));
        if stalled_until.is_some_and(|at| now >= at) {
            Counters::bump(&cx.stats.send_timeouts);
            return self.reset(Reason::CANCEL, cx.stats);
        }
        if self.conn.deadline().is_some_and(|at| now >= at) && !self.ends {
            let next = self.with_cx(cx, |conn, cx| conn.on_timeout(cx));
            self.after(next, now, cx.config.linger_ms);
        }
    }

    /// The server drains: an open WebSocket gets its Close at `close_at` (a relayed one
    /// its END_STREAM then, as a relayed socket gets its FIN).
    pub fn on_shutdown(&mut self, close_at: u64, code: CloseCode, cx: &mut Ctx<'_>) {
        if self.ends {
            return;
        }
        let next = self.with_cx(cx, |conn, cx| conn.on_shutdown(close_at, code, cx));
        self.after(next, cx.now, cx.config.linger_ms);
    }

    /// Whether the stream's WebSocket is open (a drain gives it its close time).
    pub fn is_open(&self) -> bool {
        self.conn.is_open() && !self.ends
    }

    /// The connection under it ends: a stream without its answer was abandoned.
    pub fn on_connection_closed(&mut self, io: &mut dyn Sockets, stats: &Counters) {
        self.close_upstream(io, true);
        if self.ended == Ended::No {
            self.ended = Ended::Done;
            self.conn.on_closed(stats);
        }
    }
}
