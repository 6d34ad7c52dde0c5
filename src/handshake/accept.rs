//! The `Sec-WebSocket-Accept` token (RFC 6455 section 4.2.2, item 5.4).

use base64_simd::{Out, STANDARD};
use sha1::{Digest, Sha1};

/// The GUID every WebSocket server appends to the client's key before hashing.
pub const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Length of an accept token: base64 of a 20-byte SHA-1 digest.
pub const ACCEPT_LEN: usize = 28;

/// Length of a well-formed `Sec-WebSocket-Key`: base64 of 16 bytes, with padding.
pub const KEY_LEN: usize = 24;

/// Computes `base64(SHA-1(key + GUID))` without allocating.
///
/// `key` is the `Sec-WebSocket-Key` value exactly as the client sent it (surrounding
/// whitespace removed); it is hashed as text, never decoded.
///
/// ```
/// let token = wsedge::handshake::accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
/// assert_eq!(&token, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &[u8]) -> [u8; ACCEPT_LEN] {
    // RustCrypto's SHA-1 uses the SHA-NI instructions when the CPU has them: about 100 ns
    // here against 400 ns for ring's portable SHA-1 (`cargo bench --bench handshake`).
    let mut hasher = Sha1::new();
    hasher.update(key);
    hasher.update(WEBSOCKET_GUID);
    let digest = hasher.finalize();
    let mut token = [0u8; ACCEPT_LEN];
    // A 20-byte input always encodes to exactly 28 bytes, so the output fits.
    let _encoded = STANDARD.encode(digest.as_slice(), Out::from_slice(&mut token));
    token
}

/// Encodes 16 random bytes as a `Sec-WebSocket-Key`, for clients.
pub fn key_from_nonce(nonce: &[u8; 16]) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    let _encoded = STANDARD.encode(nonce, Out::from_slice(&mut key));
    key
}

/// Whether `key` is base64 that decodes to exactly 16 bytes, as RFC 6455 requires.
pub fn is_valid_key(key: &[u8]) -> bool {
    if key.len() != KEY_LEN {
        return false;
    }
    let mut decoded = [0u8; 18];
    // 24 base64 characters decode to at most 18 bytes, so `decoded` always fits
    // (base64-simd asserts that the output is large enough).
    matches!(STANDARD.decode(key, Out::from_slice(&mut decoded)), Ok(bytes) if bytes.len() == 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6455_sample_key() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn nonce_round_trips_through_key() {
        let key = key_from_nonce(b"the sample nonce");
        assert_eq!(&key, b"dGhlIHNhbXBsZSBub25jZQ==");
        assert!(is_valid_key(&key));
    }

    #[test]
    fn keys_that_are_not_16_bytes_are_invalid() {
        assert!(!is_valid_key(b""));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ")); // unpadded
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ===")); // 25 chars
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZWVl")); // 18 bytes
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25j*Q==")); // not base64
    }
}
