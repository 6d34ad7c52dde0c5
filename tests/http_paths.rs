//! `--http-path` and `--sticky-cookie`: plain HTTP requests forwarded one per connection,
//! framed by the edge, and a client kept on its upstream across requests and the upgrade.
//! Raw upstreams stand in for the app servers (tests/frameworks.rs has the real ones).

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc};

use common::{exchange, read_head, read_to_close, Io, Server, DEADLINE};

/// An upstream that answers each request with its `name` and what it received, then
/// closes (as it must after `Connection: close`); each request is also sent to `seen`.
fn naming_upstream(name: &'static str) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let addr = common::raw_upstream(64, move |mut stream, mut head| {
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
        let mut body = vec![0; length];
        stream.read_exact(&mut body).unwrap();
        head.extend_from_slice(&body);
        let _ = tx.send(head);
        if text.contains("upgrade: websocket") {
            let answer = common::switching_protocols(&text_key_restored(&text));
            let _ = stream.write_all(&answer);
            let _ = stream.flush();
            std::thread::sleep(std::time::Duration::from_millis(200));
            return;
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{name}",
            name.len()
        );
        let _ = stream.write_all(answer.as_bytes());
    });
    (addr, rx)
}

/// `switching_protocols` wants the key header as sent; the test's key is the RFC sample.
fn text_key_restored(_lowercased: &str) -> Vec<u8> {
    format!("Sec-WebSocket-Key: {}\r\n\r\n", common::KEY).into_bytes()
}

