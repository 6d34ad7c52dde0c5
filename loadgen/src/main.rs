//! `wsedge-loadgen`: connection storms against any WebSocket server, measured honestly.

mod collect;
mod engine;
mod hdrlog;
mod merge;
mod net;
mod plot;
mod processes;
mod report;
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
    Storm {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        spread: Spread,
        /// Connections in flight.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        concurrency: u64,
    },
    /// Open loop at a fixed arrival rate; latency from each intended start time.
    Rate {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        spread: Spread,
        /// New connections per second.
        #[arg(long, value_parser = parse_rate)]
        rate: f64,
    },
    /// Rate steps from --from to --to; reports the highest rate that met the SLO.
    Ramp {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        spread: Spread,
        #[arg(long, value_parser = parse_rate)]
        from: f64,
        #[arg(long, value_parser = parse_rate)]
        to: f64,
        #[arg(long, value_parser = parse_rate)]
        step: f64,
        #[arg(long, default_value = "5s", value_parser = wsedge::values::duration)]
        step_duration: Duration,
        /// p99 latency a step must stay under to pass (e.g. 1ms).
        #[arg(long, value_parser = wsedge::values::duration)]
        slo_p99: Option<Duration>,
        /// Report this server's CPU time per step (share of a core, µs per upgrade): it
        /// tells a saturated server from a saturated load generator.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Establish N upgraded connections and hold them.
    Hold {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        connections: u64,
        /// Establishment rate (default: as fast as possible).
        #[arg(long, value_parser = parse_rate)]
        rate: Option<f64>,
        #[arg(long, default_value = "30s", value_parser = wsedge::values::duration)]
        hold: Duration,
        #[arg(long, value_parser = wsedge::values::duration)]
        ping_interval: Option<Duration>,
        /// Sample this server's RSS to report bytes per held connection.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Clients that trickle the handshake; measures how long the server takes to cut them off.
    Slowloris {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        connections: u64,
        #[arg(long, default_value = "200ms", value_parser = wsedge::values::duration)]
        byte_interval: Duration,
    },
    /// Merges --hdr-log files of several processes or machines into one report.
    Merge {
        /// Interval logs written with --hdr-log (or by any HdrHistogram tool).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print one JSON object as the last line of stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        plot: PlotArgs,
        /// Write the merged run as one interval log.
        #[arg(long, value_name = "FILE")]
        hdr_log: Option<PathBuf>,
    },
    /// Draws a head-to-head (server CPU per upgrade, upgrades per second) from JSON rows of
    /// {"name", "upgrades_per_sec", "cpu_us_per_upgrade"}; used by benches/compare.sh --plot.
    PlotCompare {
        #[arg(value_name = "ROWS.json")]
        rows: PathBuf,
        #[command(flatten)]
        plot: PlotArgs,
    },
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
        Command::Storm {
            common,
            spread,
            concurrency,
        } => {
            if concurrency < spread.processes {
                usage_error(format!(
                    "--concurrency {concurrency} is fewer than --processes {}",
                    spread.processes
                ));
            }
            let plan = plan(
                &common,
                Mode::Storm {
                    concurrency: concurrency as usize,
                },
            );
            let outcome = measure_once(
                &run_settings(&common, Some(&spread)),
                &plan,
                concurrency as usize,
                |i, n| {
                    let share = processes::share(concurrency, n, i).to_string();
                    child_command(
                        "storm",
                        common.count,
                        i,
                        n,
                        common.duration,
                        &[("--concurrency", share)],
                    )
                },
            )?;
            let title = format!("storm {} (concurrency {concurrency})", common.url.addr);
            report_outcome(
                common.json,
                &title,
                &outcome,
                &spread.plot,
                json!({ "concurrency": concurrency, "processes": spread.processes }),
            )?;
        }
        Command::Rate {
            common,
            spread,
            rate,
        } => {
            let plan = plan(&common, Mode::Rate { per_sec: rate });
            let outcome = measure_once(
                &run_settings(&common, Some(&spread)),
                &plan,
                common.threads as usize,
                |i, n| {
                    let share = format!("{}", rate / n as f64);
                    child_command(
                        "rate",
                        common.count,
                        i,
                        n,
                        common.duration,
                        &[("--rate", share)],
                    )
                },
            )?;
            let title = format!("rate {} ({rate}/s intended)", common.url.addr);
            report_outcome(
                common.json,
                &title,
                &outcome,
                &spread.plot,
                json!({ "rate": rate, "processes": spread.processes }),
            )?;
        }
        Command::Ramp {
            common,
            spread,
            from,
            to,
            step,
            step_duration,
            slo_p99,
            server_pid,
        } => {
            if let Some(pid) = server_pid {
                if server::cpu_seconds(pid).is_none() {
                    usage_error(format!("--server-pid {pid}: no such process here"));
                }
            }
            if to < from {
                usage_error("--to must be at least --from".into());
            }
            let mut steps = Vec::new();
            let mut points = Vec::new();
            let mut best = None;
            let mut rate = from;
            let settings = run_settings(&common, Some(&spread));
            let mut log = LogSlot::new(settings.hdr_log.clone());
            let began = Instant::now();
            let mut start_at = common.start_at;
            while rate <= to + 1e-9 {
                let mut plan = plan(&common, Mode::Rate { per_sec: rate });
                plan.duration = step_duration;
                let cpu_before = server_pid.and_then(server::cpu_seconds);
                let outcome = measure(
                    &settings,
                    &plan,
                    common.threads as usize,
                    start_at.take(),
                    &mut log,
                    |i, n| {
                        let share = format!("{}", rate / n as f64);
                        child_command(
                            "rate",
                            common.count,
                            i,
                            n,
                            step_duration,
                            &[("--rate", share)],
                        )
                    },
                )?;
                let report = &outcome.report;
                let server_cpu = match (cpu_before, server_pid.and_then(server::cpu_seconds)) {
                    (Some(before), Some(after)) => Some(after - before),
                    _ => None,
                };
                let p99 = report.total.value_at_quantile(0.99);
                let met = report.errors_total() == 0
                    && slo_p99.is_none_or(|slo| p99 <= slo.as_micros() as u64);
                println!(
                    "step {rate:>9.0}/s: achieved {:>9.0}/s  p50 {:>9}  p99 {:>9}  p99.9 {:>9}  errors {:>6}  {}",
                    report.ok as f64 / outcome.elapsed.as_secs_f64(),
                    report::human_us(report.total.value_at_quantile(0.5)),
                    report::human_us(p99),
                    report::human_us(report.total.value_at_quantile(0.999)),
                    report.errors_total(),
                    if met { "meets SLO" } else { "misses SLO" }
                );
                let cpu_share = server_cpu.map(|cpu| cpu / outcome.elapsed.as_secs_f64());
                let cpu_per_upgrade = server_cpu.map(|cpu| cpu * 1e6 / report.ok.max(1) as f64);
                if let (Some(share), Some(per_upgrade)) = (cpu_share, cpu_per_upgrade) {
                    println!(
                        "                 server CPU {:>5.1}% of a core, {per_upgrade:.1} µs per upgrade",
                        share * 100.0
                    );
                }
                if met {
                    best = Some(rate);
                }
                points.push(plot::RampStep {
                    offered: rate,
                    p50_us: report.total.value_at_quantile(0.5),
                    p99_us: p99,
                    p999_us: report.total.value_at_quantile(0.999),
                    server_cpu_share: cpu_share,
                });
                steps.push(report::json(
                    report,
                    outcome.elapsed,
                    json!({
                        "rate": rate,
                        "meets_slo": met,
                        "server_cpu_share": cpu_share,
                        "server_cpu_us_per_upgrade": cpu_per_upgrade,
                    }),
                ));
                rate += step;
            }
            log.finish(began.elapsed())?;
            match best {
                Some(rate) => println!("highest rate meeting the SLO: {rate:.0}/s"),
                None => println!("no step met the SLO"),
            }
            if let Some(path) = &spread.plot.plot {
                let title = spread
                    .plot
                    .plot_title
                    .clone()
                    .unwrap_or_else(|| format!("ramp {}", common.url.addr));
                plot::ramp(
                    path,
                    &title,
                    &points,
                    slo_p99.map(|d| d.as_micros() as u64),
                    best,
                )?;
            }
            if common.json {
                println!(
                    "{}",
                    json!({ "steps": steps, "best_rate": best, "processes": spread.processes })
                );
            }
        }
        Command::Merge {
            files,
            json,
            plot,
            hdr_log,
        } => {
            let logs = files
                .iter()
                .map(|f| hdrlog::read(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let start = logs.iter().map(|l| l.start).fold(f64::INFINITY, f64::min);
            let mut writer = match &hdr_log {
                Some(path) => Some(LogWriter::create(
                    path,
                    std::time::UNIX_EPOCH + Duration::from_secs_f64(start.max(0.0)),
                )?),
                None => None,
            };
            let merged = merge::merge(&logs, |offset, length, report| match writer.as_mut() {
                Some(writer) => writer.interval(
                    Duration::from_secs_f64(offset),
                    Duration::from_secs_f64(length),
                    report,
                ),
                None => Ok(()),
            })?;
            let elapsed = Duration::from_secs_f64(merged.duration.max(1e-6));
            if let Some(writer) = writer {
                writer.finish(elapsed)?;
            }
            let outcome = Outcome {
                report: merged.report,
                elapsed,
                established_after: None,
                intervals: Some(merged.intervals),
            };
            let title = format!("merge of {} logs", files.len());
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            report_outcome(json, &title, &outcome, &plot, json!({ "files": names }))?;
        }
        Command::PlotCompare { rows, plot } => {
            let text = std::fs::read_to_string(&rows)
                .with_context(|| format!("reading {}", rows.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", rows.display()))?;
            let contenders = value
                .as_array()
                .with_context(|| format!("{} is not a JSON array of rows", rows.display()))?
                .iter()
                .map(|row| {
                    Some(plot::Contender {
                        name: row["name"].as_str()?.to_owned(),
                        upgrades_per_sec: row["upgrades_per_sec"].as_f64()?,
                        cpu_us_per_upgrade: row["cpu_us_per_upgrade"].as_f64()?,
                    })
                })
                .collect::<Option<Vec<_>>>()
                .with_context(|| {
                    format!(
                        "{}: every row needs name, upgrades_per_sec and cpu_us_per_upgrade",
                        rows.display()
                    )
                })?;
            let Some(path) = &plot.plot else {
                usage_error("plot-compare needs --plot FILE.svg".into());
            };
            let title = plot
                .plot_title
                .as_deref()
                .unwrap_or("server CPU per upgrade and upgrades per second");
            plot::contenders(path, title, &contenders)?;
        }
        Command::Hold {
            common,
            connections,
            rate,
            hold,
            ping_interval,
            server_pid,
        } => {
            // Each held connection is one descriptor here; keep 64 for everything else.
            let room = fd_limit.saturating_sub(64);
            if connections > room {
                usage_error(format!(
                    "--connections {connections}: this process may open {fd_limit} descriptors (the hard limit), \
                     so it can hold at most {room}; use --connections {room} or spread the load over processes"
                ));
            }
            let rss_before = server_pid.and_then(server::rss_bytes);
            let plan = plan(
                &common,
                Mode::Hold {
                    connections: connections as usize,
                    per_sec: rate,
                    hold,
                    ping_interval,
                },
            );
            let mut plan = plan;
            plan.duration = common.duration + hold;
            let rss_after_cell = Arc::new(std::sync::Mutex::new(None));
            let sampler = server_pid.map(|pid| {
                let cell = Arc::clone(&rss_after_cell);
                std::thread::spawn(move || {
                    // Sample while connections are held; the last sample before they close wins.
                    for _ in 0..100_000 {
                        match server::rss_bytes(pid) {
                            Some(rss) => *cell.lock().expect("lock") = Some(rss),
                            None => break,
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })
            });
            let Outcome {
                report,
                elapsed,
                established_after,
                ..
            } = measure_here(&common, &plan, connections as usize)?;
            drop(sampler);
            let established = report.ok;
            let rss_after = *rss_after_cell.lock().expect("lock");
            let per_conn = match (rss_before, rss_after) {
                (Some(before), Some(after)) if established > 0 => {
                    Some(after.saturating_sub(before) as f64 / established as f64)
                }
                _ => None,
            };
            summary(
                &format!("hold {} ({connections} connections)", common.url.addr),
                &report,
                elapsed,
            );
            let establish_secs = established_after.map_or(0.0, |d| d.as_secs_f64());
            println!("  established {established} of {connections} in {establish_secs:.2} s, held {:.1} s", hold.as_secs_f64());
            if let Some(bytes) = per_conn {
                println!("  server RSS grew {bytes:.0} bytes per held connection");
            }
            if common.json {
                println!(
                    "{}",
                    report::json(
                        &report,
                        elapsed,
                        json!({ "connections": connections, "established": established, "establish_secs": establish_secs, "server_rss_bytes_per_conn": per_conn })
                    )
                );
            }
        }
        Command::Slowloris {
            common,
            connections,
            byte_interval,
        } => {
            let plan = plan(
                &common,
                Mode::Slowloris {
                    connections: connections as usize,
                    byte_interval,
                },
            );
            let Outcome {
                report, elapsed, ..
            } = measure_here(&common, &plan, connections as usize)?;
            println!(
                "slowloris {} ({connections} clients, one byte per {byte_interval:?})",
                common.url.addr
            );
            println!(
                "  cut off by the server: {}  never cut off: {}",
                report.cutoff.len(),
                report.never_cut
            );
            println!("{}", latency_line("cut off", &report.cutoff));
            for (kind, count) in &report.errors {
                println!("  error {:<20} {count}", kind.name());
            }
            if common.json {
                println!(
                    "{}",
                    report::json(
                        &report,
                        elapsed,
                        json!({ "connections": connections, "cut_off": report.cutoff.len(), "never_cut": report.never_cut, "cutoff_us": report::percentiles(&report.cutoff) })
                    )
                );
            }
        }
    }
    Ok(())
}
