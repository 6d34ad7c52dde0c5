//! Plain HTTP requests forwarded under `--http-path` (the polling and info requests that
//! Socket.IO, SockJS, SignalR and Phoenix clients make before or instead of the upgrade):
//! the answer's head as the edge reads and rewrites it. No I/O.
//!
//! # One request per connection, both ways
//! The edge forwards exactly the request it validated (its head rewritten, then
//! `Content-Length` bytes of body: chunked bodies are refused), with `Connection: close`,
//! and answers the client with `Connection: close` too. Each side's message therefore ends
//! where its connection does: no byte the edge did not frame is ever read as another
//! request by the upstream, and no byte of an upstream's answer is ever read by the client
//! as the answer to another request. Smuggling needs two messages on one connection;
//! there never are.

use super::chunked::ChunkedEnd;
use super::{answer_length, AnswerLength};
use crate::handshake::MAX_HEADERS;

/// The longest answer head the edge reads from an upstream (then 502): nginx's
/// `proxy_buffer_size` is 4-8 KiB.
pub const MAX_ANSWER_HEAD_BYTES: usize = 16 * 1024;

/// What the first bytes of an upstream's answer to a forwarded HTTP request are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerHead {
    /// The head is not complete yet.
    Partial,
    /// An interim answer (`100 Continue`, `103 Early Hints`) of this many bytes: dropped,
    /// the final one follows.
    Interim(usize),
    /// The final answer's head, this long, with a framing the client can rely on.
    Final {
        /// Length of the head.
        head_len: usize,
        /// The status code.
        status: u16,
    },
    /// Not an answer to pass on: malformed, too long, a 101 nobody asked for, or a
    /// framing that cannot be trusted (two lengths, a length with `Transfer-Encoding`).
    Invalid,
}

/// Reads the head of an upstream's answer to a forwarded HTTP request.
pub fn answer_head(bytes: &[u8]) -> AnswerHead {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_ANSWER_HEAD_BYTES => n,
        Ok(httparse::Status::Partial) if bytes.len() < MAX_ANSWER_HEAD_BYTES => {
            return AnswerHead::Partial
        }
        _ => return AnswerHead::Invalid,
    };
    let Some(status) = parsed.code else {
        return AnswerHead::Invalid;
    };
    match status {
        101 => return AnswerHead::Invalid,
        100..=199 => return AnswerHead::Interim(head_len),
        200..=599 => {}
        // Not a status of RFC 9110 (three digits, 1xx to 5xx): nothing a client can read.
        _ => return AnswerHead::Invalid,
    }
    let has = |name: &str| {
        parsed
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name))
    };
    if has("transfer-encoding") && has("content-length") {
        return AnswerHead::Invalid;
    }
    match answer_length(&bytes[..head_len]) {
        AnswerLength::Invalid | AnswerLength::Incomplete => AnswerHead::Invalid,
        AnswerLength::Exactly(_) | AnswerLength::UntilClose => {
            AnswerHead::Final { head_len, status }
        }
    }
}

/// Where an answer's body ends, as the relay passes it on: the client is given the body and
/// nothing after it, whatever the upstream sends or keeps open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// After this many more bytes.
    Length(u64),
    /// After the last chunk and the trailers.
    Chunked(ChunkedEnd),
    /// When the upstream closes (no length, or a transfer coding other than chunked last).
    Close,
}

impl BodyEnd {
    /// Where the body of the answer whose complete head is `head` ends (`head_request`: the
    /// request was a `HEAD`, whose answer has no body whatever its head says).
    pub fn of(head: &[u8], head_request: bool) -> BodyEnd {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        if head_request || parsed.parse(head).is_err() {
            return BodyEnd::Length(0);
        }
        let chunked_last = parsed
            .headers
            .iter()
            .rfind(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|h| {
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                last.trim_ascii().eq_ignore_ascii_case(b"chunked")
            });
        match (chunked_last, answer_length(head)) {
            (_, AnswerLength::Exactly(total))
                if matches!(parsed.code, Some(100..=199 | 204 | 304)) =>
            {
                BodyEnd::Length(total.saturating_sub(head.len() as u64))
            }
            (Some(true), _) => BodyEnd::Chunked(ChunkedEnd::default()),
            (Some(false), _) => BodyEnd::Close,
            (None, AnswerLength::Exactly(total)) => {
                BodyEnd::Length(total.saturating_sub(head.len() as u64))
            }
            (None, _) => BodyEnd::Close,
        }
    }

