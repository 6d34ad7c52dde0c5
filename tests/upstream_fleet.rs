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

/// An app server that upgrades every connection and reports its `X-User-Id`.
fn keyed_upstream(id: usize, seen: std::sync::mpsc::Sender<(String, usize)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                stream.set_read_timeout(Some(DEADLINE)).unwrap();
                let head = read_request_head(&mut stream);
                let text = String::from_utf8_lossy(&head).into_owned();
                let key = text
                    .lines()
                    .find_map(|l| l.strip_prefix("X-User-Id: "))
                    .unwrap_or_default()
                    .to_owned();
                if stream.write_all(&switching_protocols(&head)).is_ok() {
                    let _ = seen.send((key, id));
                }
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
            });
        }
    });
    addr
}

/// Hash by header: 1,000 connections over 100 keys through two reactors, every key always on
/// one upstream; after one of three upstreams is removed (a reload), only its keys move,
/// about a third.
fn hash_by_header_keeps_each_key_on_one_upstream_and_moves_a_third_on_removal(io: Io) {
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|id| keyed_upstream(id, seen_tx.clone()))
        .collect();
    let list = |addrs: &[SocketAddr]| {
        let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "after = \"proxy\"\nupstream-balance = \"hash\"\n\
             upstream-hash-key = \"header:X-User-Id\"\nupstream = [{}]\n",
            quoted.join(", ")
        )
    };
    let path = std::env::temp_dir().join(format!("wsedge-hash-{}-{io:?}.toml", std::process::id()));
    std::fs::write(&path, list(&addrs)).unwrap();
    let config = path.to_string_lossy().into_owned();
    let server = Server::start(io, &["--config", &config, "--threads", "2"]);
    let placement = |connections: usize| {
        let mut placed: std::collections::HashMap<String, usize> = Default::default();
        for n in 0..connections {
            let key = format!("user-{}", n % 100);
            let header = format!("X-User-Id: {key}");
            let (head, _) = exchange(&server, &upgrade_request("/", &[&header]));
            assert_eq!(head.status, 101);
            let (seen, upstream) = seen_rx.recv_timeout(DEADLINE).expect("an upstream saw it");
            assert_eq!(seen, key);
            if let Some(before) = placed.insert(key.clone(), upstream) {
                assert_eq!(before, upstream, "{key} moved between upstreams");
            }
        }
        placed
    };
    let before = placement(1000);
    let used: std::collections::HashSet<usize> = before.values().copied().collect();
    assert_eq!(used.len(), 3, "100 keys use all three upstreams");
    std::fs::write(&path, list(&addrs[..2])).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP: configuration reloaded");
    // Both reactors take the new list at their next turn; a turn per connection is enough
    // once each has seen one.
    let after = placement(300);
    let moved = before
        .iter()
        .filter(|(key, up)| after[*key] != **up)
        .count();
    let on_removed = before.values().filter(|&&up| up == 2).count();
    assert_eq!(moved, on_removed, "only the removed upstream's keys moved");
    assert!((15..=55).contains(&moved), "{moved} of 100 keys moved");
    let _ = std::fs::remove_file(path);
}

on_both_backends!(
    hash_by_header_keeps_each_key_on_one_upstream_and_moves_a_third_on_removal,
    over_the_per_upstream_limit_the_next_is_tried_and_all_full_is_503,
    least_connections_fills_an_upstream_added_late,
);
