//! Sources: watchers inside the gateway that turn changes elsewhere (database rows, documents,
//! messages) into events — one watcher per table or collection, never one per user.
//!
//! A source is a `[[sources]]` table: a `name`, a `type`, the mapping templates (see
//! [`mapping`]) and the type's own settings. Adding a type is a new module with a config
//! struct implementing [`BuildSource`] and one variant of [`SourceKind`].
//!
//! Guarantees every source gets from this framework ([`SourceContext::emit`]):
//!
//! - **Nothing skipped**: a batch of changes is appended to the log (retrying while the log is
//!   unavailable) and only *then* is the source's checkpoint (resume token, LSN, last key)
//!   saved, with an fsync. A restart resumes from the checkpoint, so a change is never lost.
//! - **No duplicate**: each change's key (see [`Change::key`]) is its event's idempotency key,
//!   so a change seen again after a restart (between append and checkpoint) appends nothing.
//! - **Errors are classified**: [`SourceError::Recoverable`] restarts the source with jittered
//!   exponential backoff; [`SourceError::Fatal`] stops it (`failed` in `/v1/status`, logged).
//! - A change whose channel cannot be built from its fields is skipped, counted and logged —
//!   never published on a wrong channel.
//!
//! Checkpoints live in `server.data_dir/sources/<name>.checkpoint`: run a given source on one
//! node of a cluster.

pub mod dapr;
mod ingest;
pub mod kafka;
pub mod mapping;
pub mod mongodb;
pub mod nats;
pub mod postgres;
pub mod redis;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::log::{AppendItem, EventLog, LogError, NewEvent};
use crate::retry::{backoff_with_jitter, sleep_or_cancel};
pub use mapping::{Change, Mapping, MappingError, Op};

/// Any error a source wraps: a driver's, an I/O error, a decoder's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a source stopped running.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Worth retrying (connection lost, server restarting): the source restarts after a
    /// backoff and resumes from its checkpoint.
    #[error(transparent)]
    Recoverable(Cause),
    /// Retrying will not help (bad credentials, a table that does not exist, a setting the
    /// database refuses): the source stops until started again.
    #[error(transparent)]
    Fatal(Cause),
}

impl SourceError {
    /// Recoverable: `context` (what the source was doing) failed with `source`.
    pub fn recoverable(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Recoverable(Cause::new(context, source))
    }

    /// Fatal: `context` (what the source was doing) failed with `source`.
    pub fn fatal(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Fatal(Cause::new(context, source))
    }

    /// What went wrong, whichever the class.
    pub fn cause(&self) -> &Cause {
        match self {
            Self::Recoverable(c) | Self::Fatal(c) => c,
        }
    }
}

/// What went wrong in a source: a sentence saying what it was doing and, when an error
/// underneath caused it, that error (kept whole: its type and its own sources).
///
/// `Display` is the sentence alone (the error underneath is [`Error::source`](std::error::Error::source));
/// [`Cause::chain`] is the sentence and every source after it, as `/v1/status` and the log
/// show it.
#[derive(Debug)]
pub struct Cause {
    message: String,
    source: Option<BoxError>,
    /// The message already renders `source` (in more useful words than its `Display`, as
    /// a PostgreSQL error's code and hint): the chain does not repeat it.
    rendered: bool,
    /// Advice appended after the chain (what to grant, what to create).
    note: Option<String>,
}

impl Cause {
    /// `message` failed with `source`.
    pub fn new(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
            rendered: false,
            note: None,
        }
    }

    /// A `message` that already says everything `source` does, in its own words: the source
    /// is kept (for callers that look at it) but not shown again by [`Cause::chain`].
    pub fn rendering(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            rendered: true,
            ..Self::new(message, source)
        }
    }

    /// Adds advice shown after the chain.
    pub fn with_note(mut self, note: impl std::fmt::Display) -> Self {
        self.note = Some(match self.note.take() {
            Some(n) => format!("{n}; {note}"),
            None => note.to_string(),
        });
        self
    }

    /// The message, each source's message after a `: ` (one that an outer message already
    /// contains is not repeated), then the note after a `; `.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        if !self.rendered {
            crate::logfmt::append_causes(
                &mut out,
                self.source
                    .as_deref()
                    .map(|e| e as &(dyn std::error::Error + 'static)),
            );
        }
        if let Some(note) = &self.note {
            out.push_str("; ");
            out.push_str(note);
        }
        out
    }

    /// Whether [`Cause::chain`] mentions `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.chain().contains(needle)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A cause with no error underneath: the message says it all.
