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
        }
    }
}
