//! The hub: tails the log and fans each event out to this node's connections.
//!
//! - **Encode once**: an event with recipients is encoded into one SSE frame (`Bytes`) that
//!   every recipient's queue shares; an event with none is not encoded at all.
//! - **Channel index**: channel → subscribed connections, so dispatch never scans every
//!   connection. Pattern subscriptions (`logs:w1:*`) live in a second map whose patterns are
//!   matched against each event's channel (one match per distinct pattern, not per
//!   connection); a connection matched both ways receives the event once.
//! - **Bounded queues, no blocking**: each connection has a queue of at most
//!   `stream.queue_frames` frames. The dispatcher only ever `try_send`s. When a queue is full
//!   the connection is switched out of live delivery (its `live` flag drops) and woken; its
//!   [`Cursor`] then reads the log from its own position at its own pace and rejoins live
//!   delivery when it has caught up — no loss, no duplicate, log order. Nobody else waits.
//! - **Order**: one dispatcher task per node dispatches events in log order, so every queue
//!   holds frames in log order.
//! - **Who receives what**: only connections subscribed to the event's channel (or a pattern
//!   matching it) since before the event, and — when the event names `users` — only those
//!   users' connections. Authorization happened when the subscription was made.

mod cursor;
pub mod frame;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use cursor::{Cursor, CursorOptions};

use crate::channel::{is_pattern, pattern_matches, subscription_matches};
use crate::log::{all_events, Event, EventLog, Position};
pub(crate) use crate::retry::lock;
use crate::retry::{backoff_with_jitter, sleep_or_cancel};

/// One encoded event in a connection's queue.
#[derive(Clone)]
pub struct Frame {
    pub pos: Position,
    pub bytes: Bytes,
}

/// Buckets of the publish→delivery latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

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
        /// Only the newest this many of them (`history`), found through the log's channel
        /// index.
        limit: Option<usize>,
    },
}

/// Counters shown in `/v1/status` and `/metrics`.
pub struct Stats {
    pub connections_opened: AtomicU64,
    pub events_dispatched: AtomicU64,
    pub frames_queued: AtomicU64,
    /// Times a connection's queue was full and it switched to reading the log.
    pub queue_overflows: AtomicU64,
    pub gaps: AtomicU64,
    /// Whether the log answered the last health check (every second).
    pub log_up: AtomicBool,
    /// Failed reads of the dispatcher (each retried with backoff).
    pub log_read_failures: AtomicU64,
    /// Times the log answered a health check again after failing one.
    pub log_recoveries: AtomicU64,
    /// Event frames written to connections (live, caught up or replayed).
    pub events_delivered: AtomicU64,
    /// Times a connection switched to reading the log (after a queue overflow).
    pub catchup_entries: AtomicU64,
    /// Streams opened with a resume position (`Last-Event-ID`).
    pub resumes: AtomicU64,
    /// Streams closed, by reason (`client_gone`, `shutdown`, `token_expired`, …).
    pub closed: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Publish → live dispatch latency of each event that had recipients here.
    pub delivery_latency: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            connections_opened: AtomicU64::default(),
            events_dispatched: AtomicU64::default(),
            frames_queued: AtomicU64::default(),
            queue_overflows: AtomicU64::default(),
            gaps: AtomicU64::default(),
            log_up: AtomicBool::new(true),
            log_read_failures: AtomicU64::default(),
            log_recoveries: AtomicU64::default(),
            events_delivered: AtomicU64::default(),
            catchup_entries: AtomicU64::default(),
            resumes: AtomicU64::default(),
            closed: Mutex::default(),
            delivery_latency: prometheus_client::metrics::histogram::Histogram::new(
                LATENCY_BUCKETS,
            ),
        }
    }
}

