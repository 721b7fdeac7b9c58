//! The event log: the single source of truth.
//!
//! An ordered, durable, retained sequence of events. Appending returns each event's
//! [`Position`], which is also its SSE `id`. Guarantees every backend gives:
//!
//! - **Durable before acknowledged**: `append` returns only after the events are on disk (or,
//!   for `memory`, in the process) and visible to readers.
//! - **Atomic batches**: all events of one `append` call are stored together, in order,
//!   with consecutive positions, or none is.
//! - **Order**: positions strictly increase in append order; readers see the same order.
//! - **Retention**: by count and by age; a reader asking for events after a position that
//!   retention has dropped gets a [`Gap`] naming the oldest retained event — never silence.
//! - **Idempotency**: an [`AppendItem`] with a key already seen within the dedupe window is
//!   not stored again; the original positions are returned.
//!
//! Backends: [`memory::MemoryLog`] and [`file::FileLog`] (embedded segment files). The trait is shaped
//! so that Redis Streams (`XADD`/`XREAD BLOCK`/`XRANGE`) and NATS JetStream can implement it:
//! positions are two numbers (`ms-seq` for Redis), reads block with a timeout, and retention
//! and dedupe are the backend's business.

pub mod channel_index;
pub mod config;
pub mod file;
pub mod memory;
pub mod nats;
pub mod nats_url;
pub mod redis;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;

use config::{Backend, LogConfig};

/// A place in the log. Clients see it as an opaque string: `"42"`, or `"1700000000000-3"` for
/// backends whose positions have two parts. `Position::ZERO` is before every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub hi: u64,
    pub lo: u64,
}

impl Position {
    pub const ZERO: Position = Position { hi: 0, lo: 0 };

    /// A single-number position (`memory`, `file`, JetStream sequence).
    pub const fn seq(n: u64) -> Position {
        Position { hi: 0, lo: n }
    }

    /// The greatest position before this one (`ZERO` stays `ZERO`): "strictly before" as an
    /// inclusive bound.
    pub const fn predecessor(self) -> Position {
        match (self.hi, self.lo) {
            (0, 0) => Position::ZERO,
            (hi, 0) => Position {
                hi: hi - 1,
                lo: u64::MAX,
            },
            (hi, lo) => Position { hi, lo: lo - 1 },
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hi == 0 {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.hi, self.lo)
        }
    }
}

/// The text is not an event id this gateway issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid event id")]
pub struct BadPosition;

impl FromStr for Position {
    type Err = BadPosition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = |t: &str| {
            if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadPosition);
            }
            t.parse::<u64>().map_err(|_| BadPosition)
        };
        match s.split_once('-') {
            None => Ok(Position::seq(digits(s)?)),
            Some((hi, lo)) => Ok(Position {
                hi: digits(hi)?,
                lo: digits(lo)?,
            }),
        }
    }
}

impl Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

pub use crate::event::NewEvent;

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub pos: Position,
    pub event: NewEvent,
}

impl Event {
    /// Whether a connection of `user` subscribed to `channel` may receive this event,
    /// as far as user targeting goes.
    pub fn targets(&self, user: &str) -> bool {
        match &self.event.users {
            None => true,
            Some(users) => users.iter().any(|u| u == user),
        }
    }
}

/// One publish unit: events appended together under one optional idempotency key (a publish
/// with `channels: [a, b]` is one item with two events).
#[derive(Debug, Clone)]
pub struct AppendItem {
    pub key: Option<String>,
    pub events: Vec<NewEvent>,
}

/// What became of one [`AppendItem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub positions: Vec<Position>,
    /// The key was seen within the dedupe window: nothing was stored, `positions` are the
    /// original ones.
    pub duplicate: bool,
}

/// Events retention dropped between the reader's position and the oldest retained event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The oldest event still in the log (`None`: the log is empty now); for a gap over
    /// damaged records, the first readable event after them.
    pub oldest: Option<Position>,
    /// The events between were lost to damaged records, not dropped by retention.
    pub damaged: bool,
}

impl Gap {
    /// Why events are missing, as the `gap` event's `reason` says it.
    pub fn reason(&self) -> &'static str {
        if self.damaged {
            "damaged"
        } else {
            "retention"
        }
    }
}

