//! The configuration: a TOML file, overridden by `SSEGATE_<SECTION>__<KEY>` environment
//! variables, overridden by command-line flags.
//!
//! ```
//! let cfg = ssegate::config::Config::from_toml_str("[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
//! assert_eq!(cfg.server.listen, "127.0.0.1:0");
//! ```
//!
//! Every table denies unknown keys, so a typo is an error that names the key instead of a
//! setting silently ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors while loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration; each section is a TOML table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub stream: StreamConfig,
    pub cors: CorsConfig,
    /// The Mercure hub protocol (`[mercure]`).
    pub mercure: crate::mercure::config::MercureConfig,
    /// Watchers that turn database changes and messages into events (`[[sources]]`).
    pub sources: Vec<crate::source::SourceConfig>,
    /// How the nodes of a Redis or NATS cluster find and steer each other (`[cluster]`).
    pub cluster: ClusterConfig,
    /// Who is connected to a channel (`[presence]`).
    pub presence: PresenceConfig,
}

/// The cluster control path (Redis / NATS logs only; see docs/cluster.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Each node announces itself this often.
    pub heartbeat_ms: u64,
    /// A node not heard from for this long is gone (its presence is dropped).
    pub node_timeout_ms: u64,
    /// How long a cluster-wide action waits for the other nodes' answers.
    pub request_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: 1_000,
            node_timeout_ms: 3_000,
            request_timeout_ms: 2_000,
        }
    }
}

/// Presence: `GET /v1/channels/{channel}/presence` always works (it asks every node);
/// `events` names the channels whose subscribers also get `presence.join` / `presence.leave`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Channel patterns (`chat:*`); empty: no presence events, and no cost per connection.
    pub events: Vec<String>,
}

/// Cross-origin access for browser apps on other origins.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins (`https://app.example.com`) whose pages may call the API with credentials
    /// (cookies, `Authorization`). `"*"` lets any origin call it, never with credentials.
    /// Empty: no cross-origin access.
    pub allowed_origins: Vec<String>,
    /// How long browsers may cache a preflight answer, in seconds.
    pub max_age_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP API listens on; port 0 picks a free port.
    pub listen: String,
    /// Directory for the embedded file log and the development signing key.
    pub data_dir: PathBuf,
    /// How long a shutdown may take: streams are closed, in-flight publishes finish, and
    /// whatever is still open when this runs out is cut.
    pub shutdown_grace_ms: u64,
    /// This node's name in `/v1/status`; defaults to the host name and port.
    pub node_id: Option<String>,
    /// Peers (reverse proxies, load balancers) whose `X-Forwarded-For` is believed: the
    /// client address is then the last address in it that is not one of these. Nobody else
    /// can choose the address the per-IP limits count.
    /// Addresses or CIDR ranges (`10.0.0.0/8`, `fd00::/8`, `127.0.0.1`).
    pub trusted_proxies: Vec<Cidr>,
    /// PEM certificate chain; with `tls_key_file`, the listener speaks TLS (HTTP/2 and
    /// HTTP/1.1 by ALPN). Reloaded on SIGHUP and when the file changes.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// A separate plain-HTTP listener for `/metrics` (and `/healthz`, `/readyz`), e.g. on an
    /// internal interface; `/metrics` stays on the main listener too.
    pub metrics_listen: Option<String>,
    /// On drain (SIGTERM or `POST /v1/admin/drain`), streams get `closing` spread evenly over
    /// this window (at most half of `shutdown_grace_ms`), so a fleet of clients does not
    /// reconnect elsewhere all at once.
    pub drain_window_ms: u64,
    /// Log format on stderr: `pretty` (for people) or `json` (one object per line).
    pub log_format: LogFormat,
    /// How long a new connection may take to send its first request head (and to finish a
    /// TLS handshake); then it is closed.
    pub head_timeout_ms: u64,
    /// How long a request body may take to arrive in full; then `408 body_timeout`.
    pub body_timeout_ms: u64,
    /// How long a connection that is not streaming may sit between requests (HTTP/1.1
    /// keep-alive, or HTTP/2 with no open request) — including the time a later request's
    /// head takes to arrive; then it is closed.
    pub idle_timeout_ms: u64,
}

