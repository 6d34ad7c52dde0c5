//! The state machine driven in memory, as a backend would, with no sockets.

use super::*;
use crate::proxy::Peers;

pub(crate) fn config(after: AfterUpgrade) -> ConnConfig {
    ConnConfig {
        policy: Policy::default(),
        after,
        handshake_timeout_ms: 1000,
        h2c: false,
        client_patience_ms: 1000,
        idle_timeout_ms: 5000,
        send_timeout_ms: 30_000,
        max_message_bytes: 64,
        linger_ms: 100,
        proxy: Default::default(),
    }
}

const REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A connection plus the output it produced, fed as a backend would.
struct Harness {
    config: ConnConfig,
    conn: Conn,
    stats: Counters,
    out: Vec<u8>,
    now: u64,
}

impl Harness {
    fn new(after: AfterUpgrade) -> Self {
        let config = config(after);
        let conn = Conn::new(&config, 0);
        Harness {
            config,
            conn,
            stats: Counters::default(),
            out: Vec::new(),
            now: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Next {
        let mut cx = Ctx {
            config: &self.config,
            now: self.now,
            out: &mut self.out,
            stats: &self.stats,
        };
        self.conn.on_data(bytes, &mut cx)
    }

    fn timeout(&mut self) -> Next {
        self.now = self.conn.deadline().expect("a deadline is armed");
        let mut cx = Ctx {
            config: &self.config,
            now: self.now,
            out: &mut self.out,
            stats: &self.stats,
        };
        self.conn.on_timeout(&mut cx)
    }

    fn take_out(&mut self) -> Vec<u8> {
        mem::take(&mut self.out)
    }

    /// The server drains: this connection closes with `code` at `close_at`.
    fn shutdown(&mut self, close_at: u64, code: CloseCode) -> Next {
        let mut cx = Ctx {
            config: &self.config,
            now: self.now,
            out: &mut self.out,
            stats: &self.stats,
        };
        self.conn.on_shutdown(close_at, code, &mut cx)
    }

    fn upgraded() -> Self {
        let mut h = Harness::new(AfterUpgrade::Echo);
        assert_eq!(h.feed(REQUEST), Next::Continue);
        assert!(h.take_out().starts_with(b"HTTP/1.1 101 "));
        h
    }
}

fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0xA1, 0xB2, 0xC3, 0xD4];
    let mut frame = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[test]
fn close_mode_sends_101_and_close_1000_in_one_output() {
    let mut h = Harness::new(AfterUpgrade::Close);
    assert_eq!(h.feed(REQUEST), Next::Close);
    let out = h.take_out();
    assert!(out.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(out.ends_with(b"\r\n\r\n\x88\x02\x03\xe8"));
}

#[test]
fn request_split_byte_by_byte_upgrades_once() {
    let mut h = Harness::new(AfterUpgrade::Echo);
    for (i, byte) in REQUEST.iter().enumerate() {
        assert_eq!(h.feed(&[*byte]), Next::Continue, "byte {i}");
        assert_eq!(h.out.is_empty(), i + 1 < REQUEST.len(), "byte {i}");
    }
    assert!(h.conn.is_open());
    assert!(
        !h.conn.holds_buffers(),
        "an idle upgraded connection holds no buffer"
    );
}

#[test]
fn frames_sent_with_the_request_are_echoed() {
    let mut h = Harness::new(AfterUpgrade::Echo);
    let mut bytes = REQUEST.to_vec();
    bytes.extend(masked(true, 1, b"early"));
    assert_eq!(h.feed(&bytes), Next::Continue);
    let out = h.take_out();
    assert!(out.ends_with(b"\x81\x05early"), "{out:?}");
}

#[test]
fn fragmented_message_is_reassembled_and_pings_answered_between() {
    let mut h = Harness::upgraded();
    let mut bytes = masked(false, 1, b"hel");
    bytes.extend(masked(true, 9, b"p"));
    bytes.extend(masked(true, 0, b"lo"));
    // Split mid-frame to exercise the pending buffer.
    assert_eq!(h.feed(&bytes[..5]), Next::Continue);
    assert_eq!(h.feed(&bytes[5..]), Next::Continue);
    assert_eq!(h.take_out(), b"\x8a\x01p\x81\x05hello");
    assert!(
        !h.conn.holds_buffers(),
        "buffers freed once the message is out"
    );
    assert_eq!(std::mem::size_of::<Conn>(), 24);
}

#[test]
fn protocol_violations_close_with_their_codes() {
    let cases: [(&str, Vec<u8>, u16); 6] = [
        ("unmasked", vec![0x81, 0x01, b'x'], 1002),
        ("continuation first", masked(true, 0, b"x"), 1002),
        ("invalid utf-8", masked(true, 1, &[0xff, 0xfe]), 1007),
        ("too big", masked(true, 2, &[0; 65]), 1009),
        ("close with 1 byte", masked(true, 8, &[3]), 1002),
        ("close with code 1005", masked(true, 8, &[0x03, 0xED]), 1002),
    ];
    for (name, frame, code) in cases {
        let mut h = Harness::upgraded();
        assert_eq!(h.feed(&frame), Next::HalfClose, "{name}");
        assert_eq!(h.take_out(), close_frame(CloseCode(code)), "{name}");
    }
}

#[test]
fn new_message_inside_a_fragmented_one_is_1002() {
    let mut h = Harness::upgraded();
    assert_eq!(h.feed(&masked(false, 2, b"a")), Next::Continue);
    assert_eq!(h.feed(&masked(true, 2, b"b")), Next::HalfClose);
    assert_eq!(h.take_out(), close_frame(CloseCode::PROTOCOL_ERROR));
}

#[test]
fn close_handshake_echoes_the_code() {
    let mut h = Harness::upgraded();
    assert_eq!(
        h.feed(&masked(true, 8, &[0x0F, 0xA0, b'b', b'y', b'e'])),
        Next::Close
    );
    assert_eq!(h.take_out(), [0x88, 0x02, 0x0F, 0xA0]);
}

#[test]
fn handshake_timeout_answers_408_only_to_talkers() {
    let mut silent = Harness::new(AfterUpgrade::Echo);
    assert_eq!(silent.timeout(), Next::Close);
    assert!(silent.out.is_empty());

    let mut talker = Harness::new(AfterUpgrade::Echo);
    assert_eq!(talker.feed(b"GET / HT"), Next::Continue);
    assert_eq!(talker.timeout(), Next::HalfClose);
    assert!(talker.take_out().starts_with(b"HTTP/1.1 408 "));
    assert_eq!(talker.timeout(), Next::Close, "linger ends");
}

#[test]
fn idle_timeout_closes_with_1001_then_waits_for_the_reply() {
    let mut h = Harness::upgraded();
    assert_eq!(h.conn.deadline(), Some(5000));
    h.now = 4000;
    assert_eq!(
        h.feed(&masked(true, 10, b"")),
        Next::Continue,
        "a pong is activity"
    );
    assert_eq!(h.conn.deadline(), Some(9000));
    assert_eq!(h.timeout(), Next::Continue);
    assert_eq!(h.take_out(), close_frame(CloseCode::GOING_AWAY));
    assert_eq!(h.feed(&masked(true, 1, b"ignored")), Next::Continue);
    assert!(h.out.is_empty());
    assert_eq!(h.feed(&masked(true, 8, &[0x03, 0xE9])), Next::Close);
}

#[test]
fn rejection_writes_the_response_and_half_closes() {
    let mut h = Harness::new(AfterUpgrade::Echo);
    assert_eq!(
        h.feed(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n"),
        Next::HalfClose
    );
    assert!(h
        .take_out()
        .starts_with(b"HTTP/1.1 405 Method Not Allowed\r\n"));
    assert_eq!(
        h.feed(b"more garbage"),
        Next::Continue,
        "discarded while lingering"
    );
    assert!(h.out.is_empty());
}

#[test]
fn drain_closes_at_the_given_time_with_the_given_code() {
    let mut h = Harness::upgraded();
    assert_eq!(h.shutdown(700, CloseCode(1012)), Next::Continue);
    assert_eq!(h.conn.deadline(), Some(700));
    h.now = 100;
    assert_eq!(
        h.feed(&masked(true, 10, b"")),
        Next::Continue,
        "activity does not postpone a drain"
    );
    assert_eq!(h.conn.deadline(), Some(700));
    assert_eq!(h.timeout(), Next::Continue);
    assert_eq!(h.take_out(), close_frame(CloseCode(1012)));
}

#[test]
fn refusal_answers_without_a_request() {
    let mut h = Harness::new(AfterUpgrade::Echo);
    let mut cx = Ctx {
        config: &h.config,
        now: 0,
        out: &mut h.out,
        stats: &h.stats,
    };
    let next = h.conn.refuse(
        crate::handshake::Refusal::Overloaded {
            retry_after_secs: 9,
        },
        &mut cx,
    );
    assert_eq!(next, Next::HalfClose);
    let out = String::from_utf8(h.take_out()).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 503 Service Unavailable\r\n")
            && out.contains("Retry-After: 9\r\n"),
        "{out}"
    );
}

// Proxy mode: the same machine, with the upstream's side fed by hand.

const UPSTREAM_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

impl Harness {
    fn proxied() -> Self {
        let mut h = Harness::new(AfterUpgrade::Proxy);
        let mut request = REQUEST.to_vec();
        request.extend(masked(true, 1, b"early"));
        assert_eq!(h.feed(&request), Next::Proxy);
        assert!(h.out.is_empty(), "no 101 of our own");
        h.forward();
        h
    }

    /// Writes what the upstream is sent (the request and what followed it) into `out`.
    fn forward(&mut self) {
        let peers = Peers {
            client: "192.0.2.1:5000".parse().unwrap(),
            local: "127.0.0.1:80".parse().unwrap(),
            tls: false,
        };
        let mut cx = Ctx {
            config: &self.config,
            now: self.now,
            out: &mut self.out,
            stats: &self.stats,
        };
        self.conn.write_upstream_request(peers, &mut cx);
    }

    fn upstream_sends(&mut self, bytes: &[u8]) -> Next {
        let mut cx = Ctx {
            config: &self.config,
            now: self.now,
            out: &mut self.out,
            stats: &self.stats,
        };
        self.conn.on_upstream_data(bytes, &mut cx)
    }
}

#[test]
fn proxy_forwards_the_request_alone_then_relays_the_upstreams_101_and_the_early_frame() {
    let mut h = Harness::proxied();
    let forwarded = h.take_out();
    let text = String::from_utf8_lossy(&forwarded);
    assert!(text.starts_with("GET / HTTP/1.1\r\nHost: a\r\n"), "{text}");
    assert!(text.contains("X-Forwarded-For: 192.0.2.1\r\n"), "{text}");
    assert!(
        forwarded.ends_with(b"\r\n\r\n"),
        "the early frame waits for the 101: {text}"
    );
    assert_eq!(h.conn.deadline(), Some(h.config.proxy.connect_timeout_ms));
    let cx = Ctx {
        config: &h.config,
        now: h.now,
        out: &mut h.out,
        stats: &h.stats,
    };
    h.conn.on_upstream_connected(&cx);
    assert_eq!(h.conn.deadline(), Some(h.config.proxy.response_timeout_ms));
    // The answer arrives in two pieces, the second with a first frame attached.
    assert_eq!(h.upstream_sends(&UPSTREAM_101[..30]), Next::Continue);
    let mut rest = UPSTREAM_101[30..].to_vec();
    rest.extend_from_slice(b"\x81\x02hi");
    assert_eq!(h.upstream_sends(&rest), Next::Relay);
    assert_eq!(h.take_out(), [UPSTREAM_101, b"\x81\x02hi"].concat());
    assert!(h.conn.is_relaying() && h.conn.is_open());
    assert_eq!(h.conn.take_held_client_bytes(), masked(true, 1, b"early"));
    assert!(
        !h.conn.holds_buffers(),
        "a relaying connection keeps no request"
    );
    assert_eq!(
        h.stats.upgraded.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// Bytes the client sends while the upstream is awaited join its early frames, and go to
/// the upstream only after its 101; a refusal drops them.
#[test]
fn proxy_holds_what_the_client_sends_until_the_101_and_drops_it_on_a_refusal() {
    let mut h = Harness::proxied();
    let first = h.take_out();
    assert_eq!(h.feed(&masked(true, 1, b"late")), Next::Continue);
    h.forward();
    assert_eq!(
        h.take_out(),
        first,
        "another upstream gets the request alone"
    );
    assert_eq!(h.upstream_sends(UPSTREAM_101), Next::Relay);
    let held = [masked(true, 1, b"early"), masked(true, 1, b"late")].concat();
    assert_eq!(h.conn.take_held_client_bytes(), held);

    let mut h = Harness::proxied();
    h.take_out();
    assert_eq!(h.feed(&masked(true, 1, b"late")), Next::Continue);
    let refusal = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(h.upstream_sends(refusal), Next::HalfClose);
    assert!(h.conn.take_held_client_bytes().is_empty());
    assert!(!h.conn.holds_buffers());
}

#[test]
fn proxy_answers_504_when_the_upstream_is_silent() {
    let mut h = Harness::proxied();
    h.take_out();
    assert_eq!(h.timeout(), Next::HalfClose);
    assert!(h.take_out().starts_with(b"HTTP/1.1 504 "));
    assert!(!h.conn.wants_upstream());
}

#[test]
fn proxy_answers_502_for_a_101_with_the_wrong_accept() {
    let mut h = Harness::proxied();
    h.take_out();
    let wrong = String::from_utf8_lossy(UPSTREAM_101).replace("s3pP", "AAAA");
    assert_eq!(h.upstream_sends(wrong.as_bytes()), Next::HalfClose);
    assert!(h.take_out().starts_with(b"HTTP/1.1 502 "));
}

#[test]
fn proxy_passes_a_refusal_through_up_to_its_content_length() {
    let mut h = Harness::proxied();
    h.take_out();
    let refusal = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\n\r\nno";
    assert_eq!(h.upstream_sends(refusal), Next::Continue);
    assert_eq!(h.upstream_sends(b"pe!and-more"), Next::HalfClose);
    assert_eq!(
        h.take_out(),
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\n\r\nnope!"
    );
}

#[test]
fn proxy_passes_a_refusal_without_length_through_until_the_upstream_closes() {
    let mut h = Harness::proxied();
    h.take_out();
    assert_eq!(
        h.upstream_sends(b"HTTP/1.1 403 Forbidden\r\n\r\nbody"),
        Next::Continue
    );
    let mut cx = Ctx {
        config: &h.config,
        now: h.now,
        out: &mut h.out,
        stats: &h.stats,
    };
    assert_eq!(h.conn.on_upstream_eof(&mut cx), Next::HalfClose);
    assert_eq!(h.take_out(), b"HTTP/1.1 403 Forbidden\r\n\r\nbody");
}

#[test]
fn a_relay_closes_when_idle() {
    let mut h = Harness::proxied();
    assert_eq!(h.upstream_sends(UPSTREAM_101), Next::Relay);
    assert_eq!(h.conn.deadline(), Some(h.now + h.config.idle_timeout_ms));
    assert_eq!(h.timeout(), Next::Close);
}

/// Autobahn 6.4.1/6.4.2: invalid UTF-8 in a fragment fails the connection with 1007 at that
/// fragment, before the message ends.
#[test]
fn invalid_utf8_fails_at_the_fragment_that_carries_it() {
    let mut h = Harness::upgraded();
    assert_eq!(
        h.feed(&masked(false, 1, "κόσμε".as_bytes())),
        Next::Continue
    );
    assert_eq!(
        h.feed(&masked(false, 0, &[0xce, 0xbc, 0xed, 0xa0, 0x80])),
        Next::HalfClose,
        "a surrogate: no continuation can save it"
    );
    assert_eq!(h.take_out(), [0x88, 0x02, 0x03, 0xEF]);
}

/// Autobahn 6.4.4: one text frame arriving in pieces fails at the piece with the invalid
/// bytes, before the frame is whole.
#[test]
fn invalid_utf8_fails_at_the_read_that_carries_it() {
    let mut h = Harness::upgraded();
    let mut payload = "κόσμε".as_bytes().to_vec();
    payload.extend_from_slice(&[0xf4, 0x90, 0x80, 0x80]);
    payload.extend_from_slice(b"-edited");
    let frame = masked(true, 1, &payload);
    assert_eq!(h.feed(&frame[..8]), Next::Continue);
    assert_eq!(h.feed(&frame[8..14]), Next::Continue);
    assert_eq!(h.feed(&frame[14..18]), Next::HalfClose, "over U+10FFFF");
    assert_eq!(h.take_out(), [0x88, 0x02, 0x03, 0xEF]);
}

/// Characters cut between fragments, and between reads of one frame, are whole text.
#[test]
fn characters_cut_anywhere_are_valid_text() {
    let text = "€uro κόσμε 😀";
    let bytes = text.as_bytes();
    for cut in 1..bytes.len() {
        let mut h = Harness::upgraded();
        assert_eq!(h.feed(&masked(false, 1, &bytes[..cut])), Next::Continue);
        assert_eq!(
            h.feed(&masked(true, 0, &bytes[cut..])),
            Next::Continue,
            "{cut}"
        );
        assert!(h.take_out().ends_with(bytes), "cut {cut}");
        let mut h = Harness::upgraded();
        let frame = masked(true, 1, bytes);
        for piece in frame.chunks(cut) {
            assert_eq!(h.feed(piece), Next::Continue, "pieces of {cut}");
        }
        assert!(h.take_out().ends_with(bytes), "pieces of {cut}");
    }
    // A message that ends inside a character is invalid.
    let mut h = Harness::upgraded();
    assert_eq!(h.feed(&masked(false, 1, b"a")), Next::Continue);
    assert_eq!(
        h.feed(&masked(true, 0, &"€".as_bytes()[..2])),
        Next::HalfClose
    );
    assert_eq!(h.take_out(), [0x88, 0x02, 0x03, 0xEF]);
}

/// After our Close only the peer's Close matters: invalid text arriving then is not checked,
/// and no second Close is written.
#[test]
fn text_arriving_after_our_close_is_not_checked() {
    let mut h = Harness::upgraded();
    assert_eq!(h.shutdown(0, CloseCode(1012)), Next::Continue);
    assert_eq!(h.take_out(), close_frame(CloseCode(1012)));
    let mut payload = vec![b'a'; 20];
    payload.extend_from_slice(&[0xff, 0xfe]);
    payload.extend_from_slice(&[b'a'; 20]);
    let frame = masked(true, 1, &payload);
    // The invalid bytes have arrived, the frame is not whole.
    assert_eq!(h.feed(&frame[..frame.len() - 10]), Next::Continue);
    assert!(h.take_out().is_empty(), "no second Close");
}

// Proxy mode, plain HTTP under `--http-path`.

impl Harness {
    fn http() -> Self {
        let mut h = Harness::new(AfterUpgrade::Proxy);
        h.config.policy.http_paths = vec!["/socket.io/".into()];
        h.config.proxy.sticky_cookie = Some("srv".into());
        h
    }

    fn connected(&mut self) {
        let cx = Ctx {
            config: &self.config,
            now: self.now,
            out: &mut self.out,
            stats: &self.stats,
        };
        self.conn.on_upstream_connected(&cx);
    }
}

const POLL_POST: &[u8] = b"POST /socket.io/?EIO=4&transport=polling&sid=s HTTP/1.1\r\nHost: a\r\n\
Content-Length: 6\r\nExpect: 100-continue\r\n\r\n";

#[test]
fn a_plain_request_goes_upstream_once_its_body_is_in_and_nothing_after_it() {
    let mut h = Harness::http();
    assert_eq!(h.feed(POLL_POST), Next::Continue);
    assert_eq!(h.take_out(), b"HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(h.feed(b"4hel"), Next::Continue);
    assert!(h.out.is_empty(), "one 100 Continue");
    // The body's end, and a pipelined request the edge never forwards.
    assert_eq!(
        h.feed(b"lo GET /socket.io/admin HTTP/1.1\r\nHost: a\r\n\r\n"),
        Next::Proxy
    );
    assert!(h.conn.is_http_request());
    h.forward();
    let forwarded = String::from_utf8(h.take_out()).unwrap();
    assert!(forwarded.starts_with("POST /socket.io/?EIO=4&transport=polling&sid=s HTTP/1.1\r\n"));
    assert!(
        forwarded.contains("Connection: close\r\nContent-Length: 6\r\n"),
        "{forwarded}"
    );
    assert!(!forwarded.contains("Expect"), "{forwarded}");
    assert!(forwarded.ends_with("\r\n\r\n4hello"), "{forwarded}");
    h.connected();
    assert_eq!(
        h.conn.deadline(),
        Some(h.config.proxy.http_timeout_ms),
        "a long poll's wait"
    );
}

#[test]
fn a_chunked_body_is_read_to_its_last_chunk_decoded_and_forwarded_with_its_length() {
    let mut h = Harness::http();
    let head = b"POST /socket.io/?sid=s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
        Expect: 100-continue\r\n\r\n";
    assert_eq!(h.feed(head), Next::Continue);
    assert_eq!(h.take_out(), b"HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(h.feed(b"3\r\n4he\r\n3\r"), Next::Continue);
    assert_eq!(
        h.feed(b"\nllo\r\n0\r\nT: v\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
        Next::Proxy
    );
    h.forward();
    let forwarded = String::from_utf8(h.take_out()).unwrap();
    assert!(
        forwarded.contains("Connection: close\r\nContent-Length: 6\r\n"),
        "{forwarded}"
    );
    assert!(!forwarded.contains("Transfer-Encoding"), "{forwarded}");
    assert!(forwarded.ends_with("\r\n\r\n4hello"), "{forwarded}");
    // One that breaks the grammar is a 400, before anything is forwarded.
    let mut h = Harness::http();
    let bad = b"POST /socket.io/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    assert_eq!(h.feed(bad), Next::HalfClose);
    assert!(String::from_utf8(h.take_out())
        .unwrap()
        .starts_with("HTTP/1.1 400 "));
}

#[test]
fn an_upstreams_answer_is_rewritten_for_the_client_and_relayed_until_it_closes() {
    let mut h = Harness::http();
    assert_eq!(
        h.feed(b"GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: a\r\n\r\n"),
        Next::Proxy
    );
    h.conn.set_sticky_cookie(Some((0xab, true)));
    h.forward();
    h.take_out();
    h.connected();
    // An interim answer is dropped; the final head is rewritten; the body follows.
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\
        Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n0{}";
    assert_eq!(h.upstream_sends(&answer[..30]), Next::Continue);
    assert_eq!(h.upstream_sends(&answer[30..]), Next::Relay);
    let out = String::from_utf8(h.take_out()).unwrap();
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\
         Set-Cookie: srv=00000000000000ab; Path=/; HttpOnly; SameSite=Lax; Secure\r\n\r\n0{}"
    );
    assert!(h.conn.is_exchange() && h.conn.is_relaying() && !h.conn.is_open());
    assert_eq!(
        h.stats
            .http_forwarded
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        h.stats.upgraded.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // An answer that stops flowing is cut at the HTTP timeout.
    assert_eq!(h.conn.deadline(), Some(h.config.proxy.http_timeout_ms));
    assert_eq!(h.timeout(), Next::Close);
}

#[test]
fn an_answer_the_client_could_misread_is_a_502() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ] {
        let mut h = Harness::http();
        assert_eq!(
            h.feed(b"GET /socket.io/ HTTP/1.1\r\nHost: a\r\n\r\n"),
            Next::Proxy
        );
        h.forward();
        h.take_out();
        assert_eq!(h.upstream_sends(answer), Next::HalfClose);
        let out = String::from_utf8(h.take_out()).unwrap();
        assert!(out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{out}");
    }
}

#[test]
fn a_sticky_cookie_rides_on_the_upstreams_101() {
    let mut h = Harness::http();
    assert_eq!(h.feed(REQUEST), Next::Proxy);
    h.conn.set_sticky_cookie(Some((1, false)));
    h.forward();
    h.take_out();
    assert_eq!(h.upstream_sends(UPSTREAM_101), Next::Relay);
    let out = String::from_utf8(h.take_out()).unwrap();
    let head = String::from_utf8_lossy(UPSTREAM_101);
    let expected = format!(
        "{}Set-Cookie: srv=0000000000000001; Path=/; HttpOnly; SameSite=Lax\r\n\r\n",
        head.strip_suffix("\r\n").unwrap()
    );
    assert_eq!(out, expected);
}
