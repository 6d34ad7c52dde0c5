//! Echo mode against an independent client (tungstenite) and raw frames.

#[macro_use]
mod common;

use common::Io;

use std::io::Write;

use common::{client_frame, exchange, read_exact, read_to_close, upgrade_request, Server};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// A tungstenite client over a socket with read and write deadlines, so that a server that
/// never answers fails the test instead of hanging it.
fn connect(
    server: &Server,
    request: tungstenite::handshake::client::Request,
) -> (
    tungstenite::WebSocket<std::net::TcpStream>,
    tungstenite::handshake::client::Response,
) {
    let stream = server.connect();
    stream.set_write_timeout(Some(common::DEADLINE)).unwrap();
    tungstenite::client::client(request, stream).expect("upgrade")
}

fn tungstenite_upgrades_negotiates_echoes_pings_and_closes_cleanly(io: Io) {
    let server = Server::start(io, &["--subprotocols", "v2,v1"]);
    let mut request = server.url("/chat").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "v1, v2".parse().unwrap());
    let (mut socket, response) = connect(&server, request);
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "v2");

    socket.send(Message::text("héllo")).unwrap();
    assert_eq!(socket.read().unwrap(), Message::text("héllo"));
    let blob: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
    socket.send(Message::binary(blob.clone())).unwrap();
    assert_eq!(socket.read().unwrap(), Message::binary(blob));
    socket
        .send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    assert_eq!(
        socket.read().unwrap(),
        Message::Pong(b"are you there".to_vec().into())
    );

    common::close_cleanly(&mut socket);
}

fn close_code_is_echoed(io: Io) {
    let server = Server::start(io, &[]);
    let (mut socket, _) = connect(&server, server.url("/").into_client_request().unwrap());
    socket
        .close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Library(4001),
            reason: "bye".into(),
        }))
        .unwrap();
    match socket.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Library(4001)),
        other => panic!("expected the echoed close, got {other:?}"),
    }
}

fn a_frame_sent_with_the_handshake_is_echoed(io: Io) {
    let server = Server::start(io, &[]);
    let mut bytes = upgrade_request("/", &[]);
    bytes.extend(client_frame(true, 1, b"eager"));
    let (head, mut stream) = exchange(&server, &bytes);
    assert_eq!(head.status, 101);
    let mut echoed = head.rest;
    if echoed.len() < 7 {
        echoed.extend(read_exact(&mut stream, 7 - echoed.len()));
    }
    assert_eq!(echoed, b"\x81\x05eager");
}

fn fragmented_message_is_reassembled(io: Io) {
    let server = Server::start(io, &[]);
    let (head, mut stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    stream.write_all(&client_frame(false, 2, b"abc")).unwrap();
    stream.write_all(&client_frame(false, 0, b"def")).unwrap();
    stream.write_all(&client_frame(true, 0, b"g")).unwrap();
    assert_eq!(read_exact(&mut stream, 9), b"\x82\x07abcdefg");
}

/// Sends `frame` after upgrading and expects a Close with `code`, then the TCP close.
fn expect_failure(io: Io, args: &[&str], frame: &[u8], code: u16) {
    let server = Server::start(io, args);
    let (head, mut stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    stream.write_all(frame).unwrap();
    let rest = read_to_close(&mut stream, head.rest);
    let [hi, lo] = code.to_be_bytes();
    assert_eq!(rest, [0x88, 0x02, hi, lo], "expected close {code}");
}

fn unmasked_frame_is_1002(io: Io) {
    expect_failure(io, &[], &[0x81, 0x02, b'h', b'i'], 1002);
}

fn reserved_bits_are_1002(io: Io) {
    let mut frame = client_frame(true, 1, b"x");
    frame[0] |= 0x40;
    expect_failure(io, &[], &frame, 1002);
}

fn unknown_opcode_is_1002(io: Io) {
    expect_failure(io, &[], &client_frame(true, 0x3, b"x"), 1002);
}

fn fragmented_ping_is_1002(io: Io) {
    expect_failure(io, &[], &client_frame(false, 0x9, b"x"), 1002);
}

fn invalid_utf8_text_is_1007(io: Io) {
    expect_failure(io, &[], &client_frame(true, 1, &[0xC3, 0x28]), 1007);
}

fn message_over_the_limit_is_1009(io: Io) {
    expect_failure(
        io,
        &["--max-message-bytes", "1000"],
        &client_frame(true, 2, &[0u8; 1001]),
        1009,
    );
}

fn close_mode_sends_101_and_close_1000_then_closes(io: Io) {
    let server = Server::start(io, &["--after", "close"]);
    let (head, mut stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    assert_eq!(
        read_to_close(&mut stream, head.rest),
        [0x88, 0x02, 0x03, 0xE8]
    );
}

on_both_backends!(
    tungstenite_upgrades_negotiates_echoes_pings_and_closes_cleanly,
    close_code_is_echoed,
    a_frame_sent_with_the_handshake_is_echoed,
    fragmented_message_is_reassembled,
    unmasked_frame_is_1002,
    reserved_bits_are_1002,
    unknown_opcode_is_1002,
    fragmented_ping_is_1002,
    invalid_utf8_text_is_1007,
    message_over_the_limit_is_1009,
    close_mode_sends_101_and_close_1000_then_closes,
);
