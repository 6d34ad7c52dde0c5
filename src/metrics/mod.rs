//! `--metrics ADDR`: `GET /metrics` in the Prometheus text format and `GET /healthz`.
//!
//! A scrape reads the reactors' relaxed atomic counters on its own thread and sums them:
//! it never takes a lock the reactors take, so scraping cannot slow them down.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::handshake::Answer;
use crate::policy::{Live, Shutdown, ShutdownState};
use crate::proxy::health::{Failure, UpstreamStatus};
use crate::stats::{Counters, TlsFailure, TlsHandshake, EVENT_FAMILIES, HANDSHAKE_BUCKETS_MS};

/// The server's metrics, read at scrape time from every reactor's counters.
pub struct ServerMetrics {
    counters: Vec<Arc<Counters>>,
    shutdown: Arc<Shutdown>,
    /// The settings now: the upstreams and their health.
    live: Arc<Live>,
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMetrics")
            .field("reactors", &self.counters.len())
            .finish()
    }
}

type Field = fn(&Counters) -> &std::sync::atomic::AtomicU64;

impl Collector for ServerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, field) in EVENT_FAMILIES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (index, counters) in self.counters.iter().enumerate() {
                let labels = [("reactor", index.to_string())];
                ConstCounter::new(field(&counters.events).load(Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let gauges: [(&str, &str, Field); 3] = [
            (
                "wsedge_open_connections",
                "Connections held (upgraded, handshaking, closing).",
                |c| &c.open,
            ),
            (
                "wsedge_handshaking_connections",
                "Handshakes in progress.",
                |c| &c.handshaking,
            ),
            (
                "wsedge_upstream_waiting_clients",
                "Proxy mode: clients waiting at the edge for an upstream with room.",
                |c| &c.upstream_waiting,
            ),
        ];
        for (name, help, field) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (index, counters) in self.counters.iter().enumerate() {
                let labels = [("reactor", index.to_string())];
                ConstGauge::new(field(counters).load(Relaxed) as i64)
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "wsedge_rejections",
            "Handshakes refused, by status and reason (all reactors).",
            None,
            MetricType::Counter,
        )?;
        for kind in Answer::KINDS {
            let total: u64 = self
                .counters
                .iter()
                .map(|c| c.rejections[kind.kind_index()].load(Relaxed))
                .sum();
            if total > 0 {
                let labels = [
                    ("status", kind.status().code().to_string()),
                    ("reason", kind.reason().to_string()),
                ];
                ConstCounter::new(total).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "wsedge_tls_handshakes",
            "TLS handshakes completed, by version and whether a session was resumed.",
            None,
            MetricType::Counter,
        )?;
        for (tls13, resumed) in [(false, false), (false, true), (true, false), (true, true)] {
            let index = TlsHandshake { tls13, resumed }.index();
            let total: u64 = self
                .counters
                .iter()
                .map(|c| c.tls_handshakes[index].load(Relaxed))
                .sum();
            let labels = [
                ("version", if tls13 { "1.3" } else { "1.2" }.to_string()),
                ("resumed", resumed.to_string()),
            ];
            ConstCounter::new(total).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "wsedge_tls_handshake_failures",
            "TLS handshakes that failed, by reason (the alert sent, or the client's).",
            None,
            MetricType::Counter,
        )?;
        for (index, failure) in TlsFailure::ALL.iter().enumerate() {
            let total: u64 = self
                .counters
                .iter()
                .map(|c| c.tls_failures[index].load(Relaxed))
                .sum();
            let labels = [("reason", failure.label().to_string())];
            ConstCounter::new(total).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "wsedge_proxy_protocol_refused",
            "Connections refused for their PROXY header (--accept-proxy-protocol): from a \
             sender outside --proxy-protocol-from, or with a missing or malformed header.",
            None,
            MetricType::Counter,
        )?;
        for (index, reason) in crate::stats::PROXY_PROTOCOL_REASONS.iter().enumerate() {
            let total: u64 = self
                .counters
                .iter()
                .map(|c| c.proxy_protocol_refused[index].load(Relaxed))
                .sum();
            let labels = [("reason", reason.to_string())];
            ConstCounter::new(total).encode(family.encode_family(&labels)?)?;
        }
        let mut histogram = encoder.encode_descriptor(
            "wsedge_handshake_latency_seconds",
            "Accept to 101 written, per reactor (the reactor clock ticks in ms); \
             sum by (le) for the whole server.",
            None,
            MetricType::Histogram,
        )?;
        for (reactor, counters) in self.counters.iter().enumerate() {
            // The encoder accumulates: it takes each bucket's own count.
            let mut total = 0;
            let mut buckets = Vec::with_capacity(HANDSHAKE_BUCKETS_MS.len() + 1);
            for (index, bound) in HANDSHAKE_BUCKETS_MS
                .iter()
                .map(|&ms| ms as f64 / 1000.0)
                .chain([f64::INFINITY])
                .enumerate()
            {
                let count = counters.handshake_ms[index].load(Relaxed);
                total += count;
                buckets.push((bound, count));
            }
            let sum = counters.handshake_ms_sum.load(Relaxed) as f64 / 1000.0;
            let labels = [("reactor", reactor.to_string())];
            histogram
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, total, &buckets, None,
                )?;
        }
        let draining = self.shutdown.state() != ShutdownState::Running;
        let family = encoder.encode_descriptor(
            "wsedge_draining",
            "1 while draining.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(draining)).encode(family)?;
        self.encode_upstreams(&mut encoder)
    }
}

/// Reads one per-upstream gauge.
type UpstreamGauge = fn(&crate::proxy::Upstream, &UpstreamStatus) -> i64;

impl ServerMetrics {
    /// Proxy mode: each upstream's state, live connections, failures and last check.
    fn encode_upstreams(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let settings = self.live.current();
        let upstreams = &settings.conn.proxy.upstreams;
        if upstreams.is_empty() {
            return Ok(());
        }
        let health = self.live.health();
        let statuses: Vec<_> = upstreams.iter().map(|u| health.status(u.addr)).collect();
        let label = |u: &crate::proxy::Upstream| ("upstream", u.addr.to_string());
        let gauges: [(&str, &str, UpstreamGauge); 6] = [
            (
                "wsedge_upstream_up",
                "1 while the upstream is in rotation (health checks pass).",
                |_, status| i64::from(status.is_up()),
            ),
            (
                "wsedge_upstream_draining",
                "1 while the upstream is marked drain.",
                |u, _| i64::from(u.drain),
            ),
            (
                "wsedge_upstream_connections",
                "Relayed connections to the upstream now (all reactors).",
                |_, status| i64::from(status.live()),
            ),
            (
                "wsedge_upstream_pending_upgrades",
                "Upgrades forwarded to the upstream and not answered yet (all reactors).",
                |_, status| i64::from(status.pending().0),
            ),
            (
                "wsedge_upstream_pending_limit",
                "How many upgrades the upstream may have pending (--upstream-max-pending; \
                 with auto, what was found), all reactors.",
                |_, status| i64::from(status.pending().1),
            ),
            (
                "wsedge_upstream_health_check_seconds",
                "How long the upstream's last active health check took.",
                |_, status| status.last_check_micros() as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (upstream, status) in upstreams.iter().zip(&statuses) {
                let labels = [label(upstream)];
                let gauge_family = family.encode_family(&labels)?;
                let value = value(upstream, status);
                if name.ends_with("_seconds") {
                    ConstGauge::new(value as f64 / 1e6).encode(gauge_family)?;
                } else {
                    ConstGauge::new(value).encode(gauge_family)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "wsedge_upstream_failures",
            "Failures by kind: clients' connections refused, timed out or answered with an \
             invalid 101, and failed health checks.",
            None,
            MetricType::Counter,
        )?;
        for (upstream, status) in upstreams.iter().zip(&statuses) {
            for kind in Failure::ALL {
                let labels = [label(upstream), ("kind", kind.label().to_string())];
                ConstCounter::new(status.failures(kind)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "wsedge_upstream_health_checks_passed",
            "Active health checks passed.",
            None,
            MetricType::Counter,
        )?;
        for (upstream, status) in upstreams.iter().zip(&statuses) {
            ConstCounter::new(status.checks_passed())
                .encode(family.encode_family(&[label(upstream)])?)?;
        }
        Ok(())
    }
}

mod door;

pub use door::serve;

/// `GET /healthz`: 200 while serving, 503 while draining, and in proxy mode 503 "degraded"
/// when no upstream is up (or there is none) or fewer than `--healthz-min-upstreams-up`
/// percent of them are (the body says how many are): an edge that could only answer 502
/// or 503 is taken out of its balancer's rotation.
fn health(metrics: &ServerMetrics, shutdown: &Shutdown) -> (&'static str, &'static str, String) {
    const UNAVAILABLE: &str = "503 Service Unavailable";
    if shutdown.state() != ShutdownState::Running {
        return (UNAVAILABLE, "text/plain", "draining\n".into());
    }
    let settings = metrics.live.current();
    let proxy = &settings.conn.proxy;
    if settings.conn.after != crate::conn::AfterUpgrade::Proxy {
        return ("200 OK", "text/plain", "ok\n".into());
    }
    let (up, of) = proxy.upstreams_up(metrics.live.health());
    let degraded = up == 0 || up * 100 < usize::from(proxy.healthz_min_up_percent) * of;
    match degraded {
        true => (
            UNAVAILABLE,
            "text/plain",
            format!("degraded: {up} of {of} upstreams up\n"),
        ),
        false => (
            "200 OK",
            "text/plain",
            format!("ok: {up} of {of} upstreams up\n"),
        ),
    }
}

/// The answer to `GET path`: status, content type and body.
fn respond(
    path: &str,
    metrics: &Arc<ServerMetrics>,
    shutdown: &Shutdown,
) -> io::Result<(&'static str, &'static str, String)> {
    Ok(match path {
        "/metrics" => {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(Arc::clone(metrics)));
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry)
                .map_err(io::Error::other)?;
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        }
        "/healthz" => health(metrics, shutdown),
        _ => (
            "404 Not Found",
            "text/plain",
            "GET /metrics or /healthz\n".into(),
        ),
    })
}
