//! What the PROXY v2 writer writes parses back (by the spec's layout) to the same addresses.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use wsedge::proxy::write_proxy_v2_header;

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn addr(data: &[u8]) -> SocketAddr {
    let port = u16::from_le_bytes([data[0], data[1]]);
    let ip = if data[2] & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(data[3], data[4], data[5], data[6]))
    } else {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&data[3..19]);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    SocketAddr::new(ip, port)
}

/// The addresses a PROXY v2 reader takes from `header`, v4-mapped addresses unmapped.
fn parse(header: &[u8]) -> (SocketAddr, SocketAddr) {
    assert_eq!(&header[..12], SIGNATURE);
    assert_eq!(header[12], 0x21, "version 2, PROXY command");
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    assert_eq!(header.len(), 16 + len, "length field");
    let body = &header[16..];
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match header[13] {
        0x11 => {
            assert_eq!(len, 12);
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]));
            (SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10)))
        }
        0x21 => {
            assert_eq!(len, 36);
            let ip = |at: usize| {
                let octets: [u8; 16] = body[at..at + 16].try_into().unwrap();
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            (SocketAddr::new(ip(0), port(32)), SocketAddr::new(ip(16), port(34)))
        }
        family => panic!("family {family:#x}"),
    }
}

fn same(written: SocketAddr, read: SocketAddr) -> bool {
    let unmap = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    written.port() == read.port() && unmap(written.ip()) == unmap(read.ip())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 38 {
        return;
    }
    let (client, local) = (addr(&data[..19]), addr(&data[19..38]));
    let mut out = Vec::new();
    write_proxy_v2_header(client, local, &mut out);
    let (read_client, read_local) = parse(&out);
    assert!(same(client, read_client), "{client} read back as {read_client}");
    assert!(same(local, read_local), "{local} read back as {read_local}");
});
