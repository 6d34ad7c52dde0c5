//! SIGTERM drains: no new connections, handshakes in flight finish, upgraded connections
//! get Close 1001, and the process exits 0.

#[macro_use]
mod common;

use common::Io;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{exchange, read_head, read_to_close, upgrade_request, Server};

fn sigterm_finishes_handshakes_closes_with_1001_and_exits_0(io: Io) {
    let mut server = Server::start(
        io,
        &[
            "--drain-secs",
            "0",
            "--drain-close-code",
            "1001",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let (head, mut upgraded) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    let request = upgrade_request("/", &[]);
    let mut in_flight = server.connect();
    in_flight.write_all(&request[..20]).unwrap();
    // The server holds the half-sent request before the signal.
    server.wait_for_metric("wsedge_handshaking_connections", |n| n >= 1.0);

    server.signal(libc::SIGTERM);
    server.wait_for_log("draining");
    // The upgraded client is told the server is going away.
    let mut close = [0u8; 4];
    upgraded.read_exact(&mut close).unwrap();
    assert_eq!(close, [0x88, 0x02, 0x03, 0xE9]);
    upgraded
        .write_all(&common::client_frame(true, 8, &[0x03, 0xE9]))
        .unwrap();
    assert!(read_to_close(&mut upgraded, Vec::new()).is_empty());

    // New clients are refused once the listeners are closed.
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "still accepting after SIGTERM"
    );

    // The handshake in flight completes, then is closed with 1001 as well.
    in_flight.write_all(&request[20..]).unwrap();
    let head = read_head(&mut in_flight);
    assert_eq!(head.status, 101);
    let rest = read_to_close(&mut in_flight, head.rest);
    assert_eq!(&rest[..4], [0x88, 0x02, 0x03, 0xE9]);

    assert!(server.wait_exit().success());
}

fn a_second_signal_exits_at_once(io: Io) {
    let mut server = Server::start(io, &[]);
    let (head, _upgraded) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    let mut slow = server.connect();
    slow.write_all(b"GET / HT").unwrap();
    server.signal(libc::SIGTERM);
    server.wait_for_log("draining");
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
}

on_both_backends!(
    sigterm_finishes_handshakes_closes_with_1001_and_exits_0,
    a_second_signal_exits_at_once,
);