impl From<String> for Cause {
    fn from(message: String) -> Self {
        Self {
            message,
            source: None,
            rendered: false,
            note: None,
        }
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

/// A running watcher. `run` resumes from [`SourceContext::checkpoint`], hands changes to
/// [`SourceContext::emit`] and returns when [`SourceContext::cancelled`] fires (`Ok`) or on an
/// error.
#[async_trait]
pub trait Source: Send + 'static {
    async fn run(&mut self, cx: &SourceContext) -> Result<(), SourceError>;
}

/// A source type's config: checks itself and builds the running source.
pub trait BuildSource {
    /// Checks the settings (without connecting anywhere); the message names what is wrong.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
    fn build(&self) -> Result<Box<dyn Source>, SourceError>;
}

/// The types of source, by `type`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceKind {
    /// Changes given by the test or the caller, in order (a test double, and a way to
    /// replay a fixed list): `changes = [{op, record, place, key}]`.
    Vec(VecSourceConfig),
    /// PostgreSQL logical decoding (pgoutput) of tables: see [`postgres::cdc`].
    Postgres(postgres::PostgresConfig),
    /// A PostgreSQL outbox table read on LISTEN/NOTIFY: see [`postgres::notify`].
    PostgresNotify(postgres::PostgresNotifyConfig),
    /// A PostgreSQL table polled on an increasing column: see [`postgres::poll`].
    PostgresPoll(postgres::PostgresPollConfig),
    /// MongoDB change streams (collection, database or cluster): see [`mongodb`].
    Mongodb(mongodb::MongoSourceConfig),
    /// Redis Pub/Sub channels and patterns (at most once): see [`redis`].
    Redis(redis::RedisSourceConfig),
    /// A Redis stream read with a consumer group (at least once): see [`redis`].
    RedisStream(redis::RedisStreamSourceConfig),
    /// NATS subjects, or a JetStream durable consumer: see [`nats`].
    Nats(nats::NatsSourceConfig),
    /// A Dapr pub/sub subscription delivered over HTTP: see [`dapr`].
    Dapr(dapr::DaprSourceConfig),
    /// Kafka topics read with a consumer group (at least once, keyed): see [`kafka`].
    Kafka(kafka::KafkaSourceConfig),
}

impl SourceKind {
    fn builder(&self) -> &dyn BuildSource {
        match self {
            SourceKind::Vec(c) => c,
            SourceKind::Postgres(c) => c,
            SourceKind::PostgresNotify(c) => c,
            SourceKind::PostgresPoll(c) => c,
            SourceKind::Mongodb(c) => c,
            SourceKind::Redis(c) => c,
            SourceKind::RedisStream(c) => c,
            SourceKind::Nats(c) => c,
            SourceKind::Dapr(c) => c,
            SourceKind::Kafka(c) => c,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            SourceKind::Vec(_) => "vec",
            SourceKind::Postgres(_) => "postgres",
            SourceKind::PostgresNotify(_) => "postgres_notify",
            SourceKind::PostgresPoll(_) => "postgres_poll",
            SourceKind::Mongodb(_) => "mongodb",
            SourceKind::Redis(_) => "redis",
            SourceKind::RedisStream(_) => "redis_stream",
            SourceKind::Nats(_) => "nats",
            SourceKind::Dapr(_) => "dapr",
            SourceKind::Kafka(_) => "kafka",
        }
    }
}

