//! `wsedge check --h2 URL`: the handshake over HTTP/2 (RFC 8441), shown as the HTTP/1.1
//! check shows its own: ALPN, the server's SETTINGS (does it allow extended CONNECT?), the
//! CONNECT sent and the response, and the link that broke.

use std::io::{self, Read, Write};
use std::time::Instant;

use super::verdict::{Http2Failure, Verdict};
use super::{host_header, mask_secret, status_hint, CheckOptions, CheckUrl, Report, Step, Stream};
use crate::handshake::ResponseError;
use crate::http2::client::{Client, Connect, Frame};

/// The stream the check opens.
const STREAM: u32 = 1;

/// Reads frames until `wanted` takes one (a PING is answered on the way), by `deadline`.
fn next_frame(
    stream: &mut Stream,
    client: &mut Client,
    deadline: Instant,
    seen: &mut Vec<u8>,
    mut wanted: impl FnMut(&Frame) -> bool,
) -> Result<Frame, Verdict> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        // Every whole frame already read first, then the socket.
        loop {
            match client.next_frame() {
                Ok(Some(Frame::Ping {
                    ack: false,
                    payload,
                })) => {
                    let mut pong = Vec::new();
                    Client::pong(&mut pong, payload);
                    let _ = stream.write_all(&pong);
                }
                Ok(Some(frame)) if wanted(&frame) => return Ok(frame),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(error) => return Err(Verdict::Http2(Http2Failure::Broken(error.to_string()))),
            }
        }
        if !stream.read_until(deadline) {
            return Err(Verdict::ResponseTimeout);
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(match seen.starts_with(b"HTTP/1.") {
                    true => Verdict::Http2(Http2Failure::NotHttp2(first_line(seen))),
                    false => Verdict::ClosedEarly { reset: false },
                })
            }
            Ok(n) => {
                if seen.len() < 64 {
                    seen.extend_from_slice(&buf[..n.min(64)]);
                }
                if seen.starts_with(b"HTTP/1.") {
                    return Err(Verdict::Http2(Http2Failure::NotHttp2(first_line(seen))));
                }
                client.received(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(Verdict::ClosedEarly { reset: true })
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Verdict::ResponseTimeout)
            }
            Err(e) => return Err(Verdict::ConnectFailed(e.to_string())),
        }
    }
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The extended CONNECT on an open connection: the subprotocol chosen, or the verdict.
pub(super) fn upgrade(
    stream: &mut Stream,
    url: &CheckUrl,
    options: &CheckOptions,
    report: &mut Report,
) -> Step<Option<String>> {
    if let Stream::Tls(tls) = stream {
        if tls.conn.alpn_protocol() != Some(b"h2") {
            let chose = tls
                .conn
                .alpn_protocol()
                .map_or("none".into(), |p| String::from_utf8_lossy(p).into_owned());
            return Ok(Err(Verdict::Http2(Http2Failure::NotOffered(chose))));
        }
    }
    let deadline = Instant::now() + options.timeout;
    let mut client = Client::new();
    let mut out = Vec::new();
    Client::start(&mut out);
    if let Err(error) = stream.write_all(&out) {
        let reset = matches!(
            error.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        );
        return Ok(Err(Verdict::ClosedEarly { reset }));
    }
    let step = Instant::now();
    let mut seen = Vec::new();
    let settings = next_frame(stream, &mut client, deadline, &mut seen, |f| {
        matches!(f, Frame::Settings { ack: false, .. })
    });
    let connect_protocol = match settings {
        Ok(Frame::Settings {
            connect_protocol, ..
        }) => connect_protocol,
        Ok(_) => false,
        Err(verdict) => return Ok(Err(verdict)),
    };
    report.timings.push(("h2 settings", step.elapsed()));
    report.framework.push(format!(
        "HTTP/2: the server's SETTINGS {} SETTINGS_ENABLE_CONNECT_PROTOCOL",
        if connect_protocol {
            "allow extended CONNECT:"
        } else {
            "lack"
        }
    ));
    if !connect_protocol {
        return Ok(Err(Verdict::Http2(Http2Failure::NoExtendedConnect)));
    }
    let mut lines: Vec<String> = options.headers.clone();
    if let Some(origin) = &options.origin {
        lines.push(format!("origin: {origin}"));
    }
    if let Some(token) = &options.token {
        lines.push(format!("authorization: Bearer {token}"));
    }
    let authority = host_header(url);
    let scheme = if url.secure { "https" } else { "http" };
    let protocols: Vec<&str> = options.subprotocols.iter().map(String::as_str).collect();
    let headers: Vec<&str> = lines.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    Client::ack_settings(&mut out);
    let request = Connect {
        scheme,
        authority: &authority,
        path: &url.path,
        protocols: &protocols,
        headers: &headers,
    };
    client.connect(&mut out, STREAM, &request);
    report.request = vec![
        ":method: CONNECT".into(),
        ":protocol: websocket".into(),
        format!(":scheme: {scheme}"),
        format!(":authority: {authority}"),
        format!(":path: {}", url.path),
        "sec-websocket-version: 13".into(),
    ];
    if !protocols.is_empty() {
        report
            .request
            .push(format!("sec-websocket-protocol: {}", protocols.join(", ")));
    }
    report.request.extend(lines.iter().map(|l| mask_secret(l)));
    let step = Instant::now();
    if stream.write_all(&out).is_err() {
        return Ok(Err(Verdict::ClosedEarly { reset: true }));
    }
    let answer = next_frame(stream, &mut client, deadline, &mut seen, |f| match f {
        Frame::Headers { stream, .. } | Frame::Reset { stream, .. } => *stream == STREAM,
        Frame::GoAway { .. } => true,
        _ => false,
    });
    report.timings.push(("response", step.elapsed()));
    let (status, fields, ended) = match answer {
        Ok(Frame::Headers {
            status,
            fields,
            end_stream,
            ..
        }) => (status, fields, end_stream),
        Ok(Frame::Reset { code, .. }) => {
            return Ok(Err(Verdict::Http2(Http2Failure::StreamReset(code))))
        }
        Ok(Frame::GoAway { code, .. }) => {
            return Ok(Err(Verdict::Http2(Http2Failure::GoAway(code))))
        }
        Ok(_) => return Ok(Err(Verdict::ResponseTimeout)),
        Err(verdict) => return Ok(Err(verdict)),
    };
    report.response = fields.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    let Some(code) = status else {
        return Ok(Err(Verdict::Http2(Http2Failure::Broken(
            "a response without :status".into(),
        ))));
    };
    if code == 200 {
        let chosen = fields
            .iter()
            .find(|(n, _)| n == "sec-websocket-protocol")
            .map(|(_, v)| v.clone());
        if chosen
            .as_ref()
            .is_some_and(|p| !options.subprotocols.contains(p))
        {
            return Ok(Err(Verdict::BadUpgrade(
                ResponseError::UnofferedSubprotocol,
            )));
        }
        return Ok(Ok(chosen));
    }
    // A refusal's body: its first line says which rule broke (wsedge's do).
    let mut body = Vec::new();
    let mut done = ended;
    while !done && body.len() < 4096 {
        match next_frame(
            stream,
            &mut client,
            deadline,
            &mut seen,
            |f| matches!(f, Frame::Data { stream, .. } | Frame::Reset { stream, .. } if *stream == STREAM),
        ) {
            Ok(Frame::Data {
                payload,
                end_stream,
                ..
            }) => {
                body.extend_from_slice(&payload);
                done = end_stream;
            }
            _ => break,
        }
    }
    let line = first_line(&body).trim().to_owned();
    if !line.is_empty() {
        report.body = Some(format!("server says: {line}"));
    }
    let hint = status_hint(code, &report.response).or(report.body.clone());
    Ok(Err(Verdict::Status { code, hint }))
}
