//! ssegate: a real-time gateway. Services publish events; browsers receive the events they
//! may see over Server-Sent Events; nothing acknowledged is lost.
//!
//! # Layout
//!
//! - [`config`]: the configuration (TOML file, `SSEGATE_*` environment, flags) and its defaults.
//! - [`channel`]: channel names and grant patterns (`*`, trailing `**`, `{sub}`).
//! - [`log`]: the ordered, durable, retained event log — the single source of truth — and its
//!   backends (`memory`, `file`).
//! - [`hub`]: tails the log and fans each event out to the local connections; a connection is
//!   a cursor on the log that falls back to reading the log when it cannot keep up.
//! - [`auth`]: who a request is (JWT, JWKS, publisher keys, forward-auth) and what it may
//!   subscribe to, publish, administer.
//! - [`limits`]: connection limits and rate limits.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`http`]: the HTTP API (axum): stream, publish, subscriptions, long-poll, status.
//! - [`server`]: wires the pieces together and runs until told to stop.
//! - [`source`]: watchers inside the gateway that turn database changes and messages into
//!   events (PostgreSQL, MongoDB, Redis, NATS, Dapr), with checkpoints.
//! - [`throttle`]: rate-limited logging for failures that repeat during an outage.

pub mod auth;
pub mod channel;
pub mod config;
pub mod event;
pub mod http;
pub mod hub;
pub mod limits;
pub mod log;
pub mod logfmt;
pub mod metrics;
pub mod retry;
pub mod server;
pub mod source;
pub mod throttle;
pub mod time;
