//! Proxy mode over several app servers: balancing, per-upstream limits, health checks,
//! draining on removal, weights, per-upstream metrics and `/healthz`.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::DEADLINE;
use common::{exchange, read_request_head, switching_protocols, upgrade_request, Io, Server};
use common::{metrics_text, wait_until, PythonUpstream};

/// An app server that upgrades every connection, holds it until the client goes, and counts
/// the connections it holds now.
struct CountingUpstream {
    addr: SocketAddr,
    held: Arc<AtomicUsize>,
}

impl CountingUpstream {
    fn start() -> CountingUpstream {
        CountingUpstream::start_at(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    fn start_at(addr: SocketAddr) -> CountingUpstream {
        CountingUpstream::serve(TcpListener::bind(addr).unwrap())
    }

    /// Upstreams on one port, one per address `127.0.0.H` of `hosts` (a name's addresses
    /// share its port). A port free on one address may be taken on another by a test running
    /// beside: another is tried then.
    fn on_one_port(hosts: &[u8]) -> (u16, Vec<CountingUpstream>) {
        loop {
            let port = TcpListener::bind(SocketAddr::from(([127, 0, 0, hosts[0]], 0)))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let bound: Result<Vec<TcpListener>, _> = (hosts.iter())
                .map(|&host| TcpListener::bind(SocketAddr::from(([127, 0, 0, host], port))))
                .collect();
            if let Ok(listeners) = bound {
                return (
                    port,
                    listeners.into_iter().map(CountingUpstream::serve).collect(),
                );
            }
        }
    }

    fn serve(listener: TcpListener) -> CountingUpstream {
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&held);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    let mut stream = stream;
                    stream.set_read_timeout(Some(DEADLINE * 4)).unwrap();
                    let head = read_request_head(&mut stream);
                    if stream.write_all(&switching_protocols(&head)).is_err() {
                        return;
                    }
                    counter.fetch_add(1, Relaxed);
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest);
                    counter.fetch_sub(1, Relaxed);
                });
            }
        });
        CountingUpstream { addr, held }
    }

    fn held(&self) -> usize {
        self.held.load(Relaxed)
    }
}

fn upgraded(server: &Server) -> TcpStream {
    let (head, stream) = exchange(server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    stream
}

/// Two upstreams of two connections each: four clients are relayed, two to each, and the
/// fifth gets 503 with a Retry-After; once one goes, a new client is relayed again.
fn over_the_per_upstream_limit_the_next_is_tried_and_all_full_is_503(io: Io) {
    let (a, b) = (CountingUpstream::start(), CountingUpstream::start());
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let server = Server::start(
        io,
        &[
            "--after",
            "proxy",
            "--upstream",
            &a_addr,
            "--upstream",
            &b_addr,
            "--upstream-max-connections",
            "2",
            "--threads",
            "1",
        ],
    );
    let mut held: Vec<TcpStream> = (0..4).map(|_| upgraded(&server)).collect();
    wait_until("two on each", || a.held() == 2 && b.held() == 2);
    let (head, _) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 503);
    assert!(head.header("Retry-After").is_some(), "a Retry-After");
    held.pop();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match exchange(&server, &upgrade_request("/", &[])).0.status {
            101 => break,
            503 => {
                assert!(Instant::now() < deadline, "the freed place never came back");
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("{other}"),
        }
    }
}

/// A proxy-mode config file's text: `settings` (TOML lines), then `upstreams` as the list.
fn proxy_config(settings: &str, upstreams: impl IntoIterator<Item = SocketAddr>) -> String {
    let quoted: Vec<String> = upstreams.into_iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "after = \"proxy\"\n{settings}upstream = [{}]\n",
        quoted.join(", ")
    )
}

/// Where test `name` on backend `io` keeps its config file.
fn config_path(name: &str, io: Io) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("wsedge-{name}-{}-{io:?}.toml", std::process::id()))
}