    /// Of `bytes`, the body's next ones, how many belong to it, and whether it is over
    /// after them. A chunked body that breaks its grammar is over where it broke: the
    /// client, which reads the same framing, sees it cut.
    pub fn pass(&mut self, bytes: &[u8]) -> (usize, bool) {
        match self {
            BodyEnd::Length(left) => {
                let take = (*left).min(bytes.len() as u64);
                *left -= take;
                (take as usize, *left == 0)
            }
            BodyEnd::Chunked(reader) => match reader.feed(bytes) {
                Ok(Some(end)) => (end, true),
                Ok(None) => (bytes.len(), false),
                Err(_) => (0, true),
            },
            BodyEnd::Close => (bytes.len(), false),
        }
    }

    /// Whether the end is found in the bytes (not at the upstream's close).
    pub fn is_framed(&self) -> bool {
        !matches!(self, BodyEnd::Close)
    }
}

/// Headers of an answer that describe the upstream's connection, not the answer: the edge
/// writes its own `Connection: close`. `Transfer-Encoding` stays: the body passes as the
/// upstream framed it.
fn is_connection_header(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Appends to `out` the answer head for the client, from the upstream's `head` (complete,
/// as [`answer_head`] found it): its status line and end-to-end headers, then
/// `Connection: close` and `extra` (a `Set-Cookie` line, CRLF-terminated, or nothing).
/// Returns false if `head` does not parse (a caller bug).
pub fn write_client_answer_head(head: &[u8], extra: &[u8], out: &mut Vec<u8>) -> bool {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let (Ok(httparse::Status::Complete(_)), Some(code)) = (parsed.parse(head), parsed.code) else {
        return false;
    };
    // The upstream's reason phrase is not needed and could hold anything: the code's own.
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {code} {}\r\n",
        parsed.reason.unwrap_or("").trim()
    );
    let listed = |name: &str| {
        parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .any(|h| crate::handshake::tokens::has_token_ignore_case(h.value, name.as_bytes()))
    };
    for header in parsed.headers.iter() {
        if is_connection_header(header.name) || listed(header.name) {
            continue;
        }
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n");
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_answer_is_framed_by_length_chunks_or_close() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(
            answer_head(ok),
            AnswerHead::Final {
                head_len: ok.len() - 2,
                status: 200
            }
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(answer_head(chunked), AnswerHead::Final { .. }));
        assert!(matches!(
            answer_head(b"HTTP/1.0 200 OK\r\n\r\nuntil close"),
            AnswerHead::Final { .. }
        ));
        assert_eq!(
            answer_head(b"HTTP/1.1 200 OK\r\nContent-"),
            AnswerHead::Partial
        );
    }

    #[test]
    fn interim_answers_are_dropped_and_a_101_is_not_passed() {
        assert_eq!(
            answer_head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
            AnswerHead::Interim(25)
        );
        assert_eq!(
            answer_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"),
            AnswerHead::Invalid
        );
    }

    #[test]
    fn an_answer_whose_framing_cannot_be_trusted_is_invalid() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 011 \x87\n\n\n:\0\0\n",
            b"HTTP/1.1 600 Beyond\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert_eq!(
                answer_head(bad),
                AnswerHead::Invalid,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let endless = [
            b"HTTP/1.1 200 OK\r\n".as_slice(),
            &[b'a'; MAX_ANSWER_HEAD_BYTES],
        ]
        .concat();
        assert_eq!(answer_head(&endless), AnswerHead::Invalid);
    }

    #[test]
    fn a_body_ends_by_its_length_its_last_chunk_or_the_close() {
        let end = |head: &[u8]| BodyEnd::of(head, false);
        assert_eq!(
            end(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"),
            BodyEnd::Length(3)
        );
        assert_eq!(
            end(b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n"),
            BodyEnd::Length(0)
        );
        assert_eq!(
            BodyEnd::of(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
            BodyEnd::Length(0)
        );
        assert!(matches!(
            end(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            BodyEnd::Chunked(_)
        ));
        assert_eq!(
            end(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            BodyEnd::Close
        );
        assert_eq!(end(b"HTTP/1.1 200 OK\r\n\r\n"), BodyEnd::Close);
        let mut chunked = end(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.pass(b"2\r\nok\r\n"), (7, false));
        assert_eq!(chunked.pass(b"0\r\n\r\nHTTP/1.1 200 smuggled"), (5, true));
        let mut broken = end(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(broken.pass(b"zz\r\n"), (0, true));
    }

    #[test]
    fn the_clients_head_closes_and_drops_the_upstreams_connection_headers() {
        let head = b"HTTP/1.1 200 Whatever\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\n\
            Keep-Alive: timeout=5\r\nX-Hop: 1\r\nSet-Cookie: io=abc\r\nContent-Length: 2\r\n\r\n";
        let mut out = Vec::new();
        assert!(write_client_answer_head(
            head,
            b"Set-Cookie: edge=1\r\n",
            &mut out
        ));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 Whatever\r\nContent-Type: text/plain\r\nSet-Cookie: io=abc\r\n\
             Content-Length: 2\r\nConnection: close\r\nSet-Cookie: edge=1\r\n\r\n"
        );
    }
}
