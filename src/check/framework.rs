//! `wsedge check --socketio URL` and `--sockjs URL`: the framework's own handshake before
//! the WebSocket one, as its default client makes it, each step shown and the broken link
//! named. Socket.IO (Engine.IO 4): the polling handshake (`sid`, `pingInterval`,
//! `upgrades`), the upgrade with that `sid` and the cookies the polling answer set, then
//! `2probe`, `3probe`, `5`. SockJS: `GET /info`, then the upgrade to
//! `/<server>/<session>/websocket` and its open frame `o`.

use std::io::{Read, Write};
use std::time::Instant;

use super::verdict::{FrameworkFailure, Verdict};
use super::{conclude, open, parse_url, upgrade, CheckOptions, CheckUrl, Report, Stream};

/// Which framework's handshake to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    /// Socket.IO / Engine.IO 4.
    SocketIo,
    /// SockJS.
    SockJs,
}

/// The most of a plain answer read (an Engine.IO handshake or SockJS info is a few hundred
/// bytes).
const MAX_ANSWER: usize = 64 * 1024;

/// Header lines as (name, value).
type Headers = Vec<(String, String)>;

/// A plain answer: status, headers, body (de-chunked).
struct Answer {
    status: u16,
    headers: Headers,
    body: String,
}

/// Runs the framework check for `options.url` (the framework's path: `ws://host/socket.io/`,
/// `wss://host/sockjs`).
pub fn run(framework: Framework, options: &CheckOptions) -> Result<Report, String> {
    let url = parse_url(&options.url)?;
    let mut report = Report::new(&options.url);
    let started = Instant::now();
    let verdict = match framework {
        Framework::SocketIo => socketio(&url, options, &mut report)?,
        Framework::SockJs => sockjs(&url, options, &mut report)?,
    };
    report.timings.push(("total", started.elapsed()));
    Ok(conclude(report, verdict))
}

/// `url`'s path with `tail` appended (a `/` between them) and `query`.
fn path_with(url: &CheckUrl, tail: &str, query: &str) -> CheckUrl {
    let base = url
        .path
        .split('?')
        .next()
        .unwrap_or("/")
        .trim_end_matches('/');
    let mut path = format!("{base}/{tail}");
    if !query.is_empty() {
        path = format!("{path}?{query}");
    }
    CheckUrl {
        path,
        ..url.clone()
    }
}

