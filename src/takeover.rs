//! Listening sockets handed from a running wsedge to its successor (`--takeover PATH`), as
//! nginx's binary upgrade, HAProxy's `-x` and Pingora's `--upgrade` do: no listening socket
//! is ever closed, so no SYN is refused and nothing queued on a socket is reset.
//!
//! The running process offers its sockets on a Unix socket at `PATH` ([`offer`]). A new
//! process started with the same `PATH` connects there ([`receive`]), gets the sockets
//! (`SCM_RIGHTS`) and starts its reactors on them, then says it is ready
//! ([`Received::ready`]). The old one then stops offering, says goodbye and drains (the
//! caller's `on_taken`): it accepts nothing more, finishes its handshakes in flight and closes
//! its upgraded connections spread over the drain window; the connections queued on the
//! shared sockets are the new process's. Only after the goodbye does the new process offer
//! the sockets at `PATH` in turn. A new process that fails before it is ready closes the
//! connection, and the old one goes on serving and offering.
//!
//! The exchange is a `SOCK_SEQPACKET` socket (every message arrives whole, with its
//! descriptors):
//!
//! ```text
//! old -> new   "wsedge-takeover 1 N"            N sockets follow
//! old -> new   "plain ADDR\ntls ADDR\n..." + up to 64 descriptors, one line each, until N
//! new -> old   "ready"
//! old -> new   "bye"
//! ```
//!
//! # Trust
//! The listening sockets are the port itself: whoever gets them serves it, and whoever says
//! `ready` makes the running process drain. So the socket file is created `0600` (mode set
//! on the socket before `bind`, with no window), each side checks the other's credentials
//! (`SO_PEERCRED`: the same user, or root) before anything is sent, a connector that stalls
//! cannot hold the offer (candidates are served on threads of their own, four at most, and
//! the first that is ready wins), counts and waits are bounded, and the new process decides
//! nothing from the old one's words: each descriptor must be a listening TCP socket on an
//! address it was asked to serve, and whether it speaks TLS comes from its own flags.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};

use crate::reactor::Listening;

/// The first message's words.
const GREETING: &str = "wsedge-takeover 1";
/// Descriptors per message (the kernel takes up to 253).
const PER_MESSAGE: usize = 64;
/// A message's largest payload: a greeting, or one line per descriptor.
const MAX_MESSAGE: usize = PER_MESSAGE * 64;
/// How long the old process waits for `ready`: a process that is starting may take a while
/// (reading certificates, setting up rings); a dead one closes the socket.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long the new process waits for each of the old one's messages, which it sends at
/// once.
const PROMPT: Duration = Duration::from_secs(5);
/// The most sockets one hand-over carries: far more than any configuration has (one per
/// reactor and address), a bound so that the other side's count cannot size our memory.
pub const MAX_SOCKETS: usize = 4096;
/// Candidates served at once by the old process; more wait in the Unix socket's backlog.
const MAX_CANDIDATES: usize = 4;

