//! When to give free memory back to the kernel: once a burst of handshakes is over.
//!
//! A handshake's transient state (a TLS one's above all: rustls's connection, its buffers,
//! the certificate chain's encoding, about 3 KB while it waits for the client's Finished)
//! is freed when it ends, but the allocator keeps the freed memory, scattered between the
//! connections that stay: after a storm of 5,000 `wss` clients the server's RSS stayed at
//! 3.4 KB per idle connection where they hold 1.4 KB. Trimming then (`sys::return_free_memory`)
//! costs a walk of the allocator's free lists, a few milliseconds at most, once per burst.

/// Handshakes in progress that make a burst worth trimming after.
const BURST: usize = 256;
/// A burst is over when at most this many handshakes are left.
const CALM: usize = 8;
/// At most one trim per this long.
const MIN_GAP_MS: u64 = 1_000;

/// Watches the handshakes in progress for the end of a burst.
#[derive(Debug, Default)]
pub(crate) struct AfterBurst {
    in_burst: bool,
    last_trim: Option<u64>,
}

impl AfterBurst {
    /// At a turn's end with `handshaking` in progress: whether to trim now.
    pub(crate) fn trim_now(&mut self, handshaking: usize, now: u64) -> bool {
        if handshaking >= BURST {
            self.in_burst = true;
            return false;
        }
        let rested = self
            .last_trim
            .is_none_or(|at| now.saturating_sub(at) >= MIN_GAP_MS);
        if self.in_burst && handshaking <= CALM && rested {
            self.in_burst = false;
            self.last_trim = Some(now);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_comes_once_a_burst_is_over_and_not_more_than_once_a_second() {
        let mut after = AfterBurst::default();
        assert!(!after.trim_now(100, 0), "no burst yet");
        assert!(!after.trim_now(0, 10));
        assert!(!after.trim_now(BURST, 20), "in the burst");
        assert!(!after.trim_now(50, 30), "not calm yet");
        assert!(after.trim_now(CALM, 40), "over");
        assert!(!after.trim_now(0, 50), "once");
        assert!(!after.trim_now(BURST, 60));
        assert!(!after.trim_now(0, 500), "too soon after the last");
        assert!(after.trim_now(0, 1_040));
    }
}
