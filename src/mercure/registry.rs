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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::NewEvent;
    use crate::mercure::update::channel_for;
    use serde_json::{json, value::RawValue};

    fn event(pos: u64, topic: &str, hub: bool, id: Option<&str>, data: &Value) -> Event {
        let stored = Stored {
            topics: vec![topic.into()],
            private: true,
            id: id.map(Into::into),
            retry: None,
            hub,
            data: data.to_string().into(),
        };
        let raw = RawValue::from_string(serde_json::to_string(&stored).unwrap()).unwrap();
        Event {
            pos: Position::seq(pos),
            event: NewEvent::new(channel_for(topic), "message".into(), raw, None, 0, 1 << 20)
                .unwrap(),
        }
    }

    const SUB: &str = "/.well-known/mercure/subscriptions/Exact/a/urn%3Auuid%3A1";

    #[test]
    fn only_the_hubs_own_events_about_themselves_change_the_list() {
        let r = Registry::default();
        let doc = |id: &str, active: bool| json!({ "id": id, "active": active, "node": "n1" });
        // Not written by the hub (a forged event on the same channel): ignored.
        r.apply(&event(1, SUB, false, None, &doc(SUB, true)));
        assert!(r.is_empty());
        // Written by the hub but naming another subscription than its topic: ignored.
        let other = "/.well-known/mercure/subscriptions/Exact/b/urn%3Auuid%3A2";
        r.apply(&event(2, SUB, true, None, &doc(other, true)));
        assert!(r.is_empty());
        r.apply(&event(3, SUB, true, None, &doc(SUB, true)));
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.list("/.well-known/mercure/subscriptions/Exact/a/").len(),
            1
        );
        assert!(r
            .list("/.well-known/mercure/subscriptions/Exact/b/")
            .is_empty());
        assert_eq!(r.of_node("n1").len(), 1);
        assert!(r.get(SUB).is_some());
        r.apply(&event(4, SUB, true, None, &doc(SUB, false)));
        assert!(r.is_empty() && r.get(SUB).is_none());
    }

    #[test]
    fn publisher_ids_are_remembered_latest_first_and_bounded() {
        let r = Registry::default();
        r.apply(&event(
            5,
            "https://example.com/a",
            false,
            Some("rev-1"),
            &json!(1),
        ));
        assert_eq!(r.recent("rev-1"), Some(Position::seq(5)));
        r.apply(&event(
            9,
            "https://example.com/b",
            false,
            Some("rev-1"),
            &json!(2),
        ));
        assert_eq!(r.recent("rev-1"), Some(Position::seq(9)), "the latest");
        assert_eq!(r.recent("rev-2"), None);
        for i in 0..RECENT_IDS as u64 + 1 {
            r.remember(&format!("x{i}"), Position::seq(100 + i));
        }
        assert_eq!(r.recent("rev-1"), None, "the oldest id went first");
        assert_eq!(r.recent("x1"), Some(Position::seq(101)));
    }
}
