//! UTF-8 of text messages checked as they arrive (RFC 6455 section 8.1, Autobahn's "fail
//! fast"): invalid bytes fail the connection in the fragment, or the read, that carries them,
//! not at the end of the message. Each byte is checked as it arrives and, if its frame spans
//! reads, once more when the frame is whole: whatever the fragmenting, a message's cost stays
//! linear.

/// What a prefix of a text message's bytes says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// Valid so far: the first `n` bytes are whole characters; any bytes after them start a
    /// character that the next bytes may complete.
    Valid(usize),
    /// No continuation can make these bytes valid.
    Invalid,
}

/// Checks `bytes`, a part of a message that starts on a character boundary.
pub fn check_prefix(bytes: &[u8]) -> Prefix {
    match simdutf8::compat::from_utf8(bytes) {
        Ok(_) => Prefix::Valid(bytes.len()),
        // A sequence cut at the end: the next bytes decide.
        Err(error) if error.error_len().is_none() => Prefix::Valid(error.valid_up_to()),
        Err(_) => Prefix::Invalid,
    }
}

/// The mask for payload bytes starting at `offset` in their frame.
pub fn mask_at(mask: [u8; 4], offset: usize) -> [u8; 4] {
    [0, 1, 2, 3].map(|i| mask[(offset + i) % 4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_character_waits_and_a_bad_one_fails_at_once() {
        let euro = "€".as_bytes();
        assert_eq!(check_prefix(b"abc"), Prefix::Valid(3));
        assert_eq!(check_prefix(&[b'a', euro[0], euro[1]]), Prefix::Valid(1));
        assert_eq!(check_prefix(&[b'a', 0xff]), Prefix::Invalid);
        // A surrogate half is refused as soon as its second byte is seen.
        assert_eq!(check_prefix(&[0xed, 0xa0]), Prefix::Invalid);
        assert_eq!(
            check_prefix(&[0xf4, 0x90]),
            Prefix::Invalid,
            "over U+10FFFF"
        );
    }

    #[test]
    fn masks_rotate_with_the_offset() {
        assert_eq!(mask_at([1, 2, 3, 4], 0), [1, 2, 3, 4]);
        assert_eq!(mask_at([1, 2, 3, 4], 5), [2, 3, 4, 1]);
    }
}
