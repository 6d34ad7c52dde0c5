//! One load worker: a mio event loop driving many client connections through the
//! handshake, in one of four modes. Workers share nothing but progress counters.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use wsedge::handshake::{
    check_response, key_from_nonce, write_request, ClientRequest, ResponseCheck, ResponseError,
    KEY_LEN, MAX_RESPONSE_HEADER_BYTES,
};

use crate::net;
use crate::report::{record, ErrorKind, Report};
use crate::retry::{self, RetryPolicy};
use crate::target::Target;

/// How connections arrive and what happens after the 101.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Closed loop: `concurrency` connections in flight, each replaced when it finishes.
    Storm { concurrency: usize },
    /// Open loop: connections start at a fixed rate whatever the server does; latency
    /// counts from each connection's intended start (no coordinated omission).
    Rate { per_sec: f64 },
    /// Establish `connections` (at `per_sec` if set), keep them for `hold`, pinging.
    Hold {
        connections: usize,
        per_sec: Option<f64>,
        hold: Duration,
        ping_interval: Option<Duration>,
    },
    /// Trickle the request one byte per `byte_interval` and time how long the server takes
    /// to cut each client off.
    Slowloris {
        connections: usize,
        byte_interval: Duration,
    },
    /// `clients` clients, first attempts spread over `spread`, each retrying by `retry`
    /// until it holds an upgraded connection, which it then keeps; the run ends when all
    /// are in.
    Reconnect {
        clients: usize,
        spread: Duration,
        retry: RetryPolicy,
    },
}

/// How a client closes after its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// RST (SO_LINGER 0): no TIME_WAIT on the client side.
    Rst,
    /// A plain close (FIN).
    Fin,
    /// A WebSocket Close frame (1000), then FIN.
    Ws,
}

/// Everything a worker needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub mode: Mode,
    pub duration: Duration,
    /// Stop starting connections after this many (per worker).
    pub count: Option<u64>,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub close: CloseMode,
    /// Source addresses to rotate through (empty: let the kernel choose).
    pub sources: Vec<IpAddr>,
    pub headers: Vec<String>,
    pub protocols: Vec<String>,
    /// The same key on every connection (default: a random one each).
    pub fixed_key: Option<[u8; KEY_LEN]>,
    /// `wss://`: the TLS client settings (one session cache per process: `--tls-resume`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Start each connection with a PROXY protocol header, as a balancer in front would.
    pub proxy_header: Option<ProxyHeaderVersion>,
    /// Where each interval's figures go (`--hdr-log`), if anywhere.
    pub intervals: Option<IntervalSink>,
    /// `--h2`: WebSockets over HTTP/2 (RFC 8441), this many extended CONNECT streams on
    /// each connection; every stream counts as one upgrade.
    pub h2_streams: Option<u32>,
}

/// Workers cut their figures into intervals counted from one shared origin, so that the
/// intervals of all workers line up and can be summed into one log line each.
#[derive(Debug, Clone)]
pub struct IntervalSink {
    pub origin: Instant,
    pub length: Duration,
    pub sender: mpsc::Sender<Interval>,
}

/// One worker's figures for one interval: `[origin + index * length, + length)`.
#[derive(Debug)]
pub struct Interval {
    pub worker: usize,
    pub index: u64,
    pub report: Report,
}

/// The PROXY protocol version `--proxy-header` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeaderVersion {
    /// Text.
    V1,
    /// Binary.
    V2,
}

/// Live counters for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub in_flight: AtomicU64,
    pub established: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    /// `wss://`: the ClientHello is out, the TLS handshake under way (the request waits in
    /// rustls and leaves with the client's Finished).
    Securing,
    Reading,
    Holding,
    Trickling,
}

struct Slot {
    stream: TcpStream,
    /// `wss://`: the TLS session.
    tls: Option<Box<rustls::ClientConnection>>,
    phase: Phase,
    /// Latency origin: the intended start in rate mode, the connect start otherwise.
    intended: Instant,
    started: Instant,
    sent: Instant,
    key: [u8; KEY_LEN],
    response: Vec<u8>,
    deadline: Instant,
    /// Slowloris: bytes of the request sent so far; hold: next ping.
    trickled: usize,
    next_tick: Instant,
    /// `--h2`: the connection's streams.
    h2: Option<Box<H2Conn>>,
    /// `reconnect`: the client this attempt is for.
    client: u32,
}

/// `--h2`: one connection's HTTP/2 state and its streams' answers.
#[derive(Default)]
struct H2Conn {
    client: wsedge::http2::client::Client,
    /// The extended CONNECTs are out (sent once the server's SETTINGS allowed them).
    opened: bool,
    /// Streams answered, upgraded or not.
    answered: u32,
    upgraded: u32,
    /// Why the first stream that failed did.
    failure: Option<ErrorKind>,
    /// `reconnect`: a refusal's `Retry-After`, as the head `retry::retry_after` reads.
    retry_after: Vec<u8>,
}

