//! The hub: tails the log and fans each event out to this node's connections.
//!
//! - **Encode once**: an event with recipients is encoded into one SSE frame (`Bytes`) that
//!   every recipient's queue shares; an event with none is not encoded at all.
//! - **Channel index**: channel → subscribed connections, so dispatch never scans every
//!   connection.
//! - **Bounded queues, no blocking**: each connection has a queue of at most
//!   `stream.queue_frames` frames. The dispatcher only ever `try_send`s. When a queue is full
//!   the connection is switched out of live delivery (its `live` flag drops) and woken; its
//!   [`Cursor`] then reads the log from its own position at its own pace and rejoins live
//!   delivery when it has caught up — no loss, no duplicate, log order. Nobody else waits.
//! - **Order**: one dispatcher task per node dispatches events in log order, so every queue
//!   holds frames in log order.

mod cursor;
pub mod frame;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

pub use cursor::{Cursor, CursorOptions};

use crate::log::{all_events, Event, EventLog, Position};

/// One encoded event in a connection's queue.
#[derive(Clone)]
pub struct Frame {
    pub pos: Position,
    pub bytes: Bytes,
}

/// Something for a connection's stream other than a live event.
#[derive(Debug, Clone)]
pub enum Control {
    /// A control event (`subscribed`, `unsubscribed`, …) to send as is.
    Send(Bytes),
    /// Send `closing` with this reason, then end the stream.
    Close(&'static str),
    /// Deliver the events of a just-added `channel` in `(after, through]` as history: they
    /// are older than events the connection may already have, so they go without `id:` lines
    /// and never move the client's resume position.
    Backfill {
        channel: Arc<str>,
        after: Position,
        through: Position,
    },
}

/// Counters shown in `/v1/status`.
#[derive(Default)]
pub struct Stats {
    pub connections_opened: AtomicU64,
    pub events_dispatched: AtomicU64,
    pub frames_queued: AtomicU64,
    /// Times a connection's queue was full and it switched to reading the log.
    pub queue_overflows: AtomicU64,
    pub gaps: AtomicU64,
}

/// A live connection as the hub sees it.
pub struct Conn {
    /// Internal key in the channel index.
    key: u64,
    /// Public id (`c_…`), used by the subscriptions endpoint.
    pub id: String,
    pub user: String,
    /// Current channels, each with the position after which its events are for this
    /// connection (`ZERO` for the channels it opened with; the log head at the moment of the
    /// change for a channel added later, so nothing published before the change arrives).
    channels: Mutex<BTreeMap<Arc<str>, Position>>,
    /// Whether the dispatcher may queue frames for it; dropped when the queue overflows,
    /// raised again by the cursor once it has caught up from the log.
    live: AtomicBool,
    tx: mpsc::Sender<Frame>,
    control: Mutex<VecDeque<Control>>,
    /// Wakes the cursor: control queued, or live delivery dropped.
    wake: Notify,
}

impl Conn {
    pub fn channels(&self) -> Vec<String> {
        lock(&self.channels).keys().map(|c| c.to_string()).collect()
    }

    /// Whether this connection is to receive `event`: subscribed to its channel since before
    /// it, and targeted (or the event targets nobody in particular).
    pub fn wants(&self, event: &Event) -> bool {
        lock(&self.channels)
            .get(event.event.channel.as_str())
            .is_some_and(|since| event.pos > *since)
            && event.targets(&self.user)
    }

    /// Queues a control item and wakes the stream.
    pub fn push_control(&self, control: Control) {
        lock(&self.control).push_back(control);
        self.wake.notify_one();
    }

