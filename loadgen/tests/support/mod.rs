//! What the load generator's test files share: an in-process wsedge and a way to run the
//! binary.
#![allow(dead_code)]

use std::process::Command;

use serde_json::Value;
use wsedge::conn::{AfterUpgrade, ConnConfig};
use wsedge::handshake::Policy;
use wsedge::reactor::{Backend, Limits, ListenOptions, Server, ServerConfig};

pub fn wsedge(after: AfterUpgrade, handshake_timeout_ms: u64) -> Server {
    Server::start(server_config(after, handshake_timeout_ms)).expect("start wsedge")
}

pub fn server_config(after: AfterUpgrade, handshake_timeout_ms: u64) -> ServerConfig {
    ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        listen_tls: Vec::new(),
        tls: None,
        threads: 1,
        pin: false,
        backend: Backend::Epoll,
        listen_options: ListenOptions {
            backlog: 1024,
            defer_accept_secs: 0,
        },
        conn: ConnConfig {
            policy: Policy {
                subprotocols: vec!["chat".into()],
                ..Policy::default()
            },
            after,
            handshake_timeout_ms,
            h2c: false,
            client_patience_ms: handshake_timeout_ms,
            idle_timeout_ms: 0,
            send_timeout_ms: 30_000,
            max_message_bytes: 1 << 20,
            linger_ms: 500,
            proxy: Default::default(),
        },
        limits: Limits::default(),
        handover: false,
    }
}

/// Runs the load generator: exit code, stdout, stderr and the JSON of the last stdout line.
pub fn loadgen(args: &[&str]) -> (i32, String, String, Option<Value>) {
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge-loadgen"))
        .args(args)
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    (output.status.code().unwrap_or(-1), stdout, stderr, json)
}

/// One histogram line of an interval log, read with the hdrhistogram crate's own reader (as
/// any other tool would).
pub struct LogLine {
    pub tag: Option<String>,
    pub start: f64,
    pub histogram: hdrhistogram::Histogram<u64>,
}

pub fn read_log(path: &std::path::Path) -> Vec<LogLine> {
    use base64::Engine as _;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    let text = std::fs::read(path).expect("the log was written");
    let mut deserializer = hdrhistogram::serialization::Deserializer::new();
    IntervalLogIterator::new(&text)
        .filter_map(|entry| match entry.expect("a well-formed interval log") {
            LogEntry::Interval(line) => Some(LogLine {
                tag: line.tag().map(|t| t.as_str().to_owned()),
                start: line.start_timestamp().as_secs_f64(),
                histogram: deserializer
                    .deserialize(
                        &mut base64::engine::general_purpose::STANDARD
                            .decode(line.encoded_histogram())
                            .expect("base64")
                            .as_slice(),
                    )
                    .expect("a histogram"),
            }),
            _ => None,
        })
        .collect()
}

/// The sum of a log's untagged (total latency) histograms.
pub fn total_of(lines: &[LogLine]) -> hdrhistogram::Histogram<u64> {
    let mut total = hdrhistogram::Histogram::new(3).expect("histogram");
    for line in lines.iter().filter(|l| l.tag.is_none()) {
        total.add(&line.histogram).expect("same units");
    }
    total
}

/// A scratch file name unique to this test process.
pub fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("wsedge-loadgen-{}-{name}", std::process::id()))
}

/// An in-process wsedge (`after` the 101) with one TLS listener on a fresh self-signed
/// certificate for `localhost`, offering the key-exchange `groups` (empty: rustls's);
/// returns the server, the TLS port and the certificate's PEM file.
pub fn wsedge_tls(
    after: AfterUpgrade,
    groups: Vec<wsedge::tls::TlsGroup>,
) -> (Server, u16, std::path::PathBuf) {
    wsedge_tls_offering(after, groups, false)
}

/// [`wsedge_tls`], offering HTTP/2 by ALPN when `h2` (`--h2`).
pub fn wsedge_tls_offering(
    after: AfterUpgrade,
    groups: Vec<wsedge::tls::TlsGroup>,
    h2: bool,
) -> (Server, u16, std::path::PathBuf) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("loadgen-wss-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let settings = wsedge::tls::TlsSettings {
        pairs: vec![(cert.clone(), key)],
        groups,
        h2,
        ..Default::default()
    };
    let config = ServerConfig {
        listen: Vec::new(),
        listen_tls: vec!["127.0.0.1:0".parse().unwrap()],
        tls: Some(wsedge::tls::shared(
            wsedge::tls::server_config(&settings).unwrap(),
        )),
        ..server_config(after, 10_000)
    };
    let server = Server::start(config).expect("start wsedge");
    let port = server.local_addrs()[0].port();
    (server, port, cert)
}
