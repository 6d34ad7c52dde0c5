//! Writing the server's answer into a caller-provided buffer, without allocating.

use super::accept::accept_key;
use super::answer::Answer;

/// The output buffer cannot hold the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("output buffer too small for the response")]
pub struct BufferTooSmall;

/// Large enough for any rejection, and for a 101 naming a subprotocol of up to 128 bytes.
pub const MAX_RESPONSE_LEN: usize = 384;

/// A bounded cursor over a caller's buffer.
pub(crate) struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        Writer { out, len: 0 }
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<&mut Self, BufferTooSmall> {
        let end = self.len + bytes.len();
        self.out
            .get_mut(self.len..end)
            .ok_or(BufferTooSmall)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(self)
    }

    pub(crate) fn put_u32(&mut self, n: u32) -> Result<&mut Self, BufferTooSmall> {
        self.put(itoa::Buffer::new().format(n).as_bytes())
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// Writes `101 Switching Protocols` for a client that sent `key`, naming `protocol` if one
/// was negotiated. Returns the number of bytes written.
///
/// No `Sec-WebSocket-Extensions` is ever sent: wsedge negotiates no extension.
///
/// ```
/// let mut out = [0u8; wsedge::handshake::MAX_RESPONSE_LEN];
/// let n = wsedge::handshake::write_switching_protocols(
///     &mut out, b"dGhlIHNhbXBsZSBub25jZQ==", Some("chat"))?;
/// assert_eq!(&out[..n], &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
///     Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
///     Sec-WebSocket-Protocol: chat\r\n\r\n"[..]);
/// # Ok::<(), wsedge::handshake::BufferTooSmall>(())
/// ```
pub fn write_switching_protocols(
    out: &mut [u8],
    key: &[u8],
    protocol: Option<&str>,
) -> Result<usize, BufferTooSmall> {
    let mut w = Writer::new(out);
    w.put(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")?
        .put(b"Sec-WebSocket-Accept: ")?
        .put(&accept_key(key))?
        .put(b"\r\n")?;
    if let Some(protocol) = protocol {
        w.put(b"Sec-WebSocket-Protocol: ")?
            .put(protocol.as_bytes())?
            .put(b"\r\n")?;
    }
    w.put(b"\r\n")?;
    Ok(w.len())
}

/// Writes the complete HTTP/1.1 response for a client not upgraded (a [`Rejection`](super::Rejection) of its
/// request or the edge's [`Refusal`](super::Refusal)): status line, the headers the
/// status requires (`Allow`, `Upgrade`, `Sec-WebSocket-Version`, `WWW-Authenticate`,
/// `Retry-After`), `Content-Length`, `Connection: close`, and the reason as a plain-text body.
///
/// ```
/// use wsedge::handshake::{write_rejection, Rejection, MAX_RESPONSE_LEN};
/// let mut out = [0u8; MAX_RESPONSE_LEN];
/// let n = write_rejection(&mut out, Rejection::UnsupportedVersion)?;
/// let text = std::str::from_utf8(&out[..n]).unwrap();
/// assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
/// assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
/// assert!(text.ends_with("\r\n\r\nunsupported Sec-WebSocket-Version (13 required)\n"));
/// # Ok::<(), wsedge::handshake::BufferTooSmall>(())
/// ```
pub fn write_rejection(out: &mut [u8], answer: impl Into<Answer>) -> Result<usize, BufferTooSmall> {
    let rejection: Answer = answer.into();
    let reason = rejection.reason().as_bytes();
    let mut w = Writer::new(out);
    w.put(rejection.status().status_line().as_bytes())?
        .put(b"\r\n")?
        .put(rejection.extra_headers().as_bytes())?;
    if let Some(secs) = rejection.retry_after_secs() {
        w.put(b"Retry-After: ")?.put_u32(secs)?.put(b"\r\n")?;
    }
    w.put(b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: ")?
        .put_u32(reason.len() as u32 + 1)?
        .put(b"\r\nConnection: close\r\n\r\n")?
        .put(reason)?
        .put(b"\n")?;
    Ok(w.len())
}
