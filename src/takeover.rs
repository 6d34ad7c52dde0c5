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

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
/// How long either side waits for the other's next message: a process that is starting may
/// take a while (reading certificates, setting up rings), a dead one closes the socket.
const PATIENCE: Duration = Duration::from_secs(60);

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

/// Connects to a running wsedge offering its sockets at `path` and receives them; `None`
/// when nothing answers there (no file, or a file no process listens on): bind as usual.
pub fn receive(path: &Path) -> Result<Option<Received>, TakeoverError> {
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
    set_patience(&channel).map_err(socket_error)?;
    let (greeting, _) = receive_message(&channel).map_err(socket_error)?;
    let count = greeting
        .strip_prefix(GREETING)
        .and_then(|rest| rest.trim().parse::<usize>().ok())
        .ok_or_else(|| protocol(format!("not a wsedge offering its sockets: {greeting:?}")))?;
    let mut listeners = Vec::with_capacity(count);
    while listeners.len() < count {
        let (lines, fds) = receive_message(&channel).map_err(socket_error)?;
        let kinds: Vec<&str> = lines.lines().collect();
        if kinds.len() != fds.len() || fds.is_empty() {
            return Err(protocol(format!(
                "{} descriptors for {} lines",
                fds.len(),
                kinds.len()
            )));
        }
        for (line, fd) in kinds.into_iter().zip(fds) {
            let tls = match line.split_once(' ').map(|(kind, _)| kind) {
                Some("plain") => false,
                Some("tls") => true,
                _ => return Err(protocol(format!("unknown socket {line:?}"))),
            };
            let socket = std::net::TcpListener::from(fd);
            listeners.push(Listening { socket, tls });
        }
    }
    Ok(Some(Received {
        listeners,
        channel,
        path: path.to_owned(),
    }))
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
    let addr = UnixAddr::new(path).map_err(|e| socket_error(e.into()))?;
    socket::bind(listener.as_raw_fd(), &addr).map_err(|e| socket_error(e.into()))?;
    let backlog = Backlog::new(4).map_err(|e| socket_error(e.into()))?;
    socket::listen(&listener, backlog).map_err(|e| socket_error(e.into()))?;
    let listener = Arc::new(listener);
    let serving = Arc::clone(&listener);
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name("wsedge-takeover".into())
        .spawn(move || {
            loop {
                let channel = match socket::accept4(&*serving, SockFlag::SOCK_CLOEXEC) {
                    Ok(channel) => channel,
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                    // Shut down (`Offer::stop`), or unusable: the offer ends.
                    Err(_) => return,
                };
                match hand_over(&channel, &listeners) {
                    Ok(()) => {
                        tracing::info!("--takeover {shown}: a new process took the listening sockets over");
                        drop(listeners);
                        on_taken();
                        return;
                    }
                    Err(error) => tracing::warn!(
                        "--takeover {shown}: a new process did not take over ({error}); still serving"
                    ),
                }
            }
        })
        .map_err(socket_error)?;
    Ok(Offer { listener })
}

/// Sends `listeners` on `channel` and waits for the new process to be ready.
fn hand_over(channel: &OwnedFd, listeners: &[Listening]) -> io::Result<()> {
    set_patience(channel)?;
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
    let (answer, _) = receive_message(channel)?;
    if answer != "ready" {
        return Err(io::Error::other(format!("expected ready, got {answer:?}")));
    }
    send_message(channel, "bye", &[])
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

fn set_patience(channel: &OwnedFd) -> io::Result<()> {
    let patience = nix::sys::time::TimeVal::new(PATIENCE.as_secs() as _, 0);
    socket::setsockopt(channel, socket::sockopt::ReceiveTimeout, &patience)?;
    socket::setsockopt(channel, socket::sockopt::SendTimeout, &patience)?;
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
