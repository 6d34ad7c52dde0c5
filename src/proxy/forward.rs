//! The request an upstream sees, and the check of its answer against what the client sent.
//!
//! The client's request has already passed every handshake rule, so it parses; it is
//! parsed again here (a few hundred nanoseconds, proxy mode only) rather than carried
//! around as borrowed slices across I/O.

use std::net::SocketAddr;

use super::{write_proxy_v2_header, Forwarding};
use crate::handshake::tokens::{has_token_ignore_case, list_elements, trim_ows};
use crate::handshake::{check_response_with, ResponseCheck, MAX_HEADERS};

/// The two ends of the client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peers {
    /// The client's address.
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// The client spoke TLS to the edge (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

/// Headers that describe one hop and are never forwarded (RFC 9110 section 7.6.1, plus the
/// ones wsedge writes itself).
fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 6] = [
        "connection",
        "upgrade",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name.len() >= 6 && name[..6].eq_ignore_ascii_case("proxy-")
}

/// Whether a client's header is one the edge owns: the client's address, scheme, host or
/// port as some proxy would state them. These are removed from every forwarded request, in
/// every spelling (`_` for `-` too: servers behind CGI-style gateways, nginx with
/// `underscores_in_headers`, and many frameworks fold `X_Real_IP` into `X-Real-IP`), and
/// the edge writes its own (none with PROXY v2, where the header carries the address).
fn is_edge_owned(name: &str) -> bool {
    const OWNED: [&str; 5] = [
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-original-forwarded-for",
    ];
    const OWNED_PREFIX: &str = "x-forwarded-";
    let same = |a: &[u8], b: &[u8]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(&x, &y)| {
                let fold = |c: u8| {
                    if c == b'_' {
                        b'-'
                    } else {
                        c.to_ascii_lowercase()
                    }
                };
                fold(x) == y
            })
    };
    let name = name.as_bytes();
    OWNED.iter().any(|owned| same(name, owned.as_bytes()))
        || name.len() >= OWNED_PREFIX.len()
            && same(&name[..OWNED_PREFIX.len()], OWNED_PREFIX.as_bytes())
}

/// What a forwarded request is, for the headers the edge writes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// A WebSocket upgrade: `Upgrade: websocket` and `Connection: Upgrade`.
    Upgrade,
    /// A plain request under `--http-path` with a body of this many bytes (the body is the
    /// caller's to append): `Connection: close` and the edge's own `Content-Length`; the
    /// client's `Expect` was answered by the edge and is not passed on.
    Http {
        /// The body's length as the edge read it.
        body_len: u64,
    },
}

/// Appends to `out` the request head to send the upstream for the client request `head` (a
/// complete, validated header block): same method, target and end-to-end headers; the
/// hop-by-hop ones regenerated as `kind` says (for an upgrade `Upgrade: websocket` and
/// `Connection: Upgrade`, whatever spelling the client used); and the client's address as
/// `forwarding` says.
///
/// Returns false if `head` is not a complete request (a caller bug, not client input).
pub fn write_upstream_request(
    head: &[u8],
    peers: Peers,
    forwarding: Forwarding,
    kind: Forwarded,
    out: &mut Vec<u8>,
) -> bool {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let (Ok(httparse::Status::Complete(_)), Some(method), Some(path)) =
        (request.parse(head), request.method, request.path)
    else {
        return false;
    };
    let headers = &*request.headers;
    if forwarding == Forwarding::ProxyV2 {
        write_proxy_v2_header(peers.client, peers.local, out);
    }
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Names the client listed in Connection are hop-by-hop too (RFC 9110 section 7.6.1).
    let listed_in_connection = |name: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .any(|h| has_token_ignore_case(h.value, name.as_bytes()))
    };
    // The edge frames a forwarded body itself, and answered any expectation already.
    let edge_framed = |name: &str| {
        matches!(kind, Forwarded::Http { .. })
            && (name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("expect"))
    };
    for header in headers {
        let name = header.name;
        if is_edge_owned(name)
            || is_hop_by_hop(name)
            || listed_in_connection(name)
            || edge_framed(name)
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        out.extend_from_slice(b"\r\n");
    }
    match kind {
        Forwarded::Upgrade => {
            out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
        }
        Forwarded::Http { body_len } => {
            out.extend_from_slice(b"Connection: close\r\n");
            let announces_body = !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS");
            if body_len > 0 || announces_body {
                use std::io::Write;
                // Writing into a Vec cannot fail.
                let _ = write!(out, "Content-Length: {body_len}\r\n");
            }
        }
    }
    if forwarding == Forwarding::Headers {
        // The edge is where clients enter: what a client says of its own address is not
        // passed on, only what the edge saw (or what a trusted balancer's PROXY header said).
        out.extend_from_slice(b"X-Forwarded-For: ");
        write_ip(peers.client.ip(), out);
        out.extend_from_slice(match peers.tls {
            true => b"\r\nX-Forwarded-Proto: https\r\nX-Real-IP: ",
            false => b"\r\nX-Forwarded-Proto: http\r\nX-Real-IP: ",
        });
        write_ip(peers.client.ip(), out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    true
}

fn write_ip(ip: std::net::IpAddr, out: &mut Vec<u8>) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{ip}");
}

