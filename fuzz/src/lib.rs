//! What the fuzz targets share: a connection driven in memory, split points taken from the
//! input, and a checker of the frames wsedge writes.

use wsedge::conn::{AfterUpgrade, Conn, ConnConfig, Ctx, Next};
use wsedge::handshake::Policy;
use wsedge::stats::Counters;

/// The configuration the targets drive: small limits, so that the fuzzer reaches them.
pub fn config(after: AfterUpgrade) -> ConnConfig {
    ConnConfig {
        policy: Policy {
            max_header_bytes: 1024,
            subprotocols: vec!["chat".into(), "superchat".into()],
            // Plain requests under it take the `--http-path` rules (framing, path, body).
            http_paths: vec!["/socket.io/".into()],
            max_http_body_bytes: 64,
            ..Policy::default()
        },
        after,
        handshake_timeout_ms: 10_000,
        h2c: false,
        client_patience_ms: 10_000,
        idle_timeout_ms: 0,
        send_timeout_ms: 30_000,
        max_message_bytes: 4096,
        linger_ms: 100,
        proxy: Default::default(),
    }
}

/// Everything a connection wrote and the last thing it asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Run {
    pub out: Vec<u8>,
    pub nexts: Vec<Next>,
}

/// Feeds `input` to a fresh connection in the pieces `cuts` makes (sorted offsets), stopping
/// at the first answer other than `Continue`, as a backend does.
pub fn drive(config: &ConnConfig, input: &[u8], cuts: &[usize]) -> Run {
    let stats = Counters::default();
    let mut conn = Conn::new(config, 0);
    let mut out = Vec::new();
    let mut nexts = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([input.len()]) {
        let end = end.clamp(start, input.len());
        if end == start && end != input.len() {
            continue;
        }
        let mut cx = Ctx {
            config,
            now: 0,
            out: &mut out,
            stats: &stats,
        };
        let next = conn.on_data(&input[start..end], &mut cx);
        start = end;
        if next != Next::Continue {
            nexts.push(next);
            break;
        }
    }
    Run { out, nexts }
}

/// Split points from the first bytes of the fuzzer's input: returns them and the rest.
pub fn cuts_and_rest(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let n = usize::from(n % 8).min(rest.len() / 2);
    let (raw, rest) = rest.split_at(n * 2);
    let mut cuts: Vec<usize> = raw
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    cuts.sort_unstable();
    (cuts, rest)
}

/// Checks that `out`, after the 101's header block, is a sequence of well-formed server
/// frames: unmasked, lengths in their shortest form, control frames at most 125 bytes and
/// final, a Close carrying a code that may be sent (or none) and nothing after it.
/// A trailing incomplete frame is allowed only when `complete` is false.
pub fn check_server_frames(mut out: &[u8]) {
    let mut closed = false;
    while !out.is_empty() {
        assert!(!closed, "bytes after a Close: {out:?}");
        assert!(out.len() >= 2, "truncated frame header");
        let (b0, b1) = (out[0], out[1]);
        assert_eq!(b0 & 0x70, 0, "RSV bits set");
        assert_eq!(b1 & 0x80, 0, "a server frame is masked");
        let opcode = b0 & 0x0F;
        assert!(matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10), "opcode {opcode}");
        let (len, at) = match b1 & 0x7F {
            126 => {
                let len = usize::from(u16::from_be_bytes([out[2], out[3]]));
                assert!(len >= 126, "non-minimal 16-bit length {len}");
                (len, 4)
            }
            127 => {
                let len = u64::from_be_bytes(out[2..10].try_into().unwrap());
                assert!(len > 0xFFFF, "non-minimal 64-bit length {len}");
                (usize::try_from(len).unwrap(), 10)
            }
            n => (usize::from(n), 2),
        };
        assert!(out.len() >= at + len, "truncated frame payload");
        let payload = &out[at..at + len];
        if opcode >= 8 {
            assert!(b0 & 0x80 != 0, "fragmented control frame");
            assert!(len <= 125, "control frame of {len} bytes");
        }
        if opcode == 8 {
            closed = true;
            assert!(len != 1, "a Close with a one-byte body");
            if len >= 2 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                assert!(
                    wsedge::conn::frame::CloseCode(code).is_valid_on_wire(),
                    "close code {code} may not be sent"
                );
                assert!(std::str::from_utf8(&payload[2..]).is_ok(), "close reason not UTF-8");
            }
        }
        out = &out[at + len..];
    }
}
