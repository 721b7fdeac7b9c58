//! Redis ingest: `type = "redis"` (Pub/Sub) and `type = "redis_stream"` (a stream read with a
//! consumer group). Each message's JSON body is the record the templates see
//! (`{row.FIELD}` / `{doc.FIELD}`); `{table}` / `{collection}` is the Redis channel or stream.
//!
//! ```toml
//! [[sources]]
//! name = "chat"
//! type = "redis"
//! url = "redis://127.0.0.1:6379"
//! channels = ["chat"]               # SUBSCRIBE
//! patterns = ["rooms.*"]            # PSUBSCRIBE
//! id_field = "messageId"            # optional: the idempotency key
//! channel = "rooms:{row.room}"
//! event_type = "{row.kind}"
//!
//! [[sources]]
//! name = "orders"
//! type = "redis_stream"
//! url = "redis://127.0.0.1:6379"
//! stream = "orders"
//! group = "ssegate"
//! consumer = "gw-1"                 # default: the source name
//! payload_field = "data"            # the field holding the JSON body (default: all fields)
//! start = "new"                     # new (default) | all: where a new group starts
//! claim_idle_ms = 60000             # re-claim other consumers' entries pending this long
//! channel = "orders:{row.customer}"
//! ```
//!
//! **Pub/Sub is at most once**: Redis keeps nothing for a subscriber that is not connected, so
//! messages published while the gateway is down or reconnecting are lost; a message that is
//! not JSON is skipped (counted in `skipped`). Without `id_field` a message has no key (Pub/Sub
//! messages have no id); with it, a repeated id within the dedupe window is appended once.
//!
//! **Streams are at least once, no duplicate**: entries are read with `XREADGROUP`, appended,
//! and acknowledged (`XACK`) only after the append is durable. On start the consumer first
//! re-reads its own pending entries (read but not acknowledged before a crash), then claims
//! entries other consumers left pending longer than `claim_idle_ms` (`XAUTOCLAIM`). The entry
//! id is the idempotency key, so an entry appended before a crash and read again is not
//! appended twice (within the dedupe window). An entry that is not usable JSON is skipped and
//! acknowledged (it would fail forever).

use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, RedisError, Value as RValue};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ingest::{emit_ingested, id_at, ingest, parse_body, skip, Ingested};
use super::{BuildSource, Change, Op, Source, SourceContext, SourceError};
use crate::throttle::Throttle;

/// Most messages appended in one batch.
const BATCH_MAX: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `XREADGROUP … BLOCK` waits.
const BLOCK_MS: u64 = 5_000;
/// Pub/Sub: a `PING` this often proves the connection is alive.
const PING_EVERY: Duration = Duration::from_secs(15);

/// Redis errors that no retry will fix.
fn redis_error(what: &str, e: &RedisError) -> SourceError {
    let context = format!("redis {what}");
    match e.code() {
        Some("WRONGTYPE" | "NOPERM" | "WRONGPASS" | "NOAUTH") => {
            SourceError::fatal(context, e.clone())
        }
        _ => SourceError::recoverable(context, e.clone()),
    }
}

/// `redis::Client::open` without repeating the URL (it may hold a password).
fn client(url: &str) -> Result<Client, SourceError> {
    Client::open(url).map_err(|e| SourceError::fatal("`url` is not a usable Redis URL", e))
}

fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://")
        || url.starts_with("unix://"))
    {
        return Err("`url` must be a redis:// or rediss:// URL".into());
    }
    Client::open(url)
        .map(|_| ())
        .map_err(|e| format!("`url` is not a usable Redis URL: {e}"))
}

// ---------------------------------------------------------------------------------------
// Pub/Sub

/// The settings of a `type = "redis"` source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisSourceConfig {
    pub url: String,
    /// Channels to `SUBSCRIBE` to.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Patterns to `PSUBSCRIBE` to.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Dotted path of the field of the body that identifies the message (its idempotency
    /// key); none: messages have no key.
    #[serde(default)]
    pub id_field: Option<String>,
}

impl BuildSource for RedisSourceConfig {
    fn validate(&self) -> Result<(), String> {
        check_url(&self.url)?;
        if self.channels.is_empty() && self.patterns.is_empty() {
            return Err("give `channels` or `patterns` to subscribe to".into());
        }
        if self
            .channels
            .iter()
            .chain(&self.patterns)
            .any(|c| c.is_empty())
        {
            return Err("an empty channel or pattern".into());
        }
        if self.id_field.as_deref() == Some("") {
            return Err("`id_field` is empty".into());
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(RedisPubSub {
            cfg: self.clone(),
            throttle: Throttle::new(Duration::from_secs(30)),
        }))
    }
}

struct RedisPubSub {
    cfg: RedisSourceConfig,
    throttle: Throttle,
}