/// Checks the upstream's `response` against the client request `head`: a 101 whose accept
/// token matches the client's key and which names only a subprotocol and extensions the
/// client offered. The upstream answering for the client is exactly what the client will
/// check, so a bad upstream becomes a clean 502 instead of a confusing client failure.
pub fn check_upstream_response<'r>(response: &'r [u8], head: &[u8]) -> ResponseCheck<'r> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
        return ResponseCheck::Failed(crate::handshake::ResponseError::Malformed);
    }
    let headers = &*request.headers;
    let values = |wanted: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(wanted))
            .map(|h| h.value)
    };
    let key = values("sec-websocket-key")
        .next()
        .map(trim_ows)
        .unwrap_or_default();
    let protocol_offered = |name: &str| {
        values("sec-websocket-protocol")
            .flat_map(list_elements)
            .any(|offered| offered == name.as_bytes())
    };
    let extension_offered = |name: &[u8]| {
        values("sec-websocket-extensions")
            .flat_map(list_elements)
            .filter_map(|offer| offer.split(|&b| b == b';').next())
            .any(|offered| trim_ows(offered).eq_ignore_ascii_case(name))
    };
    check_response_with(response, key, protocol_offered, extension_offered)
}

/// How much of an upstream's answer that is not a 101 (a refusal) to pass on to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerLength {
    /// The head and the body its `Content-Length` announces (or the head alone, for the
    /// statuses that never have a body): this many bytes in all.
    Exactly(u64),
    /// No length: the body ends when the upstream closes (chunked bodies included).
    UntilClose,
    /// The framing cannot be trusted: a `Content-Length` that is not a number, two that
    /// differ, or a length that with the head does not fit in 64 bits. A proxy must not pass
    /// such an answer on (RFC 9112 section 6.3): the client gets a 502.
    Invalid,
    /// The head is not complete (or not a response at all).
    Incomplete,
}

