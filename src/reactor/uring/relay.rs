//! Proxy mode on io_uring: the upstream connection and the relay, as ring operations.
//!
//! Per proxied client: a `Connect` to the upstream, an `UpSend` of the forwarded request,
//! `UpRecv`s of the answer; after a good 101, receives on each side feed a [`Pipe`] whose
//! front is sent to the other side. A side is received from again only while its pipe has
//! room, so a slow reader holds back its peer's sender through TCP, not through our
//! memory. A FIN is passed on (`shutdown(2)`, directly, as for rejections) once every byte
//! before it is out; when both have been, the pair is closed.
//!
//! # Buffers in flight
//! The connect reads the address in [`Link`] and a send reads a pipe's front, which stays
//! put until the send completes (see [`Pipe`]). The link is boxed and freed only with its
//! slot, after every operation of the slot has completed.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};

use io_uring::{cqueue, opcode, squeue, types};

use super::buf_ring::BufRing;
use super::{socket_addr, user_data, Op, Reactor, BUFFER_SIZE, RELAY_BUFFER_SIZE};
use crate::proxy::{both_passed, Fin, Peers, Pipe};
use crate::reactor::sys;
use crate::session::UpstreamFailure;

/// One end of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Client,
    Upstream,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

/// A client's upstream connection and the bytes in transit both ways.
pub(super) struct Link {
    /// The upstream socket; `None` before it is opened, after a failed connect, and once its
    /// close went into the ring (which then owns the descriptor).
    fd: Option<OwnedFd>,
    /// Read by the kernel until the connect completes.
    addr: socket2::SockAddr,
    /// Which upstream, to pass it over if it refuses.
    index: usize,
    /// Upstreams tried for this client so far.
    attempts: usize,
    /// `TCP_NODELAY` is set on the upstream socket: before the first relayed byte, not at
    /// connect (the forwarded request is one send, which Nagle never delays, and many
    /// connections never relay a byte upstream).
    nodelay: bool,
    connecting: bool,
    connected: bool,
    recv_armed: bool,
    /// Which receive is armed on the upstream: `UpRecv` or `UpRelayRecv`.
    recv_op: Op,
    /// The client's armed receive is a `RelayRecv` (into the relay buffers).
    pub(super) client_recv_relay: bool,
    send_in_flight: bool,
    /// A send of `to_client` to the client is in flight.
    pub(super) client_send_in_flight: bool,
    to_upstream: Pipe,
    to_client: Pipe,
    /// Client to upstream: the client's FIN, passed on to the upstream.
    up_fin: Fin,
    /// Upstream to client: the upstream's FIN, passed on to the client.
    down_fin: Fin,
    /// The upstream socket's close is submitted: nothing more is started on it.
    retired: bool,
}

/// The buffer ring a receive of kind `op` was armed with.
fn ring_for<'a>(small: &'a mut BufRing, relay: &'a mut Option<BufRing>, op: Op) -> &'a mut BufRing {
    match (op, relay) {
        (Op::RelayRecv | Op::UpRelayRecv, Some(relay)) => relay,
        _ => small,
    }
}

