//! Proxy mode on epoll: the upstream connection and the relay.
//!
//! # Syscalls per proxied upgrade
//! The forwarded request is written right after `connect(2)` returns `EINPROGRESS`: on a
//! fast network (and always on loopback) the connection is established by then, the write
//! succeeds and no writable event, `SO_ERROR` or `getpeername` is needed to learn it. If the
//! handshake is still under way the write says `EAGAIN` (and the request waits for the
//! writable edge); if the upstream refused, the write says so and the next one is tried.
//! The client socket is registered with epoll only when the relay starts: until the
//! upstream has answered its bytes stay in the kernel.
//!
//! # Zero copy for bulk transfers
//! Bytes are relayed with `read`/`write` through a 64 KiB buffer until a direction carries
//! bulk data (one read of 16 KiB or more); that direction then switches to `splice(2)`
//! through a kernel pipe of its own, socket to pipe to socket, which saves both copies
//! (measured: see README). Chat-sized traffic never pays the pipe's two descriptors and its
//! creation; when descriptors run out the direction simply stays on copies.
//!
//! # Draining readiness
//! Each side's readability is remembered from its events (edge-triggered: an edge comes once)
//! and cleared when a read says `WouldBlock` or comes back short (the socket was emptied, so
//! the next arrival raises a new edge; that saves the read that would say `WouldBlock`). A
//! FIN reported with the event is the exception: it stays queued behind a short read, so such
//! a side is read to its end (nginx's `ngx_unix_recv` does the same with `pending_eof`). An
//! event on one side thus costs no read on the other. A side whose pipe is full is not read,
//! and stays readable: it is read again as soon as the other side has taken the pipe's bytes.

