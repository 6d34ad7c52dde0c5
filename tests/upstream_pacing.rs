//! Proxy mode paces the app servers: `--upstream-max-pending` bounds the upgrades an
//! upstream has unanswered, clients past it wait at the edge (`--upstream-queue-ms`), a
//! client that leaves while it waits costs the upstream nothing, and a wait that runs out
//! is a 503 with a `Retry-After` in the configured range.
//!
//! The app here is a raw upstream that answers only when the test releases an answer, and
//! counts what reaches it: every check waits on events (the app's count, the edge's gauges),
//! never on time.

#[macro_use]
mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use common::{read_head, read_request_head, stop_total, switching_protocols, upgrade_request};
use common::{wait_until, Io, Server, DEADLINE};

/// An app server that holds every upgrade until the test releases an answer.
struct HeldApp {
    addr: SocketAddr,
    /// Requests that reached it.
    seen: Arc<AtomicUsize>,
    /// Unanswered now, and the most ever at once.
    pending: Arc<AtomicUsize>,
    most_pending: Arc<AtomicUsize>,
    /// Answers the test has released and not yet given.
    released: Arc<(Mutex<usize>, Condvar)>,
}

impl HeldApp {
    fn start() -> HeldApp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let app = HeldApp {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            pending: Arc::default(),
            most_pending: Arc::default(),
            released: Arc::default(),
        };
        let (seen, pending, most) = (
            Arc::clone(&app.seen),
            Arc::clone(&app.pending),
            Arc::clone(&app.most_pending),
        );
        let released = Arc::clone(&app.released);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let (seen, pending, most) = (seen.clone(), pending.clone(), most.clone());
                let released = Arc::clone(&released);
                thread::spawn(move || {
                    stream.set_read_timeout(Some(DEADLINE * 4)).unwrap();
                    let head = read_request_head(&mut stream);
                    if head.is_empty() {
                        return;
                    }
                    seen.fetch_add(1, SeqCst);
                    let now = pending.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(now, SeqCst);
                    let (count, turn) = &*released;
                    let mut left = count.lock().unwrap();
                    while *left == 0 {
                        left = turn.wait(left).unwrap();
                    }
                    *left -= 1;
                    drop(left);
                    pending.fetch_sub(1, SeqCst);
                    let _ = stream.write_all(&switching_protocols(&head));
                    // Held until the edge closes it.
                    let mut sink = [0u8; 256];
                    while matches!(std::io::Read::read(&mut stream, &mut sink), Ok(n) if n > 0) {}
                });
            }
        });
        app
    }

    fn release(&self, answers: usize) {
        let (count, turn) = &*self.released;
        *count.lock().unwrap() += answers;
        turn.notify_all();
    }
}