fn socketio(
    url: &CheckUrl,
    options: &CheckOptions,
    report: &mut Report,
) -> Result<Verdict, String> {
    let polling = path_with(url, "", "EIO=4&transport=polling");
    let answer = match get(&polling, options, &[], report)? {
        Ok(answer) => answer,
        Err(verdict) => return Ok(verdict),
    };
    report.framework.push(format!(
        "polling: GET {} -> {}",
        polling.path, answer.status
    ));
    if answer.status != 200 {
        return Ok(Verdict::Framework(FrameworkFailure::PollingRefused {
            status: answer.status,
            body: first_line(&answer.body),
        }));
    }
    // An Engine.IO 4 open packet: "0" and a JSON object.
    let Some(open) = answer
        .body
        .strip_prefix('0')
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
    else {
        return Ok(Verdict::Framework(FrameworkFailure::NotEngineIo(
            first_line(&answer.body),
        )));
    };
    let sid = open["sid"].as_str().unwrap_or_default().to_owned();
    let upgrades: Vec<String> = open["upgrades"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    report.framework.push(format!(
        "Engine.IO open: sid {sid}, pingInterval {} ms, pingTimeout {} ms, upgrades {upgrades:?}",
        open["pingInterval"], open["pingTimeout"]
    ));
    if sid.is_empty() {
        return Ok(Verdict::Framework(FrameworkFailure::NotEngineIo(
            first_line(&answer.body),
        )));
    }
    if !upgrades.iter().any(|u| u == "websocket") {
        return Ok(Verdict::Framework(FrameworkFailure::NoWebSocketOffered));
    }
    let cookies = cookies_set(&answer);
    if !cookies.is_empty() {
        report.framework.push(format!(
            "cookies set by the polling answer: {}",
            names(&cookies)
        ));
    }
    let ws = path_with(url, "", &format!("EIO=4&transport=websocket&sid={sid}"));
    let (mut stream, early) = match upgraded(&ws, options, &cookies, report)? {
        Ok(upgraded) => upgraded,
        Err(Verdict::Status { code: 400, hint })
            if hint
                .as_deref()
                .is_some_and(|h| h.contains("Session ID unknown")) =>
        {
            return Ok(Verdict::Framework(FrameworkFailure::SessionUnknown {
                sticky_cookie: !cookies.is_empty(),
            }))
        }
        Err(verdict) => return Ok(verdict),
    };
    report.framework.push("upgraded: sending 2probe".into());
    let deadline = Instant::now() + options.timeout;
    if send_text(&mut stream, b"2probe").is_err() {
        return Ok(Verdict::Framework(FrameworkFailure::ProbeUnanswered));
    }
    match read_text_until(&mut stream, early, deadline, |text| text == "3probe") {
        Some(_) => report
            .framework
            .push("3probe received: sending 5 (upgrade)".into()),
        None => return Ok(Verdict::Framework(FrameworkFailure::ProbeUnanswered)),
    }
    let _ = send_text(&mut stream, b"5");
    close(&mut stream);
    Ok(Verdict::FrameworkUpgraded(
        "Engine.IO upgraded from polling to WebSocket",
    ))
}

fn sockjs(url: &CheckUrl, options: &CheckOptions, report: &mut Report) -> Result<Verdict, String> {
    let info_url = path_with(url, "info", "");
    let answer = match get(&info_url, options, &[], report)? {
        Ok(answer) => answer,
        Err(verdict) => return Ok(verdict),
    };
    report
        .framework
        .push(format!("info: GET {} -> {}", info_url.path, answer.status));
    if answer.status != 200 {
        return Ok(Verdict::Framework(FrameworkFailure::PollingRefused {
            status: answer.status,
            body: first_line(&answer.body),
        }));
    }
    let Ok(info) = serde_json::from_str::<serde_json::Value>(&answer.body) else {
        return Ok(Verdict::Framework(FrameworkFailure::NotSockJs(first_line(
            &answer.body,
        ))));
    };
    report.framework.push(format!(
        "SockJS info: websocket {}, cookie_needed {}",
        info["websocket"], info["cookie_needed"]
    ));
    if info["websocket"] == serde_json::Value::Bool(false) {
        return Ok(Verdict::Framework(FrameworkFailure::NoWebSocketOffered));
    }
    let cookies = cookies_set(&answer);
    let nonce = super::random_nonce();
    let session: String = nonce[..8]
        .iter()
        .map(|b| char::from(b'a' + b % 26))
        .collect();
    let server = u16::from(nonce[8]) % 1000;
    let ws = path_with(url, &format!("{server:03}/{session}/websocket"), "");
    let (mut stream, early) = match upgraded(&ws, options, &cookies, report)? {
        Ok(upgraded) => upgraded,
        Err(verdict) => return Ok(verdict),
    };
    let deadline = Instant::now() + options.timeout;
    match read_text_until(&mut stream, early, deadline, |text| text == "o") {
        Some(_) => report.framework.push("open frame o received".into()),
        None => return Ok(Verdict::Framework(FrameworkFailure::NoOpenFrame)),
    }
    close(&mut stream);
    Ok(Verdict::FrameworkUpgraded(
        "SockJS session open over WebSocket",
    ))
}

/// The upgrade step, on a connection of its own as the clients make it, with the `cookies`
/// the framework's first answer set: the stream and what came after the 101.
fn upgraded(
    url: &CheckUrl,
    options: &CheckOptions,
    cookies: &[String],
    report: &mut Report,
) -> super::Step<(Stream, Vec<u8>)> {
    // Each step's timings are its own; the report keeps the last connection's.
    report.timings.clear();
    let mut stream = match open(url, options, report)? {
        Ok(stream) => stream,
        Err(verdict) => return Ok(Err(verdict)),
    };
    let extra: Vec<String> = cookie_header(cookies).into_iter().collect();
    Ok(upgrade(&mut stream, url, options, &extra, report)?.map(|(_, early)| (stream, early)))
}

/// One plain `GET` on a connection of its own, read to its end.
fn get(
    url: &CheckUrl,
    options: &CheckOptions,
    extra: &[String],
    report: &mut Report,
) -> super::Step<Answer> {
    let mut stream = match open(url, options, report)? {
        Ok(stream) => stream,
        Err(verdict) => return Ok(Err(verdict)),
    };
    let host = super::host_header(url);
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n",
        url.path
    );
    for line in options.headers.iter().chain(extra) {
        request += line;
        request += "\r\n";
    }
    if let Some(origin) = &options.origin {
        request += &format!("Origin: {origin}\r\n");
    }
    if let Some(token) = &options.token {
        request += &format!("Authorization: Bearer {token}\r\n");
    }
    request += "\r\n";
    if stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
        .is_err()
    {
        return Ok(Err(Verdict::ClosedEarly { reset: true }));
    }
    let deadline = Instant::now() + options.timeout;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(answer) = parse_answer(&received) {
            return Ok(Ok(answer));
        }
        if received.len() > MAX_ANSWER || !stream.read_until(deadline) {
            return Ok(Err(Verdict::ResponseTimeout));
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                return Ok(
                    parse_answer_at_close(&received).ok_or(Verdict::ClosedEarly { reset: false })
                )
            }
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(Err(Verdict::ClosedEarly { reset: true }))
            }
            Err(_) => return Ok(parse_answer_at_close(&received).ok_or(Verdict::ResponseTimeout)),
        }
    }
}

