//! The first message of a listener hand-over (`--takeover`), read from any text: a count is
//! accepted only within 1..=MAX_SOCKETS, so that the other process cannot size our memory,
//! and the greeting the old process writes reads back to its count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::takeover::{parse_greeting, MAX_SOCKETS};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(count) = parse_greeting(&text) {
        assert!((1..=MAX_SOCKETS).contains(&count), "{count} accepted");
    }
    if data.len() >= 2 {
        let count = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let greeting = format!("wsedge-takeover 1 {count}");
        let parsed = parse_greeting(&greeting);
        assert_eq!(parsed.is_ok(), (1..=MAX_SOCKETS).contains(&count), "{greeting}");
    }
});
