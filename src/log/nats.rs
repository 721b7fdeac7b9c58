//! The NATS JetStream log: one JetStream stream shared by every ssegate node, so any node can
//! serve any client's resume. Needs nats-server 2.9 or later with JetStream enabled (direct get
//! and `next_by_subj` are used; nothing of 2.10+).
//!
//! # Layout in NATS
//!
//! - Stream `{stream}` (`log.stream`, default `ssegate`) on the one subject `{stream}.events`,
//!   created or updated by [`NatsLog::open`]: file storage, `max_msgs` = `log.retention_events`,
//!   `max_age` = `log.retention_age_s`, `duplicate_window` = `log.dedupe_window_s`, discard
//!   old; `allow_direct` when ssegate creates it. Settings ssegate does not own (replicas,
//!   placement, `allow_direct` of an existing stream, …) are kept as an operator set them
//!   (`nats stream edit`), so the stream may also be created beforehand by the operator
//!   (file storage, no other subject). nats-server 2.9 turning `allow_direct` on by an
//!   update of a replicated stream leaves every direct get unanswered: set it at creation.
//! - **One JetStream message per `append` call**: its payload is the JSON array of all the
//!   events of all the items, in order; header `Ssegate-Items: 2,1` gives each item's event
//!   count, header `Ssegate-Channels: a b:c a` each event's channel (separated by spaces, which
//!   a channel never holds; for the channel index). Nothing else may publish to `{stream}.events`: a message ssegate did not write is
//!   skipped by readers (and logged), and a message deleted by hand (`nats stream rmm`) is
//!   reported as a gap, like retention.
//! - **Positions** are `{hi: stream sequence, lo: 2 × index in the message + 1 if it is the
//!   message's last event}`: SSE ids `"7-1"` (the only event of message 7), `"8-0"`, `"8-2"`,
//!   `"8-5"` (the three events of message 8). They increase in log order like any
//!   [`Position`]. The "last" bit is a deviation from a plain `seq-index`: it lets a reader
//!   whose message retention dropped tell whether it had read that message to its end, so
//!   the [`Gap`] is exact both ways — a plain index cannot tell `"8-0"` of a three-event
//!   message (two events lost: gap) from the only event of a message (nothing lost: no gap).
//!   `"{seq}-18446744073709551615"` means "the end of message `seq`" when its event count is
//!   no longer known (the head of a stream whose every message expired before this node
//!   started); positions with `hi = 0` (`"0"`, ids of other backends) are before everything.
//!
//! # Guarantees
//!
//! - **Atomic batches, in order**: an append is one message, so its events are stored
//!   together or not at all, with consecutive positions, and no other node's events between
//!   them (JetStream 2.9 has no atomic multi-message publish; one message is what it has).
//! - **Order**: the stream sequence orders appends; every node reads the same order.
//! - **Dedupe scope**: JetStream's duplicate window (`Nats-Msg-Id`), across every node. An
//!   append of ONE item is deduplicated by its key. An append of several items, some with
//!   keys, is deduplicated **as a whole**: its message id is a digest of the list of the
//!   items' keys, so the same batch sent again is a duplicate (every item, keyed or not, is
//!   reported `duplicate` with the original positions), but an item whose key was used
//!   before in another shape (alone, or in another batch) is **not** recognised inside this
//!   batch and is stored again. A duplicate's positions are rebuilt from the original
//!   message (its `Ssegate-Items`); if retention already dropped that message, from the
//!   retried request's shape (identical for a genuine retry). The window is measured by the
//!   NATS server's clock from the original publish (`now_ms` is not used), and can be no
//!   longer than `max_age` (it is shortened to it). `log.dedupe_window_s = 0` sends no
//!   message ids at all.
//! - **Retention unit: messages, not events.** `max_msgs` counts appends: with
//!   `log.retention_events = N` the last N appends are kept, however many events each had.
//!   By age: the server's `max_age`, from the time the server stored the message (within a
//!   round trip of the events' `time_ms`), applied by the server on its own timer;
//!   [`EventLog::enforce_retention`] has nothing to do. Retention drops whole messages from
//!   the front, so a reader gets a [`Gap`] exactly when an event after its position is gone.
//! - **Durability**: an append is acknowledged when JetStream acknowledged the publish: the
//!   message is in the stream's file store. A single server has written it to its files,
//!   which it fsyncs periodically, not per message: a crash of the process loses nothing
//!   acknowledged (tested with SIGKILL), a power loss of the machine may lose the last
//!   moments. With replicas, a quorum of them has it.
//! - **Outages**: async-nats reconnects by itself (forever, backoff up to 2 s). While the
//!   connection is known to be down, `append`, `read` and `bounds` return
//!   [`LogError::Unavailable`] at once (`/readyz` turns not ready) and nothing is sent;
//!   requests are bounded by a 5 s timeout (one waiting for its answer when the connection
//!   broke gets no answer and ends only then). An append cut off after it was sent, or not
//!   acknowledged in time, has an unknown outcome: it is reported `Unavailable` but may
//!   have been stored — a retry with the same idempotency key is safe. That includes an
//!   append made just as the connection broke, before the client noticed (it notices when
//!   it next reads the socket; on a busy machine a request may come first): async-nats
//!   keeps what it had not written yet and sends it once connected again, so that append,
//!   reported `Unavailable` when its acknowledgement timed out, is stored when NATS is
//!   back — before any later append of this node (the client sends in order), so a retry
//!   with its key is still recognised. Once reconnected, the stream is re-checked (created
//!   again if the server lost it), the head refreshed, and the head consumer (recreated by
//!   the client) wakes readers again; nothing needs a restart. [`NatsLog::open`] succeeds
//!   while NATS is down (it waits for the stream to be set up, up to 3 s, or until a first
//!   connection attempt failed); a malformed `log.url`, an unreadable credentials or CA
//!   file, credentials the server refuses, or a stream JetStream refuses to create or
//!   update is an error.
//! - **Reads**: by sequence with direct get when the stream allows it (any replica may
//!   answer), else from the leader (`STREAM.MSG.GET`). A direct get unanswered within 1 s or
//!   failing otherwise than "not found" is asked of the leader, and reads go to the leader
//!   for the next 30 s. A replica lagging the leader may miss the newest messages: a
//!   message missing there that is known to exist (at or below the head this node knows,
//!   which includes its own acknowledged appends) is asked of the leader or left to the
//!   next read, so lag never turns into a false gap, nor an `at_head` short of what this
//!   node knows. `at_head` is therefore "the head as this node knows it" (its own appends,
//!   what it read, what its head consumer reported): another node's append acknowledged a
//!   moment ago may only come with the next read. Cursors lose nothing by it (a registered
//!   connection receives anything newer live); a stream without `allow_direct` is read
//!   from the leader only, where every acknowledged append is visible at once.
//!
//!   A read pipelines up to 64 gets at a time instead of one round trip per message
//!   (10,000 one-event messages read back in well under a second on one machine); no
//!   consumer is created for it (the trait keeps no per-reader state, and a consumer per
//!   read would cost more than it saves). At most 4,096 events are decoded per read. Exact
//!   lookups (head, oldest, a duplicate's original) go to the leader.
//! - **Waiting reads**: a background task per log follows the stream with an ordered push
//!   consumer (ephemeral, in memory, headers only, from the last message: one per node,
//!   nothing durable on the server) and keeps the head in a watch channel, so an append on
//!   any node wakes `read(.., Some(wait))` on every node at once. (JetStream's republish
//!   would need no consumer, but nats-server 2.9 cannot add it to an existing stream.)
//!
//! - **History** ([`EventLog::history`]) comes from a **channel index kept in each node's
//!   memory** ([`ChannelIndex`]: the positions of every retained event, by channel). A
//!   background task per log builds it at open and keeps it current: an ordered push
//!   consumer (ephemeral, in memory, headers only — no payloads cross the wire) from the
//!   first message of the stream, taking each message's `Ssegate-Channels` header; recreated
//!   from the next message after the last one taken in when it goes silent, and rebuilt from
//!   scratch when the stream was deleted and created again. A message without that header
//!   (written by a version before the index existed) is fetched whole once, at that node's
//!   start, to learn its channels — so history covers older events too, at the cost of
//!   reading those messages at every start until retention has dropped them. Every second the
//!   task asks for the stream's first sequence and forgets the positions before it
//!   (retention by count and age); history also never looks below the first sequence it just
//!   read. A history call reads the stream info, then **waits until this node's index has
//!   taken in the stream's last message** (so an append acknowledged on any node is in the
//!   answer), at most 5 s, else [`LogError::Unavailable`] (`log_unavailable`: the index of a
//!   node just started is still being built); then fetches the candidate messages newest
//!   first, 64 at a time in parallel, from the stream leader (exact gets: a lagging replica
//!   cannot make a retained event look dropped), and takes each candidate event the filter
//!   keeps until `limit`. Cost: about 16 bytes of memory per retained event plus one map
//!   entry per channel, on every node; a second ephemeral consumer per node (beside the head
//!   consumer); at start, the headers of every retained message are streamed once; one
//!   stream info request per second per node; per history call, one stream info and one get
//!   per message looked at.
//!
//! `log.url`: `nats://[user:password@]host:port` (`tls://` for TLS; `nats://token@host:port`
//! for a token; percent-encoded), several separated by commas; `log.tls_ca_file` (PEM) is added to the trusted roots; `log.nats_credentials_file`
//! is a `.creds` file (JWT + NKEY). The NATS user needs: publish `{stream}.events`,
//! `$JS.API.STREAM.INFO|CREATE|UPDATE|MSG.GET.{stream}`, `$JS.API.DIRECT.GET.{stream}`,
//! `$JS.API.CONSUMER.CREATE.{stream}` and `$JS.FC.{stream}.>` (flow control of the head
//! consumer); subscribe `_INBOX.>`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::header::{NATS_EXPECTED_STREAM, NATS_MESSAGE_ID};
use async_nats::jetstream::consumer::push::{self, OrderedErrorKind};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::{CreateStreamErrorKind, PublishErrorKind, RequestErrorKind};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{
    Config as StreamConfig, DirectGetErrorKind, DiscardPolicy, Info as StreamInfo,
    RawMessageErrorKind, StorageType, Stream,
};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, ConnectOptions, Event as NatsEvent, HeaderMap, ServerError};
use async_trait::async_trait;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::channel_index::ChannelIndex;
use super::config::EngineConfig;
use super::nats_url::{servers, with_user_info};
use super::{
    fill, wait_for_head, AppendItem, Appended, Bounds, Event, EventLog, Filter, Gap, History,
    HistoryQuery, LogError, LogOptions, NewEvent, Position, ReadBatch, HISTORY_SCAN,
};
use crate::retry::{backoff_with_jitter, lock, sleep_or_cancel};

