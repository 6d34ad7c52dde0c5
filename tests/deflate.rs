//! permessage-deflate (RFC 7692): in proxy mode the edge relays the extension's
//! negotiation and its compressed frames unchanged, so that a compressing client and app
//! server keep their compression through it; in echo mode, which does not compress, an
//! offer is declined (no extension in the 101).

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;

use common::{
    exchange, raw_upstream, switching_protocols, upgrade_request, Io, PythonUpstream, Server,
    DEADLINE,
};

/// Python `websockets` on both sides, compressing, through the relay over `ws://` and
/// `wss://`: both ends negotiated permessage-deflate and large and small messages come
/// back whole.
fn python_compressing_peers_keep_their_compression(io: Io) {
    let Some(upstream) = PythonUpstream::start_deflating() else {
        return;
    };
    let dir = common::scratch(&format!("deflate-{io:?}"));
    let cert = common::cert(&dir, "server", &["127.0.0.1"]);
    let up = upstream.addr.to_string();
    let server = Server::start_tls(io, &cert, &["--after", "proxy", "--upstream", &up]);
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/thirdparty/venv/bin/python");
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/deflate_client.py");
    let urls = [
        format!("ws://{}/extensions", server.addr),
        format!("wss://{}/extensions", server.tls_addr()),
    ];
    for url in urls {
        let output = Command::new(&python)
            .arg(&client)
            .arg(&url)
            .arg(&cert.cert)
            .output()
            .expect("run the Python client");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{url}: {stdout}{stderr}\n{}",
            server.log()
        );
        for line in [
            "client extension: permessage-deflate",
            "upstream extensions: ['permessage-deflate']",
            "client negotiated: ['permessage-deflate']",
            "echo ok",
        ] {
            assert!(stdout.contains(line), "{url}: no {line:?} in {stdout}");
        }
    }
}

/// A compressed frame (RSV1 set) goes through byte for byte, each way, with the 101's
/// extension as the upstream wrote it.
fn compressed_frames_pass_byte_for_byte(io: Io) {
    // "Hello" compressed with permessage-deflate (RFC 7692 section 7.2.3.1), RSV1 set.
    const COMPRESSED_HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let (tx, rx) = mpsc::channel();
    let up = raw_upstream(1, move |mut stream, head| {
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut answer = switching_protocols(&head);
        answer.truncate(answer.len() - 2);
        answer.extend_from_slice(
            b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n",
        );
        stream.write_all(&answer).unwrap();
        let mut frame = [0u8; 2 + 4 + COMPRESSED_HELLO.len()];
        stream.read_exact(&mut frame).unwrap();
        let _ = tx.send((text, frame.to_vec()));
        let mut back = vec![0xc1, COMPRESSED_HELLO.len() as u8];
        back.extend_from_slice(&COMPRESSED_HELLO);
        stream.write_all(&back).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
    });
    let server = Server::start(io, &["--after", "proxy", "--upstream", &up.to_string()]);
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits";
    let (head, mut stream) = exchange(&server, &upgrade_request("/", &[offer]));
    assert_eq!(head.status, 101);
    assert_eq!(
        head.header("sec-websocket-extensions"),
        Some("permessage-deflate; server_no_context_takeover")
    );
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0xc1, 0x80 | COMPRESSED_HELLO.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(
        COMPRESSED_HELLO
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4]),
    );
    stream.write_all(&frame).unwrap();
    let (request, received) = rx
        .recv_timeout(DEADLINE)
        .expect("the upstream got the frame");
    assert!(
        request.contains(offer),
        "the offer reached the upstream: {request}"
    );
    assert_eq!(received, frame, "the compressed frame unchanged");
    let mut back = [0u8; 2 + COMPRESSED_HELLO.len()];
    let already = head.rest.len();
    back[..already].copy_from_slice(&head.rest);
    stream.read_exact(&mut back[already..]).unwrap();
    assert_eq!(back[0], 0xc1, "RSV1 kept");
    assert_eq!(&back[2..], COMPRESSED_HELLO);
}

/// Echo mode speaks no extension: an offer gets a 101 that names none, and the client goes
/// on uncompressed (a frame with RSV1 would be a 1002: `echo::reserved_bits_are_1002`).
fn echo_declines_an_offer_of_permessage_deflate(io: Io) {
    let server = Server::start(io, &["--after", "echo"]);
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits";
    let (head, mut stream) = exchange(&server, &upgrade_request("/", &[offer]));
    assert_eq!(head.status, 101);
    assert_eq!(head.header("sec-websocket-extensions"), None);
    stream
        .write_all(&common::client_frame(true, 1, b"plain"))
        .unwrap();
    let echoed = common::read_exact(&mut stream, 7);
    assert_eq!(echoed, b"\x81\x05plain");
}

on_both_backends!(
    python_compressing_peers_keep_their_compression,
    compressed_frames_pass_byte_for_byte,
    echo_declines_an_offer_of_permessage_deflate,
);
