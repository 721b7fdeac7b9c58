//! The embedded on-disk log (redb), the default backend.
//!
//! One writer thread owns every write. It takes all append requests waiting at that moment,
//! stores them in one transaction and commits it with an fsync (`Durability::Immediate`)
//! before any of them is acknowledged: a group commit, so many concurrent publishers share one
//! fsync and throughput does not collapse to one publish per disk flush. A `kill -9` loses
//! nothing that was acknowledged; an append that fails to commit is reported to every
//! request in its group, none of which was stored.
//!
//! Recent events stay in memory too (the *tail*: the newest committed events, bounded by
//! bytes, a quarter of `log.file_cache_mb`), so the hub following the head, a slow client
//! catching up and a short resume read them without touching the file or decoding JSON.
//! Older reads run on the blocking pool against a read transaction (a consistent snapshot).

// redb's error type is large; it only travels the cold failure path inside the writer.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::retry::lock;

use super::{
    fill, wait_for_head, AppendItem, Appended, Bounds, Event, EventLog, Filter, Gap, LogError,
    LogOptions, NewEvent, Position, ReadBatch,
};

/// Position (sequence) → JSON-encoded [`NewEvent`].
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Idempotency key → JSON-encoded [`KeyEntry`].
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
/// (expiry ms, key), to forget keys in expiry order.
const KEY_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("key_expiry");
/// Counters: `last_seq`, `trimmed_through`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Requests taken into one transaction at most.
const MAX_GROUP: usize = 512;
/// Events decoded per read at most, whatever the filter keeps.
const MAX_SCAN: usize = 4_096;

#[derive(Serialize, Deserialize)]
struct KeyEntry {
    exp: u64,
    pos: Vec<u64>,
}

#[derive(Deserialize)]
struct TimeOnly {
    time_ms: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    last_seq: u64,
    /// Every position up to here was dropped by retention.
    trimmed_through: u64,
}

enum Cmd {
    Append {
        items: Vec<AppendItem>,
        now_ms: u64,
        reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
    },
    Retain {
        now_ms: u64,
        reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
    },
}

pub struct FileLog {
    db: Arc<Database>,
    /// Committed state, updated by the writer after each commit.
    state: Arc<Mutex<State>>,
    /// Head after each commit, for readers waiting for new events.
    head: watch::Receiver<Position>,
    /// The newest committed events, contiguous, ending at the head.
    tail: Arc<Mutex<Tail>>,
    /// To the writer thread; the thread ends when this is dropped.
    writer: mpsc::UnboundedSender<Cmd>,
    /// The writer thread, joined on drop so the file is closed when the log is gone (a
    /// reopen in the same process then finds it free).
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FileLog {
    fn drop(&mut self) {
        let (closed, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.writer, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(e.to_string())
}

impl FileLog {
    /// Opens (or creates) the log file, creating its directory.
    pub fn open(path: &Path, opts: LogOptions) -> Result<Self, LogError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::builder()
            .set_cache_size(opts.file_cache_bytes)
            .create(path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        let state = {
            let txn = db.begin_write().map_err(unavailable)?;
            let state = {
                txn.open_table(EVENTS).map_err(unavailable)?;
                txn.open_table(KEYS).map_err(unavailable)?;
                txn.open_table(KEY_EXPIRY).map_err(unavailable)?;
                let meta = txn.open_table(META).map_err(unavailable)?;
                let get = |k: &str| -> Result<u64, LogError> {
                    Ok(meta
                        .get(k)
                        .map_err(unavailable)?
                        .map(|v| v.value())
                        .unwrap_or(0))
                };
                State {
                    last_seq: get("last_seq")?,
                    trimmed_through: get("trimmed_through")?,
                }
            };
            txn.commit().map_err(unavailable)?;
            state
        };
        let db = Arc::new(db);
        let state = Arc::new(Mutex::new(state));
        let (head_tx, head) = watch::channel(Position::seq(state_of(&state).last_seq));
        let (writer, rx) = mpsc::unbounded_channel();
        let tail = Arc::new(Mutex::new(Tail {
            max_bytes: opts.file_cache_bytes / 4,
            ..Tail::default()
        }));
        let writer_state = Writer {
            db: db.clone(),
            opts,
            state: state.clone(),
            head: head_tx,
            tail: tail.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("ssegate-log-writer".into())
            .spawn(move || writer_state.run(rx))
            .map_err(unavailable)?;
        Ok(Self {
            db,
            state,
            head,
            tail,
            writer,
            thread: Some(thread),
        })
    }

    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Vec<Appended>, LogError>>) -> Cmd,
    ) -> Result<Vec<Appended>, LogError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(make(reply))
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }
}

fn state_of(state: &Mutex<State>) -> State {
    *state.lock().unwrap_or_else(|p| p.into_inner())
}

struct Writer {
    db: Arc<Database>,
    opts: LogOptions,
    state: Arc<Mutex<State>>,
    head: watch::Sender<Position>,
    tail: Arc<Mutex<Tail>>,
}

/// The newest committed events in memory: contiguous positions ending at the head, at most
/// `max_bytes` (approximately) of them.
#[derive(Default)]
struct Tail {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    max_bytes: usize,
}

impl Tail {
    fn push(&mut self, event: Arc<Event>) {
        self.bytes += event.event.approx_bytes();
        self.events.push_back(event);
    }

