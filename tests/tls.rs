//! TLS termination (`--listen-tls`), through the real binary on both backends, against real
//! TLS clients: rustls (under tungstenite), curl and openssl.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cert, scratch, upgrade_request, Cert, Io, Server, ACCEPT, DEADLINE, KEY};
use common::{pattern, raw_upstream, read_to_close, switching_protocols, tungstenite_upstream};
use rustls::pki_types::{CertificateDer, ServerName};

/// A server with one TLS listener on `cert`, and `args`.
fn serve(io: Io, cert: &Cert, args: &[&str]) -> Server {
    Server::start_tls(io, cert, args)
}

fn tls_addr(server: &Server) -> SocketAddr {
    server.tls_addr()
}

/// A rustls client trusting `roots`, offering `alpn`, limited to `versions` and `groups`
/// when given.
fn client_config(
    roots: &[&CertificateDer<'static>],
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
    groups: Option<Vec<&'static dyn rustls::crypto::SupportedKxGroup>>,
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(groups) = groups {
        provider.kx_groups = groups;
    }
    let versions = match versions {
        [] => rustls::DEFAULT_VERSIONS,
        some => some,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects and completes the TLS handshake (or says why it failed).
fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<Tls, rustls::Error> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if let Err(error) = tls.conn.complete_io(&mut tls.sock) {
            return Err(match error.into_inner() {
                Some(inner) => match inner.downcast::<rustls::Error>() {
                    Ok(tls_error) => *tls_error,
                    Err(other) => rustls::Error::General(other.to_string()),
                },
                None => rustls::Error::General("I/O error".into()),
            });
        }
    }
    Ok(tls)
}

fn default_client(cert: &Cert) -> Arc<rustls::ClientConfig> {
    client_config(&[&cert.der], &[b"http/1.1"], &[], None)
}

fn tungstenite_echoes_and_closes_with_a_code_over_tls(io: Io) {
    let dir = scratch("echo");
    let cert = cert(&dir, "server", &["localhost"]);
    let server = serve(io, &cert, &["--after", "echo", "--subprotocols", "chat"]);
    let tls = handshake(tls_addr(&server), default_client(&cert), "localhost").unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "wss://localhost:{}/",
        tls_addr(&server).port()
    ))
    .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "chat".parse().unwrap());
    let (mut socket, response) = tungstenite::client(request, tls).unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "chat");
    for size in [1, 125, 126, 70_000] {
        let text = "x".repeat(size);
        socket
            .send(tungstenite::Message::text(text.clone()))
            .unwrap();
        match socket.read().unwrap() {
            tungstenite::Message::Text(echo) => assert_eq!(echo.as_str(), text),
            other => panic!("{other:?}"),
        }
    }
    socket
        .close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Library(4000),
            reason: "done".into(),
        }))
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match socket.read() {
            Ok(tungstenite::Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 4000);
            }
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(error) => panic!("not a clean close: {error}"),
        }
        assert!(Instant::now() < deadline);
    }
}

fn curl_upgrades_over_tls_with_the_rfc_sample_key(io: Io) {
    let dir = scratch("curl");
    let cert = cert(&dir, "server", &["localhost"]);
    let server = serve(io, &cert, &["--after", "close"]);
    let port = tls_addr(&server).port();
    let output = Command::new("curl")
        .args(["--http1.1", "-s", "-i", "--max-time", "10"])
        .args(["--cacert", cert.cert.to_str().unwrap()])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
        .args(["-H", "Sec-WebSocket-Version: 13"])
        .args(["-H", &format!("Sec-WebSocket-Key: {KEY}")])
        .arg(format!("https://localhost:{port}/"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}")),
        "{text}"
    );
}

/// Close mode over TLS: the 101 and a Close(1000), then `close_notify`: the client sees a
/// clean end of stream, not a truncation.
fn close_mode_ends_with_close_notify(io: Io) {
    let dir = scratch("close");
    let cert = cert(&dir, "server", &["localhost"]);
    let server = serve(io, &cert, &["--after", "close"]);
    let mut tls = handshake(tls_addr(&server), default_client(&cert), "localhost").unwrap();
    tls.write_all(&upgrade_request("/", &[])).unwrap();
    let mut received = Vec::new();
    let end = tls.read_to_end(&mut received);
    assert!(end.is_ok(), "unclean end: {end:?}");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols"),
        "{text}"
    );
    assert!(
        received.ends_with(&[0x88, 0x02, 0x03, 0xE8]),
        "{received:?}"
    );
}

