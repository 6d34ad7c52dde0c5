//! The handshake core on real browser requests: parse + validate + write 101.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use wsedge::handshake::{
    accept_key, parse_request, write_switching_protocols, Parse, Policy, MAX_RESPONSE_LEN,
};

const CHROME: &[u8] = include_bytes!("../tests/fixtures/chrome.http");
const FIREFOX: &[u8] = include_bytes!("../tests/fixtures/firefox.http");

fn policy() -> Policy {
    Policy {
        paths: vec!["/chat".into()],
        allowed_origins: vec!["http://localhost:8080".into()],
        subprotocols: vec!["superchat".into(), "chat".into()],
        ..Policy::default()
    }
}

fn handshake(request: &[u8], policy: &Policy, out: &mut [u8]) -> usize {
    match parse_request(request, policy) {
        Parse::Upgrade(upgrade) => {
            write_switching_protocols(out, upgrade.key, upgrade.protocol).unwrap_or(0)
        }
        other => panic!("bench request did not upgrade: {other:?}"),
    }
}

fn benches(c: &mut Criterion) {
    c.bench_function("accept_key", |b| {
        b.iter(|| accept_key(black_box(b"dGhlIHNhbXBsZSBub25jZQ==")))
    });
    // The alternative we measured and did not take: ring's SHA-1 has no SHA-NI path.
    c.bench_function("accept_key_sha1_ring", |b| {
        b.iter(|| {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
            ctx.update(black_box(b"dGhlIHNhbXBsZSBub25jZQ=="));
            ctx.update(wsedge::handshake::WEBSOCKET_GUID);
            ctx.finish()
        })
    });
    let policy = policy();
    let mut out = [0u8; MAX_RESPONSE_LEN];
    for (name, request) in [("chrome", CHROME), ("firefox", FIREFOX)] {
        let mut group = c.benchmark_group("handshake");
        group.throughput(Throughput::Bytes(request.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| handshake(black_box(request), &policy, &mut out))
        });
        group.bench_function(format!("{name}_parse_only"), |b| {
            b.iter(|| parse_request(black_box(request), &policy))
        });
        group.finish();
    }
}

criterion_group!(handshake_benches, benches);
criterion_main!(handshake_benches);
