//! The io_uring backend: one ring per reactor thread, completions instead of readiness.
//!
//! Per connection in close mode the reactor submits a receive (with a buffer picked by the
//! kernel from a provided-buffer ring when data arrives), then the response send linked to
//! the close; the accept itself is one multishot request per listener. (A rejection's
//! half-close is the one direct syscall: see `submit_shutdown`.) All of it goes into
//! the kernel in one `io_uring_enter` per loop turn, which also waits for the next
//! completions with the timer wheel's next deadline as its timeout.
//!
//! # Multishot re-arming
//! A multishot accept ends when a completion arrives without `IORING_CQE_F_MORE` (the
//! kernel ran out of descriptors, or the request was cancelled): it is re-armed at the end
//! of the loop turn, after a pause when it ended on an error, so that `EMFILE` does not
//! turn into a loop of failing completions.
//!
//! # Buffers
//! An operation's buffer must stay put until its completion: a send uses the front of the
//! connection's [`Outbox`], which keeps it in place while the send is in flight. A slot is
//! freed only once every operation submitted for it has completed, so a late completion
//! never finds another connection (or a freed outbox) in its place.

mod buf_ring;
pub mod probe;
mod relay;
mod submit;

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use super::{sys, ReactorParts, Wake};
use crate::conn::Next;
use crate::proxy::Side;
use crate::session::{
    turn, turn::Backend as _, Action, AfterFlush, Backlog, Driver, Event, HelloStep, Origin, Parts,
};
use buf_ring::BufRing;
use relay::Upstream;
use submit::Submissions;

const RING_ENTRIES: u32 = 4096;
/// Set to a power of two, the ring's submission queue size instead of `RING_ENTRIES`
/// (the completion queue is twice that): tests shrink the ring so that it fills up.
pub const RING_ENTRIES_ENV: &str = "WSEDGE_IO_URING_ENTRIES";
/// 256 buffers of 16 KiB: 4 MiB per reactor, shared by all its connections.
const BUFFER_COUNT: u16 = 256;
const BUFFER_SIZE: usize = 16 * 1024;
const BUFFER_GROUP: u16 = 1;
/// Proxy mode: relayed bytes are received into larger buffers, 32 of 64 KiB per reactor.
/// Measured (64 KiB messages): 0.86 ms of edge CPU per MB against 1.22 with the 16 KiB
/// buffers, which suit handshakes.
const RELAY_BUFFER_COUNT: u16 = 32;
const RELAY_BUFFER_SIZE: usize = 64 * 1024;
const RELAY_BUFFER_GROUP: u16 = 2;
/// Keys of listeners in `user_data` (connection keys stay far below).
const LISTENER_BASE: usize = 1 << 40;
const WAKE_KEY: usize = (1 << 48) - 1;

/// The operation a completion belongs to, in the low byte of `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    // On the client's socket.
    Recv,
    Send,
    /// Proxy mode: relayed bytes received (into the relay buffers) and sent.
    RelayRecv,
    RelaySend,
    // Proxy mode, on the upstream's socket.
    Connect,
    UpRecv,
    UpRelayRecv,
    UpSend,
    // Nothing to cancel.
    Close,
    UpClose,
    Cancel,
    Accept,
    Wake,
    /// The driver's own epoll descriptor is readable (proxy mode: the health checks, the
    /// HTTP/2 streams' upstreams).
    DriverOwn,
}

impl Op {
    /// Every operation, at the index of its code.
    const ALL: [Op; 14] = [
        Op::Recv,
        Op::Send,
        Op::RelayRecv,
        Op::RelaySend,
        Op::Connect,
        Op::UpRecv,
        Op::UpRelayRecv,
        Op::UpSend,
        Op::Close,
        Op::UpClose,
        Op::Cancel,
        Op::Accept,
        Op::Wake,
        Op::DriverOwn,
    ];
}

fn user_data(key: usize, op: Op) -> u64 {
    ((key as u64) << 8) | op as u64
}

fn decode(user_data: u64) -> (usize, Option<Op>) {
    let op = Op::ALL.get((user_data & 0xFF) as usize).copied();
    ((user_data >> 8) as usize, op)
}

/// The cancellable operations of one slot in flight, one bit per kind (the first eight
/// [`Op`]s). A slot never has two of one of these kinds in flight, so the bits say exactly
/// what a close must cancel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ops(u8);

