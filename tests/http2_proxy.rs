//! Proxy mode over HTTP/2 (`--after proxy` with `--h2c`/`--h2`): each extended CONNECT
//! stream bridged to an HTTP/1.1 upgrade toward an upstream. Upstreams scripted here (to
//! see exactly what crosses the bridge: the request, FINs, resets), wsedge's own echo, and
//! Python `websockets` driven by Node's `http2` client.

#[macro_use]
mod common;

use common::h2::*;
use common::{Io, PythonUpstream, Server, DEADLINE};

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Instant;

/// An upstream whose every step the test takes by hand.
struct Scripted {
    listener: TcpListener,
}

impl Scripted {
    fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Scripted { listener }
    }

    fn addr(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }

    /// The next connection from the edge, and the request head it sent.
    fn accept(&self) -> (TcpStream, String) {
        let start = Instant::now();
        let mut socket = loop {
            match self.listener.accept() {
                Ok((socket, _)) => break socket,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(start.elapsed() < DEADLINE, "the edge never connected");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        socket.set_nonblocking(false).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            assert_eq!(
                socket.read(&mut byte).unwrap(),
                1,
                "the request ended early"
            );
            head.push(byte[0]);
        }
        (socket, String::from_utf8(head).unwrap())
    }
}

/// The value of header `name` in an HTTP/1.1 head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// The upstream's 101 for `request`, with `extra` header lines.
fn switching(request: &str, extra: &str) -> Vec<u8> {
    let key = header(request, "sec-websocket-key").expect("a key");
    let accept = wsedge::handshake::accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
        std::str::from_utf8(&accept).unwrap()
    )
    .into_bytes()
}

fn edge(io: Io, upstreams: &[&str], extra: &[&str]) -> Server {
    let mut args = vec!["--h2c", "--after", "proxy", "--metrics", "127.0.0.1:0"];
    for upstream in upstreams {
        args.extend(["--upstream", upstream]);
    }
    args.extend_from_slice(extra);
    Server::start(io, &args)
}

/// The fields of a HEADERS frame's block.
fn fields(raw: &mut Raw, frame: &Frame) -> Vec<(String, String)> {
    let decoded = raw.decoder.decode(&frame.payload).unwrap();
    decoded
        .into_iter()
        .map(|(n, v)| {
            let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
            (text(n), text(v))
        })
        .collect()
}

fn open_with(raw: &mut Raw, id: u32, path: &str, extra: &[(&str, &str)]) {
    let block = block(&connect_fields(path, extra));
    raw.send(HEADERS, END_HEADERS, id, &block);
}

fn read_exactly(socket: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    socket.read_exact(&mut bytes).unwrap();
    bytes
}

/// The request the upstream gets, the answer the client gets, the bytes both ways, and
/// END_STREAM as a FIN in both directions; each stream its own key.
fn a_stream_is_bridged_to_an_http1_upgrade(io: Io) {
    let upstream = Scripted::start();
    let server = edge(io, &[&upstream.addr()], &[]);
    let mut raw = Raw::connect(&server, &[]);
    let offered = [
        ("sec-websocket-protocol", "chat, v2"),
        ("origin", "https://app.example"),
    ];
    open_with(&mut raw, 1, "/room?id=7", &offered);
    let (mut up, request) = upstream.accept();
    assert!(
        request.starts_with("GET /room?id=7 HTTP/1.1\r\n"),
        "{request}"
    );
    let key = header(&request, "sec-websocket-key").unwrap().to_owned();
    assert_eq!(key.len(), 24, "{request}");
    assert_ne!(key, common::KEY, "a fresh key, not the stand-in: {request}");
    for (name, value) in [
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-protocol", "chat, v2"),
        ("origin", "https://app.example"),
        ("x-forwarded-for", "127.0.0.1"),
        ("host", "localhost"),
    ] {
        assert_eq!(header(&request, name), Some(value), "{name} in {request}");
    }
    up.write_all(&switching(&request, "Sec-WebSocket-Protocol: chat\r\n"))
        .unwrap();
    let answer = raw.until("the answer", |f| f.kind == HEADERS && f.stream == 1);
    let answer = fields(&mut raw, &answer);
    let get = |name: &str| {
        answer
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get(":status"), Some("200"), "{answer:?}");
    assert_eq!(get("sec-websocket-protocol"), Some("chat"), "{answer:?}");
    for absent in ["sec-websocket-accept", "upgrade", "connection"] {
        assert_eq!(get(absent), None, "{absent} is not carried: {answer:?}");
    }
    // The client's DATA is the upstream's bytes, as they are.
    let message = ws_frame(1, b"to the app");
    raw.send(DATA, 0, 1, &message);
    assert_eq!(read_exactly(&mut up, message.len()), message);
    up.write_all(b"\x81\x05hello").unwrap();
    let data = raw.until("the upstream's bytes", |f| {
        f.kind == DATA && f.stream == 1 && !f.payload.is_empty()
    });
    assert_eq!(data.payload, b"\x81\x05hello");
    // END_STREAM is the upstream's FIN, and its FIN the stream's END_STREAM.
    raw.send(DATA, END_STREAM, 1, &[]);
    assert_eq!(
        up.read(&mut [0u8; 16]).unwrap(),
        0,
        "the FIN reached the upstream"
    );
    up.shutdown(Shutdown::Write).unwrap();
    raw.until("END_STREAM", |f| {
        f.kind == DATA && f.stream == 1 && f.flags & END_STREAM != 0
    });
    // The next stream is another upstream connection, with a key of its own.
    raw.open(3, "/room");
    let (_up, second) = upstream.accept();
    assert_ne!(header(&second, "sec-websocket-key"), Some(key.as_str()));
    server.wait_for_metric("wsedge_upgrades_total", |n| n == 1.0);
}

