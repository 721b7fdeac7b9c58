//! Recent refusals of this node — authentication failures and limit hits — for the console:
//! the last [`KEEP`], and a feed of new ones for the admin stream.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::retry::lock;

/// Incidents kept per node.
pub const KEEP: usize = 200;
/// Longest path kept in an incident, bytes.
const MAX_PATH: usize = 256;

pub struct Incidents {
    node: String,
    recent: Mutex<VecDeque<Value>>,
    feed: broadcast::Sender<Value>,
}

/// What kind of refusal an answer is, if it is one the console shows: credentials refused
/// (401, 403 — not a request that sent none, as the console's own first look does) or a limit
/// hit (413, 429).
pub fn kind_of(status: u16, code: &str) -> Option<&'static str> {
    match status {
        401 if code == "missing_credentials" => None,
        401 | 403 => Some("auth"),
        413 | 429 => Some("limit"),
        _ => None,
    }
}

impl Incidents {
    pub fn new(node: String) -> Self {
        Self {
            node,
            recent: Mutex::new(VecDeque::with_capacity(KEEP)),
            feed: broadcast::channel(64).0,
        }
    }

    /// Records one refusal.
    pub fn record(&self, kind: &str, code: &str, ip: Option<String>, path: &str) {
        // The path is the client's: at most MAX_PATH bytes of it are kept.
        let mut end = path.len().min(MAX_PATH);
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        let path = &path[..end];
        let incident = json!({
            "time": crate::time::rfc3339_ms(crate::time::now_ms()),
            "node": self.node,
            "kind": kind,
            "code": code,
            "ip": ip,
            "path": path,
        });
        {
            let mut recent = lock(&self.recent);
            if recent.len() == KEEP {
                recent.pop_back();
            }
            recent.push_front(incident.clone());
        }
        let _ = self.feed.send(incident);
    }

    /// The recent ones, newest first.
    pub fn recent(&self) -> Vec<Value> {
        lock(&self.recent).iter().cloned().collect()
    }

    /// New ones as they are recorded.
    pub fn subscribe(&self) -> broadcast::Receiver<Value> {
        self.feed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_first_and_at_most_keep() {
        let incidents = Incidents::new("n1".into());
        for i in 0..KEEP + 5 {
            incidents.record("auth", &format!("c{i}"), None, "/v1/stream");
        }
        let recent = incidents.recent();
        assert_eq!(recent.len(), KEEP);
        assert_eq!(recent[0]["code"], format!("c{}", KEEP + 4));
        assert_eq!(recent[0]["node"], "n1");
        assert_eq!(kind_of(401, "invalid_token"), Some("auth"));
        assert_eq!(kind_of(401, "missing_credentials"), None);
        assert_eq!(kind_of(429, "rate_limited"), Some("limit"));
        assert_eq!(kind_of(404, "not_found"), None);
    }
}