impl Stats {
    /// The counters as `(name, help, value)`: the one list `/metrics` (as
    /// `ssegate_<name>_total`) and `/v1/status` (under `hub`) both show.
    pub fn counters(&self) -> [(&'static str, &'static str, u64); 10] {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            (
                "events_delivered",
                "Event frames written to connections (live, caught up or replayed)",
                c(&self.events_delivered),
            ),
            (
                "catchup_entries",
                "Times a connection switched to reading the log after its queue overflowed",
                c(&self.catchup_entries),
            ),
            (
                "resumes",
                "Streams opened with a resume position (Last-Event-ID)",
                c(&self.resumes),
            ),
            (
                "connections_opened",
                "Streams opened",
                c(&self.connections_opened),
            ),
            (
                "events_dispatched",
                "Events read from the log by the dispatcher",
                c(&self.events_dispatched),
            ),
            (
                "frames_queued",
                "Event frames queued for connections (live deliveries)",
                c(&self.frames_queued),
            ),
            (
                "queue_overflows",
                "Times a connection's queue was full and it switched to reading the log",
                c(&self.queue_overflows),
            ),
            (
                "gaps",
                "gap events sent (retention dropped what a client asked for)",
                c(&self.gaps),
            ),
            (
                "log_read_failures",
                "Failed reads of the log by the dispatcher",
                c(&self.log_read_failures),
            ),
            (
                "log_recoveries",
                "Times the dispatcher could read the log again after failing",
                c(&self.log_recoveries),
            ),
        ]
    }
}

/// A live connection as the hub sees it.
pub struct Conn {
    /// Internal key in the channel index.
    key: u64,
    /// Public id (`c_…`), used by the subscriptions endpoint.
    pub id: String,
    pub user: String,
    /// Where the stream comes from, when it was opened, and its tab session (for
    /// one-stream-per-tab), as the admin API shows them.
    pub info: ConnInfo,
    /// Whether any subscription is a pattern (the catch-up filter then matches patterns).
    has_patterns: AtomicBool,
    /// Why the stream ended, when the server ended it (`None`: the client went away).
    close_reason: Mutex<Option<&'static str>>,
    /// Event frames written to this connection.
    pub delivered: AtomicU64,
    /// Current channels, each with the position after which its events are for this
    /// connection (`ZERO` for the channels it opened with; the log head at the moment of the
    /// change for a channel added later, so nothing published before the change arrives).
    channels: Mutex<Subscriptions>,
    /// Set (under `channels`) when it is unregistered: a subscription change arriving after
    /// that must not put it back into the index.
    closed: AtomicBool,
    /// Whether the dispatcher may queue frames for it; dropped when the queue overflows,
    /// raised again by the cursor once it has caught up from the log.
    live: AtomicBool,
    /// Frames dispatched and not yet taken by the cursor; at most `Hub::queue_frames`. A
    /// plain deque behind a mutex: it allocates nothing while the connection is idle.
    queue: Mutex<VecDeque<Frame>>,
    control: Mutex<VecDeque<Control>>,
    /// Wakes the cursor: control queued, or live delivery dropped.
    wake: Notify,
    /// A Mercure subscriber: its topic matchers and token choose its events (its channels
    /// only route them), and its frames are Mercure's.
    pub mercure: Option<Arc<crate::mercure::subscriber::Subscriber>>,
}

impl Conn {
    pub fn channels(&self) -> Vec<String> {
        lock(&self.channels).keys().map(|c| c.to_string()).collect()
    }

    /// Whether this connection is to receive `event`: subscribed to its channel (or a
    /// pattern matching it) since before it, and targeted (or the event targets nobody in
    /// particular).
    pub fn wants(&self, event: &Event) -> bool {
        self.wants_except(event, None)
    }

    /// [`Conn::wants`], not counting the subscription `except`.
    fn wants_except(&self, event: &Event, except: Option<&str>) -> bool {
        if !event.targets(&self.user) {
            return false;
        }
        if let Some(mercure) = &self.mercure {
            return mercure.wants(event);
        }
        let channel = event.event.channel.as_str();
        let channels = lock(&self.channels);
        if except != Some(channel)
            && channels
                .get(channel)
                .is_some_and(|since| event.pos > *since)
        {
            return true;
        }
        self.has_patterns.load(Ordering::Relaxed)
            && channels.iter().any(|(sub, since)| {
                event.pos > *since
                    && except != Some(&**sub)
                    && is_pattern(sub)
                    && pattern_matches(sub, channel, "")
            })
    }

    /// Whether `event` belongs to the history of the just-added `subscription`: it matches
    /// it, is for this user, and no other subscription of the connection already took it.
    pub(crate) fn wants_as_history(&self, event: &Event, subscription: &str) -> bool {
        subscription_matches(subscription, &event.event.channel)
            && event.targets(&self.user)
            && !self.wants_except(event, Some(subscription))
    }

    /// The frame of `event` in the connection's protocol.
    pub fn event_frame(&self, event: &Event) -> Bytes {
        match &self.mercure {
            Some(_) => crate::mercure::update::frame(event).unwrap_or_default(),
            None => frame::event_frame(event),
        }
    }

