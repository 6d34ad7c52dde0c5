//! TLS behind the transport seam: ciphertext in, plaintext to the connection; plaintext from
//! the connection, records out to a [`Sink`]; `close_notify` before a close.
//!
//! # Memory
//! rustls's unbuffered connection, driven here, holds no buffer of its own: records are
//! decrypted in a per-thread scratch buffer (one per reactor) and written straight into the
//! connection's outbox or relay pipe. Between reads a connection keeps only what did not
//! make a whole record yet, usually nothing. rustls's connection is made when the
//! ClientHello is read (a client queued for its key exchange holds none), and once a TLS
//! 1.3 handshake is done it is dropped for the record layer alone ([`Records`]): an idle
//! `wss` connection costs 1.35 KB of heap, against 3.5 KB with rustls's connection kept and
//! 7.7 KB with its buffered one (`benches/tls_memory.rs`).

use std::cell::RefCell;
use std::sync::Arc;

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus,
};

use super::tls_records::{Ended, HandedOver, Records, Secret, Suite};
use super::Sink;

/// One connection's TLS state: rustls's connection through the handshake (and for TLS 1.2
/// all along); once a TLS 1.3 handshake is done, only its record layer ([`Records`]).
pub struct TlsLink {
    /// The settings its rustls connection is made with, when its ClientHello is read: a
    /// client waiting for its key exchange (queued, or in the kernel's buffers) holds no
    /// rustls state.
    config: Option<Arc<rustls::ServerConfig>>,
    /// rustls's connection, from the ClientHello until a TLS 1.3 handshake hands over to
    /// `records`.
    conn: Option<Box<UnbufferedServerConnection>>,
    /// TLS 1.3 after the handshake.
    records: Option<Box<Records>>,
    /// The application traffic secrets, (client's, server's), captured as rustls derives
    /// them, for the hand-over.
    secrets: Option<Box<(Secret, Secret)>>,
    /// Once the handshake is done: whether it is TLS 1.3 and resumed, until reported.
    outcome: Option<(bool, bool)>,
    /// Ciphertext short of a whole record, kept for the next read (unallocated when empty).
    partial: Vec<u8>,
    /// Bytes have arrived: the first read decides whether this is TLS at all.
    started: bool,
    /// The completed handshake was reported ([`TlsLink::established`]).
    reported: bool,
    /// The server's first flight was written: a key exchange (or a resumption) was spent.
    answered: bool,
    /// ALPN chose `h2`: the connection speaks HTTP/2 once the handshake is done.
    h2: bool,
    /// Where the ClientHello stands in the reactor's key exchanges.
    pub(super) hello: super::Hello,
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
    /// TLS failed: the alert that says why is queued; close once it is out.
    Failed(rustls::Error),
}

/// The first byte of a TLS handshake record (content type 22).
const HANDSHAKE_RECORD: u8 = 0x16;

/// The most ciphertext a connection may hold before its handshake is done: one whole
/// record of the largest size (16 KiB and its header). Real ClientHellos are 2 KB at most
/// (Chrome's with an X25519MLKEM768 key share is about 1.8 KB); nothing else a client sends
/// before the handshake completes is larger (no client certificates are asked for).
pub const MAX_HELD_BEFORE_HANDSHAKE: usize = 16 * 1024 + 5;

/// State changes one call may go through: far more than any input needs (each step
/// consumes a record or emits one), a bound so that no input can make it loop.
const MAX_STEPS: usize = 4096;

thread_local! {
    /// Where records are decrypted in place: one per reactor thread, reused by every call.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

type Status<'c, 'i> = UnbufferedStatus<'c, 'i, ServerConnectionData>;

thread_local! {
    /// The application traffic secrets rustls derived in this thread's last handshake step
    /// (client's, server's): logged by [`TrafficSecrets`] inside the call that derived
    /// them, taken right after it by the connection that made the call.
    static CAPTURED: RefCell<(Option<Secret>, Option<Secret>)> = const { RefCell::new((None, None)) };
}

/// rustls's key log, used for one thing: a TLS 1.3 connection's application traffic
/// secrets, which its record layer derives key updates from once rustls is gone.
#[derive(Debug)]
pub struct TrafficSecrets;

const CLIENT_TRAFFIC: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_TRAFFIC: &str = "SERVER_TRAFFIC_SECRET_0";

impl rustls::KeyLog for TrafficSecrets {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_TRAFFIC || label == SERVER_TRAFFIC
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        CAPTURED.with(|captured| {
            if let Ok(mut captured) = captured.try_borrow_mut() {
                match label {
                    CLIENT_TRAFFIC => captured.0 = Secret::new(secret),
                    SERVER_TRAFFIC => captured.1 = Secret::new(secret),
                    _ => {}
                }
            }
        });
    }
}