use std::io::{self, Read, Write};
use std::net::{Shutdown as HalfClose, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{Reactor, READ_BUDGET, UPSTREAM_BASE};
use crate::conn::Next;
use crate::proxy::{both_passed, Fin, Forwarding, Peers, Pipe};
use crate::reactor::sys;
use crate::session::UpstreamFailure;

/// A client's upstream connection and the bytes in transit both ways.
pub(super) struct Link {
    stream: TcpStream,
    /// Which upstream, to pass it over if it refuses.
    index: usize,
    /// Upstreams tried for this client so far.
    attempts: usize,
    /// The upstream took bytes, so the connection is established: a failure before that
    /// is a refusal, and the next upstream is tried.
    confirmed: bool,
    /// The upstream socket is registered for writability too.
    upstream_writable_interest: bool,
    /// Client to upstream.
    pub(super) up: Direction,
    /// Upstream to client.
    pub(super) down: Direction,
}

/// One direction of a relay: the state of its source, the bytes read from it and not yet
/// written to its sink, and its FIN.
pub(super) struct Direction {
    /// The source's readiness not yet drained.
    pub(super) readable: bool,
    /// An event reported the source's FIN (or an error): read it to the end, a short read
    /// does not mean drained.
    pub(super) hup: bool,
    pipe: Pipe,
    /// The kernel pipe, once the direction switched to `splice`.
    kernel: Option<Box<SplicePipe>>,
    /// `TCP_NODELAY` is set on the sink. An upstream socket gets it only before its first
    /// relayed byte: the forwarded request is one write, which Nagle never delays, and many
    /// connections (clients that only listen, or leave at once) never send one, so they
    /// are spared a syscall. Client sockets inherit it from the listener.
    nodelay: bool,
    /// The source's FIN, read and passed on (the sink's write side shut down).
    fin: Fin,
}

impl Direction {
    fn new(readable: bool, nodelay: bool) -> Direction {
        Direction {
            readable,
            hup: false,
            pipe: Pipe::default(),
            kernel: None,
            nodelay,
            fin: Fin::default(),
        }
    }

    /// Whether bytes wait for the sink to take them (its writable edge resumes the relay).
    fn blocked(&self) -> bool {
        !self.pipe.is_empty() || self.kernel.as_ref().is_some_and(|k| k.len > 0)
    }
}

impl Link {
    /// Bytes for the client (the upstream's 101 first).
    pub(super) fn push_to_client(&mut self, bytes: &[u8]) {
        self.down.pipe.push(bytes);
    }

    /// Whether bytes wait for the client's socket to take them.
    pub(super) fn client_blocked(&self) -> bool {
        self.down.blocked()
    }

    /// Whether the upstream socket has to report writability: the connect or the request
    /// is not through yet, or relayed bytes wait for it.
    fn upstream_blocked(&self) -> bool {
        !self.confirmed || self.up.blocked()
    }
}

/// A read at least this large marks a direction as bulk: it switches to `splice`.
const SPLICE_THRESHOLD: usize = 16 * 1024;
/// Bytes a kernel pipe holds (the Linux default pipe size).
const SPLICE_PIPE_CAPACITY: usize = 64 * 1024;

/// A kernel pipe, and how many bytes sit in it.
struct SplicePipe {
    read: OwnedFd,
    write: OwnedFd,
    len: usize,
}

impl SplicePipe {
    fn new() -> io::Result<SplicePipe> {
        let (read, write) = sys::pipe()?;
        // Past `fs.pipe-user-pages-soft` (64 MiB of pipes per user, about a thousand pipes,
        // for users without CAP_SYS_RESOURCE) the kernel makes new pipes one page: a splice
        // in 4 KiB steps costs more than the copies it saves.
        if sys::pipe_size(read.as_fd())? < SPLICE_PIPE_CAPACITY {
            return Err(io::Error::other("pipe smaller than 64 KiB"));
        }
        Ok(SplicePipe {
            read,
            write,
            len: 0,
        })
    }
}

/// Splices what the kernel pipe holds out to `to`, until it is empty or `to` is full.
fn drain_splice_pipe(kernel: &mut SplicePipe, to: &TcpStream) -> io::Result<()> {
    while kernel.len > 0 {
        match sys::splice(kernel.read.as_fd(), to.as_fd(), kernel.len) {
            Ok(n) => kernel.len -= n.min(kernel.len),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Which end of a direction failed (a reset, or any other error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    Source,
    Sink,
}

/// What one pass of moving bytes in one direction did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Flow {
    moved: bool,
    /// The read budget ran out with data possibly left.
    more: bool,
}

/// Writes as much of `bytes` as the socket takes now.
fn write_some(mut to: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match to.write(bytes) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes what `pipe` holds until it is empty or the socket is full.
fn flush_pipe(to: &TcpStream, pipe: &mut Pipe) -> io::Result<()> {
    while !pipe.is_empty() {
        let n = write_some(to, pipe.unsent())?;
        if n == 0 {
            break;
        }
        pipe.consume(n);
    }
    Ok(())
}

/// Moves bytes from `from` to `to`: reads while the source is readable and the pipe has
/// room, up to a budget; writes straight from the read buffer when nothing is queued, so
/// that the pipe only fills when `to` is slower than `from`. Passes a FIN on once
/// everything before it is out.
fn pump(
    mut from: &TcpStream,
    to: &TcpStream,
    d: &mut Direction,
    buffer: &mut [u8],
) -> Result<Flow, Broken> {
    let mut flow = Flow::default();
    flush_pipe(to, &mut d.pipe).map_err(|_| Broken::Sink)?;
    if let Some(kernel) = d.kernel.as_deref_mut().filter(|_| d.pipe.is_empty()) {
        drain_splice_pipe(kernel, to).map_err(|_| Broken::Sink)?;
    }
    let mut reads = 0;
    while d.readable && !d.fin.is_read() && d.pipe.room() > 0 {
        if reads == READ_BUDGET {
            flow.more = true;
            break;
        }
        reads += 1;
        if let Some(kernel) = d.kernel.as_deref_mut() {
            // Bulk: socket to pipe to socket, no copy. Copied bytes still queued go first.
            if !d.pipe.is_empty() || kernel.len >= SPLICE_PIPE_CAPACITY {
                break;
            }
            let room = SPLICE_PIPE_CAPACITY - kernel.len;
            match sys::splice(from.as_fd(), kernel.write.as_fd(), room) {
                Ok(0) => d.fin.read(),
                Ok(n) => {
                    flow.moved = true;
                    set_nodelay_once(to, &mut d.nodelay);
                    kernel.len += n;
                    drain_splice_pipe(kernel, to).map_err(|_| Broken::Sink)?;
                }
                // With bytes in the pipe this may mean the pipe is full (its slots hold
                // partial pages): the source stays readable until the pipe drains.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if kernel.len == 0 {
                        d.readable = false;
                    }
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Broken::Source),
            }
            continue;
        }
        let room = d.pipe.room().min(buffer.len());
        match from.read(&mut buffer[..room]) {
            Ok(0) => d.fin.read(),
            Ok(n) => {
                flow.moved = true;
                set_nodelay_once(to, &mut d.nodelay);
                if n < room && !d.hup {
                    // Drained: the next byte raises a new edge (see "Draining readiness").
                    d.readable = false;
                }
                let written = if d.pipe.is_empty() {
                    write_some(to, &buffer[..n]).map_err(|_| Broken::Sink)?
                } else {
                    0
                };
                d.pipe.push(&buffer[written..n]);
                flush_pipe(to, &mut d.pipe).map_err(|_| Broken::Sink)?;
                if n >= SPLICE_THRESHOLD {
                    // Out of descriptors: stay on copies.
                    d.kernel = SplicePipe::new().ok().map(Box::new);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => d.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Broken::Source),
        }
    }
    let kernel_empty = d.kernel.as_ref().is_none_or(|k| k.len == 0);
    if d.fin.pass_now(!d.pipe.is_empty() || !kernel_empty) {
        // The peer may be gone already; the other direction reports that.
        let _ = to.shutdown(HalfClose::Write);
    }
    Ok(flow)
}

/// Sets `TCP_NODELAY` on `to` before the first relayed write: relayed frames are written
/// as they come, and Nagle would hold small ones back behind unacknowledged data.
fn set_nodelay_once(to: &TcpStream, done: &mut bool) {
    if !*done {
        *done = true;
        let _ = to.set_nodelay(true);
    }
}

/// Starts a non-blocking connection to `addr`.
fn start_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = sys::upstream_socket(addr)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Opens a connection to upstream `index` at `addr` and writes as much of `request` (the
/// forwarded request) into it as it takes; the rest waits in the link's pipe.
fn open_link(
    addr: SocketAddr,
    index: usize,
    attempts: usize,
    client_readable: bool,
    request: &[u8],
) -> io::Result<Box<Link>> {
    let mut link = Box::new(Link {
        stream: start_connect(addr)?,
        index,
        attempts,
        confirmed: false,
        upstream_writable_interest: false,
        up: Direction::new(client_readable, false),
        down: Direction::new(false, true),
    });
    link.up.pipe.push(request);
    flush_pipe(&link.stream, &mut link.up.pipe)?;
    Ok(link)
}

impl Reactor {
    /// Opens a connection to the next upstream for client `key`, which has tried
    /// `attempts` upstreams already, and writes the forwarded request to it; after every
    /// upstream refused, 502. Returns whether the client is still there.
    pub(super) fn connect_upstream(&mut self, key: usize, mut attempts: usize, now: u64) -> bool {
        let next = loop {
            let Some(client) = self.clients.get_mut(key) else {
                return false;
            };
            let Some((index, addr)) = self.driver.next_upstream(&mut attempts, now) else {
                break client.conn.on_upstream_failed(&mut ctx!(self, now));
            };
            let local = match self.driver.config.proxy.forwarding {
                Forwarding::ProxyV2 => client.stream.local_addr().ok(),
                Forwarding::Headers => None,
            };
            let peers = Peers {
                client: client.peer,
                local: local.unwrap_or(client.peer),
            };
            client
                .conn
                .write_upstream_request(peers, &mut ctx!(self, now));
            // A client read before is not drained; one never registered reports its
            // readiness when it is.
            let opened = open_link(addr, index, attempts, client.registered, &self.out);
            self.out.clear();
            let mut link = match opened {
                Ok(link) => link,
                Err(error) => match self.driver.upstream_failed(
                    &mut client.conn,
                    index,
                    &error,
                    now,
                    &mut self.out,
                ) {
                    UpstreamFailure::TryNext => continue,
                    UpstreamFailure::Answer(next) => break next,
                },
            };
            if link.up.pipe.is_empty() {
                link.confirmed = true;
                let cx = ctx!(self, now);
                client.conn.on_upstream_connected(&cx);
            }
            // Writability matters only once something waits to be written: an interest in it
            // now would bring a useless event per connection.
            link.upstream_writable_interest = link.upstream_blocked();
            let interest = match link.upstream_writable_interest {
                true => Interest::READABLE | Interest::WRITABLE,
                false => Interest::READABLE,
            };
            if let Err(error) = self.poll.registry().register(
                &mut link.stream,
                Token(UPSTREAM_BASE + key),
                interest,
            ) {
                break self
                    .driver
                    .upstream_unusable(&mut client.conn, &error, now, &mut self.out);
            }
            client.link = Some(link);
            return true;
        };
        if let Some(client) = self.clients.get_mut(key) {
            client.link = None;
        }
        self.apply(key, next)
    }

    /// Adds writability to the upstream socket's interest the first time bytes wait for
    /// it. The interest is then kept: edge-triggered, it costs a wake-up only after a write
    /// found the socket full, which is exactly when one is wanted, while dropping it again
    /// would cost a syscall per episode. Returns false if the registration failed (the
    /// pair is then closed).
    fn update_upstream_interest(&mut self, key: usize) -> bool {
        let Some(link) = self
            .clients
            .get_mut(key)
            .and_then(|c| c.link.as_deref_mut())
        else {
            return true;
        };
        if link.upstream_writable_interest || !link.upstream_blocked() {
            return true;
        }
        link.upstream_writable_interest = true;
        let registered = self.poll.registry().reregister(
            &mut link.stream,
            Token(UPSTREAM_BASE + key),
            Interest::READABLE | Interest::WRITABLE,
        );
        if registered.is_err() {
            self.close(key);
            return false;
        }
        true
    }

    /// An event on client `key`'s upstream socket.
    pub(super) fn drive_upstream(&mut self, key: usize, now: u64) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let Some(link) = client.link.as_mut() else {
            return;
        };
        if client.conn.is_relaying() {
            return self.relay(key, now);
        }
        // Waiting for the answer: finish sending the request, read what came back.
        let before = link.up.pipe.len();
        if let Err(error) = flush_pipe(&link.stream, &mut link.up.pipe) {
            if !link.confirmed {
                // The connect failed: the next upstream, or the client's answer.
                let (index, attempts) = (link.index, link.attempts);
                client.link = None;
                let failure = self.driver.upstream_failed(
                    &mut client.conn,
                    index,
                    &error,
                    now,
                    &mut self.out,
                );
                let still_there = match failure {
                    UpstreamFailure::TryNext => self.connect_upstream(key, attempts, now),
                    UpstreamFailure::Answer(next) => self.apply(key, next),
                };
                if still_there {
                    self.settle(key, now);
                }
                return;
            }
            let mut cx = ctx!(self, now);
            let next = client.conn.on_upstream_failed(&mut cx);
            if self.apply(key, next) {
                self.settle(key, now);
            }
            return;
        }
        if !link.confirmed && link.up.pipe.len() < before {
            link.confirmed = true;
            let cx = ctx!(self, now);
            client.conn.on_upstream_connected(&cx);
        }
        let mut next = Next::Continue;
        while next == Next::Continue {
            let Some(client) = self.clients.get_mut(key) else {
                return;
            };
            let Some(link) = client.link.as_mut().filter(|l| l.down.readable) else {
                break;
            };
            let read = (&link.stream).read(&mut self.read_buffer);
            let mut cx = ctx!(self, now);
            next = match read {
                Ok(0) => client.conn.on_upstream_eof(&mut cx),
                Ok(n) => {
                    if n < self.read_buffer.len() && !link.down.hup {
                        link.down.readable = false;
                    }
                    client
                        .conn
                        .on_upstream_data(&self.read_buffer[..n], &mut cx)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    link.down.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => client.conn.on_upstream_failed(&mut cx),
            };
            if !self.apply(key, next) {
                return;
            }
        }
        if next == Next::Relay {
            return self.relay(key, now);
        }
        if self.update_upstream_interest(key) {
            self.settle(key, now)
        }
    }

    /// Moves bytes both ways until neither side has more for now; closes the pair once
    /// both FINs have been passed on, or either side failed.
    pub(super) fn relay(&mut self, key: usize, now: u64) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let Some(link) = client.link.as_mut() else {
            return self.close(key);
        };
        let up = pump(
            &client.stream,
            &link.stream,
            &mut link.up,
            &mut self.read_buffer,
        );
        let down = match up {
            // One side failed: both close, nothing more moves.
            Err(_) => Ok(Flow::default()),
            Ok(_) => pump(
                &link.stream,
                &client.stream,
                &mut link.down,
                &mut self.read_buffer,
            ),
        };
        let (up, down) = match (up, down) {
            (Ok(up), Ok(down)) => (up, down),
            (up, down) => {
                // A reset (or any error) on one side ends both; the survivor is reset too.
                let client_broken = up == Err(Broken::Source) || down == Err(Broken::Sink);
                let upstream_broken = up == Err(Broken::Sink) || down == Err(Broken::Source);
                if !upstream_broken {
                    sys::reset_on_close(&link.stream);
                }
                if !client_broken {
                    sys::reset_on_close(&client.stream);
                }
                return self.close(key);
            }
        };
        if both_passed(link.up.fin, link.down.fin) {
            return self.close(key);
        }
        if up.moved || down.moved {
            let cx = ctx!(self, now);
            client.conn.on_relayed(&cx);
        }
        if up.more || down.more {
            self.revisit.push(key);
        }
        if self.update_upstream_interest(key) {
            self.settle(key, now)
        }
    }
}
