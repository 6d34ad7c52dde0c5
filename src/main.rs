//! The `wsedge` binary: flags, startup, signals.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use wsedge::activation::{notify, ServiceState};
use wsedge::check::CheckOptions;
use wsedge::config::{CheckArgs, Cli, Command, IoBackend, ServeArgs};
use wsedge::reactor::uring::probe::probe;
use wsedge::reactor::{sys, Backend, Server, ShutdownState};

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Command::Serve(ServeArgs {
        config: Some(path), ..
    }) = &cli.command
    {
        let typed: Vec<String> = std::env::args().collect();
        let merged = with_config_file(path, &typed).unwrap_or_else(|e| {
            usage_error(
                "serve",
                clap::error::ErrorKind::InvalidValue,
                format!("--config {e}"),
            )
        });
        cli = Cli::parse_from(merged);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Check(args) => return check(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line `typed` with the flags of the config file at `path` put first, so that
/// the command line's override them.
fn with_config_file(path: &std::path::Path, typed: &[String]) -> Result<Vec<String>, String> {
    let from_file = wsedge::config::config_file_args(path, typed)?;
    let serve_at = typed.iter().position(|a| a == "serve").unwrap_or(1);
    let mut merged = typed[..=serve_at].to_vec();
    merged.extend(from_file);
    merged.extend(typed[serve_at + 1..].iter().cloned());
    Ok(merged)
}

/// Exits with a usage error for `wsedge SUBCOMMAND`, shown with that subcommand's own usage
/// line (not the top level's `wsedge <COMMAND>`).
fn usage_error(
    subcommand: &str,
    kind: clap::error::ErrorKind,
    message: impl std::fmt::Display,
) -> ! {
    let top = Cli::command();
    let mut command = match top.find_subcommand(subcommand) {
        Some(sub) => sub.clone().bin_name(format!("wsedge {subcommand}")),
        None => top,
    };
    command.error(kind, message).exit()
}

fn serve_usage_error(kind: clap::error::ErrorKind, message: impl std::fmt::Display) -> ! {
    usage_error("serve", kind, message)
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    // systemd socket activation: the passed sockets are the listeners unless flags name others.
    let activated = wsedge::activation::activated_sockets(&args.listen, &args.listen_tls)
        .unwrap_or_else(|error| serve_usage_error(clap::error::ErrorKind::InvalidValue, error));
    let mut args = args.clone();
    if args.listen.is_empty() && args.listen_tls.is_empty() {
        for (listening, addr) in &activated {
            let list = match listening.tls {
                true => &mut args.listen_tls,
                false => &mut args.listen,
            };
            if !list.contains(addr) {
                list.push(*addr);
            }
        }
    }
    let args = &args;
    if let Err(message) = args.validate() {
        serve_usage_error(clap::error::ErrorKind::ArgumentConflict, message)
    }
    if let Err(message) = args.check_host() {
        serve_usage_error(clap::error::ErrorKind::InvalidValue, message)
    }
    let (backend, why) = match (args.io, probe()) {
        (IoBackend::Epoll, _) => (Backend::Epoll, "--io epoll".to_string()),
        (IoBackend::Uring, Ok(())) => (Backend::Uring, "--io uring".to_string()),
        (IoBackend::Uring, Err(unavailable)) => serve_usage_error(
            clap::error::ErrorKind::InvalidValue,
            format!("--io uring: io_uring is unavailable here: {unavailable}; use --io epoll or --io auto"),
        ),
        (IoBackend::Auto, Ok(())) => (Backend::Uring, "auto: io_uring available".to_string()),
        (IoBackend::Auto, Err(unavailable)) => {
            (Backend::Epoll, format!("auto: io_uring unavailable ({unavailable}), using epoll"))
        }
    };
    let fd_limit = sys::raise_fd_limit().context("raising the descriptor limit")?;
    let (mut config, unresolved) = args.server_config_after(&[]);
    if let Some(error) = unresolved.first() {
        serve_usage_error(clap::error::ErrorKind::InvalidValue, error);
    }
    config.backend = backend;
    if let Some(settings) = args.tls_settings() {
        // A file error names its flag: a usage error, as for any other bad flag.
        match wsedge::tls::server_config(&settings) {
            Ok(tls) => config.tls = Some(wsedge::tls::shared(tls)),
            Err(error) => serve_usage_error(clap::error::ErrorKind::InvalidValue, error),
        }
    }
    if let Some(max) = sys::somaxconn().filter(|&max| max < config.listen_options.backlog) {
        tracing::warn!(
            "--backlog {} exceeds net.core.somaxconn={max}: the kernel caps accept queues at {max}; \
             raise it with `sysctl -w net.core.somaxconn={}` for storms",
            config.listen_options.backlog,
            config.listen_options.backlog
        );
    }
    // Handlers go in before the server announces itself: a supervisor may signal as soon
    // as it sees the "listening on" line.
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGQUIT, SIGHUP]).context("installing signal handlers")?;
    let received = match &args.takeover {
        Some(path) => {
            let asked: Vec<(std::net::SocketAddr, bool)> = (config.listen.iter())
                .map(|&addr| (addr, false))
                .chain(config.listen_tls.iter().map(|&addr| (addr, true)))
                .collect();
            wsedge::takeover::receive(path, &asked)?
        }
        None => None,
    };
    let (mut inherited, received) = match received {
        Some(mut received) => (std::mem::take(&mut received.listeners), Some(received)),
        None => (Vec::new(), None),
    };
    let taken_over = inherited.len();
    if !activated.is_empty() {
        tracing::info!(
            "socket activation: {} listening sockets from systemd",
            activated.len()
        );
    }
    inherited.extend(activated.into_iter().map(|(listening, _)| listening));
    let mut server =
        Server::start_with(config.clone(), inherited).context("starting the server")?;
    let metrics = match args.metrics {
        Some(addr) => Some(
            wsedge::metrics::serve(addr, server.counters(), server.shutdown(), server.live())
                .with_context(|| format!("--metrics {addr}: cannot serve metrics"))?,
        ),
        None => None,
    };
    let plain = config.listen.len();
    let addrs: Vec<String> = server
        .local_addrs()
        .iter()
        .enumerate()
        .map(|(i, addr)| match i < plain {
            true => addr.to_string(),
            false => format!("wss://{addr}"),
        })
        .collect();
    let policy = &config.conn.policy;
    let http2 = match (args.h2, args.h2c) {
        (true, true) => "h2,h2c",
        (true, false) => "h2",
        (false, true) => "h2c",
        (false, false) => "off",
    };
    tracing::info!(
        "listening on {} (threads={}, pinned={}, backend={backend} ({why}), after={}, \
         handshake_timeout={}ms, idle_timeout={}, max_header_bytes={}, max_message_bytes={}, \
         backlog={}, defer_accept={}, paths={}, subprotocols={}, origins={}, auth={}, \
         metrics={}, max_connections={}, max_pending_handshakes={}, per_ip_connections={}, per_ip_rate={}/s, retry_after={}, drain={}s/{}, fd_limit={fd_limit}, http2={http2})",
        addrs.join(","),
        config.threads,
        config.pin,
        match config.conn.after {
            wsedge::conn::AfterUpgrade::Close => "close".to_string(),
            wsedge::conn::AfterUpgrade::Echo => "echo".to_string(),
            wsedge::conn::AfterUpgrade::Proxy => format!(
                "proxy to {} ({}, connect {}ms, answer {}ms, pending {}, queue {}ms)",
                config
                    .conn
                    .proxy
                    .upstreams
                    .iter()
                    .map(|u| u.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                match config.conn.proxy.forwarding {
                    wsedge::proxy::Forwarding::Headers => "X-Forwarded-For",
                    wsedge::proxy::Forwarding::ProxyV2 => "PROXY v2",
                },
                config.conn.proxy.connect_timeout_ms,
                config.conn.proxy.response_timeout_ms,
                config.conn.proxy.max_pending,
                config.conn.proxy.queue_ms,
            ),
        },
        config.conn.handshake_timeout_ms,
        match config.conn.idle_timeout_ms {
            0 => "off".to_string(),
            ms => format!("{ms}ms"),
        },
        policy.max_header_bytes,
        config.conn.max_message_bytes,
        config.listen_options.backlog,
        match config.listen_options.defer_accept_secs {
            0 => "off".to_string(),
            s => format!("{s}s"),
        },
        list_or_any(&policy.paths),
        if policy.subprotocols.is_empty() { "none".to_string() } else { policy.subprotocols.join(",") },
        list_or_any(&policy.allowed_origins),
        if policy.auth_token.is_some() { "bearer" } else { "none" },
        metrics.map_or("off".to_string(), |a| a.to_string()),
        limit_text(config.limits.max_connections),
        limit_text(config.limits.max_pending_handshakes),
        limit_text(config.limits.max_connections_per_ip as usize),
        limit_text(config.limits.max_handshakes_per_ip_per_sec as usize),
        config.limits.retry_after_secs,
        config.limits.drain_window_ms / 1000,
        config.limits.drain_close_code,
    );

    if let Some(settings) = args.tls_settings() {
        let certs: Vec<String> = settings
            .pairs
            .iter()
            .map(|(cert, _)| cert.display().to_string())
            .collect();
        let groups = match &settings.groups[..] {
            [] => "rustls's default".to_string(),
            groups => format!("{groups:?}").to_lowercase(),
        };
        let versions: Vec<&str> = settings
            .versions
            .iter()
            .map(|v| match v {
                wsedge::tls::TlsVersion::V1_2 => "1.2",
                wsedge::tls::TlsVersion::V1_3 => "1.3",
            })
            .collect();
        let provider = match wsedge::tls::Provider::chosen() {
            wsedge::tls::Provider::AwsLc => "aws-lc-rs",
            wsedge::tls::Provider::Ring => "ring",
        };
        tracing::info!(
            "TLS: certificates {} (chosen by SNI, the first by default), versions {}, \
             groups {groups}, ALPN http/1.1, crypto {provider}",
            certs.join(", "),
            versions.join(",")
        );
    }
    if let Some(received) = received {
        // The reactors serve the sockets: the old process may stop.
        match received.ready() {
            Ok(()) => tracing::info!(
                "took over {taken_over} listening sockets from the running wsedge; it drains now"
            ),
            Err(error) => tracing::warn!("{error}: serving the sockets anyway"),
        }
    }
    let offer = match &args.takeover {
        Some(path) => {
            let shutdown = server.shutdown();
            let sockets = server.take_listening_sockets();
            let offer = wsedge::takeover::offer(path, sockets, move || {
                if shutdown.hand_over() == ShutdownState::Draining {
                    notify(ServiceState::Stopping);
                    tracing::info!(
                        "handed over: draining (stop accepting, finish handshakes, close upgraded connections)"
                    );
                }
            })?;
            tracing::info!(
                "--takeover {}: offering the listening sockets",
                path.display()
            );
            Some(offer)
        }
        None => None,
    };
    notify(ServiceState::Ready);
    if let Some(secs) = args.stats_interval {
        spawn_stats_logger(server.counters(), secs).context("starting the stats thread")?;
    }
    let shutdown = server.shutdown();
    let running = Running {
        config: args.config.clone(),
        reloader: wsedge::reload::Reloader::new(
            args,
            config.conn.after,
            server.live(),
            server.shutdown(),
            config.tls.clone(),
        ),
    };
    std::thread::Builder::new()
        .name("wsedge-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    notify(ServiceState::Reloading);
                    running.reload();
                    notify(ServiceState::Ready);
                    continue;
                }
                notify(ServiceState::Stopping);
                if let Some(offer) = &offer {
                    // Exiting, not handing over: the sockets must close with the reactors'.
                    offer.stop();
                }
                let state = if signal == SIGQUIT { shutdown.escalate_to_abort() } else { shutdown.escalate() };
                match state {
                    ShutdownState::Draining => tracing::info!(
                        "signal {signal}: draining (stop accepting, finish handshakes, close upgraded connections); \
                         send it again to exit at once"
                    ),
                    _ => tracing::info!("signal {signal}: exiting now"),
                }
            }
        })
        .context("starting the signal thread")?;
    let totals = server.join().context("a reactor failed")?;
    let named: Vec<String> = (totals.named().iter())
        .map(|(name, total)| format!("{name}={total}"))
        .collect();
    tracing::info!("stopped: {}", named.join(" "));
    Ok(())
}

