//! The PROXY protocol header an L4 balancer in front (HAProxy `send-proxy`/`send-proxy-v2`,
//! a cloud load balancer, IPVS with a helper) puts before a client's bytes: versions 1 (text)
//! and 2 (binary), told apart by their signatures (HAProxy's spec, sections 2.1 and 2.2).
//! No I/O: bytes so far in, a verdict out, for any split of the bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// A v1 header's longest form (section 2.1), CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 header accepted: the addresses and room for the TLVs balancers add
/// (AWS's VPC endpoint id, Azure's link id, SSL details); longer is refused.
pub const V2_MAX: usize = 16 + 1024;

/// What the first bytes of a connection from a balancer say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// Not all of the header is here yet.
    Partial,
    /// A whole header of `len` bytes: the client's address, or `None` for a connection
    /// the balancer made itself (v2 `LOCAL`, v1 `UNKNOWN`: a health check), which is then
    /// its own client.
    Complete {
        /// Bytes the header takes; the client's bytes follow.
        len: usize,
        /// The client's address as the balancer saw it.
        client: Option<SocketAddr>,
    },
    /// Not a PROXY header, or a malformed one.
    Invalid(&'static str),
}

/// Reads the PROXY header at the start of `bytes` (everything received so far).
pub fn parse_proxy_header(bytes: &[u8]) -> ProxyHeader {
    let prefix = |signature: &[u8]| {
        let n = bytes.len().min(signature.len());
        bytes[..n] == signature[..n]
    };
    if prefix(&V2_SIGNATURE) {
        return parse_v2(bytes);
    }
    if prefix(V1_PREFIX) {
        return parse_v1(bytes);
    }
    ProxyHeader::Invalid("no PROXY protocol signature")
}

fn parse_v2(bytes: &[u8]) -> ProxyHeader {
    let Some(fixed) = bytes.get(..16) else {
        return ProxyHeader::Partial;
    };
    let (version_command, family) = (fixed[12], fixed[13]);
    let len = 16 + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if version_command >> 4 != 2 {
        return ProxyHeader::Invalid("PROXY v2: unknown version");
    }
    if len > V2_MAX {
        return ProxyHeader::Invalid("PROXY v2: header too long");
    }
    let Some(body) = bytes.get(16..len) else {
        return ProxyHeader::Partial;
    };
    match version_command & 0x0F {
        // LOCAL: the balancer's own connection; the addresses, if any, are ignored.
        0x0 => return ProxyHeader::Complete { len, client: None },
        0x1 => {}
        _ => return ProxyHeader::Invalid("PROXY v2: unknown command"),
    }
    let client = match family {
        // TCP or UDP over IPv4: source, destination, source port, destination port.
        0x11 | 0x12 => {
            let Some(a) = body.get(..12) else {
                return ProxyHeader::Invalid("PROXY v2: IPv4 addresses cut short");
            };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            ))
        }
        0x21 | 0x22 => {
            let Some(a) = body.get(..36) else {
                return ProxyHeader::Invalid("PROXY v2: IPv6 addresses cut short");
            };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // UNSPEC (or a Unix socket): nothing usable; the connection stands for itself.
        0x00 | 0x31 | 0x32 => None,
        _ => return ProxyHeader::Invalid("PROXY v2: unknown address family"),
    };
    ProxyHeader::Complete { len, client }
}

fn parse_v1(bytes: &[u8]) -> ProxyHeader {
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return match bytes.len() >= V1_MAX {
            true => ProxyHeader::Invalid("PROXY v1: no CRLF within 107 bytes"),
            false => ProxyHeader::Partial,
        };
    };
    let len = end + 2;
    let Ok(line) = std::str::from_utf8(&bytes[V1_PREFIX.len()..end]) else {
        return ProxyHeader::Invalid("PROXY v1: not text");
    };
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        return ProxyHeader::Complete { len, client: None };
    }
    let fields: Vec<&str> = fields.collect();
    let [source, _destination, source_port, _destination_port] = fields[..] else {
        return ProxyHeader::Invalid("PROXY v1: expected 4 fields after the family");
    };
    let ip = match (family, source.parse::<IpAddr>()) {
        ("TCP4", Ok(ip @ IpAddr::V4(_))) | ("TCP6", Ok(ip @ IpAddr::V6(_))) => ip,
        ("TCP4" | "TCP6", _) => return ProxyHeader::Invalid("PROXY v1: bad source address"),
        _ => return ProxyHeader::Invalid("PROXY v1: unknown family"),
    };
    // Ports are decimal without sign or leading zeros (spec: 0..65535).
    let port_ok = !source_port.is_empty()
        && source_port.bytes().all(|b| b.is_ascii_digit())
        && !(source_port.len() > 1 && source_port.starts_with('0'));
    match source_port.parse::<u16>() {
        Ok(port) if port_ok => ProxyHeader::Complete {
            len,
            client: Some(SocketAddr::new(ip, port)),
        },
        _ => ProxyHeader::Invalid("PROXY v1: bad source port"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::write_proxy_v2_header;

    fn complete(bytes: &[u8]) -> (usize, Option<SocketAddr>) {
        match parse_proxy_header(bytes) {
            ProxyHeader::Complete { len, client } => (len, client),
            other => panic!("{other:?} for {bytes:?}"),
        }
    }

    #[test]
    fn v2_written_by_our_own_writer_reads_back_for_both_families() {
        for (client, local) in [
            ("198.51.100.4:40000", "10.0.0.1:443"),
            ("[2001:db8::7]:5555", "[2001:db8::1]:443"),
        ] {
            let (client, local) = (client.parse().unwrap(), local.parse().unwrap());
            let mut header = Vec::new();
            write_proxy_v2_header(client, local, &mut header);
            let total = header.len();
            header.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(complete(&header), (total, Some(client)));
        }
    }

    #[test]
    fn every_prefix_of_a_header_is_partial() {
        let mut v2 = Vec::new();
        write_proxy_v2_header(
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.2:2".parse().unwrap(),
            &mut v2,
        );
        let v1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n".to_vec();
        for header in [v2, v1] {
            for cut in 0..header.len() {
                assert_eq!(
                    parse_proxy_header(&header[..cut]),
                    ProxyHeader::Partial,
                    "{cut}"
                );
            }
        }
    }

    #[test]
    fn v1_gives_the_source_and_unknown_gives_none() {
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\nGET";
        let client = "[2001:db8::7]:56324".parse().unwrap();
        assert_eq!(complete(line), (line.len() - 3, Some(client)));
        assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (15, None));
        let health = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        assert_eq!(complete(health), (health.len(), None));
    }

    #[test]
    fn v2_local_is_the_balancers_own_connection() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(complete(&header), (16, None));
    }

    #[test]
    fn garbage_and_malformed_headers_are_invalid() {
        let cases: [&[u8]; 9] = [
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 56324\r\n",
            b"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 99999 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 0080 2\r\n",
            b"PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04",
        ];
        for case in cases {
            assert!(
                matches!(parse_proxy_header(case), ProxyHeader::Invalid(_)),
                "{case:?}: {:?}",
                parse_proxy_header(case)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
        assert!(matches!(parse_proxy_header(&long), ProxyHeader::Invalid(_)));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert!(matches!(parse_proxy_header(&huge), ProxyHeader::Invalid(_)));
    }
}