impl RedisPubSub {
    fn message(&self, cx: &SourceContext, msg: &::redis::Msg) -> Option<Ingested> {
        let id_field = self.cfg.id_field.as_deref();
        ingest(
            cx,
            &self.throttle,
            msg.get_payload_bytes(),
            msg.get_channel_name(),
            |record| id_field.and_then(|f| id_at(record, f)),
        )
    }
}

#[async_trait]
impl Source for RedisPubSub {
    async fn run(&mut self, cx: &SourceContext) -> Result<(), SourceError> {
        let client = client(&self.cfg.url)?;
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| SourceError::Recoverable("redis: connection timed out".into()))?
            .map_err(|e| redis_error("connect", &e))?;
        for c in &self.cfg.channels {
            pubsub
                .subscribe(c)
                .await
                .map_err(|e| redis_error("SUBSCRIBE", &e))?;
        }
        for p in &self.cfg.patterns {
            pubsub
                .psubscribe(p)
                .await
                .map_err(|e| redis_error("PSUBSCRIBE", &e))?;
        }
        tracing::info!(source = %cx.name, channels = ?self.cfg.channels, patterns = ?self.cfg.patterns, "subscribed to Redis Pub/Sub");
        let (mut sink, mut messages) = pubsub.split();
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            let first = tokio::select! {
                _ = cx.cancelled() => return Ok(()),
                _ = ping.tick() => {
                    match tokio::time::timeout(CONNECT_TIMEOUT, sink.ping::<RValue>()).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => return Err(redis_error("PING", &e)),
                        Err(_) => return Err(SourceError::Recoverable("redis: PING timed out".into())),
                    }
                }
                m = messages.next() => m,
            };
            let Some(first) = first else {
                return Err(SourceError::Recoverable(
                    "redis: the Pub/Sub connection was lost (messages published meanwhile are lost)".into(),
                ));
            };
            let mut batch: Vec<Ingested> = self.message(cx, &first).into_iter().collect();
            let mut ended = false;
            for _ in 1..BATCH_MAX {
                match messages.next().now_or_never() {
                    Some(Some(m)) => batch.extend(self.message(cx, &m)),
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            emit_ingested(cx, batch).await?;
            if ended {
                return Err(SourceError::Recoverable(
                    "redis: the Pub/Sub connection was lost".into(),
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Streams

/// Where a new consumer group starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Entries added from now on (`$`).
    #[default]
    New,
    /// Every entry in the stream (`0`).
    All,
}

/// The settings of a `type = "redis_stream"` source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamSourceConfig {
    pub url: String,
    /// The stream key.
    pub stream: String,
    /// The consumer group (created, with the stream, when missing).
    pub group: String,
    /// This consumer's name in the group; default: the source name. Keep it stable: a
    /// restarted consumer re-reads its own pending entries.
    #[serde(default)]
    pub consumer: Option<String>,
    /// The field holding the JSON body; none: the record is every field, as strings.
    #[serde(default)]
    pub payload_field: Option<String>,
    #[serde(default)]
    pub start: Start,
    /// Entries another consumer left pending this long are claimed (0: never).
    #[serde(default = "default_claim_idle_ms")]
    pub claim_idle_ms: u64,
    /// Entries per read.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_claim_idle_ms() -> u64 {
    60_000
}

fn default_batch() -> usize {
    100
}

impl BuildSource for RedisStreamSourceConfig {
    fn validate(&self) -> Result<(), String> {
        check_url(&self.url)?;
        if self.stream.is_empty() || self.group.is_empty() {
            return Err("`stream` and `group` must not be empty".into());
        }
        if self.consumer.as_deref() == Some("") || self.payload_field.as_deref() == Some("") {
            return Err("`consumer` and `payload_field` must not be empty".into());
        }
        if self.batch == 0 || self.batch > 10_000 {
            return Err("`batch` must be 1 to 10000".into());
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(RedisStream {
            cfg: self.clone(),
            throttle: Throttle::new(Duration::from_secs(30)),
        }))
    }
}

struct RedisStream {
    cfg: RedisStreamSourceConfig,
    throttle: Throttle,
}

/// One stream entry; `fields` is `None` for an entry deleted while it was pending.
#[derive(Debug)]
struct Entry {
    id: String,
    fields: Option<Vec<(String, Vec<u8>)>>,
}

impl RedisStream {
    fn consumer<'a>(&'a self, cx: &'a SourceContext) -> &'a str {
        self.cfg.consumer.as_deref().unwrap_or(&cx.name)
    }

    /// `XREADGROUP` from `after` (`>` for new entries, an id for this consumer's pending
    /// ones), blocking when `block`.
    async fn read(
        &self,
        cx: &SourceContext,
        conn: &mut MultiplexedConnection,
        after: &str,
        block: bool,
    ) -> Result<Vec<Entry>, SourceError> {
        let mut cmd = ::redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.cfg.group)
            .arg(self.consumer(cx))
            .arg("COUNT")
            .arg(self.cfg.batch);
        if block {
            cmd.arg("BLOCK").arg(BLOCK_MS);
        }
        cmd.arg("STREAMS").arg(&self.cfg.stream).arg(after);
        let reply: RValue = cmd
            .query_async(conn)
            .await
            .map_err(|e| redis_error("XREADGROUP", &e))?;
        Ok(read_reply(reply))
    }

    /// Claims entries other consumers left pending longer than `claim_idle_ms` and appends
    /// them.
    async fn claim(
        &self,
        cx: &SourceContext,
        conn: &mut MultiplexedConnection,
    ) -> Result<(), SourceError> {
        if self.cfg.claim_idle_ms == 0 {
            return Ok(());
        }
        let mut cursor = "0-0".to_string();
        loop {
            let reply: RValue = ::redis::cmd("XAUTOCLAIM")
                .arg(&self.cfg.stream)
                .arg(&self.cfg.group)
                .arg(self.consumer(cx))
                .arg(self.cfg.claim_idle_ms)
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.cfg.batch)
                .query_async(conn)
                .await
                .map_err(|e| redis_error("XAUTOCLAIM", &e))?;
            let RValue::Array(mut parts) = reply else {
                return Err(SourceError::Recoverable(
                    "redis XAUTOCLAIM: unexpected reply".into(),
                ));
            };
            let deleted = if parts.len() > 2 {
                parts.remove(2)
            } else {
                RValue::Nil
            };
            let claimed = if parts.len() > 1 {
                entries(parts.remove(1))
            } else {
                vec![]
            };
            let next = parts.first().and_then(text).unwrap_or_else(|| "0-0".into());
            if !claimed.is_empty() {
                tracing::info!(source = %cx.name, entries = claimed.len(), "claimed entries another consumer left pending");
            }
            self.handle(cx, conn, claimed).await?;
            // Entries deleted while pending: nothing to append, acknowledge them.
            if let RValue::Array(ids) = deleted {
                let ids: Vec<String> = ids.iter().filter_map(text).collect();
                self.ack(conn, &ids).await?;
            }
            if next == "0-0" {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Appends the usable entries, then acknowledges all of them.
    async fn handle(
        &self,
        cx: &SourceContext,
        conn: &mut MultiplexedConnection,
        entries: Vec<Entry>,
    ) -> Result<(), SourceError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut changes = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        for e in entries {
            if let Some(fields) = &e.fields {
                match self.record(fields) {
                    Ok(record) => changes.push(Change {
                        op: Op::Insert,
                        record,
                        place: self.cfg.stream.clone(),
                        key: e.id.clone(),
                    }),
                    Err(why) => skip(cx, &self.throttle, &self.cfg.stream, &why),
                }
            }
            ids.push(e.id);
        }
        if !changes.is_empty() {
            cx.emit(&changes, None).await?;
        }
        self.ack(conn, &ids).await
    }

    async fn ack(
        &self,
        conn: &mut MultiplexedConnection,
        ids: &[String],
    ) -> Result<(), SourceError> {
        if ids.is_empty() {
            return Ok(());
        }
        ::redis::cmd("XACK")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(ids)
            .query_async::<RValue>(conn)
            .await
            .map(|_| ())
            // Not acknowledged: the entries stay pending and are read again (and not appended
            // again: their ids are the keys).
            .map_err(|e| redis_error("XACK", &e))
    }

    fn record(&self, fields: &[(String, Vec<u8>)]) -> Result<Value, String> {
        match &self.cfg.payload_field {
            Some(name) => {
                let (_, body) = fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .ok_or_else(|| format!("the entry has no field {name:?}"))?;
                parse_body(body)
            }
            None => Ok(Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(String::from_utf8_lossy(v).into())))
                    .collect(),
            )),
        }
    }
}