/// Both secrets, once both were logged (and forgets them here).
fn take_traffic_secrets() -> Option<(Secret, Secret)> {
    CAPTURED.with(|captured| {
        let mut captured = captured.try_borrow_mut().ok()?;
        match &mut *captured {
            (client @ Some(_), server @ Some(_)) => Some((client.take()?, server.take()?)),
            _ => None,
        }
    })
}

fn handed_over_failed() -> rustls::Error {
    rustls::Error::General("TLS record layer hand-over failed".into())
}

/// A direction's key and IV as rustls hands them over.
fn key_and_iv(secrets: &rustls::ConnectionTrafficSecrets) -> Option<(&[u8], &[u8])> {
    match secrets {
        rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | rustls::ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | rustls::ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            Some((key.as_ref(), iv.as_ref()))
        }
        _ => None,
    }
}

impl TlsLink {
    /// A server session for a connection just accepted on a TLS listener (its rustls
    /// connection is made when the first bytes are read).
    pub fn new(config: &Arc<rustls::ServerConfig>) -> Result<TlsLink, rustls::Error> {
        Ok(TlsLink {
            config: Some(Arc::clone(config)),
            conn: None,
            records: None,
            secrets: None,
            outcome: None,
            partial: Vec::new(),
            started: false,
            reported: false,
            answered: false,
            h2: false,
            hello: super::Hello::Unasked,
        })
    }