/// Every request to NATS (publish acknowledgement, direct get, stream info) gives up after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A dead connection is noticed after about two of these without a pong.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long `open` waits for the stream to be set up before returning anyway.
const OPEN_WAIT: Duration = Duration::from_secs(3);
/// A direct get not answered by then is asked of the leader instead.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long reads go to the leader after a direct get failed.
const DIRECT_PAUSE: Duration = Duration::from_secs(30);
/// Direct gets in flight at once during one read.
const PIPELINE: u64 = 64;
/// Events decoded per read at most, whatever the filter keeps.
const MAX_SCAN: usize = 4_096;
/// Header with each item's event count, e.g. `2,1`.
const ITEMS_HEADER: &str = "Ssegate-Items";
/// Header with each event's channel, in order, separated by spaces (a channel has none).
const CHANNELS_HEADER: &str = "Ssegate-Channels";
/// How long `history` waits for this node's channel index to catch up with the stream.
const INDEX_WAIT: Duration = Duration::from_secs(5);
/// How often the channel index forgets what retention dropped.
const INDEX_TRIM_EVERY: Duration = Duration::from_secs(1);
/// `lo` of "the end of a message whose event count is unknown" (odd: a finished message).
const END_OF_MESSAGE: u64 = u64::MAX;
/// `lo` of a message ssegate did not write, which has no events (odd: a finished message).
const FOREIGN_END: u64 = 1;

/// The position of event `idx` of a message of `count` events stored at `seq`.
fn event_pos(seq: u64, idx: usize, count: usize) -> Position {
    Position {
        hi: seq,
        lo: 2 * idx as u64 + u64::from(idx + 1 == count),
    }
}

/// The greatest position a reader may resume from to get `p` and what follows: the event
/// before it in its message (`lo` odd marks a message's last event, see [`event_pos`]), or
/// "the message before finished".
fn position_before(p: Position) -> Position {
    match p {
        Position { hi: 0, lo: 0 } => Position::ZERO,
        Position { hi, lo } if lo >= 2 => Position {
            hi,
            lo: (lo & !1) - 2,
        },
        Position { hi, .. } => Position {
            hi: hi - 1,
            lo: u64::MAX,
        },
    }
}

/// What a followed consumer does after a message (see [`Shared::consume`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Next,
    /// Create the consumer again.
    Recreate,
}

/// The first message a reader at `after` has not finished reading.
fn start_seq(after: Position) -> u64 {
    if after.hi == 0 {
        1
    } else if after.lo % 2 == 1 {
        after.hi.saturating_add(1)
    } else {
        after.hi
    }
}

/// Each item's event count, from a message's headers.
fn item_counts(headers: &HeaderMap) -> Option<Vec<usize>> {
    headers
        .get(ITEMS_HEADER)?
        .as_str()
        .split(',')
        .map(|c| c.trim().parse().ok())
        .collect()
}

/// Each event's channel, from a message's headers, if it has a valid channels header for
/// `count` events.
fn header_channels(headers: &HeaderMap, count: usize) -> Option<Vec<String>> {
    let channels: Vec<String> = headers
        .get(CHANNELS_HEADER)?
        .as_str()
        .split(' ')
        .map(str::to_owned)
        .collect();
    (channels.len() == count && channels.iter().all(|c| !c.is_empty())).then_some(channels)
}

/// The events of a message ssegate wrote (at least one), or why it is not one.
fn decode(msg: &StreamMessage) -> Result<Vec<NewEvent>, String> {
    let counts = item_counts(&msg.headers)
        .ok_or_else(|| format!("no valid {ITEMS_HEADER} header: not written by ssegate"))?;
    let events: Vec<NewEvent> =
        serde_json::from_slice(&msg.payload).map_err(|e| format!("payload: {e}"))?;
    if events.is_empty() || counts.iter().sum::<usize>() != events.len() {
        return Err(format!(
            "{ITEMS_HEADER} says {counts:?}, the payload has {} events",
            events.len()
        ));
    }
    Ok(events)
}