/// An address range: an IP address and a prefix length (`10.0.0.0/8`); a bare address is a
/// range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let (a, b, bits) = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32u32),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128u32),
            (IpAddr::V6(a), IpAddr::V4(b)) => match a.to_ipv4_mapped() {
                Some(a) => (u32::from(a) as u128, u32::from(b) as u128, 32u32),
                None => return false,
            },
            (IpAddr::V4(_), IpAddr::V6(b)) => match b.to_ipv4_mapped() {
                Some(b) => return self.contains(IpAddr::V4(b)),
                None => return false,
            },
        };
        let prefix = u32::from(self.prefix).min(bits);
        let shift = bits - prefix;
        shift >= 128 || (a >> shift) == (b >> shift)
    }
}

/// Why a `trusted_proxies` entry is not a CIDR range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or CIDR range")]
    Address(String),
    #[error("{text:?}: the prefix length must be 0 to {max}")]
    Prefix { text: String, max: u8 },
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError::Address(s.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::Prefix {
                    text: s.to_owned(),
                    max,
                })?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./ssegate-data"),
            shutdown_grace_ms: 10_000,
            node_id: None,
            trusted_proxies: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
            metrics_listen: None,
            drain_window_ms: 5_000,
            log_format: LogFormat::Pretty,
            head_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 30_000,
        }
    }
}

pub use crate::log::config::{Backend as LogBackend, LogConfig, LogKind};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256/384/512 shared secret that signs client and publisher tokens.
    pub jwt_secret: Option<String>,
    /// Algorithms accepted with `jwt_secret` (an allow-list; `none` is never accepted).
    pub jwt_secret_algorithms: Vec<String>,
    /// PEM public key (RSA, EC P-256/P-384 or Ed25519) that verifies tokens.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Algorithms accepted with `jwt_public_key_file`; empty = those of the key's type
    /// (RSA: RS256/384/512 and PS256/384/512; EC P-256: ES256; P-384: ES384; Ed25519: EdDSA).
    pub jwt_public_key_algorithms: Vec<String>,
    /// JWKS document of an identity provider; keys are chosen by `kid`.
    pub jwks_url: Option<String>,
    /// Algorithms JWKS keys may verify; empty = those of each key's type (or its `alg`).
    pub jwks_algorithms: Vec<String>,
    /// How long fetched JWKS keys are used before they are fetched again.
    pub jwks_cache_s: u64,
    /// A token with an unknown `kid` triggers a refetch at most this often.
    pub jwks_min_refresh_interval_ms: u64,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// Name of the cookie that may carry the token.
    pub cookie_name: String,
    /// Whether `?access_token=` is accepted (tokens in URLs end up in access logs).
    pub allow_query_token: bool,
    /// Forward-auth: the app's endpoint that turns its own session (the request's `Cookie`
    /// and `Authorization` headers) into `{"user", "subscribe", "ttl_s"}`.
    pub forward_url: Option<String>,
    /// Forward-auth calls fail (closed) after this long.
    pub forward_timeout_ms: u64,
    /// Longest a forward-auth answer is cached, whatever `ttl_s` it asks for.
    pub forward_max_ttl_s: u64,
    /// Most cached forward-auth answers.
    pub forward_cache_entries: usize,
    /// Grants derived from token claims, added to those of the `ssegate` claim, so tokens an
    /// identity provider already issues work unchanged.
    pub grants: GrantRules,
    /// Static keys for backend publishers, presented as `Authorization: Bearer <key>`.
    pub publisher_keys: Vec<PublisherKeyConfig>,
}

/// A publisher key: the config holds the SHA-256 of the key, never the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherKeyConfig {
    /// Who publishes with it (the principal's name in logs and limits).
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// Channel patterns it may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Whether it may use the admin API.
    #[serde(default)]
    pub admin: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_secret_algorithms: vec!["HS256".into(), "HS384".into(), "HS512".into()],
            jwt_public_key_file: None,
            jwt_public_key_algorithms: Vec::new(),
            jwks_url: None,
            jwks_algorithms: Vec::new(),
            jwks_cache_s: 300,
            jwks_min_refresh_interval_ms: 10_000,
            issuer: None,
            audience: None,
            leeway_s: 5,
            cookie_name: "ssegate_token".into(),
            allow_query_token: true,
            forward_url: None,
            forward_timeout_ms: 2_000,
            forward_max_ttl_s: 300,
            forward_cache_entries: 10_000,
            grants: GrantRules::default(),
            publisher_keys: Vec::new(),
        }
    }
}