/// The result of one read.
#[derive(Debug, Clone, Default)]
pub struct ReadBatch {
    /// Matching events after the requested position, in order.
    pub events: Vec<Arc<Event>>,
    /// The reader has seen everything up to here (the next read starts after it); at least
    /// the requested position.
    pub next: Position,
    /// The read reached the head of the log as it was when the read ran.
    pub at_head: bool,
    /// Retention dropped events after the requested position; `events` start at the oldest.
    pub gap: Option<Gap>,
}

/// The extent of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bounds {
    /// Position of the newest event ever appended (`ZERO` when none).
    pub head: Position,
    /// Oldest retained event, if any.
    pub oldest: Option<Position>,
}

/// A history query: the newest events of one channel, as [`EventLog::history`] answers it.
#[derive(Debug, Clone, Copy)]
pub struct HistoryQuery<'a> {
    /// An exact channel name (never a pattern).
    pub channel: &'a str,
    /// Only events after this position (`Position::ZERO`: from the oldest retained).
    pub after: Position,
    /// Only events at or before this position.
    pub through: Position,
    /// At most this many events (the newest ones of the range).
    pub limit: usize,
}

/// The answer to a [`HistoryQuery`].
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The newest matching events of the channel in the range, in log order (oldest first).
    pub events: Vec<Arc<Event>>,
    /// Older events of the channel in the range may have been left out (by `limit`, or by
    /// [`HISTORY_SCAN`]): page back with `through` before `looked_back_to`.
    pub more: bool,
    /// The oldest position looked at (whether `filter` kept it or not).
    pub looked_back_to: Option<Position>,
}

/// History answers hold at most this many events.
pub const MAX_HISTORY: usize = 1000;

/// A history call looks at this many events of the channel at most, whatever `filter`
/// rejects (events targeted at other users): the cost of one call is bounded; `more` says
/// where it stopped.
pub const HISTORY_SCAN: usize = 10_000;

/// Which events a read returns.
pub type Filter<'a> = &'a (dyn Fn(&Event) -> bool + Sync);

/// Filter that takes every event.
pub fn all_events(_: &Event) -> bool {
    true
}

/// Log failures. `Unavailable` means nothing was appended and the caller may retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("the log is unavailable: {0}")]
    Unavailable(String),
    #[error("the log is closed")]
    Closed,
    /// The disk under the log is full; nothing was appended. Appends work again by
    /// themselves once space is free.
    #[error("{0}")]
    Full(String),
    /// The stored log cannot be opened as it is (missing, truncated or unreadable files);
    /// the message names the file and what to do.
    #[error("{0}")]
    Unreadable(String),
    #[error("corrupt log entry at {pos}: {message}")]
    Corrupt { pos: Position, message: String },
    /// The append is larger than the backend can store in one atomic write (NATS
    /// `max_payload`); nothing was appended.
    #[error("{0}")]
    TooLarge(String),
    /// The backend's settings cannot work (bad URL, unreadable CA file, …).
    #[error("invalid log configuration: {0}")]
    Config(String),
}

/// An ordered, durable, retained event log (see the module docs for the guarantees).
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// `"memory"`, `"file"`, …
    fn kind(&self) -> &'static str;

    /// Appends all items atomically and in order; returns once they are durable. `now_ms` is
    /// the clock for the dedupe window.
    async fn append(&self, items: Vec<AppendItem>, now_ms: u64) -> Result<Vec<Appended>, LogError>;

    /// Up to `max` events after `after` that pass `filter`. When nothing is after `after`
    /// and `wait` is given, waits up to that long for an append first.
    async fn read(
        &self,
        after: Position,
        max: usize,
        filter: Filter<'_>,
        wait: Option<Duration>,
    ) -> Result<ReadBatch, LogError>;

    /// Head and oldest positions.
    async fn bounds(&self) -> Result<Bounds, LogError>;

    /// The greatest position a reader may resume from to get the event at `pos` and
    /// everything after it ("just before `pos`").
    fn position_before(&self, pos: Position) -> Position {
        pos.predecessor()
    }

    /// The newest events of one channel in `(q.after, q.through]` that pass `filter`, at
    /// most `q.limit`, oldest first, found through a per-channel index (never a scan of the
    /// whole log): the cost grows with the events of that channel looked at, not with the
    /// log. Events retention dropped are not returned.
    async fn history(&self, q: HistoryQuery<'_>, filter: Filter<'_>) -> Result<History, LogError>;

    /// Applies retention by age as of `now_ms` (retention by count is applied on append).
    async fn enforce_retention(&self, now_ms: u64) -> Result<(), LogError>;

    /// What `/readyz` and the metrics report beyond "the log answers".
    fn health(&self) -> LogHealth {
        LogHealth::default()
    }

    /// The engine's pub/sub for the cluster control path (shared engines only).
    fn bus(&self) -> Option<Arc<dyn crate::cluster::Bus>> {
        None
    }
}

