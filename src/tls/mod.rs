//! TLS termination settings, with no I/O on the connection path: the certificates (chosen by
//! SNI), the protocol versions, the key-exchange groups and ALPN, built once at startup into
//! a `rustls::ServerConfig` that every reactor shares. The per-connection record layer is
//! [`crate::transport`]'s.

mod certs;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::{aws_lc_rs, ring, CryptoProvider, SupportedKxGroup};

pub use certs::{CertError, SniResolver};

/// The application protocol always spoken: a client that offers ALPN without it (only
/// `h2` while `--h2` is off) gets the `no_application_protocol` alert.
pub const ALPN: &[u8] = b"http/1.1";

/// HTTP/2 (`--h2`): offered first, so that a client offering both gets it.
pub const ALPN_H2: &[u8] = b"h2";

/// A TLS protocol version wsedge can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    /// TLS 1.2.
    V1_2,
    /// TLS 1.3.
    V1_3,
}

/// A key-exchange group, by the name OpenSSL and the IANA registry give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsGroup {
    /// `x25519`.
    X25519,
    /// `secp256r1` (`P-256`).
    Secp256r1,
    /// `secp384r1` (`P-384`).
    Secp384r1,
    /// `x25519mlkem768`: X25519 with ML-KEM-768, the hybrid post-quantum group browsers
    /// offer first (aws-lc-rs only).
    X25519Mlkem768,
}

impl TlsGroup {
    /// Every group, by the names `--tls-groups` takes.
    pub const NAMES: [(&'static str, TlsGroup); 6] = [
        ("x25519", TlsGroup::X25519),
        ("secp256r1", TlsGroup::Secp256r1),
        ("p-256", TlsGroup::Secp256r1),
        ("secp384r1", TlsGroup::Secp384r1),
        ("p-384", TlsGroup::Secp384r1),
        ("x25519mlkem768", TlsGroup::X25519Mlkem768),
    ];

    /// The group as a client offers it (aws-lc-rs's, which has them all).
    pub fn client_kx(self) -> &'static dyn SupportedKxGroup {
        match self {
            TlsGroup::X25519 => aws_lc_rs::kx_group::X25519,
            TlsGroup::Secp256r1 => aws_lc_rs::kx_group::SECP256R1,
            TlsGroup::Secp384r1 => aws_lc_rs::kx_group::SECP384R1,
            TlsGroup::X25519Mlkem768 => aws_lc_rs::kx_group::X25519MLKEM768,
        }
    }

    /// The group in `provider`, if it has it (*ring* has no ML-KEM).
    fn kx(self, provider: Provider) -> Option<&'static dyn SupportedKxGroup> {
        Some(match (self, provider) {
            (TlsGroup::X25519, Provider::AwsLc) => aws_lc_rs::kx_group::X25519,
            (TlsGroup::Secp256r1, Provider::AwsLc) => aws_lc_rs::kx_group::SECP256R1,
            (TlsGroup::Secp384r1, Provider::AwsLc) => aws_lc_rs::kx_group::SECP384R1,
            (TlsGroup::X25519Mlkem768, Provider::AwsLc) => aws_lc_rs::kx_group::X25519MLKEM768,
            (TlsGroup::X25519, Provider::Ring) => ring::kx_group::X25519,
            (TlsGroup::Secp256r1, Provider::Ring) => ring::kx_group::SECP256R1,
            (TlsGroup::Secp384r1, Provider::Ring) => ring::kx_group::SECP384R1,
            (TlsGroup::X25519Mlkem768, Provider::Ring) => return None,
        })
    }
}

/// The crypto behind rustls. aws-lc-rs by default (see docs/performance.md for the measurement);
/// `WSEDGE_TLS_PROVIDER=ring` selects *ring*, to measure again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// aws-lc-rs (AWS-LC, BoringSSL's descendant): rustls's default.
    AwsLc,
    /// *ring*.
    Ring,
}

/// The environment variable that picks [`Provider::Ring`] for measurements.
pub const PROVIDER_ENV: &str = "WSEDGE_TLS_PROVIDER";

impl Provider {
    /// The provider in use: [`PROVIDER_ENV`], else aws-lc-rs.
    pub fn chosen() -> Provider {
        match std::env::var(PROVIDER_ENV).as_deref() {
            Ok("ring") => Provider::Ring,
            _ => Provider::AwsLc,
        }
    }

    fn crypto(self) -> CryptoProvider {
        match self {
            Provider::AwsLc => aws_lc_rs::default_provider(),
            Provider::Ring => ring::default_provider(),
        }
    }
}