/// The edge in front of `upstreams`, forwarding `/socket.io/`, with `extra` flags.
fn edge(io: Io, upstreams: &[SocketAddr], extra: &[&str]) -> Server {
    Server::start(
        io,
        &edge_args(upstreams, extra)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
}

/// [`edge`] with a TLS listener on `cert` besides.
fn edge_tls(io: Io, cert: &common::Cert, upstreams: &[SocketAddr], extra: &[&str]) -> Server {
    let args = edge_args(upstreams, extra);
    Server::start_tls(
        io,
        cert,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

fn edge_args(upstreams: &[SocketAddr], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--after", "proxy", "--http-path", "/socket.io/"]
        .map(String::from)
        .to_vec();
    for upstream in upstreams {
        args.extend(["--upstream".to_owned(), upstream.to_string()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: app\r\n{extra}\r\n").into_bytes()
}

/// The body of an answer read to its close.
fn body(server: &Server, request: &[u8]) -> (common::Head, String) {
    let (head, mut stream) = exchange(server, request);
    let rest = std::mem::take(&mut head.rest.clone());
    let all = read_to_close(&mut stream, rest);
    (head, String::from_utf8_lossy(&all).into_owned())
}

fn forwards_with_the_edges_framing_and_headers(io: Io) {
    let (up, seen) = naming_upstream("a");
    let server = edge(io, &[up], &[]);
    // A poll's POST with a forged address, then a pipelined request the edge never forwards.
    let request = b"POST /socket.io/?EIO=4&transport=polling&sid=s HTTP/1.1\r\nHost: app\r\n\
        X-Forwarded-For: 6.6.6.6\r\nConnection: keep-alive\r\nContent-Length: 6\r\n\r\n\
        4helloGET /socket.io/admin HTTP/1.1\r\nHost: app\r\n\r\n";
    let (head, answer) = body(&server, request);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("connection"), Some("close"));
    assert_eq!(answer, "a");
    let forwarded = String::from_utf8(seen.recv_timeout(DEADLINE).unwrap()).unwrap();
    assert!(forwarded.starts_with("POST /socket.io/?EIO=4&transport=polling&sid=s HTTP/1.1\r\n"));
    assert!(
        forwarded.contains("Connection: close\r\nContent-Length: 6\r\n"),
        "{forwarded}"
    );
    assert!(
        forwarded.contains("X-Forwarded-For: 127.0.0.1\r\n"),
        "{forwarded}"
    );
    assert!(!forwarded.contains("6.6.6.6") && !forwarded.contains("keep-alive"));
    assert!(forwarded.ends_with("\r\n\r\n4hello"), "{forwarded}");
    assert!(
        seen.try_recv().is_err(),
        "the pipelined request was not forwarded"
    );
    // A chunked body (Node's clients send one when they stream a POST) is decoded and
    // forwarded with its length; its trailers and what follows stay behind.
    let chunked = b"POST /socket.io/?sid=s HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n\
        3\r\n4he\r\n3;ext=1\r\nllo\r\n0\r\nX-Trailer: t\r\n\r\nGET /socket.io/admin HTTP/1.1\r\n\r\n";
    assert_eq!(body(&server, chunked).1, "a");
    let forwarded = String::from_utf8(seen.recv_timeout(DEADLINE).unwrap()).unwrap();
    assert!(
        forwarded.contains("Connection: close\r\nContent-Length: 6\r\n"),
        "{forwarded}"
    );
    assert!(
        !forwarded.to_ascii_lowercase().contains("transfer-encoding"),
        "{forwarded}"
    );
    assert!(forwarded.ends_with("\r\n\r\n4hello"), "{forwarded}");
    // Outside the prefix, a request that is not an upgrade is still a 426.
    let (head, _) = exchange(&server, &get("/other", ""));
    assert_eq!(head.status, 426);
}

fn refuses_what_could_be_smuggled_or_is_too_large(io: Io) {
    let forwarded = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&forwarded);
    let up = common::raw_upstream(8, move |_, _| {
        count.fetch_add(1, Relaxed);
    });
    let server = edge(io, &[up], &["--http-max-body", "1000"]);
    let mut too_much =
        b"POST /socket.io/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    too_much.extend_from_slice(b"3e9\r\n");
    too_much.extend_from_slice(&[b'x'; 1001]);
    too_much.extend_from_slice(b"\r\n0\r\n\r\n");
    let cases: [(&[u8], u16); 7] = [
        (b"POST /socket.io/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n", 413),
        (&too_much, 413),
        (b"POST /socket.io/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /socket.io/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 411),
        (b"POST /socket.io/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", 400),
        (b"GET /socket.io/../admin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"TRACE /socket.io/ HTTP/1.1\r\nHost: a\r\n\r\n", 405),
    ];
    for (request, status) in cases {
        let (head, _) = exchange(&server, request);
        assert_eq!(head.status, status, "{}", String::from_utf8_lossy(request));
    }
    assert_eq!(
        forwarded.load(Relaxed),
        0,
        "nothing refused reached the upstream"
    );
}

fn a_silent_upstream_is_a_504_at_the_http_timeout(io: Io) {
    let (hold, held) = mpsc::channel::<TcpStream>();
    let up = common::raw_upstream(1, move |stream, _| {
        let _ = hold.send(stream);
    });
    let server = edge(io, &[up], &["--http-timeout", "1s"]);
    let (head, _) = exchange(&server, &get("/socket.io/", ""));
    assert_eq!(head.status, 504);
    drop(held);
}

/// A long poll: the upstream answers after 25 s, past the handshake and response timeouts
/// (10 s each by default): the HTTP timeout (60 s) is the one that holds.
fn a_long_poll_held_25_seconds_is_answered(io: Io) {
    let up = common::raw_upstream(1, |mut stream, _| {
        std::thread::sleep(std::time::Duration::from_secs(25));
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n6");
    });
    let server = edge(io, &[up], &[]);
    let mut stream = server.connect();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(&get("/socket.io/?EIO=4&transport=polling&sid=s", ""))
        .unwrap();
    let head = read_head(&mut stream);
    assert_eq!(head.status, 200);
    assert_eq!(read_to_close(&mut stream, head.rest), b"6");
}

/// An upstream that answers (a refusal here) and keeps its connection: the client has its
/// whole answer and its connection closed at the answer's end, not at a timeout.
fn an_upstream_that_keeps_its_connection_does_not_hold_the_client(io: Io) {
    // A refusal framed by its length, and an answer framed by chunks: each followed by
    // bytes nobody framed, and the connection kept.
    let answers: [(&[u8], u16, &str); 2] = [
        (
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope",
            404,
            "nope",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            200,
            "2\r\nok\r\n0\r\n\r\n",
        ),
    ];
    for (answer, status, expected) in answers {
        let up = common::raw_upstream(1, move |mut stream, _| {
            let _ = stream.write_all(answer);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra");
            std::thread::sleep(std::time::Duration::from_secs(40));
        });
        let server = edge(io, &[up], &["--http-timeout", "120s"]);
        // `exchange` reads with the tests' deadline (15 s): the close must come well before
        // the upstream lets go (40 s) or the HTTP timeout (120 s).
        let (head, body) = body(&server, &get("/socket.io/", ""));
        assert_eq!(head.status, status);
        assert_eq!(body, expected, "the answer's bytes, none after them");
    }
}

/// The first answer to a client sets the cookie; with it, its requests and its upgrade go
/// to the same upstream; when that one is gone the client is moved, with a new cookie.
fn a_sticky_cookie_keeps_requests_and_the_upgrade_on_one_upstream(io: Io) {
    let (a, _seen_a) = naming_upstream("a");
    let (b, _seen_b) = naming_upstream("b");
    let server = edge(io, &[a, b], &["--sticky-cookie", "srv"]);
    let (head, first) = body(&server, &get("/socket.io/", ""));
    let set = head
        .header("set-cookie")
        .expect("a cookie for a new client")
        .to_owned();
    assert!(set.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{set}");
    assert!(
        !set.contains("127.0.0.1") && !set.contains(&a.port().to_string()),
        "{set}"
    );
    let cookie = format!("Cookie: {}\r\n", set.split(';').next().unwrap());
    for _ in 0..6 {
        let (head, again) = body(&server, &get("/socket.io/", &cookie));
        assert_eq!(again, first, "the same upstream");
        assert_eq!(head.header("set-cookie"), None, "no new cookie");
    }
    // The upgrade carrying it reaches the same upstream; without it, a 101 sets one.
    let upgrade = common::upgrade_request("/socket.io/", &[cookie.trim_end()]);
    let (head, _) = exchange(&server, &upgrade);
    assert_eq!(head.status, 101);
    assert_eq!(head.header("set-cookie"), None);
    let (head, _) = exchange(&server, &common::upgrade_request("/socket.io/", &[]));
    assert_eq!(head.status, 101);
    assert!(head
        .header("set-cookie")
        .is_some_and(|c| c.starts_with("srv=")));
    // A cookie naming no upstream is balanced and corrected.
    let (head, _) = body(
        &server,
        &get("/socket.io/", "Cookie: srv=0123456789abcdef\r\n"),
    );
    assert!(head.header("set-cookie").is_some());
}

fn a_client_whose_upstream_is_gone_is_moved_with_a_new_cookie(io: Io) {
    let (a, _seen) = naming_upstream("a");
    // An address nothing listens on: connections to it are refused.
    let gone = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = edge(io, &[a, gone], &["--sticky-cookie", "srv"]);
    let id = wsedge::proxy::sticky::upstream_id(gone);
    let (head, body) = body(
        &server,
        &get("/socket.io/", &format!("Cookie: srv={id:016x}\r\n")),
    );
    assert_eq!(body, "a");
    let moved = wsedge::proxy::sticky::upstream_id(a);
    let expected = format!("srv={moved:016x}; Path=/");
    assert!(
        head.header("set-cookie")
            .is_some_and(|c| c.starts_with(&expected)),
        "{head:?}"
    );
}

/// Over TLS the cookie is `Secure` (curl as the client).
fn over_tls_the_cookie_is_secure(io: Io) {
    let (a, _seen) = naming_upstream("a");
    let dir = common::scratch(&format!("http-paths-{io:?}"));
    let cert = common::cert(&dir, "server", &["127.0.0.1"]);
    let server = edge_tls(io, &cert, &[a], &["--sticky-cookie", "srv"]);
    let url = format!("https://{}/socket.io/?EIO=4", server.tls_addr());
    let output = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "15", "--cacert"])
        .arg(&cert.cert)
        .arg(&url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("; SameSite=Lax; Secure\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\na"), "{text}");
}

/// `--allowed-origin` and `--auth-token` hold for plain requests as for upgrades.
fn origin_and_token_rules_hold_for_plain_requests(io: Io) {
    let (a, _seen) = naming_upstream("a");
    let server = edge(
        io,
        &[a],
        &[
            "--allowed-origin",
            "https://app.example",
            "--auth-token",
            "s3cret",
        ],
    );
    let (head, _) = exchange(
        &server,
        &get(
            "/socket.io/?access_token=s3cret",
            "Origin: https://evil.example\r\n",
        ),
    );
    assert_eq!(head.status, 403);
    let (head, _) = exchange(
        &server,
        &get("/socket.io/", "Origin: https://app.example\r\n"),
    );
    assert_eq!(head.status, 401);
    let (head, body) = body(
        &server,
        &get(
            "/socket.io/?access_token=s3cret",
            "Origin: https://app.example\r\n",
        ),
    );
    assert_eq!((head.status, body.as_str()), (200, "a"));
}

/// A forwarded answer is an outcome of its own: the counters still add up to `accepted`.
fn forwarded_requests_are_counted_as_their_own_outcome(io: Io) {
    let (a, _seen) = naming_upstream("a");
    let server = edge(
        io,
        &[a],
        &["--http-max-body", "10", "--metrics", "127.0.0.1:0"],
    );
    for _ in 0..3 {
        assert_eq!(body(&server, &get("/socket.io/", "")).1, "a");
    }
    let (head, _) = exchange(
        &server,
        b"POST /socket.io/ HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n",
    );
    assert_eq!(head.status, 413);
    let (head, _upgraded) = exchange(&server, &common::upgrade_request("/socket.io/", &[]));
    assert_eq!(head.status, 101);
    server.wait_for_metric("wsedge_http_forwarded_total", |n| n == 3.0);
    server.wait_for_metric("wsedge_handshaking_connections", |n| n == 0.0);
    let metrics = server.metrics_addr();
    let total = |name| common::metric_sum(&metrics, name);
    assert_eq!(total("wsedge_accepted_connections_total"), 5.0);
    assert_eq!(total("wsedge_upgrades_total"), 1.0);
    assert_eq!(total("wsedge_rejected_handshakes_total"), 1.0);
}

/// Answers larger than the relay's pipes arrive whole through the bounded relay, over TLS
/// too: one of known length (cut at its end: the upstream's extra bytes never arrive) and a
/// chunked one (until the upstream closes).
fn large_answers_arrive_whole_over_plain_and_tls(io: Io) {
    const SIZE: usize = 1 << 20;
    let up = common::raw_upstream(4, |mut stream, head| {
        let text = String::from_utf8_lossy(&head);
        let body = common::pattern(SIZE, 7);
        if text.starts_with("GET /socket.io/chunked") {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            for chunk in body.chunks(100_000) {
                let _ = write!(stream, "{:x}\r\n", chunk.len());
                let _ = stream.write_all(chunk);
                let _ = stream.write_all(b"\r\n");
            }
            let _ = stream.write_all(b"0\r\n\r\n");
        } else {
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
            let _ = stream.write_all(&body);
            let _ = stream.write_all(b"EXTRA BYTES NOBODY FRAMED");
        }
    });
    let dir = common::scratch(&format!("http-large-{io:?}"));
    let cert = common::cert(&dir, "server", &["127.0.0.1"]);
    let server = edge_tls(io, &cert, &[up], &[]);
    for (scheme, addr) in [("http", server.addr), ("https", server.tls_addr())] {
        for path in ["/socket.io/length", "/socket.io/chunked"] {
            let output = Command::new("curl")
                .args(["-sS", "--max-time", "15", "--cacert"])
                .arg(&cert.cert)
                .arg(format!("{scheme}://{addr}{path}"))
                .output()
                .expect("curl");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{scheme} {path}: {stderr}");
            assert_eq!(output.stdout.len(), SIZE, "{scheme} {path}");
            assert!(
                output.stdout == common::pattern(SIZE, 7),
                "{scheme} {path}: bytes differ"
            );
        }
    }
}

on_both_backends!(
    large_answers_arrive_whole_over_plain_and_tls,
    forwarded_requests_are_counted_as_their_own_outcome,
    forwards_with_the_edges_framing_and_headers,
    refuses_what_could_be_smuggled_or_is_too_large,
    a_silent_upstream_is_a_504_at_the_http_timeout,
    a_long_poll_held_25_seconds_is_answered,
    an_upstream_that_keeps_its_connection_does_not_hold_the_client,
    a_sticky_cookie_keeps_requests_and_the_upgrade_on_one_upstream,
    a_client_whose_upstream_is_gone_is_moved_with_a_new_cookie,
    over_tls_the_cookie_is_secure,
    origin_and_token_rules_hold_for_plain_requests,
);

/// The TOML keys are the flags' names: a config file turns the forwarding and the cookie on.
#[test]
fn the_toml_keys_are_the_flags_names() {
    let (a, _seen) = naming_upstream("a");
    let path = std::env::temp_dir().join(format!("wsedge-http-paths-{}.toml", std::process::id()));
    let text = format!(
        "after = \"proxy\"\nupstream = [\"{a}\"]\nhttp-path = [\"/socket.io/\"]\n\
         http-timeout = \"30s\"\nhttp-max-body = 100\nsticky-cookie = \"srv\"\n"
    );
    std::fs::write(&path, text).unwrap();
    let server = Server::start(Io::Epoll, &["--config", path.to_str().unwrap()]);
    let (head, answer) = body(&server, &get("/socket.io/", ""));
    assert_eq!(answer, "a");
    assert!(head
        .header("set-cookie")
        .is_some_and(|c| c.starts_with("srv=")));
    let big = b"POST /socket.io/ HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n";
    assert_eq!(exchange(&server, big).0.status, 413);
}
