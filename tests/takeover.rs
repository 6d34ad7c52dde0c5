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
    let asked = [(old.addr, false)];
    let received = wsedge::takeover::receive(&path, &asked)
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
    let asked = [(server.addr, false)];
    let offered = wsedge::takeover::receive(Path::new(path_text), &asked).expect("the offer");
    assert!(offered.is_some_and(|r| r.listeners.len() == 2));
}

/// Another user's process: it cannot even connect (the file is `0600`), and if the file is
/// opened to all, it is refused by its credentials and gets nothing; the offer goes on.
fn another_user_gets_no_socket_and_the_offer_goes_on(io: Io) {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = scratch("takeover-uid");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("wsedge.sock");
    let path_text = path.to_str().unwrap();
    let old = Server::start(io, &takeover_args(path_text, "2", "127.0.0.1:0"));
    old.wait_for_log(OFFERING);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket file is the owner's only");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Running as another user needs root; the mode above is checked anyway.
        return eprintln!("not root: the connector of another uid is not tried");
    }
    // As nobody: connect, then print how many descriptors came with the first message.
    let probe = format!(
        "import array, socket\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
         s.settimeout(10)\n\
         try:\n    s.connect({path_text:?})\n\
         except PermissionError:\n    print('denied'); raise SystemExit\n\
         msg, anc, flags, addr = s.recvmsg(4096, socket.CMSG_SPACE(64 * 4))\n\
         print('fds', sum(len(data) // 4 for _, _, data in anc), msg)\n"
    );
    let as_nobody = || {
        let output = std::process::Command::new("python3")
            .args(["-c", &probe])
            .uid(65534)
            .gid(65534)
            .output()
            .expect("python3 as nobody");
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    };
    assert_eq!(as_nobody().trim(), "denied");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let seen = as_nobody();
    assert!(seen.starts_with("fds 0 b''"), "{seen}");
    old.wait_for_log("refused a connection: the process at the other end runs as uid 65534");
    // The offer is still there for the real successor.
    let next = Server::start(io, &takeover_args(path_text, "2", &old.addr.to_string()));
    next.wait_for_log("took over 2 listening sockets");
}

/// A connector that says nothing holds up no successor: the real one takes over while it is
/// still connected.
fn an_idle_connector_does_not_hold_up_the_successor(io: Io) {
    let dir = scratch("takeover-idle");
    let path = dir.join("wsedge.sock");
    let path_text = path.to_str().unwrap();
    let mut old = Server::start(io, &takeover_args(path_text, "2", "127.0.0.1:0"));
    old.wait_for_log(OFFERING);
    let idle = seqpacket_connect(&path);
    let next = Server::start(io, &takeover_args(path_text, "2", &old.addr.to_string()));
    next.wait_for_log("took over 2 listening sockets");
    assert!(old.wait_exit().success(), "{}", old.log());
    drop(hold(next.addr, 1));
    drop(idle);
}

fn seqpacket_connect(path: &Path) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    fd
}

/// A fake old process at `path`: sends `greeting`, then each of `sockets` with its label,
/// one message each, and keeps the connection until the test ends.
fn fake_offer(path: &Path, greeting: &str, sockets: Vec<(String, std::os::fd::OwnedFd)>) {
    use nix::sys::socket::{
        accept, bind, listen, sendmsg, socket, AddressFamily, Backlog, ControlMessage, MsgFlags,
        SockFlag, SockType, UnixAddr,
    };
    use std::os::fd::AsRawFd;
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(listener.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    listen(&listener, Backlog::new(1).unwrap()).unwrap();
    let greeting = greeting.to_owned();
    std::thread::spawn(move || {
        let channel = accept(&listener).unwrap();
        let send = |text: &str, fds: &[i32]| {
            let payload = [std::io::IoSlice::new(text.as_bytes())];
            let rights = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
            let _ = sendmsg::<()>(
                channel.as_raw_fd(),
                &payload,
                cmsgs,
                MsgFlags::empty(),
                None,
            );
        };
        send(&greeting, &[]);
        for (label, fd) in &sockets {
            send(&format!("{label}\n"), &[fd.as_raw_fd()]);
        }
        std::thread::sleep(DEADLINE);
    });
}

/// A count no process offers is refused before anything is sized by it.
#[test]
fn a_hostile_count_is_refused() {
    let dir = scratch("takeover-count");
    let path = dir.join("fake.sock");
    fake_offer(&path, "wsedge-takeover 1 18446744073709551615", Vec::new());
    let error = wsedge::takeover::receive(&path, &[])
        .err()
        .expect("refused");
    assert!(error.to_string().contains("at most 4096"), "{error}");
}

/// The successor's own flags decide: a socket labelled `plain` on an address it serves with
/// TLS is TLS; one on an address it was not asked for is not taken; a descriptor that is not
/// a listening TCP socket ends the hand-over.
#[test]
fn labels_are_not_trusted_and_every_socket_is_checked() {
    let dir = scratch("takeover-labels");
    let path = dir.join("fake.sock");
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_addr = tls_port.local_addr().unwrap();
    fake_offer(
        &path,
        "wsedge-takeover 1 2",
        vec![
            (format!("plain {tls_addr}"), tls_port.into()),
            ("plain elsewhere".into(), other.into()),
        ],
    );
    let received = wsedge::takeover::receive(&path, &[(tls_addr, true)])
        .expect("a good offer")
        .expect("someone offering");
    assert_eq!(received.listeners.len(), 1, "only the address asked for");
    assert!(
        received.listeners[0].tls,
        "TLS, as this process's flags say"
    );

    let path = dir.join("fake-udp.sock");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_addr = udp.local_addr().unwrap();
    fake_offer(
        &path,
        "wsedge-takeover 1 1",
        vec![("plain udp".into(), udp.into())],
    );
    let error = wsedge::takeover::receive(&path, &[(udp_addr, false)])
        .err()
        .expect("refused");
    assert!(
        error.to_string().contains("not a listening TCP socket"),
        "{error}"
    );
}

on_both_backends!(
    another_user_gets_no_socket_and_the_offer_goes_on,
    an_idle_connector_does_not_hold_up_the_successor,
    a_storm_crosses_five_hand_overs_with_nothing_refused_or_reset,
    a_successor_that_dies_before_it_is_ready_leaves_the_old_one_serving,
    with_nobody_at_the_path_it_binds_and_offers,
);
