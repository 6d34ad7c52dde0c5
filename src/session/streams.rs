//! Proxy mode over HTTP/2: each stream's upstream connection, chosen, opened and retried
//! as a client connection's is ([`Driver::open_upstream`]'s rules), on sockets the driver
//! keeps ([`StreamSockets`]) because a backend's slot holds one upstream, not many.

use std::io;
use std::os::fd::BorrowedFd;

use super::inbound::{InboundHeaders, InboundSlot};
use super::queue::Waiting;
use super::{Driver, UpstreamFailure};
use crate::conn::{AfterUpgrade, Conn, ConnConfig, Ctx, Next};
use crate::http2::{Http2, Opened, ProxySide};
use crate::proxy::stream_sockets::{connect_and_send, NoSockets, Sockets, StreamSockets};
use crate::proxy::{Forwarding, Link, Peers};
use crate::stats::Counters;

/// The connection bytes were read from, as a backend knows it: its key, and its socket
/// (whose addresses a proxied HTTP/2 stream's upstream is told).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The backend's key for it.
    pub key: usize,
    /// Its socket, open for the call.
    pub socket: BorrowedFd<'a>,
}

/// Rounds of opening upstreams and relaying per call: a stream whose upstream refused
/// tries the next in the following round.
const OPEN_ROUNDS: usize = 4;

/// The streams' upstream sockets, in proxy mode: HTTP/2 may be on from the start or turned
/// on by a reload (`--h2c`, ALPN `h2`). The health checks' descriptor `checks` is watched
/// through theirs.
pub(super) fn sockets_for(
    config: &ConnConfig,
    checks: Option<std::os::fd::RawFd>,
) -> Option<StreamSockets> {
    if config.after != AfterUpgrade::Proxy {
        return None;
    }
    StreamSockets::new(checks)
        .inspect_err(|error| {
            tracing::warn!(%error, "no HTTP/2 upstream sockets on this reactor: streams get 503")
        })
        .ok()
}

/// What a new HTTP/2 connection's streams need to reach upstreams: the client (the one a
/// PROXY header `told` of, or the socket's peer) and the address it reached.
pub(super) fn proxy_side(
    inbound: &InboundHeaders,
    forwarding: Forwarding,
    (origin, told): (Origin<'_>, Option<InboundSlot>),
    tls: bool,
) -> Option<Box<ProxySide>> {
    let mut peers = Peers::of(origin.socket, forwarding, tls)?;
    if let Some(client) = inbound.client(told) {
        peers.client = client;
    }
    Some(ProxySide::new(origin.key, peers))
}

/// The streams' upstream sockets as a stream moves bytes through them: this reactor's, or
/// `none` where there are none (echo and close mode).
pub(super) fn sockets_or<'a>(
    sockets: &'a mut Option<StreamSockets>,
    none: &'a mut NoSockets,
) -> &'a mut dyn Sockets {
    match sockets {
        Some(sockets) => sockets,
        None => none,
    }
}

/// What a call into an HTTP/2 connection takes: its context, and the streams' upstream
/// sockets (`none` outside proxy mode).
pub(super) fn h2_call<'a>(
    (config, stats): (&'a ConnConfig, &'a Counters),
    (sockets, none): (&'a mut Option<StreamSockets>, &'a mut NoSockets),
    (now, out): (u64, &'a mut Vec<u8>),
) -> (Ctx<'a>, &'a mut dyn Sockets) {
    let cx = Ctx {
        config,
        now,
        out,
        stats,
    };
    (cx, sockets_or(sockets, none))
}

/// Marks a queue entry as an HTTP/2 stream's, of the connection with the key below it.
const WAITING_STREAM: usize = 1 << (usize::BITS - 1);

/// The connection of a queue entry that is an HTTP/2 stream's.
pub(super) fn waiting_stream_of(key: usize) -> Option<usize> {
    (key & WAITING_STREAM != 0).then_some(key & !WAITING_STREAM)
}

