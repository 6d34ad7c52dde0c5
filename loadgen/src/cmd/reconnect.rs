//! `wsedge-loadgen reconnect`: a reconnect storm as its clients live it. Each client tries
//! until it holds an upgraded connection, waiting between attempts by its retry policy, then
//! keeps it; the run ends when every client is in (or at `--duration`).

use super::*;
use crate::report::MOMENT;
use crate::retry::{self, Backoff, Jitter, RetryPolicy};

/// N clients reconnecting at once, each retrying with its own backoff until it is in.
#[derive(Debug, Args)]
pub struct ReconnectArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub spread_over: Spread,
    /// Clients coming back.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub clients: u64,
    /// First attempts spread evenly at random over this long (0: all at once).
    #[arg(long, default_value = "0s", value_parser = wsedge::values::duration_or_zero)]
    pub spread: Duration,
    /// One attempt (connect, TLS, response) gets this long before the client gives it up
    /// and waits to try again (this replaces --connect-timeout and --handshake-timeout).
    #[arg(long, default_value = "5s", value_parser = wsedge::values::duration)]
    pub attempt_timeout: Duration,
    /// Wait after n failed attempts: exponential:BASE..CAP (BASE·2^(n-1), at most CAP),
    /// fixed:D, or none.
    #[arg(long, default_value = "exponential:250ms..10s", value_parser = retry::parse_backoff)]
    pub backoff: Backoff,
    /// Randomising the wait d: full (0..d), equal (d/2..d), spread:F (d·(1±F); Socket.IO
    /// uses 0.5) or none.
    #[arg(long, default_value = "full", value_parser = retry::parse_jitter)]
    pub jitter: Jitter,
    /// Whether a refusal's Retry-After (seconds) replaces the backoff.
    #[arg(long, value_enum, default_value = "honour")]
    pub retry_after: RetryAfter,
    /// The server's PID: its CPU time over the run, per client in, and in the plot.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// `--retry-after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RetryAfter {
    Honour,
    Ignore,
}

/// Runs the subcommand.
pub fn run(args: ReconnectArgs, fd_limit: u64) -> anyhow::Result<()> {
    let ReconnectArgs {
        common,
        spread_over,
        clients,
        spread,
        attempt_timeout,
        backoff,
        jitter,
        retry_after,
        server_pid,
    } = args;
    let processes = spread_over.processes;
    if clients < processes {
        usage_error(format!(
            "--clients {clients} is fewer than --processes {processes}"
        ));
    }
    // Each client in holds one descriptor; keep 64 for everything else.
    let room = fd_limit.saturating_sub(64);
    let per_process = clients.div_ceil(processes);
    if per_process > room {
        usage_error(format!(
            "--clients {clients}: each process may open {fd_limit} descriptors (the hard limit), \
             so it can hold at most {room} clients; spread them with --processes {}",
            clients.div_ceil(room.max(1))
        ));
    }
    if attempt_timeout.is_zero() {
        usage_error("--attempt-timeout must be above zero".into());
    }
    let retry = RetryPolicy {
        attempt_timeout,
        backoff,
        jitter,
        honour_retry_after: retry_after == RetryAfter::Honour,
    };
    let mut plan = plan(
        &common,
        Mode::Reconnect {
            clients: clients as usize,
            spread,
            retry,
        },
    );
    plan.connect_timeout = attempt_timeout;
    plan.handshake_timeout = attempt_timeout;
    let cpu = server_pid.map(|pid| CpuSampler::start(pid, common.start_at));
    let outcome = measure_once(
        &run_settings(&common, Some(&spread_over)),
        &plan,
        clients as usize,
        |i, n| {
            let share = processes::share(clients, n, i).to_string();
            child_command(
                "reconnect",
                common.count,
                i,
                n,
                common.duration,
                &[("--clients", share)],
            )
        },
    )?;
    let server_cpu = cpu.map(CpuSampler::stop).unwrap_or_default();
    let report = &outcome.report;
    let title = format!("reconnect {} ({clients} clients)", common.url.addr);
    summary(&title, report, outcome.elapsed);
    let figures = Figures::of(report, clients, &server_cpu);
    figures.print();
    if let Some(path) = &spread_over.plot.plot {
        let title = spread_over.plot.plot_title.as_deref().unwrap_or(&title);
        plot::recovery(path, title, &report.timeline, clients, &server_cpu.samples)?;
    }
    let extra = json!({
        "clients": clients,
        "processes": processes,
        "clients_in": figures.inside,
        "clients_not_in": report.clients_not_in,
        "in_after_s": figures.in_after_json(),
        "attempts_per_client": {
            "mean": figures.attempts_mean,
            "p99": report.attempts.value_at_quantile(0.99),
            "max": report.attempts.max(),
        },
        // Counted as they start: with --h2 an attempt is a connection of several upgrades.
        "attempts_total": report.timeline.iter().map(|m| m.attempts).sum::<u64>(),
        "refusals": figures.refusals_json(report),
        "recovery": report.timeline.iter().map(|m| m.clients_in).collect::<Vec<_>>(),
        "recovery_step_s": MOMENT.as_secs_f64(),
        "timeline": report::timeline_json(&report.timeline),
        "server_cpu_s": figures.server_cpu_s,
        "server_cpu_us_per_client": figures.server_cpu_s
            .filter(|_| figures.inside > 0)
            .map(|s| s * 1e6 / figures.inside as f64),
    });
    print_json(common.json, report, outcome.elapsed, extra);
    Ok(())
}

