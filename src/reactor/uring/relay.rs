//! Proxy mode on io_uring: the upstream connection and the relay, as ring operations.
//!
//! Per proxied client: a `Connect` to the upstream, an `UpSend` of the forwarded request,
//! `UpRecv`s of the answer; after a good 101, receives on each side feed the [`Link`]'s pipe
//! towards the other side, whose front is sent there. A side is received from again only
//! while that pipe has room, so a slow reader holds back its peer's sender through TCP, not
//! through our memory. A FIN is passed on (`shutdown(2)`, directly, as for rejections) when
//! the link says it is due; when both have been, the pair is closed.
//!
//! # Buffers in flight
//! The connect reads the address in [`Upstream`] and a send reads a pipe's front, which
//! stays put until the send completes (see [`crate::proxy::Pipe`]). The upstream side is
//! boxed and freed only with its slot, after every operation of the slot has completed.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};

use io_uring::{opcode, types};

use super::{user_data, Client, Op, Ops, Reactor};
use crate::conn::Next;
use crate::proxy::{Link, Peers, Side};
use crate::reactor::sys;
use crate::session::{Event, UpstreamFailure};

/// A client's upstream socket and what the kernel reads while it connects.
pub(super) struct Upstream {
    /// `None` after a failed connect, and once its close went into the ring (which then
    /// owns the descriptor).
    pub(super) fd: Option<OwnedFd>,
    /// Read by the kernel until the connect completes.
    addr: socket2::SockAddr,
    /// The socket's close is submitted: nothing more is started on it.
    retired: bool,
    pub(super) link: Link,
}

impl Client {
    /// The socket of `side`, while operations may be started on it (the upstream's once
    /// connected).
    pub(super) fn socket_of(&self, side: Side) -> Option<BorrowedFd<'_>> {
        let upstream = match side {
            Side::Client => return self.socket(),
            Side::Upstream => self.upstream.as_deref()?,
        };
        let usable = !self.closing && !upstream.retired && upstream.link.confirmed;
        upstream.fd.as_ref().filter(|_| usable).map(|fd| fd.as_fd())
    }
}

/// The operations that send to, and receive from, `side` (the receive while relaying).
fn ops_of(side: Side) -> (Op, Op) {
    match side {
        Side::Client => (Op::RelaySend, Op::RelayRecv),
        Side::Upstream => (Op::UpSend, Op::UpRelayRecv),
    }
}

