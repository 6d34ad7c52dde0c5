//! `--takeover PATH`: a running wsedge hands its listening sockets to its successor, which
//! serves them before the old one stops; under a storm, no client is refused or reset.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{read_head, scratch, upgrade_request, Io, Server, DEADLINE};

/// What the storm's clients saw.
#[derive(Debug, Default)]
struct Tally {
    upgraded: AtomicU64,
    /// 503: the limits explain it (none are set here, so any is a failure too).
    unavailable: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    other: Mutex<Vec<String>>,
}

/// Clients upgrading in a loop (connect, request, 101, reset) until told to stop.
struct Storm {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<JoinHandle<()>>,
}

impl Storm {
    fn start(addr: SocketAddr, clients: usize) -> Storm {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let threads = (0..clients)
            .map(|_| {
                let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
                std::thread::spawn(move || {
                    // Bounded: stops when told, or after this many.
                    for _ in 0..100_000 {
                        if stop.load(Relaxed) {
                            return;
                        }
                        one_upgrade(addr, &tally);
                    }
                })
            })
            .collect();
        Storm {
            stop,
            tally,
            threads,
        }
    }

    fn upgraded(&self) -> u64 {
        self.tally.upgraded.load(Relaxed)
    }

    /// Waits until `more` upgrades happened since `since`.
    fn wait_for_progress(&self, since: u64, more: u64) {
        let deadline = Instant::now() + DEADLINE;
        while self.upgraded() < since + more {
            assert!(
                Instant::now() < deadline,
                "the storm stalled: {:?}",
                self.tally
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        self.tally
    }
}

fn one_upgrade(addr: SocketAddr, tally: &Tally) {
    let mut stream = match TcpStream::connect_timeout(&addr, DEADLINE) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tally.refused.fetch_add(1, Relaxed);
            return;
        }
        Err(e) => return tally.other.lock().unwrap().push(format!("connect: {e}")),
    };
    // A reset at the end: no TIME_WAIT left behind by thousands of clients.
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    if let Err(e) = stream.write_all(&upgrade_request("/", &[])) {
        return tally.other.lock().unwrap().push(format!("write: {e}"));
    }
    let mut head = Vec::new();
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) => {
                return tally
                    .other
                    .lock()
                    .unwrap()
                    .push("closed without an answer".into())
            }
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                tally.reset.fetch_add(1, Relaxed);
                return;
            }
            Err(e) => return tally.other.lock().unwrap().push(format!("read: {e}")),
        }
    }
    match &head[..12] {
        b"HTTP/1.1 101" => tally.upgraded.fetch_add(1, Relaxed),
        b"HTTP/1.1 503" => tally.unavailable.fetch_add(1, Relaxed),
        other => {
            let status = String::from_utf8_lossy(other).into_owned();
            return tally.other.lock().unwrap().push(status);
        }
    };
}

/// `count` upgraded connections, held open.
fn hold(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            stream.write_all(&upgrade_request("/", &[])).unwrap();
            assert_eq!(read_head(&mut stream).status, 101);
            stream
        })
        .collect()
}

/// Reads a held connection's Close frame and returns its code.
fn close_code(stream: &mut TcpStream) -> u16 {
    let mut frame = [0u8; 4];
    stream.read_exact(&mut frame).expect("a Close frame");
    assert_eq!(frame[0], 0x88, "not a Close frame: {frame:?}");
    u16::from_be_bytes([frame[2], frame[3]])
}

/// What a server logs once its sockets can be taken over.
const OFFERING: &str = "offering the listening sockets";

fn takeover_args<'a>(path: &'a str, threads: &'a str, listen: &'a str) -> Vec<&'a str> {
    vec![
        "--takeover",
        path,
        "--after",
        "echo",
        "--drain-secs",
        "1",
        "--threads",
        threads,
        "--listen",
        listen,
    ]
}

