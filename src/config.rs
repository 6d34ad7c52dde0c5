//! Command-line flags and their validation. A bad value is a one-line error that names
//! the flag, with exit code 2 (clap's convention for usage errors).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::conn::{AfterUpgrade, ConnConfig};
use crate::handshake::Policy;
use crate::proxy::{Forwarding, ProxyConfig};
use crate::reactor::{Backend, Limits, ListenOptions, ServerConfig};
use crate::tls::{TlsGroup, TlsSettings, TlsVersion};

/// Longest subprotocol name accepted (the 101 must fit the response buffer).
const MAX_SUBPROTOCOL_LEN: usize = 128;

/// wsedge: a WebSocket edge that absorbs connection storms.
#[derive(Debug, Parser)]
#[command(name = "wsedge", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
// Parsed once at startup: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Accept WebSocket upgrades and close or echo.
    Serve(ServeArgs),
    /// Perform one handshake against URL and say which link of it broke, if any.
    ///
    /// Exit codes: 0 upgraded; 3 not upgraded (2xx/3xx: a proxy ate the upgrade, a
    /// redirect); 4 refused (4xx/5xx); 5 an invalid 101; 6 network (DNS, connect, reset,
    /// timeout); 7 TLS; 2 a usage error.
    Check(CheckArgs),
}

/// Flags of `wsedge check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// ws:// or wss:// URL.
    #[arg(value_name = "URL", value_parser = parse_check_url)]
    pub url: String,
    /// Subprotocol to offer (repeatable, in preference order).
    #[arg(long = "subprotocol", value_parser = parse_subprotocol)]
    pub subprotocols: Vec<String>,
    /// Origin header to send (browsers always send one).
    #[arg(long)]
    pub origin: Option<String>,
    /// Extra header, 'Name: value' (repeatable).
    #[arg(long = "header", value_parser = crate::values::header_line)]
    pub headers: Vec<String>,
    /// Bearer token, sent as Authorization: Bearer (masked in the output).
    #[arg(long, value_parser = parse_token)]
    pub token: Option<String>,
    /// Bound on each step: resolve, connect, TLS, response (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_timeout)]
    pub timeout: std::time::Duration,
    /// Do not check the server's certificate (said loudly in the output).
    #[arg(long)]
    pub insecure: bool,
    /// After a 101, send a ping, time the pong, close with 1000 and report the close code.
    #[arg(long)]
    pub ping: bool,
    /// Print the facts and the verdict as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// URL is a Socket.IO (Engine.IO 4) path, e.g. ws://host/socket.io/: do its polling
    /// handshake (sid, pingInterval, upgrades), then the upgrade with that sid and the
    /// cookies set, then 2probe, 3probe, 5; name the link that broke.
    #[arg(long, conflicts_with_all = ["sockjs", "ping"])]
    pub socketio: bool,
    /// URL is a SockJS prefix, e.g. ws://host/sockjs: GET /info, then the upgrade to
    /// /<server>/<session>/websocket and its open frame; name the link that broke.
    #[arg(long, conflicts_with = "ping")]
    pub sockjs: bool,
    /// Over HTTP/2 (RFC 8441): ALPN h2 for wss://, prior knowledge for ws://; show the
    /// server's SETTINGS (is extended CONNECT allowed?), the CONNECT and its status.
    #[arg(long, conflicts_with_all = ["socketio", "sockjs", "ping"])]
    pub h2: bool,
}

fn parse_check_url(value: &str) -> Result<String, String> {
    crate::check::parse_url(value).map(|_| value.to_owned())
}

/// `check --timeout`: a duration of at most an hour.
fn parse_timeout(value: &str) -> Result<std::time::Duration, String> {
    crate::values::duration_up_to(value, std::time::Duration::from_secs(3600))
}

/// I/O backend choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoBackend {
    /// epoll via mio.
    Epoll,
    /// io_uring; refused at startup when the kernel does not allow it.
    Uring,
    /// io_uring when the kernel allows it, else epoll.
    Auto,
}

