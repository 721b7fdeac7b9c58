//! The cluster control path: how the nodes of one Redis or NATS log find and steer each other.
//!
//! Events never travel here — they are in the log. This is for what is about *connections*,
//! which live on one node each: listing them, kicking a user, broadcasting, draining, a
//! subscription change sent to another node than the one holding the stream, presence.
//!
//! - **Bus**: the log engine's own pub/sub (Redis `PUBLISH`/`SUBSCRIBE`, NATS core subjects),
//!   not the log: nothing here is durable, and nothing here needs to be. Two topics per node:
//!   `all` (every node listens) and `node.<tag>` (this node only; `tag` is 8 hex digits of the
//!   node id's SHA-256, also the start of every connection id the node gives out).
//! - **Heartbeats**: every node announces itself (its [`Node::summary`]) on `all` every
//!   `cluster.heartbeat_ms`; a node not heard from for `cluster.node_timeout_ms` is gone. A node
//!   that stops cleanly says so (`bye`).
//! - **Requests**: a cluster-wide action is one request on `all` and one reply per node on
//!   the asker's `node.<tag>`; an action on one connection's node is one request and one
//!   reply. The asker waits at most `cluster.request_timeout_ms` and names the nodes that did
//!   not answer.
//! - **Presence events**: a connection joining or leaving a channel listed in
//!   `presence.events` is one message on `all`; every node delivers `presence.join` /
//!   `presence.leave` to its own subscribers of the channel, and remembers the other nodes'
//!   members so it can say `presence.leave` for them when their node is gone.
//!
//! On the single-node logs (memory, file) there is no bus: every action is this node's.

pub mod incidents;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::channel::pattern_matches;
use crate::config::{ClusterConfig, PresenceConfig};
use crate::metrics::ClusterMetrics;
use crate::retry::lock;
pub use incidents::Incidents;

/// A log engine's pub/sub, as the control path uses it.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// `"redis"`, `"nats"`.
    fn kind(&self) -> &'static str;

    /// Publishes `payload` on `topic` (`all`, `node.<tag>`); fire and forget.
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), String>;

    /// Forwards every message published on `topics` to `tx` until `stop`, reconnecting (with
    /// backoff) whenever the engine goes away.
    async fn listen(&self, topics: Vec<String>, tx: mpsc::Sender<Bytes>, stop: CancellationToken);
}

