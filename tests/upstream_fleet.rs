//! Proxy mode over several app servers: `--upstream-balance` and `--upstream-max-connections`.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::DEADLINE;
use common::{exchange, read_request_head, switching_protocols, upgrade_request, Io, Server};

/// An app server that upgrades every connection, holds it until the client goes, and counts
/// the connections it holds now.
struct CountingUpstream {
    addr: SocketAddr,
    held: Arc<AtomicUsize>,
}

impl CountingUpstream {
    fn start() -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&held);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    let mut stream = stream;
                    stream.set_read_timeout(Some(DEADLINE * 4)).unwrap();
                    let head = read_request_head(&mut stream);
                    if stream.write_all(&switching_protocols(&head)).is_err() {
                        return;
                    }
                    counter.fetch_add(1, Relaxed);
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest);
                    counter.fetch_sub(1, Relaxed);
                });
            }
        });
        CountingUpstream { addr, held }
    }

    fn held(&self) -> usize {
        self.held.load(Relaxed)
    }
}

fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn upgraded(server: &Server) -> TcpStream {
    let (head, stream) = exchange(server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    stream
}

/// Two upstreams of two connections each: four clients are relayed, two to each, and the
/// fifth gets 503 with a Retry-After; once one goes, a new client is relayed again.
fn over_the_per_upstream_limit_the_next_is_tried_and_all_full_is_503(io: Io) {
    let (a, b) = (CountingUpstream::start(), CountingUpstream::start());
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let server = Server::start(
        io,
        &[
            "--after",
            "proxy",
            "--upstream",
            &a_addr,
            "--upstream",
            &b_addr,
            "--upstream-max-connections",
            "2",
            "--threads",
            "1",
        ],
    );
    let mut held: Vec<TcpStream> = (0..4).map(|_| upgraded(&server)).collect();
    wait_until("two on each", || a.held() == 2 && b.held() == 2);
    let (head, _) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 503);
    assert!(head.header("Retry-After").is_some(), "a Retry-After");
    held.pop();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match exchange(&server, &upgrade_request("/", &[])).0.status {
            101 => break,
            503 => {
                assert!(Instant::now() < deadline, "the freed place never came back");
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("{other}"),
        }
    }
}

/// Least-connections after an upstream joins (a reload): the next clients all go to the
/// new, empty one, where round-robin would have put only one in three there.
fn least_connections_fills_an_upstream_added_late(io: Io) {
    let upstreams: Vec<CountingUpstream> = (0..3).map(|_| CountingUpstream::start()).collect();
    let list = |n: usize| {
        let quoted: Vec<String> = upstreams[..n]
            .iter()
            .map(|u| format!("\"{}\"", u.addr))
            .collect();
        format!(
            "after = \"proxy\"\nupstream-balance = \"least-connections\"\nupstream = [{}]\n",
            quoted.join(", ")
        )
    };
    let path =
        std::env::temp_dir().join(format!("wsedge-fleet-{}-{io:?}.toml", std::process::id()));
    std::fs::write(&path, list(2)).unwrap();
    let config = path.to_string_lossy().into_owned();
    let server = Server::start(io, &["--config", &config, "--threads", "1"]);
    let mut held: Vec<TcpStream> = (0..4).map(|_| upgraded(&server)).collect();
    wait_until("two on each of the first two", || {
        upstreams[0].held() == 2 && upstreams[1].held() == 2
    });
    std::fs::write(&path, list(3)).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP: configuration reloaded");
    // The reactor takes the new list at its next turn: the first connection after the
    // reload wakes it.
    held.extend((0..2).map(|_| upgraded(&server)));
    wait_until("both new clients on the new upstream", || {
        upstreams[2].held() == 2
    });
    assert_eq!((upstreams[0].held(), upstreams[1].held()), (2, 2));
    let _ = std::fs::remove_file(path);
}

on_both_backends!(
    over_the_per_upstream_limit_the_next_is_tried_and_all_full_is_503,
    least_connections_fills_an_upstream_added_late,
);