/// Least-connections after an upstream joins (a reload): the next clients all go to the
/// new, empty one, where round-robin would have put only one in three there.
fn least_connections_fills_an_upstream_added_late(io: Io) {
    let upstreams: Vec<CountingUpstream> = (0..3).map(|_| CountingUpstream::start()).collect();
    let list = |n: usize| {
        let settings = "upstream-balance = \"least-connections\"\n";
        proxy_config(settings, upstreams[..n].iter().map(|u| u.addr))
    };
    let path = config_path("fleet", io);
    std::fs::write(&path, list(2)).unwrap();
    let config = path.to_string_lossy().into_owned();
    let server = Server::start(io, &["--config", &config, "--threads", "1"]);
    let mut held: Vec<TcpStream> = (0..4).map(|_| upgraded(&server)).collect();
    wait_until("two on each of the first two", || {
        upstreams[0].held() == 2 && upstreams[1].held() == 2
    });
    std::fs::write(&path, list(3)).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP: configuration reloaded");
    // The reactor takes the new list at its next turn: the first connection after the
    // reload wakes it.
    held.extend((0..2).map(|_| upgraded(&server)));
    wait_until("both new clients on the new upstream", || {
        upstreams[2].held() == 2
    });
    assert_eq!((upstreams[0].held(), upstreams[1].held()), (2, 2));
    let _ = std::fs::remove_file(path);
}

/// An app server that upgrades every connection and reports its `X-User-Id`.
fn keyed_upstream(id: usize, seen: std::sync::mpsc::Sender<(String, usize)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                stream.set_read_timeout(Some(DEADLINE)).unwrap();
                let head = read_request_head(&mut stream);
                let text = String::from_utf8_lossy(&head).into_owned();
                let key = text
                    .lines()
                    .find_map(|l| l.strip_prefix("X-User-Id: "))
                    .unwrap_or_default()
                    .to_owned();
                if stream.write_all(&switching_protocols(&head)).is_ok() {
                    let _ = seen.send((key, id));
                }
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
            });
        }
    });
    addr
}

/// Hash by header: 1,000 connections over 100 keys through two reactors, every key always on
/// one upstream; after one of three upstreams is removed (a reload), only its keys move,
/// about a third.
fn hash_by_header_keeps_each_key_on_one_upstream_and_moves_a_third_on_removal(io: Io) {
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|id| keyed_upstream(id, seen_tx.clone()))
        .collect();
    let list = |addrs: &[SocketAddr]| {
        let settings = "upstream-balance = \"hash\"\nupstream-hash-key = \"header:X-User-Id\"\n";
        proxy_config(settings, addrs.iter().copied())
    };
    let path = config_path("hash", io);
    std::fs::write(&path, list(&addrs)).unwrap();
    let config = path.to_string_lossy().into_owned();
    let server = Server::start(io, &["--config", &config, "--threads", "2"]);
    let placement = |connections: usize| {
        let mut placed: std::collections::HashMap<String, usize> = Default::default();
        for n in 0..connections {
            let key = format!("user-{}", n % 100);
            let header = format!("X-User-Id: {key}");
            let (head, _) = exchange(&server, &upgrade_request("/", &[&header]));
            assert_eq!(head.status, 101);
            let (seen, upstream) = seen_rx.recv_timeout(DEADLINE).expect("an upstream saw it");
            assert_eq!(seen, key);
            if let Some(before) = placed.insert(key.clone(), upstream) {
                assert_eq!(before, upstream, "{key} moved between upstreams");
            }
        }
        placed
    };
    let before = placement(1000);
    let used: std::collections::HashSet<usize> = before.values().copied().collect();
    assert_eq!(used.len(), 3, "100 keys use all three upstreams");
    std::fs::write(&path, list(&addrs[..2])).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP: configuration reloaded");
    // Both reactors take the new list at their next turn; a turn per connection is enough
    // once each has seen one.
    let after = placement(300);
    let moved = before
        .iter()
        .filter(|(key, up)| after[*key] != **up)
        .count();
    let on_removed = before.values().filter(|&&up| up == 2).count();
    assert_eq!(moved, on_removed, "only the removed upstream's keys moved");
    assert!((15..=55).contains(&moved), "{moved} of 100 keys moved");
    let _ = std::fs::remove_file(path);
}

