//! The epoll backend (`mio`): one event loop per reactor thread.
//!
//! # Syscalls per connection
//! A client whose request is already there when it is accepted costs `accept4`, `read`,
//! `write` and `close`: the first read happens right after accept, before the socket is
//! ever registered with epoll, and in close mode it never is. Under `TCP_DEFER_ACCEPT` the
//! request is always there. Without it, an eager read that finds nothing is a wasted
//! syscall, so the reactor learns from recent accepts whether reading first pays
//! (`EagerReads`) and otherwise registers first, as a plain epoll server would.
//!
//! # Draining readiness
//! Registrations are edge-triggered: a readiness edge is reported once, so a socket is
//! read until `WouldBlock` (or a short read, which means the kernel buffer was emptied
//! and the next arrival raises a new edge). A connection or listener that uses up its
//! budget in one turn is revisited on the next turn with a zero poll timeout, because no
//! new edge would come for it.

use std::io::{self, Read};
use std::net::{Shutdown as HalfClose, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::{sys, ReactorParts, Wake};
use crate::conn::Next;
use crate::proxy::stream_sockets::write_some;
use crate::proxy::Side;
use crate::session::{
    turn, turn::Backend as _, Action, AfterFlush, Backlog, Driver, Event, HelloStep, Origin, Parts,
};
use crate::transport::Queue;
use relay::Upstream;

mod relay;

const WAKER: Token = Token(usize::MAX);
/// The driver's own epoll descriptor (proxy mode: the health checks, the HTTP/2 streams'
/// upstreams).
const DRIVER_OWN: Token = Token(usize::MAX - 1);
/// Listener `i` has token `LISTENER_BASE + i`; connection keys stay far below.
const LISTENER_BASE: usize = usize::MAX / 2;
/// The upstream socket of connection `key` has token `UPSTREAM_BASE + key`.
const UPSTREAM_BASE: usize = usize::MAX / 4;
/// Connections accepted per listener per turn, so established ones are not starved.
const ACCEPT_BUDGET: usize = 256;
/// Reads per connection per turn.
const READ_BUDGET: usize = 8;
/// The reactor's read buffer; connections copy out only incomplete data.
const READ_BUFFER: usize = 64 * 1024;
const EVENTS_CAPACITY: usize = 1024;

struct Client {
    stream: TcpStream,
    /// Its protocol, session, transport (plain, or TLS terminated here) and output.
    parts: Parts,
    /// The first read is an eager one, right after accept; its outcome teaches [`EagerReads`].
    eager: bool,
    registered: bool,
    wants_writable: bool,
    peer: SocketAddr,
    /// Proxy mode: the upstream side, from the validated request until the relay ends.
    upstream: Option<Box<Upstream>>,
}

/// Writes what `queue` holds until it is empty or the socket is full.
fn flush(to: &TcpStream, queue: &mut impl Queue) -> io::Result<()> {
    loop {
        let bytes = queue.unsent();
        if bytes.is_empty() {
            return Ok(());
        }
        match write_some(to, bytes)? {
            0 => return Ok(()),
            n => queue.consume(n),
        }
    }
}

/// Whether to read right after accept: yes while recent eager reads mostly found the
/// request already queued, with one probe in 16 accepts to notice when that changes.
struct EagerReads {
    /// Always read first (`TCP_DEFER_ACCEPT`: accept completes only once data is queued).
    always: bool,
    /// Recent hits minus misses, clamped to `-8..=8`.
    score: i8,
    accepts: u32,
}

impl EagerReads {
    fn read_first(&mut self) -> bool {
        self.accepts = self.accepts.wrapping_add(1);
        self.always || self.score >= 0 || self.accepts % 16 == 0
    }

    fn learn(&mut self, found_data: bool) {
        let step = if found_data { 1 } else { -1 };
        self.score = (self.score + step).clamp(-8, 8);
    }
}

struct Listener {
    socket: TcpListener,
    /// Its connections speak TLS.
    tls: bool,
    /// Readiness not yet drained (edge-triggered: no new event until `WouldBlock`).
    ready: bool,
}

/// One reactor: listeners, connections and timers of one thread.
pub struct Reactor {
    poll: Poll,
    listeners: Vec<Listener>,
    clients: Slab<Client>,
    /// Every decision above the connection's protocol.
    driver: Driver,
    read_buffer: Box<[u8]>,
    out: Vec<u8>,
    /// Connections whose read budget ran out: revisit next turn.
    revisit: Vec<usize>,
    eager_reads: EagerReads,
}

impl Reactor {
    /// Creates a reactor over its own listeners, and the function that wakes its poll.
    pub fn new(parts: ReactorParts) -> io::Result<(Reactor, Wake)> {
        let (driver, listeners, defer_accept) = parts.split();
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let mut registered = Vec::with_capacity(listeners.len());
        for (i, listener) in listeners.into_iter().enumerate() {
            let mut socket = TcpListener::from_std(listener.socket);
            poll.registry()
                .register(&mut socket, Token(LISTENER_BASE + i), Interest::READABLE)?;
            // Connections may already be queued: look before the first event.
            registered.push(Listener {
                socket,
                tls: listener.tls,
                ready: true,
            });
        }
        if let Some(fd) = driver.own_fd() {
            poll.registry().register(
                &mut mio::unix::SourceFd(&fd),
                DRIVER_OWN,
                Interest::READABLE,
            )?;
        }
        let reactor = Reactor {
            poll,
            listeners: registered,
            clients: Slab::new(),
            driver,
            read_buffer: vec![0u8; READ_BUFFER].into_boxed_slice(),
            out: Vec::with_capacity(4096),
            revisit: Vec::new(),
            eager_reads: EagerReads {
                always: defer_accept,
                score: 0,
                accepts: 0,
            },
        };
        // A reactor that cannot be woken still sees the flag on its next timer tick.
        let wake: Wake = Arc::new(move || drop(waker.wake()));
        Ok((reactor, wake))
    }

    /// Runs until a shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let timeout = self.poll_timeout(self.driver.now());
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            let now = self.driver.now();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    DRIVER_OWN => self.driver.own_ready(),
                    Token(t) if t >= LISTENER_BASE => {
                        if let Some(listener) = self.listeners.get_mut(t - LISTENER_BASE) {
                            listener.ready = true;
                        }
                    }
                    Token(t) if t >= UPSTREAM_BASE => {
                        let key = t - UPSTREAM_BASE;
                        self.note_input(key, Side::Upstream, event);
                        self.drive_upstream(key, now)
                    }
                    Token(key) => {
                        self.note_input(key, Side::Client, event);
                        self.drive(key, now)
                    }
                }
            }
            if turn::finish(&mut self, now) {
                return Ok(());
            }
        }
    }

    /// Proxy mode: remembers that `event` says `side` of connection `key` has input (data,
    /// a FIN or an error) to read.
    fn note_input(&mut self, key: usize, side: Side, event: &mio::event::Event) {
        let hup = event.is_read_closed() || event.is_error();
        let upstream = self.clients.get_mut(key).and_then(|c| c.upstream.as_mut());
        if let Some(upstream) = upstream.filter(|_| event.is_readable() || hup) {
            upstream.readable(side, hup);
        }
    }

    fn poll_timeout(&self, now: u64) -> Option<Duration> {
        let accepting = !self.driver.is_draining() && self.listeners.iter().any(|l| l.ready);
        if !self.revisit.is_empty() || (accepting && self.driver.accepting(now)) {
            return Some(Duration::ZERO);
        }
        self.driver.wait(now, accepting)
    }

    fn accept_ready(&mut self, now: u64) {
        if !self.driver.accepting(now) {
            return;
        }
        for index in 0..self.listeners.len() {
            let mut budget = ACCEPT_BUDGET;
            while self.listeners[index].ready && budget > 0 {
                match self.listeners[index].socket.accept() {
                    Ok((stream, peer)) => {
                        budget -= 1;
                        let tls = self.listeners[index].tls;
                        self.on_accepted(stream, peer, tls, now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.listeners[index].ready = false
                    }
                    Err(e) if sys::is_transient_accept_error(&e) => {}
                    Err(e) => {
                        // Out of descriptors or memory: retrying now would spin.
                        self.driver.pause_accepting(now, &e);
                        return;
                    }
                }
            }
        }
    }

    fn on_accepted(&mut self, stream: TcpStream, peer: SocketAddr, tls: bool, now: u64) {
        let open = self.clients.len();
        let (parts, next) = self
            .driver
            .accepted(open, Some(peer.ip()), tls, now, &mut self.out);
        let admitted = parts.is_admitted();
        let mut client = Client {
            stream,
            parts,
            eager: false,
            registered: false,
            wants_writable: false,
            peer,
            upstream: None,
        };
        if !admitted {
            // Refused over a limit: the answer is sent without reading the request.
            let key = self.clients.insert(client);
            if self.apply(key, next) {
                self.settle(key, now);
            }
            return;
        }
        client.eager = self.eager_reads.read_first();
        let eager = client.eager;
        let key = self.clients.insert(client);
        if eager {
            // With the request already queued, the connection may finish without ever
            // touching epoll.
            self.drive(key, now);
        } else {
            self.settle(key, now);
        }
    }

    /// Flushes, reads and processes one connection, then settles its registration and timer.
    fn drive(&mut self, key: usize, now: u64) {
        if self.clients.get(key).is_some_and(|c| c.parts.is_relaying()) {
            return self.relay(key, now);
        }
        if !self.flush_outbox(key) {
            return self.settle(key, now);
        }
        for _ in 0..READ_BUDGET {
            let Some(client) = self.clients.get_mut(key) else {
                return;
            };
            if client.parts.waits_until().is_some() && sys::peer_gone(&client.stream) {
                // Waiting at the edge for an upstream with room, and gone: nothing of it
                // will be forwarded.
                let closed = Event::PeerClosed;
                let next = (self.driver).handle(&mut client.parts, closed, now, &mut self.out);
                if self.apply(key, next) {
                    self.settle(key, now);
                }
                return;
            }
            if client.parts.wants_upstream() {
                // The client is read again once the upstream has answered: until then
                // its bytes wait in the kernel (back-pressure, not a buffer of ours).
                return self.settle(key, now);
            }
            if client.parts.awaits_flush() {
                // Blocked on a flush: the writable edge resumes this connection.
                return self.settle(key, now);
            }
            if client.parts.awaits_client_hello() {
                let waited = sys::waited(&client.stream);
                match (self.driver).before_key_exchange(key, &mut client.parts, waited, now) {
                    HelloStep::Read => {}
                    // Its bytes wait in the kernel; the queue gives it back.
                    HelloStep::Wait => return self.settle(key, now),
                    HelloStep::Shed(next) => {
                        if self.apply(key, next) {
                            self.settle(key, now);
                        }
                        return;
                    }
                }
            }
            let read = (&client.stream).read(&mut self.read_buffer);
            if std::mem::take(&mut client.eager) {
                self.eager_reads.learn(matches!(read, Ok(n) if n > 0));
            }
            let (next, drained) = match read {
                Ok(0) => {
                    let closed = Event::PeerClosed;
                    let next = (self.driver).handle(&mut client.parts, closed, now, &mut self.out);
                    (next, true)
                }
                Ok(n) => (
                    self.driver.received(
                        Origin {
                            key,
                            socket: client.stream.as_fd(),
                        },
                        &mut client.parts,
                        &self.read_buffer[..n],
                        now,
                        &mut self.out,
                    ),
                    n < self.read_buffer.len(),
                ),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.settle(key, now),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(key),
            };
            if !self.apply(key, next) {
                return;
            }
            if drained
                || self
                    .clients
                    .get(key)
                    .is_some_and(|c| !c.parts.outbox.is_empty())
            {
                // Output the socket did not take stops the reading: reading on would only
                // pile it up here (a client that does not read would make the echo of every
                // read wait in memory). The writable edge resumes the connection; its unread
                // bytes wait in the kernel meanwhile.
                return self.settle(key, now);
            }
        }
        // Budget used up with data possibly left: no new edge will come for it.
        self.revisit.push(key);
        self.settle(key, now)
    }

    /// Sends the output of the last call and carries out `next`. Returns whether the
    /// connection is still there.
    fn apply(&mut self, key: usize, next: Next) -> bool {
        let Some(client) = self.clients.get_mut(key) else {
            return false;
        };
        if let (Next::Relay, Some(upstream)) = (next, client.upstream.as_mut()) {
            // The upstream's 101 leads the relayed bytes, through the same pipe.
            // What the client had not taken yet goes first.
            upstream.take_over(&mut client.parts.outbox);
            (self.driver).begin_relay(&mut client.parts, &mut upstream.link, &mut self.out);
        }
        if !client.parts.wants_upstream() {
            // A 502, 504 or passed-through refusal is all the client gets: the upstream
            // side is done.
            if let Some(upstream) = client.upstream.take() {
                upstream.abandon();
            }
        }
        // Over TLS the records (the handshake's too) are in the outbox; over plain TCP the
        // output goes straight from the reactor's buffer when nothing waits: the common
        // case costs no copy into the connection.
        let nothing_waited = client.parts.outbox.is_empty();
        client
            .parts
            .transport
            .seal(next.ends_stream(), &mut self.out, &mut client.parts.outbox);
        let written = match nothing_waited {
            true if self.out.is_empty() => {
                flush(&client.stream, &mut client.parts.outbox).map(|()| 0)
            }
            true => write_some(&client.stream, &self.out),
            false => Ok(0),
        };
        let Ok(written) = written else {
            self.out.clear();
            self.close(key);
            return false;
        };
        client.parts.outbox.push(&self.out[written..]);
        self.out.clear();
        let waiting = !client.parts.outbox.is_empty();
        match client.parts.after(next, waiting) {
            Action::Continue | Action::Relay | Action::AwaitFlush => true,
            Action::ConnectUpstream => self.connect_upstream(key, 0, self.driver.now()),
            Action::Close => {
                self.close(key);
                false
            }
            Action::Reset => {
                sys::reset_on_close(&client.stream);
                self.close(key);
                false
            }
            Action::ShutdownWrite => {
                let _ = client.stream.shutdown(HalfClose::Write);
                true
            }
        }
    }

    /// Writes unsent output. Returns whether reading may go on.
    fn flush_outbox(&mut self, key: usize) -> bool {
        let Some(client) = self.clients.get_mut(key) else {
            return false;
        };
        if flush(&client.stream, &mut client.parts.outbox).is_err() {
            self.close(key);
            return false;
        }
        if !client.parts.outbox.is_empty() {
            return false;
        }
        match client.parts.flushed() {
            AfterFlush::Nothing => true,
            AfterFlush::ShutdownWrite => {
                let _ = client.stream.shutdown(HalfClose::Write);
                true
            }
            AfterFlush::Close => {
                self.close(key);
                false
            }
        }
    }

    fn arm_timer(&mut self, key: usize, now: u64) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        self.driver.arm(key, &mut client.parts, now);
    }

    fn close(&mut self, key: usize) {
        if let Some(mut client) = self.clients.try_remove(key) {
            let now = self.driver.now();
            if let Some(upstream) = &client.upstream {
                upstream.abandon();
            }
            // Dropping the stream closes it, which also removes it from epoll.
            self.driver.closed(key, &mut client.parts, now);
        }
    }
}

