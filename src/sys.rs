//! The few Linux calls the standard library, `socket2` and `mio` do not wrap.

use std::io;
use std::os::fd::AsRawFd;

/// Raises the soft limit on open descriptors to the hard limit; returns the new limit.
///
/// A storm edge holds one descriptor per connection, and the soft limit (often 1024) is
/// far below what the hard limit allows.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit read back from the kernel above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Sets `TCP_DEFER_ACCEPT`: the kernel completes `accept` only once the client has sent
/// data (or after `secs`), so the first read after accept finds the request.
pub fn set_defer_accept(socket: &impl AsRawFd, secs: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    set_int_option(socket, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, value)
}

/// Sets an integer socket option that `socket2` does not wrap.
pub fn set_int_option(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the descriptor is open (borrowed from a live socket), and the option value
    // points to a c_int whose size is passed alongside it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `net.core.somaxconn`, the kernel's cap on any listen backlog, if readable.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether an `accept` error means the process or system is out of a resource, so that
/// retrying at once would spin (the connection stays queued in the kernel meanwhile).
pub fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Whether opening an upstream connection failed for want of a local resource (descriptors,
/// memory, or an ephemeral port: `EADDRNOTAVAIL`): the edge is overloaded, the upstream is
/// not at fault and should not be passed over.
pub fn is_local_exhaustion(error: &io::Error) -> bool {
    is_resource_exhaustion(error) || error.raw_os_error() == Some(libc::EADDRNOTAVAIL)
}

/// Whether an `accept` error concerns only the one connection (it went away while
/// queued), so accepting should simply go on.
pub fn is_transient_accept_error(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::Interrupted
        || matches!(
            error.raw_os_error(),
            Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM)
        )
}

/// Accepts one connection from `listener` as a non-blocking, close-on-exec socket, in one
/// `accept4` (the listener itself may be blocking or not).
pub fn accept_nonblocking(listener: &std::net::TcpListener) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: the listener's descriptor is open for the call (borrowed); no address is asked
    // for, so no pointer is passed.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// A non-blocking, close-on-exec TCP socket of `addr`'s family, not yet connected: an
/// upstream connection in proxy mode.
pub fn upstream_socket(
    addr: std::net::SocketAddr,
    source: Option<std::net::IpAddr>,
) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    if let Some(source) = source {
        // The port is picked at connect, by the whole 4-tuple, not at bind by the address
        // alone: each source address then has the full port range toward each upstream.
        let no_port: libc::c_int = 1;
        // SAFETY: a valid socket, and a pointer to an int of the size given.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&no_port as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set < 0 {
            return Err(io::Error::last_os_error());
        }
        socket.bind(&std::net::SocketAddr::new(source, 0).into())?;
    }
    Ok(socket)
}

/// Whether `ip` is an address of this host (a socket can be bound to it).
pub fn is_local_address(ip: std::net::IpAddr) -> io::Result<()> {
    std::net::UdpSocket::bind((ip, 0)).map(drop)
}

/// Shuts down the write side of `socket` (a FIN after what was sent). A socket the peer
/// already reset has nothing to shut down, so the error is of no use to the caller.
pub fn shutdown_write(socket: impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(&socket).shutdown(std::net::Shutdown::Write);
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both descriptors are fresh and owned by nothing else.
    Ok(unsafe {
        (
            std::os::fd::FromRawFd::from_raw_fd(fds[0]),
            std::os::fd::FromRawFd::from_raw_fd(fds[1]),
        )
    })
}

/// The capacity of a pipe in bytes (`F_GETPIPE_SZ`).
pub fn pipe_size(pipe: std::os::fd::BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: F_GETPIPE_SZ takes no argument; the descriptor is open (borrowed).
    let size = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ) };
    usize::try_from(size).map_err(|_| io::Error::last_os_error())
}

/// Moves up to `len` bytes from `from` to `to` inside the kernel, without blocking; one of
/// them must be a pipe.
pub fn splice(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: null offsets (both ends are streams); both descriptors are open (borrowed).
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Makes the next close of `socket` a reset (SO_LINGER 0): a relay passes a reset on, and
/// it spares the surviving peer the FIN exchange and a TIME_WAIT entry.
pub fn reset_on_close(socket: impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(&socket).set_linger(Some(std::time::Duration::ZERO));
}

/// Whether `socket`'s peer has gone: it shut down its side (FIN) or reset the connection,
/// whatever unread bytes precede that. One `poll` that does not wait; used on a client
/// that waited at the edge, when its turn comes.
pub fn peer_gone(socket: impl std::os::fd::AsFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut watched = libc::pollfd {
        fd: socket.as_fd().as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&mut watched, 1, 0) };
    ready > 0 && watched.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// What the kernel knows of an accepted connection that nothing has been spent on yet:
/// whether its client is still there, and how long it has waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waited {
    /// The client closed or reset its side (its FIN or RST arrived, whatever data came
    /// before it): it gave up.
    pub left: bool,
    /// Milliseconds since the client's last data arrived: for a connection whose first
    /// bytes are all in (a TLS ClientHello), how long the client has been waiting for an
    /// answer.
    pub ms: u64,
}

/// [`Waited`] for `socket`, from one `TCP_INFO` (`None` if the kernel will not say).
pub fn waited(socket: impl std::os::fd::AsFd) -> Option<Waited> {
    use std::os::fd::AsRawFd;
    // SAFETY: `tcp_info` is plain old data, valid when zeroed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of the size given, written by the kernel.
    let got = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    const TCP_ESTABLISHED: u8 = 1;
    (got == 0).then_some(Waited {
        left: info.tcpi_state != TCP_ESTABLISHED,
        ms: u64::from(info.tcpi_last_data_recv),
    })
}

/// Gives the memory the allocator holds free back to the kernel (glibc's `malloc_trim`,
/// which also releases whole free pages in the middle of its heaps): after a storm of
/// handshakes, what their transient state used stays in the process otherwise.
pub fn return_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sets `TCP_NODELAY` on `socket`. A failure leaves Nagle on, which only delays small
/// writes: nothing to report.
pub fn set_nodelay(socket: impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(&socket).set_tcp_nodelay(true);
}

/// The address of `socket`'s peer, or with `local` the one it reached (`None` once the peer
/// is gone).
pub fn socket_addr(socket: impl std::os::fd::AsFd, local: bool) -> Option<std::net::SocketAddr> {
    let socket = socket2::SockRef::from(&socket);
    let addr = if local {
        socket.local_addr()
    } else {
        socket.peer_addr()
    };
    addr.ok()?.as_socket()
}

/// A non-blocking, close-on-exec eventfd: a counter another thread writes to wake a reader.
pub fn eventfd() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: eventfd has no pointer arguments; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd's counter, waking its reader. A full counter still leaves the reader
/// woken, so a failure is of no use to the caller.
pub fn eventfd_wake(fd: std::os::fd::BorrowedFd<'_>) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live local to an open (borrowed) descriptor.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_exhaustion_is_the_edges_lack_of_descriptors_memory_or_ports() {
        let errno = io::Error::from_raw_os_error;
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(is_local_exhaustion(&errno(code)), "{code}");
        }
        // The upstream's doing: pass it over and try the next.
        for code in [libc::ECONNREFUSED, libc::ENETUNREACH, libc::ETIMEDOUT] {
            assert!(!is_local_exhaustion(&errno(code)), "{code}");
        }
    }
}