/// What the frames read on an `--h2` connection came to.
enum H2Outcome {
    /// A stream was answered: upgraded, or refused for this reason.
    Stream(Result<(), ErrorKind>),
    /// The connection failed (or went away before every stream was answered).
    Failed(ErrorKind),
}

/// A slot that is no reconnecting client's attempt.
const NO_CLIENT: u32 = u32::MAX;

/// `reconnect`: the clients of one worker.
struct Clients {
    policy: RetryPolicy,
    /// Failed attempts of each client since it was last in.
    failures: Vec<u32>,
    /// Attempts of each client since the run began.
    attempts: Vec<u32>,
    /// Clients waiting for their next attempt, soonest first.
    waiting: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Clients holding an upgraded connection.
    inside: usize,
}

/// Result of one worker.
pub struct WorkerResult {
    pub report: Report,
    /// Hold mode: when the last connection was established, from the start.
    pub established_after: Option<Duration>,
}

struct Worker<'a> {
    plan: &'a Plan,
    /// The plan's subprotocols and headers as slices, built once.
    protocols: Vec<&'a str>,
    headers: Vec<&'a str>,
    progress: &'a Progress,
    poll: Poll,
    slots: Slab<Slot>,
    /// The current interval's figures; folded into `finished` at each interval's end.
    report: Report,
    finished: Report,
    interval_index: u64,
    worker_index: usize,
    rng: u64,
    started: u64,
    source_index: usize,
    request: Vec<u8>,
    established: usize,
    /// `wss://`: the name the server's certificate must carry (SNI too).
    server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// `reconnect`: its clients.
    clients: Option<Clients>,
    /// When the run began: the zero of `reconnect`'s timeline.
    began: Instant,
}

const SWEEP: Duration = Duration::from_millis(10);

/// Runs one worker's share of the plan (`share` connections of the mode's total).
pub fn run(
    plan: &Plan,
    share: usize,
    worker_index: usize,
    progress: &Progress,
) -> io::Result<WorkerResult> {
    let mut worker = Worker {
        plan,
        protocols: plan.protocols.iter().map(String::as_str).collect(),
        headers: plan.headers.iter().map(String::as_str).collect(),
        progress,
        poll: Poll::new()?,
        slots: Slab::new(),
        report: Report::default(),
        finished: Report::default(),
        interval_index: 0,
        worker_index,
        rng: 0x9E37_79B9_7F4A_7C15
            ^ (worker_index as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()),
        started: 0,
        source_index: worker_index,
        request: Vec::with_capacity(512),
        established: 0,
        server_name: plan.tls.as_ref().and_then(|_| {
            rustls::pki_types::ServerName::try_from(plan.target.server_name.clone()).ok()
        }),
        clients: None,
        began: Instant::now(),
    };
    if let Mode::Reconnect {
        clients,
        spread,
        retry,
    } = plan.mode
    {
        let clients = share.min(clients);
        let mut waiting = BinaryHeap::with_capacity(clients);
        for client in 0..clients {
            let uniform = worker.uniform();
            waiting.push(Reverse((
                worker.began + spread.mul_f64(uniform),
                client as u32,
            )));
        }
        worker.clients = Some(Clients {
            policy: retry,
            failures: vec![0; clients],
            attempts: vec![0; clients],
            waiting,
            inside: 0,
        });
    }
    worker.run(share)
}

