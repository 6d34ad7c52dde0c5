//! The proxy mode's protocol pieces, with no I/O: what wsedge sends an upstream app server,
//! how it judges the answer, and the bounded pipes that carry the relayed bytes.
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
//! | which upstream next (round-robin, least-connections or a hash of the client's key, skipping refusers and full ones) | [`Upstreams`], [`HashKey`] |
//! | one direction of a relay, bounded | [`Pipe`] |
//! | a client's upstream side: attempts, bytes and FINs each way, when a relay is over | [`Link`], [`Fin`] |

mod affinity;
mod fin;
mod forward;
mod inbound;
mod link;
mod pipe;
mod proxy_v2;
mod upstreams;

use std::net::SocketAddr;

pub use affinity::{score, HashKey};
pub use fin::Fin;
pub use forward::{
    answer_length, check_upstream_response, write_upstream_request, AnswerLength, Peers,
};
pub use inbound::{parse_proxy_header, ProxyHeader};
pub use link::{Flow, Link, Side};
pub use pipe::{Pipe, PIPE_CAPACITY};
pub use proxy_v2::write_proxy_v2_header;
pub use upstreams::{Balance, Lease, Pick, Upstreams, REFUSED_BACKOFF_MS};

/// The most of an upstream's refusal (head and body) passed on to a client. A refusal is a
/// short page (401, 403, 429); this bounds what a connection buffers for a client that reads
/// slowly. A longer announced body is a 502; a body without a length is cut here.
pub const MAX_PASSED_ANSWER_BYTES: u64 = 64 * 1024;

/// How the upstream learns the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Forwarding {
    /// `X-Forwarded-For` (appended to), `X-Forwarded-Proto`, `X-Real-IP` (replaced).
    #[default]
    Headers,
    /// A PROXY protocol v2 header before the request; the request is left without
    /// `X-Forwarded-*` additions.
    ProxyV2,
}

/// Settings of the proxy mode.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// App servers, tried round-robin.
    pub upstreams: Vec<SocketAddr>,
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
    /// `--accept-proxy-protocol`: connections come from balancers in these networks, each
    /// starting with a PROXY header (v1 or v2) that names the client; from anywhere else
    /// they are refused. `None`: clients connect directly.
    pub accept_from: Option<Vec<ipnet::IpNet>>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            upstreams: Vec::new(),
            connect_timeout_ms: 2_000,
            response_timeout_ms: 10_000,
            forwarding: Forwarding::Headers,
            balance: Balance::RoundRobin,
            hash_key: None,
            max_connections_per_upstream: 0,
            accept_from: None,
        }
    }
}
