//! A proxied client's upstream side, with no I/O: which upstream it is on, whether that
//! upstream has taken bytes yet, and for each direction the relayed bytes in transit and the
//! FIN behind them. Both backends keep one [`Link`] per proxied client and only add their
//! own socket and operation bookkeeping around it.
//!
//! The end-of-stream rules, the same for both backends: a side's FIN is passed on to the
//! other side once every byte read before it is out (a half-close works both ways), and the
//! pair is closed once both FINs are passed; a reset or any error on one side closes both,
//! the survivor with a reset ([`Side::other`]), as a transparent relay passes it on (which
//! also spares that peer the FIN exchange and a TIME_WAIT entry).
//!
//! # A client that speaks TLS
//! The link takes over the client's TLS session when the relay starts ([`Link::begin`]):
//! the pipe toward the upstream then holds plaintext and the pipe toward the client records.
//! Bytes read from either side go through [`Link::relay_in`], which decrypts or seals them
//! on their way; the client's `close_notify` is its FIN, the upstream's FIN becomes a
//! `close_notify` ahead of the client's. A record that does not decrypt ends both
//! directions: its alert goes to the client, then both FINs. Such a relay never splices
//! (the bytes have to pass through the cipher) and is written from the pipes only.

use super::http::BodyEnd;
use super::{Fin, Pipe};
use crate::transport::{TlsEnd, TlsLink, Transport};

/// One end of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client wsedge accepted.
    Client,
    /// The app server wsedge connected to.
    Upstream,
}

impl Side {
    /// The other end: where a side's bytes and FIN go, and the survivor reset when a side
    /// breaks.
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

/// Bytes on their way to one side (its sink), and the FIN of the other side behind them.
#[derive(Debug, Default)]
pub struct Flow {
    /// Read from the source, not yet written to the sink.
    pub pipe: Pipe,
    /// The source's FIN.
    pub fin: Fin,
    /// `TCP_NODELAY` is set on the sink.
    nodelay: bool,
}

impl Flow {
    /// True once, before the first relayed byte to a sink without `TCP_NODELAY`: set it
    /// then. Relayed frames are written as they come, and Nagle would hold small ones back
    /// behind unacknowledged data. An upstream socket gets it only here, not at connect: the
    /// forwarded request is one write, which Nagle never delays, and many connections
    /// (clients that only listen, or leave at once) never relay a byte upstream. Client
    /// sockets inherit it from the listener.
    pub fn set_nodelay_now(&mut self) -> bool {
        !std::mem::replace(&mut self.nodelay, true)
    }

    /// Whether the source may be read: its FIN is not read yet and the pipe has room
    /// (otherwise the sender is held back by TCP, not by our memory).
    pub fn may_read(&self) -> bool {
        !self.fin.is_read() && self.pipe.room() > 0
    }