/// The position after the last event of `msg` (the head when it is the newest message).
fn end_of(msg: &StreamMessage) -> Position {
    match item_counts(&msg.headers).map(|c| c.iter().sum::<usize>()) {
        Some(n) if n > 0 => event_pos(msg.sequence, n - 1, n),
        _ => Position {
            hi: msg.sequence,
            lo: FOREIGN_END,
        },
    }
}

/// Positions of each item's events in a message of `counts` stored at `seq`.
fn positions_of(seq: u64, counts: &[usize]) -> Vec<Vec<Position>> {
    let total: usize = counts.iter().sum();
    let mut idx = 0;
    counts
        .iter()
        .map(|&c| {
            (0..c)
                .map(|_| {
                    idx += 1;
                    event_pos(seq, idx - 1, total)
                })
                .collect()
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `Nats-Msg-Id` of an append: `None` when no item has a key. One item: its key (or a
/// digest of it, when it is not plain printable ASCII or could be mistaken for one of ours);
/// several: a digest of the whole list of keys (absent ones included).
fn message_id(items: &[AppendItem]) -> Option<String> {
    if items.iter().all(|i| i.key.is_none()) {
        return None;
    }
    if let [item] = items {
        let key = item.key.as_deref()?;
        let plain = key.len() <= 256
            && !key.starts_with("ssegate:")
            && key.bytes().all(|b| b.is_ascii_graphic());
        return Some(if plain {
            key.to_owned()
        } else {
            format!("ssegate:key:{}", hex(&Sha256::digest(key.as_bytes())))
        });
    }
    let mut h = Sha256::new();
    h.update((items.len() as u64).to_be_bytes());
    for item in items {
        match &item.key {
            None => h.update([0u8]),
            Some(k) => {
                h.update([1u8]);
                h.update((k.len() as u64).to_be_bytes());
                h.update(k.as_bytes());
            }
        }
    }
    Some(format!("ssegate:batch:{}", hex(&h.finalize())))
}

/// Whether JetStream refused the stream for what it is (its configuration, or the account),
/// not for a passing state of the server or cluster (no leader yet, not enough peers, …).
fn is_config_error(kind: &CreateStreamErrorKind) -> bool {
    let CreateStreamErrorKind::JetStream(e) = kind else {
        return false;
    };
    [
        ErrorCode::STREAM_INVALID_CONFIG,
        ErrorCode::STREAM_INVALID,
        ErrorCode::STREAM_SUBJECT_OVERLAP,
        ErrorCode::STREAM_NAME_EXIST,
        ErrorCode::STREAM_MISMATCH,
        ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED,
        ErrorCode::STREAM_MAX_BYTES_REQUIRED,
        ErrorCode::JETSTREAM_NOT_ENABLED,
        ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
    ]
    .contains(&e.error_code())
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("nats: {what}: {e}"))
}

fn invalid(message: String) -> LogError {
    LogError::Config(message)
}

/// Where setting the stream up stands; `Ready` once it succeeded, for good.
#[derive(Debug, Clone, PartialEq)]
enum Setup {
    Pending,
    Ready,
    Failed { message: String, permanent: bool },
}

/// Connection events, shared with the client's event callback.
#[derive(Default)]
struct Events {
    /// Notified on every (re)connection.
    connected: Notify,
    /// The last error the server or client reported, cleared on connection.
    last_error: Mutex<Option<String>>,
}

impl Events {
    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

struct Shared {
    client: Client,
    js: jetstream::Context,
    /// Handle for direct gets (no info cached).
    stream: Stream<()>,
    name: String,
    subject: String,
    opts: LogOptions,
    events: Arc<Events>,
    /// The newest position known to exist (never behind an append this node acknowledged);
    /// waiting readers wait on it.
    head: watch::Sender<Position>,
    setup: watch::Sender<Setup>,
    /// Position of the oldest retained event, as last looked up (its `hi` says for which
    /// first sequence it is valid).
    oldest: Mutex<Option<Position>>,
    /// Creation time of the stream as last seen: a new one means it was deleted and created
    /// again (everything lost, sequences restart).
    created: Mutex<Option<String>>,
    /// The stream allows direct gets (as last seen).
    direct: AtomicBool,
    /// Direct gets are not used until then (they failed).
    direct_off_until: Mutex<Option<Instant>>,
    /// This node's channel index of the stream (see the module docs), with the last stream
    /// sequence it took in.
    index: Mutex<Indexed>,
    /// The last stream sequence the channel index took in (history waits on it).
    indexed: watch::Sender<u64>,
    /// Bumped when the stream was deleted and created again: the index starts over.
    index_epoch: std::sync::atomic::AtomicU64,
}

/// The channel index and how far it got.
#[derive(Default)]
struct Indexed {
    channels: ChannelIndex,
    /// Last stream sequence taken in.
    through: u64,
    /// Messages before this sequence were forgotten (retention dropped them).
    trimmed_before: u64,
}

pub struct NatsLog {
    shared: Arc<Shared>,
    /// Stops the background tasks when the log is dropped.
    _stop: DropGuard,
}

impl NatsLog {
    /// Connects (in the background when NATS is down), creates or updates the stream, and
    /// starts following its head.
    pub async fn open(
        cfg: &EngineConfig,
        credentials_file: Option<&std::path::Path>,
        opts: LogOptions,
    ) -> Result<Arc<dyn EventLog>, LogError> {
        crate::install_crypto_provider();
        let url = cfg.url.as_str();
        let addrs = servers(url, "log.url").map_err(|e| invalid(e.to_string()))?;
        let name = cfg.stream.clone();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(format!(
                "log.stream {name:?} must be letters, digits, `_` and `-`"
            )));
        }

        let events = Arc::new(Events::default());
        let callback_events = events.clone();
        let mut options = ConnectOptions::new()
            .name("ssegate")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .ping_interval(PING_INTERVAL)
            .reconnect_delay_callback(|attempts| {
                // Called before every attempt, the first one included (`attempts` = 1).
                match attempts {
                    0 | 1 => Duration::ZERO,
                    n => Duration::from_millis((100u64 << (n - 1).min(5)).min(2_000)),
                }
            })
            .event_callback(move |event| {
                let events = callback_events.clone();
                async move {
                    match event {
                        NatsEvent::Connected => {
                            events.set_last_error(None);
                            events.connected.notify_one();
                        }
                        NatsEvent::Disconnected => {
                            tracing::warn!("nats log: disconnected from NATS; reconnecting");
                        }
                        NatsEvent::ServerError(ServerError::AuthorizationViolation) => {
                            events.set_last_error(Some(
                                "NATS refused the credentials (authorization violation)".into(),
                            ));
                        }
                        NatsEvent::ServerError(e) => events.set_last_error(Some(e.to_string())),
                        NatsEvent::ClientError(e) => events.set_last_error(Some(e.to_string())),
                        _ => {}
                    }
                }
            });
        if let Some(ca) = &cfg.tls_ca_file {
            let pem = std::fs::read_to_string(ca).map_err(|e| {
                invalid(format!("cannot read log.tls_ca_file {}: {e}", ca.display()))
            })?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(invalid(format!(
                    "log.tls_ca_file {} holds no PEM certificate",
                    ca.display()
                )));
            }
            options = options.add_root_certificates(ca.clone());
        }
        options = with_user_info(options, &addrs);
        if let Some(creds) = credentials_file {
            options = options.credentials_file(creds).await.map_err(|e| {
                invalid(format!(
                    "log.nats_credentials_file {} is not a usable .creds file: {e}",
                    creds.display()
                ))
            })?;
        }
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| invalid(format!("cannot use log.url {url:?}: {e}")))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        let stream = js
            .get_stream_no_info(&name)
            .await
            .map_err(|e| invalid(format!("log.stream {name:?}: {e}")))?;
        let shared = Arc::new(Shared {
            client,
            js,
            stream,
            subject: format!("{name}.events"),
            name,
            opts,
            events,
            head: watch::channel(Position::ZERO).0,
            setup: watch::channel(Setup::Pending).0,
            oldest: Mutex::new(None),
            created: Mutex::new(None),
            direct: AtomicBool::new(false),
            direct_off_until: Mutex::new(None),
            index: Mutex::default(),
            indexed: watch::channel(0).0,
            index_epoch: std::sync::atomic::AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(shared.clone().maintain(stop.clone()));
        tokio::spawn(shared.clone().follow(stop.clone()));
        tokio::spawn(shared.clone().build_index(stop.clone()));

        // Wait for the stream to be set up, unless connecting already failed once.
        let deadline = tokio::time::Instant::now() + OPEN_WAIT;
        let outcome = loop {
            let setup = shared.setup.borrow().clone();
            if setup != Setup::Pending {
                break Some(setup);
            }
            let failed = shared.client.connection_state() != State::Connected
                && shared.events.last_error().is_some();
            if failed || tokio::time::Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        match outcome {
            Some(Setup::Failed {
                message,
                permanent: true,
            }) => {
                stop.cancel();
                return Err(invalid(message));
            }
            Some(Setup::Ready) => {}
            other => {
                let why = match other {
                    Some(Setup::Failed { message, .. }) => message,
                    _ => shared
                        .events
                        .last_error()
                        .unwrap_or_else(|| "NATS not reachable yet".into()),
                };
                if why.contains("authorization violation") {
                    stop.cancel();
                    return Err(invalid(format!("log.url {url:?}: {why}")));
                }
                tracing::warn!(stream = %shared.name, reason = %why,
                    "nats log not ready yet; it keeps connecting in the background");
            }
        }
        Ok(Arc::new(NatsLog {
            shared,
            _stop: stop.drop_guard(),
        }))
    }
}

impl Shared {
    fn check_connected(&self) -> Result<(), LogError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(LogError::Unavailable(format!(
                "nats: not connected ({state:?}){}",
                self.events
                    .last_error()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            ))),
        }
    }

    /// Connected, and the stream was set up at least once.
    async fn ready(&self) -> Result<(), LogError> {
        self.check_connected()?;
        let mut rx = self.setup.subscribe();
        match &*rx.borrow_and_update() {
            Setup::Ready => return Ok(()),
            Setup::Failed { message, .. } => {
                return Err(LogError::Unavailable(format!(
                    "nats: stream {}: {message}",
                    self.name
                )))
            }
            Setup::Pending => {}
        }
        if let Ok(Ok(_)) =
            tokio::time::timeout(REQUEST_TIMEOUT, rx.wait_for(|s| *s == Setup::Ready)).await
        {
            return Ok(());
        }
        let why = match &*self.setup.borrow() {
            Setup::Failed { message, .. } => message.clone(),
            _ => "not set up yet".into(),
        };
        Err(LogError::Unavailable(format!(
            "nats: stream {}: {why}",
            self.name
        )))
    }

    fn advance_head(&self, pos: Position) {
        self.head.send_if_modified(|h| {
            let newer = pos > *h || (pos.hi == h.hi && h.lo == END_OF_MESSAGE && pos != *h);
            if newer {
                *h = pos;
            }
            newer
        });
    }

    /// Sets the stream up, then sets it up again after every reconnection (the server may
    /// have lost or changed it), until `stop`.
    async fn maintain(self: Arc<Self>, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            while self.client.connection_state() != State::Connected {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.events.connected.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            match self.set_up().await {
                Ok(()) => {
                    if failures > 0 || *self.setup.borrow() != Setup::Ready {
                        tracing::info!(stream = %self.name, "nats log ready");
                    }
                    failures = 0;
                    self.setup.send_replace(Setup::Ready);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.events.connected.notified() => {}
                    }
                }
                Err((message, permanent)) => {
                    failures += 1;
                    tracing::warn!(stream = %self.name, error = %message, "cannot set up the nats log stream; retrying");
                    self.setup.send_if_modified(|s| {
                        if *s == Setup::Ready {
                            return false;
                        }
                        *s = Setup::Failed { message, permanent };
                        true
                    });
                    if sleep_or_cancel(backoff_with_jitter(failures), &stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// Follows the head with a consumer (see [`Shared::consume`]) starting at the last
    /// message. async-nats recreates it after a reconnection, from the last message it
    /// delivered (the last message at once means a recreation never replays the stream).
    /// What was appended meanwhile is covered by the head refresh of `set_up` and by the reads
    /// themselves.
    async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let start = || DeliverPolicy::Last;
        let take = |seq: u64, headers: Option<HeaderMap>| {
            let counts = headers.as_ref().and_then(item_counts);
            let pos = match counts.map(|c| c.iter().sum::<usize>()) {
                Some(n) if n > 0 => event_pos(seq, n - 1, n),
                _ => Position {
                    hi: seq,
                    lo: FOREIGN_END,
                },
            };
            self.advance_head(pos);
            std::future::ready(Then::Next)
        };
        self.consume("head", &stop, start, take).await;
    }

    /// Follows the stream with an ordered push consumer (ephemeral, in memory, headers only)
    /// until `stop`: waits for the stream to be set up, creates the consumer from `start()`,
    /// hands each message's stream sequence and headers to `take`, and creates it again —
    /// after backoff when that failed — when it stops sending heartbeats (deleted on the
    /// server), ends, or `take` says so. `what` names it in the logs.
    async fn consume<F: std::future::Future<Output = Then>>(
        &self,
        what: &str,
        stop: &CancellationToken,
        mut start: impl FnMut() -> DeliverPolicy,
        mut take: impl FnMut(u64, Option<HeaderMap>) -> F,
    ) {
        let mut failures = 0u32;
        loop {
            let mut setup = self.setup.subscribe();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = setup.wait_for(|s| *s == Setup::Ready) => {}
            }
            match self.headers_consumer(start()).await {
                Ok(mut messages) => {
                    failures = 0;
                    loop {
                        let next = tokio::select! {
                            _ = stop.cancelled() => return,
                            m = messages.next() => m,
                        };
                        match next {
                            Some(Ok(msg)) => {
                                let Ok(seq) = msg.info().map(|i| i.stream_sequence) else {
                                    continue;
                                };
                                let headers = msg.message.headers.clone();
                                if take(seq, headers).await == Then::Recreate {
                                    break;
                                }
                            }
                            Some(Err(e)) if e.kind() == OrderedErrorKind::MissingHeartbeat => {
                                tracing::debug!(
                                    consumer = what,
                                    "nats log: consumer silent; creating it again"
                                );
                                break;
                            }
                            Some(Err(e)) => {
                                tracing::debug!(consumer = what, error = %e, "nats log: consumer");
                            }
                            None => break,
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    if self.client.connection_state() == State::Connected {
                        tracing::warn!(consumer = what, error = %e, "nats log: cannot follow the stream; retrying");
                    }
                }
            }
            if sleep_or_cancel(backoff_with_jitter(failures), stop).await {
                return;
            }
        }
    }

    /// Builds this node's channel index and keeps it up to date: an ordered push consumer
    /// (ephemeral, in memory, headers only) from the first message of the stream, then from
    /// the one after the last taken in whenever it has to be created again. Each message's
    /// `Ssegate-Channels` header gives its events' channels; a message without it (written by
    /// an older version) is fetched whole once to learn them. Every second, positions of
    /// messages retention dropped are forgotten.
    async fn build_index(self: Arc<Self>, stop: CancellationToken) {
        // The stream's epoch when the consumer was created: a stream created again under it
        // (`set_up` notices) restarts the index.
        let epoch = AtomicU64::new(0);
        let start = || {
            epoch.store(self.index_epoch.load(Ordering::Acquire), Ordering::Relaxed);
            let from = lock(&self.index).through + 1;
            DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            }
        };
        let take = |seq: u64, headers: Option<HeaderMap>| {
            let expected = epoch.load(Ordering::Relaxed);
            let this = &self;
            async move {
                if this.index_epoch.load(Ordering::Acquire) != expected {
                    this.reset_index();
                    return Then::Recreate;
                }
                this.index_message(seq, &headers.unwrap_or_default()).await;
                Then::Next
            }
        };
        let trim = async {
            let mut every = tokio::time::interval(INDEX_TRIM_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut forgotten = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = every.tick() => {}
                }
                // A stream created again: forget the old index at once, once (the consumer
                // is created anew with its next message).
                let now = self.index_epoch.load(Ordering::Acquire);
                if now != epoch.load(Ordering::Relaxed) && forgotten != Some(now) {
                    self.reset_index();
                    forgotten = Some(now);
                }
                self.trim_index().await;
            }
        };
        tokio::join!(self.consume("index", &stop, start, take), trim);
    }

    /// Takes message `seq` (its headers) into the channel index.
    async fn index_message(&self, seq: u64, headers: &HeaderMap) {
        if seq <= lock(&self.index).through {
            return; // Delivered again after the consumer was created anew.
        }
        let count = item_counts(headers).map(|c| c.iter().sum::<usize>());
        let channels = match count {
            Some(n) if n > 0 => match header_channels(headers, n) {
                Some(channels) => channels,
                // Written before the header existed: the body says.
                None => match self.get(seq).await {
                    Ok(Some(msg)) => decode(&msg)
                        .map(|events| events.into_iter().map(|e| e.channel).collect())
                        .unwrap_or_default(),
                    Ok(None) => Vec::new(), // Dropped meanwhile.
                    Err(e) => {
                        // Left out of history rather than holding the index up.
                        tracing::warn!(stream = %self.name, seq, error = %e,
                            "nats log: cannot read a message to index its channels; it is left out of history");
                        Vec::new()
                    }
                },
            },
            _ => Vec::new(), // Not written by ssegate: no events.
        };
        let mut index = lock(&self.index);
        if seq <= index.through {
            return;
        }
        let n = channels.len();
        for (i, channel) in channels.iter().enumerate() {
            index.channels.push(channel, event_pos(seq, i, n));
        }
        index.through = seq;
        drop(index);
        self.indexed.send_replace(seq);
    }

    /// Forgets the positions of messages retention dropped.
    async fn trim_index(&self) {
        let Ok(info) = self.stream_info().await else {
            return;
        };
        let first = info.state.first_sequence;
        let mut index = lock(&self.index);
        if first > index.trimmed_before {
            index.channels.trim_before(Position { hi: first, lo: 0 });
            index.trimmed_before = first;
        }
    }

    fn reset_index(&self) {
        tracing::info!(stream = %self.name, "nats log: the stream was created again; rebuilding the channel index");
        *lock(&self.index) = Indexed::default();
        self.indexed.send_replace(0);
    }

    /// Waits until the channel index took in every message up to `last_seq`, at most
    /// `INDEX_WAIT`.
    async fn index_caught_up(&self, last_seq: u64) -> Result<(), LogError> {
        if last_seq == 0 {
            return Ok(());
        }
        let mut rx = self.indexed.subscribe();
        if tokio::time::timeout(INDEX_WAIT, rx.wait_for(|s| *s >= last_seq))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            return Ok(());
        }
        let through = *rx.borrow();
        Err(LogError::Unavailable(format!(
            "nats: the channel index of this node is still being built (at message {through} of {last_seq}); history answers once it caught up"
        )))
    }

    /// [`EventLog::history`] from the channel index: candidates newest first, in rounds of
    /// as many positions as events are still wanted (16 to 256), whose messages are fetched
    /// at once (from the leader); [`HISTORY_SCAN`] candidates at most.
    async fn history_from_index(
        &self,
        q: HistoryQuery<'_>,
        filter: Filter<'_>,
    ) -> Result<History, LogError> {
        let mut history = History::default();
        let mut through = q.through;
        let mut looked = 0usize;
        'rounds: loop {
            let want = (q.limit.saturating_sub(history.events.len()))
                .clamp(16, 256)
                .min(HISTORY_SCAN - looked);
            let chunk: Vec<Position> = {
                let index = lock(&self.index);
                let first_seq = index.trimmed_before;
                let round = HistoryQuery { through, ..q };
                index
                    .channels
                    .newest_first(&round)
                    .take_while(|p| p.hi >= first_seq)
                    .take(want)
                    .collect()
            };
            if history.events.len() >= q.limit || looked >= HISTORY_SCAN {
                break;
            }
            let Some(&oldest) = chunk.last() else { break };
            let mut seqs: Vec<u64> = chunk.iter().map(|p| p.hi).collect();
            seqs.dedup();
            let fetched = futures::future::join_all(seqs.iter().map(|&seq| self.get(seq))).await;
            let mut messages = std::collections::HashMap::new();
            for (seq, msg) in seqs.into_iter().zip(fetched) {
                if let Some(msg) = msg? {
                    if let Ok(events) = decode(&msg) {
                        messages.insert(seq, events);
                    }
                }
            }
            for pos in &chunk {
                if history.events.len() >= q.limit {
                    break 'rounds;
                }
                looked += 1;
                history.looked_back_to = Some(*pos);
                // A message missing now was dropped by retention (or deleted) meanwhile.
                let Some(events) = messages.get(&pos.hi) else {
                    continue;
                };
                let Some(event) = events.get((pos.lo / 2) as usize) else {
                    continue;
                };
                // The index and the stream agree on the channel (a stream created again
                // under the index is caught by its epoch; this is the last word).
                if event.channel != q.channel {
                    continue;
                }
                let event = Event {
                    pos: *pos,
                    event: event.clone(),
                };
                if filter(&event) {
                    history.events.push(Arc::new(event));
                }
            }
            if chunk.len() < want {
                break;
            }
            through = position_before(oldest);
        }
        // More only if the next candidate's message is still there (retention drops the
        // oldest first; the index forgets them within a second).
        if let Some(last) = history.looked_back_to {
            let next = {
                let index = lock(&self.index);
                let first_seq = index.trimmed_before;
                let rest = HistoryQuery {
                    through: position_before(last),
                    ..q
                };
                let next = index.channels.newest_first(&rest).next();
                next.filter(|p| p.hi >= first_seq)
            };
            if let Some(next) = next {
                history.more = self.get(next.hi).await?.is_some();
            }
        }
        history.events.reverse();
        Ok(history)
    }

    async fn headers_consumer(
        &self,
        deliver_policy: DeliverPolicy,
    ) -> Result<push::Ordered, String> {
        let consumer = self
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: self.subject.clone(),
                headers_only: true,
                deliver_policy,
                ..push::OrderedConfig::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        consumer.messages().await.map_err(|e| e.to_string())
    }

    /// Creates or updates the stream, then refreshes the head. Errors: (message, whether
    /// JetStream itself refused, as opposed to not answering).
    async fn set_up(&self) -> Result<(), (String, bool)> {
        let info = self.ensure_stream().await?;
        self.direct
            .store(info.config.allow_direct, Ordering::Relaxed);
        let created = info.created.to_string();
        let previous = self
            .created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(created.clone());
        if previous.is_some_and(|p| p != created) {
            tracing::error!(stream = %self.name, "the JetStream stream was deleted and created again: its events are lost and positions restart");
            self.head.send_replace(Position::ZERO);
            *lock(&self.oldest) = None;
            self.index_epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.head_at(info.state.last_sequence)
            .await
            .map_err(|e| (e.to_string(), false))?;
        Ok(())
    }

    fn wanted_config(&self, mut config: StreamConfig) -> StreamConfig {
        let o = &self.opts;
        config.name = self.name.clone();
        config.subjects = vec![self.subject.clone()];
        config.storage = StorageType::File;
        config.discard = DiscardPolicy::Old;
        config.max_messages = i64::try_from(o.retention_events).unwrap_or(i64::MAX);
        config.max_age = Duration::from_millis(o.retention_age_ms);
        if o.dedupe_window_ms > 0 {
            config.duplicate_window = Duration::from_millis(o.dedupe_window_ms);
        }
        // JetStream refuses a window longer than max_age (0: the server's default, 2 min,
        // which it shortens itself).
        if !config.max_age.is_zero() && config.duplicate_window > config.max_age {
            config.duplicate_window = config.max_age;
        }
        config
    }

    async fn ensure_stream(&self) -> Result<StreamInfo, (String, bool)> {
        let existing: Response<StreamInfo> = self
            .js
            .request(format!("STREAM.INFO.{}", self.name), &serde_json::json!({}))
            .await
            .map_err(|e| {
                let hint = if e.kind() == RequestErrorKind::NoResponders {
                    " (is JetStream enabled on the server?)"
                } else {
                    ""
                };
                (format!("stream {}: {e}{hint}", self.name), false)
            })?;
        match existing {
            Response::Ok(info) => {
                if info.config.storage != StorageType::File {
                    return Err((
                        format!(
                            "stream {} uses {:?} storage; ssegate needs file storage (durable appends)",
                            self.name, info.config.storage
                        ),
                        true,
                    ));
                }
                let want = self.wanted_config(info.config.clone());
                let same = want.subjects == info.config.subjects
                    && want.max_messages == info.config.max_messages
                    && want.max_age == info.config.max_age
                    && want.duplicate_window == info.config.duplicate_window
                    && want.discard == info.config.discard;
                if same {
                    return Ok(info);
                }
                tracing::info!(stream = %self.name, "updating the JetStream stream's settings");
                self.js.update_stream(&want).await.map_err(|e| {
                    let permanent = is_config_error(&e.kind());
                    (
                        format!("cannot update stream {}: {e}", self.name),
                        permanent,
                    )
                })
            }
            Response::Err { error } if error.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                tracing::info!(stream = %self.name, "creating the JetStream stream");
                let want = self.wanted_config(StreamConfig {
                    // Only ever at creation: nats-server 2.9 turning it on by an update of a
                    // replicated stream leaves every direct get unanswered.
                    allow_direct: true,
                    max_bytes: -1,
                    max_messages_per_subject: -1,
                    max_consumers: -1,
                    num_replicas: 1,
                    ..StreamConfig::default()
                });
                match self.js.create_stream(want).await {
                    Ok(stream) => Ok(stream.cached_info().clone()),
                    Err(e) => {
                        let permanent = is_config_error(&e.kind());
                        Err((
                            format!("cannot create stream {}: {e}", self.name),
                            permanent,
                        ))
                    }
                }
            }
            Response::Err { error } => Err((
                format!("stream {}: {error}", self.name),
                is_config_error(&CreateStreamErrorKind::JetStream(error)),
            )),
        }
    }

    async fn stream_info(&self) -> Result<StreamInfo, LogError> {
        match self
            .js
            .request(format!("STREAM.INFO.{}", self.name), &serde_json::json!({}))
            .await
            .map_err(|e| unavailable("stream info", e))?
        {
            Response::Ok(info) => Ok(info),
            Response::Err { error } => Err(unavailable("stream info", error)),
        }
    }

    /// Message `seq` exactly, from the stream leader (consistent with the stream info and
    /// every acknowledgement); `None` if it does not exist (any more).
    async fn get(&self, seq: u64) -> Result<Option<StreamMessage>, LogError> {
        match self.stream.raw_message_builder().sequence(seq).send().await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable("get message", e)),
        }
    }

    /// [`Shared::get_next`] from the stream leader.
    async fn get_next_from_leader(&self, seq: u64) -> Result<Option<StreamMessage>, LogError> {
        match self
            .stream
            .raw_message_builder()
            .sequence(seq)
            .next_by_subject(self.subject.clone())
            .send()
            .await
        {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable("get message", e)),
        }
    }

    /// The first message at or after `seq`; `None` if there is none. A direct get: any
    /// replica may answer, one that lags the leader included.
    /// Falls back to the leader when the stream does not allow direct gets, or when they
    /// failed lately (see [`Shared::direct_failed`]).
    async fn get_next(&self, seq: u64) -> Result<Option<StreamMessage>, LogError> {
        if self.direct_usable() {
            let get = self
                .stream
                .direct_get_builder()
                .sequence(seq)
                .next_by_subject(self.subject.clone())
                .send();
            match tokio::time::timeout(DIRECT_TIMEOUT, get).await {
                Ok(Ok(m)) => return Ok(Some(m)),
                Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
                Ok(Err(e)) => self.direct_failed(&e),
                Err(_) => self.direct_failed(&"no answer within 1 s"),
            }
        }
        self.get_next_from_leader(seq).await
    }

    fn direct_usable(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
            && lock(&self.direct_off_until).is_none_or(|t| Instant::now() >= t)
    }

    /// A direct get failed otherwise than "not found" (a replica that does not answer: one
    /// catching up, or nats-server 2.9 after `allow_direct` was turned on by an update):
    /// reads go to the leader for a while.
    fn direct_failed(&self, e: &dyn std::fmt::Display) {
        let mut off = lock(&self.direct_off_until);
        if off.is_none_or(|t| Instant::now() >= t) {
            tracing::warn!(stream = %self.name, error = %e,
                "nats log: direct get failed; reading from the stream leader for {DIRECT_PAUSE:?}");
        }
        *off = Some(Instant::now() + DIRECT_PAUSE);
    }

    /// The head, given the stream's last sequence (looks the message up only when the
    /// cached head is of another message).
    async fn head_at(&self, last_seq: u64) -> Result<Position, LogError> {
        let cached = *self.head.borrow();
        if last_seq <= cached.hi && !(last_seq == cached.hi && cached.lo == END_OF_MESSAGE) {
            // Known, or an append acknowledged since the stream info was read.
            return Ok(cached);
        }
        let pos = match self.get(last_seq).await? {
            Some(msg) => end_of(&msg),
            None => Position {
                hi: last_seq,
                lo: END_OF_MESSAGE,
            },
        };
        self.advance_head(pos);
        Ok(pos.max(*self.head.borrow()))
    }

    /// The first event of message `first_seq`; `None` if that message is gone by now.
    async fn oldest_at(&self, first_seq: u64) -> Result<Option<Position>, LogError> {
        if let Some(p) = *lock(&self.oldest) {
            if p.hi == first_seq {
                return Ok(Some(p));
            }
        }
        let Some(msg) = self.get(first_seq).await? else {
            return Ok(None);
        };
        let pos = match decode(&msg) {
            Ok(events) => event_pos(first_seq, 0, events.len()),
            Err(_) => Position {
                hi: first_seq,
                lo: FOREIGN_END,
            },
        };
        *lock(&self.oldest) = Some(pos);
        Ok(Some(pos))
    }

    async fn read_from(
        &self,
        after: Position,
        max: usize,
        filter: Filter<'_>,
    ) -> Result<ReadBatch, LogError> {
        let mut batch = ReadBatch {
            next: after,
            ..ReadBatch::default()
        };
        let start = start_seq(after);
        let mut first = self.get_next(start).await?;
        if first.is_none() && start <= self.head.borrow().hi {
            // Message `start` is known to exist (or to have existed): a replica lagging behind
            // the leader answered, or retention emptied the stream past the reader. The
            // leader tells which.
            first = self.get_next_from_leader(start).await?;
        }
        let Some(first) = first else {
            let head = *self.head.borrow();
            batch.at_head = true;
            if start <= head.hi {
                // Message `start` existed and nothing at or after it does now: retention (or a
                // deletion) emptied the stream past the reader.
                batch.gap = Some(Gap {
                    oldest: None,
                    damaged: false,
                });
                batch.next = after.max(head);
            }
            return Ok(batch);
        };
        let gap = first.sequence > start;
        if gap {
            batch.next = after.max(Position {
                hi: first.sequence - 1,
                lo: END_OF_MESSAGE,
            });
        }
        let mut expect = first.sequence;
        let mut pending = std::collections::VecDeque::from([Ok(Some(first))]);
        let mut scan_left = MAX_SCAN;
        let mut progressed = false;
        loop {
            let Some(next) = pending.pop_front() else {
                let room = max.saturating_sub(batch.events.len()).min(scan_left);
                if room == 0 {
                    break;
                }
                // Up to one past the known head, so reaching the head is seen in this round.
                let known = self.head.borrow().hi;
                let span = known
                    .saturating_add(1)
                    .saturating_sub(expect)
                    .saturating_add(1)
                    .clamp(1, PIPELINE.min(room as u64));
                let gets = (0..span).map(|i| self.get_next(expect + i));
                pending = futures::future::join_all(gets).await.into();
                continue;
            };
            let msg = match next {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    // Nothing at or after `expect` when the get ran: the head, unless the
                    // message is known to exist (a lagging replica answered; the next read
                    // goes on from here).
                    batch.at_head = expect > self.head.borrow().hi;
                    break;
                }
                Err(e) if !progressed => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "nats log: read cut short");
                    break;
                }
            };
            if msg.sequence != expect {
                // Dropped while this read ran: the next read reports the gap.
                break;
            }
            progressed = true;
            self.advance_head(end_of(&msg));
            match decode(&msg) {
                Ok(events) => {
                    let n = events.len();
                    if gap && batch.gap.is_none() {
                        batch.gap = Some(Gap {
                            oldest: Some(event_pos(expect, 0, n)),
                            damaged: false,
                        });
                    }
                    let events = events
                        .into_iter()
                        .enumerate()
                        .map(|(i, event)| Event {
                            pos: event_pos(expect, i, n),
                            event,
                        })
                        .filter(|e| e.pos > after);
                    if !fill(&mut batch, events, max, &mut scan_left, filter) {
                        return Ok(batch);
                    }
                }
                Err(why) => {
                    let end = Position {
                        hi: expect,
                        lo: FOREIGN_END,
                    };
                    tracing::error!(stream = %self.name, seq = expect, reason = %why, "skipping a message ssegate did not write");
                    if gap && batch.gap.is_none() {
                        batch.gap = Some(Gap {
                            oldest: Some(end),
                            damaged: false,
                        });
                    }
                    batch.next = batch.next.max(end);
                }
            }
            expect += 1;
        }
        Ok(batch)
    }
}

