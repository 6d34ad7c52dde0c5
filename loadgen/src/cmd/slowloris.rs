//! `wsedge-loadgen slowloris`: Clients that trickle the handshake; measures how long the server takes to cut them off.

use super::*;

/// Clients that trickle the handshake; measures how long the server takes to cut them off.
#[derive(Debug, Args)]
pub struct SlowlorisArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub connections: u64,
    #[arg(long, default_value = "200ms", value_parser = wsedge::values::duration)]
    pub byte_interval: Duration,
}

/// Runs the subcommand.
pub fn run(args: SlowlorisArgs) -> anyhow::Result<()> {
    let SlowlorisArgs {
        common,
        connections,
        byte_interval,
    } = args;
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
    let extra = json!({ "connections": connections, "cut_off": report.cutoff.len(), "never_cut": report.never_cut, "cutoff_us": report::percentiles(&report.cutoff) });
    print_json(common.json, &report, elapsed, extra);
    Ok(())
}
