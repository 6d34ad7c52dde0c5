//! `wsedge check URL`: one real handshake, shown as a person reads it, ending in a verdict
//! that names the link that broke.
//!
//! Blocking I/O with deadlines: this is a diagnostic, not the data path. The rules a 101
//! must satisfy come from the handshake core's client check, not from a second copy.

pub mod client_tls;
pub mod framework;
mod http2;
pub mod verdict;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::handshake::{
    check_response, key_from_nonce, write_request, ClientRequest, ResponseCheck, ResponseError,
};
use verdict::{TlsFailure, Verdict};

/// What to check and how.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// Subprotocols to offer.
    pub subprotocols: Vec<String>,
    /// `Origin` to send.
    pub origin: Option<String>,
    /// Extra header lines, `Name: value`.
    pub headers: Vec<String>,
    /// Bearer token, sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Bound on each step (resolve, connect, TLS, response).
    pub timeout: Duration,
    /// Skip certificate checks.
    pub insecure: bool,
    /// After a 101: ping, time the pong, close cleanly.
    pub ping: bool,
    /// Over HTTP/2 (RFC 8441): ALPN h2 for `wss://`, prior knowledge for `ws://`.
    pub h2: bool,
}

/// A parsed check URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckUrl {
    /// TLS (`wss://`).
    pub secure: bool,
    /// Host name or address, without brackets.
    pub host: String,
    /// Port (default 80 or 443).
    pub port: u16,
    /// Path and query.
    pub path: String,
}

/// Parses a `ws://` or `wss://` URL.
pub fn parse_url(url: &str) -> Result<CheckUrl, String> {
    let (secure, rest) = match url.split_once("://") {
        Some(("ws", rest)) => (false, rest),
        Some(("wss", rest)) => (true, rest),
        Some(("http", _)) | Some(("https", _)) => {
            return Err("use ws:// or wss:// (the WebSocket form of the URL)".into())
        }
        _ => return Err("the URL must start with ws:// or wss://".into()),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    let default_port = if secure { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        let port = after
            .strip_prefix(':')
            .map(str::parse)
            .transpose()
            .map_err(|_| "invalid port")?;
        (host.to_owned(), port.unwrap_or(default_port))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (
                host.to_owned(),
                port.parse().map_err(|_| format!("invalid port {port:?}"))?,
            ),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    Ok(CheckUrl {
        secure,
        host,
        port,
        path,
    })
}

/// Everything the check saw.
#[derive(Debug)]
pub struct Report {
    /// The URL checked.
    pub url: String,
    /// The address connected to.
    pub address: Option<SocketAddr>,
    /// Step timings, in order.
    pub timings: Vec<(&'static str, Duration)>,
    /// TLS version and ALPN, for wss://.
    pub tls: Option<String>,
    /// The request as sent, secrets masked.
    pub request: Vec<String>,
    /// The response status line and headers as received.
    pub response: Vec<String>,
    /// The first line of a refusal's body.
    pub body: Option<String>,
    /// `--ping`: round trip of the pong.
    pub pong: Option<Duration>,
    /// `--ping`: the server's close code.
    pub close_code: Option<u16>,
    /// `--ping`: why no pong or no close came (the timeout, or a frame over the bound).
    pub ping_error: Option<String>,
    /// `--socketio`, `--sockjs`: what the framework's own handshake showed, a line a step.
    pub framework: Vec<String>,
    /// The conclusion.
    pub verdict: Verdict,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// Bounds the next reads by what is left until `deadline`; false once it has passed.
    fn read_until(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        let tcp = match self {
            Stream::Plain(s) => &*s,
            Stream::Tls(s) => s.get_ref(),
        };
        !left.is_zero() && tcp.set_read_timeout(Some(left)).is_ok()
    }
}

/// The largest server frame `--ping` reads (the pong and the close are 125 bytes at most;
/// a server's own message before them may be larger): a bigger one is not buffered.
const MAX_CHECK_FRAME: usize = 64 * 1024;

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn random_nonce() -> [u8; 16] {
    let mut nonce = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut nonce))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        nonce.copy_from_slice(&t.to_le_bytes());
    }
    nonce
}