impl Ops {
    /// On the client's socket.
    const CLIENT: Ops = Ops(0x0F);
    /// On the upstream's socket.
    const UPSTREAM: Ops = Ops(0xF0);

    /// `op`'s bit; none for the kinds that are not cancelled.
    fn bit(op: Op) -> u8 {
        1u8.checked_shl(op as u32).unwrap_or(0)
    }

    fn has(self, op: Op) -> bool {
        self.0 & Ops::bit(op) != 0
    }

    /// The kinds in flight among `set`.
    fn among(self, set: Ops) -> impl Iterator<Item = Op> {
        let bits = self.0 & set.0;
        Op::ALL[..8]
            .iter()
            .copied()
            .filter(move |&op| Ops(bits).has(op))
    }
}

struct Client {
    fd: RawFd,
    /// Its protocol, session, transport (plain, or TLS terminated here) and output (whose
    /// front stays put while a send is in flight).
    parts: Parts,
    /// Submitted operations whose completion has not arrived, of every kind.
    in_flight: u8,
    /// Which cancellable operations are among them.
    ops: Ops,
    /// The close is submitted; the slot is freed when `in_flight` reaches 0.
    closing: bool,
    /// Proxy mode: the upstream side. Lives as long as the slot, because operations in
    /// flight point into it (the connect's address, the pipes).
    upstream: Option<Box<Upstream>>,
}

impl Client {
    /// Counts an operation submitted for this slot.
    fn submitted(&mut self, op: Op) {
        self.in_flight += 1;
        self.ops.0 |= Ops::bit(op);
    }

    /// Whether a receive on the client's socket is in flight.
    fn receiving(&self) -> bool {
        self.ops.has(Op::Recv) || self.ops.has(Op::RelayRecv)
    }

    /// The receive to arm on `side`, and its socket, if one is wanted now: on the client's
    /// while it is read (not while output or a close waits for a flush, and in proxy mode
    /// not before the relay: until the upstream has answered its bytes wait in the kernel);
    /// on the upstream's once connected; while relaying, on either only while the pipe it
    /// feeds has room.
    fn recv_wanted(&self, side: Side) -> Option<(Op, RawFd)> {
        let fd = self.socket_of(side)?.as_raw_fd();
        let upstream = self
            .upstream
            .as_deref()
            .filter(|_| self.parts.wants_upstream());
        let relaying = self.parts.is_relaying();
        let op = match (side, upstream) {
            (Side::Upstream, None) => return None,
            (Side::Client, None) => {
                let busy = self.parts.outbox.is_sending() || self.parts.awaits_flush();
                (!busy && !self.receiving()).then_some(Op::Recv)?
            }
            (_, Some(upstream)) if relaying && !upstream.link.may_read(side) => return None,
            (Side::Client, Some(_)) if relaying && !self.receiving() => Op::RelayRecv,
            (Side::Client, Some(_)) => return None,
            (Side::Upstream, Some(_)) => {
                let busy = self.ops.has(Op::UpRecv) || self.ops.has(Op::UpRelayRecv);
                let op = if relaying {
                    Op::UpRelayRecv
                } else {
                    Op::UpRecv
                };
                (!busy).then_some(op)?
            }
        };
        Some((op, fd))
    }

    /// The connection as the driver knows it, for one call while its socket is open
    /// (the borrow is not tied to the slot, so that the slot's parts can go with it).
    fn origin<'a>(&self, key: usize) -> Origin<'a> {
        // SAFETY: the descriptor is open until its close, which is submitted only by
        // `begin_close`, after the driver's call this is made for has returned.
        let socket = unsafe { BorrowedFd::borrow_raw(self.fd) };
        Origin { key, socket }
    }

    /// The client's socket, while operations may still be started on it.
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: the descriptor is open until its close, which is submitted only by
        // `begin_close`, which marks the slot closing first.
        (!self.closing).then(|| unsafe { BorrowedFd::borrow_raw(self.fd) })
    }
}

struct Listener {
    /// `None` once closed for a drain.
    socket: Option<std::net::TcpListener>,
    /// Its connections speak TLS.
    tls: bool,
    armed: bool,
}

