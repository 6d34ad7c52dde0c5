//! The client check of `wsedge check` and the load generator: only a 101 with the right
//! accept token for this key, and at most a protocol that was offered, is accepted; any
//! prefix of an accepted answer is Partial or the same verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::handshake::{accept_key, check_response, ResponseCheck};

const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";

fuzz_target!(|response: &[u8]| {
    let verdict = check_response(response, KEY, &["chat"]);
    if let ResponseCheck::Accepted { header_len, protocol } = verdict {
        // httparse skips empty lines before the status line, as RFC 9112 section 2.2 allows.
        assert!(response.trim_ascii_start().starts_with(b"HTTP/1.1 101"));
        assert!(header_len <= response.len());
        let head = String::from_utf8_lossy(&response[..header_len]);
        let accept = accept_key(KEY);
        assert!(head.contains(std::str::from_utf8(&accept).unwrap()), "no token: {head}");
        assert!(protocol.is_none_or(|p| p == "chat"));
        for end in 0..header_len {
            assert_eq!(check_response(&response[..end], KEY, &["chat"]), ResponseCheck::Partial);
        }
    }
});
