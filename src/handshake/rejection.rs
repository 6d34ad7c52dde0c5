//! Why a handshake request was refused (a rule it broke), and which HTTP status says so.
//! The edge's own refusals (its limits, its upstreams) are [`super::Refusal`]s.

/// The HTTP statuses wsedge answers a refused or failed handshake with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 400: the request is malformed or breaks an RFC 6455 rule.
    BadRequest,
    /// 401: credentials are missing or wrong (`WWW-Authenticate: Bearer`).
    Unauthorized,
    /// 403: the `Origin` is not allowed.
    Forbidden,
    /// 404: no WebSocket endpoint at this path.
    NotFound,
    /// 405: only `GET` can upgrade (`Allow: GET`).
    MethodNotAllowed,
    /// 408: the handshake did not complete in time.
    RequestTimeout,
    /// 411: a request body without `Content-Length` (chunked), which the edge does not forward.
    LengthRequired,
    /// 413: a request body over `--http-max-body`.
    ContentTooLarge,
    /// 417: an `Expect` other than `100-continue`.
    ExpectationFailed,
    /// 426: not a WebSocket upgrade, or the wrong protocol version.
    UpgradeRequired,
    /// 429: this client is over its rate (`Retry-After`).
    TooManyRequests,
    /// 431: the header block is too large or has too many fields.
    HeaderFieldsTooLarge,
    /// 502: the upstream refused or answered badly.
    BadGateway,
    /// 503: the server is over capacity (`Retry-After`).
    ServiceUnavailable,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
}

impl Status {
    /// The numeric status code.
    pub const fn code(self) -> u16 {
        match self {
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::LengthRequired => 411,
            Status::ContentTooLarge => 413,
            Status::ExpectationFailed => 417,
            Status::UpgradeRequired => 426,
            Status::TooManyRequests => 429,
            Status::HeaderFieldsTooLarge => 431,
            Status::BadGateway => 502,
            Status::ServiceUnavailable => 503,
            Status::GatewayTimeout => 504,
        }
    }

    /// The status line, without the trailing CRLF.
    pub const fn status_line(self) -> &'static str {
        match self {
            Status::BadRequest => "HTTP/1.1 400 Bad Request",
            Status::Unauthorized => "HTTP/1.1 401 Unauthorized",
            Status::Forbidden => "HTTP/1.1 403 Forbidden",
            Status::NotFound => "HTTP/1.1 404 Not Found",
            Status::MethodNotAllowed => "HTTP/1.1 405 Method Not Allowed",
            Status::RequestTimeout => "HTTP/1.1 408 Request Timeout",
            Status::LengthRequired => "HTTP/1.1 411 Length Required",
            Status::ContentTooLarge => "HTTP/1.1 413 Content Too Large",
            Status::ExpectationFailed => "HTTP/1.1 417 Expectation Failed",
            Status::UpgradeRequired => "HTTP/1.1 426 Upgrade Required",
            Status::TooManyRequests => "HTTP/1.1 429 Too Many Requests",
            Status::HeaderFieldsTooLarge => "HTTP/1.1 431 Request Header Fields Too Large",
            Status::BadGateway => "HTTP/1.1 502 Bad Gateway",
            Status::ServiceUnavailable => "HTTP/1.1 503 Service Unavailable",
            Status::GatewayTimeout => "HTTP/1.1 504 Gateway Timeout",
        }
    }
}