/// One reactor on io_uring.
pub struct Reactor {
    ring: IoUring,
    /// Entries on their way into `ring`.
    submissions: Submissions,
    /// Dropped by hand: see `Drop`.
    buffers: ManuallyDrop<BufRing>,
    /// Proxy mode only; dropped by hand with `buffers`.
    relay_buffers: ManuallyDrop<Option<BufRing>>,
    listeners: Vec<Listener>,
    clients: Slab<Client>,
    /// Every decision above the connection's protocol.
    driver: Driver,
    out: Vec<u8>,
    wake_fd: Arc<OwnedFd>,
    wake_buf: Box<[u8; 8]>,
    /// Receives that found the buffer ring empty: re-armed next turn.
    rearm: Vec<usize>,
    completions: Vec<(u64, i32, u32)>,
}

/// Builds the ring with the cheapest task-running mode the kernel accepts: with
/// `DEFER_TASKRUN` completion work runs only when this thread enters the kernel to wait,
/// never as an interrupt in the middle of processing a batch.
///
/// Measured here (close mode, 1 thread, 6 interleaved rounds of 3 s, medians): single
/// issuer + `DEFER_TASKRUN` 21.9 µs of CPU per upgrade, `COOP_TASKRUN` 21.8 µs, neither
/// 26.3 µs. The two cooperative modes tie; `DEFER_TASKRUN` is kept for batching task work
/// into our one wait, `COOP_TASKRUN` is the fallback for kernels before 6.1.
///
/// Direct (fixed) descriptors were tried and not kept: 21.30 against 21.27 µs per upgrade,
/// and when the ring's file table is full the kernel drops a connection it has already
/// accepted, where a plain `EMFILE` leaves it queued (the storm test catches that).
fn build_ring() -> io::Result<IoUring> {
    let entries = std::env::var(RING_ENTRIES_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| n.is_power_of_two())
        .unwrap_or(RING_ENTRIES);
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
        .or_else(|_| IoUring::builder().setup_coop_taskrun().build(entries))
        .or_else(|_| IoUring::new(entries))
}

impl Reactor {
    /// Creates a reactor over its own listeners, and the function that wakes its wait.
    /// Must run on the thread that will call [`Reactor::run`] (single-issuer ring).
    pub fn new(parts: ReactorParts) -> io::Result<(Reactor, Wake)> {
        let (driver, listeners, _) = parts.split();
        let ring = build_ring()?;
        let buffers = BufRing::new(&ring, BUFFER_GROUP, BUFFER_COUNT, BUFFER_SIZE)?;
        let relay_buffers = match driver.relays() {
            true => Some(BufRing::new(
                &ring,
                RELAY_BUFFER_GROUP,
                RELAY_BUFFER_COUNT,
                RELAY_BUFFER_SIZE,
            )?),
            false => None,
        };
        let wake_fd = Arc::new(sys::eventfd()?);
        let mut reactor = Reactor {
            ring,
            submissions: Submissions::default(),
            buffers: ManuallyDrop::new(buffers),
            relay_buffers: ManuallyDrop::new(relay_buffers),
            listeners: listeners
                .into_iter()
                .map(|l| Listener {
                    socket: Some(l.socket),
                    tls: l.tls,
                    armed: false,
                })
                .collect(),
            clients: Slab::new(),
            driver,
            out: Vec::with_capacity(4096),
            wake_fd: Arc::clone(&wake_fd),
            wake_buf: Box::new([0; 8]),
            rearm: Vec::new(),
            completions: Vec::with_capacity(1024),
        };
        reactor.arm_wake();
        reactor.arm_driver_own();
        reactor.arm_accepts(0);
        let wake: Wake = Arc::new(move || sys::eventfd_wake(wake_fd.as_fd()));
        Ok((reactor, wake))
    }

    /// Queues `entry` for the next `io_uring_enter` (see [`Submissions`]: it never fails).
    ///
    /// # Safety
    /// Every buffer `entry` points to must stay valid until its completion arrives.
    unsafe fn push_entry(&mut self, entry: &squeue::Entry) {
        // SAFETY: passed on from the caller.
        unsafe { self.submissions.push(&mut self.ring, entry) }
    }

    /// Queues an entry that references no memory (a cancel, a close, an accept).
    fn push_plain(&mut self, entry: &squeue::Entry) {
        // SAFETY: the entry points to no buffer.
        unsafe { self.push_entry(entry) }
    }