impl Reactor {
    /// Opens a connection to the next upstream for client `key`, which has tried
    /// `attempts` upstreams already; after every upstream refused, 502.
    pub(super) fn connect_upstream(
        &mut self,
        key: usize,
        mut attempts: usize,
        now: u64,
    ) -> io::Result<()> {
        loop {
            let Some(client) = self.clients.get_mut(key) else {
                return Ok(());
            };
            let Some((index, addr)) = self.driver.next_upstream(&mut attempts, now) else {
                return self.upstream_failed(key, now);
            };
            let socket: OwnedFd = match sys::upstream_socket(addr) {
                Ok(socket) => socket.into(),
                Err(error) => match self.driver.upstream_failed(
                    &mut client.conn,
                    index,
                    &error,
                    now,
                    &mut self.out,
                ) {
                    UpstreamFailure::TryNext => continue,
                    UpstreamFailure::Answer(next) => return self.answer_overloaded(key, next, now),
                },
            };
            let link = client.link.get_or_insert_with(|| {
                Box::new(Link {
                    fd: None,
                    addr: addr.into(),
                    index,
                    attempts: 0,
                    nodelay: false,
                    connecting: false,
                    connected: false,
                    recv_armed: false,
                    recv_op: Op::UpRecv,
                    client_recv_relay: false,
                    send_in_flight: false,
                    client_send_in_flight: false,
                    to_upstream: Pipe::default(),
                    to_client: Pipe::default(),
                    up_fin: Fin::default(),
                    down_fin: Fin::default(),
                    retired: false,
                })
            });
            let fd = socket.as_raw_fd();
            link.fd = Some(socket);
            link.addr = addr.into();
            link.index = index;
            link.attempts = attempts;
            link.connecting = true;
            let connect = opcode::Connect::new(
                types::Fd(fd),
                link.addr.as_ptr().cast::<libc::sockaddr>(),
                link.addr.len(),
            )
            .build()
            .user_data(user_data(key, Op::Connect));
            client.in_flight += 1;
            // SAFETY: the address lives in the boxed link, which outlives the slot's operations.
            unsafe { self.push_entry(&connect) };
            return Ok(());
        }
    }

    /// The edge ran out of descriptors, memory or ports for this client's upstream: its
    /// answer (a 503) is `next`, and the driver paused accepting: the armed multishot
    /// accepts are cancelled too (queued clients wait in the kernel meanwhile).
    fn answer_overloaded(
        &mut self,
        key: usize,
        next: crate::conn::Next,
        now: u64,
    ) -> io::Result<()> {
        self.cancel_accepts_while_paused(now);
        self.apply(key, next)
    }

    fn upstream_failed(&mut self, key: usize, now: u64) -> io::Result<()> {
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        let mut cx = ctx!(self, now);
        let next = client.conn.on_upstream_failed(&mut cx);
        self.apply(key, next)
    }

    pub(super) fn on_connect(&mut self, key: usize, result: i32, now: u64) -> io::Result<()> {
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        let Some(link) = client.link.as_mut() else {
            return Ok(());
        };
        link.connecting = false;
        if link.retired || client.closing {
            return Ok(());
        }
        if result < 0 {
            let error = io::Error::from_raw_os_error(-result);
            link.fd = None;
            let (index, attempts) = (link.index, link.attempts);
            let failure =
                self.driver
                    .upstream_failed(&mut client.conn, index, &error, now, &mut self.out);
            return match failure {
                UpstreamFailure::TryNext => self.connect_upstream(key, attempts, now),
                UpstreamFailure::Answer(next) => self.answer_overloaded(key, next, now),
            };
        }
        link.connected = true;
        let peer = socket_addr(client.fd, false);
        let local = match self.driver.config.proxy.forwarding {
            crate::proxy::Forwarding::ProxyV2 => socket_addr(client.fd, true),
            crate::proxy::Forwarding::Headers => None,
        };
        let Some(client_addr) = peer else {
            // The client is gone already.
            return self.begin_close(key);
        };
        let peers = Peers {
            client: client_addr,
            local: local.unwrap_or(client_addr),
        };
        let mut cx = ctx!(self, now);
        client.conn.write_upstream_request(peers, &mut cx);
        client.conn.on_upstream_connected(&cx);
        link.to_upstream.push(&self.out);
        self.out.clear();
        self.send_to(key, Side::Upstream)
    }

