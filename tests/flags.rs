//! Every flag of `wsedge serve` and `wsedge check` has a test that checks its effect: the
//! table below names it, and `every_flag_has_a_test_of_its_effect` walks the real clap
//! definitions so that a new flag without a row fails the build. The effect tests for flags
//! that had none elsewhere live here too.

#[macro_use]
mod common;

use std::io::Write;
use std::time::Duration;

use clap::CommandFactory;
use common::{exchange, read_head, upgrade_request, Io, Server, DEADLINE};

/// (subcommand, flag, tests that check its effect: `file::function`).
const COVERAGE: &[(&str, &str, &[&str])] = &[
    (
        "serve",
        "--config",
        &[
            "config::file_values_apply_and_flags_override_them",
            "config::sighup_reloads_the_config_file_for_new_connections",
        ],
    ),
    (
        "serve",
        "--listen",
        &[
            "cli::a_port_in_use_is_a_clear_startup_error",
            "backend::auto_uses_io_uring_where_the_kernel_allows_it",
        ],
    ),
    (
        "serve",
        "--listen-tls",
        &[
            "tls::curl_upgrades_over_tls_with_the_rfc_sample_key",
            "tls::tls_keys_in_a_config_file_work_like_the_flags",
        ],
    ),
    (
        "serve",
        "--tls-cert",
        &[
            "tls::sni_chooses_the_certificate_and_unknown_names_get_the_first",
            "tls::tls_startup_errors_name_the_flag_and_the_file",
        ],
    ),
    (
        "serve",
        "--tls-key",
        &[
            "tls::tungstenite_echoes_and_closes_with_a_code_over_tls",
            "tls::tls_startup_errors_name_the_flag_and_the_file",
        ],
    ),
    (
        "serve",
        "--tls-versions",
        &["tls::tls_versions_limits_the_versions_offered"],
    ),
    (
        "serve",
        "--tls-groups",
        &["tls::tls_groups_limits_the_key_exchange"],
    ),
    (
        "serve",
        "--threads",
        &[
            "storm::a_thousand_concurrent_clients_on_two_threads_all_upgrade",
            "config::file_values_apply_and_flags_override_them",
        ],
    ),
    (
        "serve",
        "--no-pin",
        &["flags::reactors_are_pinned_unless_no_pin"],
    ),
    (
        "serve",
        "--io",
        &[
            "backend::auto_falls_back_to_epoll_and_says_why",
            "cli::io_uring_required_but_unavailable_is_a_startup_error",
        ],
    ),
    (
        "serve",
        "--after",
        &[
            "echo::close_mode_sends_101_and_close_1000_then_closes",
            "proxy::echoes_text_and_binary_from_1_byte_to_1_mib_and_answers_pings",
        ],
    ),
    (
        "serve",
        "--path",
        &["rejections::every_rule_has_its_status_through_the_server"],
    ),
    (
        "serve",
        "--subprotocols",
        &["echo::tungstenite_upgrades_negotiates_echoes_pings_and_closes_cleanly"],
    ),
    (
        "serve",
        "--require-subprotocol",
        &["rejections::every_rule_has_its_status_through_the_server"],
    ),
    (
        "serve",
        "--allowed-origin",
        &["rejections::every_rule_has_its_status_through_the_server"],
    ),
    (
        "serve",
        "--auth-token",
        &["rejections::every_rule_has_its_status_through_the_server"],
    ),
    (
        "serve",
        "--auth-token-file",
        &["flags::auth_token_file_admits_the_token_in_the_file"],
    ),
    (
        "serve",
        "--handshake-timeout-ms",
        &["timeouts::a_slowloris_client_gets_408_at_the_deadline_despite_trickling"],
    ),
    (
        "serve",
        "--idle-timeout-ms",
        &["timeouts::an_idle_upgraded_connection_is_closed_with_1001"],
    ),
    (
        "serve",
        "--send-timeout-ms",
        &[
            "timeouts::a_client_that_stops_reading_is_given_up_at_the_send_timeout",
            "proxy::a_relayed_client_that_stops_reading_is_given_up_at_the_send_timeout",
        ],
    ),
    (
        "serve",
        "--max-header-bytes",
        &["flags::max_header_bytes_sets_where_431_starts"],
    ),
    (
        "serve",
        "--max-message-bytes",
        &["echo::message_over_the_limit_is_1009"],
    ),
    (
        "serve",
        "--backlog",
        &["flags::backlog_sets_the_accept_queue"],
    ),
    (
        "serve",
        "--max-connections",
        &["admission::over_the_connection_limit_is_503_then_a_freed_slot_admits"],
    ),
    (
        "serve",
        "--max-pending-handshakes",
        &["admission::too_many_pending_handshakes_is_503"],
    ),
    (
        "serve",
        "--max-connections-per-ip",
        &["admission::one_address_over_its_connection_limit_gets_429_others_do_not"],
    ),
    (
        "serve",
        "--max-handshakes-per-ip-per-sec",
        &[
            "admission::one_address_over_its_handshake_rate_gets_429_others_do_not",
            "http2::streams_spend_the_addresss_handshakes",
        ],
    ),
    (
        "serve",
        "--retry-after-secs",
        &["admission::over_the_connection_limit_is_503_then_a_freed_slot_admits"],
    ),
    (
        "serve",
        "--accept-proxy-protocol",
        &[
            "proxy_protocol::the_per_address_limit_applies_to_the_client_haproxy_saw",
            "proxy_protocol::x_forwarded_for_carries_the_client_haproxy_saw",
            "proxy_protocol::untrusted_senders_and_garbage_headers_are_refused_and_counted",
            "proxy_protocol::a_header_that_never_comes_is_cut_at_the_handshake_timeout",
        ],
    ),
    (
        "serve",
        "--proxy-protocol-from",
        &["proxy_protocol::untrusted_senders_and_garbage_headers_are_refused_and_counted"],
    ),
    (
        "serve",
        "--upstream-balance",
        &[
            "upstream_fleet::least_connections_fills_an_upstream_added_late",
            "upstream_fleet::hash_by_header_keeps_each_key_on_one_upstream_and_moves_a_third_on_removal",
        ],
    ),
    (
        "serve",
        "--upstream-hash-key",
        &[
            "upstream_fleet::hash_by_header_keeps_each_key_on_one_upstream_and_moves_a_third_on_removal",
            "upstream_fleet::weights_client_ip_hashing_and_a_degraded_healthz",
        ],
    ),
    (
        "serve",
        "--upstream-health-interval-ms",
        &["upstream_fleet::health_checks_take_a_killed_upstream_out_and_bring_it_back", "upstream_fleet::weights_client_ip_hashing_and_a_degraded_healthz"],
    ),
    (
        "serve",
        "--upstream-health-check",
        &["upstream_fleet::health_checks_take_a_killed_upstream_out_and_bring_it_back", "upstream_fleet::weights_client_ip_hashing_and_a_degraded_healthz"],
    ),
    (
        "serve",
        "--upstream-health-timeout-ms",
        &["upstream_fleet::health_checks_take_a_killed_upstream_out_and_bring_it_back"],
    ),
    (
        "serve",
        "--upstream-health-rise",
        &["upstream_fleet::health_checks_take_a_killed_upstream_out_and_bring_it_back"],
    ),
    (
        "serve",
        "--upstream-health-fall",
        &["upstream_fleet::health_checks_take_a_killed_upstream_out_and_bring_it_back", "upstream_fleet::weights_client_ip_hashing_and_a_degraded_healthz"],
    ),
    (
        "serve",
        "--healthz-min-upstreams-up",
        &["upstream_fleet::weights_client_ip_hashing_and_a_degraded_healthz"],
    ),
    (
        "serve",
        "--upstream-resolve-secs",
        &["upstream_fleet::a_name_is_every_address_it_resolves_to_and_is_looked_up_again"],
    ),
    (
        "serve",
        "--upstream-max-connections",
        &["upstream_fleet::over_the_per_upstream_limit_the_next_is_tried_and_all_full_is_503"],
    ),
    (
        "serve",
        "--upstream-max-pending",
        &[
            "upstream_pacing::never_more_upgrades_pending_at_an_upstream_than_its_limit",
            "upstream_pacing::a_client_that_leaves_while_it_waits_is_never_forwarded",
        ],
    ),
    (
        "serve",
        "--h2",
        &[
            "http2::node_http2_client",
            "http2::curl_speaks_http2_only_where_offered",
            "http2::browser_websocket_rides_the_pages_connection",
        ],
    ),
    (
        "serve",
        "--h2c",
        &[
            "http2::an_extended_connect_is_upgraded_and_echoes",
            "http2::without_h2c_the_preface_is_an_http1_request",
            "http2::haproxy_in_front_with_ws_h2",
        ],
    ),
    (
        "serve",
        "--client-patience",
        &["tls::a_client_past_its_patience_is_reset_before_its_key_exchange"],
    ),
    (
        "serve",
        "--http-path",
        &[
            "http_paths::forwards_with_the_edges_framing_and_headers",
            "frameworks::socketio_node",
            "frameworks::sockjs",
        ],
    ),
    (
        "serve",
        "--http-timeout",
        &[
            "http_paths::a_silent_upstream_is_a_504_at_the_http_timeout",
            "http_paths::a_long_poll_held_25_seconds_is_answered",
        ],
    ),
    (
        "serve",
        "--http-max-body",
        &["http_paths::refuses_what_could_be_smuggled_or_is_too_large"],
    ),
    (
        "serve",
        "--sticky-cookie",
        &[
            "http_paths::a_sticky_cookie_keeps_requests_and_the_upgrade_on_one_upstream",
            "http_paths::a_client_whose_upstream_is_gone_is_moved_with_a_new_cookie",
            "frameworks::without_stickiness_the_default_socketio_client_is_told_session_id_unknown",
        ],
    ),
    (
        "serve",
        "--upstream-queue-ms",
        &["upstream_pacing::a_client_past_its_wait_gets_503_with_a_retry_after_in_range"],
    ),
    (
        "serve",
        "--takeover",
        &[
            "takeover::a_storm_crosses_five_hand_overs_with_nothing_refused_or_reset",
            "takeover::a_successor_that_dies_before_it_is_ready_leaves_the_old_one_serving",
            "takeover::with_nobody_at_the_path_it_binds_and_offers",
        ],
    ),
    (
        "serve",
        "--drain-secs",
        &[
            "admission::drain_spreads_1012_closes_over_the_window",
            "upstream_fleet::removing_an_upstream_drains_its_relays_over_the_window",
        ],
    ),
    (
        "serve",
        "--drain-close-code",
        &["shutdown::sigterm_finishes_handshakes_closes_with_1001_and_exits_0"],
    ),
    (
        "serve",
        "--stats-interval",
        &["metrics::stats_interval_logs_a_summary_line"],
    ),
    (
        "serve",
        "--metrics",
        &[
            "metrics::metrics_count_what_happened",
            "metrics::a_trickling_scraper_holds_up_no_one_and_is_cut_off",
        ],
    ),
    (
        "serve",
        "--upstream",
        &[
            "proxy::an_upstream_that_refuses_is_skipped",
            "upstream_fleet::weights_client_ip_hashing_and_a_degraded_healthz",
            "upstream_fleet::removing_an_upstream_drains_its_relays_over_the_window",
        ],
    ),
    (
        "serve",
        "--upstream-connect-timeout-ms",
        &["proxy::an_upstream_that_cannot_be_reached_in_time_gives_504"],
    ),
    (
        "serve",
        "--upstream-response-timeout-ms",
        &["proxy::an_upstream_that_never_answers_gives_504"],
    ),
    (
        "serve",
        "--upstream-proxy-protocol",
        &["proxy::the_upstream_gets_a_proxy_protocol_v2_header"],
    ),
    (
        "serve",
        "--upstream-source",
        &["proxy::upstream_connections_take_turns_among_the_upstream_sources"],
    ),
    (
        "serve",
        "--defer-accept-secs",
        &["flags::defer_accept_keeps_a_silent_client_in_the_kernel"],
    ),
    (
        "check",
        "--h2",
        &[
            "check::h2_against_wsedge",
            "check::h2_without_extended_connect_is_named",
        ],
    ),
    (
        "check",
        "--socketio",
        &["frameworks::check_socketio_names_the_link_that_broke"],
    ),
    (
        "check",
        "--sockjs",
        &["frameworks::check_sockjs_follows_info_to_the_open_frame"],
    ),
    (
        "check",
        "--subprotocol",
        &["check::an_unoffered_subprotocol_would_fail_in_a_browser"],
    ),
    ("check", "--origin", &["check::against_wsedge"]),
    ("check", "--header", &["flags::check_header_is_sent"]),
    ("check", "--token", &["check::against_wsedge"]),
    (
        "check",
        "--timeout",
        &["check::a_stall_is_a_response_timeout"],
    ),
    (
        "check",
        "--insecure",
        &["check::a_self_signed_certificate_is_untrusted_unless_insecure"],
    ),
    ("check", "--ping", &["check::against_wsedge"]),
    ("check", "--json", &["check::against_wsedge"]),
];

