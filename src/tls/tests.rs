//! Loading certificates and choosing among them, with certificates made by rcgen.

use super::*;

struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

/// A self-signed ECDSA P-256 certificate for `names`, written to a fresh directory.
fn pair(dir: &std::path::Path, tag: &str, names: &[&str]) -> Pair {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    let cert = dir.join(format!("{tag}.crt"));
    let key = dir.join(format!("{tag}.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    Pair { cert, key }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsedge-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn load(pairs: &[&Pair]) -> Result<SniResolver, CertError> {
    let pairs: Vec<_> = pairs
        .iter()
        .map(|p| (p.cert.clone(), p.key.clone()))
        .collect();
    SniResolver::load(&pairs, &rustls::crypto::ring::default_provider())
}

fn leaf(key: &rustls::sign::CertifiedKey) -> &[u8] {
    key.cert[0].as_ref()
}

#[test]
fn sni_picks_the_exact_name_then_a_wildcard_then_the_first_certificate() {
    let dir = scratch("sni");
    let first = pair(&dir, "first", &["default.test"]);
    let exact = pair(&dir, "exact", &["api.example.test"]);
    let wildcard = pair(&dir, "wild", &["*.example.test"]);
    let resolver = load(&[&first, &exact, &wildcard]).unwrap();
    let first_der = leaf(resolver.choose(None)).to_vec();
    assert_eq!(
        leaf(resolver.choose(Some("API.example.test"))),
        leaf(resolver.choose(Some("api.example.test")))
    );
    assert_ne!(
        leaf(resolver.choose(Some("api.example.test"))),
        &first_der[..]
    );
    let by_wildcard = leaf(resolver.choose(Some("chat.example.test"))).to_vec();
    assert_ne!(by_wildcard, first_der);
    assert_ne!(
        &by_wildcard[..],
        leaf(resolver.choose(Some("api.example.test")))
    );
    assert_eq!(
        leaf(resolver.choose(Some("a.b.example.test"))),
        &first_der[..],
        "one label only"
    );
    assert_eq!(leaf(resolver.choose(Some("unknown.test"))), &first_der[..]);
}

#[test]
fn every_file_error_names_its_flag_and_file() {
    let dir = scratch("errors");
    let good = pair(&dir, "good", &["a.test"]);
    let other = pair(&dir, "other", &["b.test"]);
    let missing = Pair {
        cert: dir.join("missing.crt"),
        key: good.key.clone(),
    };
    let message = load(&[&missing]).unwrap_err().to_string();
    assert!(
        message.starts_with("--tls-cert ") && message.contains("missing.crt"),
        "{message}"
    );
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a pem\n").unwrap();
    let no_cert = Pair {
        cert: empty.clone(),
        key: good.key.clone(),
    };
    let message = load(&[&no_cert]).unwrap_err().to_string();
    assert!(message.contains("no certificate"), "{message}");
    let no_key = Pair {
        cert: good.cert.clone(),
        key: empty,
    };
    let message = load(&[&no_key]).unwrap_err().to_string();
    assert!(
        message.starts_with("--tls-key ") && message.contains("no private key"),
        "{message}"
    );
    let mismatched = Pair {
        cert: good.cert.clone(),
        key: other.key.clone(),
    };
    let message = load(&[&mismatched]).unwrap_err().to_string();
    assert!(message.contains("does not match"), "{message}");
}

#[test]
fn alpn_and_groups_reach_the_config() {
    let dir = scratch("config");
    let good = pair(&dir, "good", &["a.test"]);
    let settings = TlsSettings {
        pairs: vec![(good.cert.clone(), good.key.clone())],
        versions: vec![TlsVersion::V1_3],
        groups: vec![TlsGroup::X25519],
        h2: false,
    };
    let config = server_config(&settings).unwrap();
    assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    let groups: Vec<_> = config
        .crypto_provider()
        .kx_groups
        .iter()
        .map(|g| g.name())
        .collect();
    assert_eq!(groups, vec![rustls::NamedGroup::X25519]);
}

/// A server configuration with one certificate and the default versions and groups.
fn default_config(tag: &str) -> Arc<rustls::ServerConfig> {
    default_pair(tag).0
}

/// [`default_config`], and its certificate's PEM file.
fn default_pair(tag: &str) -> (Arc<rustls::ServerConfig>, PathBuf) {
    let dir = scratch(tag);
    let good = pair(&dir, "good", &["a.test"]);
    let settings = TlsSettings {
        pairs: vec![(good.cert.clone(), good.key.clone())],
        versions: Vec::new(),
        groups: Vec::new(),
        h2: false,
    };
    (server_config(&settings).unwrap(), good.cert)
}

/// A ClientHello trickled a byte a record (found by the `tls_records` fuzz target: rustls
/// keeps the progress of a handshake message spread over records between calls, so what
/// the caller keeps must be exactly what rustls has not discarded).
#[test]
fn a_client_hello_trickled_a_byte_a_record_is_held_within_the_bound_then_refused() {
    use crate::transport::{Outbox, TlsEnd, TlsLink, MAX_HELD_BEFORE_HANDSHAKE};
    let config = default_config("trickle");
    let mut message = vec![0x01, 0x00, 0xff, 0xff, 0x03, 0x03];
    message.resize(4 + 0xffff, 0x41);
    for per_read in [1, 6, 60, 600] {
        let records: Vec<u8> = message
            .iter()
            .flat_map(|&byte| [0x16, 0x03, 0x01, 0x00, 0x01, byte])
            .collect();
        let mut link = TlsLink::new(&config).unwrap();
        let (mut plaintext, mut outbox) = (Vec::new(), Outbox::default());
        let mut end = TlsEnd::Open;
        for piece in records.chunks(per_read) {
            end = link.receive(piece, &mut plaintext, &mut outbox);
            if end != TlsEnd::Open {
                break;
            }
            assert!(link.held() <= MAX_HELD_BEFORE_HANDSHAKE, "{}", link.held());
        }
        assert!(matches!(end, TlsEnd::Failed(_)), "{per_read}: {end:?}");
        assert_eq!(outbox.pending(), [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 47]);
    }
}

/// Found by the `tls_records` fuzz target: a ClientHello reassembled from 1-byte records,
/// then a record rustls refuses. The alert used to be written with an empty buffer, which
/// panics inside rustls while it holds part of a handshake message (the process aborts):
/// every call must show rustls the bytes it has not discarded.
#[test]
fn a_failure_in_the_middle_of_a_reassembled_hello_gets_its_alert_without_a_panic() {
    use crate::transport::{Outbox, TlsEnd, TlsLink};
    let config = default_config("reassembly");
    let input = include_bytes!("../../fuzz/seeds/tls_records/failure_mid_reassembly");
    let (split, records) = input.split_first().unwrap();
    let mut link = TlsLink::new(&config).unwrap();
    let (mut plaintext, mut outbox) = (Vec::new(), Outbox::default());
    let mut end = TlsEnd::Open;
    for piece in records.chunks(usize::from(*split) + 1) {
        end = link.receive(piece, &mut plaintext, &mut outbox);
        if end != TlsEnd::Open {
            break;
        }
    }
    assert!(matches!(end, TlsEnd::Failed(_)), "{end:?}");
    assert_eq!(outbox.pending().first(), Some(&0x15), "an alert");
}

/// A rustls client and a wsedge TLS session, in memory: the client's records go to the
/// server's `receive`, the server's outbox to the client.
struct Pair13 {
    client: rustls::ClientConnection,
    link: crate::transport::TlsLink,
    /// What the client has read.
    received: Vec<u8>,
}

impl Pair13 {
    fn connected(tag: &str, versions: &[&'static rustls::SupportedProtocolVersion]) -> Pair13 {
        let (server, cert) = default_pair(tag);
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(cert).unwrap();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = "a.test".try_into().unwrap();
        let mut pair = Pair13 {
            client: rustls::ClientConnection::new(Arc::new(client), name).unwrap(),
            link: crate::transport::TlsLink::new(&server).unwrap(),
            received: Vec::new(),
        };
        while pair.client.is_handshaking() || pair.link.is_handshaking() {
            let (_, end) = pair.client_flight_in();
            assert_eq!(end, crate::transport::TlsEnd::Open);
        }
        pair
    }

    /// What the client has to send goes to the server, and the server's answer back:
    /// the plaintext the server read, and how its read ended.
    fn client_flight_in(&mut self) -> (Vec<u8>, crate::transport::TlsEnd) {
        let mut records = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut records).unwrap();
        }
        let (mut plaintext, mut outbox) = (Vec::new(), crate::transport::Outbox::default());
        let end = self.link.receive(&records, &mut plaintext, &mut outbox);
        self.server_flight_out(outbox);
        (plaintext, end)
    }

    fn server_flight_out(&mut self, outbox: crate::transport::Outbox) {
        let mut input = outbox.pending();
        while !input.is_empty() {
            self.client.read_tls(&mut input).unwrap();
            self.client.process_new_packets().unwrap();
            let _ = std::io::Read::read_to_end(&mut self.client.reader(), &mut self.received);
        }
    }

    /// The server sends `text`; what the client reads.
    fn server_says(&mut self, text: &[u8]) -> Vec<u8> {
        let mut outbox = crate::transport::Outbox::default();
        self.link.send(text, &mut outbox);
        self.server_flight_out(outbox);
        std::mem::take(&mut self.received)
    }

    fn echo(&mut self, text: &[u8]) {
        std::io::Write::write_all(&mut self.client.writer(), text).unwrap();
        let (read, end) = self.client_flight_in();
        assert_eq!(end, crate::transport::TlsEnd::Open);
        assert_eq!(read, text);
        assert_eq!(self.server_says(text), text);
    }
}

#[test]
fn after_a_tls13_handshake_only_the_record_layer_stays_and_carries_both_ways() {
    let mut pair = Pair13::connected("records13", &[&rustls::version::TLS13]);
    assert!(pair.link.is_handed_over(), "rustls's connection dropped");
    pair.echo(b"hello");
    // Larger than a record: split into several, each sealed on its own.
    let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    pair.echo(&big);
}

#[test]
fn key_updates_the_client_asks_for_are_answered_and_both_directions_move_on() {
    let mut pair = Pair13::connected("keyupdate", &[&rustls::version::TLS13]);
    for round in 0..3 {
        // rustls asks the peer to update too (update_requested).
        pair.client.refresh_traffic_keys().unwrap();
        pair.echo(format!("after update {round}").as_bytes());
    }
}

#[test]
fn past_its_record_budget_the_server_updates_its_own_keys_and_the_client_follows() {
    let mut pair = Pair13::connected("ownupdate", &[&rustls::version::TLS13]);
    pair.link.update_keys_every(3);
    // Each message is one record of 8 bytes: a key update of ours (a record of 27 bytes)
    // goes before every third.
    let mut updates = 0;
    for round in 0..9 {
        let text = format!("record {round}");
        let mut outbox = crate::transport::Outbox::default();
        pair.link.send(text.as_bytes(), &mut outbox);
        let sealed = outbox.pending().len();
        assert!(sealed == 30 || sealed == 30 + 27, "{sealed}");
        updates += usize::from(sealed > 30);
        pair.server_flight_out(outbox);
        assert_eq!(std::mem::take(&mut pair.received), text.as_bytes());
    }
    assert_eq!(updates, 3, "one before every third record");
    pair.echo(b"and the client's side goes on");
}

#[test]
fn close_notify_ends_the_stream_and_a_corrupt_record_fails_with_bad_record_mac() {
    let mut pair = Pair13::connected("close13", &[&rustls::version::TLS13]);
    pair.client.send_close_notify();
    let (_, end) = pair.client_flight_in();
    assert_eq!(end, crate::transport::TlsEnd::Closed);

    let mut pair = Pair13::connected("corrupt13", &[&rustls::version::TLS13]);
    std::io::Write::write_all(&mut pair.client.writer(), b"data").unwrap();
    let mut records = Vec::new();
    while pair.client.wants_write() {
        pair.client.write_tls(&mut records).unwrap();
    }
    let last = records.len() - 1;
    records[last] ^= 1;
    let (mut plaintext, mut outbox) = (Vec::new(), crate::transport::Outbox::default());
    let end = pair.link.receive(&records, &mut plaintext, &mut outbox);
    assert!(
        matches!(end, crate::transport::TlsEnd::Failed(_)),
        "{end:?}"
    );
    assert!(plaintext.is_empty());
    let mut input = outbox.pending();
    pair.client.read_tls(&mut input).unwrap();
    let error = pair.client.process_new_packets().unwrap_err();
    assert_eq!(
        error,
        rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
    );
}

#[test]
fn records_split_anywhere_across_reads_come_out_whole() {
    let mut pair = Pair13::connected("split13", &[&rustls::version::TLS13]);
    let text: Vec<u8> = (0..3_000u32).map(|i| (i % 251) as u8).collect();
    std::io::Write::write_all(&mut pair.client.writer(), &text).unwrap();
    let mut records = Vec::new();
    while pair.client.wants_write() {
        pair.client.write_tls(&mut records).unwrap();
    }
    let (mut plaintext, mut outbox) = (Vec::new(), crate::transport::Outbox::default());
    for piece in records.chunks(7) {
        let end = pair.link.receive(piece, &mut plaintext, &mut outbox);
        assert_eq!(end, crate::transport::TlsEnd::Open);
    }
    assert_eq!(plaintext, text);
}

#[test]
fn tls12_stays_with_rustls() {
    let mut pair = Pair13::connected("records12", &[&rustls::version::TLS12]);
    assert!(!pair.link.is_handed_over());
    pair.echo(b"over TLS 1.2");
}