/// Flags of `wsedge serve`.
#[derive(Debug, Clone, Args)]
#[command(args_override_self = true)]
pub struct ServeArgs {
    /// Read flags from a TOML file (keys are the flag names: `max-connections = 10000`);
    /// flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (repeatable; IPv6 as [::1]:8080; port 0 picks a free port)
    /// [default: 127.0.0.1:8080, unless only --listen-tls is given].
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Address to listen on for TLS, `wss://` (repeatable, beside --listen); needs
    /// --tls-cert and --tls-key.
    #[arg(long = "listen-tls", value_name = "ADDR")]
    pub listen_tls: Vec<SocketAddr>,
    /// Certificate chain, PEM, the server's certificate first (repeatable, paired in order
    /// with --tls-key; chosen by SNI, the first for clients that name none).
    #[arg(long = "tls-cert", value_name = "FILE")]
    pub tls_certs: Vec<PathBuf>,
    /// Private key, PEM, of the --tls-cert in the same place (repeatable).
    #[arg(long = "tls-key", value_name = "FILE")]
    pub tls_keys: Vec<PathBuf>,
    /// TLS versions offered.
    #[arg(long, value_name = "VERSIONS", value_delimiter = ',', default_value = "1.2,1.3", value_parser = parse_tls_version)]
    pub tls_versions: Vec<TlsVersion>,
    /// Key-exchange groups, most preferred first (x25519, secp256r1, secp384r1,
    /// x25519mlkem768) [default: rustls's: x25519, secp256r1, secp384r1, then the hybrid
    /// x25519mlkem768].
    #[arg(long, value_name = "GROUPS", value_delimiter = ',', value_parser = crate::values::tls_group)]
    pub tls_groups: Vec<TlsGroup>,
    /// Offer HTTP/2 on the TLS listeners (ALPN h2 beside http/1.1, with
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL): WebSockets arrive as extended CONNECT streams
    /// (RFC 8441), as browsers send them over a connection they already hold.
    #[arg(long)]
    pub h2: bool,
    /// Accept HTTP/2 with prior knowledge (h2c) on the plain listeners, beside HTTP/1.1:
    /// for internal hops (a balancer with `ws h2` toward wsedge).
    #[arg(long)]
    pub h2c: bool,
    /// Reactor threads [default: number of CPUs].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub threads: Option<NonZeroUsize>,
    /// Do not pin reactor threads to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// I/O backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub io: IoBackend,
    /// What to do after the 101.
    #[arg(long, value_enum, default_value = "echo")]
    pub after: AfterUpgrade,
    /// Serve only this path (repeatable; default: any path). Others get 404.
    #[arg(long = "path", value_name = "PATH", value_parser = parse_path)]
    pub paths: Vec<String>,
    /// Subprotocols the server speaks, most preferred first.
    #[arg(long, value_name = "A,B", value_delimiter = ',', value_parser = parse_subprotocol)]
    pub subprotocols: Vec<String>,
    /// Refuse (400) clients that offer none of --subprotocols.
    #[arg(long, requires = "subprotocols")]
    pub require_subprotocol: bool,
    /// Allowed Origin (repeatable; default: any). Others get 403.
    #[arg(long = "allowed-origin", value_name = "ORIGIN", value_parser = parse_origin)]
    pub allowed_origins: Vec<String>,
    /// Bearer token clients must present (Authorization: Bearer, or ?access_token=).
    #[arg(long, value_name = "TOKEN", conflicts_with = "auth_token_file", value_parser = parse_token)]
    pub auth_token: Option<String>,
    /// Read the bearer token from FILE (first line), keeping it out of `ps`.
    #[arg(long, value_name = "FILE", value_parser = read_token_file)]
    pub auth_token_file: Option<TokenFromFile>,
    /// Time from accept to a complete handshake request, in ms.
    #[arg(long, value_name = "MS", allow_negative_numbers = true, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub handshake_timeout_ms: u64,
    /// How long TLS clients wait for their answer before they give up (their attempt
    /// timeout: 5s, 20s ...): a client that has waited so long that its handshake would end
    /// later is reset before any key exchange is spent on it (one that left is, always).
    /// Default: the handshake timeout.
    #[arg(long, value_name = "DURATION", value_parser = |v: &str| crate::values::duration_up_to(v, std::time::Duration::from_secs(3600)))]
    pub client_patience: Option<std::time::Duration>,
    /// Close upgraded connections silent this long with 1001, in ms; 0 = never.
    #[arg(long, value_name = "MS", allow_negative_numbers = true, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=604_800_000))]
    pub idle_timeout_ms: u64,
    /// Close a connection whose client takes none of its pending output this long, in ms
    /// (a client that stops reading), in every phase.
    #[arg(long, value_name = "MS", allow_negative_numbers = true, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub send_timeout_ms: u64,
    /// Largest request header block, in bytes (431 beyond).
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(256..=1_048_576))]
    pub max_header_bytes: u64,
    /// Largest message in echo mode, in bytes (close 1009 beyond).
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true, default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(125..=1_073_741_824))]
    pub max_message_bytes: u64,
    /// Listen backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value_t = 65_535, value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    pub backlog: u32,
    /// Connections held at most (upgraded, handshaking, closing); over it new clients get
    /// 503 with a jittered Retry-After, without their request being read; 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections: usize,
    /// Handshakes in progress at most (slow or silent clients); over it, 503; 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_pending_handshakes: usize,
    /// Connections one client address (IPv4, or IPv6 /64) may hold; over it, 429; 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections_per_ip: u32,
    /// Handshakes per second one client address may start (token bucket); over it, 429.
    #[arg(long, value_name = "R", default_value_t = 0)]
    pub max_handshakes_per_ip_per_sec: u64,
    /// Range the Retry-After of a 503 or 429 is drawn from, in seconds (jitter spreads the
    /// wave), or auto: each refused client gets the next return slot at the rate this
    /// server measures it upgrades clients, so that the refused come back over the time it
    /// needs for them. Default: auto in proxy mode (the app servers' pace), else 5-30.
    #[arg(long, value_name = "MIN-MAX|auto", value_parser = crate::policy::RetryAfter::parse)]
    pub retry_after_secs: Option<crate::policy::RetryAfter>,
    /// Hand listening sockets over between processes through a Unix socket at PATH: take them
    /// from a running wsedge offering them there (which then drains and exits), and offer
    /// them there in turn. With nothing answering at PATH, bind as usual.
    #[arg(long, value_name = "PATH")]
    pub takeover: Option<PathBuf>,
    /// On SIGTERM (or after handing over, see --takeover), close upgraded connections at
    /// times spread over this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub drain_secs: u64,
    /// Close code sent when draining: 1012 (Service Restart) or 1001 (Going Away).
    #[arg(long, value_name = "CODE", default_value_t = 1012, value_parser = parse_drain_code)]
    pub drain_close_code: u16,
    /// Log a one-line summary (rates, open connections, refusals) every SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub stats_interval: Option<u64>,
    /// Serve GET /metrics (Prometheus text) and GET /healthz on this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// App server to relay validated upgrades to: "HOST:PORT [weight=N] [drain]"
    /// (repeatable; a name stands for every address it resolves to). Required by --after
    /// proxy.
    #[arg(long = "upstream", value_name = "HOST:PORT", value_parser = parse_upstream)]
    pub upstreams: Vec<crate::proxy::UpstreamTarget>,
    /// How often an upstream given by name is looked up again, in seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub upstream_resolve_secs: u64,
    /// Check every upstream this often, in ms (0: no active checks; clients' failed
    /// connections still pass an upstream over).
    #[arg(long, value_name = "MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub upstream_health_interval_ms: u64,
    /// What a health check does: tcp (connect), http:PATH (GET, 2xx or 3xx) or
    /// websocket[:PATH] (a valid 101).
    #[arg(long, value_name = "KIND", default_value = "websocket:/", value_parser = crate::proxy::health::CheckKind::parse)]
    pub upstream_health_check: crate::proxy::health::CheckKind,
    /// Bound on one health check, in ms [default: the smaller of 1000 and the interval].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub upstream_health_timeout_ms: Option<u64>,
    /// Health checks passed in a row that bring a down upstream back.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub upstream_health_rise: u32,
    /// Failures in a row (health checks, or clients' connections refused, timed out or
    /// answered with an invalid 101) that take an upstream out of rotation.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub upstream_health_fall: u32,
    /// GET /healthz answers 503 "degraded" when fewer than this percentage of the
    /// upstreams are up (0: never).
    #[arg(long, value_name = "PERCENT", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub healthz_min_upstreams_up: u8,
    /// Bound on connecting to an upstream, in ms (then 504).
    #[arg(long, value_name = "MS", allow_negative_numbers = true, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub upstream_connect_timeout_ms: u64,
    /// Bound on the upstream's answer to the forwarded request, in ms (then 504).
    #[arg(long, value_name = "MS", allow_negative_numbers = true, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub upstream_response_timeout_ms: u64,
    /// How the next upstream is chosen: round-robin, least-connections (the fewest live
    /// relayed connections from this reactor; ties in turn), or hash (of the client's key,
    /// --upstream-hash-key: the same key to the same upstream).
    #[arg(long, value_enum, value_name = "HOW", default_value = "round-robin")]
    pub upstream_balance: crate::proxy::Balance,
    /// Where the client's key is for --upstream-balance hash: header:NAME, cookie:NAME,
    /// query:NAME or client-ip (a request without it goes round-robin).
    #[arg(long, value_name = "KIND:NAME", value_parser = crate::proxy::HashKey::parse)]
    pub upstream_hash_key: Option<crate::proxy::HashKey>,
    /// Live relayed connections one upstream may hold (split evenly over the reactors);
    /// over it the next upstream is tried, and when all are full the client gets 503 with
    /// a jittered Retry-After. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub upstream_max_connections: u32,
    /// Upgrades forwarded to one upstream and not answered yet, at most (split over the
    /// reactors; relays established do not count): N, or auto to find it from the
    /// upstream's answer latency as it goes. Clients past it wait at the edge
    /// (--upstream-queue-ms), newest first under overload.
    #[arg(long, value_name = "N|auto", default_value = "auto", value_parser = crate::proxy::pending::PendingLimit::parse)]
    pub upstream_max_pending: crate::proxy::pending::PendingLimit,
    /// How long a client waits at the edge for an upstream to take its upgrade, in ms;
    /// then 503 with Retry-After. 0: no wait. Default: 4000 (less when waiting clients are
    /// seen to give up sooner).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub upstream_queue_ms: Option<u64>,
    /// Forward requests that are not upgrades, on paths under PREFIX, to the upstreams as
    /// plain HTTP/1.1 (repeatable; e.g. /socket.io/ for Engine.IO's polling, /sockjs/ for
    /// SockJS's /info): one request per connection, the body bounded by --http-max-body.
    /// Default: none (every request that is not an upgrade gets 426).
    #[arg(long = "http-path", value_name = "PREFIX", value_parser = parse_path)]
    pub http_paths: Vec<String>,
    /// Bound on the upstream's response to a forwarded HTTP request (a long poll is held
    /// for tens of seconds), then 504; and on a response's silence once it flows.
    /// Default: 60s.
    #[arg(long, value_name = "DURATION", value_parser = |v: &str| crate::values::duration_up_to(v, std::time::Duration::from_secs(3600)))]
    pub http_timeout: Option<std::time::Duration>,
    /// Largest request body forwarded under --http-path, in bytes (413 beyond) [default:
    /// 1048576, Socket.IO's own limit].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(0..=67_108_864))]
    pub http_max_body: Option<u64>,
    /// Keep each client on one upstream with a cookie of this name: a response to a client
    /// without it (or whose upstream is down or draining) sets it to an opaque id of the
    /// upstream that served it; requests and upgrades carrying it go there.
    /// --upstream-balance picks for clients without it.
    #[arg(long, value_name = "NAME", value_parser = parse_cookie_name)]
    pub sticky_cookie: Option<String>,
    /// A local address to open upstream connections from (repeatable: they take turns),
    /// so that each adds a full range of local ports toward each upstream (nginx's
    /// proxy_bind, HAProxy's source). Default: the kernel's choice.
    #[arg(long = "upstream-source", value_name = "ADDR")]
    pub upstream_sources: Vec<std::net::IpAddr>,
    /// Pass the client's address as a PROXY protocol header instead of X-Forwarded-For.
    #[arg(long, value_enum, value_name = "VERSION")]
    pub upstream_proxy_protocol: Option<Forwarding>,
    /// Connections start with a PROXY protocol header (v1 or v2, from an L4 balancer) that
    /// names the client: its address counts for per-address limits, X-Forwarded-For, the
    /// PROXY header sent upstream. Needs --proxy-protocol-from.
    #[arg(long)]
    pub accept_proxy_protocol: bool,
    /// Network a balancer sending PROXY headers connects from, CIDR (repeatable);
    /// connections from elsewhere are refused.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// TCP_DEFER_ACCEPT seconds: accept only once the client has sent data; 0 = off.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub defer_accept_secs: u32,
}

