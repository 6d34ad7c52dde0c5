//! HTTP/2 written frame by frame, for the tests of WebSockets over HTTP/2 (`--h2`, `--h2c`).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use super::{Cert, Server, DEADLINE};

#[allow(unused_imports)] // each test file uses its own subset
pub use wsedge::http2::client::kind::{
    CONTINUATION, DATA, GOAWAY, HEADERS, PING, RST_STREAM, SETTINGS,
};

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// A client that writes HTTP/2 frame by frame.
pub struct Raw {
    pub socket: TcpStream,
    read: Vec<u8>,
    pub decoder: loona_hpack::Decoder<'static>,
}

impl Raw {
    /// The preface and `settings`, on a fresh connection to `server`'s plain listener.
    pub fn connect(server: &Server, settings: &[(u16, u32)]) -> Raw {
        let socket = TcpStream::connect(server.addr).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut raw = Raw {
            socket,
            read: Vec::new(),
            decoder: loona_hpack::Decoder::new(),
        };
        raw.socket
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .unwrap();
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        raw.send(SETTINGS, 0, 0, &payload);
        raw
    }

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        wsedge::http2::client::frame(&mut out, kind, flags, stream, payload);
        out
    }

    pub fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let frame = Raw::frame(kind, flags, stream, payload);
        self.socket.write_all(&frame).unwrap();
    }

    /// The next frame; `None` once the server closed the connection.
    pub fn next(&mut self) -> Option<Frame> {
        loop {
            if self.read.len() >= 9 {
                let len =
                    u32::from_be_bytes([0, self.read[0], self.read[1], self.read[2]]) as usize;
                if self.read.len() >= 9 + len {
                    let frame = Frame {
                        kind: self.read[3],
                        flags: self.read[4],
                        stream: u32::from_be_bytes(self.read[5..9].try_into().unwrap())
                            & 0x7fff_ffff,
                        payload: self.read[9..9 + len].to_vec(),
                    };
                    self.read.drain(..9 + len);
                    if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                        // The server may have closed already: what it said is still read.
                        let ack = Raw::frame(SETTINGS, ACK, 0, &[]);
                        let _ = self.socket.write_all(&ack);
                    }
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 16384];
            match self.socket.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.read.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading the server: {e}"),
            }
        }
    }

    /// Frames until one that `wanted` takes; panics if the connection ends first.
    pub fn until(&mut self, what: &str, wanted: impl Fn(&Frame) -> bool) -> Frame {
        let mut seen = Vec::new();
        loop {
            match self.next() {
                Some(frame) if wanted(&frame) => return frame,
                Some(frame) => seen.push((frame.kind, frame.flags, frame.stream, frame.payload.len())),
                None => panic!("the connection ended before {what}; frames seen (kind, flags, stream, length): {seen:?}"),
            }
        }
    }

    /// The `:status` of a HEADERS frame's block.
    pub fn status(&mut self, frame: &Frame) -> u16 {
        let fields = self.decoder.decode(&frame.payload).unwrap();
        let status = fields.iter().find(|(n, _)| n == b":status").unwrap();
        std::str::from_utf8(&status.1).unwrap().parse().unwrap()
    }

    /// Opens stream `id` with an extended CONNECT to `path`.
    pub fn open(&mut self, id: u32, path: &str) {
        let block = block(&connect_fields(path, &[]));
        self.send(HEADERS, END_HEADERS, id, &block);
    }
}

pub fn connect_fields<'a>(path: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut fields = vec![
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("sec-websocket-version", "13"),
    ];
    fields.extend_from_slice(extra);
    fields
}

/// An HPACK block of literal fields, never indexed and not Huffman-coded.
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x10);
        for text in [name, value] {
            integer(&mut out, text.len());
            out.extend_from_slice(text.as_bytes());
        }
    }
    out
}

/// An HPACK integer with a 7-bit prefix (a string's length, no Huffman).
pub fn integer(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// A masked client frame.
pub fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    super::client_frame(true, opcode, payload)
}

/// Runs the Node HTTP/2 client `script` (in `tests/clients`) against `server` over h2c and
/// over TLS with ALPN h2 (trusting `cert`), and checks that it succeeded and said every line
/// of `says`.
pub fn node_says_over_both(server: &Server, cert: &Cert, script: &str, says: &[&str]) {
    let urls = [
        vec![format!("http://{}", server.addr)],
        vec![
            format!("https://{}", server.tls_addr()),
            cert.cert.display().to_string(),
        ],
    ];
    for url in urls {
        let Some(output) = super::node(script, &url) else {
            return;
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{url:?}: {stdout}\n{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            server.log()
        );
        for line in says {
            assert!(
                stdout.contains(line),
                "{url:?} did not say {line:?}: {stdout}"
            );
        }
    }
}

/// Three tungstenite clients through HAProxy in front of `server` (which runs with
/// `--h2c` and `--metrics`), HAProxy speaking HTTP/2 toward it (`proto h2 ws h2`): each
/// echoes at `path`, and `server` counts them as streams of at most three connections.
/// `scratch` names the test's directory. Skips (or fails, when required) without HAProxy.
pub fn through_haproxy_ws_h2(server: &Server, path: &str, scratch: &str) {
    let Some(haproxy) = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        let required = std::env::var("WSEDGE_REQUIRE_THIRD_PARTY").is_ok_and(|v| v == "1");
        assert!(!required, "HAProxy is required (apt install haproxy)");
        eprintln!("skipping: no haproxy");
        return;
    };
    let front = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = super::scratch(scratch);
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 1000\ndefaults\n  mode http\n  timeout connect 5s\n  \
             timeout client 30s\n  timeout server 30s\n  timeout tunnel 30s\n\
             frontend edge\n  bind {front}\n  default_backend wsedge\n\
             backend wsedge\n  server w {} proto h2 ws h2\n",
            server.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(haproxy)
        .args(["-db", "-f"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(front).is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy did not listen on {front}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut sockets = Vec::new();
    for n in 0..3 {
        let (mut socket, _) = tungstenite::connect(format!("ws://{front}{path}")).unwrap();
        let text = format!("through HAProxy {n}");
        socket
            .send(tungstenite::Message::text(text.clone()))
            .unwrap();
        let echoed = socket.read().unwrap();
        assert_eq!(echoed, tungstenite::Message::text(text));
        sockets.push(socket);
    }
    server.wait_for_metric("wsedge_h2_streams_total", |n| n >= 3.0);
    // HAProxy multiplexes: fewer connections than WebSockets reach wsedge.
    let connections = super::metric_sum(&server.metrics_addr(), "wsedge_h2_connections_total");
    assert!(
        (1.0..=3.0).contains(&connections),
        "{connections} HTTP/2 connections"
    );
    for mut socket in sockets {
        socket.close(None).unwrap();
        while socket.read().is_ok() {}
    }
    let _ = child.kill();
    let _ = child.wait();
}