    fn arm_wake(&mut self) {
        let read = opcode::Read::new(
            types::Fd(self.wake_fd.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(user_data(WAKE_KEY, Op::Wake));
        // SAFETY: `wake_buf` is boxed (stable address) and lives as long as the ring.
        unsafe { self.push_entry(&read) };
    }

    /// Watches the driver's own descriptor: one poll at a time, armed again when it fires.
    fn arm_driver_own(&mut self) {
        if let Some(fd) = self.driver.own_fd() {
            let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                .build()
                .user_data(user_data(WAKE_KEY, Op::DriverOwn));
            self.push_plain(&poll);
        }
    }

    fn arm_accepts(&mut self, now: u64) {
        if !self.driver.accepting(now) {
            return;
        }
        for index in 0..self.listeners.len() {
            let listener = &self.listeners[index];
            let Some(socket) = listener.socket.as_ref().filter(|_| !listener.armed) else {
                continue;
            };
            let accept = opcode::AcceptMulti::new(types::Fd(socket.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
                .build()
                .user_data(user_data(LISTENER_BASE + index, Op::Accept));
            self.push_plain(&accept);
            self.listeners[index].armed = true;
        }
    }

    /// Runs until a shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        loop {
            self.submissions.flush(&mut self.ring);
            let wait = self.wait_timeout(self.driver.now());
            self.submit_and_wait(wait)?;
            let now = self.driver.now();
            self.reap(now);
            if turn::finish(&mut self, now) {
                return Ok(());
            }
        }
    }

    fn wait_timeout(&self, now: u64) -> Option<Duration> {
        if !self.rearm.is_empty() || self.submissions.is_waiting() {
            return Some(Duration::ZERO);
        }
        let paused = self
            .listeners
            .iter()
            .any(|l| !l.armed && l.socket.is_some());
        self.driver.wait(now, paused)
    }

    /// One `io_uring_enter`: submits everything queued this turn and waits for at least one
    /// completion or the timeout.
    fn submit_and_wait(&mut self, wait: Option<Duration>) -> io::Result<()> {
        let result = match wait {
            None => self.ring.submit_and_wait(1),
            Some(timeout) => {
                let timespec = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&timespec);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Err(e)
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Err(e)
            }
            _ => Ok(()),
        }
    }

    fn reap(&mut self, now: u64) {
        let mut completions = std::mem::take(&mut self.completions);
        completions.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, result, flags) in &completions {
            match decode(data) {
                (_, Some(Op::Wake)) => self.arm_wake(),
                (_, Some(Op::DriverOwn)) => {
                    self.driver.own_ready();
                    // A failed poll is not armed again (no spinning on it): the checks
                    // still run when due, and see their answers then.
                    if result >= 0 {
                        self.arm_driver_own();
                    }
                }
                (key, Some(Op::Accept)) => self.on_accept(key - LISTENER_BASE, result, flags, now),
                (key, Some(op)) => self.on_client_completion(key, op, result, flags, now),
                (_, None) => {}
            }
        }
        completions.clear();
        self.completions = completions;
    }

    fn on_accept(&mut self, index: usize, result: i32, flags: u32, now: u64) {
        if !cqueue::more(flags) {
            if let Some(listener) = self.listeners.get_mut(index) {
                listener.armed = false;
                if self.driver.is_draining() {
                    self.close_listener(index, now);
                }
            }
        }
        if result >= 0 {
            let tls = self.listeners.get(index).is_some_and(|l| l.tls);
            return self.on_accepted(result, tls, now);
        }
        let error = io::Error::from_raw_os_error(-result);
        if result == -libc::ECANCELED || sys::is_transient_accept_error(&error) {
            return;
        }
        // Out of descriptors or memory: re-arming at once would spin on failing completions.
        self.driver.pause_accepting(now, &error);
        self.cancel_accepts_while_paused(now);
    }

    /// While the driver has accepting paused, cancels the armed multishot accepts (they are
    /// re-armed when the pause ends).
    fn cancel_accepts_while_paused(&mut self, now: u64) {
        if self.driver.accepting(now) || self.driver.is_draining() {
            return;
        }
        self.cancel_accepts();
    }

    fn cancel_accepts(&mut self) {
        for index in 0..self.listeners.len() {
            if self.listeners[index].armed {
                let accept = user_data(LISTENER_BASE + index, Op::Accept);
                let cancel = opcode::AsyncCancel::new(accept).build();
                self.push_plain(&cancel.user_data(user_data(WAKE_KEY, Op::Cancel)));
            }
        }
    }

