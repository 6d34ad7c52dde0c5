//! What went wrong, in one line an operator can act on, and the exit code that says so.

use crate::handshake::ResponseError;

/// The outcome of one checked handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A valid 101.
    Upgraded {
        /// The subprotocol the server chose.
        protocol: Option<String>,
    },
    /// A valid 101 was expected but the server answered something else.
    Status {
        /// The status code.
        code: u16,
        /// `Location`, `Retry-After`, `Sec-WebSocket-Version` or the body's first line.
        hint: Option<String>,
    },
    /// A 101 (or a response) that a client must refuse.
    BadUpgrade(ResponseError),
    /// The port speaks TLS but the URL said `ws://`.
    TlsOnPlainPort,
    /// The host name did not resolve.
    Dns(String),
    /// Nothing listens there.
    ConnectRefused,
    /// The TCP connect did not complete in time.
    ConnectTimeout,
    /// Another connect failure (unreachable network, ...).
    ConnectFailed(String),
    /// The server reset or closed the connection before a complete response.
    ClosedEarly {
        /// Reset rather than a clean close.
        reset: bool,
    },
    /// Connected, but no complete response in time.
    ResponseTimeout,
    /// The TLS handshake failed.
    Tls(TlsFailure),
    /// `--socketio`, `--sockjs`: the framework's handshake and the upgrade went through.
    FrameworkUpgraded(&'static str),
    /// `--socketio`, `--sockjs`: a link of the framework's own handshake broke.
    Framework(FrameworkFailure),
    /// `--h2`: a link of the HTTP/2 handshake broke.
    Http2(Http2Failure),
}

/// Which link of a WebSocket over HTTP/2 broke (`--h2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Http2Failure {
    /// ALPN chose this instead of `h2`: the endpoint does not offer HTTP/2.
    NotOffered(String),
    /// The preface was answered in HTTP/1.x (this line): no HTTP/2 with prior knowledge.
    NotHttp2(String),
    /// The server's SETTINGS lack SETTINGS_ENABLE_CONNECT_PROTOCOL = 1.
    NoExtendedConnect,
    /// The server reset the stream with this code.
    StreamReset(u32),
    /// The server went away with this code before answering.
    GoAway(u32),
    /// Frames this client could not read.
    Broken(String),
}

/// Which link of a framework's handshake broke (`--socketio`, `--sockjs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameworkFailure {
    /// The polling handshake (or SockJS's `/info`) got this status.
    PollingRefused {
        /// The status code.
        status: u16,
        /// The body's first line.
        body: String,
    },
    /// The polling answer is not an Engine.IO 4 open packet.
    NotEngineIo(String),
    /// `/info` is not SockJS's JSON.
    NotSockJs(String),
    /// The server does not offer the WebSocket transport.
    NoWebSocketOffered,
    /// The upgrade was refused with "Session ID unknown": it reached another server than
    /// the polling request.
    SessionUnknown {
        /// The polling answer set cookies, and they were sent with the upgrade.
        sticky_cookie: bool,
    },
    /// Upgraded, but `2probe` got no `3probe`.
    ProbeUnanswered,
    /// Upgraded, but no SockJS open frame came.
    NoOpenFrame,
}

/// Why a TLS handshake failed, as far as it matters to an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The certificate chain does not lead to a trusted root (self-signed, private CA).
    UntrustedCertificate,
    /// The certificate is not valid for the host name.
    WrongName,
    /// The certificate expired or is not valid yet.
    Expired,
    /// The server offers no protocol the client does (an HTTP/2-only server).
    NoHttp1,
    /// The server did not speak TLS (a plain HTTP port).
    NotTls,
    /// Anything else.
    Other(String),
}