/// What a reload (SIGHUP) reads again: `--config` under the command line, or without it
/// the certificate files. What the result means is the library's ([`wsedge::reload`]).
struct Running {
    /// `--config`, read again on SIGHUP.
    config: Option<std::path::PathBuf>,
    reloader: wsedge::reload::Reloader,
}

impl Running {
    fn reload(&self) {
        let Some(path) = self.config.as_ref() else {
            return self.reloader.certificates().log();
        };
        let typed: Vec<String> = std::env::args().collect();
        let parsed = with_config_file(path, &typed)
            .and_then(|merged| Cli::try_parse_from(merged).map_err(|e| e.to_string()))
            .and_then(|cli| match cli.command {
                Command::Serve(args) => Ok(args),
                _ => Err("not `serve`".to_string()),
            })
            .map_err(|error| error.trim().trim_start_matches("error: ").to_string());
        self.reloader.apply(path, parsed).log();
    }
}

fn check(args: &CheckArgs) -> ExitCode {
    if args.insecure {
        eprintln!("warning: --insecure: the server's certificate is NOT checked; anyone could be answering");
    }
    let options = CheckOptions {
        url: args.url.clone(),
        subprotocols: args.subprotocols.clone(),
        origin: args.origin.clone(),
        headers: args.headers.clone(),
        token: args.token.clone(),
        timeout: args.timeout,
        insecure: args.insecure,
        ping: args.ping,
        h2: args.h2,
    };
    use wsedge::check::framework::{self, Framework};
    let checked = match (args.socketio, args.sockjs) {
        (true, _) => framework::run(Framework::SocketIo, &options),
        (_, true) => framework::run(Framework::SockJs, &options),
        _ => wsedge::check::run(&options),
    };
    match checked {
        Ok(report) => {
            if args.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.human());
            }
            ExitCode::from(report.verdict.exit_code() as u8)
        }
        Err(error) => usage_error(
            "check",
            clap::error::ErrorKind::InvalidValue,
            format!("URL: {error}"),
        ),
    }
}

