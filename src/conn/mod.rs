//! The per-connection state machine, with no I/O.
//!
//! A backend reads bytes and hands them to [`Conn::on_data`] with the current time; the
//! connection appends what must be sent to the caller's output buffer and answers with a
//! [`Next`] telling the backend what to do with the socket. The backend asks
//! [`Conn::deadline`] after every call and arms its timer wheel accordingly, calling
//! [`Conn::on_timeout`] when it fires. Both the epoll and the io_uring backends drive this
//! same code, so they cannot disagree on protocol behaviour.
//!
//! # Proxy mode
//! With [`AfterUpgrade::Proxy`] a valid request is not answered: [`Next::Proxy`] asks the
//! backend for an upstream connection, [`Conn::write_upstream_request`] gives it the bytes
//! to send there, and [`Conn::on_upstream_data`] judges the upstream's answer ([`Next::Relay`]
//! for a good 101). From then on the backend moves the bytes itself and reports activity
//! with [`Conn::on_relayed`]; the connection keeps the deadlines (connect, answer, idle,
//! drain) and decides every status the client gets (502, 504, a refusal passed through).
//!
//! # Buffers
//! Input is processed straight from the backend's buffer; only an incomplete request or
//! frame is copied into the connection, and that copy is freed once consumed. An idle
//! upgraded connection therefore owns no heap memory at all.

pub mod frame;
mod utf8;

use std::mem;

use crate::handshake::{
    parse_request, write_rejection, write_switching_protocols, Answer, HttpRequest, Parse, Policy,
    Refusal, Rejection, ResponseCheck, ResponseError, MAX_RESPONSE_LEN,
};
use crate::proxy::chunked::{self, ChunkedEnd};
use crate::proxy::health::Failure;
use crate::proxy::http::{answer_head, write_client_answer_head, AnswerHead, BodyEnd};
use crate::proxy::{
    answer_length, check_upstream_response, sticky, write_upstream_request, AnswerLength,
    Forwarded, Lease, Peers, ProxyConfig, Upstreams, MAX_PASSED_ANSWER_BYTES,
};
use crate::stats::Counters;
use frame::{
    close_frame, parse_client_header, unmask_into, write_close, write_server_header, CloseCode,
    HeaderParse, OpCode,
};

/// What an upgraded connection does (`--after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AfterUpgrade {
    /// Send Close (1000) in the same write as the 101, then close: handshake benchmarks.
    Close,
    /// Echo every message back: a conforming RFC 6455 endpoint.
    Echo,
    /// Forward the validated request to an upstream app server and relay its answer, then
    /// the bytes both ways (the proxy module).
    Proxy,
}

/// What an upstream did for one client, as its health counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// It answered with a valid 101: once per client, not per relayed byte, so that live
    /// relays cannot hide failed health checks.
    Served,
    /// It failed the client.
    Failed(Failure),
}

/// Settings shared by every connection of a server.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// What a valid handshake must satisfy.
    pub policy: Policy,
    /// Behaviour after the 101.
    pub after: AfterUpgrade,
    /// Time from accept to a complete request, in ms.
    pub handshake_timeout_ms: u64,
    /// Plain connections that open with the HTTP/2 preface speak HTTP/2 (`--h2c`).
    pub h2c: bool,
    /// How long a TLS client is taken to wait for its answer (`--client-patience`): one
    /// that has waited so long that its handshake would end later is shed before its key
    /// exchange.
    pub client_patience_ms: u64,
    /// Time an upgraded connection may stay silent, in ms; 0 disables.
    pub idle_timeout_ms: u64,
    /// How long output may wait for a client that takes none of it, in ms.
    pub send_timeout_ms: u64,
    /// Largest message (after reassembly) accepted in echo mode.
    pub max_message_bytes: usize,
    /// How long a closing connection waits for the peer's FIN or Close, in ms.
    pub linger_ms: u64,
    /// Upstreams and their timeouts, for [`AfterUpgrade::Proxy`].
    pub proxy: ProxyConfig,
}

/// What the backend must do with the socket after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Next {
    /// Send the output and keep reading.
    Continue,
    /// Send the output, shut down the write side, then read and discard until the peer
    /// closes or the deadline passes: a rejection is never cut short by a reset.
    HalfClose,
    /// Send the output and close the socket.
    Close,
    /// Proxy mode: the request is valid; connect to an upstream, then call
    /// [`Conn::write_upstream_request`]. The client is not read meanwhile.
    Proxy,
    /// Proxy mode: send the output (the upstream's 101) to the client, then relay bytes both
    /// ways, calling [`Conn::on_relayed`] when any move.
    Relay,
}

impl Next {
    /// Whether the stream ends after this output (the transport closes its session then).
    pub fn ends_stream(self) -> bool {
        matches!(self, Next::Close | Next::HalfClose)
    }
}

/// Everything a connection needs from its caller for one event.
pub struct Ctx<'a> {
    /// Server settings.
    pub config: &'a ConnConfig,
    /// Current time in ms (any epoch, monotonic).
    pub now: u64,
    /// Where to append bytes to send.
    pub out: &'a mut Vec<u8>,
    /// The reactor's counters.
    pub stats: &'a Counters,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a complete upgrade request.
    Handshake,
    /// Upgraded, echoing.
    Open,
    /// We sent Close; waiting for the peer's Close (ignoring data) or FIN.
    Closing,
    /// We answered and shut down our side; discarding input until the peer's FIN.
    Lingering,
    /// Proxy mode: waiting for the upstream's connection and answer.
    Upstream,
    /// Proxy mode: the request is valid, and waits at the edge for an upstream to have room
    /// for one more upgrade (`--upstream-max-pending`); nothing was forwarded.
    Queued,
    /// Proxy mode: passing the upstream's refusal (not a 101) through to the client.
    Answering,
    /// Proxy mode: upgraded; the backend relays bytes, the connection keeps the deadline.
    Relaying,
    /// Proxy mode, a plain HTTP request (`--http-path`): the upstream's answer flows to
    /// the client through the relay, until the upstream closes (one request per
    /// connection); the client is not read.
    Exchanging,
    /// Nothing left to do but close.
    Done,
}

