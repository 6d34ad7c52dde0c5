//! A proxied client's upstream side, with no I/O: which upstream it is on, whether that
//! upstream has taken bytes yet, and for each direction the relayed bytes in transit and the
//! FIN behind them. Both backends keep one [`Link`] per proxied client and only add their
//! own socket and operation bookkeeping around it.
//!
//! The end-of-stream rules, the same for both backends: a side's FIN is passed on to the
//! other side once every byte read before it is out (a half-close works both ways), and the
//! pair is closed once both FINs are passed; a reset or any error on one side closes both,
//! the survivor with a reset ([`Side::other`]), as a transparent relay passes it on (which
//! also spares that peer the FIN exchange and a TIME_WAIT entry).

use super::{Fin, Pipe};

/// One end of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client wsedge accepted.
    Client,
    /// The app server wsedge connected to.
    Upstream,
}

impl Side {
    /// The other end: where a side's bytes and FIN go, and the survivor reset when a side
    /// breaks.
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

/// Bytes on their way to one side (its sink), and the FIN of the other side behind them.
#[derive(Debug, Default)]
pub struct Flow {
    /// Read from the source, not yet written to the sink.
    pub pipe: Pipe,
    /// The source's FIN.
    pub fin: Fin,
    /// `TCP_NODELAY` is set on the sink.
    nodelay: bool,
}

impl Flow {
    /// True once, before the first relayed byte to a sink without `TCP_NODELAY`: set it
    /// then. Relayed frames are written as they come, and Nagle would hold small ones back
    /// behind unacknowledged data. An upstream socket gets it only here, not at connect: the
    /// forwarded request is one write, which Nagle never delays, and many connections
    /// (clients that only listen, or leave at once) never relay a byte upstream. Client
    /// sockets inherit it from the listener.
    pub fn set_nodelay_now(&mut self) -> bool {
        !std::mem::replace(&mut self.nodelay, true)
    }

    /// Whether the source may be read: its FIN is not read yet and the pipe has room
    /// (otherwise the sender is held back by TCP, not by our memory).
    pub fn may_read(&self) -> bool {
        !self.fin.is_read() && self.pipe.room() > 0
    }

    /// Whether to shut down the sink's write side now (`sending`: a write of this pipe is in
    /// flight). True once.
    pub fn fin_due(&mut self, sending: bool) -> bool {
        let in_transit = sending || !self.pipe.is_empty();
        self.fin.pass_now(in_transit)
    }
}

/// A proxied client's upstream connection, as far as no socket is concerned.
#[derive(Debug)]
pub struct Link {
    /// Which upstream, to pass it over if it refuses.
    pub upstream: usize,
    /// Upstreams tried for this client so far, this one included.
    pub attempts: usize,
    /// The upstream's connection is established (it took bytes, or the connect completed):
    /// a failure before that is a refusal, and the next upstream is tried.
    pub confirmed: bool,
    to_client: Flow,
    to_upstream: Flow,
}

impl Link {
    /// A link to upstream `upstream`, the `attempts`-th tried for this client.
    pub fn new(upstream: usize, attempts: usize) -> Link {
        let to_client = Flow {
            nodelay: true,
            ..Flow::default()
        };
        Link {
            upstream,
            attempts,
            confirmed: false,
            to_client,
            to_upstream: Flow::default(),
        }
    }

    /// The bytes and FIN on their way to `sink`.
    pub fn toward(&mut self, sink: Side) -> &mut Flow {
        match sink {
            Side::Client => &mut self.to_client,
            Side::Upstream => &mut self.to_upstream,
        }
    }

    /// Whether `source` may be read (see [`Flow::may_read`]).
    pub fn may_read(&self, source: Side) -> bool {
        match source {
            Side::Client => self.to_upstream.may_read(),
            Side::Upstream => self.to_client.may_read(),
        }
    }

    /// Whether bytes wait for `sink` to take them.
    pub fn blocked(&self, sink: Side) -> bool {
        match sink {
            Side::Client => !self.to_client.pipe.is_empty(),
            Side::Upstream => !self.to_upstream.pipe.is_empty(),
        }
    }

    /// Whether both FINs are passed on: the relay is over, both sockets close.
    pub fn is_over(&self) -> bool {
        self.to_client.fin.is_passed() && self.to_upstream.fin.is_passed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fin_waits_for_the_bytes_before_it_and_the_relay_ends_with_both() {
        let mut link = Link::new(0, 1);
        link.toward(Side::Upstream).pipe.push(b"last words");
        link.toward(Side::Upstream).fin.read();
        assert!(!link.may_read(Side::Client), "nothing after a FIN");
        assert!(!link.toward(Side::Upstream).fin_due(false), "bytes first");
        let n = link.toward(Side::Upstream).pipe.unsent().len();
        link.toward(Side::Upstream).pipe.consume(n);
        assert!(
            !link.toward(Side::Upstream).fin_due(true),
            "a send in flight"
        );
        assert!(link.toward(Side::Upstream).fin_due(false));
        assert!(!link.toward(Side::Upstream).fin_due(false), "passed once");
        assert!(!link.is_over(), "a half-close keeps the other way open");
        link.toward(Side::Client).fin.read();
        assert!(link.toward(Side::Client).fin_due(false));
        assert!(link.is_over());
    }

    #[test]
    fn only_the_upstream_gets_nodelay_and_only_once() {
        let mut link = Link::new(0, 1);
        assert!(!link.toward(Side::Client).set_nodelay_now());
        assert!(link.toward(Side::Upstream).set_nodelay_now());
        assert!(!link.toward(Side::Upstream).set_nodelay_now());
    }

    #[test]
    fn a_full_pipe_holds_its_source_back() {
        let mut link = Link::new(0, 1);
        link.toward(Side::Client)
            .pipe
            .push(&vec![0; super::super::PIPE_CAPACITY]);
        assert!(!link.may_read(Side::Upstream));
        assert!(link.blocked(Side::Client));
        assert!(link.may_read(Side::Client));
    }
}
