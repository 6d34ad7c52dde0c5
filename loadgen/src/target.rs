//! Where the load goes: a `ws://` or `wss://HOST:PORT/path` URL, resolved once.

use std::net::{SocketAddr, ToSocketAddrs};

/// A resolved target.
#[derive(Debug, Clone)]
pub struct Target {
    /// Address connected to.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Request target (path and query).
    pub path: String,
    /// `wss://`: TLS, with SNI and certificate name `server_name`.
    pub tls: bool,
    /// The host without its port.
    pub server_name: String,
}

/// Parses and resolves a `ws://` URL; the error says what is wrong with it.
pub fn parse(url: &str) -> Result<Target, String> {
    let (rest, tls) = if let Some(rest) = url.strip_prefix("ws://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("wss://") {
        (rest, true)
    } else {
        return Err("the URL must start with ws:// or wss://".into());
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    if authority.is_empty() {
        return Err("the URL has no host".into());
    }
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => authority.contains(':'),
    };
    let default_port = if tls { 443 } else { 80 };
    let with_port = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    let server_name = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6).to_owned(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_owned(),
    };
    let server_name = if has_port || authority.starts_with('[') {
        server_name
    } else {
        authority.to_owned()
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;
    Ok(Target {
        addr,
        host: authority.to_owned(),
        path,
        tls,
        server_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_and_paths() {
        let t = parse("ws://127.0.0.1:8080/chat?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/chat?x=1")
        );
        assert_eq!(parse("ws://127.0.0.1").unwrap().addr.port(), 80);
        assert_eq!(
            parse("ws://[::1]:9000").unwrap().addr,
            "[::1]:9000".parse().unwrap()
        );
        assert_eq!(parse("ws://[::1]").unwrap().addr.port(), 80);
        assert_eq!(parse("ws://127.0.0.1:9?q").unwrap().path, "/?q");
        assert!(parse("http://a").unwrap_err().contains("ws://"));
        let secure = parse("wss://localhost:8443/x").unwrap();
        assert!(secure.tls && secure.server_name == "localhost");
        assert_eq!(parse("wss://127.0.0.1").unwrap().addr.port(), 443);
        assert_eq!(parse("wss://[::1]:9").unwrap().server_name, "::1");
        assert!(parse("ws:///x").unwrap_err().contains("no host"));
    }
}