/// Masks the secret part of credential headers for display.
fn mask_secret(line: &str) -> String {
    let Some((name, value)) = line.split_once(':') else {
        return line.to_owned();
    };
    let lower = name.to_ascii_lowercase();
    if lower == "authorization" || lower == "cookie" || lower == "proxy-authorization" {
        let value = value.trim();
        let scheme = value
            .split_once(' ')
            .map(|(s, _)| format!("{s} "))
            .unwrap_or_default();
        return format!("{name}: {scheme}******");
    }
    line.to_owned()
}

impl Report {
    fn new(url: &str) -> Report {
        Report {
            url: url.to_owned(),
            address: None,
            timings: Vec::new(),
            tls: None,
            request: Vec::new(),
            response: Vec::new(),
            body: None,
            pong: None,
            close_code: None,
            ping_error: None,
            framework: Vec::new(),
            verdict: Verdict::ResponseTimeout,
        }
    }
}

/// What a step of the check ends in: on to the next step, or the verdict (a network or
/// protocol failure). The outer `Err` is a usage error (a bad host name for TLS).
type Step<T> = Result<Result<T, Verdict>, String>;

/// Runs the check. Never panics on what the network does; everything ends in a verdict.
pub fn run(options: &CheckOptions) -> Result<Report, String> {
    let url = parse_url(&options.url)?;
    let mut report = Report::new(&options.url);
    let started = Instant::now();
    let mut stream = match open(&url, options, &mut report)? {
        Ok(stream) => stream,
        Err(verdict) => return Ok(conclude(report, verdict)),
    };
    if options.h2 {
        let verdict = match http2::upgrade(&mut stream, &url, options, &mut report)? {
            Ok(protocol) => Verdict::Upgraded { protocol },
            Err(verdict) => verdict,
        };
        report.timings.push(("total", started.elapsed()));
        return Ok(conclude(report, verdict));
    }
    let verdict = match upgrade(&mut stream, &url, options, &[], &mut report)? {
        Ok((protocol, early)) => {
            if options.ping {
                let deadline = Instant::now() + options.timeout;
                ping_and_close(&mut stream, &early, &mut report, deadline);
            }
            Verdict::Upgraded { protocol }
        }
        Err(verdict) => verdict,
    };
    report.timings.push(("total", started.elapsed()));
    Ok(conclude(report, verdict))
}

/// Resolves, connects and (for `wss://`) completes TLS, recording each step.
fn open(url: &CheckUrl, options: &CheckOptions, report: &mut Report) -> Step<Stream> {
    let tls_config = match url.secure {
        true if options.h2 => {
            let mut config = (*client_tls::client_config(options.insecure)?).clone();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Some(std::sync::Arc::new(config))
        }
        true => Some(client_tls::client_config(options.insecure)?),
        false => None,
    };
    let step = Instant::now();
    let addr = match (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map(|mut a| a.next())
    {
        Ok(Some(addr)) => addr,
        Ok(None) => return Ok(Err(Verdict::Dns(format!("{} has no address", url.host)))),
        Err(error) => {
            return Ok(Err(Verdict::Dns(format!(
                "cannot resolve {}: {error}",
                url.host
            ))))
        }
    };
    report.timings.push(("dns", step.elapsed()));
    report.address = Some(addr);

    let step = Instant::now();
    let tcp = match TcpStream::connect_timeout(&addr, options.timeout) {
        Ok(tcp) => tcp,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Ok(Err(Verdict::ConnectRefused))
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            return Ok(Err(Verdict::ConnectTimeout))
        }
        Err(e) => return Ok(Err(Verdict::ConnectFailed(e.to_string()))),
    };
    report.timings.push(("tcp connect", step.elapsed()));
    tcp.set_read_timeout(Some(options.timeout))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(options.timeout))
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);

    let stream = match tls_config {
        None => Stream::Plain(tcp),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| format!("host name: {e}"))?;
            let connection =
                rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
            let mut tls = rustls::StreamOwned::new(connection, tcp);
            let step = Instant::now();
            while tls.conn.is_handshaking() {
                if let Err(error) = tls.conn.complete_io(&mut tls.sock) {
                    let failure = match error.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                            TlsFailure::Other("no TLS answer in time (is this a TLS port?)".into())
                        }
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                            TlsFailure::Other(
                                "the server closed the connection during the TLS handshake".into(),
                            )
                        }
                        _ => client_tls::classify(&error),
                    };
                    return Ok(Err(Verdict::Tls(failure)));
                }
            }
            report.timings.push(("tls handshake", step.elapsed()));
            let version = tls
                .conn
                .protocol_version()
                .map_or("?".into(), |v| format!("{v:?}"));
            let alpn = tls
                .conn
                .alpn_protocol()
                .map_or("none".into(), |p| String::from_utf8_lossy(p).into_owned());
            report.tls = Some(format!(
                "{version}, ALPN {alpn}{}",
                if options.insecure {
                    ", certificate NOT checked (--insecure)"
                } else {
                    ""
                }
            ));
            Stream::Tls(Box::new(tls))
        }
    };

    Ok(Ok(stream))
}

