//! `--after proxy`: wsedge in front of an app server it did not write.
//!
//! The app server is Python `websockets` (tests/upstreams/python_upstream.py), installed by
//! `.ci/run` (`WSEDGE_REQUIRE_THIRD_PARTY=1` makes its absence a failure); the clients are
//! tungstenite and raw sockets. Where a test needs an upstream that misbehaves on purpose
//! (silent, wrong accept token, PROXY header reader, half-closer), it is a raw Rust one.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;

use common::{client_frame, exchange, read_to_close, upgrade_request, Io, Server};
use common::{pattern, raw_upstream, read_request_head, switching_protocols, tungstenite_upstream};
use common::{PythonUpstream, DEADLINE, KEY};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

fn proxy(io: Io, upstreams: &[SocketAddr], extra: &[&str]) -> Server {
    let upstreams: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
    let mut args = vec!["--after", "proxy"];
    for upstream in &upstreams {
        args.extend(["--upstream", upstream.as_str()]);
    }
    args.extend(extra);
    Server::start(io, &args)
}

fn tungstenite_client(
    server: &Server,
    path: &str,
    protocols: Option<&str>,
) -> (
    tungstenite::WebSocket<TcpStream>,
    tungstenite::handshake::client::Response,
) {
    let mut request = server.url(path).into_client_request().unwrap();
    if let Some(protocols) = protocols {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    }
    let stream = server.connect();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    tungstenite::client::client(request, stream).expect("upgrade through the proxy")
}

