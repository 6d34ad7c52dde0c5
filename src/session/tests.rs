//! The driver in memory, as a backend drives it, with a fake clock and no sockets: each
//! rule once, not once per backend.

use std::sync::atomic::Ordering::Relaxed;

use super::*;
use crate::conn::AfterUpgrade;
use crate::handshake::Policy;
use crate::proxy::{ProxyConfig, REFUSED_BACKOFF_MS};

const REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

const UPSTREAMS: [&str; 2] = ["10.0.0.1:9000", "10.0.0.2:9000"];

fn driver(limits: Limits) -> Driver {
    driver_with_tls(limits, None)
}

/// A driver whose connections accepted as `tls` get a TLS session. The certificate is made
/// once per test process: tests run in parallel, and each writing the same files raced
/// (a key read beside another test's certificate).
fn tls_driver() -> Driver {
    static CONFIG: std::sync::OnceLock<crate::tls::SharedTlsConfig> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wsedge-driver-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        let settings = crate::tls::TlsSettings {
            pairs: vec![(cert, key)],
            versions: vec![crate::tls::TlsVersion::V1_3],
            groups: vec![crate::tls::TlsGroup::X25519],
            h2: false,
        };
        let config = crate::tls::server_config(&settings).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        crate::tls::shared(config)
    });
    driver_with_tls(Limits::default(), Some(config.clone()))
}

fn accept_tls(driver: &mut Driver, open: usize, now: u64) -> Peer {
    let mut out = Vec::new();
    let peer = Some("192.0.2.1".parse().unwrap());
    let (parts, next) = driver.accepted(open, peer, true, now, &mut out);
    assert!(parts.awaits_client_hello());
    Peer { parts, out, next }
}

fn driver_with_tls(limits: Limits, tls: Option<crate::tls::SharedTlsConfig>) -> Driver {
    let config = ConnConfig {
        policy: Policy::default(),
        after: AfterUpgrade::Echo,
        handshake_timeout_ms: 1000,
        h2c: false,
        client_patience_ms: 1000,
        idle_timeout_ms: 0,
        send_timeout_ms: 30_000,
        max_message_bytes: 1 << 16,
        linger_ms: 100,
        proxy: ProxyConfig {
            upstreams: UPSTREAMS
                .iter()
                .map(|a| crate::proxy::Upstream::at(a.parse().unwrap()))
                .collect(),
            ..ProxyConfig::default()
        },
    };
    let shutdown = Arc::new(crate::policy::Shutdown::default());
    Driver::new(
        Arc::new(config),
        Arc::new(Counters::default()),
        limits,
        7,
        shutdown,
        tls,
        Arc::default(),
    )
}

/// One connection as a backend holds it: the protocol state, the session, its output.
struct Peer {
    parts: Parts,
    out: Vec<u8>,
    next: Next,
}

fn accept(driver: &mut Driver, open: usize, ip: &str, now: u64) -> Peer {
    let mut out = Vec::new();
    let peer = Some(ip.parse().unwrap());
    let (parts, next) = driver.accepted(open, peer, false, now, &mut out);
    Peer { parts, out, next }
}

impl Peer {
    /// The driver's settle of this connection, with output not taken yet or none.
    fn settle(&mut self, driver: &mut Driver, output_waiting: bool, now: u64) -> Next {
        let backlog = Backlog {
            waiting: output_waiting,
            progressed: false,
        };
        self.settle_with(driver, backlog, now)
    }

    fn settle_with(&mut self, driver: &mut Driver, backlog: Backlog, now: u64) -> Next {
        let out = &mut self.out;
        driver.settle_state(
            &mut self.parts.conn,
            &mut self.parts.session,
            (backlog, None),
            now,
            out,
        )
    }

    fn status(&self) -> &str {
        std::str::from_utf8(&self.out[9..12]).unwrap()
    }

    fn retry_after(&self) -> u32 {
        let text = String::from_utf8_lossy(&self.out);
        let line = text.lines().find_map(|l| l.strip_prefix("Retry-After: "));
        line.expect("a Retry-After").trim().parse().unwrap()
    }