    /// Drops what retention removed (positions up to `trimmed_through`) and what exceeds the
    /// byte bound.
    fn trim(&mut self, trimmed_through: u64) {
        while let Some(front) = self.events.front() {
            if front.pos.lo > trimmed_through && self.bytes <= self.max_bytes {
                break;
            }
            self.bytes -= front.event.approx_bytes();
            self.events.pop_front();
        }
    }

    /// Index of the first event after `after`, if the tail holds every event after it.
    fn start_after(&self, after: Position) -> Option<usize> {
        let first = self.events.front()?.pos.lo;
        (after.hi == 0 && after.lo + 1 >= first).then(|| (after.lo + 1 - first) as usize)
    }
}

impl Writer {
    fn run(self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(cmd) => group.push(cmd),
                    Err(_) => break,
                }
            }
            let mut state = state_of(&self.state);
            let mut committed = Vec::new();
            match self.commit_group(&mut group, &mut state, &mut committed) {
                Ok(results) => {
                    // Into the tail before the head moves: a reader woken by the new head
                    // finds the events in memory.
                    {
                        let mut tail = lock(&self.tail);
                        for event in committed {
                            tail.push(event);
                        }
                        tail.trim(state.trimmed_through);
                    }
                    *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
                    self.head.send_if_modified(|h| {
                        std::mem::replace(h, Position::seq(state.last_seq)) != *h
                    });
                    for (cmd, result) in group.drain(..).zip(results) {
                        let _ = reply_of(cmd).send(Ok(result));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "log commit failed; {} requests refused", group.len());
                    for cmd in group.drain(..) {
                        let _ = reply_of(cmd).send(Err(unavailable(&e)));
                    }
                }
            }
        }
    }

    /// Applies every command of the group in one transaction; `state` is advanced only in
    /// this local copy until the caller knows the commit succeeded.
    fn commit_group(
        &self,
        group: &mut [Cmd],
        state: &mut State,
        committed: &mut Vec<Arc<Event>>,
    ) -> Result<Vec<Vec<Appended>>, redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let mut results = Vec::with_capacity(group.len());
        {
            let mut events = txn.open_table(EVENTS)?;
            let mut keys = txn.open_table(KEYS)?;
            let mut expiry = txn.open_table(KEY_EXPIRY)?;
            let mut meta = txn.open_table(META)?;
            for cmd in group.iter_mut() {
                match cmd {
                    Cmd::Append { items, now_ms, .. } => {
                        forget_keys(&mut keys, &mut expiry, *now_ms)?;
                        let items = std::mem::take(items);
                        let mut out = Vec::with_capacity(items.len());
                        for item in items {
                            out.push(self.append_item(
                                item,
                                *now_ms,
                                state,
                                Tables {
                                    events: &mut events,
                                    keys: &mut keys,
                                    expiry: &mut expiry,
                                },
                                committed,
                            )?);
                        }
                        results.push(out);
                    }
                    Cmd::Retain { now_ms, .. } => {
                        forget_keys(&mut keys, &mut expiry, *now_ms)?;
                        if self.opts.retention_age_ms > 0 {
                            let cutoff = now_ms.saturating_sub(self.opts.retention_age_ms);
                            while state.trimmed_through < state.last_seq {
                                let seq = state.trimmed_through + 1;
                                let old = match events.get(seq)? {
                                    Some(v) => serde_json::from_slice::<TimeOnly>(v.value())
                                        .map(|t| t.time_ms < cutoff)
                                        .unwrap_or(true),
                                    None => true,
                                };
                                if !old {
                                    break;
                                }
                                events.remove(seq)?;
                                state.trimmed_through = seq;
                            }
                        }
                        results.push(Vec::new());
                    }
                }
            }
            while state.last_seq - state.trimmed_through > self.opts.retention_events {
                state.trimmed_through += 1;
                events.remove(state.trimmed_through)?;
            }
            meta.insert("last_seq", state.last_seq)?;
            meta.insert("trimmed_through", state.trimmed_through)?;
        }
        txn.commit()?;
        Ok(results)
    }

    fn append_item(
        &self,
        item: AppendItem,
        now_ms: u64,
        state: &mut State,
        tables: Tables<'_, '_>,
        committed: &mut Vec<Arc<Event>>,
    ) -> Result<Appended, redb::Error> {
        let Tables {
            events,
            keys,
            expiry,
        } = tables;
        if let Some(key) = &item.key {
            if let Some(found) = keys.get(key.as_str())? {
                if let Ok(entry) = serde_json::from_slice::<KeyEntry>(found.value()) {
                    return Ok(Appended {
                        positions: entry.pos.into_iter().map(Position::seq).collect(),
                        duplicate: true,
                    });
                }
            }
        }
        let mut positions = Vec::with_capacity(item.events.len());
        for event in item.events {
            state.last_seq += 1;
            let pos = Position::seq(state.last_seq);
            let bytes = serde_json::to_vec(&event).expect("events serialize");
            events.insert(state.last_seq, bytes.as_slice())?;
            positions.push(pos);
            committed.push(Arc::new(Event { pos, event }));
        }
        if let (Some(key), true) = (&item.key, self.opts.dedupe_window_ms > 0) {
            let exp = now_ms.saturating_add(self.opts.dedupe_window_ms);
            let entry = KeyEntry {
                exp,
                pos: positions.iter().map(|p| p.lo).collect(),
            };
            let bytes = serde_json::to_vec(&entry).expect("key entries serialize");
            keys.insert(key.as_str(), bytes.as_slice())?;
            expiry.insert((exp, key.as_str()), ())?;
        }
        Ok(Appended {
            positions,
            duplicate: false,
        })
    }
}

