//! Whether to spend a TLS key exchange on a client, decided before its ClientHello is read:
//! the most expensive step of a `wss` upgrade (an ECDHE and a signature, about 100 µs of
//! CPU) is not spent on a client that has already left, nor on one that could not get its
//! answer before it gives up (`--client-patience`).
//!
//! In a storm the kernel's accept queue is first in, first out: a server that falls behind
//! takes the oldest clients first, the ones likeliest to have given up. Their sockets stay
//! queued after they leave, their ClientHello and FIN in them; a server that reads and
//! answers them spends its key exchanges on no one, and the clients it could still serve
//! wait behind them until they give up too (the metastable failure of a reconnect storm).
//! One `TCP_INFO` per new TLS connection says what the kernel knows: whether the client's
//! FIN or RST came (it left), and how long ago its last data came (how long it has waited
//! for an answer). Shedding is a reset, before any TLS work: the client sees its attempt
//! fail at once and backs off, instead of waiting out its timeout.

use crate::sys::Waited;

/// The client's age past which it is shed is its patience less the time a handshake takes
/// to finish once its key exchange is spent (the client's Finished and request, read on a
/// later turn): smoothed over the handshakes finished, starting from this.
const FINISH_MS_START: f64 = 50.0;
/// The weight of each new handshake in the smoothed finish time.
const FINISH_WEIGHT: f64 = 1.0 / 16.0;

/// What to do with a TLS connection whose first bytes are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyExchange {
    /// Spend it: read the ClientHello and answer.
    Spend,
    /// The client closed or reset its side: it gave up before its turn.
    Left,
    /// The client has waited so long that it would give up before its handshake finished.
    TooLate,
}

/// One reactor's judge of key exchanges: how long a handshake takes here from its key
/// exchange to its end.
#[derive(Debug)]
pub(crate) struct KeyExchangeJudge {
    finish_ms: f64,
}

impl Default for KeyExchangeJudge {
    fn default() -> Self {
        KeyExchangeJudge {
            finish_ms: FINISH_MS_START,
        }
    }
}

impl KeyExchangeJudge {
    /// The verdict on a client from what the kernel says of it (`None`: it did not say, and
    /// the key exchange is spent), for clients that bear `patience_ms`.
    pub(crate) fn judge(&self, waited: Option<Waited>, patience_ms: u64) -> KeyExchange {
        match waited {
            Some(Waited { left: true, .. }) => KeyExchange::Left,
            Some(Waited { ms, .. }) if ms as f64 + self.finish_ms > patience_ms as f64 => {
                KeyExchange::TooLate
            }
            _ => KeyExchange::Spend,
        }
    }

    /// A handshake whose key exchange was spent ended `ms` after it.
    pub(crate) fn finished(&mut self, ms: u64) {
        self.finish_ms += (ms as f64 - self.finish_ms) * FINISH_WEIGHT;
    }

    /// The handshake's finish time as now estimated, in ms.
    #[cfg(test)]
    pub(crate) fn finish_ms(&self) -> f64 {
        self.finish_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waited(left: bool, ms: u64) -> Option<Waited> {
        Some(Waited { left, ms })
    }

    #[test]
    fn a_client_that_left_is_never_served() {
        let judge = KeyExchangeJudge::default();
        assert_eq!(judge.judge(waited(true, 0), 10_000), KeyExchange::Left);
        assert_eq!(judge.judge(waited(true, 60_000), 10_000), KeyExchange::Left);
    }

    #[test]
    fn a_client_is_shed_when_its_handshake_would_end_past_its_patience() {
        let mut judge = KeyExchangeJudge::default();
        assert_eq!(judge.judge(waited(false, 4_900), 5_000), KeyExchange::Spend);
        assert_eq!(
            judge.judge(waited(false, 4_951), 5_000),
            KeyExchange::TooLate
        );
        // Handshakes taking 1 s to finish here: the margin grows with them.
        for _ in 0..200 {
            judge.finished(1_000);
        }
        assert!((judge.finish_ms() - 1_000.0).abs() < 1.0);
        assert_eq!(judge.judge(waited(false, 3_900), 5_000), KeyExchange::Spend);
        assert_eq!(
            judge.judge(waited(false, 4_100), 5_000),
            KeyExchange::TooLate
        );
    }

    #[test]
    fn without_word_from_the_kernel_the_exchange_is_spent() {
        let judge = KeyExchangeJudge::default();
        assert_eq!(judge.judge(None, 1), KeyExchange::Spend);
    }
}