/// The tag of a node: 8 hex digits of the SHA-256 of its id.
pub fn tag_of(node_id: &str) -> String {
    let digest = Sha256::digest(node_id.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The tag of the node that gave out connection id `id` (`c_<tag>…`).
pub fn tag_of_connection(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("c_")?;
    let tag = rest.get(..8)?;
    tag.bytes().all(|b| b.is_ascii_hexdigit()).then_some(tag)
}

/// What one node is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Its connections (of one user, or subscribed to one channel).
    Connections {
        user: Option<String>,
        channel: Option<String>,
    },
    /// Its channels with subscriber and event counts.
    Channels,
    /// Close every stream of the user (`closing`, `kicked`).
    Kick { user: String },
    /// Send a control event to every stream.
    Broadcast { kind: String, envelope: Value },
    /// Start draining.
    Drain,
    /// Start or stop a source.
    Source { name: String, start: bool },
    /// Change a connection's channels (checked by the node that received the request).
    Subscriptions {
        connection: String,
        user: String,
        add: Vec<String>,
        remove: Vec<String>,
        since: String,
        /// The added channels' newest this many events first (`history`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        history: Option<usize>,
        /// `since` is the client's (else it is the head the asking node read): with
        /// `history`, history then reaches back to the oldest retained event. A node of an
        /// older version ignores both and gives no history (never more than asked).
        #[serde(default)]
        explicit_since: bool,
    },
    /// The connections subscribed to a channel: `[{"user", "connection_id"}]`.
    Presence { channel: String },
    /// Every (channel, connection, user) of this node on a channel with presence events.
    PresenceMembers,
    /// Its recent incidents.
    Incidents,
}

/// A refused action, as the asker answers it: an HTTP status, a stable code, a sentence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// A node's answer to an [`Action`].
pub type Answer = Result<Value, Refusal>;

/// What the control path needs from the node it runs on.
#[async_trait]
pub trait Node: Send + Sync + 'static {
    /// Carries out `action` on this node.
    async fn execute(&self, action: Action) -> Answer;
    /// What this node announces about itself (see docs/api.md, `nodes`).
    async fn summary(&self) -> Value;
    /// Events appended by this node and event frames delivered by it, since it started.
    fn counters(&self) -> (u64, u64);
    /// Delivers `presence.join` (`join`) or `presence.leave` to this node's subscribers of
    /// `channel`.
    fn presence_event(&self, channel: &str, user: &str, join: bool);
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    node: String,
    tag: String,
    /// Random per process: a node restarted with the same id is a new process whose
    /// predecessor's presence members are gone.
    boot: u64,
    #[serde(flatten)]
    msg: Msg,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Msg {
    Heartbeat {
        summary: Value,
    },
    Request {
        id: u64,
        /// Wall-clock ms after which the asker no longer waits: a request delivered late (the
        /// engine buffered it through an outage) is not carried out.
        expires_ms: u64,
        action: Action,
    },
    Reply {
        id: u64,
        answer: Answer,
    },
    Presence {
        channel: String,
        user: String,
        conn: String,
        join: bool,
    },
    /// A node started: the others send their heartbeat at once.
    Hello,
    Bye,
}

/// Another node, as last heard.
struct Peer {
    tag: String,
    boot: u64,
    summary: Value,
    seen: Instant,
}

/// Clocks of the nodes may differ this much before a request is taken as expired.
const CLOCK_LEEWAY_MS: u64 = 2_000;
/// Largest answer sent over the bus (NATS refuses messages over 1 MB by default).
const MAX_ANSWER_BYTES: usize = 900 * 1024;

/// A presence member of another node: (channel, connection id) → user.
type Members = HashMap<(String, String), String>;

/// The answers of a cluster-wide action.
#[derive(Debug)]
pub struct Gathered {
    /// (node id, its answer), this node first.
    pub answers: Vec<(String, Answer)>,
    /// Nodes believed alive that did not answer in time.
    pub unreachable: Vec<String>,
}

/// An action on one other node failed to get an answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no live node has tag {0}")]
    UnknownNode(String),
    #[error("node {0} did not answer within cluster.request_timeout_ms")]
    NoAnswer(String),
}

/// Bound on messages waiting to be published (presence changes during a connect storm).
const OUTBOX: usize = 65_536;

pub struct Cluster {
    pub node_id: String,
    pub tag: String,
    pub cfg: ClusterConfig,
    bus: Option<Arc<dyn Bus>>,
    boot: u64,
    started: Instant,
    /// When this node last heard its own heartbeat back: its listener works.
    echo: Mutex<Instant>,
    peers: Mutex<HashMap<String, Peer>>,
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<(String, Answer)>>>,
    next_id: AtomicU64,
    outbox: mpsc::Sender<Outgoing>,
    outbox_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// `presence.events`: channel patterns with presence events.
    presence_patterns: Vec<String>,
    /// Other nodes' members of presence-event channels, by node id.
    members: Mutex<HashMap<String, Members>>,
    /// Events in / frames out per second over the last heartbeat period.
    rates: Mutex<Rates>,
    /// The last summary made: sent again when a new one takes too long (a slow log must not
    /// make this node look gone).
    last_summary: Mutex<Value>,
    /// Since when this node's dispatcher has been behind the log head (for `lag_ms`).
    behind_since: Mutex<Option<Instant>>,
    /// Recent refusals (auth failures, limit hits) of this node.
    pub incidents: Incidents,
    /// Messages the outbox had to drop (full), for the log line.
    dropped: AtomicU64,
    metrics: ClusterMetrics,
}

/// A message waiting to be published: (topic, payload, when it was queued).
type Outgoing = (String, Bytes, Instant);

#[derive(Default)]
struct Rates {
    at: Option<Instant>,
    events_in: u64,
    events_out: u64,
    in_per_s: f64,
    out_per_s: f64,
}