/// The tables an append writes.
struct Tables<'a, 't> {
    events: &'a mut redb::Table<'t, u64, &'static [u8]>,
    keys: &'a mut redb::Table<'t, &'static str, &'static [u8]>,
    expiry: &'a mut redb::Table<'t, (u64, &'static str), ()>,
}

fn reply_of(cmd: Cmd) -> oneshot::Sender<Result<Vec<Appended>, LogError>> {
    match cmd {
        Cmd::Append { reply, .. } | Cmd::Retain { reply, .. } => reply,
    }
}

/// Forgets idempotency keys whose window ended by `now_ms`.
fn forget_keys(
    keys: &mut redb::Table<&str, &[u8]>,
    expiry: &mut redb::Table<(u64, &str), ()>,
    now_ms: u64,
) -> Result<(), redb::Error> {
    let expired: Vec<(u64, String)> = expiry
        .range::<(u64, &str)>(..(now_ms.saturating_add(1), ""))?
        .take(1_000)
        .map(|r| r.map(|(k, _)| (k.value().0, k.value().1.to_owned())))
        .collect::<Result<_, _>>()?;
    for (exp, key) in expired {
        expiry.remove((exp, key.as_str()))?;
        let current = keys
            .get(key.as_str())?
            .and_then(|v| serde_json::from_slice::<KeyEntry>(v.value()).ok())
            .map(|e| e.exp);
        if current == Some(exp) {
            keys.remove(key.as_str())?;
        }
    }
    Ok(())
}

#[async_trait]
impl EventLog for FileLog {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn append(&self, items: Vec<AppendItem>, now_ms: u64) -> Result<Vec<Appended>, LogError> {
        self.call(|reply| Cmd::Append {
            items,
            now_ms,
            reply,
        })
        .await
    }