    /// The client sends its request; the driver settles the connection afterwards.
    fn upgrade(&mut self, driver: &mut Driver, now: u64) {
        let mut cx = driver.cx(now, &mut self.out);
        assert_eq!(self.parts.conn.on_data(REQUEST, &mut cx), Next::Continue);
        assert!(self.out.starts_with(b"HTTP/1.1 101"));
        self.out.clear();
        assert_eq!(self.settle(driver, false, now), Next::Continue);
    }
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Relaxed)
}

#[test]
fn over_the_connection_limit_a_client_gets_503_with_a_retry_after_in_range() {
    let limits = Limits {
        max_connections: 2,
        retry_after_secs: crate::policy::RetryAfter::Range(5, 30),
        ..Limits::default()
    };
    let mut driver = driver(limits);
    let admitted = accept(&mut driver, 1, "192.0.2.1", 0);
    assert!(admitted.parts.session.is_handshaking() && admitted.out.is_empty());
    assert_eq!(admitted.next, Next::Continue);
    for _ in 0..50 {
        let refused = accept(&mut driver, 2, "192.0.2.1", 0);
        assert_eq!(refused.next, Next::HalfClose);
        assert_eq!(refused.status(), "503");
        assert!((5..=30).contains(&refused.retry_after()));
        assert!(
            !refused.parts.session.is_handshaking(),
            "a refusal is not a handshake"
        );
    }
    assert_eq!(count(&driver.stats.admission_rejections), 50);
    assert_eq!(count(&driver.stats.accepted), 51);
}

#[test]
fn a_finished_handshake_frees_its_pending_slot() {
    let limits = Limits {
        max_pending_handshakes: 1,
        ..Limits::default()
    };
    let mut driver = driver(limits);
    let mut first = accept(&mut driver, 0, "192.0.2.1", 0);
    assert_eq!(accept(&mut driver, 1, "192.0.2.2", 0).status(), "503");
    first.upgrade(&mut driver, 10);
    assert!(!first.parts.session.is_handshaking());
    let third = accept(&mut driver, 1, "192.0.2.3", 10);
    assert!(
        third.parts.session.is_handshaking(),
        "the upgraded one no longer counts"
    );
}

#[test]
fn one_address_over_its_limit_gets_429_until_one_of_its_connections_closes() {
    let limits = Limits {
        max_connections_per_ip: 1,
        ..Limits::default()
    };
    let mut driver = driver(limits);
    let mut held = accept(&mut driver, 0, "192.0.2.1", 0);
    assert_eq!(accept(&mut driver, 1, "192.0.2.1", 0).status(), "429");
    assert!(accept(&mut driver, 1, "198.51.100.1", 0)
        .parts
        .session
        .is_handshaking());
    held.upgrade(&mut driver, 5);
    driver.closed(0, &mut held.parts, 6);
    assert!(accept(&mut driver, 1, "192.0.2.1", 7)
        .parts
        .session
        .is_handshaking());
}

#[test]
fn a_drain_spreads_its_closes_over_the_window_with_its_code() {
    let limits = Limits {
        drain_window_ms: 10_000,
        drain_close_code: 1012,
        ..Limits::default()
    };
    let mut driver = driver(limits);
    let mut peers: Vec<Peer> = (0..200)
        .map(|i| {
            let mut peer = accept(&mut driver, i, "192.0.2.1", 0);
            peer.upgrade(&mut driver, 0);
            peer
        })
        .collect();
    driver.start_draining(1_000);
    assert!(!driver.accepting(1_000));
    let mut close_times = Vec::new();
    for peer in &mut peers {
        let next = peer.settle(&mut driver, false, 1_000);
        assert!(matches!(next, Next::Continue | Next::Close), "{next:?}");
        close_times.push(driver.timer(&mut peer.parts, 1_000).unwrap_or(1_000));
    }
    let (first, last) = (close_times.iter().min(), close_times.iter().max());
    assert!(first.is_some_and(|&t| t < 3_000) && last.is_some_and(|&t| t > 9_000));
    assert!(close_times.iter().all(|&t| (1_000..=11_000).contains(&t)));
    // At its time, a connection is sent Close(1012).
    let peer = &mut peers[0];
    let at = driver.timer(&mut peer.parts, 1_000).unwrap_or(1_000);
    let next = peer.settle(&mut driver, false, at);
    assert_eq!(next, Next::Continue);
    assert_eq!(peer.out, [0x88, 0x02, 0x03, 0xF4]);
}