/// One `[[sources]]` table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceConfig {
    /// Unique name: in `/v1/status`, metrics, the checkpoint file and `{source}`.
    pub name: String,
    /// Start with the gateway (else only by `POST /v1/sources/{name}/start`).
    pub auto_start: bool,
    #[serde(flatten)]
    pub mapping: Mapping,
    #[serde(flatten)]
    pub kind: SourceKind,
}

/// Keys of a `[[sources]]` table that belong to the mapping, not to the source type.
const MAPPING_KEYS: [&str; 5] = ["channel", "event_type", "users", "include", "exclude"];

impl<'de> Deserialize<'de> for SourceConfig {
    /// The table is flat (api.md): the common keys are taken out, the rest must be exactly
    /// the type's settings (an unknown key is an error that names it).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table: BTreeMap<String, toml::Value> = BTreeMap::deserialize(d)?;
        let name = match table.remove("name") {
            Some(toml::Value::String(s)) if !s.is_empty() => s,
            Some(_) => return Err(D::Error::custom("`name` must be a non-empty string")),
            None => return Err(D::Error::custom("missing field `name`")),
        };
        let auto_start = match table.remove("auto_start") {
            None => true,
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => return Err(D::Error::custom("`auto_start` must be true or false")),
        };
        let mut mapping = toml::Table::new();
        for k in MAPPING_KEYS {
            if let Some(v) = table.remove(k) {
                mapping.insert(k.to_owned(), v);
            }
        }
        let mapping = Mapping::deserialize(toml::Value::Table(mapping))
            .map_err(|e| D::Error::custom(format!("source {name:?}: {e}")))?;
        let kind = SourceKind::deserialize(toml::Value::Table(table.into_iter().collect()))
            .map_err(|e| D::Error::custom(format!("source {name:?}: {e}")))?;
        Ok(SourceConfig {
            name,
            auto_start,
            mapping,
            kind,
        })
    }
}

/// Why the `[[sources]]` tables cannot run; each names the source.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceConfigError {
    #[error("source name {0:?}: use 1 to 64 letters, digits, `-` and `_`")]
    Name(String),
    /// A mapping template (see [`mapping`]) is wrong.
    #[error("source {name:?}: {message}")]
    Mapping { name: String, message: String },
    /// The type's own settings ([`BuildSource::validate`]) are wrong.
    #[error("source {name:?}: {message}")]
    Settings { name: String, message: String },
    #[error("two sources are named {0:?}")]
    Duplicate(String),
}

impl SourceConfig {
    /// Checks names, templates and the type's settings.
    pub fn validate(&self) -> Result<(), SourceConfigError> {
        if self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SourceConfigError::Name(self.name.clone()));
        }
        self.mapping
            .validate()
            .map_err(|message| SourceConfigError::Mapping {
                name: self.name.clone(),
                message,
            })?;
        self.kind
            .builder()
            .validate()
            .map_err(|message| SourceConfigError::Settings {
                name: self.name.clone(),
                message,
            })
    }
}

/// Where a source stands, for `/v1/status` and metrics.
#[derive(Debug, Default)]
pub struct SourceStatus {
    state: Mutex<State>,
    /// Events appended.
    pub events: AtomicU64,
    /// Changes skipped because no valid channel (or type) could be built from them.
    pub skipped: AtomicU64,
    /// Times the source restarted after a recoverable error.
    pub restarts: AtomicU64,
    /// Publish time (Unix ms) of the newest change appended; 0 = none yet.
    pub last_change_ms: AtomicU64,
}

#[derive(Debug, Clone, Default)]
struct State {
    state: &'static str,
    last_error: Option<String>,
    checkpoint: Option<String>,
}

impl SourceStatus {
    fn set(&self, state: &'static str, error: Option<String>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.state = state;
        if error.is_some() {
            s.last_error = error;
        }
    }

    /// `backoff` with `error` for a source that waits for its server while its client
    /// reconnects by itself (no restart): `/v1/status` and `ssegate_source_running` say so.
    pub fn set_waiting(&self, error: String) {
        self.set("backoff", Some(error));
    }

    /// `running` again after [`SourceStatus::set_waiting`] (the last error stays shown).
    pub fn set_running(&self) {
        self.set("running", None);
    }