/// Grant templates: `{sub}` is the user, `{claims.NAME}` a claim of the token (string or
/// number; a template whose claim is missing or of another type grants nothing).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrantRules {
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest encoded event (the JSON envelope) a publisher may send; larger is `413`.
    pub max_event_bytes: usize,
    /// Most events in one publish request.
    pub max_batch_events: usize,
    /// Most channels one connection may subscribe to; more is `400`.
    pub max_channels_per_connection: usize,
    /// Most open streams on this node; more is `429`.
    pub max_connections: usize,
    /// Most open streams of one user on this node.
    pub max_connections_per_user: usize,
    /// Most open streams from one client address on this node.
    pub max_connections_per_ip: usize,
    /// New streams (and long-polls) per second from one client address, sustained…
    pub connect_rate_per_ip: f64,
    /// …and in a burst.
    pub connect_burst_per_ip: u32,
    /// Events per second one publisher may append, sustained (0 = no limit)…
    pub publish_rate: f64,
    /// …and in a burst (at least `max_batch_events`, so any valid batch can pass).
    pub publish_burst: u32,
    /// Most open connections of any kind (streams, publishes, polls, idle keep-alive) on
    /// this node; connections over it are closed at once. 0: derived from the process's
    /// open-file limit, keeping room for the log, the engines and the sources.
    pub max_open_connections: usize,
    /// Most open connections of any kind from one peer address, and never more than half of
    /// `max_open_connections`, so one address cannot take the node. Trusted proxies
    /// (`server.trusted_proxies`) count only toward the node's total.
    pub max_open_connections_per_ip: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: crate::event::DEFAULT_MAX_EVENT_BYTES,
            max_batch_events: 1_000,
            max_channels_per_connection: 100,
            max_connections: 100_000,
            max_connections_per_user: 50,
            max_connections_per_ip: 1_000,
            connect_rate_per_ip: 20.0,
            connect_burst_per_ip: 100,
            publish_rate: 50_000.0,
            publish_burst: 100_000,
            max_open_connections: 0,
            max_open_connections_per_ip: 1_100,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// A comment line is sent after this long without other traffic.
    pub heartbeat_ms: u64,
    /// The `retry:` a client waits before reconnecting.
    pub retry_ms: u64,
    /// Frames queued per connection before it falls back to reading the log itself.
    pub queue_frames: usize,
    /// Events read from the log per step while a connection replays or catches up.
    pub catchup_batch: usize,
    /// Longest `timeout_ms` a long-poll may ask for.
    pub max_poll_timeout_ms: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: 15_000,
            retry_ms: 2_000,
            queue_frames: 1_024,
            catchup_batch: 512,
            max_poll_timeout_ms: 60_000,
        }
    }
}

/// Environment variables that override the file start with this prefix.
pub const ENV_PREFIX: &str = "SSEGATE_";