/// Sends the upgrade request for `url` (with `extra` header lines besides the options'
/// own) and checks the answer: the chosen subprotocol and the bytes that came after the
/// 101, or the verdict.
fn upgrade(
    stream: &mut Stream,
    url: &CheckUrl,
    options: &CheckOptions,
    extra: &[String],
    report: &mut Report,
) -> Step<(Option<String>, Vec<u8>)> {
    let key = key_from_nonce(&random_nonce());
    let mut extra: Vec<String> = options.headers.iter().chain(extra).cloned().collect();
    if let Some(origin) = &options.origin {
        extra.push(format!("Origin: {origin}"));
    }
    if let Some(token) = &options.token {
        extra.push(format!("Authorization: Bearer {token}"));
    }
    let host = host_header(url);
    let protocols: Vec<&str> = options.subprotocols.iter().map(String::as_str).collect();
    let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut request =
        vec![0u8; 2048 + extra.iter().map(|h| h.len() + 2).sum::<usize>() + url.path.len()];
    let len = write_request(
        &mut request,
        &ClientRequest {
            host: &host,
            target: &url.path,
            key: &key,
            protocols: &protocols,
            extra_headers: &extra_refs,
        },
    )
    .map_err(|e| e.to_string())?;
    request.truncate(len);
    report.request = String::from_utf8_lossy(&request)
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(mask_secret)
        .collect();

    let step = Instant::now();
    if let Err(error) = stream.write_all(&request).and_then(|()| stream.flush()) {
        let reset = error.kind() == io::ErrorKind::ConnectionReset
            || error.kind() == io::ErrorKind::BrokenPipe;
        return Ok(Err(Verdict::ClosedEarly { reset }));
    }
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let mut first_byte = None;
    let deadline = Instant::now() + options.timeout;
    let (header_len, outcome) = loop {
        match check_response(&received, &key, &protocols) {
            ResponseCheck::Partial => {}
            ResponseCheck::Accepted {
                header_len,
                protocol,
            } => {
                break (header_len, Ok(protocol.map(str::to_owned)));
            }
            ResponseCheck::Failed(error) => break (header_block_len(&received), Err(error)),
        }
        if Instant::now() >= deadline {
            return Ok(Err(Verdict::ResponseTimeout));
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                record_response(report, &received);
                return Ok(Err(Verdict::ClosedEarly { reset: false }));
            }
            Ok(n) => {
                first_byte.get_or_insert_with(|| step.elapsed());
                if received.is_empty() && matches!(buf[0], 0x15 | 0x16) && !url.secure {
                    return Ok(Err(Verdict::TlsOnPlainPort));
                }
                received.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Ok(Err(Verdict::ClosedEarly { reset: true }))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Err(Verdict::ResponseTimeout))
            }
            Err(e) => return Ok(Err(Verdict::ConnectFailed(e.to_string()))),
        }
    };
    if let Some(first) = first_byte {
        report.timings.push(("first byte", first));
    }
    record_response(report, &received[..header_len.min(received.len())]);
    let verdict = match outcome {
        Ok(protocol) => return Ok(Ok((protocol, received[header_len..].to_vec()))),
        Err(ResponseError::NotSwitching { status }) => {
            let deadline = Instant::now() + options.timeout;
            let body = read_body(stream, &received, header_len, deadline);
            report.body = body.clone();
            Verdict::Status {
                code: status,
                hint: status_hint(status, &report.response).or(body),
            }
        }
        Err(error) => Verdict::BadUpgrade(error),
    };
    Ok(Err(verdict))
}

