//! Load past one process and one machine, and reports people read: interval logs written
//! and read back, several logs merged into one run, `--start-at`, `--processes`, plots.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use wsedge::conn::AfterUpgrade;

mod support;
use support::{loadgen, read_log, scratch, total_of, wsedge};

/// A storm of `count` upgrades against `url`, logged to `log`; the run's JSON.
fn logged_storm(url: &str, count: u32, log: &Path, extra: &[&str]) -> Value {
    let count = count.to_string();
    let log = log.to_string_lossy();
    let mut args = vec![
        "storm",
        url,
        "--count",
        &count,
        "--concurrency",
        "8",
        "--duration",
        "60s",
        "--hdr-log",
        &log,
        "--json",
    ];
    args.extend(extra);
    let (code, stdout, stderr, json) = loadgen(&args);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    json.expect("JSON last line")
}

fn merged(files: &[&Path], extra: &[&str]) -> Value {
    let names: Vec<String> = files.iter().map(|f| f.to_string_lossy().into()).collect();
    let mut args = vec!["merge"];
    args.extend(names.iter().map(String::as_str));
    args.extend(extra);
    args.push("--json");
    let (code, stdout, stderr, json) = loadgen(&args);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    json.expect("JSON last line")
}

/// The percentiles loadgen prints, computed from a histogram read with another reader.
fn percentiles(histogram: &hdrhistogram::Histogram<u64>) -> Value {
    serde_json::json!({
        "p50": histogram.value_at_quantile(0.5),
        "p90": histogram.value_at_quantile(0.9),
        "p99": histogram.value_at_quantile(0.99),
        "p99_9": histogram.value_at_quantile(0.999),
        "max": histogram.max(),
    })
}

#[test]
fn a_log_written_by_loadgen_is_read_back_unchanged() {
    let server = wsedge(AfterUpgrade::Close, 10_000);
    let url = format!("ws://{}/", server.local_addrs()[0]);
    let log = scratch("read-back.hlog");
    let run = logged_storm(&url, 400, &log, &["--threads", "2"]);
    assert_eq!(run["ok"], 400);

    // The standard format: the hdrhistogram crate's reader finds every upgrade and the
    // same percentiles the run printed.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("#[StartTime: "), "{text}");
    assert!(
        text.contains("\"StartTimestamp\",\"Interval_Length\""),
        "{text}"
    );
    let lines = read_log(&log);
    let total = total_of(&lines);
    assert_eq!(total.len(), 400);
    assert_eq!(percentiles(&total), run["latency_us"]);

    // And `merge` of that one log is the run again, phase by phase.
    let again = merged(&[&log], &[]);
    let _ = std::fs::remove_file(&log);
    for key in [
        "ok",
        "errors",
        "errors_total",
        "unfinished",
        "latency_us",
        "connect_latency_us",
        "handshake_latency_us",
        "tls_latency_us",
    ] {
        assert_eq!(again[key], run[key], "{key}");
    }
    let ok: u64 = again["intervals"]
        .as_array()
        .expect("intervals")
        .iter()
        .map(|i| i["ok"].as_u64().unwrap())
        .sum();
    assert_eq!(ok, 400, "the intervals hold every upgrade");
}