/// Reads one unmasked server frame's payload (after `rest`, bytes already read).
fn read_server_message(stream: &mut TcpStream, mut rest: Vec<u8>) -> (u8, Vec<u8>) {
    let mut fill = |rest: &mut Vec<u8>, n: usize| {
        while rest.len() < n {
            let mut chunk = [0u8; 4096];
            let got = stream.read(&mut chunk).expect("read frame");
            assert!(got > 0, "closed mid-frame");
            rest.extend_from_slice(&chunk[..got]);
        }
    };
    fill(&mut rest, 2);
    let (len, at) = match rest[1] & 0x7F {
        126 => {
            fill(&mut rest, 4);
            (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4)
        }
        127 => {
            fill(&mut rest, 10);
            (
                u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    fill(&mut rest, at + len);
    (rest[0] & 0x0F, rest[at..at + len].to_vec())
}

fn echoes_text_and_binary_from_1_byte_to_1_mib_and_answers_pings(io: Io) {
    let Some(upstream) = PythonUpstream::start() else {
        return;
    };
    let server = proxy(io, &[upstream.addr], &[]);
    let (mut socket, response) = tungstenite_client(&server, "/echo", None);
    assert_eq!(response.status(), 101);
    for size in [1, 125, 126, 65_535, 65_536, 1 << 20] {
        let text: String = "é".repeat(size / 2) + &"a".repeat(size % 2);
        socket.send(Message::text(text.clone())).unwrap();
        assert_eq!(
            socket.read().unwrap(),
            Message::text(text),
            "text of {size}"
        );
        let blob: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        socket.send(Message::binary(blob.clone())).unwrap();
        assert_eq!(
            socket.read().unwrap(),
            Message::binary(blob),
            "binary of {size}"
        );
    }
    socket.send(Message::Ping(b"beat".to_vec().into())).unwrap();
    assert_eq!(
        socket.read().unwrap(),
        Message::Pong(b"beat".to_vec().into())
    );
    common::close_cleanly(&mut socket);
}

fn the_upstreams_subprotocol_choice_is_passed_through(io: Io) {
    let Some(upstream) = PythonUpstream::start() else {
        return;
    };
    let server = proxy(io, &[upstream.addr], &[]);
    let (_socket, response) = tungstenite_client(&server, "/echo", Some("other, chat"));
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "chat");
    // tungstenite refuses a 101 that picks none of its offers, so this one is raw.
    let request = upgrade_request("/echo", &["Sec-WebSocket-Protocol: other"]);
    let (head, _) = exchange(&server, &request);
    assert_eq!(head.status, 101);
    assert_eq!(head.header("Sec-WebSocket-Protocol"), None);
}

fn the_upstreams_close_code_is_passed_through(io: Io) {
    let Some(upstream) = PythonUpstream::start() else {
        return;
    };
    let server = proxy(io, &[upstream.addr], &[]);
    let (mut socket, _) = tungstenite_client(&server, "/close/4001", None);
    match socket.read() {
        Ok(Message::Close(Some(frame))) => {
            assert_eq!(frame.code, CloseCode::from(4001));
            assert_eq!(frame.reason, "bye");
        }
        other => panic!("expected close 4001, got {other:?}"),
    }
}

fn the_upstreams_401_is_passed_through_as_it_is(io: Io) {
    let Some(upstream) = PythonUpstream::start() else {
        return;
    };
    let server = proxy(io, &[upstream.addr], &[]);
    let (head, mut stream) = exchange(&server, &upgrade_request("/private", &[]));
    assert_eq!(head.status, 401);
    assert!(head
        .header("Server")
        .is_some_and(|s| s.contains("websockets")));
    let body = read_to_close(&mut stream, head.rest);
    assert_eq!(body, b"need a token\n");
}

fn the_upstream_sees_forwarded_for_and_clean_hop_by_hop_headers(io: Io) {
    let Some(upstream) = PythonUpstream::start() else {
        return;
    };
    let server = proxy(io, &[upstream.addr], &[]);
    let request = upgrade_request("/headers", &[]);
    // The same request with the hop-by-hop headers spelled as loosely as RFC 9110 allows.
    let request = String::from_utf8(request)
        .unwrap()
        .replace("Upgrade: websocket", "Upgrade: WebSocket")
        .replace(
            "Connection: Upgrade",
            "Connection: keep-alive, Upgrade, X-Hop",
        )
        .replace(
            "\r\n\r\n",
            "\r\nKeep-Alive: timeout=5\r\nX-Hop: secret\r\nProxy-Authorization: Basic eA==\r\n\
             X-Real-IP: 203.0.113.9\r\nX-Forwarded-For: 10.0.0.9\r\nX-App: kept\r\n\
             Forwarded: for=10.0.0.8\r\nX-Forwarded-Host: evil.example\r\n\
             X_Real_IP: 10.0.0.7\r\nX-Forwarded-Port: 1\r\n\r\n",
        );
    let (head, mut stream) = exchange(&server, request.as_bytes());
    assert_eq!(head.status, 101);
    let (opcode, payload) = read_server_message(&mut stream, head.rest);
    assert_eq!(opcode, 1);
    let seen: Vec<(String, String)> = serde_json::from_slice(&payload).unwrap();
    let values = |name: &str| -> Vec<&str> {
        seen.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("Upgrade"), ["websocket"], "{seen:?}");
    assert_eq!(values("Connection"), ["Upgrade"], "{seen:?}");
    for hop in ["Keep-Alive", "X-Hop", "Proxy-Authorization"] {
        assert!(values(hop).is_empty(), "{hop} was forwarded: {seen:?}");
    }
    // The edge owns the forwarding headers: the client's are dropped in every spelling.
    for forged in [
        "Forwarded",
        "X-Forwarded-Host",
        "X_Real_IP",
        "X-Forwarded-Port",
    ] {
        assert!(
            values(forged).is_empty(),
            "{forged} was forwarded: {seen:?}"
        );
    }
    assert_eq!(values("X-Forwarded-For"), ["127.0.0.1"]);
    assert_eq!(values("X-Real-IP"), ["127.0.0.1"]);
    assert_eq!(values("X-Forwarded-Proto"), ["http"]);
    assert_eq!(values("X-App"), ["kept"]);
    assert_eq!(values("Sec-WebSocket-Key"), [KEY]);
}

fn frames_sent_with_the_request_reach_the_upstream(io: Io) {
    let Some(upstream) = PythonUpstream::start() else {
        return;
    };
    let server = proxy(io, &[upstream.addr], &[]);
    let mut request = upgrade_request("/echo", &[]);
    request.extend(client_frame(true, 1, b"early bird"));
    let (head, mut stream) = exchange(&server, &request);
    assert_eq!(head.status, 101);
    assert_eq!(
        read_server_message(&mut stream, head.rest),
        (1, b"early bird".to_vec())
    );
}

/// What an upstream that refuses with `refusal` and keeps its connection open reads after
/// the forwarded request, when the client sent a second request right behind its upgrade.
fn bytes_after_the_request_seen_by_a_refusing_upstream(io: Io, refusal: &'static [u8]) -> Vec<u8> {
    let (seen_tx, seen_rx) = mpsc::channel();
    let upstream = raw_upstream(1, move |mut stream, _| {
        stream.write_all(refusal).unwrap();
        // Keep-alive: whatever else comes on this connection is read as the next request.
        let mut after = Vec::new();
        let _ = stream.read_to_end(&mut after);
        let _ = seen_tx.send(after);
    });
    let server = proxy(io, &[upstream], &[]);
    let mut request = upgrade_request("/", &[]);
    request.extend_from_slice(
        b"GET /admin HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
    );
    let (head, mut stream) = exchange(&server, &request);
    assert_ne!(head.status, 101);
    read_to_close(&mut stream, head.rest);
    seen_rx
        .recv_timeout(DEADLINE)
        .expect("wsedge closes the refusing upstream's connection")
}

fn a_request_behind_a_refused_upgrade_never_reaches_the_upstream(io: Io) {
    let seen = bytes_after_the_request_seen_by_a_refusing_upstream(
        io,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot here\n",
    );
    assert!(
        seen.is_empty(),
        "smuggled: {}",
        String::from_utf8_lossy(&seen)
    );
}

fn a_request_behind_an_upgrade_refused_in_chunks_never_reaches_the_upstream(io: Io) {
    let seen = bytes_after_the_request_seen_by_a_refusing_upstream(
        io,
        b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nno!\n\r\n0\r\n\r\n",
    );
    assert!(
        seen.is_empty(),
        "smuggled: {}",
        String::from_utf8_lossy(&seen)
    );
}

fn a_relayed_client_that_stops_reading_is_given_up_at_the_send_timeout(io: Io) {
    let (ended_tx, ended_rx) = mpsc::channel();
    let upstream = raw_upstream(1, move |mut stream, head| {
        stream.write_all(&switching_protocols(&head)).unwrap();
        // A server push the client never reads: the write fails once the edge gives up.
        let chunk = client_frame(true, 2, &[1u8; 60_000]);
        let mut written = 0usize;
        while stream.write_all(&chunk).is_ok() && written < 1 << 30 {
            written += chunk.len();
        }
        let _ = ended_tx.send(written);
    });
    let server = proxy(
        io,
        &[upstream],
        &["--send-timeout-ms", "500", "--metrics", "127.0.0.1:0"],
    );
    let (head, stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    server.wait_for_metric("wsedge_send_timeouts_total", |n| n >= 1.0);
    let written = ended_rx
        .recv_timeout(DEADLINE)
        .expect("the edge closed the upstream side too");
    assert!(written < 1 << 30, "the upstream wrote without end");
    drop(stream);
}

fn the_upstream_gets_a_proxy_protocol_v2_header(io: Io) {
    let (header_tx, header_rx) = mpsc::channel();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut header = [0u8; 28];
        stream.read_exact(&mut header).unwrap();
        let head = read_request_head(&mut stream);
        stream.write_all(&switching_protocols(&head)).unwrap();
        let _ = header_tx.send((header, head));
        let _ = read_to_close(&mut stream, Vec::new());
    });
    let server = proxy(io, &[upstream], &["--upstream-proxy-protocol", "v2"]);
    let (head, stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    let client = stream.local_addr().unwrap();
    let (header, request) = header_rx.recv_timeout(DEADLINE).unwrap();
    assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(
        &header[12..16],
        &[0x21, 0x11, 0, 12],
        "v2 PROXY, TCP over IPv4"
    );
    assert_eq!(&header[16..20], &[127, 0, 0, 1]);
    assert_eq!(&header[20..24], &[127, 0, 0, 1]);
    assert_eq!(u16::from_be_bytes([header[24], header[25]]), client.port());
    assert_eq!(
        u16::from_be_bytes([header[26], header[27]]),
        server.addr.port()
    );
    let request = String::from_utf8_lossy(&request);
    assert!(request.starts_with("GET / HTTP/1.1\r\n"), "{request}");
    assert!(!request.contains("X-Forwarded-For"), "{request}");
}

fn an_upstream_that_is_down_gives_502(io: Io) {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = proxy(io, &[dead], &[]);
    let (head, _) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 502);
}

fn an_upstream_that_never_answers_gives_504(io: Io) {
    let (hold_tx, hold_rx) = mpsc::channel();
    let silent = raw_upstream(1, move |stream, _| {
        // Keep the connection open and say nothing.
        let _ = hold_tx.send(stream);
    });
    let server = proxy(io, &[silent], &["--upstream-response-timeout-ms", "300"]);
    let (head, _) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 504);
    drop(hold_rx);
}

