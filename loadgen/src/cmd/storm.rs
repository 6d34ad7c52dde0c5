//! `wsedge-loadgen storm`: Closed loop: C connections in flight, each upgrade verified, closed, replaced.

use super::*;

/// Closed loop: C connections in flight, each upgrade verified, closed, replaced.
#[derive(Debug, Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub spread: Spread,
    /// Connections in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub concurrency: u64,
}

/// Runs the subcommand.
pub fn run(args: StormArgs) -> anyhow::Result<()> {
    let StormArgs {
        common,
        spread,
        concurrency,
    } = args;
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
    Ok(())
}
