//! Independent clients from other ecosystems: Python `websockets`, Node `ws` and a real
//! browser (headless Chromium driven by `playwright-core`), each over `ws://` and `wss://`.
//!
//! `.ci/run` installs them (into `target/thirdparty/`, Chromium with apt) and sets
//! `WSEDGE_REQUIRE_THIRD_PARTY=1`, which turns a missing client into a failure; on a
//! developer machine without them these tests say so and pass.

#[macro_use]
mod common;

use common::Io;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;

fn thirdparty_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/thirdparty")
}

fn required() -> bool {
    std::env::var("WSEDGE_REQUIRE_THIRD_PARTY").is_ok_and(|v| v == "1")
}

/// Runs the client against a fresh server: over `ws://`, then over `wss://` with a
/// certificate for 127.0.0.1 that the client is told to trust.
fn run_client(io: Io, command: impl Fn() -> Command, name: &str, expected: &[&str]) {
    let dir = common::scratch(&format!("third-party-{name}-{io:?}").replace(' ', "-"));
    let cert = common::cert(&dir, "server", &["127.0.0.1"]);
    let args = ["--path", "/chat", "--subprotocols", "v2,v1"];
    let server = Server::start_tls(io, &cert, &args);
    let tls_addr = server.tls_addr();
    run_one(
        &server,
        command().arg(format!("ws://{}", server.addr)),
        name,
        expected,
    );
    let mut over_tls = command();
    over_tls.arg(format!("wss://{tls_addr}")).arg(&cert.cert);
    run_one(&server, &mut over_tls, name, expected);
}

fn run_one(server: &Server, command: &mut Command, name: &str, expected: &[&str]) {
    let output = command.output().expect("run client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} client failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        server.log()
    );
    for line in expected {
        assert!(
            stdout.contains(line),
            "{name} client did not report {line:?}:\n{stdout}"
        );
    }
}

fn skip(name: &str, why: &str) {
    assert!(!required(), "{name} client is required but {why}");
    eprintln!("skipping the {name} client: {why} (run .ci/run to install it)");
}

fn python_websockets_client(io: Io) {
    let python = std::env::var_os("WSEDGE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| thirdparty_dir().join("venv/bin/python"));
    if !python.exists() {
        return skip(
            "Python websockets",
            &format!("{} does not exist", python.display()),
        );
    }
    let command = || {
        let mut command = Command::new(&python);
        command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python_client.py"));
        command
    };
    run_client(
        io,
        command,
        "Python websockets",
        &["echo ok", "close ok: 1000", "rejection ok: 404"],
    );
}

fn node_ws_client(io: Io) {
    let modules = thirdparty_dir().join("node/node_modules");
    if !modules.join("ws").exists() {
        return skip("Node ws", &format!("{} has no ws", modules.display()));
    }
    let command = || {
        let mut command = Command::new("node");
        command
            .env("NODE_PATH", &modules)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/node_client.js"));
        command
    };
    run_client(
        io,
        command,
        "Node ws",
        &["echo ok", "close ok: 1000", "rejection ok: 404"],
    );
}

/// Headless Chromium (Debian's `chromium`) driven by `playwright-core`: a real browser's
/// WebSocket over `ws://` and `wss://` (the test certificate trusted by its key's hash).
fn browser_client(io: Io) {
    let modules = thirdparty_dir().join("node/node_modules");
    let chromium = std::env::var_os("WSEDGE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !modules.join("playwright-core").exists() {
        let why = format!("{} has no playwright-core", modules.display());
        return skip("browser (Chromium)", &why);
    }
    if !chromium.exists() {
        let why = format!("{} does not exist", chromium.display());
        return skip("browser (Chromium)", &why);
    }
    let command = || {
        let mut command = Command::new("node");
        command
            .env("NODE_PATH", &modules)
            .env("WSEDGE_CHROMIUM", &chromium)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/browser_client.js"));
        command
    };
    run_client(
        io,
        command,
        "browser (Chromium)",
        &["echo ok", "close ok: 4000", "rejection ok: 1006"],
    );
}

on_both_backends!(python_websockets_client, node_ws_client, browser_client,);
