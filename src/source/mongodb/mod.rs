//! The `mongodb` source: a change stream on a collection, a database or the whole cluster —
//! one stream per source, never one per user — each change mapped to an event.
//!
//! ```toml
//! [[sources]]
//! name = "posts"
//! type = "mongodb"
//! url = "mongodb://db1,db2,db3/?replicaSet=rs0"
//! database = "social"              # omit for a cluster-wide stream
//! collection = "posts"             # omit for a database-wide stream
//! pipeline = { "$match" = { "fullDocument.visibility" = "public" } }   # optional
//! full_document = "updateLookup"   # updateLookup (default) | whenAvailable | required | default
//! full_document_before_change = "whenAvailable"   # off (default) | whenAvailable | required
//! reset_channels = ["feeds:reset"] # where `source.reset` goes (drop, rename, history lost)
//! channel = "feeds:{doc.feedId}"
//! event_type = "post.{op}"
//! users = "{doc.audience}"
//! exclude = ["internalNotes"]
//! ```
//!
//! - **Record**: `insert`/`replace` → `fullDocument`; `update` → `fullDocument` (with
//!   `updateLookup` the document as it is when looked up), or — when the server sent none —
//!   `documentKey` with `updateDescription.updatedFields` merged in; `delete` →
//!   `fullDocumentBeforeChange` (pre-images, when enabled on the collection and asked for) or
//!   `documentKey`. BSON becomes plain JSON (ObjectIds as hex strings, dates RFC 3339; see
//!   [`json`]) or, with `json = "relaxed"`, relaxed Extended JSON.
//! - **Key**: a digest of the change's resume token (its `_id`), so a change seen again after
//!   a restart is appended once.
//! - **Checkpoint**: the resume token after each appended batch (`{"resume_after": token}`),
//!   and the post-batch resume token every `idle_checkpoint_ms` while nothing matches (a quiet
//!   collection's checkpoint would otherwise fall out of the oplog). The first start begins
//!   with the next change and saves the stream's initial token at once.
//! - **drop / rename / dropDatabase** → a `source.reset` event on every `reset_channels`
//!   channel (clients refetch), then, after the `invalidate` that ends a collection or
//!   database stream, a new stream `startAfter` the invalidate: a collection dropped and
//!   created again is followed on.
//! - **History lost** (`ChangeStreamHistoryLost`, 286: the checkpoint's token is no longer in
//!   the oplog) → changes were missed and cannot be replayed: an error log line, a
//!   `source.reset` (`history_lost`), the checkpoint becomes "now", and the source reports the
//!   error (`last_error` in `/v1/status`) and restarts from now.
//! - **Transient errors** (connection lost, election, no server): the driver retries a failed
//!   `aggregate` once and resumes the stream by itself after every resumable error; what it
//!   gives up on reaches this source, which reopens from its checkpoint up to
//!   `MAX_QUICK_RECONNECTS` times with jittered backoff, then hands the error to the
//!   framework's supervisor (status `backoff`, `last_error`, restart with backoff).
//!   Authentication failures, invalid settings and servers that are not replica sets stop
//!   the source (`failed`).

pub mod driver;
pub mod json;

use std::sync::atomic::Ordering;
use std::time::Duration;

use ::mongodb::bson::{Bson, Document};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{BuildSource, Cause, Change, Op, Source, SourceContext, SourceError};
use crate::retry::backoff_with_jitter;
pub use driver::{
    ChangeCursor, DriverError, DriverErrorKind, MongoDriver, StartAt, Target, WatchSpec,
};
pub use json::JsonFormat;

/// Reconnects this source tries by itself after transient errors before it reports the error
/// to the supervisor.
pub const MAX_QUICK_RECONNECTS: u32 = 5;
/// Most change events appended in one batch (one append, one checkpoint).
const BATCH_MAX: usize = 512;
/// The event type of reset signals.
pub const RESET_TYPE: &str = "source.reset";

/// `full_document`: what `update` events carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FullDocument {
    /// The current document, looked up when the event is read.
    #[default]
    UpdateLookup,
    /// The post-image, when the collection records them.
    WhenAvailable,
    /// The post-image; an error when there is none.
    Required,
    /// No document: the record is the key and the updated fields.
    Default,
}

