//! Shared harness: the real `wsedge` binary on an ephemeral port, and raw-socket helpers.
#![allow(dead_code)] // each test file uses its own subset

pub mod h2;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `ok` until it holds, failing with `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The I/O backend a test runs against; every server test runs once per backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    Epoll,
    Uring,
}

impl Io {
    pub fn flag(self) -> &'static str {
        match self {
            Io::Epoll => "epoll",
            Io::Uring => "uring",
        }
    }
}

/// Generates, for each listed `fn name(io: Io)`, one `#[test]` per backend:
/// `epoll::name` and `uring::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() { super::$name($crate::common::Io::Epoll) } )*
        }
        mod uring {
            $( #[test] fn $name() { super::$name($crate::common::Io::Uring) } )*
        }
    };
}

/// A running `wsedge serve`, killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `wsedge serve --io IO` with `args`, on 127.0.0.1:0 and 2 unpinned threads unless
    /// `args` says otherwise, and waits for its "listening on" line.
    pub fn start(io: Io, args: &[&str]) -> Server {
        Server::start_with(io, args, |_| {})
    }

    /// Like [`Server::start`], with a hook to adjust the command (limits, environment).
    pub fn start_with(io: Io, args: &[&str], adjust: impl FnOnce(&mut Command)) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wsedge"));
        command.args(["serve", "--io", io.flag()]);
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--threads") {
            command.args(["--threads", "2"]);
        }
        command.arg("--no-pin").args(args);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut command);
        let mut child = command.spawn().expect("spawn wsedge");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split([' ', ',']).next().unwrap_or_default().to_owned();
                    let _ = addr_tx.send(addr);
                }
            }
        });
        let addr = match addr_rx.recv_timeout(DEADLINE) {
            Ok(addr) => addr.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                panic!("wsedge did not start: {}", log.lock().unwrap());
            }
        };
        let server = Server { child, addr, log };
        let backend = match io {
            Io::Epoll => "backend=epoll",
            Io::Uring => "backend=io_uring",
        };
        assert!(
            server.log().contains(backend),
            "asked for {io:?}, got: {}",
            server.log()
        );
        server
    }

    /// Like [`Server::start`], with one TLS listener on `cert` besides.
    pub fn start_tls(io: Io, cert: &Cert, args: &[&str]) -> Server {
        let (cert, key) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
        let mut all = vec![
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ];
        all.extend_from_slice(args);
        Server::start(io, &all)
    }

    /// The TLS listener's address, from the startup line (`wss://ADDR`).
    pub fn tls_addr(&self) -> SocketAddr {
        let log = self.log();
        let rest = log.split("wss://").nth(1).expect("a TLS listener");
        rest.split([',', ' ']).next().unwrap().parse().unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which it cannot outlive while we hold it.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits for the process to exit, failing the test past the deadline.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "wsedge did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < DEADLINE,
                "log never said {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of `--metrics`, from the startup line.
    pub fn metrics_addr(&self) -> String {
        let log = self.log();
        let addr = log
            .split("metrics=")
            .nth(1)
            .expect("started with --metrics");
        addr.split([',', ' ']).next().unwrap_or_default().to_owned()
    }

    /// Waits until the sum of the series `name` (over its labels) in `/metrics` satisfies
    /// `ok`; the server must run with `--metrics`. Gauges are refreshed once per reactor
    /// turn, so this is how a test knows the server has seen what it did.
    pub fn wait_for_metric(&self, name: &str, ok: impl Fn(f64) -> bool) {
        let addr = self.metrics_addr();
        let start = Instant::now();
        loop {
            let sum = metric_sum(&addr, name);
            if ok(sum) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{name} stayed at {sum}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process's CPU time so far (utime + stime), from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A valid upgrade request for `path` with extra header lines.
pub fn upgrade_request(path: &str, extra: &[&str]) -> Vec<u8> {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for line in extra {
        request += line;
        request += "\r\n";
    }
    (request + "\r\n").into_bytes()
}

/// A parsed HTTP response head, and the bytes that followed it.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub rest: Vec<u8>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads until a complete response head has arrived.
pub fn read_head(stream: &mut TcpStream) -> Head {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = response.parse(&buf).expect("valid HTTP response")
        {
            return Head {
                status: response.code.unwrap(),
                headers: response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
                rest: buf[len..].to_vec(),
            };
        }
        let n = stream.read(&mut chunk).expect("read response");
        assert!(
            n > 0,
            "connection closed before a full response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads everything until the server closes; panics on timeout.
pub fn read_to_close(stream: &mut TcpStream, mut already: Vec<u8>) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return already,
            Ok(n) => already.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return already,
            Err(e) => panic!("server did not close: {e}; got {already:?}"),
        }
    }
}

/// Sends `request` whole and returns the response head; the body is in `rest`.
pub fn exchange(server: &Server, request: &[u8]) -> (Head, TcpStream) {
    let mut stream = server.connect();
    stream.write_all(request).expect("send request");
    let head = read_head(&mut stream);
    (head, stream)
}

/// A masked client frame.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=65535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads exactly `n` bytes.
pub fn read_exact(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).expect("read_exact");
    buf
}

/// A hook for [`Server::start_with`]: the server may open at most `limit` descriptors.
pub fn fd_limit(limit: u64) -> impl FnOnce(&mut Command) {
    move |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// The total `name` on the server's stop line (`stopped: accepted=.. upgraded=..`) in `log`.
pub fn stop_total(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("stopped:"))
        .expect("a stop line");
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(prefix.as_str()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} on the stop line: {line}"))
}

/// Starts the close handshake and reads until it completes cleanly.
pub fn close_cleanly(socket: &mut tungstenite::WebSocket<TcpStream>) {
    socket.close(None).unwrap();
    loop {
        match socket.read() {
            Ok(tungstenite::Message::Close(_)) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            other => panic!("expected a clean close, got {other:?}"),
        }
    }
}

/// Sorts clients into those the server has answered and those still waiting (nothing to
/// read within 100 ms, since the server is known to be stuck), keeping every connection
/// open. Panics on a client closed without an answer: no accepted client may be dropped.
pub fn split_answered(streams: Vec<TcpStream>) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let (mut answered, mut waiting) = (Vec::new(), Vec::new());
    for stream in streams {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut probe = [0u8; 1];
        match stream.peek(&mut probe) {
            Ok(n) => {
                assert!(n > 0, "a client was closed without an answer");
                answered.push(stream);
            }
            Err(_) => waiting.push(stream),
        }
    }
    (answered, waiting)
}