/// Why a hand-over failed.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// The Unix socket could not be used.
    #[error("--takeover {path}: {source}")]
    Socket {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The other side said something unexpected (another program, another version).
    #[error("--takeover {path}: {what}")]
    Protocol {
        /// The path.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
}

/// What a new process received, and the channel on which to say it is ready.
pub struct Received {
    /// The listening sockets, in the order offered.
    pub listeners: Vec<Listening>,
    channel: OwnedFd,
    path: PathBuf,
}

/// Connects to a running wsedge offering its sockets at `path` and receives those on the
/// addresses in `asked` (each with whether this process serves it with TLS: its own flags
/// decide, whatever the old process labelled it); `None` when nothing answers there (no
/// file, or a file no process listens on): bind as usual.
pub fn receive(
    path: &Path,
    asked: &[(SocketAddr, bool)],
) -> Result<Option<Received>, TakeoverError> {
    let socket_error = |source: io::Error| TakeoverError::Socket {
        path: path.to_owned(),
        source,
    };
    let protocol = |what: String| TakeoverError::Protocol {
        path: path.to_owned(),
        what,
    };
    let channel = seqpacket().map_err(socket_error)?;
    let addr = UnixAddr::new(path).map_err(|e| socket_error(e.into()))?;
    match socket::connect(channel.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED) => return Ok(None),
        Err(errno) => return Err(socket_error(errno.into())),
    }
    check_peer(&channel).map_err(protocol)?;
    set_timeouts(&channel, PROMPT).map_err(socket_error)?;
    let (greeting, _) = receive_message(&channel).map_err(socket_error)?;
    let count = parse_greeting(&greeting).map_err(protocol)?;
    let mut listeners = Vec::with_capacity(count.min(PER_MESSAGE));
    let mut received = 0;
    while received < count {
        let (lines, fds) = receive_message(&channel).map_err(socket_error)?;
        if lines.lines().count() != fds.len() || fds.is_empty() || received + fds.len() > count {
            return Err(protocol(format!(
                "{} descriptors for {} lines",
                fds.len(),
                lines.lines().count()
            )));
        }
        received += fds.len();
        for fd in fds {
            let local = check_listening(&fd).map_err(protocol)?;
            match serves(asked, local) {
                Some(tls) => listeners.push(Listening {
                    socket: std::net::TcpListener::from(fd),
                    tls,
                }),
                // The old process goes on holding it until it drains.
                None => tracing::warn!(
                    "--takeover: {local} is not asked for here: left to the old process"
                ),
            }
        }
    }
    Ok(Some(Received {
        listeners,
        channel,
        path: path.to_owned(),
    }))
}

/// The number of sockets a greeting announces, within [`MAX_SOCKETS`].
pub fn parse_greeting(greeting: &str) -> Result<usize, String> {
    let count = greeting
        .strip_prefix(GREETING)
        .and_then(|rest| rest.strip_prefix(' '))
        .and_then(|count| count.parse::<usize>().ok())
        .ok_or_else(|| format!("not a wsedge offering its sockets: {greeting:?}"))?;
    match count {
        0 => Err("an offer of no sockets".into()),
        n if n > MAX_SOCKETS => Err(format!("an offer of {n} sockets (at most {MAX_SOCKETS})")),
        n => Ok(n),
    }
}

/// Whether `local` is an address in `asked` and, if so, whether it is served with TLS: the
/// same IP, and the same port or a port left to the system (0).
fn serves(asked: &[(SocketAddr, bool)], local: SocketAddr) -> Option<bool> {
    let exact = asked.iter().find(|(a, _)| *a == local);
    let any_port = asked
        .iter()
        .find(|(a, _)| a.ip() == local.ip() && a.port() == 0);
    exact.or(any_port).map(|&(_, tls)| tls)
}

/// Checks that `fd` is a listening TCP socket; returns its address.
fn check_listening(fd: &OwnedFd) -> Result<SocketAddr, String> {
    let socket = socket2::SockRef::from(fd);
    let stream = socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM);
    let listening = socket.is_listener().unwrap_or(false);
    let local = socket.local_addr().ok().and_then(|a| a.as_socket());
    match (stream, listening, local) {
        (true, true, Some(local)) => Ok(local),
        _ => Err("a descriptor that is not a listening TCP socket".into()),
    }
}

/// Checks that the process at the other end of `channel` runs as this user, or as root.
fn check_peer(channel: &OwnedFd) -> Result<(), String> {
    let peer = socket::getsockopt(channel, socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot tell who is at the other end: {e}"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    match peer.uid() {
        uid if uid == me || uid == 0 => Ok(()),
        uid => Err(format!(
            "the process at the other end runs as uid {uid} (pid {}), not as this user ({me}) or root",
            peer.pid()
        )),
    }
}

impl Received {
    /// Tells the old process that the reactors serve the sockets, and waits for it to stop
    /// offering them (it drains from here on).
    pub fn ready(self) -> Result<(), TakeoverError> {
        let socket_error = |source: io::Error| TakeoverError::Socket {
            path: self.path.clone(),
            source,
        };
        send_message(&self.channel, "ready", &[]).map_err(socket_error)?;
        set_timeouts(&self.channel, PROMPT).map_err(socket_error)?;
        let (answer, _) = receive_message(&self.channel).map_err(socket_error)?;
        if answer != "bye" {
            return Err(TakeoverError::Protocol {
                path: self.path.clone(),
                what: format!("expected bye, got {answer:?}"),
            });
        }
        Ok(())
    }
}