    fn take_control(&self) -> Option<Control> {
        lock(&self.control).pop_front()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connection's entry under a channel of the index.
struct Sub {
    conn: Arc<Conn>,
    /// Events of the channel at or before this position are not for the connection.
    since: Position,
}

type Subscribers = HashMap<u64, Sub>;

pub struct Hub {
    log: Arc<dyn EventLog>,
    /// Channel → its subscribers on this node.
    index: RwLock<HashMap<Arc<str>, Subscribers>>,
    /// Public connection id → connection.
    conns: RwLock<HashMap<String, Arc<Conn>>>,
    next_key: AtomicU64,
    /// Every event up to here has been dispatched; updated under the index read lock.
    dispatched: Mutex<Position>,
    queue_frames: usize,
    pub stats: Stats,
}

/// A change of a live connection's channels (see [`Hub::update`]).
pub struct ChannelChange<'a> {
    pub add: &'a [String],
    pub remove: &'a [String],
    /// Added channels deliver their events after this position: the log head read before
    /// the change, or the client's `last_event_id`.
    pub since: Position,
}

/// Why a subscription change was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("a connection may subscribe to at most {0} channels")]
    TooManyChannels(usize),
}

impl Hub {
    pub fn new(log: Arc<dyn EventLog>, queue_frames: usize) -> Arc<Self> {
        Arc::new(Self {
            log,
            index: RwLock::default(),
            conns: RwLock::default(),
            next_key: AtomicU64::new(1),
            dispatched: Mutex::new(Position::ZERO),
            queue_frames,
            stats: Stats::default(),
        })
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    pub fn connection_count(&self) -> usize {
        self.conns.read().expect("conns lock").len()
    }

    pub fn channel_count(&self) -> usize {
        self.index.read().expect("index lock").len()
    }

    pub fn connection(&self, id: &str) -> Option<Arc<Conn>> {
        self.conns.read().expect("conns lock").get(id).cloned()
    }

    /// Sends `closing` with `reason` to every connection.
    pub fn close_all(&self, reason: &'static str) {
        for conn in self.conns.read().expect("conns lock").values() {
            conn.push_control(Control::Close(reason));
        }
    }

    /// Registers a live connection; frames dispatched from now on are queued for it. The
    /// returned registration unregisters when dropped.
    pub fn register(
        self: &Arc<Self>,
        user: String,
        channels: &[String],
    ) -> (Registration, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(self.queue_frames);
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "c_{:016x}{:08x}",
            rand::thread_rng().gen::<u64>(),
            key as u32
        );
        let set: BTreeMap<Arc<str>, Position> = channels
            .iter()
            .map(|c| (Arc::from(c.as_str()), Position::ZERO))
            .collect();
        let conn = Arc::new(Conn {
            key,
            id: id.clone(),
            user,
            channels: Mutex::new(set.clone()),
            live: AtomicBool::new(true),
            tx,
            control: Mutex::default(),
            wake: Notify::new(),
        });
        {
            let mut index = self.index.write().expect("index lock");
            for channel in set.keys() {
                index.entry(channel.clone()).or_default().insert(
                    key,
                    Sub {
                        conn: conn.clone(),
                        since: Position::ZERO,
                    },
                );
            }
        }
        self.conns
            .write()
            .expect("conns lock")
            .insert(id, conn.clone());
        self.stats
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        (
            Registration {
                hub: self.clone(),
                conn,
            },
            rx,
        )
    }

    /// Adds and removes channels on a live connection.
    ///
    /// An added channel's events are for the connection after `since`: the log head read
    /// before the change (nothing published before the request arrives), or the client's
    /// `last_event_id`. Those the dispatcher had already handled when the index changed
    /// (at or before `dispatched`) are delivered first as history (see
    /// [`Control::Backfill`]); later ones arrive live, in log order, with their ids.
    ///
    /// `subscribed` / `unsubscribed` are queued before the index changes, so they precede the
    /// first event of a new channel.
    pub fn update(
        &self,
        conn: &Arc<Conn>,
        change: &ChannelChange<'_>,
        max_channels: usize,
    ) -> Result<Vec<String>, UpdateError> {
        let mut channels = lock(&conn.channels);
        let added: Vec<&String> = change
            .add
            .iter()
            .filter(|c| !channels.contains_key(c.as_str()) && !change.remove.contains(c))
            .collect();
        let removed: Vec<&String> = change
            .remove
            .iter()
            .filter(|c| channels.contains_key(c.as_str()))
            .collect();
        if channels.len() + added.len() - removed.len() > max_channels {
            return Err(UpdateError::TooManyChannels(max_channels));
        }
        if !removed.is_empty() {
            conn.push_control(Control::Send(frame::control_frame(
                "unsubscribed",
                &serde_json::json!({ "channels": removed }),
            )));
        }
        if !added.is_empty() {
            conn.push_control(Control::Send(frame::control_frame(
                "subscribed",
                &serde_json::json!({ "channels": added }),
            )));
        }
        let mut index = self.index.write().expect("index lock");
        // The dispatcher holds the index read lock for a whole batch and records its progress
        // inside it, so this is exactly where live delivery of the new channels begins.
        let dispatched = *lock(&self.dispatched);
        for channel in removed {
            channels.remove(channel.as_str());
            if let Some(subs) = index.get_mut(channel.as_str()) {
                subs.remove(&conn.key);
                if subs.is_empty() {
                    index.remove(channel.as_str());
                }
            }
        }
        for channel in &added {
            let channel: Arc<str> = Arc::from(channel.as_str());
            if change.since < dispatched {
                conn.push_control(Control::Backfill {
                    channel: channel.clone(),
                    after: change.since,
                    through: dispatched,
                });
            }
            let since = change.since.max(dispatched);
            channels.insert(channel.clone(), since);
            index.entry(channel).or_default().insert(
                conn.key,
                Sub {
                    conn: conn.clone(),
                    since,
                },
            );
        }
        Ok(channels.keys().map(|c| c.to_string()).collect())
    }