#[test]
fn a_refusing_upstream_is_passed_over_and_the_next_tried_for_the_same_client() {
    let mut driver = driver(Limits::default());
    let mut peer = accept(&mut driver, 0, "192.0.2.1", 0);
    let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
    let mut attempts = 0;
    let (first, _) = picked(driver.next_upstream(&mut attempts, (None, None), 0));
    let link = driver.link_to(first);
    let failure = driver.upstream_failed(&mut peer.parts, &link, &refused, 0, &mut peer.out);
    assert_eq!(failure, UpstreamFailure::TryNext);
    let (second, _) = picked(driver.next_upstream(&mut attempts, (None, None), 0));
    assert_ne!(first, second);
    // Each was tried once for this client: no more.
    assert_eq!(
        driver.next_upstream(&mut attempts, (None, None), 0),
        Pick::None
    );
    assert_eq!(count(&driver.stats.upstream_connect_failures), 1);
    // New clients skip the refuser until its backoff ends.
    for _ in 0..4 {
        let mut fresh = 0;
        assert_eq!(
            picked(driver.next_upstream(&mut fresh, (None, None), 10)).0,
            second
        );
    }
    let mut fresh = 0;
    let later = REFUSED_BACKOFF_MS + 10;
    let picks: Vec<usize> = (0..2)
        .map(|_| picked(driver.next_upstream(&mut fresh, (None, None), later)).0)
        .collect();
    assert!(picks.contains(&first), "back in rotation after its backoff");
}

/// "Served" is a valid 101, counted once: a relay moving bytes does not break the failure
/// streak of the active checks, which take the upstream out at the fall.
#[test]
fn a_live_relay_does_not_hide_failed_health_checks() {
    let mut config = (*driver(Limits::default()).config).clone();
    config.after = AfterUpgrade::Proxy;
    let shutdown = Arc::new(crate::policy::Shutdown::default());
    let stats = Arc::new(Counters::default());
    let mut driver = Driver::new(
        Arc::new(config),
        stats,
        Limits::default(),
        7,
        shutdown,
        None,
        Arc::default(),
    );
    let mut peer = accept(&mut driver, 0, "192.0.2.1", 0);
    let mut cx = driver.cx(0, &mut peer.out);
    assert_eq!(peer.parts.conn.on_data(REQUEST, &mut cx), Next::Proxy);
    let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    assert_eq!(
        peer.parts.conn.on_upstream_data(answer, &mut cx),
        Next::Relay
    );
    let link = driver.link_to(0);
    let settle = |peer: &mut Peer, driver: &mut Driver| {
        let out = &mut peer.out;
        let link = Some(&link);
        driver.settle_state(
            &mut peer.parts.conn,
            &mut peer.parts.session,
            (Backlog::default(), link),
            0,
            out,
        )
    };
    assert_eq!(settle(&mut peer, &mut driver), Next::Continue);
    let status = link.lease().map(|lease| lease.status()).unwrap();
    assert!(!status.check_failed(1, 3) && !status.check_failed(1, 3));
    // The relay moves bytes: each event settles it again.
    for _ in 0..5 {
        assert_eq!(settle(&mut peer, &mut driver), Next::Continue);
    }
    assert!(
        status.check_failed(1, 3),
        "the third failure in a row takes it out"
    );
    assert!(!status.is_up());
}