    fn on_accepted(&mut self, fd: RawFd, tls: bool, now: u64) {
        // Multishot accept reports no address: ask for it only when a per-address limit
        // needs it (one getpeername per connection).
        // SAFETY: `fd` was just accepted and is owned by this reactor from here on.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        let peer = self
            .driver
            .wants_peer()
            .then(|| sys::socket_addr(socket, false));
        let open = self.clients.len();
        let peer = peer.flatten().map(|a| a.ip());
        let (parts, next) = self.driver.accepted(open, peer, tls, now, &mut self.out);
        let key = self.clients.insert(Client {
            fd,
            parts,
            in_flight: 0,
            ops: Ops::default(),
            closing: false,
            upstream: None,
        });
        if next != Next::Continue || !self.out.is_empty() {
            // Refused over a limit: the answer goes at once, without reading the request.
            self.apply(key, next);
        }
        self.settle(key, now)
    }

    /// Arms the receives connection `key` needs now (see [`Client::recv_wanted`]).
    fn arm_recvs(&mut self, key: usize) {
        let groups = [
            (self.buffers.group(), BUFFER_SIZE),
            self.relay_buffers
                .as_ref()
                .map_or((0, 0), |b| (b.group(), RELAY_BUFFER_SIZE)),
        ];
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let mut entries: [Option<squeue::Entry>; 2] = [None, None];
        for (entry, side) in entries.iter_mut().zip([Side::Client, Side::Upstream]) {
            let Some((op, fd)) = client.recv_wanted(side) else {
                continue;
            };
            let (group, size) = groups[usize::from(matches!(op, Op::RelayRecv | Op::UpRelayRecv))];
            client.submitted(op);
            *entry = Some(
                opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), size as u32)
                    .buf_group(group)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
                    .user_data(user_data(key, op)),
            );
        }
        for entry in entries.into_iter().flatten() {
            // SAFETY: the kernel writes into a ring-provided buffer, which `buffers` keeps alive.
            unsafe { self.push_entry(&entry) };
        }
    }

    /// A receive completed on either side: the client's request or frames, the upstream's
    /// answer, or relayed bytes; or an end or an error.
    fn on_recv(&mut self, key: usize, op: Op, result: i32, flags: u32, now: u64) {
        let side = match op {
            Op::Recv | Op::RelayRecv => Side::Client,
            _ => Side::Upstream,
        };
        let ring = match (op, self.relay_buffers.as_mut()) {
            (Op::RelayRecv | Op::UpRelayRecv, Some(relay)) => relay,
            _ => &mut *self.buffers,
        };
        let buffer = cqueue::buffer_select(flags);
        let client = self.clients.get_mut(key);
        let Some(client) = client.filter(|c| c.socket_of(side).is_some()) else {
            // Closing, or the upstream retired: the bytes have nowhere to go.
            if let Some(bid) = buffer {
                ring.recycle(bid);
            }
            return;
        };
        if result == -libc::ENOBUFS {
            // Every buffer is in use this turn; they come back as completions are handled.
            return self.rearm.push(key);
        }
        let data = match (result, buffer) {
            // SAFETY: `bid` came with this completion and is recycled right after its use.
            (n, Some(bid)) if n > 0 => Some((bid, unsafe { ring.get(bid, n as usize) })),
            _ => None,
        };
        if client.parts.is_relaying() {
            let Some(upstream) = client.upstream.as_deref_mut() else {
                return;
            };
            let link = &mut upstream.link;
            match data {
                Some((bid, data)) => {
                    link.relay_in(side, data);
                    ring.recycle(bid);
                    if link.toward(side.other()).set_nodelay_now() {
                        if let Some(fd) = &upstream.fd {
                            sys::set_nodelay(fd);
                        }
                    }
                    let _ =
                        (self.driver).handle(&mut client.parts, Event::Relayed, now, &mut self.out);
                }
                None if result == 0 => link.end_of(side),
                None => return self.relay_broken(key, side),
            }
            // Over TLS either side's input can be bound for the client (records, alerts).
            self.send_to(key, Side::Upstream);
            self.send_to(key, Side::Client);
            return self.pass_fins(key);
        }
        let next = if let (Side::Client, Some((_, data))) = (side, data) {
            let step = match client.parts.awaits_client_hello() {
                true => {
                    let waited = client.socket().and_then(sys::waited);
                    (self.driver).before_key_exchange(key, &mut client.parts, waited, now)
                }
                false => HelloStep::Read,
            };
            match step {
                HelloStep::Shed(next) => next,
                // Held until the queue gives it back (a ClientHello, 2 KB at most).
                HelloStep::Wait if client.parts.transport.keep_unread(data) => Next::Continue,
                _ => {
                    let origin = client.origin(key);
                    (self.driver).received(origin, &mut client.parts, data, now, &mut self.out)
                }
            }
        } else {
            let event = match (side, data) {
                (Side::Client, _) if result == 0 => Event::PeerClosed,
                (Side::Client, _) => return self.begin_close(key),
                (Side::Upstream, Some((_, data))) => Event::UpstreamData(data),
                (Side::Upstream, None) if result == 0 => Event::UpstreamClosed,
                (Side::Upstream, None) => Event::UpstreamFailed,
            };
            self.driver
                .handle(&mut client.parts, event, now, &mut self.out)
        };
        if let Some(bid) = buffer {
            ring.recycle(bid);
        }
        self.apply(key, next)
    }

    /// Sends the connection's unsent output; with `then_close`, links the close to it.
    fn submit_send(&mut self, key: usize, then_close: bool) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let bytes = client.parts.outbox.start_send();
        if bytes.is_empty() {
            return;
        }
        let mut send = opcode::Send::new(types::Fd(client.fd), bytes.as_ptr(), bytes.len() as u32)
            // Stream sockets: the kernel retries a short send until all is sent or it fails.
            .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(key, Op::Send));
        client.submitted(Op::Send);
        if then_close {
            send = send.flags(squeue::Flags::IO_LINK);
            client.closing = true;
            client.submitted(Op::Close);
            // A client that never reads would hold the send, and so the close, forever.
            let now = self.driver.now();
            self.driver.closing_after_send(key, &mut client.parts, now);
        }
        let fd = client.fd;
        // SAFETY: the outbox keeps the bytes in place until this send completes.
        unsafe { self.push_entry(&send) };
        if then_close {
            self.push_plain(&Self::close_entry(key, fd, Op::Close));
        }
    }

    fn close_entry(key: usize, fd: RawFd, op: Op) -> squeue::Entry {
        opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(user_data(key, op))
    }

    /// Half-closes the socket (after a rejection) with a direct `shutdown(2)`, not through
    /// the ring: `IORING_OP_SHUTDOWN` always runs on an io-wq worker, which resolves the
    /// descriptor number only when it gets to it. By then the client may have reset, the
    /// descriptor been closed and its number reused by a new connection, whose write side the
    /// late shutdown would then close before its 101 (a flood of refused clients showed it).
    /// Rejections are the rare path; one synchronous syscall is cheap there.
    fn submit_shutdown(&mut self, key: usize) {
        if let Some(socket) = self.clients.get(key).and_then(Client::socket) {
            sys::shutdown_write(socket);
        }
    }

    /// Cancels what is in flight and closes the socket; the slot goes when all completed.
    fn begin_close(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key).filter(|c| !c.closing) else {
            return;
        };
        client.closing = true;
        self.driver.disarm(key);
        self.retire_upstream(key);
        if let Some(client) = self.clients.get(key) {
            let (ops, fd) = (client.ops, client.fd);
            self.cancel_and_close(key, ops, Ops::CLIENT, fd, Op::Close);
        }
    }

    /// Cancels the operations of slot `key` in `ops` that are on one socket (`side`), then
    /// closes its `fd`; the close completes as `close_op`. Through the ring, so that the
    /// close comes after the cancels.
    fn cancel_and_close(&mut self, key: usize, ops: Ops, side: Ops, fd: RawFd, close_op: Op) {
        for op in ops.among(side) {
            let cancel = opcode::AsyncCancel::new(user_data(key, op)).build();
            self.push_plain(&cancel.user_data(user_data(key, Op::Cancel)));
            if let Some(client) = self.clients.get_mut(key) {
                client.submitted(Op::Cancel);
            }
        }
        self.push_plain(&Self::close_entry(key, fd, close_op));
        if let Some(client) = self.clients.get_mut(key) {
            client.submitted(close_op);
        }
    }

    fn on_client_completion(&mut self, key: usize, op: Op, result: i32, flags: u32, now: u64) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        client.in_flight = client.in_flight.saturating_sub(1);
        client.ops.0 &= !Ops::bit(op);
        match op {
            Op::Connect => self.on_connect(key, result, now),
            Op::Recv | Op::RelayRecv | Op::UpRecv | Op::UpRelayRecv => {
                self.on_recv(key, op, result, flags, now)
            }
            Op::UpSend => self.on_sent(key, Side::Upstream, result, now),
            Op::RelaySend => self.on_sent(key, Side::Client, result, now),
            Op::Send => {
                client
                    .parts
                    .outbox
                    .sent(usize::try_from(result).unwrap_or(0));
                if client.closing {
                    // The linked close follows (or was cancelled by a failed send).
                } else if result < 0 {
                    self.begin_close(key);
                } else {
                    self.after_send(key);
                }
            }
            Op::Close if result == -libc::ECANCELED => {
                // A linked close whose send failed: close on its own.
                let fd = client.fd;
                client.submitted(Op::Close);
                self.push_plain(&Self::close_entry(key, fd, Op::Close));
            }
            Op::Close | Op::Cancel | Op::Accept | Op::Wake | Op::DriverOwn | Op::UpClose => {}
        }
        self.settle(key, now)
    }

    /// After a send completed: send the rest, or what queued up meanwhile, or act on what
    /// was waiting for the output to be out.
    fn after_send(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if !client.parts.outbox.pending().is_empty() {
            return self.submit_send(key, false);
        }
        if client.parts.is_relaying() {
            // The relay's sends to the client waited for this output (see `send_to`).
            self.send_to(key, Side::Client);
            return self.pass_fins(key);
        }
        match client.parts.flushed() {
            AfterFlush::Nothing => {}
            AfterFlush::ShutdownWrite => self.submit_shutdown(key),
            AfterFlush::Close => self.begin_close(key),
        }
    }

    /// Sends the output of the last call and carries out `next`.
    fn apply(&mut self, key: usize, next: Next) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if client.upstream.is_some() {
            if next == Next::Relay {
                return self.start_relay(key);
            }
            if !client.parts.wants_upstream() {
                // A 502, 504 or passed-through refusal is all the client gets.
                self.retire_upstream(key);
            }
        }
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        // Over TLS the records (the handshake's too) are in the outbox already. While a
        // send is in flight what comes waits behind it (see `Outbox`).
        client
            .parts
            .transport
            .seal(next.ends_stream(), &mut self.out, &mut client.parts.outbox);
        client.parts.outbox.push(&self.out);
        self.out.clear();
        let sending = !client.parts.outbox.is_empty() && !client.parts.outbox.is_sending();
        let busy = !client.parts.outbox.is_empty();
        // The common close-mode path: 101 and close in the same submission.
        if next == Next::Close && sending && !client.receiving() {
            return self.submit_send(key, true);
        }
        let action = client.parts.after(next, busy);
        if sending {
            self.submit_send(key, false);
        }
        match action {
            Action::Close => self.begin_close(key),
            Action::Reset => {
                if let Some(socket) = self.clients.get(key).and_then(Client::socket) {
                    sys::reset_on_close(socket);
                }
                self.begin_close(key)
            }
            Action::ShutdownWrite => self.submit_shutdown(key),
            Action::ConnectUpstream => self.connect_upstream(key, 0, self.driver.now()),
            // A relay was started above (it needs the link `Next::Proxy` made).
            Action::Continue | Action::AwaitFlush | Action::Relay => {}
        }
    }

    /// Takes the connections still queued on a listener (closing it would reset them, unless
    /// it was handed over: the new process serves that queue), then closes it. Nothing here can fail the reactor: a connection that cannot be taken stays
    /// queued and is reset by the close, as it would be without this.
    fn close_listener(&mut self, index: usize, now: u64) {
        let Some(socket) = self.listeners[index].socket.take() else {
            return;
        };
        while self.driver.takes_queued_connections() {
            match sys::accept_nonblocking(&socket) {
                Ok(stream) => {
                    let tls = self.listeners[index].tls;
                    self.on_accepted(std::os::fd::IntoRawFd::into_raw_fd(stream), tls, now)
                }
                Err(e) if sys::is_transient_accept_error(&e) => continue,
                // WouldBlock: the queue is empty. Anything else: nothing more can be taken.
                Err(_) => break,
            }
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
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let waited = client.socket().and_then(sys::waited);
        let next = match (self.driver).before_key_exchange(key, &mut client.parts, waited, now) {
            HelloStep::Shed(next) => next,
            _ => {
                let unread = client.parts.transport.take_unread();
                let origin = client.origin(key);
                (self.driver).received(origin, &mut client.parts, &unread, now, &mut self.out)
            }
        };
        self.apply(key, next)
    }

    fn next_waiting(&mut self, now: u64) -> Option<usize> {
        let clients = &self.clients;
        (self.driver).next_waiting(now, |key| {
            clients.get(key).and_then(|c| c.parts.waits_until())
        })
    }

    fn forward(&mut self, key: usize, now: u64) {
        self.connect_upstream(key, 0, now);
        turn::Backend::settle(self, key, now);
    }

    fn load(&self) -> (usize, bool) {
        let idle = self.clients.is_empty() && self.listeners.iter().all(|l| !l.armed);
        (self.clients.len(), idle)
    }

    fn connection_keys(&self) -> Vec<usize> {
        self.clients.iter().map(|(key, _)| key).collect()
    }

    /// Frees a finished slot, or re-arms the receive and the timer of a live one.
    fn settle(&mut self, key: usize, now: u64) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        if client.closing {
            self.driver.closing(&mut client.parts);
            if client.ops.has(Op::Send) && self.driver.flush_overdue(&mut client.parts, now) {
                // The descriptor is open until the linked close runs: the kernel drops the
                // output with a reset instead of probing a zero window with it.
                // SAFETY: the close is linked behind the send in flight, so `fd` is open.
                sys::reset_on_close(unsafe { BorrowedFd::borrow_raw(client.fd) });
                // The linked close is cancelled with it, and then submitted on its own.
                let cancel = opcode::AsyncCancel::new(user_data(key, Op::Send)).build();
                client.submitted(Op::Cancel);
                self.push_plain(&cancel.user_data(user_data(key, Op::Cancel)));
                return;
            }
            let Some(client) = self.clients.get_mut(key) else {
                return;
            };
            if client.in_flight == 0 {
                let mut client = self.clients.remove(key);
                self.driver.closed(key, &mut client.parts, now);
            }
            return;
        }
        let relay = match client.upstream.as_deref_mut() {
            Some(upstream) if client.parts.is_relaying() => {
                let pipe = &mut upstream.link.toward(Side::Client).pipe;
                Backlog {
                    waiting: !pipe.is_empty(),
                    progressed: pipe.take_progress(),
                }
            }
            _ => Backlog::default(),
        };
        let link = client.upstream.as_ref().map(|u| &u.link);
        let (parts, out) = (&mut client.parts, &mut self.out);
        let next = self.driver.settle(parts, (relay, link), now, out);
        if next != Next::Continue || !self.out.is_empty() {
            self.apply(key, next);
        }
        self.arm_recvs(key);
        let Some(client) = self.clients.get_mut(key).filter(|c| !c.closing) else {
            return;
        };
        self.driver.arm(key, &mut client.parts, now);
    }

    fn stop_listening(&mut self, now: u64) {
        self.cancel_accepts();
        for index in 0..self.listeners.len() {
            if !self.listeners[index].armed {
                self.close_listener(index, now);
            }
        }
    }

    fn accept(&mut self, now: u64) {
        self.arm_accepts(now)
    }

    fn resume(&mut self, _now: u64) {
        for key in std::mem::take(&mut self.rearm) {
            self.arm_recvs(key);
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        if self.clients.is_empty() {
            self.buffers.unregister(&self.ring);
            if let Some(relay_buffers) = self.relay_buffers.as_ref() {
                relay_buffers.unregister(&self.ring);
            }
            // SAFETY: no receive is in flight (every slot is gone, and a slot outlives its
            // operations) and the group is unregistered, so nothing uses the buffers; they
            // are dropped once, here.
            unsafe { ManuallyDrop::drop(&mut self.buffers) };
            // SAFETY: as for `buffers`.
            unsafe { ManuallyDrop::drop(&mut self.relay_buffers) };
        }
        // Otherwise (aborted with receives in flight) the kernel may still write into the
        // buffers while it tears the ring down, so they are leaked; the process exits next.
    }
}