/// RST_STREAM resets the stream's upstream connection; an upstream's reset is the
/// stream's RST_STREAM (CANCEL); the connection and its other streams go on.
fn resets_cross_the_bridge_both_ways(io: Io) {
    let upstream = Scripted::start();
    let server = edge(io, &[&upstream.addr()], &[]);
    let mut raw = Raw::connect(&server, &[]);
    raw.open(1, "/");
    let (mut first, request) = upstream.accept();
    first.write_all(&switching(&request, "")).unwrap();
    raw.until("the first answer", |f| f.kind == HEADERS && f.stream == 1);
    raw.send(RST_STREAM, 0, 1, &CANCEL.to_be_bytes());
    let read = first.read(&mut [0u8; 16]);
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset),
        "the stream's reset is the upstream's"
    );

    raw.open(3, "/");
    let (second, request) = upstream.accept();
    (&second).write_all(&switching(&request, "")).unwrap();
    raw.until("the second answer", |f| f.kind == HEADERS && f.stream == 3);
    socket2::SockRef::from(&second)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(second);
    let reset = raw.until("the RST_STREAM", |f| f.kind == RST_STREAM && f.stream == 3);
    assert_eq!(reset.code(), CANCEL);

    raw.open(5, "/");
    let (third, request) = upstream.accept();
    (&third).write_all(&switching(&request, "")).unwrap();
    let answer = raw.until("the third answer", |f| f.kind == HEADERS && f.stream == 5);
    assert_eq!(raw.status(&answer), 200);
    server.wait_for_metric("wsedge_upstream_connections", |n| n == 1.0);
}

/// What the upstream says when it does not upgrade, or cannot be reached, is what an
/// HTTP/1.1 client would get: its refusal passed on, 502, 504.
fn upstream_refusals_and_failures_get_their_statuses(io: Io) {
    let upstream = Scripted::start();
    let server = edge(
        io,
        &[&upstream.addr()],
        &["--upstream-response-timeout-ms", "300"],
    );
    let mut raw = Raw::connect(&server, &[]);
    raw.open(1, "/private");
    let (mut up, _) = upstream.accept();
    up.write_all(
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 12\r\n\r\nneed a token",
    )
    .unwrap();
    let answer = raw.until("the refusal", |f| f.kind == HEADERS && f.stream == 1);
    let answer = fields(&mut raw, &answer);
    assert!(
        answer.contains(&(":status".into(), "401".into())),
        "{answer:?}"
    );
    assert!(
        answer.contains(&("www-authenticate".into(), "Bearer".into())),
        "{answer:?}"
    );
    let body = raw.until("its body", |f| f.kind == DATA && f.stream == 1);
    assert_eq!(body.payload, b"need a token");

    // A 101 with the wrong accept value: 502.
    raw.open(3, "/");
    let (mut up, _) = upstream.accept();
    up.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    )
    .unwrap();
    let answer = raw.until("the 502", |f| f.kind == HEADERS && f.stream == 3);
    assert_eq!(raw.status(&answer), 502);

    // Closed without an answer: 502.
    raw.open(5, "/");
    drop(upstream.accept());
    let answer = raw.until("the next 502", |f| f.kind == HEADERS && f.stream == 5);
    assert_eq!(raw.status(&answer), 502);

    // No answer within --upstream-response-timeout-ms: 504.
    raw.open(7, "/");
    let (_silent, _) = upstream.accept();
    let answer = raw.until("the 504", |f| f.kind == HEADERS && f.stream == 7);
    assert_eq!(raw.status(&answer), 504);
}

