//! The client side of WebSockets over HTTP/2, with no I/O: what a client writes (the
//! preface, SETTINGS, an extended CONNECT, DATA, RST_STREAM) and the frames it reads back.
//! `wsedge check --h2` and the load generator (`wsedge-loadgen --h2`) speak through it.
//!
//! It is a client for measuring and diagnosing, not a general one: it keeps no stream
//! states and leaves flow control to the default windows (what it reads is small).

use loona_hpack::{Decoder, Encoder};

use super::PREFACE;

/// Frame types (RFC 9113 6).
#[allow(missing_docs)]
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 3).
const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
/// The largest frame a peer may send before it has seen SETTINGS_MAX_FRAME_SIZE.
const MAX_FRAME: usize = 16_384;

/// A frame as the client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// SETTINGS.
    Settings {
        /// An acknowledgement of the client's.
        ack: bool,
        /// SETTINGS_ENABLE_CONNECT_PROTOCOL = 1: extended CONNECT is allowed.
        connect_protocol: bool,
    },
    /// A response (or trailers).
    Headers {
        /// The stream it answers.
        stream: u32,
        /// `:status`.
        status: Option<u16>,
        /// Every field, decoded.
        fields: Vec<(String, String)>,
        /// The server ended the stream.
        end_stream: bool,
    },
    /// Bytes on a stream.
    Data {
        /// The stream.
        stream: u32,
        /// The bytes, padding removed.
        payload: Vec<u8>,
        /// The server ended the stream.
        end_stream: bool,
    },
    /// The server reset a stream.
    Reset {
        /// The stream.
        stream: u32,
        /// Its error code (RFC 9113 7).
        code: u32,
    },
    /// The server is going away.
    GoAway {
        /// Streams above this one were not processed.
        last: u32,
        /// Its error code.
        code: u32,
    },
    /// A PING (answered with [`Client::pong`]) or the answer to one.
    Ping {
        /// An answer.
        ack: bool,
        /// Its 8 bytes.
        payload: [u8; 8],
    },
    /// Anything else (WINDOW_UPDATE, PRIORITY, unknown types).
    Other {
        /// Its type.
        kind: u8,
    },
}

/// What the client cannot read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// Over the default SETTINGS_MAX_FRAME_SIZE.
    #[error("a frame of {0} bytes, over the 16384 allowed")]
    TooLarge(usize),
    /// Too short for its type.
    #[error("a malformed {0} frame")]
    Malformed(&'static str),
    /// HPACK failed.
    #[error("a header block that does not decode (HPACK)")]
    Hpack,
    /// CONTINUATION is not read.
    #[error("a header block split over CONTINUATION frames (not read by this client)")]
    Continued,
}

/// An extended CONNECT (RFC 8441 4) to open a WebSocket on a stream.
#[derive(Debug, Clone, Copy)]
pub struct Connect<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `host:port`.
    pub authority: &'a str,
    /// The path and query.
    pub path: &'a str,
    /// Subprotocols offered, in order.
    pub protocols: &'a [&'a str],
    /// Further fields as `Name: value` lines (names are lowercased).
    pub headers: &'a [&'a str],
}

/// One client connection's HPACK state and unread input.
pub struct Client {
    encoder: Encoder<'static>,
    decoder: Decoder<'static>,
    input: Vec<u8>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// A client with empty HPACK tables.
    pub fn new() -> Client {
        Client {
            encoder: Encoder::new(),
            decoder: Decoder::new(),
            input: Vec::new(),
        }
    }

