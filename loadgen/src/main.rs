//! `wsedge-loadgen`: connection storms against any WebSocket server, measured honestly.

mod cmd;
mod collect;
mod engine;
mod hdrlog;
mod merge;
mod net;
mod plot;
mod processes;
mod report;
mod retry;
mod runner;
mod server;
mod start_at;
mod target;
mod tickets;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::json;

use engine::{CloseMode, Mode, Plan};
use hdrlog::LogWriter;
use report::{latency_line, Report};
use runner::{child_command, measure, measure_once, LogSlot, Outcome, RunSettings};

/// Connection-storm load generator for WebSocket handshakes.
#[derive(Debug, Parser)]
#[command(name = "wsedge-loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Closed loop: C connections in flight, each upgrade verified, closed, replaced.
    Storm(cmd::storm::StormArgs),
    /// Open loop at a fixed arrival rate; latency from each intended start time.
    Rate(cmd::rate::RateArgs),
    /// Rate steps from --from to --to; reports the highest rate that met the SLO.
    Ramp(cmd::ramp::RampArgs),
    /// Establish N upgraded connections and hold them.
    Hold(cmd::hold::HoldArgs),
    /// N clients coming back at once, each retrying by its backoff until it holds an
    /// upgraded connection: how long until all are in, and what it cost.
    Reconnect(cmd::reconnect::ReconnectArgs),
    /// Clients that trickle the handshake; measures how long the server takes to cut them off.
    Slowloris(cmd::slowloris::SlowlorisArgs),
    /// Merges --hdr-log files of several processes or machines into one report.
    Merge(cmd::merge_logs::MergeArgs),
    /// Draws a head-to-head (server CPU per upgrade, upgrades per second) from JSON rows of
    /// {"name", "upgrades_per_sec", "cpu_us_per_upgrade"}; used by benches/compare.sh --plot.
    PlotCompare(cmd::plot_compare::PlotCompareArgs),
}

/// Spreading the load over processes, and what to draw.
#[derive(Debug, Args)]
struct Spread {
    /// Run the load in N processes (each with --threads workers and its own log), started
    /// together and merged at the end, for more cores than one process fills.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    processes: u64,
    #[command(flatten)]
    plot: PlotArgs,
}

