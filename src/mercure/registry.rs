//! What every node learns by reading the Mercure updates of the log (from the oldest retained
//! event at start, then as they come): the active subscriptions of the whole cluster — every
//! node publishes an event when one of its subscriptions starts or ends, so any node answers
//! the subscriptions API for all — and where the recent updates with publisher-chosen ids
//! are, so a subscriber resuming with one on any node needs no search.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::update::{is_mercure_channel, Stored, SUBSCRIPTIONS_CHANNEL};
use crate::log::{Event, EventLog, Position};
use crate::retry::{backoff_with_jitter, lock, sleep_or_cancel};

/// Publisher-chosen ids remembered, the most recent ones.
pub const RECENT_IDS: usize = 65_536;

/// Subscription documents by id (the subscription event's topic), and recent ids.
#[derive(Default)]
pub struct Registry {
    active: Mutex<BTreeMap<String, Value>>,
    recent: Mutex<Recent>,
    /// Whether the log was read up to its head once.
    caught_up: AtomicBool,
}

#[derive(Default)]
struct Recent {
    map: HashMap<String, Position>,
    order: VecDeque<String>,
}

impl Registry {
    /// Takes one Mercure update into account.
    pub fn apply(&self, event: &Event) {
        let Some(update) = Stored::of(event) else {
            return;
        };
        if let Some(id) = &update.id {
            self.remember(id, event.pos);
        }
        // Only the hub's own subscription events, about themselves.
        if !update.hub || !event.event.channel.starts_with(SUBSCRIPTIONS_CHANNEL) {
            return;
        }
        let Ok(doc) = serde_json::from_str::<Value>(&update.data) else {
            return;
        };
        let Some(id) = doc.get("id").and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
        if update.topics.first().map(|t| &**t) != Some(id.as_str()) {
            return;
        }
        let mut active = lock(&self.active);
        if doc.get("active") == Some(&Value::Bool(true)) {
            active.insert(id, doc);
        } else {
            active.remove(&id);
        }
    }

    /// The active subscriptions whose id starts with `prefix`, in id order.
    pub fn list(&self, prefix: &str) -> Vec<Value> {
        lock(&self.active)
            .range(prefix.to_owned()..)
            .take_while(|(id, _)| id.starts_with(prefix))
            .map(|(_, doc)| doc.clone())
            .collect()
    }

    /// Remembers where the update with a publisher-chosen `id` is (the latest one, when an
    /// id is reused).
    pub fn remember(&self, id: &str, pos: Position) {
        let mut recent = lock(&self.recent);
        let known = recent.map.insert(id.to_owned(), pos).is_some();
        if !known {
            recent.order.push_back(id.to_owned());
            if recent.order.len() > RECENT_IDS {
                if let Some(old) = recent.order.pop_front() {
                    recent.map.remove(&old);
                }
            }
        }
    }

    /// Where the latest update with the publisher-chosen `id` is, if it is recent.
    pub fn recent(&self, id: &str) -> Option<Position> {
        lock(&self.recent).map.get(id).copied()
    }

    /// How many subscriptions are active in the cluster.
    pub fn len(&self) -> usize {
        lock(&self.active).len()
    }

    /// Whether no subscription is active.
    pub fn is_empty(&self) -> bool {
        lock(&self.active).is_empty()
    }

    /// One active subscription.
    pub fn get(&self, id: &str) -> Option<Value> {
        lock(&self.active).get(id).cloned()
    }

    /// The active subscriptions announced by node `node`.
    pub fn of_node(&self, node: &str) -> Vec<Value> {
        lock(&self.active)
            .values()
            .filter(|d| d.get("node").and_then(Value::as_str) == Some(node))
            .cloned()
            .collect()
    }

    /// Whether the log has been read up to its head once (before, the lists may miss some).
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Reads the Mercure updates of the log, from the oldest, until `shutdown`.
    pub async fn run(self: Arc<Self>, log: Arc<dyn EventLog>, shutdown: CancellationToken) {
        let filter = |e: &Event| is_mercure_channel(&e.event.channel);
        let mut at = Position::ZERO;
        let mut failures = 0u32;
        loop {
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                // No wait until the head was reached once: an empty log is caught up at once.
                r = log.read(at, 1_000, &filter, self.caught_up().then_some(Duration::from_secs(1))) => r,
            };
            match read {
                Ok(batch) => {
                    failures = 0;
                    for event in &batch.events {
                        self.apply(event);
                    }
                    if batch.at_head {
                        self.caught_up.store(true, Ordering::Release);
                    }
                    at = at.max(batch.next);
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, "mercure subscriptions cannot read the log; retrying");
                    }
                    if sleep_or_cancel(backoff_with_jitter(failures), &shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}
