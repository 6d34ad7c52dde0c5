//! Policy shared by every reactor, with no I/O of its own: admission control and the accept
//! pause (`admission.rs`), whether a TLS client is worth its key exchange
//! (`key_exchange.rs`), when to give memory back after a burst of handshakes (`memory.rs`), per-address limits (`per_ip.rs`), the shutdown signal and drain
//! (`shutdown.rs`), and the settings a reload publishes (`live.rs`). The per-connection
//! decisions built on them are the driver's ([`crate::session`]); the reactors only carry
//! them out. Nothing here depends on [`crate::reactor`].

mod admission;
mod key_exchange;
mod live;
mod memory;
pub mod per_ip;
mod shutdown;

pub(crate) use admission::{AcceptPause, Admission};
pub use admission::{Limits, RetryAfter};
pub use key_exchange::KeyExchange;
pub(crate) use key_exchange::KeyExchangeJudge;
pub use live::{Live, LiveSettings};
pub(crate) use memory::AfterBurst;
pub use shutdown::{Shutdown, ShutdownState, Wake};