/// The offer of a running process's sockets at a path, served by a thread of its own.
pub struct Offer {
    listener: Arc<OwnedFd>,
}

impl Offer {
    /// Stops offering (a drain that is not a hand-over): the sockets' other descriptors are
    /// closed, so that the reactors' closing them does close them.
    pub fn stop(&self) {
        let _ = socket::shutdown(self.listener.as_raw_fd(), socket::Shutdown::Both);
    }
}

/// Offers `listeners` at `path` (replacing whatever file is there) until a new process takes
/// them: `on_taken` then runs once (the caller starts its drain), and the offer ends.
pub fn offer(
    path: &Path,
    listeners: Vec<Listening>,
    on_taken: impl FnOnce() + Send + 'static,
) -> Result<Offer, TakeoverError> {
    let socket_error = |source: io::Error| TakeoverError::Socket {
        path: path.to_owned(),
        source,
    };
    let listener = seqpacket().map_err(socket_error)?;
    // A socket file left by a process that is gone, or by the one that handed over to us.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_error(e)),
    }
    // The file takes the socket's mode at bind: set before, no other user can ever connect.
    // SAFETY: fchmod on a descriptor we own; no memory is passed.
    if unsafe { libc::fchmod(listener.as_raw_fd(), 0o600) } != 0 {
        return Err(socket_error(io::Error::last_os_error()));
    }
    let addr = UnixAddr::new(path).map_err(|e| socket_error(e.into()))?;
    socket::bind(listener.as_raw_fd(), &addr).map_err(|e| socket_error(e.into()))?;
    let backlog = Backlog::new(4).map_err(|e| socket_error(e.into()))?;
    socket::listen(&listener, backlog).map_err(|e| socket_error(e.into()))?;
    let listener = Arc::new(listener);
    let handover = Arc::new(Handover {
        listeners: Mutex::new(Some(listeners)),
        on_taken: Mutex::new(Some(Box::new(on_taken))),
        candidates: AtomicUsize::new(0),
        offer: Arc::clone(&listener),
        shown: path.display().to_string(),
    });
    let serving = Arc::clone(&listener);
    std::thread::Builder::new()
        .name("wsedge-takeover".into())
        .spawn(move || loop {
            let channel = match socket::accept4(&*serving, SockFlag::SOCK_CLOEXEC) {
                Ok(channel) => channel,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                // Shut down (`Offer::stop`, or taken), or unusable: the offer ends.
                Err(_) => return,
            };
            handover.candidate(channel);
        })
        .map_err(socket_error)?;
    Ok(Offer { listener })
}

/// What the offer's threads share: the sockets until one candidate takes them.
struct Handover {
    listeners: Mutex<Option<Vec<Listening>>>,
    on_taken: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    candidates: AtomicUsize,
    offer: Arc<OwnedFd>,
    shown: String,
}