    /// Sends the front of the pipe towards `to`, unless a send to it is in flight, the
    /// socket is going away (or not connected yet), or nothing is held.
    fn send_to(&mut self, key: usize, to: Side) -> io::Result<()> {
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        let Some(link) = client.link.as_deref_mut() else {
            return Ok(());
        };
        let (fd, pipe, in_flight, op, usable) = match to {
            Side::Upstream => (
                link.fd.as_ref().map(AsRawFd::as_raw_fd),
                &mut link.to_upstream,
                &mut link.send_in_flight,
                Op::UpSend,
                !link.retired && link.connected,
            ),
            Side::Client => (
                Some(client.fd),
                &mut link.to_client,
                &mut link.client_send_in_flight,
                Op::RelaySend,
                !client.closing,
            ),
        };
        let Some(fd) = fd.filter(|_| !*in_flight && usable) else {
            return Ok(());
        };
        let bytes = pipe.unsent();
        if bytes.is_empty() {
            return Ok(());
        }
        let send = opcode::Send::new(types::Fd(fd), bytes.as_ptr(), bytes.len() as u32)
            .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(key, op));
        *in_flight = true;
        client.in_flight += 1;
        // SAFETY: the pipe's front stays put until this send completes (see `Pipe`).
        unsafe { self.push_entry(&send) };
        Ok(())
    }

    /// The upstream's 101 (in `out`) starts the relay: it leads the bytes to the client.
    pub(super) fn start_relay(&mut self, key: usize) -> io::Result<()> {
        let Some(link) = self.clients.get_mut(key).and_then(|c| c.link.as_mut()) else {
            return Ok(());
        };
        link.to_client.push(&self.out);
        self.out.clear();
        self.send_to(key, Side::Client)?;
        // Bytes the client sent after its request were held back until now.
        self.send_to(key, Side::Upstream)
    }

    /// Arms the receives a proxied client needs: the client's only while relaying (its
    /// bytes wait in the kernel until the upstream has answered), the upstream's once
    /// connected; each only while the pipe it feeds has room.
    pub(super) fn arm_relay_recvs(&mut self, key: usize) -> io::Result<()> {
        let group = self.buffers.group();
        let Some(relay_group) = self.relay_buffers.as_ref().map(|b| b.group()) else {
            return Ok(());
        };
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        if client.closing {
            return Ok(());
        }
        let relaying = client.conn.is_relaying();
        let waiting = client.conn.wants_upstream();
        let Some(link) = client.link.as_mut() else {
            return Ok(());
        };
        let mut entries: [Option<squeue::Entry>; 2] = [None, None];
        if relaying && !client.recv_armed && !link.up_fin.is_read() && link.to_upstream.room() > 0 {
            client.recv_armed = true;
            link.client_recv_relay = true;
            entries[0] = Some(
                opcode::Recv::new(
                    types::Fd(client.fd),
                    std::ptr::null_mut(),
                    RELAY_BUFFER_SIZE as u32,
                )
                .buf_group(relay_group)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(user_data(key, Op::RelayRecv)),
            );
        }
        let upstream_wanted = if relaying {
            link.to_client.room() > 0
        } else {
            waiting
        };
        let upstream_fd = link.fd.as_ref().map(AsRawFd::as_raw_fd);
        if let Some(upstream_fd) = upstream_fd.filter(|_| {
            link.connected
                && !link.retired
                && !link.recv_armed
                && !link.down_fin.is_read()
                && upstream_wanted
        }) {
            link.recv_armed = true;
            // The answer is small; relayed bytes may not be.
            let (op, group, size) = match relaying {
                true => (Op::UpRelayRecv, relay_group, RELAY_BUFFER_SIZE),
                false => (Op::UpRecv, group, BUFFER_SIZE),
            };
            link.recv_op = op;
            entries[1] = Some(
                opcode::Recv::new(types::Fd(upstream_fd), std::ptr::null_mut(), size as u32)
                    .buf_group(group)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
                    .user_data(user_data(key, op)),
            );
        }
        client.in_flight += entries.iter().flatten().count() as u8;
        for entry in entries.into_iter().flatten() {
            // SAFETY: the kernel writes into a ring-provided buffer, which `buffers` keeps alive.
            unsafe { self.push_entry(&entry) };
        }
        Ok(())
    }

    /// Sets `TCP_NODELAY` on the upstream socket once, before its first relayed byte.
    fn upstream_nodelay_once(link: &mut Link) {
        if link.nodelay {
            return;
        }
        link.nodelay = true;
        if let Some(fd) = &link.fd {
            let _ = socket2::SockRef::from(fd).set_tcp_nodelay(true);
        }
    }

    /// The client's bytes, while relaying.
    pub(super) fn on_relay_recv(
        &mut self,
        key: usize,
        result: i32,
        flags: u32,
        now: u64,
    ) -> io::Result<()> {
        let buffer = cqueue::buffer_select(flags);
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        client.recv_armed = false;
        let ring = ring_for(&mut self.buffers, &mut self.relay_buffers, Op::RelayRecv);
        let Some(link) = client.link.as_mut().filter(|_| !client.closing) else {
            if let Some(bid) = buffer {
                ring.recycle(bid);
            }
            return Ok(());
        };
        link.client_recv_relay = false;
        self.relay_received(key, Side::Client, result, buffer, Op::RelayRecv, now)
    }

    /// Relayed bytes received from `from` (or its FIN, or an error), in a buffer of the ring
    /// `op` was armed with: queued towards the other side.
    fn relay_received(
        &mut self,
        key: usize,
        from: Side,
        result: i32,
        buffer: Option<u16>,
        op: Op,
        now: u64,
    ) -> io::Result<()> {
        let ring = ring_for(&mut self.buffers, &mut self.relay_buffers, op);
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        let Some(link) = client.link.as_deref_mut() else {
            return Ok(());
        };
        match (result, buffer) {
            (n, Some(bid)) if n > 0 => {
                let pipe = match from {
                    Side::Client => {
                        if !link.retired {
                            Self::upstream_nodelay_once(link);
                        }
                        &mut link.to_upstream
                    }
                    Side::Upstream => &mut link.to_client,
                };
                // SAFETY: `bid` came with this completion and is recycled only after this.
                pipe.push(unsafe { ring.get(bid, n as usize) });
                ring.recycle(bid);
                client.conn.on_relayed(&ctx!(self, now));
                self.send_to(key, from.other())
            }
            (0, _) => {
                match from {
                    Side::Client => link.up_fin.read(),
                    Side::Upstream => link.down_fin.read(),
                }
                self.pass_fins(key)
            }
            (n, _) if n == -libc::ENOBUFS => {
                self.rearm.push(key);
                Ok(())
            }
            _ => self.relay_broken(key, from),
        }
    }

    /// The upstream's bytes: its answer to the forwarded request, then relayed bytes.
    pub(super) fn on_upstream_recv(
        &mut self,
        key: usize,
        op: Op,
        result: i32,
        flags: u32,
        now: u64,
    ) -> io::Result<()> {
        let buffer = cqueue::buffer_select(flags);
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        let Some(link) = client.link.as_mut() else {
            return Ok(());
        };
        link.recv_armed = false;
        let ring = ring_for(&mut self.buffers, &mut self.relay_buffers, op);
        if link.retired || client.closing {
            if let Some(bid) = buffer {
                ring.recycle(bid);
            }
            return Ok(());
        }
        if client.conn.is_relaying() {
            return self.relay_received(key, Side::Upstream, result, buffer, op, now);
        }
        if result == -libc::ENOBUFS {
            self.rearm.push(key);
            return Ok(());
        }
        let mut cx = ctx!(self, now);
        let next = match (result, buffer) {
            (n, Some(bid)) if n > 0 => {
                let next = client
                    .conn
                    // SAFETY: `bid` came with this completion and is recycled only after this.
                    .on_upstream_data(unsafe { ring.get(bid, n as usize) }, &mut cx);
                ring.recycle(bid);
                next
            }
            (0, _) => client.conn.on_upstream_eof(&mut cx),
            _ => client.conn.on_upstream_failed(&mut cx),
        };
        self.apply(key, next)
    }

    /// A send towards `to` completed: send what is left or came meanwhile, pass a FIN on
    /// once all is out.
    pub(super) fn on_sent(
        &mut self,
        key: usize,
        to: Side,
        result: i32,
        now: u64,
    ) -> io::Result<()> {
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        let Some(link) = client.link.as_deref_mut() else {
            return Ok(());
        };
        let (pipe, in_flight, gone) = match to {
            Side::Upstream => (
                &mut link.to_upstream,
                &mut link.send_in_flight,
                link.retired || client.closing,
            ),
            Side::Client => (
                &mut link.to_client,
                &mut link.client_send_in_flight,
                client.closing,
            ),
        };
        *in_flight = false;
        if gone {
            return Ok(());
        }
        if result < 0 {
            if to == Side::Upstream && !client.conn.is_relaying() {
                // The forwarded request did not get through.
                return self.upstream_failed(key, now);
            }
            return self.relay_broken(key, to);
        }
        pipe.consume(result as usize);
        self.send_to(key, to)?;
        self.pass_fins(key)
    }

    /// `broken` failed (a reset, or any other error) while relaying: both sides close, the
    /// survivor with a reset, as a transparent relay passes it on (which also spares that
    /// peer the FIN exchange and a TIME_WAIT entry).
    fn relay_broken(&mut self, key: usize, broken: Side) -> io::Result<()> {
        let Some(client) = self.clients.get(key).filter(|c| !c.closing) else {
            return Ok(());
        };
        match (broken, client.link.as_ref()) {
            (Side::Client, Some(link)) if !link.retired => {
                if let Some(fd) = &link.fd {
                    sys::reset_on_close(fd);
                }
            }
            (Side::Upstream, _) => {
                // SAFETY: the client's descriptor is open: the slot is not closing (checked
                // above).
                let fd = unsafe { BorrowedFd::borrow_raw(client.fd) };
                sys::reset_on_close(fd);
            }
            _ => {}
        }
        self.begin_close(key)
    }

    /// Passes each side's FIN to the other once everything before it is out; closes the
    /// pair once both are passed.
    fn pass_fins(&mut self, key: usize) -> io::Result<()> {
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        let Some(link) = client.link.as_mut() else {
            return Ok(());
        };
        if client.closing || link.retired {
            return Ok(());
        }
        let to_upstream_in_transit = !link.to_upstream.is_empty() || link.send_in_flight;
        if link.up_fin.pass_now(to_upstream_in_transit) {
            if let Some(fd) = &link.fd {
                sys::shutdown_write(fd);
            }
        }
        let to_client_in_transit = !link.to_client.is_empty() || link.client_send_in_flight;
        if link.down_fin.pass_now(to_client_in_transit) {
            // SAFETY: the client descriptor is open: the slot is not closing (checked above).
            sys::shutdown_write(unsafe { BorrowedFd::borrow_raw(client.fd) });
        }
        if both_passed(link.up_fin, link.down_fin) {
            return self.begin_close(key);
        }
        Ok(())
    }

    /// Cancels what is in flight on the upstream socket and closes it (through the ring, so
    /// that the close is ordered after the cancels); the link itself stays until the slot
    /// goes.
    pub(super) fn retire_upstream(&mut self, key: usize) -> io::Result<()> {
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        let Some(link) = client.link.as_mut() else {
            return Ok(());
        };
        if link.retired {
            return Ok(());
        }
        link.retired = true;
        let Some(fd) = link.fd.take() else {
            return Ok(());
        };
        let in_flight = [
            (link.connecting, Op::Connect),
            (link.recv_armed, link.recv_op),
            (link.send_in_flight, Op::UpSend),
        ];
        // The ring closes it from here on.
        self.cancel_and_close(key, in_flight, fd.into_raw_fd(), Op::UpClose)
    }
}