/// An upstream that refuses the connection is passed over for the next; with none left
/// the stream gets 502.
fn a_refused_upstream_is_passed_over(io: Io) {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let upstream = Scripted::start();
    let server = edge(io, &[&dead.to_string(), &upstream.addr()], &[]);
    let mut raw = Raw::connect(&server, &[]);
    for id in [1, 3] {
        raw.open(id, "/");
        let (mut up, request) = upstream.accept();
        up.write_all(&switching(&request, "")).unwrap();
        let answer = raw.until("the answer", |f| f.kind == HEADERS && f.stream == id);
        assert_eq!(raw.status(&answer), 200);
    }
    drop(server);
    let server = edge(io, &[&dead.to_string()], &[]);
    let mut raw = Raw::connect(&server, &[]);
    raw.open(1, "/");
    let answer = raw.until("the 502", |f| f.kind == HEADERS && f.stream == 1);
    assert_eq!(raw.status(&answer), 502);
}

/// A stream waits at the edge while its upstream has its most upgrades pending
/// (`--upstream-max-pending`), goes on once one is answered, and gets 503 with
/// `Retry-After` when its wait (`--upstream-queue-ms`) runs out.
fn a_stream_waits_for_an_upstream_with_room(io: Io) {
    let upstream = Scripted::start();
    let extra = [
        "--threads",
        "1",
        "--upstream-max-pending",
        "1",
        "--upstream-queue-ms",
        "2000",
    ];
    let server = edge(io, &[&upstream.addr()], &extra);
    let mut raw = Raw::connect(&server, &[]);
    raw.open(1, "/first");
    let (mut first, request) = upstream.accept();
    raw.open(3, "/second");
    server.wait_for_metric("wsedge_upstream_queued_total", |n| n == 1.0);
    first.write_all(&switching(&request, "")).unwrap();
    let (mut second, request) = upstream.accept();
    assert!(request.starts_with("GET /second "), "{request}");
    second.write_all(&switching(&request, "")).unwrap();
    for id in [1, 3] {
        let answer = raw.until("the answers", |f| f.kind == HEADERS && f.stream == id);
        assert_eq!(raw.status(&answer), 200);
    }
    // Nothing answers the next one, and the one after it waits in vain.
    raw.open(5, "/third");
    let (_silent, _) = upstream.accept();
    raw.open(7, "/fourth");
    let refused = raw.until("the 503", |f| f.kind == HEADERS && f.stream == 7);
    let refused = fields(&mut raw, &refused);
    assert!(
        refused.contains(&(":status".into(), "503".into())),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|(n, _)| n == "retry-after"),
        "{refused:?}"
    );
}

/// Many streams on a few connections through the proxy to wsedge's echo: every one
/// upgraded and echoed, every upstream connection closed once its stream ends.
fn many_streams_reach_wsedge_echo_and_end(io: Io) {
    let app = Server::start(io, &["--after", "echo", "--metrics", "127.0.0.1:0"]);
    let server = edge(io, &[&app.addr.to_string()], &[]);
    let mut clients: Vec<Raw> = (0..4).map(|_| Raw::connect(&server, &[])).collect();
    for raw in &mut clients {
        for n in 0..25u32 {
            raw.open(1 + 2 * n, "/");
        }
    }
    for raw in &mut clients {
        let mut open = 0;
        while open < 25 {
            let frame = raw.until("the answers", |f| f.kind == HEADERS);
            assert_eq!(raw.status(&frame), 200);
            open += 1;
        }
        for n in 0..25u32 {
            raw.send(DATA, 0, 1 + 2 * n, &ws_frame(2, &n.to_be_bytes()));
        }
        let mut echoed = 0;
        while echoed < 25 {
            let data = raw.until("the echoes", |f| f.kind == DATA && !f.payload.is_empty());
            let n = (data.stream - 1) / 2;
            assert_eq!(data.payload, [&[0x82, 4][..], &n.to_be_bytes()].concat());
            echoed += 1;
        }
        // The close handshake ends each stream on both sides, and its upstream connection.
        for n in 0..25u32 {
            raw.send(DATA, 0, 1 + 2 * n, &ws_frame(8, &1000u16.to_be_bytes()));
        }
        let mut ended = 0;
        while ended < 25 {
            let end = raw.until("the ends", |f| f.kind == DATA && f.flags & END_STREAM != 0);
            raw.send(DATA, END_STREAM, end.stream, &[]);
            ended += 1;
        }
    }
    server.wait_for_metric("wsedge_upgrades_total", |n| n == 100.0);
    app.wait_for_metric("wsedge_upgrades_total", |n| n == 100.0);
    server.wait_for_metric("wsedge_upstream_connections", |n| n == 0.0);
    server.wait_for_metric("wsedge_h2_streams_total", |n| n == 100.0);
}

