//! One loop turn, written once: what a backend does after its wait has delivered the
//! kernel's events, in the order every backend follows. A backend supplies only how it moves
//! bytes and descriptors ([`Backend`]); the order and what each step means come from here
//! and the [`Driver`].

use super::{Driver, Turn};

/// The I/O half of a reactor, as the turn drives it.
pub trait Backend {
    /// The reactor's driver.
    fn driver(&mut self) -> &mut Driver;
    /// The keys of every open connection.
    fn connection_keys(&self) -> Vec<usize>;
    /// Settles connection `key` ([`Driver::settle`]), carries out what it says, and arms its
    /// deadline.
    fn settle(&mut self, key: usize, now: u64);
    /// A drain begins: take the connections the kernel queued (closing a listener would
    /// reset them, unless the sockets were handed over), then stop listening.
    fn stop_listening(&mut self, now: u64);
    /// Accepts what the listeners hold, if the driver is accepting.
    fn accept(&mut self, now: u64);
    /// Goes back to the connections the events left work for (input to read again,
    /// receives to arm).
    fn resume(&mut self, now: u64);
    /// Connections open, and whether nothing is open or in flight.
    fn load(&self) -> (usize, bool);
    /// The next TLS client whose ClientHello waited for a key exchange
    /// ([`Driver::next_key_exchange`], with the backend's connections).
    fn next_key_exchange(&mut self, now: u64) -> Option<usize>;
    /// Reads (or hands in the held bytes of) client `key`'s ClientHello.
    fn start_key_exchange(&mut self, key: usize, now: u64);
    /// Proxy mode: the next waiting client an upstream has room for
    /// ([`Driver::next_waiting`], with the backend's connections to check it against).
    fn next_waiting(&mut self, now: u64) -> Option<usize>;
    /// Sends waiting client `key` on to an upstream ([`Driver::open_upstream`]).
    fn forward(&mut self, key: usize, now: u64);
}

/// Finishes a turn after the events were handled: the driver's turn (a drain starting, a
/// resettle), accepting, the connections left work, the deadlines that passed, and the
/// turn's end. True when the reactor must exit.
pub fn finish(backend: &mut impl Backend, now: u64) -> bool {
    match backend.driver().turn(now) {
        Turn::Exit => return true,
        Turn::StartDrain => {
            backend.stop_listening(now);
            settle_all(backend, now);
            tracing::info!(connections = backend.load().0, "draining");
        }
        Turn::Resettle => settle_all(backend, now),
        Turn::Reclaim => {
            for key in backend.driver().reclaimable(now) {
                backend.settle(key, now);
            }
        }
        Turn::Serve => {}
    }
    // The handshakes started in earlier turns were finished by this turn's events; what
    // the turn's budget of key exchanges has left goes to the ClientHellos that waited,
    // before new clients are accepted.
    while let Some(key) = backend.next_key_exchange(now) {
        backend.start_key_exchange(key, now);
    }
    backend.accept(now);
    backend.resume(now);
    // Proxy mode over HTTP/2: connections whose streams' upstreams have bytes or room.
    while let Some(key) = backend.driver().next_stream_due() {
        backend.settle(key, now);
    }
    while let Some(key) = backend.driver().next_expired(now) {
        backend.settle(key, now);
    }
    // Last: the events and deadlines above are what free upstreams' room.
    send_on_waiting(backend, now);
    let (open, idle) = backend.load();
    backend.driver().end_turn(open, idle, now)
}

/// Proxy mode: the clients waiting at the edge that the upstreams now have room for go on
/// their way. One that left while waiting was closed when the backend saw it go (a read of
/// 0 or an error: both backends watch a waiting client), and nothing of it was forwarded.
///
/// An HTTP/2 stream waiting in the same queue is handed out as its connection, which is
/// settled: its waiting streams take the room there is. Each round takes one entry out of
/// the queue (a stream of that connection that must wait again is kept aside until the
/// hand-outs are over), so the rounds end.
fn send_on_waiting(backend: &mut impl Backend, now: u64) {
    loop {
        while let Some(key) = backend.next_waiting(now) {
            backend.forward(key, now);
        }
        let Some(owner) = backend.driver().take_stream_handed_out() else {
            return;
        };
        backend.settle(owner, now);
    }
}

/// Settles every connection: each gets what a drain, a retired upstream or a shortage of
/// descriptors means for it.
fn settle_all(backend: &mut impl Backend, now: u64) {
    for key in backend.connection_keys() {
        backend.settle(key, now);
    }
}
