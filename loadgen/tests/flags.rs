//! Each flag of the load generator, checked by its effect on a server that records what it
//! saw: the request's headers and key, the client's source address, how the connection
//! ended, the worker threads' CPUs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(20);

/// How a recorded connection ended, seen from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Fin,
    Reset,
    /// A WebSocket Close frame arrived first.
    CloseFrame,
    /// The client never finished its request (or the server never answered).
    Unanswered,
}

#[derive(Debug)]
struct Seen {
    peer: SocketAddr,
    head: String,
    ending: Ending,
}

/// A WebSocket server that answers every request with a correct 101 (after `delay`) and
/// reports what it saw on the returned channel.
fn recording_server(delay: Duration) -> (SocketAddr, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let tx = tx.clone();
            thread::spawn(move || {
                let _ = tx.send(serve_one(stream, || thread::sleep(delay)));
            });
        }
    });
    (addr, rx)
}

/// Serves one connection: reads the request, calls `before_answer`, answers a correct 101,
/// and waits for the client to end the connection.
fn serve_one(mut stream: TcpStream, before_answer: impl FnOnce()) -> Seen {
    let peer = stream.peer_addr().unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => {
                let head = String::from_utf8_lossy(&head).into_owned();
                return Seen {
                    peer,
                    head,
                    ending: Ending::Unanswered,
                };
            }
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    before_answer();
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap_or("")
        .trim()
        .to_owned();
    let accept = wsedge::handshake::accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        String::from_utf8_lossy(&accept)
    );
    if stream.write_all(answer.as_bytes()).is_err() {
        return Seen {
            peer,
            head,
            ending: Ending::Reset,
        };
    }
    let mut first = [0u8; 1];
    let ending = match stream.read(&mut first) {
        Ok(0) => Ending::Fin,
        Ok(_) if first[0] == 0x88 => Ending::CloseFrame,
        Ok(_) => Ending::Unanswered,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ending::Reset,
        Err(_) => Ending::Unanswered,
    };
    Seen { peer, head, ending }
}

mod support;
use support::loadgen;

fn storm(addr: SocketAddr, count: u32, extra: &[&str]) -> Value {
    let url = format!("ws://{addr}/flags");
    let count_text = count.to_string();
    let mut args = vec![
        "storm",
        url.as_str(),
        "--count",
        &count_text,
        "--concurrency",
        "2",
    ];
    args.extend(["--duration", "60s", "--json"]);
    args.extend(extra);
    let (code, stdout, stderr, json) = loadgen(&args);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    json.expect("JSON last line")
}

fn collect(rx: &mpsc::Receiver<Seen>, count: usize) -> Vec<Seen> {
    (0..count)
        .map(|_| {
            rx.recv_timeout(DEADLINE)
                .expect("the server saw every connection end")
        })
        .collect()
}

#[test]
fn header_subprotocol_origin_and_key_reach_the_server() {
    let (addr, rx) = recording_server(Duration::ZERO);
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let json = storm(
        addr,
        3,
        &[
            "--header",
            "X-Trace: abc",
            "--subprotocol",
            "chat",
            "--subprotocol",
            "superchat",
            "--origin",
            "https://app.example.com",
            "--key",
            key,
        ],
    );
    assert_eq!(json["ok"], 3);
    for seen in collect(&rx, 3) {
        assert!(
            seen.head.starts_with("GET /flags HTTP/1.1\r\n"),
            "{}",
            seen.head
        );
        assert!(seen.head.contains("\r\nX-Trace: abc\r\n"), "{}", seen.head);
        assert!(
            seen.head
                .contains("\r\nSec-WebSocket-Protocol: chat, superchat\r\n"),
            "{}",
            seen.head
        );
        assert!(
            seen.head
                .contains("\r\nOrigin: https://app.example.com\r\n"),
            "{}",
            seen.head
        );
        assert!(
            seen.head
                .contains(&format!("\r\nSec-WebSocket-Key: {key}\r\n")),
            "{}",
            seen.head
        );
    }
}

