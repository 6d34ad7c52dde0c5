//! What a TLS client sends before and after the handshake, read from any bytes split
//! anywhere: nothing panics, and while the handshake is not done a connection never holds
//! more ciphertext than `MAX_HELD_BEFORE_HANDSHAKE` (an oversized ClientHello gets its alert
//! instead of memory).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use wsedge::transport::{Outbox, TlsEnd, TlsLink, MAX_HELD_BEFORE_HANDSHAKE};

/// One server configuration for every run: a self-signed certificate in a scratch folder.
fn config() -> &'static Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wsedge-fuzz-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let settings = wsedge::tls::TlsSettings {
            pairs: vec![(cert_path, key_path)],
            versions: Vec::new(),
            groups: Vec::new(),
            h2: false,
        };
        wsedge::tls::server_config(&settings).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let Ok(mut link) = TlsLink::new(config()) else {
        return;
    };
    let (mut plaintext, mut outbox) = (Vec::new(), Outbox::default());
    // Reads of `split + 1` bytes, the way a trickling peer sends them.
    for piece in input.chunks(usize::from(split) + 1) {
        let end = link.receive(piece, &mut plaintext, &mut outbox);
        if link.is_handshaking() {
            assert!(plaintext.is_empty(), "plaintext before the handshake");
            assert!(link.held() <= MAX_HELD_BEFORE_HANDSHAKE, "{} held", link.held());
        }
        if end != TlsEnd::Open {
            break;
        }
    }
});