/// The `Host` header for `url` (the port only when it is not the scheme's).
fn host_header(url: &CheckUrl) -> String {
    if (url.secure && url.port == 443) || (!url.secure && url.port == 80) {
        url.host.clone()
    } else if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    }
}

fn conclude(mut report: Report, verdict: Verdict) -> Report {
    report.verdict = verdict;
    report
}

fn header_block_len(received: &[u8]) -> usize {
    received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(received.len(), |i| i + 4)
}

fn record_response(report: &mut Report, header_block: &[u8]) {
    report.response = String::from_utf8_lossy(header_block)
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
}

fn header<'r>(response: &'r [String], name: &str) -> Option<&'r str> {
    response.iter().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// What the headers of a refusal say beyond the status.
fn status_hint(status: u16, response: &[String]) -> Option<String> {
    match status {
        300..=399 => header(response, "Location").map(|l| format!("to {l}")),
        426 => header(response, "Sec-WebSocket-Version")
            .map(|v| format!("it asks for Sec-WebSocket-Version: {v}; this client sent 13"))
            .or_else(|| header(response, "Upgrade").map(|u| format!("it asks for Upgrade: {u}"))),
        429 | 503 => header(response, "Retry-After").map(|r| format!("Retry-After: {r} s")),
        _ => None,
    }
}

/// The first line of a short refusal body (wsedge's say which rule broke).
fn read_body(
    stream: &mut Stream,
    received: &[u8],
    header_len: usize,
    deadline: Instant,
) -> Option<String> {
    let text = String::from_utf8_lossy(&received[..header_len.min(received.len())]).into_owned();
    let length: usize = text
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        })
        .and_then(|(_, v)| v.trim().parse().ok())?;
    if length == 0 || length > 4096 {
        return None;
    }
    let mut body = received.get(header_len..).unwrap_or_default().to_vec();
    let mut buf = [0u8; 1024];
    while body.len() < length && stream.read_until(deadline) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&body)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    (!line.is_empty()).then(|| format!("server says: {line}"))
}

/// Sends a masked ping, waits for the pong, then closes with 1000 and reads the reply, all
/// by `deadline`, buffering no frame over [`MAX_CHECK_FRAME`].
fn ping_and_close(stream: &mut Stream, early: &[u8], report: &mut Report, deadline: Instant) {
    let mask = [0x5a, 0x1b, 0x7c, 0x3d];
    let payload = b"wsedge-check";
    let mut ping = vec![0x89, 0x80 | payload.len() as u8];
    ping.extend_from_slice(&mask);
    ping.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let sent = Instant::now();
    if stream.write_all(&ping).is_err() {
        return;
    }
    let mut pending = early.to_vec();
    let mut closing = false;
    loop {
        if frame_too_long(&pending) {
            report.ping_error = Some(format!(
                "the server sent a frame over {} KiB: not read",
                MAX_CHECK_FRAME / 1024
            ));
            return;
        }
        while let Some((opcode, body, used)) = parse_server_frame(&pending) {
            pending.drain(..used);
            match opcode {
                0xA if report.pong.is_none() => {
                    report.pong = Some(sent.elapsed());
                    let close = [
                        0x88,
                        0x82,
                        mask[0],
                        mask[1],
                        mask[2],
                        mask[3],
                        0x03 ^ mask[0],
                        0xE8 ^ mask[1],
                    ];
                    if stream.write_all(&close).is_err() {
                        return;
                    }
                    closing = true;
                }
                0x8 => {
                    report.close_code = Some(if body.len() >= 2 {
                        u16::from_be_bytes([body[0], body[1]])
                    } else {
                        1005
                    });
                    return;
                }
                _ => {}
            }
        }
        let waited = if closing { "close" } else { "pong" };
        let timed_out = || Some(format!("no {waited} within the timeout"));
        if !stream.read_until(deadline) {
            report.ping_error = timed_out();
            return;
        }
        let mut buf = [0u8; 1024];
        match stream.read(&mut buf) {
            // The read's own timeout is what was left of the deadline.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                report.ping_error = timed_out();
                return;
            }
            Ok(0) | Err(_) => {
                if closing && report.close_code.is_none() {
                    report.close_code = Some(1006);
                }
                return;
            }
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether the frame at the start of `buf` says it is longer than [`MAX_CHECK_FRAME`] (or
/// more than that is buffered without a whole frame).
fn frame_too_long(buf: &[u8]) -> bool {
    let declared = match buf {
        [_, b1, rest @ ..] => match b1 & 0x7F {
            126 => rest
                .get(..2)
                .map(|l| u64::from(u16::from_be_bytes([l[0], l[1]]))),
            127 => rest
                .get(..8)
                .and_then(|l| l.try_into().ok())
                .map(u64::from_be_bytes),
            n => Some(u64::from(n)),
        },
        _ => None,
    };
    declared.is_some_and(|len| len > MAX_CHECK_FRAME as u64) || buf.len() > 2 * MAX_CHECK_FRAME
}

/// `text` safe to print on a terminal: control characters the server sent (escape
/// sequences, carriage returns, bells) are shown as `\u{..}` escapes, line breaks kept.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c != '\n' && (c.is_control() || c == '\u{7f}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| match unsafe_char(c) {
            true => c.escape_unicode().to_string(),
            false => c.to_string(),
        })
        .collect::<String>()
        .into()
}