fn upstream_connections_take_turns_among_the_upstream_sources(io: Io) {
    // Each source address adds a full range of local ports toward each upstream.
    let (peer_tx, peer_rx) = mpsc::channel();
    let upstream = raw_upstream(4, move |stream, _| {
        let _ = peer_tx.send(stream.peer_addr().unwrap().ip());
    });
    let sources = [
        "--upstream-source",
        "127.0.0.2",
        "--upstream-source",
        "127.0.0.3",
        "--threads",
        "1",
    ];
    let server = proxy(io, &[upstream], &sources);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = server.connect();
        client.write_all(&upgrade_request("/", &[])).unwrap();
        clients.push(client);
    }
    let mut seen: Vec<String> = (0..4)
        .map(|_| {
            peer_rx
                .recv_timeout(DEADLINE)
                .expect("a connection")
                .to_string()
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"]);
}

fn an_abandoned_upstream_connection_is_reset_and_holds_no_port(io: Io) {
    // The upstream reads the forwarded request and never answers; its client gives up. The
    // edge's close of that connection must be a reset: a FIN would leave the edge's end in
    // TIME_WAIT, one local port toward the upstream held for a minute per abandoned upgrade.
    let (seen_tx, seen_rx) = mpsc::channel();
    let silent = raw_upstream(1, move |mut stream, _| {
        let mut byte = [0u8; 1];
        let _ = seen_tx.send(stream.read(&mut byte).map_err(|e| e.kind()));
    });
    let server = proxy(io, &[silent], &["--upstream-response-timeout-ms", "300"]);
    let (head, _) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 504);
    let ended = seen_rx
        .recv_timeout(DEADLINE)
        .expect("the upstream saw its end");
    assert_eq!(
        ended,
        Err(std::io::ErrorKind::ConnectionReset),
        "closed, not reset"
    );
    let port = format!("dport = :{}", silent.port());
    let ss = std::process::Command::new("ss")
        .args(["-tanH", "state", "time-wait", &port])
        .output()
        .expect("ss (iproute2)");
    let lingering = String::from_utf8_lossy(&ss.stdout);
    assert!(
        lingering.trim().is_empty(),
        "TIME_WAIT toward the upstream: {lingering}"
    );
}