#[async_trait]
impl Source for RedisStream {
    async fn run(&mut self, cx: &SourceContext) -> Result<(), SourceError> {
        let client = client(&self.cfg.url)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(Duration::from_millis(BLOCK_MS) + CONNECT_TIMEOUT));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| redis_error("connect", &e))?;
        let created: Result<RValue, RedisError> = ::redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(match self.cfg.start {
                Start::New => "$",
                Start::All => "0",
            })
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => {
                tracing::info!(source = %cx.name, stream = %self.cfg.stream, group = %self.cfg.group, "created the consumer group")
            }
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(redis_error("XGROUP CREATE", &e)),
        }
        // This consumer's own pending entries: read before a crash, never acknowledged.
        let mut after = "0-0".to_string();
        loop {
            let pending = self.read(cx, &mut conn, &after, false).await?;
            let Some(last) = pending.last() else { break };
            after = last.id.clone();
            tracing::info!(source = %cx.name, entries = pending.len(), "re-reading entries left pending by the previous run");
            self.handle(cx, &mut conn, pending).await?;
            if cx.is_cancelled() {
                return Ok(());
            }
        }
        self.claim(cx, &mut conn).await?;
        let claim_every = Duration::from_millis(self.cfg.claim_idle_ms.max(1_000));
        let mut next_claim = tokio::time::Instant::now() + claim_every;
        loop {
            let entries = tokio::select! {
                _ = cx.cancelled() => return Ok(()),
                r = self.read(cx, &mut conn, ">", true) => r?,
            };
            self.handle(cx, &mut conn, entries).await?;
            if self.cfg.claim_idle_ms > 0 && tokio::time::Instant::now() >= next_claim {
                self.claim(cx, &mut conn).await?;
                next_claim = tokio::time::Instant::now() + claim_every;
            }
        }
    }
}

