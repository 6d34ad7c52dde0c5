//! Handshake and idle deadlines, including slowloris clients that keep trickling.

#[macro_use]
mod common;

use common::Io;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{exchange, read_to_close, upgrade_request, Server, DEADLINE};

fn a_silent_connection_is_closed_without_an_answer(io: Io) {
    let server = Server::start(io, &["--handshake-timeout-ms", "300"]);
    let mut stream = server.connect();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = stream
        .read(&mut buf)
        .expect("closed, not reset or timed out");
    assert_eq!(n, 0, "a silent client gets no bytes");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "closed early: {:?}",
        start.elapsed()
    );
}

fn a_slowloris_client_gets_408_at_the_deadline_despite_trickling(io: Io) {
    let server = Server::start(io, &["--handshake-timeout-ms", "500"]);
    let mut stream = server.connect();
    let request = upgrade_request("/", &[]);
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut received = Vec::new();
    // One byte every 50 ms: the whole request would take ~6 s; the deadline is 500 ms.
    for byte in request.iter().take(request.len() - 1) {
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        if received.ends_with(b"\n") && received.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "never cut off");
    }
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let all = read_to_close(&mut stream, received);
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{text}"
    );
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450),
        "cut off before the deadline: {elapsed:?}"
    );
}

fn an_idle_upgraded_connection_is_closed_with_1001(io: Io) {
    let server = Server::start(io, &["--idle-timeout-ms", "300"]);
    let (head, mut stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    let start = Instant::now();
    let mut close = head.rest;
    while close.len() < 4 {
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "closed without a Close frame");
        close.extend_from_slice(&buf[..n]);
    }
    assert_eq!(&close[..4], [0x88, 0x02, 0x03, 0xE9]);
    assert!(start.elapsed() >= Duration::from_millis(250));
    // Answer the close; the server then closes the TCP connection.
    stream
        .write_all(&common::client_frame(true, 8, &[0x03, 0xE9]))
        .unwrap();
    assert!(read_to_close(&mut stream, Vec::new()).is_empty());
}

fn activity_postpones_the_idle_timeout(io: Io) {
    let server = Server::start(io, &["--idle-timeout-ms", "400"]);
    let (head, mut stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    let start = Instant::now();
    // Ping every 100 ms for 1.2 s: three idle periods' worth, never idle for one.
    while start.elapsed() < Duration::from_millis(1200) {
        stream
            .write_all(&common::client_frame(true, 9, b"k"))
            .unwrap();
        let mut pong = [0u8; 3];
        stream.read_exact(&mut pong).unwrap();
        assert_eq!(pong, *b"\x8a\x01k", "got something other than a pong");
        std::thread::sleep(Duration::from_millis(100));
    }
}

on_both_backends!(
    a_silent_connection_is_closed_without_an_answer,
    a_slowloris_client_gets_408_at_the_deadline_despite_trickling,
    an_idle_upgraded_connection_is_closed_with_1001,
    activity_postpones_the_idle_timeout,
);