#[test]
fn out_of_descriptors_a_lingering_connection_with_nothing_to_send_is_closed_at_once() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let mut driver = driver(limits);
    let mut open = accept(&mut driver, 0, "192.0.2.1", 1_000);
    open.upgrade(&mut driver, 1_000);
    // Refused over the limit: answered, then lingering.
    let mut lingering = accept(&mut driver, 1, "192.0.2.2", 1_000);
    let mut flushing = accept(&mut driver, 1, "192.0.2.3", 1_000);
    assert!(lingering.parts.conn.is_lingering() && flushing.parts.conn.is_lingering());
    // Before any shortage, a linger runs its course.
    assert_eq!(lingering.settle(&mut driver, false, 1_010), Next::Continue);
    // On the wheel: a lingering connection's deadline is within the linger, an upgraded
    // one without an idle timeout has none.
    driver.arm(1, &mut lingering.parts, 1_010);
    driver.arm(0, &mut open.parts, 1_010);
    let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
    driver.pause_accepting(1_010, &emfile);
    assert_eq!(driver.turn(1_010), Turn::Reclaim);
    assert_eq!(driver.reclaimable(1_010), [1]);
    assert_eq!(lingering.settle(&mut driver, false, 1_010), Next::Close);
    // Output still going out, or a connection in use, is not given up for it.
    assert_eq!(flushing.settle(&mut driver, true, 1_010), Next::Continue);
    assert_eq!(open.settle(&mut driver, false, 1_010), Next::Continue);
    assert_eq!(count(&driver.stats.lingering_reclaimed), 1);
    // The next turn, with no new shortage, reclaims nothing.
    let mut later = accept(&mut driver, 1, "192.0.2.4", 1_020);
    assert_eq!(driver.turn(1_020), Turn::Serve);
    assert_eq!(later.settle(&mut driver, false, 1_020), Next::Continue);
}

#[test]
fn running_out_of_local_resources_is_a_503_and_a_pause_not_the_upstreams_fault() {
    let mut driver = driver(Limits::default());
    for errno in [libc::EMFILE, libc::ENFILE, libc::ENOMEM] {
        let mut peer = accept(&mut driver, 0, "192.0.2.1", 1_000);
        let error = std::io::Error::from_raw_os_error(errno);
        let link = driver.link_to(0);
        let failure = driver.upstream_failed(&mut peer.parts, &link, &error, 1_000, &mut peer.out);
        assert_eq!(failure, UpstreamFailure::Answer(Next::HalfClose), "{errno}");
        assert_eq!(peer.status(), "503");
        // Lingering connections are reclaimed at once; then the loop wakes up when the
        // pause is over.
        assert_eq!(driver.wait(1_000, true), Some(std::time::Duration::ZERO));
        assert_eq!(driver.turn(1_000), Turn::Reclaim, "{errno}");
        let pause = driver
            .wait(1_000, true)
            .expect("a wake-up at the pause's end");
        let resumes = 1_000 + pause.as_millis() as u64;
        assert!(!driver.accepting(resumes - 1) && driver.accepting(resumes));
    }
    assert_eq!(count(&driver.stats.upstream_connect_failures), 0);
    // Nothing was passed over: the first upstream is still first in line.
    let mut untouched = self::driver(Limits::default());
    assert_eq!(
        picked(driver.next_upstream(&mut 0, (None, None), 1_000)).0,
        picked(untouched.next_upstream(&mut 0, (None, None), 1_000)).0
    );
}

#[test]
fn out_of_local_ports_is_a_503_counted_as_such_and_accepting_goes_on() {
    let mut driver = driver(Limits::default());
    let mut peer = accept(&mut driver, 0, "192.0.2.1", 1_000);
    let error = std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
    let link = driver.link_to(0);
    let failure = driver.upstream_failed(&mut peer.parts, &link, &error, 1_000, &mut peer.out);
    assert_eq!(failure, UpstreamFailure::Answer(Next::HalfClose));
    assert_eq!(peer.status(), "503");
    assert!(peer.retry_after() >= 1);
    assert_eq!(count(&driver.stats.upstream_ports_exhausted), 1);
    assert_eq!(count(&driver.stats.accept_pauses), 0);
    assert!(driver.accepting(1_000), "descriptors did not run out");
    assert_eq!(
        count(&driver.stats.upstream_connect_failures),
        0,
        "not the upstream's fault"
    );
}

#[test]
fn an_upstream_socket_the_edge_cannot_watch_is_its_own_failure() {
    let mut driver = driver(Limits::default());
    // Out of epoll watches: overload, 503.
    let mut full = accept(&mut driver, 0, "192.0.2.1", 0);
    let watches = std::io::Error::from_raw_os_error(libc::ENOSPC);
    assert_eq!(
        driver.upstream_unusable(&mut full.parts, &watches, 0, &mut full.out),
        Next::HalfClose
    );
    assert_eq!(full.status(), "503");
    assert!(!driver.accepting(0));
}

