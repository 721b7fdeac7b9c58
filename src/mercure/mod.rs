//! The Mercure hub protocol, a view of the one log: updates published at
//! `/.well-known/mercure` are events like any other (durable, resumable, clustered,
//! counted), stored on the channel `mercure:<topic>` ([`update`]); Mercure subscribers are
//! connections of the hub whose events are chosen by topic matchers and tokens
//! ([`subscriber`]) and written as Mercure frames. Both generations of the protocol are
//! spoken: draft-07 (`topic=` selectors, the `mercure` claim) and draft-08 (`match`
//! matchers, RFC 9068 access tokens). The HTTP side is `crate::http::mercure`.

pub mod config;
pub mod matcher;
pub mod registry;
pub mod subscriber;
pub mod token;
pub mod update;

use std::sync::Arc;
use std::time::Duration;

use crate::log::{EventLog, Position};
use config::MercureConfig;

/// Longest a search of the log for a publisher-chosen id may take.
const FIND_ID_DEADLINE: Duration = Duration::from_secs(1);

/// The Mercure side of a node: token verification, the active subscriptions, recent ids.
pub struct Mercure {
    pub cfg: MercureConfig,
    pub verifier: token::Verifier,
    pub registry: Arc<registry::Registry>,
    /// One search of the log for an old id at a time, node-wide.
    searching: tokio::sync::Semaphore,
}

impl Mercure {
    /// Checks the settings and reads the keys; the message names what is wrong.
    pub fn new(cfg: &MercureConfig, http: reqwest::Client) -> Result<Self, String> {
        if cfg.max_matchers == 0 || cfg.max_topic_bytes == 0 {
            return Err(
                "mercure.max_matchers and mercure.max_topic_bytes must be greater than 0".into(),
            );
        }
        let verifier = token::Verifier::with_http(cfg, http, Default::default())?;
        if !verifier.has_keys(token::Role::Publisher) {
            return Err("the hub needs a key for publishers' tokens: mercure.jwt_secret, publisher_jwt_secret, publisher_public_key_file or jwks_url".into());
        }
        Ok(Self {
            cfg: cfg.clone(),
            verifier,
            registry: Arc::new(registry::Registry::default()),
            searching: tokio::sync::Semaphore::new(1),
        })
    }

    /// Remembers where the update with a publisher-chosen `id` is.
    pub fn remember(&self, id: &str, pos: Position) {
        self.registry.remember(id, pos);
    }

    /// Where the update with id `id` is: a hub-made id says it; a publisher's is looked up
    /// among the recent ones every node keeps (see [`registry`]), then searched in the log
    /// (oldest first, one search at a time node-wide, for at most a second). `None`: not
    /// found (not in the log, or not in time, or another search was running).
    pub async fn find(&self, log: &Arc<dyn EventLog>, id: &str) -> Option<Position> {
        if let Some(pos) = update::position_of_id(id) {
            return Some(pos);
        }
        if let Some(pos) = self.registry.recent(id) {
            return Some(pos);
        }
        let _searching = self.searching.try_acquire().ok()?;
        let filter = |e: &crate::log::Event| {
            update::Stored::of(e).is_some_and(|u| u.id.as_deref() == Some(id))
        };
        let search = async {
            let mut at = Position::ZERO;
            loop {
                let batch = log.read(at, 1, &filter, None).await.ok()?;
                if let Some(found) = batch.events.first() {
                    return Some(found.pos);
                }
                if batch.at_head || batch.next <= at {
                    return None;
                }
                at = batch.next;
            }
        };
        let found = tokio::time::timeout(FIND_ID_DEADLINE, search)
            .await
            .ok()??;
        self.remember(id, found);
        Some(found)
    }
}