#[test]
fn close_chooses_reset_fin_or_a_close_frame() {
    for (mode, expected) in [
        ("rst", Ending::Reset),
        ("fin", Ending::Fin),
        ("ws", Ending::CloseFrame),
    ] {
        let (addr, rx) = recording_server(Duration::ZERO);
        let json = storm(addr, 4, &["--close", mode]);
        assert_eq!(json["ok"], 4, "--close {mode}");
        for seen in collect(&rx, 4) {
            assert_eq!(seen.ending, expected, "--close {mode}");
        }
    }
}

#[test]
fn source_ips_rotate_and_none_lets_the_kernel_choose() {
    let (addr, rx) = recording_server(Duration::ZERO);
    storm(addr, 4, &["--source-ips", "127.0.0.7-127.0.0.8"]);
    let mut sources: Vec<String> = collect(&rx, 4)
        .iter()
        .map(|s| s.peer.ip().to_string())
        .collect();
    sources.sort();
    sources.dedup();
    assert_eq!(sources, ["127.0.0.7", "127.0.0.8"]);

    let (addr, rx) = recording_server(Duration::ZERO);
    storm(addr, 2, &["--source-ips", "none"]);
    for seen in collect(&rx, 2) {
        assert_eq!(seen.peer.ip().to_string(), "127.0.0.1");
    }
}

#[test]
fn threads_split_the_count_and_hdr_log_sums_their_intervals() {
    let (addr, rx) = recording_server(Duration::ZERO);
    let log = support::scratch("flags.hlog");
    let log_text = log.to_string_lossy().into_owned();
    let json = storm(addr, 9, &["--threads", "3", "--hdr-log", &log_text]);
    assert_eq!(json["ok"], 9);
    collect(&rx, 9);
    let lines = support::read_log(&log);
    let _ = std::fs::remove_file(&log);
    // The three workers' figures are summed into one line per interval, not one each.
    let starts: Vec<f64> = lines
        .iter()
        .filter(|l| l.tag.is_none())
        .map(|l| l.start)
        .collect();
    let mut distinct = starts.clone();
    distinct.dedup();
    assert_eq!(starts, distinct, "one total line per interval");
    assert_eq!(support::total_of(&lines).len(), 9);
}

#[test]
fn handshake_timeout_bounds_a_slow_server() {
    let (addr, _rx) = recording_server(Duration::from_secs(3));
    let started = Instant::now();
    let json = storm(addr, 1, &["--handshake-timeout", "300ms"]);
    assert_eq!(json["ok"], 0);
    assert_eq!(json["errors"]["handshake_timeout"], 1, "{json}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout did not cut the wait"
    );
}

