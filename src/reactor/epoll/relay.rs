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
//! (measured: see docs/performance.md). Chat-sized traffic never pays the pipe's two descriptors and its
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

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{flush, write_some, Reactor, READ_BUDGET, UPSTREAM_BASE};
use crate::conn::Next;
use crate::proxy::stream_sockets::connect_and_send;
use crate::proxy::{Flow, Forwarding, Link, Peers, Side};
use crate::reactor::sys;
use crate::session::turn::Backend as _;
use crate::session::{Backlog, Event, UpstreamFailure};
use crate::transport::Outbox;

/// A client's upstream socket, the readiness of both sides, and the [`Link`].
pub(super) struct Upstream {
    stream: TcpStream,
    /// The upstream socket is registered for writability too.
    writable_interest: bool,
    pub(super) link: Link,
    from_client: Source,
    from_upstream: Source,
}

/// What epoll told about one side as a source of relayed bytes, and the kernel pipe of the
/// direction from it once that carries bulk data.
#[derive(Default)]
struct Source {
    /// Readiness not yet drained.
    readable: bool,
    /// An event reported the FIN (or an error): read it to the end, a short read does not
    /// mean drained.
    hup: bool,
    splice: Option<Box<SplicePipe>>,
}

impl Source {
    fn spliced(&self) -> usize {
        self.splice.as_ref().map_or(0, |k| k.len)
    }
}

impl Upstream {
    /// An event says `side` has input (data, a FIN or an error) to read.
    pub(super) fn readable(&mut self, side: Side, hup: bool) {
        let source = match side {
            Side::Client => &mut self.from_client,
            Side::Upstream => &mut self.from_upstream,
        };
        source.readable = true;
        source.hup |= hup;
    }

    /// The socket is about to close: reset, if its relay never began
    /// ([`Link::resets_on_close`]).
    pub(super) fn abandon(&self) {
        if self.link.resets_on_close() {
            sys::reset_on_close(&self.stream);
        }
    }

    /// The relay starts: `held` (output the client's socket has not taken, TLS records of
    /// its handshake) leads the bytes to the client, through the relay's pipe.
    pub(super) fn take_over(&mut self, held: &mut Outbox) {
        let to_client = &mut self.link.toward(Side::Client).pipe;
        to_client.push(held.pending());
        held.sent(held.pending().len());
    }

    /// What waits for the client's socket, and whether it took any since last asked.
    pub(super) fn client_backlog(&mut self) -> Backlog {
        Backlog {
            waiting: self.client_blocked(),
            progressed: self.link.toward(Side::Client).pipe.take_progress(),
        }
    }

    /// Whether bytes wait for the client's socket to take them.
    pub(super) fn client_blocked(&self) -> bool {
        self.link.blocked(Side::Client) || self.from_upstream.spliced() > 0
    }

