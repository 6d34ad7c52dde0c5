//! The per-reactor listening sockets: one `SO_REUSEPORT` socket per reactor and address,
//! so the kernel spreads incoming connections across reactors with no shared accept lock.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use super::sys;

/// How listeners are set up.
#[derive(Debug, Clone, Copy)]
pub struct ListenOptions {
    /// The accept queue length passed to `listen` (capped by `net.core.somaxconn`).
    pub backlog: u32,
    /// `TCP_DEFER_ACCEPT` in seconds; 0 leaves it off.
    pub defer_accept_secs: u32,
}

/// Binds a non-blocking `SO_REUSEPORT` listener on `addr`.
///
/// `TCP_NODELAY` is set on the listener: Linux copies it to every accepted socket, which
/// saves a `setsockopt` per connection (the 101 must not wait for Nagle).
pub fn bind(addr: SocketAddr, options: ListenOptions) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    if options.defer_accept_secs > 0 {
        sys::set_defer_accept(&socket, options.defer_accept_secs)?;
    }
    socket.bind(&addr.into())?;
    let backlog = i32::try_from(options.backlog).unwrap_or(i32::MAX);
    socket.listen(backlog)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let options = ListenOptions {
            backlog: 16,
            defer_accept_secs: 0,
        };
        let listener = bind("127.0.0.1:0".parse().unwrap(), options).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn two_reactors_share_one_port() {
        let options = ListenOptions {
            backlog: 16,
            defer_accept_secs: 1,
        };
        let first = bind("127.0.0.1:0".parse().unwrap(), options).unwrap();
        let second = bind(first.local_addr().unwrap(), options).unwrap();
        assert_eq!(first.local_addr().unwrap(), second.local_addr().unwrap());
    }
}
