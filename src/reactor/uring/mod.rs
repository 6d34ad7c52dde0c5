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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use super::{sys, ReactorParts, Shutdown, ShutdownState, Wake};
use crate::conn::{Conn, Next};
use crate::session::{Action, AfterFlush, Driver, Expiry, Session};
use crate::timer::TimerWheel;
use crate::transport::Outbox;
use buf_ring::BufRing;
use relay::{Link, Side};
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
    Accept = 1,
    Recv = 2,
    Send = 3,
    Close = 5,
    Cancel = 6,
    Wake = 7,
    /// Proxy mode: the upstream socket's connect, receive, send and close.
    Connect = 8,
    UpRecv = 9,
    UpSend = 10,
    UpClose = 11,
    /// Proxy mode: relayed bytes sent to the client.
    RelaySend = 12,
    /// Proxy mode: relayed bytes received, into the relay buffers, from each side.
    RelayRecv = 13,
    UpRelayRecv = 14,
}

fn user_data(key: usize, op: Op) -> u64 {
    ((key as u64) << 8) | op as u64
}

fn decode(user_data: u64) -> (usize, Option<Op>) {
    let op = match user_data & 0xFF {
        1 => Op::Accept,
        2 => Op::Recv,
        3 => Op::Send,
        5 => Op::Close,
        6 => Op::Cancel,
        7 => Op::Wake,
        8 => Op::Connect,
        9 => Op::UpRecv,
        10 => Op::UpSend,
        11 => Op::UpClose,
        12 => Op::RelaySend,
        13 => Op::RelayRecv,
        14 => Op::UpRelayRecv,
        _ => return ((user_data >> 8) as usize, None),
    };
    ((user_data >> 8) as usize, Some(op))
}

struct Client {
    fd: RawFd,
    conn: Conn,
    session: Session,
    /// Output the socket has not taken yet; its front stays put while a send is in flight.
    outbox: Outbox,
    /// Submitted operations whose completion has not arrived.
    in_flight: u8,
    recv_armed: bool,
    /// The close is submitted; the slot is freed when `in_flight` reaches 0.
    closing: bool,
    /// Proxy mode: the upstream side. Lives as long as the slot, because operations in
    /// flight point into it (the connect's address, the pipes).
    link: Option<Box<Link>>,
}