    /// The preface and the client's SETTINGS (no push), appended to `out`.
    pub fn start(out: &mut Vec<u8>) {
        out.extend_from_slice(PREFACE);
        frame(out, kind::SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0]);
    }

    /// Acknowledges the server's SETTINGS.
    pub fn ack_settings(out: &mut Vec<u8>) {
        frame(out, kind::SETTINGS, ACK, 0, &[]);
    }

    /// Answers a PING.
    pub fn pong(out: &mut Vec<u8>, payload: [u8; 8]) {
        frame(out, kind::PING, ACK, 0, &payload);
    }

    /// Opens `stream` (odd, increasing) with the extended CONNECT `request`.
    pub fn connect(&mut self, out: &mut Vec<u8>, stream: u32, request: &Connect<'_>) {
        let protocols = request.protocols.join(", ");
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b":method".to_vec(), b"CONNECT".to_vec()),
            (b":protocol".to_vec(), b"websocket".to_vec()),
            (b":scheme".to_vec(), request.scheme.as_bytes().to_vec()),
            (
                b":authority".to_vec(),
                request.authority.as_bytes().to_vec(),
            ),
            (b":path".to_vec(), request.path.as_bytes().to_vec()),
            (b"sec-websocket-version".to_vec(), b"13".to_vec()),
        ];
        if !protocols.is_empty() {
            fields.push((b"sec-websocket-protocol".to_vec(), protocols.into_bytes()));
        }
        for line in request.headers {
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim().to_ascii_lowercase().into_bytes();
                fields.push((name, value.trim().as_bytes().to_vec()));
            }
        }
        let block = self
            .encoder
            .encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
        frame(out, kind::HEADERS, END_HEADERS, stream, &block);
    }

    /// Bytes on `stream`, ending it with `end`.
    pub fn data(out: &mut Vec<u8>, stream: u32, payload: &[u8], end: bool) {
        let flags = if end { END_STREAM } else { 0 };
        frame(out, kind::DATA, flags, stream, payload);
    }

    /// Resets `stream` with `code` (0x8: CANCEL).
    pub fn reset(out: &mut Vec<u8>, stream: u32, code: u32) {
        frame(out, kind::RST_STREAM, 0, stream, &code.to_be_bytes());
    }

    /// Bytes read from the server.
    pub fn received(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The next whole frame read, if one is.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        let Client { decoder, input, .. } = self;
        let Some(header) = input.get(..9) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        if len > MAX_FRAME {
            return Err(ClientError::TooLarge(len));
        }
        let Some(body) = input.get(9..9 + len) else {
            return Ok(None);
        };
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let frame = parse(decoder, kind, flags, stream, body)?;
        input.drain(..9 + len);
        Ok(Some(frame))
    }
}

fn parse(
    decoder: &mut Decoder<'static>,
    kind: u8,
    flags: u8,
    stream: u32,
    body: &[u8],
) -> Result<Frame, ClientError> {
    {
        let word = |at: usize| -> Option<u32> {
            let bytes = body.get(at..at + 4)?;
            Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        };
        Ok(match kind {
            kind::SETTINGS => Frame::Settings {
                ack: flags & ACK != 0,
                connect_protocol: body.chunks_exact(6).any(|s| {
                    u16::from_be_bytes([s[0], s[1]]) == ENABLE_CONNECT_PROTOCOL && s[5] == 1
                }),
            },
            kind::HEADERS => {
                if flags & END_HEADERS == 0 {
                    return Err(ClientError::Continued);
                }
                let block = unpadded(flags, body)
                    .and_then(|b| match flags & PRIORITY {
                        0 => Some(b),
                        _ => b.get(5..),
                    })
                    .ok_or(ClientError::Malformed("HEADERS"))?;
                let decoded = decoder.decode(block).map_err(|_| ClientError::Hpack)?;
                let fields: Vec<(String, String)> = decoded
                    .into_iter()
                    .map(|(n, v)| {
                        (
                            String::from_utf8_lossy(&n).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    })
                    .collect();
                let status = fields
                    .iter()
                    .find(|(n, _)| n == ":status")
                    .and_then(|(_, v)| v.parse().ok());
                Frame::Headers {
                    stream,
                    status,
                    fields,
                    end_stream: flags & END_STREAM != 0,
                }
            }
            kind::DATA => Frame::Data {
                stream,
                payload: unpadded(flags, body)
                    .ok_or(ClientError::Malformed("DATA"))?
                    .to_vec(),
                end_stream: flags & END_STREAM != 0,
            },
            kind::RST_STREAM => Frame::Reset {
                stream,
                code: word(0).ok_or(ClientError::Malformed("RST_STREAM"))?,
            },
            kind::GOAWAY => Frame::GoAway {
                last: word(0).ok_or(ClientError::Malformed("GOAWAY"))? & 0x7fff_ffff,
                code: word(4).ok_or(ClientError::Malformed("GOAWAY"))?,
            },
            kind::PING => Frame::Ping {
                ack: flags & ACK != 0,
                payload: body
                    .try_into()
                    .map_err(|_| ClientError::Malformed("PING"))?,
            },
            other => Frame::Other { kind: other },
        })
    }
}

/// A frame's payload without its padding (DATA and HEADERS with PADDED).
fn unpadded(flags: u8, body: &[u8]) -> Option<&[u8]> {
    if flags & PADDED == 0 {
        return Some(body);
    }
    let pad = usize::from(*body.first()?);
    body.get(1..body.len().checked_sub(pad)?)
}

/// Appends one frame.
pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}