    fn unregister(&self, conn: &Conn) {
        self.conns.write().expect("conns lock").remove(&conn.id);
        let channels = lock(&conn.channels);
        let mut index = self.index.write().expect("index lock");
        for channel in channels.keys() {
            if let Some(subs) = index.get_mut(channel) {
                subs.remove(&conn.key);
                if subs.is_empty() {
                    index.remove(channel);
                }
            }
        }
    }

    /// Tails the log from its head and dispatches every event until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut at = loop {
            match self.log.bounds().await {
                Ok(b) => break b.head,
                Err(e) => {
                    tracing::warn!(error = %e, "hub cannot read the log head; retrying");
                    if sleep_or_cancel(Duration::from_millis(500), &shutdown).await {
                        return;
                    }
                }
            }
        };
        *lock(&self.dispatched) = at;
        let mut failures = 0u32;
        loop {
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.log.read(at, 4_096, &all_events, Some(Duration::from_secs(1))) => r,
            };
            match read {
                Ok(batch) => {
                    failures = 0;
                    if batch.gap.is_some() {
                        // The dispatcher itself fell behind retention: every connection must
                        // find its own way (and its own gap) through the log.
                        tracing::warn!(at = %at, "hub fell behind retention; all connections catch up");
                        self.drop_all_to_catch_up();
                    }
                    self.dispatch(&batch.events, batch.next);
                    at = batch.next;
                }
                Err(e) => {
                    failures += 1;
                    let backoff = backoff_with_jitter(failures);
                    tracing::warn!(error = %e, ?backoff, "hub cannot read the log; retrying");
                    if sleep_or_cancel(backoff, &shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Queues `events` for their recipients; afterwards everything through `next` counts as
    /// dispatched.
    fn dispatch(&self, events: &[Arc<Event>], next: Position) {
        let index = self.index.read().expect("index lock");
        let mut queued = 0u64;
        for event in events {
            let Some(subs) = index.get(event.event.channel.as_str()) else {
                continue;
            };
            let mut encoded: Option<Bytes> = None;
            for Sub { conn, since } in subs.values() {
                if event.pos <= *since
                    || !event.targets(&conn.user)
                    || !conn.live.load(Ordering::Acquire)
                {
                    continue;
                }
                let bytes = encoded
                    .get_or_insert_with(|| frame::event_frame(event))
                    .clone();
                match conn.tx.try_send(Frame {
                    pos: event.pos,
                    bytes,
                }) {
                    Ok(()) => queued += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        conn.live.store(false, Ordering::Release);
                        conn.wake.notify_one();
                        self.stats.queue_overflows.fetch_add(1, Ordering::Relaxed);
                    }
                    // The stream is going away; its registration is about to be dropped.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        *lock(&self.dispatched) = next;
        drop(index);
        self.stats
            .events_dispatched
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.stats
            .frames_queued
            .fetch_add(queued, Ordering::Relaxed);
    }

    fn drop_all_to_catch_up(&self) {
        for conn in self.conns.read().expect("conns lock").values() {
            conn.live.store(false, Ordering::Release);
            conn.wake.notify_one();
        }
    }
}

/// A connection's place in the hub; dropping it unregisters the connection.
pub struct Registration {
    hub: Arc<Hub>,
    pub conn: Arc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.conn);
    }
}

/// Exponential backoff from 100 ms to 5 s with full jitter.
pub fn backoff_with_jitter(failures: u32) -> Duration {
    let cap_ms = (100u64 << failures.min(6)).min(5_000);
    Duration::from_millis(rand::thread_rng().gen_range(cap_ms / 2..=cap_ms))
}

/// Sleeps; returns true if cancelled first.
pub async fn sleep_or_cancel(d: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = token.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
