//! `--metrics`: Prometheus text that parses and counts what the test did; `/healthz`.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;

use common::{exchange, upgrade_request, Io, Server};

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("metrics endpoint");
    stream.set_read_timeout(Some(common::DEADLINE)).unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes())
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

/// Parses the text exposition format strictly enough to catch a malformed line; returns
/// the sum of each series name (labels summed over) and the value of each full series.
fn parse(text: &str) -> (HashMap<String, f64>, HashMap<String, f64>) {
    let (mut by_name, mut by_series) = (HashMap::new(), HashMap::new());
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            assert!(
                line.is_empty()
                    || line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line == "# EOF",
                "{line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name: {line}"
        );
        if series.contains('{') {
            assert!(series.ends_with('}'), "unclosed labels: {line}");
        }
        *by_name.entry(name.to_owned()).or_insert(0.0) += value;
        by_series.insert(series.to_owned(), value);
    }
    (by_name, by_series)
}

fn metrics_count_what_happened(io: Io) {
    let mut server = Server::start(io, &["--metrics", "127.0.0.1:0", "--drain-secs", "2"]);
    let metrics = server.metrics_addr();

    let held: Vec<_> = (0..3)
        .map(|_| exchange(&server, &upgrade_request("/", &[])).1)
        .collect();
    for _ in 0..2 {
        let (head, _) = exchange(&server, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(head.status, 426);
    }
    server.wait_for_metric("wsedge_open_connections", |open| open >= 3.0);
    let (status, text) = get(&metrics, "/metrics");
    assert_eq!(status, 200);
    let (by_name, by_series) = parse(&text);
    assert_eq!(by_name["wsedge_upgrades_total"], 3.0, "{text}");
    assert_eq!(by_name["wsedge_accepted_connections_total"], 5.0, "{text}");
    assert_eq!(
        by_series[r#"wsedge_rejections_total{status="426",reason="missing Upgrade: websocket"}"#],
        2.0,
        "{text}"
    );
    assert_eq!(
        by_name["wsedge_handshake_latency_seconds_count"], 3.0,
        "{text}"
    );
    assert!(by_name["wsedge_open_connections"] >= 3.0, "{text}");
    assert_eq!(by_name["wsedge_draining"], 0.0);
    assert_eq!(get(&metrics, "/healthz").0, 200);
    assert_eq!(get(&metrics, "/nope").0, 404);

    server.signal(libc::SIGTERM);
    server.wait_for_log("draining");
    assert_eq!(get(&metrics, "/healthz"), (503, "draining\n".to_owned()));
    drop(held);
    assert!(server.wait_exit().success());
}

fn stats_interval_logs_a_summary_line(io: Io) {
    let server = Server::start(io, &["--stats-interval", "1"]);
    let _held = exchange(&server, &upgrade_request("/", &[])).1;
    server.wait_for_log("stats: ");
    let log = server.log();
    let line = log.lines().find(|l| l.contains("stats: ")).unwrap();
    assert!(
        line.contains("upgrades/s") && line.contains("open="),
        "{line}"
    );
}

/// A scraper that trickles its request a byte at a time is cut off at the scrape deadline
/// (not the per-read timeout, which each byte would renew), and other scrapes are answered
/// meanwhile instead of queueing behind it.
fn a_trickling_scraper_holds_up_no_one_and_is_cut_off(io: Io) {
    let server = Server::start(io, &["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let tricklers: Vec<_> = (0..2)
        .map(|_| {
            let addr = metrics.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&addr).unwrap();
                let start = std::time::Instant::now();
                // Far longer than the deadline: only wsedge can end this.
                for byte in b"GET /metrics HTTP/1.1\r\nHost: a-very-slow-scraper.example\r\n\r\n" {
                    if stream.write_all(&[*byte]).is_err() {
                        return start.elapsed();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(300));
                }
                start.elapsed()
            })
        })
        .collect();
    // Meanwhile ordinary scrapes are answered.
    for _ in 0..3 {
        assert_eq!(get(&metrics, "/healthz").0, 200);
    }
    for trickler in tricklers {
        let lasted = trickler.join().unwrap();
        assert!(
            lasted < std::time::Duration::from_secs(10),
            "a trickling scraper was held for {lasted:?}"
        );
    }
}

/// `/healthz` has its own budget: connections that say nothing hold no slot (a balancer
/// probing `/healthz` once got `503 too many now` behind four of them, and took a healthy
/// edge out of rotation), and are closed when they keep silent, or to let a newcomer in.
fn idle_connections_never_starve_healthz(io: Io) {
    let server = Server::start(io, &["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let mut silent: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(&metrics).unwrap())
        .collect();
    for _ in 0..80 {
        let (status, body) = get(&metrics, "/healthz");
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(get(&metrics, "/metrics").0, 200);
    // More silent connections than are read at once: /healthz still gets in.
    silent.extend((0..100).map(|_| TcpStream::connect(&metrics).unwrap()));
    assert_eq!(get(&metrics, "/healthz").0, 200);
    // Each silent one is closed (or reset, for the oldest) in its turn.
    for mut stream in silent {
        stream.set_read_timeout(Some(common::DEADLINE)).unwrap();
        let mut byte = [0u8; 1];
        let read = stream.read(&mut byte);
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        if let Err(error) = read {
            assert_ne!(error.kind(), std::io::ErrorKind::WouldBlock, "still open");
        }
    }
}

/// Every accepted connection ends in exactly one outcome: upgraded, rejected (408
/// included), a silent handshake timeout, or abandoned by the client (closed or reset before
/// any answer); the counters add up to `accepted`.
fn every_accepted_connection_has_exactly_one_outcome(io: Io) {
    let server = Server::start(
        io,
        &["--metrics", "127.0.0.1:0", "--handshake-timeout-ms", "300"],
    );
    let metrics = server.metrics_addr();
    let upgraded: Vec<_> = (0..2)
        .map(|_| exchange(&server, &upgrade_request("/", &[])).1)
        .collect();
    let (head, _rejected) = exchange(&server, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(head.status, 426);
    let _silent = server.connect();
    let mut talker = server.connect();
    talker.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let mut closer = server.connect();
    closer.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let resetter = server.connect();
    socket2::SockRef::from(&resetter)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    // The server holds all four before they end their way.
    server.wait_for_metric("wsedge_handshaking_connections", |n| n >= 4.0);
    drop(closer);
    drop(resetter);
    assert_eq!(common::read_head(&mut talker).status, 408);
    server.wait_for_metric("wsedge_handshaking_connections", |n| n == 0.0);
    server.wait_for_metric("wsedge_handshakes_abandoned_total", |n| n == 2.0);
    let (by_name, _) = parse(&get(&metrics, "/metrics").1);
    assert_eq!(by_name["wsedge_accepted_connections_total"], 7.0);
    assert_eq!(by_name["wsedge_upgrades_total"], 2.0);
    assert_eq!(
        by_name["wsedge_rejected_handshakes_total"], 2.0,
        "426 and 408"
    );
    assert_eq!(
        by_name["wsedge_handshake_timeouts_total"], 2.0,
        "silent and 408"
    );
    let answered_timeouts = 1.0;
    assert_eq!(
        by_name["wsedge_accepted_connections_total"],
        by_name["wsedge_upgrades_total"]
            + by_name["wsedge_rejected_handshakes_total"]
            + by_name["wsedge_upstream_refusals_passed_total"]
            + by_name["wsedge_http_forwarded_total"]
            + (by_name["wsedge_handshake_timeouts_total"] - answered_timeouts)
            + by_name["wsedge_handshakes_abandoned_total"]
            + by_name["wsedge_shed_before_work_total"]
    );
    drop(upgraded);
}

on_both_backends!(
    every_accepted_connection_has_exactly_one_outcome,
    a_trickling_scraper_holds_up_no_one_and_is_cut_off,
    idle_connections_never_starve_healthz,
    metrics_count_what_happened,
    stats_interval_logs_a_summary_line
);