impl Config {
    /// Parses a TOML document (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| parse_error("", e))?;
        Self::from_table(table, "")
    }

    /// Loads the file (if any), then applies `SSEGATE_<SECTION>__<KEY>` variables from `vars`.
    pub fn load(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (mut table, origin) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let origin = format!(" in {}", path.display());
                let table: toml::Table =
                    toml::from_str(&text).map_err(|e| parse_error(&origin, e))?;
                (table, origin)
            }
            None => (toml::Table::new(), String::new()),
        };
        apply_env(&mut table, vars)?;
        Self::from_table(table, &origin)
    }

    fn from_table(table: toml::Table, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| parse_error(origin, e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.stream.heartbeat_ms == 0 {
            return bad("stream.heartbeat_ms must be greater than 0");
        }
        if self.stream.queue_frames == 0 || self.stream.catchup_batch == 0 {
            return bad("stream.queue_frames and stream.catchup_batch must be greater than 0");
        }
        if self.limits.max_event_bytes < 64 {
            return bad("limits.max_event_bytes must be at least 64");
        }
        if self.limits.max_channels_per_connection == 0 || self.limits.max_batch_events == 0 {
            return bad(
                "limits.max_channels_per_connection and limits.max_batch_events must be greater than 0",
            );
        }
        let s = &self.server;
        if s.head_timeout_ms == 0 || s.body_timeout_ms == 0 || s.idle_timeout_ms == 0 {
            return bad("server.head_timeout_ms, body_timeout_ms and idle_timeout_ms must be greater than 0");
        }
        if self.limits.max_open_connections_per_ip == 0 {
            return bad("limits.max_open_connections_per_ip must be greater than 0");
        }
        if self.server.tls_cert_file.is_some() != self.server.tls_key_file.is_some() {
            return bad("server.tls_cert_file and server.tls_key_file go together");
        }
        let mut names = std::collections::HashSet::new();
        for source in &self.sources {
            source
                .validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if !names.insert(&source.name) {
                return Err(ConfigError::Invalid(format!(
                    "two sources are named {:?}",
                    source.name
                )));
            }
        }
        let l = &self.limits;
        if l.max_connections == 0
            || l.max_connections_per_user == 0
            || l.max_connections_per_ip == 0
        {
            return bad("limits.max_connections, max_connections_per_user and max_connections_per_ip must be greater than 0");
        }
        if !(l.connect_rate_per_ip > 0.0 && l.connect_rate_per_ip.is_finite())
            || l.connect_burst_per_ip == 0
        {
            return bad(
                "limits.connect_rate_per_ip and limits.connect_burst_per_ip must be greater than 0",
            );
        }
        if !(l.publish_rate >= 0.0 && l.publish_rate.is_finite()) {
            return bad("limits.publish_rate must be 0 (no limit) or more");
        }
        if l.publish_rate > 0.0 && (l.publish_burst as usize) < l.max_batch_events {
            return bad("limits.publish_burst must be at least limits.max_batch_events, or a full batch could never pass");
        }
        for origin in &self.cors.allowed_origins {
            let ok = origin == "*"
                || ((origin.starts_with("https://") || origin.starts_with("http://"))
                    && !origin.ends_with('/')
                    && axum::http::HeaderValue::from_str(origin).is_ok());
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "cors.allowed_origins: {origin:?} is not an origin like \"https://app.example.com\" (scheme and host, no path) or \"*\""
                )));
            }
        }
        let c = &self.cluster;
        if c.heartbeat_ms == 0 || c.request_timeout_ms == 0 {
            return bad(
                "cluster.heartbeat_ms and cluster.request_timeout_ms must be greater than 0",
            );
        }
        if c.node_timeout_ms < 2 * c.heartbeat_ms {
            return bad("cluster.node_timeout_ms must be at least twice cluster.heartbeat_ms, or live nodes would be taken for gone");
        }
        for p in &self.presence.events {
            crate::channel::validate_subscription(p)
                .map_err(|e| ConfigError::Invalid(format!("presence.events: {p:?}: {e}")))?;
        }
        if let Some(secret) = &self.auth.jwt_secret {
            if secret.len() < 16 {
                return bad("auth.jwt_secret must be at least 16 bytes long");
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, with the secret masked.
    /// Every secret is masked: values of keys named `*secret`, `*password` or `*_token`
    /// (the JWT secret, a Kafka SASL password, the Dapr app token) and the password in a
    /// `scheme://user:password@host` URL (Redis, NATS, PostgreSQL, MongoDB).
    pub fn to_toml_masked(&self) -> String {
        let mut shown = match toml::Value::try_from(self) {
            Ok(v) => v,
            Err(e) => return format!("# cannot render: {e}\n"),
        };
        mask_secrets(&mut shown, None);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

const MASK: &str = "****************";

fn mask_secrets(value: &mut toml::Value, key: Option<&str>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                mask_secrets(v, Some(k));
            }
        }
        toml::Value::Array(items) => {
            for v in items {
                mask_secrets(v, key);
            }
        }
        toml::Value::String(s) => {
            let secret_key = key.is_some_and(|k| {
                k.ends_with("secret") || k.ends_with("password") || k.ends_with("_token")
            });
            if secret_key {
                *s = MASK.to_owned();
            } else if let Some(masked) = mask_url_password(s) {
                *s = masked;
            }
        }
        _ => {}
    }
}

/// `scheme://user:password@rest` with the password masked, for each comma-separated URL.
fn mask_url_password(text: &str) -> Option<String> {
    let mut changed = false;
    let parts: Vec<String> = text
        .split(',')
        .map(|url| {
            let masked = (|| {
                let (scheme, rest) = url.split_once("://")?;
                let (userinfo, host) = rest.split_once('@')?;
                if userinfo.contains('/') {
                    return None;
                }
                let (user, _) = userinfo.split_once(':')?;
                Some(format!("{scheme}://{user}:{MASK}@{host}"))
            })();
            changed |= masked.is_some();
            masked.unwrap_or_else(|| url.to_owned())
        })
        .collect();
    changed.then(|| parts.join(","))
}

fn parse_error(origin: &str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Parse {
        origin: origin.to_owned(),
        message: e.to_string().trim().to_owned(),
    }
}

