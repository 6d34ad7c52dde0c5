//! One direction of a relay: bytes read from one socket and not yet written to the other.

/// The most a pipe holds before its reading side is paused: back-pressure reaches the
/// sender through its TCP window instead of through our memory.
pub const PIPE_CAPACITY: usize = 64 * 1024;

/// A bounded byte queue whose front part stays put while a write of it is in flight.
///
/// # Buffer stability
/// [`Pipe::unsent`] returns the front buffer; [`Pipe::push`] only ever appends to the back
/// one, and the two are swapped only once the front is fully consumed. So an io_uring send
/// may point into the front slice until its completion, while new bytes keep arriving.
#[derive(Debug, Default)]
pub struct Pipe {
    front: Vec<u8>,
    /// INVARIANT: `sent <= front.len()`.
    sent: usize,
    back: Vec<u8>,
    /// Bytes were written since [`Pipe::take_progress`] last asked.
    progressed: bool,
}

impl Pipe {
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.front.len() - self.sent + self.back.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many more bytes may be pushed before the reading side must pause.
    pub fn room(&self) -> usize {
        PIPE_CAPACITY.saturating_sub(self.len())
    }

    /// Queues bytes read from the source.
    pub fn push(&mut self, bytes: &[u8]) {
        self.back.extend_from_slice(bytes);
    }

    /// Where bytes appended go out after everything queued (for a writer that fills a
    /// `Vec` itself, as TLS decryption does).
    pub fn tail(&mut self) -> &mut Vec<u8> {
        &mut self.back
    }

    /// The bytes to write next (empty when nothing is held).
    pub fn unsent(&mut self) -> &[u8] {
        if self.sent == self.front.len() && !self.back.is_empty() {
            self.front.clear();
            self.sent = 0;
            std::mem::swap(&mut self.front, &mut self.back);
        }
        &self.front[self.sent..]
    }

    /// Whether the sink took bytes since last asked.
    pub fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.progressed)
    }

    /// Bytes moved to the sink outside the pipe (a kernel pipe's `splice`): progress too.
    pub fn note_progress(&mut self) {
        self.progressed = true;
    }

    /// The first `n` bytes of [`Pipe::unsent`] were written.
    pub fn consume(&mut self, n: usize) {
        self.progressed |= n > 0;
        self.sent = (self.sent + n).min(self.front.len());
        if self.sent == self.front.len() && self.back.is_empty() {
            // An idle relay holds no memory.
            self.front = Vec::new();
            self.sent = 0;
        }
    }
}

impl crate::transport::Sink for Pipe {
    fn append(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> usize) {
        crate::transport::append_to(self.tail(), len, fill)
    }
}

impl crate::transport::Queue for Pipe {
    fn unsent(&mut self) -> &[u8] {
        Pipe::unsent(self)
    }

    fn consume(&mut self, n: usize) {
        Pipe::consume(self, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_out_in_order_across_the_swap() {
        let mut pipe = Pipe::default();
        pipe.push(b"hello ");
        assert_eq!(pipe.unsent(), b"hello ");
        // A write of the front is in flight: new bytes go behind it.
        pipe.push(b"world");
        assert_eq!(pipe.unsent(), b"hello ");
        pipe.consume(3);
        assert_eq!(pipe.unsent(), b"lo ");
        pipe.consume(3);
        assert_eq!(pipe.unsent(), b"world");
        pipe.consume(5);
        assert!(pipe.is_empty());
        assert_eq!(pipe.unsent(), b"");
    }

    #[test]
    fn room_shrinks_to_zero_at_capacity() {
        let mut pipe = Pipe::default();
        assert_eq!(pipe.room(), PIPE_CAPACITY);
        pipe.push(&vec![0; PIPE_CAPACITY]);
        assert_eq!(pipe.room(), 0);
        let n = pipe.unsent().len();
        pipe.consume(n);
        assert_eq!(pipe.room(), PIPE_CAPACITY);
    }
}
