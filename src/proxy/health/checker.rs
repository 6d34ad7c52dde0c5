//! Active health checks on a reactor's own loop: the checks in flight are sockets on a
//! small epoll instance of their own, whose descriptor the reactor watches beside its
//! connections (epoll: registered like a socket; io_uring: a poll operation). The reactor
//! calls [`Checker::run`] when that descriptor is readable or the next check is due, and
//! waits no longer than [`Checker::next_due`]: with no check due and none in flight, it
//! costs nothing. The same code serves both backends.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::{
    CheckKind, HealthSettings, UpstreamStatus, Verdict, CHECK_CLOSE_FRAME, MAX_CHECK_ANSWER,
};

/// One reactor's active checks.
pub struct Checker {
    poll: Poll,
    events: Events,
    probes: Vec<Probe>,
    request: Vec<u8>,
}

struct Probe {
    addr: SocketAddr,
    status: Arc<UpstreamStatus>,
    state: State,
}

enum State {
    /// Next check at this time (reactor ms).
    Idle { due: u64 },
    /// A check in flight since `started`, over at `deadline`.
    Checking {
        stream: TcpStream,
        started: Instant,
        deadline: u64,
        connected: bool,
        sent: usize,
        answer: Vec<u8>,
    },
}

impl Checker {
    /// A checker with nothing to check yet.
    pub fn new() -> io::Result<Checker> {
        Ok(Checker {
            poll: Poll::new()?,
            events: Events::with_capacity(64),
            probes: Vec::new(),
            request: Vec::new(),
        })
    }

    /// The descriptor the reactor watches for readability.
    pub fn fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    /// Checks `upstreams` from now on: one that was checked already keeps its schedule, a
    /// new one gets its first check within one interval (spread, so that a fleet's checks
    /// do not all go at once).
    pub fn assign(
        &mut self,
        upstreams: &[(SocketAddr, Arc<UpstreamStatus>)],
        now: u64,
        interval_ms: u64,
    ) {
        let mut old = std::mem::take(&mut self.probes);
        for (n, (addr, status)) in upstreams.iter().enumerate() {
            let probe = match old.iter().position(|p| p.addr == *addr) {
                Some(at) => Probe {
                    status: Arc::clone(status),
                    ..old.swap_remove(at)
                },
                None => Probe {
                    addr: *addr,
                    status: Arc::clone(status),
                    state: State::Idle {
                        due: now + (n as u64 * 97) % interval_ms.max(1),
                    },
                },
            };
            self.probes.push(probe);
        }
    }

    /// When [`Checker::run`] next has work without an event (a check due or over time).
    pub fn next_due(&self) -> Option<u64> {
        self.probes
            .iter()
            .map(|p| match p.state {
                State::Idle { due } => due,
                State::Checking { deadline, .. } => deadline,
            })
            .min()
    }

    /// Moves the checks on: reads what their sockets have, judges, starts the ones due and
    /// fails the ones over time. `ready`: the checker's descriptor was reported readable.
    pub fn run(&mut self, settings: &HealthSettings, now: u64, ready: bool) {
        if ready {
            // Readiness is only a hint here: every check in flight is tried below.
            let _ = self.poll.poll(&mut self.events, Some(Duration::ZERO));
        }
        for index in 0..self.probes.len() {
            self.advance(index, settings, now);
        }
    }

    fn advance(&mut self, index: usize, settings: &HealthSettings, now: u64) {
        let Self {
            poll,
            probes,
            request,
            ..
        } = self;
        let probe = &mut probes[index];
        let outcome = match &mut probe.state {
            State::Idle { due } if *due <= now => {
                match start(poll, index, probe.addr) {
                    Ok(stream) => {
                        probe.state = State::Checking {
                            stream,
                            started: Instant::now(),
                            deadline: now + settings.timeout_ms,
                            connected: false,
                            sent: 0,
                            answer: Vec::new(),
                        };
                        None
                    }
                    // No descriptor or port left here: the upstream is not at fault.
                    Err(error) if crate::sys::is_local_exhaustion(&error) => {
                        probe.state = State::Idle {
                            due: now + settings.interval_ms,
                        };
                        None
                    }
                    Err(error) => Some((Err(error.to_string()), Instant::now())),
                }
            }
            State::Idle { .. } => None,
            State::Checking {
                stream,
                started,
                deadline,
                connected,
                sent,
                answer,
            } => {
                let progress = step(
                    stream,
                    &settings.kind,
                    probe.addr,
                    request,
                    connected,
                    sent,
                    answer,
                );
                match progress {
                    Ok(None) if *deadline <= now => Some((Err("timed out".to_owned()), *started)),
                    Ok(None) => None,
                    Ok(Some(())) => Some((Ok(()), *started)),
                    Err(why) => Some((Err(why), *started)),
                }
            }
        };
        let Some((result, started)) = outcome else {
            return;
        };
        let micros = started.elapsed().as_micros() as u64;
        if let State::Checking { stream, .. } = &mut probe.state {
            if result.is_ok() && matches!(settings.kind, CheckKind::WebSocket(_)) {
                let _ = stream.write(&CHECK_CLOSE_FRAME);
            }
            let _ = poll.registry().deregister(stream);
        }
        probe.state = State::Idle {
            due: now + settings.interval_ms,
        };
        match result {
            Ok(()) => {
                if probe.status.check_passed(micros, settings.rise) {
                    tracing::warn!(upstream = %probe.addr, "upstream back in rotation: health checks pass");
                }
            }
            Err(why) => {
                tracing::debug!(upstream = %probe.addr, why, "health check failed");
                if probe.status.check_failed(micros, settings.fall) {
                    tracing::warn!(upstream = %probe.addr, why, "upstream out of rotation: health checks fail");
                }
            }
        }
    }
}

fn start(poll: &Poll, index: usize, addr: SocketAddr) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    poll.registry().register(
        &mut stream,
        Token(index),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    Ok(stream)
}

/// One check's progress: `Ok(Some(()))` passed, `Ok(None)` waiting, `Err` failed and why.
fn step(
    stream: &mut TcpStream,
    kind: &CheckKind,
    addr: SocketAddr,
    request: &mut Vec<u8>,
    connected: &mut bool,
    sent: &mut usize,
    answer: &mut Vec<u8>,
) -> Result<Option<()>, String> {
    if !*connected {
        if let Ok(Some(error)) | Err(error) = stream.take_error() {
            return Err(format!("connect: {error}"));
        }
        match stream.peer_addr() {
            Ok(_) => *connected = true,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(None),
            Err(error) => return Err(format!("connect: {error}")),
        }
        if kind.passes_on_connect() {
            return Ok(Some(()));
        }
    }
    kind.request(addr, request);
    while *sent < request.len() {
        match stream.write(&request[*sent..]) {
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(format!("send: {error}")),
        }
    }
    let mut buf = [0u8; 1024];
    loop {
        let room = MAX_CHECK_ANSWER.saturating_sub(answer.len()).min(buf.len());
        if room == 0 {
            return Err("answer head too large".to_owned());
        }
        let closed = match stream.read(&mut buf[..room]) {
            Ok(0) => true,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                false
            }
            // Everything there was read (edge-triggered): wait for more.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(format!("receive: {error}")),
        };
        match kind.judge(answer, closed) {
            Verdict::Pass => return Ok(Some(())),
            Verdict::Fail(why) => return Err(why.to_owned()),
            Verdict::Partial => {}
        }
    }
}
