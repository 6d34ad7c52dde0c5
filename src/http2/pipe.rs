//! The in-memory socket an HTTP/2 connection is driven over: the bytes the reactor read go
//! in, the frames the connection writes come out, and nothing ever blocks. The h2 crate
//! asks for `AsyncRead + AsyncWrite`; this is all of its I/O.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Input kept between reads above this much capacity is freed once read, so that an idle
/// connection does not keep a read's worth of memory.
const KEPT_INPUT_CAPACITY: usize = 4096;

#[derive(Debug, Default)]
struct Buffers {
    /// Read from the socket, not yet taken by the connection: `input[read_at..]`.
    input: Vec<u8>,
    read_at: usize,
    /// The peer closed its side.
    eof: bool,
    /// Written by the connection, for the socket.
    output: Vec<u8>,
}

/// One end of the pipe: the connection holds one, the session the other. Both live on the
/// reactor's thread; the `RefCell` is borrowed only inside a call, never across one.
#[derive(Debug, Clone, Default)]
pub(super) struct Pipe(Rc<RefCell<Buffers>>);

impl Pipe {
    /// Bytes read from the socket.
    pub fn push(&self, bytes: &[u8]) {
        let mut buffers = self.0.borrow_mut();
        buffers.input.extend_from_slice(bytes);
    }

    /// Forgets what the connection has not read (it ended).
    pub fn drop_input(&self) {
        let mut buffers = self.0.borrow_mut();
        buffers.input = Vec::new();
        buffers.read_at = 0;
    }

    /// The peer closed its side: once its bytes are read, the connection reads the end.
    pub fn close_input(&self) {
        self.0.borrow_mut().eof = true;
    }

    /// Moves what the connection wrote to the end of `out`.
    pub fn take_output(&self, out: &mut Vec<u8>) {
        let mut buffers = self.0.borrow_mut();
        if out.is_empty() {
            std::mem::swap(out, &mut buffers.output);
        } else {
            out.append(&mut buffers.output);
        }
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut buffers = self.0.borrow_mut();
        let Buffers {
            input,
            read_at,
            eof,
            ..
        } = &mut *buffers;
        let available = input.get(*read_at..).unwrap_or_default();
        if available.is_empty() {
            // An empty read is the end of the stream; otherwise the connection polls again
            // after the next bytes arrive.
            return match eof {
                true => Poll::Ready(Ok(())),
                false => Poll::Pending,
            };
        }
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        *read_at += n;
        if *read_at == input.len() {
            *read_at = 0;
            match input.capacity() > KEPT_INPUT_CAPACITY {
                true => *input = Vec::new(),
                false => input.clear(),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Always taken: what the connection writes is bounded by what its streams may send
        // (flow control, bounded per stream) and by the reading, which stops while the
        // socket has not taken earlier output.
        self.0.borrow_mut().output.extend_from_slice(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
