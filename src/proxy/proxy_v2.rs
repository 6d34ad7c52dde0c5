//! The PROXY protocol v2 header (HAProxy's spec, section 2.2): the client's address in
//! binary, before the request, for upstreams that read it (HAProxy, nginx `proxy_protocol`).

use std::net::{IpAddr, SocketAddr};

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
const TCP_OVER_IPV4: u8 = 0x11;
const TCP_OVER_IPV6: u8 = 0x21;

/// Appends the header for a TCP connection from `client` to `local` (the address it
/// reached). Mixed families are written as IPv6, the IPv4 side mapped.
pub fn write_proxy_v2_header(client: SocketAddr, local: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    match (client.ip(), local.ip()) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            out.push(TCP_OVER_IPV4);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&source.octets());
            out.extend_from_slice(&destination.octets());
        }
        (source, destination) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(TCP_OVER_IPV6);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(source).octets());
            out.extend_from_slice(&v6(destination).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&local.port().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_matches_the_spec_layout() {
        let mut out = Vec::new();
        write_proxy_v2_header(
            "192.0.2.1:56324".parse().unwrap(),
            "198.51.100.7:443".parse().unwrap(),
            &mut out,
        );
        let mut expected = SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 7]);
        expected.extend_from_slice(&56324u16.to_be_bytes());
        expected.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(out, expected);
    }

    #[test]
    fn ipv6_and_mixed_families_use_the_ipv6_layout() {
        let mut out = Vec::new();
        write_proxy_v2_header(
            "127.0.0.1:1000".parse().unwrap(),
            "[::1]:80".parse().unwrap(),
            &mut out,
        );
        assert_eq!(out.len(), 16 + 36);
        assert_eq!(&out[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(
            &out[16..32],
            &"::ffff:127.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }
}