impl Verdict {
    /// The process exit code: 0 ok, 3 not upgraded, 4 refused, 5 invalid upgrade,
    /// 6 network, 7 TLS (2 stays clap's usage error).
    pub fn exit_code(&self) -> i32 {
        match self {
            Verdict::Upgraded { .. } | Verdict::FrameworkUpgraded(_) => 0,
            Verdict::Framework(FrameworkFailure::PollingRefused { .. })
            | Verdict::Framework(FrameworkFailure::SessionUnknown { .. }) => 4,
            Verdict::Framework(_) => 5,
            Verdict::Http2(Http2Failure::StreamReset(_) | Http2Failure::GoAway(_)) => 4,
            Verdict::Http2(Http2Failure::Broken(_)) => 5,
            Verdict::Http2(_) => 3,
            Verdict::Status {
                code: 100..=399, ..
            } => 3,
            Verdict::Status { .. } => 4,
            Verdict::BadUpgrade(_) | Verdict::TlsOnPlainPort => 5,
            Verdict::Dns(_)
            | Verdict::ConnectRefused
            | Verdict::ConnectTimeout
            | Verdict::ConnectFailed(_)
            | Verdict::ClosedEarly { .. }
            | Verdict::ResponseTimeout => 6,
            Verdict::Tls(_) => 7,
        }
    }

    /// A short machine-readable name.
    pub fn kind(&self) -> String {
        match self {
            Verdict::Upgraded { .. } | Verdict::FrameworkUpgraded(_) => "ok".into(),
            Verdict::Framework(failure) => match failure {
                FrameworkFailure::PollingRefused { status, .. } => {
                    format!("polling_refused_{status}")
                }
                FrameworkFailure::NotEngineIo(_) => "not_engine_io".into(),
                FrameworkFailure::NotSockJs(_) => "not_sockjs".into(),
                FrameworkFailure::NoWebSocketOffered => "no_websocket_offered".into(),
                FrameworkFailure::SessionUnknown { .. } => "session_unknown".into(),
                FrameworkFailure::ProbeUnanswered => "probe_unanswered".into(),
                FrameworkFailure::NoOpenFrame => "no_open_frame".into(),
            },
            Verdict::Http2(failure) => match failure {
                Http2Failure::NotOffered(_) => "h2_not_offered".into(),
                Http2Failure::NotHttp2(_) => "not_http2".into(),
                Http2Failure::NoExtendedConnect => "no_extended_connect".into(),
                Http2Failure::StreamReset(code) => format!("stream_reset_{code}"),
                Http2Failure::GoAway(code) => format!("goaway_{code}"),
                Http2Failure::Broken(_) => "h2_broken".into(),
            },
            Verdict::Status { code, .. } => format!("status_{code}"),
            Verdict::BadUpgrade(error) => format!("bad_upgrade: {error}"),
            Verdict::TlsOnPlainPort => "tls_on_plain_port".into(),
            Verdict::Dns(_) => "dns".into(),
            Verdict::ConnectRefused => "connect_refused".into(),
            Verdict::ConnectTimeout => "connect_timeout".into(),
            Verdict::ConnectFailed(_) => "connect_failed".into(),
            Verdict::ClosedEarly { reset: true } => "reset".into(),
            Verdict::ClosedEarly { reset: false } => "closed".into(),
            Verdict::ResponseTimeout => "response_timeout".into(),
            Verdict::Tls(_) => "tls".into(),
        }
    }