fn edge(io: Io, app: &HeldApp, extra: &[&str]) -> Server {
    let upstream = app.addr.to_string();
    let mut args = vec![
        "--after",
        "proxy",
        "--upstream",
        upstream.as_str(),
        "--threads",
        "1",
        "--metrics",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Server::start(io, &args)
}

fn send_request(server: &Server) -> TcpStream {
    let mut stream = server.connect();
    stream.write_all(&upgrade_request("/", &[])).unwrap();
    stream
}

fn never_more_upgrades_pending_at_an_upstream_than_its_limit(io: Io) {
    let app = HeldApp::start();
    let server = edge(io, &app, &["--upstream-max-pending", "3"]);
    let mut clients: Vec<TcpStream> = (0..20).map(|_| send_request(&server)).collect();
    wait_until("3 upgrades pending at the app", || {
        app.pending.load(SeqCst) == 3
    });
    server.wait_for_metric("wsedge_upstream_waiting_clients", |n| n == 17.0);
    assert_eq!(app.seen.load(SeqCst), 3, "only 3 were forwarded");
    assert_eq!(
        common::metric_sum(&server.metrics_addr(), "wsedge_upstream_pending_upgrades"),
        3.0
    );
    assert_eq!(
        common::metric_sum(&server.metrics_addr(), "wsedge_upstream_pending_limit"),
        3.0
    );
    app.release(20);
    for client in &mut clients {
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        assert_eq!(read_head(client).status, 101);
    }
    assert_eq!(app.seen.load(SeqCst), 20);
    assert_eq!(app.most_pending.load(SeqCst), 3);
    drop(clients);
    server.signal(libc::SIGTERM);
    let mut server = server;
    assert!(server.wait_exit().success());
    assert_eq!(stop_total(&server.log(), "upstream_queued"), 17);
    assert_eq!(stop_total(&server.log(), "upstream_left_waiting"), 0);
}

fn a_client_that_leaves_while_it_waits_is_never_forwarded(io: Io) {
    let app = HeldApp::start();
    let server = edge(io, &app, &["--upstream-max-pending", "1"]);
    let mut first = send_request(&server);
    wait_until("the first upgrade at the app", || {
        app.seen.load(SeqCst) == 1
    });
    let leaving = send_request(&server);
    let mut staying = send_request(&server);
    server.wait_for_metric("wsedge_upstream_waiting_clients", |n| n == 2.0);
    // The client gives up: a FIN, as a browser's timeout or a closed tab sends.
    drop(leaving);
    app.release(2);
    for client in [&mut first, &mut staying] {
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        assert_eq!(read_head(client).status, 101);
    }
    server.wait_for_metric("wsedge_upstream_left_waiting_total", |n| n == 1.0);
    assert_eq!(
        app.seen.load(SeqCst),
        2,
        "the client that left reached the app"
    );
    assert_eq!(
        common::metric_sum(
            &server.metrics_addr(),
            "wsedge_upstream_abandoned_pending_total"
        ),
        0.0
    );
}

fn a_client_past_its_wait_gets_503_with_a_retry_after_in_range(io: Io) {
    let app = HeldApp::start();
    let server = edge(
        io,
        &app,
        &[
            "--upstream-max-pending",
            "1",
            "--upstream-queue-ms",
            "200",
            "--retry-after-secs",
            "2-4",
        ],
    );
    let _held = send_request(&server);
    wait_until("the first upgrade at the app", || {
        app.seen.load(SeqCst) == 1
    });
    for _ in 0..3 {
        let mut late = send_request(&server);
        late.set_read_timeout(Some(DEADLINE)).unwrap();
        let head = read_head(&mut late);
        assert_eq!(head.status, 503);
        let retry: u32 = head.header("Retry-After").unwrap().parse().unwrap();
        assert!((2..=4).contains(&retry), "Retry-After {retry}");
    }
    assert_eq!(app.seen.load(SeqCst), 1, "a refused client reached the app");
    server.wait_for_metric("wsedge_upstream_shed_total", |n| n == 3.0);
    // Without a wait, the refusal is at once: no client waits.
    let app = HeldApp::start();
    let server = edge(
        io,
        &app,
        &["--upstream-max-pending", "1", "--upstream-queue-ms", "0"],
    );
    let _held = send_request(&server);
    wait_until("the first upgrade at the app", || {
        app.seen.load(SeqCst) == 1
    });
    // In proxy mode the Retry-After is paced by default (`auto`): one second per slot of
    // the rate measured, at least 1 and at most 300.
    assert!(
        server.log().contains("retry_after=auto"),
        "{}",
        server.log()
    );
    let mut late = send_request(&server);
    late.set_read_timeout(Some(DEADLINE)).unwrap();
    let head = read_head(&mut late);
    assert_eq!(head.status, 503);
    let retry: u32 = head.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        common::metric_sum(&server.metrics_addr(), "wsedge_upstream_queued_total"),
        0.0
    );
}

/// `wss` clients wait and are paced the same, after their TLS handshake.
fn tls_clients_wait_for_their_turn_too(io: Io) {
    let dir = common::scratch("pacing");
    let cert = common::cert(&dir, "server", &["localhost"]);
    let app = HeldApp::start();
    let upstream = app.addr.to_string();
    let server = Server::start_tls(
        io,
        &cert,
        &[
            "--after",
            "proxy",
            "--upstream",
            &upstream,
            "--threads",
            "1",
            "--upstream-max-pending",
            "2",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let mut clients: Vec<_> = (0..6)
        .map(|_| {
            let tcp = TcpStream::connect(server.tls_addr()).unwrap();
            tcp.set_read_timeout(Some(DEADLINE)).unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let conn = rustls::ClientConnection::new(Arc::clone(&config), name).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(&upgrade_request("/", &[])).unwrap();
            tls.flush().unwrap();
            tls
        })
        .collect();
    wait_until("2 upgrades pending at the app", || {
        app.pending.load(SeqCst) == 2
    });
    server.wait_for_metric("wsedge_upstream_waiting_clients", |n| n == 4.0);
    assert_eq!(app.seen.load(SeqCst), 2);
    app.release(6);
    for client in &mut clients {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            std::io::Read::read_exact(client, &mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
    }
    assert_eq!(app.most_pending.load(SeqCst), 2);
}

on_both_backends!(
    never_more_upgrades_pending_at_an_upstream_than_its_limit,
    a_client_that_leaves_while_it_waits_is_never_forwarded,
    a_client_past_its_wait_gets_503_with_a_retry_after_in_range,
    tls_clients_wait_for_their_turn_too,
);
