//! The lookup thread: upstreams given by name are resolved again every
//! `--upstream-resolve-secs`, and a changed set of addresses is published like a reload
//! (the reactors take it at their next turn; an address that went away is drained as a
//! removed upstream is). One thread for all names, off the reactors: `getaddrinfo` blocks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Live, Shutdown, ShutdownState};

/// Starts the lookup thread if any upstream is given by name (and lookups are on).
pub fn spawn(live: &Arc<Live>, shutdown: &Arc<Shutdown>) -> std::io::Result<()> {
    let proxy = &live.current().conn.proxy;
    if proxy.resolve_interval_ms == 0 || proxy.targets.iter().all(|t| t.literal().is_some()) {
        return Ok(());
    }
    let (live, shutdown) = (Arc::clone(live), Arc::clone(shutdown));
    std::thread::Builder::new()
        .name("wsedge-resolve".into())
        .spawn(move || run(&live, &shutdown))?;
    Ok(())
}

fn run(live: &Live, shutdown: &Shutdown) {
    let mut last = Instant::now();
    while shutdown.state() == ShutdownState::Running {
        // Short naps: the thread notices a shutdown (or a reload's new interval) soon.
        std::thread::sleep(Duration::from_millis(200));
        let seen = live.current();
        let proxy = &seen.conn.proxy;
        if proxy.resolve_interval_ms == 0
            || last.elapsed() < Duration::from_millis(proxy.resolve_interval_ms)
        {
            continue;
        }
        last = Instant::now();
        let (upstreams, unresolved) = crate::proxy::resolve_all(&proxy.targets, &proxy.upstreams);
        for error in unresolved {
            tracing::warn!(error, "upstream left out");
        }
        if upstreams != proxy.upstreams {
            let before: Vec<_> = proxy.upstreams.iter().map(|u| u.addr).collect();
            let after: Vec<_> = upstreams.iter().map(|u| u.addr).collect();
            if live.publish_upstreams(&seen, upstreams) {
                shutdown.wake_reactors();
                tracing::info!(?before, ?after, "upstream addresses changed");
            }
        }
    }
}