/// The sum over labels of the series `name` in a scrape of `GET /metrics` at `addr`.
pub fn metric_sum(addr: &str, name: &str) -> f64 {
    metrics_text(addr)
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The `/metrics` page of the server whose `--metrics` is at `addr`.
pub fn metrics_text(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("metrics endpoint");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// A self-signed ECDSA P-256 certificate for `names`, written as PEM under `dir`.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

/// (Names that are IP addresses become IP subjectAltNames.)
pub fn cert(dir: &Path, tag: &str, names: &[&str]) -> Cert {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    let cert = dir.join(format!("{tag}.crt"));
    let key = dir.join(format!("{tag}.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    Cert {
        cert,
        key,
        der: made.cert.der().clone(),
    }
}

/// A fresh directory of its own (tests run in parallel, both backends at once).
pub fn scratch(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wsedge-tls-it-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A raw upstream serving `connections` connections with `serve`, on its own thread.
pub fn raw_upstream(
    connections: usize,
    serve: impl Fn(TcpStream, Vec<u8>) + Send + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for _ in 0..connections {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            let head = read_request_head(&mut stream);
            serve(stream, head);
        }
    });
    addr
}

/// Connects `socket` (prepared by the caller: a source address, buffer sizes) to `server`,
/// upgrades and checks the 101.
pub fn upgraded_through(server: &Server, socket: socket2::Socket) -> TcpStream {
    socket.connect(&server.addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(&upgrade_request("/", &[])).unwrap();
    assert_eq!(read_head(&mut stream).status, 101);
    stream
}

/// Reads up to and including the blank line that ends a request head.
pub fn read_request_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    head
}

/// A correct 101 for the request `head` (which must carry a key after any PROXY header).
pub fn switching_protocols(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("forwarded request has a key");
    let accept = wsedge::handshake::accept_key(key.trim().as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        String::from_utf8_lossy(&accept)
    )
    .into_bytes()
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A tungstenite echo server: a third-party upstream that needs no Python.
pub fn tungstenite_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let Ok(mut socket) = tungstenite::accept(stream) else {
                    return;
                };
                while let Ok(message) = socket.read() {
                    if message.is_text() || message.is_binary() {
                        let _ = socket.send(message);
                    }
                }
            });
        }
    });
    addr
}

/// Spawns `command` (an app server that prints "listening PORT" once it accepts
/// connections; its stdin as the caller set it) and waits for that line: the child and its
/// port.
pub fn start_listening(command: &mut Command, what: &str) -> (Child, u16) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(port) = line.strip_prefix("listening ") {
                let _ = tx.send(port.trim().parse::<u16>().expect("port"));
            }
        }
    });
    let Ok(port) = rx.recv_timeout(DEADLINE) else {
        let _ = child.kill();
        panic!("{what} did not start");
    };
    (child, port)
}

/// The Python `websockets` app server, stopped on drop.
pub struct PythonUpstream {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl PythonUpstream {
    /// Starts it, or returns `None` (after saying why) when Python `websockets` is not
    /// installed and not required.
    pub fn start() -> Option<PythonUpstream> {
        PythonUpstream::start_on(0)
    }

    /// Starts it on `port` (0: any), or returns `None` as [`PythonUpstream::start`] does.
    pub fn start_on(port: u16) -> Option<PythonUpstream> {
        PythonUpstream::start_with(port, false)
    }

    /// Starts one that negotiates permessage-deflate.
    pub fn start_deflating() -> Option<PythonUpstream> {
        PythonUpstream::start_with(0, true)
    }

    fn start_with(port: u16, deflate: bool) -> Option<PythonUpstream> {
        let python = std::env::var_os("WSEDGE_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/thirdparty/venv/bin/python")
            });
        if !python.exists() {
            let required = std::env::var("WSEDGE_REQUIRE_THIRD_PARTY").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "Python websockets is required: {python:?} is missing"
            );
            eprintln!("skipping: {python:?} is missing (run .ci/run to install it)");
            return None;
        }
        let mut command = Command::new(python);
        command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstreams/python_upstream.py"))
            .arg(port.to_string())
            .env("WSEDGE_DEFLATE", if deflate { "1" } else { "0" })
            // Ends when its stdin closes: never outlives its test.
            .stdin(Stdio::piped());
        let (child, port) = start_listening(&mut command, "the Python upstream");
        Some(PythonUpstream {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }
}

impl PythonUpstream {
    /// Stops it now (as a crash would: killed).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PythonUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs Node on `script` (in `tests/clients`) with `args`, or returns `None` (after saying
/// why) when Node is not installed and not required.
pub fn node(script: &str, args: &[String]) -> Option<std::process::Output> {
    let found = Command::new("node").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("WSEDGE_REQUIRE_THIRD_PARTY").is_err(),
            "node is required"
        );
        eprintln!("skipping: no node");
        return None;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    Some(Command::new("node").arg(path).args(args).output().unwrap())
}