const NO_DEADLINE: u64 = u64::MAX;

/// One client connection's protocol state: 24 bytes while it has nothing buffered.
#[derive(Debug)]
pub struct Conn {
    phase: Phase,
    /// Message type of a fragmented message in progress.
    message_opcode: Option<OpCode>,
    /// Set by a drain: the close code to send when the deadline passes.
    drain_code: Option<CloseCode>,
    /// Proxy mode: what the upstream did, for its health (taken by the driver).
    upstream_outcome: Option<UpstreamOutcome>,
    deadline: u64,
    /// Allocated only while something is buffered, freed as soon as nothing is.
    buffers: Option<Box<Buffers>>,
}

#[derive(Debug, Default)]
struct Buffers {
    /// Bytes received but not yet consumed: an incomplete request or frame.
    pending: Vec<u8>,
    /// Payload of a fragmented message, unmasked.
    message: Vec<u8>,
    /// Text: `message[..text_checked]` is whole valid characters (what follows is the start
    /// of one that the next fragment completes).
    text_checked: usize,
    /// Text: payload bytes of the frame still arriving already checked, up to a character
    /// boundary (see [`utf8`]).
    frame_checked: usize,
    /// Proxy mode: the client's request head is `pending[..head_len]`.
    head_len: usize,
    /// Proxy mode: when the client was accepted, for the handshake latency.
    accepted_at: u64,
    /// Proxy mode, answering: bytes of the upstream's refusal still to pass on (at most
    /// [`MAX_PASSED_ANSWER_BYTES`] in all).
    answer_remaining: u64,
    /// Proxy mode, relaying: what the client sent after its request, held back until the
    /// upstream's 101 was checked, for the relay to send first.
    held: Vec<u8>,
    /// Proxy mode: the request is plain HTTP with a body of this many bytes after its head
    /// (`--http-path`), not an upgrade.
    http_body_len: Option<u64>,
    /// A `100 Continue` was sent for the body the client holds back.
    continued: bool,
    /// A chunked request body: its reader and how many of its bytes it has read, while it
    /// arrives; then the decoded body, forwarded with a `Content-Length`.
    chunked: Option<(ChunkedEnd, usize)>,
    decoded_body: Option<Vec<u8>>,
    /// `--sticky-cookie`: the upstream id the answer sets in the client's cookie, and
    /// whether the cookie is `Secure` (the client came over TLS).
    set_cookie: Option<(u64, bool)>,
    /// Exchanging: where the answer's body ends, past the bytes passed with its head, until
    /// the relay takes it ([`Conn::take_answer_end`]).
    answer_end: Option<BodyEnd>,
}

impl Conn {
    /// A connection accepted at `now`.
    pub fn new(config: &ConnConfig, now: u64) -> Self {
        Conn {
            phase: Phase::Handshake,
            message_opcode: None,
            drain_code: None,
            upstream_outcome: None,
            deadline: now.saturating_add(config.handshake_timeout_ms),
            buffers: None,
        }
    }

    fn buffers(&mut self) -> &mut Buffers {
        self.buffers.get_or_insert_with(Box::default)
    }

    /// Frees the buffers once none holds anything.
    fn release_idle_buffers(&mut self) {
        let idle = self.buffers.as_ref().is_some_and(|b| {
            b.pending.is_empty()
                && b.message.is_empty()
                && b.held.is_empty()
                && b.answer_end.is_none()
        }) && self.phase != Phase::Answering;
        if idle {
            self.buffers = None;
        }
    }

    fn has_pending(&self) -> bool {
        self.buffers.as_ref().is_some_and(|b| !b.pending.is_empty())
    }

    fn message_len(&self) -> usize {
        self.buffers.as_ref().map_or(0, |b| b.message.len())
    }

    /// Drops buffered input and any partial message (the connection is past reading them).
    fn drop_input(&mut self) {
        if let Some(buffers) = self.buffers.as_mut() {
            buffers.pending = Vec::new();
            buffers.message = Vec::new();
            buffers.held = Vec::new();
            buffers.text_checked = 0;
            buffers.frame_checked = 0;
        }
        self.message_opcode = None;
        self.release_idle_buffers();
    }

    /// Whether part of a request or frame is held, waiting for the rest.
    pub fn has_input(&self) -> bool {
        self.has_pending()
    }

    /// Whether the connection holds any heap memory (for tests of idle cost).
    pub fn holds_buffers(&self) -> bool {
        self.buffers.is_some()
    }

    /// When [`Conn::on_timeout`] must be called, in the caller's ms clock.
    pub fn deadline(&self) -> Option<u64> {
        (self.deadline != NO_DEADLINE).then_some(self.deadline)
    }

