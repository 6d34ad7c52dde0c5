//! systemd: socket activation (through Debian's `systemd-socket-activate`, installed by
//! `.ci/run`) and `Type=notify` (`READY=1`, `RELOADING=1`, `STOPPING=1` on a
//! `NOTIFY_SOCKET` the test listens on).

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cert, read_head, scratch, upgrade_request, Io, Server, DEADLINE};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn required() -> bool {
    std::env::var("WSEDGE_REQUIRE_THIRD_PARTY").is_ok_and(|v| v == "1")
}

/// Connects once the activator listens (it binds before starting anything).
fn connect_when_listening(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => {
                stream.set_read_timeout(Some(DEADLINE)).unwrap();
                return stream;
            }
            Err(e) => assert!(Instant::now() < deadline, "{addr}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `systemd-socket-activate` binds a plain and a TLS address (named `ws` and `tls`) and
/// starts wsedge on the first connection: wsedge serves both sockets (sharing each between
/// its two reactors, since they come without SO_REUSEPORT), the first client included.
fn socket_activation_serves_the_passed_sockets(io: Io) {
    let Some(activate) = activator() else {
        return;
    };
    let dir = scratch("activation");
    let cert = cert(&dir, "server", &["localhost"]);
    let (plain, tls) = (free_addr(), free_addr());
    let args = ["--io", io.flag(), "--threads", "2", "--after", "echo"];
    let (_child, log) = activated(activate, &[plain, tls], "ws:tls", &args, &cert);
    let mut first = connect_when_listening(plain);
    first.write_all(&upgrade_request("/", &[])).unwrap();
    let status = read_head(&mut first).status;
    assert_eq!(status, 101, "{}", log.lock().unwrap());
    let wait_for_log = |needle: &str| {
        let deadline = Instant::now() + DEADLINE;
        while !log.lock().unwrap().contains(needle) {
            assert!(Instant::now() < deadline, "{}", log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for_log("socket activation: 2 listening sockets");
    wait_for_log(&format!("wss://{tls}"));
    for _ in 0..20 {
        let mut again = TcpStream::connect(plain).unwrap();
        again.set_read_timeout(Some(DEADLINE)).unwrap();
        again.write_all(&upgrade_request("/", &[])).unwrap();
        assert_eq!(read_head(&mut again).status, 101);
    }
    check_upgrades_over_tls(tls.port());
}

/// A passed socket whose name says nothing (`web`) on an address `--listen-tls` names is a
/// TLS listener: the flags decide, and plaintext is never served on a TLS port.
fn a_passed_socket_on_a_listen_tls_address_is_tls_whatever_its_name(io: Io) {
    let Some(activate) = activator() else {
        return;
    };
    let dir = scratch("activation-name");
    let cert = cert(&dir, "server", &["localhost"]);
    let tls = free_addr();
    let listen_tls = tls.to_string();
    let args = [
        "--io",
        io.flag(),
        "--threads",
        "1",
        "--listen-tls",
        &listen_tls,
    ];
    let (_child, _log) = activated(activate, &[tls], "web", &args, &cert);
    let mut plain = connect_when_listening(tls);
    plain.write_all(&upgrade_request("/", &[])).unwrap();
    let head = read_head(&mut plain);
    assert_eq!(head.status, 400, "plaintext is refused on the TLS port");
    check_upgrades_over_tls(tls.port());
}

/// `systemd-socket-activate` listening on `addrs` (named `fdnames`), to start `wsedge serve`
/// with `args` and `cert` on the first connection, and what it logs. Killed however the test
/// ends (a failed assertion included).
fn activated(
    activate: &str,
    addrs: &[SocketAddr],
    fdnames: &str,
    args: &[&str],
    cert: &common::Cert,
) -> (KillOnDrop, Arc<Mutex<String>>) {
    let mut command = Command::new(activate);
    for addr in addrs {
        command.args(["-l", &addr.to_string()]);
    }
    let child = command
        .arg(format!("--fdname={fdnames}"))
        .arg(env!("CARGO_BIN_EXE_wsedge"))
        .args(["serve", "--no-pin"])
        .args(args)
        .arg("--tls-cert")
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&cert.key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn systemd-socket-activate");
    let mut child = KillOnDrop(child);
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    let stderr = child.0.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    (child, log)
}

/// `wsedge check` upgrades over TLS on `port` (the certificate not checked).
fn check_upgrades_over_tls(port: u16) {
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["check", &format!("wss://localhost:{port}/"), "--insecure"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Debian's `systemd-socket-activate`, if installed (required in CI).
fn activator() -> Option<&'static str> {
    let found = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        assert!(
            !required(),
            "systemd-socket-activate is required (Debian's systemd)"
        );
        eprintln!("skipping: no systemd-socket-activate (run .ci/run to install it)");
    }
    found
}

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A descriptor passed as a listener that is not one is refused at startup, named.
#[test]
fn a_passed_descriptor_that_is_not_a_listening_socket_is_refused() {
    let output = Command::new("sh")
        .args([
            "-c",
            "exec 3</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve --io epoll",
            env!("CARGO_BIN_EXE_wsedge"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("LISTEN_FDS") && stderr.contains("descriptor 3"),
        "{stderr}"
    );
}

/// `Type=notify`: READY=1 once serving, RELOADING=1 then READY=1 around a SIGHUP reload,
/// STOPPING=1 when the drain starts.
fn notify_tells_ready_reloading_and_stopping(io: Io) {
    let dir = scratch("notify");
    let path = dir.join("notify.sock");
    let manager = UnixDatagram::bind(&path).unwrap();
    manager.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut server = Server::start_with(io, &["--drain-secs", "1"], |command| {
        command.env("NOTIFY_SOCKET", &path);
    });
    let next = || {
        let mut message = [0u8; 512];
        let n = manager.recv(&mut message).expect("a notification");
        String::from_utf8_lossy(&message[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1\n");
    server.signal(libc::SIGHUP);
    let reloading = next();
    assert!(reloading.starts_with("RELOADING=1\n"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert_eq!(next(), "READY=1\n");
    server.signal(libc::SIGTERM);
    assert_eq!(next(), "STOPPING=1\n");
    assert!(server.wait_exit().success());
}

on_both_backends!(
    socket_activation_serves_the_passed_sockets,
    a_passed_socket_on_a_listen_tls_address_is_tls_whatever_its_name,
    notify_tells_ready_reloading_and_stopping,
);
