//! Handshake, idle and send deadlines, including slowloris clients that keep trickling and
//! clients that stop reading.

#[macro_use]
mod common;

use common::Io;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{client_frame, exchange, read_to_close, upgrade_request, Server, DEADLINE};

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

/// Sockets the server process holds (listeners, clients, its own eventfds aside).
fn server_sockets(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

/// A client with a tiny receive buffer that upgrades, then sends `batch` in one write and
/// never reads again.
fn client_that_stops_reading(server: &Server, batch: &[u8]) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let mut stream = common::upgraded_through(server, socket);
    stream.write_all(batch).unwrap();
    stream
}

/// Echo messages totalling about `bytes`, 1,400 bytes each, then a Close if `close`.
fn echo_batch(bytes: usize, close: bool) -> Vec<u8> {
    let mut batch = Vec::new();
    for _ in 0..bytes / 1400 {
        batch.extend(client_frame(true, 2, &[7u8; 1400]));
    }
    if close {
        batch.extend(client_frame(true, 8, &[0x03, 0xE8]));
    }
    batch
}

/// Waits until the server holds `sockets` sockets again: the client's connection is gone,
/// although the client never read.
fn wait_for_sockets(server: &Server, sockets: usize, why: &str) {
    common::wait_until(why, || server_sockets(server) == sockets);
}

/// No idle timeout: a client that stops reading holds its echo only until the send timeout.
fn a_client_that_stops_reading_is_given_up_at_the_send_timeout(io: Io) {
    let server = Server::start(
        io,
        &["--send-timeout-ms", "500", "--metrics", "127.0.0.1:0"],
    );
    let before = server_sockets(&server);
    let start = Instant::now();
    // More echo than the sockets' buffers hold: the server's output waits for the client.
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(client_that_stops_reading(
            &server,
            &echo_batch(4 << 20, false),
        ));
    }
    server.wait_for_metric("wsedge_send_timeouts_total", |n| n >= 4.0);
    wait_for_sockets(
        &server,
        before,
        "the stalled clients' sockets were not closed",
    );
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "given up early"
    );
    drop(streams);
}

/// A Close behind output the client never reads: the close waits for the flush at most the
/// linger (io_uring links the send and the close; the send is cancelled at the deadline).
fn a_close_behind_output_the_client_never_reads_is_bounded(io: Io) {
    let server = Server::start(
        io,
        &[
            "--idle-timeout-ms",
            "2000",
            "--max-message-bytes",
            "16777216",
        ],
    );
    let before = server_sockets(&server);
    // One large message with the Close right behind it: the whole echo and the close are
    // produced by the read that completes the message, and go out together. The echo is
    // more than a socket's send buffer takes (4 MiB at most by default), so the send cannot
    // complete while the client does not read.
    let mut batch = client_frame(true, 2, &vec![7u8; 12 << 20]);
    batch.extend(client_frame(true, 8, &[0x03, 0xE8]));
    let streams: Vec<TcpStream> = (0..2)
        .map(|_| client_that_stops_reading(&server, &batch))
        .collect();
    wait_for_sockets(&server, before, "a closing connection kept its socket");
    drop(streams);
}

on_both_backends!(
    a_client_that_stops_reading_is_given_up_at_the_send_timeout,
    a_close_behind_output_the_client_never_reads_is_bounded,
    a_silent_connection_is_closed_without_an_answer,
    a_slowloris_client_gets_408_at_the_deadline_despite_trickling,
    an_idle_upgraded_connection_is_closed_with_1001,
    activity_postpones_the_idle_timeout,
);
