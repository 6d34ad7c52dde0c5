//! `--config FILE`: the flags' keys in TOML; the command line wins; errors name key and line.

#[macro_use]
mod common;

use std::process::Command;

use common::{Io, Server};

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

on_both_backends!(file_values_apply_and_flags_override_them);
