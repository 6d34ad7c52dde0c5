//! `--accept-proxy-protocol`: wsedge behind an L4 balancer, a real HAProxy in TCP mode
//! (Debian's, installed by `.ci/run`) sending PROXY v1 or v2. Clients come from distinct
//! loopback addresses (127.0.0.2, 127.0.0.3), HAProxy from 127.0.0.9, the only trusted one.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{metrics_text, Io, Server, DEADLINE};
use common::{raw_upstream, read_head, scratch, switching_protocols, upgrade_request};

/// HAProxy relaying TCP to `backend` with `send-proxy` or `send-proxy-v2`, from 127.0.0.9;
/// killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
}

impl Haproxy {
    fn start(backend: SocketAddr, send_proxy: &str) -> Option<Haproxy> {
        let haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(haproxy) = haproxy else {
            let required = std::env::var("WSEDGE_REQUIRE_THIRD_PARTY").is_ok_and(|v| v == "1");
            assert!(!required, "HAProxy is required (apt install haproxy)");
            eprintln!("skipping: no haproxy (run .ci/run to install it)");
            return None;
        };
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = scratch("haproxy");
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                 timeout client 30s\n  timeout server 30s\nfrontend edge\n  bind {addr}\n  \
                 default_backend wsedge\nbackend wsedge\n  \
                 server w {backend} {send_proxy} source 127.0.0.9\n"
            ),
        )
        .unwrap();
        let child = Command::new(haproxy)
            .args(["-db", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let deadline = Instant::now() + DEADLINE;
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Haproxy { child, addr })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&source.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

fn status_from(from: &str, to: SocketAddr) -> (u16, TcpStream) {
    let mut stream = connect_from(from, to);
    stream.write_all(&upgrade_request("/", &[])).unwrap();
    (read_head(&mut stream).status, stream)
}

/// Whether the server closed `stream` without a byte.
fn closed_unanswered(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

const TRUST_HAPROXY: [&str; 4] = [
    "--accept-proxy-protocol",
    "--proxy-protocol-from",
    "127.0.0.9/32",
    "--metrics",
];

/// The per-address limit applies to the address HAProxy saw: a second connection from
/// 127.0.0.2 is refused with 429 while 127.0.0.3 is served. Both PROXY versions.
fn the_per_address_limit_applies_to_the_client_haproxy_saw(io: Io) {
    for send_proxy in ["send-proxy", "send-proxy-v2"] {
        let mut args = TRUST_HAPROXY.to_vec();
        args.extend([
            "127.0.0.1:0",
            "--max-connections-per-ip",
            "1",
            "--threads",
            "1",
        ]);
        let server = Server::start(io, &args);
        let Some(haproxy) = Haproxy::start(server.addr, send_proxy) else {
            return;
        };
        let (first, _held) = status_from("127.0.0.2", haproxy.addr);
        assert_eq!(first, 101, "{send_proxy}");
        assert_eq!(
            status_from("127.0.0.2", haproxy.addr).0,
            429,
            "{send_proxy}"
        );
        assert_eq!(
            status_from("127.0.0.3", haproxy.addr).0,
            101,
            "{send_proxy}"
        );
    }
}

/// In proxy mode the upstream's X-Forwarded-For is the client HAProxy saw, not HAProxy.
fn x_forwarded_for_carries_the_client_haproxy_saw(io: Io) {
    let (head_tx, head_rx) = mpsc::channel();
    let upstream = raw_upstream(1, move |mut stream, head| {
        stream.write_all(&switching_protocols(&head)).unwrap();
        let _ = head_tx.send(String::from_utf8_lossy(&head).into_owned());
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let upstream = upstream.to_string();
    let mut args = TRUST_HAPROXY.to_vec();
    args.extend(["127.0.0.1:0", "--after", "proxy", "--upstream", &upstream]);
    let server = Server::start(io, &args);
    let Some(haproxy) = Haproxy::start(server.addr, "send-proxy-v2") else {
        return;
    };
    let (status, _held) = status_from("127.0.0.3", haproxy.addr);
    assert_eq!(status, 101);
    let head = head_rx.recv_timeout(DEADLINE).unwrap();
    assert!(head.contains("X-Forwarded-For: 127.0.0.3\r\n"), "{head}");
    assert!(head.contains("X-Real-IP: 127.0.0.3\r\n"), "{head}");
}

/// With `--upstream-proxy-protocol v2`, the PROXY header wsedge sends upstream names the
/// client HAProxy saw (its own header read back by wsedge's reader).
fn the_upstream_proxy_header_names_the_client_haproxy_saw(io: Io) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    let (client_tx, client_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut received = Vec::new();
        let mut chunk = [0u8; 1024];
        while !received.windows(4).skip(16).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
        let wsedge::proxy::ProxyHeader::Complete { len, client } =
            wsedge::proxy::parse_proxy_header(&received)
        else {
            return;
        };
        stream
            .write_all(&switching_protocols(&received[len..]))
            .unwrap();
        let _ = client_tx.send(client);
        let _ = stream.read_to_end(&mut received);
    });
    let mut args = TRUST_HAPROXY.to_vec();
    args.extend(["127.0.0.1:0", "--after", "proxy", "--upstream", &upstream]);
    args.extend(["--upstream-proxy-protocol", "v2"]);
    let server = Server::start(io, &args);
    let Some(haproxy) = Haproxy::start(server.addr, "send-proxy") else {
        return;
    };
    let (status, _held) = status_from("127.0.0.3", haproxy.addr);
    assert_eq!(status, 101);
    let client = client_rx
        .recv_timeout(DEADLINE)
        .expect("a PROXY v2 header upstream");
    assert_eq!(client.map(|c| c.ip().to_string()), Some("127.0.0.3".into()));
}

/// On a TLS listener the PROXY header comes before the ClientHello, as balancers send it:
/// read in the clear, then the TLS handshake and the upgrade go on.
fn on_a_tls_listener_the_header_comes_before_the_client_hello(io: Io) {
    let dir = scratch("proxy-protocol-tls");
    let cert = common::cert(&dir, "server", &["localhost"]);
    let mut args = TRUST_HAPROXY.to_vec();
    args.push("127.0.0.1:0");
    let server = Server::start_tls(io, &cert, &args);
    let mut tcp = connect_from("127.0.0.9", server.tls_addr());
    tcp.write_all(b"PROXY TCP4 127.0.0.7 127.0.0.1 5000 443\r\n")
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&upgrade_request("/", &[])).unwrap();
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
}

/// A sender outside --proxy-protocol-from, and a trusted one whose bytes are not a PROXY
/// header, are closed unanswered and counted by reason.
fn untrusted_senders_and_garbage_headers_are_refused_and_counted(io: Io) {
    let mut args = TRUST_HAPROXY.to_vec();
    args.push("127.0.0.1:0");
    let server = Server::start(io, &args);
    let mut direct = connect_from("127.0.0.2", server.addr);
    let _ = direct.write_all(&upgrade_request("/", &[]));
    assert!(
        closed_unanswered(&mut direct),
        "an untrusted sender was served"
    );
    let mut garbage = connect_from("127.0.0.9", server.addr);
    garbage.write_all(&upgrade_request("/", &[])).unwrap();
    assert!(
        closed_unanswered(&mut garbage),
        "a header-less request was served"
    );
    let mut v1 = connect_from("127.0.0.9", server.addr);
    v1.write_all(b"PROXY TCP4 127.0.0.5 127.0.0.1 4000 80\r\n")
        .unwrap();
    v1.write_all(&upgrade_request("/", &[])).unwrap();
    assert_eq!(read_head(&mut v1).status, 101, "a well-formed v1 header");
    let metrics = server.metrics_addr();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = metrics_text(&metrics);
        let untrusted =
            text.contains("wsedge_proxy_protocol_refused_total{reason=\"untrusted\"} 1");
        let malformed =
            text.contains("wsedge_proxy_protocol_refused_total{reason=\"malformed\"} 1");
        if untrusted && malformed {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A balancer that sends nothing is cut at the handshake timeout like any slowloris.
fn a_header_that_never_comes_is_cut_at_the_handshake_timeout(io: Io) {
    let mut args = TRUST_HAPROXY.to_vec();
    args.extend(["127.0.0.1:0", "--handshake-timeout-ms", "300"]);
    let server = Server::start(io, &args);
    let mut silent = connect_from("127.0.0.9", server.addr);
    silent.write_all(b"PROXY TCP4 127.0.0.5").unwrap();
    let started = Instant::now();
    assert!(closed_unanswered(&mut silent));
    assert!(started.elapsed() < DEADLINE);
}

on_both_backends!(
    the_per_address_limit_applies_to_the_client_haproxy_saw,
    x_forwarded_for_carries_the_client_haproxy_saw,
    the_upstream_proxy_header_names_the_client_haproxy_saw,
    untrusted_senders_and_garbage_headers_are_refused_and_counted,
    a_header_that_never_comes_is_cut_at_the_handshake_timeout,
    on_a_tls_listener_the_header_comes_before_the_client_hello,
);
