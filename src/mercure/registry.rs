//! The active subscriptions of the whole cluster, as the subscription events in the log tell
//! them: every node publishes an event when one of its Mercure subscriptions starts or ends,
//! and every node reads all of them (from the oldest retained event at start, then as they
//! come), so any node answers the subscriptions API for all.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::update::{Stored, SUBSCRIPTIONS_CHANNEL};
use crate::log::{Event, EventLog, Position};
use crate::retry::{backoff_with_jitter, lock, sleep_or_cancel};

/// Subscription documents by id (the subscription event's topic).
#[derive(Default)]
pub struct Registry {
    active: Mutex<BTreeMap<String, Value>>,
    /// Whether the log was read up to its head once.
    caught_up: AtomicBool,
}

impl Registry {
    /// Takes one subscription event into account.
    pub fn apply(&self, event: &Event) {
        let Some(update) = Stored::of(event) else {
            return;
        };
        let Ok(doc) = serde_json::from_str::<Value>(&update.data) else {
            return;
        };
        let Some(id) = doc.get("id").and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
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

    /// Reads the subscription events of the log, from the oldest, until `shutdown`.
    pub async fn run(self: Arc<Self>, log: Arc<dyn EventLog>, shutdown: CancellationToken) {
        let filter = |e: &Event| e.event.channel.starts_with(SUBSCRIPTIONS_CHANNEL);
        let mut at = Position::ZERO;
        let mut failures = 0u32;
        loop {
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = log.read(at, 1_000, &filter, Some(Duration::from_secs(1))) => r,
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