#[async_trait]
impl EventLog for NatsLog {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn bus(&self) -> Option<Arc<dyn crate::cluster::Bus>> {
        Some(Arc::new(NatsBus {
            shared: self.shared.clone(),
        }))
    }

    async fn append(
        &self,
        items: Vec<AppendItem>,
        _now_ms: u64,
    ) -> Result<Vec<Appended>, LogError> {
        let s = &self.shared;
        let counts: Vec<usize> = items.iter().map(|i| i.events.len()).collect();
        let total: usize = counts.iter().sum();
        if total == 0 {
            return Ok(items
                .iter()
                .map(|_| Appended {
                    positions: Vec::new(),
                    duplicate: false,
                })
                .collect());
        }
        s.ready().await?;
        let msg_id = if s.opts.dedupe_window_ms > 0 {
            message_id(&items)
        } else {
            None
        };
        let counts_header = counts
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let channels_header = items
            .iter()
            .flat_map(|i| &i.events)
            .map(|e| e.channel.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let mut headers = HeaderMap::new();
        headers.insert(ITEMS_HEADER, counts_header.as_str());
        headers.insert(CHANNELS_HEADER, channels_header.as_str());
        headers.insert(NATS_EXPECTED_STREAM, s.name.as_str());
        if let Some(id) = &msg_id {
            headers.insert(NATS_MESSAGE_ID, id.as_str());
        }
        let events: Vec<&NewEvent> = items.iter().flat_map(|i| &i.events).collect();
        let payload = serde_json::to_vec(&events).expect("events serialize");
        let max_payload = s.client.server_info().max_payload;
        let size = payload.len() + counts_header.len() + channels_header.len() + s.name.len() + 256;
        if max_payload > 0 && size > max_payload {
            return Err(LogError::TooLarge(format!(
                "the append ({size} bytes) exceeds the NATS server's max_payload ({max_payload} bytes); publish smaller batches"
            )));
        }
        s.check_connected()?;
        let ack =
            s.js.publish_with_headers(s.subject.clone(), headers, payload.into())
                .await
                .map_err(|e| unavailable("publish", e))?
                .await
                .map_err(|e| match e.kind() {
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => unavailable(
                        "publish not acknowledged (it may or may not have been stored)",
                        e,
                    ),
                    _ => unavailable("publish", e),
                })?;
        let seq = ack.sequence;
        if !ack.duplicate {
            s.advance_head(event_pos(seq, total - 1, total));
            return Ok(positions_of(seq, &counts)
                .into_iter()
                .map(|positions| Appended {
                    positions,
                    duplicate: false,
                })
                .collect());
        }
        // A duplicate: JetStream stored nothing and names the original message.
        let original = s
            .get(seq)
            .await?
            .and_then(|m| item_counts(&m.headers))
            .filter(|c| c.len() == counts.len() && c.iter().sum::<usize>() > 0);
        Ok(positions_of(seq, original.as_deref().unwrap_or(&counts))
            .into_iter()
            .map(|positions| Appended {
                positions,
                duplicate: true,
            })
            .collect())
    }

    async fn read(
        &self,
        after: Position,
        max: usize,
        filter: Filter<'_>,
        wait: Option<Duration>,
    ) -> Result<ReadBatch, LogError> {
        let s = &self.shared;
        s.ready().await?;
        if let Some(wait) = wait {
            wait_for_head(s.head.subscribe(), after, wait).await;
            s.check_connected()?;
        }
        s.read_from(after, max, filter).await
    }

    async fn history(&self, q: HistoryQuery<'_>, filter: Filter<'_>) -> Result<History, LogError> {
        let s = &self.shared;
        s.ready().await?;
        if q.through <= q.after || q.limit == 0 {
            return Ok(History::default());
        }
        // Once the index took in the message of `through` (or the stream's last, when
        // `through` is past what this node knows of the head), it holds every event up to it.
        // The callers read `through` from the stream or the dispatcher: no request then.
        let known = s.head.borrow().hi;
        let target = match q.through.hi <= known {
            true => q.through.hi,
            false => q.through.hi.min(s.stream_info().await?.state.last_sequence),
        };
        s.index_caught_up(target).await?;
        s.history_from_index(q, filter).await
    }

    fn position_before(&self, pos: Position) -> Position {
        position_before(pos)
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        let s = &self.shared;
        s.ready().await?;
        let mut tries = 0;
        loop {
            tries += 1;
            let state = s.stream_info().await?.state;
            let head = s.head_at(state.last_sequence).await?;
            if state.messages == 0 {
                return Ok(Bounds { head, oldest: None });
            }
            match s.oldest_at(state.first_sequence).await? {
                Some(oldest) => {
                    return Ok(Bounds {
                        head,
                        oldest: Some(oldest),
                    })
                }
                // The oldest message expired between the two requests: look again.
                None if tries < 3 => continue,
                None => {
                    return Ok(Bounds {
                        head,
                        oldest: Some(Position {
                            hi: state.first_sequence,
                            lo: 0,
                        }),
                    })
                }
            }
        }
    }

    async fn enforce_retention(&self, _now_ms: u64) -> Result<(), LogError> {
        // The server applies max_msgs on every store and max_age on its own timer.
        Ok(())
    }
}

/// The cluster control bus on NATS core subjects: topic `t` is the subject
/// `{stream}.ctl.t`. The client reconnects and resubscribes by itself.
struct NatsBus {
    shared: Arc<Shared>,
}

impl NatsBus {
    fn subject(&self, topic: &str) -> String {
        format!("{}.ctl.{topic}", self.shared.name)
    }
}

#[async_trait]
impl crate::cluster::Bus for NatsBus {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, topic: &str, payload: bytes::Bytes) -> Result<(), String> {
        self.shared
            .client
            .publish(self.subject(topic), payload)
            .await
            .map_err(|e| e.to_string())
    }