impl Handover {
    /// A process connected: if it may have the sockets, they are offered to it on a thread
    /// of its own, so that one that stalls holds up no other.
    fn candidate(self: &Arc<Self>, channel: OwnedFd) {
        let shown = &self.shown;
        if let Err(why) = check_peer(&channel) {
            return tracing::warn!("--takeover {shown}: refused a connection: {why}");
        }
        if self.candidates.fetch_add(1, Ordering::AcqRel) >= MAX_CANDIDATES {
            self.candidates.fetch_sub(1, Ordering::AcqRel);
            return tracing::warn!("--takeover {shown}: refused a connection: too many at once");
        }
        let handover = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("wsedge-handover".into())
            .spawn(move || {
                handover.serve(&channel);
                handover.candidates.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.candidates.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn serve(&self, channel: &OwnedFd) {
        let shown = &self.shown;
        let result = {
            let listeners = lock(&self.listeners);
            match listeners.as_deref() {
                // Taken by another candidate already.
                None => return,
                Some(listeners) => offer_to(channel, listeners),
            }
        }
        .and_then(|()| wait_ready(channel));
        if let Err(error) = result {
            return tracing::warn!(
                "--takeover {shown}: a new process did not take over ({error}); still serving"
            );
        }
        // The first candidate ready wins; a later one is closed without a goodbye.
        let Some(listeners) = lock(&self.listeners).take() else {
            return;
        };
        if let Err(error) = send_message(channel, "bye", &[]) {
            tracing::warn!("--takeover {shown}: the goodbye was not sent ({error})");
        }
        tracing::info!("--takeover {shown}: a new process took the listening sockets over");
        drop(listeners);
        let _ = socket::shutdown(self.offer.as_raw_fd(), socket::Shutdown::Both);
        if let Some(on_taken) = lock(&self.on_taken).take() {
            on_taken();
        }
    }
}

/// A poisoned lock still holds what it held: a panic elsewhere changes nothing here.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends `listeners` on `channel`.
fn offer_to(channel: &OwnedFd, listeners: &[Listening]) -> io::Result<()> {
    set_timeouts(channel, PROMPT)?;
    send_message(channel, &format!("{GREETING} {}", listeners.len()), &[])?;
    for chunk in listeners.chunks(PER_MESSAGE) {
        let mut lines = String::new();
        for listening in chunk {
            let addr: Option<SocketAddr> = listening.socket.local_addr().ok();
            let kind = if listening.tls { "tls" } else { "plain" };
            lines.push_str(&format!(
                "{kind} {}\n",
                addr.map_or("?".into(), |a| a.to_string())
            ));
        }
        let fds: Vec<i32> = chunk.iter().map(|l| l.socket.as_raw_fd()).collect();
        send_message(channel, &lines, &fds)?;
    }
    Ok(())
}

/// Waits for the new process to say it serves the sockets.
fn wait_ready(channel: &OwnedFd) -> io::Result<()> {
    set_timeouts(channel, PATIENCE)?;
    let (answer, _) = receive_message(channel)?;
    if answer != "ready" {
        return Err(io::Error::other(format!("expected ready, got {answer:?}")));
    }
    Ok(())
}

fn seqpacket() -> io::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

fn set_timeouts(channel: &OwnedFd, wait: Duration) -> io::Result<()> {
    let wait = nix::sys::time::TimeVal::new(wait.as_secs() as _, 0);
    socket::setsockopt(channel, socket::sockopt::ReceiveTimeout, &wait)?;
    socket::setsockopt(channel, socket::sockopt::SendTimeout, &wait)?;
    Ok(())
}

fn send_message(channel: &OwnedFd, text: &str, fds: &[i32]) -> io::Result<()> {
    let payload = [io::IoSlice::new(text.as_bytes())];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match socket::sendmsg::<()>(
            channel.as_fd().as_raw_fd(),
            &payload,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            // With a send timeout set, a signal interrupts even where SA_RESTART would not.
            Err(nix::errno::Errno::EINTR) => continue,
            sent => return sent.map(drop).map_err(io::Error::from),
        }
    }
}

/// One message: its text and the descriptors that came with it (owned from here on).
fn receive_message(channel: &OwnedFd) -> io::Result<(String, Vec<OwnedFd>)> {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let mut control = nix::cmsg_space!([i32; PER_MESSAGE]);
    let mut payload = [io::IoSliceMut::new(&mut buffer)];
    let message = loop {
        match socket::recvmsg::<()>(
            channel.as_raw_fd(),
            &mut payload,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            // With a receive timeout set, a signal interrupts even where SA_RESTART would not.
            Err(nix::errno::Errno::EINTR) => continue,
            received => break received?,
        }
    };
    let mut fds = Vec::new();
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this process for us.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let (len, truncated) = (message.bytes, message.flags.contains(MsgFlags::MSG_TRUNC));
    if truncated || message.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::other("message too long"));
    }
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other process closed the connection",
        ));
    }
    Ok((String::from_utf8_lossy(&buffer[..len]).into_owned(), fds))
}