/// One rule of the handshake a request broke. Small and `Copy`: the hot path never formats
/// a string.
///
/// Each variant maps to one [`Status`] and one short reason that becomes the response body,
/// so that `curl -i` tells an operator exactly which rule the request broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The method or request target could not be parsed.
    MalformedRequestLine,
    /// The HTTP version is not HTTP/1.x.
    UnsupportedHttpVersion,
    /// A header name is empty or holds bytes a token may not.
    MalformedHeaderName,
    /// A header value holds a control byte (NUL, bare CR, ...).
    MalformedHeaderValue,
    /// A line ends in LF alone, or CR is not followed by LF.
    BareLineFeed,
    /// The request target is neither origin-form nor absolute-form.
    MalformedTarget,
    /// The request announces a body (`Content-Length` other than 0, or `Transfer-Encoding`).
    UnexpectedBody,
    /// HTTP/1.0 cannot upgrade.
    HttpVersionTooOld,
    /// Only GET can upgrade.
    MethodNotAllowed,
    /// No `Host` header.
    MissingHost,
    /// More than one `Host` header.
    RepeatedHost,
    /// The path is not one the server serves.
    PathNotFound,
    /// `Upgrade` lacks the `websocket` token.
    MissingUpgrade,
    /// `Connection` lacks the `upgrade` token.
    MissingConnectionUpgrade,
    /// No `Sec-WebSocket-Version` header.
    MissingVersion,
    /// `Sec-WebSocket-Version` is not 13.
    UnsupportedVersion,
    /// No `Sec-WebSocket-Key` header.
    MissingKey,
    /// More than one `Sec-WebSocket-Key` header.
    RepeatedKey,
    /// `Sec-WebSocket-Key` is not base64 of 16 bytes.
    InvalidKey,
    /// The header block exceeds the configured byte limit.
    HeadersTooLarge,
    /// More header fields than the parser holds.
    TooManyHeaders,
    /// `Origin` is not in the allow-list.
    OriginNotAllowed,
    /// No bearer token in `Authorization` or `access_token`.
    MissingCredentials,
    /// The bearer token does not match.
    InvalidCredentials,
    /// The client offered none of the server's subprotocols, and one is required.
    NoAcceptableSubprotocol,
    /// The handshake did not complete within the handshake timeout.
    Timeout,
    /// Plain HTTP arrived on a TLS listener (answered in plaintext, as nginx does).
    PlainHttpToTlsPort,
    /// `--http-path`: a method the edge does not forward (`CONNECT`, `TRACE`, unknown).
    HttpMethodNotForwarded,
    /// `--http-path`: a path with dot segments, encoded slashes or dots, or a backslash,
    /// which an upstream could resolve outside the prefix.
    AmbiguousPath,
    /// `--http-path`: `Content-Length` is not one decimal number (or two disagree).
    InvalidContentLength,
    /// `--http-path`: `Content-Length` and `Transfer-Encoding` together (a smuggling shape).
    ConflictingFraming,
    /// `--http-path`: a transfer coding other than `chunked` alone (a list, `gzip`, two
    /// headers), not forwarded.
    ChunkedBody,
    /// `--http-path`: a body over `--http-max-body`.
    BodyTooLarge,
    /// `--http-path`: a chunked body that breaks the chunked grammar.
    MalformedChunkedBody,
    /// `--http-path`: an `Expect` other than `100-continue`.
    UnsupportedExpectation,
}

impl Rejection {
    /// Every kind of rejection, in [`Rejection::kind_index`] order (retry times zeroed).
    pub const KINDS: [Rejection; 35] = {
        use Rejection::*;
        [
            MalformedRequestLine,
            UnsupportedHttpVersion,
            MalformedHeaderName,
            MalformedHeaderValue,
            BareLineFeed,
            MalformedTarget,
            UnexpectedBody,
            HttpVersionTooOld,
            MethodNotAllowed,
            MissingHost,
            RepeatedHost,
            PathNotFound,
            MissingUpgrade,
            MissingConnectionUpgrade,
            MissingVersion,
            UnsupportedVersion,
            MissingKey,
            RepeatedKey,
            InvalidKey,
            HeadersTooLarge,
            TooManyHeaders,
            OriginNotAllowed,
            MissingCredentials,
            InvalidCredentials,
            NoAcceptableSubprotocol,
            Timeout,
            PlainHttpToTlsPort,
            HttpMethodNotForwarded,
            AmbiguousPath,
            InvalidContentLength,
            ConflictingFraming,
            ChunkedBody,
            BodyTooLarge,
            UnsupportedExpectation,
            MalformedChunkedBody,
        ]
    };

    /// A dense index per kind of rejection (for counters): its place in [`Rejection::KINDS`].
    pub fn kind_index(self) -> usize {
        let kind = std::mem::discriminant(&self);
        Rejection::KINDS
            .iter()
            .position(|k| std::mem::discriminant(k) == kind)
            .unwrap_or(0)
    }