#[test]
fn output_not_taken_by_the_linger_is_given_up_with_the_connection() {
    let mut driver = driver(Limits::default());
    let mut peer = accept(&mut driver, 0, "192.0.2.1", 0);
    peer.upgrade(&mut driver, 0);
    // A close waits for the output to go out.
    assert_eq!(
        peer.parts.session.after(Next::Close, true),
        Action::AwaitFlush
    );
    assert!(peer.parts.session.awaits_flush());
    let deadline = driver.timer(&mut peer.parts, 50);
    assert_eq!(deadline, Some(150), "the linger bounds the wait");
    let next = peer.settle(&mut driver, true, 149);
    assert_eq!(next, Next::Continue, "not yet");
    let next = peer.settle(&mut driver, true, 150);
    assert_eq!(next, Next::Close);
    assert_eq!(
        peer.parts.session.after(next, true),
        Action::Reset,
        "the close waits for the output no more, and the kernel keeps none of it"
    );
    // Had it gone out, the close was due.
    assert_eq!(peer.parts.session.flushed(), AfterFlush::Close);
    let mut fresh = Session::default();
    assert_eq!(fresh.after(Next::Close, false), Action::Close);
    assert_eq!(fresh.after(Next::HalfClose, false), Action::ShutdownWrite);
}

#[test]
fn a_client_that_stops_reading_is_given_up_at_the_send_timeout_after_its_last_progress() {
    let mut driver = driver(Limits::default());
    let send_timeout = driver.config.send_timeout_ms;
    let mut peer = accept(&mut driver, 0, "192.0.2.1", 0);
    peer.upgrade(&mut driver, 0);
    assert_eq!(driver.timer(&mut peer.parts, 0), None, "idle: none");
    // Output waits: the send deadline starts.
    assert_eq!(peer.settle(&mut driver, true, 10), Next::Continue);
    let first = Some(10 + send_timeout);
    assert_eq!(driver.timer(&mut peer.parts, 10), first);
    // Still waiting, nothing taken: the deadline does not move.
    assert_eq!(peer.settle(&mut driver, true, 500), Next::Continue);
    assert_eq!(driver.timer(&mut peer.parts, 500), first);
    // The client took some: it counts from now.
    let progressed = Backlog {
        waiting: true,
        progressed: true,
    };
    assert_eq!(
        peer.settle_with(&mut driver, progressed, 600),
        Next::Continue
    );
    let later = 600 + send_timeout;
    assert_eq!(driver.timer(&mut peer.parts, 600), Some(later));
    assert_eq!(peer.settle(&mut driver, true, later - 1), Next::Continue);
    assert_eq!(peer.settle(&mut driver, true, later), Next::Close);
    assert_eq!(peer.parts.session.after(Next::Close, true), Action::Reset);
    assert_eq!(count(&driver.stats.send_timeouts), 1);
    // All taken: no send deadline is left.
    let mut peer = accept(&mut driver, 0, "192.0.2.2", 0);
    peer.upgrade(&mut driver, 0);
    assert_eq!(peer.settle(&mut driver, true, 10), Next::Continue);
    assert_eq!(peer.settle(&mut driver, false, 20), Next::Continue);
    assert_eq!(driver.timer(&mut peer.parts, 20), None);
}

#[test]
fn a_send_linked_to_its_close_is_overdue_once_at_the_linger() {
    let mut driver = driver(Limits::default());
    let linger = driver.config.linger_ms;
    let mut peer = accept(&mut driver, 0, "192.0.2.1", 0);
    peer.upgrade(&mut driver, 0);
    driver.closing_after_send(7, &mut peer.parts, 100);
    assert!(!driver.flush_overdue(&mut peer.parts, 100 + linger - 1));
    assert_eq!(
        driver.next_expired(100 + linger),
        Some(7),
        "the wheel holds it"
    );
    assert!(driver.flush_overdue(&mut peer.parts, 100 + linger));
    assert!(!driver.flush_overdue(&mut peer.parts, 100 + linger), "once");
    assert_eq!(count(&driver.stats.send_timeouts), 1);
}

