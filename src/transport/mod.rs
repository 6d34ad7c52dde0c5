//! The bytes on the wire: what a connection has produced and its socket has not taken yet.
//!
//! [`crate::conn::Conn`] writes plaintext into the caller's buffer; the backend hands it to
//! the connection's [`Outbox`], sends what the outbox holds and reports what the socket
//! took. A connection's [`Transport`] is plain TCP or TLS terminated here ([`TlsLink`]:
//! ciphertext in, plaintext to the connection, records sealed into a [`Sink`],
//! `close_notify` before a close), so that neither the protocol core nor the backends know
//! which. A relay takes the TLS session over when it starts ([`crate::proxy::Link`]).
//!
//! # Buffers stay put while a send is in flight
//! io_uring reads a send's buffer after the call that submitted it has returned: the bytes
//! must not move or change until the completion. [`Outbox::start_send`] marks the front
//! buffer as in flight; output pushed meanwhile goes to a second buffer, which becomes the
//! front only once [`Outbox::sent`] reports the completion. This is the one place that rule
//! is enforced. epoll writes synchronously and never has a send in flight.

mod tls_records;
mod tls_session;

pub use tls_session::{TlsEnd, TlsLink, TrafficSecrets, MAX_HELD_BEFORE_HANDSHAKE};

use crate::stats::{Counters, TlsFailure, TlsHandshake};
use crate::tls::SharedTlsConfig;

/// How a connection's bytes travel: as they are, or inside TLS records.
pub enum Transport {
    /// Plain TCP: the connection's bytes are the socket's.
    Plain,
    /// TLS, terminated here.
    Tls(Box<TlsLink>),
}

/// A TLS client's ClientHello before it is read: where it stands in the reactor's key
/// exchanges (`session::Driver::before_key_exchange` decides; kept here, in the TLS
/// session, since only TLS connections have one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hello {
    /// Not asked about yet.
    #[default]
    Unasked,
    /// Waiting for a key exchange in a later turn.
    Queued,
    /// Its key exchange is granted.
    Granted,
}

/// What one read of the socket gave the connection.
pub struct Received<'a> {
    /// The connection's bytes: as read, or decrypted.
    pub data: &'a [u8],
    /// Over TLS, whether the stream goes on ([`TlsEnd::Open`] over plain TCP).
    pub end: TlsEnd,
}

impl Transport {
    /// The transport of a connection accepted on a TLS listener with `tls` (`None`: plain
    /// TCP); `None` when a TLS session cannot start (said in the log): the connection is
    /// closed unanswered.
    pub fn accepted(tls: Option<&SharedTlsConfig>) -> Option<Transport> {
        let Some(config) = tls else {
            return Some(Transport::Plain);
        };
        match TlsLink::new(&config.load_full()) {
            Ok(link) => Some(Transport::Tls(Box::new(link))),
            Err(error) => {
                tracing::warn!(%error, "cannot start a TLS session");
                None
            }
        }
    }