/// `wsedge check wss://` reaches the 101 through wsedge's own TLS (self-signed here, so
/// `--insecure`), and says that the upgrade works.
fn wsedge_check_upgrades_over_tls(io: Io) {
    let dir = scratch("check");
    let cert = cert(&dir, "server", &["localhost"]);
    let server = serve(io, &cert, &["--after", "echo"]);
    let url = format!("wss://localhost:{}/", tls_addr(&server).port());
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["check", &url, "--insecure", "--ping"])
        .output()
        .expect("wsedge check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("101"), "{stdout}");
}

fn plain_http_on_a_tls_port_gets_a_plaintext_400(io: Io) {
    let dir = scratch("plain");
    let cert = cert(&dir, "server", &["localhost"]);
    let server = serve(io, &cert, &[]);
    let mut tcp = TcpStream::connect(tls_addr(&server)).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.write_all(&upgrade_request("/", &[])).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request"), "{text}");
    assert!(text.contains("plain HTTP sent to a TLS port"), "{text}");
}

fn a_client_offering_only_h2_gets_no_application_protocol(io: Io) {
    let dir = scratch("alpn");
    let cert = cert(&dir, "server", &["localhost"]);
    let server = serve(io, &cert, &["--metrics", "127.0.0.1:0"]);
    let h2_only = client_config(&[&cert.der], &[b"h2"], &[], None);
    let error = handshake(tls_addr(&server), h2_only, "localhost").err();
    assert_eq!(
        error,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::NoApplicationProtocol
        ))
    );
    server.wait_for_metric("wsedge_tls_handshake_failures_total", |n| n >= 1.0);
    let text = common::metrics_text(&server.metrics_addr());
    assert!(
        text.contains("wsedge_tls_handshake_failures_total{reason=\"no_application_protocol\"} 1"),
        "{text}"
    );
    // No ALPN at all is fine (curl and most WebSocket clients send http/1.1 or nothing).
    let none = client_config(&[&cert.der], &[], &[], None);
    assert!(handshake(tls_addr(&server), none, "localhost").is_ok());
}

fn tls_versions_limits_the_versions_offered(io: Io) {
    let dir = scratch("versions");
    let cert = cert(&dir, "server", &["localhost"]);
    let server = serve(io, &cert, &["--tls-versions", "1.3"]);
    let tls12 = client_config(&[&cert.der], &[], &[&rustls::version::TLS12], None);
    let error = handshake(tls_addr(&server), tls12, "localhost").err();
    assert_eq!(
        error,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::ProtocolVersion
        ))
    );
    let tls = handshake(tls_addr(&server), default_client(&cert), "localhost").unwrap();
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // The default offers 1.2 too.
    let both = serve(io, &cert, &[]);
    let tls12 = client_config(&[&cert.der], &[], &[&rustls::version::TLS12], None);
    let tls = handshake(tls_addr(&both), tls12, "localhost").unwrap();
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

/// Handshakes are counted by version and full or resumed: a client that comes back with its
/// ticket is a resumed TLS 1.3 handshake, one limited to TLS 1.2 a full 1.2 one.
fn handshakes_are_counted_by_version_and_resumption(io: Io) {
    let dir = scratch("counted");
    let cert = cert(&dir, "server", &["localhost"]);
    let server = serve(io, &cert, &["--metrics", "127.0.0.1:0"]);
    let returning = default_client(&cert);
    for _ in 0..3 {
        let mut tls = handshake(tls_addr(&server), Arc::clone(&returning), "localhost").unwrap();
        // Tickets arrive after the handshake: read the upgrade's answer to take them in.
        tls.write_all(&upgrade_request("/", &[])).unwrap();
        let mut head = [0u8; 12];
        tls.read_exact(&mut head).unwrap();
    }
    let tls12 = client_config(&[&cert.der], &[], &[&rustls::version::TLS12], None);
    drop(handshake(tls_addr(&server), tls12, "localhost").unwrap());
    server.wait_for_metric("wsedge_tls_handshakes_total", |n| n >= 4.0);
    let text = common::metrics_text(&server.metrics_addr());
    for (line, at_least) in [
        (
            "wsedge_tls_handshakes_total{version=\"1.3\",resumed=\"false\"} ",
            1,
        ),
        (
            "wsedge_tls_handshakes_total{version=\"1.3\",resumed=\"true\"} ",
            2,
        ),
        (
            "wsedge_tls_handshakes_total{version=\"1.2\",resumed=\"false\"} ",
            1,
        ),
    ] {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert!(value >= Some(at_least), "{line}: {value:?}\n{text}");
    }
}

