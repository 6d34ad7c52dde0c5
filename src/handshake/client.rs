//! The client side: writing an upgrade request and checking a server's answer.
//!
//! The load generator uses this to count only real upgrades: a server that answers 101 with
//! the wrong accept token, or names a subprotocol nobody offered, has failed the handshake.

use super::accept::accept_key;
use super::policy::MAX_HEADERS;
use super::response::{BufferTooSmall, Writer};
use super::tokens::{has_token_ignore_case, list_elements, trim_ows};

/// The parts of an upgrade request a client chooses.
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    /// `Host` header value (`host:port`).
    pub host: &'a str,
    /// Request target (path and query).
    pub target: &'a str,
    /// The `Sec-WebSocket-Key` (see [`key_from_nonce`](super::key_from_nonce)).
    pub key: &'a [u8],
    /// Subprotocols to offer, in the client's preference order.
    pub protocols: &'a [&'a str],
    /// Extra header lines, each `Name: value` without CRLF.
    pub extra_headers: &'a [&'a str],
}

/// Writes the upgrade request into `out`; returns its length.
pub fn write_request(out: &mut [u8], request: &ClientRequest<'_>) -> Result<usize, BufferTooSmall> {
    let mut w = Writer::new(out);
    w.put(b"GET ")?
        .put(request.target.as_bytes())?
        .put(b" HTTP/1.1\r\nHost: ")?
        .put(request.host.as_bytes())?
        .put(b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ")?
        .put(request.key)?
        .put(b"\r\nSec-WebSocket-Version: 13\r\n")?;
    if !request.protocols.is_empty() {
        w.put(b"Sec-WebSocket-Protocol: ")?;
        for (i, protocol) in request.protocols.iter().enumerate() {
            if i > 0 {
                w.put(b", ")?;
            }
            w.put(protocol.as_bytes())?;
        }
        w.put(b"\r\n")?;
    }
    for line in request.extra_headers {
        w.put(line.as_bytes())?.put(b"\r\n")?;
    }
    w.put(b"\r\n")?;
    Ok(w.len())
}

/// Why a server's answer is not a valid WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The response is not parseable HTTP/1.1.
    #[error("malformed HTTP response")]
    Malformed,
    /// The response headers exceed the client's limit.
    #[error("response headers too large")]
    TooLarge,
    /// The server answered with another status than 101.
    #[error("server answered {status} instead of 101")]
    NotSwitching {
        /// The status code received.
        status: u16,
    },
    /// A 101 in an HTTP/1.0 response: HTTP/1.0 has no protocol upgrade (RFC 9110 section
    /// 15.2.2), so this is not a WebSocket endpoint speaking the protocol.
    #[error("101 in an HTTP/1.0 response (an upgrade needs HTTP/1.1)")]
    WrongVersion,
    /// No `Upgrade: websocket` in the 101.
    #[error("101 without Upgrade: websocket")]
    MissingUpgrade,
    /// No `Connection: Upgrade` in the 101.
    #[error("101 without Connection: Upgrade")]
    MissingConnection,
    /// No `Sec-WebSocket-Accept`, or more than one.
    #[error("101 without exactly one Sec-WebSocket-Accept")]
    MissingAccept,
    /// `Sec-WebSocket-Accept` does not match the key sent: not a real WebSocket endpoint.
    #[error("Sec-WebSocket-Accept does not match the key sent")]
    WrongAccept,
    /// The server named a subprotocol the client did not offer, or several.
    #[error("server chose a subprotocol that was not offered")]
    UnofferedSubprotocol,
    /// The server named an extension the client did not offer.
    #[error("server chose an extension that was not offered")]
    UnofferedExtension,
}

/// What a server's answer amounts to so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseCheck<'b> {
    /// The header block is not complete yet.
    Partial,
    /// A valid 101: frames start at `header_len`.
    Accepted {
        /// Length of the response header block.
        header_len: usize,
        /// The subprotocol the server chose, if any.
        protocol: Option<&'b str>,
    },
    /// Not a valid upgrade.
    Failed(ResponseError),
}