    /// A control event in the connection's protocol (Mercure has none: a comment says it).
    pub fn control_frame(&self, kind: &str, data: &serde_json::Value) -> Bytes {
        match &self.mercure {
            Some(_) => crate::mercure::update::comment(&format!("{kind} {data}")),
            None => frame::control_frame(kind, data),
        }
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

/// One connection's entry under a channel of the index.
struct Sub {
    conn: Arc<Conn>,
    /// Events of the channel at or before this position are not for the connection.
    since: Position,
}

type Subscribers = HashMap<u64, Sub>;

/// Who is subscribed to what on this node.
#[derive(Default)]
struct Index {
    /// Channel → its subscribers.
    exact: HashMap<Arc<str>, Subscribers>,
    /// Subscription pattern → its subscribers.
    patterns: HashMap<Arc<str>, Subscribers>,
}

impl Index {
    fn map(&mut self, subscription: &str) -> &mut HashMap<Arc<str>, Subscribers> {
        if is_pattern(subscription) {
            &mut self.patterns
        } else {
            &mut self.exact
        }
    }

    fn insert(&mut self, subscription: Arc<str>, conn: &Arc<Conn>, since: Position) {
        self.map(&subscription)
            .entry(subscription)
            .or_default()
            .insert(
                conn.key,
                Sub {
                    conn: conn.clone(),
                    since,
                },
            );
    }

    fn remove(&mut self, subscription: &str, key: u64) {
        let map = self.map(subscription);
        if let Some(subs) = map.get_mut(subscription) {
            subs.remove(&key);
            if subs.is_empty() {
                map.remove(subscription);
            }
        }
    }
}

/// A connection's subscriptions (channels or patterns), sorted by name, each with the
/// position after which its events are for the connection. A sorted vector: a connection
/// has one or a few, and a map node would cost more than all of them.
#[derive(Debug, Clone, Default)]
struct Subscriptions(Vec<(Arc<str>, Position)>);

impl Subscriptions {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| (**n).cmp(name))
    }

    fn get(&self, name: &str) -> Option<&Position> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    fn insert(&mut self, name: Arc<str>, since: Position) {
        match self.find(&name) {
            Ok(i) => self.0[i].1 = since,
            Err(i) => self.0.insert(i, (name, since)),
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            self.0.remove(i);
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter().map(|(n, _)| n)
    }

    fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Position)> {
        self.0.iter().map(|(n, p)| (n, p))
    }
}

/// What the admin API shows about a connection besides its user and channels.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub ip: Option<IpAddr>,
    pub opened_ms: u64,
    /// One-stream-per-tab: a newer stream of the same user with the same session id ends
    /// this one (`closing`, `replaced`).
    pub session_id: Option<String>,
    /// The `X-Request-Id` of the request that opened the stream (named in its close line).
    pub request_id: Option<String>,
}

pub struct Hub {
    log: Arc<dyn EventLog>,
    /// Channels and patterns → their subscribers on this node.
    index: RwLock<Index>,
    /// Public connection id → connection.
    conns: RwLock<HashMap<String, Arc<Conn>>>,
    /// (user, session id) → the newest stream of that tab.
    sessions: Mutex<HashMap<(String, String), Weak<Conn>>>,
    next_key: AtomicU64,
    /// Every event up to here has been dispatched; updated under the index read lock.
    dispatched: Mutex<Position>,
    queue_frames: usize,
    pub stats: Stats,
    /// Log read failures of connections (catch-up, history): logged once per minute.
    read_errors: crate::throttle::Throttle,
    /// This node's tag (see [`crate::cluster`]), the start of every connection id it gives out.
    tag: std::sync::OnceLock<String>,
    /// Told when a connection joins or leaves a channel (set only when presence events are
    /// configured: otherwise nothing is spent per connection).
    presence: std::sync::OnceLock<PresenceHook>,
    /// Events dispatched per channel (or pattern) that has subscribers here, since start.
    channel_events: Mutex<HashMap<Arc<str>, u64>>,
}

/// See [`Hub::on_presence`]: (connection, channel, joined).
pub type PresenceHook = Box<dyn Fn(&Conn, &str, bool) + Send + Sync>;

