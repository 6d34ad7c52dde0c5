//! What wsedge's TLS session costs per byte once the handshake is done, in memory (no
//! sockets): a rustls client seals 64 KiB messages that the server side decrypts
//! (`TlsLink::receive`), and the server side seals the same that the client reads
//! (`TlsLink::send`). Prints the server side's own time per direction, in MB/s (median of
//! 5 runs of 256 MiB each). TLS 1.3, AES-128-GCM, the provider wsedge runs
//! (`WSEDGE_TLS_PROVIDER`).
//!
//!     cargo bench --bench tls_bulk

use std::io::Write;
use std::time::{Duration, Instant};

use wsedge::transport::{Outbox, Queue, TlsEnd, TlsLink};

const MESSAGE: usize = 64 * 1024;
const MESSAGES: usize = 4096;

#[path = "common/tls_pair.rs"]
mod tls_pair;
use tls_pair::{client_flight, client_takes, configs};

fn main() {
    let (server, client_config) = configs();
    let name = "localhost".try_into().expect("name");
    let mut client = rustls::ClientConnection::new(client_config, name).expect("client");
    let mut link = TlsLink::new(&server).expect("server");
    let mut plaintext = Vec::new();
    while client.is_handshaking() || link.is_handshaking() || client.wants_write() {
        let mut outbox = Outbox::default();
        let end = link.receive(&client_flight(&mut client), &mut plaintext, &mut outbox);
        assert_eq!(end, TlsEnd::Open);
        client_takes(&mut client, outbox.unsent());
    }
    let message = vec![0x5a_u8; MESSAGE];
    let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let mut spent = Duration::ZERO;
        for _ in 0..MESSAGES {
            client.writer().write_all(&message).expect("client writes");
            let records = client_flight(&mut client);
            let mut outbox = Outbox::default();
            plaintext.clear();
            let start = Instant::now();
            let end = link.receive(&records, &mut plaintext, &mut outbox);
            spent += start.elapsed();
            assert_eq!((end, plaintext.len()), (TlsEnd::Open, MESSAGE));
        }
        inbound.push(spent);
        let mut spent = Duration::ZERO;
        for _ in 0..MESSAGES {
            let mut outbox = Outbox::default();
            let start = Instant::now();
            link.send(&message, &mut outbox);
            spent += start.elapsed();
            client_takes(&mut client, outbox.unsent());
        }
        outbound.push(spent);
    }
    let rate = |spent: &mut Vec<Duration>| {
        spent.sort();
        (MESSAGE * MESSAGES) as f64 / spent[spent.len() / 2].as_secs_f64() / 1e6
    };
    println!(
        "TLS 1.3 AES-128-GCM, 64 KiB messages, the server side's own time: \
         decrypt {:.0} MB/s, encrypt {:.0} MB/s",
        rate(&mut inbound),
        rate(&mut outbound)
    );
}