#[test]
fn a_silent_client_is_closed_at_the_handshake_deadline_and_counted() {
    let mut driver = driver(Limits::default());
    let mut peer = accept(&mut driver, 0, "192.0.2.1", 0);
    assert_eq!(driver.timer(&mut peer.parts, 0), Some(1000));
    let next = peer.settle(&mut driver, false, 999);
    assert_eq!(next, Next::Continue, "not yet");
    let next = peer.settle(&mut driver, false, 1000);
    assert_eq!(next, Next::Close);
    assert!(
        peer.out.is_empty(),
        "nothing says a silent peer speaks HTTP"
    );
    assert_eq!(count(&driver.stats.handshake_timeouts), 1);
}

#[test]
fn a_client_that_leaves_mid_handshake_is_counted_abandoned_once() {
    let mut driver = driver(Limits {
        max_pending_handshakes: 1,
        ..Limits::default()
    });
    let mut peer = accept(&mut driver, 0, "192.0.2.1", 0);
    // Its close begins (io_uring: the slot waits for operations in flight), then the slot
    // goes: counted once.
    driver.closing(&mut peer.parts);
    assert!(
        !peer.parts.session.is_handshaking(),
        "its pending slot is free at once"
    );
    driver.closed(0, &mut peer.parts, 5);
    assert_eq!(count(&driver.stats.handshakes_abandoned), 1);
    assert_eq!(count(&driver.stats.closed), 1);
    assert!(
        accept(&mut driver, 0, "192.0.2.1", 6)
            .parts
            .session
            .is_handshaking(),
        "slot freed"
    );
}

#[test]
fn a_session_costs_24_bytes_per_connection() {
    assert_eq!(std::mem::size_of::<Session>(), 24);
}

#[test]
fn an_armed_deadline_is_handed_out_once_in_the_turn_it_passes() {
    let mut driver = driver(Limits::default());
    let mut peer = accept(&mut driver, 0, "192.0.2.1", 0);
    driver.arm(3, &mut peer.parts, 0);
    assert_eq!(driver.next_expired(999), None, "not yet");
    driver.end_turn(1, false, 999);
    assert_eq!(driver.next_expired(1_000), Some(3));
    assert_eq!(driver.next_expired(1_000), None, "disarmed once handed out");
    // Re-armed in the same turn (already due): it waits for the next turn.
    driver.arm(3, &mut peer.parts, 0);
    assert_eq!(driver.next_expired(1_000), None);
    driver.end_turn(1, false, 1_000);
    assert_eq!(driver.next_expired(1_001), Some(3));
    // A closed connection's deadline is never handed out.
    driver.arm(3, &mut peer.parts, 0);
    driver.closed(3, &mut peer.parts, 1_000);
    driver.end_turn(0, false, 2_000);
    assert_eq!(driver.next_expired(2_000), None);
}

fn picked(pick: Pick) -> (usize, std::net::SocketAddr) {
    match pick {
        Pick::Upstream(index, addr) => (index, addr),
        other => panic!("no upstream picked: {other:?}"),
    }
}

#[test]
fn a_session_stays_at_24_bytes() {
    // Every connection holds one, upgraded and idle ones included: the PROXY header's
    // state is a 4-byte handle here, its bytes in the driver only while it is read.
    assert!(std::mem::size_of::<Session>() <= 24);
}

