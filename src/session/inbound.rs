//! `--accept-proxy-protocol`: the PROXY header a balancer sends ahead of its client's bytes,
//! read per connection as it arrives (in pieces, perhaps), and the client it names, kept for
//! the connection's life (for per-address admission and the upstream's `X-Forwarded-For` or
//! PROXY header). A connection holds a slot only while it needs one: its session keeps the
//! slot's 4-byte handle, so no connection pays for the feature unless it uses it.

use std::net::SocketAddr;
use std::num::NonZeroU32;

use slab::Slab;

use crate::proxy::{parse_proxy_header, ProxyHeader};

/// A connection's place in [`InboundHeaders`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundSlot(NonZeroU32);

/// What one connection's balancer said so far.
#[derive(Debug, Default)]
struct Inbound {
    /// The header's first bytes, until it is whole (bounded by the parser: a header longer
    /// than a PROXY header can be is refused).
    partial: Vec<u8>,
    /// The client the whole header named.
    client: Option<SocketAddr>,
}

/// What reading a connection's next bytes as its PROXY header gave.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderRead {
    /// More is needed.
    Partial,
    /// Not a PROXY header, or a malformed one: the connection is closed, unanswered.
    Invalid(&'static str),
    /// The whole header: the client it names (`None`: the balancer's own connection),
    /// and the client's bytes that came after it.
    Complete {
        /// The client, as the balancer saw it.
        client: Option<SocketAddr>,
        /// The bytes after the header.
        rest: Vec<u8>,
    },
}

/// One reactor's PROXY headers in progress and the clients they named.
#[derive(Debug, Default)]
pub struct InboundHeaders {
    slots: Slab<Inbound>,
}

impl InboundHeaders {
    /// Reads `bytes` as the next of the header of the connection whose handle is `slot`
    /// (given one on its first bytes). Once the header is whole the slot is kept only if
    /// it named a client; any other outcome but [`HeaderRead::Partial`] releases it.
    pub fn read(&mut self, slot: &mut Option<InboundSlot>, bytes: &[u8]) -> HeaderRead {
        let index = match *slot {
            Some(InboundSlot(handle)) => handle.get() as usize - 1,
            None => {
                let index = self.slots.insert(Inbound::default());
                match u32::try_from(index + 1).ok().and_then(NonZeroU32::new) {
                    Some(handle) => *slot = Some(InboundSlot(handle)),
                    None => {
                        self.slots.remove(index);
                        return HeaderRead::Invalid("too many connections behind balancers");
                    }
                }
                index
            }
        };
        let Some(inbound) = self.slots.get_mut(index) else {
            *slot = None;
            return HeaderRead::Invalid("no header in progress");
        };
        inbound.partial.extend_from_slice(bytes);
        match parse_proxy_header(&inbound.partial) {
            ProxyHeader::Partial => HeaderRead::Partial,
            ProxyHeader::Invalid(why) => {
                self.release(slot);
                HeaderRead::Invalid(why)
            }
            ProxyHeader::Complete { len, client } => {
                let rest = inbound.partial.split_off(len);
                *inbound = Inbound {
                    partial: Vec::new(),
                    client,
                };
                if client.is_none() {
                    self.release(slot);
                }
                HeaderRead::Complete { client, rest }
            }
        }
    }

    /// The client the connection's header named, if it did.
    pub fn client(&self, slot: Option<InboundSlot>) -> Option<SocketAddr> {
        let InboundSlot(handle) = slot?;
        self.slots.get(handle.get() as usize - 1)?.client
    }

    /// The connection is gone: its slot is freed.
    pub fn release(&mut self, slot: &mut Option<InboundSlot>) {
        if let Some(InboundSlot(handle)) = slot.take() {
            self.slots.try_remove(handle.get() as usize - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nGET";

    #[test]
    fn a_header_in_pieces_names_its_client_until_the_slot_is_released() {
        let mut headers = InboundHeaders::default();
        let mut slot = None;
        assert_eq!(headers.read(&mut slot, &V1[..10]), HeaderRead::Partial);
        assert!(slot.is_some() && headers.client(slot).is_none());
        let read = headers.read(&mut slot, &V1[10..]);
        let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        assert_eq!(
            read,
            HeaderRead::Complete {
                client: Some(client),
                rest: b"GET".to_vec()
            }
        );
        assert_eq!(headers.client(slot), Some(client));
        headers.release(&mut slot);
        assert_eq!((slot, headers.slots.len()), (None, 0));
    }

    #[test]
    fn a_balancers_own_connection_or_a_bad_header_holds_no_slot() {
        let mut headers = InboundHeaders::default();
        let mut slot = None;
        let local = b"PROXY UNKNOWN\r\n";
        assert!(matches!(
            headers.read(&mut slot, local),
            HeaderRead::Complete { client: None, .. }
        ));
        assert_eq!((slot, headers.slots.len()), (None, 0));
        assert!(matches!(
            headers.read(&mut slot, b"GET / HTTP/1.1\r\n\r\n"),
            HeaderRead::Invalid(_)
        ));
        assert_eq!((slot, headers.slots.len()), (None, 0));
    }
}
