//! `reconnect`: clients that retry by their policy until they are in, against a gatekeeper
//! that refuses (or ignores) the first connections it gets and upgrades the rest. What the
//! gatekeeper counts fixes every figure exactly; times are checked only as lower bounds
//! (a wait the policy imposes), never as how fast anything ran.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use serde_json::Value;
use wsedge::conn::AfterUpgrade;

mod support;

/// How the gatekeeper treats its first `turned_away` connections.
#[derive(Clone, Copy)]
enum Refusal {
    /// `503` with this `Retry-After` (seconds), or none.
    Unavailable(Option<u32>),
    /// No answer at all until the client gives up.
    Silence,
}

/// A server that turns its first `turned_away` connections away, then upgrades every
/// other and holds it until the client leaves; returns its address and the connection count.
fn gatekeeper(turned_away: usize, refusal: Refusal) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let n = counter.fetch_add(1, SeqCst);
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = match (n < turned_away, refusal) {
                    (true, Refusal::Silence) => {
                        // Held open, unanswered, until the client gives up.
                        let _ = stream.read(&mut buf);
                        return;
                    }
                    (true, Refusal::Unavailable(retry_after)) => format!(
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n{}Connection: close\r\n\r\n",
                        retry_after.map_or(String::new(), |s| format!("Retry-After: {s}\r\n"))
                    ),
                    (false, _) => {
                        let text = String::from_utf8_lossy(&request);
                        let key = text
                            .lines()
                            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                            .unwrap_or("")
                            .trim()
                            .to_owned();
                        let accept = wsedge::handshake::accept_key(key.as_bytes());
                        format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                             Sec-WebSocket-Accept: {}\r\n\r\n",
                            std::str::from_utf8(&accept).unwrap()
                        )
                    }
                };
                let _ = stream.write_all(answer.as_bytes());
                // Held until the client closes (a refused one closes at once).
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn reconnect(addr: SocketAddr, clients: u32, extra: &[&str]) -> Value {
    let url = format!("ws://{addr}/");
    let clients = clients.to_string();
    let mut args = vec!["reconnect", &url, "--clients", &clients, "--json"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr, json) = support::loadgen(&args);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    json.unwrap_or_else(|| panic!("no JSON line: {stdout}"))
}

fn secs(json: &Value, share: &str) -> f64 {
    json["in_after_s"][share]
        .as_f64()
        .unwrap_or_else(|| panic!("in_after_s.{share}: {json}"))
}

