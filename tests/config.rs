//! `--config FILE`: the flags' keys in TOML; the command line wins; errors name key and line.

#[macro_use]
mod common;

use std::io::Write;
use std::process::Command;

use common::{client_frame, exchange, read_exact, upgrade_request, Io, Server};

/// Reads one short unmasked server frame: (opcode, payload).
fn read_frame(stream: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    let head = read_exact(stream, 2);
    let len = usize::from(head[1] & 0x7F);
    (head[0] & 0x0F, read_exact(stream, len))
}

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("wsedge-test-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn serve_error(config: &std::path::Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["serve", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let path = write("unknown", "threads = 1\nmax-conections = 5\n");
    let (code, stderr) = serve_error(&path);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(":2: `max-conections`: unknown key"),
        "{stderr}"
    );
}

#[test]
fn a_bad_value_is_named_with_its_key_and_line() {
    let path = write("bad", "threads = 1\n\nhandshake-timeout-ms = 0\n");
    let (code, stderr) = serve_error(&path);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(":3: `handshake-timeout-ms`: invalid value '0'"),
        "{stderr}"
    );
}

#[test]
fn toml_syntax_errors_name_the_line() {
    let path = write("syntax", "threads = 1\nafter = \n");
    let (code, stderr) = serve_error(&path);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(":2:"), "{stderr}");
}

#[test]
fn the_example_config_is_valid() {
    // Parsed, merged and checked as a real start does it: every key, the checks across
    // flags, and the server configuration built from them.
    use clap::Parser;
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wsedge.example.toml");
    let typed = vec!["wsedge".to_owned(), "serve".to_owned()];
    let from_file = wsedge::config::config_file_args(&example, &typed).expect("the example parses");
    let cli = wsedge::config::Cli::try_parse_from(typed.iter().chain(&from_file))
        .expect("the example's flags parse together");
    let wsedge::config::Command::Serve(args) = cli.command else {
        panic!("not serve");
    };
    args.validate()
        .expect("the example passes the checks across flags");
    let config = args.server_config();
    assert_eq!(config.listen.len(), 2);
    assert_eq!(config.limits.max_connections, 500_000);
    assert_eq!(config.conn.policy.paths, ["/chat", "/feed"]);
}

fn file_values_apply_and_flags_override_them(io: Io) {
    let path = write(
        &format!("apply-{io:?}"),
        "threads = 2\nafter = \"close\"\nmax-connections = 77\nsubprotocols = \"a,b\"\n",
    );
    let config = path.to_string_lossy().into_owned();
    let server = Server::start(io, &["--config", &config, "--threads", "1"]);
    let log = server.log();
    assert!(log.contains("threads=1"), "the command line wins: {log}");
    assert!(
        log.contains("after=close")
            && log.contains("max_connections=77")
            && log.contains("subprotocols=a,b"),
        "{log}"
    );
}

/// SIGHUP reads `--config` again: a lowered limit and a changed token apply to new
/// connections, an established connection carries on; a broken file is refused with its
/// line and the running configuration stays; what cannot change live is reported and kept.
fn sighup_reloads_the_config_file_for_new_connections(io: Io) {
    let path = write(
        &format!("reload-{io:?}"),
        "after = \"echo\"\nmax-connections = 10\nauth-token = \"old-token\"\n",
    );
    let config = path.to_string_lossy().into_owned();
    let server = Server::start(io, &["--config", &config, "--threads", "1"]);
    let with = |token: &str| upgrade_request("/", &[&format!("Authorization: Bearer {token}")]);
    let (head, mut established) = exchange(&server, &with("old-token"));
    assert_eq!(head.status, 101);
    assert_eq!(exchange(&server, &with("new-token")).0.status, 401);

    std::fs::write(
        &path,
        "after = \"echo\"\nmax-connections = 1\nauth-token = \"new-token\"\nbacklog = 128\n",
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP: configuration reloaded from");
    assert!(
        server
            .log()
            .contains("backlog cannot change without a restart"),
        "{}",
        server.log()
    );
    // The reactors take the new generation at their next turn: a first connection wakes
    // one and may still be judged by the old rules; every later one by the new.
    let deadline = std::time::Instant::now() + common::DEADLINE;
    loop {
        let (head, _) = exchange(&server, &with("old-token"));
        if head.status == 503 || head.status == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never applied"
        );
    }
    // Over the lowered limit (the established connection holds the one place): 503.
    assert_eq!(exchange(&server, &with("new-token")).0.status, 503);
    established
        .write_all(&client_frame(true, 0x1, b"still here"))
        .unwrap();
    let (opcode, payload) = read_frame(&mut established);
    assert_eq!((opcode, &payload[..]), (0x1, &b"still here"[..]));
    drop(established);
    // Until the server has seen a closed connection go, its place is taken (503).
    let answered = |token: &str, want: u16| {
        let deadline = std::time::Instant::now() + common::DEADLINE;
        loop {
            match exchange(&server, &with(token)).0.status {
                status if status == want => return,
                503 => {
                    assert!(std::time::Instant::now() < deadline, "still 503");
                    // A refused connection holds the one place too until the server has
                    // seen it go: give it the time to, or the retries keep it taken.
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => panic!("{token}: {other}, expected {want}"),
            }
        }
    };
    answered("new-token", 101);

    std::fs::write(&path, "max-connections = \"many\"\n").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("SIGHUP: kept the running configuration");
    assert!(
        server.log().contains(&config),
        "names the file: {}",
        server.log()
    );
    answered("new-token", 101);
    answered("old-token", 401);
}

on_both_backends!(
    file_values_apply_and_flags_override_them,
    sighup_reloads_the_config_file_for_new_connections,
);