/// The value of `name{upstream="ADDR"...}` in a scrape (0 when absent), with `kind` when
/// the series has one.
fn upstream_metric(server: &Server, name: &str, upstream: SocketAddr, kind: Option<&str>) -> f64 {
    let label = format!("upstream=\"{upstream}\"");
    metrics_text(&server.metrics_addr())
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(&label))
        .filter(|l| kind.is_none_or(|k| l.contains(&format!("kind=\"{k}\""))))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The port of the Python upstream a new client lands on (its `/port` page).
fn landed_on(server: &Server) -> u16 {
    let url = server.url("/port");
    let (mut socket, _) = tungstenite::client::client(url, server.connect()).expect("upgrade");
    let message = socket.read().expect("the upstream's port");
    let _ = socket.close(None);
    message.to_text().unwrap().parse().unwrap()
}

/// Three Python `websockets` app servers with active checks every 200 ms (rise 2, fall 2):
/// one killed is taken out after two failed checks, gets no client while down (its
/// refusals stop counting up: nobody is sent there), and once restarted on its port comes
/// back after two passed checks and gets clients again.
fn health_checks_take_a_killed_upstream_out_and_bring_it_back(io: Io) {
    let Some(a) = PythonUpstream::start() else {
        return;
    };
    let (Some(b), Some(mut c)) = (PythonUpstream::start(), PythonUpstream::start()) else {
        return;
    };
    let ports = [a.addr.port(), b.addr.port(), c.addr.port()];
    let (a_arg, b_arg, c_arg) = (a.addr.to_string(), b.addr.to_string(), c.addr.to_string());
    let server = Server::start(
        io,
        &[
            "--after",
            "proxy",
            "--metrics",
            "127.0.0.1:0",
            "--upstream",
            &a_arg,
            "--upstream",
            &b_arg,
            "--upstream",
            &c_arg,
            "--upstream-health-interval-ms",
            "200",
            "--upstream-health-timeout-ms",
            "150",
            "--upstream-health-check",
            "websocket:/",
            "--upstream-health-rise",
            "2",
            "--upstream-health-fall",
            "2",
        ],
    );
    let mut seen = std::collections::HashSet::new();
    wait_until("clients on all three", || {
        seen.insert(landed_on(&server));
        seen.len() == 3
    });
    let up = |addr| upstream_metric(&server, "wsedge_upstream_up", addr, None);
    assert_eq!((up(a.addr), up(b.addr), up(c.addr)), (1.0, 1.0, 1.0));
    assert!(
        upstream_metric(
            &server,
            "wsedge_upstream_health_checks_passed_total",
            a.addr,
            None
        ) > 0.0
    );

    let c_addr = c.addr;
    c.kill();
    wait_until("the killed upstream out of rotation", || up(c_addr) == 0.0);
    let failed_checks = upstream_metric(
        &server,
        "wsedge_upstream_failures_total",
        c_addr,
        Some("check_failed"),
    );
    assert!(
        (1.0..=4.0).contains(&failed_checks),
        "out after the fall count of failed checks (2, or fewer with clients' refusals), not {failed_checks}"
    );
    let refused =
        |m: &Server| upstream_metric(m, "wsedge_upstream_failures_total", c_addr, Some("refused"));
    let refused_while_down = refused(&server);
    for _ in 0..20 {
        assert_ne!(landed_on(&server), c_addr.port());
    }
    assert_eq!(
        refused(&server),
        refused_while_down,
        "a client was sent to the down upstream"
    );
    let text = metrics_text(&server.metrics_addr());
    assert!(
        text.contains(&format!("wsedge_upstream_up{{upstream=\"{c_addr}\"}} 0")),
        "{text}"
    );

    let passed_before = upstream_metric(
        &server,
        "wsedge_upstream_health_checks_passed_total",
        c_addr,
        None,
    );
    let Some(_c) = PythonUpstream::start_on(c_addr.port()) else {
        return;
    };
    wait_until("the restarted upstream back in rotation", || {
        up(c_addr) == 1.0
    });
    let passed = upstream_metric(
        &server,
        "wsedge_upstream_health_checks_passed_total",
        c_addr,
        None,
    );
    assert!(
        passed - passed_before >= 2.0,
        "back after the rise count of passes"
    );
    wait_until("a client on the restarted upstream", || {
        landed_on(&server) == ports[2]
    });
    server.wait_for_log("upstream out of rotation: health checks fail");
    server.wait_for_log("upstream back in rotation");
}