    /// Bytes read from the socket: over TLS, decrypted into `plaintext` (the records for
    /// the peer, the handshake's and alerts, go to `outbox`), and a handshake that completes
    /// or fails counted in `stats`; over plain TCP, the bytes themselves.
    pub fn receive<'a>(
        &mut self,
        bytes: &'a [u8],
        plaintext: &'a mut Vec<u8>,
        outbox: &mut Outbox,
        stats: &Counters,
    ) -> Received<'a> {
        let Transport::Tls(tls) = self else {
            return Received {
                data: bytes,
                end: TlsEnd::Open,
            };
        };
        plaintext.clear();
        let end = tls.receive(bytes, plaintext, outbox);
        if let Some((tls13, resumed)) = tls.established() {
            let kind = TlsHandshake { tls13, resumed };
            Counters::bump(&stats.tls_handshakes[kind.index()]);
        }
        if let TlsEnd::Failed(error) = &end {
            tracing::debug!(%error, "TLS handshake failed");
            let kind = TlsFailure::of(error);
            let index = TlsFailure::ALL.iter().position(|&k| k == kind).unwrap_or(0);
            Counters::bump(&stats.tls_failures[index]);
        }
        Received {
            data: plaintext,
            end,
        }
    }

    /// Whether this is a TLS connection nothing has arrived on yet: its first bytes are the
    /// ClientHello, and reading them spends the key exchange.
    pub fn awaits_client_hello(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.is_fresh())
    }

    /// Keeps a fresh TLS connection's first bytes unread for a later turn (see
    /// [`TlsLink::keep_unread`]); false when they cannot be kept (read them now).
    pub fn keep_unread(&mut self, bytes: &[u8]) -> bool {
        match self {
            Transport::Tls(tls) => tls.keep_unread(bytes),
            Transport::Plain => false,
        }
    }

    /// The bytes [`Transport::keep_unread`] kept.
    pub fn take_unread(&mut self) -> Vec<u8> {
        match self {
            Transport::Tls(tls) => tls.take_unread(),
            Transport::Plain => Vec::new(),
        }
    }

    /// Where the ClientHello stands ([`Hello::Granted`] for plain TCP: nothing to wait for).
    pub fn hello(&self) -> Hello {
        match self {
            Transport::Tls(tls) => tls.hello,
            Transport::Plain => Hello::Granted,
        }
    }

    /// Records where the ClientHello stands (TLS only).
    pub fn set_hello(&mut self, hello: Hello) {
        if let Transport::Tls(tls) = self {
            tls.hello = hello;
        }
    }

    /// Whether a TLS key exchange was spent on this connection.
    pub fn spent_key_exchange(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.has_answered())
    }

    /// Whether the client chose HTTP/2 by ALPN (TLS only: a plain client says so with the
    /// preface).
    pub fn speaks_h2(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.speaks_h2())
    }

    /// Whether the connection speaks TLS (terminated here).
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The TLS session, handed over to a relay (the connection's own output ends there).
    pub fn take_tls(&mut self) -> Option<Box<TlsLink>> {
        match std::mem::replace(self, Transport::Plain) {
            Transport::Tls(tls) => Some(tls),
            Transport::Plain => None,
        }
    }

    /// The output of the last call on its way to the socket: over TLS sealed into records in
    /// `outbox` (`out` left empty), with `close_notify` after it when the stream `ends`;
    /// over plain TCP left in `out`, for the backend to write as it is. A TLS handshake cut
    /// short (a timeout, a failure) gets no `close_notify`: there is no session to end.
    pub fn seal(&mut self, ends: bool, out: &mut Vec<u8>, outbox: &mut Outbox) {
        let Transport::Tls(tls) = self else {
            return;
        };
        if !out.is_empty() {
            tls.send(out, outbox);
            out.clear();
        }
        if ends && !tls.is_handshaking() {
            tls.close_notify(outbox);
        }
    }
}

/// Where bytes bound for a socket queue up: a connection's [`Outbox`], or a relay's pipe
/// (`proxy::Pipe`, which implements it there): TLS records go to either.
pub trait Sink {
    /// Appends what `fill` writes into `len` bytes of room at the end (it returns how many
    /// it wrote), so that records are made in place.
    fn append(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> usize);
}

impl Sink for Outbox {
    fn append(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> usize) {
        if len == 0 {
            return;
        }
        let buffers = self.buffers.get_or_insert_with(Box::default);
        let tail = match buffers.in_flight {
            true => &mut buffers.back,
            false => &mut buffers.front,
        };
        append_to(tail, len, fill);
        if buffers.front.is_empty() && buffers.back.is_empty() && !buffers.in_flight {
            self.buffers = None;
        }
    }
}

/// Appends to `tail` what `fill` writes into `len` bytes of room (a [`Sink`]'s append).
pub fn append_to(tail: &mut Vec<u8>, len: usize, fill: impl FnOnce(&mut [u8]) -> usize) {
    let start = tail.len();
    tail.resize(start + len, 0);
    let written = fill(&mut tail[start..]).min(len);
    tail.truncate(start + written);
}

/// Bytes queued for a socket, written by a synchronous writer: what to write next, and how
/// much of it the socket took.
pub trait Queue {
    /// What to write next (empty when nothing is held).
    fn unsent(&mut self) -> &[u8];
    /// The socket took the first `n` bytes of [`Queue::unsent`].
    fn consume(&mut self, n: usize);
}

impl Queue for Outbox {
    fn unsent(&mut self) -> &[u8] {
        self.pending()
    }

    fn consume(&mut self, n: usize) {
        self.sent(n)
    }
}

/// Output waiting for the socket: 8 bytes while there is none.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Allocated only while something waits, freed as soon as nothing does.
    buffers: Option<Box<Buffers>>,
}