/// `full_document_before_change`: pre-images (the record of a `delete`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BeforeChange {
    #[default]
    Off,
    WhenAvailable,
    Required,
}

/// The settings of a `type = "mongodb"` source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MongoSourceConfig {
    /// `mongodb://…` or `mongodb+srv://…` (a replica set or sharded cluster: change streams
    /// need one).
    pub url: String,
    /// The database to watch; none: the whole cluster.
    #[serde(default)]
    pub database: Option<String>,
    /// The collection to watch; none: the whole database.
    #[serde(default)]
    pub collection: Option<String>,
    /// Aggregation stages run by the server on the change events: one stage (`{ "$match" =
    /// {…} }`), a list of stages, or the same as a JSON string (Extended JSON allowed).
    #[serde(default)]
    pub pipeline: Option<Value>,
    #[serde(default)]
    pub full_document: FullDocument,
    #[serde(default)]
    pub full_document_before_change: BeforeChange,
    /// Channels that get a `source.reset` event when the watched collection or database is
    /// dropped or renamed, or when the stream's history was lost.
    #[serde(default)]
    pub reset_channels: Vec<String>,
    /// `plain` (default) or `relaxed` (Extended JSON).
    #[serde(default)]
    pub json: JsonFormat,
    /// Change events per batch the server returns (driver default when unset).
    #[serde(default)]
    pub batch_size: Option<u32>,
    /// How often the resume token is saved while no change arrives (0: never).
    #[serde(default = "default_idle_checkpoint_ms")]
    pub idle_checkpoint_ms: u64,
}

fn default_idle_checkpoint_ms() -> u64 {
    30_000
}

/// Stages the server allows in a change stream pipeline.
const ALLOWED_STAGES: [&str; 8] = [
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
    "$redact",
];

impl MongoSourceConfig {
    /// The pipeline as BSON stages.
    pub fn pipeline_stages(&self) -> Result<Vec<Document>, String> {
        let Some(p) = &self.pipeline else {
            return Ok(vec![]);
        };
        let parsed;
        let p = match p {
            Value::String(s) => {
                parsed = serde_json::from_str::<Value>(s)
                    .map_err(|e| format!("pipeline: not JSON: {e}"))?;
                &parsed
            }
            other => other,
        };
        let stages: Vec<&Value> = match p {
            Value::Array(items) => items.iter().collect(),
            one @ Value::Object(_) => vec![one],
            _ => return Err("pipeline: give a stage (a table) or a list of stages".into()),
        };
        stages
            .into_iter()
            .map(|stage| {
                let Value::Object(map) = stage else {
                    return Err("pipeline: every stage is a table".to_string());
                };
                let name = match map.keys().collect::<Vec<_>>().as_slice() {
                    [one] => one.to_string(),
                    _ => return Err("pipeline: a stage has exactly one key, e.g. `$match`".into()),
                };
                if !ALLOWED_STAGES.contains(&name.as_str()) {
                    return Err(format!(
                        "pipeline: stage {name:?} is not allowed in a change stream (use {})",
                        ALLOWED_STAGES.join(", ")
                    ));
                }
                match Bson::try_from(stage.clone()) {
                    Ok(Bson::Document(d)) => Ok(d),
                    Ok(_) => Err(format!("pipeline: stage {name:?} is not a document")),
                    Err(e) => Err(format!("pipeline: stage {name:?}: {e}")),
                }
            })
            .collect()
    }

    /// What the real driver opens.
    pub fn watch_spec(&self) -> Result<WatchSpec, String> {
        let target = match (&self.database, &self.collection) {
            (None, None) => Target::Cluster,
            (Some(db), None) => Target::Database(db.clone()),
            (Some(db), Some(c)) => Target::Collection(db.clone(), c.clone()),
            (None, Some(_)) => return Err("`collection` needs `database`".into()),
        };
        Ok(WatchSpec {
            target,
            pipeline: self.pipeline_stages()?,
            full_document: match self.full_document {
                FullDocument::UpdateLookup => Some("updateLookup".into()),
                FullDocument::WhenAvailable => Some("whenAvailable".into()),
                FullDocument::Required => Some("required".into()),
                FullDocument::Default => None,
            },
            full_document_before_change: match self.full_document_before_change {
                BeforeChange::Off => None,
                BeforeChange::WhenAvailable => Some("whenAvailable".into()),
                BeforeChange::Required => Some("required".into()),
            },
            batch_size: self.batch_size,
        })
    }
}

