//! Client sockets: source-address rotation without port exhaustion, and how they close.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// An inclusive range of IPv4 source addresses, e.g. `127.0.0.2-127.0.0.254`.
pub fn parse_source_ips(spec: &str) -> Result<Vec<IpAddr>, String> {
    let (first, last) = spec.split_once('-').unwrap_or((spec, spec));
    let parse = |s: &str| {
        s.trim()
            .parse::<std::net::Ipv4Addr>()
            .map_err(|e| format!("{s:?}: {e}"))
    };
    let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
    if last < first || last - first > 1 << 20 {
        return Err("the range must go upwards and hold at most 2^20 addresses".into());
    }
    Ok((first..=last).map(|ip| IpAddr::V4(ip.into())).collect())
}

/// Starts a non-blocking connect to `target`, from `source` if given.
///
/// With a source address the socket sets `IP_BIND_ADDRESS_NO_PORT` before binding to
/// port 0, so the kernel picks the port at connect time from the full 4-tuple: each source
/// address then has its own ephemeral range per destination instead of one shared range.
pub fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<mio::net::TcpStream> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    // No TCP_NODELAY: the request leaves in one write with nothing unacknowledged, which
    // Nagle never delays, and the setsockopt would cost a syscall per connection.
    if let Some(ip) = source {
        set_bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    wsedge::reactor::sys::set_int_option(socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
}

/// Makes the next close send RST instead of FIN: the client keeps no TIME_WAIT and no port.
pub fn reset_on_close(stream: &mio::net::TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// The soft descriptor limit after raising it to the hard one.
pub fn raise_fd_limit() -> u64 {
    wsedge::reactor::sys::raise_fd_limit().unwrap_or(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges() {
        assert_eq!(parse_source_ips("127.0.0.2-127.0.0.4").unwrap().len(), 3);
        assert_eq!(parse_source_ips("127.0.0.9").unwrap().len(), 1);
        assert!(parse_source_ips("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_source_ips("nope").is_err());
    }
}