    /// The verdict line: which link broke and what to do about it.
    pub fn explain(&self) -> String {
        let hint = |h: &Option<String>| h.as_deref().map(|h| format!(" ({h})")).unwrap_or_default();
        match self {
            Verdict::Upgraded { protocol: Some(p) } => format!("ok: upgraded to WebSocket, subprotocol {p}"),
            Verdict::Upgraded { protocol: None } => "ok: upgraded to WebSocket (no subprotocol)".into(),
            Verdict::FrameworkUpgraded(what) => format!("ok: {what}"),
            Verdict::Framework(FrameworkFailure::PollingRefused { status, body }) => format!(
                "the framework's first request (polling or /info) got {status} ({body}): the path or the \
                 proxy in front refuses plain HTTP; behind wsedge, forward it with --http-path PREFIX"
            ),
            Verdict::Framework(FrameworkFailure::NotEngineIo(body)) => format!(
                "the polling answer is not an Engine.IO 4 open packet ({body}): not a Socket.IO v3/v4 \
                 server at this path"
            ),
            Verdict::Framework(FrameworkFailure::NotSockJs(body)) => {
                format!("/info is not SockJS's JSON ({body}): not a SockJS server at this path")
            }
            Verdict::Framework(FrameworkFailure::NoWebSocketOffered) => {
                "the server does not offer the websocket transport: clients stay on polling".into()
            }
            Verdict::Framework(FrameworkFailure::SessionUnknown { sticky_cookie }) => format!(
                "the upgrade was refused with \"Session ID unknown\": it reached another server than the \
                 polling request{}; make the balancer sticky (wsedge --sticky-cookie NAME, nginx ip_hash, \
                 HAProxy cookie SERVERID insert) or have clients skip polling (transports: [\"websocket\"])",
                if *sticky_cookie { " although its cookies were sent back" } else { " (no cookie pins the client)" }
            ),
            Verdict::Framework(FrameworkFailure::ProbeUnanswered) => {
                "upgraded, but 2probe got no 3probe: the WebSocket reached something that is not this session's server".into()
            }
            Verdict::Framework(FrameworkFailure::NoOpenFrame) => {
                "upgraded, but no SockJS open frame (o) came".into()
            }
            Verdict::Http2(Http2Failure::NotOffered(chose)) => format!(
                "HTTP/2 is not offered here (ALPN chose {chose}): the browser falls back to an HTTP/1.1 \
                 upgrade; to offer it, wsedge --h2 (nginx has no RFC 8441)"
            ),
            Verdict::Http2(Http2Failure::NotHttp2(line)) => format!(
                "the HTTP/2 preface got an HTTP/1.1 answer ({line}): this plain listener takes no prior \
                 knowledge; wsedge --h2c"
            ),
            Verdict::Http2(Http2Failure::NoExtendedConnect) => {
                "the server speaks HTTP/2 but does not allow extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL \
                 not sent): WebSockets cannot ride its HTTP/2 connections (RFC 8441); browsers open a separate \
                 HTTP/1.1 connection"
                    .into()
            }
            Verdict::Http2(Http2Failure::StreamReset(code)) => format!(
                "the server reset the WebSocket's stream ({}) instead of answering",
                h2_code(*code)
            ),
            Verdict::Http2(Http2Failure::GoAway(code)) => format!(
                "the server went away (GOAWAY {}) before answering the WebSocket's stream",
                h2_code(*code)
            ),
            Verdict::Http2(Http2Failure::Broken(error)) => format!("the server's HTTP/2 could not be read: {error}"),
            Verdict::Status { code: 200..=299, .. } => format!(
                "the upgrade was not honoured: {} came back as if to a plain request; a proxy in the path \
                 likely dropped the hop-by-hop Upgrade/Connection headers; fix it at the proxy (nginx: \
                 proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\")",
                self.code_text()
            ),
            Verdict::Status { code: 300..=399, hint: h } => format!(
                "redirected{}: WebSocket clients do not follow redirects; connect to the final URL (often ws:// to wss://)",
                hint(h)
            ),
            Verdict::Status { code: 400, hint: h } => format!("400: the server found the request malformed{}", hint(h)),
            Verdict::Status { code: 401, hint: h } => {
                format!("401: authentication required or refused{}; send credentials (--token, or a cookie with --header)", hint(h))
            }
            Verdict::Status { code: 403, hint: h } => {
                format!("403: forbidden{}; usually the Origin is not on the server's allow-list (try --origin) or the credentials lack access", hint(h))
            }
            Verdict::Status { code: 404, hint: h } => format!("404: no WebSocket endpoint at this path{}", hint(h)),
            Verdict::Status { code: 426, hint: h } => format!("426: the server wants another protocol version{}", hint(h)),
            Verdict::Status { code: 429, hint: h } => format!("429: rate limited{}; back off before reconnecting", hint(h)),
            Verdict::Status { code: 431, hint: h } => {
                format!("431: request headers too large{}; usually too many or too large cookies", hint(h))
            }
            Verdict::Status { code: 502, hint: h } => {
                format!("502: a proxy could not reach the WebSocket server behind it, or got a bad answer{}", hint(h))
            }
            Verdict::Status { code: 503, hint: h } => format!("503: the server is at capacity or down{}; retry later", hint(h)),
            Verdict::Status { code: 504, hint: h } => {
                format!("504: a proxy timed out waiting for the WebSocket server behind it{}", hint(h))
            }
            Verdict::Status { code, hint: h } => format!("{code}: the server refused the upgrade{}", hint(h)),
            Verdict::BadUpgrade(ResponseError::WrongAccept | ResponseError::MissingAccept) => {
                "not a real WebSocket endpoint: Sec-WebSocket-Accept does not match the key sent \
                 (a cache or proxy replayed a 101)"
                    .into()
            }
            Verdict::BadUpgrade(ResponseError::UnofferedSubprotocol) => {
                "the 101 names a subprotocol that was not offered: a browser would fail this connection".into()
            }
            Verdict::BadUpgrade(ResponseError::UnofferedExtension) => {
                "the 101 names an extension that was not offered: a browser would fail this connection".into()
            }
            Verdict::BadUpgrade(ResponseError::MissingUpgrade | ResponseError::MissingConnection) => {
                "a 101 without Upgrade: websocket and Connection: Upgrade: not a WebSocket upgrade".into()
            }
            Verdict::BadUpgrade(error) => format!("not a valid HTTP/1.1 answer: {error}"),
            Verdict::TlsOnPlainPort => "this port speaks TLS: use wss://".into(),
            Verdict::Dns(error) => format!("DNS failure: {error}"),
            Verdict::ConnectRefused => "connection refused: nothing listens on that host and port".into(),
            Verdict::ConnectTimeout => "TCP connect timed out: a firewall drops the packets, or the host is down".into(),
            Verdict::ConnectFailed(error) => format!("TCP connect failed: {error}"),
            Verdict::ClosedEarly { reset: true } => "the server reset the connection before answering".into(),
            Verdict::ClosedEarly { reset: false } => "the server closed the connection without answering".into(),
            Verdict::ResponseTimeout => "connected, but no complete response in time (a stalled server or proxy)".into(),
            Verdict::Tls(TlsFailure::UntrustedCertificate) => {
                "TLS: the certificate is not trusted (self-signed or from a private CA); install the CA, or --insecure to look past it".into()
            }
            Verdict::Tls(TlsFailure::WrongName) => "TLS: the certificate is not valid for this host name".into(),
            Verdict::Tls(TlsFailure::Expired) => "TLS: the certificate has expired or is not valid yet".into(),
            Verdict::Tls(TlsFailure::NoHttp1) => {
                "TLS: the server speaks only HTTP/2, which has no Upgrade: WebSocket over HTTP/2 needs RFC 8441 \
                 extended CONNECT; enable HTTP/1.1 on this endpoint"
                    .into()
            }
            Verdict::Tls(TlsFailure::NotTls) => "TLS: the server did not answer in TLS; use ws://".into(),
            Verdict::Tls(TlsFailure::Other(error)) => format!("TLS handshake failed: {error}"),
        }
    }

    fn code_text(&self) -> String {
        if let Verdict::Http2(_) = self {
            return String::new();
        }
        match self {
            Verdict::Status { code, .. } => code.to_string(),
            _ => String::new(),
        }
    }
}

/// An HTTP/2 error code's name (RFC 9113 7).
fn h2_code(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES
        .get(code as usize)
        .map_or(format!("error {code}"), |n| (*n).to_owned())
}