fn text(v: &RValue) -> Option<String> {
    match v {
        RValue::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        RValue::SimpleString(s) => Some(s.clone()),
        RValue::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// The entries of an `XREADGROUP` reply (RESP2 array of `[stream, entries]`, or RESP3 map).
fn read_reply(v: RValue) -> Vec<Entry> {
    match v {
        RValue::Array(streams) => streams
            .into_iter()
            .flat_map(|s| match s {
                RValue::Array(mut pair) if pair.len() == 2 => entries(pair.remove(1)),
                _ => vec![],
            })
            .collect(),
        RValue::Map(streams) => streams.into_iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => vec![],
    }
}

/// `[[id, [field, value, …] | nil], …]`.
fn entries(v: RValue) -> Vec<Entry> {
    let RValue::Array(items) = v else {
        return vec![];
    };
    items
        .into_iter()
        .filter_map(|item| {
            let RValue::Array(mut parts) = item else {
                return None;
            };
            if parts.is_empty() {
                return None;
            }
            let fields = if parts.len() > 1 {
                parts.remove(1)
            } else {
                RValue::Nil
            };
            let id = text(&parts[0])?;
            let bytes = |v: RValue| match v {
                RValue::BulkString(b) => b,
                other => text(&other).unwrap_or_default().into_bytes(),
            };
            let fields = match fields {
                RValue::Array(flat) => {
                    let mut out = Vec::with_capacity(flat.len() / 2);
                    let mut it = flat.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        out.push((text(&k).unwrap_or_default(), bytes(v)));
                    }
                    Some(out)
                }
                RValue::Map(pairs) => Some(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (text(&k).unwrap_or_default(), bytes(v)))
                        .collect(),
                ),
                _ => None,
            };
            Some(Entry { id, fields })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ok: RedisSourceConfig =
            toml::from_str("url = \"redis://127.0.0.1:6379\"\nchannels = [\"chat\"]").unwrap();
        assert!(ok.validate().is_ok());
        let none: RedisSourceConfig = toml::from_str("url = \"redis://127.0.0.1\"").unwrap();
        assert!(none.validate().unwrap_err().contains("channels"));
        let bad: RedisSourceConfig =
            toml::from_str("url = \"http://x\"\nchannels = [\"a\"]").unwrap();
        assert!(bad.validate().is_err());
        let s: RedisStreamSourceConfig =
            toml::from_str("url = \"redis://h\"\nstream = \"s\"\ngroup = \"g\"\nstart = \"all\"")
                .unwrap();
        assert_eq!(s.start, Start::All);
        assert_eq!(s.claim_idle_ms, 60_000);
        assert!(s.validate().is_ok());
        assert!(toml::from_str::<RedisStreamSourceConfig>(
            "url = \"redis://h\"\nstream = \"s\"\ngroup = \"g\"\nstrat = \"all\""
        )
        .is_err());
    }

    #[test]
    fn stream_replies_parse_with_deleted_entries() {
        let b = |s: &str| RValue::BulkString(s.as_bytes().to_vec());
        let reply = RValue::Array(vec![RValue::Array(vec![
            b("orders"),
            RValue::Array(vec![
                RValue::Array(vec![
                    b("1-0"),
                    RValue::Array(vec![b("data"), b("{\"a\":1}")]),
                ]),
                RValue::Array(vec![b("2-0"), RValue::Nil]),
            ]),
        ])]);
        let e = read_reply(reply);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].id, "1-0");
        assert_eq!(
            e[0].fields.as_ref().unwrap()[0],
            ("data".to_string(), b"{\"a\":1}".to_vec())
        );
        assert!(e[1].fields.is_none());
        assert!(read_reply(RValue::Nil).is_empty());
    }
}