impl BuildSource for MongoSourceConfig {
    fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("mongodb://") || self.url.starts_with("mongodb+srv://")) {
            return Err("`url` must start with mongodb:// or mongodb+srv://".into());
        }
        if let Some(db) = &self.database {
            if db.is_empty()
                || db.len() > 63
                || db.chars().any(|c| "/\\. \"$\0".contains(c))
                || ["admin", "local", "config"].contains(&db.as_str())
            {
                return Err(format!(
                    "`database` {db:?} is not a database a change stream can watch"
                ));
            }
        }
        if let Some(c) = &self.collection {
            if c.is_empty() || c.contains(['$', '\0']) || c.starts_with("system.") {
                return Err(format!(
                    "`collection` {c:?} is not a collection a change stream can watch"
                ));
            }
        }
        self.watch_spec()?;
        for c in &self.reset_channels {
            crate::channel::validate_channel(c)
                .map_err(|e| format!("reset_channels: {c:?}: {e}"))?;
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(MongoSource::new(self.clone())))
    }
}

/// Where the stream stands, as saved in the checkpoint file (JSON; tokens in canonical
/// Extended JSON).
pub fn encode_checkpoint(start: &StartAt) -> String {
    let token = |t: &Document| Bson::Document(t.clone()).into_canonical_extjson();
    match start {
        StartAt::Now => json!({ "start": "now" }),
        StartAt::ResumeAfter(t) => json!({ "resume_after": token(t) }),
        StartAt::StartAfter(t) => json!({ "start_after": token(t) }),
    }
    .to_string()
}

/// The inverse of [`encode_checkpoint`].
pub fn decode_checkpoint(text: &str) -> Result<StartAt, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let token = |v: &Value| match Bson::try_from(v.clone()) {
        Ok(Bson::Document(d)) => Ok(d),
        _ => Err("the resume token is not a document".to_string()),
    };
    if let Some(t) = v.get("resume_after") {
        return Ok(StartAt::ResumeAfter(token(t)?));
    }
    if let Some(t) = v.get("start_after") {
        return Ok(StartAt::StartAfter(token(t)?));
    }
    if v.get("start").and_then(Value::as_str) == Some("now") {
        return Ok(StartAt::Now);
    }
    Err("neither resume_after, start_after nor start".into())
}

/// What to do about a driver error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Reconnect from the checkpoint after a backoff.
    Transient,
    /// The checkpoint is no longer in the oplog: reset, restart from now.
    HistoryLost,
    /// Retrying cannot help.
    Fatal,
}

/// Server error codes after which retrying cannot help: BadValue, FailedToParse,
/// Unauthorized, TypeMismatch, AuthenticationFailed, IllegalOperation, InvalidNamespace,
/// CommandNotSupportedOnView, ChangeStreamFatalError, unrecognized stage, unknown field,
/// "change streams are only supported on replica sets".
const FATAL_CODES: [i32; 12] = [2, 9, 13, 14, 18, 20, 73, 166, 280, 40324, 40415, 40573];

pub fn classify(e: &DriverError) -> ErrorClass {
    match &e.kind {
        DriverErrorKind::Transient => ErrorClass::Transient,
        DriverErrorKind::Config => ErrorClass::Fatal,
        // ChangeStreamHistoryLost; CappedPositionLost (the oplog rolled over under a cursor).
        DriverErrorKind::Server {
            code: 286 | 136, ..
        } => ErrorClass::HistoryLost,
        // Servers before 4.4 said it this way.
        DriverErrorKind::Server { code: 280, .. }
            if e.message.contains("no longer be in the oplog") =>
        {
            ErrorClass::HistoryLost
        }
        DriverErrorKind::Server { code, .. } if FATAL_CODES.contains(code) => ErrorClass::Fatal,
        DriverErrorKind::Server { .. } => ErrorClass::Transient,
    }
}

