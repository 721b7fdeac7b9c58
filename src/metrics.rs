//! Prometheus metrics: one registry per gateway, rendered by `GET /metrics`.
//!
//! Labels are low-cardinality only (a reason, a limit, a result) — never a channel or a user.
//! Counters owned here are incremented where things happen; values other modules already
//! keep (hub counters, forward-auth state) are read at scrape time.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