fn tls_groups_limits_the_key_exchange(io: Io) {
    use rustls::crypto::ring::kx_group;
    let dir = scratch("groups");
    let cert = cert(&dir, "server", &["localhost"]);
    let server = serve(io, &cert, &["--tls-groups", "secp256r1"]);
    let x25519 = client_config(&[&cert.der], &[], &[], Some(vec![kx_group::X25519]));
    assert!(handshake(tls_addr(&server), x25519, "localhost").is_err());
    let both = client_config(
        &[&cert.der],
        &[],
        &[],
        Some(vec![kx_group::X25519, kx_group::SECP256R1]),
    );
    let tls = handshake(tls_addr(&server), both, "localhost").unwrap();
    let group = tls.conn.negotiated_key_exchange_group().map(|g| g.name());
    assert_eq!(group, Some(rustls::NamedGroup::secp256r1));
}

/// SIGHUP five times while four clients keep connecting: not one handshake fails, whichever
/// certificate it meets (the clients trust both).
fn sighup_reloads_during_a_storm_fail_no_handshake(io: Io) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let dir = scratch("reload-storm");
    let (old, new) = (
        cert(&dir, "old", &["localhost"]),
        cert(&dir, "new", &["localhost"]),
    );
    let live = live_files(&dir, &old);
    let server = serve(io, &live, &["--after", "close"]);
    let addr = tls_addr(&server);
    let trusts_both = client_config(&[&old.der, &new.der], &[b"http/1.1"], &[], None);
    let stop = Arc::new(AtomicBool::new(false));
    let (upgraded_total, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let storm: Vec<_> = (0..4)
        .map(|_| {
            let (stop, config) = (Arc::clone(&stop), Arc::clone(&trusts_both));
            let (ok, failed) = (Arc::clone(&upgraded_total), Arc::clone(&failed));
            std::thread::spawn(move || {
                // Bounded: stops when told, or after this many.
                for _ in 0..5_000 {
                    if stop.load(Relaxed) {
                        break;
                    }
                    let upgrade = handshake(addr, Arc::clone(&config), "localhost")
                        .map_err(|e| e.to_string())
                        .and_then(|tls| {
                            let url = format!("wss://localhost:{}/", addr.port());
                            tungstenite::client(url, tls).map_err(|e| e.to_string())
                        });
                    match upgrade {
                        Ok((_, response)) if response.status() == 101 => ok.fetch_add(1, Relaxed),
                        Ok(_) | Err(_) => failed.fetch_add(1, Relaxed),
                    };
                }
            })
        })
        .collect();
    let reloads = |n: usize| {
        server
            .log()
            .matches("SIGHUP: TLS certificates reloaded")
            .count()
            >= n
    };
    for round in 1..=5 {
        let from = if round % 2 == 1 { &new } else { &old };
        install(from, &live);
        let before = upgraded_total.load(Relaxed);
        server.signal(libc::SIGHUP);
        let deadline = Instant::now() + DEADLINE;
        while !reloads(round) || upgraded_total.load(Relaxed) < before + 20 {
            assert!(
                Instant::now() < deadline,
                "reload {round}: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    stop.store(true, Relaxed);
    for thread in storm {
        thread.join().unwrap();
    }
    assert_eq!(
        failed.load(Relaxed),
        0,
        "{} upgraded",
        upgraded_total.load(Relaxed)
    );
    assert!(upgraded_total.load(Relaxed) >= 100);
}

/// The hybrid post-quantum group: chosen by `--tls-groups`, and in the default list for a
/// client that offers only it.
fn the_hybrid_post_quantum_group_is_negotiated(io: Io) {
    use rustls::crypto::aws_lc_rs::kx_group;
    let dir = scratch("pq");
    let cert = cert(&dir, "server", &["localhost"]);
    let only_hybrid = || {
        client_config(
            &[&cert.der],
            &[],
            &[&rustls::version::TLS13],
            Some(vec![kx_group::X25519MLKEM768]),
        )
    };
    let group_of = |tls: Tls| tls.conn.negotiated_key_exchange_group().map(|g| g.name());
    let chosen = serve(io, &cert, &["--tls-groups", "x25519mlkem768,x25519"]);
    let tls = handshake(tls_addr(&chosen), only_hybrid(), "localhost").unwrap();
    assert_eq!(group_of(tls), Some(rustls::NamedGroup::X25519MLKEM768));
    let classical = client_config(&[&cert.der], &[], &[], Some(vec![kx_group::X25519]));
    let tls = handshake(tls_addr(&chosen), classical, "localhost").unwrap();
    assert_eq!(group_of(tls), Some(rustls::NamedGroup::X25519));
    let defaults = serve(io, &cert, &[]);
    let tls = handshake(tls_addr(&defaults), only_hybrid(), "localhost").unwrap();
    assert_eq!(group_of(tls), Some(rustls::NamedGroup::X25519MLKEM768));
    let classical_only = serve(io, &cert, &["--tls-groups", "x25519"]);
    let refused = handshake(tls_addr(&classical_only), only_hybrid(), "localhost");
    assert!(refused.is_err(), "no common group");
}

fn sni_chooses_the_certificate_and_unknown_names_get_the_first(io: Io) {
    let dir = scratch("sni");
    let first = cert(&dir, "first", &["first.test"]);
    let second = cert(&dir, "second", &["second.test"]);
    let server = Server::start(
        io,
        &[
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            first.cert.to_str().unwrap(),
            "--tls-key",
            first.key.to_str().unwrap(),
            "--tls-cert",
            second.cert.to_str().unwrap(),
            "--tls-key",
            second.key.to_str().unwrap(),
        ],
    );
    let addr = tls_addr(&server);
    let trusts_second = client_config(&[&second.der], &[], &[], None);
    assert!(handshake(addr, Arc::clone(&trusts_second), "second.test").is_ok());
    // The client checks the name: the first certificate would fail it.
    assert!(handshake(addr, trusts_second, "first.test").is_err());
    let trusts_first = client_config(&[&first.der], &[], &[], None);
    assert!(handshake(addr, Arc::clone(&trusts_first), "first.test").is_ok());
    // An unknown name gets the default (first) certificate, which then fails the name
    // check on the client: the handshake reached the certificate.
    let error = handshake(addr, trusts_first, "unknown.test").err();
    assert!(
        matches!(error, Some(rustls::Error::InvalidCertificate(_))),
        "{error:?}"
    );
}

/// An upgraded WebSocket over TLS (echo mode), through tungstenite.
fn upgraded(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> tungstenite::WebSocket<Tls> {
    let tls = handshake(addr, config, "localhost").unwrap();
    let url = format!("wss://localhost:{}/", addr.port());
    let (socket, response) = tungstenite::client(url, tls).unwrap();
    assert_eq!(response.status(), 101);
    socket
}

fn echoes(socket: &mut tungstenite::WebSocket<Tls>, text: &str) {
    socket.send(tungstenite::Message::text(text)).unwrap();
    match socket.read().unwrap() {
        tungstenite::Message::Text(echo) => assert_eq!(echo.as_str(), text),
        other => panic!("{other:?}"),
    }
}

/// The certificate and key files a server is started on, holding `first`'s for now.
fn live_files(dir: &std::path::Path, first: &Cert) -> Cert {
    let live = Cert {
        cert: dir.join("live.crt"),
        key: dir.join("live.key"),
        der: first.der.clone(),
    };
    install(first, &live);
    live
}

/// Puts `cert`'s files where `live`'s are (for the next SIGHUP).
fn install(cert: &Cert, live: &Cert) {
    std::fs::copy(&cert.cert, &live.cert).unwrap();
    std::fs::copy(&cert.key, &live.key).unwrap();
}

/// SIGHUP reads the certificate and key files again: new connections get the new
/// certificate, an established connection carries on, and a broken file keeps the running
/// certificate and says why.
fn sighup_reloads_certificates_for_new_connections_only(io: Io) {
    let dir = scratch("reload");
    let old = cert(&dir, "old", &["localhost"]);
    let new = cert(&dir, "new", &["localhost"]);
    let live = live_files(&dir, &old);
    let server = serve(io, &live, &["--after", "echo"]);
    let addr = tls_addr(&server);
    let trusts_old = default_client(&old);
    let trusts_new = default_client(&new);
    let mut established = upgraded(addr, Arc::clone(&trusts_old));
    echoes(&mut established, "before");

    install(&new, &live);
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP: TLS certificates reloaded");
    let mut fresh = upgraded(addr, Arc::clone(&trusts_new));
    echoes(&mut fresh, "new certificate");
    // A client with no session to resume is shown the new certificate (one with a ticket may
    // resume: the ticket keys carry over a reload).
    assert!(handshake(addr, default_client(&old), "localhost").is_err());
    echoes(&mut established, "still here after the reload");

    std::fs::write(&live.key, "not a key\n").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP: kept the running TLS certificates: --tls-key");
    echoes(&mut upgraded(addr, trusts_new), "the running certificate");
}

/// A client that stops in the middle of its ClientHello is cut at the handshake timeout,
/// as a slowloris is.
fn a_stall_in_the_middle_of_the_client_hello_is_cut_at_the_handshake_timeout(io: Io) {
    let dir = scratch("stall");
    let cert = cert(&dir, "server", &["localhost"]);
    let server = serve(io, &cert, &["--handshake-timeout-ms", "300"]);
    let mut tcp = TcpStream::connect(tls_addr(&server)).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    // A TLS record header announcing 512 bytes of handshake, then 10 of them.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        .unwrap();
    let start = Instant::now();
    let mut buffer = [0u8; 64];
    let read = tcp.read(&mut buffer);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "expected the connection to be cut, got {read:?}"
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "cut too early: {waited:?}"
    );
    assert!(waited < DEADLINE);
}

/// A ClientHello declared 65,535 bytes long and sent as 1-byte records: rustls keeps an
/// incomplete handshake message's records in the caller's buffer, so such a peer could hold
/// about 390 KB before authenticating. The connection is failed with an alert once it holds
/// more than one whole record's worth.
fn an_oversized_client_hello_in_tiny_records_gets_an_alert_at_the_bound(io: Io) {
    let dir = scratch("trickle");
    let cert = cert(&dir, "server", &["localhost"]);
    let server = serve(io, &cert, &["--metrics", "127.0.0.1:0"]);
    let mut tcp = TcpStream::connect(tls_addr(&server)).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.set_nodelay(true).unwrap();
    // A handshake message header (client_hello, 65,535 bytes), then its body, a byte a record.
    let mut message = vec![0x01, 0x00, 0xff, 0xff, 0x03, 0x03];
    message.resize(4 + 0xffff, 0x41);
    let records: Vec<u8> = message
        .iter()
        .flat_map(|&byte| [0x16, 0x03, 0x01, 0x00, 0x01, byte])
        .collect();
    let mut writer = tcp.try_clone().unwrap();
    let sent = std::thread::spawn(move || {
        let mut sent = 0;
        for batch in records.chunks(600) {
            if writer.write_all(batch).is_err() {
                break;
            }
            sent += batch.len();
        }
        sent
    });
    let mut alert = [0u8; 7];
    tcp.read_exact(&mut alert).expect("an alert");
    assert_eq!(
        alert,
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 47],
        "illegal_parameter"
    );
    let rest = read_to_close(&mut tcp, Vec::new());
    assert!(rest.is_empty(), "nothing after the alert: {rest:?}");
    // What the peer wrote lies in the kernel's buffers whatever wsedge does: only the alert
    // tells that it stopped holding it.
    let _ = sent.join();
    server.wait_for_metric("wsedge_tls_handshake_failures_total", |n| n >= 1.0);
}

/// Over the connection limit a TLS client is refused before any key exchange: its
/// connection ends without a ServerHello.
fn over_the_limit_a_tls_client_is_refused_before_any_key_exchange(io: Io) {
    let dir = scratch("limit");
    let cert = cert(&dir, "server", &["localhost"]);
    let server = serve(
        io,
        &cert,
        &[
            "--max-connections",
            "1",
            "--threads",
            "1",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let held = handshake(tls_addr(&server), default_client(&cert), "localhost").unwrap();
    server.wait_for_metric("wsedge_open_connections", |n| n >= 1.0);
    let refused = handshake(tls_addr(&server), default_client(&cert), "localhost");
    assert!(refused.is_err(), "a second client was served");
    server.wait_for_metric("wsedge_admission_rejections_total", |n| n >= 1.0);
    drop(held);
}

/// Proxy mode with TLS terminated here: the upstream speaks plaintext and learns that the
/// client used `https`; a third-party upstream (tungstenite) echoes through the relay.
fn proxy_mode_relays_a_tls_client_to_a_plaintext_upstream(io: Io) {
    let dir = scratch("proxy-echo");
    let cert = cert(&dir, "server", &["localhost"]);
    let upstream = tungstenite_upstream();
    let upstream = upstream.to_string();
    let server = serve(io, &cert, &["--after", "proxy", "--upstream", &upstream]);
    let mut socket = upgraded(tls_addr(&server), default_client(&cert));
    for size in [0, 1, 125, 70_000, 300_000] {
        let blob = pattern(size, 5);
        socket
            .send(tungstenite::Message::binary(blob.clone()))
            .unwrap();
        assert_eq!(socket.read().unwrap(), tungstenite::Message::binary(blob));
    }
    socket
        .close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Library(4001),
            reason: "bye".into(),
        }))
        .unwrap();
    match socket.read() {
        Ok(tungstenite::Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 4001),
        other => panic!("expected the upstream's close echo, got {other:?}"),
    }
}

fn the_upstream_of_a_tls_client_sees_x_forwarded_proto_https(io: Io) {
    let dir = scratch("proxy-proto");
    let cert = cert(&dir, "server", &["localhost"]);
    let (head_tx, head_rx) = std::sync::mpsc::channel();
    let upstream = raw_upstream(1, move |mut stream, head| {
        stream.write_all(&switching_protocols(&head)).unwrap();
        let _ = head_tx.send(String::from_utf8_lossy(&head).into_owned());
        let _ = read_to_close(&mut stream, Vec::new());
    });
    let upstream = upstream.to_string();
    let server = serve(io, &cert, &["--after", "proxy", "--upstream", &upstream]);
    let _socket = upgraded(tls_addr(&server), default_client(&cert));
    let head = head_rx
        .recv_timeout(DEADLINE)
        .expect("the upstream got a request");
    assert!(head.contains("X-Forwarded-Proto: https\r\n"), "{head}");
    assert!(!head.contains("X-Forwarded-Proto: http\r\n"), "{head}");
}

/// Megabytes each way through the cipher, whole and in order; the client's `close_notify`
/// reaches the upstream as a FIN, the upstream's FIN reaches the client as `close_notify`
/// (a clean end, not a truncation).
fn bulk_bytes_cross_a_tls_relay_whole_and_each_end_is_passed_on(io: Io) {
    const LEN: usize = 4 << 20;
    let dir = scratch("proxy-bulk");
    let cert = cert(&dir, "server", &["localhost"]);
    let (got_tx, got_rx) = std::sync::mpsc::channel();
    let upstream = raw_upstream(1, move |mut stream, head| {
        stream.write_all(&switching_protocols(&head)).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let sending = std::thread::spawn(move || {
            writer.write_all(&pattern(LEN, 1)).unwrap();
            writer.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let _ = got_tx.send(read_to_close(&mut stream, Vec::new()));
        sending.join().unwrap();
    });
    let upstream = upstream.to_string();
    let server = serve(io, &cert, &["--after", "proxy", "--upstream", &upstream]);
    let mut tls = handshake(tls_addr(&server), default_client(&cert), "localhost").unwrap();
    tls.write_all(&upgrade_request("/", &[])).unwrap();
    // The client writes everything before reading: the relay holds the upstream back
    // meanwhile (bounded pipes), it does not buffer megabytes.
    tls.write_all(&pattern(LEN, 2)).unwrap();
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    let mut received = Vec::new();
    let end = tls.read_to_end(&mut received);
    if end.is_err() {
        let log = server.log();
        let tail: String = log.lines().rev().take(12).collect::<Vec<_>>().join("\n");
        panic!(
            "the end was not a close_notify: {end:?}, {} bytes\n{tail}",
            received.len()
        );
    }
    let split = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a 101 head")
        + 4;
    assert!(received.starts_with(b"HTTP/1.1 101 "));
    assert!(
        received[split..] == pattern(LEN, 1)[..],
        "upstream to client: {} bytes",
        received.len() - split
    );
    let got = got_rx.recv_timeout(DEADLINE).expect("upstream saw our FIN");
    assert!(
        got == pattern(LEN, 2),
        "client to upstream: {} bytes",
        got.len()
    );
}

/// A record that does not decrypt in the middle of a relay: the client gets the alert
/// (`bad_record_mac`), the upstream a FIN, and the pair is closed.
fn a_corrupt_record_while_relaying_gets_an_alert_and_the_upstream_a_fin(io: Io) {
    let dir = scratch("proxy-corrupt");
    let cert = cert(&dir, "server", &["localhost"]);
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    let upstream = raw_upstream(1, move |mut stream, head| {
        stream.write_all(&switching_protocols(&head)).unwrap();
        let _ = closed_tx.send(read_to_close(&mut stream, Vec::new()));
    });
    let upstream = upstream.to_string();
    let server = serve(io, &cert, &["--after", "proxy", "--upstream", &upstream]);
    let mut tls = handshake(tls_addr(&server), default_client(&cert), "localhost").unwrap();
    tls.write_all(&upgrade_request("/", &[])).unwrap();
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    // An application-data record of the right shape whose tag cannot verify.
    let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    forged.extend_from_slice(&[0xA5; 0x20]);
    tls.sock.write_all(&forged).unwrap();
    let mut rest = Vec::new();
    let error = tls
        .read_to_end(&mut rest)
        .expect_err("an alert, not a clean end");
    let alert = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    assert_eq!(
        alert,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadRecordMac
        )),
        "{error}"
    );
    closed_rx
        .recv_timeout(DEADLINE)
        .expect("the upstream got a FIN");
}

/// `count` TLS clients that connect and send their ClientHello while the server is stopped
/// (SIGSTOP: the kernel completes their connections and queues their bytes), then `then`
/// for each; the server goes on after `aged` more (the kernel's clock runs meanwhile: the
/// clients' age is what the test sets, whatever the machine's speed).
fn clients_queued_while_stopped(
    server: &Server,
    cert: &Cert,
    count: usize,
    then: impl Fn(&TcpStream),
    aged: Duration,
) -> Vec<TcpStream> {
    server.signal(libc::SIGSTOP);
    // The signal is delivered, not yet acted on, when kill(2) returns: wait until every
    // thread is stopped.
    let tasks = format!("/proc/{}/task", server.pid());
    common::wait_until("the server stopped", || {
        std::fs::read_dir(&tasks).unwrap().all(|task| {
            let stat = std::fs::read_to_string(task.unwrap().path().join("stat"));
            let stat = stat.unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            state.starts_with('T') || state.starts_with('t')
        })
    });
    let clients: Vec<TcpStream> = (0..count)
        .map(|_| {
            let mut tcp = TcpStream::connect(tls_addr(server)).unwrap();
            tcp.set_read_timeout(Some(DEADLINE)).unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut conn = rustls::ClientConnection::new(default_client(cert), name).unwrap();
            let mut hello = Vec::new();
            conn.write_tls(&mut hello).unwrap();
            tcp.write_all(&hello).unwrap();
            then(&tcp);
            tcp
        })
        .collect();
    std::thread::sleep(aged);
    server.signal(libc::SIGCONT);
    clients
}

/// What a shed client sees: its connection ends (a reset) without a byte of ServerHello.
fn ended_unanswered(mut tcp: TcpStream) {
    let mut buffer = [0u8; 64];
    let read = tcp.read(&mut buffer);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "expected no answer, got {read:?}"
    );
}

