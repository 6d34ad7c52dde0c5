//! The upstreams as given (`--upstream HOST:PORT [weight=N] [drain]`, TOML `upstream = [...]`)
//! and as connected to: a name stands for every address it resolves to, each one upstream,
//! and is resolved again on an interval (`--upstream-resolve-secs`).
//!
//! `getaddrinfo` does not say how long an answer may be kept, so wsedge cannot follow a
//! record's TTL: a name is looked up again every interval (30 s by default, as long as a
//! typical internal record lives), and a lookup that fails keeps the addresses of the last
//! one that worked, so that a resolver outage does not empty the pool.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// The largest weight an upstream may have.
pub const MAX_WEIGHT: u32 = 1000;

/// An upstream as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// A host name or an IP address.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Its share of new clients against the others' (1 by default).
    pub weight: u32,
    /// Marked `drain`: no new clients; its connections are closed over the drain window.
    pub drain: bool,
}

impl UpstreamTarget {
    /// Parses `HOST:PORT`, then optional `weight=N` (1 to 1000) and `drain`, separated by
    /// spaces. `HOST` is a name, an IPv4 address or a bracketed IPv6 one.
    pub fn parse(text: &str) -> Result<UpstreamTarget, String> {
        let mut words = text.split_whitespace();
        let address = words.next().unwrap_or("");
        let (host, port) = address
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty())
            .ok_or("an upstream is HOST:PORT, e.g. 127.0.0.1:9000 or app.internal:80")?;
        let port = match port.parse::<u16>() {
            Ok(0) => return Err("port 0 is not a port an upstream listens on".into()),
            Ok(port) => port,
            Err(_) => return Err(format!("{port:?} is not a port (1 to 65535)")),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let mut target = UpstreamTarget {
            host,
            port,
            weight: 1,
            drain: false,
        };
        for word in words {
            match word.split_once('=') {
                Some(("weight", n)) => {
                    target.weight = n
                        .parse()
                        .ok()
                        .filter(|w| (1..=MAX_WEIGHT).contains(w))
                        .ok_or_else(|| {
                            format!(
                                "weight={n}: a weight is 1 to {MAX_WEIGHT} (use drain for none)"
                            )
                        })?;
                }
                None if word == "drain" => target.drain = true,
                _ => {
                    return Err(format!(
                        "{word:?}: after HOST:PORT come only weight=N and drain"
                    ))
                }
            }
        }
        Ok(target)
    }

    /// The address, if the host is an IP address (no lookup needed).
    pub fn literal(&self) -> Option<SocketAddr> {
        let ip: std::net::IpAddr = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }

    /// Every address the host stands for, in the resolver's order, without repeats.
    pub fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(addr) = self.literal() {
            return Ok(vec![addr]);
        }
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in (self.host.as_str(), self.port).to_socket_addrs()? {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(std::io::Error::other("it resolves to no address"));
        }
        Ok(addrs)
    }
}

impl std::fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// One address to connect to, with its share (its health is on the
/// [`HealthBoard`](super::health::HealthBoard), by address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Its share of new clients.
    pub weight: u32,
    /// No new clients; its connections are closed over the drain window.
    pub drain: bool,
    /// The name it was resolved from, if it was given by name.
    pub name: Option<Arc<str>>,
}

impl Upstream {
    /// An upstream at `addr` with weight 1, healthy, as a test or a literal list gives it.
    pub fn at(addr: SocketAddr) -> Upstream {
        Upstream {
            addr,
            weight: 1,
            drain: false,
            name: None,
        }
    }
}

/// Resolves every target into upstreams. An address already in `previous` keeps its
/// health (the board is by address); a name whose lookup fails keeps its addresses from `previous`. A name that fails
/// with none there is left out, and said in the second list: one name that does not resolve
/// at a reload never takes the others (literal addresses included) with it.
pub fn resolve_all(
    targets: &[UpstreamTarget],
    previous: &[Upstream],
) -> (Vec<Upstream>, Vec<String>) {
    let mut upstreams: Vec<Upstream> = Vec::new();
    let mut unresolved = Vec::new();
    for target in targets {
        let name: Option<Arc<str>> = target
            .literal()
            .is_none()
            .then(|| target.host.as_str().into());
        let addrs = match target.resolve() {
            Ok(addrs) => addrs,
            Err(error) => {
                let kept: Vec<SocketAddr> = previous
                    .iter()
                    .filter(|u| u.name.is_some() && u.name == name && u.addr.port() == target.port)
                    .map(|u| u.addr)
                    .collect();
                if kept.is_empty() {
                    unresolved.push(format!("--upstream {target}: cannot resolve it: {error}"));
                    continue;
                }
                tracing::warn!(upstream = %target, %error, "lookup failed; keeping the last addresses");
                kept
            }
        };
        for addr in addrs {
            if upstreams.iter().any(|u| u.addr == addr) {
                continue;
            }
            upstreams.push(Upstream {
                addr,
                weight: target.weight,
                drain: target.drain,
                name: name.clone(),
            });
        }
    }
    (upstreams, unresolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_weight_and_drain() {
        let t = UpstreamTarget::parse("127.0.0.1:9000 weight=3").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.weight, t.drain),
            ("127.0.0.1", 9000, 3, false)
        );
        let t = UpstreamTarget::parse("[::1]:80 drain").unwrap();
        assert_eq!(t.literal(), Some("[::1]:80".parse().unwrap()));
        assert!(t.drain);
        assert_eq!(t.to_string(), "[::1]:80");
        let t = UpstreamTarget::parse("app.internal:8080").unwrap();
        assert_eq!(t.literal(), None);
        for bad in [
            "127.0.0.1",
            ":80",
            "h:0",
            "h:x",
            "h:1 weight=0",
            "h:1 weight=1001",
            "h:1 heavy",
        ] {
            assert!(UpstreamTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_name_is_every_address_it_resolves_to_again_on_each_lookup() {
        let targets = [
            UpstreamTarget::parse("localhost:9000 weight=2").unwrap(),
            UpstreamTarget::parse("127.0.0.1:9000").unwrap(),
        ];
        let (first, unresolved) = resolve_all(&targets, &[]);
        assert!(unresolved.is_empty());
        assert!(first
            .iter()
            .any(|u| u.addr == "127.0.0.1:9000".parse().unwrap()));
        assert!(
            first.iter().all(|u| u.weight == 2),
            "the literal repeat is dropped"
        );
        let (again, _) = resolve_all(&targets, &first);
        assert_eq!(
            again, first,
            "the same addresses: their health stays on the board"
        );
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_addresses_and_never_drops_the_others() {
        let target = UpstreamTarget::parse("no-such-host.invalid:80").unwrap();
        let literal = UpstreamTarget::parse("10.0.0.9:80").unwrap();
        let targets = [target, literal];
        // Never resolved: left out and said, the literal address stays.
        let (upstreams, unresolved) = resolve_all(&targets, &[]);
        assert_eq!(unresolved.len(), 1, "{unresolved:?}");
        assert!(unresolved[0].contains("no-such-host.invalid"));
        let addrs: Vec<String> = upstreams.iter().map(|u| u.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.9:80"]);
        // Resolved before: its last addresses are kept.
        let previous = [Upstream {
            name: Some("no-such-host.invalid".into()),
            ..Upstream::at("10.0.0.1:80".parse().unwrap())
        }];
        let (kept, unresolved) = resolve_all(&targets, &previous);
        assert!(unresolved.is_empty());
        let addrs: Vec<String> = kept.iter().map(|u| u.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.9:80"]);
    }
}
