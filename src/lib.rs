//! ssegate: a real-time gateway. Services publish events; browsers receive the events they
//! may see over Server-Sent Events; nothing acknowledged is lost.
//!
//! # Layout
//!
//! The layers, from the floor up; a module imports only from layers below it (nothing of the
//! hub, the sources, HTTP or the whole configuration reaches the log).
//!
//! - Leaves: [`channel`] (channel names and grant patterns: `*`, trailing `**`, `{sub}`),
//!   [`retry`] (backoff with jitter, cancellable sleep, poison-tolerant lock), [`time`],
//!   [`throttle`] (rate-limited logging for failures that repeat during an outage),
//!   [`logfmt`] (the text log format, where no field can be forged).
//! - [`event`]: what a valid event is — the one gate every producer passes.
//! - [`log`]: the ordered, durable, retained event log — the single source of truth — with
//!   its own configuration ([`log::config`]) and its backends: `memory`, `file` (embedded,
//!   on disk), `redis` (Redis Streams) and `nats` (NATS JetStream), the last two shared by
//!   several nodes.
//! - [`hub`]: tails the log and fans each event out to the local connections; a connection is
//!   a cursor on the log that falls back to reading the log when it cannot keep up.
//! - [`source`]: watchers inside the gateway that turn database changes and messages into
//!   events (PostgreSQL, MongoDB, Redis, NATS, Dapr), with checkpoints.
//! - [`config`]: the whole configuration (TOML file, `SSEGATE_*` environment, flags), made of
//!   each layer's own part, and its defaults.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`auth`]: who a request is (JWT, JWKS, publisher keys, forward-auth) and what it may
//!   subscribe to, publish, administer.
//! - [`limits`]: connection caps (sockets, streams) and rate limits.
//! - [`http`]: the HTTP API (axum) and the accept loop: deadlines and caps on every
//!   connection, stream, publish, subscriptions, long-poll, admin, status.
//! - [`server`]: wires the pieces together and runs until told to stop.
//! - `demo` and `main.rs`: the `ssegate` command.

pub mod auth;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod event;
pub mod http;
pub mod hub;
pub mod limits;
pub mod log;
pub mod logfmt;
pub mod mercure;
pub mod metrics;
pub mod retry;
pub mod server;
pub mod source;
pub mod throttle;
pub mod time;

/// Names ring as rustls' process-wide crypto provider (once; later calls do nothing).
/// rustls is built here with two providers — ring, and aws-lc-rs through
/// pgwire-replication's tokio-rustls — so clients that ask rustls for the process default
/// (async-nats' and redis' TLS) would find none. Called by everything that may open a TLS
/// client: the `ssegate` command, the logs and the sources.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
