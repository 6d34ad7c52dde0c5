//! TLS for `wsedge check`: rustls with the system's roots, ALPN `http/1.1` only (a WebSocket
//! upgrade needs HTTP/1.1), and failures sorted into what an operator can fix.

use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};

use super::verdict::TlsFailure;

/// The client configuration; with `insecure`, certificates are not checked at all.
pub fn client_config(insecure: bool) -> Result<Arc<ClientConfig>, String> {
    client_config_trusting(insecure, None)
}

/// [`client_config`] trusting the certificates in the PEM file `ca` instead of the system's
/// roots, when given (a test CA, a self-signed server).
pub fn client_config_trusting(
    insecure: bool,
    ca: Option<&std::path::Path>,
) -> Result<Arc<ClientConfig>, String> {
    client_config_offering(insecure, ca, &[])
}

/// As [`client_config_trusting`], offering the key-exchange `groups` (most preferred first;
/// empty: *ring*'s defaults, X25519, P-256, P-384).
pub fn client_config_offering(
    insecure: bool,
    ca: Option<&std::path::Path>,
    groups: &[crate::tls::TlsGroup],
) -> Result<Arc<ClientConfig>, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !groups.is_empty() {
        provider.kx_groups = groups.iter().map(|g| g.client_kx()).collect();
    }
    let provider = Arc::new(provider);
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match ca {
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let pem = std::fs::read(path)
                    .map_err(|e| format!("--ca {}: cannot read it: {e}", path.display()))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| format!("--ca {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("--ca {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("--ca {}: no certificate in it", path.display()));
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err(
                "no system root certificates found (install ca-certificates, or use --insecure)"
                    .into(),
            );
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Sorts a failed TLS handshake.
pub fn classify(error: &io::Error) -> TlsFailure {
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return TlsFailure::Other(error.to_string());
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsFailure::WrongName
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                TlsFailure::UntrustedCertificate
            }
            other => TlsFailure::Other(format!("invalid certificate: {other:?}")),
        },
        rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol)
        | rustls::Error::NoApplicationProtocol => TlsFailure::NoHttp1,
        rustls::Error::InvalidMessage(_) => TlsFailure::NotTls,
        other => TlsFailure::Other(other.to_string()),
    }
}

/// `--insecure`: accepts any certificate (the signatures are still checked, so the session
/// is encrypted; only who is at the other end is unknown).
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