/// A change of a live connection's channels (see [`Hub::update`]).
pub struct ChannelChange<'a> {
    pub add: &'a [String],
    pub remove: &'a [String],
    /// Added channels deliver their events after this position: the log head read before
    /// the change, or the client's `last_event_id` / `since`.
    pub since: Position,
    /// The added exact channels deliver only their newest this many events up to the change
    /// as history (after `since` when `explicit_since`, else from the oldest retained);
    /// patterns get none beyond `since`, and nor does a channel a pattern of the connection
    /// already covers (its events are delivered already).
    pub history: Option<usize>,
    pub explicit_since: bool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("log", &self.log.kind())
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

/// Why a subscription change was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("a connection may subscribe to at most {0} channels")]
    TooManyChannels(usize),
    /// The stream ended before the change.
    #[error("the stream has ended")]
    Closed,
}

impl Hub {
    pub fn new(log: Arc<dyn EventLog>, queue_frames: usize) -> Arc<Self> {
        Arc::new(Self {
            log,
            index: RwLock::default(),
            conns: RwLock::default(),
            sessions: Mutex::default(),
            next_key: AtomicU64::new(1),
            dispatched: Mutex::new(Position::ZERO),
            queue_frames,
            stats: Stats::default(),
            read_errors: crate::throttle::Throttle::new(Duration::from_secs(60)),
            tag: std::sync::OnceLock::new(),
            presence: std::sync::OnceLock::new(),
            channel_events: Mutex::default(),
        })
    }

    /// Sets this node's tag (once, before the first connection).
    pub fn set_tag(&self, tag: String) {
        let _ = self.tag.set(tag);
    }

    /// Calls `hook` whenever a connection (not a Mercure one) joins a channel (opens with
    /// it, adds it) or leaves it (removes it, ends), outside the hub's locks. Set once.
    pub fn on_presence(&self, hook: PresenceHook) {
        let _ = self.presence.set(hook);
    }