/// In a drain a relayed stream gets its END_STREAM, and its upstream its FIN, at a time of
/// the drain window, with the connection's GOAWAY; an idle relay ends at
/// `--idle-timeout-ms` the same way.
fn a_drain_and_the_idle_timeout_end_relayed_streams(io: Io) {
    for (extra, signal) in [
        (["--drain-secs", "1"], true),
        (["--idle-timeout-ms", "300"], false),
    ] {
        let upstream = Scripted::start();
        let server = edge(io, &[&upstream.addr()], &extra);
        let mut raw = Raw::connect(&server, &[]);
        raw.open(1, "/");
        let (mut up, request) = upstream.accept();
        up.write_all(&switching(&request, "")).unwrap();
        raw.until("the answer", |f| f.kind == HEADERS && f.stream == 1);
        if signal {
            server.signal(libc::SIGTERM);
        }
        let (mut goaway, mut ended) = (!signal, false);
        while !goaway || !ended {
            let frame = raw.until("GOAWAY and END_STREAM", |f| {
                f.kind == GOAWAY || (f.stream == 1 && f.flags & END_STREAM != 0)
            });
            goaway |= frame.kind == GOAWAY;
            ended |= frame.stream == 1;
        }
        assert_eq!(
            up.read(&mut [0u8; 16]).unwrap(),
            0,
            "{extra:?}: the upstream's FIN"
        );
    }
}

/// Behind a balancer (`--accept-proxy-protocol`), a stream's upstream is told the client
/// the PROXY header named, even when the header, the preface and the stream come in one
/// read.
fn the_proxy_headers_client_reaches_the_upstream(io: Io) {
    let upstream = Scripted::start();
    let trust = [
        "--accept-proxy-protocol",
        "--proxy-protocol-from",
        "127.0.0.0/8",
    ];
    let server = edge(io, &[&upstream.addr()], &trust);
    let mut socket = TcpStream::connect(server.addr).unwrap();
    let mut first = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n".to_vec();
    first.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    first.extend_from_slice(&Raw::frame(SETTINGS, 0, 0, &[]));
    first.extend_from_slice(&Raw::frame(
        HEADERS,
        END_HEADERS,
        1,
        &block(&connect_fields("/", &[])),
    ));
    socket.write_all(&first).unwrap();
    let (_up, request) = upstream.accept();
    assert_eq!(
        header(&request, "x-forwarded-for"),
        Some("203.0.113.7"),
        "{request}"
    );
}

/// HAProxy in front speaking HTTP/2 to the edge (`proto h2 ws h2`), the edge bridging each
/// stream to Python `websockets`: three tungstenite clients echo through both.
fn haproxy_in_front_of_the_proxy(io: Io) {
    let Some(upstream) = PythonUpstream::start() else {
        return;
    };
    let app = upstream.addr.to_string();
    let server = edge(io, &[&app], &[]);
    common::h2::through_haproxy_ws_h2(&server, "/", &format!("h2-proxy-haproxy-{io:?}"));
    server.wait_for_metric("wsedge_upgrades_total", |n| n == 3.0);
}

/// Node's `http2` client through the proxy to Python `websockets`, over h2c and over TLS
/// with ALPN h2: fresh keys and X-Forwarded-For upstream, a message larger than the
/// windows both ways, a refusal passed on with its body, the upstream's Close, the close
/// handshake.
fn node_http2_client_through_the_proxy(io: Io) {
    let Some(upstream) = PythonUpstream::start() else {
        return;
    };
    let dir = common::scratch(&format!("h2-proxy-node-{io:?}"));
    let cert = common::cert(&dir, "server", &["127.0.0.1"]);
    let app = upstream.addr.to_string();
    let args = ["--h2", "--h2c", "--after", "proxy", "--upstream", &app];
    let server = Server::start_tls(io, &cert, &args);
    common::h2::node_says_over_both(
        &server,
        &cert,
        "h2_proxy_client.js",
        &[
            "settings ok",
            "upstream request ok: fresh keys, X-Forwarded-For",
            "echo ok: 307200 bytes and a text",
            "refusal ok: 401 need a token",
            "upstream close ok: 4001",
            "close ok: 1000",
        ],
    );
}

on_both_backends!(
    a_stream_is_bridged_to_an_http1_upgrade,
    resets_cross_the_bridge_both_ways,
    upstream_refusals_and_failures_get_their_statuses,
    a_refused_upstream_is_passed_over,
    a_stream_waits_for_an_upstream_with_room,
    many_streams_reach_wsedge_echo_and_end,
    a_drain_and_the_idle_timeout_end_relayed_streams,
    node_http2_client_through_the_proxy,
    haproxy_in_front_of_the_proxy,
    the_proxy_headers_client_reaches_the_upstream,
);