/// How many bytes of an upstream's answer (not a 101) to pass on: see [`AnswerLength`].
pub fn answer_length(response: &[u8]) -> AnswerLength {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let Ok(httparse::Status::Complete(head_len)) = parsed.parse(response) else {
        return AnswerLength::Incomplete;
    };
    let head_len = head_len as u64;
    if matches!(parsed.code, Some(100..=199 | 204 | 304)) {
        return AnswerLength::Exactly(head_len);
    }
    let chunked = parsed
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let mut length = None;
    for header in parsed
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let value = std::str::from_utf8(header.value)
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok());
        match (value, length) {
            (None, _) => return AnswerLength::Invalid,
            (Some(this), Some(before)) if this != before => return AnswerLength::Invalid,
            (Some(this), _) => length = Some(this),
        }
    }
    match (chunked, length) {
        (false, Some(length)) => head_len
            .checked_add(length)
            .map_or(AnswerLength::Invalid, AnswerLength::Exactly),
        _ => AnswerLength::UntilClose,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_length_is_the_head_plus_the_announced_body() {
        let head = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\n";
        let mut answer = head.to_vec();
        answer.extend_from_slice(b"no!\r\n");
        assert_eq!(
            answer_length(&answer),
            AnswerLength::Exactly(head.len() as u64 + 5)
        );
        let no_body = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n";
        assert_eq!(
            answer_length(no_body),
            AnswerLength::Exactly(no_body.len() as u64)
        );
        assert_eq!(
            answer_length(b"HTTP/1.1 403 Forbidden\r\n\r\nuntil close"),
            AnswerLength::UntilClose
        );
        assert_eq!(
            answer_length(
                b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            ),
            AnswerLength::UntilClose
        );
        assert_eq!(
            answer_length(b"HTTP/1.1 403 Forb"),
            AnswerLength::Incomplete
        );
    }

    #[test]
    fn an_answer_whose_length_cannot_be_trusted_is_invalid() {
        for answer in [
            // With the head, the length does not fit in 64 bits (it wrapped in release builds).
            &b"HTTP/1.1 403 Forbidden\r\nContent-Length: 18446744073709551615\r\n\r\n"[..],
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 18446744073709551616\r\n\r\n",
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5, 5\r\n\r\n",
            b"HTTP/1.1 403 Forbidden\r\nContent-Length:\r\n\r\n",
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        ] {
            assert_eq!(
                answer_length(answer),
                AnswerLength::Invalid,
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
        // The same length twice is one length.
        let twice = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            answer_length(twice),
            AnswerLength::Exactly(twice.len() as u64 + 5)
        );
    }
    use crate::handshake::ResponseError;

    const CHROME: &[u8] = include_bytes!("../../tests/fixtures/chrome.http");

    fn peers() -> Peers {
        Peers {
            client: "198.51.100.4:40000".parse().unwrap(),
            local: "10.0.0.1:443".parse().unwrap(),
            tls: false,
        }
    }

    fn forwarded(head: &[u8], forwarding: Forwarding) -> String {
        let mut out = Vec::new();
        assert!(write_upstream_request(
            head,
            peers(),
            forwarding,
            Forwarded::Upgrade,
            &mut out
        ));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_browser_request_keeps_its_end_to_end_headers_in_order() {
        let text = forwarded(CHROME, Forwarding::Headers);
        let original = String::from_utf8_lossy(CHROME);
        let names = |t: &str| -> Vec<String> {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_ascii_lowercase()))
                .filter(|n| !["connection", "upgrade"].contains(&n.as_str()))
                .filter(|n| !n.starts_with("x-"))
                .collect()
        };
        assert_eq!(names(&text), names(&original));
        assert_eq!(text.lines().next(), original.lines().next());
        assert!(text.ends_with(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nX-Forwarded-For: 198.51.100.4\r\n\
             X-Forwarded-Proto: http\r\nX-Real-IP: 198.51.100.4\r\n\r\n"
        ));
    }

    #[test]
    fn headers_listed_in_connection_and_proxy_headers_are_dropped() {
        let head = b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nconnection: Upgrade, X-Trace\r\n\
            UPGRADE: WebSocket\r\nX-Trace: 1\r\nTE: trailers\r\nTrailer: x\r\n\
            Proxy-Connection: keep-alive\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        let text = forwarded(head, Forwarding::Headers);
        for gone in [
            "X-Trace",
            "TE:",
            "Trailer",
            "Proxy-",
            "connection:",
            "UPGRADE",
        ] {
            assert!(!text.contains(gone), "{gone} forwarded: {text}");
        }
        assert!(text.starts_with("GET /a?b=c HTTP/1.1\r\nHost: h\r\n"));
    }

    /// Every spelling of a forwarding header a client may send, to be stripped in both modes.
    const FORGED: &[u8] = b"X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2, 3.3.3.3\r\n\
        X-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nForwarded: for=7.7.7.7\r\n\
        X-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 1\r\nX_Real_IP: 8.8.8.8\r\n\
        x_forwarded_for: 9.9.9.9\r\nX-Client-IP: 5.5.5.5\r\nTrue-Client-IP: 4.4.4.4\r\n";

    fn forged_request() -> Vec<u8> {
        [b"GET / HTTP/1.1\r\nHost: h\r\n".as_slice(), FORGED, b"\r\n"].concat()
    }

    #[test]
    fn the_clients_forwarding_headers_are_replaced_by_the_edges_own() {
        let text = forwarded(&forged_request(), Forwarding::Headers);
        assert_eq!(text.matches("X-Forwarded-For").count(), 1, "{text}");
        assert!(text.contains("X-Forwarded-For: 198.51.100.4\r\n"), "{text}");
        assert!(text.contains("X-Real-IP: 198.51.100.4\r\n"), "{text}");
        assert!(text.contains("X-Forwarded-Proto: http\r\n"), "{text}");
        for forged in [
            "1.1.1", "2.2.2", "6.6.6", "7.7.7", "8.8.8", "9.9.9", "5.5.5", "4.4.4",
        ] {
            assert!(!text.contains(forged), "{forged} passed: {text}");
        }
        for gone in ["https", "Forwarded:", "evil", "X-Forwarded-Port", "_"] {
            assert!(!text.contains(gone), "{gone} passed: {text}");
        }
    }

    #[test]
    fn with_proxy_v2_no_forwarding_header_reaches_the_upstream() {
        let mut out = Vec::new();
        assert!(write_upstream_request(
            &forged_request(),
            peers(),
            Forwarding::ProxyV2,
            Forwarded::Upgrade,
            &mut out
        ));
        let text = String::from_utf8_lossy(&out[28..]).to_ascii_lowercase();
        for gone in ["forwarded", "real", "client-ip", "_"] {
            assert!(!text.contains(gone), "{gone} passed: {text}");
        }
        assert!(text.starts_with("get / http/1.1\r\nhost: h\r\n"), "{text}");
    }

    #[test]
    fn a_client_that_spoke_tls_to_the_edge_is_forwarded_as_https() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: http\r\n\r\n";
        let mut out = Vec::new();
        let peers = Peers {
            tls: true,
            ..peers()
        };
        assert!(write_upstream_request(
            head,
            peers,
            Forwarding::Headers,
            Forwarded::Upgrade,
            &mut out
        ));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("X-Forwarded-Proto").count(), 1, "{text}");
        assert!(text.contains("X-Forwarded-Proto: https\r\n"), "{text}");
    }

    #[test]
    fn proxy_v2_comes_first_and_replaces_the_forwarded_headers() {
        let mut out = Vec::new();
        assert!(write_upstream_request(
            CHROME,
            peers(),
            Forwarding::ProxyV2,
            Forwarded::Upgrade,
            &mut out
        ));
        assert!(out.starts_with(b"\r\n\r\n\0\r\nQUIT\n\x21\x11"));
        let text = String::from_utf8_lossy(&out[28..]);
        assert!(text.starts_with("GET "));
        assert!(!text.contains("X-Forwarded-For") && !text.contains("X-Real-IP"));
    }

    #[test]
    fn a_plain_request_is_closed_and_framed_by_the_edge() {
        let head = b"POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\nHost: h\r\n\
            Content-Length: 007\r\nExpect: 100-continue\r\nConnection: keep-alive\r\n\
            Keep-Alive: timeout=5\r\nX-Forwarded-For: 6.6.6.6\r\nCookie: io=1\r\n\r\n";
        let mut out = Vec::new();
        let kind = Forwarded::Http { body_len: 7 };
        assert!(write_upstream_request(
            head,
            peers(),
            Forwarding::Headers,
            kind,
            &mut out
        ));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\nHost: h\r\n\
             Cookie: io=1\r\nConnection: close\r\nContent-Length: 7\r\n\
             X-Forwarded-For: 198.51.100.4\r\nX-Forwarded-Proto: http\r\n\
             X-Real-IP: 198.51.100.4\r\n\r\n"
        );
        let mut get = Vec::new();
        let head = b"GET /sockjs/info HTTP/1.1\r\nHost: h\r\n\r\n";
        let kind = Forwarded::Http { body_len: 0 };
        assert!(write_upstream_request(
            head,
            peers(),
            Forwarding::ProxyV2,
            kind,
            &mut get
        ));
        let text = String::from_utf8_lossy(&get[28..]);
        assert_eq!(
            text,
            "GET /sockjs/info HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        );
    }

    const KEY_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: a, chat\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

    fn answer(extra: &str) -> Vec<u8> {
        [KEY_101, extra.as_bytes(), b"\r\n"].concat()
    }

    #[test]
    fn an_answer_may_pick_what_the_client_offered() {
        let response = answer("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n");
        assert!(matches!(
            check_upstream_response(&response, REQUEST),
            ResponseCheck::Accepted {
                protocol: Some("chat"),
                ..
            }
        ));
    }

    #[test]
    fn an_answer_may_not_pick_what_the_client_did_not_offer() {
        let cases = [
            (
                "Sec-WebSocket-Protocol: other\r\n",
                ResponseError::UnofferedSubprotocol,
            ),
            (
                "Sec-WebSocket-Extensions: x-webkit\r\n",
                ResponseError::UnofferedExtension,
            ),
        ];
        for (extra, error) in cases {
            assert_eq!(
                check_upstream_response(&answer(extra), REQUEST),
                ResponseCheck::Failed(error),
                "{extra}"
            );
        }
        let other_key = String::from_utf8_lossy(REQUEST).replace("dGhl", "AAAA");
        assert_eq!(
            check_upstream_response(&answer(""), other_key.as_bytes()),
            ResponseCheck::Failed(ResponseError::WrongAccept)
        );
    }
}
