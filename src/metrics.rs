//! Prometheus metrics: one registry per gateway, rendered by `GET /metrics`.
//!
//! Labels are low-cardinality only (a reason, a limit, a result) — never a channel or a user.
//! Counters owned here are incremented where things happen; values other modules already
//! keep (hub counters, forward-auth state) are read at scrape time.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    /// Refused credentials, by reason (`missing_credentials`, `invalid_token`, …).
    pub auth_failures: Family<Labels, Counter>,
    /// Requests refused by a limit, by limit (`connections_per_user`, `publish_rate`, …).
    pub rate_limited: Family<Labels, Counter>,
    /// 1 while the forward-auth service answers (or none is configured), else 0.
    pub forward_auth_up: Gauge,
    /// Forward-auth calls, by result (`ok`, `refused`, `unavailable`).
    pub forward_auth_calls: Family<Labels, Counter>,
    /// JWKS documents fetched.
    pub jwks_fetches: Counter,
    /// Events appended through this node's publish API (duplicates not counted).
    pub events_published: Counter,
    /// Open TCP connections of any kind (streams, requests, idle keep-alive).
    pub open_connections: Gauge,
    /// Connections closed at accept by a cap, by cap (`total`, `per_ip`).
    pub connections_refused: Family<Labels, Counter>,
    /// Connections or requests cut by a deadline, by deadline (`head`, `body`, `idle`).
    pub timeouts: Family<Labels, Counter>,
    /// The cluster control path's (see [`crate::cluster`]).
    pub cluster: ClusterMetrics,
}

/// The cluster control path's metrics.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics {
    /// Live nodes this node knows, itself included.
    pub nodes: Gauge,
    /// 1 while this node hears the bus (its own heartbeats come back).
    pub listening: Gauge,
    /// Control messages sent and received.
    pub messages_sent: Counter,
    pub messages_received: Counter,
    /// Control messages dropped unsent (the bus too slow or down).
    pub messages_dropped: Counter,
    /// Nodes that did not answer a request in time (one per node and request).
    pub unanswered: Counter,
}

impl ClusterMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "cluster_nodes",
            "Live nodes of the cluster this node knows (itself included; 1 on single-node logs)",
            self.nodes.clone(),
        );
        registry.register(
            "cluster_listening",
            "1 while this node hears the cluster bus (its own heartbeats come back; always 1 on single-node logs)",
            self.listening.clone(),
        );
        registry.register(
            "cluster_messages_sent",
            "Cluster control messages published by this node",
            self.messages_sent.clone(),
        );
        registry.register(
            "cluster_messages_received",
            "Cluster control messages received from other nodes",
            self.messages_received.clone(),
        );
        registry.register(
            "cluster_messages_dropped",
            "Cluster control messages dropped unsent (the engine too slow or unreachable)",
            self.messages_dropped.clone(),
        );
        registry.register(
            "cluster_requests_unanswered",
            "Cluster-wide requests a live node did not answer in time (one per node)",
            self.unanswered.clone(),
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ssegate");
        let auth_failures = Family::<Labels, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused for their credentials, by reason",
            auth_failures.clone(),
        );
        let rate_limited = Family::<Labels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a connection or rate limit, by limit",
            rate_limited.clone(),
        );
        let forward_auth_up = Gauge::default();
        forward_auth_up.set(1);
        registry.register(
            "forward_auth_up",
            "1 while the forward-auth service answers (or none is configured)",
            forward_auth_up.clone(),
        );
        let forward_auth_calls = Family::<Labels, Counter>::default();
        registry.register(
            "forward_auth_calls",
            "Calls to the forward-auth service, by result",
            forward_auth_calls.clone(),
        );
        let jwks_fetches = Counter::default();
        registry.register(
            "jwks_fetches",
            "JWKS documents fetched",
            jwks_fetches.clone(),
        );
        let events_published = Counter::default();
        registry.register(
            "events_published",
            "Events appended through this node's publish API (idempotent repeats not counted)",
            events_published.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Open TCP connections of any kind (streams, requests, idle keep-alive)",
            open_connections.clone(),
        );
        let connections_refused = Family::<Labels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept by limits.max_open_connections (cap=total) or max_open_connections_per_ip (cap=per_ip)",
            connections_refused.clone(),
        );
        let timeouts = Family::<Labels, Counter>::default();
        registry.register(
            "timeouts",
            "Connections or requests cut by a deadline, by deadline (head, body, idle)",
            timeouts.clone(),
        );
        let cluster = ClusterMetrics::default();
        cluster.nodes.set(1);
        cluster.listening.set(1);
        cluster.register(&mut registry);
        Self {
            cluster,
            open_connections,
            connections_refused,
            timeouts,
            events_published,
            registry,
            auth_failures,
            rate_limited,
            forward_auth_up,
            forward_auth_calls,
            jwks_fetches,
        }
    }
}

impl Metrics {
    /// Registers more metrics (other modules' own).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Shows the hub's counters (read at scrape time) and its latency histogram.
    pub fn register_hub(&mut self, hub: Arc<crate::hub::Hub>) {
        self.registry.register_with_unit(
            "delivery_latency",
            "Time from publish to live dispatch to this node's connections, per event",
            prometheus_client::registry::Unit::Seconds,
            hub.stats.delivery_latency.clone(),
        );
        self.registry
            .register_collector(Box::new(HubCollector { hub }));
    }

