//! Stickiness for `--upstream-balance hash`: the key a client's request carries (a header, a
//! cookie or a query parameter, `--upstream-hash-key`), hashed so that the same key goes to
//! the same upstream. No I/O.
//!
//! The upstream for a key is chosen by rendezvous hashing (highest random weight): every
//! upstream gets a score from the key and its address, the highest wins. Removing one of N
//! upstreams moves only the keys it held (about 1/N), adding one takes about 1/(N+1) of the
//! keys, and no ring has to be built or rebuilt on a reload.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use crate::handshake::MAX_HEADERS;

/// Where the key is (`--upstream-hash-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `header:NAME`: the header's value (the first, if repeated).
    Header(String),
    /// `cookie:NAME`: the cookie's value.
    Cookie(String),
    /// `query:NAME`: the query parameter's value (as sent, not decoded).
    Query(String),
    /// `client-ip`: the client's address (as a PROXY header named it, behind a balancer).
    ClientIp,
}

impl HashKey {
    /// Parses `header:NAME`, `cookie:NAME`, `query:NAME` or `client-ip`.
    pub fn parse(text: &str) -> Result<HashKey, String> {
        if text == "client-ip" {
            return Ok(HashKey::ClientIp);
        }
        let (kind, name) = text
            .split_once(':')
            .filter(|(_, name)| !name.is_empty() && !name.contains([' ', '\t']))
            .ok_or_else(|| {
                format!("{text:?}: expected header:NAME, cookie:NAME, query:NAME or client-ip")
            })?;
        match kind {
            "header" => Ok(HashKey::Header(name.to_owned())),
            "cookie" => Ok(HashKey::Cookie(name.to_owned())),
            "query" => Ok(HashKey::Query(name.to_owned())),
            other => Err(format!(
                "{other:?}: the key is a header:, cookie: or query: (e.g. header:X-User-Id)"
            )),
        }
    }

    /// The hash of this key's value in the request `head` (or of the `client` address),
    /// if the request carries it.
    pub fn hash_of(&self, head: &[u8], client: Option<std::net::IpAddr>) -> Option<u64> {
        if *self == HashKey::ClientIp {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            client?.hash(&mut hasher);
            return Some(hasher.finish());
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut slots);
        let httparse::Status::Complete(_) = request.parse(head).ok()? else {
            return None;
        };
        let value: &[u8] = match self {
            HashKey::Header(name) => request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)?,
            HashKey::Cookie(name) => cookie(request.headers, name)?,
            HashKey::ClientIp => return None,
            HashKey::Query(name) => {
                let path = request.path?;
                let (_, query) = path.split_once('?')?;
                query.split('&').find_map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (key == name).then_some(value.as_bytes())
                })?
            }
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut hasher);
        Some(hasher.finish())
    }
}

/// The value of cookie `name` among the request's `headers` (in any `Cookie` header).
pub(crate) fn cookie<'h>(headers: &[httparse::Header<'h>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .flat_map(|h| h.value.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|&b| b == b'=')?;
            (&pair[..at] == name.as_bytes()).then(|| &pair[at + 1..])
        })
}

/// The rendezvous score of upstream `addr` for a key hashed to `key`: the highest wins.
pub fn score(key: u64, addr: SocketAddr) -> u64 {
    // DefaultHasher::new() has fixed keys: the same key picks the same upstream in every
    // reactor and every process of the same build.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    addr.hash(&mut hasher);
    hasher.finish()
}

/// [`score`] for an upstream of `weight`: the rendezvous score `-weight / ln(u)`, with `u`
/// the score mapped into (0, 1), so that an upstream's share of keys is its share of the
/// weight, and equal weights rank as [`score`] does.
pub fn weighted_score(key: u64, addr: SocketAddr, weight: u32) -> f64 {
    let unit = ((score(key, addr) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight.max(1)) / unit.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"GET /chat?room=42&user=ann HTTP/1.1\r\nHost: h\r\n\
        X-User-Id: u-17\r\nCookie: theme=dark; sid=abc123\r\n\r\n";

    fn hash(value: &[u8]) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut hasher);
        hasher.finish()
    }

    #[test]
    fn the_key_is_found_in_a_header_a_cookie_or_the_query() {
        let key = |text: &str| HashKey::parse(text).unwrap().hash_of(HEAD, None);
        assert_eq!(key("header:x-user-id"), Some(hash(b"u-17")));
        assert_eq!(key("cookie:sid"), Some(hash(b"abc123")));
        assert_eq!(key("query:user"), Some(hash(b"ann")));
        assert_eq!(key("query:room"), Some(hash(b"42")));
        assert_eq!(key("header:X-Missing"), None);
        assert_eq!(key("cookie:missing"), None);
        assert_eq!(key("query:missing"), None);
        assert_eq!(key("client-ip"), None, "no client address known");
        let ip = "10.1.2.3".parse().ok();
        assert_eq!(
            HashKey::ClientIp.hash_of(HEAD, ip),
            HashKey::ClientIp.hash_of(b"", ip)
        );
    }

    #[test]
    fn weights_take_their_share_of_the_keys() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let to_a = (0..4000u64)
            .filter(|n| {
                let key = hash(&n.to_le_bytes());
                weighted_score(key, a, 3) > weighted_score(key, b, 1)
            })
            .count();
        assert!(
            (2800..3200).contains(&to_a),
            "{to_a} of 4000 to the weight-3 upstream"
        );
    }

    #[test]
    fn bad_key_specs_say_what_is_expected() {
        for bad in ["header", "header:", "ip:x", "cookie:a b"] {
            assert!(HashKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn removing_one_of_three_upstreams_moves_only_its_keys() {
        let addrs: Vec<SocketAddr> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let best =
            |key: u64, among: &[SocketAddr]| *among.iter().max_by_key(|&&a| score(key, a)).unwrap();
        let mut moved = 0;
        let mut held_by_removed = 0;
        for n in 0..3000u64 {
            let key = hash(&n.to_le_bytes());
            let before = best(key, &addrs);
            let after = best(key, &addrs[..2]);
            if before != after {
                moved += 1;
                assert_eq!(before, addrs[2], "only the removed upstream's keys move");
            }
            held_by_removed += usize::from(before == addrs[2]);
        }
        assert_eq!(moved, held_by_removed);
        assert!((800..1200).contains(&moved), "{moved} of 3000 moved");
    }
}