/// A token read from a file (kept apart from `String` so that it never prints).
#[derive(Clone)]
pub struct TokenFromFile(pub String);

impl std::fmt::Debug for TokenFromFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenFromFile(<redacted>)")
    }
}

fn parse_cidr(value: &str) -> Result<ipnet::IpNet, String> {
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{value:?} is not a CIDR (10.0.0.0/8, 2001:db8::/32) or an address"))
}

fn parse_tls_version(value: &str) -> Result<TlsVersion, String> {
    match value.trim() {
        "1.2" => Ok(TlsVersion::V1_2),
        "1.3" => Ok(TlsVersion::V1_3),
        _ => Err("TLS versions are 1.2 and 1.3, e.g. 1.2,1.3 or 1.3".into()),
    }
}

/// Parses an upstream as written; names are looked up by [`ServeArgs::server_config_after`]
/// (a value parser does no I/O: a reload parses again, and a lookup failing then must not
/// refuse the whole file).
fn parse_upstream(value: &str) -> Result<crate::proxy::UpstreamTarget, String> {
    crate::proxy::UpstreamTarget::parse(value)
}

/// `--upstream-queue-ms` when not given: common WebSocket clients give an attempt 4-20 s
/// (reconnecting-websocket 4, Phoenix 10, Socket.IO 20). A client refused with a time to
/// come back before it gives up returns when told; one that times out returns at its
/// backoff's whim, and the answer the app computed for it is lost. Measured in a storm of
/// 8,000 clients through the edge to a 2 ms app (docs/performance.md#storms-through-the-edge):
/// with a 4 s wait, 5 s clients and Socket.IO's 20 s clients were all back within 1.2x the
/// app's floor with 1.8 attempts each; a 10 s wait took 5 s clients 2.3 attempts.
const DEFAULT_QUEUE_MS: u64 = 4_000;

