use super::*;

fn request(method: &str, uri: &str, protocol: Option<&str>, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    if let Some(protocol) = protocol {
        builder = builder.extension(h2::ext::Protocol::from(protocol));
    }
    let (head, ()) = builder
        .body(())
        .map(http::Request::into_parts)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    write_http1_request(&head, super::stream::STANDIN_KEY, &mut out);
    out
}

#[test]
fn an_extended_connect_is_written_as_the_upgrade_it_stands_for() {
    let written = request(
        "CONNECT",
        "https://example.com/chat?room=1",
        Some("websocket"),
        &[
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat"),
            ("origin", "https://example.com"),
            // Not RFC 8441's, and not trusted: the stand-in replaces it.
            ("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAA=="),
            ("content-length", "5"),
        ],
    );
    let text = String::from_utf8(written).unwrap_or_default();
    assert_eq!(
        text,
        "GET /chat?room=1 HTTP/1.1\r\nhost: example.com\r\nupgrade: websocket\r\n\
         connection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         sec-websocket-version: 13\r\nsec-websocket-protocol: chat\r\n\
         origin: https://example.com\r\n\r\n"
    );
}

#[test]
fn other_requests_keep_their_method_and_target() {
    let text = |w: Vec<u8>| String::from_utf8(w).unwrap_or_default();
    assert_eq!(
        text(request("GET", "https://example.com/", None, &[])),
        "GET / HTTP/1.1\r\nhost: example.com\r\n\r\n"
    );
    assert_eq!(
        text(request("CONNECT", "example.com:443", None, &[])),
        "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n"
    );
    // A :protocol other than websocket is still asked as an upgrade, and refused as one.
    assert!(text(request("CONNECT", "https://a/x", Some("h2c"), &[])).contains("upgrade: h2c\r\n"));
}

#[test]
fn a_101_becomes_200_without_the_headers_http2_does_not_carry() {
    let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n\x88\x02\x03\xe8";
    let Some(Ok((response, head_len))) = h2_response(answer) else {
        panic!("the head parses");
    };
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(&answer[head_len..], b"\x88\x02\x03\xe8");
    let names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["sec-websocket-protocol"]);
}

#[test]
fn a_refusal_keeps_its_status_and_headers() {
    let answer = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy";
    let Some(Ok((response, head_len))) = h2_response(answer) else {
        panic!("the head parses");
    };
    assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"7"[..])
    );
    assert!(response.headers().get("connection").is_none());
    assert_eq!(&answer[head_len..], b"busy");
    assert!(h2_response(b"HTTP/1.1 503 Serv").is_none());
}

#[test]
fn only_the_preface_is_taken_for_http2() {
    assert!(starts_preface(PREFACE));
    assert!(starts_preface(b"PRI * HT"));
    assert!(starts_preface(&[PREFACE, b"\x00\x00\x00\x04"].concat()));
    assert!(!starts_preface(b"GET / HTTP/1.1\r\n"));
    assert!(!starts_preface(b"PRI * HTTP/1.1\r\n"));
    assert!(!starts_preface(b""));
}

#[test]
fn malformed_requests_are_told_apart() {
    let head = |method: &str, uri: &str, headers: &[(&str, &str)]| {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(())
            .map(http::Request::into_parts)
            .map(|(h, ())| h)
    };
    let ok = head("GET", "https://a.example/", &[("host", "a.example")]);
    assert_eq!(ok.as_ref().map(stream::malformed).ok(), Some(None));
    for (method, uri, headers) in [
        ("GET", "https://a.example/", &[("x", " padded")][..]),
        ("GET", "https://a.example/", &[("x", "padded\t")][..]),
        ("GET", "https://a.example/", &[("host", "b.example")][..]),
        ("CONNECT", "/", &[][..]),
    ] {
        let parsed = head(method, uri, headers);
        assert!(
            parsed
                .as_ref()
                .is_ok_and(|h| stream::malformed(h).is_some()),
            "{method} {uri} {headers:?}"
        );
    }
}

use crate::conn::{AfterUpgrade, ConnConfig};
use crate::stats::Counters;
use client::{Client, Connect, Frame};

/// A call's context at time 0, writing into `out`.
fn context<'a>(config: &'a ConnConfig, out: &'a mut Vec<u8>, stats: &'a Counters) -> Ctx<'a> {
    Ctx {
        config,
        now: 0,
        out,
        stats,
    }
}

/// A client's preface and SETTINGS, then an extended CONNECT for each `(stream, path)`.
fn opening(streams: &[(u32, &str)]) -> Vec<u8> {
    let mut wire = Vec::new();
    Client::start(&mut wire);
    let mut client = Client::new();
    for &(stream, path) in streams {
        let request = Connect {
            scheme: "http",
            authority: "a",
            path,
            protocols: &[],
            headers: &[],
        };
        client.connect(&mut wire, stream, &request);
    }
    wire
}

/// Every whole frame in `bytes`, as a fresh client reads them.
fn frames_of(bytes: &[u8]) -> Vec<Frame> {
    let mut client = Client::new();
    client.received(bytes);
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = client.next_frame() {
        frames.push(frame);
    }
    frames
}

