//! End to end: wsedge `--after close` (with and without `TCP_DEFER_ACCEPT`) against a floor
//! server, interleaved, plus the memory
//! an idle upgraded connection costs.
//!
//! ```sh
//! cargo bench --bench upgrade_storm -- [--rounds 5] [--secs 3] [--concurrency 64] [--idle 10000]
//!     [--threads 1] [--servers epoll,epoll-defer,uring,uring-defer,floor]
//! cargo bench --bench upgrade_storm -- --target 127.0.0.1:8080 [--secs 3]   # any server
//! ```
//!
//! Every server runs one thread pinned to CPU 0; the load runs on CPU 1. On two cores the
//! load cannot saturate a fast server (the connecting side does much of the loopback TCP
//! work), so servers are ranked by **server CPU time per upgrade**: utime + stime from
//! `/proc/PID/stat` over a run, divided by the upgrades the client verified.
//!
//! The floor server is the physical reference: accept, register with epoll, read to the
//! blank line, write a canned 101, close. It lives in this file and runs as a child
//! process of it (`--floor-server`), so each server's CPU time is its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use wsedge::handshake::{check_response, ResponseCheck};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const REQUEST: &[u8] = b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const CANNED_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x88\x02\x03\xe8";

struct Options {
    rounds: usize,
    secs: u64,
    concurrency: usize,
    idle: usize,
    threads: usize,
    servers: Vec<String>,
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--floor-server") {
        let port = args
            .iter()
            .position(|a| a == "--port")
            .and_then(|i| args.get(i + 1))
            .map_or("0", String::as_str);
        return floor_server(port);
    }
    let value = |flag: &str, default: usize| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{flag} takes a number"))
            })
            .unwrap_or(default)
    };
    let options = Options {
        rounds: value("--rounds", 5),
        secs: value("--secs", 3) as u64,
        concurrency: value("--concurrency", 64),
        idle: value("--idle", 10_000),
        threads: value("--threads", 1),
        servers: args
            .iter()
            .position(|a| a == "--servers")
            .and_then(|i| args.get(i + 1))
            .map_or("epoll,epoll-defer,uring,uring-defer,floor", String::as_str)
            .split(',')
            .map(str::to_owned)
            .collect(),
    };
    pin_to_cpu(1);
    if let Some(target) = args
        .iter()
        .position(|a| a == "--target")
        .and_then(|i| args.get(i + 1))
    {
        // Storm a server started elsewhere (for perf, strace, or another implementation).
        let addr = target.parse().expect("--target takes ADDR:PORT");
        let run = storm(addr, options.concurrency, Duration::from_secs(options.secs));
        println!(
            "{} upgrades, {} errors, {:.0}/s",
            run.upgrades,
            run.errors,
            run.upgrades as f64 / run.secs
        );
        return Ok(());
    }
    handshake_storm(&options)?;
    if options.idle > 0 {
        for io in ["epoll", "uring"] {
            idle_memory(options.idle, io)?;
        }
    }
    Ok(())
}

fn pin_to_cpu(cpu: usize) {
    if let Some(core) =
        core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|c| c.id == cpu))
    {
        core_affinity::set_for_current(core);
    }
}

