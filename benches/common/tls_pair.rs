//! What the TLS benches share: a server configuration as wsedge makes it (ECDSA P-256, TLS
//! 1.3, X25519) with a rustls client that trusts it, and moving a client's records.
//! Included by `#[path]`: each bench is its own binary.

use std::sync::Arc;

pub fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let dir = std::env::temp_dir().join(format!("wsedge-tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let settings = wsedge::tls::TlsSettings {
        pairs: vec![(cert_path, key_path)],
        versions: vec![wsedge::tls::TlsVersion::V1_3],
        groups: vec![wsedge::tls::TlsGroup::X25519],
        h2: false,
    };
    let server = wsedge::tls::server_config(&settings).expect("server config");
    let _ = std::fs::remove_dir_all(&dir);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    (server, Arc::new(client))
}

pub fn client_flight(client: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut flight = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut flight).expect("client write");
    }
    flight
}

/// Feeds `records` to the client, reading (and dropping) the plaintext as it comes.
pub fn client_takes(client: &mut rustls::ClientConnection, mut records: &[u8]) {
    let mut sink = Vec::new();
    while !records.is_empty() {
        client.read_tls(&mut records).expect("client read");
        client.process_new_packets().expect("client process");
        let _ = std::io::Read::read_to_end(&mut client.reader(), &mut sink);
        sink.clear();
    }
}