/// Whether `tests/FILE.rs` defines `fn FUNCTION(`.
fn test_exists(path: &str) -> bool {
    let Some((file, function)) = path.split_once("::") else {
        return false;
    };
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(format!("{file}.rs"));
    std::fs::read_to_string(source).is_ok_and(|text| text.contains(&format!("fn {function}(")))
}

#[test]
fn every_flag_has_a_test_of_its_effect() {
    let command = wsedge::config::Cli::command();
    let mut missing = Vec::new();
    for subcommand in command.get_subcommands() {
        for arg in subcommand.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let flag = format!("--{long}");
            let row = COVERAGE
                .iter()
                .find(|(sub, f, _)| *sub == subcommand.get_name() && *f == flag);
            match row {
                Some((_, _, tests)) if !tests.is_empty() => {
                    for test in *tests {
                        assert!(test_exists(test), "{flag}: no test {test}");
                    }
                }
                _ => missing.push(format!("{} {flag}", subcommand.get_name())),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags with no test of their effect: {missing:?}"
    );
    for (sub, flag, _) in COVERAGE {
        let known = command.find_subcommand(sub).is_some_and(|s| {
            s.get_arguments()
                .any(|a| a.get_long() == flag.strip_prefix("--"))
        });
        assert!(known, "the table names {sub} {flag}, which does not exist");
    }
}

/// With `--defer-accept-secs`, a client that connects and says nothing stays in the kernel:
/// a client behind it is accepted and upgraded first, and the silent one only once it talks.
fn defer_accept_keeps_a_silent_client_in_the_kernel(io: Io) {
    let args = [
        "--threads",
        "1",
        "--metrics",
        "127.0.0.1:0",
        "--defer-accept-secs",
        "5",
    ];
    let server = Server::start(io, &args);
    let mut silent = server.connect();
    let (head, _talker) = exchange(&server, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    // Without the flag the silent client, first in the queue, is accepted first (the
    // control below shows it); with it, only the talker has been.
    server.wait_for_metric("wsedge_upgrades_total", |n| n >= 1.0);
    let addr = server.metrics_addr();
    assert_eq!(
        common::metric_sum(&addr, "wsedge_accepted_connections_total"),
        1.0
    );
    silent.write_all(&upgrade_request("/", &[])).unwrap();
    assert_eq!(read_head(&mut silent).status, 101);
    assert_eq!(
        common::metric_sum(&addr, "wsedge_accepted_connections_total"),
        2.0
    );

    let control = Server::start(io, &args[..4]);
    let _silent = control.connect();
    let (head, _talker) = exchange(&control, &upgrade_request("/", &[]));
    assert_eq!(head.status, 101);
    assert_eq!(
        common::metric_sum(&control.metrics_addr(), "wsedge_accepted_connections_total"),
        2.0,
        "without the flag the silent client is accepted first"
    );
}

/// The listen backlog, as the kernel reports it for the listening socket (ss's Send-Q).
fn listen_backlog(port: u16) -> Option<u32> {
    let output = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines().next()?.split_whitespace().nth(2)?.parse().ok()
}

fn backlog_sets_the_accept_queue(io: Io) {
    let server = Server::start(io, &["--threads", "1", "--backlog", "7"]);
    let Some(backlog) = listen_backlog(server.addr.port()) else {
        assert!(
            std::env::var("CI").is_err(),
            "ss (iproute2) is needed to read the backlog; .ci/run installs it"
        );
        eprintln!("skipping: no ss here");
        return;
    };
    assert_eq!(backlog, 7);
}

fn max_header_bytes_sets_where_431_starts(io: Io) {
    let padding = "x".repeat(600);
    let request = upgrade_request("/", &[&format!("X-Padding: {padding}")]);
    let server = Server::start(io, &["--max-header-bytes", "512"]);
    assert_eq!(exchange(&server, &request).0.status, 431);
    let server = Server::start(io, &["--max-header-bytes", "1024"]);
    assert_eq!(exchange(&server, &request).0.status, 101);
}

fn auth_token_file_admits_the_token_in_the_file(io: Io) {
    let path = std::env::temp_dir().join(format!("wsedge-token-{}-{io:?}", std::process::id()));
    std::fs::write(&path, "s3cret-from-file\nignored second line\n").unwrap();
    let server = Server::start(io, &["--auth-token-file", path.to_str().unwrap()]);
    let good = upgrade_request("/", &["Authorization: Bearer s3cret-from-file"]);
    let bad = upgrade_request("/", &["Authorization: Bearer ignored"]);
    assert_eq!(exchange(&server, &good).0.status, 101);
    assert_eq!(exchange(&server, &bad).0.status, 401);
    let _ = std::fs::remove_file(path);
}

/// The CPUs each reactor thread may run on, once all `threads` have started.
fn reactor_cpus(pid: u32, threads: usize) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let mut cpus = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.starts_with("wsedge-reactor") {
                let status =
                    std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                if let Some(list) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                {
                    cpus.push(list.trim().to_owned());
                }
            }
        }
        if cpus.len() == threads {
            cpus.sort();
            return cpus;
        }
        assert!(start.elapsed() < DEADLINE, "reactors did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn reactors_are_pinned_unless_no_pin() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipping: one CPU");
        return;
    }
    let all = format!("0-{}", cpus - 1);
    let start = |pin: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wsedge"));
        command.args([
            "serve",
            "--io",
            "epoll",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
        ]);
        if !pin {
            command.arg("--no-pin");
        }
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut pinned = start(true);
    let pinned_cpus = reactor_cpus(pinned.id(), 2);
    let _ = pinned.kill();
    let _ = pinned.wait();
    assert_eq!(pinned_cpus, ["0", "1"]);
    let mut free = start(false);
    let free_cpus = reactor_cpus(free.id(), 2);
    let _ = free.kill();
    let _ = free.wait();
    assert_eq!(free_cpus, [all.clone(), all]);
}

#[test]
fn check_header_is_sent() {
    let server = Server::start(Io::Epoll, &["--auth-token", "via-header"]);
    let url = format!("ws://{}/", server.addr);
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wsedge"))
            .args(["check", &url])
            .args(extra)
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(
        run(&["--header", "Authorization: Bearer via-header"]),
        Some(0)
    );
    assert_eq!(run(&[]), Some(4), "without the header the server refuses");
}

on_both_backends!(
    defer_accept_keeps_a_silent_client_in_the_kernel,
    backlog_sets_the_accept_queue,
    max_header_bytes_sets_where_431_starts,
    auth_token_file_admits_the_token_in_the_file,
);
