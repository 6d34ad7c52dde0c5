//! Real WebSocket frameworks behind the edge, with their default clients: Socket.IO
//! (Node's `socket.io` and Python's `python-socketio` as servers, `socket.io-client`
//! polling first, then upgrading) and SockJS (`sockjs` with `sockjs-client`, `/info`
//! first). Two app servers behind `--http-path` and `--sticky-cookie`, both backends,
//! plain and `wss`.
//!
//! `.ci/run` installs them (into `target/thirdparty/`) and sets
//! `WSEDGE_REQUIRE_THIRD_PARTY=1`, which turns a missing one into a failure; on a developer
//! machine without them these tests say so and pass.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{Io, Server};

fn thirdparty() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/thirdparty")
}

fn script(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(path)
}

/// The Node modules, or `None` (after saying why) when they are missing and not required.
fn node_modules(module: &str) -> Option<PathBuf> {
    let modules = thirdparty().join("node/node_modules");
    if modules.join(module).exists() {
        return Some(modules);
    }
    let required = std::env::var("WSEDGE_REQUIRE_THIRD_PARTY").is_ok_and(|v| v == "1");
    assert!(!required, "{module} is required: {modules:?} has none");
    eprintln!("skipping: no {module} in {modules:?} (run .ci/run to install it)");
    None
}

/// An app server that prints "listening PORT", killed on drop.
struct App {
    child: Child,
    addr: String,
}

