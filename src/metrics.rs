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
        Self {
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

    /// Shows the hub's counters (read at scrape time).
    pub fn register_hub(&mut self, hub: Arc<crate::hub::Hub>) {
        self.registry
            .register_collector(Box::new(HubCollector { hub }));
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&vec![("reason", reason)])
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
        let counters: [(&str, &str, u64); 7] = [
            (
                "connections_opened",
                "Streams opened",
                s.connections_opened.load(Ordering::Relaxed),
            ),
            (
                "events_dispatched",
                "Events read from the log by the dispatcher",
                s.events_dispatched.load(Ordering::Relaxed),
            ),
            (
                "frames_queued",
                "Event frames queued for connections (live deliveries)",
                s.frames_queued.load(Ordering::Relaxed),
            ),
            (
                "queue_overflows",
                "Times a connection's queue was full and it switched to reading the log",
                s.queue_overflows.load(Ordering::Relaxed),
            ),
            (
                "gaps",
                "gap events sent (retention dropped what a client asked for)",
                s.gaps.load(Ordering::Relaxed),
            ),
            (
                "log_read_failures",
                "Failed reads of the log by the dispatcher",
                s.log_read_failures.load(Ordering::Relaxed),
            ),
            (
                "log_recoveries",
                "Times the dispatcher could read the log again after failing",
                s.log_recoveries.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
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
                "1 while the dispatcher reads the log, 0 while it cannot",
                i64::from(s.log_up.load(Ordering::Relaxed)),
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}