#[test]
fn connect_timeout_bounds_an_unanswered_syn() {
    // A listener with a full accept queue drops further SYNs: the connect never completes.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let _fill: Vec<TcpStream> = (0..4)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    let url = format!("ws://{addr}/");
    let (code, stdout, stderr, json) = loadgen(&[
        "storm",
        &url,
        "--count",
        "1",
        "--concurrency",
        "1",
        "--source-ips",
        "none",
        "--connect-timeout",
        "300ms",
        "--duration",
        "30s",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let json = json.expect("JSON");
    assert_eq!(json["errors"]["connect_timeout"], 1, "{json}");
}

#[test]
fn duration_ends_a_run_without_a_count() {
    let (addr, _rx) = recording_server(Duration::ZERO);
    let url = format!("ws://{addr}/");
    let started = Instant::now();
    let (code, stdout, stderr, json) = loadgen(&[
        "storm",
        &url,
        "--concurrency",
        "1",
        "--duration",
        "500ms",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(json.expect("JSON")["ok"].as_u64().unwrap_or(0) > 0);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The CPUs a thread of `pid` named `name` may run on, once it exists.
fn thread_cpus(pid: u32, name: &str) -> Option<String> {
    let until = Instant::now() + DEADLINE;
    while Instant::now() < until {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                let status = std::fs::read_to_string(task.path().join("status")).ok()?;
                // The worker pins itself as its first act: wait for it.
                let cpus = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
                let cpus = cpus.trim().to_owned();
                if !cpus.contains(['-', ',']) {
                    return Some(cpus);
                }
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn pin_puts_each_worker_on_its_cpu() {
    let (addr, _rx) = recording_server(Duration::ZERO);
    let url = format!("ws://{addr}/");
    let last_cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    let pin = last_cpu.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsedge-loadgen"))
        .args([
            "storm",
            &url,
            "--concurrency",
            "1",
            "--duration",
            "3s",
            "--pin",
            &pin,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cpus = thread_cpus(child.id(), "loadgen-0");
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(cpus.as_deref(), Some(pin.as_str()), "{stderr}");
}

#[test]
fn pin_refuses_cpus_that_are_not_there() {
    for bad in ["4096", "3-1", "x", "0-18446744073709551615"] {
        let (code, _, stderr, _) = loadgen(&["storm", "ws://127.0.0.1:1/", "--pin", bad]);
        assert_eq!(code, 2, "--pin {bad}: {stderr}");
        assert!(stderr.contains("--pin"), "--pin {bad}: {stderr}");
    }
}

#[test]
fn concurrency_bounds_the_connections_in_flight() {
    // Each answer waits 300 ms: with --concurrency 3 the server never holds more than 3.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let live = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (live, peak) = (live.clone(), peak.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (live, peak) = (live.clone(), peak.clone());
                thread::spawn(move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    // Counted from the request to just before its answer: the client opens
                    // its next connection only after an answer, so this is what is in flight.
                    serve_one(stream, || {
                        let now = live.fetch_add(1, SeqCst) + 1;
                        peak.fetch_max(now, SeqCst);
                        thread::sleep(Duration::from_millis(300));
                        live.fetch_sub(1, SeqCst);
                    });
                });
            }
        });
    }
    let url = format!("ws://{addr}/");
    let (code, stdout, stderr, json) = loadgen(&[
        "storm",
        &url,
        "--count",
        "9",
        "--concurrency",
        "3",
        "--duration",
        "60s",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(json.expect("JSON")["ok"], 9);
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// (subcommand, flag, tests that check its effect: `file::function` in loadgen/tests).
const COVERAGE: &[(&str, &str, &[&str])] = &[
    (
        "*",
        "--ca",
        &[
            "loadgen::wss_storms_verify_every_upgrade_time_tls_and_resume_with_tls_resume",
            "loadgen::tls_flags_with_a_ws_target_are_usage_errors",
        ],
    ),
    (
        "*",
        "--h2",
        &[
            "loadgen::h2_streams_count_as_upgrades_on_h2c_and_h2",
            "loadgen::h2_against_an_http1_server_fails_each_stream",
            "loadgen::h2_flags_out_of_place_are_usage_errors",
            "reconnect::h2_clients_hold_their_streams_and_retry_as_one",
        ],
    ),
    (
        "*",
        "--streams",
        &[
            "loadgen::h2_streams_count_as_upgrades_on_h2c_and_h2",
            "loadgen::h2_flags_out_of_place_are_usage_errors",
        ],
    ),
    (
        "*",
        "--insecure",
        &["loadgen::wss_storms_verify_every_upgrade_time_tls_and_resume_with_tls_resume"],
    ),
    (
        "*",
        "--proxy-header",
        &["loadgen::proxy_header_names_a_client_as_a_balancer_would"],
    ),
    (
        "*",
        "--tls-groups",
        &[
            "loadgen::tls_groups_chooses_the_key_exchange_offered",
            "loadgen::tls_flags_with_a_ws_target_are_usage_errors",
        ],
    ),
    (
        "*",
        "--tls-resume",
        &["loadgen::wss_storms_verify_every_upgrade_time_tls_and_resume_with_tls_resume"],
    ),
    (
        "*",
        "--duration",
        &["flags::duration_ends_a_run_without_a_count"],
    ),
    (
        "*",
        "--count",
        &["loadgen::storm_counts_every_upgrade_exactly"],
    ),
    (
        "*",
        "--threads",
        &["flags::threads_split_the_count_and_hdr_log_sums_their_intervals"],
    ),
    (
        "*",
        "--pin",
        &[
            "flags::pin_puts_each_worker_on_its_cpu",
            "flags::pin_refuses_cpus_that_are_not_there",
        ],
    ),
    (
        "*",
        "--source-ips",
        &["flags::source_ips_rotate_and_none_lets_the_kernel_choose"],
    ),
    (
        "*",
        "--close",
        &["flags::close_chooses_reset_fin_or_a_close_frame"],
    ),
    (
        "*",
        "--header",
        &["flags::header_subprotocol_origin_and_key_reach_the_server"],
    ),
    (
        "*",
        "--subprotocol",
        &[
            "flags::header_subprotocol_origin_and_key_reach_the_server",
            "loadgen::an_unoffered_subprotocol_is_bad_subprotocol",
        ],
    ),
    (
        "*",
        "--origin",
        &["flags::header_subprotocol_origin_and_key_reach_the_server"],
    ),
    (
        "*",
        "--connect-timeout",
        &["flags::connect_timeout_bounds_an_unanswered_syn"],
    ),
    (
        "*",
        "--handshake-timeout",
        &["flags::handshake_timeout_bounds_a_slow_server"],
    ),
    (
        "*",
        "--key",
        &["flags::header_subprotocol_origin_and_key_reach_the_server"],
    ),
    (
        "*",
        "--json",
        &["loadgen::storm_counts_every_upgrade_exactly"],
    ),
    (
        "*",
        "--hdr-log",
        &["flags::threads_split_the_count_and_hdr_log_sums_their_intervals"],
    ),
    (
        "*",
        "--start-at",
        &["reports::start_at_waits_for_the_wall_clock_and_starts_on_time"],
    ),
    (
        "*",
        "--processes",
        &[
            "reports::processes_split_the_run_and_count_every_upgrade_once",
            "reports::rate_and_ramp_spread_over_processes",
        ],
    ),
    (
        "*",
        "--plot",
        &["reports::plots_are_svg_with_their_series_axes_and_marks"],
    ),
    (
        "*",
        "--plot-title",
        &["reports::plots_are_svg_with_their_series_axes_and_marks"],
    ),
    (
        "merge",
        "--json",
        &["reports::a_log_written_by_loadgen_is_read_back_unchanged"],
    ),
    (
        "merge",
        "--hdr-log",
        &["reports::merging_logs_gives_exactly_the_histogram_of_their_union"],
    ),
    (
        "storm",
        "--concurrency",
        &["flags::concurrency_bounds_the_connections_in_flight"],
    ),
    (
        "rate",
        "--rate",
        &["loadgen::rate_mode_reports_the_intended_rate"],
    ),
    (
        "ramp",
        "--from",
        &["loadgen::ramp_reports_each_step_and_the_best_rate"],
    ),
    (
        "ramp",
        "--to",
        &["loadgen::ramp_reports_each_step_and_the_best_rate"],
    ),
    (
        "ramp",
        "--step",
        &["loadgen::ramp_reports_each_step_and_the_best_rate"],
    ),
    (
        "ramp",
        "--step-duration",
        &["loadgen::ramp_reports_each_step_and_the_best_rate"],
    ),
    (
        "ramp",
        "--slo-p99",
        &["loadgen::ramp_reports_each_step_and_the_best_rate"],
    ),
    (
        "hold",
        "--connections",
        &[
            "loadgen::hold_establishes_and_reports",
            "loadgen::bad_urls_and_impossible_holds_are_usage_errors",
        ],
    ),
    ("hold", "--rate", &["loadgen::hold_establishes_and_reports"]),
    ("hold", "--hold", &["loadgen::hold_establishes_and_reports"]),
    (
        "hold",
        "--ping-interval",
        &["loadgen::hold_establishes_and_reports"],
    ),
    (
        "ramp",
        "--server-pid",
        &["reports::plots_are_svg_with_their_series_axes_and_marks"],
    ),
    (
        "hold",
        "--server-pid",
        &["loadgen::hold_establishes_and_reports"],
    ),
    (
        "slowloris",
        "--connections",
        &["loadgen::slowloris_clients_are_all_cut_off_by_wsedge"],
    ),
    (
        "slowloris",
        "--byte-interval",
        &["loadgen::slowloris_clients_are_all_cut_off_by_wsedge"],
    ),
    (
        "reconnect",
        "--clients",
        &[
            "reconnect::every_client_retries_until_it_is_in_and_each_attempt_is_counted",
            "reconnect::impossible_policies_are_usage_errors_naming_the_flag",
        ],
    ),
    (
        "reconnect",
        "--spread",
        &["reconnect::spread_spaces_the_first_attempts"],
    ),
    (
        "reconnect",
        "--attempt-timeout",
        &["reconnect::attempt_timeout_gives_up_an_unanswered_attempt_and_tries_again"],
    ),
    (
        "reconnect",
        "--backoff",
        &["reconnect::backoff_and_jitter_set_the_wait_between_attempts"],
    ),
    (
        "reconnect",
        "--jitter",
        &["reconnect::backoff_and_jitter_set_the_wait_between_attempts"],
    ),
    (
        "reconnect",
        "--retry-after",
        &["reconnect::retry_after_ignore_leaves_the_wait_to_the_backoff"],
    ),
    (
        "reconnect",
        "--server-pid",
        &["reconnect::server_pid_and_plot_show_the_server_cpu_and_the_recovery"],
    ),
];

/// The long flags `wsedge-loadgen SUBCOMMAND --help` lists: clap's own definitions, read
/// through the binary (the command is not a library item).
fn flags_of(subcommand: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge-loadgen"))
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut flags: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-h, ").unwrap_or(l);
            l.starts_with("--")
                .then(|| l.split([' ', '=']).next().unwrap_or("").to_owned())
        })
        .filter(|f| f != "--help" && f != "--version")
        .collect();
    flags.dedup();
    flags
}

#[test]
fn every_flag_has_a_test_of_its_effect() {
    let tests_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let exists = |path: &str| {
        let (file, function) = path.split_once("::").unwrap();
        std::fs::read_to_string(tests_dir.join(format!("{file}.rs")))
            .is_ok_and(|text| text.contains(&format!("fn {function}(")))
    };
    let mut missing = Vec::new();
    for subcommand in [
        "storm",
        "rate",
        "ramp",
        "hold",
        "slowloris",
        "reconnect",
        "merge",
        "plot-compare",
    ] {
        let flags = flags_of(subcommand);
        assert!(
            flags.len() >= 2,
            "could not read the flags of {subcommand}: {flags:?}"
        );
        for flag in flags {
            let row = COVERAGE
                .iter()
                .find(|(sub, f, _)| (*sub == subcommand || *sub == "*") && *f == flag);
            let row = COVERAGE
                .iter()
                .find(|(sub, f, _)| *sub == subcommand && *f == flag)
                .or(row);
            match row {
                Some((_, _, tests)) => {
                    for test in *tests {
                        assert!(exists(test), "{subcommand} {flag}: no test {test}");
                    }
                }
                None => missing.push(format!("{subcommand} {flag}")),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags with no test of their effect: {missing:?}"
    );
}