/// A digest of a resume token: the idempotency key of its change.
pub fn token_digest(token: &Document) -> String {
    let mut bytes = Vec::new();
    // Writing a document to memory cannot fail.
    let _ = token.to_writer(&mut bytes);
    Sha256::digest(&bytes)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The running source.
pub struct MongoSource {
    cfg: MongoSourceConfig,
}

enum Outcome {
    /// Told to stop.
    Stopped,
    /// An invalidate ended the stream; the checkpoint says where to start after it.
    Invalidated,
    /// The stream ended without an invalidate.
    Closed,
    Failed(DriverError),
}

impl MongoSource {
    /// The source over the real driver (connected when it runs).
    pub fn new(cfg: MongoSourceConfig) -> Self {
        Self { cfg }
    }

    async fn driver(&self) -> Result<MongoDriver, SourceError> {
        let spec = self
            .cfg
            .watch_spec()
            .map_err(|e| SourceError::Fatal(e.into()))?;
        match MongoDriver::connect(&self.cfg.url, spec).await {
            Ok(d) => Ok(d),
            Err(e) if classify(&e) == ErrorClass::Fatal => Err(SourceError::fatal("mongodb", e)),
            Err(e) => Err(SourceError::recoverable("mongodb", e)),
        }
    }

    /// Reads and follows the stream until stopped or until it ends or fails.
    async fn follow(
        &self,
        cx: &SourceContext,
        cursor: &mut ChangeCursor,
        start: &StartAt,
        failures: &mut u32,
    ) -> Result<Outcome, SourceError> {
        let mut saved = match start {
            StartAt::Now => None,
            StartAt::ResumeAfter(t) | StartAt::StartAfter(t) => Some(t.clone()),
        };
        if saved.is_none() {
            // From now: remember where "now" was, so that a restart misses nothing.
            if let Some(t) = cursor.resume_token() {
                cx.emit(
                    &[],
                    Some(&encode_checkpoint(&StartAt::ResumeAfter(t.clone()))),
                )
                .await?;
                saved = Some(t);
            }
        }
        let idle_every = Duration::from_millis(self.cfg.idle_checkpoint_ms.max(1));
        let mut idle =
            tokio::time::interval_at(tokio::time::Instant::now() + idle_every, idle_every);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reset_sent = false;
        loop {
            let first = tokio::select! {
                biased;
                _ = cx.cancelled() => return Ok(Outcome::Stopped),
                item = cursor.next() => item,
                _ = idle.tick(), if self.cfg.idle_checkpoint_ms > 0 => {
                    if let Some(t) = cursor.resume_token() {
                        if saved.as_ref() != Some(&t) {
                            cx.emit(&[], Some(&encode_checkpoint(&StartAt::ResumeAfter(t.clone()))))
                                .await?;
                            saved = Some(t);
                        }
                    }
                    continue;
                }
            };
            let mut batch = match first {
                None => return Ok(Outcome::Closed),
                Some(Err(e)) => return Ok(Outcome::Failed(e)),
                Some(Ok(doc)) => vec![doc],
            };
            // Whatever else is already here goes into the same append.
            let mut end = None;
            while batch.len() < BATCH_MAX {
                match cursor.next().now_or_never() {
                    Some(Some(Ok(doc))) => batch.push(doc),
                    Some(Some(Err(e))) => {
                        end = Some(Outcome::Failed(e));
                        break;
                    }
                    Some(None) => {
                        end = Some(Outcome::Closed);
                        break;
                    }
                    None => break,
                }
            }
            *failures = 0;
            if self.apply(cx, batch, &mut saved, &mut reset_sent).await? {
                return Ok(Outcome::Invalidated);
            }
            if let Some(end) = end {
                return Ok(end);
            }
        }
    }

    /// Appends the changes of `batch` and checkpoints after them; true when an invalidate
    /// ended the stream.
    async fn apply(
        &self,
        cx: &SourceContext,
        batch: Vec<Document>,
        saved: &mut Option<Document>,
        reset_sent: &mut bool,
    ) -> Result<bool, SourceError> {
        let mut changes = Vec::with_capacity(batch.len());
        let mut last: Option<Document> = None;
        for doc in batch {
            let token = match doc.get("_id") {
                Some(Bson::Document(t)) => t.clone(),
                _ => {
                    return Err(SourceError::Fatal(
                        "a change event has no `_id` (its resume token): the pipeline must not remove or change `_id`".into(),
                    ))
                }
            };
            let op = doc.get_str("operationType").unwrap_or_default().to_owned();
            match op.as_str() {
                "insert" | "update" | "replace" | "delete" => {
                    changes.push(self.change(&op, doc, &token));
                    last = Some(token);
                }
                "drop" | "rename" | "dropDatabase" => {
                    self.flush(cx, &mut changes, &mut last, saved).await?;
                    let cp = encode_checkpoint(&StartAt::ResumeAfter(token.clone()));
                    self.reset(cx, &op, &doc, &token, &cp).await?;
                    *saved = Some(token);
                    *reset_sent = true;
                }
                "invalidate" => {
                    self.flush(cx, &mut changes, &mut last, saved).await?;
                    let cp = encode_checkpoint(&StartAt::StartAfter(token.clone()));
                    if *reset_sent {
                        cx.emit(&[], Some(&cp)).await?;
                    } else {
                        self.reset(cx, "invalidate", &doc, &token, &cp).await?;
                    }
                    *saved = Some(token);
                    tracing::info!(source = %cx.name, "change stream invalidated; reopening after the invalidate (startAfter)");
                    return Ok(true);
                }
                // Other events (index builds, `create`, `modify`… with showExpandedEvents): only
                // the checkpoint moves past them.
                _ => last = Some(token),
            }
        }
        self.flush(cx, &mut changes, &mut last, saved).await?;
        Ok(false)
    }

    async fn flush(
        &self,
        cx: &SourceContext,
        changes: &mut Vec<Change>,
        last: &mut Option<Document>,
        saved: &mut Option<Document>,
    ) -> Result<(), SourceError> {
        let Some(token) = last.take() else {
            return Ok(());
        };
        cx.emit(
            changes,
            Some(&encode_checkpoint(&StartAt::ResumeAfter(token.clone()))),
        )
        .await?;
        changes.clear();
        *saved = Some(token);
        Ok(())
    }

    /// The change of one insert/update/replace/delete event.
    fn change(&self, op: &str, mut doc: Document, token: &Document) -> Change {
        let place = namespace(&doc, "ns");
        let key = doc.remove("documentKey");
        let doc_of = |doc: &mut Document, field: &str| match doc.remove(field) {
            Some(Bson::Document(d)) => Some(d),
            _ => None,
        };
        let key_doc = match key {
            Some(Bson::Document(d)) => d,
            _ => Document::new(),
        };
        let (op, record) = match op {
            "insert" => (
                Op::Insert,
                doc_of(&mut doc, "fullDocument").unwrap_or(key_doc),
            ),
            "replace" => (
                Op::Replace,
                doc_of(&mut doc, "fullDocument").unwrap_or(key_doc),
            ),
            "update" => (
                Op::Update,
                match doc_of(&mut doc, "fullDocument") {
                    Some(full) => full,
                    None => {
                        let mut record = key_doc;
                        if let Some(Bson::Document(mut desc)) = doc.remove("updateDescription") {
                            if let Some(Bson::Document(fields)) = desc.remove("updatedFields") {
                                for (k, v) in fields {
                                    record.insert(k, v);
                                }
                            }
                        }
                        record
                    }
                },
            ),
            _ => (
                Op::Delete,
                doc_of(&mut doc, "fullDocumentBeforeChange").unwrap_or(key_doc),
            ),
        };
        Change {
            op,
            record: json::document(record, self.cfg.json),
            place,
            key: token_digest(token),
        }
    }

    /// Appends `source.reset` on every reset channel (idempotent per event) and checkpoints.
    async fn reset(
        &self,
        cx: &SourceContext,
        reason: &str,
        doc: &Document,
        token: &Document,
        checkpoint: &str,
    ) -> Result<(), SourceError> {
        let ns = namespace(doc, "ns");
        let to = namespace(doc, "to");
        tracing::warn!(source = %cx.name, reason, namespace = %ns, to = %to, "the watched namespace changed; clients are told to refetch (source.reset)");
        let data = json!({
            "source": &*cx.name,
            "reason": reason,
            "namespace": (!ns.is_empty()).then_some(ns),
            "to": (!to.is_empty()).then_some(to),
        });
        let key = format!("src:{}:reset:{}", cx.name, token_digest(token));
        self.send_reset(cx, data, key, checkpoint).await
    }

    async fn send_reset(
        &self,
        cx: &SourceContext,
        data: Value,
        key: String,
        checkpoint: &str,
    ) -> Result<(), SourceError> {
        if self.cfg.reset_channels.is_empty() {
            return cx.emit(&[], Some(checkpoint)).await;
        }
        let data = serde_json::value::to_raw_value(&data).expect("JSON values serialize");
        let now = crate::time::now_ms();
        let mut events = Vec::with_capacity(self.cfg.reset_channels.len());
        for channel in &self.cfg.reset_channels {
            match cx.own_event(channel.clone(), RESET_TYPE, data.clone(), now) {
                Ok(event) => events.push(event),
                Err(e) => {
                    cx.status.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(source = %cx.name, %channel, error = %e, "reset signal skipped");
                }
            }
        }
        cx.emit_events(events, Some(key), Some(checkpoint)).await
    }

    /// The checkpoint is older than the oplog: say so everywhere, restart from now.
    async fn history_lost(
        &self,
        cx: &SourceContext,
        start: &StartAt,
        error: &DriverError,
    ) -> Result<String, SourceError> {
        let message = format!(
            "change stream history lost: the checkpoint's resume token is no longer in the oplog ({error}); \
             changes since the checkpoint were MISSED; `source.reset` sent, restarting from now"
        );
        tracing::error!(source = %cx.name, error = %error, "{message}");
        let basis = match start {
            StartAt::ResumeAfter(t) | StartAt::StartAfter(t) => token_digest(t),
            StartAt::Now => crate::time::now_ms().to_string(),
        };
        let data = json!({
            "source": &*cx.name,
            "reason": "history_lost",
            "message": "changes were missed; refetch the state",
        });
        let key = format!("src:{}:lost:{basis}", cx.name);
        self.send_reset(cx, data, key, &encode_checkpoint(&StartAt::Now))
            .await?;
        Ok(message)
    }
}

/// `db.coll` (or `db`) of a namespace field (`ns`, `to`); empty when absent.
fn namespace(doc: &Document, field: &str) -> String {
    let Ok(ns) = doc.get_document(field) else {
        return String::new();
    };
    match (ns.get_str("db"), ns.get_str("coll")) {
        (Ok(db), Ok(coll)) => format!("{db}.{coll}"),
        (Ok(db), Err(_)) => db.to_owned(),
        _ => String::new(),
    }
}

#[async_trait]
impl Source for MongoSource {
    async fn run(&mut self, cx: &SourceContext) -> Result<(), SourceError> {
        let driver = self.driver().await?;
        let mut failures = 0u32;
        loop {
            let start = match cx.checkpoint()? {
                None => StartAt::Now,
                Some(text) => decode_checkpoint(&text).map_err(|e| {
                    SourceError::Fatal(format!(
                        "the checkpoint file of source {:?} is unreadable ({e}); delete it to start from now",
                        cx.name
                    ).into())
                })?,
            };
            let opened = tokio::select! {
                _ = cx.cancelled() => return Ok(()),
                r = driver.open(&start) => r,
            };
            let outcome = match opened {
                Ok(mut cursor) => self.follow(cx, &mut cursor, &start, &mut failures).await?,
                Err(e) => Outcome::Failed(e),
            };
            let error = match outcome {
                Outcome::Stopped => return Ok(()),
                Outcome::Invalidated => continue,
                Outcome::Closed => DriverError::transient("the server closed the change stream"),
                Outcome::Failed(e) => e,
            };
            match classify(&error) {
                ErrorClass::HistoryLost if start != StartAt::Now => {
                    let message = self.history_lost(cx, &start, &error).await?;
                    return Err(SourceError::Recoverable(Cause::rendering(message, error)));
                }
                ErrorClass::Fatal => {
                    return Err(SourceError::fatal("change stream", error));
                }
                _ => {
                    failures += 1;
                    if failures > MAX_QUICK_RECONNECTS {
                        let message = format!(
                            "change stream: {error} (after {MAX_QUICK_RECONNECTS} reconnects)"
                        );
                        return Err(SourceError::Recoverable(Cause::rendering(message, error)));
                    }
                    cx.status.restarts.fetch_add(1, Ordering::Relaxed);
                    let wait = backoff_with_jitter(failures);
                    tracing::warn!(source = %cx.name, error = %error, attempt = failures, ?wait, "change stream error; reopening from the checkpoint");
                    if cx.sleep(wait).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::mongodb::bson::doc;

    fn config(extra: &str) -> Result<MongoSourceConfig, String> {
        let text = format!("url = \"mongodb://localhost/?replicaSet=rs0\"\n{extra}");
        let c: MongoSourceConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn settings_parse_and_are_checked() {
        let c = config(
            "database = \"social\"\ncollection = \"posts\"\nfull_document = \"whenAvailable\"\n\
             full_document_before_change = \"required\"\nreset_channels = [\"feeds:reset\"]\n\
             pipeline = { \"$match\" = { \"fullDocument.visibility\" = \"public\" } }",
        )
        .unwrap();
        assert_eq!(c.full_document, FullDocument::WhenAvailable);
        let spec = c.watch_spec().unwrap();
        assert_eq!(
            spec.target,
            Target::Collection("social".into(), "posts".into())
        );
        assert_eq!(
            spec.pipeline,
            vec![doc! { "$match": { "fullDocument.visibility": "public" } }]
        );
        // A JSON string with Extended JSON, and a list of stages.
        let c = config(
            r#"database = "social"
pipeline = '[{"$match": {"operationType": {"$in": ["insert", "update"]}, "fullDocument.at": {"$gt": {"$date": "2024-01-01T00:00:00Z"}}}}]'"#,
        )
        .unwrap();
        let stages = c.pipeline_stages().unwrap();
        assert!(matches!(
            stages[0]
                .get_document("$match")
                .unwrap()
                .get_document("fullDocument.at")
                .unwrap()
                .get("$gt"),
            Some(Bson::DateTime(_))
        ));
        assert_eq!(
            config("").unwrap().watch_spec().unwrap().target,
            Target::Cluster
        );
        for (bad, what) in [
            ("collection = \"posts\"", "database"),
            ("database = \"a.b\"", "database"),
            ("database = \"admin\"", "database"),
            ("database = \"d\"\npipeline = { \"$out\" = \"x\" }", "$out"),
            ("database = \"d\"\npipeline = 3", "pipeline"),
            ("reset_channels = [\"bad channel\"]", "reset_channels"),
            ("full_document = \"sometimes\"", "sometimes"),
            ("databse = \"d\"", "databse"),
        ] {
            let err = config(bad).unwrap_err();
            assert!(err.contains(what), "{bad}: {err}");
        }
        let mut c = config("").unwrap();
        c.url = "http://x".into();
        assert!(c.validate().unwrap_err().contains("mongodb://"));
    }

    #[test]
    fn checkpoints_round_trip() {
        let t = doc! { "_data": "8265604A10000000012B022C0100296E5A1004" };
        for s in [
            StartAt::Now,
            StartAt::ResumeAfter(t.clone()),
            StartAt::StartAfter(t.clone()),
        ] {
            assert_eq!(decode_checkpoint(&encode_checkpoint(&s)).unwrap(), s);
        }
        assert!(decode_checkpoint("{}").is_err());
        assert_eq!(token_digest(&t).len(), 32);
        assert_ne!(token_digest(&t), token_digest(&doc! { "_data": "82" }));
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(
            classify(&DriverError::server(286, "ChangeStreamHistoryLost", "x")),
            ErrorClass::HistoryLost
        );
        assert_eq!(
            classify(&DriverError::server(
                280,
                "ChangeStreamFatalError",
                "resume of change stream was not possible, as the resume point may no longer be in the oplog."
            )),
            ErrorClass::HistoryLost
        );
        assert_eq!(
            classify(&DriverError::server(18, "AuthenticationFailed", "x")),
            ErrorClass::Fatal
        );
        assert_eq!(
            classify(&DriverError::server(91, "ShutdownInProgress", "x")),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(&DriverError::transient("reset by peer")),
            ErrorClass::Transient
        );
        assert_eq!(classify(&DriverError::config("bad")), ErrorClass::Fatal);
    }
}