/// Sets `table[section][key]` for every `SSEGATE_SECTION__KEY=value`; values are read as TOML
/// (numbers, booleans, arrays) and fall back to plain strings.
fn apply_env(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // Variables without a section separator (e.g. SSEGATE_TEST_…) are not config.
        if !rest.contains("__") {
            continue;
        }
        // SSEGATE_AUTH__GRANTS__SUBSCRIBE is auth.grants.subscribe.
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "expected SSEGATE_<SECTION>__<KEY> (or deeper, __ between names)".into(),
            });
        }
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        let (key, tables) = path.split_last().expect("at least two names");
        let mut at = &mut *table;
        for name in tables {
            let entry = at
                .entry(name.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("`{name}` is not a section"),
                    })
                }
            };
        }
        at.insert(key.clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let cfg = Config::from_toml_str("").unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:8080");
        assert_eq!(cfg.log.kind(), LogKind::File);
        assert_eq!(cfg.limits.max_event_bytes, 65_536);
        assert_eq!(cfg.stream.heartbeat_ms, 15_000);
        assert_eq!(cfg.auth.cookie_name, "ssegate_token");
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let err = Config::from_toml_str("[server]\nlisten_addr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
        let err = Config::from_toml_str("[srever]\n").unwrap_err();
        assert!(err.to_string().contains("srever"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:1\"\n[log]\nkind = \"file\"\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&path),
            env(&[
                ("SSEGATE_SERVER__LISTEN", "127.0.0.1:2"),
                ("SSEGATE_LOG__KIND", "memory"),
                ("SSEGATE_LIMITS__MAX_EVENT_BYTES", "1024"),
                ("SSEGATE_AUTH__GRANTS__SUBSCRIBE", "[\"a:{claims.x}\"]"),
                ("SSEGATE_TEST_MONGODB_URI", "ignored"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:2");
        assert_eq!(cfg.log.kind(), LogKind::Memory);
        assert_eq!(cfg.limits.max_event_bytes, 1024);
        assert_eq!(cfg.auth.grants.subscribe, vec!["a:{claims.x}"]);
    }

    #[test]
    fn unknown_environment_keys_are_errors() {
        let err = Config::load(None, env(&[("SSEGATE_SERVER__LISTN", "x")])).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn nonsense_values_are_rejected() {
        assert!(Config::from_toml_str("[stream]\nheartbeat_ms = 0\n").is_err());
        assert!(Config::from_toml_str("[auth]\njwt_secret = \"short\"\n").is_err());
        assert!(Config::from_toml_str("[log]\nkind = \"mongo\"\n").is_err());
    }

    #[test]
    fn cidr_ranges() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(one.contains("::ffff:127.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        let cfg = Config::from_toml_str("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n")
            .unwrap();
        assert_eq!(cfg.server.trusted_proxies.len(), 2);
    }

    #[test]
    fn masked_output_hides_the_secret() {
        let cfg =
            Config::from_toml_str("[auth]\njwt_secret = \"0123456789abcdef-secret\"\n").unwrap();
        let shown = cfg.to_toml_masked();
        assert!(!shown.contains("0123456789abcdef-secret"));
        assert!(Config::from_toml_str(&shown).is_ok());
    }

    #[test]
    fn masked_output_hides_source_passwords_and_url_passwords() {
        let cfg = Config::from_toml_str(
            r#"
[[sources]]
name = "orders"
type = "kafka"
brokers = "k:9092"
topics = ["orders"]
security_protocol = "sasl_ssl"
sasl_mechanism = "PLAIN"
sasl_username = "gw"
sasl_password = "kafka-pass-42"
channel = "orders:{row.c}"

[[sources]]
name = "rows"
type = "postgres"
url = "postgres://app:pg-pass-42@db:5432/app"
tables = ["public.t"]
channel = "t:{row.id}"
"#,
        )
        .unwrap();
        let shown = cfg.to_toml_masked();
        for secret in ["kafka-pass-42", "pg-pass-42"] {
            assert!(!shown.contains(secret), "{secret} in\n{shown}");
        }
        assert!(
            shown.contains("postgres://app:****************@db:5432/app"),
            "{shown}"
        );
        assert!(shown.contains("sasl_username = \"gw\""), "{shown}");
        assert_eq!(
            mask_url_password("nats://a:p@h1:4222,nats://h2:4222").as_deref(),
            Some("nats://a:****************@h1:4222,nats://h2:4222")
        );
        assert_eq!(mask_url_password("redis://h:6379/0"), None);
    }
}
