//! `wsedge-loadgen ramp`: Rate steps from --from to --to; reports the highest rate that met the SLO.

use super::*;

/// Rate steps from --from to --to; reports the highest rate that met the SLO.
#[derive(Debug, Args)]
pub struct RampArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub spread: Spread,
    #[arg(long, value_parser = parse_rate)]
    pub from: f64,
    #[arg(long, value_parser = parse_rate)]
    pub to: f64,
    #[arg(long, value_parser = parse_rate)]
    pub step: f64,
    #[arg(long, default_value = "5s", value_parser = wsedge::values::duration)]
    pub step_duration: Duration,
    /// p99 latency a step must stay under to pass (e.g. 1ms).
    #[arg(long, value_parser = wsedge::values::duration)]
    pub slo_p99: Option<Duration>,
    /// Report this server's CPU time per step (share of a core, µs per upgrade): it
    /// tells a saturated server from a saturated load generator.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// Runs the subcommand.
pub fn run(args: RampArgs) -> anyhow::Result<()> {
    let RampArgs {
        common,
        spread,
        from,
        to,
        step,
        step_duration,
        slo_p99,
        server_pid,
    } = args;
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
        let met =
            report.errors_total() == 0 && slo_p99.is_none_or(|slo| p99 <= slo.as_micros() as u64);
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
    Ok(())
}
