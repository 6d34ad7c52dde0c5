//! `wsedge-loadgen merge`: Merges --hdr-log files of several processes or machines into one report.

use super::*;

/// Merges --hdr-log files of several processes or machines into one report.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Interval logs written with --hdr-log (or by any HdrHistogram tool).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub plot: PlotArgs,
    /// Write the merged run as one interval log.
    #[arg(long, value_name = "FILE")]
    pub hdr_log: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    let MergeArgs {
        files,
        json,
        plot,
        hdr_log,
    } = args;
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
    Ok(())
}
