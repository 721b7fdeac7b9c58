//! The MongoDB source against a fake server that replays recorded change events
//! (tests/fixtures/mongodb/: documents as the server sends them, in canonical Extended JSON)
//! with the server's resume semantics: `resumeAfter` continues after a token, `startAfter`
//! after an invalidate, a token older than the oplog fails with `ChangeStreamHistoryLost`, an
//! invalidate ends the cursor. The source runs in-process on a memory log.
//!
//! And, when `SSEGATE_TEST_MONGODB_URI` names a replica set, the real driver through a real
//! `ssegate serve` process to a real SSE client.

mod common;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use mongodb::bson::{doc, Bson, Document};
use serde_json::{json, Value};
use ssegate::log::memory::MemoryLog;
use ssegate::log::{all_events, Event, EventLog, LogOptions, Position};
use ssegate::source::mongodb::{
    encode_checkpoint, ChangeCursor, ChangeStreamDriver, DriverError, MongoSource,
    MongoSourceConfig, StartAt,
};
use ssegate::source::{Mapping, Source, SourceContext, SourceError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------
// Fixtures

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mongodb")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("JSON")
}

/// The change events of a fixture file, as BSON documents.
fn changes(name: &str) -> Vec<Document> {
    let Value::Array(items) = fixture(name) else {
        panic!("{name} holds a list")
    };
    items
        .into_iter()
        .map(|v| match Bson::try_from(v).expect("Extended JSON") {
            Bson::Document(d) => d,
            other => panic!("not a document: {other}"),
        })
        .collect()
}

/// A recorded server error reply as the driver reports it: resumable errors (labelled
/// `ResumableChangeStreamError`) are transient, others carry their code.
fn server_error(name: &str) -> DriverError {
    let reply = &fixture("errors.json")[name];
    let labels = reply["errorLabels"].as_array().cloned().unwrap_or_default();
    let message = reply["errmsg"].as_str().unwrap().to_owned();
    if labels.iter().any(|l| l == "ResumableChangeStreamError") {
        return DriverError::transient(message);
    }
    DriverError::server(
        reply["code"].as_i64().unwrap() as i32,
        reply["codeName"].as_str().unwrap(),
        message,
    )
}

fn token(d: &Document) -> Document {
    d.get_document("_id").unwrap().clone()
}

// ---------------------------------------------------------------------------------------
// The fake server

#[derive(Default)]
struct FakeState {
    /// The oplog, as change events.
    events: Vec<Document>,
    /// Events before this index have rolled out of the oplog.
    oldest: usize,
    /// Where every `open` asked to start, in order.
    opens: Vec<StartAt>,
    /// Errors for the next opens (one per open).
    open_failures: VecDeque<DriverError>,
    /// For the next successful opens: fail after returning this many events.
    mid_stream: VecDeque<(usize, DriverError)>,
    /// Post-batch resume tokens handed out while idle, and where they point.
    hwm: HashMap<String, usize>,
    /// The cluster clock: idle tokens change when it moves.
    clock: u32,
    wakers: Vec<Waker>,
}

#[derive(Default)]
struct FakeServer {
    state: Mutex<FakeState>,
}

impl FakeServer {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Changes happen on the server.
    fn push(&self, docs: impl IntoIterator<Item = Document>) {
        let mut s = self.lock();
        s.events.extend(docs);
        for w in s.wakers.drain(..) {
            w.wake();
        }
    }

    fn opens(&self) -> Vec<StartAt> {
        self.lock().opens.clone()
    }

    /// The cluster's clock moves on (idle streams get a newer post-batch token).
    fn tick(&self) {
        self.lock().clock += 1;
    }
}

/// A high-water-mark token at `pos` (what the server returns as postBatchResumeToken).
fn hwm_token(s: &mut FakeState, pos: usize) -> Document {
    let data = format!("8265{:06X}{pos:08X}2B0229296E04", 0x60A400 + s.clock);
    s.hwm.insert(data.clone(), pos);
    doc! { "_data": data }
}

/// The driver side of the fake server.
struct FakeDriver(Arc<FakeServer>);

