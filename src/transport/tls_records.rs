//! TLS 1.3 once its handshake is done, without rustls: the record layer of RFC 8446 §5 and
//! the key updates of §4.6.3, over the traffic keys rustls hands over
//! (`dangerous_into_kernel_connection`, the API meant for kTLS), with *ring*'s AEAD.
//!
//! # Why
//! A server holding a storm's clients holds them idle: what each costs is what stays after
//! its handshake. rustls keeps its whole connection state for the rest of the connection's
//! life (the record layer's two AEAD contexts, the key schedule, the handshake's leftovers,
//! buffers): about 3.5 KB of heap per idle connection. This keeps what the record layer
//! needs and nothing else: two keys (inline, no allocation of their own), two IVs, two
//! sequence numbers and the two traffic secrets a key update derives from, about 1.2 KB.
//! TLS 1.2 connections stay with rustls.
//!
//! # What a peer can send here
//! Application data; `close_notify` (the stream's end) and `user_canceled` (ignored); any
//! other alert ends the connection; a KeyUpdate (answered with ours when the peer asks for
//! it). Anything else (another handshake message, a handshake message split over records,
//! an unknown content type, an oversized record, a record that does not decrypt) fails the
//! connection with the alert RFC 8446 names for it.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

use super::Sink;

/// Content types (RFC 8446 §5.1).
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// The largest plaintext a record carries, and what its ciphertext may add to it.
const MAX_PLAINTEXT: usize = 16 * 1024;
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const HEADER: usize = 5;
const TAG: usize = 16;
/// Handshake message type of a KeyUpdate.
const KEY_UPDATE: u8 = 24;
/// Records sent under one key before it is replaced: under AES-GCM's confidentiality limit
/// (2^24.5 full records, RFC 8446 §5.5), as rustls does for the records it seals.
const RECORDS_PER_KEY: u64 = 1 << 24;

/// Alerts sent (RFC 8446 §6).
pub(super) mod alert {
    pub const CLOSE_NOTIFY: u8 = 0;
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const BAD_RECORD_MAC: u8 = 20;
    pub const RECORD_OVERFLOW: u8 = 22;
    pub const DECODE_ERROR: u8 = 50;
    pub const USER_CANCELED: u8 = 90;
}

/// A TLS 1.3 cipher suite this layer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Suite {
    Aes128GcmSha256,
    Aes256GcmSha384,
    Chacha20Poly1305Sha256,
}

impl Suite {
    pub(super) fn of(suite: rustls::CipherSuite) -> Option<Suite> {
        match suite {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(Suite::Aes128GcmSha256),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(Suite::Aes256GcmSha384),
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => {
                Some(Suite::Chacha20Poly1305Sha256)
            }
            _ => None,
        }
    }

    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes128GcmSha256 => &aead::AES_128_GCM,
            Suite::Aes256GcmSha384 => &aead::AES_256_GCM,
            Suite::Chacha20Poly1305Sha256 => &aead::CHACHA20_POLY1305,
        }
    }

    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Suite::Aes256GcmSha384 => hkdf::HKDF_SHA384,
            _ => hkdf::HKDF_SHA256,
        }
    }

    fn hash_len(self) -> usize {
        match self {
            Suite::Aes256GcmSha384 => 48,
            _ => 32,
        }
    }
}

/// A traffic secret, the size of the suite's hash.
#[derive(Clone)]
pub(super) struct Secret {
    bytes: [u8; 48],
    len: u8,
}

impl Secret {
    pub(super) fn new(bytes: &[u8]) -> Option<Secret> {
        let mut secret = Secret {
            bytes: [0; 48],
            len: u8::try_from(bytes.len()).ok()?,
        };
        secret.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(secret)
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.bytes);
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context, into `out`.
fn expand_label(suite: Suite, secret: &[u8], label: &[u8], out: &mut [u8]) -> Option<()> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let length = u16::try_from(out.len()).ok()?.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).ok()?];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    let prk = hkdf::Prk::new_less_safe(suite.hkdf(), secret);
    prk.expand(&info, Len(out.len())).ok()?.fill(out).ok()
}

/// One direction's keys.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    secret: Secret,
}

impl Keys {
    /// The keys of a direction rustls handed over (its key, IV and next sequence number),
    /// with the traffic secret they came from.
    fn handed_over(suite: Suite, key: &[u8], iv: &[u8], seq: u64, secret: Secret) -> Option<Keys> {
        let key = LessSafeKey::new(UnboundKey::new(suite.aead(), key).ok()?);
        Some(Keys {
            key,
            iv: iv.try_into().ok()?,
            seq,
            secret,
        })
    }