fn parse_drain_code(value: &str) -> Result<u16, String> {
    match value {
        "1012" => Ok(1012),
        "1001" => Ok(1001),
        _ => Err("the drain close code is 1012 (Service Restart) or 1001 (Going Away)".into()),
    }
}

fn parse_path(value: &str) -> Result<String, String> {
    if !value.starts_with('/') {
        return Err("a path must start with '/'".into());
    }
    if value.contains('?') || value.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("a path may not contain '?', spaces or control characters".into());
    }
    Ok(value.to_owned())
}

fn parse_cookie_name(value: &str) -> Result<String, String> {
    if value.is_empty() || !value.bytes().all(is_token_char) || value.len() > 64 {
        return Err(
            "a cookie name is an HTTP token of at most 64 bytes (letters, digits, \
             !#$%&'*+-.^_`|~)"
                .into(),
        );
    }
    Ok(value.to_owned())
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_subprotocol(value: &str) -> Result<String, String> {
    if value.is_empty() || !value.bytes().all(is_token_char) {
        return Err(
            "a subprotocol must be a non-empty HTTP token (letters, digits, !#$%&'*+-.^_`|~)"
                .into(),
        );
    }
    if value.len() > MAX_SUBPROTOCOL_LEN {
        return Err(format!(
            "a subprotocol may be at most {MAX_SUBPROTOCOL_LEN} bytes"
        ));
    }
    Ok(value.to_owned())
}

fn parse_origin(value: &str) -> Result<String, String> {
    let valid = ["http://", "https://"]
        .iter()
        .any(|s| value.len() > s.len() && value.starts_with(s))
        && !value
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .contains('/');
    if valid || value == "null" {
        Ok(value.to_owned())
    } else {
        Err("an origin is scheme://host[:port] with no path, e.g. https://app.example.com".into())
    }
}

fn parse_token(value: &str) -> Result<String, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token must be non-empty printable ASCII without spaces".into());
    }
    Ok(value.to_owned())
}