/// Thirty relayed connections over three upstreams; a reload removes one with a 3 s drain
/// window: its ten relays are closed one by one over the window (not at once), the other
/// twenty stay open, and the clients that come meanwhile go to the two that stay.
fn removing_an_upstream_drains_its_relays_over_the_window(io: Io) {
    let upstreams: Vec<CountingUpstream> = (0..3).map(|_| CountingUpstream::start()).collect();
    let list = |n: usize| proxy_config("drain-secs = 3\n", upstreams[..n].iter().map(|u| u.addr));
    let path = config_path("drain", io);
    std::fs::write(&path, list(3)).unwrap();
    let config = path.to_string_lossy().into_owned();
    let server = Server::start(io, &["--config", &config, "--threads", "1"]);
    let held: Vec<TcpStream> = (0..30).map(|_| upgraded(&server)).collect();
    wait_until("ten on each", || upstreams.iter().all(|u| u.held() == 10));

    // Every client waits for its connection to end, and says when.
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    for (n, mut stream) in held.into_iter().enumerate() {
        let closed = closed_tx.clone();
        std::thread::spawn(move || {
            stream
                .set_read_timeout(Some(Duration::from_secs(8)))
                .unwrap();
            let mut byte = [0u8; 1];
            if let Ok(0) | Err(_) = stream.read(&mut byte) {
                let _ = closed.send((n, Instant::now()));
            }
        });
    }
    std::fs::write(&path, list(2)).unwrap();
    let removed_at = Instant::now();
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP: configuration reloaded");
    let mut newcomers = Vec::new();
    let mut closes = Vec::new();
    while closes.len() < 10 {
        let (_, at) = closed_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the removed upstream's relays are closed within the window");
        closes.push(at.duration_since(removed_at));
        newcomers.push(upgraded(&server));
    }
    assert_eq!(upstreams[2].held(), 0);
    let (first, last) = (closes[0], closes[9]);
    assert!(
        last <= Duration::from_secs(3) + DEADLINE / 3,
        "last close {last:?}"
    );
    assert!(
        last - first >= Duration::from_millis(900),
        "spread over the window, not a cut: {closes:?}"
    );
    // The other twenty are still relayed, and every newcomer went to one of them.
    assert!(
        closed_rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a kept relay was closed"
    );
    wait_until("every newcomer relayed to a kept upstream", || {
        upstreams[0].held() + upstreams[1].held() == 20 + newcomers.len()
    });
    let _ = std::fs::remove_file(path);
}