#[async_trait]
impl ChangeStreamDriver for FakeDriver {
    async fn open(&self, start: &StartAt) -> Result<Box<dyn ChangeCursor>, DriverError> {
        let mut s = self.0.lock();
        s.opens.push(start.clone());
        if let Some(e) = s.open_failures.pop_front() {
            return Err(e);
        }
        let find = |s: &FakeState, t: &Document| -> Option<usize> {
            let data = t.get_str("_data").ok()?;
            if let Some(pos) = s.hwm.get(data) {
                return Some(*pos);
            }
            let i = s.events.iter().position(|e| &token(e) == t)?;
            (i >= s.oldest).then_some(i + 1)
        };
        // The server refuses to resume after an invalidate: only `startAfter` gets past it.
        if let StartAt::ResumeAfter(t) = start {
            let invalidate = s
                .events
                .iter()
                .any(|e| &token(e) == t && e.get_str("operationType") == Ok("invalidate"));
            if invalidate {
                return Err(DriverError::server(
                    280,
                    "ChangeStreamFatalError",
                    "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification.",
                ));
            }
        }
        let pos = match start {
            StartAt::Now => s.events.len(),
            StartAt::ResumeAfter(t) | StartAt::StartAfter(t) => match find(&s, t) {
                Some(pos) => pos,
                None => return Err(server_error("history_lost")),
            },
        };
        let initial = match start {
            StartAt::Now => Some(hwm_token(&mut s, pos)),
            StartAt::ResumeAfter(t) | StartAt::StartAfter(t) => Some(t.clone()),
        };
        let fail_after = s.mid_stream.pop_front();
        drop(s);
        Ok(Box::new(FakeCursor {
            server: self.0.clone(),
            pos,
            returned: 0,
            fail_after,
            last_token: initial,
            ended: false,
        }))
    }
}

struct FakeCursor {
    server: Arc<FakeServer>,
    pos: usize,
    returned: usize,
    fail_after: Option<(usize, DriverError)>,
    last_token: Option<Document>,
    ended: bool,
}

impl Stream for FakeCursor {
    type Item = Result<Document, DriverError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self
            .fail_after
            .as_ref()
            .is_some_and(|(n, _)| *n == self.returned)
        {
            let (_, e) = self.fail_after.take().unwrap();
            self.ended = true;
            return Poll::Ready(Some(Err(e)));
        }
        let server = self.server.clone();
        let mut s = server.lock();
        if self.pos < s.events.len() {
            let doc = s.events[self.pos].clone();
            self.pos += 1;
            self.returned += 1;
            self.last_token = Some(token(&doc));
            // The server closes the cursor after an invalidate.
            if doc.get_str("operationType") == Ok("invalidate") {
                self.ended = true;
            }
            return Poll::Ready(Some(Ok(doc)));
        }
        s.wakers.push(cx.waker().clone());
        Poll::Pending
    }
}

impl ChangeCursor for FakeCursor {
    fn resume_token(&self) -> Option<Document> {
        let mut s = self.server.lock();
        // Idle at the end of the oplog: the post-batch token moves with the clock.
        if self.pos == s.events.len() && s.clock > 0 {
            let pos = self.pos;
            return Some(hwm_token(&mut s, pos));
        }
        self.last_token.clone()
    }
}

// ---------------------------------------------------------------------------------------
// Harness

struct Harness {
    log: Arc<dyn EventLog>,
    dir: tempfile::TempDir,
    server: Arc<FakeServer>,
    cfg: MongoSourceConfig,
    mapping: Mapping,
}

struct Running {
    stop: CancellationToken,
    cx: SourceContext,
    task: JoinHandle<Result<(), SourceError>>,
}

