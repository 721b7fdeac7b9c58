//! Kafka ingest: `type = "kafka"`. Each message's JSON value is the record the templates
//! see; `{table}` is the message's topic, and `{kafka.topic}`, `{kafka.partition}`,
//! `{kafka.offset}`, `{kafka.key}`, `{kafka.timestamp}` and `{kafka.headers.NAME}` are its
//! metadata.
//!
//! ```toml
//! [[sources]]
//! name = "orders"
//! type = "kafka"
//! brokers = "127.0.0.1:9092"          # comma-separated bootstrap servers
//! topics = ["orders"]
//! group = "ssegate"                   # consumer group: several gateway nodes share the work
//! start = "new"                       # where a new group starts: new (default) | all
//! channel = "orders:{row.customer}"
//! event_type = "order.{row.kind}"
//! users = "{row.owner}"
//! ```
//!
//! The client is librdkafka (through the `rdkafka` crate): consumer groups, rebalances,
//! reconnection, TLS and SASL are its own, the most used implementation there is.
//!
//! **At least once into the log, exactly once on the stream.** A batch of messages is
//! appended (one atomic append, each message keyed by `topic/partition/offset`), and only then
//! are their offsets stored for commit (`enable.auto.offset.store = false`; librdkafka commits
//! stored offsets every `commit_interval_ms`, when partitions are revoked in a rebalance and
//! when the consumer closes). A crash or a rebalance before the commit means the messages are
//! read again — by this node or another one in the group — and their keys keep them from
//! being appended twice (within the log's dedupe window, `log.dedupe_window_s`).
//!
//! A message whose value is not JSON (or has no value) is skipped, counted and its offset
//! committed: it will never be an event.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::ingest::{parse_body, skip};
use super::{BuildSource, Change, Op, Source, SourceContext, SourceError};
use crate::throttle::Throttle;

/// Where a group that has no committed offset for a partition starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Messages produced from now on (`auto.offset.reset = latest`).
    #[default]
    New,
    /// Every message the topic still holds (`earliest`).
    All,
}

/// `security_protocol`: how the client talks to the brokers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
            Protocol::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }

    fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }
}