    /// Shows `error` in `/v1/status` (`last_error`) while the source goes on running (an
    /// error its client retries by itself).
    pub fn note_error(&self, error: String) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(error);
    }

    /// Where the source stands, for `/v1/status`: its saved checkpoint, or for a source
    /// without a checkpoint file (a Kafka group's offsets) its position.
    pub fn set_position(&self, position: String) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .checkpoint = Some(position);
    }

    /// `stopped`, `starting`, `running`, `backoff` or `failed`.
    pub fn state(&self) -> &'static str {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.state.is_empty() {
            "stopped"
        } else {
            s.state
        }
    }

    pub fn to_json(&self, name: &str, kind: &str) -> serde_json::Value {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        serde_json::json!({
            "name": name,
            "type": kind,
            "state": if s.state.is_empty() { "stopped" } else { s.state },
            "last_error": s.last_error,
            "checkpoint": s.checkpoint,
            "events": self.events.load(Ordering::Relaxed),
            "skipped": self.skipped.load(Ordering::Relaxed),
            "restarts": self.restarts.load(Ordering::Relaxed),
            "last_change_ms": self.last_change_ms.load(Ordering::Relaxed),
        })
    }
}

/// What a running source is given.
#[derive(Clone)]
pub struct SourceContext {
    pub name: Arc<str>,
    mapping: Arc<Mapping>,
    log: Arc<dyn EventLog>,
    checkpoints: CheckpointStore,
    pub status: Arc<SourceStatus>,
    stop: CancellationToken,
    /// `limits.max_event_bytes`: larger changes are skipped, as a publish would be refused.
    max_event_bytes: usize,
}

impl SourceContext {
    /// A context outside [`Sources`] (tests, embedding): source `name` maps with `mapping`,
    /// appends to `log`, keeps its checkpoint in `checkpoint_dir` and stops when `stop` fires.
    pub fn new(
        name: &str,
        mapping: Mapping,
        log: Arc<dyn EventLog>,
        checkpoint_dir: PathBuf,
        stop: CancellationToken,
    ) -> Self {
        Self {
            name: Arc::from(name),
            mapping: Arc::new(mapping),
            log,
            checkpoints: CheckpointStore::new(checkpoint_dir),
            status: Arc::new(SourceStatus::default()),
            stop,
            max_event_bytes: crate::event::DEFAULT_MAX_EVENT_BYTES,
        }
    }

    /// Where the previous run stopped (saved by [`SourceContext::emit`]), if anywhere.
    pub fn checkpoint(&self) -> Result<Option<String>, SourceError> {
        self.checkpoints
            .load(&self.name)
            .map_err(|e| SourceError::fatal("cannot read the checkpoint", e))
    }