impl Cluster {
    pub fn new(
        node_id: String,
        cfg: ClusterConfig,
        presence: &PresenceConfig,
        bus: Option<Arc<dyn Bus>>,
        metrics: ClusterMetrics,
    ) -> Arc<Self> {
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        Arc::new(Self {
            tag: tag_of(&node_id),
            incidents: Incidents::new(node_id.clone()),
            node_id,
            cfg,
            bus,
            boot: rand::random(),
            started: Instant::now(),
            echo: Mutex::new(Instant::now()),
            peers: Mutex::default(),
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            outbox,
            outbox_rx: Mutex::new(Some(outbox_rx)),
            presence_patterns: presence.events.clone(),
            members: Mutex::default(),
            rates: Mutex::default(),
            last_summary: Mutex::new(Value::Null),
            behind_since: Mutex::default(),
            dropped: AtomicU64::new(0),
            metrics,
        })
    }

    /// `"redis"`, `"nats"`, or `None` on a single-node log.
    pub fn bus_kind(&self) -> Option<&'static str> {
        self.bus.as_ref().map(|b| b.kind())
    }

    /// Whether `channel` has presence events.
    pub fn has_presence_events(&self, channel: &str) -> bool {
        self.presence_patterns
            .iter()
            .any(|p| pattern_matches(p, channel, ""))
    }

    /// Whether any channel has presence events.
    pub fn presence_events_configured(&self) -> bool {
        !self.presence_patterns.is_empty()
    }

    /// Events in / frames out per second, as measured at the last heartbeat.
    pub fn rates(&self) -> (f64, f64) {
        let r = lock(&self.rates);
        (r.in_per_s, r.out_per_s)
    }

    /// How long this node's dispatcher has been behind the head (0 when it is not).
    pub fn lag_ms(&self, behind: bool) -> u64 {
        let mut since = lock(&self.behind_since);
        if !behind {
            *since = None;
            return 0;
        }
        since.get_or_insert_with(Instant::now).elapsed().as_millis() as u64
    }

    /// Every node: this one (`own`, its summary) and the live others, sorted by id, each with
    /// `self` and `last_seen_ms`.
    pub fn nodes(&self, mut own: Value) -> Vec<Value> {
        own["self"] = json!(true);
        own["last_seen_ms"] = json!(0);
        let mut nodes: Vec<Value> = lock(&self.peers)
            .values()
            .filter(|p| self.alive(p))
            .map(|p| {
                // Heartbeats whose summary is not an object are dropped on arrival.
                let mut s = p.summary.clone();
                s["self"] = json!(false);
                s["last_seen_ms"] = json!(p.seen.elapsed().as_millis() as u64);
                s
            })
            .collect();
        nodes.push(own);
        nodes.sort_by(|a, b| a["node_id"].as_str().cmp(&b["node_id"].as_str()));
        nodes
    }

    fn alive(&self, peer: &Peer) -> bool {
        peer.seen.elapsed() < Duration::from_millis(self.cfg.node_timeout_ms)
    }

    /// Whether this node started too recently to have heard every other node.
    fn young(&self) -> bool {
        self.bus.is_some()
            && self.started.elapsed() < Duration::from_millis(self.cfg.node_timeout_ms)
    }

    /// Whether this node hears the bus (its own heartbeats come back); always on single-node
    /// logs.
    pub fn listening(&self) -> bool {
        self.bus.is_none()
            || lock(&self.echo).elapsed() < Duration::from_millis(self.cfg.node_timeout_ms)
    }

    /// The live other nodes: id → tag.
    fn live_peers(&self) -> HashMap<String, String> {
        lock(&self.peers)
            .iter()
            .filter(|(_, p)| self.alive(p))
            .map(|(id, p)| (id.clone(), p.tag.clone()))
            .collect()
    }

    /// The id of the live node with `tag` (this node's own included).
    pub fn node_with_tag(&self, tag: &str) -> Option<String> {
        if tag == self.tag {
            return Some(self.node_id.clone());
        }
        self.live_peers()
            .into_iter()
            .find(|(_, t)| t == tag)
            .map(|(id, _)| id)
    }

    /// The tag of live node `node_id` (this node's own included).
    pub fn tag_of_node(&self, node_id: &str) -> Option<String> {
        if node_id == self.node_id {
            return Some(self.tag.clone());
        }
        self.live_peers().remove(node_id)
    }

    fn send(&self, topic: String, msg: Msg) {
        if self.bus.is_none() {
            return;
        }
        if self
            .outbox
            .try_send((topic, self.encode(msg), Instant::now()))
            .is_err()
        {
            self.metrics.messages_dropped.inc();
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "cluster control messages dropped: the bus is too slow or down"
                );
            }
        }
    }

    fn encode(&self, msg: Msg) -> Bytes {
        let envelope = Envelope {
            node: self.node_id.clone(),
            tag: self.tag.clone(),
            boot: self.boot,
            msg,
        };
        Bytes::from(serde_json::to_vec(&envelope).expect("messages serialize"))
    }

    /// Sends `action` to `topic` as a request whose answers arrive on the returned receiver
    /// until the guard is dropped (however the asker stops waiting).
    fn request(&self, topic: String, action: Action) -> Pending<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.pending).insert(id, tx);
        let expires_ms = crate::time::now_ms() + self.cfg.request_timeout_ms;
        self.send(
            topic,
            Msg::Request {
                id,
                expires_ms,
                action,
            },
        );
        Pending {
            cluster: self,
            id,
            rx,
        }
    }

    /// Carries out `action` on every node: this one (`local`) and every live other; waits up to
    /// `cluster.request_timeout_ms` for the others.
    ///
    /// A node that started less than `node_timeout_ms` ago may not have heard of every other
    /// node yet: it waits the whole timeout and takes every answer that comes.
    pub async fn gather(&self, local: &dyn Node, action: Action) -> Gathered {
        let mut waiting: HashSet<String> = self.live_peers().into_keys().collect();
        let young = self.young();
        let asked =
            (young || !waiting.is_empty()).then(|| self.request("all".into(), action.clone()));
        let mut answers = vec![(self.node_id.clone(), local.execute(action).await)];
        if let Some(mut pending) = asked {
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(self.cfg.request_timeout_ms);
            while young || !waiting.is_empty() {
                match tokio::time::timeout_at(deadline, pending.rx.recv()).await {
                    Ok(Some((node, answer))) => {
                        waiting.remove(&node);
                        if !answers.iter().any(|(n, _)| *n == node) {
                            answers.push((node, answer));
                        }
                    }
                    _ => break,
                }
            }
        }
        let mut unreachable: Vec<String> = waiting.into_iter().collect();
        unreachable.sort();
        self.metrics.unanswered.inc_by(unreachable.len() as u64);
        Gathered {
            answers,
            unreachable,
        }
    }

    /// Carries out `action` on the node with `tag` (this one: `local`, at once).
    pub async fn ask(
        &self,
        local: &dyn Node,
        tag: &str,
        action: Action,
    ) -> Result<(String, Answer), AskError> {
        if tag == self.tag {
            return Ok((self.node_id.clone(), local.execute(action).await));
        }
        // A young node may not have heard of it yet: it asks anyway.
        let node = match self.node_with_tag(tag) {
            Some(node) => node,
            None if self.young() => format!("with tag {tag}"),
            None => return Err(AskError::UnknownNode(tag.to_owned())),
        };
        let mut pending = self.request(format!("node.{tag}"), action);
        let answer = tokio::time::timeout(
            Duration::from_millis(self.cfg.request_timeout_ms),
            pending.rx.recv(),
        )
        .await;
        match answer {
            Ok(Some(answer)) => Ok(answer),
            _ => {
                self.metrics.unanswered.inc();
                Err(AskError::NoAnswer(node))
            }
        }
    }

    /// Announces that connection `conn` of `user` joined (`join`) or left `channel`, a channel
    /// with presence events (its local subscribers are told by the caller).
    pub fn announce_presence(&self, channel: &str, user: &str, conn: &str, join: bool) {
        self.send(
            "all".into(),
            Msg::Presence {
                channel: channel.to_owned(),
                user: user.to_owned(),
                conn: conn.to_owned(),
                join,
            },
        );
    }

    /// Measures the rates and forgets the nodes not heard from in time (telling `node` that
    /// their presence members left).
    fn tick(&self, node: &dyn Node) {
        let (events_in, events_out) = node.counters();
        {
            let mut r = lock(&self.rates);
            let now = Instant::now();
            if let Some(at) = r.at {
                let secs = now.duration_since(at).as_secs_f64().max(0.001);
                r.in_per_s = events_in.saturating_sub(r.events_in) as f64 / secs;
                r.out_per_s = events_out.saturating_sub(r.events_out) as f64 / secs;
            }
            *r = Rates {
                at: Some(now),
                events_in,
                events_out,
                ..*r
            };
        }
        let timeout = Duration::from_millis(self.cfg.node_timeout_ms);
        let gone: Vec<String> = {
            let mut peers = lock(&self.peers);
            let gone: Vec<String> = peers
                .iter()
                .filter(|(_, p)| p.seen.elapsed() >= timeout)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &gone {
                peers.remove(id);
            }
            gone
        };
        for id in gone {
            tracing::warn!(node = %id, "cluster: node not heard from; taken as gone");
            self.forget_members(node, &id);
        }
        // Members recorded for a node that is no longer known (a late message).
        let known: HashSet<String> = lock(&self.peers).keys().cloned().collect();
        let strays: Vec<String> = lock(&self.members)
            .keys()
            .filter(|id| !known.contains(*id))
            .cloned()
            .collect();
        for id in strays {
            self.forget_members(node, &id);
        }
        if self.bus.is_some() {
            self.metrics.listening.set(i64::from(self.listening()));
        }
        self.count_nodes();
    }

    fn count_nodes(&self) {
        self.metrics.nodes.set(1 + self.live_peers().len() as i64);
    }

    /// Says `presence.leave` for every member of node `id` (gone) and forgets them.
    fn forget_members(&self, node: &dyn Node, id: &str) {
        let members = lock(&self.members).remove(id).unwrap_or_default();
        for ((channel, _), user) in members {
            node.presence_event(&channel, &user, false);
        }
    }

    /// Runs the control path until `shutdown`: heartbeats, requests from other nodes,
    /// presence. Without a bus it only measures this node's rates.
    pub async fn run(self: Arc<Self>, node: Arc<dyn Node>, shutdown: CancellationToken) {
        let every = Duration::from_millis(self.cfg.heartbeat_ms);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let Some(bus) = self.bus.clone() else {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticks.tick() => self.tick(&*node),
                }
            }
        };
        let stop = CancellationToken::new();
        let _stop_guard = stop.clone().drop_guard();
        let (tx, mut inbox) = mpsc::channel::<Bytes>(4_096);
        let topics = vec!["all".to_owned(), format!("node.{}", self.tag)];
        let listen = |stop: CancellationToken| {
            let (bus, topics, tx) = (bus.clone(), topics.clone(), tx.clone());
            tokio::spawn(async move { bus.listen(topics, tx, stop).await });
        };
        let mut listener = stop.child_token();
        listen(listener.clone());
        if let Some(outbox) = lock(&self.outbox_rx).take() {
            tokio::spawn(self.clone().publish_all(bus.clone(), outbox, stop.clone()));
        }
        self.send("all".into(), Msg::Hello);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {
                    self.tick(&*node);
                    self.heartbeat(&node);
                    if !self.listening() {
                        // Its own heartbeats do not come back: the subscription is dead (a
                        // half-open connection) — subscribe again.
                        tracing::warn!("cluster: this node does not hear the bus; subscribing again");
                        listener.cancel();
                        listener = stop.child_token();
                        listen(listener.clone());
                        *lock(&self.echo) = Instant::now();
                    }
                }
                m = inbox.recv() => {
                    let Some(bytes) = m else { break };
                    self.receive(&node, &bytes);
                }
            }
        }
        // A clean stop: the others forget this node at once. Sent directly (the outbox task
        // stops with this function).
        let bye = self.encode(Msg::Bye);
        let _ = tokio::time::timeout(Duration::from_secs(1), bus.publish("all", bye)).await;
    }

    /// Publishes what [`Cluster::send`] queued, in order; what waited longer than a request
    /// may (the engine was away) is dropped, not sent late.
    async fn publish_all(
        self: Arc<Self>,
        bus: Arc<dyn Bus>,
        mut outbox: mpsc::Receiver<Outgoing>,
        stop: CancellationToken,
    ) {
        let stale = Duration::from_millis(self.cfg.request_timeout_ms);
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                m = outbox.recv() => m,
            };
            let Some((topic, payload, queued)) = next else {
                return;
            };
            if queued.elapsed() > stale {
                self.metrics.messages_dropped.inc();
                continue;
            }
            match bus.publish(&topic, payload).await {
                Ok(()) => {
                    self.metrics.messages_sent.inc();
                }
                Err(e) => {
                    self.metrics.messages_dropped.inc();
                    tracing::debug!(error = %e, "cluster: publish failed");
                }
            }
        }
    }

    /// Sends this node's heartbeat, its summary made in a task of its own so that a slow log
    /// never holds up the messages of the others; when the summary takes longer than a
    /// heartbeat period, the last one goes (marked `stale`), so the node stays alive to the
    /// others.
    fn heartbeat(self: &Arc<Self>, node: &Arc<dyn Node>) {
        let (this, node) = (self.clone(), node.clone());
        let wait = Duration::from_millis(self.cfg.heartbeat_ms);
        tokio::spawn(async move {
            let summary = match tokio::time::timeout(wait, node.summary()).await {
                Ok(summary) => {
                    *lock(&this.last_summary) = summary.clone();
                    summary
                }
                Err(_) => {
                    let mut last = lock(&this.last_summary).clone();
                    let Some(fields) = last.as_object_mut() else {
                        return; // none made yet
                    };
                    fields.insert("stale".into(), json!(true));
                    last
                }
            };
            this.send("all".into(), Msg::Heartbeat { summary });
        });
    }

    fn receive(self: &Arc<Self>, node: &Arc<dyn Node>, bytes: &[u8]) {
        let envelope: Envelope = match serde_json::from_slice(bytes) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: unreadable control message ignored");
                return;
            }
        };
        if envelope.node == self.node_id {
            if envelope.boot == self.boot {
                *lock(&self.echo) = Instant::now();
            } else if matches!(envelope.msg, Msg::Heartbeat { .. }) {
                tracing::warn!(node = %self.node_id,
                    "cluster: another process uses this node's server.node_id; give each node its own");
            }
            return;
        }
        self.metrics.messages_received.inc();
        let (from, tag, boot) = (envelope.node, envelope.tag, envelope.boot);
        match envelope.msg {
            Msg::Heartbeat { mut summary } => {
                let Some(fields) = summary.as_object_mut() else {
                    return;
                };
                fields.insert("node_id".into(), json!(from));
                let previous = lock(&self.peers).insert(
                    from.clone(),
                    Peer {
                        tag: tag.clone(),
                        boot,
                        summary,
                        seen: Instant::now(),
                    },
                );
                match previous {
                    None => tracing::info!(node = %from, "cluster: node joined"),
                    Some(p) if p.boot != boot => {
                        // Restarted with the same id: its predecessor's members are gone.
                        tracing::info!(node = %from, "cluster: node restarted");
                        self.forget_members(&**node, &from);
                    }
                    Some(_) => return,
                }
                self.count_nodes();
                if self.presence_events_configured() {
                    self.fetch_members(node.clone(), from, tag, boot);
                }
            }
            Msg::Hello => self.heartbeat(node),
            Msg::Request {
                id,
                expires_ms,
                action,
            } => {
                if crate::time::now_ms() > expires_ms + CLOCK_LEEWAY_MS {
                    tracing::debug!(node = %from, "cluster: expired request ignored");
                    return;
                }
                let (this, node) = (self.clone(), node.clone());
                tokio::spawn(async move {
                    let mut answer = node.execute(action).await;
                    if serde_json::to_vec(&answer).map_or(0, |b| b.len()) > MAX_ANSWER_BYTES {
                        answer = Err(Refusal {
                            status: 502,
                            code: "answer_too_large".into(),
                            message: format!(
                                "node {}'s answer is too large to send; ask for less (filters)",
                                this.node_id
                            ),
                        });
                    }
                    this.send(format!("node.{tag}"), Msg::Reply { id, answer });
                });
            }
            Msg::Reply { id, answer } => {
                if let Some(tx) = lock(&self.pending).get(&id) {
                    let _ = tx.send((from, answer));
                }
            }
            Msg::Presence {
                channel,
                user,
                conn,
                join,
            } => {
                // Recorded only for nodes known (and of this boot): a late message of a node
                // that is gone would stay for ever.
                let known = lock(&self.peers).get(&from).is_some_and(|p| p.boot == boot);
                if known {
                    let mut members = lock(&self.members);
                    let of_node = members.entry(from).or_default();
                    if join {
                        of_node.insert((channel.clone(), conn), user.clone());
                    } else {
                        of_node.remove(&(channel.clone(), conn));
                    }
                }
                node.presence_event(&channel, &user, join);
            }
            Msg::Bye => {
                tracing::info!(node = %from, "cluster: node left");
                lock(&self.peers).remove(&from);
                self.count_nodes();
                self.forget_members(&**node, &from);
            }
        }
    }

    /// Learns the presence members a node (process `boot`) already had when this one first
    /// heard of it.
    fn fetch_members(self: &Arc<Self>, node: Arc<dyn Node>, id: String, tag: String, boot: u64) {
        let this = self.clone();
        tokio::spawn(async move {
            let Ok((_, Ok(list))) = this.ask(&*node, &tag, Action::PresenceMembers).await else {
                return;
            };
            let Some(list) = list.as_array() else { return };
            // Under the peers lock: the node may have gone (or restarted) meanwhile.
            let peers = lock(&this.peers);
            if peers.get(&id).is_none_or(|p| p.boot != boot) {
                return;
            }
            let mut members = lock(&this.members);
            let of_node = members.entry(id).or_default();
            for m in list {
                if let (Some(c), Some(conn), Some(u)) = (
                    m["channel"].as_str(),
                    m["connection_id"].as_str(),
                    m["user"].as_str(),
                ) {
                    of_node.insert((c.to_owned(), conn.to_owned()), u.to_owned());
                }
            }
        });
    }
}