impl Running {
    async fn stop(self) -> Result<(), SourceError> {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

const NAME: &str = "posts";

fn mongo_config(extra: &str) -> MongoSourceConfig {
    let cfg: MongoSourceConfig = toml::from_str(&format!(
        "url = \"mongodb://db1,db2,db3/?replicaSet=rs0\"\ndatabase = \"social\"\ncollection = \"posts\"\n{extra}"
    ))
    .expect("config");
    ssegate::source::BuildSource::validate(&cfg).expect("valid");
    cfg
}

fn mapping(text: &str) -> Mapping {
    let m: Mapping = toml::from_str(text).expect("mapping");
    m.validate().expect("valid mapping");
    m
}

impl Harness {
    fn new(cfg: MongoSourceConfig, mapping: Mapping) -> Self {
        Self {
            log: Arc::new(MemoryLog::new(LogOptions {
                retention_events: 10_000,
                retention_age_ms: 0,
                dedupe_window_ms: 600_000,
                file_cache_bytes: 0,
            })),
            dir: tempfile::tempdir().unwrap(),
            server: FakeServer::new(),
            cfg,
            mapping,
        }
    }

    fn context(&self) -> (SourceContext, CancellationToken) {
        let stop = CancellationToken::new();
        let cx = SourceContext::new(
            NAME,
            self.mapping.clone(),
            self.log.clone(),
            self.dir.path().to_owned(),
            stop.clone(),
        );
        (cx, stop)
    }

    fn source(&self) -> MongoSource {
        MongoSource::with_driver(self.cfg.clone(), Arc::new(FakeDriver(self.server.clone())))
    }

    /// Runs the source in a task.
    fn start(&self) -> Running {
        let (cx, stop) = self.context();
        let mut source = self.source();
        let task_cx = cx.clone();
        let task = tokio::spawn(async move { source.run(&task_cx).await });
        Running { stop, cx, task }
    }

    /// Runs the source until it returns by itself.
    async fn run_to_end(&self) -> (Result<(), SourceError>, SourceContext) {
        let (cx, _stop) = self.context();
        let mut source = self.source();
        let r = tokio::time::timeout(Duration::from_secs(30), source.run(&cx))
            .await
            .expect("the source returns");
        (r, cx)
    }

    fn checkpoint(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join(format!("{NAME}.checkpoint"))).ok()
    }

    fn set_checkpoint(&self, start: &StartAt) {
        ssegate::source::CheckpointStore::new(self.dir.path())
            .save(NAME, &encode_checkpoint(start))
            .unwrap();
    }

    async fn all(&self) -> Vec<Arc<Event>> {
        self.log
            .read(Position::ZERO, 1000, &all_events, None)
            .await
            .unwrap()
            .events
    }

    /// Waits until the log holds `n` events.
    async fn events(&self, n: usize) -> Vec<Arc<Event>> {
        self.wait(|h| async move { h.all().await.len() >= n }).await;
        let all = self.all().await;
        assert_eq!(all.len(), n, "exactly {n} events: {all:#?}");
        all
    }

    async fn wait<'a, F, Fut>(&'a self, mut ok: F)
    where
        F: FnMut(&'a Self) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..1000 {
            if ok(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "timed out; log: {:#?}; opens: {:?}",
            self.all().await,
            self.server.opens()
        );
    }
}

fn data(e: &Event) -> Value {
    serde_json::from_str(e.event.data.get()).unwrap()
}