    /// Whether to shut down the sink's write side now (`sending`: a write of this pipe is in
    /// flight). True once.
    pub fn fin_due(&mut self, sending: bool) -> bool {
        let in_transit = sending || !self.pipe.is_empty();
        self.fin.pass_now(in_transit)
    }
}

/// A proxied client's upstream connection, as far as no socket is concerned.
pub struct Link {
    /// Which upstream, to pass it over if it refuses.
    pub upstream: usize,
    /// Upstreams tried for this client so far, this one included.
    pub attempts: usize,
    /// The upstream's connection is established (it took bytes, or the connect completed):
    /// a failure before that is a refusal, and the next upstream is tried.
    pub confirmed: bool,
    /// The relay began (the upstream's 101 was checked and passed on).
    began: bool,
    to_client: Flow,
    to_upstream: Flow,
    /// The client's TLS session, once the relay has started.
    tls: Option<Box<TlsLink>>,
    /// An exchange whose answer's end is in its bytes (a length, the last chunk): where it
    /// ends. What the upstream sends after it is dropped, and the relay ends there.
    answer_end: Option<BodyEnd>,
    /// Counts this connection against its upstream until the link goes.
    lease: Option<super::Lease>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("upstream", &self.upstream)
            .field("attempts", &self.attempts)
            .field("confirmed", &self.confirmed)
            .field("to_client", &self.to_client)
            .field("to_upstream", &self.to_upstream)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Link {
    /// A link to upstream `upstream`, the `attempts`-th tried for this client, counted
    /// against it by `lease` while it lives.
    pub fn with_lease(upstream: usize, attempts: usize, lease: Option<super::Lease>) -> Link {
        Link {
            lease,
            ..Link::new(upstream, attempts)
        }
    }

    /// The lease counting this connection against its upstream, if it has one.
    pub fn lease(&self) -> Option<&super::Lease> {
        self.lease.as_ref()
    }

    /// A link to upstream `upstream`, the `attempts`-th tried for this client.
    pub fn new(upstream: usize, attempts: usize) -> Link {
        let to_client = Flow {
            nodelay: true,
            ..Flow::default()
        };
        Link {
            upstream,
            attempts,
            confirmed: false,
            began: false,
            to_client,
            to_upstream: Flow::default(),
            tls: None,
            answer_end: None,
            lease: None,
        }
    }

    /// The relay starts with the upstream's `answer` (its 101 and whatever followed) toward
    /// the client and `held`, the plaintext the client sent after its request, toward the
    /// upstream: from here on the client's TLS session, if it has one, is the link's.
    pub fn begin(&mut self, transport: &mut Transport, answer: &[u8], held: &[u8]) {
        self.began = true;
        self.tls = transport.take_tls();
        self.relay_in(Side::Upstream, answer);
        self.to_upstream.pipe.push(held);
    }

    /// The relay of one plain HTTP answer starts with its head (rewritten) and whatever
    /// followed toward the client. Nothing more is taken from the client: its direction
    /// counts as ended and passed, so its socket is not read, no FIN goes to the upstream
    /// (Node's and others' HTTP servers abort a request whose client half-closes), and the
    /// pair closes once the upstream's close has reached the client.
    ///
    /// The relay passes the rest of the body up to `end` and ends there, whatever the
    /// upstream does after it (keeps its connection open, or sends more).
    pub fn begin_exchange(&mut self, transport: &mut Transport, answer: &[u8], end: BodyEnd) {
        self.began = true;
        self.tls = transport.take_tls();
        self.relay_in(Side::Upstream, answer);
        self.to_upstream.fin.read();
        let _ = self.to_upstream.fin.pass_now(false);
        if end == BodyEnd::Length(0) {
            return self.end_of(Side::Upstream);
        }
        self.answer_end = Some(end).filter(BodyEnd::is_framed);
    }

    /// Whether the edge, closing the upstream's socket now, resets it. Before the relay
    /// began the connection was abandoned (its client left, or it failed, timed out or
    /// refused): a close would leave the edge's end in TIME_WAIT, holding a local port
    /// toward the upstream for a minute, and a storm of abandoned upgrades runs the ports
    /// out. A relay's end is a FIN, or a reset of the survivor when one side broke.
    pub fn resets_on_close(&self) -> bool {
        !self.began
    }

    /// Whether the relayed bytes are the sockets' bytes (no TLS to pass through): only then
    /// may a backend write straight from its read buffer or splice.
    pub fn is_plain(&self) -> bool {
        // An answer whose end is in its bytes is read as it passes: through the pipes only.
        self.tls.is_none() && self.answer_end.is_none()
    }

    /// Bytes read from `source`, queued toward the other side (through the client's TLS
    /// session, if it has one).
    pub fn relay_in(&mut self, source: Side, mut bytes: &[u8]) {
        if let (Side::Upstream, Some(end)) = (source, self.answer_end.as_mut()) {
            let (passed, over) = end.pass(bytes);
            bytes = &bytes[..passed];
            if over {
                self.answer_end = None;
                self.relay_in_unlimited(source, bytes);
                return self.end_of(Side::Upstream);
            }
        }
        self.relay_in_unlimited(source, bytes);
    }

    fn relay_in_unlimited(&mut self, source: Side, bytes: &[u8]) {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.toward(source.other()).pipe.push(bytes);
        };
        match source {
            Side::Upstream => tls.send(bytes, &mut self.to_client.pipe),
            Side::Client => {
                let plaintext = self.to_upstream.pipe.tail();
                match tls.receive(bytes, plaintext, &mut self.to_client.pipe) {
                    TlsEnd::Open | TlsEnd::PlainHttp => {}
                    TlsEnd::Closed => self.to_upstream.fin.read(),
                    TlsEnd::Failed(error) => {
                        tracing::debug!(%error, "TLS failed while relaying");
                        // The alert is queued: nothing more is read from either side.
                        self.to_upstream.fin.read();
                        self.to_client.fin.read();
                    }
                }
            }
        }
    }

    /// `source` sent its FIN (a read returned 0). Over TLS the upstream's end is told to the
    /// client as `close_notify`, before the FIN.
    pub fn end_of(&mut self, source: Side) {
        if source == Side::Upstream && !self.to_client.fin.is_read() {
            if let Some(tls) = self.tls.as_deref_mut() {
                tls.close_notify(&mut self.to_client.pipe);
            }
        }
        self.toward(source.other()).fin.read();
    }

    /// The bytes and FIN on their way to `sink`.
    pub fn toward(&mut self, sink: Side) -> &mut Flow {
        match sink {
            Side::Client => &mut self.to_client,
            Side::Upstream => &mut self.to_upstream,
        }
    }

    /// Whether `source` may be read (see [`Flow::may_read`]).
    pub fn may_read(&self, source: Side) -> bool {
        match source {
            Side::Client => self.to_upstream.may_read(),
            Side::Upstream => self.to_client.may_read(),
        }
    }