fn read_token_file(value: &str) -> Result<TokenFromFile, String> {
    let text = std::fs::read_to_string(PathBuf::from(value))
        .map_err(|e| format!("cannot read it: {e}"))?;
    let token = text.lines().next().unwrap_or("").trim();
    parse_token(token)
        .map(|t| TokenFromFile(t.to_owned()))
        .map_err(|e| format!("its first line is not a valid token: {e}"))
}

/// Linger after a rejection or a Close: long enough for the response to reach the client.
const LINGER_MS: u64 = 2_000;

impl ServeArgs {
    /// Checks what needs the host: every `--upstream-source` is one of its addresses (at
    /// startup and at each reload).
    pub fn check_host(&self) -> Result<(), String> {
        for source in &self.upstream_sources {
            if let Err(error) = crate::sys::is_local_address(*source) {
                return Err(format!(
                    "--upstream-source {source}: not an address of this host ({error})"
                ));
            }
        }
        Ok(())
    }

    /// Checks what single flags cannot: the proxy flags go with `--after proxy`, and it
    /// needs at least one `--upstream`.
    pub fn validate(&self) -> Result<(), String> {
        let proxy = self.after == AfterUpgrade::Proxy;
        if proxy && self.upstreams.is_empty() {
            return Err("--after proxy needs at least one --upstream HOST:PORT".into());
        }
        if !proxy && !self.upstreams.is_empty() {
            return Err("--upstream is only used with --after proxy".into());
        }
        if !proxy && !self.upstream_sources.is_empty() {
            return Err("--upstream-source is only used with --after proxy".into());
        }
        if self.h2 && self.listen_tls.is_empty() {
            return Err(
                "--h2 is only used with --listen-tls (HTTP/2 is chosen by ALPN; \
                        --h2c is the plain listeners' prior knowledge)"
                    .into(),
            );
        }
        if self.h2c && self.listen.is_empty() && !self.listen_tls.is_empty() {
            return Err("--h2c is only used with a plain --listen (over TLS, --h2)".into());
        }
        if self.listen_tls.is_empty() && self.client_patience.is_some() {
            return Err(
                "--client-patience is only used with --listen-tls (it bounds TLS \
                        key exchanges)"
                    .into(),
            );
        }
        let http_flags = [
            ("--http-path", !self.http_paths.is_empty()),
            ("--http-timeout", self.http_timeout.is_some()),
            ("--http-max-body", self.http_max_body.is_some()),
            ("--sticky-cookie", self.sticky_cookie.is_some()),
        ];
        if let Some((flag, _)) = http_flags.iter().find(|(_, given)| *given && !proxy) {
            return Err(format!(
                "{flag} is only used with --after proxy (it concerns requests forwarded upstream)"
            ));
        }
        if self.http_paths.is_empty()
            && (self.http_timeout.is_some() || self.http_max_body.is_some())
        {
            return Err(
                "--http-timeout and --http-max-body are only used with --http-path PREFIX".into(),
            );
        }
        if !proxy && self.upstream_queue_ms.is_some() {
            return Err("--upstream-queue-ms is only used with --after proxy".into());
        }
        if !proxy && self.upstream_max_pending != crate::proxy::pending::PendingLimit::Auto {
            return Err("--upstream-max-pending is only used with --after proxy".into());
        }
        if !proxy && self.upstream_max_connections > 0 {
            return Err("--upstream-max-connections is only used with --after proxy".into());
        }
        if !proxy && self.upstream_balance != crate::proxy::Balance::RoundRobin {
            return Err("--upstream-balance is only used with --after proxy".into());
        }
        let hashing = self.upstream_balance == crate::proxy::Balance::Hash;
        if hashing && self.upstream_hash_key.is_none() {
            return Err(
                "--upstream-balance hash needs --upstream-hash-key header:NAME, \
                        cookie:NAME, query:NAME or client-ip"
                    .into(),
            );
        }
        if !hashing && self.upstream_hash_key.is_some() {
            return Err("--upstream-hash-key is only used with --upstream-balance hash".into());
        }
        if !proxy && self.upstream_health_interval_ms > 0 {
            return Err("--upstream-health-interval-ms is only used with --after proxy".into());
        }
        if !proxy && self.healthz_min_upstreams_up > 0 {
            return Err("--healthz-min-upstreams-up is only used with --after proxy".into());
        }
        if self.upstream_health_interval_ms > 0
            && self.health_timeout_ms() > self.upstream_health_interval_ms
        {
            return Err(format!(
                "--upstream-health-timeout-ms {} is longer than --upstream-health-interval-ms {}: \
                 a check must end before the next one starts",
                self.health_timeout_ms(),
                self.upstream_health_interval_ms
            ));
        }
        if !proxy && self.upstream_proxy_protocol.is_some() {
            return Err("--upstream-proxy-protocol is only used with --after proxy".into());
        }
        if self.accept_proxy_protocol && self.proxy_protocol_from.is_empty() {
            return Err(
                "--accept-proxy-protocol needs --proxy-protocol-from CIDR: the balancers' \
                        networks (0.0.0.0/0 and ::/0 to trust every sender)"
                    .into(),
            );
        }
        if !self.accept_proxy_protocol && !self.proxy_protocol_from.is_empty() {
            return Err("--proxy-protocol-from is only used with --accept-proxy-protocol".into());
        }
        let tls_files = !self.tls_certs.is_empty() || !self.tls_keys.is_empty();
        if self.listen_tls.is_empty() && tls_files {
            return Err("--tls-cert and --tls-key are only used with --listen-tls".into());
        }
        let paired = self.tls_certs.len() == self.tls_keys.len();
        if !self.listen_tls.is_empty() && (self.tls_certs.is_empty() || !paired) {
            return Err(format!(
                "--listen-tls needs --tls-cert and --tls-key in pairs (got {} --tls-cert, {} --tls-key)",
                self.tls_certs.len(),
                self.tls_keys.len()
            ));
        }
        Ok(())
    }