struct Listener {
    /// `None` once closed for a drain.
    socket: Option<std::net::TcpListener>,
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
    wheel: TimerWheel,
    /// Every decision above the connection's protocol.
    driver: Driver,
    shutdown: Arc<Shutdown>,
    out: Vec<u8>,
    epoch: Instant,
    wake_fd: Arc<OwnedFd>,
    wake_buf: Box<[u8; 8]>,
    /// Receives that found the buffer ring empty: re-armed next turn.
    rearm: Vec<usize>,
    completions: Vec<(u64, i32, u32)>,
    fired: Vec<u32>,
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

/// An accepted socket's address: its peer's, or with `local` the one it reached. Multishot
/// accept reports neither, so this is a syscall, made only where an address is needed.
fn socket_addr(fd: RawFd, local: bool) -> Option<std::net::SocketAddr> {
    // SAFETY: `fd` is an open socket owned by this reactor for the duration of the call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let socket = socket2::SockRef::from(&borrowed);
    let addr = if local {
        socket.local_addr()
    } else {
        socket.peer_addr()
    };
    addr.ok()?.as_socket()
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no pointer arguments; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Reactor {
    /// Creates a reactor over its own listeners, and the function that wakes its wait.
    /// Must run on the thread that will call [`Reactor::run`] (single-issuer ring).
    pub fn new(parts: ReactorParts) -> io::Result<(Reactor, Wake)> {
        let ReactorParts {
            listeners,
            config,
            stats,
            shutdown,
            limits,
            seed,
            ..
        } = parts;
        let ring = build_ring()?;
        let buffers = ManuallyDrop::new(BufRing::new(
            &ring,
            BUFFER_GROUP,
            BUFFER_COUNT,
            BUFFER_SIZE,
        )?);
        let relay_buffers = match config.after {
            crate::conn::AfterUpgrade::Proxy => Some(BufRing::new(
                &ring,
                RELAY_BUFFER_GROUP,
                RELAY_BUFFER_COUNT,
                RELAY_BUFFER_SIZE,
            )?),
            _ => None,
        };
        let wake_fd = Arc::new(eventfd()?);
        let mut reactor = Reactor {
            ring,
            submissions: Submissions::default(),
            buffers,
            relay_buffers: ManuallyDrop::new(relay_buffers),
            listeners: listeners
                .into_iter()
                .map(|l| Listener {
                    socket: Some(l),
                    armed: false,
                })
                .collect(),
            clients: Slab::new(),
            wheel: TimerWheel::new(0),
            driver: Driver::new(config, stats, limits, seed),
            shutdown,
            out: Vec::with_capacity(4096),
            epoch: Instant::now(),
            wake_fd: Arc::clone(&wake_fd),
            wake_buf: Box::new([0; 8]),
            rearm: Vec::new(),
            completions: Vec::with_capacity(1024),
            fired: Vec::new(),
        };
        reactor.arm_wake()?;
        reactor.arm_accepts(0)?;
        let wake: Wake = Arc::new(move || {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live local to an eventfd we keep open; a failed
            // write (counter full) still leaves the reactor woken.
            unsafe { libc::write(wake_fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        });
        Ok((reactor, wake))
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Queues `entry` for the next `io_uring_enter` (see [`Submissions`]: it never fails).
    ///
    /// # Safety
    /// Every buffer `entry` points to must stay valid until its completion arrives.
    unsafe fn push_entry(&mut self, entry: &squeue::Entry) {
        // SAFETY: passed on from the caller.
        unsafe { self.submissions.push(&mut self.ring, entry) }
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let read = opcode::Read::new(
            types::Fd(self.wake_fd.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(user_data(WAKE_KEY, Op::Wake));
        // SAFETY: `wake_buf` is boxed (stable address) and lives as long as the ring.
        unsafe { self.push_entry(&read) };
        Ok(())
    }

    fn arm_accepts(&mut self, now: u64) -> io::Result<()> {
        if !self.driver.accepting(now) {
            return Ok(());
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
            // SAFETY: a multishot accept without an address buffer references no memory.
            unsafe { self.push_entry(&accept) };
            self.listeners[index].armed = true;
        }
        Ok(())
    }

    /// Runs until a shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        loop {
            self.submissions.flush(&mut self.ring);
            let wait = self.wait_timeout(self.now());
            self.submit_and_wait(wait)?;
            let now = self.now();
            self.reap(now)?;
            match self.shutdown.state() {
                ShutdownState::Aborting => return Ok(()),
                ShutdownState::Draining if !self.driver.is_draining() => {
                    self.start_draining(now)?
                }
                _ => {}
            }
            self.arm_accepts(now)?;
            for key in std::mem::take(&mut self.rearm) {
                self.arm_recv(key)?;
            }
            self.expire_timers(now)?;
            let idle = self.clients.is_empty() && self.listeners.iter().all(|l| !l.armed);
            if self.driver.is_draining() && idle {
                return Ok(());
            }
            if self.driver.end_turn(self.clients.len(), now) {
                return Ok(());
            }
        }
    }

    fn wait_timeout(&self, now: u64) -> Option<Duration> {
        if !self.rearm.is_empty() || self.submissions.is_waiting() {
            return Some(Duration::ZERO);
        }
        let mut wait = self.wheel.next_wake(now);
        let paused = !self.driver.is_draining()
            && self
                .listeners
                .iter()
                .any(|l| !l.armed && l.socket.is_some());
        if paused {
            let resume = self.driver.accept_resumes_at().saturating_sub(now);
            wait = Some(wait.map_or(resume, |w| w.min(resume)));
        }
        wait.map(Duration::from_millis)
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
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn reap(&mut self, now: u64) -> io::Result<()> {
        let mut completions = std::mem::take(&mut self.completions);
        completions.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, result, flags) in &completions {
            let (key, op) = decode(data);
            match op {
                Some(Op::Wake) => self.arm_wake()?,
                Some(Op::Accept) => self.on_accept(key - LISTENER_BASE, result, flags, now)?,
                Some(op) => self.on_client_completion(key, op, result, flags, now)?,
                None => {}
            }
        }
        completions.clear();
        self.completions = completions;
        Ok(())
    }

    fn on_accept(&mut self, index: usize, result: i32, flags: u32, now: u64) -> io::Result<()> {
        if !cqueue::more(flags) {
            if let Some(listener) = self.listeners.get_mut(index) {
                listener.armed = false;
                if self.driver.is_draining() {
                    self.close_listener(index, now)?;
                }
            }
        }
        if result >= 0 {
            return self.on_accepted(result, now);
        }
        let error = io::Error::from_raw_os_error(-result);
        if result == -libc::ECANCELED || sys::is_transient_accept_error(&error) {
            return Ok(());
        }
        // Out of descriptors or memory: re-arming at once would spin on failing completions.
        self.pause_accepting(now, &error)
    }

    /// Pauses accepting after `error`: every armed multishot accept is cancelled, and
    /// re-armed once the pause is over.
    fn pause_accepting(&mut self, now: u64, error: &io::Error) -> io::Result<()> {
        if self.driver.pause_accepting(now, error) {
            self.cancel_accepts_while_paused(now);
        }
        Ok(())
    }

    /// While the driver has accepting paused, cancels the armed multishot accepts (they are
    /// re-armed when the pause ends).
    fn cancel_accepts_while_paused(&mut self, now: u64) {
        if self.driver.accepting(now) || self.driver.is_draining() {
            return;
        }
        for index in 0..self.listeners.len() {
            if !self.listeners[index].armed {
                continue;
            }
            let cancel = opcode::AsyncCancel::new(user_data(LISTENER_BASE + index, Op::Accept))
                .build()
                .user_data(user_data(WAKE_KEY, Op::Cancel));
            // SAFETY: a cancel references no memory.
            unsafe { self.push_entry(&cancel) };
        }
    }

    fn on_accepted(&mut self, fd: RawFd, now: u64) -> io::Result<()> {
        // Multishot accept reports no address: ask for it only when a per-address limit
        // needs it (one getpeername per connection).
        let peer = self
            .driver
            .wants_peer()
            .then(|| socket_addr(fd, false).map(|a| a.ip()))
            .flatten();
        let open = self.clients.len();
        let (conn, session, next) = self.driver.accepted(open, peer, now, &mut self.out);
        let key = self.clients.insert(Client {
            fd,
            conn,
            session,
            outbox: Outbox::default(),
            in_flight: 0,
            recv_armed: false,
            closing: false,
            link: None,
        });
        if next != Next::Continue || !self.out.is_empty() {
            // Refused over a limit: the answer goes at once, without reading the request.
            self.apply(key, next)?;
        }
        self.settle(key, now)
    }

    fn arm_recv(&mut self, key: usize) -> io::Result<()> {
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        if client.link.is_some() && client.conn.wants_upstream() {
            return self.arm_relay_recvs(key);
        }
        if client.closing
            || client.recv_armed
            || client.outbox.is_sending()
            || client.session.awaits_flush()
        {
            return Ok(());
        }
        let recv = opcode::Recv::new(
            types::Fd(client.fd),
            std::ptr::null_mut(),
            BUFFER_SIZE as u32,
        )
        .buf_group(self.buffers.group())
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
        .user_data(user_data(key, Op::Recv));
        client.recv_armed = true;
        client.in_flight += 1;
        // SAFETY: the kernel writes into a ring-provided buffer, which `buffers` keeps alive.
        unsafe { self.push_entry(&recv) };
        Ok(())
    }

    /// Sends the connection's unsent output; with `then_close`, links the close to it.
    fn submit_send(&mut self, key: usize, then_close: bool) -> io::Result<()> {
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        let bytes = client.outbox.start_send();
        if bytes.is_empty() {
            return Ok(());
        }
        let mut send = opcode::Send::new(types::Fd(client.fd), bytes.as_ptr(), bytes.len() as u32)
            // Stream sockets: the kernel retries a short send until all is sent or it fails.
            .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(key, Op::Send));
        client.in_flight += 1;
        if then_close {
            send = send.flags(squeue::Flags::IO_LINK);
            client.closing = true;
            client.in_flight += 1;
            let fd = client.fd;
            self.wheel.cancel(key as u32);
            // SAFETY: the outbox keeps the bytes in place until this send completes.
            unsafe { self.push_entry(&send) };
            let close = opcode::Close::new(types::Fd(fd))
                .build()
                .user_data(user_data(key, Op::Close));
            // SAFETY: a close references no memory.
            unsafe { self.push_entry(&close) };
            return Ok(());
        }
        // SAFETY: the outbox keeps the bytes in place until this send completes.
        unsafe { self.push_entry(&send) };
        Ok(())
    }

    /// Half-closes the socket (after a rejection) with a direct `shutdown(2)`, not through
    /// the ring: `IORING_OP_SHUTDOWN` always runs on an io-wq worker, which resolves the
    /// descriptor number only when it gets to it. By then the client may have reset, the
    /// descriptor been closed and its number reused by a new connection, whose write side the
    /// late shutdown would then close before its 101 (a flood of refused clients showed it).
    /// Rejections are the rare path; one synchronous syscall is cheap there.
    fn submit_shutdown(&mut self, key: usize) -> io::Result<()> {
        let Some(client) = self.clients.get(key).filter(|c| !c.closing) else {
            return Ok(());
        };
        // SAFETY: the descriptor is open: it belongs to this live slot, and its close is
        // only ever submitted by `begin_close`, which marks the slot closing first.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(client.fd) };
        sys::shutdown_write(fd);
        Ok(())
    }

    /// Cancels what is in flight and closes the socket; the slot goes when all completed.
    fn begin_close(&mut self, key: usize) -> io::Result<()> {
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        if client.closing {
            return Ok(());
        }
        client.closing = true;
        self.wheel.cancel(key as u32);
        let relay_send = client
            .link
            .as_ref()
            .is_some_and(|l| l.client_send_in_flight);
        let recv_op = match client.link.as_ref().is_some_and(|l| l.client_recv_relay) {
            true => Op::RelayRecv,
            false => Op::Recv,
        };
        self.retire_upstream(key)?;
        let Some(client) = self.clients.get(key) else {
            return Ok(());
        };
        let in_flight = [
            (client.recv_armed, recv_op),
            (client.outbox.is_sending(), Op::Send),
            (relay_send, Op::RelaySend),
        ];
        self.cancel_and_close(key, in_flight, client.fd, Op::Close)
    }

    /// Cancels the operations of slot `key` flagged in `in_flight`, then closes `fd`; the
    /// close completes as `close_op`. Through the ring, so that the close comes after the
    /// cancels.
    fn cancel_and_close<const N: usize>(
        &mut self,
        key: usize,
        in_flight: [(bool, Op); N],
        fd: RawFd,
        close_op: Op,
    ) -> io::Result<()> {
        let cancels = in_flight.into_iter().filter(|&(armed, _)| armed);
        let mut submitted = 0u8;
        for (_, op) in cancels {
            let cancel = opcode::AsyncCancel::new(user_data(key, op))
                .build()
                .user_data(user_data(key, Op::Cancel));
            // SAFETY: a cancel references no memory.
            unsafe { self.push_entry(&cancel) };
            submitted += 1;
        }
        let close = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(user_data(key, close_op));
        // SAFETY: a close references no memory.
        unsafe { self.push_entry(&close) };
        if let Some(client) = self.clients.get_mut(key) {
            client.in_flight += submitted + 1;
        }
        Ok(())
    }

    fn on_client_completion(
        &mut self,
        key: usize,
        op: Op,
        result: i32,
        flags: u32,
        now: u64,
    ) -> io::Result<()> {
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        client.in_flight = client.in_flight.saturating_sub(1);
        match op {
            Op::RelayRecv => self.on_relay_recv(key, result, flags, now)?,
            Op::Connect => self.on_connect(key, result, now)?,
            Op::UpRecv | Op::UpRelayRecv => self.on_upstream_recv(key, op, result, flags, now)?,
            Op::UpSend => self.on_sent(key, Side::Upstream, result, now)?,
            Op::RelaySend => self.on_sent(key, Side::Client, result, now)?,
            Op::Recv => {
                client.recv_armed = false;
                let buffer = cqueue::buffer_select(flags);
                if client.closing {
                    if let Some(bid) = buffer {
                        self.buffers.recycle(bid);
                    }
                } else if result > 0 {
                    let Some(bid) = buffer else {
                        return self.begin_close(key);
                    };
                    let mut cx = ctx!(self, now);
                    // SAFETY: `bid` came with this completion and is recycled only below.
                    let data = unsafe { self.buffers.get(bid, result as usize) };
                    let next = client.conn.on_data(data, &mut cx);
                    self.buffers.recycle(bid);
                    self.apply(key, next)?;
                } else if result == 0 {
                    let mut cx = ctx!(self, now);
                    let next = client.conn.on_eof(&mut cx);
                    self.apply(key, next)?;
                } else if result == -libc::ENOBUFS {
                    // Every buffer is in use this turn; they come back as completions are handled.
                    self.rearm.push(key);
                } else if result != -libc::ECANCELED {
                    self.begin_close(key)?;
                }
            }
            Op::Send => {
                client.outbox.sent(usize::try_from(result).unwrap_or(0));
                if client.closing {
                    // The linked close follows (or was cancelled by a failed send).
                } else if result < 0 {
                    self.begin_close(key)?;
                } else {
                    self.after_send(key)?;
                }
            }
            Op::Close if result == -libc::ECANCELED => {
                // A linked close whose send failed: close on its own.
                client.in_flight += 1;
                let close = opcode::Close::new(types::Fd(client.fd))
                    .build()
                    .user_data(user_data(key, Op::Close));
                // SAFETY: a close references no memory.
                unsafe { self.push_entry(&close) };
            }
            Op::Close | Op::Cancel | Op::Accept | Op::Wake | Op::UpClose => {}
        }
        self.settle(key, now)
    }

    /// After a send completed: send the rest, or what queued up meanwhile, or act on what
    /// was waiting for the output to be out.
    fn after_send(&mut self, key: usize) -> io::Result<()> {
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        if !client.outbox.pending().is_empty() {
            return self.submit_send(key, false);
        }
        match client.session.flushed() {
            AfterFlush::Nothing => Ok(()),
            AfterFlush::ShutdownWrite => self.submit_shutdown(key),
            AfterFlush::Close => self.begin_close(key),
        }
    }

    /// Sends the output of the last call and carries out `next`.
    fn apply(&mut self, key: usize, next: Next) -> io::Result<()> {
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        if client.link.is_some() {
            if next == Next::Relay {
                return self.start_relay(key);
            }
            if !client.conn.wants_upstream() {
                // A 502, 504 or passed-through refusal is all the client gets.
                self.retire_upstream(key)?;
            }
        }
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        let mut sending = false;
        if !self.out.is_empty() {
            // While a send is in flight this waits behind it (see `Outbox`).
            client.outbox.push(&self.out);
            self.out.clear();
            sending = !client.outbox.is_sending();
        }
        let busy = sending || client.outbox.is_sending();
        // The common close-mode path: 101 and close in the same submission.
        if next == Next::Close && sending && !client.recv_armed {
            return self.submit_send(key, true);
        }
        let action = client.session.after(next, busy);
        if sending {
            self.submit_send(key, false)?;
        }
        match action {
            Action::Close => self.begin_close(key),
            Action::ShutdownWrite => self.submit_shutdown(key),
            Action::ConnectUpstream => self.connect_upstream(key, 0, self.now()),
            // A relay was started above (it needs the link `Next::Proxy` made).
            Action::Continue | Action::AwaitFlush | Action::Relay => Ok(()),
        }
    }

    /// Frees a finished slot, or re-arms the receive and the timer of a live one.
    fn settle(&mut self, key: usize, now: u64) -> io::Result<()> {
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        let next = self.driver.settle(
            &mut client.conn,
            &mut client.session,
            client.closing,
            now,
            &mut self.out,
        );
        if client.closing {
            if client.in_flight == 0 {
                let mut client = self.clients.remove(key);
                self.driver.closed(&mut client.conn, &client.session, now);
                self.wheel.cancel(key as u32);
            }
            return Ok(());
        }
        if next != Next::Continue || !self.out.is_empty() {
            self.apply(key, next)?;
        }
        self.arm_recv(key)?;
        let Some(client) = self.clients.get_mut(key) else {
            return Ok(());
        };
        if client.closing {
            return Ok(());
        }
        let at = self.driver.timer(&client.conn, &mut client.session, now);
        self.wheel.set(key as u32, at);
        Ok(())
    }

    fn expire_timers(&mut self, now: u64) -> io::Result<()> {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.expire(now, |key| fired.push(key));
        for key in fired.drain(..) {
            let key = key as usize;
            let Some(client) = self.clients.get_mut(key) else {
                continue;
            };
            if client.closing {
                continue;
            }
            let waiting = client.outbox.is_sending();
            let expiry = self.driver.on_deadline(
                &mut client.conn,
                &client.session,
                waiting,
                now,
                &mut self.out,
            );
            let Expiry::Then(next) = expiry else {
                // The peer stopped reading our output: give up on it.
                self.begin_close(key)?;
                continue;
            };
            self.apply(key, next)?;
            self.settle(key, now)?;
        }
        self.fired = fired;
        Ok(())
    }

    fn start_draining(&mut self, now: u64) -> io::Result<()> {
        self.driver.start_draining(now);
        for index in 0..self.listeners.len() {
            if self.listeners[index].armed {
                let cancel = opcode::AsyncCancel::new(user_data(LISTENER_BASE + index, Op::Accept))
                    .build()
                    .user_data(user_data(WAKE_KEY, Op::Cancel));
                // SAFETY: a cancel references no memory.
                unsafe { self.push_entry(&cancel) };
            } else {
                self.close_listener(index, now)?;
            }
        }
        let keys: Vec<usize> = self.clients.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.settle(key, now)?;
        }
        tracing::info!(connections = self.clients.len(), "draining");
        Ok(())
    }

    /// Takes the connections still queued on a listener (closing it would reset them), then
    /// closes it. Nothing here can fail the reactor: a connection that cannot be taken stays
    /// queued and is reset by the close, as it would be without this.
    fn close_listener(&mut self, index: usize, now: u64) -> io::Result<()> {
        let Some(socket) = self.listeners[index].socket.take() else {
            return Ok(());
        };
        loop {
            match sys::accept_nonblocking(&socket) {
                Ok(stream) => self.on_accepted(std::os::fd::IntoRawFd::into_raw_fd(stream), now)?,
                Err(e) if sys::is_transient_accept_error(&e) => continue,
                // WouldBlock: the queue is empty. Anything else: nothing more can be taken.
                Err(_) => break,
            }
        }
        Ok(())
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
