//! Relay throughput: one WebSocket client sending binary messages to an echo server (directly,
//! or through a proxy in front of it) and reading them back, with a window of messages in
//! flight so that both directions stay busy.
//!
//! ```sh
//! cargo bench --bench relay_throughput -- --target 127.0.0.1:8080 [--size 65536]
//!     [--window 4] [--secs 3] [--connections 1]
//! ```
//!
//! Prints one JSON object: payload bytes echoed per second (each byte counted once, on its
//! way back), messages, and the elapsed time. `compare_proxy.py` runs it against wsedge's
//! proxy mode and nginx's, each in front of the same echo upstream.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number = |flag: &str, default: u64| {
        value(flag).map_or(default, |v| {
            v.parse().unwrap_or_else(|_| {
                eprintln!("{flag}: expected a whole number, got {v:?}");
                std::process::exit(2)
            })
        })
    };
    let Some(target) = value("--target") else {
        eprintln!("--target HOST:PORT is required (an echo server, or a proxy in front of one)");
        std::process::exit(2)
    };
    let size = number("--size", 64 * 1024) as usize;
    let window = number("--window", 4).max(1) as usize;
    let secs = number("--secs", 3);
    let connections = number("--connections", 1).max(1);
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let target = target.clone();
            std::thread::spawn(move || run(&target, size, window, Duration::from_secs(secs)))
        })
        .collect();
    let mut messages = 0u64;
    for worker in workers {
        match worker.join() {
            Ok(Ok(n)) => messages += n,
            Ok(Err(error)) => {
                eprintln!("relay_throughput: {error}");
                std::process::exit(1)
            }
            Err(_) => std::process::exit(1),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bytes = messages * size as u64;
    println!(
        "{{\"messages\":{messages},\"size\":{size},\"elapsed_s\":{elapsed:.3},\"bytes_per_sec\":{:.0},\"mb_per_sec\":{:.1}}}",
        bytes as f64 / elapsed,
        bytes as f64 / elapsed / 1e6
    );
}

/// Echoes messages of `size` bytes for `duration`; returns how many came back intact.
fn run(target: &str, size: usize, window: usize, duration: Duration) -> Result<u64, String> {
    let stream = TcpStream::connect(target).map_err(|e| format!("connect {target}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let url = format!("ws://{target}/echo");
    let (mut socket, _): (WebSocket<TcpStream>, _) =
        tungstenite::client::client(url.as_str(), stream).map_err(|e| format!("upgrade: {e}"))?;
    let payload: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
    let mut in_flight = VecDeque::new();
    let deadline = Instant::now() + duration;
    let mut echoed = 0u64;
    loop {
        while in_flight.len() < window && Instant::now() < deadline {
            socket
                .send(Message::binary(payload.clone()))
                .map_err(|e| format!("send: {e}"))?;
            in_flight.push_back(());
        }
        if in_flight.is_empty() {
            break;
        }
        match socket.read().map_err(|e| format!("read: {e}"))? {
            Message::Binary(data) if data.len() == size => {
                in_flight.pop_front();
                echoed += 1;
            }
            Message::Binary(data) => {
                return Err(format!("echo of {} bytes, sent {size}", data.len()))
            }
            _ => {}
        }
    }
    let _ = socket.close(None);
    Ok(echoed)
}