fn feed_mapping() -> Mapping {
    mapping(
        r#"
channel = "feeds:{doc.feedId}"
event_type = "post.{op}"
users = "{doc.audience}"
exclude = ["internalNotes"]
"#,
    )
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn insert_update_replace_delete_become_events_with_channels_users_and_projection() {
    let h = Harness::new(
        mongo_config("full_document_before_change = \"whenAvailable\""),
        feed_mapping(),
    );
    let running = h.start();
    h.wait(|h| async move { h.server.opens().len() == 1 }).await;
    let feed = changes("feed_changes.json");
    h.server.push(feed.clone());
    // Five changes; the delete without a pre-image has no feedId: skipped, not misrouted.
    let events = h.events(4).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["post.insert", "post.update", "post.replace", "post.delete"]
    );
    assert_eq!(events[0].event.channel, "feeds:f1");
    assert_eq!(events[0].event.users, Some(vec!["u2".into(), "u3".into()]));
    assert_eq!(
        data(&events[0]),
        json!({
            "_id": "6560a1f1c2d3e4f5a6b7c8d9",
            "feedId": "f1",
            "authorId": "u1",
            "audience": ["u2", "u3"],
            "text": "hello world",
            "likes": 0,
            "createdAt": "2023-11-24T13:20:01.100Z",
        })
    );
    assert_eq!(data(&events[1])["likes"], 1);
    assert_eq!(data(&events[2])["text"], "hello again (edited)");
    // The delete of post B is routed by its pre-image.
    assert_eq!(events[3].event.channel, "feeds:f2");
    assert_eq!(events[3].event.users, Some(vec!["u4".into()]));
    assert_eq!(data(&events[3])["text"], "old post");
    assert!(events
        .iter()
        .all(|e| !e.event.data.get().contains("moderator")));
    let status = running.cx.status.to_json(NAME, "mongodb");
    assert_eq!(status["skipped"], 1);
    assert_eq!(status["events"], 4);
    assert_eq!(
        h.checkpoint().unwrap(),
        encode_checkpoint(&StartAt::ResumeAfter(token(&feed[4])))
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn updates_without_a_document_carry_the_key_and_the_updated_fields() {
    let h = Harness::new(
        mongo_config("full_document = \"default\""),
        mapping(
            r#"
channel = "posts:{doc._id}"
include = ["_id", "likes", "lastLikedBy"]
"#,
        ),
    );
    let running = h.start();
    h.wait(|h| async move { h.server.opens().len() == 1 }).await;
    h.server.push(changes("update_without_full_document.json"));
    let events = h.events(1).await;
    assert_eq!(events[0].event.channel, "posts:6560a1f1c2d3e4f5a6b7c8d9");
    assert_eq!(events[0].event.kind, "update");
    assert_eq!(
        data(&events[0]),
        json!({"_id": "6560a1f1c2d3e4f5a6b7c8d9", "likes": 2, "lastLikedBy": "u3"})
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_restart_resumes_after_the_persisted_token_without_duplicates() {
    let h = Harness::new(mongo_config(""), feed_mapping());
    let feed = changes("feed_changes.json");
    let running = h.start();
    h.wait(|h| async move { h.server.opens().len() == 1 }).await;
    // The first start saved where "now" was, before any change.
    assert!(h.checkpoint().is_some_and(|c| c.contains("resume_after")));
    h.server.push(feed[..2].to_vec());
    h.events(2).await;
    running.stop().await.unwrap();
    assert_eq!(
        h.checkpoint().unwrap(),
        encode_checkpoint(&StartAt::ResumeAfter(token(&feed[1])))
    );

    // A change while the gateway is down is not lost.
    h.server.push(feed[2..3].to_vec());
    let running = h.start();
    let events = h.events(3).await;
    assert_eq!(events[2].event.kind, "post.replace");
    assert_eq!(h.server.opens()[1], StartAt::ResumeAfter(token(&feed[1])));
    running.stop().await.unwrap();

    // A crash after an append but before its checkpoint: the changes come again and their
    // keys (digests of the resume tokens) keep them from being appended twice.
    h.set_checkpoint(&StartAt::ResumeAfter(token(&feed[0])));
    let running = h.start();
    let done = encode_checkpoint(&StartAt::ResumeAfter(token(&feed[2])));
    h.wait(|h| {
        let done = done.clone();
        async move { h.checkpoint() == Some(done) }
    })
    .await;
    assert_eq!(h.all().await.len(), 3, "no duplicate");
    assert_eq!(h.server.opens()[2], StartAt::ResumeAfter(token(&feed[0])));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_drop_sends_a_reset_and_the_stream_restarts_after_the_invalidate() {
    let h = Harness::new(
        mongo_config("reset_channels = [\"feeds:reset\", \"admin:resets\"]"),
        feed_mapping(),
    );
    let running = h.start();
    h.wait(|h| async move { h.server.opens().len() == 1 }).await;
    let recorded = changes("drop_invalidate_recreate.json");
    // insert, drop, invalidate — then, in the collection created again, an insert.
    h.server.push(recorded.clone());
    let events = h.events(4).await;
    assert_eq!(events[0].event.kind, "post.insert");
    for (e, channel) in events[1..3].iter().zip(["feeds:reset", "admin:resets"]) {
        assert_eq!(e.event.kind, "source.reset");
        assert_eq!(e.event.channel, channel);
        assert_eq!(
            data(e),
            json!({"source": NAME, "reason": "drop", "namespace": "social.posts", "to": null})
        );
    }
    assert_eq!(data(&events[3])["text"], "first post in the new collection");
    assert_eq!(
        h.server.opens(),
        vec![StartAt::Now, StartAt::StartAfter(token(&recorded[2]))]
    );
    assert_eq!(
        h.checkpoint().unwrap(),
        encode_checkpoint(&StartAt::ResumeAfter(token(&recorded[3])))
    );
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_rename_is_a_reset_and_a_restart_after_the_invalidate() {
    let h = Harness::new(
        mongo_config("reset_channels = [\"feeds:reset\"]"),
        feed_mapping(),
    );
    let running = h.start();
    h.wait(|h| async move { h.server.opens().len() == 1 }).await;
    let recorded = changes("rename_invalidate.json");
    h.server.push(recorded.clone());
    h.wait(|h| async move { h.server.opens().len() == 2 }).await;
    let events = h.events(1).await;
    assert_eq!(
        data(&events[0]),
        json!({"source": NAME, "reason": "rename", "namespace": "social.posts", "to": "social.posts_archive_2023"})
    );
    assert_eq!(
        h.server.opens()[1],
        StartAt::StartAfter(token(&recorded[1]))
    );
    // Once is enough: the invalidate after the rename sends no second reset.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.all().await.len(), 1);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn history_lost_sends_a_reset_reports_the_error_and_restarts_from_now() {
    let h = Harness::new(
        mongo_config("reset_channels = [\"feeds:reset\"]"),
        feed_mapping(),
    );
    let feed = changes("feed_changes.json");
    h.server.push(feed[..3].to_vec());
    // The oplog rolled over: the checkpoint's change is gone.
    h.server.lock().oldest = 2;
    h.set_checkpoint(&StartAt::ResumeAfter(token(&feed[0])));
    let (result, _) = h.run_to_end().await;
    let Err(SourceError::Recoverable(message)) = result else {
        panic!("expected a recoverable error, got {result:?}")
    };
    assert!(message.contains("history lost"), "{message}");
    assert!(message.contains("MISSED"), "{message}");
    assert!(message.contains("ChangeStreamHistoryLost"), "{message}");
    let events = h.events(1).await;
    assert_eq!(events[0].event.channel, "feeds:reset");
    assert_eq!(data(&events[0])["reason"], "history_lost");
    assert_eq!(h.checkpoint().unwrap(), encode_checkpoint(&StartAt::Now));

    // The supervisor restarts it: from now on, changes flow again.
    let running = h.start();
    h.wait(|h| async move { h.server.opens().len() == 2 }).await;
    assert_eq!(h.server.opens()[1], StartAt::Now);
    h.server.push(feed[4..5].to_vec());
    let events = h.events(2).await;
    assert_eq!(events[1].event.kind, "post.delete");
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn transient_errors_reconnect_from_the_checkpoint_with_backoff() {
    let h = Harness::new(mongo_config(""), feed_mapping());
    let feed = changes("feed_changes.json");
    {
        let mut s = h.server.lock();
        s.open_failures = VecDeque::from([
            DriverError::transient("connection refused"),
            server_error("interrupted_at_shutdown"),
            DriverError::transient("no server available: server selection timeout"),
        ]);
        // The stream that opens returns one change, then the connection breaks.
        s.mid_stream = VecDeque::from([(1, DriverError::transient("connection reset by peer"))]);
    }
    let started = tokio::time::Instant::now();
    let running = h.start();
    h.wait(|h| async move { h.server.opens().len() == 4 }).await;
    h.server.push(feed[..2].to_vec());
    let events = h.events(2).await;
    assert_eq!(events[0].event.kind, "post.insert");
    assert_eq!(events[1].event.kind, "post.update");
    let opens = h.server.opens();
    assert_eq!(opens.len(), 5, "{opens:?}");
    assert!(matches!(opens[3], StartAt::Now));
    assert_eq!(opens[4], StartAt::ResumeAfter(token(&feed[0])));
    assert_eq!(running.cx.status.to_json(NAME, "mongodb")["restarts"], 4);
    // Jittered exponential backoff: at least 100 + 200 + 400 ms before the stream opened,
    // and 100 ms more after the reset (a delivered change resets the count).
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    running.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn persistent_failures_go_to_the_supervisor_and_fatal_ones_stop_the_source() {
    let h = Harness::new(mongo_config(""), feed_mapping());
    h.server.lock().open_failures = (0..10)
        .map(|_| DriverError::transient("connection refused"))
        .collect();
    let (result, cx) = h.run_to_end().await;
    match result {
        Err(SourceError::Recoverable(m)) => assert!(m.contains("after 5 reconnects"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.server.opens().len(), 6);
    assert_eq!(cx.status.to_json(NAME, "mongodb")["restarts"], 5);

    let h = Harness::new(mongo_config(""), feed_mapping());
    h.server.lock().open_failures = VecDeque::from([server_error("unauthorized")]);
    let (result, _) = h.run_to_end().await;
    match result {
        Err(SourceError::Fatal(m)) => assert!(m.contains("Unauthorized"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.server.opens().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_stream_checkpoints_the_post_batch_resume_token() {
    let h = Harness::new(mongo_config("idle_checkpoint_ms = 1000"), feed_mapping());
    let running = h.start();
    h.wait(|h| async move { h.checkpoint().is_some() }).await;
    let first = h.checkpoint().unwrap();
    // Time passes on the cluster; nothing happens in the collection.
    h.server.tick();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = h.checkpoint().unwrap();
    assert_ne!(first, later, "the idle token was saved");
    running.stop().await.unwrap();
    // A restart resumes from that token and misses nothing after it.
    let running = h.start();
    h.wait(|h| async move { h.server.opens().len() == 2 }).await;
    assert!(matches!(h.server.opens()[1], StartAt::ResumeAfter(_)));
    assert_eq!(
        encode_checkpoint(&h.server.opens()[1]),
        later,
        "resumed from the idle token"
    );
    h.server.push(changes("feed_changes.json")[..1].to_vec());
    h.events(1).await;
    running.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The real driver, without a server

#[tokio::test]
async fn the_real_driver_reports_an_unreachable_server_as_transient_and_a_bad_url_as_fatal() {
    use ssegate::source::mongodb::{classify, ErrorClass, MongoDriver};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("mongodb://127.0.0.1:{port}/?replicaSet=rs0&serverSelectionTimeoutMS=300");
    let cfg = mongo_config("");
    let driver = MongoDriver::connect(&url, cfg.watch_spec().unwrap())
        .await
        .expect("the client connects lazily");
    let e = match driver.open(&StartAt::Now).await {
        Err(e) => e,
        Ok(_) => panic!("nothing listens on port {port}"),
    };
    assert_eq!(classify(&e), ErrorClass::Transient, "{e}");

    let h = Harness::new(
        MongoSourceConfig {
            url: "mongodb://127.0.0.1:notaport/".into(),
            ..cfg
        },
        feed_mapping(),
    );
    let (cx, _stop) = h.context();
    let result = MongoSource::new(h.cfg.clone()).run(&cx).await;
    assert!(matches!(result, Err(SourceError::Fatal(_))), "{result:?}");
}

// ---------------------------------------------------------------------------------------
// A real replica set

#[tokio::test]
async fn a_real_replica_set_delivers_inserts_updates_and_deletes_to_sse_clients() {
    let Ok(uri) = std::env::var("SSEGATE_TEST_MONGODB_URI") else {
        eprintln!("skipped: SSEGATE_TEST_MONGODB_URI not set");
        println!("skipped: SSEGATE_TEST_MONGODB_URI not set");
        return;
    };
    use common::{bearer, envelope, token_with, Server, Sse};
    let db = format!(
        "ssegate_test_{}_{}",
        std::process::id(),
        ssegate::time::now_ms()
    );
    let config = format!(
        r#"
[[sources]]
name = "posts"
type = "mongodb"
url = {uri:?}
database = "{db}"
collection = "posts"
channel = "posts:{{doc._id}}"
event_type = "post.{{op}}"
exclude = ["secret"]
"#
    );
    let server = Server::start_with_config(&config, &[]);
    let admin = token_with("admin", &[], &[], true, 3600);
    // Running and checkpointed: every change from here on is captured.
    let mut ready = false;
    for _ in 0..300 {
        let (_, _, status) =
            common::get(&format!("{}/v1/status", server.url), &[bearer(&admin)]).await;
        let s = &status["sources"][0];
        if s["state"] == "running" && !s["checkpoint"].is_null() {
            ready = true;
            break;
        }
        assert_ne!(s["state"], "failed", "{status}\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the source did not start:\n{}", server.log_text());
    let sub = token_with("u1", &["posts:*"], &[], false, 3600);
    let (mut sse, _) = Sse::open(&server.stream_url(&["posts:p1"]), &[bearer(&sub)]).await;

    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let coll = client.database(&db).collection::<Document>("posts");
    coll.insert_one(doc! { "_id": "p1", "text": "a", "secret": "s" })
        .await
        .unwrap();
    coll.update_one(doc! { "_id": "p1" }, doc! { "$set": { "text": "b" } })
        .await
        .unwrap();
    coll.delete_one(doc! { "_id": "p1" }).await.unwrap();
    let got = sse.take(3, Duration::from_secs(20)).await;
    let kinds: Vec<&str> = got.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["post.insert", "post.update", "post.delete"]);
    assert_eq!(envelope(&got[0])["data"], json!({"_id": "p1", "text": "a"}));
    assert_eq!(envelope(&got[1])["data"], json!({"_id": "p1", "text": "b"}));
    assert_eq!(envelope(&got[2])["data"], json!({"_id": "p1"}));
    client.database(&db).drop().await.unwrap();
}
