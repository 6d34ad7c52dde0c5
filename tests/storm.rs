//! Many clients at once, and running out of descriptors.

#[macro_use]
mod common;

use common::Io;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{read_head, upgrade_request, Server, ACCEPT, DEADLINE};

fn a_thousand_concurrent_clients_on_two_threads_all_upgrade(io: Io) {
    let mut server = Server::start(io, &["--threads", "2"]);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let request = upgrade_request("/", &[]);
                let mut streams: Vec<TcpStream> = (0..250)
                    .map(|_| {
                        let s = TcpStream::connect(addr).unwrap();
                        s.set_read_timeout(Some(DEADLINE)).unwrap();
                        s
                    })
                    .collect();
                for s in &mut streams {
                    s.write_all(&request).unwrap();
                }
                for s in &mut streams {
                    let head = read_head(s);
                    assert_eq!(head.status, 101);
                    assert_eq!(head.header("Sec-WebSocket-Accept"), Some(ACCEPT));
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

fn out_of_descriptors_pauses_accept_without_spinning_and_loses_no_client(io: Io) {
    // 64 descriptors: room for about 50 clients; 80 connect.
    let server = Server::start_with(io, &["--threads", "1"], common::fd_limit(64));
    let request = upgrade_request("/", &[]);
    let mut streams: Vec<TcpStream> = (0..80).map(|_| server.connect()).collect();
    for stream in &mut streams {
        stream.write_all(&request).unwrap();
    }
    server.wait_for_log("resources exhausted");

    // While stuck at the limit, the server must idle, not spin on EMFILE.
    let cpu_before = server.cpu_time();
    let wall = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let cpu = server.cpu_time() - cpu_before;
    assert!(
        cpu < wall.elapsed() / 4,
        "server burned {cpu:?} of CPU in {:?} while out of fds",
        wall.elapsed()
    );

    // Sort the clients into answered and still queued, holding on to all of them.
    let (served, mut waiting) = common::split_answered(streams);
    assert!(
        !served.is_empty() && !waiting.is_empty(),
        "{} served, {} waiting",
        served.len(),
        waiting.len()
    );
    // Served clients leave, freeing descriptors: every queued client must now be upgraded.
    drop(served);
    for stream in &mut waiting {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        assert_eq!(read_head(stream).status, 101);
    }
}

fn out_of_descriptors_lingering_refusals_are_reclaimed_for_queued_clients(io: Io) {
    // One connection allowed, 32 descriptors: each refused client is answered 503 and
    // lingers, holding a descriptor, until accepting runs out of them. The lingering ones
    // are then closed early for the clients queued behind them (nginx's reusable
    // connections), instead of every client waiting out the lingers ahead of it.
    let mut server = Server::start_with(
        io,
        &["--threads", "1", "--max-connections", "1"],
        common::fd_limit(32),
    );
    let request = upgrade_request("/", &[]);
    let mut first = server.connect();
    first.write_all(&request).unwrap();
    assert_eq!(read_head(&mut first).status, 101);
    // The refused clients keep their sockets open: only the edge can end their lingers.
    let mut refused: Vec<TcpStream> = (0..60).map(|_| server.connect()).collect();
    for stream in &mut refused {
        stream.write_all(&request).unwrap();
    }
    for stream in &mut refused {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let head = read_head(stream);
        assert_eq!(head.status, 503, "{}", server.log());
        assert!(head.header("Retry-After").is_some());
    }
    drop((first, refused));
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success(), "{}", server.log());
    server.wait_for_log("stopped:");
    let log = server.log();
    let reclaimed = common::stop_total(&log, "lingering_reclaimed");
    assert!(reclaimed > 0, "no linger was cut short: {log}");
    assert_eq!(
        common::stop_total(&log, "admission_rejections"),
        60,
        "{log}"
    );
}

/// A ring of 8 submission and 16 completion entries, far fewer than the operations a
/// thousand clients keep in flight: the submission queue fills (flushed mid-turn) and the
/// kernel refuses submissions while completions wait (`EBUSY`). Neither may end the
/// reactor, lose a connection or its answer.
#[test]
fn uring_a_full_ring_delays_submissions_and_loses_nothing() {
    let mut server = Server::start_with(Io::Uring, &["--threads", "1"], |command| {
        command.env(wsedge::reactor::uring::RING_ENTRIES_ENV, "8");
    });
    let request = upgrade_request("/", &[]);
    let mut streams: Vec<TcpStream> = (0..1000).map(|_| server.connect()).collect();
    for stream in &mut streams {
        stream.write_all(&request).unwrap();
        stream
            .write_all(&common::client_frame(true, 1, b"ping"))
            .unwrap();
    }
    for stream in &mut streams {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let head = read_head(stream);
        assert_eq!(head.status, 101, "{}", server.log());
    }
    drop(streams);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success(), "{}", server.log());
    server.wait_for_log("upgraded=1000 ");
}

on_both_backends!(
    a_thousand_concurrent_clients_on_two_threads_all_upgrade,
    out_of_descriptors_pauses_accept_without_spinning_and_loses_no_client,
    out_of_descriptors_lingering_refusals_are_reclaimed_for_queued_clients,
);