    /// The next generation (a key update): `secret' = HKDF-Expand-Label(secret, "traffic
    /// upd", "", Hash.length)`, its key and IV, from sequence number 0.
    fn update(&mut self, suite: Suite) -> Option<()> {
        let mut next = [0u8; 48];
        let next = &mut next[..suite.hash_len()];
        expand_label(suite, self.secret.as_slice(), b"traffic upd", next)?;
        let mut key = [0u8; 32];
        let key = &mut key[..suite.aead().key_len()];
        expand_label(suite, next, b"key", key)?;
        let mut iv = [0u8; 12];
        expand_label(suite, next, b"iv", &mut iv)?;
        *self = Keys::handed_over(suite, key, &iv, 0, Secret::new(next)?)?;
        Some(())
    }

    /// The per-record nonce: the IV xor the sequence number (RFC 8446 §5.3).
    fn nonce(&self) -> Nonce {
        let mut nonce = self.iv;
        for (byte, seq) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *byte ^= seq;
        }
        Nonce::assume_unique_for_key(nonce)
    }
}

/// How a read ended, beside the plaintext it gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// More may come.
    Open,
    /// The peer sent `close_notify`.
    Closed,
    /// The connection failed: the alert that says why (if one is to be sent) is queued.
    Failed(&'static str),
}

/// An established TLS 1.3 connection's record layer.
pub(super) struct Records {
    suite: Suite,
    tx: Keys,
    rx: Keys,
    /// Records sealed under one key before our own key update ([`RECORDS_PER_KEY`]; lower
    /// in tests).
    records_per_key: u64,
}

/// What rustls hands over for one direction: key, IV, next sequence number, and the traffic
/// secret (captured as it was derived).
pub(super) struct HandedOver<'a> {
    pub key: &'a [u8],
    pub iv: &'a [u8],
    pub seq: u64,
    pub secret: Secret,
}

impl Records {
    pub(super) fn new(suite: Suite, tx: HandedOver<'_>, rx: HandedOver<'_>) -> Option<Records> {
        Some(Records {
            suite,
            tx: Keys::handed_over(suite, tx.key, tx.iv, tx.seq, tx.secret)?,
            rx: Keys::handed_over(suite, rx.key, rx.iv, rx.seq, rx.secret)?,
            records_per_key: RECORDS_PER_KEY,
        })
    }

    /// Decrypts the whole records at the start of `buffer` in place: their application data
    /// is appended to `plaintext`, what must be answered (a KeyUpdate, an alert) goes to
    /// `records`. Returns how many bytes were consumed (a partial record is left) and how
    /// the read ended.
    pub(super) fn receive(
        &mut self,
        buffer: &mut [u8],
        plaintext: &mut Vec<u8>,
        records: &mut impl Sink,
    ) -> (usize, Ended) {
        let mut consumed = 0;
        loop {
            let rest = &mut buffer[consumed..];
            let Some(header) = rest.get(..HEADER) else {
                return (consumed, Ended::Open);
            };
            let header: [u8; HEADER] = [header[0], header[1], header[2], header[3], header[4]];
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if header[0] != APPLICATION_DATA {
                return (consumed, self.fail(alert::UNEXPECTED_MESSAGE, records));
            }
            if len > MAX_CIPHERTEXT {
                return (consumed, self.fail(alert::RECORD_OVERFLOW, records));
            }
            if len <= TAG {
                // Too short to hold a tag and a content type: it cannot authenticate.
                return (consumed, self.fail(alert::BAD_RECORD_MAC, records));
            }
            let Some(body) = rest.get_mut(HEADER..HEADER + len) else {
                return (consumed, Ended::Open);
            };
            let nonce = self.rx.nonce();
            let Ok(opened) = self.rx.key.open_in_place(nonce, Aad::from(header), body) else {
                return (consumed, self.fail(alert::BAD_RECORD_MAC, records));
            };
            consumed += HEADER + len;
            self.rx.seq = self.rx.seq.saturating_add(1);
            // The inner plaintext: content, its type, then zero padding.
            let Some(end) = opened.iter().rposition(|&b| b != 0) else {
                return (consumed, self.fail(alert::UNEXPECTED_MESSAGE, records));
            };
            if end > MAX_PLAINTEXT {
                return (consumed, self.fail(alert::RECORD_OVERFLOW, records));
            }
            let (content, kind) = (&opened[..end], opened[end]);
            let ended = match kind {
                APPLICATION_DATA => {
                    plaintext.extend_from_slice(content);
                    Ended::Open
                }
                ALERT => match content {
                    [_, alert::CLOSE_NOTIFY] => Ended::Closed,
                    [_, alert::USER_CANCELED] => Ended::Open,
                    [_, _] => Ended::Failed("the peer sent a fatal alert"),
                    _ => self.fail(alert::DECODE_ERROR, records),
                },
                HANDSHAKE => self.handshake_message(content, records),
                _ => self.fail(alert::UNEXPECTED_MESSAGE, records),
            };
            if ended != Ended::Open {
                return (consumed, ended);
            }
        }
    }

