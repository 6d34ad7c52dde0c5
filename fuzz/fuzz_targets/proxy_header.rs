//! The PROXY header a balancer sends, read from any bytes: every prefix of a complete
//! header is `Partial` (so that a split read waits instead of refusing), a complete header
//! fits the bytes and gives the same answer whatever follows it, and v1 headers written from
//! the client address read back to it.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use wsedge::proxy::{parse_proxy_header, ProxyHeader};

fuzz_target!(|data: &[u8]| {
    let verdict = parse_proxy_header(data);
    if let ProxyHeader::Complete { len, client } = verdict {
        assert!(len <= data.len(), "a header longer than the bytes");
        for cut in 0..len {
            assert_eq!(parse_proxy_header(&data[..cut]), ProxyHeader::Partial, "prefix {cut}");
        }
        let mut longer = data[..len].to_vec();
        longer.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse_proxy_header(&longer),
            ProxyHeader::Complete { len, client }
        );
    }
    if data.len() >= 6 {
        let ip = IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        let client = SocketAddr::new(ip, u16::from_le_bytes([data[4], data[5]]));
        let line = format!("PROXY TCP4 {} 10.0.0.1 {} 443\r\n", client.ip(), client.port());
        assert_eq!(
            parse_proxy_header(line.as_bytes()),
            ProxyHeader::Complete { len: line.len(), client: Some(client) }
        );
    }
});