/// Weights and the client's address as the key: `weight=3` gets three clients in four, the
/// same source address always lands on the same upstream, and `/healthz` says "degraded"
/// once too few upstreams are up (`--healthz-min-upstreams-up`).
fn weights_client_ip_hashing_and_a_degraded_healthz(io: Io) {
    let (a, b) = (CountingUpstream::start(), CountingUpstream::start());
    let heavy = format!("{} weight=3", a.addr);
    let light = b.addr.to_string();
    let server = Server::start(
        io,
        &[
            "--after",
            "proxy",
            "--threads",
            "1",
            "--upstream",
            &heavy,
            "--upstream",
            &light,
        ],
    );
    let _held: Vec<TcpStream> = (0..8).map(|_| upgraded(&server)).collect();
    wait_until("eight held", || a.held() + b.held() == 8);
    assert_eq!((a.held(), b.held()), (6, 2));
    drop(server);

    // By client address: 20 sources, each connecting three times.
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let keyed: Vec<String> = (0..3)
        .map(|id| keyed_upstream(id, seen_tx.clone()).to_string())
        .collect();
    let dead = dead_address();
    let server = Server::start(
        io,
        &[
            "--after",
            "proxy",
            "--metrics",
            "127.0.0.1:0",
            "--upstream",
            &keyed[0],
            "--upstream",
            &keyed[1],
            "--upstream",
            &keyed[2],
            "--upstream",
            &dead,
            "--upstream-balance",
            "hash",
            "--upstream-hash-key",
            "client-ip",
            "--upstream-health-interval-ms",
            "100",
            "--upstream-health-check",
            "tcp",
            "--upstream-health-timeout-ms",
            "100",
            "--upstream-health-fall",
            "1",
            "--healthz-min-upstreams-up",
            "100",
        ],
    );
    let mut placed: std::collections::HashMap<u8, usize> = Default::default();
    for round in 0..3 {
        for source in 2..22u8 {
            let from = SocketAddr::from(([127, 0, 0, source], 0));
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.bind(&from.into()).unwrap();
            let _stream = common::upgraded_through(&server, socket);
            let (_, upstream) = seen_rx.recv_timeout(DEADLINE).expect("an upstream saw it");
            if let Some(before) = placed.insert(source, upstream) {
                assert_eq!(before, upstream, "127.0.0.{source} moved in round {round}");
            }
        }
    }
    let used: std::collections::HashSet<usize> = placed.values().copied().collect();
    assert!(used.len() >= 2, "20 addresses spread: {placed:?}");
    // The dead upstream fails its first check: 3 of 4 up is under 100%.
    let healthz = || metrics_text_at(&server, "/healthz");
    wait_until("healthz degraded", || {
        healthz().contains("degraded: 3 of 4 upstreams up")
    });
    assert!(healthz().starts_with("HTTP/1.1 503"));
}

/// An upstream given by name (`fleet.test`, from a hosts file the test bind-mounts over
/// `/etc/hosts` in wsedge's own mount namespace): every address it resolves to is an
/// upstream, and when the name moves from .1 and .2 to .2 and .3, the next lookup
/// (`--upstream-resolve-secs 1`) drains .1's relays and sends new clients to .3.
fn a_name_is_every_address_it_resolves_to_and_is_looked_up_again(io: Io) {
    let (port, upstreams) = CountingUpstream::on_one_port(&[1, 2, 3]);
    let hosts = common::scratch(&format!("hosts-{io:?}")).join("hosts");
    std::fs::write(&hosts, "127.0.0.1 fleet.test\n127.0.0.2 fleet.test\n").unwrap();
    let upstream = format!("fleet.test:{port}");
    let server = Server::start_with(
        io,
        &[
            "--after",
            "proxy",
            "--threads",
            "1",
            "--upstream",
            &upstream,
            "--upstream-resolve-secs",
            "1",
            "--drain-secs",
            "1",
        ],
        own_hosts(&hosts),
    );
    let mut held: Vec<TcpStream> = (0..4).map(|_| upgraded(&server)).collect();
    wait_until("two on each address of the name", || {
        upstreams[0].held() == 2 && upstreams[1].held() == 2
    });
    // In place: the bind mount follows the file, not its name.
    std::fs::write(&hosts, "127.0.0.2 fleet.test\n127.0.0.3 fleet.test\n").unwrap();
    server.wait_for_log("upstream addresses changed");
    wait_until("the address that went away is drained", || {
        upstreams[0].held() == 0
    });
    held.extend((0..4).map(|_| upgraded(&server)));
    // A client has its 101 a moment before the upstream counts its relay: wait for all six.
    wait_until("all six on the live addresses, some on the new one", || {
        upstreams[2].held() >= 1 && upstreams[1].held() + upstreams[2].held() == 6
    });
    assert_eq!(upstreams[0].held(), 0);
    let _ = std::fs::remove_file(hosts);
}