    /// Ciphertext read from the socket: the plaintext it holds is appended to `plaintext`;
    /// what rustls has to send (handshake messages, tickets, alerts) goes to `records`.
    ///
    /// # Copies and bounds
    /// rustls decrypts in place, so ciphertext is copied once into a writable buffer: the
    /// reactor's scratch buffer when nothing is held, else the end of what the connection
    /// holds, where it is processed and stays until rustls consumes it. Nothing held is
    /// copied again on the next read. Before the handshake is done a connection may hold at
    /// most [`MAX_HELD_BEFORE_HANDSHAKE`]: a ClientHello spread over more (a real one is 2 KB
    /// at most, with a post-quantum key share) gets an `illegal_parameter` alert and the
    /// connection fails, so that an unauthenticated peer holds little and costs little.
    pub fn receive(
        &mut self,
        input: &[u8],
        plaintext: &mut Vec<u8>,
        records: &mut impl Sink,
    ) -> TlsEnd {
        if !std::mem::replace(&mut self.started, true)
            && input.first().is_some_and(|&b| b != HANDSHAKE_RECORD)
        {
            return TlsEnd::PlainHttp;
        }
        let end = match self.partial.is_empty() {
            true => SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
                Ok(mut scratch) => self.receive_fresh(&mut scratch, input, plaintext, records),
                // Not reached (no call re-enters): a buffer of its own then.
                Err(_) => self.receive_fresh(&mut Vec::new(), input, plaintext, records),
            }),
            false => {
                let mut held = std::mem::take(&mut self.partial);
                held.extend_from_slice(input);
                let (consumed, end) = self.process(&mut held, plaintext, records);
                if end == TlsEnd::Open && consumed < held.len() {
                    held.drain(..consumed);
                    self.partial = held;
                }
                end
            }
        };
        // Judged on what is left once everything whole is processed: a client's Finished
        // with its first request behind it in one read is not held at all.
        if end == TlsEnd::Open
            && self.is_handshaking()
            && self.partial.len() > MAX_HELD_BEFORE_HANDSHAKE
        {
            self.partial = Vec::new();
            return self.refuse_oversized_handshake(records);
        }
        end
    }

    /// [`TlsLink::receive`] with nothing held: processed in `scratch`; what is left over (part
    /// of a record) is kept.
    fn receive_fresh(
        &mut self,
        scratch: &mut Vec<u8>,
        input: &[u8],
        plaintext: &mut Vec<u8>,
        records: &mut impl Sink,
    ) -> TlsEnd {
        scratch.clear();
        scratch.extend_from_slice(input);
        let (consumed, end) = self.process(scratch, plaintext, records);
        if end == TlsEnd::Open {
            if let Some(rest) = scratch.get(consumed..).filter(|rest| !rest.is_empty()) {
                self.partial = rest.to_vec();
            }
        }
        end
    }

    /// Fails the handshake of a peer that sent more than any real ClientHello: a fatal
    /// `illegal_parameter` alert (what OpenSSL sends for an excessive message), in the clear
    /// as every alert before the server's first flight.
    fn refuse_oversized_handshake(&mut self, records: &mut impl Sink) -> TlsEnd {
        const ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 47];
        records.append(ALERT.len(), |room| {
            room.copy_from_slice(&ALERT);
            ALERT.len()
        });
        TlsEnd::Failed(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::HandshakePayloadTooLarge,
        ))
    }

    /// Runs rustls over the ciphertext in `buffer` (decrypting it in place). Returns how many
    /// bytes it consumed, and how the read ended.
    fn process(
        &mut self,
        buffer: &mut [u8],
        plaintext: &mut Vec<u8>,
        records: &mut impl Sink,
    ) -> (usize, TlsEnd) {
        if let Some(layer) = self.records.as_deref_mut() {
            let (consumed, ended) = layer.receive(buffer, plaintext, records);
            let end = match ended {
                Ended::Open => TlsEnd::Open,
                Ended::Closed => TlsEnd::Closed,
                Ended::Failed(why) => TlsEnd::Failed(rustls::Error::General(why.into())),
            };
            return (consumed, end);
        }
        if let Some(config) = self.config.take() {
            match UnbufferedServerConnection::new(config) {
                Ok(conn) => self.conn = Some(Box::new(conn)),
                Err(error) => return (0, TlsEnd::Failed(error)),
            }
        }
        let Some(conn) = self.conn.as_deref_mut() else {
            return (0, TlsEnd::Failed(handed_over_failed()));
        };
        let mut consumed = 0;
        let mut end = TlsEnd::Open;
        for _ in 0..MAX_STEPS {
            let Status { mut discard, state } = conn.process_tls_records(&mut buffer[consumed..]);
            let state = match state {
                Ok(state) => state,
                Err(error) => {
                    consumed = consumed.saturating_add(discard).min(buffer.len());
                    end = TlsEnd::Failed(error);
                    break;
                }
            };
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                plaintext.extend_from_slice(record.payload);
                            }
                            Err(error) => {
                                end = TlsEnd::Failed(error);
                                break;
                            }
                        }
                    }
                }
                ConnectionState::ReadEarlyData(mut early) => {
                    // Not offered (no early data is configured); read like traffic if sent.
                    while let Some(Ok(record)) = early.next_record() {
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    self.answered = true;
                    encode_into(records, &mut encode)
                }
                // The records are in the sink: the backend sends them from there.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed | ConnectionState::Closed => end = TlsEnd::Closed,
                // Everything whole is processed: the rest waits for more bytes.
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => {
                    consumed = consumed.saturating_add(discard).min(buffer.len());
                    break;
                }
                _ => {}
            }
            consumed = consumed.saturating_add(discard).min(buffer.len());
            if end != TlsEnd::Open {
                break;
            }
        }
        if let TlsEnd::Failed(error) = &end {
            let rest = buffer.get_mut(consumed..).unwrap_or_default();
            self.queued_after_failure(error, rest, records);
            return (consumed, end);
        }
        if let Some(captured) = take_traffic_secrets() {
            self.secrets = Some(Box::new(captured));
        }
        if end == TlsEnd::Open && !self.is_handshaking() && self.outcome.is_none() {
            end = self.handshake_done();
        }
        (consumed, end)
    }

    /// The handshake just completed: its outcome is kept for [`TlsLink::established`], and
    /// a TLS 1.3 connection hands over to its record layer (rustls's connection is dropped).
    fn handshake_done(&mut self) -> TlsEnd {
        let Some(conn) = self.conn.as_deref() else {
            return TlsEnd::Open;
        };
        let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        self.outcome = Some((tls13, resumed));
        self.h2 = conn.alpn_protocol() == Some(crate::tls::ALPN_H2);
        let suite = conn
            .negotiated_cipher_suite()
            .and_then(|suite| Suite::of(suite.suite()));
        let (Some(suite), Some(secrets), true) = (suite, self.secrets.take(), tls13) else {
            // Not one this layer carries (or the secrets were not seen): rustls goes on.
            return TlsEnd::Open;
        };
        let Some(conn) = self.conn.take() else {
            return TlsEnd::Open;
        };
        let (client, server) = *secrets;
        match (*conn).dangerous_into_kernel_connection() {
            Ok((extracted, _kernel)) => {
                let (tx_seq, tx) = &extracted.tx;
                let (rx_seq, rx) = &extracted.rx;
                let layer = match (key_and_iv(tx), key_and_iv(rx)) {
                    (Some((tx_key, tx_iv)), Some((rx_key, rx_iv))) => Records::new(
                        suite,
                        HandedOver {
                            key: tx_key,
                            iv: tx_iv,
                            seq: *tx_seq,
                            secret: server,
                        },
                        HandedOver {
                            key: rx_key,
                            iv: rx_iv,
                            seq: *rx_seq,
                            secret: client,
                        },
                    ),
                    _ => None,
                };
                match layer {
                    Some(layer) => {
                        self.records = Some(Box::new(layer));
                        TlsEnd::Open
                    }
                    None => TlsEnd::Failed(handed_over_failed()),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "TLS record layer hand-over failed");
                TlsEnd::Failed(error)
            }
        }
    }

    /// After `error`, writes what rustls queued with it: its alert, and before it the rest of
    /// a flight it had started (a failed ALPN choice comes after the ServerHello).
    ///
    /// Each call pops one queued record first; once none is left, rustls reads `rest` again
    /// (never an empty slice: see `with_traffic`). After an error found in a record itself
    /// (malformed, oversized, undecryptable, out of place), that record is still in `rest`,
    /// and reading it again would queue a second fatal alert: rustls queued only the alert
    /// then (earlier flights were written as they came), so one call takes it.
    fn queued_after_failure(
        &mut self,
        error: &rustls::Error,
        rest: &mut [u8],
        records: &mut impl Sink,
    ) {
        let in_a_record = matches!(
            error,
            rustls::Error::InvalidMessage(_)
                | rustls::Error::PeerSentOversizedRecord
                | rustls::Error::DecryptError
                | rustls::Error::PeerMisbehaved(_)
        );
        let calls = if in_a_record { 1 } else { MAX_STEPS };
        let Some(conn) = self.conn.as_deref_mut() else {
            return;
        };
        for _ in 0..calls {
            match conn.process_tls_records(rest).state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => encode_into(records, &mut encode),
                _ => return,
            }
        }
    }

    /// Seals the connection's plaintext into records in `records`. Before the handshake is
    /// done there is no session to seal it with: it is dropped (nothing is written then).
    pub fn send(&mut self, plaintext: &[u8], records: &mut impl Sink) {
        if let Some(layer) = self.records.as_deref_mut() {
            return layer.send(plaintext, records);
        }
        self.with_held(records, |traffic, out| {
            traffic.encrypt(plaintext, out).map_err(too_small)
        });
    }

    /// Queues `close_notify`: the peer learns that the end of the stream is not a truncation.
    pub fn close_notify(&mut self, records: &mut impl Sink) {
        if let Some(layer) = self.records.as_deref_mut() {
            return layer.close_notify(records);
        }
        self.with_held(records, |traffic, out| {
            traffic.queue_close_notify(out).map_err(too_small)
        });
    }

    /// Ciphertext held between reads (part of a record, or of a handshake message spread over
    /// records): at most [`MAX_HELD_BEFORE_HANDSHAKE`] while handshaking.
    pub fn held(&self) -> usize {
        self.partial.len()
    }

    /// Whether no byte has been read into the session yet: nothing was spent on the client.
    pub fn is_fresh(&self) -> bool {
        !self.started
    }

    /// Keeps the first bytes of a fresh session unread, for a later turn's key exchange
    /// ([`TlsLink::take_unread`]); false (nothing kept) past what a ClientHello can take.
    pub fn keep_unread(&mut self, bytes: &[u8]) -> bool {
        let fits = self.partial.len().saturating_add(bytes.len()) <= MAX_HELD_BEFORE_HANDSHAKE;
        if fits && !self.started {
            self.partial.extend_from_slice(bytes);
        }
        fits && !self.started
    }

    /// The bytes [`TlsLink::keep_unread`] kept, to be received now.
    pub fn take_unread(&mut self) -> Vec<u8> {
        match self.started {
            true => Vec::new(),
            false => std::mem::take(&mut self.partial),
        }
    }

    /// Whether the server's first flight went out: the key exchange was spent.
    pub fn has_answered(&self) -> bool {
        self.answered
    }

    /// Makes the record layer update its own keys after so many records (tests only: the
    /// real budget is 2^24).
    #[cfg(test)]
    pub(crate) fn update_keys_every(&mut self, records: u64) {
        if let Some(layer) = self.records.as_deref_mut() {
            layer.update_keys_every(records);
        }
    }

    /// Whether only the TLS 1.3 record layer is left (rustls's connection dropped).
    pub fn is_handed_over(&self) -> bool {
        self.records.is_some()
    }

    /// Whether the client chose HTTP/2 (ALPN `h2`) in a completed handshake.
    pub fn speaks_h2(&self) -> bool {
        self.h2
    }

    /// Whether the TLS handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        match &self.conn {
            Some(conn) => conn.is_handshaking(),
            None => self.config.is_some(),
        }
    }

    /// Once, right after the handshake completed: whether it is TLS 1.3, and whether it
    /// resumed a session.
    pub fn established(&mut self) -> Option<(bool, bool)> {
        if self.reported {
            return None;
        }
        let outcome = self.outcome?;
        self.reported = true;
        Some(outcome)
    }

    /// [`TlsLink::with_traffic`] over the ciphertext this connection holds.
    fn with_held<S: Sink>(
        &mut self,
        records: &mut S,
        write: impl FnMut(&mut Traffic<'_>, &mut [u8]) -> Written,
    ) {
        let mut held = std::mem::take(&mut self.partial);
        let discarded = self.with_traffic(&mut held, records, write);
        if discarded < held.len() {
            held.drain(..discarded);
            self.partial = held;
        }
    }

    /// Writes what rustls has queued, then, once application data may be sent, what
    /// `write` makes of it. Returns how much of `incoming` rustls discarded.
    ///
    /// # The bytes rustls has seen
    /// rustls remembers how far it got into a handshake message spread over records (it
    /// reassembles it in place, in the caller's buffer), and every call must show it at least
    /// those bytes again: `incoming` is what is held, never an empty slice (an empty one
    /// panics inside rustls once a client has sent part of a fragmented handshake message,
    /// a KeyUpdate after the handshake included).
    fn with_traffic<S: Sink>(
        &mut self,
        incoming: &mut [u8],
        records: &mut S,
        mut write: impl FnMut(&mut Traffic<'_>, &mut [u8]) -> Written,
    ) -> usize {
        let mut consumed = 0;
        let len = incoming.len();
        let Some(conn) = self.conn.as_deref_mut() else {
            return 0;
        };
        for _ in 0..MAX_STEPS {
            let Status { discard, state } = conn.process_tls_records(&mut incoming[consumed..]);
            consumed = (consumed + discard).min(len);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => encode_into(records, &mut encode),
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                // Reported once after the peer's `close_notify`: writing may go on.
                Ok(ConnectionState::PeerClosed) => {}
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    append(records, |out| write(&mut traffic, out));
                    return consumed;
                }
                _ => return consumed,
            }
        }
        consumed
    }
}

/// What application data is written through.
type Traffic<'c> = rustls::unbuffered::WriteTraffic<'c, ServerConnectionData>;
/// Bytes written, or the room needed (`Some`), or a failure (`None`).
type Written = Result<usize, Option<usize>>;

fn too_small(error: EncryptError) -> Option<usize> {
    match error {
        EncryptError::InsufficientSize(e) => Some(e.required_size),
        _ => None,
    }
}

/// Appends the record rustls has ready to `records`.
fn encode_into(records: &mut impl Sink, encode: &mut EncodeTlsData<'_, ServerConnectionData>) {
    append(records, |out| match encode.encode(out) {
        Ok(n) => Ok(n),
        Err(EncodeError::InsufficientSize(e)) => Err(Some(e.required_size)),
        Err(_) => Err(None),
    });
}

/// Appends to `records` what `encode` writes: asked first with no room, it says how much it
/// needs (`Err(Some(size))`), so that the sink grows once and only when there is something.
fn append(
    records: &mut impl Sink,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) {
    if let Err(Some(needed)) = encode(&mut []) {
        records.append(needed, |room| encode(room).unwrap_or(0));
    }
}
