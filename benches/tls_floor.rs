//! The TLS floor server: the least a `wss` upgrade can cost with rustls, the reference for
//! wsedge's TLS termination (as `upgrade_storm.rs`'s floor is for plain upgrades).
//!
//! One thread, mio, edge-triggered; per connection a rustls `ServerConnection` with wsedge's
//! own TLS settings (`wsedge::tls::server_config`: same provider, suites, groups, tickets);
//! once the request's end arrives, a canned 101 for RFC 6455's sample key and a Close(1000),
//! `close_notify`, close. No validation, no limits, no timers: whatever wsedge spends above
//! this is its own.
//!
//!     cargo bench --bench tls_floor -- PORT CERT KEY
//!
//! (`benches/tls_cost.py` starts it; the load must send `--key dGhlIHNhbXBsZSBub25jZQ==`.)

use std::collections::HashMap;
use std::io::{self, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
const ANSWER: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x88\x02\x03\xe8";

struct Client {
    stream: TcpStream,
    tls: rustls::ServerConnection,
    request: Vec<u8>,
    answered: bool,
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [port, cert, key] = &args[..] else {
        eprintln!("usage: tls_floor PORT CERT KEY");
        std::process::exit(2);
    };
    let settings = wsedge::tls::TlsSettings {
        pairs: vec![(cert.into(), key.into())],
        versions: vec![wsedge::tls::TlsVersion::V1_3],
        groups: vec![wsedge::tls::TlsGroup::X25519],
        h2: false,
    };
    let config = wsedge::tls::server_config(&settings).map_err(io::Error::other)?;
    let addr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(io::Error::other)?;
    let mut listener = TcpListener::bind(addr)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let hold = std::env::var_os("FLOOR_HOLD").is_some();
    let mut clients: HashMap<usize, Client> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    next = next.wrapping_add(1) % (usize::MAX / 2);
                    poll.registry()
                        .register(&mut stream, Token(next), Interest::READABLE)?;
                    let tls =
                        rustls::ServerConnection::new(config.clone()).map_err(io::Error::other)?;
                    clients.insert(
                        next,
                        Client {
                            stream,
                            tls,
                            request: Vec::new(),
                            answered: false,
                        },
                    );
                }
                continue;
            }
            let key = event.token().0;
            let done = match clients.get_mut(&key) {
                Some(client) => serve(client, hold),
                None => false,
            };
            if done {
                clients.remove(&key);
            }
        }
    }
}

/// Reads what came; returns whether the connection is finished. Held (`FLOOR_HOLD` set in
/// the environment, for storms of clients that stay: `benches/storm.py --own`), it answers
/// the 101 alone and keeps the connection until the client closes it.
fn serve(client: &mut Client, hold: bool) -> bool {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match client.stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                let mut input = &buf[..n];
                while !input.is_empty() {
                    if client.tls.read_tls(&mut input).is_err()
                        || client.tls.process_new_packets().is_err()
                    {
                        let _ = client.tls.write_tls(&mut client.stream);
                        return true;
                    }
                }
                let _ = client.tls.reader().read_to_end(&mut client.request);
                if client.answered {
                    client.request.clear();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return true,
        }
    }
    let answered = !client.answered && client.request.windows(4).any(|w| w == b"\r\n\r\n");
    if answered && hold {
        client.answered = true;
        let _ = client.tls.writer().write_all(&ANSWER[..ANSWER.len() - 4]);
    } else if answered {
        let _ = client.tls.writer().write_all(ANSWER);
        client.tls.send_close_notify();
    }
    while client.tls.wants_write() {
        if client.tls.write_tls(&mut client.stream).is_err() {
            return true;
        }
    }
    answered && !hold
}