/// A complete answer in `bytes` (framed by `Content-Length` or chunks), if it is whole.
fn parse_answer(bytes: &[u8]) -> Option<Answer> {
    let (status, headers, head_len) = parse_head(bytes)?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let rest = &bytes[head_len..];
    let body = if header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        dechunk(rest)?
    } else {
        let length: usize = header("content-length")?.trim().parse().ok()?;
        rest.get(..length)?.to_vec()
    };
    Some(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The answer once the server closed: what it framed, or everything until the close.
fn parse_answer_at_close(bytes: &[u8]) -> Option<Answer> {
    parse_answer(bytes).or_else(|| {
        let (status, headers, head_len) = parse_head(bytes)?;
        let body = String::from_utf8_lossy(&bytes[head_len..]).into_owned();
        Some(Answer {
            status,
            headers,
            body,
        })
    })
}

fn parse_head(bytes: &[u8]) -> Option<(u16, Headers, usize)> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut slots);
    let httparse::Status::Complete(head_len) = response.parse(bytes).ok()? else {
        return None;
    };
    let headers = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Some((response.code?, headers, head_len))
}

/// A chunked body, if all of it is in `bytes`.
fn dechunk(mut bytes: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&bytes[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(bytes.get(..size)?);
        bytes = bytes.get(size.checked_add(2)?..)?;
    }
}

/// The `name=value` pairs the answer's `Set-Cookie` headers set (attributes dropped).
fn cookies_set(answer: &Answer) -> Vec<String> {
    answer
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.split(';').next().map(|pair| pair.trim().to_owned()))
        .filter(|pair| pair.contains('='))
        .collect()
}

fn cookie_header(cookies: &[String]) -> Option<String> {
    (!cookies.is_empty()).then(|| format!("Cookie: {}", cookies.join("; ")))
}

fn names(cookies: &[String]) -> String {
    cookies
        .iter()
        .filter_map(|c| c.split('=').next())
        .collect::<Vec<_>>()
        .join(", ")
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

/// Sends one masked text frame (payloads under 126 bytes).
fn send_text(stream: &mut Stream, payload: &[u8]) -> std::io::Result<()> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).and_then(|()| stream.flush())
}

/// Reads server frames until a text frame `wanted` accepts, by `deadline`.
fn read_text_until(
    stream: &mut Stream,
    mut pending: Vec<u8>,
    deadline: Instant,
    wanted: impl Fn(&str) -> bool,
) -> Option<String> {
    let mut buf = [0u8; 4096];
    loop {
        while let Some((opcode, payload, used)) = super::parse_server_frame(&pending) {
            pending.drain(..used);
            let text = String::from_utf8_lossy(&payload).into_owned();
            if opcode == 0x1 && wanted(&text) {
                return Some(text);
            }
            if opcode == 0x8 {
                return None;
            }
        }
        if super::frame_too_long(&pending) || !stream.read_until(deadline) {
            return None;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// Closes the WebSocket with 1000 (the answer is not waited for).
fn close(stream: &mut Stream) {
    let mask = [1, 2, 3, 4];
    let frame = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ mask[0], 0xE8 ^ mask[1]];
    let _ = stream.write_all(&frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_length_chunks_or_close() {
        let by_length =
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nSet-Cookie: a=1; Path=/\r\n\r\n0{}x";
        let answer = parse_answer(by_length).unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (200, "0{}x"));
        assert_eq!(cookies_set(&answer), ["a=1"]);
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n0{\r\n1\r\n}\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked).unwrap().body, "0{}");
        assert!(parse_answer(&chunked[..chunked.len() - 5]).is_none());
        let unframed = b"HTTP/1.0 200 OK\r\n\r\nuntil close";
        assert!(parse_answer(unframed).is_none());
        assert_eq!(parse_answer_at_close(unframed).unwrap().body, "until close");
    }

    #[test]
    fn steps_append_to_the_framework_path() {
        let url = parse_url("ws://h/socket.io/").unwrap();
        assert_eq!(path_with(&url, "", "EIO=4").path, "/socket.io/?EIO=4");
        let url = parse_url("wss://h/sockjs").unwrap();
        assert_eq!(path_with(&url, "info", "").path, "/sockjs/info");
    }
}