    /// Fires when the source must stop (stop request or shutdown).
    pub async fn cancelled(&self) {
        self.stop.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Sleeps, or returns true early when the source must stop.
    pub async fn sleep(&self, d: Duration) -> bool {
        sleep_or_cancel(d, &self.stop).await
    }

    /// Appends the events of `changes` (one atomic batch, each change keyed by its
    /// [`Change::key`]), retrying while the log is unavailable, and then saves `checkpoint`.
    /// Returns only when both are durable (or with `Recoverable` when told to stop first, in
    /// which case the checkpoint was not saved and the changes will be seen again).
    pub async fn emit(
        &self,
        changes: &[Change],
        checkpoint: Option<&str>,
    ) -> Result<(), SourceError> {
        self.emit_with_meta(changes, &[], checkpoint).await
    }

    /// [`SourceContext::emit`] of changes that carry their message's metadata: `metas[i]`
    /// (when there) is what the templates see of `changes[i]` besides its record (see
    /// [`Mapping::event_with`]).
    pub async fn emit_with_meta(
        &self,
        changes: &[Change],
        metas: &[serde_json::Value],
        checkpoint: Option<&str>,
    ) -> Result<(), SourceError> {
        let now = crate::time::now_ms();
        let mut items = Vec::with_capacity(changes.len());
        for (i, change) in changes.iter().enumerate() {
            let event = self.mapping.event_with(
                &self.name,
                change,
                metas.get(i),
                now,
                self.max_event_bytes,
            );
            match event {
                Ok(event) => items.push(AppendItem {
                    key: Some(format!("src:{}:{}", self.name, change.key)),
                    events: vec![event],
                }),
                Err(e) => {
                    self.status.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(source = %self.name, key = %change.key, error = %e, "change skipped");
                }
            }
        }
        let count = items.len() as u64;
        if !items.is_empty() {
            self.append(items).await?;
        }
        if let Some(cp) = checkpoint {
            self.save_checkpoint(cp)?;
        }
        self.status.events.fetch_add(count, Ordering::Relaxed);
        if count > 0 {
            self.status.last_change_ms.store(now, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The event of `change` by this source's mapping, through the event gate with
    /// `limits.max_event_bytes`: a change whose event fails it is to be skipped (counted in
    /// `skipped`, logged), as a publish would be refused.
    pub fn event(&self, change: &Change, time_ms: u64) -> Result<NewEvent, MappingError> {
        self.mapping
            .event(&self.name, change, time_ms, self.max_event_bytes)
    }

    /// An event of this source's own (a reset signal), through the event gate.
    pub fn own_event(
        &self,
        channel: String,
        kind: &str,
        data: Box<serde_json::value::RawValue>,
        time_ms: u64,
    ) -> Result<NewEvent, crate::event::EventError> {
        NewEvent::new(
            channel,
            kind.into(),
            data,
            None,
            time_ms,
            self.max_event_bytes,
        )
    }

    /// Appends `events` (made by [`SourceContext::event`] or [`SourceContext::own_event`]),
    /// under `key` when given.
    pub async fn emit_events(
        &self,
        events: Vec<NewEvent>,
        key: Option<String>,
        checkpoint: Option<&str>,
    ) -> Result<(), SourceError> {
        let count = events.len() as u64;
        if !events.is_empty() {
            self.append(vec![AppendItem { key, events }]).await?;
        }
        if let Some(cp) = checkpoint {
            self.save_checkpoint(cp)?;
        }
        self.status.events.fetch_add(count, Ordering::Relaxed);
        self.status
            .last_change_ms
            .store(crate::time::now_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// The mapping templates of this source.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    async fn append(&self, items: Vec<AppendItem>) -> Result<(), SourceError> {
        let mut failures = 0;
        loop {
            match self.log.append(items.clone(), crate::time::now_ms()).await {
                Ok(_) => return Ok(()),
                Err(e @ (LogError::TooLarge(_) | LogError::Config(_))) => {
                    return Err(SourceError::fatal("the log refuses the batch", e))
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(source = %self.name, error = %e, "cannot append; retrying");
                    }
                    if self.sleep(backoff_with_jitter(failures)).await {
                        return Err(SourceError::Recoverable(
                            "stopped while the log was unavailable".into(),
                        ));
                    }
                }
            }
        }
    }

    fn save_checkpoint(&self, cp: &str) -> Result<(), SourceError> {
        self.checkpoints
            .save(&self.name, cp)
            .map_err(|e| SourceError::fatal("cannot save the checkpoint", e))?;
        self.status.set_position(cp.to_owned());
        Ok(())
    }
}

/// Checkpoints as small files, replaced atomically (write, fsync, rename, fsync the folder).
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.checkpoint"))
    }

    pub fn load(&self, name: &str) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(self.path(name)) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, name: &str, value: &str) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{name}.checkpoint.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(value.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.path(name))?;
        sync_dir(&self.dir)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Why a start or stop request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no source named {0:?}")]
    Unknown(String),
}

struct Entry {
    cfg: SourceConfig,
    /// `cfg.mapping`, shared by every context of the source (built once, not per delivery).
    mapping: Arc<Mapping>,
    status: Arc<SourceStatus>,
    running: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

/// The configured sources of this node: started, stopped, and shown.
pub struct Sources {
    entries: BTreeMap<String, Entry>,
    log: Arc<dyn EventLog>,
    checkpoints: CheckpointStore,
    shutdown: CancellationToken,
    max_event_bytes: usize,
}

impl Sources {
    /// Checks every source's config (names unique); starts nothing.
    pub fn new(
        configs: &[SourceConfig],
        log: Arc<dyn EventLog>,
        checkpoint_dir: PathBuf,
        shutdown: CancellationToken,
        max_event_bytes: usize,
    ) -> Result<Self, SourceConfigError> {
        let mut entries = BTreeMap::new();
        for cfg in configs {
            cfg.validate()?;
            let entry = Entry {
                cfg: cfg.clone(),
                mapping: Arc::new(cfg.mapping.clone()),
                status: Arc::new(SourceStatus::default()),
                running: Mutex::new(None),
            };
            if entries.insert(cfg.name.clone(), entry).is_some() {
                return Err(SourceConfigError::Duplicate(cfg.name.clone()));
            }
        }
        Ok(Self {
            entries,
            log,
            checkpoints: CheckpointStore::new(checkpoint_dir),
            shutdown,
            max_event_bytes,
        })
    }