fn an_upstream_that_cannot_be_reached_in_time_gives_504(io: Io) {
    // A listener whose accept queue is full: the kernel drops further SYNs, so a connect to
    // it hangs in SYN_SENT, as to a host that went away.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(1).unwrap();
    let full = listener.local_addr().unwrap().as_socket().unwrap();
    let _queued: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(full).unwrap()).collect();
    // Only the connect timeout can answer within the client's deadline.
    let server = proxy(
        io,
        &[full],
        &[
            "--upstream-connect-timeout-ms",
            "300",
            "--upstream-response-timeout-ms",
            "600000",
        ],
    );
    let (head, _) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 504);
}

fn an_upstream_101_with_the_wrong_accept_gives_502(io: Io) {
    let liar = raw_upstream(1, |mut stream, _| {
        let _ = stream.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        );
        let _ = read_to_close(&mut stream, Vec::new());
    });
    let server = proxy(io, &[liar], &[]);
    // A key other than the RFC's sample, so that the canned accept is wrong for it.
    let request = String::from_utf8(upgrade_request("/", &[]))
        .unwrap()
        .replace(KEY, "AQIDBAUGBwgJCgsMDQ4PEA==");
    let (head, _) = exchange(&server, request.as_bytes());
    assert_eq!(head.status, 502);
}