#[test]
fn merging_logs_gives_exactly_the_histogram_of_their_union() {
    let server = wsedge(AfterUpgrade::Close, 10_000);
    let url = format!("ws://{}/", server.local_addrs()[0]);
    let (a, b, refused, out) = (
        scratch("union-a.hlog"),
        scratch("union-b.hlog"),
        scratch("union-refused.hlog"),
        scratch("union-merged.hlog"),
    );
    let run_a = logged_storm(&url, 300, &a, &[]);
    let run_b = logged_storm(&url, 500, &b, &["--close", "fin"]);
    // A third run that only fails: its errors are summed by kind.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("ws://{}/", closed.local_addr().unwrap());
    drop(closed);
    let run_refused = logged_storm(&dead, 50, &refused, &[]);
    assert_eq!(run_refused["errors"]["connect_refused"], 50);

    let out_text = out.to_string_lossy().into_owned();
    let merged_run = merged(&[&a, &b, &refused], &["--hdr-log", &out_text]);
    let mut union = total_of(&read_log(&a));
    union.add(total_of(&read_log(&b))).unwrap();
    assert_eq!(union.len(), 800);
    assert_eq!(merged_run["ok"], 800);
    assert_eq!(merged_run["latency_us"], percentiles(&union));
    assert_eq!(merged_run["errors"]["connect_refused"], 50);
    assert_eq!(merged_run["errors_total"], 50);
    assert_eq!(
        run_a["ok"].as_u64().unwrap() + run_b["ok"].as_u64().unwrap(),
        800
    );
    // The merged log is itself a standard log of the union.
    let written = total_of(&read_log(&out));
    assert_eq!(written.len(), 800);
    assert_eq!(percentiles(&written), percentiles(&union));
    assert_eq!(merged(&[&out], &[])["errors"]["connect_refused"], 50);
    for file in [a, b, refused, out] {
        let _ = std::fs::remove_file(file);
    }
}

#[test]
fn merge_refuses_what_is_not_a_log() {
    let junk = scratch("junk.hlog");
    std::fs::write(&junk, "this is not,an interval log\n").unwrap();
    let junk_text = junk.to_string_lossy().into_owned();
    let (code, _, stderr, _) = loadgen(&["merge", &junk_text]);
    let _ = std::fs::remove_file(&junk);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("not an HdrHistogram interval log"),
        "{stderr}"
    );
    let (code, _, stderr, _) = loadgen(&["merge", "/nonexistent/run.hlog"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/run.hlog"), "{stderr}");
    let (code, _, stderr, _) = loadgen(&["merge"]);
    assert_eq!(code, 2, "a merge of nothing is a usage error: {stderr}");
}

#[test]
fn start_at_waits_for_the_wall_clock_and_starts_on_time() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let start = SystemTime::now() + Duration::from_millis(2500);
    let start_text = format!(
        "@{:.3}",
        start.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
    );
    let accepted = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("the run connects");
        drop(stream);
        SystemTime::now()
    });
    let launched = Instant::now();
    let (_, stdout, stderr, json) = loadgen(&[
        "storm",
        &url,
        "--count",
        "1",
        "--concurrency",
        "1",
        "--start-at",
        &start_text,
        "--json",
    ]);
    let first_connect = accepted.join().unwrap();
    assert!(json.is_some(), "{stdout}\n{stderr}");
    assert!(stderr.contains("waiting"), "{stderr}");
    // Not before the time (the start text is rounded to the millisecond)...
    let early = start
        .duration_since(first_connect)
        .unwrap_or(Duration::ZERO);
    assert!(early <= Duration::from_millis(2), "{early:?} early");
    // ...and soon after it, however slow the machine.
    let late = first_connect.duration_since(start).unwrap_or_default();
    assert!(late < Duration::from_secs(2), "{late:?} late");
    assert!(launched.elapsed() >= Duration::from_secs(2));

    // A time already gone, or one that is not a time, is a usage error naming the flag.
    for bad in ["1000000000", "2020-01-01T00:00:00Z", "noon"] {
        let (code, _, stderr, _) = loadgen(&["storm", &url, "--start-at", bad]);
        assert_eq!(code, 2, "{bad}: {stderr}");
        assert!(stderr.contains("--start-at"), "{bad}: {stderr}");
    }
}