/// One unmasked server frame from the start of `buf`: (opcode, payload, bytes used).
fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    let (len, at): (usize, usize) = match b1 & 0x7F {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at.checked_add(len)?)?;
    Some((b0 & 0x0F, payload.to_vec(), at + len))
}

impl Report {
    /// The exchange and verdict as a person reads them.
    pub fn human(&self) -> String {
        let mut out = String::new();
        if let Some(addr) = self.address {
            out += &format!("* {} -> {addr}\n", self.url);
        }
        for line in &self.framework {
            out += &format!("* {line}\n");
        }
        for (name, time) in &self.timings {
            out += &format!("* {name:<13} {:>9.3} ms\n", time.as_secs_f64() * 1e3);
        }
        if let Some(tls) = &self.tls {
            out += &format!("* TLS: {tls}\n");
        }
        for line in &self.request {
            out += &format!("> {line}\n");
        }
        for line in &self.response {
            out += &format!("< {line}\n");
        }
        if let Some(body) = &self.body {
            out += &format!("< (body) {}\n", body.trim_start_matches("server says: "));
        }
        if let Some(pong) = self.pong {
            out += &format!("* pong after {:.3} ms\n", pong.as_secs_f64() * 1e3);
        }
        if let Some(code) = self.close_code {
            out += &format!("* closed by the server with code {code}\n");
        }
        if let Some(error) = &self.ping_error {
            out += &format!("* --ping: {error}\n");
        }
        out += &format!("verdict: {}\n", self.verdict.explain());
        // Much of it is the server's own words: nothing it sent may drive the terminal.
        printable(&out).into_owned()
    }

    /// The same facts and verdict as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        let timings: serde_json::Map<String, serde_json::Value> = self
            .timings
            .iter()
            .map(|(name, time)| {
                (
                    name.replace(' ', "_") + "_ms",
                    json!(time.as_secs_f64() * 1e3),
                )
            })
            .collect();
        json!({
            "url": self.url,
            "address": self.address.map(|a| a.to_string()),
            "timings": timings,
            "tls": self.tls,
            "request": self.request,
            "response": self.response,
            "status": self.response.first().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse::<u16>().ok()),
            "body": self.body,
            "pong_ms": self.pong.map(|p| p.as_secs_f64() * 1e3),
            "close_code": self.close_code,
            "ping_error": self.ping_error,
            "framework": self.framework,
            "verdict": self.verdict.kind(),
            "explanation": self.verdict.explain(),
            "ok": self.verdict.exit_code() == 0,
            "exit_code": self.verdict.exit_code(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("wss://example.com/chat?x=1").unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port, u.path.as_str()),
            (true, "example.com", 443, "/chat?x=1")
        );
        assert_eq!(parse_url("ws://[::1]:9000").unwrap().host, "::1");
        assert_eq!(parse_url("ws://h").unwrap().port, 80);
        assert!(parse_url("https://h").unwrap_err().contains("wss://"));
        assert!(parse_url("ws://h:x/").is_err());
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            mask_secret("Authorization: Bearer abc"),
            "Authorization: Bearer ******"
        );
        assert_eq!(mask_secret("Cookie: session=1"), "Cookie: ******");
        assert_eq!(mask_secret("Origin: https://a"), "Origin: https://a");
    }
}
