//! `wsedge check`: the right verdict line and exit code for each way a handshake breaks,
//! against wsedge itself and against small misbehaving servers written here.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Io, Server};

/// Runs `wsedge check ARGS`; returns the exit code and stdout.
fn check(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .arg("check")
        .args(args)
        .output()
        .expect("run check");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn verdict(stdout: &str) -> &str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("verdict: "))
        .unwrap_or_else(|| panic!("no verdict in {stdout}"))
}

/// Reads one request head; returns its Sec-WebSocket-Key.
fn read_request(stream: &mut impl Read) -> Option<String> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&request).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .map(|k| k.trim().to_owned())
}

fn accept_for(key: &str) -> String {
    String::from_utf8(wsedge::handshake::accept_key(key.as_bytes()).to_vec()).unwrap()
}

/// A plain-TCP server answering every request with `answer(key)`; `None` resets.
fn server(answer: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let answer = Arc::clone(&answer);
            std::thread::spawn(move || {
                let mut stream = stream;
                let Some(key) = read_request(&mut stream) else {
                    return;
                };
                match answer(&key) {
                    Some(response) => {
                        let _ = stream.write_all(response.as_bytes());
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    None => {
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    }
                }
            });
        }
    });
    addr
}

fn ok_101(key: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
        accept_for(key)
    )
}

fn against_wsedge(io: Io) {
    let server = Server::start(
        io,
        &[
            "--path",
            "/chat",
            "--subprotocols",
            "chat",
            "--auth-token",
            "s3cret",
            "--allowed-origin",
            "https://app.example",
        ],
    );
    let url = server.url("/chat");

    let (code, out) = check(&[&url, "--token", "s3cret", "--subprotocol", "chat", "--ping"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(verdict(&out), "ok: upgraded to WebSocket, subprotocol chat");
    assert!(
        out.contains("> Authorization: Bearer ******"),
        "the token must be masked: {out}"
    );
    assert!(!out.contains("s3cret"), "the token leaked: {out}");
    assert!(
        out.contains("* closed by the server with code 1000"),
        "{out}"
    );
    assert!(out.contains("* pong after"), "{out}");

    let (code, out) = check(&[&server.url("/elsewhere"), "--token", "s3cret"]);
    assert_eq!(code, 4, "{out}");
    assert!(
        verdict(&out).starts_with("404: no WebSocket endpoint at this path"),
        "{out}"
    );

    let (code, out) = check(&[&url]);
    assert_eq!(code, 4, "{out}");
    assert!(
        verdict(&out).starts_with("401: authentication required"),
        "{out}"
    );

    let (code, out) = check(&[
        &url,
        "--token",
        "s3cret",
        "--origin",
        "https://evil.example",
    ]);
    assert_eq!(code, 4, "{out}");
    assert!(verdict(&out).starts_with("403: forbidden"), "{out}");

    let (code, out) = check(&[&url, "--token", "s3cret", "--json"]);
    assert_eq!(code, 0, "{out}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(json["verdict"], "ok");
    assert_eq!(json["status"], 101);
    assert_eq!(json["exit_code"], 0);
    assert!(json["timings"]["tcp_connect_ms"].is_f64());
}

#[test]
fn a_200_means_a_proxy_ate_the_upgrade() {
    let addr = server(|_| Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi".into()));
    let (code, out) = check(&[&format!("ws://{addr}/")]);
    assert_eq!(code, 3, "{out}");
    assert!(
        verdict(&out).contains("dropped the hop-by-hop Upgrade/Connection headers"),
        "{out}"
    );
}

#[test]
fn a_redirect_names_its_target() {
    let addr = server(|_| {
        Some("HTTP/1.1 301 Moved Permanently\r\nLocation: wss://example.com/\r\nContent-Length: 0\r\n\r\n".into())
    });
    let (code, out) = check(&[&format!("ws://{addr}/")]);
    assert_eq!(code, 3, "{out}");
    assert!(verdict(&out).contains("to wss://example.com/"), "{out}");
}

#[test]
fn a_replayed_101_is_not_a_real_endpoint() {
    let addr = server(|_| Some(ok_101("dGhlIHNhbXBsZSBub25jZQ==", "")));
    let (code, out) = check(&[&format!("ws://{addr}/")]);
    assert_eq!(code, 5, "{out}");
    assert!(
        verdict(&out).starts_with("not a real WebSocket endpoint"),
        "{out}"
    );
}

#[test]
fn an_unoffered_subprotocol_would_fail_in_a_browser() {
    let addr = server(|key| Some(ok_101(key, "Sec-WebSocket-Protocol: mqtt\r\n")));
    let (code, out) = check(&[&format!("ws://{addr}/"), "--subprotocol", "chat"]);
    assert_eq!(code, 5, "{out}");
    assert!(
        verdict(&out).contains("a browser would fail this connection"),
        "{out}"
    );
}

#[test]
fn a_426_says_which_version_the_server_wants() {
    let addr = server(|_| {
        Some("HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 8\r\nContent-Length: 0\r\n\r\n".into())
    });
    let (code, out) = check(&[&format!("ws://{addr}/")]);
    assert_eq!(code, 4, "{out}");
    assert!(verdict(&out).contains("Sec-WebSocket-Version: 8"), "{out}");
}

#[test]
fn a_503_passes_on_retry_after() {
    let addr = server(|_| {
        Some(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"
                .into(),
        )
    });
    let (code, out) = check(&[&format!("ws://{addr}/")]);
    assert_eq!(code, 4, "{out}");
    assert!(verdict(&out).contains("Retry-After: 7"), "{out}");
}

#[test]
fn a_reset_is_named() {
    let addr = server(|_| None);
    let (code, out) = check(&[&format!("ws://{addr}/")]);
    assert_eq!(code, 6, "{out}");
    assert!(verdict(&out).contains("reset"), "{out}");
}

#[test]
fn a_stall_is_a_response_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = listener.incoming().flatten().take(1).collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(held);
    });
    let (code, out) = check(&[&format!("ws://{addr}/"), "--timeout", "300ms"]);
    assert_eq!(code, 6, "{out}");
    assert!(
        verdict(&out).starts_with("connected, but no complete response in time"),
        "{out}"
    );
}

/// A server answering each connection with `head(key)` as bytes, then `tail` every 50 ms
/// (400 times at most).
fn raw_server(head: fn(&str) -> Vec<u8>, tail: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten().take(4) {
            std::thread::spawn(move || {
                let Some(key) = read_request(&mut stream) else {
                    return;
                };
                if stream.write_all(&head(&key)).is_err() {
                    return;
                }
                for _ in 0..400 {
                    if tail.is_empty() || stream.write_all(tail).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                std::thread::sleep(Duration::from_millis(500));
            });
        }
    });
    addr
}

