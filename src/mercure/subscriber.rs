//! What a Mercure subscriber receives: the updates whose topics its matchers select, private
//! ones only when its token grants `subscribe` on one of their topics.

use std::sync::Arc;

use super::matcher::{Matcher, MatcherType};
use super::token::Claims;
use super::update::{channel_for, Stored, CHANNEL_PREFIX};
use crate::log::Event;

/// One subscriber connection's view of the log.
#[derive(Debug)]
pub struct Subscriber {
    /// The subscription's topic matchers (routing; they never widen what it may read).
    pub matchers: Vec<Matcher>,
    /// The verified token; `None` for an anonymous subscriber.
    pub claims: Option<Arc<Claims>>,
    /// The subscriber's id in subscription events (`urn:uuid:…`).
    pub id: String,
}

impl Subscriber {
    /// Whether the connection receives `event`.
    pub fn wants(&self, event: &Event) -> bool {
        Stored::of(event).is_some_and(|u| self.wants_update(&u))
    }

    /// [`Subscriber::wants`] for an update already read from its event.
    pub fn wants_update(&self, update: &Stored<'_>) -> bool {
        let selected = update
            .topics
            .iter()
            .any(|t| self.matchers.iter().any(|m| m.matches(t)));
        selected && (!update.private || self.may_read(update))
    }

    /// Whether the token grants reading the private `update`.
    pub fn may_read(&self, update: &Stored<'_>) -> bool {
        self.claims
            .as_ref()
            .is_some_and(|c| update.topics.iter().any(|t| c.may_subscribe(t)))
    }

    /// The channels and patterns the connection is indexed under in the hub: the channel of
    /// every exact topic, and `mercure:*` (every update) when a matcher is not one topic.
    pub fn routes(&self) -> Vec<String> {
        let mut routes: Vec<String> = Vec::new();
        let mut any = false;
        for m in &self.matchers {
            match literal_topic(m) {
                Some(topic) => routes.push(channel_for(topic)),
                None => any = true,
            }
        }
        if any {
            routes = vec![format!("{CHANNEL_PREFIX}*")];
        }
        routes.sort();
        routes.dedup();
        routes
    }
}

/// The one topic a matcher takes, when it takes exactly one.
fn literal_topic(m: &Matcher) -> Option<&str> {
    if m.is_wildcard() {
        return None;
    }
    match m.kind() {
        MatcherType::Exact => Some(m.text()),
        MatcherType::Selector if !m.text().contains(['{', '}']) => Some(m.text()),
        _ => None,
    }
}