    /// The context source `name` runs with until `stop` fires.
    fn context(&self, name: &str, entry: &Entry, stop: CancellationToken) -> SourceContext {
        SourceContext {
            name: Arc::from(name),
            mapping: entry.mapping.clone(),
            log: self.log.clone(),
            checkpoints: self.checkpoints.clone(),
            status: entry.status.clone(),
            stop,
            max_event_bytes: self.max_event_bytes,
        }
    }

    /// Starts the sources with `auto_start`.
    pub fn start_auto(&self) {
        for (name, e) in &self.entries {
            if e.cfg.auto_start {
                let _ = self.start(name);
            }
        }
    }

    /// Starts a source (no-op when it runs).
    pub fn start(&self, name: &str) -> Result<(), ControlError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ControlError::Unknown(name.to_owned()))?;
        let mut running = entry.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
            return Ok(());
        }
        let stop = self.shutdown.child_token();
        let cx = self.context(name, entry, stop.clone());
        let kind = entry.cfg.kind.clone();
        let handle = tokio::spawn(supervise(kind, cx));
        *running = Some((stop, handle));
        Ok(())
    }

    /// Stops a source and waits (up to 10 s) for it to finish; its checkpoint stays.
    pub async fn stop(&self, name: &str) -> Result<(), ControlError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ControlError::Unknown(name.to_owned()))?;
        let running = entry
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((stop, handle)) = running {
            stop.cancel();
            if tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .is_err()
            {
                tracing::warn!(source = name, "source did not stop within 10 s");
            }
        }
        entry.status.set("stopped", None);
        Ok(())
    }

    /// Every source's status, by name.
    pub fn status(&self) -> Vec<serde_json::Value> {
        self.entries
            .iter()
            .map(|(name, e)| e.status.to_json(name, e.cfg.kind.type_name()))
            .collect()
    }

    /// (name, type, status) of every source, for metrics.
    pub fn each(&self) -> impl Iterator<Item = (&str, &'static str, &Arc<SourceStatus>)> {
        self.entries
            .iter()
            .map(|(n, e)| (n.as_str(), e.cfg.kind.type_name(), &e.status))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Each source's config with, while it runs, a context to emit through: for sources fed
    /// from outside their task (Dapr deliveries arrive as HTTP requests).
    pub fn contexts(&self) -> impl Iterator<Item = (&SourceConfig, Option<SourceContext>)> + '_ {
        self.entries.iter().map(|(name, e)| {
            let running = e.running.lock().unwrap_or_else(|p| p.into_inner());
            let cx = match &*running {
                Some((stop, handle)) if !handle.is_finished() && !stop.is_cancelled() => {
                    Some(self.context(name, e, stop.clone()))
                }
                _ => None,
            };
            (&e.cfg, cx)
        })
    }
}