/// The client codec against the server, in memory: SETTINGS, two WebSockets on one
/// connection, an echo, a refusal, the stream's end; the accounting of streams.
#[test]
fn the_client_and_the_server_agree_in_memory() {
    let mut config = crate::conn::tests::config(AfterUpgrade::Echo);
    config.policy.paths = vec!["/chat".into()];
    let stats = Counters::default();
    let mut out = Vec::new();
    let mut cx = context(&config, &mut out, &stats);
    let mut server = Http2::new(&cx, None);
    let mut wire = opening(&[(1, "/chat"), (3, "/nope")]);
    Client::data(&mut wire, 1, b"\x81\x82abcd\x09\x0b", false); // "hi", masked
    assert_eq!(
        server.receive(&wire, &mut cx, &mut admit_all, &mut NoSockets),
        Next::Continue
    );
    let frames = frames_of(cx.out);
    cx.out.clear();
    assert!(frames.contains(&Frame::Settings {
        ack: false,
        connect_protocol: true
    }));
    let status = |id| {
        frames.iter().find_map(|f| match f {
            Frame::Headers { stream, status, .. } if *stream == id => *status,
            _ => None,
        })
    };
    assert_eq!((status(1), status(3)), (Some(200), Some(404)));
    let echoed = frames
        .iter()
        .any(|f| matches!(f, Frame::Data { stream: 1, payload, .. } if payload == b"\x81\x02hi"));
    assert!(echoed, "{frames:?}");
    // Stream 1 ends both ways; stream 3 was refused and ended by the server.
    let mut wire = Vec::new();
    Client::data(&mut wire, 1, b"\x88\x80abcd", true);
    let _ = server.receive(&wire, &mut cx, &mut admit_all, &mut NoSockets);
    let snapshot = Counters::sum([&stats]);
    assert_eq!(
        (snapshot.h2_streams, snapshot.upgraded, snapshot.rejected),
        (2, 1, 1)
    );
}

/// In a drain, a connection with a WebSocket open says GOAWAY at the time the drain gives
/// it, not at once; one without says it at once.
#[test]
fn a_drain_spreads_its_goaways() {
    use crate::conn::frame::CloseCode;

    let config = crate::conn::tests::config(AfterUpgrade::Echo);
    let stats = Counters::default();
    let goaway = |frames: &[Frame]| frames.iter().any(|f| matches!(f, Frame::GoAway { .. }));
    let mut out = Vec::new();
    let mut cx = context(&config, &mut out, &stats);
    let mut busy = Http2::new(&cx, None);
    let _ = busy.receive(
        &opening(&[(1, "/")]),
        &mut cx,
        &mut admit_all,
        &mut NoSockets,
    );
    cx.out.clear();
    let _ = busy.on_shutdown(|| (500, CloseCode(1012)), &mut cx, &mut NoSockets);
    assert!(!goaway(&frames_of(cx.out)), "not before its time");
    assert_eq!(busy.deadline(config.send_timeout_ms), Some(500));
    cx.out.clear();
    cx.now = 500;
    let _ = busy.on_timeout(&mut cx, &mut NoSockets);
    assert!(goaway(&frames_of(cx.out)), "at its time");

    let mut idle = Http2::new(&cx, None);
    let _ = idle.receive(&opening(&[]), &mut cx, &mut admit_all, &mut NoSockets);
    cx.out.clear();
    let _ = idle.on_shutdown(|| (900, CloseCode(1012)), &mut cx, &mut NoSockets);
    assert!(goaway(&frames_of(cx.out)), "at once without a WebSocket");
}

/// A stream admission control refuses gets its refusal (429 with `Retry-After`), as a new
/// connection over the address's rate would; the next one admitted is served.
#[test]
fn a_stream_over_the_address_rate_gets_429() {
    use crate::handshake::Refusal;

    let config = crate::conn::tests::config(AfterUpgrade::Echo);
    let stats = Counters::default();
    let mut out = Vec::new();
    let mut cx = context(&config, &mut out, &stats);
    let mut server = Http2::new(&cx, None);
    let mut left = 1;
    let mut admit = |_| match left {
        0 => Err(Refusal::RateLimited {
            retry_after_secs: 7,
        }),
        _ => {
            left -= 1;
            Ok(())
        }
    };
    let _ = server.receive(
        &opening(&[(1, "/"), (3, "/")]),
        &mut cx,
        &mut admit,
        &mut NoSockets,
    );
    let answers: Vec<_> = frames_of(cx.out)
        .into_iter()
        .filter_map(|frame| match frame {
            Frame::Headers {
                stream,
                status,
                fields,
                ..
            } => {
                let retry = fields
                    .iter()
                    .find(|(n, _)| n == "retry-after")
                    .map(|(_, v)| v.clone());
                Some((stream, status, retry))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        answers,
        [(1, Some(200), None), (3, Some(429), Some("7".into()))]
    );
}
