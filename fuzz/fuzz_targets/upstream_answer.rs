//! The upstream's answer in proxy mode: only a 101 with the right token is accepted, and the
//! length of a refusal depends on its head alone, never on the body after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::handshake::{accept_key, ResponseCheck};
use wsedge::proxy::chunked::ChunkedEnd;
use wsedge::proxy::http::{answer_head, write_client_answer_head, AnswerHead};
use wsedge::proxy::{answer_length, check_upstream_response, AnswerLength};

const HEAD: &[u8] = b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: chat\r\n\r\n";

fuzz_target!(|response: &[u8]| {
    match check_upstream_response(response, HEAD) {
        ResponseCheck::Accepted { header_len, protocol } => {
            // httparse skips empty lines before the status line, as RFC 9112 section 2.2 allows.
        assert!(response.trim_ascii_start().starts_with(b"HTTP/1.1 101"));
            assert!(header_len <= response.len());
            let head = String::from_utf8_lossy(&response[..header_len]).to_ascii_lowercase();
            let accept = accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
            let accept = std::str::from_utf8(&accept).unwrap().to_ascii_lowercase();
            assert!(head.contains(&accept), "accepted without the token");
            assert!(protocol.is_none_or(|p| p == "chat"), "an unoffered protocol");
        }
        ResponseCheck::Partial | ResponseCheck::Failed(_) => {}
    }
    // A length, when trusted, covers at least a status line and a blank line, and the
    // answer goes on being judged the same once more bytes of its body arrive.
    let length = answer_length(response);
    if let AnswerLength::Exactly(n) = length {
        assert!(n >= b"HTTP/1.1 100\n\n".len() as u64, "{n}");
        let mut longer = response.to_vec();
        longer.extend_from_slice(b"more body");
        assert_eq!(answer_length(&longer), length);
    }
    // The answer to a plain HTTP request (`--http-path`): a final head is within the bytes,
    // judged the same with more body after it, and rewritten into a head that parses, says
    // `Connection: close` once and keeps none of the upstream's connection headers.
    if let AnswerHead::Final { head_len, .. } = answer_head(response) {
        assert!(head_len <= response.len());
        let mut longer = response.to_vec();
        longer.extend_from_slice(b"more body");
        assert_eq!(answer_head(&longer), answer_head(response));
        let mut out = Vec::new();
        assert!(write_client_answer_head(&response[..head_len], b"", &mut out));
        let mut slots = [httparse::EMPTY_HEADER; 80];
        let mut parsed = httparse::Response::new(&mut slots);
        assert!(matches!(parsed.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()));
        let connection: Vec<_> = parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection") || h.name.eq_ignore_ascii_case("keep-alive"))
            .collect();
        assert!(connection.len() == 1 && connection[0].value == b"close", "{connection:?}");
    }
    // The same bytes as a chunked body: its end (or its break) does not depend on how the
    // bytes are split, and never lies past them.
    let whole = ChunkedEnd::default().feed(response);
    if let Ok(Some(end)) = whole {
        assert!(end <= response.len());
        // What the reader took for a whole body decodes, to no more than its bytes.
        let data = wsedge::proxy::chunked::decode(&response[..end]).expect("a whole body decodes");
        assert!(data.len() <= end);
    }
    let cut = response.len() / 2;
    let mut split = ChunkedEnd::default();
    let first = split.feed(&response[..cut]);
    let joined = match first {
        Ok(None) => split.feed(&response[cut..]).map(|end| end.map(|n| n + cut)),
        other => other,
    };
    match (whole, joined) {
        (Err(_), Err(_)) => {}
        (Ok(a), Ok(b)) => assert_eq!(a, b, "split at {cut}"),
        (a, b) => panic!("whole {a:?}, split {b:?}"),
    }
});