/// What a reconnect run says beyond the common report.
struct Figures {
    clients: u64,
    inside: u64,
    /// Seconds from the start until 50, 90, 99 and 100% of all clients were in (`None`:
    /// that many never got in).
    in_after: [(f64, Option<f64>); 4],
    attempts_mean: f64,
    server_cpu_s: Option<f64>,
}

impl Figures {
    fn of(report: &Report, clients: u64, server_cpu: &ServerCpu) -> Figures {
        let inside = report.clients_in.len();
        let in_after = [0.5, 0.9, 0.99, 1.0].map(|share: f64| {
            let rank = (share * clients as f64).ceil().max(1.0) as u64;
            let at = (rank <= inside).then(|| {
                report
                    .clients_in
                    .value_at_quantile(rank as f64 / inside.max(1) as f64) as f64
                    / 1e6
            });
            (share, at)
        });
        Figures {
            clients,
            inside,
            in_after,
            attempts_mean: report.attempts.mean(),
            server_cpu_s: server_cpu.total,
        }
    }

    fn in_after_json(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        for (share, at) in self.in_after {
            object.insert(format!("p{}", (share * 100.0) as u32), json!(at));
        }
        object.into()
    }

    fn refusals_json(&self, report: &Report) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        for (kind, count) in &report.errors {
            if let report::ErrorKind::Status(status) = kind {
                object.insert(status.to_string(), json!(count));
            }
        }
        object.into()
    }

    fn print(&self) {
        println!("  clients in {} of {}", self.inside, self.clients);
        let mut line = String::from("  in after ");
        for (share, at) in self.in_after {
            let at = at.map_or("never".to_owned(), |s| format!("{s:.2} s"));
            line.push_str(&format!(" {}%: {at}", (share * 100.0) as u32));
        }
        println!("{line}");
        println!("  attempts per client: mean {:.2}", self.attempts_mean);
        if let Some(cpu) = self.server_cpu_s {
            println!(
                "  server CPU {cpu:.2} s, {:.0} µs per client in",
                cpu * 1e6 / self.inside.max(1) as f64
            );
        }
    }
}

/// The server's CPU over the run (`--server-pid`).
#[derive(Debug, Default)]
struct ServerCpu {
    /// Seconds of CPU time from the start to the end of the run.
    total: Option<f64>,
    /// (seconds from the start, % of one core), every tenth of a second.
    samples: Vec<(f64, f64)>,
}

/// Samples the server's CPU every tenth of a second while the storm runs.
struct CpuSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<ServerCpu>,
}

impl CpuSampler {
    fn start(pid: u32, start_at: Option<SystemTime>) -> CpuSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            if let Some(at) = start_at {
                start_at::wait_until(at);
            }
            let origin = Instant::now();
            let first = server::cpu_seconds(pid);
            let mut last = (0.0, first);
            let mut samples = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(MOMENT);
                let now = origin.elapsed().as_secs_f64();
                let Some(cpu) = server::cpu_seconds(pid) else {
                    break;
                };
                if let Some(before) = last.1 {
                    let share = (cpu - before) / (now - last.0).max(1e-6);
                    samples.push((now, share * 100.0));
                }
                last = (now, Some(cpu));
            }
            ServerCpu {
                total: first.zip(last.1).map(|(a, b)| b - a),
                samples,
            }
        });
        CpuSampler { stop, thread }
    }

    fn stop(self) -> ServerCpu {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}
