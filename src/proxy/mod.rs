//! The proxy mode's protocol pieces: what wsedge sends an upstream app server, how it judges
//! the answer, and the bounded pipes that carry the relayed bytes. None of it does I/O but
//! the active health checker ([`health::Checker`]), which runs its own non-blocking probe
//! sockets on a reactor's thread when the driver asks.
//!
//! In `--after proxy` a connection goes through the same handshake validation as in the
//! other modes ([`crate::conn`]); only a request that passed every rule is forwarded. The
//! backends open the upstream socket and move bytes; everything they write or decide about
//! those bytes comes from here.
//!
//! | job | where |
//! |---|---|
//! | the request an upstream sees (hop-by-hop headers, `X-Forwarded-*`) | [`write_upstream_request`] |
//! | the PROXY protocol v2 header | [`write_proxy_v2_header`] |
//! | the PROXY header (v1, v2) a balancer in front sends, read | [`parse_proxy_header`] |
//! | is the upstream's answer a 101 for *this* client's key and offers? | [`check_upstream_response`] |
//! | how much of a refusal (not a 101) to pass on | [`answer_length`], [`MAX_PASSED_ANSWER_BYTES`] |
//! | which upstream next (weighted round-robin, least-connections or a hash of the client's key, skipping the down, draining, refusing and full ones) | [`Upstreams`], [`HashKey`] |
//! | the upstreams as given and as resolved (`HOST:PORT weight=N drain`, names looked up again) | [`UpstreamTarget`], [`resolve_all`] |
//! | upstream health: shared status, active checks, passive failures | [`health`] |
//! | plain HTTP under `--http-path`: the answer's head read and rewritten | [`http`] |
//! | `--sticky-cookie`: the upstream id a client's cookie names, and the one it is given | [`sticky`] |
//! | one direction of a relay, bounded | [`Pipe`] |
//! | a client's upstream side: attempts, bytes and FINs each way, when a relay is over | [`Link`], [`Fin`] |

mod affinity;
pub mod chunked;
mod fin;
mod forward;
pub mod health;
pub mod http;
mod inbound;
mod link;
pub mod pending;
mod pipe;
mod proxy_v2;
pub mod sticky;
pub mod stream_sockets;
mod target;
mod upstreams;

pub use affinity::{score, weighted_score, HashKey};
pub use fin::Fin;
pub use forward::{
    answer_length, check_upstream_response, write_upstream_request, AnswerLength, Forwarded, Peers,
};
pub use inbound::{parse_proxy_header, ProxyHeader};
pub use link::{Flow, Link, Side};
pub use pipe::{Pipe, PIPE_CAPACITY};
pub use proxy_v2::write_proxy_v2_header;
pub use target::{resolve_all, Upstream, UpstreamTarget, MAX_WEIGHT};
pub use upstreams::{Balance, Lease, Pick, Upstreams, REFUSED_BACKOFF_MS};

/// The most of an upstream's refusal (head and body) passed on to a client. A refusal is a
/// short page (401, 403, 429); this bounds what a connection buffers for a client that reads
/// slowly. A longer announced body is a 502; a body without a length is cut here.
pub const MAX_PASSED_ANSWER_BYTES: u64 = 64 * 1024;

/// How the upstream learns the client's address (`--upstream-proxy-protocol v2` names the
/// one that is not the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Forwarding {
    /// The edge's own `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Real-IP` (the client's
    /// forwarding headers are dropped).
    #[default]
    #[value(skip)]
    Headers,
    /// A PROXY protocol v2 header before the request, instead of X-Forwarded-* headers.
    #[value(name = "v2")]
    ProxyV2,
}

/// Settings of the proxy mode.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The upstreams as given (names are looked up again on an interval).
    pub targets: Vec<UpstreamTarget>,
    /// The upstreams as resolved: the addresses connected to.
    pub upstreams: Vec<Upstream>,
    /// How often a target given by name is looked up again, in ms (0: never).
    pub resolve_interval_ms: u64,
    /// Active health checks (`None`: passive only).
    pub health: Option<health::HealthSettings>,
    /// `/healthz` answers 503 "degraded" when fewer than this percentage of the
    /// upstreams are up (0: never).
    pub healthz_min_up_percent: u8,
    /// Bound on connecting to an upstream, in ms (then 504).
    pub connect_timeout_ms: u64,
    /// Bound on the upstream's answer once connected, in ms (then 504).
    pub response_timeout_ms: u64,
    /// How the client's address is passed on.
    pub forwarding: Forwarding,
    /// How the next upstream is chosen.
    pub balance: Balance,
    /// Where the client's key is, for [`Balance::Hash`].
    pub hash_key: Option<HashKey>,
    /// Live connections one upstream may hold (server total; each reactor takes its
    /// share); 0: no limit.
    pub max_connections_per_upstream: u32,
    /// Forwarded upgrades one upstream may have unanswered (`--upstream-max-pending`).
    pub max_pending: pending::PendingLimit,
    /// How long a client waits at the edge for a pending slot, in ms (then 503); 0: none.
    pub queue_ms: u64,
    /// `--upstream-source`: local addresses upstream connections are opened from, in turn
    /// (those of the upstream's family); empty: the kernel's choice.
    pub sources: Vec<std::net::IpAddr>,
    /// `--accept-proxy-protocol`: connections come from balancers in these networks, each
    /// starting with a PROXY header (v1 or v2) that names the client; from anywhere else
    /// they are refused. `None`: clients connect directly.
    pub accept_from: Option<Vec<ipnet::IpNet>>,
    /// `--http-timeout`: bound on an upstream's response to a forwarded HTTP request, and
    /// on its silence once it flows, in ms.
    pub http_timeout_ms: u64,
    /// `--sticky-cookie`: the cookie that keeps a client on its upstream.
    pub sticky_cookie: Option<String>,
}

/// Default `--http-timeout`: longer than the long polls of Socket.IO (25 s) and SockJS
/// (25 s) with room for their answers.
pub const DEFAULT_HTTP_TIMEOUT_MS: u64 = 60_000;

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            targets: Vec::new(),
            upstreams: Vec::new(),
            resolve_interval_ms: 30_000,
            health: None,
            healthz_min_up_percent: 0,
            connect_timeout_ms: 2_000,
            response_timeout_ms: 10_000,
            forwarding: Forwarding::Headers,
            balance: Balance::RoundRobin,
            hash_key: None,
            max_connections_per_upstream: 0,
            max_pending: pending::PendingLimit::Auto,
            queue_ms: 10_000,
            sources: Vec::new(),
            accept_from: None,
            http_timeout_ms: DEFAULT_HTTP_TIMEOUT_MS,
            sticky_cookie: None,
        }
    }
}

impl ProxyConfig {
    /// The failures in a row that take an upstream out of rotation: with active checks
    /// only (without them nothing would bring it back; a refuser is passed over for
    /// [`REFUSED_BACKOFF_MS`] instead).
    pub fn fall(&self) -> Option<u32> {
        self.health.as_ref().map(|h| h.fall)
    }

    /// How many upstreams (draining ones aside) are up on `health`, of how many.
    pub fn upstreams_up(&self, health: &health::HealthBoard) -> (usize, usize) {
        let serving = self.upstreams.iter().filter(|u| !u.drain);
        let up = serving
            .clone()
            .filter(|u| health.status(u.addr).is_up())
            .count();
        (up, serving.count())
    }
}
