//! Proxy mode over HTTP/2: the streams' upstream sockets, on a reactor's loop.
//!
//! A client connection's HTTP/2 streams each have an upstream socket of their own, many
//! to one client socket, which neither backend's slot (one client, one upstream) can
//! hold. They live here instead, as the health checks' do: plain non-blocking sockets on a
//! small epoll instance whose descriptor the reactor watches beside its connections
//! (epoll: registered like a socket; io_uring: a poll operation), both backends alike.
//! Readiness is remembered per socket and the client connections it concerns are handed
//! out to be settled; the streams then move their bytes through [`Sockets`].
//!
//! The health checks' own descriptor is watched through this one when both exist, so a
//! reactor still watches one descriptor of the driver's.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

/// A stream's upstream socket, as the driver keeps it.
pub type SocketId = usize;

/// The streams' upstream sockets as the driver keeps them: it opens and watches them, the
/// streams move their bytes through them.
pub trait Sockets {
    /// Writes as much of `bytes` as the socket takes now: 0 when it is full (the driver
    /// watches it for room).
    fn send(&mut self, id: SocketId, bytes: &[u8]) -> io::Result<usize>;
    /// Reads what the socket holds into `buf`: `Ok(0)` at the upstream's end,
    /// `WouldBlock` when nothing waits (no syscall unless it was reported readable).
    fn receive(&mut self, id: SocketId, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends the upstream a FIN.
    fn shut_write(&mut self, id: SocketId);
    /// Closes the socket: with a RST when `reset`, else with a FIN.
    fn close(&mut self, id: SocketId, reset: bool);
}

/// No upstream sockets: echo and close mode, where no stream has one.
pub struct NoSockets;

impl Sockets for NoSockets {
    fn send(&mut self, _: SocketId, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::NotConnected.into())
    }

    fn receive(&mut self, _: SocketId, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::NotConnected.into())
    }

    fn shut_write(&mut self, _: SocketId) {}

    fn close(&mut self, _: SocketId, _: bool) {}
}

/// The health checks' descriptor, nested in this one.
const CHECKS: Token = Token(usize::MAX);
const EVENTS_CAPACITY: usize = 256;

/// One reactor's streams' upstream sockets.
pub struct StreamSockets {
    poll: Poll,
    events: Events,
    sockets: Slab<Socket>,
    /// Client connections (the backend's keys) whose upstream sockets were reported
    /// ready, to settle.
    due: Vec<usize>,
    /// The nested health checks' descriptor was reported ready.
    checks_ready: bool,
}

struct Socket {
    stream: TcpStream,
    /// The backend's key of the client connection whose stream this is.
    owner: usize,
    /// Readiness not yet drained (edge-triggered: no new event until `WouldBlock`).
    readable: bool,
    /// An event reported the FIN or an error: read to the end, a short read does not
    /// mean drained.
    hup: bool,
}

impl StreamSockets {
    /// An empty set; `checks`, the health checks' descriptor, is watched through it.
    pub fn new(checks: Option<RawFd>) -> io::Result<StreamSockets> {
        let poll = Poll::new()?;
        if let Some(fd) = checks {
            poll.registry()
                .register(&mut SourceFd(&fd), CHECKS, Interest::READABLE)?;
        }
        Ok(StreamSockets {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            sockets: Slab::new(),
            due: Vec::new(),
            checks_ready: false,
        })
    }

    /// The descriptor the reactor watches for readability.
    pub fn fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    /// Takes a socket opened for client connection `owner`'s stream.
    pub fn add(&mut self, mut stream: TcpStream, owner: usize) -> io::Result<SocketId> {
        let entry = self.sockets.vacant_entry();
        let id = entry.key();
        // Writability too: the connect's completion and room after a full socket come as
        // edges, once each.
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.poll
            .registry()
            .register(&mut stream, Token(id), interest)?;
        entry.insert(Socket {
            stream,
            owner,
            readable: false,
            hup: false,
        });
        Ok(id)
    }

    /// The descriptor was reported readable: what is ready is noted, and the connections
    /// it concerns become due. Returns whether the nested health checks' descriptor was
    /// among it.
    pub fn ready(&mut self) -> bool {
        loop {
            if let Err(error) = self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
                if error.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!(%error, "polling the HTTP/2 streams' upstream sockets");
                }
                break;
            }
            let mut count = 0;
            for event in self.events.iter() {
                count += 1;
                if event.token() == CHECKS {
                    self.checks_ready = true;
                    continue;
                }
                let Some(socket) = self.sockets.get_mut(event.token().0) else {
                    continue;
                };
                let hup = event.is_read_closed() || event.is_error();
                socket.readable |= event.is_readable() || hup;
                socket.hup |= hup;
                self.due.push(socket.owner);
            }
            if count < EVENTS_CAPACITY {
                break;
            }
        }
        self.due.sort_unstable();
        self.due.dedup();
        std::mem::take(&mut self.checks_ready)
    }

    /// The next client connection whose streams' upstreams have something to do.
    pub fn next_due(&mut self) -> Option<usize> {
        self.due.pop()
    }

    /// Sockets open.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether no socket is open.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

impl Sockets for StreamSockets {
    fn send(&mut self, id: SocketId, bytes: &[u8]) -> io::Result<usize> {
        let socket = self.sockets.get(id).ok_or(io::ErrorKind::NotConnected)?;
        write_some(&socket.stream, bytes)
    }

    fn receive(&mut self, id: SocketId, buf: &mut [u8]) -> io::Result<usize> {
        let socket = self
            .sockets
            .get_mut(id)
            .ok_or(io::ErrorKind::NotConnected)?;
        if !socket.readable {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match (&socket.stream).read(buf) {
            Ok(n) => {
                // A short read emptied the socket: the next arrival raises a new edge.
                socket.readable = n > 0 && (n == buf.len() || socket.hup);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                socket.readable = false;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn shut_write(&mut self, id: SocketId) {
        if let Some(socket) = self.sockets.get(id) {
            crate::sys::shutdown_write(&socket.stream);
        }
    }

    fn close(&mut self, id: SocketId, reset: bool) {
        if let Some(socket) = self.sockets.try_remove(id) {
            if reset {
                crate::sys::reset_on_close(&socket.stream);
            }
            // Dropping it closes it, which also takes it out of the epoll set.
        }
    }
}

/// Writes as much of `bytes` as the socket takes now.
pub fn write_some(mut to: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match to.write(bytes) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Starts a non-blocking connection to `addr` (from `source`, if given) and writes as
/// much of `request` (the forwarded request) as it takes now: returns the socket and how
/// much that was. On a fast network (and always on loopback) the connection is
/// established by the time the write is made, so the common case needs no writable event.
pub fn connect_and_send(
    addr: SocketAddr,
    source: Option<IpAddr>,
    request: &[u8],
) -> io::Result<(TcpStream, usize)> {
    let socket = crate::sys::upstream_socket(addr, source)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(socket.into());
    let written = write_some(&stream, request)?;
    Ok((stream, written))
}
