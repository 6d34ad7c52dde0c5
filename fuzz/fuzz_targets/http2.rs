//! Any frames after the HTTP/2 preface, in any split into reads, with deadlines passing
//! between them: nothing panics, and once the connection is closed every stream it opened
//! has exactly one outcome (upgraded, refused, passed an upstream's refusal, timed out,
//! abandoned). With the first byte's high bit, in proxy mode: each stream's upstream is a
//! fake that answers a valid 101 to the request it was sent, then whatever the input's tail
//! says (bytes, nothing yet, its end, a reset), and may refuse to be opened.
#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use wsedge::conn::{AfterUpgrade, Conn, Ctx, Next};
use wsedge::http2::{client::Client, Http2, NoSockets, Opened, ProxySide, SocketId, Sockets};
use wsedge::proxy::{Link, Peers};
use wsedge::stats::Counters;

/// The streams' upstreams, scripted by the input read from its end.
struct Fake<'a> {
    script: std::iter::Rev<std::slice::Iter<'a, u8>>,
    sockets: Vec<Upstream>,
}

#[derive(Default)]
struct Upstream {
    request: Vec<u8>,
    answered: bool,
    closed: bool,
}

impl Fake<'_> {
    fn next(&mut self) -> u8 {
        self.script.next().copied().unwrap_or(0)
    }

    fn socket(&mut self, id: SocketId) -> io::Result<&mut Upstream> {
        match self.sockets.get_mut(id) {
            Some(socket) if !socket.closed => Ok(socket),
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Sockets for Fake<'_> {
    fn send(&mut self, id: SocketId, bytes: &[u8]) -> io::Result<usize> {
        let take = match self.next() % 8 {
            0 => 0,
            1 => return Err(io::ErrorKind::ConnectionReset.into()),
            n => bytes.len().min(usize::from(n) * 512),
        };
        self.socket(id)?.request.extend_from_slice(&bytes[..take]);
        Ok(take)
    }

    fn receive(&mut self, id: SocketId, buf: &mut [u8]) -> io::Result<usize> {
        let socket = self.socket(id)?;
        if !socket.answered {
            let Some(answer) = switching(&socket.request) else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            socket.answered = true;
            let n = answer.len().min(buf.len());
            buf[..n].copy_from_slice(&answer[..n]);
            return Ok(n);
        }
        match self.next() % 4 {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            1 => Ok(0),
            2 => Err(io::ErrorKind::ConnectionReset.into()),
            _ => {
                let n = usize::from(self.next()).min(buf.len());
                for byte in &mut buf[..n] {
                    *byte = self.next();
                }
                Ok(n)
            }
        }
    }

    fn shut_write(&mut self, _: SocketId) {}

    fn close(&mut self, id: SocketId, _: bool) {
        if let Some(socket) = self.sockets.get_mut(id) {
            socket.closed = true;
        }
    }
}

/// The 101 a WebSocket server sends to `request`, once its head is complete.
fn switching(request: &[u8]) -> Option<Vec<u8>> {
    let end = request.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&request[..end]).ok()?;
    let key = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key").then(|| value.trim())
    })?;
    let accept = wsedge::handshake::accept_key(key.as_bytes());
    let mut answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Accept: "
        .to_vec();
    answer.extend_from_slice(&accept);
    answer.extend_from_slice(b"\r\n\r\n");
    Some(answer)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, frames)) = data.split_first() else {
        return;
    };
    let proxied = cuts & 0x80 != 0;
    let after = if proxied { AfterUpgrade::Proxy } else { AfterUpgrade::Echo };
    let config = wsedge_fuzz::config(after);
    let stats = Counters::default();
    let mut out = Vec::new();
    let mut now = 0;
    let peers = Peers {
        client: ([127, 0, 0, 1], 40000).into(),
        local: ([127, 0, 0, 1], 443).into(),
        tls: false,
    };
    let mut cx = Ctx { config: &config, now, out: &mut out, stats: &stats };
    let side = proxied.then(|| ProxySide::new(0, peers));
    let mut connection = Http2::new(&cx, side);
    let mut fake = Fake { script: data.iter().rev(), sockets: Vec::new() };
    let mut none = NoSockets;
    let mut input = Vec::new();
    Client::start(&mut input);
    input.extend_from_slice(frames);
    // Up to eight reads, cut where the first byte says; a deadline between each.
    let step = (input.len() / (usize::from(cuts % 8) + 1)).max(1);
    let mut ended = false;
    for piece in input.chunks(step) {
        cx.now = now;
        let io: &mut dyn Sockets = if proxied { &mut fake } else { &mut none };
        let mut next = connection.receive(piece, &mut cx, &mut |_| Ok(()), io);
        if proxied && next == Next::Continue {
            next = serve(&mut connection, &mut fake, &mut cx, peers);
        }
        if next != Next::Continue {
            ended = true;
            break;
        }
        now += 700;
        cx.now = now;
        let io: &mut dyn Sockets = if proxied { &mut fake } else { &mut none };
        if connection.deadline(config.send_timeout_ms).is_some_and(|at| at <= now)
            && connection.on_timeout(&mut cx, io) != Next::Continue
        {
            ended = true;
            break;
        }
    }
    let io: &mut dyn Sockets = if proxied { &mut fake } else { &mut none };
    if !ended {
        let _ = connection.on_eof(&mut cx, io);
    }
    connection.close(&stats, io);
    assert!(fake.sockets.iter().all(|s| s.closed), "every upstream socket is closed");
    let s = Counters::sum([&stats]);
    let silent = s.handshake_timeouts - s.timeouts_answered;
    assert_eq!(
        s.h2_streams,
        s.upgraded + s.rejected + s.upstream_refusals_passed + s.handshakes_abandoned + silent,
        "every stream has one outcome: {s:?}"
    );
});

/// What the driver does after each call in proxy mode: the streams that want an upstream
/// get one (or, as the input says, a refusal), then bytes move.
fn serve(connection: &mut Http2, fake: &mut Fake<'_>, cx: &mut Ctx<'_>, peers: Peers) -> Next {
    let (config, stats, now) = (cx.config, cx.stats, cx.now);
    let mut open = |conn: &mut Conn, attempts: usize, _: Option<(Link, io::Error)>, out: &mut Vec<u8>| {
        let mut own = Ctx { config, now, out, stats };
        if attempts > 2 || fake.next() % 8 == 0 {
            return Err(conn.on_upstream_failed(&mut own));
        }
        let mut request = Vec::new();
        conn.write_upstream_request(peers, &mut Ctx { config, now, out: &mut request, stats });
        fake.sockets.push(Upstream::default());
        Ok(Opened { id: fake.sockets.len() - 1, link: Link::new(0, attempts + 1), request, written: 0 })
    };
    connection.open_upstreams(&mut open, now, config.linger_ms);
    connection.relay(cx, fake)
}