#[derive(Debug, Args)]
struct PlotArgs {
    /// Draw the result as SVG into FILE.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// The plot's title (default: what ran, against what).
    #[arg(long, value_name = "TEXT", requires = "plot")]
    plot_title: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Close {
    Rst,
    Fin,
    Ws,
}

#[derive(Debug, Args)]
struct Common {
    /// Target, ws://HOST:PORT/path or wss://.
    #[arg(value_parser = target::parse)]
    url: target::Target,
    /// How long to run (storm, rate, slowloris) or the longest establishment may take (hold).
    #[arg(long, default_value = "10s", value_parser = wsedge::values::duration)]
    duration: Duration,
    /// Stop after starting this many connections.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: u64,
    /// CPUs to pin worker threads to, e.g. 1 or 0,2-3 (worker i takes the i-th, cycling).
    #[arg(long, value_parser = parse_cpus)]
    pin: Option<CpuList>,
    /// Source addresses to rotate through, e.g. 127.0.0.2-127.0.0.254 (loopback targets
    /// default to that range; "none" lets the kernel choose).
    #[arg(long)]
    source_ips: Option<String>,
    #[arg(long, value_enum, default_value = "rst")]
    close: Close,
    /// Extra request header, 'Name: value' (repeatable).
    #[arg(long = "header", value_parser = wsedge::values::header_line)]
    headers: Vec<String>,
    /// Subprotocol to offer (repeatable, in preference order).
    #[arg(long = "subprotocol")]
    subprotocols: Vec<String>,
    #[arg(long)]
    origin: Option<String>,
    #[arg(long, default_value = "5s", value_parser = wsedge::values::duration)]
    connect_timeout: Duration,
    #[arg(long, default_value = "10s", value_parser = wsedge::values::duration)]
    handshake_timeout: Duration,
    /// Send this Sec-WebSocket-Key on every connection instead of a random one (for
    /// servers that answer with a canned 101, such as the floor server in benches/).
    #[arg(long, value_parser = parse_key)]
    key: Option<String>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// wss://: trust the certificates in this PEM file instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// wss://: do not check the server's certificate.
    #[arg(long)]
    insecure: bool,
    /// wss://: resume TLS sessions (tickets from earlier connections reused), as returning
    /// clients do; without it every connection makes a full handshake.
    #[arg(long)]
    tls_resume: bool,
    /// wss://: key-exchange groups to offer, most preferred first (x25519, secp256r1,
    /// secp384r1, x25519mlkem768) [default: x25519, secp256r1, secp384r1].
    #[arg(long, value_name = "GROUPS", value_delimiter = ',', value_parser = wsedge::values::tls_group)]
    tls_groups: Vec<wsedge::tls::TlsGroup>,
    /// WebSockets over HTTP/2 (RFC 8441): each connection speaks HTTP/2 (ALPN h2 over
    /// wss://, prior knowledge over ws://) and opens --streams extended CONNECT streams
    /// once the server's SETTINGS allow them; each stream counts as an upgrade.
    #[arg(long)]
    h2: bool,
    /// Streams opened on each connection, all at once (with --h2).
    #[arg(long, value_name = "N", requires = "h2", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    streams: u32,
    /// Start each connection with a PROXY protocol header (v1 or v2) naming a client, as an
    /// L4 balancer in front of the server would (ws:// targets).
    #[arg(long, value_enum, value_name = "VERSION")]
    proxy_header: Option<ProxyHeaderArg>,
    /// Write an HdrHistogram interval log (total latency each second, phases tagged) for
    /// `merge` or any HdrHistogram tool.
    #[arg(long, value_name = "FILE")]
    hdr_log: Option<PathBuf>,
    /// Begin at this wall-clock time (2026-12-03T14:00:00Z, or seconds since the epoch), so
    /// that several machines start together.
    #[arg(long, value_name = "TIME", value_parser = start_at::parse)]
    start_at: Option<SystemTime>,
    /// Report progress as machine lines on stderr (used by --processes).
    #[arg(long, hide = true)]
    report_progress: bool,
}

fn parse_rate(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!("{value:?} is not a positive rate per second")),
    }
}

fn parse_key(value: &str) -> Result<String, String> {
    if wsedge::handshake::is_valid_key(value.as_bytes()) {
        Ok(value.to_owned())
    } else {
        Err("a key is base64 of 16 bytes, e.g. dGhlIHNhbXBsZSBub25jZQ==".into())
    }
}

/// The CPUs of `--pin`, in the order workers take them. A type of its own: clap reads an
/// `Option<Vec<_>>` field as a repeatable flag, not as one value parsed into a list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CpuList(Vec<usize>);

fn parse_cpus(value: &str) -> Result<CpuList, String> {
    let online = core_affinity::get_core_ids()
        .map_or(0, |ids| ids.iter().map(|id| id.id + 1).max().unwrap_or(0));
    parse_cpu_list(value, online)
}

/// Parses `1`, `0,2-3`: each CPU must be below `online` (the highest online CPU plus one).
fn parse_cpu_list(value: &str, online: usize) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in value.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let bad = || format!("{part:?} is not a CPU or a range of CPUs like 0-3");
        let (a, b): (usize, usize) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a > b {
            return Err(format!("{part:?}: a range goes from low to high, e.g. 0-3"));
        }
        if b >= online {
            return Err(format!(
                "CPU {b} is not online here (CPUs 0-{} are)",
                online.saturating_sub(1)
            ));
        }
        cpus.extend(a..=b);
    }
    Ok(CpuList(cpus))
}

