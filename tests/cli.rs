//! Flags: wrong values are one-line errors naming the flag, with exit code 2.

use std::process::Command;

fn serve(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .arg("serve")
        .args(args)
        .output()
        .expect("run wsedge");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

macro_rules! rejects_flag {
    ($($name:ident: [$($arg:expr),*] names $flag:expr;)*) => {$(
        #[test]
        fn $name() {
            let (code, stderr) = serve(&[$($arg),*]);
            assert_eq!(code, 2, "{stderr}");
            let first: String = stderr.lines().take(2).collect::<Vec<_>>().join(" ");
            assert!(first.starts_with("error:") && first.contains($flag), "{stderr}");
            // A usage shown is `serve`'s own, not the top level's `wsedge <COMMAND>`.
            assert!(!stderr.contains("<COMMAND>"), "{stderr}");
        }
    )*};
}

rejects_flag! {
    zero_threads:                ["--threads", "0"] names "--threads";
    non_numeric_threads:         ["--threads", "many"] names "--threads";
    bad_listen_address:          ["--listen", "localhost"] names "--listen";
    unknown_backend:             ["--io", "kqueue"] names "--io";
    unknown_after_mode:          ["--after", "relay"] names "--after";
    proxy_without_upstream:      ["--after", "proxy"] names "--upstream";
    upstream_without_proxy:      ["--upstream", "127.0.0.1:9000"] names "--upstream";
    upstream_not_host_port:      ["--after", "proxy", "--upstream", "app-server"] names "--upstream";
    upstream_port_zero:          ["--after", "proxy", "--upstream", "127.0.0.1:0"] names "--upstream";
    unknown_proxy_protocol:      ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-proxy-protocol", "v1"] names "--upstream-proxy-protocol";
    zero_upstream_timeout:       ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-connect-timeout-ms", "0"] names "--upstream-connect-timeout-ms";
    relative_path:               ["--path", "chat"] names "--path";
    subprotocol_with_space:      ["--subprotocols", "a b"] names "--subprotocols";
    require_without_protocols:   ["--require-subprotocol"] names "--subprotocols";
    origin_with_path:            ["--allowed-origin", "https://a.example/x"] names "--allowed-origin";
    empty_token:                 ["--auth-token", ""] names "--auth-token";
    missing_token_file:          ["--auth-token-file", "/nonexistent/token"] names "--auth-token-file";
    both_token_sources:          ["--auth-token", "a", "--auth-token-file", "/etc/hostname"] names "--auth-token";
    zero_handshake_timeout:      ["--handshake-timeout-ms", "0"] names "--handshake-timeout-ms";
    tiny_header_limit:           ["--max-header-bytes", "10"] names "--max-header-bytes";
    tiny_message_limit:          ["--max-message-bytes", "100"] names "--max-message-bytes";
    zero_backlog:                ["--backlog", "0"] names "--backlog";
    negative_idle_timeout:       ["--idle-timeout-ms", "-1"] names "--idle-timeout-ms";
    proxy_protocol_untrusting:   ["--accept-proxy-protocol"] names "--proxy-protocol-from";
    trust_without_accepting:     ["--proxy-protocol-from", "10.0.0.0/8"] names "--accept-proxy-protocol";
    not_a_cidr:                  ["--accept-proxy-protocol", "--proxy-protocol-from", "10.0.0.0/33"] names "--proxy-protocol-from";
    cap_without_proxy:           ["--upstream-max-connections", "5"] names "--upstream-max-connections";
    pending_without_proxy:       ["--upstream-max-pending", "5"] names "--upstream-max-pending";
    pending_not_a_limit:         ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-max-pending", "0"] names "--upstream-max-pending";
    queue_without_proxy:         ["--upstream-queue-ms", "100"] names "--upstream-queue-ms";
    http_path_without_proxy:     ["--http-path", "/socket.io/"] names "--http-path";
    http_path_relative:          ["--after", "proxy", "--upstream", "127.0.0.1:9", "--http-path", "socket.io"] names "--http-path";
    http_timeout_without_paths:  ["--after", "proxy", "--upstream", "127.0.0.1:9", "--http-timeout", "30s"] names "--http-timeout";
    http_timeout_not_a_duration: ["--after", "proxy", "--upstream", "127.0.0.1:9", "--http-path", "/a", "--http-timeout", "later"] names "--http-timeout";
    http_body_without_paths:     ["--after", "proxy", "--upstream", "127.0.0.1:9", "--http-max-body", "10"] names "--http-max-body";
    http_body_too_large:         ["--after", "proxy", "--upstream", "127.0.0.1:9", "--http-path", "/a", "--http-max-body", "999999999"] names "--http-max-body";
    sticky_without_proxy:        ["--sticky-cookie", "srv"] names "--sticky-cookie";
    sticky_name_not_a_token:     ["--after", "proxy", "--upstream", "127.0.0.1:9", "--sticky-cookie", "a=b"] names "--sticky-cookie";
    h2_without_tls:              ["--h2"] names "--h2";
    h2c_without_plain_listener:  ["--listen-tls", "127.0.0.1:0", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--h2c"] names "--h2c";
    patience_without_tls:        ["--client-patience", "5s"] names "--client-patience";
    patience_not_a_duration:     ["--client-patience", "soon"] names "--client-patience";
    patience_too_long:           ["--client-patience", "2h"] names "--client-patience";
    source_without_proxy:        ["--upstream-source", "127.0.0.2"] names "--upstream-source";
    source_not_an_address:       ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-source", "localhost"] names "--upstream-source";
    source_not_of_this_host:     ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-source", "192.0.2.1"] names "--upstream-source";
    balance_without_proxy:       ["--upstream-balance", "least-connections"] names "--upstream-balance";
    hash_without_key:            ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-balance", "hash"] names "--upstream-hash-key";
    key_without_hash:            ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-hash-key", "header:X-User"] names "--upstream-hash-key";
    bad_hash_key:                ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-balance", "hash", "--upstream-hash-key", "ip"] names "--upstream-hash-key";
    unknown_balance:             ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-balance", "random"] names "--upstream-balance";
    zero_weight:                 ["--after", "proxy", "--upstream", "127.0.0.1:9 weight=0"] names "--upstream";
    unknown_upstream_word:       ["--after", "proxy", "--upstream", "127.0.0.1:9 backup"] names "--upstream";
    unresolvable_upstream:       ["--after", "proxy", "--upstream", "no-such-host.invalid:80"] names "--upstream";
    bad_health_check:            ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-health-check", "grpc"] names "--upstream-health-check";
    health_check_path:           ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-health-check", "http:healthz"] names "--upstream-health-check";
    checks_without_proxy:        ["--upstream-health-interval-ms", "500"] names "--upstream-health-interval-ms";
    check_longer_than_interval:  ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-health-interval-ms", "500", "--upstream-health-timeout-ms", "600"] names "--upstream-health-timeout-ms";
    zero_rise:                   ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-health-rise", "0"] names "--upstream-health-rise";
    zero_fall:                   ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-health-fall", "0"] names "--upstream-health-fall";
    zero_check_timeout:          ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-health-timeout-ms", "0"] names "--upstream-health-timeout-ms";
    share_over_100:              ["--after", "proxy", "--upstream", "127.0.0.1:9", "--healthz-min-upstreams-up", "101"] names "--healthz-min-upstreams-up";
    healthz_share_without_proxy: ["--healthz-min-upstreams-up", "50"] names "--healthz-min-upstreams-up";
    resolve_too_rarely:          ["--after", "proxy", "--upstream", "127.0.0.1:9", "--upstream-resolve-secs", "100000"] names "--upstream-resolve-secs";
}

/// A check interval under a second needs no timeout flag: the timeout defaults to the
/// smaller of 1 s and the interval. Only a timeout given and longer than the interval is an
/// error (see `check_longer_than_interval`).
#[test]
fn a_short_health_check_interval_alone_is_accepted() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["serve", "--after", "proxy", "--upstream", "127.0.0.1:9"])
        .args([
            "--upstream-health-interval-ms",
            "200",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--threads", "1", "--no-pin"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run wsedge");
    let stderr = child.stderr.take().expect("piped");
    let started = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .find(|line| line.contains("listening on") || line.contains("error"));
    let _ = child.kill();
    let _ = child.wait();
    let line = started.unwrap_or_default();
    assert!(line.contains("listening on"), "{line}");
}

#[test]
fn a_port_in_use_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = serve(&["--listen", &addr, "--threads", "1"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn io_uring_required_but_unavailable_is_a_startup_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .env("WSEDGE_IO_URING_PROBE", "fail")
        .args(["serve", "--io", "uring", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run wsedge");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: --io uring: io_uring is unavailable here"),
        "{stderr}"
    );
}
