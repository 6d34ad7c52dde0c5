//! WebSocket frame headers (RFC 6455 section 5.2), as a server reads and writes them.

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// Continues a fragmented message.
    Continuation,
    /// A UTF-8 text message.
    Text,
    /// A binary message.
    Binary,
    /// Close handshake.
    Close,
    /// Ping: answered with a pong carrying the same payload.
    Ping,
    /// Pong: ignored.
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Control frames: close, ping, pong.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Close status codes wsedge sends (RFC 6455 section 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: going away (idle timeout, server shutdown).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1007: text that is not UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1009: message larger than the limit.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);

    /// Whether a peer may send this code in a Close frame (RFC 6455 section 7.4).
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1011 | 1012..=1014 | 3000..=4999)
    }
}

/// A frame header, parsed. The payload follows it, still masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key (client frames are always masked).
    pub mask: [u8; 4],
    /// Payload length.
    pub payload_len: u64,
    /// Length of the header itself (2 to 14 bytes).
    pub header_len: usize,
}

/// Why a client frame is a protocol violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RSV bits set (no extension was negotiated), unknown opcode, unmasked client frame,
    /// fragmented or oversized control frame, or a 64-bit length with its top bit set:
    /// close 1002. (A length in more bytes than it needs is accepted: RFC 6455 asks senders
    /// for the minimal form, and refusing it would only break clients, never protect us.)
    Protocol,
}

/// The outcome of looking at the start of a buffer for a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderParse {
    /// Not enough bytes for the header yet.
    Partial,
    /// A complete header.
    Header(FrameHeader),
    /// A header no client may send.
    Invalid(FrameError),
}

/// Parses a client frame header. Rule violations visible in the first two bytes are
/// reported before the rest of the header arrives, so a bad peer is cut off at once.
pub fn parse_client_header(buf: &[u8]) -> HeaderParse {
    let [b0, b1, ..] = *buf else {
        return HeaderParse::Partial;
    };
    let fin = b0 & 0x80 != 0;
    let Some(opcode) = OpCode::from_bits(b0 & 0x0F) else {
        return HeaderParse::Invalid(FrameError::Protocol);
    };
    let len7 = b1 & 0x7F;
    let violates = b0 & 0x70 != 0 // no extension negotiated: RSV must be 0
        || b1 & 0x80 == 0 // clients must mask
        || (opcode.is_control() && (!fin || len7 > 125));
    if violates {
        return HeaderParse::Invalid(FrameError::Protocol);
    }
    let (payload_len, ext_len) = match len7 {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return HeaderParse::Partial,
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return HeaderParse::Invalid(FrameError::Protocol);
                }
                (len, 8)
            }
            None => return HeaderParse::Partial,
        },
        n => (u64::from(n), 0),
    };
    let mask_at = 2 + ext_len;
    let Some(mask) = buf.get(mask_at..mask_at + 4) else {
        return HeaderParse::Partial;
    };
    HeaderParse::Header(FrameHeader {
        fin,
        opcode,
        mask: [mask[0], mask[1], mask[2], mask[3]],
        payload_len,
        header_len: mask_at + 4,
    })
}

/// Appends an unmasked server frame header for a final frame.
pub fn write_server_header(out: &mut Vec<u8>, opcode: OpCode, payload_len: usize) {
    out.push(0x80 | opcode.bits());
    match payload_len {
        0..=125 => out.push(payload_len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(payload_len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
    }
}

/// Appends a Close frame with `code` (no reason).
pub fn write_close(out: &mut Vec<u8>, code: CloseCode) {
    out.extend_from_slice(&close_frame(code));
}

/// A Close frame with `code`, as bytes.
pub const fn close_frame(code: CloseCode) -> [u8; 4] {
    let [hi, lo] = code.0.to_be_bytes();
    [0x88, 0x02, hi, lo]
}

/// Appends `payload` to `out`, unmasked with `mask`.
pub fn unmask_into(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    let start = out.len();
    out.extend_from_slice(payload);
    let tail = &mut out[start..];
    let mut chunks = tail.chunks_exact_mut(4);
    // Four bytes at a time: the compiler vectorises this loop.
    for chunk in &mut chunks {
        for (byte, key) in chunk.iter_mut().zip(mask) {
            *byte ^= key;
        }
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_short_medium_and_long_lengths() {
        let short = [0x81, 0x85, 1, 2, 3, 4];
        assert!(matches!(
            parse_client_header(&short),
            HeaderParse::Header(FrameHeader {
                fin: true,
                opcode: OpCode::Text,
                payload_len: 5,
                header_len: 6,
                ..
            })
        ));
        let medium = [0x82, 0xFE, 0x01, 0x00, 1, 2, 3, 4];
        assert!(matches!(
            parse_client_header(&medium),
            HeaderParse::Header(FrameHeader {
                payload_len: 256,
                header_len: 8,
                ..
            })
        ));
        let long = [0x02, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 9, 9, 9, 9];
        assert!(matches!(
            parse_client_header(&long),
            HeaderParse::Header(FrameHeader {
                fin: false,
                payload_len: 65536,
                header_len: 14,
                ..
            })
        ));
        for cut in 0..long.len() {
            assert_eq!(
                parse_client_header(&long[..cut]),
                HeaderParse::Partial,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn rejects_what_no_client_may_send() {
        let bad: &[&[u8]] = &[
            &[0x81, 0x05],                            // unmasked
            &[0xC1, 0x85],                            // RSV1 without an extension
            &[0x83, 0x85],                            // reserved opcode
            &[0x09, 0x80],                            // fragmented ping
            &[0x89, 0xFE],                            // ping longer than 125
            &[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0], // 64-bit length with the top bit set
        ];
        for frame in bad {
            assert_eq!(
                parse_client_header(frame),
                HeaderParse::Invalid(FrameError::Protocol),
                "{frame:x?}"
            );
        }
    }

    #[test]
    fn unmasking_round_trips() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let masked = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let mut out = Vec::new();
        unmask_into(&mut out, &masked, mask);
        assert_eq!(out, b"Hello"); // RFC 6455 section 5.7
    }

    #[test]
    fn server_headers_pick_the_shortest_length() {
        for (len, expected) in [
            (5usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let mut out = Vec::new();
            write_server_header(&mut out, OpCode::Binary, len);
            assert_eq!(out.len(), expected, "len {len}");
        }
    }
}