impl Reactor {
    /// Opens a connection to the next upstream for client `key`, which has tried
    /// `attempts` upstreams already; after every upstream refused, 502.
    pub(super) fn connect_upstream(&mut self, key: usize, attempts: usize, now: u64) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        // Multishot accept reports no address: asked for here only when the client's
        // address picks the upstream (`--upstream-hash-key client-ip`).
        let client_ip = match self.driver.hashes_client_ip() {
            true => self
                .driver
                .client_addr(&client.parts)
                .or_else(|| client.socket().and_then(|s| sys::socket_addr(s, false)))
                .map(|a| a.ip()),
            false => None,
        };
        let opened = self.driver.open_upstream(
            (key, &mut client.parts),
            (attempts, client_ip),
            now,
            &mut self.out,
            |addr, source| {
                sys::upstream_socket(addr, source).map(|socket| (OwnedFd::from(socket), addr))
            },
        );
        let (link, (fd, addr)) = match opened {
            Ok(opened) => opened,
            Err(next) => return self.answer(key, next, now),
        };
        let raw_fd = fd.as_raw_fd();
        let upstream = client.upstream.insert(Box::new(Upstream {
            fd: Some(fd),
            addr: addr.into(),
            retired: false,
            link,
        }));
        let connect = opcode::Connect::new(
            types::Fd(raw_fd),
            upstream.addr.as_ptr().cast::<libc::sockaddr>(),
            upstream.addr.len(),
        )
        .build()
        .user_data(user_data(key, Op::Connect));
        client.submitted(Op::Connect);
        // SAFETY: the address lives in the boxed upstream, which outlives the slot's operations.
        unsafe { self.push_entry(&connect) };
    }

    /// The client's answer when no upstream will do: a 502, or a 503 when the edge ran out
    /// of descriptors, memory or ports (the driver then paused accepting, and the armed
    /// multishot accepts are cancelled too: queued clients wait in the kernel meanwhile).
    fn answer(&mut self, key: usize, next: Next, now: u64) {
        self.cancel_accepts_while_paused(now);
        self.apply(key, next)
    }

    fn upstream_failed(&mut self, key: usize, now: u64) {
        if let Some(client) = self.clients.get_mut(key) {
            let failed = Event::UpstreamFailed;
            let next = self
                .driver
                .handle(&mut client.parts, failed, now, &mut self.out);
            self.apply(key, next)
        }
    }

    pub(super) fn on_connect(&mut self, key: usize, result: i32, now: u64) {
        let forwarding = self.driver.forwarding();
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        // Multishot accept reports no address: asked for here, once per proxied client.
        let socket = client.socket().filter(|_| result >= 0);
        let tls = client.parts.transport.is_tls();
        let mut peers = socket.map(|socket| Peers::of(socket, forwarding, tls));
        // Behind a balancer, the client its PROXY header named.
        let named = self.driver.client_addr(&client.parts);
        if let (Some(Some(peers)), Some(client)) = (peers.as_mut(), named) {
            peers.client = client;
        }
        let Some(upstream) = client.upstream.as_deref_mut() else {
            return;
        };
        if upstream.retired || client.closing {
            return;
        }
        if result < 0 {
            let error = io::Error::from_raw_os_error(-result);
            upstream.fd = None;
            let attempts = upstream.link.attempts;
            let failure = self.driver.upstream_failed(
                &mut client.parts,
                &upstream.link,
                &error,
                now,
                &mut self.out,
            );
            return match failure {
                UpstreamFailure::TryNext => self.connect_upstream(key, attempts, now),
                UpstreamFailure::Answer(next) => self.answer(key, next, now),
            };
        }
        upstream.link.confirmed = true;
        let Some(Some(peers)) = peers else {
            // The client is gone already.
            return self.begin_close(key);
        };
        let (conn, out) = (&mut client.parts, &mut self.out);
        self.driver.upstream_request(conn, peers, now, out);
        let _ = self.driver.handle(conn, Event::UpstreamConnected, now, out);
        upstream.link.toward(Side::Upstream).pipe.push(&self.out);
        self.out.clear();
        self.send_to(key, Side::Upstream)
    }

    /// Sends the front of the pipe towards `to`, unless a send to it is in flight, its
    /// socket is going away (or not connected yet), or nothing is held. The relay's first
    /// send to the client waits for the client's own output (TLS records of its handshake)
    /// to be out: one stream, one send at a time.
    pub(super) fn send_to(&mut self, key: usize, to: Side) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if to == Side::Client && !client.parts.outbox.is_empty() {
            return;
        }
        let (op, _) = ops_of(to);
        let Some(fd) = client.socket_of(to).map(|s| s.as_raw_fd()) else {
            return;
        };
        let Some(upstream) = client.upstream.as_deref_mut() else {
            return;
        };
        let bytes = upstream.link.toward(to).pipe.unsent();
        let (ptr, len) = (bytes.as_ptr(), bytes.len() as u32);
        if client.ops.has(op) || len == 0 {
            return;
        }
        let send = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(key, op));
        client.submitted(op);
        // SAFETY: the pipe's front stays put until this send completes (see `Pipe`).
        unsafe { self.push_entry(&send) };
    }

    /// The upstream's 101 (in `out`) starts the relay: it leads the bytes to the client.
    pub(super) fn start_relay(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let Some(upstream) = client.upstream.as_mut() else {
            return;
        };
        (self.driver).begin_relay(&mut client.parts, &mut upstream.link, &mut self.out);
        self.send_to(key, Side::Client);
        // Bytes the client sent after its request were held back until now.
        self.send_to(key, Side::Upstream)
    }

    /// A send towards `to` completed: send what is left or came meanwhile, pass a FIN on
    /// once all is out.
    pub(super) fn on_sent(&mut self, key: usize, to: Side, result: i32, now: u64) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if client.socket_of(to).is_none() {
            return;
        }
        let Some(upstream) = client.upstream.as_deref_mut() else {
            return;
        };
        if result < 0 {
            if to == Side::Upstream && !client.parts.is_relaying() {
                // The forwarded request did not get through.
                return self.upstream_failed(key, now);
            }
            return self.relay_broken(key, to);
        }
        upstream.link.toward(to).pipe.consume(result as usize);
        self.send_to(key, to);
        self.pass_fins(key)
    }

    /// `broken` failed (a reset, or any other error) while relaying: both sides close, the
    /// survivor with a reset (see [`Link`]).
    pub(super) fn relay_broken(&mut self, key: usize, broken: Side) {
        let Some(client) = self.clients.get(key) else {
            return;
        };
        let survivor = match broken.other() {
            Side::Client => client.socket(),
            Side::Upstream => client.socket_of(Side::Upstream),
        };
        if let Some(socket) = survivor {
            sys::reset_on_close(socket);
        }
        self.begin_close(key)
    }

    /// Passes each side's FIN to the other when the link says it is due; closes the pair
    /// once both are passed.
    pub(super) fn pass_fins(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if client.socket_of(Side::Upstream).is_none() {
            return;
        }
        let ops = client.ops;
        let outbox_waits = !client.parts.outbox.is_empty();
        let Some(upstream) = client.upstream.as_deref_mut() else {
            return;
        };
        let due = [Side::Upstream, Side::Client].map(|to| {
            let sending = ops.has(ops_of(to).0) || (to == Side::Client && outbox_waits);
            (to, upstream.link.toward(to).fin_due(sending))
        });
        let over = upstream.link.is_over();
        for (to, due) in due {
            if let Some(socket) = client.socket_of(to).filter(|_| due) {
                sys::shutdown_write(socket);
            }
        }
        if over {
            self.begin_close(key)
        }
    }

    /// Cancels what is in flight on the upstream socket and closes it (through the ring, so
    /// that the close is ordered after the cancels); the upstream side itself stays until
    /// the slot goes.
    pub(super) fn retire_upstream(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let ops = client.ops;
        let Some(upstream) = client.upstream.as_deref_mut().filter(|u| !u.retired) else {
            return;
        };
        upstream.retired = true;
        if let Some(fd) = upstream.fd.take() {
            if upstream.link.resets_on_close() {
                sys::reset_on_close(&fd);
            }
            // The ring closes it from here on.
            self.cancel_and_close(key, ops, Ops::UPSTREAM, fd.into_raw_fd(), Op::UpClose);
        }
    }
}