/// Five hand-overs under a storm of 64 clients, each to a process with another number of
/// reactors: every attempt gets its 101, none is refused or reset; the connections each old
/// process held are closed with 1012 within its drain window, and it exits 0.
fn a_storm_crosses_five_hand_overs_with_nothing_refused_or_reset(io: Io) {
    let dir = scratch("takeover");
    let path = dir.join("wsedge.sock");
    let path = path.to_str().unwrap();
    let mut current = Server::start(io, &takeover_args(path, "2", "127.0.0.1:0"));
    current.wait_for_log(OFFERING);
    let addr = current.addr;
    let listen = addr.to_string();
    let storm = Storm::start(addr, 64);
    for threads in ["1", "3", "2", "1", "2"] {
        storm.wait_for_progress(storm.upgraded(), 200);
        let mut held = hold(addr, 4);
        let next = Server::start(io, &takeover_args(path, threads, &listen));
        next.wait_for_log("took over");
        next.wait_for_log(OFFERING);
        current.wait_for_log("handed over");
        for stream in &mut held {
            assert_eq!(close_code(stream), 1012);
        }
        assert!(current.wait_exit().success(), "{}", current.log());
        current = next;
        storm.wait_for_progress(storm.upgraded(), 200);
    }
    let tally = storm.finish();
    let other = tally.other.lock().unwrap();
    let (refused, reset) = (tally.refused.load(Relaxed), tally.reset.load(Relaxed));
    let unavailable = tally.unavailable.load(Relaxed);
    assert!(
        refused == 0 && reset == 0 && unavailable == 0 && other.is_empty(),
        "refused {refused}, reset {reset}, 503 {unavailable}, other {:?} (of {} upgraded)",
        &other[..other.len().min(5)],
        tally.upgraded.load(Relaxed)
    );
    current.signal(libc::SIGTERM);
    assert!(current.wait_exit().success());
}

/// A process that receives the sockets and dies before it is ready leaves the old one
/// serving, and offering: a real successor takes over afterwards.
fn a_successor_that_dies_before_it_is_ready_leaves_the_old_one_serving(io: Io) {
    let dir = scratch("takeover-dies");
    let path = dir.join("wsedge.sock");
    let path_text = path.to_str().unwrap();
    let mut old = Server::start(io, &takeover_args(path_text, "2", "127.0.0.1:0"));
    old.wait_for_log(OFFERING);
    let received = wsedge::takeover::receive(&path)
        .expect("the offer")
        .expect("someone offering");
    assert_eq!(received.listeners.len(), 2, "one socket per reactor");
    drop(received);
    old.wait_for_log("did not take over");
    drop(hold(old.addr, 1));
    let listen = old.addr.to_string();
    let next = Server::start(io, &takeover_args(path_text, "2", &listen));
    next.wait_for_log("took over 2 listening sockets");
    assert!(old.wait_exit().success());
    drop(hold(next.addr, 1));
}

/// With nothing at the path (or a socket file no process listens on), wsedge binds as usual
/// and offers its sockets there.
fn with_nobody_at_the_path_it_binds_and_offers(io: Io) {
    let dir = scratch("takeover-nobody");
    let path = dir.join("wsedge.sock");
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    let path_text = path.to_str().unwrap();
    let server = Server::start(io, &takeover_args(path_text, "2", "127.0.0.1:0"));
    server.wait_for_log(OFFERING);
    assert!(!server.log().contains("took over"));
    drop(hold(server.addr, 1));
    let offered = wsedge::takeover::receive(Path::new(path_text)).expect("the offer");
    assert!(offered.is_some_and(|r| r.listeners.len() == 2));
}

on_both_backends!(
    a_storm_crosses_five_hand_overs_with_nothing_refused_or_reset,
    a_successor_that_dies_before_it_is_ready_leaves_the_old_one_serving,
    with_nobody_at_the_path_it_binds_and_offers,
);