    /// A handshake message after the handshake: only a KeyUpdate is expected (a server asks
    /// for no certificate after the handshake, and clients send no tickets).
    fn handshake_message(&mut self, message: &[u8], records: &mut impl Sink) -> Ended {
        let request = match message {
            [KEY_UPDATE, 0, 0, 1, request @ (0 | 1)] => *request,
            [KEY_UPDATE, ..] => return self.fail(alert::DECODE_ERROR, records),
            _ => return self.fail(alert::UNEXPECTED_MESSAGE, records),
        };
        if self.rx.update(self.suite).is_none() {
            return Ended::Failed("key update failed");
        }
        if request == 1 {
            // Ours goes under the old key, and everything after it under the new one.
            self.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], records);
            if self.tx.update(self.suite).is_none() {
                return Ended::Failed("key update failed");
            }
        }
        Ended::Open
    }

    /// Lowers the records sealed under one key before our own key update, so that a test
    /// reaches it.
    #[cfg(test)]
    pub(super) fn update_keys_every(&mut self, records: u64) {
        self.records_per_key = records;
    }

    /// Seals `plaintext` into application data records in `records`.
    pub(super) fn send(&mut self, plaintext: &[u8], records: &mut impl Sink) {
        for chunk in plaintext.chunks(MAX_PLAINTEXT) {
            self.seal(APPLICATION_DATA, chunk, records);
        }
    }

    /// Queues `close_notify`.
    pub(super) fn close_notify(&mut self, records: &mut impl Sink) {
        self.seal(ALERT, &[1, alert::CLOSE_NOTIFY], records);
    }

    /// Queues a fatal alert and says the connection failed.
    fn fail(&mut self, description: u8, records: &mut impl Sink) -> Ended {
        self.seal(ALERT, &[2, description], records);
        Ended::Failed(match description {
            alert::BAD_RECORD_MAC => "a record failed to decrypt",
            alert::RECORD_OVERFLOW => "an oversized record",
            alert::DECODE_ERROR => "a malformed message",
            _ => "an unexpected message",
        })
    }

    /// One record of content type `kind` holding `content` (at most a record's worth),
    /// sealed in place at the end of `records`; past the key's record budget our own key
    /// update goes first.
    fn seal(&mut self, kind: u8, content: &[u8], records: &mut impl Sink) {
        if self.tx.seq >= self.records_per_key && kind != HANDSHAKE {
            self.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], records);
            if self.tx.update(self.suite).is_none() {
                return;
            }
        }
        let inner = content.len() + 1;
        let total = HEADER + inner + TAG;
        let Ok(len) = u16::try_from(inner + TAG) else {
            return;
        };
        let header = [
            APPLICATION_DATA,
            3,
            3,
            len.to_be_bytes()[0],
            len.to_be_bytes()[1],
        ];
        let nonce = self.tx.nonce();
        let key = &self.tx.key;
        records.append(total, |room| {
            let Some(room) = room.get_mut(..total) else {
                return 0;
            };
            room[..HEADER].copy_from_slice(&header);
            room[HEADER..HEADER + content.len()].copy_from_slice(content);
            room[HEADER + content.len()] = kind;
            let (body, tag_room) = room[HEADER..].split_at_mut(inner);
            match key.seal_in_place_separate_tag(nonce, Aad::from(header), body) {
                Ok(tag) => {
                    tag_room.copy_from_slice(tag.as_ref());
                    total
                }
                Err(_) => 0,
            }
        });
        self.tx.seq = self.tx.seq.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_label_matches_rfc_8448() {
        // RFC 8448 §3 (simple 1-RTT handshake): the server's application traffic secret
        // and the write key and IV derived from it.
        let secret = hex("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643");
        let mut key = [0u8; 16];
        expand_label(Suite::Aes128GcmSha256, &secret, b"key", &mut key).unwrap();
        assert_eq!(key.to_vec(), hex("9f02283b6c9c07efc26bb9f2ac92e356"));
        let mut iv = [0u8; 12];
        expand_label(Suite::Aes128GcmSha256, &secret, b"iv", &mut iv).unwrap();
        assert_eq!(iv.to_vec(), hex("cf782b88dd83549aadf1e984"));
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