    async fn listen(
        &self,
        topics: Vec<String>,
        tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
        stop: CancellationToken,
    ) {
        use futures::StreamExt;
        let mut failures = 0u32;
        loop {
            let mut subscribers = Vec::new();
            for t in &topics {
                match self.shared.client.subscribe(self.subject(t)).await {
                    Ok(s) => subscribers.push(s),
                    Err(e) => {
                        tracing::debug!(error = %e, "nats cluster bus cannot subscribe");
                        break;
                    }
                }
            }
            if subscribers.len() == topics.len() {
                failures = 0;
                let mut messages = futures::stream::select_all(subscribers);
                loop {
                    let message = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(message) = message else { break };
                    if tx.send(message.payload).await.is_err() {
                        return;
                    }
                }
            }
            failures = failures.saturating_add(1);
            if crate::retry::sleep_or_cancel(crate::retry::backoff_with_jitter(failures), &stop)
                .await
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_before_an_event_resumes_at_that_event() {
        let three: Vec<Position> = (0..3).map(|i| event_pos(8, i, 3)).collect();
        // Before the message's first event: the message before, finished.
        assert_eq!(start_seq(position_before(three[0])), 8);
        assert!(position_before(three[0]) < three[0]);
        for i in 1..3 {
            let before = position_before(three[i]);
            assert_eq!(before, three[i - 1], "the event before #{i}");
            assert_eq!(start_seq(before), 8);
        }
        let single = event_pos(9, 0, 1);
        assert_eq!(start_seq(position_before(single)), 9);
        assert!(three[2] < position_before(single) && position_before(single) < single);
        assert_eq!(start_seq(position_before(event_pos(1, 0, 1))), 1);
    }

    #[test]
    fn positions_mark_the_last_event_of_a_message() {
        assert_eq!(event_pos(7, 0, 1).to_string(), "7-1");
        let three: Vec<String> = (0..3).map(|i| event_pos(8, i, 3).to_string()).collect();
        assert_eq!(three, ["8-0", "8-2", "8-5"]);
        assert!(event_pos(7, 0, 1) < event_pos(8, 0, 3));
        assert_eq!(start_seq(Position::ZERO), 1);
        assert_eq!(start_seq(Position::seq(42)), 1);
        assert_eq!(start_seq(event_pos(8, 0, 3)), 8);
        assert_eq!(start_seq(event_pos(8, 2, 3)), 9);
        assert_eq!(
            start_seq(Position {
                hi: 8,
                lo: END_OF_MESSAGE
            }),
            9
        );
        for p in [event_pos(7, 0, 1), event_pos(8, 2, 3)] {
            assert_eq!(p.to_string().parse::<Position>().unwrap(), p);
        }
        assert_eq!(
            positions_of(5, &[2, 1]),
            vec![
                vec![event_pos(5, 0, 3), event_pos(5, 1, 3)],
                vec![event_pos(5, 2, 3)]
            ]
        );
    }

    #[test]
    fn message_ids() {
        let item = |k: Option<&str>| AppendItem {
            key: k.map(str::to_owned),
            events: Vec::new(),
        };
        assert_eq!(message_id(&[item(None)]), None);
        assert_eq!(message_id(&[item(None), item(None)]), None);
        assert_eq!(message_id(&[item(Some("k1"))]).as_deref(), Some("k1"));
        let spaced = message_id(&[item(Some("a b"))]).unwrap();
        assert!(spaced.starts_with("ssegate:key:"), "{spaced}");
        let reserved = message_id(&[item(Some("ssegate:batch:x"))]).unwrap();
        assert!(reserved.starts_with("ssegate:key:"));
        let ab = message_id(&[item(Some("a")), item(Some("b"))]).unwrap();
        let ba = message_id(&[item(Some("b")), item(Some("a"))]).unwrap();
        let a_ = message_id(&[item(Some("a")), item(None)]).unwrap();
        assert!(ab.starts_with("ssegate:batch:"));
        assert_ne!(ab, ba);
        assert_ne!(ab, a_);
        assert_eq!(ab, message_id(&[item(Some("a")), item(Some("b"))]).unwrap());
    }
}