/// A source type's settings read from TOML and checked, as at start (for the types' unit
/// tests).
#[cfg(test)]
pub(crate) fn settings<T: serde::de::DeserializeOwned + BuildSource>(
    text: &str,
) -> Result<T, String> {
    let c: T = toml::from_str(text).map_err(|e| e.to_string())?;
    c.validate()?;
    Ok(c)
}

/// Runs a source until it stops: recoverable errors restart it with jittered exponential
/// backoff, a fatal one leaves it `failed`.
async fn supervise(kind: SourceKind, cx: SourceContext) {
    crate::install_crypto_provider();
    let name = cx.name.clone();
    let mut failures = 0u32;
    loop {
        cx.status.set("starting", None);
        let started = tokio::time::Instant::now();
        let result = match kind.builder().build() {
            Ok(mut source) => {
                cx.status.set("running", None);
                source.run(&cx).await
            }
            Err(e) => Err(e),
        };
        if cx.is_cancelled() {
            cx.status.set("stopped", None);
            return;
        }
        match result {
            Ok(()) => {
                cx.status.set("stopped", None);
                return;
            }
            Err(SourceError::Fatal(e)) => {
                let e = e.chain();
                tracing::error!(source = %name, error = %e, "source failed; it stays stopped until started again");
                cx.status.set("failed", Some(e));
                return;
            }
            Err(SourceError::Recoverable(e)) => {
                let e = e.chain();
                if started.elapsed() > Duration::from_secs(60) {
                    failures = 0;
                }
                failures += 1;
                cx.status.restarts.fetch_add(1, Ordering::Relaxed);
                let wait = backoff_with_jitter(failures);
                tracing::warn!(source = %name, error = %e, ?wait, "source error; restarting");
                cx.status.set("backoff", Some(e));
                if cx.sleep(wait).await {
                    cx.status.set("stopped", None);
                    return;
                }
            }
        }
    }
}

/// The `vec` source: the changes of its config, in order, each once (its position is the
/// checkpoint); then it waits until stopped. A test double that goes through everything a
/// real source does.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VecSourceConfig {
    pub changes: Vec<VecChange>,
}

/// One change of a `vec` source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VecChange {
    pub op: Op,
    pub record: serde_json::Value,
    #[serde(default)]
    pub place: String,
    pub key: String,
}

impl BuildSource for VecSourceConfig {
    fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(VecSource {
            changes: self.changes.clone(),
        }))
    }
}

struct VecSource {
    changes: Vec<VecChange>,
}