    fn presence_changed<'a>(
        &self,
        conn: &Conn,
        channels: impl IntoIterator<Item = &'a str>,
        joined: bool,
    ) {
        if let Some(hook) = self.presence.get() {
            if conn.mercure.is_none() {
                for channel in channels {
                    if !is_pattern(channel) {
                        hook(conn, channel, joined);
                    }
                }
            }
        }
    }

    /// Queues `frame` for every (native) connection subscribed to exactly `channel`.
    pub fn send_to_channel(&self, channel: &str, frame: &Bytes) {
        let index = self.index.read().expect("index lock");
        if let Some(subs) = index.exact.get(channel) {
            for Sub { conn, .. } in subs.values() {
                if conn.mercure.is_none() {
                    conn.push_control(Control::Send(frame.clone()));
                }
            }
        }
    }

    /// Tells this node's subscribers of `channel` that `user` joined (`join`) or left it:
    /// `presence.join` / `presence.leave`, an envelope like an event's without `id` (not in
    /// the log). Each costs one frame per subscriber: presence events are for rooms, not for
    /// channels with thousands of subscribers.
    pub fn send_presence(&self, channel: &str, user: &str, join: bool) {
        let kind = if join {
            "presence.join"
        } else {
            "presence.leave"
        };
        let frame = frame::control_frame(
            kind,
            &serde_json::json!({
                "channel": channel,
                "type": kind,
                "time": crate::time::rfc3339_ms(crate::time::now_ms()),
                "data": { "user": user },
            }),
        );
        self.send_to_channel(channel, &frame);
    }

    /// (user, connection id) of every native connection subscribed to exactly `channel`.
    pub fn subscribers_of(&self, channel: &str) -> Vec<(String, String)> {
        let index = self.index.read().expect("index lock");
        let mut out: Vec<(String, String)> = index
            .exact
            .get(channel)
            .into_iter()
            .flat_map(|subs| subs.values())
            .filter(|s| s.conn.mercure.is_none())
            .map(|s| (s.conn.user.clone(), s.conn.id.clone()))
            .collect();
        out.sort();
        out
    }

    /// (channel, connection id, user) for every native subscription to a channel `keep`s.
    pub fn members(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, String, String)> {
        let index = self.index.read().expect("index lock");
        index
            .exact
            .iter()
            .filter(|(c, _)| keep(c))
            .flat_map(|(c, subs)| {
                subs.values()
                    .filter(|s| s.conn.mercure.is_none())
                    .map(|s| (c.to_string(), s.conn.id.clone(), s.conn.user.clone()))
            })
            .collect()
    }

    /// Forgets the event counts of those of `channels` nobody here subscribes to any more.
    fn forget_counts<'a>(&self, index: &Index, channels: impl IntoIterator<Item = &'a str>) {
        let mut counted = lock(&self.channel_events);
        if counted.is_empty() {
            return;
        }
        for c in channels {
            if !index.exact.contains_key(c) && !index.patterns.contains_key(c) {
                counted.remove(c);
            }
        }
    }

    /// How far the dispatcher has dispatched.
    pub fn dispatched(&self) -> Position {
        *lock(&self.dispatched)
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    pub fn connection_count(&self) -> usize {
        self.conns.read().expect("conns lock").len()
    }

    /// Distinct channels and patterns subscribed to on this node.
    pub fn channel_count(&self) -> usize {
        let index = self.index.read().expect("index lock");
        index.exact.len() + index.patterns.len()
    }

    /// Every channel and pattern subscribed to on this node, with its number of
    /// subscribers and the events dispatched for it since start (counted while it has
    /// subscribers here), sorted by name.
    pub fn channels(&self) -> Vec<(String, usize, u64)> {
        let index = self.index.read().expect("index lock");
        let counted = lock(&self.channel_events);
        let mut out: Vec<(String, usize, u64)> = index
            .exact
            .iter()
            .chain(&index.patterns)
            .map(|(c, subs)| {
                (
                    c.to_string(),
                    subs.len(),
                    counted.get(c).copied().unwrap_or(0),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Open connections, of one user or all.
    pub fn connections(&self, user: Option<&str>) -> Vec<Arc<Conn>> {
        let mut out: Vec<Arc<Conn>> = self
            .conns
            .read()
            .expect("conns lock")
            .values()
            .filter(|c| user.is_none_or(|u| c.user == u))
            .cloned()
            .collect();
        out.sort_by_key(|c| c.key);
        out
    }

    /// Ends every stream of `user` with `closing` (`reason`); returns how many.
    pub fn close_user(&self, user: &str, reason: &'static str) -> usize {
        let conns = self.connections(Some(user));
        for conn in &conns {
            conn.push_control(Control::Close(reason));
        }
        conns.len()
    }

    /// Sends a frame to every connection; returns how many.
    pub fn broadcast(&self, frame: Bytes) -> usize {
        let conns = self.conns.read().expect("conns lock");
        for conn in conns.values() {
            conn.push_control(Control::Send(frame.clone()));
        }
        conns.len()
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
    /// returned registration unregisters when dropped. A connection with a session id
    /// replaces (ends) the user's previous stream with the same one.
    pub fn register(
        self: &Arc<Self>,
        user: String,
        channels: &[String],
        info: ConnInfo,
    ) -> Registration {
        self.register_as(user, channels, info, None)
    }

    /// Registers a Mercure subscriber: indexed under its routes, its events chosen by it.
    pub fn register_mercure(
        self: &Arc<Self>,
        user: String,
        subscriber: Arc<crate::mercure::subscriber::Subscriber>,
        info: ConnInfo,
    ) -> Registration {
        let routes = subscriber.routes();
        self.register_as(user, &routes, info, Some(subscriber))
    }

    fn register_as(
        self: &Arc<Self>,
        user: String,
        channels: &[String],
        info: ConnInfo,
        mercure: Option<Arc<crate::mercure::subscriber::Subscriber>>,
    ) -> Registration {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "c_{}{:016x}{:08x}",
            self.tag.get().map_or("00000000", String::as_str),
            rand::thread_rng().gen::<u64>(),
            key as u32
        );
        let mut set = Subscriptions::default();
        for c in channels {
            set.insert(Arc::from(c.as_str()), Position::ZERO);
        }
        let conn = Arc::new(Conn {
            key,
            id: id.clone(),
            user,
            has_patterns: AtomicBool::new(set.keys().any(|c| is_pattern(c))),
            close_reason: Mutex::new(None),
            closed: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            info,
            channels: Mutex::new(set.clone()),
            live: AtomicBool::new(true),
            queue: Mutex::default(),
            control: Mutex::default(),
            wake: Notify::new(),
            mercure,
        });
        {
            let mut index = self.index.write().expect("index lock");
            for channel in set.keys() {
                index.insert(channel.clone(), &conn, Position::ZERO);
            }
        }
        self.conns
            .write()
            .expect("conns lock")
            .insert(id, conn.clone());
        if let Some(session) = &conn.info.session_id {
            let previous = lock(&self.sessions)
                .insert((conn.user.clone(), session.clone()), Arc::downgrade(&conn));
            if let Some(old) = previous.and_then(|w| w.upgrade()) {
                old.push_control(Control::Close("replaced"));
            }
        }
        self.stats
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        self.presence_changed(&conn, set.keys().map(|c| &**c), true);
        Registration {
            hub: self.clone(),
            conn,
            guards: Vec::new(),
        }
    }

    /// Adds and removes channels on a live connection.
    ///
    /// An added channel's events are for the connection after `since`: the log head read
    /// before the change (nothing published before the request arrives), or the client's
    /// `last_event_id`. Those the dispatcher had already handled when the index changed
    /// (at or before `dispatched`) are delivered first as history (see
    /// [`Control::Backfill`]); later ones arrive live, in log order, with their ids. With
    /// `history` and no `since` of the client's, the channel's newest events up to
    /// `dispatched` are its history and every later one arrives live.
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
        if conn.closed.load(Ordering::Acquire) {
            return Err(UpdateError::Closed);
        }
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
        for channel in &removed {
            channels.remove(channel.as_str());
            index.remove(channel, conn.key);
        }
        self.forget_counts(&index, removed.iter().map(|c| c.as_str()));
        for channel in &added {
            let channel: Arc<str> = Arc::from(channel.as_str());
            let covered = channels
                .keys()
                .any(|c| is_pattern(c) && subscription_matches(c, &channel));
            let limit = change.history.filter(|_| !is_pattern(&channel) && !covered);
            // History with no `since` of its own wants every event up to live delivery: live
            // starts right after `dispatched`, not after the head read before the change (the
            // dispatcher may not have reached that head yet; what is in between would be
            // neither history nor live).
            let (after, since) = match limit {
                Some(_) if !change.explicit_since => (Position::ZERO, dispatched),
                _ => (change.since, change.since.max(dispatched)),
            };
            if after < dispatched {
                conn.push_control(Control::Backfill {
                    channel: channel.clone(),
                    after,
                    through: dispatched,
                    limit,
                });
            }
            channels.insert(channel.clone(), since);
            index.insert(channel, conn, since);
        }
        conn.has_patterns
            .store(channels.keys().any(|c| is_pattern(c)), Ordering::Relaxed);
        let now: Vec<String> = channels.keys().map(|c| c.to_string()).collect();
        drop(index);
        drop(channels);
        self.presence_changed(conn, removed.iter().map(|c| c.as_str()), false);
        self.presence_changed(conn, added.iter().map(|c| c.as_str()), true);
        Ok(now)
    }

    fn unregister(&self, conn: &Conn) {
        self.conns.write().expect("conns lock").remove(&conn.id);
        let reason = lock(&conn.close_reason).unwrap_or("client_gone");
        *lock(&self.stats.closed).entry(reason).or_default() += 1;
        tracing::info!(
            conn = %conn.id,
            request_id = conn.info.request_id.as_deref().unwrap_or(""),
            user = %conn.user,
            duration_ms = crate::time::now_ms().saturating_sub(conn.info.opened_ms),
            events = conn.delivered.load(Ordering::Relaxed),
            reason,
            "stream closed"
        );
        if let Some(session) = &conn.info.session_id {
            let mut sessions = lock(&self.sessions);
            let key = (conn.user.clone(), session.clone());
            if sessions
                .get(&key)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), conn))
            {
                sessions.remove(&key);
            }
        }
        let channels = {
            let channels = lock(&conn.channels);
            conn.closed.store(true, Ordering::Release);
            channels.clone()
        };
        {
            let mut index = self.index.write().expect("index lock");
            for channel in channels.keys() {
                index.remove(channel, conn.key);
            }
            self.forget_counts(&index, channels.keys().map(|c| &**c));
        }
        self.presence_changed(conn, channels.keys().map(|c| &**c), false);
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
        // Streams taken before the dispatcher knew where to start (the moment after the
        // server starts listening, or while the log was down) started at a head they read
        // themselves, maybe older than `at`: what is in between would never be queued for
        // them. They read the log from their own position instead, then rejoin live delivery.
        self.drop_all_to_catch_up();
        let mut failures = 0u32;
        loop {
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.log.read(at, 4_096, &all_events, Some(Duration::from_secs(1))) => r,
            };
            match read {
                Ok(batch) => {
                    if failures > 0 {
                        tracing::info!(failures, "hub reads the log again");
                    }
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
                    self.stats.log_read_failures.fetch_add(1, Ordering::Relaxed);
                    let backoff = backoff_with_jitter(failures);
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(error = %e, failures, ?backoff, "hub cannot read the log; retrying");
                    }
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
        // Connections already given the current event (only needed when patterns matched).
        let mut given: HashSet<u64> = HashSet::new();
        // Events per subscribed channel or pattern in this batch.
        let mut counts: HashMap<&Arc<str>, u64> = HashMap::new();
        for event in events {
            let channel = event.event.channel.as_str();
            let exact = index.exact.get_key_value(channel).map(|(c, subs)| {
                *counts.entry(c).or_default() += 1;
                subs
            });
            let mut patterns = index
                .patterns
                .iter()
                .filter(|(p, _)| pattern_matches(p, channel, ""))
                .map(|(p, subs)| {
                    *counts.entry(p).or_default() += 1;
                    subs
                })
                .peekable();
            // A Mercure update is also routed by its alternate topics (the older protocol
            // lets an update have several).
            let update = if crate::mercure::update::is_mercure_channel(channel) {
                crate::mercure::update::Stored::of(event)
            } else {
                None
            };
            let alternates: Vec<&Subscribers> = update
                .iter()
                .flat_map(|u| u.topics.iter().skip(1))
                .filter_map(|t| {
                    index
                        .exact
                        .get(crate::mercure::update::channel_for(t).as_str())
                })
                .collect();
            if exact.is_none() && patterns.peek().is_none() && alternates.is_empty() {
                continue;
            }
            let dedupe = patterns.peek().is_some() || !alternates.is_empty();
            given.clear();
            let mut encoded: Option<Bytes> = None;
            let mut encoded_mercure: Option<Bytes> = None;
            let queued_before = queued;
            let routed = exact.into_iter().chain(patterns).map(|s| (s, false));
            for (subs, alternate) in routed.chain(alternates.into_iter().map(|s| (s, true))) {
                for (key, Sub { conn, since }) in subs {
                    // Alternate topics are Mercure's: a native stream takes an event by its
                    // channel only (as its replay does).
                    if (alternate && conn.mercure.is_none())
                        || event.pos <= *since
                        || !event.targets(&conn.user)
                        || !conn.live.load(Ordering::Acquire)
                        || (dedupe && !given.insert(*key))
                    {
                        continue;
                    }
                    let bytes = match &conn.mercure {
                        None => encoded
                            .get_or_insert_with(|| frame::event_frame(event))
                            .clone(),
                        Some(m) => {
                            if !update.as_ref().is_some_and(|u| m.wants_update(u)) {
                                continue;
                            }
                            encoded_mercure
                                .get_or_insert_with(|| conn.event_frame(event))
                                .clone()
                        }
                    };
                    let mut queue = lock(&conn.queue);
                    if queue.len() >= self.queue_frames {
                        drop(queue);
                        conn.live.store(false, Ordering::Release);
                        conn.wake.notify_one();
                        self.stats.queue_overflows.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let was_empty = queue.is_empty();
                    queue.push_back(Frame {
                        pos: event.pos,
                        bytes,
                    });
                    drop(queue);
                    queued += 1;
                    // A non-empty queue has a wake-up pending already (Notify keeps a permit).
                    if was_empty {
                        conn.wake.notify_one();
                    }
                }
            }
            if queued > queued_before {
                let age_ms = crate::time::now_ms().saturating_sub(event.event.time_ms);
                self.stats.delivery_latency.observe(age_ms as f64 / 1000.0);
            }
        }
        *lock(&self.dispatched) = next;
        if !counts.is_empty() {
            let mut counted = lock(&self.channel_events);
            for (c, n) in counts {
                match counted.get_mut(c) {
                    Some(total) => *total += n,
                    None => {
                        counted.insert(c.clone(), n);
                    }
                }
            }
        }
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

/// A connection's place in the hub; dropping it unregisters the connection (and drops what
/// it holds for the stream's lifetime, such as its place in the connection limits).
pub struct Registration {
    hub: Arc<Hub>,
    pub conn: Arc<Conn>,
    guards: Vec<Box<dyn Send + Sync>>,
}

impl Registration {
    /// Keeps `guard` until the connection ends.
    pub fn hold(&mut self, guard: impl Send + Sync + 'static) {
        self.guards.push(Box::new(guard));
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.conn);
    }
}
