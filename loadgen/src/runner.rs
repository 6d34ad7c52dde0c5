//! Running a measurement: worker threads in this process (their intervals collected into
//! the log as they close), or copies of this process (`--processes`) merged from their logs.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use crate::engine::{self, Plan, Progress};
use crate::hdrlog::{self, LogWriter};
use crate::report::Report;
use crate::{collect, merge, processes, start_at};

/// What one measurement gave.
pub struct Outcome {
    pub report: Report,
    pub elapsed: Duration,
    pub established_after: Option<Duration>,
    /// Per-interval figures, when the run was merged from logs (`--processes`).
    pub intervals: Option<Vec<merge::IntervalFigures>>,
}

/// The `--hdr-log` of a command, opened when its first run starts (after `--start-at`); a
/// ramp writes all its steps into it.
pub struct LogSlot {
    path: Option<PathBuf>,
    writer: Option<LogWriter>,
}

impl LogSlot {
    pub fn new(path: Option<PathBuf>) -> Self {
        LogSlot { path, writer: None }
    }

    /// The writer and the offset in the log of a run starting at `wall`, opening the log
    /// if this is the first run.
    fn open(&mut self, wall: SystemTime) -> anyhow::Result<Option<(&mut LogWriter, Duration)>> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        if self.writer.is_none() {
            self.writer = Some(LogWriter::create(path, wall)?);
        }
        Ok(self.writer.as_mut().map(|w| {
            let offset = wall.duration_since(w.start()).unwrap_or_default();
            (w, offset)
        }))
    }

    pub fn finish(self, total: Duration) -> anyhow::Result<()> {
        match self.writer {
            Some(writer) => writer.finish(total),
            None => Ok(()),
        }
    }
}

/// What a measurement takes from the command line, and nothing of clap: the binary's CLI
/// fills it in (`--threads`, `--processes`, `--hdr-log`, `--start-at`, `--count`).
#[derive(Debug, Clone, Default)]
pub struct RunSettings {
    /// Worker threads in this process.
    pub threads: usize,
    /// Processes the load is spread over (1: this one only).
    pub processes: u64,
    /// Where the interval log goes.
    pub hdr_log: Option<PathBuf>,
    /// When to begin, on the wall clock.
    pub start_at: Option<SystemTime>,
    /// Progress as machine lines on stderr (a child of `--processes`).
    pub report_progress: bool,
    /// Connections to start in all, if bounded.
    pub count: Option<u64>,
    /// CPUs the workers are pinned to, worker i to the i-th (cycling); empty: none.
    pub pin: Vec<usize>,
}

/// How long intervals of `--hdr-log` are.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Runs `plan` in this process, or spread over `--processes` copies of it (`child_args` gives
/// copy i of n its subcommand and share), starting at `start_at` if given.
pub fn measure(
    run: &RunSettings,
    plan: &Plan,
    share_total: usize,
    start_at: Option<SystemTime>,
    log: &mut LogSlot,
    child_args: impl Fn(u64, u64) -> Vec<OsString>,
) -> anyhow::Result<Outcome> {
    let processes = run.processes;
    if processes <= 1 {
        if let Some(at) = start_at {
            if let Ok(ahead) = at.duration_since(SystemTime::now()) {
                eprintln!("waiting {:.1} s for --start-at", ahead.as_secs_f64());
            }
            start_at::wait_until(at);
        }
        return execute(run, plan, share_total, log);
    }
    // Children need a moment to start; a shared instant lines their intervals up.
    let start = start_at.unwrap_or_else(|| SystemTime::now() + Duration::from_millis(300));
    let children = (0..processes).map(|i| child_args(i, processes)).collect();
    let begun = log
        .open(start)?
        .map(|(writer, _)| hdrlog::epoch_secs(writer.start()));
    let logs = processes::run(children, start)?;
    let first = logs.iter().map(|l| l.start).fold(f64::INFINITY, f64::min);
    let base = begun.map(|begun| first - begun);
    let merged = merge::merge(&logs, |offset, length, report| {
        match (log.writer.as_mut(), base) {
            (Some(writer), Some(base)) => writer.interval(
                Duration::from_secs_f64((base + offset).max(0.0)),
                Duration::from_secs_f64(length),
                report,
            ),
            _ => Ok(()),
        }
    })?;
    Ok(Outcome {
        report: merged.report,
        elapsed: Duration::from_secs_f64(merged.duration.max(1e-6)),
        established_after: None,
        intervals: Some(merged.intervals),
    })
}