    async fn read(
        &self,
        after: Position,
        max: usize,
        filter: Filter<'_>,
        wait: Option<Duration>,
    ) -> Result<ReadBatch, LogError> {
        if let Some(wait) = wait {
            wait_for_head(self.head.clone(), after, wait).await;
        }
        let state = state_of(&self.state);
        let mut batch = ReadBatch {
            next: after,
            ..ReadBatch::default()
        };
        if after.hi != 0 || after.lo >= state.last_seq {
            batch.at_head = true;
            return Ok(batch);
        }
        if after.lo >= state.trimmed_through {
            let tail = lock(&self.tail);
            if let Some(start) = tail.start_after(after) {
                let mut scan_left = MAX_SCAN;
                let events = tail.events.range(start..);
                batch.at_head = fill(&mut batch, events, max, &mut scan_left, filter);
                return Ok(batch);
            }
        }
        let scan = max.clamp(1, MAX_SCAN);
        let db = self.db.clone();
        let from = after.lo;
        let (raw, at_head) = tokio::task::spawn_blocking(move || read_raw(&db, from, scan))
            .await
            .map_err(unavailable)??;
        batch.at_head = at_head;
        // Positions are contiguous, so a first event later than `from + 1` (or none at all
        // while the head is past `from`) means retention dropped what lay between. Checked on
        // the snapshot itself, so a trim racing this read is still reported.
        let first = raw.first().map(|e| e.pos.lo);
        if first.map_or(state.last_seq > from, |f| f > from + 1) {
            batch.gap = Some(Gap {
                oldest: raw.first().map(|e| e.pos),
            });
            batch.next = Position::seq(first.map_or(state.last_seq, |f| f - 1));
        }
        // At most `scan` events came back, so only `max` can stop the fill.
        let mut scan_left = scan;
        if !fill(&mut batch, raw, max, &mut scan_left, filter) {
            batch.at_head = false;
        }
        Ok(batch)
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        let state = state_of(&self.state);
        Ok(Bounds {
            head: Position::seq(state.last_seq),
            oldest: (state.trimmed_through < state.last_seq)
                .then(|| Position::seq(state.trimmed_through + 1)),
        })
    }

    async fn enforce_retention(&self, now_ms: u64) -> Result<(), LogError> {
        self.call(|reply| Cmd::Retain { now_ms, reply }).await?;
        Ok(())
    }
}

/// Decodes up to `scan` events after sequence `from`; also says whether the end was reached.
fn read_raw(db: &Database, from: u64, scan: usize) -> Result<(Vec<Event>, bool), LogError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let table = txn.open_table(EVENTS).map_err(unavailable)?;
    let mut out = Vec::with_capacity(scan.min(1024));
    let mut range = table
        .range::<u64>((Bound::Excluded(from), Bound::Unbounded))
        .map_err(unavailable)?;
    for entry in range.by_ref() {
        let (k, v) = entry.map_err(unavailable)?;
        let pos = Position::seq(k.value());
        let event: NewEvent = serde_json::from_slice(v.value()).map_err(|e| LogError::Corrupt {
            pos,
            message: e.to_string(),
        })?;
        out.push(Event { pos, event });
        if out.len() >= scan {
            return Ok((out, range.next().is_none()));
        }
    }
    Ok((out, true))
}
