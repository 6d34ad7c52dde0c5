//! What a client that is not upgraded is told: a rule of the handshake its request broke
//! ([`Rejection`]: the request's fault) or the edge's own refusal ([`Refusal`]: its limits,
//! its upstreams; not the request's fault, and mostly worth a retry). Both are answered
//! alike: a status, the headers it needs and a one-line reason.

use super::rejection::{Rejection, Status};

/// The edge refuses a request it did not fault: it is over a limit, or its upstreams cannot
/// take the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The server is at capacity; retry after this many seconds.
    Overloaded {
        /// Value of the `Retry-After` header.
        retry_after_secs: u32,
    },
    /// This client is over its connection or handshake rate; retry after this many seconds.
    RateLimited {
        /// Value of the `Retry-After` header.
        retry_after_secs: u32,
    },
    /// Proxy mode: the upstream refused the connection or answered with something that is
    /// not HTTP.
    UpstreamFailed,
    /// Proxy mode: the upstream did not answer in time.
    UpstreamTimeout,
    /// Proxy mode: every upstream holds `--upstream-max-connections`; retry after this many
    /// seconds.
    UpstreamsFull {
        /// Value of the `Retry-After` header.
        retry_after_secs: u32,
    },
    /// Proxy mode: every upstream failed its health checks (or is draining); retry after
    /// this many seconds.
    NoUpstreamUp {
        /// Value of the `Retry-After` header.
        retry_after_secs: u32,
    },
    /// Proxy mode: the client waited `--upstream-queue-ms` for an upstream with room for
    /// one more upgrade (`--upstream-max-pending`); retry after this many seconds.
    UpstreamsBusy {
        /// Value of the `Retry-After` header.
        retry_after_secs: u32,
    },
}

impl Refusal {
    /// Every kind of refusal, in [`Refusal::kind_index`] order (retry times zeroed).
    pub const KINDS: [Refusal; 7] = [
        Refusal::Overloaded {
            retry_after_secs: 0,
        },
        Refusal::RateLimited {
            retry_after_secs: 0,
        },
        Refusal::UpstreamFailed,
        Refusal::UpstreamTimeout,
        Refusal::UpstreamsFull {
            retry_after_secs: 0,
        },
        Refusal::NoUpstreamUp {
            retry_after_secs: 0,
        },
        Refusal::UpstreamsBusy {
            retry_after_secs: 0,
        },
    ];

    /// A dense index per kind of refusal: its place in [`Refusal::KINDS`].
    pub fn kind_index(self) -> usize {
        let kind = std::mem::discriminant(&self);
        Refusal::KINDS
            .iter()
            .position(|k| std::mem::discriminant(k) == kind)
            .unwrap_or(0)
    }

    /// The HTTP status this refusal is answered with.
    pub const fn status(self) -> Status {
        match self {
            Refusal::RateLimited { .. } => Status::TooManyRequests,
            Refusal::UpstreamFailed => Status::BadGateway,
            Refusal::UpstreamTimeout => Status::GatewayTimeout,
            Refusal::Overloaded { .. }
            | Refusal::UpstreamsFull { .. }
            | Refusal::NoUpstreamUp { .. }
            | Refusal::UpstreamsBusy { .. } => Status::ServiceUnavailable,
        }
    }

    /// The one-line explanation sent as the response body.
    pub const fn reason(self) -> &'static str {
        match self {
            Refusal::Overloaded { .. } => "server at capacity, retry later",
            Refusal::RateLimited { .. } => "too many connections from this client, retry later",
            Refusal::UpstreamFailed => "upstream unavailable",
            Refusal::UpstreamTimeout => "upstream did not answer in time",
            Refusal::UpstreamsFull { .. } => {
                "every upstream is at its connection limit, retry later"
            }
            Refusal::NoUpstreamUp { .. } => "no upstream is up, retry later",
            Refusal::UpstreamsBusy { .. } => {
                "the upstreams are busy setting up sessions, retry later"
            }
        }
    }

    /// The `Retry-After` value, for the refusals that carry one.
    pub const fn retry_after_secs(self) -> Option<u32> {
        match self {
            Refusal::Overloaded { retry_after_secs }
            | Refusal::RateLimited { retry_after_secs }
            | Refusal::UpstreamsFull { retry_after_secs }
            | Refusal::NoUpstreamUp { retry_after_secs }
            | Refusal::UpstreamsBusy { retry_after_secs } => Some(retry_after_secs),
            Refusal::UpstreamFailed | Refusal::UpstreamTimeout => None,
        }
    }
}

/// What a client that is not upgraded is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Its request broke a rule of the handshake.
    Rejected(Rejection),
    /// The edge refused it.
    Refused(Refusal),
}

impl From<Rejection> for Answer {
    fn from(rejection: Rejection) -> Answer {
        Answer::Rejected(rejection)
    }
}

impl From<Refusal> for Answer {
    fn from(refusal: Refusal) -> Answer {
        Answer::Refused(refusal)
    }
}

impl Answer {
    /// Every kind of answer, in [`Answer::kind_index`] order: the rejections, then the
    /// refusals.
    pub const KINDS: [Answer; Rejection::KINDS.len() + Refusal::KINDS.len()] = {
        let mut all =
            [Answer::Rejected(Rejection::Timeout); Rejection::KINDS.len() + Refusal::KINDS.len()];
        let mut i = 0;
        while i < Rejection::KINDS.len() {
            all[i] = Answer::Rejected(Rejection::KINDS[i]);
            i += 1;
        }
        let mut j = 0;
        while j < Refusal::KINDS.len() {
            all[i + j] = Answer::Refused(Refusal::KINDS[j]);
            j += 1;
        }
        all
    };

    /// A dense index per kind (for counters): its place in [`Answer::KINDS`].
    pub fn kind_index(self) -> usize {
        match self {
            Answer::Rejected(rejection) => rejection.kind_index(),
            Answer::Refused(refusal) => Rejection::KINDS.len() + refusal.kind_index(),
        }
    }

    /// The HTTP status it is answered with.
    pub const fn status(self) -> Status {
        match self {
            Answer::Rejected(rejection) => rejection.status(),
            Answer::Refused(refusal) => refusal.status(),
        }
    }

    /// The one-line explanation sent as the response body.
    pub const fn reason(self) -> &'static str {
        match self {
            Answer::Rejected(rejection) => rejection.reason(),
            Answer::Refused(refusal) => refusal.reason(),
        }
    }

    /// Headers it must carry besides the standard ones, each ending in CRLF.
    pub(crate) const fn extra_headers(self) -> &'static str {
        match self {
            Answer::Rejected(rejection) => rejection.extra_headers(),
            Answer::Refused(_) => "",
        }
    }

    /// The `Retry-After` value, for the answers that carry one (refusals only: a broken rule
    /// is not worth retrying as it is).
    pub const fn retry_after_secs(self) -> Option<u32> {
        match self {
            Answer::Rejected(_) => None,
            Answer::Refused(refusal) => refusal.retry_after_secs(),
        }
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status().code(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_indices_match_the_list() {
        for (index, kind) in Answer::KINDS.iter().enumerate() {
            assert_eq!(kind.kind_index(), index, "{kind:?}");
        }
        for (index, kind) in Refusal::KINDS.iter().enumerate() {
            assert_eq!(kind.kind_index(), index, "{kind:?}");
        }
        for (index, kind) in Rejection::KINDS.iter().enumerate() {
            assert_eq!(kind.kind_index(), index, "{kind:?}");
        }
    }
}
