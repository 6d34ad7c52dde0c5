//! The metrics port: one thread reads every request, answers `/healthz` itself, and hands
//! `/metrics` to a scrape thread.
//!
//! # Budgets
//! `/healthz` is what a balancer probes to decide whether this edge stays in rotation: it
//! must be answered even while scrapers are slow or idle connections are held open. So no
//! connection holds anything until its request is read, and the request is read by one
//! thread for every connection (edge-triggered, non-blocking, [`MAX_READING`] at most,
//! the oldest closed to let a newcomer in, each cut at [`READ_DEADLINE`]). A `/healthz` is
//! one short line, written at once from that thread. Only a `/metrics`, once asked for,
//! takes one of [`MAX_CONCURRENT_SCRAPES`] scrape threads; over them a scraper gets `503`
//! at once. Each scrape has [`SCRAPE_DEADLINE`] in all, from accept to its last byte.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::{respond, ServerMetrics};
use crate::policy::Shutdown;

/// How long one scrape may take in all, from accept to the last byte written: a scraper
/// that trickles its request or reads slowly is cut off then.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(2);
/// Scrapes answered at once; over it a scraper gets `503` at once instead of waiting
/// behind the others.
const MAX_CONCURRENT_SCRAPES: usize = 4;
/// Connections whose request is being read; a newcomer over it closes the oldest, so that
/// idle connections cannot keep a probe out.
const MAX_READING: usize = 64;
/// How long a connection may take to send its request.
const READ_DEADLINE: Duration = Duration::from_millis(500);
/// The largest request head read.
const MAX_REQUEST: usize = 8192;

const LISTENER: Token = Token(usize::MAX);

/// A connection whose request is not read whole yet.
struct Reading {
    stream: TcpStream,
    accepted: Instant,
    request: Vec<u8>,
}

/// Serves `/metrics` and `/healthz` on `addr`; returns the bound address.
pub fn serve(
    addr: SocketAddr,
    counters: Vec<Arc<crate::stats::Counters>>,
    shutdown: Arc<Shutdown>,
    live: Arc<crate::policy::Live>,
) -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let metrics = Arc::new(ServerMetrics {
        counters,
        live,
        shutdown: Arc::clone(&shutdown),
    });
    let mut door = Door {
        poll: Poll::new()?,
        listener: TcpListener::from_std(listener),
        reading: Slab::with_capacity(MAX_READING),
        order: VecDeque::with_capacity(MAX_READING),
        scrapes: Arc::new(AtomicUsize::new(0)),
        metrics,
        shutdown,
    };
    door.poll
        .registry()
        .register(&mut door.listener, LISTENER, Interest::READABLE)?;
    std::thread::Builder::new()
        .name("wsedge-metrics".into())
        .spawn(move || door.run())?;
    Ok(bound)
}

struct Door {
    poll: Poll,
    listener: TcpListener,
    reading: Slab<Reading>,
    /// Keys of `reading`, oldest first (a key may be stale: its slot was reused or freed).
    order: VecDeque<(usize, Instant)>,
    scrapes: Arc<AtomicUsize>,
    metrics: Arc<ServerMetrics>,
    shutdown: Arc<Shutdown>,
}