/// A server that sends a ping every 50 ms after its 101 and never answers ours: `--ping`
/// gives up at the timeout instead of reading forever.
#[test]
fn ping_has_a_deadline() {
    let addr = raw_server(|key| ok_101(key, "").into_bytes(), &[0x89, 0x01, b'x']);
    let started = std::time::Instant::now();
    let (code, out) = check(&[&format!("ws://{addr}/"), "--ping", "--timeout", "1s"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "--ping waited on"
    );
    assert!(out.contains("--ping: no pong within the timeout"), "{out}");
}

/// A frame announced larger than `--ping` reads is not buffered.
#[test]
fn ping_does_not_buffer_a_huge_frame() {
    let addr = raw_server(
        |key| {
            let mut answer = ok_101(key, "").into_bytes();
            // A binary frame announcing 2^62 bytes, then a few of them.
            answer.extend_from_slice(&[0x82, 0x7f, 0x40, 0, 0, 0, 0, 0, 0, 0]);
            answer.extend_from_slice(b"abc");
            answer
        },
        b"more",
    );
    let (code, out) = check(&[&format!("ws://{addr}/"), "--ping", "--timeout", "2s"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("a frame over 64 KiB"), "{out}");
}

/// What a server says is shown, never played: terminal escapes in a refusal's body come out
/// as text.
#[test]
fn server_bytes_are_printed_escaped() {
    let addr = raw_server(
        |_| {
            let body = "\u{1b}]0;owned\u{7}\u{1b}[2J go away\n";
            format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        },
        b"",
    );
    let (code, out) = check(&[&format!("ws://{addr}/"), "--timeout", "2s"]);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(out.contains("\\u{1b}]0;owned"), "{out}");
}

#[test]
fn nothing_listening_is_connection_refused() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, out) = check(&[&format!("ws://127.0.0.1:{port}/")]);
    assert_eq!(code, 6, "{out}");
    assert!(verdict(&out).starts_with("connection refused"), "{out}");
}

/// A TLS server with a self-signed certificate for localhost, offering `alpn`.
fn tls_server(alpn: &[&[u8]]) -> u16 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let Ok(connection) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(connection, tcp);
                if let Some(key) = read_request(&mut tls) {
                    let _ = tls.write_all(ok_101(&key, "").as_bytes());
                    let _ = tls.flush();
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
    });
    port
}