/// The state of a log beyond whether it answers.
#[derive(Debug, Clone, Default)]
pub struct LogHealth {
    /// Why appends fail right now (a full disk, an I/O error), if they do.
    pub cannot_append: Option<String>,
    /// Damaged records found (never delivered), if any.
    pub damaged: Option<String>,
    /// The file log's counters.
    pub file: Option<FileStats>,
}

/// Counters of the file log.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileStats {
    /// Group commits (one write each).
    pub commits: u64,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Bytes of a torn tail cut at start.
    pub torn_bytes: u64,
    /// Events known damaged.
    pub damaged_events: u64,
    pub append_failures_full: u64,
    pub append_failures_io: u64,
    /// Bytes of segment files.
    pub disk_bytes: u64,
}

/// An event a read looks at: borrowed from an in-memory store or freshly decoded. Shared
/// only when the filter keeps it, so skipped events cost no allocation.
pub(crate) trait Scanned {
    fn event(&self) -> &Event;
    fn into_shared(self) -> Arc<Event>;
}

impl Scanned for &Arc<Event> {
    fn event(&self) -> &Event {
        self
    }
    fn into_shared(self) -> Arc<Event> {
        self.clone()
    }
}

impl Scanned for Event {
    fn event(&self) -> &Event {
        self
    }
    fn into_shared(self) -> Arc<Event> {
        Arc::new(self)
    }
}

/// Adds `events` (in log order, after the requested position) to `batch`: the ones passing
/// `filter`, until `batch` holds `max` events or `scan_left` (counted down per event looked
/// at) runs out; `batch.next` becomes the last one looked at. Returns whether every event
/// was looked at. Every backend fills its batches through here.
pub(crate) fn fill<E: Scanned>(
    batch: &mut ReadBatch,
    events: impl IntoIterator<Item = E>,
    max: usize,
    scan_left: &mut usize,
    filter: Filter<'_>,
) -> bool {
    for event in events {
        if batch.events.len() >= max || *scan_left == 0 {
            return false;
        }
        *scan_left -= 1;
        batch.next = event.event().pos;
        if filter(event.event()) {
            batch.events.push(event.into_shared());
        }
    }
    true
}

/// Waits until `head` moves past `after`, or `wait` is over: how a read with a wait blocks
/// when nothing is after the reader.
pub(crate) async fn wait_for_head(
    mut head: watch::Receiver<Position>,
    after: Position,
    wait: Duration,
) {
    let _ = tokio::time::timeout(wait, head.wait_for(|h| *h > after)).await;
}

/// Retention and dedupe settings every backend takes.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    pub retention_events: u64,
    /// 0 = no age limit.
    pub retention_age_ms: u64,
    pub dedupe_window_ms: u64,
    /// Page cache of the file backend, bytes.
    pub file_cache_bytes: usize,
}

/// Opens the configured backend. A shared engine (Redis, NATS) that cannot be reached yet
/// is not an error here: the backend reconnects in the background and reports
/// `Unavailable` meanwhile (`/readyz` shows it).
pub async fn open(cfg: &LogConfig, data_dir: &Path) -> Result<Arc<dyn EventLog>, LogError> {
    let opts = cfg.options();
    Ok(match &cfg.backend {
        Backend::Memory => Arc::new(memory::MemoryLog::new(opts)),
        Backend::File {
            sync, segment_mb, ..
        } => Arc::new(file::FileLog::open(
            data_dir,
            opts,
            file::FileOptions {
                sync: *sync,
                segment_bytes: (*segment_mb as u64).max(1) << 20,
            },
        )?),
        Backend::Redis(engine) => redis::RedisLog::open(engine, opts).await?,
        Backend::Nats {
            engine,
            credentials_file,
        } => nats::NatsLog::open(engine, credentials_file.as_deref(), opts).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_order() {
        for s in ["0", "42", "1700000000000-3"] {
            assert_eq!(s.parse::<Position>().unwrap().to_string(), s);
        }
        for bad in [
            "",
            "-",
            "a",
            "1-",
            "-1",
            "1-2-3",
            " 1",
            "+1",
            "99999999999999999999999",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
        assert!(Position::seq(9) < Position::seq(10));
        assert!(Position::seq(u64::MAX) < "1-0".parse().unwrap());
    }
}