impl App {
    fn start(mut command: Command) -> App {
        command.stdin(Stdio::null());
        let (child, port) = common::start_listening(&mut command, "the app server");
        App {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    fn node(modules: &Path, path: &str, name: &str) -> App {
        let mut command = Command::new("node");
        command
            .env("NODE_PATH", modules)
            .arg(script(path))
            .args(["0", name]);
        App::start(command)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The edge in front of `apps`, forwarding `prefix`, with a TLS listener on a certificate
/// for 127.0.0.1 (its file returned for the clients to trust); `sticky` or not.
fn edge(io: Io, apps: &[&App], prefix: &str, sticky: bool) -> (Server, PathBuf) {
    let dir = common::scratch(&format!("frameworks-{io:?}"));
    let cert = common::cert(&dir, "server", &["127.0.0.1"]);
    let mut args = vec!["--after", "proxy", "--http-path", prefix];
    for app in apps {
        args.extend(["--upstream", app.addr.as_str()]);
    }
    if sticky {
        args.extend(["--sticky-cookie", "wsedge"]);
    }
    let server = Server::start_tls(io, &cert, &args);
    (server, cert.cert.clone())
}

/// Runs a Node client script; its stdout, and whether it succeeded.
fn node_client(modules: &Path, path: &str, args: &[String]) -> (bool, String) {
    let output = Command::new("node")
        .env("NODE_PATH", modules)
        .arg(script(path))
        .args(args)
        .output()
        .expect("run the client");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.success(), format!("{stdout}{stderr}"))
}

const CLIENTS: usize = 30;

/// `socket.io-client` with its defaults, `CLIENTS` of them, over `http://` and `https://`:
/// every one upgrades to WebSocket and has its message answered, by both app servers
/// between them, and none is told "Session ID unknown".
fn socketio_clients_all_upgrade(io: Io, apps: &[&App], modules: &Path) {
    let (server, ca) = edge(io, apps, "/socket.io/", true);
    let plain = format!("http://{}", server.addr);
    let tls = format!("https://{}", server.tls_addr());
    for (url, ca) in [(plain, None), (tls, Some(&ca))] {
        let mut args = vec![url.clone(), CLIENTS.to_string()];
        args.extend(ca.map(|ca| ca.display().to_string()));
        let (ok, report) = node_client(modules, "clients/socketio_client.js", &args);
        let expected = format!("clients {CLIENTS} upgraded {CLIENTS} messages {CLIENTS} servers 2");
        assert!(
            ok && report.contains(&expected),
            "{url}: {report}\nedge log:\n{}",
            server.log()
        );
        assert!(!report.contains("Session ID unknown"), "{report}");
    }
}

fn socketio_node(io: Io) {
    let Some(modules) = node_modules("socket.io") else {
        return;
    };
    let a = App::node(&modules, "upstreams/socketio_server.js", "a");
    let b = App::node(&modules, "upstreams/socketio_server.js", "b");
    socketio_clients_all_upgrade(io, &[&a, &b], &modules);
}

fn socketio_python(io: Io) {
    let Some(modules) = node_modules("socket.io-client") else {
        return;
    };
    let python = thirdparty().join("venv/bin/python");
    let has_socketio = Command::new(&python)
        .args(["-c", "import socketio, aiohttp"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_socketio {
        let required = std::env::var("WSEDGE_REQUIRE_THIRD_PARTY").is_ok_and(|v| v == "1");
        assert!(!required, "python-socketio is required in {python:?}");
        eprintln!("skipping: no python-socketio in {python:?} (run .ci/run)");
        return;
    }
    let app = |name: &str| {
        let mut command = Command::new(&python);
        command
            .arg(script("upstreams/socketio_server.py"))
            .args(["0", name]);
        App::start(command)
    };
    let (a, b) = (app("a"), app("b"));
    socketio_clients_all_upgrade(io, &[&a, &b], &modules);
}

fn sockjs(io: Io) {
    let Some(modules) = node_modules("sockjs") else {
        return;
    };
    let a = App::node(&modules, "upstreams/sockjs_server.js", "a");
    let b = App::node(&modules, "upstreams/sockjs_server.js", "b");
    let (server, ca) = edge(io, &[&a, &b], "/sockjs/", true);
    let urls = [
        format!("http://{}/sockjs", server.addr),
        format!("https://{}/sockjs", server.tls_addr()),
    ];
    for url in urls {
        let output = Command::new("node")
            .env("NODE_PATH", &modules)
            // The test certificate, trusted by every TLS client of the process.
            .env("NODE_EXTRA_CA_CERTS", &ca)
            .arg(script("clients/sockjs_client.js"))
            .args([url.as_str(), &CLIENTS.to_string()])
            .output()
            .expect("run the client");
        let report = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        let expected = format!("clients {CLIENTS} echoed {CLIENTS} transports websocket");
        assert!(
            output.status.success() && report.contains(&expected),
            "{url}: {report}\nedge log:\n{}",
            server.log()
        );
    }
}

on_both_backends!(socketio_node, socketio_python, sockjs);

/// Without the sticky cookie the default client's polling requests and upgrade are spread
/// over both servers, and Socket.IO refuses the requests that reach the server that does
/// not know their session: what the sticky cookie is for (and proof that the tests above
/// can fail).
#[test]
fn without_stickiness_the_default_socketio_client_is_told_session_id_unknown() {
    let Some(modules) = node_modules("socket.io") else {
        return;
    };
    let a = App::node(&modules, "upstreams/socketio_server.js", "a");
    let b = App::node(&modules, "upstreams/socketio_server.js", "b");
    let (server, _) = edge(Io::Epoll, &[&a, &b], "/socket.io/", false);
    let args = [format!("http://{}", server.addr), "10".to_owned()];
    let (ok, report) = node_client(&modules, "clients/socketio_client.js", &args);
    assert!(!ok, "{report}");
    assert!(report.contains("Session ID unknown"), "{report}");
}

/// `wsedge check --socketio`: the whole Engine.IO handshake through a sticky edge; without
/// stickiness (one reactor, so that round-robin sends the upgrade to the other server) the
/// broken link is named with its fix; a path the edge does not forward is named too.
#[test]
fn check_socketio_names_the_link_that_broke() {
    let Some(modules) = node_modules("socket.io") else {
        return;
    };
    let a = App::node(&modules, "upstreams/socketio_server.js", "a");
    let b = App::node(&modules, "upstreams/socketio_server.js", "b");
    let check = |url: String| {
        let output = Command::new(env!("CARGO_BIN_EXE_wsedge"))
            .args(["check", "--socketio", &url])
            .output()
            .expect("run wsedge check");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code(), text)
    };
    let (sticky, _) = edge(Io::Uring, &[&a, &b], "/socket.io/", true);
    let (code, text) = check(format!("ws://{}/socket.io/", sticky.addr));
    assert_eq!(code, Some(0), "{text}");
    for step in [
        "Engine.IO open: sid ",
        "upgrades [\"websocket\"]",
        "cookies set by the polling answer: wsedge",
        "3probe received",
    ] {
        assert!(text.contains(step), "{step}: {text}");
    }
    let (code, text) = check(format!("ws://{}/elsewhere/", sticky.addr));
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains("got 426") && text.contains("--http-path"),
        "{text}"
    );
    let mut args = vec![
        "--after",
        "proxy",
        "--http-path",
        "/socket.io/",
        "--threads",
        "1",
    ];
    args.extend(["--upstream", a.addr.as_str(), "--upstream", b.addr.as_str()]);
    let spread = Server::start(Io::Epoll, &args);
    let (code, text) = check(format!("ws://{}/socket.io/", spread.addr));
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains("Session ID unknown") && text.contains("--sticky-cookie"),
        "{text}"
    );
}

#[test]
fn check_sockjs_follows_info_to_the_open_frame() {
    let Some(modules) = node_modules("sockjs") else {
        return;
    };
    let a = App::node(&modules, "upstreams/sockjs_server.js", "a");
    let (server, ca) = edge(Io::Epoll, &[&a], "/sockjs/", false);
    let output = Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["check", "--sockjs", "--json"])
        .arg(format!(
            "wss://127.0.0.1:{}/sockjs",
            server.tls_addr().port()
        ))
        .env("SSL_CERT_FILE", &ca)
        .output()
        .expect("run wsedge check");
    let text = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(&text).expect("one JSON object");
    assert_eq!(report["ok"], true, "{text}");
    assert!(text.contains("SockJS info: websocket true"), "{text}");
    assert!(text.contains("open frame o received"), "{text}");
}