#[test]
fn processes_split_the_run_and_count_every_upgrade_once() {
    let server = wsedge(AfterUpgrade::Close, 10_000);
    let url = format!("ws://{}/", server.local_addrs()[0]);
    let log = scratch("processes.hlog");
    let log_text = log.to_string_lossy().into_owned();
    let (code, stdout, stderr, json) = loadgen(&[
        "storm",
        &url,
        "--processes",
        "2",
        "--count",
        "601",
        "--concurrency",
        "8",
        "--duration",
        "60s",
        "--hdr-log",
        &log_text,
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let json = json.expect("JSON last line");
    assert_eq!(json["ok"], 601, "{stdout}");
    assert_eq!(json["errors_total"], 0, "{stdout}");
    assert_eq!(json["processes"], 2);
    assert_eq!(
        server.stats().upgraded,
        601,
        "the server saw each upgrade once"
    );
    assert!(stdout.contains("per interval:"), "{stdout}");
    // One progress line for all, not one per process.
    assert!(
        stderr
            .lines()
            .all(|l| !l.contains("upgrades/s") || l.contains("(2 processes)")),
        "{stderr}"
    );
    assert!(!stderr.contains("@progress"), "{stderr}");
    // The parent's log is the merged run.
    assert_eq!(total_of(&read_log(&log)).len(), 601);
    let _ = std::fs::remove_file(&log);

    // A share of nothing is refused before anything starts.
    let (code, _, stderr, _) = loadgen(&["storm", &url, "--processes", "4", "--concurrency", "2"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--processes"), "{stderr}");
}

#[test]
fn rate_and_ramp_spread_over_processes() {
    let server = wsedge(AfterUpgrade::Close, 10_000);
    let url = format!("ws://{}/", server.local_addrs()[0]);
    let (code, stdout, stderr, json) = loadgen(&[
        "rate",
        &url,
        "--processes",
        "2",
        "--rate",
        "400",
        "--duration",
        "2s",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let rate_json = json.unwrap();
    let ok = rate_json["ok"].as_u64().unwrap();
    // 800 intended; each process ends its own run, so allow for a few cut short.
    assert!((760..=800).contains(&ok), "{stdout}");
    assert_eq!(rate_json["rate"], 400.0);
    let (code, stdout, stderr, json) = loadgen(&[
        "ramp",
        &url,
        "--processes",
        "2",
        "--from",
        "200",
        "--to",
        "400",
        "--step",
        "200",
        "--step-duration",
        "1s",
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let steps = json.unwrap()["steps"].as_array().unwrap().clone();
    assert_eq!(steps.len(), 2);
    let step_ok: Vec<u64> = steps.iter().map(|s| s["ok"].as_u64().unwrap()).collect();
    assert!((180..=200).contains(&step_ok[0]), "{steps:?}");
    assert!((380..=400).contains(&step_ok[1]), "{steps:?}");
    // An open loop ends with handshakes in flight: the server may have answered some of
    // them ("unfinished" on the client), so it counts at least every verified upgrade and
    // at most those too.
    let counted = ok + step_ok.iter().sum::<u64>();
    let unfinished = rate_json["unfinished"].as_u64().unwrap()
        + steps
            .iter()
            .map(|s| s["unfinished"].as_u64().unwrap())
            .sum::<u64>();
    let upgraded = server.stats().upgraded;
    assert!(
        (counted..=counted + unfinished).contains(&upgraded),
        "server {upgraded}, verified {counted}, unfinished {unfinished}: none counted twice"
    );
}

/// The SVG's text, after checking it is well-formed XML with an svg root.
fn svg_texts(path: &Path) -> (Vec<String>, usize) {
    let text = std::fs::read_to_string(path).expect("the plot was written");
    let document = roxmltree::Document::parse(&text).expect("the plot is XML");
    assert_eq!(document.root_element().tag_name().name(), "svg");
    let texts = document
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(str::to_owned))
        .collect();
    let lines = document
        .descendants()
        .filter(|n| n.has_tag_name("polyline") || n.has_tag_name("path"))
        .count();
    (texts, lines)
}

fn has(texts: &[String], wanted: &str) -> bool {
    texts.iter().any(|t| t.contains(wanted))
}

#[test]
fn plots_are_svg_with_their_series_axes_and_marks() {
    let server = wsedge(AfterUpgrade::Close, 10_000);
    let url = format!("ws://{}/", server.local_addrs()[0]);

    // ramp: p50, p99 and p99.9 against the offered rate, the SLO line, the knee.
    let ramp_svg = scratch("ramp.svg");
    let ramp_text = ramp_svg.to_string_lossy().into_owned();
    // The server is this test process: --server-pid reads its CPU time per step.
    let me = std::process::id().to_string();
    let (code, stdout, stderr, json) = loadgen(&[
        "ramp",
        &url,
        "--from",
        "100",
        "--to",
        "300",
        "--step",
        "100",
        "--step-duration",
        "1s",
        "--slo-p99",
        "10s",
        "--plot",
        &ramp_text,
        "--plot-title",
        "wsedge ramp",
        "--server-pid",
        &me,
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("highest rate meeting the SLO: 300/s"),
        "{stdout}"
    );
    assert!(stdout.contains("% of a core"), "{stdout}");
    for step in json.unwrap()["steps"].as_array().unwrap() {
        let share = step["server_cpu_share"].as_f64().expect("CPU share");
        assert!((0.0..4.0).contains(&share), "{step}");
        assert!(
            step["server_cpu_us_per_upgrade"].as_f64().is_some(),
            "{step}"
        );
    }
    let (texts, lines) = svg_texts(&ramp_svg);
    for wanted in [
        "wsedge ramp",
        "p50",
        "p99",
        "p99.9",
        "SLO: p99 under 10.00 s",
        "knee 300/s",
        "offered rate (upgrades/s)",
        "latency (",
        "server CPU (% of one core)",
        "server CPU (right axis)",
    ] {
        assert!(has(&texts, wanted), "{wanted} in {texts:?}");
    }
    assert!(lines >= 3, "three latency lines at least");

    let (code, _, stderr, _) = loadgen(&[
        "ramp",
        &url,
        "--from",
        "100",
        "--to",
        "100",
        "--step",
        "100",
        "--server-pid",
        "4294967295",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--server-pid 4294967295: no such process"),
        "{stderr}"
    );

    // storm: the percentile distribution of each phase, percentiles on the x axis.
    let storm_svg = scratch("storm.svg");
    let storm_text = storm_svg.to_string_lossy().into_owned();
    let log = scratch("plotted.hlog");
    logged_storm(&url, 300, &log, &["--plot", &storm_text]);
    let (texts, _) = svg_texts(&storm_svg);
    for wanted in [
        "total",
        "connect",
        "handshake",
        "percentile",
        "90%",
        "99%",
        "storm 127.0.0.1",
    ] {
        assert!(has(&texts, wanted), "{wanted} in {texts:?}");
    }
    assert!(!has(&texts, "tls"), "no TLS line for ws:// ({texts:?})");

    // merge: the same picture of the merged run.
    let merge_svg = scratch("merge.svg");
    let merge_text = merge_svg.to_string_lossy().into_owned();
    merged(&[&log], &["--plot", &merge_text]);
    let (texts, _) = svg_texts(&merge_svg);
    assert!(
        has(&texts, "merge of 1 logs") && has(&texts, "total"),
        "{texts:?}"
    );

    // plot-compare: one bar per contender in each of the two panels.
    let rows = scratch("rows.json");
    std::fs::write(
        &rows,
        r#"[{"name":"wsedge","upgrades_per_sec":30000,"cpu_us_per_upgrade":24.5},
            {"name":"nginx","upgrades_per_sec":18000,"cpu_us_per_upgrade":41.0}]"#,
    )
    .unwrap();
    let bars_svg = scratch("bars.svg");
    let (rows_text, bars_text) = (
        rows.to_string_lossy().into_owned(),
        bars_svg.to_string_lossy().into_owned(),
    );
    let (code, _, stderr, _) = loadgen(&["plot-compare", &rows_text, "--plot", &bars_text]);
    assert_eq!(code, 0, "{stderr}");
    let (texts, _) = svg_texts(&bars_svg);
    for wanted in [
        "wsedge: 24.5 µs",
        "nginx: 41.0 µs",
        "wsedge: 30000/s",
        "server CPU per upgrade (µs)",
        "upgrades per second",
    ] {
        assert!(has(&texts, wanted), "{wanted} in {texts:?}");
    }
    std::fs::write(&rows, r#"[{"name":"wsedge"}]"#).unwrap();
    let (code, _, stderr, _) = loadgen(&["plot-compare", &rows_text, "--plot", &bars_text]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cpu_us_per_upgrade"), "{stderr}");
    for file in [ramp_svg, storm_svg, merge_svg, bars_svg, log, rows] {
        let _ = std::fs::remove_file(file);
    }
}
