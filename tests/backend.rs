//! Choosing the backend: `--io auto` takes io_uring where the kernel allows it and falls
//! back to epoll, saying why, where it does not.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts `wsedge serve --io auto`, returns its "listening on" line, and stops it.
fn startup_line(force_unavailable: bool) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wsedge"));
    command.args([
        "serve",
        "--io",
        "auto",
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--no-pin",
    ]);
    if force_unavailable {
        command.env("WSEDGE_IO_URING_PROBE", "fail");
    }
    let mut child = command.stderr(Stdio::piped()).spawn().expect("spawn");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(15));
    let _ = child.kill();
    let _ = child.wait();
    line.expect("wsedge did not start")
}

fn io_uring_works_here() -> bool {
    // Seen from outside: can a ring be set up at all?
    io_uring::IoUring::new(8).is_ok()
}

#[test]
fn auto_falls_back_to_epoll_and_says_why() {
    let line = startup_line(true);
    assert!(
        line.contains("backend=epoll (auto: io_uring unavailable"),
        "{line}"
    );
    assert!(line.contains("WSEDGE_IO_URING_PROBE=fail"), "{line}");
}

#[test]
fn auto_uses_io_uring_where_the_kernel_allows_it() {
    let line = startup_line(false);
    if io_uring_works_here() {
        assert!(
            line.contains("backend=io_uring (auto: io_uring available)"),
            "{line}"
        );
    } else {
        assert!(
            line.contains("backend=epoll (auto: io_uring unavailable"),
            "{line}"
        );
    }
}