#[test]
fn every_client_retries_until_it_is_in_and_each_attempt_is_counted() {
    let (addr, seen) = gatekeeper(20, Refusal::Unavailable(Some(1)));
    let json = reconnect(addr, 50, &["--duration", "60s", "--backoff", "fixed:100ms"]);
    assert_eq!(json["clients_in"], 50, "{json}");
    assert_eq!(json["clients_not_in"], 0, "{json}");
    assert_eq!(json["attempts_total"], 70, "{json}");
    assert_eq!(seen.load(SeqCst), 70);
    assert_eq!(json["refusals"]["503"], 20, "{json}");
    assert_eq!(json["attempts_per_client"]["max"], 2, "{json}");
    let mean = json["attempts_per_client"]["mean"].as_f64().unwrap();
    assert!((mean - 1.4).abs() < 1e-9, "{json}");
    // The refused clients waited the second their Retry-After asked for.
    assert!(secs(&json, "p100") >= 1.0, "{json}");
    // The recovery curve counts every client once, in tenths of a second.
    let recovered: u64 = json["recovery"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(recovered, 50, "{json}");
    assert_eq!(json["recovery_step_s"], 0.1);
    let timeline = json["timeline"].as_array().unwrap();
    let column = |i: usize| -> u64 { timeline.iter().map(|m| m[i].as_u64().unwrap()).sum() };
    assert_eq!((column(0), column(1), column(2)), (70, 20, 50), "{json}");
}

#[test]
fn retry_after_ignore_leaves_the_wait_to_the_backoff() {
    // Retry-After asks for a minute; honoured, the refused clients are not back within a
    // five-second run, whatever the machine's speed.
    let (addr, _) = gatekeeper(10, Refusal::Unavailable(Some(60)));
    let honoured = reconnect(
        addr,
        30,
        &[
            "--duration",
            "5s",
            "--backoff",
            "fixed:100ms",
            "--retry-after",
            "honour",
        ],
    );
    assert_eq!(
        (
            honoured["clients_in"].as_u64(),
            honoured["clients_not_in"].as_u64()
        ),
        (Some(20), Some(10)),
        "{honoured}"
    );
    assert_eq!(honoured["in_after_s"]["p100"], Value::Null, "{honoured}");
    let (addr, _) = gatekeeper(10, Refusal::Unavailable(Some(60)));
    let ignored = reconnect(
        addr,
        30,
        &[
            "--duration",
            "60s",
            "--backoff",
            "fixed:100ms",
            "--retry-after",
            "ignore",
        ],
    );
    assert_eq!(ignored["clients_in"], 30, "{ignored}");
    assert_eq!(ignored["attempts_total"], 40, "{ignored}");
}

#[test]
fn backoff_and_jitter_set_the_wait_between_attempts() {
    // No Retry-After: the wait is the backoff's. fixed:2s without jitter is 2 s at least.
    let (addr, _) = gatekeeper(5, Refusal::Unavailable(None));
    let fixed = reconnect(
        addr,
        10,
        &[
            "--duration",
            "60s",
            "--backoff",
            "fixed:2s",
            "--jitter",
            "none",
        ],
    );
    assert_eq!(fixed["clients_in"], 10, "{fixed}");
    assert!(secs(&fixed, "p100") >= 2.0, "{fixed}");
    // equal jitter: half the backoff at least; a refused client is back after 1.5 s or more.
    let (addr, _) = gatekeeper(5, Refusal::Unavailable(None));
    let equal = reconnect(
        addr,
        10,
        &[
            "--duration",
            "60s",
            "--backoff",
            "exponential:3s..8s",
            "--jitter",
            "equal",
        ],
    );
    assert_eq!(equal["clients_in"], 10, "{equal}");
    assert!(secs(&equal, "p100") >= 1.5, "{equal}");
    // A minute's backoff is not over within a five-second run.
    let (addr, _) = gatekeeper(5, Refusal::Unavailable(None));
    let long = reconnect(
        addr,
        10,
        &[
            "--duration",
            "5s",
            "--backoff",
            "exponential:60s..120s",
            "--jitter",
            "spread:0.5",
        ],
    );
    assert_eq!(long["clients_not_in"], 5, "{long}");
    // none: straight back.
    let (addr, _) = gatekeeper(5, Refusal::Unavailable(None));
    let none = reconnect(addr, 10, &["--duration", "60s", "--backoff", "none"]);
    assert_eq!(none["clients_in"], 10, "{none}");
    assert_eq!(none["attempts_total"], 15, "{none}");
}

#[test]
fn attempt_timeout_gives_up_an_unanswered_attempt_and_tries_again() {
    let (addr, seen) = gatekeeper(4, Refusal::Silence);
    let json = reconnect(
        addr,
        8,
        &[
            "--duration",
            "60s",
            "--attempt-timeout",
            "500ms",
            "--backoff",
            "none",
        ],
    );
    assert_eq!(json["clients_in"], 8, "{json}");
    assert_eq!(json["errors"]["handshake_timeout"], 4, "{json}");
    assert_eq!(seen.load(SeqCst), 12);
    assert!(secs(&json, "p100") >= 0.5, "{json}");
}

#[test]
fn spread_spaces_the_first_attempts() {
    let (addr, _) = gatekeeper(0, Refusal::Silence);
    // 40 first attempts drawn over 3 s: the last is after 1 s unless all 40 fell in the
    // first third (a chance of 3^-40).
    let json = reconnect(addr, 40, &["--duration", "60s", "--spread", "3s"]);
    assert_eq!(json["clients_in"], 40, "{json}");
    assert_eq!(json["attempts_total"], 40, "{json}");
    assert!(secs(&json, "p100") >= 1.0, "{json}");
}

#[test]
fn processes_share_the_clients_and_their_figures_add_up() {
    let (addr, seen) = gatekeeper(10, Refusal::Unavailable(Some(1)));
    let json = reconnect(
        addr,
        40,
        &[
            "--duration",
            "60s",
            "--processes",
            "2",
            "--backoff",
            "fixed:100ms",
        ],
    );
    assert_eq!(json["clients_in"], 40, "{json}");
    assert_eq!(json["attempts_total"], 50, "{json}");
    assert_eq!(json["refusals"]["503"], 10, "{json}");
    assert_eq!(seen.load(SeqCst), 50);
    let recovered: u64 = json["recovery"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(recovered, 40, "{json}");
}

#[test]
fn server_pid_and_plot_show_the_server_cpu_and_the_recovery() {
    let (addr, _) = gatekeeper(5, Refusal::Unavailable(Some(1)));
    let dir = std::env::temp_dir().join(format!("reconnect-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("recovery.svg");
    // This test process is the server (its gatekeeper thread): its CPU time is what is read.
    let pid = std::process::id().to_string();
    let json = reconnect(
        addr,
        20,
        &[
            "--duration",
            "60s",
            "--server-pid",
            &pid,
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    assert_eq!(json["clients_in"], 20, "{json}");
    assert!(json["server_cpu_s"].as_f64() >= Some(0.0), "{json}");
    assert!(json["server_cpu_us_per_client"].is_f64(), "{json}");
    let text = std::fs::read_to_string(&svg).unwrap();
    for label in [
        "attempts/s",
        "refusals/s",
        "clients in/s",
        "clients in, %",
        "server CPU",
    ] {
        assert!(text.contains(label), "the plot lacks {label}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn wss_clients_come_back_through_tls() {
    let (_server, port, cert) = support::wsedge_tls(AfterUpgrade::Echo, Vec::new());
    let url = format!("wss://localhost:{port}/");
    let (code, stdout, stderr, json) = support::loadgen(&[
        "reconnect",
        &url,
        "--clients",
        "30",
        "--duration",
        "60s",
        "--ca",
        cert.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let json = json.unwrap();
    assert_eq!(json["clients_in"], 30, "{json}");
    assert_eq!(json["attempts_total"], 30, "{json}");
    assert!(json["tls_latency_us"]["p50"].as_u64() > Some(0), "{json}");
}

#[test]
fn impossible_policies_are_usage_errors_naming_the_flag() {
    for (flag, value, says) in [
        ("--backoff", "exponential:10s..1s", "CAP"),
        ("--backoff", "linear:1s", "fixed:D"),
        ("--jitter", "spread:2", "spread:F"),
        ("--retry-after", "sometimes", "honour"),
        ("--attempt-timeout", "0s", "positive"),
        ("--clients", "0", "--clients"),
    ] {
        let mut args = vec!["reconnect", "ws://127.0.0.1:1/", flag, value];
        if flag != "--clients" {
            args.extend(["--clients", "5"]);
        }
        let (code, _, stderr, _) = support::loadgen(&args);
        assert_eq!(code, 2, "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(says),
            "{flag} {value}: {stderr}"
        );
    }
    let (code, _, stderr, _) =
        support::loadgen(&["reconnect", "ws://127.0.0.1:1/", "--clients", "1000000"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--processes"), "{stderr}");
}

/// `--h2`: a client is one HTTP/2 connection holding `--streams` WebSockets, in once all of
/// them are upgraded; an attempt whose streams are refused fails whole and comes back.
#[test]
fn h2_clients_hold_their_streams_and_retry_as_one() {
    let mut config = support::server_config(AfterUpgrade::Echo, 10_000);
    config.conn.h2c = true;
    config.conn.policy.paths = vec!["/chat".into()];
    let server = wsedge::reactor::Server::start(config).expect("start wsedge");
    let port = server.local_addrs()[0].port();
    let run = |path: &str, extra: &[&str]| {
        let url = format!("ws://127.0.0.1:{port}{path}");
        let mut args = vec![
            "reconnect",
            &url,
            "--clients",
            "20",
            "--h2",
            "--streams",
            "5",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (code, stdout, stderr, json) = support::loadgen(&args);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        json.unwrap_or_else(|| panic!("no JSON line: {stdout}"))
    };
    let json = run("/chat", &["--duration", "60s"]);
    assert_eq!(
        (json["clients_in"].as_u64(), json["attempts_total"].as_u64()),
        (Some(20), Some(20)),
        "{json}"
    );
    assert_eq!(json["ok"], 100, "{json}");
    // Every stream refused (404): no client gets in, each tries again after its backoff.
    let json = run(
        "/elsewhere",
        &[
            "--duration",
            "1s",
            "--backoff",
            "fixed:100ms",
            "--jitter",
            "none",
        ],
    );
    assert_eq!(json["clients_in"], 0, "{json}");
    assert!(json["attempts_total"].as_u64() >= Some(40), "{json}");
    assert_eq!(
        json["errors"]["status_404"].as_u64(),
        json["attempts_total"].as_u64().map(|a| a * 5),
        "{json}"
    );
}