/// Clients that gave up (FIN after their ClientHello) while queued are shed before any
/// work: no key exchange is spent on them, whatever their age.
fn a_client_that_left_before_its_turn_costs_no_key_exchange(io: Io) {
    let dir = scratch("left");
    let cert = cert(&dir, "server", &["localhost"]);
    let server = serve(io, &cert, &["--metrics", "127.0.0.1:0", "--threads", "1"]);
    let leave = |tcp: &TcpStream| tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let gone = clients_queued_while_stopped(&server, &cert, 20, leave, Duration::ZERO);
    server.wait_for_metric("wsedge_shed_before_work_total", |n| n >= 20.0);
    for tcp in gone {
        ended_unanswered(tcp);
    }
    let metrics = server.metrics_addr();
    assert_eq!(
        common::metric_sum(&metrics, "wsedge_tls_handshakes_total"),
        0.0
    );
    assert_eq!(
        common::metric_sum(&metrics, "wsedge_tls_handshakes_wasted_total"),
        0.0
    );
    // The server goes on serving.
    handshake(tls_addr(&server), default_client(&cert), "localhost").unwrap();
}

/// `--client-patience`: clients that have waited so long that their handshake would end
/// past it are reset before their key exchange; younger ones are served (a fresh client,
/// read well within its 3 s however slow the build).
fn a_client_past_its_patience_is_reset_before_its_key_exchange(io: Io) {
    let dir = scratch("patience");
    let cert = cert(&dir, "server", &["localhost"]);
    let args = [
        "--metrics",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--client-patience",
        "3s",
    ];
    let server = serve(io, &cert, &args);
    let aged = Duration::from_millis(3500);
    let waited = clients_queued_while_stopped(&server, &cert, 10, |_| {}, aged);
    server.wait_for_metric("wsedge_shed_before_work_total", |n| n >= 10.0);
    for tcp in waited {
        ended_unanswered(tcp);
    }
    let metrics = server.metrics_addr();
    assert_eq!(
        common::metric_sum(&metrics, "wsedge_tls_handshakes_total"),
        0.0
    );
    handshake(tls_addr(&server), default_client(&cert), "localhost").unwrap();
    server.wait_for_metric("wsedge_tls_handshakes_total", |n| n >= 1.0);
}

