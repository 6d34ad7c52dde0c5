//! `wsedge-loadgen hold`: Establish N upgraded connections and hold them.

use super::*;

/// Establish N upgraded connections and hold them.
#[derive(Debug, Args)]
pub struct HoldArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub connections: u64,
    /// Establishment rate (default: as fast as possible).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    #[arg(long, default_value = "30s", value_parser = wsedge::values::duration)]
    pub hold: Duration,
    #[arg(long, value_parser = wsedge::values::duration)]
    pub ping_interval: Option<Duration>,
    /// Sample this server's RSS to report bytes per held connection.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// Runs the subcommand.
pub fn run(args: HoldArgs, fd_limit: u64) -> anyhow::Result<()> {
    let HoldArgs {
        common,
        connections,
        rate,
        hold,
        ping_interval,
        server_pid,
    } = args;
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
    println!(
        "  established {established} of {connections} in {establish_secs:.2} s, held {:.1} s",
        hold.as_secs_f64()
    );
    if let Some(bytes) = per_conn {
        println!("  server RSS grew {bytes:.0} bytes per held connection");
    }
    let extra = json!({ "connections": connections, "established": established, "establish_secs": establish_secs, "server_rss_bytes_per_conn": per_conn });
    print_json(common.json, &report, elapsed, extra);
    Ok(())
}