/// What `--tls-cert`, `--tls-key`, `--tls-versions` and `--tls-groups` say.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Certificate chain and key files (PEM), the first pair the default for clients whose
    /// SNI names none of them.
    pub pairs: Vec<(PathBuf, PathBuf)>,
    /// Versions offered; empty means both.
    pub versions: Vec<TlsVersion>,
    /// Key-exchange groups in preference order; empty means the provider's defaults.
    pub groups: Vec<TlsGroup>,
    /// Offer HTTP/2 by ALPN (`--h2`).
    pub h2: bool,
}

/// Why the TLS settings cannot be used; each names the flag to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file is missing, unreadable or wrong.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// rustls refused the combination (for example TLS 1.2 only with no 1.2 cipher suite).
    #[error("--tls-versions/--tls-groups: {0}")]
    Rejected(rustls::Error),
}

/// The TLS settings every reactor reads for each new connection, swapped whole on reload:
/// a connection keeps the settings it started with.
pub type SharedTlsConfig = Arc<arc_swap::ArcSwap<rustls::ServerConfig>>;

/// Shares `config` for [`reload`].
pub fn shared(config: Arc<rustls::ServerConfig>) -> SharedTlsConfig {
    Arc::new(arc_swap::ArcSwap::new(config))
}

/// Reads `settings` again (the certificate and key files) into `shared`; on an error the
/// running settings stay. The ticket keys and the session cache carry over, so clients
/// resume across a reload.
pub fn reload(shared: &SharedTlsConfig, settings: &TlsSettings) -> Result<(), TlsError> {
    let running = shared.load_full();
    let mut fresh = Arc::unwrap_or_clone(server_config(settings)?);
    fresh.ticketer = Arc::clone(&running.ticketer);
    fresh.session_storage = Arc::clone(&running.session_storage);
    shared.store(Arc::new(fresh));
    Ok(())
}

/// The server configuration every TLS listener shares.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Provider::chosen();
    let mut crypto = provider.crypto();
    // AES-128-GCM first, and the server's order over the client's: its key schedule runs on
    // SHA-256 instead of SHA-384 (measured: SHA-512 blocks were 13% of a full handshake's
    // CPU with AES-256-GCM-SHA384, the suite rustls and OpenSSL clients list first).
    crypto
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            _ => 1,
        });
    if !settings.groups.is_empty() {
        crypto.kx_groups = settings
            .groups
            .iter()
            .filter_map(|g| g.kx(provider))
            .collect();
        if crypto.kx_groups.is_empty() {
            return Err(TlsError::Rejected(rustls::Error::General(
                "x25519mlkem768 needs the aws-lc-rs provider: add a classical group".into(),
            )));
        }
    }
    let crypto = Arc::new(crypto);
    let resolver = SniResolver::load(&settings.pairs, &crypto)?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match &settings.versions[..] {
        [] => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        chosen => chosen
            .iter()
            .map(|v| match v {
                TlsVersion::V1_2 => &rustls::version::TLS12,
                TlsVersion::V1_3 => &rustls::version::TLS13,
            })
            .collect(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(crypto)
        .with_protocol_versions(&versions)
        .map_err(TlsError::Rejected)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = match settings.h2 {
        true => vec![ALPN_H2.to_vec(), ALPN.to_vec()],
        false => vec![ALPN.to_vec()],
    };
    config.ignore_client_order = true;
    // A storm is clients coming back: stateless tickets (rotated every 6 hours, the
    // previous key still accepted) and a bounded TLS 1.2 session cache.
    config.ticketer = match provider {
        Provider::AwsLc => aws_lc_rs::Ticketer::new(),
        Provider::Ring => ring::Ticketer::new(),
    }
    .map_err(TlsError::Rejected)?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    // Plaintext waits in the connection's own buffers, never in rustls's.
    config.send_half_rtt_data = false;
    // A TLS 1.3 connection keeps only its record layer once the handshake is done
    // (`transport::TlsLink`): rustls hands over the traffic keys, and the key log gives the
    // secrets key updates derive from.
    config.enable_secret_extraction = true;
    config.key_log = Arc::new(crate::transport::TrafficSecrets);
    Ok(Arc::new(config))
}

/// TLS 1.2 sessions kept for resumption by ID, per process (about 100 bytes each).
const SESSION_CACHE_ENTRIES: usize = 10_000;

#[cfg(test)]
mod tests;