on_both_backends!(
    a_client_that_left_before_its_turn_costs_no_key_exchange,
    a_client_past_its_patience_is_reset_before_its_key_exchange,
    an_oversized_client_hello_in_tiny_records_gets_an_alert_at_the_bound,
    proxy_mode_relays_a_tls_client_to_a_plaintext_upstream,
    the_upstream_of_a_tls_client_sees_x_forwarded_proto_https,
    bulk_bytes_cross_a_tls_relay_whole_and_each_end_is_passed_on,
    a_corrupt_record_while_relaying_gets_an_alert_and_the_upstream_a_fin,
    tungstenite_echoes_and_closes_with_a_code_over_tls,
    curl_upgrades_over_tls_with_the_rfc_sample_key,
    close_mode_ends_with_close_notify,
    wsedge_check_upgrades_over_tls,
    plain_http_on_a_tls_port_gets_a_plaintext_400,
    a_client_offering_only_h2_gets_no_application_protocol,
    tls_versions_limits_the_versions_offered,
    tls_groups_limits_the_key_exchange,
    the_hybrid_post_quantum_group_is_negotiated,
    sighup_reloads_during_a_storm_fail_no_handshake,
    handshakes_are_counted_by_version_and_resumption,
    sighup_reloads_certificates_for_new_connections_only,
    sni_chooses_the_certificate_and_unknown_names_get_the_first,
    a_stall_in_the_middle_of_the_client_hello_is_cut_at_the_handshake_timeout,
    over_the_limit_a_tls_client_is_refused_before_any_key_exchange,
);