    /// The TLS settings, when there are TLS listeners.
    pub fn tls_settings(&self) -> Option<TlsSettings> {
        (!self.listen_tls.is_empty()).then(|| TlsSettings {
            pairs: self
                .tls_certs
                .iter()
                .cloned()
                .zip(self.tls_keys.iter().cloned())
                .collect(),
            versions: self.tls_versions.clone(),
            groups: self.tls_groups.clone(),
            h2: self.h2,
        })
    }

    /// The server configuration these flags describe.
    /// `--upstream-health-timeout-ms`, or the smaller of 1 s and the interval: checks every
    /// 200 ms need no second flag.
    pub fn health_timeout_ms(&self) -> u64 {
        self.upstream_health_timeout_ms
            .unwrap_or_else(|| match self.upstream_health_interval_ms {
                0 => 1_000,
                interval => interval.min(1_000),
            })
    }

    /// The configuration these flags give at startup (names that do not resolve left out:
    /// see [`ServeArgs::server_config_after`]).
    pub fn server_config(&self) -> ServerConfig {
        self.server_config_after(&[]).0
    }

    /// The configuration these flags give, where a running one had `previous` upstreams (a
    /// reload), and the upstreams left out: a name that does not resolve now keeps its last
    /// addresses, and one that never resolved is left out and said (a startup error; at a
    /// reload a warning), never the whole list with it.
    pub fn server_config_after(
        &self,
        previous: &[crate::proxy::Upstream],
    ) -> (ServerConfig, Vec<String>) {
        let (upstreams, unresolved) = crate::proxy::resolve_all(&self.upstreams, previous);
        let threads = self
            .threads
            .map(NonZeroUsize::get)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get));
        let auth_token = self
            .auth_token
            .clone()
            .or_else(|| self.auth_token_file.as_ref().map(|t| t.0.clone()))
            .map(String::into_bytes);
        let listen = match (&self.listen[..], &self.listen_tls[..]) {
            ([], []) => vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            (listen, _) => listen.to_vec(),
        };
        let config = ServerConfig {
            listen,
            listen_tls: self.listen_tls.clone(),
            // Loaded by the caller (reading files can fail: see `tls_settings`).
            tls: None,
            threads,
            pin: !self.no_pin,
            backend: Backend::Epoll,
            listen_options: ListenOptions {
                backlog: self.backlog,
                defer_accept_secs: self.defer_accept_secs,
            },
            conn: ConnConfig {
                policy: Policy {
                    max_header_bytes: self.max_header_bytes as usize,
                    paths: self.paths.clone(),
                    allowed_origins: self.allowed_origins.clone(),
                    auth_token,
                    subprotocols: self.subprotocols.clone(),
                    require_subprotocol: self.require_subprotocol,
                    http_paths: self.http_paths.clone(),
                    max_http_body_bytes: self
                        .http_max_body
                        .unwrap_or(crate::handshake::DEFAULT_MAX_HTTP_BODY_BYTES),
                },
                after: self.after,
                handshake_timeout_ms: self.handshake_timeout_ms,
                h2c: self.h2c,
                client_patience_ms: self
                    .client_patience
                    .map_or(self.handshake_timeout_ms, |d| d.as_millis() as u64),
                idle_timeout_ms: self.idle_timeout_ms,
                send_timeout_ms: self.send_timeout_ms,
                max_message_bytes: self.max_message_bytes as usize,
                linger_ms: LINGER_MS.min(self.handshake_timeout_ms),
                proxy: ProxyConfig {
                    targets: self.upstreams.clone(),
                    // Every name resolved when the flag was parsed; one that stopped
                    // resolving since is filled in by the next lookup.
                    upstreams,
                    resolve_interval_ms: self.upstream_resolve_secs * 1000,
                    health: (self.upstream_health_interval_ms > 0).then(|| {
                        crate::proxy::health::HealthSettings {
                            kind: self.upstream_health_check.clone(),
                            interval_ms: self.upstream_health_interval_ms,
                            timeout_ms: self.health_timeout_ms(),
                            rise: self.upstream_health_rise,
                            fall: self.upstream_health_fall,
                        }
                    }),
                    healthz_min_up_percent: self.healthz_min_upstreams_up,
                    connect_timeout_ms: self.upstream_connect_timeout_ms,
                    response_timeout_ms: self.upstream_response_timeout_ms,
                    forwarding: self.upstream_proxy_protocol.unwrap_or_default(),
                    accept_from: self
                        .accept_proxy_protocol
                        .then(|| self.proxy_protocol_from.clone()),
                    balance: self.upstream_balance,
                    hash_key: self.upstream_hash_key.clone(),
                    max_connections_per_upstream: self.upstream_max_connections,
                    max_pending: self.upstream_max_pending,
                    queue_ms: (self.upstream_queue_ms).unwrap_or(DEFAULT_QUEUE_MS),
                    sources: self.upstream_sources.clone(),
                    http_timeout_ms: self
                        .http_timeout
                        .map_or(crate::proxy::DEFAULT_HTTP_TIMEOUT_MS, |d| {
                            d.as_millis() as u64
                        }),
                    sticky_cookie: self.sticky_cookie.clone(),
                },
            },
            limits: Limits {
                max_connections: self.max_connections,
                max_pending_handshakes: self.max_pending_handshakes,
                max_connections_per_ip: self.max_connections_per_ip,
                max_handshakes_per_ip_per_sec: self.max_handshakes_per_ip_per_sec,
                retry_after_secs: self.retry_after_secs.unwrap_or(match self.after {
                    AfterUpgrade::Proxy => crate::policy::RetryAfter::Auto,
                    _ => crate::policy::RetryAfter::Range(5, 30),
                }),
                drain_window_ms: self.drain_secs * 1000,
                drain_close_code: self.drain_close_code,
            },
            handover: self.takeover.is_some(),
        };
        (config, unresolved)
    }
}

