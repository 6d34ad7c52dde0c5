//! What an active health check sends and how its answer is judged, with no I/O
//! (`--upstream-health-check`).

use std::net::SocketAddr;

use crate::handshake::{check_response, write_request, ClientRequest, ResponseCheck};

/// The key of every check's upgrade request: a check proves the upstream computes the
/// accept token, not that it sees a fresh nonce.
const CHECK_KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";

/// The most of a check's answer read before judging it.
pub const MAX_CHECK_ANSWER: usize = 4096;

/// What a check does (`--upstream-health-check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// `tcp`: the connection is accepted.
    Tcp,
    /// `http:PATH`: `GET PATH` is answered with a 2xx or 3xx.
    Http(String),
    /// `websocket:PATH` (or `websocket`, for `/`): an upgrade on PATH is answered with a
    /// valid 101; the check then closes with a Close frame (1000).
    WebSocket(String),
}

/// A check's answer so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Incomplete: read more.
    Partial,
    /// Healthy.
    Pass,
    /// Unhealthy, and why.
    Fail(&'static str),
}

impl CheckKind {
    /// Parses `tcp`, `http:PATH`, `websocket` or `websocket:PATH`.
    pub fn parse(text: &str) -> Result<CheckKind, String> {
        let (kind, path) = match text.split_once(':') {
            Some((kind, path)) => (kind, Some(path)),
            None => (text, None),
        };
        let checked = |path: Option<&str>| -> Result<String, String> {
            let path = path.unwrap_or("/");
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(format!(
                    "{path:?}: the path starts with / and has no spaces or control characters"
                ));
            }
            Ok(path.to_owned())
        };
        match (kind, path) {
            ("tcp", None) => Ok(CheckKind::Tcp),
            ("http", Some(_)) => Ok(CheckKind::Http(checked(path)?)),
            ("websocket", _) => Ok(CheckKind::WebSocket(checked(path)?)),
            _ => Err(format!(
                "{text:?}: a check is tcp, http:PATH or websocket[:PATH] (e.g. http:/healthz)"
            )),
        }
    }

    /// The request to send to `upstream` once connected (nothing for `tcp`).
    pub fn request(&self, upstream: SocketAddr, out: &mut Vec<u8>) {
        out.clear();
        match self {
            CheckKind::Tcp => {}
            CheckKind::Http(path) => {
                out.extend_from_slice(
                    format!(
                        "GET {path} HTTP/1.1\r\nHost: {upstream}\r\nUser-Agent: wsedge-health\r\n\
                         Connection: close\r\n\r\n"
                    )
                    .as_bytes(),
                );
            }
            CheckKind::WebSocket(path) => {
                let host = upstream.to_string();
                let request = ClientRequest {
                    host: &host,
                    target: path,
                    key: CHECK_KEY,
                    protocols: &[],
                    extra_headers: &["User-Agent: wsedge-health"],
                };
                out.resize(512 + path.len() + host.len(), 0);
                let length = write_request(out, &request).unwrap_or(0);
                out.truncate(length);
            }
        }
    }

    /// Whether a check passes once connected, without an answer (`tcp`).
    pub fn passes_on_connect(&self) -> bool {
        *self == CheckKind::Tcp
    }

    /// Judges the answer read so far (`closed`: the upstream closed after it).
    pub fn judge(&self, answer: &[u8], closed: bool) -> Verdict {
        let verdict = match self {
            CheckKind::Tcp => Verdict::Pass,
            CheckKind::Http(_) => judge_status(answer),
            CheckKind::WebSocket(_) => match check_response(answer, CHECK_KEY, &[]) {
                ResponseCheck::Partial => Verdict::Partial,
                ResponseCheck::Accepted { .. } => Verdict::Pass,
                ResponseCheck::Failed(_) => Verdict::Fail("not a valid 101"),
            },
        };
        match verdict {
            Verdict::Partial if closed => Verdict::Fail("closed before answering"),
            Verdict::Partial if answer.len() >= MAX_CHECK_ANSWER => {
                Verdict::Fail("answer head too large")
            }
            verdict => verdict,
        }
    }
}

fn judge_status(answer: &[u8]) -> Verdict {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut slots);
    match response.parse(answer) {
        Ok(httparse::Status::Partial) => Verdict::Partial,
        Ok(httparse::Status::Complete(_)) => match response.code {
            Some(200..=399) => Verdict::Pass,
            _ => Verdict::Fail("status not 2xx or 3xx"),
        },
        Err(_) => Verdict::Fail("malformed HTTP answer"),
    }
}

/// The Close frame (1000, masked as a client's must be) a WebSocket check ends with.
pub const CHECK_CLOSE_FRAME: [u8; 8] = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(CheckKind::parse("tcp"), Ok(CheckKind::Tcp));
        assert_eq!(
            CheckKind::parse("websocket"),
            Ok(CheckKind::WebSocket("/".into()))
        );
        assert_eq!(
            CheckKind::parse("http:/healthz"),
            Ok(CheckKind::Http("/healthz".into()))
        );
        for bad in ["http", "tcp:/x", "grpc", "http:healthz", "websocket:/a b"] {
            assert!(CheckKind::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_websocket_check_wants_the_right_accept_token() {
        let kind = CheckKind::WebSocket("/".into());
        let mut request = Vec::new();
        kind.request("127.0.0.1:9".parse().unwrap(), &mut request);
        assert!(request.starts_with(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        let good = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(kind.judge(good, false), Verdict::Pass);
        assert_eq!(kind.judge(&good[..20], false), Verdict::Partial);
        assert!(matches!(kind.judge(&good[..20], true), Verdict::Fail(_)));
        let wrong = String::from_utf8_lossy(good).replace("s3pP", "AAAA");
        assert!(matches!(
            kind.judge(wrong.as_bytes(), false),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn an_http_check_passes_on_2xx_and_3xx_only() {
        let kind = CheckKind::Http("/h".into());
        assert_eq!(
            kind.judge(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Verdict::Pass
        );
        assert_eq!(
            kind.judge(b"HTTP/1.1 302 Found\r\n\r\n", false),
            Verdict::Pass
        );
        assert!(matches!(
            kind.judge(b"HTTP/1.1 503 Unavailable\r\n\r\n", false),
            Verdict::Fail(_)
        ));
        assert!(matches!(
            kind.judge(b"garbage\r\n\r\n", false),
            Verdict::Fail(_)
        ));
    }
}