    /// The HTTP status this rejection is answered with.
    pub const fn status(self) -> Status {
        use Rejection::*;
        match self {
            MalformedRequestLine
            | UnsupportedHttpVersion
            | MalformedHeaderName
            | MalformedHeaderValue
            | BareLineFeed
            | MalformedTarget
            | UnexpectedBody
            | HttpVersionTooOld
            | MissingHost
            | RepeatedHost
            | MissingKey
            | RepeatedKey
            | InvalidKey
            | NoAcceptableSubprotocol
            | PlainHttpToTlsPort
            | AmbiguousPath
            | InvalidContentLength
            | ConflictingFraming
            | MalformedChunkedBody => Status::BadRequest,
            HttpMethodNotForwarded => Status::MethodNotAllowed,
            ChunkedBody => Status::LengthRequired,
            BodyTooLarge => Status::ContentTooLarge,
            UnsupportedExpectation => Status::ExpectationFailed,
            MissingCredentials | InvalidCredentials => Status::Unauthorized,
            OriginNotAllowed => Status::Forbidden,
            PathNotFound => Status::NotFound,
            MethodNotAllowed => Status::MethodNotAllowed,
            Timeout => Status::RequestTimeout,
            MissingUpgrade | MissingConnectionUpgrade | MissingVersion | UnsupportedVersion => {
                Status::UpgradeRequired
            }
            HeadersTooLarge | TooManyHeaders => Status::HeaderFieldsTooLarge,
        }
    }

    /// The one-line explanation sent as the response body.
    pub const fn reason(self) -> &'static str {
        use Rejection::*;
        match self {
            MalformedRequestLine => "malformed request line",
            UnsupportedHttpVersion => "unsupported HTTP version (HTTP/1.1 required)",
            MalformedHeaderName => "malformed header name",
            MalformedHeaderValue => "invalid byte in header value",
            BareLineFeed => "malformed line ending (CRLF required)",
            MalformedTarget => "malformed request target",
            UnexpectedBody => "an upgrade request must not have a body",
            HttpVersionTooOld => "WebSocket upgrade requires HTTP/1.1",
            MethodNotAllowed => "WebSocket upgrade requires GET",
            MissingHost => "missing Host header",
            RepeatedHost => "repeated Host header",
            PathNotFound => "no WebSocket endpoint at this path",
            MissingUpgrade => "missing Upgrade: websocket",
            MissingConnectionUpgrade => "missing Connection: Upgrade",
            MissingVersion => "missing Sec-WebSocket-Version (13 required)",
            UnsupportedVersion => "unsupported Sec-WebSocket-Version (13 required)",
            MissingKey => "missing Sec-WebSocket-Key",
            RepeatedKey => "repeated Sec-WebSocket-Key",
            InvalidKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
            HeadersTooLarge => "request header block too large",
            TooManyHeaders => "too many header fields",
            OriginNotAllowed => "Origin not allowed",
            MissingCredentials => "missing bearer token",
            InvalidCredentials => "invalid bearer token",
            NoAcceptableSubprotocol => "no supported subprotocol offered",
            Timeout => "handshake not completed in time",
            PlainHttpToTlsPort => "plain HTTP sent to a TLS port: use wss:// (or https://)",
            HttpMethodNotForwarded => "method not forwarded",
            AmbiguousPath => "dot segments, encoded slashes or backslashes in the path",
            InvalidContentLength => "malformed Content-Length",
            ConflictingFraming => "Content-Length with Transfer-Encoding",
            ChunkedBody => "only Content-Length or Transfer-Encoding: chunked alone is forwarded",
            MalformedChunkedBody => "malformed chunked body",
            BodyTooLarge => "request body too large",
            UnsupportedExpectation => "only Expect: 100-continue is understood",
        }
    }

    /// Headers this rejection must carry besides the standard ones, each ending in CRLF.
    pub(crate) const fn extra_headers(self) -> &'static str {
        use Rejection::*;
        match self {
            MethodNotAllowed => "Allow: GET\r\n",
            HttpMethodNotForwarded => "Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n",
            MissingUpgrade | MissingConnectionUpgrade => "Upgrade: websocket\r\n",
            MissingVersion | UnsupportedVersion => {
                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            }
            MissingCredentials => "WWW-Authenticate: Bearer\r\n",
            InvalidCredentials => "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n",
            _ => "",
        }
    }
}