/// Turns a TOML config file into `serve` flags, checking every key and value on its own so
/// that an error names the key and its line. `command_line` is what the user typed: a key
/// also given there is left out, so that the command line wins even for repeatable flags.
pub fn config_file_args(
    path: &std::path::Path,
    command_line: &[String],
) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    config_text_args(&text, &path.display().to_string(), command_line)
}

/// [`config_file_args`] for a file's text already read; `origin` names it in errors. Any
/// text gives flags or an error naming the line (the fuzz target `config` holds it to that).
pub fn config_text_args(
    text: &str,
    origin: &str,
    command_line: &[String],
) -> Result<Vec<String>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .and_then(|s| text.get(..s.start))
            .map_or(1, |before| before.lines().count().max(1));
        format!("{origin}:{line}: {}", e.message())
    })?;
    let line_of = |key: &str| {
        text.lines()
            .position(|l| {
                l.trim_start().starts_with(key)
                    && l.trim_start()[key.len()..].trim_start().starts_with('=')
            })
            .map_or(0, |i| i + 1)
    };
    let command = Cli::command();
    let serve = command.find_subcommand("serve").ok_or("no serve command")?;
    let mut args = Vec::new();
    for (key, value) in &table {
        let at = format!("{origin}:{}: `{key}`", line_of(key));
        let Some(arg) = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
        else {
            return Err(format!("{at}: unknown key (the keys are the flags of `wsedge serve`, e.g. max-connections)"));
        };
        if key == "config" {
            return Err(format!("{at}: a config file cannot name another"));
        }
        let flag = format!("--{key}");
        if command_line
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
        {
            continue;
        }
        let is_switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        let mut own = Vec::new();
        match value {
            toml::Value::Boolean(on) if is_switch => {
                if *on {
                    own.push(flag.clone());
                }
            }
            toml::Value::Array(items) if !is_switch => {
                for item in items {
                    own.push(flag.clone());
                    own.push(
                        scalar(item).ok_or_else(|| {
                            format!("{at}: list items must be strings or numbers")
                        })?,
                    );
                }
            }
            other if !is_switch => {
                own.push(flag.clone());
                own.push(
                    scalar(other).ok_or_else(|| format!("{at}: expected a string or a number"))?,
                );
            }
            _ => return Err(format!("{at}: expected true or false")),
        }
        // Each key is checked alone, so that a bad value is reported with its key and line.
        let mut probe = vec!["wsedge".to_owned(), "serve".to_owned()];
        probe.extend(own.iter().cloned());
        if let Err(error) = Cli::try_parse_from(&probe) {
            let detail = error.to_string();
            let detail = detail
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_owned();
            return Err(format!("{at}: {detail}"));
        }
        args.extend(own);
    }
    Ok(args)
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}
