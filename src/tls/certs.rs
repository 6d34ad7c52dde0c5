//! Certificates and keys from PEM files, and the choice among them by SNI.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate or key cannot be used; each names the flag and the file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// `--listen-tls` with no certificate, or unpaired files.
    #[error("--tls-cert and --tls-key come in pairs, one pair at least for --listen-tls (got {certs} --tls-cert, {keys} --tls-key)")]
    Pairs {
        /// `--tls-cert` flags given.
        certs: usize,
        /// `--tls-key` flags given.
        keys: usize,
    },
    /// The file cannot be read.
    #[error("{flag} {path}: cannot read it: {error}")]
    Unreadable {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// No `CERTIFICATE` block in the certificate file.
    #[error("--tls-cert {0}: no certificate in it (PEM `BEGIN CERTIFICATE` blocks, the server's own first, then its chain)")]
    NoCertificate(PathBuf),
    /// The certificate does not parse.
    #[error("--tls-cert {0}: not a valid X.509 certificate: {1}")]
    BadCertificate(PathBuf, String),
    /// No private key block in the key file.
    #[error("--tls-key {0}: no private key in it (PEM PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    /// The key does not parse, or is of a kind rustls cannot sign with.
    #[error("--tls-key {0}: {1}")]
    BadKey(PathBuf, String),
    /// The key is not the certificate's.
    #[error("--tls-key {key} does not match --tls-cert {cert} (the key of another certificate?)")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// The certificates, chosen by the client's SNI: an exact name first, then a wildcard
/// (`*.example.com` for `a.example.com`), else the first certificate given. A client without
/// SNI, or naming none of them, gets the default (as nginx's default server does).
#[derive(Debug)]
pub struct SniResolver {
    default: Arc<CertifiedKey>,
    /// Lowercase names (wildcards without their `*.`), first certificate first.
    names: Vec<(String, bool, Arc<CertifiedKey>)>,
}

impl SniResolver {
    /// Loads every pair, checking each key against its certificate.
    pub fn load(
        pairs: &[(PathBuf, PathBuf)],
        provider: &CryptoProvider,
    ) -> Result<SniResolver, CertError> {
        let mut names = Vec::new();
        let mut default = None;
        for (cert, key) in pairs {
            let (certified, cert_names) = load_pair(cert, key, provider)?;
            let certified = Arc::new(certified);
            for name in cert_names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(parent) => names.push((parent.to_owned(), true, Arc::clone(&certified))),
                    None => names.push((name, false, Arc::clone(&certified))),
                }
            }
            default.get_or_insert(certified);
        }
        let default = default.ok_or(CertError::Pairs { certs: 0, keys: 0 })?;
        Ok(SniResolver { default, names })
    }

    /// The certificate for a client that asked for `server_name`.
    pub fn choose(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        let parent = name.split_once('.').map(|(_, parent)| parent);
        let exact = self
            .names
            .iter()
            .find(|(n, wildcard, _)| !wildcard && n.eq_ignore_ascii_case(name));
        let matched = exact.or_else(|| {
            let parent = parent?;
            self.names
                .iter()
                .find(|(n, wildcard, _)| *wildcard && n.eq_ignore_ascii_case(parent))
        });
        matched.map_or(&self.default, |(_, _, key)| key)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.choose(hello.server_name())))
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|error| CertError::Unreadable {
        flag,
        path: path.to_owned(),
        error,
    })
}

/// One certificate chain and its key, and the names the certificate is for.
fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>), CertError> {
    let pem = read("--tls-cert", cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate(cert.to_owned(), e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate(cert.to_owned()));
    };
    let names = names_and_expiry(cert, leaf)?;
    let pem = read("--tls-key", key)?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => CertError::NoKey(key.to_owned()),
        other => CertError::BadKey(key.to_owned(), other.to_string()),
    })?;
    let certified = CertifiedKey::from_der(chain, der, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
        other => CertError::BadKey(key.to_owned(), other.to_string()),
    })?;
    Ok((certified, names))
}

/// The DNS names a certificate is for (its subjectAltName, else its common name); warns
/// loudly when it is expired or not yet valid, which clients will refuse.
fn names_and_expiry(path: &Path, leaf: &CertificateDer<'_>) -> Result<Vec<String>, CertError> {
    let bad = |e: String| CertError::BadCertificate(path.to_owned(), e);
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(e.to_string()))?;
    if !parsed.validity().is_valid() {
        tracing::warn!(
            cert = %path.display(),
            not_before = %parsed.validity().not_before,
            not_after = %parsed.validity().not_after,
            "--tls-cert is expired or not yet valid: clients will refuse it"
        );
    }
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?;
    let mut names: Vec<String> = san
        .iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        let cn = parsed.subject().iter_common_name().next();
        names.extend(cn.and_then(|cn| cn.as_str().ok()).map(str::to_owned));
    }
    Ok(names)
}
