//! `--sticky-cookie NAME`: a client stays on the upstream that first served it, for its
//! plain HTTP requests and its upgrade alike (Socket.IO's polling then upgrade, SignalR's
//! negotiate then connect). No I/O.
//!
//! The cookie holds an opaque id of the upstream: a keyed hash of its address, the same in
//! every reactor and every wsedge of the same build (so a client keeps its upstream across
//! edges and restarts), never the address itself. It is not a secret: with a small address
//! space to try, someone who knows the scheme can find which address an id stands for; it
//! only keeps addresses out of view, as HAProxy's and nginx's hashed cookies do.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

/// The id of the upstream at `addr`, as its cookie carries it.
pub fn upstream_id(addr: SocketAddr) -> u64 {
    // DefaultHasher::new() has fixed keys: the same id in every process of a build.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    "wsedge sticky upstream".hash(&mut hasher);
    addr.hash(&mut hasher);
    hasher.finish()
}

/// The id a cookie value names: 16 lowercase hex digits, or nothing.
pub fn parse_id(value: &[u8]) -> Option<u64> {
    if value.len() != 16 || !value.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(value).ok()?, 16).ok()
}

/// The upstream id the request `head` names in its cookie `name`, if it carries one.
pub fn requested_id(head: &[u8], name: &str) -> Option<u64> {
    let mut slots = [httparse::EMPTY_HEADER; crate::handshake::MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(_) = request.parse(head).ok()? else {
        return None;
    };
    super::affinity::cookie(request.headers, name).and_then(parse_id)
}

/// Appends the `Set-Cookie` line (CRLF-terminated) that sends a client to upstream `id`:
/// for every path, out of scripts' reach, not sent on cross-site subrequests, and only
/// over TLS when the client came over TLS.
pub fn write_set_cookie(name: &str, id: u64, secure: bool, out: &mut Vec<u8>) {
    use std::io::Write;
    let secure = if secure { "; Secure" } else { "" };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "Set-Cookie: {name}={id:016x}; Path=/; HttpOnly; SameSite=Lax{secure}\r\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_goes_round_trip_through_its_cookie_and_hides_the_address() {
        let addr: SocketAddr = "10.0.0.7:9000".parse().unwrap();
        let id = upstream_id(addr);
        assert_eq!(id, upstream_id(addr), "stable");
        assert_ne!(id, upstream_id("10.0.0.8:9000".parse().unwrap()));
        let mut line = Vec::new();
        write_set_cookie("srv", id, true, &mut line);
        let line = String::from_utf8(line).unwrap();
        assert!(
            !line.contains("10.0.0.7") && !line.contains("9000"),
            "{line}"
        );
        assert!(
            line.ends_with("; Path=/; HttpOnly; SameSite=Lax; Secure\r\n"),
            "{line}"
        );
        let value = &line["Set-Cookie: srv=".len()..][..16];
        let head = format!("GET / HTTP/1.1\r\nHost: h\r\nCookie: a=b; srv={value}\r\n\r\n");
        assert_eq!(requested_id(head.as_bytes(), "srv"), Some(id));
        let mut plain = Vec::new();
        write_set_cookie("srv", id, false, &mut plain);
        assert!(!String::from_utf8(plain).unwrap().contains("Secure"));
    }

    #[test]
    fn a_cookie_that_is_not_an_id_names_no_upstream() {
        for value in [
            "",
            "xyz",
            "0123456789ABCDEF",
            "0123456789abcdef0",
            "10.0.0.7:9000",
        ] {
            assert_eq!(parse_id(value.as_bytes()), None, "{value}");
        }
        assert_eq!(parse_id(b"00000000000000ff"), Some(255));
    }
}