/// Runs wsedge in its own mount namespace with `hosts` bind-mounted over `/etc/hosts`, so
/// that a test decides what its names resolve to (and when they stop resolving).
fn own_hosts(hosts: &std::path::Path) -> impl FnOnce(&mut std::process::Command) {
    let source = std::ffi::CString::new(hosts.to_string_lossy().as_bytes()).unwrap();
    move |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls (unshare, mount) between fork and exec, on
        // memory prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                let target = c"/etc/hosts";
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// A name that stops resolving, and one that never did, at a SIGHUP reload: the reload is
/// applied, the first keeps its last address, the second is left out with a warning, and
/// the literal address stays (a failed lookup once emptied the whole pool: every client got
/// 502 while `/healthz` said 200).
fn a_name_that_fails_at_a_reload_keeps_its_addresses_and_the_others_stay(io: Io) {
    let literal = CountingUpstream::start();
    let (port, mut named) = CountingUpstream::on_one_port(&[2]);
    let named = named.remove(0);
    let hosts = common::scratch(&format!("reload-hosts-{io:?}")).join("hosts");
    std::fs::write(&hosts, "127.0.0.2 fleet.test\n").unwrap();
    let path = config_path("reload-lookup", io);
    let file = |extra: &str| {
        format!(
            "after = \"proxy\"\nupstream-resolve-secs = 0\nmetrics = \"127.0.0.1:0\"\n\
             upstream = [\"{}\", \"fleet.test:{port}\"{extra}]\n",
            literal.addr
        )
    };
    std::fs::write(&path, file("")).unwrap();
    let config = path.to_string_lossy().into_owned();
    let args = ["--config", config.as_str(), "--threads", "1"];
    let server = Server::start_with(io, &args, own_hosts(&hosts));
    // Neither name resolves any more; the file names one more that never did.
    std::fs::write(&hosts, "").unwrap();
    std::fs::write(&path, file(", \"never.test:80\"")).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP: configuration reloaded");
    let log = server.log();
    assert!(log.contains("never.test:80: cannot resolve it"), "{log}");
    let _held: Vec<TcpStream> = (0..4).map(|_| upgraded(&server)).collect();
    wait_until("both kept upstreams relay clients", || {
        literal.held() == 2 && named.held() == 2
    });
    let healthz = metrics_text_at(&server, "/healthz");
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(hosts);
}

/// An address nothing listens on.
fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The answer to `GET path` on the metrics port, head and body.
fn metrics_text_at(server: &Server, path: &str) -> String {
    let mut stream = TcpStream::connect(server.metrics_addr()).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: m\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

/// With no upstream up, `/healthz` is degraded whatever `--healthz-min-upstreams-up` says:
/// the edge could only answer 502 or 503.
fn healthz_is_degraded_when_no_upstream_is_up(io: Io) {
    let dead = dead_address();
    let server = Server::start(
        io,
        &[
            "--after",
            "proxy",
            "--upstream",
            &dead,
            "--metrics",
            "127.0.0.1:0",
            "--upstream-health-interval-ms",
            "100",
            "--upstream-health-check",
            "tcp",
            "--upstream-health-fall",
            "1",
        ],
    );
    wait_until("healthz degraded", || {
        metrics_text_at(&server, "/healthz").contains("degraded: 0 of 1 upstreams up")
    });
    assert!(metrics_text_at(&server, "/healthz").starts_with("HTTP/1.1 503"));
}

on_both_backends!(
    a_name_that_fails_at_a_reload_keeps_its_addresses_and_the_others_stay,
    healthz_is_degraded_when_no_upstream_is_up,
    hash_by_header_keeps_each_key_on_one_upstream_and_moves_a_third_on_removal,
    over_the_per_upstream_limit_the_next_is_tried_and_all_full_is_503,
    least_connections_fills_an_upstream_added_late,
    health_checks_take_a_killed_upstream_out_and_bring_it_back,
    removing_an_upstream_drains_its_relays_over_the_window,
    weights_client_ip_hashing_and_a_degraded_healthz,
    a_name_is_every_address_it_resolves_to_and_is_looked_up_again,
);