fn usage_error(message: String) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::InvalidValue, message)
        .exit()
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn plan(common: &Common, mode: Mode) -> Plan {
    let loopback = common.url.addr.ip().is_loopback() && common.url.addr.is_ipv4();
    let sources = match common.source_ips.as_deref() {
        Some("none") => Vec::new(),
        Some(spec) => net::parse_source_ips(spec)
            .unwrap_or_else(|e| usage_error(format!("--source-ips: {e}"))),
        None if loopback => net::parse_source_ips("127.0.0.2-127.0.0.254").unwrap_or_default(),
        None => Vec::new(),
    };
    let mut headers = common.headers.clone();
    if let Some(origin) = &common.origin {
        headers.push(format!("Origin: {origin}"));
    }
    Plan {
        target: common.url.clone(),
        mode,
        duration: common.duration,
        count: None,
        connect_timeout: common.connect_timeout,
        handshake_timeout: common.handshake_timeout,
        close: match common.close {
            Close::Rst => CloseMode::Rst,
            Close::Fin => CloseMode::Fin,
            Close::Ws => CloseMode::Ws,
        },
        sources,
        headers,
        protocols: common.subprotocols.clone(),
        fixed_key: common
            .key
            .as_ref()
            .and_then(|k| k.as_bytes().try_into().ok()),
        tls: tls_config(common),
        proxy_header: match (common.proxy_header, common.url.tls) {
            (Some(_), true) => usage_error("--proxy-header is only used with ws:// targets".into()),
            (Some(ProxyHeaderArg::V1), false) => Some(engine::ProxyHeaderVersion::V1),
            (Some(ProxyHeaderArg::V2), false) => Some(engine::ProxyHeaderVersion::V2),
            (None, _) => None,
        },
        intervals: None,
        h2_streams: h2_streams(common, mode),
    }
}

/// `--h2`'s streams per connection, for the modes that take it.
fn h2_streams(common: &Common, mode: Mode) -> Option<u32> {
    if !common.h2 {
        return None;
    }
    match mode {
        Mode::Slowloris { .. } => {
            usage_error("--h2 is used with storm, rate, ramp, hold and reconnect".into())
        }
        _ if common.key.is_some() => {
            usage_error("--key is not used with --h2 (RFC 8441 has no key)".into())
        }
        _ if common.close == Close::Ws => {
            usage_error("--close ws is not used with --h2: choose rst or fin".into())
        }
        _ => Some(common.streams),
    }
}

/// `--proxy-header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProxyHeaderArg {
    V1,
    V2,
}

/// The TLS client of a `wss://` target; the TLS flags are usage errors with `ws://`.
fn tls_config(common: &Common) -> Option<Arc<rustls::ClientConfig>> {
    if !common.url.tls {
        for (given, flag) in [
            (common.ca.is_some(), "--ca"),
            (common.insecure, "--insecure"),
            (common.tls_resume, "--tls-resume"),
            (!common.tls_groups.is_empty(), "--tls-groups"),
        ] {
            if given {
                usage_error(format!("{flag} is only used with wss:// targets"));
            }
        }
        return None;
    }
    let config = wsedge::check::client_tls::client_config_offering(
        common.insecure,
        common.ca.as_deref(),
        &common.tls_groups,
    )
    .unwrap_or_else(|e| usage_error(e));
    let mut config = Arc::unwrap_or_clone(config);
    if common.h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    config.resumption = match common.tls_resume {
        true => rustls::client::Resumption::store(Arc::new(tickets::ReturningClients::default())),
        false => rustls::client::Resumption::disabled(),
    };
    Some(Arc::new(config))
}