/// A server child process; killed on drop.
struct Target {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` and waits for "listening on ADDR" on its stdout or stderr.
fn start(name: &'static str, mut command: Command) -> Target {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn server");
    let (tx, rx) = std::sync::mpsc::channel();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as _),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split([' ', ',']).next().unwrap_or_default().to_owned());
                }
            }
        });
    }
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("server did not start")
        .parse()
        .expect("address");
    Target { name, child, addr }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap_or("0 kB");
    kb.trim()
        .trim_end_matches(" kB")
        .trim()
        .parse::<u64>()
        .unwrap_or(0)
        * 1024
}

struct Run {
    upgrades: u64,
    errors: u64,
    secs: f64,
    cpu: f64,
    latency: Histogram<u64>,
}

/// The wsedge variants to compare, by `--servers` name.
const WSEDGE_VARIANTS: &[(&str, &[&str])] = &[
    ("epoll", &["--io", "epoll"]),
    (
        "epoll-defer",
        &["--io", "epoll", "--defer-accept-secs", "1"],
    ),
    ("uring", &["--io", "uring"]),
    (
        "uring-defer",
        &["--io", "uring", "--defer-accept-secs", "1"],
    ),
];

fn handshake_storm(options: &Options) -> std::io::Result<()> {
    let threads = options.threads.to_string();
    let mut targets = Vec::new();
    for name in &options.servers {
        if name == "floor" {
            let mut floor = Command::new(std::env::current_exe()?);
            floor.arg("--floor-server");
            targets.push(start("floor", floor));
            continue;
        }
        let Some((label, flags)) = WSEDGE_VARIANTS.iter().find(|(n, _)| n == name) else {
            panic!("--servers: unknown server {name:?} (floor, epoll, epoll-defer, uring, uring-defer)");
        };
        let mut wsedge = Command::new(env!("CARGO_BIN_EXE_wsedge"));
        wsedge.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            &threads,
            "--after",
            "close",
        ]);
        wsedge.args(*flags);
        targets.push(start(label, wsedge));
    }
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    println!(
        "handshake storm: {} rounds x {} s, concurrency {}, wsedge with {} thread(s) from CPU 0, load on CPU 1",
        options.rounds, options.secs, options.concurrency, options.threads
    );
    for round in 0..options.rounds {
        for (i, target) in targets.iter().enumerate() {
            let cpu_before = cpu_seconds(target.child.id());
            let mut run = storm(
                target.addr,
                options.concurrency,
                Duration::from_secs(options.secs),
            );
            run.cpu = cpu_seconds(target.child.id()) - cpu_before;
            println!(
                "  round {round} {:<30} {:>8.0} upgrades/s  {:>6.2} us CPU/upgrade  p99 {:>5} us  errors {}",
                target.name,
                run.upgrades as f64 / run.secs,
                run.cpu * 1e6 / run.upgrades.max(1) as f64,
                run.latency.value_at_quantile(0.99),
                run.errors
            );
            runs[i].push(run);
        }
    }
    println!("\n| server | upgrades/s (median, min-max) | server CPU per upgrade (median) | p50 | p99 | errors |");
    println!("|---|---|---|---|---|---|");
    let mut cpu_medians = Vec::new();
    for (target, runs) in targets.iter().zip(&runs) {
        let rates: Vec<f64> = runs.iter().map(|r| r.upgrades as f64 / r.secs).collect();
        let cpus: Vec<f64> = runs
            .iter()
            .map(|r| r.cpu * 1e6 / r.upgrades.max(1) as f64)
            .collect();
        let p50: Vec<f64> = runs
            .iter()
            .map(|r| r.latency.value_at_quantile(0.5) as f64)
            .collect();
        let p99: Vec<f64> = runs
            .iter()
            .map(|r| r.latency.value_at_quantile(0.99) as f64)
            .collect();
        let errors: u64 = runs.iter().map(|r| r.errors).sum();
        cpu_medians.push(median(&cpus));
        println!(
            "| {} | {:.0} ({:.0}-{:.0}) | {:.2} us | {:.0} us | {:.0} us | {errors} |",
            target.name,
            median(&rates),
            rates.iter().cloned().fold(f64::MAX, f64::min),
            rates.iter().cloned().fold(0.0, f64::max),
            median(&cpus),
            median(&p50),
            median(&p99)
        );
    }
    println!("\nCPU per upgrade, ratios of medians (row / column):");
    for (row, row_cpu) in targets.iter().zip(&cpu_medians) {
        let ratios: Vec<String> = targets
            .iter()
            .zip(&cpu_medians)
            .map(|(col, c)| format!("{}: {:.3}", col.name, row_cpu / c))
            .collect();
        println!("  {:<12} {}", row.name, ratios.join("  "));
    }
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[sorted.len() / 2]
}

/// One closed-loop storm: `concurrency` slots each connect, upgrade, verify, reset, repeat.
fn storm(addr: SocketAddr, concurrency: usize, duration: Duration) -> Run {
    struct Slot {
        stream: TcpStream,
        started: Instant,
        sent: bool,
        response: Vec<u8>,
    }
    let mut poll = Poll::new().expect("poll");
    let mut events = Events::with_capacity(1024);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut upgrades, mut errors) = (0u64, 0u64);
    let open = |poll: &Poll, token: usize| -> Option<Slot> {
        let mut stream = TcpStream::connect(addr).ok()?;
        poll.registry()
            .register(
                &mut stream,
                Token(token),
                Interest::READABLE | Interest::WRITABLE,
            )
            .ok()?;
        Some(Slot {
            stream,
            started: Instant::now(),
            sent: false,
            response: Vec::with_capacity(256),
        })
    };
    let mut slots: Vec<Option<Slot>> = (0..concurrency).map(|t| open(&poll, t)).collect();
    let start = Instant::now();
    while start.elapsed() < duration {
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .expect("poll");
        for event in events.iter() {
            let token = event.token().0;
            let Some(slot) = slots[token].as_mut() else {
                continue;
            };
            let mut done = None;
            if event.is_writable() && !slot.sent {
                slot.sent = true;
                if slot.stream.write_all(REQUEST).is_err() {
                    done = Some(false);
                }
            }
            if event.is_readable() && done.is_none() {
                let mut buf = [0u8; 1024];
                loop {
                    match slot.stream.read(&mut buf) {
                        Ok(0) => break done = Some(false),
                        Ok(n) => {
                            slot.response.extend_from_slice(&buf[..n]);
                            match check_response(&slot.response, KEY.as_bytes(), &[]) {
                                ResponseCheck::Partial => {}
                                ResponseCheck::Accepted { .. } => break done = Some(true),
                                ResponseCheck::Failed(_) => break done = Some(false),
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => break done = Some(false),
                    }
                }
            }
            if let Some(ok) = done {
                if ok {
                    upgrades += 1;
                    let _ = latency.record(slot.started.elapsed().as_micros().max(1) as u64);
                } else {
                    errors += 1;
                }
                if let Some(finished) = slots[token].take() {
                    // RST, not FIN: the client side keeps no TIME_WAIT and no port.
                    let _ =
                        socket2::SockRef::from(&finished.stream).set_linger(Some(Duration::ZERO));
                }
                slots[token] = open(&poll, token);
            }
        }
        for (token, slot) in slots.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = open(&poll, token);
            }
        }
    }
    Run {
        upgrades,
        errors,
        secs: start.elapsed().as_secs_f64(),
        cpu: 0.0,
        latency,
    }
}

/// Memory per idle upgraded connection in echo mode: RSS before and after `count` clients.
fn idle_memory(count: usize, io: &str) -> std::io::Result<()> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wsedge"));
    command.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--after",
        "echo",
        "--io",
        io,
    ]);
    let target = start("wsedge (epoll, echo)", command);
    let pid = target.child.id();
    let mut held = Vec::with_capacity(count);
    let upgrade_one = || -> std::io::Result<std::net::TcpStream> {
        let mut stream = std::net::TcpStream::connect(target.addr)?;
        stream.write_all(REQUEST)?;
        let mut response = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = stream.read(&mut buf)?;
            response.extend_from_slice(&buf[..n]);
            match check_response(&response, KEY.as_bytes(), &[]) {
                ResponseCheck::Partial if n > 0 => continue,
                ResponseCheck::Accepted { .. } => return Ok(stream),
                other => return Err(std::io::Error::other(format!("{other:?}"))),
            }
        }
    };
    // The slope between half and all of the connections: fixed costs that are touched
    // gradually (io_uring's rings and provided buffers, allocator arenas) cancel out.
    let half = count / 2;
    for _ in 0..half {
        held.push(upgrade_one()?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_bytes(pid);
    for _ in half..count {
        held.push(upgrade_one()?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_bytes(pid);
    let per = (after.saturating_sub(before)) as f64 / (count - half) as f64;
    println!(
        "idle upgraded connections ({io}, echo mode): RSS {:.1} MiB at {half}, {:.1} MiB at {count}: \
         {per:.0} bytes per connection (user space; kernel socket memory not included)",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    Ok(())
}

/// The floor: the least a server can do per upgrade with epoll. With `FLOOR_HOLD` set in its
/// environment it answers the 101 alone and holds the connection until the client closes it
/// (for storms of clients that stay, `benches/storm.py --own`).
fn floor_server(port: &str) -> std::io::Result<()> {
    pin_to_cpu(0);
    let hold = std::env::var_os("FLOOR_HOLD").is_some();
    let answer = if hold {
        &CANNED_101[..CANNED_101.len() - 4]
    } else {
        CANNED_101
    };
    let addr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|_| std::io::Error::other("--port takes a number"))?;
    let mut listener = TcpListener::bind(addr)?;
    println!("listening on {}", listener.local_addr()?);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, Token(usize::MAX), Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut clients = slab::Slab::<(TcpStream, Vec<u8>, bool)>::new();
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == Token(usize::MAX) {
                while let Ok((mut stream, _)) = listener.accept() {
                    let entry = clients.vacant_entry();
                    poll.registry().register(
                        &mut stream,
                        Token(entry.key()),
                        Interest::READABLE,
                    )?;
                    entry.insert((stream, Vec::new(), false));
                }
                continue;
            }
            let key = event.token().0;
            let Some((stream, seen, answered)) = clients.get_mut(key) else {
                continue;
            };
            let mut buf = [0u8; 4096];
            let finished = match stream.read(&mut buf) {
                Ok(0) => true,
                Ok(_) if *answered => false,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = stream.write_all(answer);
                        if hold {
                            // Held: what the client sends from now on is read and dropped.
                            *answered = true;
                            false
                        } else {
                            true
                        }
                    } else {
                        false
                    }
                }
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if finished {
                clients.remove(key);
            }
        }
    }
}
