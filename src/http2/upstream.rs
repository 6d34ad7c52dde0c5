//! Proxy mode over HTTP/2: each stream's own upstream connection, an HTTP/1.1 upgrade.
//!
//! The stream's request, written as HTTP/1.1 with a fresh `Sec-WebSocket-Key`, is judged by
//! its [`Conn`](crate::conn::Conn) as a classic upgrade is, and forwarded by the same
//! code; the upstream's `101` is checked against that key and becomes the stream's `200`
//! (its subprotocol and extensions passed on). Then the stream's DATA is the upstream
//! socket's bytes both ways: END_STREAM is a FIN and RST_STREAM a reset, in both
//! directions.
//!
//! The driver opens, watches and closes the sockets
//! ([`Sockets`](crate::proxy::stream_sockets::Sockets)); the stream only moves bytes
//! through them, so this module does no I/O of its own.

use std::io;

use crate::proxy::stream_sockets::SocketId;
use crate::proxy::Link;

/// A stream's upstream connection, opened by the driver for it.
pub struct Opened {
    /// Its socket.
    pub id: SocketId,
    /// The fleet's lease on the upstream (its counts and health) and the attempts so far.
    pub link: Link,
    /// The forwarded request, of which the socket took `written` bytes already.
    pub request: Vec<u8>,
    /// How much of `request` the socket took at once.
    pub written: usize,
}

/// Opens an upstream connection for a stream's connection (which has tried `attempts`
/// upstreams; the last one's failure, if it failed, is given), or writes the connection's
/// answer when none can be had (502, 503) and returns what follows it.
pub type Open<'a> = &'a mut dyn FnMut(
    &mut crate::conn::Conn,
    usize,
    Option<(Link, io::Error)>,
    &mut Vec<u8>,
) -> Result<Opened, crate::conn::Next>;

/// A stream's upstream side (proxy mode).
pub(super) struct Upstream {
    pub id: SocketId,
    pub link: Link,
    /// Bytes the upstream has not taken: the forwarded request's rest, then the client's
    /// DATA (whose flow-control capacity is released only as the upstream takes it, so the
    /// client's window bounds this).
    pub toward: Vec<u8>,
    /// How much of `toward`'s front is the forwarded request.
    pub request_left: usize,
    /// The client's END_STREAM, owed to the upstream as a FIN once `toward` is out.
    pub fin_owed: bool,
    pub fin_sent: bool,
    /// The upstream closed its side (its end is the stream's END_STREAM).
    pub ended: bool,
    /// Bytes came from the upstream: a failure now is no longer a refused connection.
    pub answered: bool,
    /// Its 101 was checked and passed on: the relay began.
    pub relaying: bool,
}

impl Upstream {
    pub fn new(opened: Opened) -> Upstream {
        let Opened {
            id,
            mut link,
            mut request,
            written,
        } = opened;
        link.confirmed = written > 0;
        request.drain(..written.min(request.len()));
        Upstream {
            id,
            link,
            request_left: request.len(),
            toward: request,
            fin_owed: false,
            fin_sent: false,
            ended: false,
            answered: false,
            relaying: false,
        }
    }
}

/// Fresh `Sec-WebSocket-Key`s for the streams' upstreams (RFC 6455 4.1: a nonce chosen at
/// random for each connection). The nonce need not be secret, only unpredictable to those
/// it guards against (caches between the edge and the upstream): splitmix64 from a
/// per-connection random seed, with no syscall per stream.
pub struct Keys(u64);

impl Default for Keys {
    /// Keys from a fresh random seed.
    fn default() -> Keys {
        use std::hash::{BuildHasher, Hasher};
        Keys(
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
        )
    }
}

impl Keys {
    /// The next key.
    pub fn fresh(&mut self) -> [u8; crate::handshake::KEY_LEN] {
        let mut nonce = [0u8; 16];
        for half in nonce.chunks_exact_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            half.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        crate::handshake::key_from_nonce(&nonce)
    }
}