    /// Shows the sources' state (read at scrape time).
    pub fn register_sources(&mut self, sources: Arc<crate::source::Sources>) {
        self.registry
            .register_collector(Box::new(SourcesCollector { sources }));
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    pub fn timed_out(&self, deadline: &'static str) {
        self.timeouts
            .get_or_create(&vec![("deadline", deadline)])
            .inc();
    }

    pub fn limited(&self, limit: &'static str) {
        self.rate_limited
            .get_or_create(&vec![("limit", limit)])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The hub's own counters and gauges, read on each scrape.
#[derive(Debug)]
struct HubCollector {
    hub: Arc<crate::hub::Hub>,
}

impl Collector for HubCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.hub.stats;
        let log = self.hub.log().health();
        for (name, help, value) in s.counters() {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        if let Some(f) = log.file {
            encode_file_stats(&f, &mut encoder)?;
        }
        let gauges: [(&str, &str, i64); 3] = [
            (
                "connections",
                "Open streams on this node",
                self.hub.connection_count() as i64,
            ),
            (
                "channels",
                "Channels and patterns subscribed to on this node",
                self.hub.channel_count() as i64,
            ),
            (
                "log_up",
                "1 while the log answers and can append, 0 while it cannot",
                i64::from(s.log_up.load(Ordering::Relaxed) && log.cannot_append.is_none()),
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        // The process, from /proc (Linux): what the open-files limit and memory alerts need.
        let rss = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            })
            .map(|kb| kb * 1024);
        let fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as i64);
        let limit = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse::<i64>().ok())
            });
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory of the process",
                rss,
            ),
            (
                "process_open_fds",
                "Open file descriptors (sockets included)",
                fds,
            ),
            (
                "process_max_fds",
                "The open-files limit of the process",
                limit,
            ),
        ] {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        let closed = s.closed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut family = encoder.encode_descriptor(
            "connections_closed",
            "Streams closed, by reason (client_gone: the client went away)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, n) in closed {
            let labels = [("reason", reason)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The file log's counters and gauges.
fn encode_file_stats(
    f: &crate::log::FileStats,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let counters = [
        (
            "log_commits",
            "Group commits of the file log (one write each)",
            f.commits,
        ),
        ("log_syncs", "fdatasync calls of the file log", f.syncs),
        (
            "log_torn_bytes",
            "Bytes of a torn tail (an interrupted write) cut from the file log at start",
            f.torn_bytes,
        ),
    ];
    for (name, help, value) in counters {
        let c = ConstCounter::new(value);
        c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
    }
    let mut family = encoder.encode_descriptor(
        "log_append_failures",
        "Group commits the file log could not write, by reason (full: no space left)",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (reason, n) in [
        ("full", f.append_failures_full),
        ("io", f.append_failures_io),
    ] {
        ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
    }
    let gauges = [
        (
            "log_damaged_events",
            "Events of the file log known damaged (never delivered; see `ssegate log check`)",
            f.damaged_events as i64,
        ),
        (
            "log_disk_bytes",
            "Bytes of the file log's segment files",
            f.disk_bytes as i64,
        ),
    ];
    for (name, help, value) in gauges {
        let g = ConstGauge::new(value);
        g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
    }
    Ok(())
}

/// The sources' state and progress, read on each scrape (labelled by source name: a handful,
/// from the configuration).
struct SourcesCollector {
    sources: Arc<crate::source::Sources>,
}

impl std::fmt::Debug for SourcesCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourcesCollector").finish_non_exhaustive()
    }
}

impl Collector for SourcesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = crate::time::now_ms();
        let rows: Vec<_> = self.sources.each().collect();
        {
            let mut up = encoder.encode_descriptor(
                "source_running",
                "1 while the source runs, 0 when stopped, failed or backing off",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (name, kind, status) in &rows {
                let labels = [
                    ("source", *name),
                    ("type", *kind),
                    ("state", status.state()),
                ];
                ConstGauge::new(i64::from(status.state() == "running"))
                    .encode(up.encode_family(&labels)?)?;
            }
        }
        {
            let mut events = encoder.encode_descriptor(
                "source_events",
                "Events appended by the source",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (name, _, status) in &rows {
                let labels = [("source", *name)];
                ConstCounter::new(status.events.load(Ordering::Relaxed))
                    .encode(events.encode_family(&labels)?)?;
            }
        }
        {
            let mut skipped = encoder.encode_descriptor(
                "source_skipped",
                "Changes skipped because no valid channel could be built from them",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (name, _, status) in &rows {
                let labels = [("source", *name)];
                ConstCounter::new(status.skipped.load(Ordering::Relaxed))
                    .encode(skipped.encode_family(&labels)?)?;
            }
        }
        let mut age = encoder.encode_descriptor(
            "source_last_change_age_seconds",
            "Seconds since the source last appended a change (its lag when changes keep coming)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (name, _, status) in &rows {
            let last = status.last_change_ms.load(Ordering::Relaxed);
            if last > 0 {
                let labels = [("source", *name)];
                ConstGauge::new(now.saturating_sub(last) as f64 / 1000.0)
                    .encode(age.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