fn summary(title: &str, report: &Report, elapsed: Duration) {
    println!("{title}");
    println!(
        "  {} upgrades in {:.2} s: {:.0} upgrades/s, {} errors",
        report.ok,
        elapsed.as_secs_f64(),
        report.ok as f64 / elapsed.as_secs_f64().max(1e-9),
        report.errors_total()
    );
    if report.unfinished > 0 {
        println!(
            "  {} handshakes were still in flight when the run ended (not counted)",
            report.unfinished
        );
    }
    println!("{}", latency_line("total", &report.total));
    println!("{}", latency_line("connect", &report.connect));
    if !report.tls.is_empty() {
        println!("{}", latency_line("tls", &report.tls));
    }
    println!("{}", latency_line("handshake", &report.handshake));
    for (kind, count) in &report.errors {
        println!("  error {:<20} {count}", kind.name());
    }
}

/// With `--json`, the run's figures and `extra` as one JSON object, the last line of stdout.
fn print_json(wanted: bool, report: &Report, elapsed: Duration, extra: serde_json::Value) {
    if wanted {
        println!("{}", report::json(report, elapsed, extra));
    }
}

/// The text report of a run, per-interval lines when it was merged, the plot, the JSON.
fn report_outcome(
    common_json: bool,
    title: &str,
    outcome: &Outcome,
    plot: &PlotArgs,
    extra: serde_json::Value,
) -> anyhow::Result<()> {
    summary(title, &outcome.report, outcome.elapsed);
    if let Some(intervals) = &outcome.intervals {
        merge::print_intervals(intervals);
    }
    draw_percentiles(plot, title, &outcome.report)?;
    if common_json {
        let mut extra = extra;
        if let (Some(object), Some(intervals)) = (extra.as_object_mut(), &outcome.intervals) {
            object.insert("intervals".into(), merge::intervals_json(intervals));
        }
        println!("{}", report::json(&outcome.report, outcome.elapsed, extra));
    }
    Ok(())
}

fn draw_percentiles(plot: &PlotArgs, title: &str, report: &Report) -> anyhow::Result<()> {
    let Some(path) = &plot.plot else {
        return Ok(());
    };
    let title = plot.plot_title.as_deref().unwrap_or(title);
    plot::percentiles(
        path,
        title,
        &[
            ("total", &report.total),
            ("connect", &report.connect),
            ("tls", &report.tls),
            ("handshake", &report.handshake),
        ],
    )
}

/// What the runner needs of the common flags and the spread over processes (`None`: this
/// process only), checked here: a `--count` is shared out, so it covers every process.
fn run_settings(common: &Common, spread: Option<&Spread>) -> RunSettings {
    let processes = spread.map_or(1, |s| s.processes);
    if let Some(count) = common.count.filter(|&count| count < processes) {
        usage_error(format!(
            "--count {count} is fewer than --processes {processes}"
        ));
    }
    RunSettings {
        threads: common.threads as usize,
        processes,
        hdr_log: common.hdr_log.clone(),
        start_at: common.start_at,
        report_progress: common.report_progress,
        count: common.count,
        pin: common
            .pin
            .as_ref()
            .map(|cpus| cpus.0.clone())
            .unwrap_or_default(),
    }
}

/// A measurement in this process only (subcommands that do not spread over processes).
fn measure_here(common: &Common, plan: &Plan, share_total: usize) -> anyhow::Result<Outcome> {
    measure_once(&run_settings(common, None), plan, share_total, |_, _| {
        Vec::new()
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let fd_limit = net::raise_fd_limit();
    match cli.command {
        Command::Storm(args) => cmd::storm::run(args),
        Command::Rate(args) => cmd::rate::run(args),
        Command::Ramp(args) => cmd::ramp::run(args),
        Command::Hold(args) => cmd::hold::run(args, fd_limit),
        Command::Slowloris(args) => cmd::slowloris::run(args),
        Command::Reconnect(args) => cmd::reconnect::run(args, fd_limit),
        Command::Merge(args) => cmd::merge_logs::run(args),
        Command::PlotCompare(args) => cmd::plot_compare::run(args),
    }
}