/// Largest response header block a client accepts.
pub const MAX_RESPONSE_HEADER_BYTES: usize = 8192;

/// Checks a server's answer to a request that sent `key` and offered `offered` subprotocols
/// (and no extensions), as RFC 6455 section 4.1 requires of a client.
///
/// ```
/// use wsedge::handshake::{check_response, ResponseCheck, ResponseError};
/// let key = b"dGhlIHNhbXBsZSBub25jZQ==";
/// let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
///            Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
/// assert!(matches!(check_response(ok, key, &[]), ResponseCheck::Accepted { protocol: None, .. }));
/// let refused = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
/// assert_eq!(
///     check_response(refused, key, &[]),
///     ResponseCheck::Failed(ResponseError::NotSwitching { status: 401 })
/// );
/// ```
pub fn check_response<'b>(buf: &'b [u8], key: &[u8], offered: &[&str]) -> ResponseCheck<'b> {
    check_response_with(buf, key, |name| offered.contains(&name), |_| false)
}

/// [`check_response`] for a request whose offers are known only as predicates: the proxy
/// mode checks an upstream's answer against whatever subprotocols and extensions the
/// client offered (`extension_offered` gets an extension's name, without parameters).
pub fn check_response_with<'b>(
    buf: &'b [u8],
    key: &[u8],
    protocol_offered: impl Fn(&str) -> bool,
    extension_offered: impl Fn(&[u8]) -> bool,
) -> ResponseCheck<'b> {
    let window = &buf[..buf.len().min(MAX_RESPONSE_HEADER_BYTES)];
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let header_len = match response.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEADER_BYTES => {
            return ResponseCheck::Failed(ResponseError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return ResponseCheck::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return ResponseCheck::Failed(ResponseError::TooLarge)
        }
        Err(_) => return ResponseCheck::Failed(ResponseError::Malformed),
    };
    match check_headers(&response, key, &protocol_offered, &extension_offered) {
        Ok(protocol) => ResponseCheck::Accepted {
            header_len,
            protocol,
        },
        Err(error) => ResponseCheck::Failed(error),
    }
}

fn check_headers<'b>(
    response: &httparse::Response<'_, 'b>,
    key: &[u8],
    protocol_offered: &impl Fn(&str) -> bool,
    extension_offered: &impl Fn(&[u8]) -> bool,
) -> Result<Option<&'b str>, ResponseError> {
    let status = response.code.ok_or(ResponseError::Malformed)?;
    if status != 101 {
        return Err(ResponseError::NotSwitching { status });
    }
    if response.version != Some(1) {
        return Err(ResponseError::WrongVersion);
    }
    let expected_accept = accept_key(key);
    let (mut upgrade, mut connection, mut accepts, mut accept_ok) = (false, false, 0, false);
    let mut protocol = None;
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token_ignore_case(header.value, b"websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token_ignore_case(header.value, b"upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accepts += 1;
            accept_ok = trim_ows(header.value) == expected_accept;
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            let mut chosen = list_elements(header.value);
            let (Some(name), None, None) = (chosen.next(), chosen.next(), protocol) else {
                return Err(ResponseError::UnofferedSubprotocol);
            };
            let name =
                std::str::from_utf8(name).map_err(|_| ResponseError::UnofferedSubprotocol)?;
            if !protocol_offered(name) {
                return Err(ResponseError::UnofferedSubprotocol);
            }
            protocol = Some(name);
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            for extension in list_elements(header.value) {
                let name = extension.split(|&b| b == b';').next().unwrap_or_default();
                if !extension_offered(trim_ows(name)) {
                    return Err(ResponseError::UnofferedExtension);
                }
            }
        }
    }
    match () {
        _ if !upgrade => Err(ResponseError::MissingUpgrade),
        _ if !connection => Err(ResponseError::MissingConnection),
        _ if accepts != 1 => Err(ResponseError::MissingAccept),
        _ if !accept_ok => Err(ResponseError::WrongAccept),
        _ => Ok(protocol),
    }
}