/// The settings of a `type = "kafka"` source. (`Debug` leaves the SASL password out.)
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port` separated by commas.
    pub brokers: String,
    /// The topics to read.
    pub topics: Vec<String>,
    /// The consumer group (`group.id`).
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default)]
    pub start: Start,
    /// Messages appended together at most.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// How often stored offsets are committed (also on revoke and close).
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// `session.timeout.ms`: how long the group waits for a silent member before its
    /// partitions go to the others.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    #[serde(default)]
    pub security_protocol: Protocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password: Option<String>,
    /// PEM file of the CA certificates that sign the brokers' certificates (else the
    /// system's).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// A client certificate (PEM) and its key, for brokers that ask for one.
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    #[serde(default)]
    pub tls_key_file: Option<String>,
    /// Check that the broker's certificate names the host connected to (default true).
    #[serde(default = "yes")]
    pub tls_verify_hostname: bool,
}

impl std::fmt::Debug for KafkaSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.clone();
        if shown.sasl_password.is_some() {
            shown.sasl_password = Some("****".into());
        }
        f.debug_struct("KafkaSourceConfig")
            .field("brokers", &shown.brokers)
            .field("topics", &shown.topics)
            .field("group", &shown.group)
            .field("start", &shown.start)
            .field("security_protocol", &shown.security_protocol)
            .field("sasl_mechanism", &shown.sasl_mechanism)
            .field("sasl_username", &shown.sasl_username)
            .field("sasl_password", &shown.sasl_password)
            .finish_non_exhaustive()
    }
}

fn default_group() -> String {
    "ssegate".into()
}
fn default_batch() -> usize {
    500
}
fn default_commit_interval_ms() -> u64 {
    1000
}
fn default_session_timeout_ms() -> u64 {
    10_000
}
fn yes() -> bool {
    true
}

/// librdkafka debug contexts to log (`cgrp,fetch`, `all`): its `debug` property.
const DEBUG_ENV: &str = "SSEGATE_KAFKA_DEBUG";

/// Less than the 10 s that stopping a source may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

impl BuildSource for KafkaSourceConfig {
    fn validate(&self) -> Result<(), String> {
        if self.brokers.split(',').any(|b| {
            let b = b.trim();
            b.is_empty() || b.contains(char::is_whitespace) || !b.contains(':')
        }) {
            return Err(format!(
                "`brokers` must be host:port, separated by commas; got {:?}",
                self.brokers
            ));
        }
        if self.topics.is_empty() {
            return Err("`topics`: name at least one topic".into());
        }
        for t in &self.topics {
            // Kafka's own rule for topic names.
            if t.is_empty()
                || t.len() > 249
                || t == "."
                || t == ".."
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(format!(
                    "topic {t:?}: use 1 to 249 letters, digits, `.`, `_` and `-`"
                ));
            }
        }
        if self.group.is_empty() || self.group.len() > 255 {
            return Err("`group`: 1 to 255 characters".into());
        }
        if !(1..=10_000).contains(&self.batch) {
            return Err("`batch`: between 1 and 10000".into());
        }
        if !(10..=60_000).contains(&self.commit_interval_ms) {
            return Err("`commit_interval_ms`: between 10 and 60000".into());
        }
        if !(1_000..=300_000).contains(&self.session_timeout_ms) {
            return Err("`session_timeout_ms`: between 1000 and 300000".into());
        }
        let sasl_set = self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some();
        if self.security_protocol.sasl() {
            match self.sasl_mechanism.as_deref() {
                Some(m) if SASL_MECHANISMS.contains(&m) => {}
                other => {
                    return Err(format!(
                        "`sasl_mechanism` must be one of {SASL_MECHANISMS:?} with security_protocol = \"{}\"; got {other:?}",
                        self.security_protocol.as_str()
                    ))
                }
            }
            if self.sasl_username.is_none() || self.sasl_password.is_none() {
                return Err("`sasl_username` and `sasl_password` are required with SASL".into());
            }
        } else if sasl_set {
            return Err(
                "the sasl_* settings need security_protocol = \"sasl_plaintext\" or \"sasl_ssl\""
                    .into(),
            );
        }
        let tls_set = self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.tls_key_file.is_some();
        if tls_set && !self.security_protocol.tls() {
            return Err(
                "the tls_* settings need security_protocol = \"ssl\" or \"sasl_ssl\"".into(),
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("`tls_cert_file` and `tls_key_file` go together".into());
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(KafkaSource {
            cfg: self.clone(),
            throttle: Throttle::new(Duration::from_secs(30)),
        }))
    }
}

impl KafkaSourceConfig {
    /// The librdkafka properties of this source.
    fn client_config(&self, source: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("client.id", format!("ssegate-{source}"))
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                self.commit_interval_ms.to_string(),
            )
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "auto.offset.reset",
                match self.start {
                    Start::New => "latest",
                    Start::All => "earliest",
                },
            )
            .set("security.protocol", self.security_protocol.as_str())
            // Reconnects come sooner than the default 1 s → 10 s backoff.
            .set("reconnect.backoff.max.ms", "2000")
            .set(
                "socket.connection.setup.timeout.ms",
                CONNECT_TIMEOUT_MS.to_string(),
            )
            .set_log_level(RDKafkaLogLevel::Warning);
        if let Ok(debug) = std::env::var(DEBUG_ENV) {
            c.set("debug", debug).set_log_level(RDKafkaLogLevel::Debug);
        }
        if let Some(m) = &self.sasl_mechanism {
            c.set("sasl.mechanism", m);
        }
        if let Some(u) = &self.sasl_username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &self.sasl_password {
            c.set("sasl.password", p);
        }
        if let Some(ca) = &self.tls_ca_file {
            c.set("ssl.ca.location", ca);
        }
        if let Some(cert) = &self.tls_cert_file {
            c.set("ssl.certificate.location", cert);
        }
        if let Some(key) = &self.tls_key_file {
            c.set("ssl.key.location", key);
        }
        c.set(
            "ssl.endpoint.identification.algorithm",
            if self.tls_verify_hostname {
                "https"
            } else {
                "none"
            },
        );
        c
    }
}

struct KafkaSource {
    cfg: KafkaSourceConfig,
    throttle: Throttle,
}

/// What librdkafka tells outside the message stream goes to `tracing` (its errors come
/// again on the message stream, where the source decides on them), and its last error's
/// reason is kept for `/v1/status`.
struct Context {
    source: Arc<str>,
    /// `SSEGATE_KAFKA_DEBUG` is set: librdkafka's debug lines are logged at info level.
    debug: bool,
    /// librdkafka's own words for its last error ("SSL handshake failed: certificate verify
    /// failed…"): more than the error code the stream gives.
    last_error: Mutex<Option<String>>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(source = %self.source, facility = fac, "kafka: {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(source = %self.source, facility = fac, "kafka: {message}")
            }
            _ if self.debug => {
                tracing::info!(source = %self.source, facility = fac, "kafka: {message}")
            }
            _ => tracing::debug!(source = %self.source, facility = fac, "kafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(source = %self.source, error = %error, reason, "kafka client error");
        // "1/1 brokers are down" says less than the error that brought them down.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
        }
    }
}

impl ConsumerContext for Context {}

/// Since when no broker answers, and the last error saying so.
struct Outage {
    since: tokio::time::Instant,
    last: tokio::time::Instant,
    why: String,
}

/// How long the brokers may stay unreachable before the source says it waits for them.
const OUTAGE_LIMIT: Duration = Duration::from_secs(3);
/// No connection error for this long (twice librdkafka's connection setup timeout, which
/// [`KafkaSourceConfig::client_config`] sets, so that even a broker that never answers
/// reports an error in between): the brokers answer again.
const OUTAGE_OVER: Duration = Duration::from_secs(10);
/// `socket.connection.setup.timeout.ms`.
const CONNECT_TIMEOUT_MS: u64 = 5000;
/// A batch stops growing at this many bytes of message values.
const BATCH_BYTES: usize = 512 * 1024;

/// Errors that say a broker cannot be reached (librdkafka keeps trying by itself).
fn is_transport(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::AllBrokersDown | C::BrokerTransportFailure | C::Resolve | C::SSL)
    )
}

/// A message taken off the stream, owned.
struct Taken {
    topic: String,
    partition: i32,
    offset: i64,
    change: Option<(Change, Value)>,
}

/// Whether a consumer error means the source cannot go on by itself.
fn classify(e: KafkaError, context: &str) -> SourceError {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::SaslAuthenticationFailed
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::Authentication
            | C::InvalidConfig
            | C::InvalidGroupId
            | C::UnsupportedSASLMechanism,
        ) => SourceError::fatal(format!("kafka: {context}"), e),
        _ => SourceError::recoverable(format!("kafka: {context}"), e),
    }
}

impl KafkaSource {
    fn take(&self, cx: &SourceContext, m: &BorrowedMessage<'_>) -> Taken {
        let topic = m.topic().to_owned();
        let (partition, offset) = (m.partition(), m.offset());
        let place = format!("{topic}/{partition}");
        let change = match m.payload().map(parse_body) {
            None => {
                skip(cx, &self.throttle, &place, "the message has no value");
                None
            }
            Some(Err(why)) => {
                skip(cx, &self.throttle, &place, &why);
                None
            }
            Some(Ok(record)) => {
                let mut headers = Map::new();
                if let Some(hs) = m.headers() {
                    for h in hs.iter() {
                        let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                        headers.insert(h.key.to_owned(), v.map_or(Value::Null, Value::String));
                    }
                }
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                let meta = json!({"kafka": {
                    "topic": topic,
                    "partition": partition,
                    "offset": offset,
                    "key": key,
                    "timestamp": m.timestamp().to_millis(),
                    "headers": headers,
                }});
                Some((
                    Change {
                        op: Op::Insert,
                        record,
                        place: topic.clone(),
                        key: format!("{topic}/{partition}/{offset}"),
                    },
                    meta,
                ))
            }
        };
        Taken {
            topic,
            partition,
            offset,
            change,
        }
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(&mut self, cx: &SourceContext) -> Result<(), SourceError> {
        let context = Context {
            source: cx.name.clone(),
            debug: std::env::var_os(DEBUG_ENV).is_some(),
            last_error: Mutex::new(None),
        };
        let consumer: StreamConsumer<Context> = self
            .cfg
            .client_config(&cx.name)
            .create_with_context(context)
            .map_err(|e| SourceError::fatal("kafka: the client settings are refused", e))?;
        let topics: Vec<&str> = self.cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| classify(e, "cannot subscribe"))?;
        tracing::info!(source = %cx.name, topics = ?self.cfg.topics, group = %self.cfg.group, "reading Kafka");
        let result = self.consume(cx, &consumer).await;
        // Closing commits the offsets stored so far and leaves the group at once, so that
        // its partitions go to the other members now rather than after the session timeout.
        // librdkafka blocks while it closes: not on a runtime thread, and not for ever when
        // the brokers are gone.
        let close = tokio::task::spawn_blocking(move || drop(consumer));
        if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
            tracing::warn!(source = %cx.name, "kafka: the consumer did not close in time");
        }
        result
    }
}

impl KafkaSource {
    /// An error on the message stream: a broker out of reach starts (or extends) an outage,
    /// a fatal one stops the source, any other is logged and shown in `/v1/status` while
    /// librdkafka retries.
    fn on_error(
        &self,
        cx: &SourceContext,
        consumer: &StreamConsumer<Context>,
        e: KafkaError,
        outage: &mut Option<Outage>,
    ) -> Result<(), SourceError> {
        if !is_transport(&e) {
            let e = classify(e, "cannot read");
            if matches!(e, SourceError::Fatal(_)) {
                return Err(e);
            }
            let chain = e.cause().chain();
            tracing::warn!(source = %cx.name, error = %chain, "kafka consumer error");
            cx.status.note_error(chain);
            return Ok(());
        }
        // librdkafka reconnects by itself; a source that cannot reach any broker for a while
        // backs off (and says why in /v1/status).
        let now = tokio::time::Instant::now();
        let why = consumer
            .context()
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| e.to_string());
        match outage {
            Some(o) => {
                o.last = now;
                o.why = why;
            }
            None => {
                tracing::warn!(source = %cx.name, error = %why, "kafka: a broker is unreachable");
                *outage = Some(Outage {
                    since: now,
                    last: now,
                    why,
                });
            }
        }
        Ok(())
    }

    async fn consume(
        &self,
        cx: &SourceContext,
        consumer: &StreamConsumer<Context>,
    ) -> Result<(), SourceError> {
        let mut stream = consumer.stream();
        let mut outage: Option<Outage> = None;
        let mut positions = Positions::default();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let first = tokio::select! {
                _ = cx.cancelled() => return Ok(()),
                m = stream.next() => m,
                _ = tick.tick() => {
                    if let Some(o) = &outage {
                        if o.last.elapsed() > OUTAGE_OVER {
                            tracing::info!(source = %cx.name, "kafka: the brokers answer again");
                            outage = None;
                            cx.status.set_running();
                        } else if o.since.elapsed() >= OUTAGE_LIMIT {
                            // The consumer stays (librdkafka reconnects it, and it keeps its
                            // place in the group): the status says it waits.
                            cx.status.set_waiting(format!("kafka: no broker reachable: {}", o.why));
                        }
                    }
                    continue;
                }
            };
            let first = match first {
                None => return Err(SourceError::Recoverable("kafka: the consumer ended".into())),
                Some(Err(e)) => {
                    self.on_error(cx, consumer, e, &mut outage)?;
                    continue;
                }
                Some(Ok(m)) => m,
            };
            if outage.take().is_some() {
                cx.status.set_running();
            }
            let mut bytes = first.payload_len();
            let mut batch = vec![self.take(cx, &first)];
            drop(first);
            let mut failed = None;
            // As many as are already there, up to `batch` messages and BATCH_BYTES (a shared
            // log refuses larger appends).
            while batch.len() < self.cfg.batch && bytes < BATCH_BYTES {
                match stream.next().now_or_never() {
                    Some(Some(Ok(m))) => {
                        bytes += m.payload_len();
                        batch.push(self.take(cx, &m));
                    }
                    Some(Some(Err(e))) => {
                        failed = Some(e);
                        break;
                    }
                    _ => break,
                }
            }
            let (changes, metas): (Vec<Change>, Vec<Value>) =
                batch.iter_mut().filter_map(|t| t.change.take()).unzip();
            if !changes.is_empty() {
                cx.emit_with_meta(&changes, &metas, None).await?;
            }
            // Durable now: these offsets may be committed.
            for t in &batch {
                if let Err(e) = consumer.store_offset(&t.topic, t.partition, t.offset) {
                    // The partition was revoked meanwhile: its new owner reads these
                    // messages again and their keys keep them from being appended twice.
                    tracing::debug!(source = %cx.name, error = %e, "offset not stored");
                }
            }
            if let Some(e) = failed {
                self.on_error(cx, consumer, e, &mut outage)?;
            }
            positions.add(&batch);
            cx.status.set_position(positions.show());
        }
    }
}

/// The next offset of each partition read so far (`topic/partition:offset`), for
/// `/v1/status`.
#[derive(Default)]
struct Positions(BTreeMap<(String, i32), i64>);

impl Positions {
    fn add(&mut self, batch: &[Taken]) {
        for t in batch {
            let next = self.0.entry((t.topic.clone(), t.partition)).or_default();
            *next = (*next).max(t.offset + 1);
        }
    }

    fn show(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|((t, p), o)| format!("{t}/{p}:{o}"))
            .collect();
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<KafkaSourceConfig, String> {
        crate::source::settings(text)
    }

    #[test]
    fn settings_are_checked() {
        let c = config("brokers = \"127.0.0.1:9092\"\ntopics = [\"orders\"]").unwrap();
        assert_eq!(
            (c.group.as_str(), c.start, c.batch),
            ("ssegate", Start::New, 500)
        );
        let sasl = config(
            "brokers = \"a:1,b:2\"\ntopics = [\"t\"]\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"u\"\nsasl_password = \"p\"\ntls_ca_file = \"/ca.pem\"",
        )
        .unwrap();
        let props = sasl.client_config("s");
        assert_eq!(props.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(props.get("enable.auto.offset.store"), Some("false"));
        for (bad, what) in [
            ("brokers = \"nohost\"\ntopics = [\"t\"]", "host:port"),
            ("brokers = \"a:1\"\ntopics = []", "at least one"),
            ("brokers = \"a:1\"\ntopics = [\"a b\"]", "topic"),
            ("brokers = \"a:1\"\ntopics = [\"t\"]\nstart = \"middle\"", "start"),
            ("brokers = \"a:1\"\ntopics = [\"t\"]\nbatch = 0", "batch"),
            (
                "brokers = \"a:1\"\ntopics = [\"t\"]\nsasl_username = \"u\"",
                "sasl_plaintext",
            ),
            (
                "brokers = \"a:1\"\ntopics = [\"t\"]\nsecurity_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"GSSAPI\"\nsasl_username = \"u\"\nsasl_password = \"p\"",
                "sasl_mechanism",
            ),
            ("brokers = \"a:1\"\ntopics = [\"t\"]\ntls_ca_file = \"/ca\"", "ssl"),
            (
                "brokers = \"a:1\"\ntopics = [\"t\"]\nsecurity_protocol = \"ssl\"\ntls_cert_file = \"/c\"",
                "together",
            ),
            ("brokers = \"a:1\"\ntopics = [\"t\"]\ntopic = \"x\"", "topic"),
        ] {
            let err = config(bad).unwrap_err();
            assert!(err.contains(what), "{bad}: {err}");
        }
    }

    #[test]
    fn positions_are_the_next_offset_of_each_partition() {
        let t = |topic: &str, partition, offset| Taken {
            topic: topic.into(),
            partition,
            offset,
            change: None,
        };
        let mut p = Positions::default();
        p.add(&[t("b", 0, 7), t("a", 1, 3), t("b", 0, 8)]);
        p.add(&[t("a", 0, 1)]);
        assert_eq!(p.show(), "a/0:2,a/1:4,b/0:9");
    }
}
