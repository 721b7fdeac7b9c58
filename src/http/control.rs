//! This node's side of the cluster control path (see [`crate::cluster`]): the actions any
//! node's admin API asks for, carried out on this node's hub, sources and drain, and what the
//! node announces about itself.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::channel::subscription_matches;
use crate::cluster::{Action, Answer, Node};
use crate::hub::{frame, ChannelChange, UpdateError};

#[async_trait]
impl Node for AppState {
    async fn execute(&self, action: Action) -> Answer {
        self.carry_out(action).await.map_err(|e| e.refusal())
    }

    async fn summary(&self) -> Value {
        let bounds = self.hub.log().bounds().await.ok();
        let dispatched = self.hub.dispatched();
        let behind = bounds.is_some_and(|b| dispatched < b.head);
        let (events_in, events_out) = self.cluster.rates();
        let (status, _) = super::ops::readiness(self).await;
        json!({
            "node_id": self.node_id,
            "ready": status.is_success(),
            "draining": self.draining.load(Ordering::SeqCst),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "connections": self.hub.connection_count(),
            "channels": self.hub.channel_count(),
            "events_in_per_s": round(events_in),
            "events_out_per_s": round(events_out),
            "log_head": bounds.map(|b| b.head.to_string()),
            "dispatched": dispatched.to_string(),
            "lag_ms": self.cluster.lag_ms(behind),
            "sources": self.sources.status(),
        })
    }

    fn counters(&self) -> (u64, u64) {
        (
            self.metrics.events_published.get(),
            self.hub.stats.events_delivered.load(Ordering::Relaxed),
        )
    }

    fn presence_event(&self, channel: &str, user: &str, join: bool) {
        self.hub.send_presence(channel, user, join);
    }
}

/// Most connections one node lists in an answer (answers cross the engine's pub/sub, and NATS
/// refuses messages over 1 MB by default); it sends one more to say there were more.
pub(super) const MAX_LISTED: usize = 1_000;

fn round(per_s: f64) -> f64 {
    (per_s * 10.0).round() / 10.0
}

/// A connection id no node holds (for this user).
pub(super) fn connection_not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        code: "connection_not_found",
        message: format!("no open connection {id:?} of yours"),
    }
}

/// A broadcast's `type` must be one a stream may carry.
pub(super) fn check_broadcast_type(kind: &str) -> Result<(), ApiError> {
    crate::event::check_type(kind).map_err(|e| ApiError::bad_request(e.code(), e.to_string()))
}

/// A connection as the admin API lists it.
fn connection_json(node: &str, c: &crate::hub::Conn) -> Value {
    json!({
        "connection_id": c.id,
        "user": c.user,
        "channels": c.channels(),
        "ip": c.info.ip.map(|ip| ip.to_string()),
        "opened": crate::time::rfc3339_ms(c.info.opened_ms),
        "session_id": c.info.session_id,
        "node": node,
    })
}

impl AppState {
    async fn carry_out(&self, action: Action) -> Result<Value, ApiError> {
        let node = self.node_id.as_str();
        Ok(match action {
            Action::Connections { user, channel } => {
                let list: Vec<Value> = self
                    .hub
                    .connections(user.as_deref())
                    .iter()
                    .filter(|c| {
                        channel.as_deref().is_none_or(|ch| {
                            c.channels().iter().any(|s| subscription_matches(s, ch))
                        })
                    })
                    .take(MAX_LISTED + 1)
                    .map(|c| connection_json(node, c))
                    .collect();
                json!(list)
            }
            Action::Channels => {
                let list: Vec<Value> = self
                    .hub
                    .channels()
                    .into_iter()
                    .map(|(channel, subscribers, events)| {
                        json!({ "channel": channel, "subscribers": subscribers, "events": events })
                    })
                    .collect();
                json!(list)
            }
            Action::Kick { user } => {
                let closed = self.hub.close_user(&user, "kicked");
                tracing::info!(%user, closed, "admin closed a user's streams");
                json!({ "closed": closed })
            }
            Action::Broadcast { kind, envelope } => {
                // Checked again here: the asker is another process.
                check_broadcast_type(&kind)?;
                let connections = self.hub.broadcast(frame::control_frame(&kind, &envelope));
                json!({ "connections": connections })
            }
            Action::Drain => {
                tracing::info!("admin requested a drain");
                self.drain_request.cancel();
                json!({ "node": node, "window_ms": self.drain_window_ms() })
            }
            Action::Source { name, start } => {
                let unknown = |e: crate::source::ControlError| ApiError::NotFound {
                    code: "source_not_found",
                    message: e.to_string(),
                };
                if start {
                    self.sources.start(&name).map_err(unknown)?;
                } else {
                    self.sources.stop(&name).await.map_err(unknown)?;
                }
                tracing::info!(source = %name, start, "admin source control");
                let mut status = self
                    .sources
                    .status()
                    .into_iter()
                    .find(|s| s["name"] == name.as_str())
                    .unwrap_or_else(|| json!({}));
                status["node"] = json!(node);
                status
            }
            Action::Subscriptions {
                connection,
                user,
                add,
                remove,
                since,
                history,
                explicit_since,
            } => {
                // Checked again here (the grants were checked by the node that took the
                // request; see docs/cluster.md on who may publish on the control path).
                for c in add.iter().chain(&remove) {
                    crate::channel::validate_subscription(c)
                        .map_err(|e| ApiError::invalid_channel(c, e))?;
                }
                // Another user's connection is reported as missing: ids are not for probing.
                let conn = self
                    .hub
                    .connection(&connection)
                    .filter(|c| c.user == user && c.mercure.is_none())
                    .ok_or_else(|| connection_not_found(&connection))?;
                let since = super::parse_event_id(&since)?;
                let channels = self
                    .hub
                    .update(
                        &conn,
                        &ChannelChange {
                            add: &add,
                            remove: &remove,
                            since,
                            history: history.map(|n| n.min(crate::log::MAX_HISTORY)),
                            explicit_since,
                        },
                        self.cfg.limits.max_channels_per_connection,
                    )
                    .map_err(|e| match e {
                        UpdateError::TooManyChannels(_) => {
                            ApiError::bad_request("too_many_channels", e.to_string())
                        }
                        UpdateError::Closed => connection_not_found(&connection),
                    })?;
                json!({ "channels": channels })
            }
            Action::Presence { channel } => {
                let subscribers = self.hub.subscribers_of(&channel);
                let mut users: std::collections::BTreeMap<&str, u64> = Default::default();
                for (user, _) in &subscribers {
                    *users.entry(user).or_default() += 1;
                }
                let clients: Vec<Value> = subscribers
                    .iter()
                    .take(MAX_LISTED + 1)
                    .map(|(user, id)| json!({ "user": user, "connection_id": id, "node": node }))
                    .collect();
                json!({ "users": users, "connections": subscribers.len(), "clients": clients })
            }
            Action::PresenceMembers => {
                let list: Vec<Value> = self
                    .hub
                    .members(|c| self.cluster.has_presence_events(c))
                    .into_iter()
                    .map(|(channel, id, user)| {
                        json!({ "channel": channel, "connection_id": id, "user": user })
                    })
                    .collect();
                json!(list)
            }
            Action::Incidents => json!(self.cluster.incidents.recent()),
        })
    }

    /// The drain's window: `server.drain_window_ms`, at most half the shutdown grace.
    pub(super) fn drain_window_ms(&self) -> u64 {
        let server = &self.cfg.server;
        server.drain_window_ms.min(server.shutdown_grace_ms / 2)
    }
}