fn wsedge(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(args)
        .output()
        .expect("run wsedge");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn tls_startup_errors_name_the_flag_and_the_file() {
    let dir = scratch("startup");
    let good = cert(&dir, "good", &["localhost"]);
    let other = cert(&dir, "other", &["localhost"]);
    let missing = dir.join("missing.pem");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--listen-tls", "127.0.0.1:0"],
            "--listen-tls needs --tls-cert and --tls-key in pairs",
        ),
        (
            &[
                "--tls-cert",
                good.cert.to_str().unwrap(),
                "--tls-key",
                good.key.to_str().unwrap(),
            ],
            "--tls-cert and --tls-key are only used with --listen-tls",
        ),
        (
            &[
                "--listen-tls",
                "127.0.0.1:0",
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                good.key.to_str().unwrap(),
            ],
            "--tls-cert",
        ),
        (
            &[
                "--listen-tls",
                "127.0.0.1:0",
                "--tls-cert",
                good.cert.to_str().unwrap(),
                "--tls-key",
                other.key.to_str().unwrap(),
            ],
            "does not match",
        ),
        (
            &["--listen-tls", "127.0.0.1:0", "--tls-versions", "1.1"],
            "--tls-versions",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let (code, stderr) = wsedge(&all);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let (code, stderr) = wsedge(&["serve", "--listen", "127.0.0.1:0", "--tls-groups", "x448"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--tls-groups"), "{stderr}");
}

#[test]
fn the_hybrid_group_alone_with_the_ring_provider_is_a_startup_error() {
    let dir = scratch("pq-ring");
    let cert = cert(&dir, "server", &["localhost"]);
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args([
            "serve",
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-groups",
            "x25519mlkem768",
        ])
        .arg("--tls-cert")
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&cert.key)
        .env("WSEDGE_TLS_PROVIDER", "ring")
        .output()
        .expect("run wsedge");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--tls-groups") && stderr.contains("x25519mlkem768"),
        "{stderr}"
    );
}

#[test]
fn tls_keys_in_a_config_file_work_like_the_flags() {
    let dir = scratch("toml");
    let cert = cert(&dir, "server", &["localhost"]);
    let file = dir.join("wsedge.toml");
    std::fs::write(
        &file,
        format!(
            "listen-tls = [\"127.0.0.1:0\"]\ntls-cert = [{:?}]\ntls-key = [{:?}]\n\
             tls-versions = \"1.3\"\ntls-groups = \"x25519\"\n",
            cert.cert.to_str().unwrap(),
            cert.key.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = Server::start(Io::Epoll, &["--config", file.to_str().unwrap()]);
    let tls = handshake(tls_addr(&server), default_client(&cert), "localhost").unwrap();
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let group = tls.conn.negotiated_key_exchange_group().map(|g| g.name());
    assert_eq!(group, Some(rustls::NamedGroup::X25519));
}
