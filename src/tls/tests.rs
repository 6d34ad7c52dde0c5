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