    /// Whether bytes wait for `sink` to take them.
    pub fn blocked(&self, sink: Side) -> bool {
        match sink {
            Side::Client => !self.to_client.pipe.is_empty(),
            Side::Upstream => !self.to_upstream.pipe.is_empty(),
        }
    }

    /// Whether both FINs are passed on: the relay is over, both sockets close.
    pub fn is_over(&self) -> bool {
        self.to_client.fin.is_passed() && self.to_upstream.fin.is_passed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fin_waits_for_the_bytes_before_it_and_the_relay_ends_with_both() {
        let mut link = Link::new(0, 1);
        link.toward(Side::Upstream).pipe.push(b"last words");
        link.toward(Side::Upstream).fin.read();
        assert!(!link.may_read(Side::Client), "nothing after a FIN");
        assert!(!link.toward(Side::Upstream).fin_due(false), "bytes first");
        let n = link.toward(Side::Upstream).pipe.unsent().len();
        link.toward(Side::Upstream).pipe.consume(n);
        assert!(
            !link.toward(Side::Upstream).fin_due(true),
            "a send in flight"
        );
        assert!(link.toward(Side::Upstream).fin_due(false));
        assert!(!link.toward(Side::Upstream).fin_due(false), "passed once");
        assert!(!link.is_over(), "a half-close keeps the other way open");
        link.toward(Side::Client).fin.read();
        assert!(link.toward(Side::Client).fin_due(false));
        assert!(link.is_over());
    }

    #[test]
    fn an_exchange_never_reads_the_client_and_ends_with_the_upstreams_close() {
        let mut link = Link::new(0, 1);
        link.begin_exchange(
            &mut Transport::Plain,
            b"HTTP/1.1 200 OK\r\n\r\n",
            BodyEnd::Close,
        );
        assert!(!link.may_read(Side::Client), "the client is not read");
        assert!(
            !link.toward(Side::Upstream).fin_due(false),
            "no FIN to the upstream"
        );
        assert!(link.may_read(Side::Upstream));
        link.end_of(Side::Upstream);
        let n = link.toward(Side::Client).pipe.unsent().len();
        link.toward(Side::Client).pipe.consume(n);
        assert!(!link.is_over(), "the close is still to pass");
        assert!(link.toward(Side::Client).fin_due(false));
        assert!(link.is_over());
    }

    #[test]
    fn an_answer_of_known_length_ends_at_its_last_byte_whatever_follows() {
        let mut link = Link::new(0, 1);
        let end = BodyEnd::Length(1);
        link.begin_exchange(&mut Transport::Plain, b"HTTP/1.1 200 OK\r\n\r\nab", end);
        assert!(!link.is_plain(), "counted through the pipes");
        link.relay_in(Side::Upstream, b"cHTTP/1.1 200 smuggled");
        let pipe = &mut link.toward(Side::Client).pipe;
        assert_eq!(pipe.unsent(), b"HTTP/1.1 200 OK\r\n\r\nabc");
        let n = pipe.unsent().len();
        pipe.consume(n);
        assert!(!link.may_read(Side::Upstream), "nothing more is taken");
        assert!(link.toward(Side::Client).fin_due(false));
        assert!(link.is_over());
        // An answer complete with its head ends at once.
        let mut link = Link::new(0, 1);
        link.begin_exchange(
            &mut Transport::Plain,
            b"HTTP/1.1 204 No Content\r\n\r\n",
            BodyEnd::Length(0),
        );
        assert!(!link.may_read(Side::Upstream));
        // A chunked one at its last chunk, however the bytes come.
        let mut link = Link::new(0, 1);
        let chunked = BodyEnd::Chunked(Default::default());
        link.begin_exchange(&mut Transport::Plain, b"HTTP/1.1 200 OK\r\n\r\n", chunked);
        link.relay_in(Side::Upstream, b"3\r\nabc\r");
        assert!(link.may_read(Side::Upstream));
        link.relay_in(Side::Upstream, b"\n0\r\n\r\nHTTP/1.1 200 smuggled");
        assert!(!link.may_read(Side::Upstream), "over at its last chunk");
        let pipe = &mut link.toward(Side::Client).pipe;
        assert!(pipe.unsent().ends_with(b"3\r\nabc\r\n0\r\n\r\n"));
    }

    #[test]
    fn only_the_upstream_gets_nodelay_and_only_once() {
        let mut link = Link::new(0, 1);
        assert!(!link.toward(Side::Client).set_nodelay_now());
        assert!(link.toward(Side::Upstream).set_nodelay_now());
        assert!(!link.toward(Side::Upstream).set_nodelay_now());
    }

    #[test]
    fn a_full_pipe_holds_its_source_back() {
        let mut link = Link::new(0, 1);
        link.toward(Side::Client)
            .pipe
            .push(&vec![0; super::super::PIPE_CAPACITY]);
        assert!(!link.may_read(Side::Upstream));
        assert!(link.blocked(Side::Client));
        assert!(link.may_read(Side::Client));
    }
}
