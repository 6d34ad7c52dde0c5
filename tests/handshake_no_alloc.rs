//! The handshake core never touches the heap: parse, validate, accept token and response.
//!
//! A counting global allocator sees every allocation this test binary makes; the count is
//! per thread, so the test harness's own threads cannot disturb it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use wsedge::handshake::{
    parse_request, write_rejection, write_switching_protocols, Parse, Policy, MAX_RESPONSE_LEN,
};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers every operation to the system allocator; only counts on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn a_full_handshake_allocates_nothing() {
    let policy = Policy {
        paths: vec!["/chat".into()],
        allowed_origins: vec!["http://localhost:8080".into()],
        subprotocols: vec!["superchat".into(), "chat".into()],
        ..Policy::default()
    };
    let chrome = include_bytes!("fixtures/chrome.http");
    let mut out = [0u8; MAX_RESPONSE_LEN];
    let mut upgraded = false;
    let count = allocations_during(|| {
        for end in [100, chrome.len()] {
            if let Parse::Upgrade(upgrade) = parse_request(&chrome[..end], &policy) {
                upgraded =
                    write_switching_protocols(&mut out, upgrade.key, upgrade.protocol).is_ok();
            }
        }
    });
    assert!(
        upgraded,
        "the request must upgrade, or the test proves nothing"
    );
    assert_eq!(count, 0);
}

#[test]
fn a_rejection_allocates_nothing() {
    let policy = Policy::default();
    let request = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let mut out = [0u8; MAX_RESPONSE_LEN];
    let mut written = 0;
    let count = allocations_during(|| {
        if let Parse::Reject(rejection) = parse_request(request, &policy) {
            written = write_rejection(&mut out, rejection).unwrap_or(0);
        }
    });
    assert!(
        written > 0,
        "the request must be rejected, or the test proves nothing"
    );
    assert_eq!(count, 0);
}

#[test]
fn the_counter_sees_allocations() {
    assert!(allocations_during(|| drop(std::hint::black_box(vec![1u8; 64]))) >= 1);
}