/// One measurement with its own `--hdr-log`, starting at `--start-at`: every subcommand but
/// `ramp` (whose steps share one log).
pub fn measure_once(
    run: &RunSettings,
    plan: &Plan,
    share_total: usize,
    child_args: impl Fn(u64, u64) -> Vec<OsString>,
) -> anyhow::Result<Outcome> {
    let mut log = LogSlot::new(run.hdr_log.clone());
    let outcome = measure(run, plan, share_total, run.start_at, &mut log, child_args)?;
    log.finish(outcome.elapsed)?;
    Ok(outcome)
}

/// Runs `plan` on the worker threads, printing progress each second; merges their reports.
fn execute(
    run: &RunSettings,
    plan: &Plan,
    share_total: usize,
    log: &mut LogSlot,
) -> anyhow::Result<Outcome> {
    let threads = run.threads;
    let progress = Arc::new(Progress::default());
    let start = Instant::now();
    let (sender, intervals) = std::sync::mpsc::channel();
    let mut collector = log
        .open(SystemTime::now())?
        .map(|(writer, base)| collect::Collector::new(writer, base, LOG_INTERVAL, threads));
    let sink = collector.as_ref().map(|_| engine::IntervalSink {
        origin: start,
        length: LOG_INTERVAL,
        sender,
    });
    let mut handles = Vec::with_capacity(threads);
    for index in 0..threads {
        let mut plan = plan.clone();
        plan.intervals = sink.clone();
        plan.count = run
            .count
            .map(|c| c / threads as u64 + u64::from((index as u64) < c % threads as u64));
        let share = share_total / threads + usize::from(index < share_total % threads);
        let progress = Arc::clone(&progress);
        let cpu = (!run.pin.is_empty()).then(|| run.pin[index % run.pin.len()]);
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                            return Err(std::io::Error::other(format!(
                                "--pin: cannot pin worker {index} to CPU {cpu}"
                            )));
                        }
                    }
                    engine::run(&plan, share.max(1), index, &progress)
                })?,
        );
    }
    drop(sink);
    let interactive = std::io::stderr().is_terminal() && !run.report_progress;
    let every = match run.report_progress {
        true => Duration::from_millis(200),
        false => Duration::from_secs(1),
    };
    let mut last = (Instant::now(), 0u64);
    loop {
        let finished: Vec<bool> = handles.iter().map(|h| h.is_finished()).collect();
        if let Some(collector) = collector.as_mut() {
            while let Ok(interval) = intervals.try_recv() {
                collector.take(interval);
            }
            collector.write_ready(&finished)?;
        }
        if finished.iter().all(|&f| f) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if last.0.elapsed() < every {
            continue;
        }
        let ok = progress.ok.load(Relaxed);
        let (errors, in_flight, held) = (
            progress.errors.load(Relaxed),
            progress.in_flight.load(Relaxed),
            progress.established.load(Relaxed),
        );
        if run.report_progress {
            eprintln!("@progress {ok} {errors} {in_flight} {held}");
        } else {
            let rate = (ok - last.1) as f64 / last.0.elapsed().as_secs_f64();
            let line = format!(
                "{:>5.1}s  {:>9.0} upgrades/s  ok {:>9}  errors {:>7}  in flight {:>6}  held {:>6}",
                start.elapsed().as_secs_f64(),
                rate,
                ok,
                errors,
                in_flight,
                held
            );
            if interactive {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
        }
        last = (Instant::now(), ok);
    }
    if interactive {
        eprintln!();
    }
    let elapsed = start.elapsed();
    let mut total = Report::default();
    let mut established_after = None;
    for handle in handles {
        let result = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?
            .context("worker event loop")?;
        total.merge(&result.report);
        established_after = established_after.max(result.established_after);
    }
    if let Some(mut collector) = collector {
        while let Ok(interval) = intervals.try_recv() {
            collector.take(interval);
        }
        collector.finish(elapsed)?;
    }
    Ok(Outcome {
        report: total,
        elapsed,
        established_after,
        intervals: None,
    })
}

/// The subcommand and share of the load that copy `index` of `n` runs (`--processes`); a
/// `--count` is shared out (the CLI has checked that it is at least `n`).
pub fn child_command(
    subcommand: &str,
    count: Option<u64>,
    index: u64,
    n: u64,
    duration: Duration,
    share: &[(&str, String)],
) -> Vec<OsString> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let mut args: Vec<OsString> = vec![subcommand.into()];
    args.extend(processes::shared_args(&argv));
    args.push("--duration".into());
    args.push(format!("{}us", duration.as_micros()).into());
    if let Some(count) = count {
        args.push("--count".into());
        args.push(processes::share(count, n, index).to_string().into());
    }
    for (flag, value) in share {
        args.push((*flag).into());
        args.push(value.into());
    }
    args
}
