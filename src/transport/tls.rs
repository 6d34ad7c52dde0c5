//! TLS behind the transport seam: ciphertext in, plaintext to the connection; plaintext from
//! the connection, records out to the [`Outbox`]; `close_notify` before a close.

use std::io::{Read, Write};
use std::sync::Arc;

use super::Sink;

/// One connection's TLS state (rustls's buffered server connection).
pub struct TlsLink {
    conn: rustls::ServerConnection,
    /// Bytes have arrived: the first read decides whether this is TLS at all.
    started: bool,
    /// The completed handshake was reported ([`TlsLink::established`]).
    reported: bool,
}

/// How a read from a TLS socket ended, beside the plaintext it gave.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsEnd {
    /// More may come.
    Open,
    /// The peer sent `close_notify`: nothing more comes.
    Closed,
    /// The first bytes are not a TLS record but plain HTTP (or other plaintext).
    PlainHttp,
    /// TLS failed: the alert that says why is in the outbox; close once it is out.
    Failed(rustls::Error),
}

/// Appends what rustls writes to the queue for the socket.
struct Records<'a, S>(&'a mut S);

impl<S: Sink> Write for Records<'_, S> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.push(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The first byte of a TLS handshake record (content type 22).
const HANDSHAKE_RECORD: u8 = 0x16;

impl TlsLink {
    /// A server session for a connection just accepted on a TLS listener.
    pub fn new(config: &Arc<rustls::ServerConfig>) -> Result<TlsLink, rustls::Error> {
        let mut conn = rustls::ServerConnection::new(Arc::clone(config))?;
        // Records are moved to the outbox as soon as they are made: rustls holds no backlog.
        conn.set_buffer_limit(None);
        Ok(TlsLink {
            conn,
            started: false,
            reported: false,
        })
    }

    /// Ciphertext read from the socket: the plaintext it holds is appended to `plaintext`;
    /// what rustls has to send (handshake messages, alerts) goes to `records`.
    pub fn receive(
        &mut self,
        mut input: &[u8],
        plaintext: &mut Vec<u8>,
        records: &mut impl Sink,
    ) -> TlsEnd {
        if !std::mem::replace(&mut self.started, true)
            && input.first().is_some_and(|&b| b != HANDSHAKE_RECORD)
        {
            return TlsEnd::PlainHttp;
        }
        let mut end = TlsEnd::Open;
        while !input.is_empty() && end == TlsEnd::Open {
            // Takes what fits in rustls's buffer; the rest after the records are processed.
            if let Err(error) = self.conn.read_tls(&mut input) {
                end = TlsEnd::Failed(rustls::Error::General(error.to_string()));
                break;
            }
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(error) => {
                    end = TlsEnd::Failed(error);
                    break;
                }
            };
            let (waiting, closed) = (state.plaintext_bytes_to_read(), state.peer_has_closed());
            let start = plaintext.len();
            plaintext.resize(start + waiting, 0);
            if self
                .conn
                .reader()
                .read_exact(&mut plaintext[start..])
                .is_err()
            {
                plaintext.truncate(start);
            }
            if closed {
                end = TlsEnd::Closed;
            }
        }
        self.flush(records);
        end
    }

    /// Seals the connection's plaintext into records in `records`.
    pub fn send(&mut self, plaintext: &[u8], records: &mut impl Sink) {
        // With no buffer limit the writer takes everything.
        let _ = self.conn.writer().write_all(plaintext);
        self.flush(records);
    }

    /// Queues `close_notify`: the peer learns that the end of the stream is not a truncation.
    pub fn close_notify(&mut self, records: &mut impl Sink) {
        self.conn.send_close_notify();
        self.flush(records);
    }

    /// Whether the TLS handshake is done.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Once, right after the handshake completed: whether it is TLS 1.3, and whether it
    /// resumed a session.
    pub fn established(&mut self) -> Option<(bool, bool)> {
        if self.reported || self.conn.is_handshaking() {
            return None;
        }
        self.reported = true;
        let tls13 = self.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        let resumed = self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        Some((tls13, resumed))
    }

    fn flush(&mut self, records: &mut impl Sink) {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut Records(records)).is_err() {
                break;
            }
        }
    }
}
