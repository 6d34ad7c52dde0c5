//! What wsedge's TLS session costs per byte once the handshake is done, in memory (no
//! sockets): a rustls client seals 64 KiB messages that the server side decrypts
//! (`TlsLink::receive`), and the server side seals the same that the client reads
//! (`TlsLink::send`). Prints the server side's own time per direction, in MB/s (median of
//! 5 runs of 256 MiB each). TLS 1.3, AES-128-GCM, the provider wsedge runs
//! (`WSEDGE_TLS_PROVIDER`).
//!
//!     cargo bench --bench tls_bulk

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wsedge::transport::{Outbox, Queue, TlsEnd, TlsLink};

const MESSAGE: usize = 64 * 1024;
const MESSAGES: usize = 4096;

fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let dir = std::env::temp_dir().join(format!("wsedge-tls-bulk-{}", std::process::id()));
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

fn client_flight(client: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut flight = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut flight).expect("client write");
    }
    flight
}

/// Feeds `records` to the client, reading (and dropping) the plaintext as it comes.
fn client_takes(client: &mut rustls::ClientConnection, mut records: &[u8], sink: &mut Vec<u8>) {
    while !records.is_empty() {
        client.read_tls(&mut records).expect("client read");
        client.process_new_packets().expect("client process");
        sink.clear();
        let _ = client.reader().read_to_end(sink);
    }
}

fn main() {
    let (server, client_config) = configs();
    let name = "localhost".try_into().expect("name");
    let mut client = rustls::ClientConnection::new(client_config, name).expect("client");
    let mut link = TlsLink::new(&server).expect("server");
    let mut plaintext = Vec::new();
    let mut sink = Vec::new();
    while client.is_handshaking() || link.is_handshaking() || client.wants_write() {
        let mut outbox = Outbox::default();
        let end = link.receive(&client_flight(&mut client), &mut plaintext, &mut outbox);
        assert_eq!(end, TlsEnd::Open);
        client_takes(&mut client, outbox.unsent(), &mut sink);
    }
    let message = vec![0x5a_u8; MESSAGE];
    let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let mut spent = Duration::ZERO;
        for _ in 0..MESSAGES {
            client.writer().write_all(&message).expect("client writes");
            let records = client_flight(&mut client);
            let mut outbox = Outbox::default();
            plaintext.clear();
            let start = Instant::now();
            let end = link.receive(&records, &mut plaintext, &mut outbox);
            spent += start.elapsed();
            assert_eq!((end, plaintext.len()), (TlsEnd::Open, MESSAGE));
        }
        inbound.push(spent);
        let mut spent = Duration::ZERO;
        for _ in 0..MESSAGES {
            let mut outbox = Outbox::default();
            let start = Instant::now();
            link.send(&message, &mut outbox);
            spent += start.elapsed();
            client_takes(&mut client, outbox.unsent(), &mut sink);
        }
        outbound.push(spent);
    }
    let rate = |spent: &mut Vec<Duration>| {
        spent.sort();
        (MESSAGE * MESSAGES) as f64 / spent[spent.len() / 2].as_secs_f64() / 1e6
    };
    println!(
        "TLS 1.3 AES-128-GCM, 64 KiB messages, the server side's own time: \
         decrypt {:.0} MB/s, encrypt {:.0} MB/s",
        rate(&mut inbound),
        rate(&mut outbound)
    );
}
