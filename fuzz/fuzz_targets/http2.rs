//! Any frames after the HTTP/2 preface, in any split into reads, with deadlines passing
//! between them: nothing panics, and once the connection is closed every stream it opened
//! has exactly one outcome (upgraded, refused, timed out, abandoned).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::conn::{AfterUpgrade, Ctx, Next};
use wsedge::http2::{client::Client, Http2, NoSockets};
use wsedge::stats::Counters;

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, frames)) = data.split_first() else {
        return;
    };
    let config = wsedge_fuzz::config(AfterUpgrade::Echo);
    let stats = Counters::default();
    let mut out = Vec::new();
    let mut now = 0;
    let mut cx = Ctx { config: &config, now, out: &mut out, stats: &stats };
    let mut connection = Http2::new(&cx, None);
    let mut input = Vec::new();
    Client::start(&mut input);
    input.extend_from_slice(frames);
    // Up to eight reads, cut where the first byte says; a deadline between each.
    let step = (input.len() / (usize::from(cuts % 8) + 1)).max(1);
    let mut ended = false;
    for piece in input.chunks(step) {
        cx.now = now;
        let next = connection.receive(piece, &mut cx, &mut |_| Ok(()), &mut NoSockets);
        if next != Next::Continue {
            ended = true;
            break;
        }
        now += 700;
        cx.now = now;
        if connection.deadline(config.send_timeout_ms).is_some_and(|at| at <= now)
            && connection.on_timeout(&mut cx, &mut NoSockets) != Next::Continue
        {
            ended = true;
            break;
        }
    }
    if !ended {
        let _ = connection.on_eof(&mut cx, &mut NoSockets);
    }
    connection.close(&stats, &mut NoSockets);
    let s = Counters::sum([&stats]);
    let silent = s.handshake_timeouts - s.timeouts_answered;
    assert_eq!(
        s.h2_streams,
        s.upgraded + s.rejected + s.handshakes_abandoned + silent,
        "every stream has one outcome: {s:?}"
    );
});