#[derive(Debug, Default)]
struct Buffers {
    /// What goes out next; from `start` on while a send of it is in flight.
    front: Vec<u8>,
    /// Output that arrived while the front was in flight.
    back: Vec<u8>,
    in_flight: bool,
    /// The socket took bytes since [`Outbox::take_progress`] last asked.
    progressed: bool,
}

impl Outbox {
    /// Whether no output waits (nothing held, none in flight).
    pub fn is_empty(&self) -> bool {
        self.buffers.is_none()
    }

    /// Whether a send of the front is in flight (io_uring).
    pub fn is_sending(&self) -> bool {
        self.buffers.as_ref().is_some_and(|b| b.in_flight)
    }

    /// Keeps `bytes` to send after what is already held.
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let buffers = self.buffers.get_or_insert_with(Box::default);
        if buffers.in_flight {
            buffers.back.extend_from_slice(bytes);
        } else {
            buffers.front.extend_from_slice(bytes);
        }
    }

    /// What to send next (empty while a send is in flight or nothing is held).
    pub fn pending(&self) -> &[u8] {
        match &self.buffers {
            Some(buffers) if !buffers.in_flight => &buffers.front,
            _ => &[],
        }
    }

    /// Hands the front to an asynchronous send: its bytes stay where they are, unchanged,
    /// until [`Outbox::sent`]. Returns them (empty if nothing is held or a send is in
    /// flight already).
    pub fn start_send(&mut self) -> &[u8] {
        match &mut self.buffers {
            Some(buffers) if !buffers.in_flight && !buffers.front.is_empty() => {
                buffers.in_flight = true;
                &buffers.front
            }
            _ => &[],
        }
    }

    /// The socket took the first `n` bytes of the front (a synchronous write, or the
    /// completion of the send in flight): they are dropped, and what waited behind moves up.
    pub fn sent(&mut self, n: usize) {
        let Some(buffers) = self.buffers.as_mut() else {
            return;
        };
        buffers.in_flight = false;
        buffers.progressed |= n > 0;
        buffers.front.drain(..n.min(buffers.front.len()));
        if buffers.front.is_empty() {
            std::mem::swap(&mut buffers.front, &mut buffers.back);
        }
        if buffers.front.is_empty() {
            self.buffers = None;
        }
    }

    /// Whether the socket took any of what is held since last asked (the send deadline
    /// counts from the last progress, not from the first byte held).
    pub fn take_progress(&mut self) -> bool {
        self.buffers
            .as_mut()
            .is_some_and(|b| std::mem::take(&mut b.progressed))
    }

    /// A send in flight failed or was cancelled: the socket is going away, nothing more is
    /// sent; the bytes are released.
    pub fn abandon(&mut self) {
        self.buffers = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synchronous_writer_takes_the_front_in_pieces() {
        let mut outbox = Outbox::default();
        assert!(outbox.is_empty());
        outbox.push(b"hello ");
        outbox.push(b"world");
        assert_eq!(outbox.pending(), b"hello world");
        outbox.sent(3);
        assert_eq!(outbox.pending(), b"lo world");
        outbox.sent(8);
        assert!(outbox.is_empty(), "nothing held, nothing allocated");
    }

    #[test]
    fn bytes_in_flight_do_not_move_and_later_output_waits_behind_them() {
        let mut outbox = Outbox::default();
        outbox.push(b"101");
        let in_flight = outbox.start_send();
        let (ptr, len) = (in_flight.as_ptr(), in_flight.len());
        assert!(outbox.is_sending());
        assert_eq!(outbox.start_send(), b"", "one send at a time");
        assert_eq!(outbox.pending(), b"");
        // Enough to reallocate any buffer it went into.
        outbox.push(&[7u8; 1 << 16]);
        let Some(buffers) = outbox.buffers.as_ref() else {
            panic!("held");
        };
        assert_eq!((buffers.front.as_ptr(), buffers.front.len()), (ptr, len));
        // A short completion: the rest of the front goes first, then what waited.
        outbox.sent(2);
        assert_eq!(outbox.pending(), b"1");
        outbox.start_send();
        outbox.sent(1);
        assert_eq!(outbox.pending().len(), 1 << 16);
        outbox.sent(1 << 16);
        assert!(outbox.is_empty());
    }

    #[test]
    fn an_abandoned_send_releases_everything() {
        let mut outbox = Outbox::default();
        outbox.push(b"x");
        outbox.start_send();
        outbox.push(b"y");
        outbox.abandon();
        assert!(outbox.is_empty() && !outbox.is_sending());
    }
}
