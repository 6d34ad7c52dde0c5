//! Upstream health: the shared status every reactor's pick reads ([`UpstreamStatus`]), the
//! check protocol ([`CheckKind`], no I/O) and the active checker that runs on a reactor's
//! own loop ([`Checker`]).
//!
//! Each upstream is checked by one reactor (its place in the list, modulo the reactors), so
//! a fleet of N upstreams costs N checks an interval whatever the number of cores; the
//! result is published in the upstream's status for all. Passive checks are the clients'
//! own connections: a refusal, a timeout or an invalid 101 counts as a failed check.

mod board;
mod checker;
mod probe;
mod status;

pub use board::HealthBoard;
pub use checker::Checker;
pub use probe::{CheckKind, Verdict, CHECK_CLOSE_FRAME, MAX_CHECK_ANSWER};
pub use status::{Failure, UpstreamStatus};

/// `--upstream-health-*`: active checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// What a check does.
    pub kind: CheckKind,
    /// From the start of one check of an upstream to the start of the next, in ms.
    pub interval_ms: u64,
    /// Bound on one check (connect and answer), in ms.
    pub timeout_ms: u64,
    /// Checks passed in a row that bring a down upstream back.
    pub rise: u32,
    /// Failures in a row (checks or clients' connections) that take an upstream out.
    pub fall: u32,
}
