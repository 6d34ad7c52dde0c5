//! Heap bytes rustls holds per idle `wss` connection, in memory (no sockets, no noise): a
//! thousand TLS 1.3 handshakes against a rustls client (ECDSA P-256, X25519, tickets), then
//! the live heap of the server sides that stay: glibc's count of bytes in use (`mallinfo2`,
//! which also sees what aws-lc allocates in C, its AEAD contexts) beside a counting Rust
//! allocator. Two server sides: wsedge's `TlsLink` (rustls's unbuffered connection) and
//! rustls's buffered `ServerConnection` as a plain server would keep it.
//! `WSEDGE_TLS_PROVIDER=ring` measures with *ring* (everything on the Rust heap).
//!
//!     cargo bench --bench tls_memory

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use wsedge::transport::{Outbox, Queue, TlsEnd, TlsLink};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        LIVE.fetch_add(size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CONNECTIONS: usize = 1000;

#[path = "common/tls_pair.rs"]
mod tls_pair;
use tls_pair::{client_flight, client_takes, configs};

/// Bytes in use on the C heap (Rust's and aws-lc's allocations alike).
fn malloc_in_use() -> isize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    info.uordblks as isize
}

/// The heap the kept server sides hold, per connection (measured by dropping them): all of
/// it, and the part Rust allocated.
fn per_connection<T>(kept: Vec<T>) -> (isize, isize) {
    let (with, rust_with) = (malloc_in_use(), LIVE.load(Ordering::Relaxed));
    drop(kept);
    let n = CONNECTIONS as isize;
    (
        (with - malloc_in_use()) / n,
        (rust_with - LIVE.load(Ordering::Relaxed)) / n,
    )
}

fn tls_links(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
) -> (isize, isize) {
    let mut kept = Vec::new();
    for _ in 0..CONNECTIONS {
        let name = "localhost".try_into().expect("name");
        let mut peer = rustls::ClientConnection::new(Arc::clone(client), name).expect("client");
        let mut link = Box::new(TlsLink::new(server).expect("server"));
        let mut plaintext = Vec::new();
        while peer.is_handshaking() || link.is_handshaking() || peer.wants_write() {
            let mut outbox = Outbox::default();
            let end = link.receive(&client_flight(&mut peer), &mut plaintext, &mut outbox);
            assert_eq!(end, TlsEnd::Open);
            client_takes(&mut peer, outbox.unsent());
        }
        kept.push(link);
    }
    per_connection(kept)
}

fn buffered(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
) -> (isize, isize) {
    let mut kept = Vec::new();
    for _ in 0..CONNECTIONS {
        let name = "localhost".try_into().expect("name");
        let mut peer = rustls::ClientConnection::new(Arc::clone(client), name).expect("client");
        let mut conn = Box::new(rustls::ServerConnection::new(Arc::clone(server)).expect("server"));
        while peer.is_handshaking() || conn.is_handshaking() || peer.wants_write() {
            let flight = client_flight(&mut peer);
            let mut input = &flight[..];
            while !input.is_empty() {
                conn.read_tls(&mut input).expect("server read");
                conn.process_new_packets().expect("server process");
            }
            let mut records = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut records).expect("server write");
            }
            client_takes(&mut peer, &records);
        }
        kept.push(conn);
    }
    per_connection(kept)
}

fn main() {
    let (server, client) = configs();
    let link = tls_links(&server, &client);
    let plain = buffered(&server, &client);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "heap per idle TLS 1.3 connection, {CONNECTIONS} kept (boxed, so the struct is counted):"
    );
    let provider = std::env::var(wsedge::tls::PROVIDER_ENV).unwrap_or_else(|_| "aws-lc".into());
    let _ = writeln!(out, "  provider {provider}; all heap (of which Rust's):");
    let _ = writeln!(
        out,
        "  wsedge TlsLink (rustls unbuffered): {} bytes ({})",
        link.0, link.1
    );
    let _ = writeln!(
        out,
        "  rustls ServerConnection (buffered): {} bytes ({})",
        plain.0, plain.1
    );
}