    /// Whether the upstream socket has to report writability: the connect or the request
    /// is not through yet, or relayed bytes wait for it.
    fn upstream_blocked(&self) -> bool {
        !self.link.confirmed || self.link.blocked(Side::Upstream) || self.from_client.spliced() > 0
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

    /// Splices what the pipe holds out to `to`, until it is empty or `to` is full; what `to`
    /// took counts as the sink's progress in `flow`.
    fn drain(&mut self, to: &TcpStream, flow: &mut Flow) -> io::Result<()> {
        while self.len > 0 {
            match sys::splice(self.read.as_fd(), to.as_fd(), self.len) {
                Ok(n) => {
                    self.len -= n.min(self.len);
                    flow.pipe.note_progress();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// What one pass of moving bytes in one direction did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Moved {
    any: bool,
    /// The read budget ran out with data possibly left.
    more: bool,
}

/// Moves bytes from side `source` (`from`) to the other (`to`): reads while the source is
/// readable and the pipe has room, up to a budget; writes plain bytes straight from the read
/// buffer when nothing is queued, so that the pipe only fills when `to` is slower than
/// `from` (bytes through TLS go through the pipe). Passes a FIN on when it is due. An error
/// names the side that broke.
fn pump(
    (mut from, source): (&TcpStream, Side),
    to: &TcpStream,
    link: &mut Link,
    src: &mut Source,
    buffer: &mut [u8],
) -> Result<Moved, Side> {
    let source_broke = |_: io::Error| source;
    let sink_broke = |_: io::Error| source.other();
    let sink = source.other();
    let plain = link.is_plain();
    let mut moved = Moved::default();
    flush(to, &mut link.toward(sink).pipe).map_err(sink_broke)?;
    if let Some(kernel) = src.splice.as_deref_mut() {
        if link.toward(sink).pipe.is_empty() {
            kernel.drain(to, link.toward(sink)).map_err(sink_broke)?;
        }
    }
    let mut reads = 0;
    while src.readable && link.may_read(source) {
        if reads == READ_BUDGET {
            moved.more = true;
            break;
        }
        reads += 1;
        let flow = link.toward(sink);
        if let Some(kernel) = src.splice.as_deref_mut() {
            // Bulk: socket to pipe to socket, no copy. Copied bytes still queued go first.
            if !flow.pipe.is_empty() || kernel.len >= SPLICE_PIPE_CAPACITY {
                break;
            }
            let room = SPLICE_PIPE_CAPACITY - kernel.len;
            match sys::splice(from.as_fd(), kernel.write.as_fd(), room) {
                Ok(0) => flow.fin.read(),
                Ok(n) => {
                    moved.any = true;
                    set_nodelay_once(to, flow);
                    kernel.len += n;
                    kernel.drain(to, flow).map_err(sink_broke)?;
                }
                // With bytes in the pipe this may mean the pipe is full (its slots hold
                // partial pages): the source stays readable until the pipe drains.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    src.readable = kernel.len > 0;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(source_broke(e)),
            }
            continue;
        }
        let room = flow.pipe.room().min(buffer.len());
        match from.read(&mut buffer[..room]) {
            Ok(0) => {
                // Over TLS the end is a record (`close_notify`) to write before the FIN: the
                // sink may be writable already, with no edge to come.
                link.end_of(source);
                flush(to, &mut link.toward(sink).pipe).map_err(sink_broke)?;
            }
            Ok(n) => {
                moved.any = true;
                set_nodelay_once(to, link.toward(sink));
                // Drained: the next byte raises a new edge (see "Draining readiness").
                src.readable = n == room || src.hup;
                let flow = link.toward(sink);
                let written = match plain && flow.pipe.is_empty() {
                    true => write_some(to, &buffer[..n]).map_err(sink_broke)?,
                    false => 0,
                };
                link.relay_in(source, &buffer[written..n]);
                flush(to, &mut link.toward(sink).pipe).map_err(sink_broke)?;
                if plain && n >= SPLICE_THRESHOLD {
                    // Out of descriptors: stay on copies.
                    src.splice = SplicePipe::new().ok().map(Box::new);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => src.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(source_broke(e)),
        }
    }
    if link.toward(sink).fin_due(src.spliced() > 0) {
        // The peer may be gone already; the other direction reports that.
        sys::shutdown_write(to);
    }
    Ok(moved)
}

fn set_nodelay_once(to: &TcpStream, flow: &mut Flow) {
    if flow.set_nodelay_now() {
        let _ = to.set_nodelay(true);
    }
}

impl Reactor {
    /// Opens a connection to the next upstream for client `key`, which has tried
    /// `attempts` upstreams already, and writes the forwarded request to it; after every
    /// upstream refused, 502. Returns whether the client is still there.
    pub(super) fn connect_upstream(&mut self, key: usize, attempts: usize, now: u64) -> bool {
        let Some(client) = self.clients.get_mut(key) else {
            return false;
        };
        if let Some(next) = (self.driver).hold_if_busy((key, &mut client.parts), now, &mut self.out)
        {
            return next == Next::Continue || self.apply(key, next);
        }
        let local = match self.driver.forwarding() {
            Forwarding::ProxyV2 => client.stream.local_addr().ok(),
            Forwarding::Headers => None,
        };
        // Behind a balancer, the client its PROXY header named.
        let peer = self
            .driver
            .client_addr(&client.parts)
            .unwrap_or(client.peer);
        let peers = Peers {
            client: peer,
            local: local.unwrap_or(client.peer),
            tls: client.parts.transport.is_tls(),
        };
        (self.driver).upstream_request(&mut client.parts, peers, now, &mut self.out);
        let mut request = std::mem::take(&mut self.out);
        let opened = self.driver.open_upstream(
            (key, &mut client.parts),
            (attempts, Some(peer.ip())),
            now,
            &mut self.out,
            |addr, source| connect_and_send(addr, source, &request),
        );
        let next = match opened {
            Ok((link, (stream, written))) => {
                // A client read before is not drained; one never registered reports its
                // readiness when it is.
                let from_client = Source {
                    readable: client.registered,
                    ..Source::default()
                };
                let mut upstream = Box::new(Upstream {
                    stream,
                    writable_interest: false,
                    link,
                    from_client,
                    from_upstream: Source::default(),
                });
                upstream
                    .link
                    .toward(Side::Upstream)
                    .pipe
                    .push(&request[written..]);
                if written > 0 {
                    upstream.link.confirmed = true;
                    let connected = Event::UpstreamConnected;
                    let _ = (self.driver).handle(&mut client.parts, connected, now, &mut self.out);
                }
                match self.register_upstream(key, upstream) {
                    Ok(()) => Next::Continue,
                    Err(error) => match self.clients.get_mut(key) {
                        Some(client) => {
                            let out = &mut self.out;
                            self.driver
                                .upstream_unusable(&mut client.parts, &error, now, out)
                        }
                        None => Next::Continue,
                    },
                }
            }
            Err(next) => next,
        };
        if self.out.is_empty() {
            request.clear();
            self.out = request;
        }
        next == Next::Continue || self.apply(key, next)
    }

    /// Registers client `key`'s new upstream socket and keeps it with the client.
    /// Writability matters only once something waits to be written: an interest in it now
    /// would bring a useless event per connection.
    fn register_upstream(&mut self, key: usize, mut upstream: Box<Upstream>) -> io::Result<()> {
        upstream.writable_interest = upstream.upstream_blocked();
        let interest = match upstream.writable_interest {
            true => Interest::READABLE | Interest::WRITABLE,
            false => Interest::READABLE,
        };
        let token = Token(UPSTREAM_BASE + key);
        self.poll
            .registry()
            .register(&mut upstream.stream, token, interest)?;
        if let Some(client) = self.clients.get_mut(key) {
            client.upstream = Some(upstream);
        }
        Ok(())
    }

    /// Adds writability to the upstream socket's interest the first time bytes wait for
    /// it. The interest is then kept: edge-triggered, it costs a wake-up only after a write
    /// found the socket full, which is exactly when one is wanted, while dropping it again
    /// would cost a syscall per episode. Returns false if the registration failed (the
    /// pair is then closed).
    fn update_upstream_interest(&mut self, key: usize) -> bool {
        let Some(upstream) = self.clients.get_mut(key).and_then(|c| c.upstream.as_mut()) else {
            return true;
        };
        if upstream.writable_interest || !upstream.upstream_blocked() {
            return true;
        }
        upstream.writable_interest = true;
        let registered = self.poll.registry().reregister(
            &mut upstream.stream,
            Token(UPSTREAM_BASE + key),
            Interest::READABLE | Interest::WRITABLE,
        );
        if registered.is_err() {
            self.close(key);
        }
        registered.is_ok()
    }

    /// An event on client `key`'s upstream socket.
    pub(super) fn drive_upstream(&mut self, key: usize, now: u64) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let Some(upstream) = client.upstream.as_mut() else {
            return;
        };
        if client.parts.is_relaying() {
            return self.relay(key, now);
        }
        // Waiting for the answer: finish sending the request, read what came back.
        let pipe = &mut upstream.link.toward(Side::Upstream).pipe;
        let before = pipe.len();
        let flushed = flush(&upstream.stream, pipe).map(|()| pipe.len() < before);
        let next = match flushed {
            Err(error) if !upstream.link.confirmed => {
                // The connect failed: the next upstream, or the client's answer.
                let attempts = upstream.link.attempts;
                let failed = client.upstream.take();
                let link = failed.as_ref().map(|u| &u.link);
                let failure = match link {
                    Some(link) => self.driver.upstream_failed(
                        &mut client.parts,
                        link,
                        &error,
                        now,
                        &mut self.out,
                    ),
                    None => UpstreamFailure::TryNext,
                };
                drop(failed);
                let still_there = match failure {
                    UpstreamFailure::TryNext => self.connect_upstream(key, attempts, now),
                    UpstreamFailure::Answer(next) => self.apply(key, next),
                };
                if still_there {
                    self.settle(key, now);
                }
                return;
            }
            Err(_) => {
                let failed = Event::UpstreamFailed;
                self.driver
                    .handle(&mut client.parts, failed, now, &mut self.out)
            }
            Ok(true) if !upstream.link.confirmed => {
                upstream.link.confirmed = true;
                let connected = Event::UpstreamConnected;
                (self.driver).handle(&mut client.parts, connected, now, &mut self.out)
            }
            Ok(_) => Next::Continue,
        };
        if next != Next::Continue {
            if self.apply(key, next) {
                self.settle(key, now);
            }
            return;
        }
        let mut next = Next::Continue;
        while next == Next::Continue {
            let Some(client) = self.clients.get_mut(key) else {
                return;
            };
            let Some(upstream) = client.upstream.as_mut() else {
                break;
            };
            let source = &mut upstream.from_upstream;
            if !source.readable {
                break;
            }
            let read = (&upstream.stream).read(&mut self.read_buffer);
            let event = match read {
                Ok(0) => Event::UpstreamClosed,
                Ok(n) => {
                    source.readable = n == self.read_buffer.len() || source.hup;
                    Event::UpstreamData(&self.read_buffer[..n])
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    source.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => Event::UpstreamFailed,
            };
            next = self
                .driver
                .handle(&mut client.parts, event, now, &mut self.out);
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
        let Some(upstream) = client.upstream.as_deref_mut() else {
            return self.close(key);
        };
        let buffer = &mut self.read_buffer;
        let (link, from_client) = (&mut upstream.link, &mut upstream.from_client);
        let up = pump(
            (&client.stream, Side::Client),
            &upstream.stream,
            link,
            from_client,
            buffer,
        );
        // One side failed: both close, nothing more moves. Over TLS, reading the client
        // can queue records for it (an alert, a `close_notify`): the other direction
        // writes them.
        let down = up.as_ref().map_err(|&broken| broken).and_then(|_| {
            pump(
                (&upstream.stream, Side::Upstream),
                &client.stream,
                &mut upstream.link,
                &mut upstream.from_upstream,
                buffer,
            )
        });
        let (up, down) = match (up, down) {
            (Ok(up), Ok(down)) => (up, down),
            (Err(broken), _) | (_, Err(broken)) => {
                // The survivor is reset (see `Link`).
                match broken.other() {
                    Side::Client => sys::reset_on_close(&client.stream),
                    Side::Upstream => sys::reset_on_close(&upstream.stream),
                }
                return self.close(key);
            }
        };
        if upstream.link.is_over() {
            return self.close(key);
        }
        if up.any || down.any {
            let _ = (self.driver).handle(&mut client.parts, Event::Relayed, now, &mut self.out);
        }
        if up.more || down.more {
            self.revisit.push(key);
        }
        if self.update_upstream_interest(key) {
            self.settle(key, now)
        }
    }
}
