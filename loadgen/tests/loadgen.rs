//! The load generator against a real wsedge (in-process) and against a deliberately broken
//! server: counts are exact, failures are classified, the JSON has every documented key.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use wsedge::conn::AfterUpgrade;
use wsedge::reactor::Server;

mod support;
use support::{server_config, wsedge};

/// Runs the load generator; returns its exit code, stdout and the parsed JSON last line.
fn loadgen(args: &[&str]) -> (i32, String, Option<Value>) {
    let (code, stdout, stderr, json) = support::loadgen(args);
    if code != 0 {
        eprintln!("stderr: {stderr}");
    }
    (code, stdout, json)
}

/// A server that answers every request badly, in one way.
#[derive(Clone, Copy)]
enum Broken {
    WrongAccept,
    BadRequest,
    Reset,
    Stall,
    UnofferedProtocol,
}

fn broken_server(behaviour: Broken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let answer: &[u8] = match behaviour {
                    Broken::WrongAccept => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                    Broken::BadRequest => b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    Broken::UnofferedProtocol => b"",
                    Broken::Reset => {
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                        return;
                    }
                    Broken::Stall => {
                        std::thread::sleep(Duration::from_secs(5));
                        return;
                    }
                };
                if let Broken::UnofferedProtocol = behaviour {
                    let text = String::from_utf8_lossy(&request);
                    let key = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                        .unwrap_or("")
                        .trim();
                    let accept = wsedge::handshake::accept_key(key.as_bytes());
                    let response = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
                        std::str::from_utf8(&accept).unwrap()
                    );
                    let _ = stream.write_all(response.as_bytes());
                } else {
                    let _ = stream.write_all(answer);
                }
                std::thread::sleep(Duration::from_millis(100));
            });
        }
    });
    addr
}

const KEYS: &[&str] = &[
    "upgrades_per_sec",
    "ok",
    "errors_total",
    "errors",
    "latency_us",
    "connect_latency_us",
    "handshake_latency_us",
    "duration_s",
];

fn check_keys(json: &Value) {
    for key in KEYS {
        assert!(json.get(key).is_some(), "JSON lacks {key}: {json}");
    }
    for histogram in ["latency_us", "connect_latency_us", "handshake_latency_us"] {
        for p in ["p50", "p90", "p99", "p99_9", "max"] {
            assert!(
                json[histogram][p].is_u64(),
                "{histogram}.{p} missing: {json}"
            );
        }
    }
}