#[test]
fn a_turn_starts_so_many_key_exchanges_and_the_rest_wait_newest_first_under_overload() {
    let mut driver = tls_driver();
    let there = Some(sys::Waited { left: false, ms: 0 });
    let count_all = KEY_EXCHANGES_PER_TURN + 4;
    let mut peers: Vec<Peer> = (0..count_all)
        .map(|key| accept_tls(&mut driver, key, 0))
        .collect();
    let steps: Vec<HelloStep> = (peers.iter_mut().enumerate())
        .map(|(key, peer)| driver.before_key_exchange(key, &mut peer.parts, there, 0))
        .collect();
    assert!(steps[..KEY_EXCHANGES_PER_TURN]
        .iter()
        .all(|&s| s == HelloStep::Read));
    assert!(steps[KEY_EXCHANGES_PER_TURN..]
        .iter()
        .all(|&s| s == HelloStep::Wait));
    // Spent for this turn: the queued wait, and the reactor does not sleep meanwhile.
    assert_eq!(
        driver.next_key_exchange(0, |k| peers.get(k).map(|p| &p.parts)),
        None
    );
    assert_eq!(driver.wait(0, false), Some(std::time::Duration::ZERO));
    driver.end_turn(count_all, false, 0);
    // The queue has not been empty for 100 ms: congested, so the newest go first.
    let newest = count_all - 1;
    let now = 200;
    assert_eq!(
        driver.next_key_exchange(now, |k| peers.get(k).map(|p| &p.parts)),
        Some(newest)
    );
    let step = driver.before_key_exchange(newest, &mut peers[newest].parts, there, now);
    assert_eq!(step, HelloStep::Read, "given back, it is read");
    // One that left while queued is shed when its turn comes: reset, nothing read.
    let next = driver.next_key_exchange(now, |k| peers.get(k).map(|p| &p.parts));
    assert_eq!(next, Some(newest - 1));
    let left = Some(sys::Waited {
        left: true,
        ms: 150,
    });
    let step = driver.before_key_exchange(newest - 1, &mut peers[newest - 1].parts, left, now);
    assert_eq!(step, HelloStep::Shed(Next::Close));
    assert_eq!(count(&driver.stats.shed_before_work), 1);
    // One closed while queued is skipped.
    driver.closed(newest - 2, &mut peers[newest - 2].parts, now);
    let next = driver.next_key_exchange(now, |k| peers.get(k).map(|p| &p.parts));
    assert_eq!(next, Some(newest - 3));
    let step = driver.before_key_exchange(newest - 3, &mut peers[newest - 3].parts, there, now);
    assert_eq!(step, HelloStep::Read);
    // Nothing waits now: the reactor may sleep again.
    assert_eq!(
        driver.next_key_exchange(now, |k| peers.get(k).map(|p| &p.parts)),
        None
    );
    assert_ne!(driver.wait(now, false), Some(std::time::Duration::ZERO));
    // Shed and abandoned are distinct outcomes: the shed one is not also abandoned.
    driver.closed(newest - 1, &mut peers[newest - 1].parts, now);
    assert_eq!(
        count(&driver.stats.handshakes_abandoned),
        1,
        "only the closed one"
    );
}

#[test]
fn a_client_past_its_patience_is_shed_and_a_young_one_read() {
    // The test driver's clients bear 1 s; a handshake is taken to need 50 ms at first.
    let mut driver = tls_driver();
    let mut old = accept_tls(&mut driver, 0, 0);
    let aged = Some(sys::Waited {
        left: false,
        ms: 960,
    });
    let step = driver.before_key_exchange(0, &mut old.parts, aged, 0);
    assert_eq!(step, HelloStep::Shed(Next::Close));
    let mut young = accept_tls(&mut driver, 1, 0);
    let fresh = Some(sys::Waited {
        left: false,
        ms: 900,
    });
    let step = driver.before_key_exchange(1, &mut young.parts, fresh, 0);
    assert_eq!(step, HelloStep::Read);
}

/// A proxy-mode driver, its configuration adjusted by `adjust`.
fn proxy_driver(adjust: impl FnOnce(&mut ConnConfig)) -> Driver {
    let mut config = (*driver(Limits::default()).config).clone();
    config.after = AfterUpgrade::Proxy;
    adjust(&mut config);
    Driver::new(
        Arc::new(config),
        Arc::new(Counters::default()),
        Limits::default(),
        7,
        Arc::new(crate::policy::Shutdown::default()),
        None,
        Arc::default(),
    )
}