/// Who waits at the edge when no upstream has room for a request.
#[derive(Debug, Clone, Copy)]
pub(super) enum WaitsAs {
    /// A client connection, by its key: in the queue, adaptive LIFO.
    Connection(usize),
    /// An HTTP/2 stream of the connection with this key: the stream keeps its request and
    /// its deadline; the connection is settled again when an upstream has room.
    Stream(usize),
}

impl Driver {
    /// An HTTP/2 stream of connection `owner` waits for an upstream with room in the queue
    /// client connections wait in (adaptive LIFO, `--upstream-queue-ms`, refused with a
    /// paced `Retry-After` before it would give up), or is refused at once (503) when
    /// there is no wait or the edge drains.
    pub(super) fn stream_waits(
        &mut self,
        owner: usize,
        conn: &mut Conn,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Next {
        let mut until = now.saturating_add(self.config.proxy.queue_ms);
        if let (Some(bound), Some(accepted)) = (self.patience.bound(now), conn.accepted_at()) {
            until = until.min(accepted.saturating_add(bound));
        }
        if until <= now || self.draining {
            return self.shed(conn, now, out);
        }
        conn.queue(until);
        Counters::bump(&self.stats.upstream_queued);
        let entry = Waiting {
            key: owner | WAITING_STREAM,
            since: now,
            until,
        };
        match self.stream_handed_out_now == Some(owner) {
            // Handed out this turn and still no room for it: kept aside, as a connection
            // is, until the turn's hand-outs are over.
            true => self.bounced.push(entry),
            false => self.waiting.push(entry.key, now, until),
        }
        Next::Continue
    }

    /// The connection whose waiting stream was handed out last, to settle now.
    pub fn take_stream_handed_out(&mut self) -> Option<usize> {
        self.stream_handed_out_now = self.stream_handed_out.take();
        self.stream_handed_out_now
    }

    /// The descriptor of the driver's own sockets (the HTTP/2 streams' upstreams, the
    /// health checks), to watch for readability ([`Driver::own_ready`] when it is).
    pub fn own_fd(&self) -> Option<std::os::fd::RawFd> {
        match &self.stream_sockets {
            Some(sockets) => Some(sockets.fd()),
            None => self.fleet.checks_fd(),
        }
    }

    /// The driver's own descriptor was reported readable: the health checks run this
    /// turn, and the connections whose streams' upstreams are ready are handed out
    /// ([`Driver::next_stream_due`]).
    pub fn own_ready(&mut self) {
        match self.stream_sockets.as_mut() {
            Some(sockets) => {
                if sockets.ready() {
                    self.fleet.checks_ready();
                }
            }
            None => self.fleet.checks_ready(),
        }
    }

    /// The next connection whose streams' upstream sockets were reported ready: settle it.
    pub fn next_stream_due(&mut self) -> Option<usize> {
        self.stream_sockets.as_mut()?.next_due()
    }

    /// After every call into an HTTP/2 connection in proxy mode: the streams waiting for
    /// an upstream get one (or their refusal), and bytes move between the streams and
    /// their upstreams (not read while the client's output waits: `output_waits`).
    pub(super) fn serve_streams(
        &mut self,
        h2: &mut Http2,
        output_waits: bool,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Next {
        let Some(mut sockets) = self.stream_sockets.take() else {
            // Echo and close mode: nothing to do. Proxy mode without upstream sockets: 503s.
            if !h2.wants_upstreams() {
                return Next::Continue;
            }
            self.refuse_streams(h2, now);
            let mut cx = Ctx {
                config: &self.config,
                now,
                out,
                stats: &self.stats,
            };
            return h2.relay(&mut cx, &mut crate::http2::NoSockets);
        };
        let mut next = Next::Continue;
        for _ in 0..OPEN_ROUNDS {
            if h2.wants_upstreams() {
                self.open_stream_upstreams(h2, &mut sockets, now);
            }
            h2.set_output_waiting(output_waits);
            let mut cx = Ctx {
                config: &self.config,
                now,
                out,
                stats: &self.stats,
            };
            next = h2.relay(&mut cx, &mut sockets);
            if next != Next::Continue || !h2.retries_upstreams() {
                break;
            }
        }
        self.stream_sockets = Some(sockets);
        next
    }

    /// Streams whose wait for an upstream with room ran out are refused as a connection
    /// is: 503 with a `Retry-After` paced by the upstreams' rate.
    pub(super) fn refuse_overdue_waits(&mut self, h2: &mut Http2, now: u64) {
        let linger_ms = self.config.linger_ms;
        h2.refuse_overdue_waits(
            &mut |conn, _, _, out| {
                conn.unqueue(now, &self.config);
                Err(self.shed(conn, now, out))
            },
            now,
            linger_ms,
        );
    }

    /// Without upstream sockets on this reactor (their epoll instance could not be made),
    /// a stream that wants an upstream is refused as an overloaded edge refuses: 503.
    fn refuse_streams(&mut self, h2: &mut Http2, now: u64) {
        let linger_ms = self.config.linger_ms;
        h2.open_upstreams(
            &mut |conn, _, _, out| {
                let refusal = self.admission.overloaded();
                Err(conn.refuse(refusal, &mut self.cx(now, out)))
            },
            now,
            linger_ms,
        );
    }

    /// Each stream waiting for an upstream gets a connection to the next one the fleet
    /// gives (its failed one counted against its upstream first), with the forwarded
    /// request written; or its refusal (502, 503).
    fn open_stream_upstreams(&mut self, h2: &mut Http2, sockets: &mut StreamSockets, now: u64) {
        let Some(side) = h2.proxy_side() else {
            return;
        };
        let (owner, peers) = (side.owner, side.peers);
        let waits = WaitsAs::Stream(owner);
        let linger_ms = self.config.linger_ms;
        let mut open = |conn: &mut Conn,
                        attempts: usize,
                        failed: Option<(Link, io::Error)>,
                        out: &mut Vec<u8>|
         -> Result<Opened, Next> {
            if conn.is_queued() {
                if !self.upstream_room() {
                    return Err(Next::Continue);
                }
                conn.unqueue(now, &self.config);
            }
            if let Some((link, error)) = failed {
                if let UpstreamFailure::Answer(next) =
                    self.failed_to_open(conn, &link, &error, now, out)
                {
                    return Err(next);
                }
            }
            let mut request = Vec::new();
            conn.write_upstream_request(peers, &mut self.cx(now, &mut request));
            let tried = (attempts, Some(peers.client.ip()));
            let (link, (stream, written)) =
                self.open_for((conn, waits, peers.tls), tried, now, out, |addr, source| {
                    connect_and_send(addr, source, &request)
                })?;
            let id = match sockets.add(stream, owner) {
                Ok(id) => id,
                Err(error) => return Err(self.unusable_for(conn, &error, now, out)),
            };
            if written > 0 {
                conn.on_upstream_connected(&self.cx(now, out));
            }
            Ok(Opened {
                id,
                link,
                request,
                written,
            })
        };
        h2.open_upstreams(&mut open, now, linger_ms);
    }
}

impl Peers {
    /// The client as an upstream should see it, from its socket: its address, and the
    /// address it reached when the PROXY v2 header needs it.
    pub fn of(socket: BorrowedFd<'_>, forwarding: Forwarding, tls: bool) -> Option<Peers> {
        let client = crate::sys::socket_addr(socket, false)?;
        let local = match forwarding {
            Forwarding::ProxyV2 => crate::sys::socket_addr(socket, true),
            Forwarding::Headers => None,
        };
        Some(Peers {
            client,
            local: local.unwrap_or(client),
            tls,
        })
    }
}