#[async_trait]
impl Source for VecSource {
    async fn run(&mut self, cx: &SourceContext) -> Result<(), SourceError> {
        let from: usize = cx.checkpoint()?.and_then(|c| c.parse().ok()).unwrap_or(0);
        for (i, c) in self.changes.iter().enumerate().skip(from) {
            let change = Change {
                op: c.op,
                record: c.record.clone(),
                place: c.place.clone(),
                key: c.key.clone(),
            };
            cx.emit(&[change], Some(&(i + 1).to_string())).await?;
        }
        cx.cancelled().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::memory::MemoryLog;
    use crate::log::{all_events, LogOptions, Position};

    fn config(text: &str) -> Result<Vec<SourceConfig>, String> {
        #[derive(Deserialize)]
        struct Doc {
            sources: Vec<SourceConfig>,
        }
        toml::from_str::<Doc>(text)
            .map(|d| d.sources)
            .map_err(|e| e.to_string())
    }

    const VEC: &str = r#"
[[sources]]
name = "rows"
type = "vec"
channel = "t:{row.t}"
event_type = "row.{op}"
users = "{row.u}"
exclude = ["secret"]
changes = [
  { op = "insert", record = { t = "a", u = "u1", secret = 1 }, key = "1" },
  { op = "update", record = { t = "b:c", u = "u1" }, key = "2" },
  { op = "delete", record = { t = "b", u = "u2" }, key = "3" },
]
"#;

    #[test]
    fn a_cause_keeps_its_source_and_shows_the_whole_chain_once() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = SourceError::recoverable("cannot connect", io);
        assert_eq!(e.to_string(), "cannot connect");
        let inner = e.source().expect("the io error is the source");
        assert!(inner.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(e.cause().chain(), "cannot connect: refused");
        let c = Cause::rendering("cannot read: refused (SQLSTATE 08006)", "refused")
            .with_note("grant it");
        assert_eq!(c.chain(), "cannot read: refused (SQLSTATE 08006); grant it");
        assert_eq!(Cause::from("stopped").chain(), "stopped");
    }

    #[test]
    fn flat_tables_parse_and_unknown_keys_are_named() {
        let s = config(VEC).unwrap();
        assert_eq!(s[0].name, "rows");
        assert_eq!(s[0].mapping.channel, "t:{row.t}");
        assert!(s[0].validate().is_ok());
        let err = config(&VEC.replace("exclude =", "exclud =")).unwrap_err();
        assert!(err.contains("exclud"), "{err}");
        let err = config(&VEC.replace("type = \"vec\"", "type = \"kafkaa\"")).unwrap_err();
        assert!(err.contains("kafkaa"), "{err}");
    }

    #[tokio::test]
    async fn a_change_larger_than_max_event_bytes_is_skipped_and_the_rest_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(LogOptions {
            retention_events: 100,
            retention_age_ms: 0,
            dedupe_window_ms: 60_000,
            file_cache_bytes: 0,
        }));
        let big = "x".repeat(2_000);
        let text = VEC.replace("secret = 1 }", &format!("body = \"{big}\" }}"));
        let cfgs = config(&text).unwrap();
        let sources = Sources::new(
            &cfgs,
            log.clone(),
            dir.path().into(),
            CancellationToken::new(),
            1_024,
        )
        .unwrap();
        sources.start_auto();
        for _ in 0..200 {
            if sources.status()[0]["checkpoint"] == "3" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sources.stop("rows").await.unwrap();
        let status = &sources.status()[0];
        assert_eq!(status["checkpoint"], "3", "{status}");
        assert_eq!(status["state"], "stopped", "{status}");
        // The 2 kB insert and the `b:c` change are skipped, the delete is appended.
        assert_eq!(status["skipped"], 2, "{status}");
        let all = log
            .read(Position::ZERO, 10, &all_events, None)
            .await
            .unwrap();
        assert_eq!(all.events.len(), 1);
        assert_eq!(all.events[0].event.kind, "row.delete");
    }

    #[tokio::test]
    async fn changes_are_appended_then_checkpointed_and_a_restart_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(LogOptions {
            retention_events: 100,
            retention_age_ms: 0,
            dedupe_window_ms: 60_000,
            file_cache_bytes: 0,
        }));
        let cfgs = config(VEC).unwrap();
        let shutdown = CancellationToken::new();
        let sources = Sources::new(
            &cfgs,
            log.clone(),
            dir.path().into(),
            shutdown.clone(),
            65_536,
        )
        .unwrap();
        sources.start_auto();
        let mut batch = None;
        for _ in 0..100 {
            let b = log
                .read(Position::ZERO, 10, &all_events, None)
                .await
                .unwrap();
            if b.events.len() == 2 {
                batch = Some(b);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let batch = batch.expect("two events (the `b:c` change is skipped)");
        assert_eq!(batch.events[0].event.channel, "t:a");
        assert_eq!(batch.events[0].event.kind, "row.insert");
        assert!(!batch.events[0].event.data.get().contains("secret"));
        assert_eq!(batch.events[1].event.users, Some(vec!["u2".into()]));
        sources.stop("rows").await.unwrap();
        let status = &sources.status()[0];
        assert_eq!(status["skipped"], 1);
        assert_eq!(status["checkpoint"], "3");
        // A restart resumes after the checkpoint: nothing appended twice.
        sources.start("rows").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        sources.stop("rows").await.unwrap();
        let all = log
            .read(Position::ZERO, 10, &all_events, None)
            .await
            .unwrap();
        assert_eq!(all.events.len(), 2);
        assert!(matches!(
            sources.start("nope"),
            Err(ControlError::Unknown(_))
        ));
    }
}