/// A sticky (or hashed) client waits for its own upstream while another has room: handed
/// out of the queue and sent back, it waits aside for the rest of the turn; the turn ends
/// (it looped forever), and once its upstream has room it goes there.
#[test]
fn a_client_waiting_for_its_own_busy_upstream_is_handed_out_once_a_turn() {
    let mut driver = proxy_driver(|config| {
        config.proxy.max_pending = crate::proxy::pending::PendingLimit::Fixed(1);
        config.proxy.sticky_cookie = Some("srv".into());
    });
    // A first client takes the one pending slot of some upstream.
    let mut first = accept(&mut driver, 0, "192.0.2.1", 0);
    let mut cx = driver.cx(0, &mut first.out);
    assert_eq!(first.parts.conn.on_data(REQUEST, &mut cx), Next::Proxy);
    let opened = driver.open_upstream(
        (0, &mut first.parts),
        (0, None),
        0,
        &mut first.out,
        |a, _| Ok::<_, std::io::Error>(a),
    );
    let (first_link, busy_addr) = opened.expect("a first upstream");
    // A second client's cookie names that upstream: it waits, though the other has room.
    let cookie = format!("srv={:016x}", crate::proxy::sticky::upstream_id(busy_addr));
    let request = String::from_utf8_lossy(REQUEST)
        .replace("Host: a\r\n", &format!("Host: a\r\nCookie: {cookie}\r\n"));
    let mut second = accept(&mut driver, 1, "192.0.2.2", 0);
    let mut cx = driver.cx(0, &mut second.out);
    let next = second.parts.conn.on_data(request.as_bytes(), &mut cx);
    assert_eq!(next, Next::Proxy);
    let open = |driver: &mut Driver, second: &mut Peer, now| {
        driver.open_upstream(
            (1, &mut second.parts),
            (0, None),
            now,
            &mut second.out,
            |a, _| Ok::<_, std::io::Error>(a),
        )
    };
    assert_eq!(
        open(&mut driver, &mut second, 0).err(),
        Some(Next::Continue)
    );
    assert!(second.parts.conn.is_queued());
    let until = second.parts.waits_until();
    let waits = move |key: usize| if key == 1 { until } else { None };
    assert_eq!(driver.next_waiting(10, waits), Some(1));
    assert_eq!(
        open(&mut driver, &mut second, 10).err(),
        Some(Next::Continue)
    );
    assert_eq!(second.parts.waits_until(), until, "the same wait");
    assert_eq!(driver.next_waiting(10, waits), None, "once a turn");
    assert!(second.parts.conn.is_queued(), "still waiting, for its own");
    // Its upstream answers the first client: the second goes there, with no new cookie.
    first_link.lease().unwrap().answered();
    assert_eq!(driver.next_waiting(20, waits), Some(1));
    let (_, addr) = open(&mut driver, &mut second, 20).expect("its own upstream");
    assert_eq!(addr, busy_addr);
}

/// A forwarded plain request (a long poll, answered 25 s later) is not one of an upstream's
/// pending upgrades: it takes no slot of `--upstream-max-pending`.
#[test]
fn a_forwarded_plain_request_takes_no_pending_slot() {
    let mut driver = proxy_driver(|config| {
        config.proxy.max_pending = crate::proxy::pending::PendingLimit::Fixed(1);
        config.proxy.upstreams.truncate(1);
        config.policy.http_paths = vec!["/socket.io/".into()];
    });
    let open = |driver: &mut Driver, peer: &mut Peer, key| {
        driver.open_upstream(
            (key, &mut peer.parts),
            (0, None),
            0,
            &mut peer.out,
            |a, _| Ok::<_, std::io::Error>(a),
        )
    };
    let mut poll = accept(&mut driver, 0, "192.0.2.1", 0);
    let mut cx = driver.cx(0, &mut poll.out);
    let request = b"GET /socket.io/?EIO=4&transport=polling&sid=s HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(poll.parts.conn.on_data(request, &mut cx), Next::Proxy);
    let (poll_link, _) = open(&mut driver, &mut poll, 0).expect("forwarded");
    assert!(!poll_link.lease().unwrap().is_pending());
    let mut upgrade = accept(&mut driver, 1, "192.0.2.2", 0);
    let mut cx = driver.cx(0, &mut upgrade.out);
    assert_eq!(upgrade.parts.conn.on_data(REQUEST, &mut cx), Next::Proxy);
    let (link, _) = open(&mut driver, &mut upgrade, 1).expect("room for the upgrade");
    assert!(link.lease().unwrap().is_pending());
}
