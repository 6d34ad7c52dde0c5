//! What a server accepts beyond the RFC: paths, origins, credentials, subprotocols, limits.

/// Default limit on the request header block, in bytes (nginx's `large_client_header_buffers`
/// default is 8 KiB too).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8192;

/// Header fields the parser holds. Browsers send 15 to 25; beyond this the answer is 431.
pub const MAX_HEADERS: usize = 64;

/// The server's handshake policy. Built once at startup and shared read-only by reactors.
///
/// Every list left empty means "no restriction".
#[derive(Debug, Clone)]
pub struct Policy {
    /// Largest header block accepted; longer requests get 431.
    pub max_header_bytes: usize,
    /// Paths (without query) that serve WebSocket; others get 404. Empty: any path.
    pub paths: Vec<String>,
    /// Allowed `Origin` values, compared ASCII case-insensitively; others get 403.
    ///
    /// A request with no `Origin` passes: only browsers send it, and it exists to stop
    /// cross-site pages, not other clients (gorilla/websocket and `ws` do the same).
    pub allowed_origins: Vec<String>,
    /// Bearer token every client must present, from `Authorization: Bearer` or the
    /// `access_token` query parameter (compared as sent, in constant time); else 401.
    pub auth_token: Option<Vec<u8>>,
    /// Subprotocols the server speaks, most preferred first.
    pub subprotocols: Vec<String>,
    /// Refuse (400) clients that offer none of [`Policy::subprotocols`].
    pub require_subprotocol: bool,
    /// `--http-path`: path prefixes under which a request that is not an upgrade is
    /// forwarded as plain HTTP (proxy mode). Empty: every such request gets 426.
    pub http_paths: Vec<String>,
    /// `--http-max-body`: the largest request body forwarded under [`Policy::http_paths`].
    pub max_http_body_bytes: u64,
}

/// Default `--http-max-body`: Socket.IO's own `maxHttpBufferSize` (1 MB) fits.
pub const DEFAULT_MAX_HTTP_BODY_BYTES: u64 = 1 << 20;

/// Whether `path` is `prefix` or under it, segment-wise: `/socket.io` and `/socket.io/`
/// both hold `/socket.io/` and `/socket.io/?EIO=4`'s path, but not `/socket.iox`.
pub fn is_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            paths: Vec::new(),
            allowed_origins: Vec::new(),
            auth_token: None,
            subprotocols: Vec::new(),
            require_subprotocol: false,
            http_paths: Vec::new(),
            max_http_body_bytes: DEFAULT_MAX_HTTP_BODY_BYTES,
        }
    }
}