impl Worker<'_> {
    fn run(&mut self, share: usize) -> io::Result<WorkerResult> {
        let start = self.began;
        let end = start + self.plan.duration;
        let mut events = Events::with_capacity(1024);
        let mut next_arrival = start;
        let mut established_after = None;
        let mut hold_until: Option<Instant> = None;
        let mut last_sweep = start;
        let mut interval_end = self.interval_end(start);
        loop {
            let now = Instant::now();
            if now >= interval_end {
                self.close_interval();
                interval_end = self.interval_end(now);
            }
            if now >= end || hold_until.is_some_and(|t| now >= t) {
                break;
            }
            let budget_left = self.plan.count.is_none_or(|c| self.started < c);
            let launching = match self.plan.mode {
                Mode::Storm { concurrency } => {
                    while budget_left_now(self.plan, self.started)
                        && self.slots.len() < share.min(concurrency).max(1)
                    {
                        self.launch(now, now);
                    }
                    budget_left
                }
                Mode::Rate { per_sec } => {
                    let interval =
                        Duration::from_secs_f64(1.0 / (per_sec / share.max(1) as f64).max(1e-6));
                    while next_arrival <= now && budget_left_now(self.plan, self.started) {
                        self.launch(next_arrival, now);
                        next_arrival += interval;
                    }
                    budget_left
                }
                Mode::Hold {
                    connections,
                    per_sec,
                    hold,
                    ..
                } => {
                    let target = share.min(connections);
                    let interval = per_sec.map(|r| {
                        Duration::from_secs_f64(1.0 / (r / share.max(1) as f64).max(1e-6))
                    });
                    while (self.started as usize) < target && next_arrival <= now {
                        self.launch(now, now);
                        if let Some(interval) = interval {
                            next_arrival += interval;
                        }
                    }
                    if self.established >= target && established_after.is_none() {
                        established_after = Some(now - start);
                        hold_until = Some(now + hold);
                    }
                    // Everything launched and settled (some may have failed): start holding.
                    if established_after.is_none()
                        && self.started as usize >= target
                        && self.pending() == 0
                    {
                        established_after = Some(now - start);
                        hold_until = Some(now + hold);
                    }
                    true
                }
                Mode::Slowloris { connections, .. } => {
                    while (self.started as usize) < share.min(connections) {
                        self.launch(now, now);
                    }
                    true
                }
                Mode::Reconnect { .. } => {
                    while let Some(client) = self.next_due_client(now) {
                        self.launch_for(client, now);
                    }
                    let Some(clients) = &self.clients else { break };
                    if clients.inside == clients.failures.len() {
                        break;
                    }
                    true
                }
            };
            if !launching && self.slots.is_empty() {
                break;
            }
            let mut timeout = SWEEP.min(interval_end.saturating_duration_since(now));
            if let Mode::Rate { .. } = self.plan.mode {
                timeout = timeout.min(next_arrival.saturating_duration_since(now));
            }
            if let Some(Reverse((at, _))) = self.clients.as_ref().and_then(|c| c.waiting.peek()) {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
            self.poll.poll(
                &mut events,
                Some(timeout.min(end.saturating_duration_since(now))),
            )?;
            let now = Instant::now();
            for event in events.iter() {
                let key = event.token().0;
                if event.is_writable() {
                    self.on_writable(key, now);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.on_readable(key, now);
                }
            }
            if now.duration_since(last_sweep) >= SWEEP {
                last_sweep = now;
                self.sweep(now);
            }
        }
        // Whatever is still open at the end: slowloris clients were never cut off, held
        // connections close cleanly, handshakes still in flight are unfinished.
        let now = Instant::now();
        let keys: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.slots[key].phase {
                Phase::Trickling => {
                    self.report.never_cut += 1;
                    self.finish(key, None, now);
                }
                Phase::Holding => self.finish(key, None, now),
                // Cut short by the end of the run, not failed: counted apart.
                Phase::Connecting | Phase::Securing | Phase::Reading => {
                    self.report.unfinished += 1;
                    self.finish(key, None, now);
                }
            }
        }
        if let Some(clients) = &self.clients {
            self.report.clients_not_in +=
                clients.failures.len().saturating_sub(clients.inside) as u64;
        }
        self.close_interval();
        Ok(WorkerResult {
            report: std::mem::take(&mut self.finished),
            established_after,
        })
    }

    /// When the interval that holds `now` ends (never, without a sink).
    fn interval_end(&mut self, now: Instant) -> Instant {
        let Some(sink) = &self.plan.intervals else {
            return now + Duration::from_secs(86_400 * 365);
        };
        let length = sink.length.max(Duration::from_millis(1));
        let index = (now.saturating_duration_since(sink.origin).as_nanos() / length.as_nanos())
            .try_into()
            .unwrap_or(u64::MAX);
        self.interval_index = index;
        sink.origin + length * u32::try_from(index.saturating_add(1)).unwrap_or(u32::MAX)
    }

    /// Folds the current interval into the run's figures and hands it to the sink.
    fn close_interval(&mut self) {
        self.finished.merge(&self.report);
        let report = std::mem::take(&mut self.report);
        if let Some(sink) = &self.plan.intervals {
            // The receiver is gone only when the run is being torn down.
            let _ = sink.sender.send(Interval {
                worker: self.worker_index,
                index: self.interval_index,
                report,
            });
        }
    }

    fn pending(&self) -> usize {
        self.slots
            .iter()
            .filter(|(_, s)| {
                matches!(
                    s.phase,
                    Phase::Connecting | Phase::Securing | Phase::Reading
                )
            })
            .count()
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: fast, and keys need only be unpredictable enough to differ.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A random number in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_random() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `reconnect`: the next client whose wait is over, taken off the queue.
    fn next_due_client(&mut self, now: Instant) -> Option<u32> {
        let clients = self.clients.as_mut()?;
        match clients.waiting.peek() {
            Some(Reverse((at, _))) if *at <= now => clients.waiting.pop().map(|Reverse((_, c))| c),
            _ => None,
        }
    }

    /// `reconnect`: an attempt of `client` begins.
    fn launch_for(&mut self, client: u32, now: Instant) {
        if let Some(clients) = self.clients.as_mut() {
            clients.attempts[client as usize] += 1;
        }
        self.report.moment(now - self.began).attempts += 1;
        self.launch_attempt(now, now, client);
    }

    /// `reconnect`: an attempt of `client` failed; it waits and tries again.
    fn attempt_failed(&mut self, client: u32, kind: ErrorKind, response: &[u8], now: Instant) {
        if matches!(kind, ErrorKind::Status(_)) {
            self.report.moment(now - self.began).refused += 1;
        }
        let uniform = self.uniform();
        let Some(clients) = self.clients.as_mut() else {
            return;
        };
        let failures = &mut clients.failures[client as usize];
        *failures = failures.saturating_add(1);
        let retry_after = match kind {
            ErrorKind::Status(_) => retry::retry_after(response),
            _ => None,
        };
        let wait = clients.policy.wait(*failures, uniform, retry_after);
        clients.waiting.push(Reverse((now + wait, client)));
    }

    fn launch(&mut self, intended: Instant, now: Instant) {
        self.launch_attempt(intended, now, NO_CLIENT);
    }

    fn launch_attempt(&mut self, intended: Instant, now: Instant, client: u32) {
        self.started += 1;
        let source = (!self.plan.sources.is_empty()).then(|| {
            self.source_index = (self.source_index + 1) % self.plan.sources.len();
            self.plan.sources[self.source_index]
        });
        let failed = |worker: &mut Self, kind: ErrorKind| {
            worker.count_error(kind);
            if client != NO_CLIENT {
                worker.attempt_failed(client, kind, &[], now);
            }
        };
        let mut stream = match net::connect(self.plan.target.addr, source) {
            Ok(stream) => stream,
            Err(error) => return failed(self, ErrorKind::from_io(&error)),
        };
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.next_random().to_le_bytes());
        nonce[8..].copy_from_slice(&self.next_random().to_le_bytes());
        let entry = self.slots.vacant_entry();
        let token = Token(entry.key());
        if let Err(error) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return failed(self, ErrorKind::from_io(&error));
        }
        let tls = match (&self.plan.tls, self.server_name.clone()) {
            (Some(config), Some(name)) => {
                match rustls::ClientConnection::new(Arc::clone(config), name) {
                    Ok(conn) => Some(Box::new(conn)),
                    Err(_) => return failed(self, ErrorKind::Tls),
                }
            }
            _ => None,
        };
        entry.insert(Slot {
            stream,
            tls,
            phase: Phase::Connecting,
            intended,
            started: now,
            sent: now,
            key: self
                .plan
                .fixed_key
                .unwrap_or_else(|| key_from_nonce(&nonce)),
            response: Vec::new(),
            deadline: now + self.plan.connect_timeout,
            trickled: 0,
            next_tick: now,
            h2: self.plan.h2_streams.map(|_| Box::default()),
            client,
        });
        self.progress.in_flight.fetch_add(1, Relaxed);
    }

    fn count_error(&mut self, kind: ErrorKind) {
        self.report.fail(kind);
        self.progress.errors.fetch_add(1, Relaxed);
    }

    fn build_request(&mut self, key: &[u8; KEY_LEN]) {
        self.request.clear();
        if let Some(version) = self.plan.proxy_header {
            // A client of the balancer: one of 512 documentation addresses (TEST-NET-2 and
            // TEST-NET-3), so that per-address limits see many clients.
            let n = self.started;
            let ip = match (n >> 8) % 2 {
                0 => [198, 51, 100, n as u8],
                _ => [203, 0, 113, n as u8],
            };
            let client = std::net::SocketAddr::from((ip, 1024 + ((n >> 9) % 60_000) as u16));
            let balancer = self.plan.target.addr;
            match version {
                ProxyHeaderVersion::V2 => {
                    wsedge::proxy::write_proxy_v2_header(client, balancer, &mut self.request)
                }
                ProxyHeaderVersion::V1 => self.request.extend_from_slice(
                    format!(
                        "PROXY {} {} {} {} {}\r\n",
                        if balancer.is_ipv4() { "TCP4" } else { "TCP6" },
                        client.ip(),
                        balancer.ip(),
                        client.port(),
                        balancer.port()
                    )
                    .as_bytes(),
                ),
            }
        }
        if self.plan.h2_streams.is_some() {
            // The streams' CONNECTs follow the server's SETTINGS (RFC 8441 3).
            wsedge::http2::client::Client::start(&mut self.request);
            return;
        }
        let start = self.request.len();
        let room = 512
            + self.headers.iter().map(|h| h.len() + 2).sum::<usize>()
            + self.plan.target.path.len();
        self.request.resize(start + room, 0);
        let request = ClientRequest {
            host: &self.plan.target.host,
            target: &self.plan.target.path,
            key,
            protocols: &self.protocols,
            extra_headers: &self.headers,
        };
        let len = write_request(&mut self.request[start..], &request).unwrap_or(0);
        self.request.truncate(start + len);
    }

    fn on_writable(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.slots.get(key) else {
            return;
        };
        if slot.phase != Phase::Connecting {
            return;
        }
        // No getsockopt(SO_ERROR) or getpeername here, two syscalls per connection: the
        // first write reports a failed connect, and ENOTCONN or EAGAIN mean a spurious wake-up.
        let key_bytes = slot.key;
        self.build_request(&key_bytes);
        let slot = &mut self.slots[key];
        if let Mode::Slowloris { .. } = self.plan.mode {
            record(&mut self.report.connect, now - slot.started);
            slot.deadline = now + self.plan.handshake_timeout;
            slot.phase = Phase::Trickling;
            slot.response = std::mem::take(&mut self.request);
            slot.next_tick = now;
            self.request = Vec::with_capacity(512);
            return self.trickle(key, now);
        }
        if let Some(tls) = slot.tls.as_deref_mut() {
            // The request waits in rustls and leaves with the client's Finished.
            if tls.wants_write() && tls.writer().write_all(&self.request).is_err() {
                return self.finish(key, Some(ErrorKind::Tls), now);
            }
            match tls.write_tls(&mut &slot.stream) {
                Ok(_) => {
                    record(&mut self.report.connect, now - slot.started);
                    if slot.client == NO_CLIENT {
                        slot.deadline = now + self.plan.handshake_timeout;
                    }
                    slot.phase = Phase::Securing;
                    slot.sent = now;
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::ENOTCONN) => {}
                Err(error) => self.finish(key, Some(ErrorKind::from_io(&error)), now),
            }
            return;
        }
        match (&slot.stream).write(&self.request) {
            Ok(n) if n == self.request.len() => {
                record(&mut self.report.connect, now - slot.started);
                if slot.client == NO_CLIENT {
                    slot.deadline = now + self.plan.handshake_timeout;
                }
                slot.phase = Phase::Reading;
                slot.sent = now;
            }
            // A request this small fits any fresh socket buffer; anything else is a failure.
            Ok(_) => self.finish(key, Some(ErrorKind::Other), now),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.raw_os_error() == Some(libc::ENOTCONN) => {}
            Err(error) => self.finish(key, Some(ErrorKind::from_io(&error)), now),
        }
    }

    fn on_readable(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slot.tls.is_some() && slot.phase != Phase::Connecting {
            return self.on_readable_tls(key, now);
        }
        if slot.h2.is_some() && matches!(slot.phase, Phase::Reading | Phase::Holding) {
            return self.on_readable_h2(key, now);
        }
        let mut buf = [0u8; 2048];
        loop {
            let result = (&slot.stream).read(&mut buf);
            match (slot.phase, result) {
                (_, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                (_, Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                (Phase::Trickling, _) => {
                    // The server answered (408) or cut us off: that is what slowloris times.
                    record(&mut self.report.cutoff, now - slot.started);
                    return self.finish(key, None, now);
                }
                (Phase::Connecting | Phase::Securing | Phase::Reading, Err(e)) => {
                    return self.finish(key, Some(ErrorKind::from_io(&e)), now)
                }
                // Plain connections are never securing: only a wss:// slot is.
                (Phase::Connecting | Phase::Securing, Ok(_)) => return,
                (Phase::Reading, Ok(0)) => {
                    return self.finish(key, Some(ErrorKind::ClosedEarly), now)
                }
                (Phase::Reading, Ok(n)) => {
                    slot.response.extend_from_slice(&buf[..n]);
                    match check_response(&slot.response, &slot.key, &self.protocols) {
                        ResponseCheck::Partial => continue,
                        ResponseCheck::Accepted { .. } => return self.on_upgraded(key, now),
                        ResponseCheck::Failed(error) => {
                            return self.finish(key, Some(classify(error)), now)
                        }
                    }
                }
                (Phase::Holding, Ok(0)) | (Phase::Holding, Err(_)) => {
                    self.established -= 1;
                    self.progress.established.fetch_sub(1, Relaxed);
                    return self.finish(key, Some(ErrorKind::ClosedEarly), now);
                }
                (Phase::Holding, Ok(_)) => continue, // pongs, or the server's frames
            }
        }
    }

    /// `wss://`: records in, the TLS handshake driven, plaintext checked as a response.
    fn on_readable_tls(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        let Some(tls) = slot.tls.as_deref_mut() else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        let mut plaintext = Vec::new();
        let keep = slot.phase != Phase::Holding;
        let h2 = slot.h2.is_some();
        let mut ended = false;
        while !ended {
            let n = match (&slot.stream).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.finish(key, Some(ErrorKind::from_io(&e)), now),
            };
            ended = n == 0;
            let mut input = &buf[..n];
            while !input.is_empty() {
                let state = tls
                    .read_tls(&mut input)
                    .map_err(|e| rustls::Error::General(e.to_string()))
                    .and_then(|_| tls.process_new_packets());
                let Ok(state) = state else {
                    // The alert that says why goes out before the close.
                    let _ = tls.write_tls(&mut &slot.stream);
                    return self.finish(key, Some(ErrorKind::Tls), now);
                };
                // Only a response being read is kept, and no more of it than a valid one
                // can be: a held connection's frames, or a server that never ends its
                // header block, cost no memory here.
                let mut unread = state.plaintext_bytes_to_read();
                let mut scratch = [0u8; 4096];
                while unread > 0 {
                    let n = unread.min(scratch.len());
                    if tls.reader().read_exact(&mut scratch[..n]).is_err() {
                        break;
                    }
                    unread -= n;
                    let room = match h2 {
                        // Frames are read as they come: nothing piles up.
                        true => n,
                        false => MAX_RESPONSE_HEADER_BYTES.saturating_sub(plaintext.len()),
                    };
                    if keep {
                        plaintext.extend_from_slice(&scratch[..n.min(room)]);
                    }
                }
            }
        }
        if slot.phase == Phase::Securing && !tls.is_handshaking() {
            record(&mut self.report.tls, now - slot.sent);
            if tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                self.report.tls_resumed += 1;
            }
            slot.phase = Phase::Reading;
            slot.sent = now;
            if h2 && tls.alpn_protocol() != Some(b"h2") {
                // The server did not choose HTTP/2.
                return self.finish(key, Some(ErrorKind::BadResponse), now);
            }
        }
        while tls.wants_write() {
            match tls.write_tls(&mut &slot.stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return self.finish(key, Some(ErrorKind::from_io(&e)), now),
            }
        }
        if h2 && slot.phase == Phase::Reading && !plaintext.is_empty() {
            if !self.on_h2_bytes(key, &plaintext, now) {
                return;
            }
        } else if slot.phase == Phase::Reading && !plaintext.is_empty() {
            slot.response.extend_from_slice(&plaintext);
            match check_response(&slot.response, &slot.key, &self.protocols) {
                ResponseCheck::Partial => {}
                ResponseCheck::Accepted { .. } => return self.on_upgraded(key, now),
                ResponseCheck::Failed(error) => {
                    return self.finish(key, Some(classify(error)), now)
                }
            }
        }
        if !ended {
            return;
        }
        let Some(slot) = self.slots.get(key) else {
            return;
        };
        let kind = match slot.phase {
            Phase::Securing => ErrorKind::Tls,
            Phase::Holding => {
                self.release_held(key);
                ErrorKind::ClosedEarly
            }
            _ => ErrorKind::ClosedEarly,
        };
        self.finish(key, Some(kind), now)
    }

    /// A held slot closes: its upgraded connections (an `--h2` connection's streams) are
    /// no longer established.
    fn release_held(&mut self, key: usize) {
        let held = self
            .slots
            .get(key)
            .map_or(1, |s| s.h2.as_ref().map_or(1, |h| h.upgraded));
        self.established = self.established.saturating_sub(held as usize);
        self.progress
            .established
            .fetch_sub(u64::from(held), Relaxed);
    }

    /// `--h2`, plain: frames read until the socket is drained.
    fn on_readable_h2(&mut self, key: usize, now: Instant) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let Some(slot) = self.slots.get(key) else {
                return;
            };
            let holding = slot.phase == Phase::Holding;
            match (&slot.stream).read(&mut buf) {
                Ok(0) if holding => {
                    self.release_held(key);
                    return self.finish(key, Some(ErrorKind::ClosedEarly), now);
                }
                Ok(0) => return self.finish(key, Some(ErrorKind::ClosedEarly), now),
                // A held connection's frames are not read: pings, the server's own.
                Ok(_) if holding => continue,
                Ok(n) => {
                    if !self.on_h2_bytes(key, &buf[..n], now) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if holding => {
                    self.release_held(key);
                    return self.finish(key, Some(ErrorKind::from_io(&e)), now);
                }
                Err(e) => return self.finish(key, Some(ErrorKind::from_io(&e)), now),
            }
        }
    }

    /// `--h2`: frames read from the server. Its SETTINGS open the streams; each stream's
    /// answer is counted as an upgrade or an error; once all are answered the connection
    /// is held or closed as the mode says. False when the slot is gone.
    fn on_h2_bytes(&mut self, key: usize, bytes: &[u8], now: Instant) -> bool {
        let streams = self.plan.h2_streams.unwrap_or(1);
        let Some(slot) = self.slots.get_mut(key) else {
            return false;
        };
        let Some(h2) = slot.h2.as_deref_mut() else {
            return true;
        };
        use wsedge::http2::client::{Client, Connect, Frame};
        h2.client.received(bytes);
        let mut out = Vec::new();
        let mut outcomes = Vec::new();
        loop {
            let frame = match h2.client.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    outcomes.push(H2Outcome::Failed(ErrorKind::BadResponse));
                    break;
                }
            };
            match frame {
                Frame::Settings {
                    ack: false,
                    connect_protocol,
                } => {
                    Client::ack_settings(&mut out);
                    if h2.opened {
                        continue;
                    }
                    if !connect_protocol {
                        outcomes.push(H2Outcome::Failed(ErrorKind::BadResponse));
                        break;
                    }
                    let request = Connect {
                        scheme: if slot.tls.is_some() { "https" } else { "http" },
                        authority: &self.plan.target.host,
                        path: &self.plan.target.path,
                        protocols: &self.protocols,
                        headers: &self.headers,
                    };
                    for n in 0..streams {
                        h2.client.connect(&mut out, 1 + 2 * n, &request);
                    }
                    h2.opened = true;
                    slot.sent = now;
                }
                Frame::Headers { status, fields, .. } => {
                    if let Some((_, wait)) = fields.iter().find(|(n, _)| n == "retry-after") {
                        h2.retry_after =
                            format!("HTTP/2\r\nretry-after: {wait}\r\n\r\n").into_bytes();
                    }
                    outcomes.push(H2Outcome::Stream(match status {
                        Some(200) => Ok(()),
                        Some(code) => Err(ErrorKind::Status(code)),
                        None => Err(ErrorKind::BadResponse),
                    }));
                }
                Frame::Reset { .. } => {
                    outcomes.push(H2Outcome::Stream(Err(ErrorKind::StreamRefused)));
                }
                Frame::GoAway { .. } => {
                    outcomes.push(H2Outcome::Failed(ErrorKind::StreamRefused));
                    break;
                }
                Frame::Ping {
                    ack: false,
                    payload,
                } => Client::pong(&mut out, payload),
                _ => {}
            }
        }
        if !out.is_empty() {
            let written = match slot.tls.as_deref_mut() {
                Some(tls) => tls
                    .writer()
                    .write_all(&out)
                    .and_then(|()| tls.write_tls(&mut &slot.stream).map(|_| ())),
                // A few frames: a fresh socket's buffer takes them whole.
                None => (&slot.stream).write_all(&out),
            };
            if let Err(error) = written {
                self.finish(key, Some(ErrorKind::from_io(&error)), now);
                return false;
            }
        }
        for outcome in outcomes {
            match outcome {
                H2Outcome::Stream(result) => {
                    let Some(h2) = self.slots.get_mut(key).and_then(|s| s.h2.as_deref_mut()) else {
                        return false;
                    };
                    h2.answered += 1;
                    match result {
                        Ok(()) => {
                            h2.upgraded += 1;
                            let slot = &self.slots[key];
                            let (intended, sent) = (slot.intended, slot.sent);
                            self.report.ok += 1;
                            self.progress.ok.fetch_add(1, Relaxed);
                            record(&mut self.report.total, now - intended);
                            record(&mut self.report.handshake, now - sent);
                        }
                        Err(kind) => {
                            h2.failure.get_or_insert(kind);
                            self.count_error(kind);
                        }
                    }
                }
                H2Outcome::Failed(kind) => {
                    self.finish(key, Some(kind), now);
                    return false;
                }
            }
        }
        let Some(slot) = self.slots.get_mut(key) else {
            return false;
        };
        let done = slot.h2.as_ref().is_some_and(|h| h.answered >= streams);
        if !done {
            return true;
        }
        let upgraded = slot.h2.as_ref().map_or(0, |h| h.upgraded);
        if self.clients.is_some() && slot.client != NO_CLIENT {
            // `reconnect`: a client is in once every one of its streams is; otherwise the
            // attempt failed (its streams' errors are counted) and it comes back.
            if upgraded == streams {
                self.client_in(key, upgraded, now);
                return true;
            }
            let client = slot.client;
            let failure = slot
                .h2
                .as_ref()
                .and_then(|h| h.failure)
                .unwrap_or(ErrorKind::Other);
            let retry_after = slot.h2.as_mut().map(|h| std::mem::take(&mut h.retry_after));
            self.attempt_failed(client, failure, &retry_after.unwrap_or_default(), now);
            self.finish(key, None, now);
            return false;
        }
        if let Mode::Hold { .. } = self.plan.mode {
            slot.phase = Phase::Holding;
            slot.next_tick = now + Duration::from_secs(86_400 * 365);
            self.established += upgraded as usize;
            self.progress
                .established
                .fetch_add(u64::from(upgraded), Relaxed);
            return true;
        }
        self.finish(key, None, now);
        false
    }

    fn on_upgraded(&mut self, key: usize, now: Instant) {
        let slot = &mut self.slots[key];
        self.report.ok += 1;
        self.progress.ok.fetch_add(1, Relaxed);
        record(&mut self.report.total, now - slot.intended);
        record(&mut self.report.handshake, now - slot.sent);
        if self.clients.is_some() && slot.client != NO_CLIENT {
            return self.client_in(key, 1, now);
        }
        if let Mode::Hold { ping_interval, .. } = self.plan.mode {
            slot.phase = Phase::Holding;
            slot.response = Vec::new();
            slot.next_tick =
                ping_interval.map_or(now + Duration::from_secs(86_400 * 365), |i| now + i);
            self.established += 1;
            self.progress.established.fetch_add(1, Relaxed);
            return;
        }
        self.finish(key, None, now);
    }

    /// `reconnect`: the slot's client is in, holding `held` upgraded WebSockets (an `--h2`
    /// connection's streams).
    fn client_in(&mut self, key: usize, held: u32, now: Instant) {
        let (Some(clients), Some(slot)) = (self.clients.as_mut(), self.slots.get_mut(key)) else {
            return;
        };
        let client = slot.client as usize;
        clients.inside += 1;
        clients.failures[client] = 0;
        record(&mut self.report.clients_in, now - self.began);
        let _ = self
            .report
            .attempts
            .record(u64::from(clients.attempts[client]).max(1));
        self.report.moment(now - self.began).clients_in += 1;
        slot.phase = Phase::Holding;
        slot.response = Vec::new();
        slot.next_tick = now + Duration::from_secs(86_400 * 365);
        self.established += held as usize;
        self.progress
            .established
            .fetch_add(u64::from(held), Relaxed);
    }

    /// Closes a slot, counting `error` if it failed.
    fn finish(&mut self, key: usize, error: Option<ErrorKind>, now: Instant) {
        let Some(slot) = self.slots.try_remove(key) else {
            return;
        };
        self.progress.in_flight.fetch_sub(1, Relaxed);
        if let (Some(kind), Some(h2)) = (error, &slot.h2) {
            // `--h2`: every stream left unanswered failed with the connection.
            let unanswered = self
                .plan
                .h2_streams
                .unwrap_or(1)
                .saturating_sub(h2.answered);
            for _ in 1..unanswered {
                self.count_error(kind);
            }
        }
        if let Some(kind) = error {
            self.count_error(kind);
            if slot.client != NO_CLIENT {
                if slot.phase == Phase::Holding {
                    // In, and dropped: the client comes back like any other.
                    if let Some(clients) = self.clients.as_mut() {
                        clients.inside -= 1;
                    }
                }
                self.attempt_failed(slot.client, kind, &slot.response, now);
            }
        }
        match self.plan.close {
            CloseMode::Rst => net::reset_on_close(&slot.stream),
            CloseMode::Fin => {}
            CloseMode::Ws if error.is_none() && slot.h2.is_none() => {
                // Masked Close(1000), mask 0: the payload goes as is.
                let _ = (&slot.stream).write(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]);
            }
            CloseMode::Ws => {}
        }
    }

    fn trickle(&mut self, key: usize, now: Instant) {
        let Mode::Slowloris { byte_interval, .. } = self.plan.mode else {
            return;
        };
        let slot = &mut self.slots[key];
        // Everything but the final byte: a slow client that never completes its request.
        if slot.trickled + 1 >= slot.response.len() || slot.next_tick > now {
            return;
        }
        match (&slot.stream).write(&slot.response[slot.trickled..slot.trickled + 1]) {
            Ok(1) => {
                slot.trickled += 1;
                slot.next_tick = now + byte_interval;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                record(&mut self.report.cutoff, now - slot.started);
                self.finish(key, None, now);
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        let keys: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
        for key in keys {
            let slot = &mut self.slots[key];
            match slot.phase {
                Phase::Connecting if now >= slot.deadline => {
                    self.finish(key, Some(ErrorKind::ConnectTimeout), now)
                }
                Phase::Securing | Phase::Reading if now >= slot.deadline => {
                    self.finish(key, Some(ErrorKind::HandshakeTimeout), now)
                }
                Phase::Trickling => self.trickle(key, now),
                Phase::Holding if now >= slot.next_tick && slot.h2.is_none() => {
                    if let Mode::Hold {
                        ping_interval: Some(interval),
                        ..
                    } = self.plan.mode
                    {
                        slot.next_tick = now + interval;
                        // A masked, empty ping.
                        let _ = (&slot.stream).write(&[0x89, 0x80, 0, 0, 0, 0]);
                    }
                }
                _ => {}
            }
        }
    }
}

fn budget_left_now(plan: &Plan, started: u64) -> bool {
    plan.count.is_none_or(|c| started < c)
}

fn classify(error: ResponseError) -> ErrorKind {
    match error {
        ResponseError::NotSwitching { status } => ErrorKind::Status(status),
        ResponseError::WrongAccept | ResponseError::MissingAccept => ErrorKind::BadAccept,
        ResponseError::UnofferedSubprotocol => ErrorKind::BadSubprotocol,
        _ => ErrorKind::BadResponse,
    }
}
