//! Every upstream's health, by address: the one place that runtime state lives, apart from
//! the settings that name the upstreams (a reload replaces those; an address that stays keeps
//! its health, counts and failures). Shared by every reactor's fleet, the checks and
//! `/metrics`; read at a reactor's start, a reload and a scrape, never per connection (each
//! reactor's pool holds its upstreams' statuses itself).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use super::UpstreamStatus;

/// The health of each upstream address in use.
#[derive(Debug, Default)]
pub struct HealthBoard {
    statuses: Mutex<Vec<(SocketAddr, Arc<UpstreamStatus>)>>,
}

impl HealthBoard {
    /// The status of the upstream at `addr`: the one it had, or a fresh one (up, no
    /// connections, no failures).
    pub fn status(&self, addr: SocketAddr) -> Arc<UpstreamStatus> {
        let mut statuses = self.statuses.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, status)) = statuses.iter().find(|(a, _)| *a == addr) {
            return Arc::clone(status);
        }
        let status = Arc::new(UpstreamStatus::default());
        statuses.push((addr, Arc::clone(&status)));
        status
    }

    /// Keeps only the statuses of `addrs` (a reload or a lookup changed the list): an
    /// address that comes back later starts afresh. Relays still open to a removed one keep
    /// its status through their own references.
    pub fn keep_only(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let addrs: Vec<SocketAddr> = addrs.into_iter().collect();
        let mut statuses = self.statuses.lock().unwrap_or_else(PoisonError::into_inner);
        statuses.retain(|(addr, _)| addrs.contains(addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_keeps_its_status_until_it_leaves_the_list() {
        let board = HealthBoard::default();
        let (a, b) = (
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        let first = board.status(a);
        assert!(Arc::ptr_eq(&first, &board.status(a)));
        assert!(!Arc::ptr_eq(&first, &board.status(b)));
        board.keep_only([b]);
        assert!(!Arc::ptr_eq(&first, &board.status(a)), "back afresh");
    }
}
