//! After a valid upgrade, any byte stream in any split: the same output as the stream
//! whole, and every frame wsedge writes is well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::conn::AfterUpgrade;
use wsedge_fuzz::{check_server_frames, config, cuts_and_rest, drive};

const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let (cuts, frames) = cuts_and_rest(data);
    let mut input = REQUEST.to_vec();
    input.extend_from_slice(frames);
    let cuts: Vec<usize> = cuts.iter().map(|c| c + REQUEST.len()).collect();
    let config = config(AfterUpgrade::Echo);
    let whole = drive(&config, &input, &[]);
    let split = drive(&config, &input, &cuts);
    assert_eq!(whole, split, "the split changed the output");
    let head_end = whole
        .out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the 101 came first")
        + 4;
    assert!(whole.out.starts_with(b"HTTP/1.1 101 "));
    check_server_frames(&whole.out[head_end..]);
});