impl Door {
    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        loop {
            let wait = self
                .order
                .front()
                .map(|&(_, at)| (at + READ_DEADLINE).saturating_duration_since(Instant::now()));
            if let Err(error) = self.poll.poll(&mut events, wait) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Nothing else is expected of epoll_wait here; do not spin on it.
                tracing::warn!(%error, "metrics port: poll failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    Token(key) => self.read(key),
                }
            }
            self.expire();
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if crate::sys::is_resource_exhaustion(&e) => {
                    // Out of descriptors: the next edge retries; do not spin now.
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
                Err(_) => continue,
            };
            if self.reading.len() >= MAX_READING {
                self.close_oldest();
            }
            let key = self.reading.insert(Reading {
                stream,
                accepted: Instant::now(),
                request: Vec::new(),
            });
            let reading = &mut self.reading[key];
            let registered =
                self.poll
                    .registry()
                    .register(&mut reading.stream, Token(key), Interest::READABLE);
            if registered.is_err() {
                self.reading.remove(key);
                continue;
            }
            self.order.push_back((key, reading.accepted));
            // The request often came with the connection.
            self.read(key);
        }
    }

    /// Reads what connection `key` sent; once its request head is whole, answers it.
    fn read(&mut self, key: usize) {
        let Some(reading) = self.reading.get_mut(key) else {
            return;
        };
        let mut buf = [0u8; 1024];
        loop {
            match reading.stream.read(&mut buf) {
                Ok(0) => return self.close(key),
                Ok(n) => {
                    reading.request.extend_from_slice(&buf[..n]);
                    if reading.request.windows(4).any(|w| w == b"\r\n\r\n")
                        || reading.request.len() >= MAX_REQUEST
                    {
                        return self.dispatch(key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(key),
            }
        }
    }

    /// A whole request: `/healthz` (and anything that is not `/metrics`) is answered here;
    /// `/metrics` goes to a scrape thread, or gets `503` when all are busy.
    fn dispatch(&mut self, key: usize) {
        let mut reading = self.reading.remove(key);
        let _ = self.poll.registry().deregister(&mut reading.stream);
        let text = String::from_utf8_lossy(&reading.request);
        let mut words = text.split_whitespace();
        let (method, path) = (words.next(), words.next().unwrap_or(""));
        let stream = reading.stream;
        if method != Some("GET") {
            let _ = write_now(
                &stream,
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n",
            );
            return;
        }
        if path != "/metrics" {
            let _ = respond(path, &self.metrics, &self.shutdown)
                .and_then(|(status, kind, body)| write_now(&stream, status, kind, &body));
            return;
        }
        if self.scrapes.fetch_add(1, Relaxed) >= MAX_CONCURRENT_SCRAPES {
            self.scrapes.fetch_sub(1, Relaxed);
            let _ = busy(&stream);
            return;
        }
        let (metrics, shutdown, scrapes) = (
            Arc::clone(&self.metrics),
            Arc::clone(&self.shutdown),
            Arc::clone(&self.scrapes),
        );
        let deadline = reading.accepted + SCRAPE_DEADLINE;
        let spawned = std::thread::Builder::new()
            .name("wsedge-scrape".into())
            .spawn(move || {
                let stream = std::net::TcpStream::from(std::os::fd::OwnedFd::from(stream));
                let _ = scrape(&stream, &metrics, &shutdown, deadline);
                // The slot is free before the scraper sees the close: a scraper that asks
                // again at once is not turned away by its own last scrape.
                scrapes.fetch_sub(1, Relaxed);
                drop(stream);
            });
        if spawned.is_err() {
            self.scrapes.fetch_sub(1, Relaxed);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut reading) = self.reading.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut reading.stream);
        }
    }

    /// Makes room for a newcomer: the connection that has been reading longest goes.
    fn close_oldest(&mut self) {
        while let Some((key, at)) = self.order.pop_front() {
            if self.reading.get(key).is_some_and(|r| r.accepted == at) {
                return self.close(key);
            }
        }
    }

    /// Closes the connections that did not send their request in time.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&(key, at)) = self.order.front() {
            let live = self.reading.get(key).is_some_and(|r| r.accepted == at);
            if live && now < at + READ_DEADLINE {
                return;
            }
            self.order.pop_front();
            if live {
                self.close(key);
            }
        }
    }
}

/// Writes a short answer without waiting: a fresh connection's send buffer takes it whole.
fn write_now(stream: &TcpStream, status: &str, kind: &str, body: &str) -> io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = stream;
    stream.write_all(response.as_bytes())
}

/// The answer to a scraper over [`MAX_CONCURRENT_SCRAPES`], written without waiting.
fn busy(stream: &TcpStream) -> io::Result<()> {
    let mut stream = stream;
    stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\
          Retry-After: 1\r\nConnection: close\r\n\r\ntoo many now\n",
    )
}

/// Writes `/metrics` on a scrape thread, by `deadline`.
fn scrape(
    stream: &std::net::TcpStream,
    metrics: &Arc<ServerMetrics>,
    shutdown: &Shutdown,
    deadline: Instant,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let (status, kind, body) = respond("/metrics", metrics, shutdown)?;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut response = head.into_bytes();
    response.extend_from_slice(body.as_bytes());
    let mut writer = stream;
    let mut sent = 0;
    while sent < response.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match writer.write(&response[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