#[test]
fn storm_counts_every_upgrade_exactly() {
    let server = wsedge(AfterUpgrade::Close, 10_000);
    let url = format!("ws://{}/", server.local_addrs()[0]);
    let (code, stdout, json) = loadgen(&[
        "storm",
        &url,
        "--count",
        "500",
        "--concurrency",
        "16",
        "--threads",
        "2",
        "--duration",
        "60s",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}");
    let json = json.expect("JSON last line");
    check_keys(&json);
    assert_eq!(json["ok"], 500, "{stdout}");
    assert_eq!(json["errors_total"], 0, "{stdout}");
    assert_eq!(json["concurrency"], 16);
    assert_eq!(
        server.stats().upgraded,
        500,
        "the server saw the same count"
    );
}

#[test]
fn rate_mode_reports_the_intended_rate() {
    let server = wsedge(AfterUpgrade::Close, 10_000);
    let url = format!("ws://{}/", server.local_addrs()[0]);
    let (code, stdout, json) = loadgen(&[
        "rate",
        &url,
        "--rate",
        "200",
        "--count",
        "100",
        "--duration",
        "30s",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}");
    let json = json.expect("JSON");
    check_keys(&json);
    assert_eq!(json["ok"], 100, "{stdout}");
    assert_eq!(json["rate"], 200.0);
}

fn broken_counts(behaviour: Broken, extra: &[&str]) -> Value {
    let addr = broken_server(behaviour);
    let url = format!("ws://{addr}/");
    let mut args = vec![
        "storm",
        url.as_str(),
        "--count",
        "20",
        "--concurrency",
        "4",
        "--duration",
        "60s",
        "--json",
        "--source-ips",
        "none",
    ];
    args.extend_from_slice(extra);
    let (code, stdout, json) = loadgen(&args);
    assert_eq!(code, 0, "{stdout}");
    let json = json.expect("JSON");
    assert_eq!(json["ok"], 0, "{stdout}");
    assert_eq!(json["errors_total"], 20, "{stdout}");
    json
}

#[test]
fn a_replayed_accept_is_bad_accept() {
    assert_eq!(
        broken_counts(Broken::WrongAccept, &[])["errors"]["bad_accept"],
        20
    );
}

#[test]
fn a_400_is_counted_by_status() {
    assert_eq!(
        broken_counts(Broken::BadRequest, &[])["errors"]["status_400"],
        20
    );
}

#[test]
fn a_reset_is_reset() {
    let json = broken_counts(Broken::Reset, &[]);
    let errors = &json["errors"];
    let reset =
        errors["reset"].as_u64().unwrap_or(0) + errors["closed_early"].as_u64().unwrap_or(0);
    assert_eq!(reset, 20, "{json}");
}

#[test]
fn a_stall_is_a_handshake_timeout() {
    let json = broken_counts(Broken::Stall, &["--handshake-timeout", "300ms"]);
    assert_eq!(json["errors"]["handshake_timeout"], 20);
}

#[test]
fn an_unoffered_subprotocol_is_bad_subprotocol() {
    let json = broken_counts(Broken::UnofferedProtocol, &["--subprotocol", "chat"]);
    assert_eq!(json["errors"]["bad_subprotocol"], 20);
}

#[test]
fn refused_connections_are_counted_not_fatal() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/");
    let (code, stdout, json) = loadgen(&[
        "storm",
        &url,
        "--count",
        "10",
        "--concurrency",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(json.expect("JSON")["errors"]["connect_refused"], 10);
}

#[test]
fn hold_establishes_and_reports() {
    let server = wsedge(AfterUpgrade::Echo, 10_000);
    let url = format!("ws://{}/", server.local_addrs()[0]);
    let pid = std::process::id().to_string();
    let (code, stdout, json) = loadgen(&[
        "hold",
        &url,
        "--connections",
        "300",
        "--hold",
        "500ms",
        "--ping-interval",
        "100ms",
        "--server-pid",
        &pid,
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}");
    let json = json.expect("JSON");
    check_keys(&json);
    assert_eq!(json["established"], 300, "{stdout}");
    assert!(json["establish_secs"].is_f64());
    assert!(json.get("server_rss_bytes_per_conn").is_some());
}

#[test]
fn slowloris_clients_are_all_cut_off_by_wsedge() {
    let server = wsedge(AfterUpgrade::Echo, 300);
    let url = format!("ws://{}/", server.local_addrs()[0]);
    let (code, stdout, json) = loadgen(&[
        "slowloris",
        &url,
        "--connections",
        "10",
        "--byte-interval",
        "20ms",
        "--duration",
        "5s",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}");
    let json = json.expect("JSON");
    assert_eq!(json["cut_off"], 10, "{stdout}");
    assert_eq!(json["never_cut"], 0);
    assert!(
        json["cutoff_us"]["p50"].as_u64().unwrap() >= 250_000,
        "{json}"
    );
}

#[test]
fn bad_urls_and_impossible_holds_are_usage_errors() {
    let (code, _, _) = loadgen(&["storm", "http://127.0.0.1:1/"]);
    assert_eq!(code, 2);
    let (code, _, _) = loadgen(&["storm", "ws://127.0.0.1:1/", "--duration", "soon"]);
    assert_eq!(code, 2);
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge-loadgen"))
        .args(["hold", "ws://127.0.0.1:1/", "--connections", "5000000"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--connections 5000000"));
}

#[test]
fn ramp_reports_each_step_and_the_best_rate() {
    let server = wsedge(AfterUpgrade::Close, 10_000);
    let url = format!("ws://{}/", server.local_addrs()[0]);
    let (code, stdout, json) = loadgen(&[
        "ramp",
        &url,
        "--from",
        "100",
        "--to",
        "200",
        "--step",
        "100",
        "--step-duration",
        "1s",
        "--slo-p99",
        "500ms",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}");
    let json = json.expect("JSON");
    assert_eq!(json["steps"].as_array().map(Vec::len), Some(2), "{stdout}");
    assert_eq!(json["best_rate"], 200.0, "{stdout}");
    assert!(
        stdout.contains("highest rate meeting the SLO: 200/s"),
        "{stdout}"
    );
}

/// An in-process wsedge with one TLS listener on a fresh self-signed certificate for
/// `localhost`; returns the server, the TLS port and the certificate's PEM file.
fn wsedge_tls() -> (Server, u16, std::path::PathBuf) {
    wsedge_tls_with(Vec::new())
}

/// wsedge in close mode on a TLS listener, offering the key-exchange `groups` (empty:
/// rustls's).
fn wsedge_tls_with(groups: Vec<wsedge::tls::TlsGroup>) -> (Server, u16, std::path::PathBuf) {
    support::wsedge_tls(AfterUpgrade::Close, groups)
}

#[test]
fn wss_storms_verify_every_upgrade_time_tls_and_resume_with_tls_resume() {
    let (_server, port, cert) = wsedge_tls();
    let url = format!("wss://localhost:{port}/");
    let cert = cert.to_str().unwrap();
    let base = [
        "--count",
        "20",
        "--concurrency",
        "1",
        "--duration",
        "60s",
        "--json",
    ];
    let run = |extra: &[&str]| {
        let mut args = vec!["storm", url.as_str()];
        args.extend_from_slice(&base);
        args.extend_from_slice(extra);
        let (code, stdout, json) = loadgen(&args);
        assert_eq!(code, 0, "{stdout}");
        json.expect("JSON")
    };
    let full = run(&["--ca", cert]);
    assert_eq!(full["ok"], 20, "{full}");
    assert!(full["tls_latency_us"]["p50"].as_u64() > Some(0), "{full}");
    assert_eq!(full["tls_resumed"], 0, "{full}");
    let resumed = run(&["--ca", cert, "--tls-resume"]);
    assert_eq!(resumed["ok"], 20, "{resumed}");
    assert!(resumed["tls_resumed"].as_u64() >= Some(18), "{resumed}");
    // A self-signed certificate is refused unless trusted, or not checked at all.
    let untrusted = run(&[]);
    assert_eq!(
        (
            untrusted["ok"].as_u64(),
            untrusted["errors"]["tls"].as_u64()
        ),
        (Some(0), Some(20))
    );
    let insecure = run(&["--insecure"]);
    assert_eq!(insecure["ok"], 20, "{insecure}");
}

#[test]
fn tls_groups_chooses_the_key_exchange_offered() {
    let (_server, port, cert) = wsedge_tls_with(vec![wsedge::tls::TlsGroup::X25519]);
    let url = format!("wss://localhost:{port}/");
    let run = |groups: &str| {
        let args = [
            "storm",
            &url,
            "--count",
            "5",
            "--concurrency",
            "1",
            "--duration",
            "60s",
            "--json",
            "--ca",
            cert.to_str().unwrap(),
            "--tls-groups",
            groups,
        ];
        let (code, stdout, json) = loadgen(&args);
        assert_eq!(code, 0, "{stdout}");
        let json = json.expect("JSON");
        (json["ok"].as_u64(), json["errors"]["tls"].as_u64())
    };
    // The server has X25519 only: a client offering only the hybrid group has no match.
    assert_eq!(run("x25519mlkem768"), (Some(0), Some(5)));
    assert_eq!(run("x25519mlkem768,x25519").0, Some(5));
    let (code, _, _) = loadgen(&["storm", &url, "--tls-groups", "x448"]);
    assert_eq!(code, 2, "an unknown group is a usage error");
}

#[test]
fn tls_flags_with_a_ws_target_are_usage_errors() {
    for flag in [
        &["--ca", "x.pem"][..],
        &["--insecure"],
        &["--tls-resume"],
        &["--tls-groups", "x25519"],
    ] {
        let mut args = vec!["storm", "ws://127.0.0.1:1/"];
        args.extend_from_slice(flag);
        let output = Command::new(env!("CARGO_BIN_EXE_wsedge-loadgen"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag:?}: {stderr}");
        assert!(
            stderr.contains(flag[0]) && stderr.contains("wss://"),
            "{stderr}"
        );
    }
}

/// A `--count` is shared out over `--processes`: fewer connections than processes is a usage
/// error before anything starts.
#[test]
fn a_count_under_the_processes_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge-loadgen"))
        .args([
            "storm",
            "ws://127.0.0.1:1/",
            "--count",
            "1",
            "--processes",
            "2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--count 1 is fewer than --processes 2"),
        "{stderr}"
    );
}

/// `--proxy-header v1|v2`: each connection starts with a PROXY header, as from a balancer; a
/// wsedge that expects one (`--accept-proxy-protocol`) upgrades them all, and closes every
/// connection that comes without.
#[test]
fn proxy_header_names_a_client_as_a_balancer_would() {
    let mut config = server_config(AfterUpgrade::Close, 5_000);
    config.conn.proxy.accept_from = Some(vec!["127.0.0.0/8".parse().unwrap()]);
    let server = Server::start(config).expect("start wsedge");
    let url = format!("ws://{}/", server.local_addrs()[0]);
    let run = |extra: &[&str]| {
        let mut args = vec!["storm", url.as_str(), "--count", "10", "--concurrency", "2"];
        args.extend_from_slice(&["--duration", "60s", "--json"]);
        args.extend_from_slice(extra);
        let (code, stdout, json) = loadgen(&args);
        assert_eq!(code, 0, "{stdout}");
        let json = json.expect("JSON");
        (json["ok"].as_u64(), json["errors_total"].as_u64())
    };
    assert_eq!(run(&["--proxy-header", "v1"]), (Some(10), Some(0)));
    assert_eq!(run(&["--proxy-header", "v2"]), (Some(10), Some(0)));
    assert_eq!(
        run(&[]),
        (Some(0), Some(10)),
        "no header: every connection closed"
    );
    let (code, _, _) = loadgen(&["storm", "wss://localhost:1/", "--proxy-header", "v2"]);
    assert_eq!(code, 2, "wss:// with --proxy-header is a usage error");
}

/// `--h2`: every stream of every connection is an upgrade (h2c with prior knowledge, and
/// wss:// with ALPN h2); a stream's refusal is counted per stream; a held connection holds
/// all its streams.
#[test]
fn h2_streams_count_as_upgrades_on_h2c_and_h2() {
    let mut config = server_config(AfterUpgrade::Echo, 10_000);
    config.conn.h2c = true;
    config.conn.policy.paths = vec!["/chat".into()];
    let server = Server::start(config).expect("start wsedge");
    let url = |path: &str| format!("ws://127.0.0.1:{}{path}", server.local_addrs()[0].port());
    let storm = |url: &str, extra: &[&str]| {
        let mut args = vec!["storm", url, "--h2", "--count", "5", "--concurrency", "2"];
        args.extend_from_slice(&["--duration", "60s", "--json"]);
        args.extend_from_slice(extra);
        let (code, stdout, json) = loadgen(&args);
        assert_eq!(code, 0, "{stdout}");
        json.expect("JSON")
    };
    let run = storm(&url("/chat"), &["--streams", "4"]);
    assert_eq!(
        (run["ok"].as_u64(), run["errors_total"].as_u64()),
        (Some(20), Some(0)),
        "{run}"
    );
    let refused = storm(&url("/other"), &["--streams", "3"]);
    assert_eq!(refused["errors"]["status_404"], 15, "{refused}");
    let snapshot = wsedge::stats::Counters::sum(server.counters().iter().map(|c| &**c));
    assert_eq!((snapshot.h2_connections, snapshot.h2_streams), (10, 35));
    let (code, stdout, json) = loadgen(&[
        "hold",
        &url("/chat"),
        "--h2",
        "--streams",
        "25",
        "--connections",
        "4",
        "--hold",
        "200ms",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(json.expect("JSON")["ok"], 100, "{stdout}");

    let (_tls, port, cert) = support::wsedge_tls_offering(AfterUpgrade::Close, Vec::new(), true);
    let url = format!("wss://localhost:{port}/");
    let run = storm(&url, &["--ca", cert.to_str().unwrap(), "--streams", "2"]);
    assert_eq!(run["ok"], 10, "{run}");
    // Without --h2 the same server speaks HTTP/1.1 to it.
    let (code, stdout, json) = loadgen(&[
        "storm",
        &url,
        "--ca",
        cert.to_str().unwrap(),
        "--count",
        "3",
        "--json",
    ]);
    assert_eq!(
        (code, json.map(|j| j["ok"].clone())),
        (0, Some(3.into())),
        "{stdout}"
    );
}

/// A server that does not speak HTTP/2 fails every stream of the connection.
#[test]
fn h2_against_an_http1_server_fails_each_stream() {
    let server = wsedge(AfterUpgrade::Close, 10_000);
    let url = format!("ws://127.0.0.1:{}/", server.local_addrs()[0].port());
    let (code, stdout, json) = loadgen(&[
        "storm",
        &url,
        "--h2",
        "--streams",
        "3",
        "--count",
        "2",
        "--json",
    ]);
    let json = json.expect("JSON");
    assert_eq!((code, json["ok"].as_u64()), (0, Some(0)), "{stdout}");
    assert_eq!(json["errors_total"], 6, "{json}");
}

#[test]
fn h2_flags_out_of_place_are_usage_errors() {
    for (args, says) in [
        (
            &["storm", "ws://127.0.0.1:1/", "--streams", "2"][..],
            "--h2",
        ),
        (&["slowloris", "ws://127.0.0.1:1/", "--h2"], "--h2"),
        (
            &[
                "storm",
                "ws://127.0.0.1:1/",
                "--h2",
                "--key",
                "dGhlIHNhbXBsZSBub25jZQ==",
            ],
            "--key",
        ),
        (
            &["storm", "ws://127.0.0.1:1/", "--h2", "--close", "ws"],
            "--close",
        ),
        (
            &["storm", "ws://127.0.0.1:1/", "--h2", "--streams", "101"],
            "--streams",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_wsedge-loadgen"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