    /// Whether the connection is upgraded and open (echoing or relaying).
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Relaying)
    }

    /// Whether the connection needs its upstream socket (proxy mode): once this turns
    /// false, the backend closes the upstream side.
    pub fn wants_upstream(&self) -> bool {
        matches!(
            self.phase,
            Phase::Upstream
                | Phase::Queued
                | Phase::Answering
                | Phase::Relaying
                | Phase::Exchanging
        )
    }

    /// Proxy mode: whether the upstream's answer is still awaited (or the request waits to
    /// be forwarded).
    pub fn awaits_upstream_answer(&self) -> bool {
        matches!(self.phase, Phase::Upstream | Phase::Queued)
    }

    /// Proxy mode: when the connection was accepted (while its request is kept).
    pub fn accepted_at(&self) -> Option<u64> {
        self.buffers.as_ref().map(|b| b.accepted_at)
    }

    /// Proxy mode: whether the request waits at the edge for an upstream with room.
    pub fn is_queued(&self) -> bool {
        self.phase == Phase::Queued
    }

    /// Proxy mode: no upstream has room for the request now; it waits at the edge until
    /// `until` (then the driver answers 503).
    pub fn queue(&mut self, until: u64) {
        if self.phase == Phase::Upstream {
            self.phase = Phase::Queued;
            self.deadline = until;
        }
    }

    /// Proxy mode: an upstream has room; the request goes on its way, with the connect
    /// timeout from now.
    pub fn unqueue(&mut self, now: u64, config: &ConnConfig) {
        if self.phase == Phase::Queued {
            self.phase = Phase::Upstream;
            self.deadline = now.saturating_add(config.proxy.connect_timeout_ms);
        }
    }

    /// Whether bytes are relayed between client and upstream (proxy mode, after the 101,
    /// or an upstream's answer to a plain HTTP request on its way).
    pub fn is_relaying(&self) -> bool {
        matches!(self.phase, Phase::Relaying | Phase::Exchanging)
    }

    /// Proxy mode: whether what is relayed is one HTTP answer, not a WebSocket: the
    /// client's side is not read, and the upstream's close ends it.
    pub fn is_exchange(&self) -> bool {
        self.phase == Phase::Exchanging
    }

    /// Proxy mode: whether the request waiting for an upstream is plain HTTP
    /// (`--http-path`), not an upgrade.
    pub fn is_http_request(&self) -> bool {
        self.buffers
            .as_ref()
            .is_some_and(|b| b.http_body_len.is_some())
    }

    /// `--sticky-cookie`: the answer to this client sets its cookie to upstream `id`
    /// (`secure`: over TLS); `None` leaves the cookie as the client sent it.
    pub fn set_sticky_cookie(&mut self, cookie: Option<(u64, bool)>) {
        if self.awaits_upstream_answer() {
            self.buffers().set_cookie = cookie;
        }
    }

    /// Whether the connection has said all it will and only waits, for the linger, for the
    /// client to finish (so that late input does not turn the close into a reset).
    pub fn is_lingering(&self) -> bool {
        self.phase == Phase::Lingering
    }

    /// The connection turned out to speak HTTP/2: its WebSockets are streams, each with a
    /// connection of its own (`crate::http2`); this one has nothing left to do or wait for.
    pub fn became_http2(&mut self) {
        self.phase = Phase::Done;
        self.deadline = NO_DEADLINE;
        self.drop_input();
    }

    /// Whether the handshake is still in progress.
    pub fn is_handshaking(&self) -> bool {
        self.phase == Phase::Handshake
    }

    /// Bytes arrived from the peer.
    pub fn on_data(&mut self, data: &[u8], cx: &mut Ctx<'_>) -> Next {
        let next = if !self.has_pending() {
            let (consumed, next) = self.process(data, cx);
            if matches!(next, Next::Continue | Next::Proxy) && consumed < data.len() {
                self.buffers().pending.extend_from_slice(&data[consumed..]);
            }
            next
        } else {
            let mut pending = mem::take(&mut self.buffers().pending);
            pending.extend_from_slice(data);
            let (consumed, next) = self.process(&pending, cx);
            if matches!(next, Next::Continue | Next::Proxy) && consumed < pending.len() {
                pending.drain(..consumed);
                self.buffers().pending = pending;
            }
            next
        };
        self.release_idle_buffers();
        next
    }

    /// The peer closed its side (read returned 0).
    pub fn on_eof(&mut self, cx: &mut Ctx<'_>) -> Next {
        self.on_closed(cx.stats);
        self.finish()
    }

    /// The socket is closing for any reason (the peer reset it, an error, an answer sent): a
    /// handshake that had no outcome yet (no 101, no status, no timeout) was abandoned by the
    /// client, and is counted so. Backends call it once, when they close a connection; it
    /// is idempotent.
    pub fn on_closed(&mut self, stats: &Counters) {
        if matches!(
            self.phase,
            Phase::Handshake | Phase::Upstream | Phase::Queued
        ) {
            if self.phase == Phase::Upstream {
                // Sent on to an upstream, or being: work the app does for no one.
                Counters::bump(&stats.upstream_abandoned_pending);
            }
            Counters::bump(&stats.handshakes_abandoned);
            self.phase = Phase::Done;
            self.deadline = NO_DEADLINE;
        }
    }

    /// Ends a handshake before any of its bytes were read: the connection is shed (counted
    /// once, as that outcome, not as abandoned when it closes).
    pub fn shed(&mut self, stats: &Counters) {
        if self.phase == Phase::Handshake {
            Counters::bump(&stats.shed_before_work);
            self.phase = Phase::Done;
            self.deadline = NO_DEADLINE;
        }
    }

    /// Proxy mode: the client's validated request head, while it waits for an upstream.
    pub fn request_head(&self) -> Option<&[u8]> {
        let buffers = self.buffers.as_ref()?;
        buffers.pending.get(..buffers.head_len)
    }

    /// Proxy mode, for each upstream tried: appends to `cx.out` the request to send it (see
    /// [`write_upstream_request`]), and nothing else.
    ///
    /// # Smuggling
    /// Bytes the client sent after its request are not sent with it: an upstream that refuses
    /// the upgrade and keeps its connection alive would read them as a second request that
    /// no rule of the edge has checked (any path, no token, forged forwarding headers). They
    /// wait until the upstream's 101 has been checked ([`Conn::take_held_client_bytes`]),
    /// and go with the connection on a refusal.
    pub fn write_upstream_request(&mut self, peers: Peers, cx: &mut Ctx<'_>) {
        if self.phase != Phase::Upstream {
            return;
        }
        let forwarding = cx.config.proxy.forwarding;
        let buffers = self.buffers();
        let head_len = buffers.head_len;
        let head = &buffers.pending[..head_len];
        let Some(body_len) = buffers.http_body_len else {
            write_upstream_request(head, peers, forwarding, Forwarded::Upgrade, cx.out);
            return;
        };
        write_upstream_request(
            head,
            peers,
            forwarding,
            Forwarded::Http { body_len },
            cx.out,
        );
        // The body as the edge framed it, and nothing after it (see `crate::proxy::http`).
        if let Some(decoded) = &buffers.decoded_body {
            cx.out.extend_from_slice(decoded);
            return;
        }
        let end = head_len.saturating_add(body_len as usize);
        cx.out
            .extend_from_slice(buffers.pending.get(head_len..end).unwrap_or_default());
        // All is kept until the upstream has answered: the answer is checked against the
        // head, and another upstream may need the same bytes if this one refuses.
    }

    /// Proxy mode, once the relay has started ([`Next::Relay`]): what the client sent after
    /// its request, to send to the upstream before anything the relay reads (empty, with no
    /// allocation, in the usual case).
    pub fn take_held_client_bytes(&mut self) -> Vec<u8> {
        let held = match self.buffers.as_mut() {
            Some(buffers) => mem::take(&mut buffers.held),
            None => Vec::new(),
        };
        self.release_idle_buffers();
        held
    }

    /// Proxy mode: the upstream's connection is established; its answer is now awaited
    /// (bounded by the response timeout).
    pub fn on_upstream_connected(&mut self, cx: &Ctx<'_>) {
        if self.phase == Phase::Upstream {
            let wait = match self.is_http_request() {
                // A long poll is answered when there is something to say.
                true => cx.config.proxy.http_timeout_ms,
                false => cx.config.proxy.response_timeout_ms,
            };
            self.deadline = cx.now.saturating_add(wait);
        }
    }

    /// Proxy mode: bytes from the upstream before the relay starts. A valid 101 is passed
    /// to the client ([`Next::Relay`]); another answer is passed through as it is, and the
    /// connection closes after it; an invalid answer becomes a 502.
    pub fn on_upstream_data(&mut self, data: &[u8], cx: &mut Ctx<'_>) -> Next {
        match self.phase {
            Phase::Upstream if self.is_http_request() => return self.http_answer(data, cx),
            Phase::Upstream => {}
            Phase::Answering => return self.pass_answer(data, cx),
            _ => return Next::Continue,
        }
        // The answer usually comes whole in one read: it is checked where it lies, and copied
        // only while incomplete.
        let mut partial = mem::take(&mut self.buffers().message);
        let response = if partial.is_empty() {
            data
        } else {
            partial.extend_from_slice(data);
            &partial
        };
        let buffers = self.buffers();
        let head = &buffers.pending[..buffers.head_len];
        match check_upstream_response(response, head) {
            ResponseCheck::Partial => {
                let kept = if partial.is_empty() {
                    data.to_vec()
                } else {
                    partial
                };
                self.buffers().message = kept;
                Next::Continue
            }
            ResponseCheck::Accepted { header_len, .. } => {
                // The upstream's own 101 goes to the client as it is (its Set-Cookie and
                // other headers included), with any frames that came along; the edge's
                // sticky cookie is added at the end of the head.
                match (self.buffers().set_cookie, &cx.config.proxy.sticky_cookie) {
                    (Some((id, secure)), Some(name)) if header_len >= 2 => {
                        cx.out.extend_from_slice(&response[..header_len - 2]);
                        sticky::write_set_cookie(name, id, secure, cx.out);
                        cx.out.extend_from_slice(&response[header_len - 2..]);
                    }
                    _ => cx.out.extend_from_slice(response),
                }
                Counters::bump(&cx.stats.upgraded);
                self.upstream_outcome = Some(UpstreamOutcome::Served);
                let buffers = self.buffers();
                let accepted_at = buffers.accepted_at;
                // Only now may the bytes after the request reach the upstream.
                let held = buffers.pending.split_off(buffers.head_len);
                cx.stats
                    .record_handshake_ms(cx.now.saturating_sub(accepted_at));
                self.phase = Phase::Relaying;
                self.drop_input();
                if !held.is_empty() {
                    self.buffers().held = held;
                }
                self.touch(cx);
                Next::Relay
            }
            ResponseCheck::Failed(ResponseError::NotSwitching { .. }) => {
                // Whatever the upstream says, the client is sent a bounded answer.
                let remaining = match answer_length(response) {
                    AnswerLength::Exactly(n) if n <= MAX_PASSED_ANSWER_BYTES => n,
                    AnswerLength::UntilClose => MAX_PASSED_ANSWER_BYTES,
                    length => {
                        tracing::debug!(?length, "upstream refusal too long or unframed");
                        return self.reject(Refusal::UpstreamFailed, cx);
                    }
                };
                Counters::bump(&cx.stats.upstream_refusals_passed);
                self.phase = Phase::Answering;
                self.drop_input();
                self.buffers().answer_remaining = remaining;
                self.pass_answer(response, cx)
            }
            ResponseCheck::Failed(error) => {
                tracing::debug!(%error, "upstream answered with an invalid upgrade");
                self.upstream_outcome = Some(UpstreamOutcome::Failed(Failure::InvalidAnswer));
                self.reject(Refusal::UpstreamFailed, cx)
            }
        }
    }

    /// Proxy mode: bytes of the upstream's answer to a plain HTTP request, before its head
    /// was passed on. A final head with a framing the client can rely on is rewritten for
    /// the client (`Connection: close`, the sticky cookie) and the relay carries the rest
    /// ([`Next::Relay`]); interim answers are dropped; anything else is a 502.
    fn http_answer(&mut self, data: &[u8], cx: &mut Ctx<'_>) -> Next {
        let mut partial = mem::take(&mut self.buffers().message);
        let answer = if partial.is_empty() {
            data
        } else {
            partial.extend_from_slice(data);
            &partial
        };
        let mut at = 0;
        let head_len = loop {
            match answer_head(&answer[at..]) {
                AnswerHead::Partial => {
                    let kept = answer[at..].to_vec();
                    self.buffers().message = kept;
                    return Next::Continue;
                }
                AnswerHead::Interim(len) => at += len,
                AnswerHead::Final { head_len, .. } => break head_len,
                AnswerHead::Invalid => {
                    tracing::debug!("upstream answered a forwarded request badly");
                    self.upstream_outcome = Some(UpstreamOutcome::Failed(Failure::InvalidAnswer));
                    return self.reject(Refusal::UpstreamFailed, cx);
                }
            }
        };
        let answer = &answer[at..];
        // The body's length, as the client will read it: the relay passes that much and
        // no more, so an upstream that keeps its connection open (or sends more) cannot
        // hold the client or slip it bytes of another answer.
        let head_request = self
            .buffers
            .as_ref()
            .is_some_and(|b| b.pending.starts_with(b"HEAD "));
        let mut end = BodyEnd::of(&answer[..head_len], head_request);
        let arrived = &answer[head_len..];
        let (passed, over) = end.pass(arrived);
        if over {
            end = BodyEnd::Length(0);
        }
        let mut cookie = Vec::new();
        if let (Some((id, secure)), Some(name)) =
            (self.buffers().set_cookie, &cx.config.proxy.sticky_cookie)
        {
            sticky::write_set_cookie(name, id, secure, &mut cookie);
        }
        write_client_answer_head(&answer[..head_len], &cookie, cx.out);
        cx.out.extend_from_slice(&arrived[..passed]);
        Counters::bump(&cx.stats.http_forwarded);
        self.upstream_outcome = Some(UpstreamOutcome::Served);
        self.phase = Phase::Exchanging;
        self.drop_input();
        self.buffers().answer_end = Some(end);
        self.touch(cx);
        Next::Relay
    }

    /// Exchanging, once: where the rest of the answer's body ends, for the relay.
    pub fn take_answer_end(&mut self) -> BodyEnd {
        let end = self.buffers.as_mut().and_then(|b| b.answer_end.take());
        self.release_idle_buffers();
        end.unwrap_or(BodyEnd::Close)
    }

    /// Passes an upstream's refusal on, up to the end of its body.
    fn pass_answer(&mut self, data: &[u8], cx: &mut Ctx<'_>) -> Next {
        let buffers = self.buffers();
        let take = (buffers.answer_remaining.min(data.len() as u64)) as usize;
        cx.out.extend_from_slice(&data[..take]);
        buffers.answer_remaining = buffers.answer_remaining.saturating_sub(take as u64);
        if buffers.answer_remaining == 0 {
            return self.linger(cx);
        }
        Next::Continue
    }

    /// Proxy mode: the upstream closed before the relay started.
    pub fn on_upstream_eof(&mut self, cx: &mut Ctx<'_>) -> Next {
        match self.phase {
            Phase::Upstream => {
                self.upstream_outcome = Some(UpstreamOutcome::Failed(Failure::InvalidAnswer));
                self.on_upstream_failed(cx)
            }
            Phase::Answering => self.linger(cx),
            _ => Next::Continue,
        }
    }

    /// Proxy mode: no upstream could be connected, or the connection failed before its
    /// answer: 502.
    pub fn on_upstream_failed(&mut self, cx: &mut Ctx<'_>) -> Next {
        match self.phase {
            Phase::Upstream => self.reject(Refusal::UpstreamFailed, cx),
            Phase::Answering => self.finish(),
            _ => Next::Continue,
        }
    }

    /// Proxy mode: what the upstream did since last asked, for its health: served this
    /// client (a valid 101, reported once), or failed it (an invalid answer, a close before
    /// answering, a timeout).
    pub fn take_upstream_outcome(&mut self) -> Option<UpstreamOutcome> {
        self.upstream_outcome.take()
    }

    /// Proxy mode: what the upstream did since last asked is counted on its `lease`: its
    /// pending upgrade ends once answered, and serving or failing this client goes to its
    /// health (`fall`: the health checks' threshold, if any).
    pub fn report_upstream(&mut self, lease: &Lease, now: u64, fall: Option<u32>) {
        if lease.is_pending() && !self.awaits_upstream_answer() {
            lease.answered();
        }
        match self.take_upstream_outcome() {
            Some(UpstreamOutcome::Failed(fault)) => {
                Upstreams::failed(lease, fault, now, fall, &fault.label())
            }
            Some(UpstreamOutcome::Served) => lease.status().served(),
            None => {}
        }
    }

    /// Proxy mode: relayed bytes moved, so the connection is not idle.
    pub fn on_relayed(&mut self, cx: &Ctx<'_>) {
        if self.phase == Phase::Relaying {
            self.touch(cx);
        }
    }

    /// The deadline from [`Conn::deadline`] has passed.
    pub fn on_timeout(&mut self, cx: &mut Ctx<'_>) -> Next {
        match self.phase {
            Phase::Handshake => {
                Counters::bump(&cx.stats.handshake_timeouts);
                if !self.has_pending() {
                    // A silent connection gets no answer: nothing says it speaks HTTP.
                    self.finish()
                } else {
                    self.reject(Rejection::Timeout, cx)
                }
            }
            Phase::Open => match self.drain_code {
                Some(code) => self.start_closing(code, cx),
                None => {
                    Counters::bump(&cx.stats.idle_timeouts);
                    self.start_closing(CloseCode::GOING_AWAY, cx)
                }
            },
            Phase::Upstream => {
                Counters::bump(&cx.stats.upstream_timeouts);
                self.upstream_outcome = Some(UpstreamOutcome::Failed(Failure::Timeout));
                self.reject(Refusal::UpstreamTimeout, cx)
            }
            // The driver answers a wait that ran out (with a paced Retry-After) before it
            // gets here; this is the same answer with the shortest wait.
            Phase::Queued => self.reject(
                Refusal::UpstreamsBusy {
                    retry_after_secs: 1,
                },
                cx,
            ),
            Phase::Relaying => {
                if self.drain_code.is_none() {
                    Counters::bump(&cx.stats.idle_timeouts);
                }
                self.finish()
            }
            // An answer that stopped flowing: the client sees it cut at the close.
            Phase::Exchanging => {
                Counters::bump(&cx.stats.upstream_timeouts);
                self.finish()
            }
            Phase::Answering | Phase::Closing | Phase::Lingering | Phase::Done => self.finish(),
        }
    }

    /// The server is draining: an upgraded connection is closed with `code` at `close_at`
    /// (the caller spreads these over its drain window so that clients do not all reconnect
    /// at once); handshakes in progress may finish (bounded by the handshake timeout).
    /// Idempotent: a connection keeps the first time it was given.
    pub fn on_shutdown(&mut self, close_at: u64, code: CloseCode, cx: &mut Ctx<'_>) -> Next {
        match self.phase {
            // A relayed stream cannot take a Close frame in the middle of the upstream's
            // frames: at its time it is closed at the TCP level.
            Phase::Relaying if self.drain_code.is_none() => {
                self.drain_code = Some(code);
                if close_at <= cx.now {
                    return self.finish();
                }
                self.deadline = self.deadline.min(close_at);
                Next::Continue
            }
            Phase::Open if self.drain_code.is_none() => {
                self.drain_code = Some(code);
                if close_at <= cx.now {
                    return self.start_closing(code, cx);
                }
                self.deadline = self.deadline.min(close_at);
                Next::Continue
            }
            _ => Next::Continue,
        }
    }

    /// Refuses the connection at once with `rejection` (admission control), without
    /// waiting for its request: the answer is written, then the connection lingers so that
    /// the request's arrival cannot turn the close into a reset.
    pub fn refuse(&mut self, answer: impl Into<Answer>, cx: &mut Ctx<'_>) -> Next {
        self.reject(answer, cx)
    }

    fn finish(&mut self) -> Next {
        self.phase = Phase::Done;
        self.deadline = NO_DEADLINE;
        self.drop_input();
        Next::Close
    }

    /// Processes `input`; returns how many bytes were consumed (the rest must be kept).
    fn process(&mut self, input: &[u8], cx: &mut Ctx<'_>) -> (usize, Next) {
        match self.phase {
            Phase::Handshake => self.handshake(input, cx),
            Phase::Open | Phase::Closing => self.frames(input, cx),
            // Waiting for the upstream: what the client sends goes after its request, so it
            // is kept, not consumed (backends do not read the client then, which bounds it).
            Phase::Upstream | Phase::Queued => (0, Next::Continue),
            // The relay moves the client's bytes itself; a refusal being passed on or a
            // linger discards them.
            Phase::Lingering
            | Phase::Done
            | Phase::Answering
            | Phase::Relaying
            | Phase::Exchanging => (input.len(), Next::Continue),
        }
    }

    fn handshake(&mut self, input: &[u8], cx: &mut Ctx<'_>) -> (usize, Next) {
        let upgrade = match parse_request(input, &cx.config.policy) {
            Parse::Partial => return (0, Next::Continue),
            Parse::Reject(rejection) => return (input.len(), self.reject(rejection, cx)),
            Parse::Http(request) => return self.http_request(request, input, cx),
            Parse::Upgrade(upgrade) => upgrade,
        };
        // Until now the deadline is the handshake's: accept time plus the timeout.
        let accepted = self.deadline.saturating_sub(cx.config.handshake_timeout_ms);
        if cx.config.after == AfterUpgrade::Proxy {
            self.phase = Phase::Upstream;
            self.deadline = cx.now.saturating_add(cx.config.proxy.connect_timeout_ms);
            let buffers = self.buffers();
            buffers.head_len = upgrade.header_len;
            buffers.accepted_at = accepted;
            // Nothing consumed: `on_data` keeps the request and any early bytes for
            // `write_upstream_request`.
            return (0, Next::Proxy);
        }
        let mut response = [0u8; MAX_RESPONSE_LEN];
        let Ok(len) = write_switching_protocols(&mut response, upgrade.key, upgrade.protocol)
        else {
            // Only a configured subprotocol name longer than the config allows gets here.
            return (input.len(), self.finish());
        };
        cx.out.extend_from_slice(&response[..len]);
        Counters::bump(&cx.stats.upgraded);
        cx.stats
            .record_handshake_ms(cx.now.saturating_sub(accepted));
        match cx.config.after {
            AfterUpgrade::Close => {
                cx.out.extend_from_slice(&close_frame(CloseCode::NORMAL));
                (input.len(), self.finish())
            }
            // Handled above: no 101 of our own.
            AfterUpgrade::Proxy => (0, Next::Proxy),
            AfterUpgrade::Echo => {
                self.phase = Phase::Open;
                self.touch(cx);
                // Frames the client sent along with its request are processed now.
                let (consumed, next) = self.frames(&input[upgrade.header_len..], cx);
                (upgrade.header_len + consumed, next)
            }
        }
    }

    /// A plain request under `--http-path`: once its body is in, it goes to an upstream
    /// like an upgrade ([`Next::Proxy`]), with the request kept for
    /// [`Conn::write_upstream_request`].
    fn http_request(
        &mut self,
        request: HttpRequest,
        input: &[u8],
        cx: &mut Ctx<'_>,
    ) -> (usize, Next) {
        if cx.config.after != AfterUpgrade::Proxy {
            // Configuration keeps `--http-path` to proxy mode; without an upstream this is
            // what any request that is not an upgrade gets.
            return (input.len(), self.reject(Rejection::MissingUpgrade, cx));
        }
        let body = match request.chunked {
            true => {
                match self.chunked_body(&request, input, cx.config.policy.max_http_body_bytes) {
                    Ok(body) => body,
                    Err(rejection) => return (input.len(), self.reject(rejection, cx)),
                }
            }
            false => request.complete_within(input.len()).map(|_| None),
        };
        let Some(decoded) = body else {
            let buffers = self.buffers();
            if request.expects_continue && !buffers.continued {
                buffers.continued = true;
                cx.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            return (0, Next::Continue);
        };
        let accepted = self.deadline.saturating_sub(cx.config.handshake_timeout_ms);
        self.phase = Phase::Upstream;
        self.deadline = cx.now.saturating_add(cx.config.proxy.connect_timeout_ms);
        let buffers = self.buffers();
        buffers.head_len = request.header_len;
        buffers.http_body_len = Some(
            decoded
                .as_ref()
                .map_or(request.body_len, |d| d.len() as u64),
        );
        buffers.decoded_body = decoded;
        buffers.chunked = None;
        buffers.accepted_at = accepted;
        (0, Next::Proxy)
    }

    /// A chunked request body as it arrives in `input` (the request from its first byte):
    /// `None` while its last chunk has not come, then its data. Bounded: its bytes on the
    /// wire by twice the limit (tiny chunks cost their framing), its data by the limit.
    fn chunked_body(
        &mut self,
        request: &HttpRequest,
        input: &[u8],
        max_body: u64,
    ) -> Result<Option<Option<Vec<u8>>>, Rejection> {
        let buffers = self.buffers();
        let (mut reader, read) = buffers.chunked.unwrap_or_default();
        let body = input.get(request.header_len..).unwrap_or_default();
        let new = body.get(read..).unwrap_or_default();
        let wire_limit = max_body.saturating_mul(2).saturating_add(64 * 1024);
        match reader.feed(new) {
            Err(_) => Err(Rejection::MalformedChunkedBody),
            Ok(None) if (body.len() as u64) > wire_limit => Err(Rejection::BodyTooLarge),
            Ok(None) => {
                buffers.chunked = Some((reader, body.len()));
                Ok(None)
            }
            Ok(Some(end)) => {
                let data =
                    chunked::decode(&body[..read + end]).ok_or(Rejection::MalformedChunkedBody)?;
                if data.len() as u64 > max_body {
                    return Err(Rejection::BodyTooLarge);
                }
                Ok(Some(Some(data)))
            }
        }
    }

    fn reject(&mut self, answer: impl Into<Answer>, cx: &mut Ctx<'_>) -> Next {
        let rejection = answer.into();
        let mut response = [0u8; MAX_RESPONSE_LEN];
        if let Ok(len) = write_rejection(&mut response, rejection) {
            cx.out.extend_from_slice(&response[..len]);
        }
        cx.stats.record_rejection(rejection);
        self.linger(cx)
    }

    fn linger(&mut self, cx: &mut Ctx<'_>) -> Next {
        self.phase = Phase::Lingering;
        self.deadline = cx.now.saturating_add(cx.config.linger_ms);
        self.drop_input();
        Next::HalfClose
    }

    /// Resets the idle deadline (a drain deadline, once set, is kept).
    fn touch(&mut self, cx: &Ctx<'_>) {
        if self.drain_code.is_some() {
            return;
        }
        let idle = match self.phase {
            Phase::Exchanging => cx.config.proxy.http_timeout_ms,
            _ => cx.config.idle_timeout_ms,
        };
        self.deadline = match idle {
            0 => NO_DEADLINE,
            idle => cx.now.saturating_add(idle),
        };
    }

    fn start_closing(&mut self, code: CloseCode, cx: &mut Ctx<'_>) -> Next {
        write_close(cx.out, code);
        self.phase = Phase::Closing;
        self.deadline = cx.now.saturating_add(cx.config.linger_ms);
        if let Some(buffers) = self.buffers.as_mut() {
            buffers.message = Vec::new();
            buffers.text_checked = 0;
            buffers.frame_checked = 0;
        }
        self.message_opcode = None;
        Next::Continue
    }

    /// Fails the WebSocket connection with `code` (RFC 6455 section 7.1.7).
    fn fail(&mut self, code: CloseCode, cx: &mut Ctx<'_>) -> Next {
        write_close(cx.out, code);
        Counters::bump(&cx.stats.protocol_errors);
        self.linger(cx)
    }

    fn frames(&mut self, input: &[u8], cx: &mut Ctx<'_>) -> (usize, Next) {
        if self.phase == Phase::Open {
            self.touch(cx);
        }
        let mut at = 0;
        loop {
            let header = match parse_client_header(&input[at..]) {
                HeaderParse::Partial => return (at, Next::Continue),
                HeaderParse::Invalid(_) => {
                    return (input.len(), self.fail(CloseCode::PROTOCOL_ERROR, cx))
                }
                HeaderParse::Header(header) => header,
            };
            // Refuse an oversized message as soon as its header says so, before buffering it.
            let limit = cx.config.max_message_bytes as u64;
            if !header.opcode.is_control()
                && header.payload_len.saturating_add(self.message_len() as u64) > limit
            {
                return (input.len(), self.fail(CloseCode::MESSAGE_TOO_BIG, cx));
            }
            let frame_len = header.header_len + header.payload_len as usize;
            let Some(frame) = input.get(at..at + frame_len) else {
                // Part of a text frame: its characters are checked as they come.
                let arrived = input.get(at + header.header_len..).unwrap_or_default();
                // (After our Close only the peer's Close matters: nothing else is checked.)
                let text = self.phase == Phase::Open && self.is_text(header.opcode);
                if text && !self.text_arriving(arrived, header.mask) {
                    return (input.len(), self.fail(CloseCode::INVALID_PAYLOAD, cx));
                }
                return (at, Next::Continue);
            };
            at += frame_len;
            if let Some(buffers) = self.buffers.as_mut() {
                buffers.frame_checked = 0;
            }
            let payload = &frame[header.header_len..];
            let next = self.on_frame(header.fin, header.opcode, header.mask, payload, cx);
            if next != Next::Continue {
                return (input.len(), next);
            }
        }
    }

    /// Whether a frame with `opcode` carries text: a text frame, or a continuation of a text
    /// message.
    /// A frame that is itself out of place (a new text message inside another) is not
    /// checked: its 1002 comes when it is whole, whatever the split.
    fn is_text(&self, opcode: OpCode) -> bool {
        match opcode {
            OpCode::Text => self.message_opcode.is_none(),
            OpCode::Continuation => self.message_opcode == Some(OpCode::Text),
            _ => false,
        }
    }

    /// Checks the payload bytes of a text frame that have `arrived` so far (masked with
    /// `mask`), from where the last read stopped: false if no continuation can make them
    /// valid. A continuation frame's check starts with the character its message's last
    /// fragment left unfinished.
    fn text_arriving(&mut self, arrived: &[u8], mask: [u8; 4]) -> bool {
        let buffers = self.buffers();
        let from = buffers.frame_checked.min(arrived.len());
        let carried = match from {
            0 => buffers
                .message
                .get(buffers.text_checked..)
                .unwrap_or_default(),
            _ => &[],
        };
        let mut bytes = carried.to_vec();
        unmask_into(&mut bytes, &arrived[from..], utf8::mask_at(mask, from));
        match utf8::check_prefix(&bytes) {
            utf8::Prefix::Invalid => false,
            utf8::Prefix::Valid(whole) => {
                buffers.frame_checked = from + whole.saturating_sub(carried.len());
                true
            }
        }
    }

    /// Appends a text fragment's payload to the message and checks what it completes: false
    /// if the message can no longer be valid.
    fn append_text(&mut self, payload: &[u8], mask: [u8; 4]) -> bool {
        let buffers = self.buffers();
        unmask_into(&mut buffers.message, payload, mask);
        let unchecked = buffers
            .message
            .get(buffers.text_checked..)
            .unwrap_or_default();
        match utf8::check_prefix(unchecked) {
            utf8::Prefix::Invalid => false,
            utf8::Prefix::Valid(whole) => {
                buffers.text_checked += whole;
                true
            }
        }
    }

    fn on_frame(
        &mut self,
        fin: bool,
        opcode: OpCode,
        mask: [u8; 4],
        payload: &[u8],
        cx: &mut Ctx<'_>,
    ) -> Next {
        if self.phase == Phase::Closing {
            // After our Close only the peer's Close matters (RFC 6455 section 5.5.1).
            return if opcode == OpCode::Close {
                self.finish()
            } else {
                Next::Continue
            };
        }
        match (opcode, self.message_opcode) {
            (OpCode::Text | OpCode::Binary, Some(_)) | (OpCode::Continuation, None) => {
                self.fail(CloseCode::PROTOCOL_ERROR, cx)
            }
            (OpCode::Text | OpCode::Binary, None) if fin => {
                let start = cx.out.len();
                write_server_header(cx.out, opcode, payload.len());
                let body = cx.out.len();
                unmask_into(cx.out, payload, mask);
                if opcode == OpCode::Text && simdutf8::basic::from_utf8(&cx.out[body..]).is_err() {
                    cx.out.truncate(start);
                    return self.fail(CloseCode::INVALID_PAYLOAD, cx);
                }
                Next::Continue
            }
            (OpCode::Text, None) => {
                self.message_opcode = Some(opcode);
                if !self.append_text(payload, mask) {
                    return self.fail(CloseCode::INVALID_PAYLOAD, cx);
                }
                Next::Continue
            }
            (OpCode::Binary, None) => {
                self.message_opcode = Some(opcode);
                unmask_into(&mut self.buffers().message, payload, mask);
                Next::Continue
            }
            (OpCode::Continuation, Some(message_opcode)) => {
                let text = message_opcode == OpCode::Text;
                if text && !self.append_text(payload, mask) {
                    return self.fail(CloseCode::INVALID_PAYLOAD, cx);
                }
                if !text {
                    unmask_into(&mut self.buffers().message, payload, mask);
                }
                if !fin {
                    return Next::Continue;
                }
                let buffers = self.buffers();
                let whole = buffers.text_checked == buffers.message.len();
                let message = mem::take(&mut buffers.message);
                buffers.text_checked = 0;
                self.message_opcode = None;
                if text && !whole {
                    // The message ends inside a character.
                    return self.fail(CloseCode::INVALID_PAYLOAD, cx);
                }
                write_server_header(cx.out, message_opcode, message.len());
                cx.out.extend_from_slice(&message);
                Next::Continue
            }
            (OpCode::Ping, _) => {
                write_server_header(cx.out, OpCode::Pong, payload.len());
                unmask_into(cx.out, payload, mask);
                Next::Continue
            }
            (OpCode::Pong, _) => Next::Continue,
            (OpCode::Close, _) => self.on_close_frame(payload, mask, cx),
        }
    }

    /// The peer started the close handshake: echo its code and close.
    fn on_close_frame(&mut self, payload: &[u8], mask: [u8; 4], cx: &mut Ctx<'_>) -> Next {
        let mut body = Vec::with_capacity(payload.len());
        unmask_into(&mut body, payload, mask);
        match body.as_slice() {
            [] => cx.out.extend_from_slice(&[0x88, 0x00]),
            [_] => return self.fail(CloseCode::PROTOCOL_ERROR, cx),
            [hi, lo, reason @ ..] => {
                let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
                if !code.is_valid_on_wire() {
                    return self.fail(CloseCode::PROTOCOL_ERROR, cx);
                }
                if simdutf8::basic::from_utf8(reason).is_err() {
                    return self.fail(CloseCode::INVALID_PAYLOAD, cx);
                }
                write_close(cx.out, code);
            }
        }
        // The server closes the TCP connection first (RFC 6455 section 7.1.1).
        self.finish()
    }
}

#[cfg(test)]
pub(crate) mod tests;
