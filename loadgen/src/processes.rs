//! `--processes N`: the run split over N copies of this program, each with its own event
//! loops and its own interval log, started at one instant, shown as one progress line and
//! merged at the end from the logs (the same path as `merge`).

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};

use crate::hdrlog::{self, RunLog};

/// Flags of the parent's command line that children do not take as written: the parent
/// keeps them (logs, plots, output) or hands each child its share. `true`: takes a value.
const PARENT_ONLY: &[(&str, bool)] = &[
    ("--processes", true),
    ("--hdr-log", true),
    ("--plot", true),
    ("--json", false),
    ("--start-at", true),
    ("--count", true),
    ("--duration", true),
    ("--concurrency", true),
    ("--rate", true),
    ("--from", true),
    ("--to", true),
    ("--step", true),
    ("--step-duration", true),
    ("--slo-p99", true),
    ("--clients", true),
    ("--server-pid", true),
];

/// The parent's arguments after the subcommand, less the flags of [`PARENT_ONLY`]: the
/// target and everything about how each connection behaves.
pub fn shared_args(argv: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut args = argv.iter().skip(2);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        let name = text.split('=').next().unwrap_or("");
        match PARENT_ONLY.iter().find(|(flag, _)| *flag == name) {
            Some((_, true)) if !text.contains('=') => {
                args.next();
            }
            Some(_) => {}
            None => out.push(arg.clone()),
        }
    }
    out
}

/// Splits `total` into `n` shares that differ by at most one.
pub fn share(total: u64, n: u64, index: u64) -> u64 {
    total / n + u64::from(index < total % n)
}

/// Live counters of one child, from its `@progress` lines.
#[derive(Debug, Default, Clone, Copy)]
struct ChildProgress {
    ok: u64,
    errors: u64,
    in_flight: u64,
    held: u64,
}

/// Runs one child per argument list, all starting at `start`, prints one progress line for
/// all, and returns their logs.
pub fn run(children: Vec<Vec<OsString>>, start: SystemTime) -> anyhow::Result<Vec<RunLog>> {
    let program = std::env::current_exe().context("finding this program to start its copies")?;
    let dir = scratch_dir()?;
    let result = run_in(&program, &dir, children, start);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(
    program: &std::path::Path,
    dir: &std::path::Path,
    children: Vec<Vec<OsString>>,
    start: SystemTime,
) -> anyhow::Result<Vec<RunLog>> {
    let count = children.len();
    let progress = Arc::new(Mutex::new(vec![ChildProgress::default(); count]));
    let mut running: Vec<(Child, PathBuf, std::thread::JoinHandle<Vec<String>>)> = Vec::new();
    let start_arg = format!("@{:.6}", hdrlog::epoch_secs(start));
    for (index, args) in children.into_iter().enumerate() {
        let log = dir.join(format!("process-{index}.hlog"));
        let spawned = Command::new(program)
            .args(args)
            .arg("--hdr-log")
            .arg(&log)
            .args(["--start-at", &start_arg, "--report-progress"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                stop_all(&mut running);
                return Err(error).context("starting a load process");
            }
        };
        let Some(stderr) = child.stderr.take() else {
            stop_all(&mut running);
            bail!("a load process has no stderr");
        };
        let progress = Arc::clone(&progress);
        let reader = std::thread::spawn(move || read_child(index, stderr, &progress));
        running.push((child, log, reader));
    }
    let begun = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    while running.iter().any(|(_, _, reader)| !reader.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        if last.0.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let sum = progress
            .lock()
            .map(|all| {
                all.iter()
                    .fold(ChildProgress::default(), |a, p| ChildProgress {
                        ok: a.ok + p.ok,
                        errors: a.errors + p.errors,
                        in_flight: a.in_flight + p.in_flight,
                        held: a.held + p.held,
                    })
            })
            .unwrap_or_default();
        let rate = (sum.ok.saturating_sub(last.1)) as f64 / last.0.elapsed().as_secs_f64();
        let line = format!(
            "{:>5.1}s  {:>9.0} upgrades/s  ok {:>9}  errors {:>7}  in flight {:>6}  held {:>6}  ({count} processes)",
            begun.elapsed().as_secs_f64(),
            rate,
            sum.ok,
            sum.errors,
            sum.in_flight,
            sum.held
        );
        if interactive {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
        last = (Instant::now(), sum.ok);
    }
    if interactive {
        eprintln!();
    }
    let mut logs = Vec::with_capacity(count);
    let mut failures = Vec::new();
    for (index, (mut child, log, reader)) in running.into_iter().enumerate() {
        let status = child.wait().context("waiting for a load process")?;
        let said = reader.join().unwrap_or_default();
        if !status.success() {
            failures.push(format!("process {index} ({status}): {}", said.join(" / ")));
            continue;
        }
        logs.push(hdrlog::read(&log)?);
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(logs)
}

/// Reads a child's stderr: `@progress` lines update its counters; the last other lines are
/// kept to explain a failure.
fn read_child(
    index: usize,
    stderr: std::process::ChildStderr,
    progress: &Mutex<Vec<ChildProgress>>,
) -> Vec<String> {
    let mut said = std::collections::VecDeque::new();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix("@progress ") {
            let numbers: Vec<u64> = rest.split(' ').filter_map(|n| n.parse().ok()).collect();
            if let (&[ok, errors, in_flight, held], Ok(mut all)) = (&numbers[..], progress.lock()) {
                all[index] = ChildProgress {
                    ok,
                    errors,
                    in_flight,
                    held,
                };
            }
            continue;
        }
        if said.len() == 8 {
            said.pop_front();
        }
        said.push_back(line);
    }
    said.into()
}

fn stop_all(running: &mut [(Child, PathBuf, std::thread::JoinHandle<Vec<String>>)]) {
    for (child, _, _) in running {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "wsedge-loadgen-{}-{}",
        std::process::id(),
        hdrlog::epoch_secs(SystemTime::now()) as u64
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn children_keep_the_target_and_connection_flags_only() {
        let argv = args(
            "loadgen ramp ws://127.0.0.1:1/ --processes 2 --from=100 --to 200 --step 50 \
             --header X:1 --json --hdr-log a.hlog --plot=p.svg --threads 2 --slo-p99 1ms",
        );
        assert_eq!(
            shared_args(&argv),
            args("ws://127.0.0.1:1/ --header X:1 --threads 2")
        );
    }

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        assert_eq!(
            (0..3).map(|i| share(10, 3, i)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!((0..4).map(|i| share(2, 4, i)).sum::<u64>(), 2);
    }
}