/// Logs totals and rates every `secs` seconds: one line whatever the load.
fn spawn_stats_logger(
    counters: Vec<std::sync::Arc<wsedge::stats::Counters>>,
    secs: u64,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    std::thread::Builder::new().name("wsedge-stats".into()).spawn(move || {
        let mut last = wsedge::stats::Counters::sum(counters.iter().map(|c| &**c));
        loop {
            std::thread::sleep(std::time::Duration::from_secs(secs));
            let now = wsedge::stats::Counters::sum(counters.iter().map(|c| &**c));
            let rate = |a: u64, b: u64| (a - b) as f64 / secs as f64;
            let open: u64 = counters.iter().map(|c| c.open.load(Relaxed)).sum();
            let handshaking: u64 = counters.iter().map(|c| c.handshaking.load(Relaxed)).sum();
            tracing::info!(
                "stats: {:.0} accepts/s, {:.0} upgrades/s, {:.0} rejections/s, {:.0} admission refusals/s, \
                 {:.0} handshake timeouts/s, open={open}, handshaking={handshaking}, accept_pauses={}, \
                 upstream: {:.0} connect failures/s, {:.0} timeouts/s, {:.0} refusals passed/s",
                rate(now.accepted, last.accepted),
                rate(now.upgraded, last.upgraded),
                rate(now.rejected, last.rejected),
                rate(now.admission_rejections, last.admission_rejections),
                rate(now.handshake_timeouts, last.handshake_timeouts),
                now.accept_pauses,
                rate(now.upstream_connect_failures, last.upstream_connect_failures),
                rate(now.upstream_timeouts, last.upstream_timeouts),
                rate(now.upstream_refusals_passed, last.upstream_refusals_passed),
            );
            last = now;
        }
    })?;
    Ok(())
}

fn limit_text(limit: usize) -> String {
    if limit == 0 {
        "none".into()
    } else {
        limit.to_string()
    }
}

fn list_or_any(items: &[String]) -> String {
    if items.is_empty() {
        "any".into()
    } else {
        items.join(",")
    }
}