fn a_refusal_whose_length_does_not_fit_gives_502(io: Io) {
    // The head plus this Content-Length overflows 64 bits (it wrapped in release builds).
    let upstream = raw_upstream(1, |mut stream, _| {
        let _ = stream
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 18446744073709551615\r\n\r\nno");
        let _ = read_to_close(&mut stream, Vec::new());
    });
    let server = proxy(io, &[upstream], &[]);
    let (head, _) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 502);
}

fn a_refusal_announcing_a_huge_body_gives_502(io: Io) {
    let upstream = raw_upstream(1, |mut stream, _| {
        let _ = stream.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 104857600\r\n\r\n");
        let chunk = vec![b'x'; 1 << 20];
        stream
            .set_write_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for _ in 0..100 {
            if stream.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let server = proxy(io, &[upstream], &[]);
    let (head, _) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 502);
}

fn a_refusal_without_a_length_is_passed_on_up_to_the_bound(io: Io) {
    // A client that does not read while the upstream streams a refusal with no length: wsedge
    // passes on at most MAX_PASSED_ANSWER_BYTES and closes, instead of buffering it all.
    let (written_tx, written_rx) = mpsc::channel();
    let upstream = raw_upstream(1, move |mut stream, _| {
        let _ = stream.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n\r\n");
        stream
            .set_write_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let chunk = vec![b'x'; 1 << 20];
        let mut written = 0usize;
        while written < 256 << 20 {
            match stream.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        let _ = written_tx.send(written);
    });
    let server = proxy(io, &[upstream], &[]);
    let mut stream = server.connect();
    stream.write_all(&upgrade_request("/", &[])).unwrap();
    let written = written_rx
        .recv_timeout(DEADLINE)
        .expect("the upstream kept writing into wsedge");
    assert!(
        written < 64 << 20,
        "{written} bytes went towards a client that reads nothing"
    );
    let answer = read_to_close(&mut stream, Vec::new());
    assert!(answer.starts_with(b"HTTP/1.1 403 Forbidden\r\n"));
    assert_eq!(
        answer.len() as u64,
        wsedge::proxy::MAX_PASSED_ANSWER_BYTES,
        "the refusal is cut at the bound"
    );
}

/// Found by the `upstream_answer` fuzz target: a 101 in HTTP/1.0 with a correct token was
/// relayed. HTTP/1.0 has no upgrade: 502.
fn an_upstream_101_in_http_1_0_gives_502(io: Io) {
    let old = raw_upstream(1, |mut stream, head| {
        let answer = String::from_utf8(switching_protocols(&head))
            .unwrap()
            .replace("HTTP/1.1", "HTTP/1.0");
        let _ = stream.write_all(answer.as_bytes());
        let _ = read_to_close(&mut stream, Vec::new());
    });
    let server = proxy(io, &[old], &[]);
    let (head, _) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 502);
}

fn an_upstream_that_refuses_is_skipped(io: Io) {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let alive = raw_upstream(4, |mut stream, head| {
        let _ = stream.write_all(&switching_protocols(&head));
        let _ = read_to_close(&mut stream, Vec::new());
    });
    let server = proxy(io, &[dead, alive], &["--threads", "1"]);
    for _ in 0..4 {
        let (head, _) = exchange(&server, &upgrade_request("/", &[]));
        assert_eq!(head.status, 101, "{}", server.log());
    }
}

fn a_client_reset_closes_the_upstream_side(io: Io) {
    let (closed_tx, closed_rx) = mpsc::channel();
    let upstream = raw_upstream(1, move |mut stream, head| {
        stream.write_all(&switching_protocols(&head)).unwrap();
        let mut buf = [0u8; 64];
        // Returns on the FIN or reset wsedge passes on; a deadline error fails the test.
        let outcome = stream.read(&mut buf).map(|n| n == 0);
        let _ = closed_tx.send(outcome.map_err(|e| e.kind()));
    });
    let server = proxy(io, &[upstream], &[]);
    let (head, stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    socket2::SockRef::from(&stream)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(stream);
    let outcome = closed_rx
        .recv_timeout(DEADLINE)
        .expect("upstream side closed");
    assert!(
        matches!(outcome, Ok(true) | Err(std::io::ErrorKind::ConnectionReset)),
        "{outcome:?}"
    );
}

fn half_closes_are_passed_both_ways(io: Io) {
    let (got_tx, got_rx) = mpsc::channel();
    let upstream = raw_upstream(1, move |mut stream, head| {
        stream.write_all(&switching_protocols(&head)).unwrap();
        stream.write_all(b"from upstream").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let _ = got_tx.send(read_to_close(&mut stream, Vec::new()));
    });
    let server = proxy(io, &[upstream], &[]);
    let (head, mut stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    // The upstream's FIN reaches us after its bytes, and our side stays writable.
    assert_eq!(read_to_close(&mut stream, head.rest), b"from upstream");
    stream.write_all(b"from client").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let got = got_rx.recv_timeout(DEADLINE).expect("upstream saw our FIN");
    assert_eq!(got, b"from client");
}

fn bulk_bytes_arrive_whole_and_in_order_both_ways_before_the_fins(io: Io) {
    const LEN: usize = 4 << 20;
    let (got_tx, got_rx) = mpsc::channel();
    let upstream = raw_upstream(1, move |mut stream, head| {
        stream.write_all(&switching_protocols(&head)).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let sending = thread::spawn(move || {
            writer.write_all(&pattern(LEN, 1)).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let _ = got_tx.send(read_to_close(&mut stream, Vec::new()));
        sending.join().unwrap();
    });
    let server = proxy(io, &[upstream], &[]);
    let (head, mut stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    let mut writer = stream.try_clone().unwrap();
    let sending = thread::spawn(move || {
        writer.write_all(&pattern(LEN, 2)).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let received = read_to_close(&mut stream, head.rest);
    sending.join().unwrap();
    assert!(
        received == pattern(LEN, 1),
        "upstream to client: {} bytes",
        received.len()
    );
    let got = got_rx.recv_timeout(DEADLINE).expect("upstream saw our FIN");
    assert!(
        got == pattern(LEN, 2),
        "client to upstream: {} bytes",
        got.len()
    );
}

fn a_client_that_does_not_read_holds_back_the_upstream(io: Io) {
    const OFFERED: usize = 256 << 20;
    let (written_tx, written_rx) = mpsc::channel();
    let upstream = raw_upstream(1, move |mut stream, head| {
        stream.write_all(&switching_protocols(&head)).unwrap();
        // Blocks once every buffer on the way is full; two seconds without progress ends it.
        stream
            .set_write_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let chunk = vec![7u8; 1 << 20];
        let mut written = 0;
        while written < OFFERED {
            match stream.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        let _ = written_tx.send(written);
    });
    let server = proxy(io, &[upstream], &[]);
    let (head, stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    let written = written_rx
        .recv_timeout(DEADLINE)
        .expect("the upstream's writes stalled");
    // Socket buffers on both hops (a few MiB each at most) plus two 64 KiB pipes: far from
    // what was offered, which wsedge would otherwise have had to hold.
    assert!(
        written < 64 << 20,
        "{written} bytes went into a client that reads nothing"
    );
    drop(stream);
}

fn a_tungstenite_upstream_echoes_through_the_proxy(io: Io) {
    let server = proxy(io, &[tungstenite_upstream()], &[]);
    let (mut socket, response) = tungstenite_client(&server, "/", None);
    assert_eq!(response.status(), 101);
    for size in [0, 1, 200_000] {
        let blob = pattern(size, 3);
        socket.send(Message::binary(blob.clone())).unwrap();
        assert_eq!(socket.read().unwrap(), Message::binary(blob));
    }
    socket
        .close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        }))
        .unwrap();
    match socket.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected the upstream's close echo, got {other:?}"),
    }
}

fn a_silent_relay_is_closed_at_the_idle_timeout(io: Io) {
    let (closed_tx, closed_rx) = mpsc::channel();
    let upstream = raw_upstream(1, move |mut stream, head| {
        stream.write_all(&switching_protocols(&head)).unwrap();
        let _ = closed_tx.send(read_to_close(&mut stream, Vec::new()));
    });
    let server = proxy(io, &[upstream], &["--idle-timeout-ms", "300"]);
    let (head, mut stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    assert!(read_to_close(&mut stream, head.rest).is_empty());
    closed_rx
        .recv_timeout(DEADLINE)
        .expect("the upstream side closed too");
}

fn a_relay_the_edge_closes_ends_with_a_fin_at_the_upstream(io: Io) {
    // Only a connection abandoned before its relay began is reset: a relay closed at the
    // idle timeout (or by a drain) ends cleanly on both sides, as it always did.
    let (ended_tx, ended_rx) = mpsc::channel();
    let upstream = raw_upstream(1, move |mut stream, head| {
        stream.write_all(&switching_protocols(&head)).unwrap();
        let mut buf = [0u8; 1024];
        let ended = loop {
            match stream.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(_) => continue,
                Err(e) => break Err(e.kind()),
            }
        };
        let _ = ended_tx.send(ended);
    });
    let server = proxy(io, &[upstream], &["--idle-timeout-ms", "300"]);
    let (head, mut stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    assert!(read_to_close(&mut stream, head.rest).is_empty());
    let ended = ended_rx
        .recv_timeout(DEADLINE)
        .expect("the upstream side ended");
    assert_eq!(ended, Ok(()), "the relay's upstream was reset, not closed");
}

fn sigterm_closes_relays_and_exits_0(io: Io) {
    let upstream = raw_upstream(1, move |mut stream, head| {
        stream.write_all(&switching_protocols(&head)).unwrap();
        let _ = read_to_close(&mut stream, Vec::new());
    });
    let mut server = proxy(io, &[upstream], &["--drain-secs", "0"]);
    let (head, mut stream) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    server.signal(libc::SIGTERM);
    assert!(read_to_close(&mut stream, head.rest).is_empty());
    assert!(server.wait_exit().success());
}

fn upstream_failures_show_in_metrics(io: Io) {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = proxy(io, &[dead], &["--metrics", "127.0.0.1:0"]);
    for _ in 0..2 {
        let (head, _) = exchange(&server, &upgrade_request("/", &[]));
        assert_eq!(head.status, 502);
    }
    let metrics = server.log();
    let metrics = metrics
        .split("metrics=")
        .nth(1)
        .and_then(|m| m.split([',', ' ']).next())
        .unwrap()
        .to_owned();
    let mut stream = TcpStream::connect(&metrics).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        .unwrap();
    let text = read_to_close(&mut stream, Vec::new());
    let text = String::from_utf8_lossy(&text);
    let value = |series: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        value("wsedge_upstream_connect_failures_total"),
        2.0,
        "{text}"
    );
    assert_eq!(
        value(r#"wsedge_rejections_total{status="502""#),
        2.0,
        "{text}"
    );
    assert!(
        server.log().contains("upstream refused a connection"),
        "{}",
        server.log()
    );
}

fn out_of_descriptors_every_client_gets_101_or_503_and_nothing_spins(io: Io) {
    let upstream = tungstenite_upstream();
    // 64 descriptors, two per relayed client: room for fewer than 30 of the 60.
    let upstream_arg = upstream.to_string();
    let args = [
        "--after",
        "proxy",
        "--upstream",
        &upstream_arg,
        "--threads",
        "1",
    ];
    let server = Server::start_with(io, &args, common::fd_limit(64));
    let request = upgrade_request("/", &[]);
    let mut streams: Vec<TcpStream> = (0..60).map(|_| server.connect()).collect();
    for stream in &mut streams {
        stream.write_all(&request).unwrap();
    }
    server.wait_for_log("resources exhausted");
    let cpu_before = server.cpu_time();
    let wall = std::time::Instant::now();
    thread::sleep(std::time::Duration::from_millis(1000));
    let cpu = server.cpu_time() - cpu_before;
    assert!(
        cpu < wall.elapsed() / 4,
        "burned {cpu:?} while out of descriptors"
    );

    // Every answer is a 101, or a 503 when the edge ran out of descriptors for the upstream
    // connection (never a 502: no upstream failed). Refused clients keep their sockets, so
    // their lingers are cut short for the clients queued behind them.
    let (mut answered, mut waiting) = common::split_answered(streams);
    let mut refused = 0;
    for stream in &mut answered {
        refused += usize::from(expect_101_or_503(stream) == 503);
    }
    assert!(
        refused + waiting.len() > 0,
        "all 60 upgraded under a 64-descriptor limit"
    );
    // Answered clients leave: every queued one must now be answered too.
    drop(answered);
    for stream in &mut waiting {
        expect_101_or_503(stream);
    }
}

/// Reads the answer on `stream`: a 101, or a 503 with its `Retry-After`.
fn expect_101_or_503(stream: &mut TcpStream) -> u16 {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let head = common::read_head(stream);
    match head.status {
        101 => {}
        503 => assert!(head.header("Retry-After").is_some()),
        status => panic!("{status}"),
    }
    head.status
}

fn a_thousand_concurrent_clients_upgrade_and_echo_through_the_proxy(io: Io) {
    // The upstream is a wsedge echo server of the same backend, in its own process.
    let upstream = Server::start(io, &["--after", "echo", "--threads", "1"]);
    let mut server = proxy(io, &[upstream.addr], &["--threads", "2"]);
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let addr = server.addr;
            thread::spawn(move || {
                let mut streams: Vec<TcpStream> = (0..250)
                    .map(|_| {
                        let s = TcpStream::connect(addr).unwrap();
                        s.set_read_timeout(Some(DEADLINE)).unwrap();
                        s
                    })
                    .collect();
                for (i, s) in streams.iter_mut().enumerate() {
                    let mut request = upgrade_request("/", &[]);
                    request.extend(client_frame(true, 2, &[worker as u8, i as u8]));
                    s.write_all(&request).unwrap();
                }
                for (i, s) in streams.iter_mut().enumerate() {
                    let head = common::read_head(s);
                    assert_eq!(head.status, 101);
                    let echo = read_server_message(s, head.rest);
                    assert_eq!(echo, (2, vec![worker as u8, i as u8]));
                }
                streams
            })
        })
        .collect();
    let held: Vec<Vec<TcpStream>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(held.iter().map(Vec::len).sum::<usize>(), 1000);
    drop(held);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    server.wait_for_log("upgraded=1000 ");
}

on_both_backends!(
    a_relayed_client_that_stops_reading_is_given_up_at_the_send_timeout,
    a_request_behind_a_refused_upgrade_never_reaches_the_upstream,
    a_request_behind_an_upgrade_refused_in_chunks_never_reaches_the_upstream,
    a_thousand_concurrent_clients_upgrade_and_echo_through_the_proxy,
    out_of_descriptors_every_client_gets_101_or_503_and_nothing_spins,
    a_tungstenite_upstream_echoes_through_the_proxy,
    a_silent_relay_is_closed_at_the_idle_timeout,
    a_relay_the_edge_closes_ends_with_a_fin_at_the_upstream,
    sigterm_closes_relays_and_exits_0,
    upstream_failures_show_in_metrics,
    a_client_that_does_not_read_holds_back_the_upstream,
    bulk_bytes_arrive_whole_and_in_order_both_ways_before_the_fins,
    echoes_text_and_binary_from_1_byte_to_1_mib_and_answers_pings,
    the_upstreams_subprotocol_choice_is_passed_through,
    the_upstreams_close_code_is_passed_through,
    the_upstreams_401_is_passed_through_as_it_is,
    the_upstream_sees_forwarded_for_and_clean_hop_by_hop_headers,
    frames_sent_with_the_request_reach_the_upstream,
    the_upstream_gets_a_proxy_protocol_v2_header,
    an_upstream_that_is_down_gives_502,
    an_upstream_that_never_answers_gives_504,
    an_upstream_that_cannot_be_reached_in_time_gives_504,
    an_abandoned_upstream_connection_is_reset_and_holds_no_port,
    upstream_connections_take_turns_among_the_upstream_sources,
    an_upstream_101_with_the_wrong_accept_gives_502,
    an_upstream_that_refuses_is_skipped,
    an_upstream_101_in_http_1_0_gives_502,
    a_refusal_whose_length_does_not_fit_gives_502,
    a_refusal_announcing_a_huge_body_gives_502,
    a_refusal_without_a_length_is_passed_on_up_to_the_bound,
    a_client_reset_closes_the_upstream_side,
    half_closes_are_passed_both_ways,
);
