//! Every rejection, through a real socket: status, required headers, body, then close.

#[macro_use]
mod common;

use common::Io;

use common::{exchange, read_to_close, upgrade_request, Server, ACCEPT};
use std::io::Write;

const POLICY: &[&str] = &[
    "--path",
    "/chat",
    "--allowed-origin",
    "https://app.example.com",
    "--auth-token",
    "s3cret",
    "--subprotocols",
    "v2.sync,v1.sync",
    "--require-subprotocol",
];

const AUTH: &str = "Authorization: Bearer s3cret";
const PROTO: &str = "Sec-WebSocket-Protocol: v1.sync";

/// Sends `request`, checks the status and headers, and that the body names the rule and
/// the server then closes the connection (after the whole response, not with a reset).
fn expect(server: &Server, request: &[u8], status: u16, headers: &[(&str, &str)], body: &str) {
    let (head, mut stream) = exchange(server, request);
    assert_eq!(
        head.status,
        status,
        "{:?}",
        String::from_utf8_lossy(request)
    );
    for (name, value) in headers {
        assert_eq!(head.header(name), Some(*value), "{name} on {status}");
    }
    assert_eq!(head.header("Connection"), Some("close"));
    let body_bytes = read_to_close(&mut stream, head.rest.clone());
    let text = String::from_utf8(body_bytes).unwrap();
    assert_eq!(
        head.header("Content-Length")
            .map(|v| v.parse::<usize>().unwrap()),
        Some(text.len())
    );
    assert!(text.contains(body), "body {text:?} lacks {body:?}");
}

fn every_rule_has_its_status_through_the_server(io: Io) {
    let server = Server::start(io, POLICY);
    let ok = [AUTH, PROTO];
    expect(
        &server,
        b"POST /chat HTTP/1.1\r\nHost: a\r\n\r\n",
        405,
        &[("Allow", "GET")],
        "requires GET",
    );
    expect(
        &server,
        b"GET /chat HTTP/1.0\r\nHost: a\r\n\r\n",
        400,
        &[],
        "HTTP/1.1",
    );
    expect(
        &server,
        &upgrade_request("/nope", &ok),
        404,
        &[],
        "no WebSocket endpoint",
    );
    expect(
        &server,
        b"GET /chat HTTP/1.1\r\nHost: a\r\n\r\n",
        426,
        &[("Upgrade", "websocket")],
        "Upgrade: websocket",
    );
    let wrong_version = String::from_utf8(upgrade_request("/chat", &ok))
        .unwrap()
        .replace("Version: 13", "Version: 8");
    expect(
        &server,
        wrong_version.as_bytes(),
        426,
        &[("Sec-WebSocket-Version", "13")],
        "13 required",
    );
    let bad_key = String::from_utf8(upgrade_request("/chat", &ok))
        .unwrap()
        .replace(common::KEY, "short");
    expect(&server, bad_key.as_bytes(), 400, &[], "base64 of 16 bytes");
    expect(
        &server,
        &upgrade_request("/chat", &[AUTH, PROTO, "Origin: https://evil.example"]),
        403,
        &[],
        "Origin",
    );
    expect(
        &server,
        &upgrade_request("/chat", &[PROTO]),
        401,
        &[("WWW-Authenticate", "Bearer")],
        "missing bearer token",
    );
    expect(
        &server,
        &upgrade_request("/chat", &[AUTH, "Sec-WebSocket-Protocol: mqtt"]),
        400,
        &[],
        "subprotocol",
    );
    expect(
        &server,
        &upgrade_request("/chat", &[AUTH, PROTO, "X-Bad: a\x01b"]),
        400,
        &[],
        "invalid byte",
    );
    expect(
        &server,
        &upgrade_request("/chat", &[AUTH, PROTO, "Host: twice"]),
        400,
        &[],
        "repeated Host",
    );
    let huge = format!("X-Pad: {}", "a".repeat(9000));
    expect(
        &server,
        &upgrade_request("/chat", &[&huge]),
        431,
        &[],
        "too large",
    );
}

fn a_valid_request_through_the_same_policy_upgrades(io: Io) {
    let server = Server::start(io, POLICY);
    let (head, _stream) = exchange(
        &server,
        &upgrade_request(
            "/chat?x=1",
            &[
                AUTH,
                "Sec-WebSocket-Protocol: mqtt, v1.sync, v2.sync",
                "Origin: https://app.example.com",
            ],
        ),
    );
    assert_eq!(head.status, 101);
    assert_eq!(head.header("Sec-WebSocket-Accept"), Some(ACCEPT));
    assert_eq!(head.header("Sec-WebSocket-Protocol"), Some("v2.sync"));
    assert_eq!(head.header("Sec-WebSocket-Extensions"), None);
}

fn a_request_sent_one_byte_at_a_time_upgrades(io: Io) {
    let server = Server::start(io, &[]);
    let mut stream = server.connect();
    for byte in upgrade_request("/", &[]) {
        stream.write_all(&[byte]).unwrap();
        stream.flush().unwrap();
    }
    let head = common::read_head(&mut stream);
    assert_eq!(head.status, 101);
    assert_eq!(head.header("Sec-WebSocket-Accept"), Some(ACCEPT));
}

fn garbage_gets_400_not_silence(io: Io) {
    let server = Server::start(io, &[]);
    // A TLS ClientHello sent to the plain port.
    expect(
        &server,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        400,
        &[],
        "malformed",
    );
}

on_both_backends!(
    every_rule_has_its_status_through_the_server,
    a_valid_request_through_the_same_policy_upgrades,
    a_request_sent_one_byte_at_a_time_upgrades,
    garbage_gets_400_not_silence,
);