/// A request's answers, until dropped (then its entry goes).
struct Pending<'a> {
    cluster: &'a Cluster,
    id: u64,
    rx: mpsc::UnboundedReceiver<(String, Answer)>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        lock(&self.cluster.pending).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_name_their_node() {
        let tag = tag_of("node-a:8080");
        assert_eq!(tag.len(), 8);
        assert_ne!(tag, tag_of("node-b:8080"));
        let id = format!("c_{tag}0123456789abcdef00000001");
        assert_eq!(tag_of_connection(&id), Some(tag.as_str()));
        for bad in ["", "c_", "c_123", "x_12345678", "c_zzzzzzzz0000"] {
            assert_eq!(tag_of_connection(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn messages_round_trip() {
        let e = Envelope {
            node: "a".into(),
            tag: tag_of("a"),
            boot: 1,
            msg: Msg::Request {
                id: 7,
                expires_ms: 0,
                action: Action::Kick { user: "u1".into() },
            },
        };
        let text = serde_json::to_string(&e).unwrap();
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert!(
            matches!(back.msg, Msg::Request { id: 7, action: Action::Kick { ref user }, .. } if user == "u1")
        );
        let reply = Envelope {
            node: "b".into(),
            tag: tag_of("b"),
            boot: 2,
            msg: Msg::Reply {
                id: 7,
                answer: Err(Refusal {
                    status: 404,
                    code: "connection_not_found".into(),
                    message: "gone".into(),
                }),
            },
        };
        let back: Envelope = serde_json::from_str(&serde_json::to_string(&reply).unwrap()).unwrap();
        assert!(matches!(back.msg, Msg::Reply { answer: Err(ref r), .. } if r.status == 404));
    }
}
