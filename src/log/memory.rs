//! The in-memory log: a ring of events behind one mutex. Lost on restart; for tests and
//! throwaway runs. Appends and reads hold the lock briefly (reads scan a bounded window).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::channel_index::{self, ChannelIndex};
use super::{
    fill, wait_for_head, AppendItem, Appended, Bounds, Event, EventLog, Filter, Gap, History,
    HistoryQuery, LogError, LogOptions, Position, ReadBatch,
};

/// Events scanned per read at most, whatever the filter keeps; bounds the time the lock is held.
const MAX_SCAN: usize = 16_384;

pub struct MemoryLog {
    opts: LogOptions,
    inner: Mutex<Inner>,
    /// Head position after each append, for readers waiting for new events.
    head: watch::Sender<Position>,
}

#[derive(Default)]
struct Inner {
    /// Retained events; positions `trimmed_through + 1 ..= last_seq`, contiguous.
    events: VecDeque<Arc<Event>>,
    last_seq: u64,
    /// Every position up to here was dropped by retention.
    trimmed_through: u64,
    /// Retained positions by channel.
    channels: ChannelIndex,
    /// Idempotency key → (expiry ms, positions).
    keys: HashMap<String, (u64, Vec<Position>)>,
    /// Keys in expiry order, to forget them without scanning.
    key_expiry: VecDeque<(u64, String)>,
}

impl MemoryLog {
    pub fn new(opts: LogOptions) -> Self {
        Self {
            opts,
            inner: Mutex::new(Inner::default()),
            head: watch::channel(Position::ZERO).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every mutation completes
        // before the next starts), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn trim_to(&mut self, keep: u64) {
        while self.events.len() as u64 > keep {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(e) = self.events.pop_front() {
            self.channels.pop_oldest(&e.event.channel, e.pos);
            self.trimmed_through += 1;
        }
    }

    /// The retained event at `pos`.
    fn at(&self, pos: Position) -> Option<&Arc<Event>> {
        let i = pos.lo.checked_sub(self.trimmed_through + 1)?;
        self.events.get(i as usize)
    }

    fn forget_keys(&mut self, now_ms: u64) {
        while let Some((exp, _)) = self.key_expiry.front() {
            if *exp > now_ms {
                break;
            }
            let (exp, key) = self.key_expiry.pop_front().expect("front exists");
            if self.keys.get(&key).is_some_and(|(e, _)| *e == exp) {
                self.keys.remove(&key);
            }
        }
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn append(&self, items: Vec<AppendItem>, now_ms: u64) -> Result<Vec<Appended>, LogError> {
        let mut inner = self.lock();
        inner.forget_keys(now_ms);
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Some((_, positions)) = item.key.as_ref().and_then(|k| inner.keys.get(k)) {
                out.push(Appended {
                    positions: positions.clone(),
                    duplicate: true,
                });
                continue;
            }
            let mut positions = Vec::with_capacity(item.events.len());
            for event in item.events {
                inner.last_seq += 1;
                let pos = Position::seq(inner.last_seq);
                positions.push(pos);
                inner.channels.push(&event.channel, pos);
                inner.events.push_back(Arc::new(Event { pos, event }));
            }
            if let (Some(key), true) = (item.key, self.opts.dedupe_window_ms > 0) {
                let exp = now_ms.saturating_add(self.opts.dedupe_window_ms);
                inner.keys.insert(key.clone(), (exp, positions.clone()));
                inner.key_expiry.push_back((exp, key));
            }
            out.push(Appended {
                positions,
                duplicate: false,
            });
        }
        inner.trim_to(self.opts.retention_events);
        let head = Position::seq(inner.last_seq);
        drop(inner);
        self.head
            .send_if_modified(|h| std::mem::replace(h, head) != head);
        Ok(out)
    }

    async fn read(
        &self,
        after: Position,
        max: usize,
        filter: Filter<'_>,
        wait: Option<Duration>,
    ) -> Result<ReadBatch, LogError> {
        if let Some(wait) = wait {
            wait_for_head(self.head.subscribe(), after, wait).await;
        }
        let inner = self.lock();
        let mut batch = ReadBatch {
            next: after,
            ..ReadBatch::default()
        };
        let start = if after.hi != 0 || after.lo >= inner.last_seq {
            inner.events.len()
        } else if after.lo < inner.trimmed_through {
            batch.gap = Some(Gap {
                oldest: inner.events.front().map(|e| e.pos),
                damaged: false,
            });
            batch.next = Position::seq(inner.trimmed_through);
            0
        } else {
            (after.lo - inner.trimmed_through) as usize
        };
        let mut scan_left = MAX_SCAN;
        let events = inner.events.range(start..);
        batch.at_head = fill(&mut batch, events, max, &mut scan_left, filter);
        Ok(batch)
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        let inner = self.lock();
        Ok(Bounds {
            head: Position::seq(inner.last_seq),
            oldest: inner.events.front().map(|e| e.pos),
        })
    }

    async fn history(&self, q: HistoryQuery<'_>, filter: Filter<'_>) -> Result<History, LogError> {
        let inner = self.lock();
        channel_index::collect(inner.channels.newest_first(&q), q.limit, filter, |pos| {
            Ok(inner.at(pos).cloned())
        })
    }

    async fn enforce_retention(&self, now_ms: u64) -> Result<(), LogError> {
        let mut inner = self.lock();
        inner.forget_keys(now_ms);
        if self.opts.retention_age_ms == 0 {
            return Ok(());
        }
        let cutoff = now_ms.saturating_sub(self.opts.retention_age_ms);
        while inner
            .events
            .front()
            .is_some_and(|e| e.event.time_ms < cutoff)
        {
            inner.drop_oldest();
        }
        Ok(())
    }
}
