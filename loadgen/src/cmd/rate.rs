//! `wsedge-loadgen rate`: Open loop at a fixed arrival rate; latency from each intended start time.

use super::*;

/// Open loop at a fixed arrival rate; latency from each intended start time.
#[derive(Debug, Args)]
pub struct RateArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub spread: Spread,
    /// New connections per second.
    #[arg(long, value_parser = parse_rate)]
    pub rate: f64,
}

/// Runs the subcommand.
pub fn run(args: RateArgs) -> anyhow::Result<()> {
    let RateArgs {
        common,
        spread,
        rate,
    } = args;
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
    Ok(())
}