#[test]
fn a_self_signed_certificate_is_untrusted_unless_insecure() {
    let port = tls_server(&[b"http/1.1"]);
    let url = format!("wss://localhost:{port}/");
    let (code, out) = check(&[&url]);
    assert_eq!(code, 7, "{out}");
    assert!(
        verdict(&out).contains("certificate is not trusted"),
        "{out}"
    );
    let (code, out) = check(&[&url, "--insecure"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("certificate NOT checked"), "{out}");
}

#[test]
fn an_http2_only_server_is_explained() {
    let port = tls_server(&[b"h2"]);
    let (code, out) = check(&[&format!("wss://localhost:{port}/"), "--insecure"]);
    assert_eq!(code, 7, "{out}");
    assert!(verdict(&out).contains("RFC 8441 extended CONNECT"), "{out}");
}

#[test]
fn ws_to_a_tls_port_says_use_wss() {
    let port = tls_server(&[b"http/1.1"]);
    let (code, out) = check(&[&format!("ws://127.0.0.1:{port}/")]);
    assert_eq!(code, 5, "{out}");
    assert_eq!(verdict(&out), "this port speaks TLS: use wss://");
}

#[test]
fn a_bad_url_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["check", "http://example.com/"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ws:// or wss://"));
}

/// `check --h2` against wsedge: over h2c and over TLS with ALPN h2 an extended CONNECT is
/// upgraded, refusals keep their status and the rule's reason, the token is masked; a
/// server that offers no HTTP/2, or no prior knowledge, is named as such.
fn h2_against_wsedge(io: Io) {
    let dir = common::scratch(&format!("check-h2-{io:?}"));
    let cert = common::cert(&dir, "server", &["localhost"]);
    let args = [
        "--h2",
        "--h2c",
        "--path",
        "/chat",
        "--subprotocols",
        "chat",
        "--auth-token",
        "s3cret",
    ];
    let server = Server::start_tls(io, &cert, &args);
    let plain = format!("ws://{}/chat", server.addr);
    let (code, out) = check(&[&plain, "--h2", "--token", "s3cret", "--subprotocol", "chat"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(verdict(&out), "ok: upgraded to WebSocket, subprotocol chat");
    assert!(out.contains("allow extended CONNECT"), "{out}");
    assert!(out.contains("> :protocol: websocket"), "{out}");
    assert!(
        out.contains("> authorization: Bearer ******") && !out.contains("s3cret"),
        "{out}"
    );
    assert!(out.contains("< :status: 200"), "{out}");

    let (code, out) = check(&[&plain, "--h2"]);
    assert_eq!(code, 4, "{out}");
    assert!(
        verdict(&out).starts_with("401: authentication required"),
        "{out}"
    );

    let tls = format!("wss://localhost:{}/chat", server.tls_addr().port());
    let (code, out) = check(&[&tls, "--h2", "--token", "s3cret", "--insecure"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ALPN h2"), "{out}");

    // The same server without HTTP/2.
    let without = Server::start_tls(io, &cert, &["--path", "/chat"]);
    let tls = format!("wss://localhost:{}/chat", without.tls_addr().port());
    let (code, out) = check(&[&tls, "--h2", "--insecure"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        verdict(&out).starts_with("HTTP/2 is not offered here (ALPN chose http/1.1)"),
        "{out}"
    );
    let (code, out) = check(&[&format!("ws://{}/chat", without.addr), "--h2"]);
    assert_eq!(code, 3, "{out}");
    assert!(verdict(&out).contains("wsedge --h2c"), "{out}");
}

on_both_backends!(against_wsedge, h2_against_wsedge);

/// An HTTP/2 server that does not allow extended CONNECT (most do not: nginx, Go's
/// default) is told apart from one that refuses the stream.
#[test]
fn h2_without_extended_connect_is_named() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let Ok(mut stream) = stream else { continue };
            let mut preface = [0u8; 24 + 15];
            let _ = stream.read_exact(&mut preface);
            // SETTINGS with MAX_CONCURRENT_STREAMS only, then the reset of stream 1.
            let _ = stream.write_all(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
            let _ = stream.write_all(&[0, 0, 4, 3, 0, 0, 0, 0, 1, 0, 0, 0, 7]);
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let (code, out) = check(&[&format!("ws://{addr}/"), "--h2"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        verdict(&out).contains("does not allow extended CONNECT"),
        "{out}"
    );
}