impl turn::Backend for Reactor {
    fn driver(&mut self) -> &mut Driver {
        &mut self.driver
    }

    fn next_key_exchange(&mut self, now: u64) -> Option<usize> {
        let clients = &self.clients;
        (self.driver).next_key_exchange(now, |key| clients.get(key).map(|c| &c.parts))
    }

    fn start_key_exchange(&mut self, key: usize, now: u64) {
        self.drive(key, now)
    }

    fn next_waiting(&mut self, now: u64) -> Option<usize> {
        let clients = &self.clients;
        (self.driver).next_waiting(now, |key| {
            clients.get(key).and_then(|c| c.parts.waits_until())
        })
    }

    fn forward(&mut self, key: usize, now: u64) {
        if self.connect_upstream(key, 0, now) {
            self.settle(key, now);
        }
    }

    fn load(&self) -> (usize, bool) {
        (self.clients.len(), self.clients.is_empty())
    }

    fn connection_keys(&self) -> Vec<usize> {
        self.clients.iter().map(|(key, _)| key).collect()
    }

    /// Registers the socket if it must wait for events, and arms its timer.
    fn settle(&mut self, key: usize, now: u64) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let relay = match client.upstream.as_deref_mut() {
            Some(upstream) if client.parts.is_relaying() => upstream.client_backlog(),
            _ => Backlog::default(),
        };
        let link = client.upstream.as_ref().map(|u| &u.link);
        let (parts, out) = (&mut client.parts, &mut self.out);
        let next = self.driver.settle(parts, (relay, link), now, out);
        if (next != Next::Continue || !self.out.is_empty()) && !self.apply(key, next) {
            return;
        }
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        // A relayed client keeps writability once added (see `update_upstream_interest`).
        let wants_writable = !client.parts.outbox.is_empty()
            || client
                .upstream
                .as_ref()
                .is_some_and(|u| u.client_blocked() || client.wants_writable);
        let interest = if wants_writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let forwarded = client.parts.wants_upstream() && client.parts.waits_until().is_none();
        if !client.registered && forwarded && !client.parts.is_relaying() {
            // Proxy mode, waiting for the upstream: the client is not read until it answers
            // (one waiting at the edge is watched, so that it is known when it leaves).
            return self.arm_timer(key, now);
        }
        let registry = self.poll.registry();
        let result = if !client.registered {
            registry.register(&mut client.stream, Token(key), interest)
        } else if wants_writable != client.wants_writable {
            registry.reregister(&mut client.stream, Token(key), interest)
        } else {
            Ok(())
        };
        if result.is_err() {
            return self.close(key);
        }
        client.registered = true;
        client.wants_writable = wants_writable;
        self.arm_timer(key, now)
    }

    fn stop_listening(&mut self, now: u64) {
        for index in 0..self.listeners.len() {
            let tls = self.listeners[index].tls;
            while self.driver.takes_queued_connections() {
                let Ok((stream, peer)) = self.listeners[index].socket.accept() else {
                    break;
                };
                self.on_accepted(stream, peer, tls, now);
            }
        }
        for mut listener in self.listeners.drain(..) {
            // Another descriptor of the socket may stay open (a process that took it
            // over): epoll would keep reporting its connections to this one.
            let _ = self.poll.registry().deregister(&mut listener.socket);
        }
    }

    fn accept(&mut self, now: u64) {
        self.accept_ready(now)
    }

    fn resume(&mut self, now: u64) {
        for key in std::mem::take(&mut self.revisit) {
            self.drive(key, now);
        }
    }
}
