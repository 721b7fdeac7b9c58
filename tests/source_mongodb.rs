//! The MongoDB source through the official `mongodb` driver, end to end: a real `ssegate
//! serve` process with a `[[sources]] type = "mongodb"` whose `url` points at a MongoDB
//! wire-protocol replica-set simulator (tests/engines/mongo_sim.rs) on a free port, and real
//! clients reading the events (`/v1/poll`, SSE). The simulator replays recorded change events
//! (tests/fixtures/mongodb/: documents as the server sends them, in canonical Extended JSON)
//! with the server's resume rules and error replies, and counts what the driver sends.
//!
//! And, when `SSEGATE_TEST_MONGODB_URI` names a replica set, the same driver against a real
//! replica set.

mod common;
mod engines;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{bearer, envelope, token_with, Server, Sse};
use engines::mongo_sim::{Fault, MongoSim};
use futures::StreamExt;
use mongodb::bson::{doc, Bson, Document};
use serde_json::{json, Value};
use ssegate::log::memory::MemoryLog;
use ssegate::log::{EventLog, LogOptions};
use ssegate::source::mongodb::{encode_checkpoint, MongoSource, MongoSourceConfig, StartAt};
use ssegate::source::{Mapping, Source, SourceContext, SourceError};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------
// Fixtures

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mongodb")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("JSON")
}

fn to_document(v: Value) -> Document {
    match Bson::try_from(v).expect("Extended JSON") {
        Bson::Document(d) => d,
        other => panic!("not a document: {other}"),
    }
}

/// The change events of a fixture file, as BSON documents.
fn changes(name: &str) -> Vec<Document> {
    let Value::Array(items) = fixture(name) else {
        panic!("{name} holds a list")
    };
    items.into_iter().map(to_document).collect()
}

/// A recorded server error reply (errors.json), as the simulator sends it.
fn server_error(name: &str) -> Fault {
    let reply = fixture("errors.json")[name].clone();
    assert!(reply.is_object(), "no error {name:?} in errors.json");
    Fault::Reply(to_document(reply))
}

fn token(d: &Document) -> Document {
    d.get_document("_id").unwrap().clone()
}

// ---------------------------------------------------------------------------------------
// Harness: the simulator, a gateway watching `social.posts` on it, and readers.

const NAME: &str = "posts";
/// How long anything may take on a loaded 2-core machine before a test gives up.
const PATIENCE: Duration = Duration::from_secs(45);

struct Gate {
    sim: MongoSim,
    server: Server,
    admin: String,
}

fn gateway_config(uri: &str, source: &str, mapping: &str) -> String {
    format!(
        r#"
[[sources]]
name = "{NAME}"
type = "mongodb"
url = "{uri}"
database = "social"
collection = "posts"
{source}
{mapping}
"#
    )
}

const FEED_MAPPING: &str = r#"
channel = "feeds:{doc.feedId}"
event_type = "post.{op}"
users = "{doc.audience}"
exclude = ["internalNotes"]
"#;

impl Gate {
    /// A simulator and a gateway whose source watches it; returns once the stream is open
    /// and its starting point checkpointed.
    async fn start(source: &str, mapping: &str) -> Gate {
        Self::start_with(source, mapping, &[], |_| {}).await
    }

    async fn start_with(
        source: &str,
        mapping: &str,
        env: &[(&str, &str)],
        before: impl FnOnce(&MongoSim),
    ) -> Gate {
        let sim = MongoSim::start();
        before(&sim);
        let server = Server::start_with_config(&gateway_config(&sim.uri(), source, mapping), env);
        Gate {
            sim,
            server,
            admin: token_with("admin", &[], &[], true, 3600),
        }
    }

    async fn status(&self) -> Value {
        let (code, _, body) = common::get(
            &format!("{}/v1/status", self.server.url),
            &[bearer(&self.admin)],
        )
        .await;
        assert_eq!(code, 200, "{body}");
        body["sources"][0].clone()
    }

    /// Waits until the source's status satisfies `ok`.
    async fn wait_status(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let status = self.status().await;
            if ok(&status) {
                return status;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; status: {status}\nsimulator: {:?}\nstages: {:?}\nserver log:\n{}",
                    self.sim.counters(),
                    self.sim.stages(),
                    self.server.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the source runs with a checkpoint (its stream is open).
    async fn running(&self) -> Value {
        self.wait_status("a running source with a checkpoint", |s| {
            s["state"] == "running" && !s["checkpoint"].is_null()
        })
        .await
    }

    /// Waits until the source's checkpoint is `cp`.
    async fn checkpointed(&self, cp: &StartAt) {
        let want = encode_checkpoint(cp);
        self.wait_status(&format!("checkpoint {want}"), |s| {
            s["checkpoint"] == want.as_str()
        })
        .await;
    }

    /// Waits until the simulator saw `n` change-stream aggregates.
    async fn aggregates(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.sim.stages().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} aggregates expected, got {:?}\nserver log:\n{}",
                self.sim.stages(),
                self.server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every event of the log `user` may see on `channels`, by `/v1/poll` from the start.
    async fn events_for(&self, user: &str, channels: &[&str]) -> Vec<Value> {
        let token = token_with(user, &["**"], &[], false, 3600);
        let mut out = Vec::new();
        let mut from = "0".to_owned();
        loop {
            let q: Vec<String> = channels.iter().map(|c| format!("channel={c}")).collect();
            let (code, _, body) = common::get(
                &format!(
                    "{}/v1/poll?{}&last_event_id={from}&timeout_ms=0",
                    self.server.url,
                    q.join("&")
                ),
                &[bearer(&token)],
            )
            .await;
            assert_eq!(code, 200, "{body}");
            let events = body["events"].as_array().cloned().unwrap_or_default();
            let next = body["last_event_id"].as_str().unwrap_or(&from).to_owned();
            if events.is_empty() || next == from {
                out.extend(events);
                return out;
            }
            out.extend(events);
            from = next;
        }
    }

    /// Waits until `user` sees exactly `n` events on `channels` (and gives them).
    async fn wait_events(&self, user: &str, channels: &[&str], n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let events = self.events_for(user, channels).await;
            if events.len() >= n {
                assert_eq!(events.len(), n, "exactly {n} events: {events:#?}");
                return events;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{n} events expected for {user}, got {events:#?}\nstatus: {}\nsimulator: {:?}\nserver log:\n{}",
                    self.status().await,
                    self.sim.counters(),
                    self.server.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes the source's checkpoint file (the gateway must not be running).
    fn set_checkpoint(&self, start: &StartAt) {
        ssegate::source::CheckpointStore::new(self.server.dir.join("data/sources"))
            .save(NAME, &encode_checkpoint(start))
            .unwrap();
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The `$changeStream` stage's resume option, as a checkpoint would say it.
fn stage_start(stage: &Document) -> StartAt {
    if let Ok(t) = stage.get_document("resumeAfter") {
        return StartAt::ResumeAfter(t.clone());
    }
    if let Ok(t) = stage.get_document("startAfter") {
        return StartAt::StartAfter(t.clone());
    }
    StartAt::Now
}

fn starts(sim: &MongoSim) -> Vec<StartAt> {
    sim.stages().iter().map(stage_start).collect()
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn insert_update_replace_delete_become_events_with_channels_users_and_projection() {
    let gate = Gate::start(
        "full_document_before_change = \"whenAvailable\"",
        FEED_MAPPING,
    )
    .await;
    gate.running().await;
    // What the driver asked the server for.
    let stage = &gate.sim.stages()[0];
    assert_eq!(stage.get_str("fullDocument"), Ok("updateLookup"), "{stage}");
    assert_eq!(
        stage.get_str("fullDocumentBeforeChange"),
        Ok("whenAvailable"),
        "{stage}"
    );
    let feed = changes("feed_changes.json");
    gate.sim.push(feed.clone());
    // Five changes; the delete without a pre-image has no feedId: skipped, not misrouted.
    gate.checkpointed(&StartAt::ResumeAfter(token(&feed[4])))
        .await;
    let seen_by_u2 = gate.wait_events("u2", &["feeds:*"], 3).await;
    assert_eq!(
        kinds(&seen_by_u2),
        ["post.insert", "post.update", "post.replace"]
    );
    assert!(seen_by_u2.iter().all(|e| e["channel"] == "feeds:f1"));
    assert_eq!(
        seen_by_u2[0]["data"],
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
    assert_eq!(seen_by_u2[1]["data"]["likes"], 1);
    assert_eq!(seen_by_u2[2]["data"]["text"], "hello again (edited)");
    assert_eq!(gate.events_for("u3", &["feeds:*"]).await.len(), 3);
    // The delete of post B is routed by its pre-image, to its audience only.
    let seen_by_u4 = gate.wait_events("u4", &["feeds:*"], 1).await;
    assert_eq!(seen_by_u4[0]["type"], "post.delete");
    assert_eq!(seen_by_u4[0]["channel"], "feeds:f2");
    assert_eq!(seen_by_u4[0]["data"]["text"], "old post");
    assert!(gate.events_for("u9", &["feeds:*"]).await.is_empty());
    assert!(seen_by_u2
        .iter()
        .chain(&seen_by_u4)
        .all(|e| !e["data"].to_string().contains("moderator")));
    let status = gate.status().await;
    assert_eq!(status["skipped"], 1, "{status}");
    assert_eq!(status["events"], 4, "{status}");
    assert_eq!(status["restarts"], 0, "{status}");
    let counters = gate.sim.counters();
    assert_eq!(counters.aggregates(), 1, "{counters:?}");
    assert!(counters.get_mores >= 1, "{counters:?}");
    assert!(counters.unknown.is_empty(), "{counters:?}");

    // Stopping the source closes its stream: the driver kills the server's cursor.
    assert_eq!(gate.sim.open_cursors(), 1);
    let (code, _, body) = common::call(
        reqwest::Method::POST,
        &format!("{}/v1/sources/{NAME}/stop", gate.server.url),
        &[bearer(&gate.admin)],
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    gate.wait_status("stopped", |s| s["state"] == "stopped")
        .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while gate.sim.open_cursors() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cursor was not killed: {:?}",
            gate.sim.counters()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gate.sim.counters().kill_cursors >= 1);
}

#[tokio::test]
async fn updates_without_a_document_carry_the_key_and_the_updated_fields() {
    let gate = Gate::start(
        "full_document = \"default\"",
        r#"
channel = "posts:{doc._id}"
include = ["_id", "likes", "lastLikedBy"]
"#,
    )
    .await;
    gate.running().await;
    // Without `fullDocument` the driver asks for none, and the server sends none — even for
    // the recorded update that had one.
    assert!(!gate.sim.stages()[0].contains_key("fullDocument"));
    let mut updates = changes("feed_changes.json")[1..2].to_vec();
    updates.extend(changes("update_without_full_document.json"));
    gate.sim.push(updates);
    let events = gate.wait_events("anyone", &["posts:*"], 2).await;
    for e in &events {
        assert_eq!(e["channel"], "posts:6560a1f1c2d3e4f5a6b7c8d9");
        assert_eq!(e["type"], "update");
    }
    assert_eq!(
        events[0]["data"],
        json!({"_id": "6560a1f1c2d3e4f5a6b7c8d9", "likes": 1})
    );
    assert_eq!(
        events[1]["data"],
        json!({"_id": "6560a1f1c2d3e4f5a6b7c8d9", "likes": 2, "lastLikedBy": "u3"})
    );
}

#[tokio::test]
async fn a_restart_resumes_after_the_persisted_token_without_duplicates() {
    let mut gate = Gate::start("", FEED_MAPPING).await;
    let feed = changes("feed_changes.json");
    // The first start saved where "now" was, before any change.
    let status = gate.running().await;
    assert!(status["checkpoint"]
        .as_str()
        .is_some_and(|c| c.contains("resume_after")));
    gate.sim.push(feed[..2].to_vec());
    gate.wait_events("u2", &["feeds:*"], 2).await;
    gate.checkpointed(&StartAt::ResumeAfter(token(&feed[1])))
        .await;

    // kill -9; a change while the gateway is down is not lost: the new process resumes
    // after the persisted token.
    gate.server.kill9();
    gate.sim.push(feed[2..3].to_vec());
    gate.server.kill9_and_restart();
    let events = gate.wait_events("u2", &["feeds:*"], 3).await;
    assert_eq!(events[2]["type"], "post.replace");
    gate.aggregates(2).await;
    assert_eq!(starts(&gate.sim)[1], StartAt::ResumeAfter(token(&feed[1])));
    gate.checkpointed(&StartAt::ResumeAfter(token(&feed[2])))
        .await;

    // A crash after an append but before its checkpoint: the changes come again and their
    // keys (digests of the resume tokens) keep them from being appended twice.
    gate.server.kill9();
    gate.set_checkpoint(&StartAt::ResumeAfter(token(&feed[0])));
    gate.server.kill9_and_restart();
    gate.aggregates(3).await;
    assert_eq!(starts(&gate.sim)[2], StartAt::ResumeAfter(token(&feed[0])));
    gate.checkpointed(&StartAt::ResumeAfter(token(&feed[2])))
        .await;
    assert_eq!(
        gate.events_for("u2", &["feeds:*"]).await.len(),
        3,
        "no duplicate"
    );
    // And changes after that go on.
    gate.sim.push(feed[4..5].to_vec());
    gate.checkpointed(&StartAt::ResumeAfter(token(&feed[4])))
        .await;
    assert_eq!(gate.events_for("u2", &["feeds:*"]).await.len(), 3);
}

#[tokio::test]
async fn a_drop_sends_a_reset_and_the_stream_restarts_after_the_invalidate() {
    let gate = Gate::start(
        "reset_channels = [\"feeds:reset\", \"admin:resets\"]",
        FEED_MAPPING,
    )
    .await;
    gate.running().await;
    let recorded = changes("drop_invalidate_recreate.json");
    // insert, drop, invalidate — then, in the collection created again, an insert.
    gate.sim.push(recorded.clone());
    let events = gate.wait_events("u2", &["feeds:*", "admin:*"], 4).await;
    assert_eq!(events[0]["type"], "post.insert");
    for (e, channel) in events[1..3].iter().zip(["feeds:reset", "admin:resets"]) {
        assert_eq!(e["type"], "source.reset");
        assert_eq!(e["channel"], channel);
        assert_eq!(
            e["data"],
            json!({"source": NAME, "reason": "drop", "namespace": "social.posts", "to": null})
        );
    }
    assert_eq!(
        events[3]["data"]["text"],
        "first post in the new collection"
    );
    assert_eq!(
        starts(&gate.sim),
        vec![StartAt::Now, StartAt::StartAfter(token(&recorded[2]))]
    );
    gate.checkpointed(&StartAt::ResumeAfter(token(&recorded[3])))
        .await;
}

#[tokio::test]
async fn a_rename_is_a_reset_and_a_restart_after_the_invalidate() {
    let gate = Gate::start("reset_channels = [\"feeds:reset\"]", FEED_MAPPING).await;
    gate.running().await;
    let recorded = changes("rename_invalidate.json");
    gate.sim.push(recorded.clone());
    gate.aggregates(2).await;
    assert_eq!(
        starts(&gate.sim)[1],
        StartAt::StartAfter(token(&recorded[1]))
    );
    // The stream goes on after the invalidate…
    let feed = changes("feed_changes.json");
    gate.sim.push(feed[..1].to_vec());
    let events = gate.wait_events("u2", &["feeds:*"], 2).await;
    assert_eq!(
        events[0]["data"],
        json!({"source": NAME, "reason": "rename", "namespace": "social.posts", "to": "social.posts_archive_2023"})
    );
    // …and once is enough: the invalidate after the rename sent no second reset.
    assert_eq!(events[1]["type"], "post.insert");
}

#[tokio::test]
async fn history_lost_sends_a_reset_reports_the_error_and_restarts_from_now() {
    let mut gate = Gate::start(
        "reset_channels = [\"feeds:reset\"]\nfull_document_before_change = \"whenAvailable\"",
        FEED_MAPPING,
    )
    .await;
    gate.running().await;
    let feed = changes("feed_changes.json");
    gate.server.kill9();
    gate.sim.push(feed[..3].to_vec());
    // The oplog rolled over while the gateway was down: the checkpoint's change is gone.
    gate.sim.roll_oplog(2);
    gate.set_checkpoint(&StartAt::ResumeAfter(token(&feed[0])));
    gate.server.kill9_and_restart();
    let events = gate.wait_events("u2", &["feeds:*"], 1).await;
    assert_eq!(events[0]["channel"], "feeds:reset");
    assert_eq!(events[0]["data"]["reason"], "history_lost");
    // The source says so, and the supervisor restarts it from now.
    let status = gate
        .wait_status("the history_lost error reported", |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("history lost"))
        })
        .await;
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("MISSED"), "{error}");
    assert!(error.contains("ChangeStreamHistoryLost"), "{error}");
    assert!(gate.server.log_text().contains("MISSED"));
    gate.aggregates(3).await;
    let first = starts(&gate.sim);
    assert_eq!(first[1], StartAt::ResumeAfter(token(&feed[0])));
    assert_eq!(first[2], StartAt::Now);
    gate.running().await;
    // From now on, changes flow again.
    gate.sim.push(feed[4..5].to_vec());
    let events = gate.wait_events("u4", &["feeds:*"], 2).await;
    assert_eq!(events[1]["type"], "post.delete");
    assert_eq!(gate.events_for("u2", &["feeds:*"]).await.len(), 1);
    gate.checkpointed(&StartAt::ResumeAfter(token(&feed[4])))
        .await;

    // The stream falls behind the oplog while it runs: the getMore fails with 286 (the
    // driver does not resume that), the source reopens from its checkpoint, which the oplog
    // no longer has either: a second reset, and from now again.
    let aggregates = gate.sim.stages().len();
    gate.sim.roll_oplog(4);
    gate.sim.fail_get_more(server_error("history_lost"));
    let resets = gate.wait_events("u2", &["feeds:*"], 2).await;
    assert_eq!(resets[1]["data"]["reason"], "history_lost");
    gate.aggregates(aggregates + 2).await;
    let later = starts(&gate.sim);
    assert_eq!(later[aggregates], StartAt::ResumeAfter(token(&feed[4])));
    assert_eq!(later.last().unwrap(), &StartAt::Now);
}

#[tokio::test]
async fn transient_errors_are_resumed_by_the_driver_then_by_the_source_with_backoff() {
    let feed = changes("feed_changes.json");
    // The first aggregate meets a server shutting down: the driver retries it once by itself
    // (a retryable read); the source never sees the error.
    let gate = Gate::start_with("", FEED_MAPPING, &[], |sim| {
        sim.fail_aggregate(server_error("interrupted_at_shutdown"))
    })
    .await;
    gate.running().await;
    assert_eq!(gate.sim.stages().len(), 2);
    assert_eq!(gate.status().await["restarts"], 0);

    gate.sim.push(feed[..1].to_vec());
    gate.checkpointed(&StartAt::ResumeAfter(token(&feed[0])))
        .await;
    // The connection drops in the middle of a getMore, then a getMore fails with a
    // resumable error: the driver resumes after the last change by itself, each time.
    gate.sim.fail_get_more(Fault::Drop);
    gate.aggregates(3).await;
    gate.sim.fail_get_more(server_error("host_unreachable"));
    gate.aggregates(4).await;
    let starts_now = starts(&gate.sim);
    assert_eq!(starts_now[2], StartAt::ResumeAfter(token(&feed[0])));
    assert_eq!(starts_now[3], StartAt::ResumeAfter(token(&feed[0])));
    gate.sim.push(feed[1..2].to_vec());
    gate.wait_events("u2", &["feeds:*"], 2).await;
    assert_eq!(gate.status().await["restarts"], 0);

    // A getMore error the driver does not resume (no label), and the driver's own resume
    // fails (its connection drops twice: the aggregate and its retry): the source reopens
    // from its checkpoint after a backoff.
    gate.sim.fail_get_more(server_error("interrupted"));
    gate.sim.fail_aggregate(Fault::Drop);
    gate.sim.fail_aggregate(Fault::Drop);
    let status = gate
        .wait_status("a reconnect by the source", |s| {
            s["restarts"].as_u64() >= Some(1) && s["state"] == "running"
        })
        .await;
    assert!(gate
        .server
        .log_text()
        .contains("reopening from the checkpoint"));
    gate.sim.push(feed[2..3].to_vec());
    let events = gate.wait_events("u2", &["feeds:*"], 3).await;
    assert_eq!(
        kinds(&events),
        ["post.insert", "post.update", "post.replace"]
    );
    assert_eq!(gate.sim.pending_faults(), 0);
    // Every reopening started after the last change appended.
    let stages = starts(&gate.sim);
    assert_eq!(
        stages.last().unwrap(),
        &StartAt::ResumeAfter(token(&feed[1])),
        "{stages:?}"
    );
    println!(
        "restarts {}; simulator {:?}",
        status["restarts"],
        gate.sim.counters()
    );
}

#[tokio::test]
async fn persistent_failures_go_to_the_supervisor_and_fatal_ones_stop_the_source() {
    // Every aggregate fails: after 5 reconnects of its own the source hands the error to the
    // supervisor (backoff), which keeps restarting it; once the server answers, it runs.
    let gate = Gate::start_with("", FEED_MAPPING, &[], |sim| {
        for _ in 0..40 {
            sim.fail_aggregate(server_error("interrupted_at_shutdown"));
        }
    })
    .await;
    let status = gate
        .wait_status("backoff after 5 reconnects", |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("after 5 reconnects"))
        })
        .await;
    assert!(status["restarts"].as_u64() >= Some(5), "{status}");
    // The server recovers.
    gate.sim.clear_faults();
    gate.running().await;
    let feed = changes("feed_changes.json");
    gate.sim.push(feed[..1].to_vec());
    gate.wait_events("u2", &["feeds:*"], 1).await;

    // Not authorized: no retry, the source stops.
    let gate = Gate::start_with("", FEED_MAPPING, &[], |sim| {
        sim.fail_aggregate(server_error("unauthorized"))
    })
    .await;
    let status = gate.wait_status("failed", |s| s["state"] == "failed").await;
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("Unauthorized"),
        "{status}"
    );
    assert_eq!(gate.sim.stages().len(), 1);

    // ChangeStreamFatalError in the middle of the stream: the driver does not resume, the
    // source stops.
    let gate = Gate::start("", FEED_MAPPING).await;
    gate.running().await;
    gate.sim.fail_get_more(server_error("change_stream_fatal"));
    let status = gate.wait_status("failed", |s| s["state"] == "failed").await;
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("ChangeStreamFatalError"),
        "{status}"
    );
    assert_eq!(gate.sim.stages().len(), 1);
}

#[tokio::test]
async fn a_quiet_stream_checkpoints_the_post_batch_resume_token() {
    let mut gate = Gate::start("idle_checkpoint_ms = 200", FEED_MAPPING).await;
    let first = gate.running().await["checkpoint"].clone();
    // Time passes on the cluster; nothing happens in the collection.
    gate.sim.tick();
    let later = gate
        .wait_status("a newer idle checkpoint", |s| {
            !s["checkpoint"].is_null() && s["checkpoint"] != first
        })
        .await["checkpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    // A restart resumes from that token and misses nothing after it.
    gate.server.kill9();
    gate.sim.push(changes("feed_changes.json")[..1].to_vec());
    gate.server.kill9_and_restart();
    gate.aggregates(2).await;
    assert_eq!(
        encode_checkpoint(&starts(&gate.sim)[1]),
        later,
        "resumed from the idle token"
    );
    gate.wait_events("u2", &["feeds:*"], 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_stream_serves_a_thousand_subscribers_over_many_channels() {
    const CHANNELS: usize = 100;
    const SUBSCRIBERS: usize = 1_000;
    const BATCHES: usize = 10;
    let env = [
        ("LIMITS__CONNECT_RATE_PER_IP", "1000000"),
        ("LIMITS__CONNECT_BURST_PER_IP", "1000000"),
        ("LIMITS__MAX_CONNECTIONS_PER_IP", "1000000"),
        ("LIMITS__MAX_OPEN_CONNECTIONS_PER_IP", "1000000"),
    ];
    let gate = Gate::start_with(
        "",
        "channel = \"feeds:{doc.feedId}\"\nevent_type = \"post.{op}\"",
        &env,
        |_| {},
    )
    .await;
    gate.running().await;
    let template = changes("feed_changes.json")[0].clone();
    let mut serial = 0u32;
    // `n` inserts per channel, each change with a token of its own.
    let mut inserts = |round: usize| -> Vec<Vec<Document>> {
        let all: Vec<Document> = (0..CHANNELS)
            .map(|c| {
                serial += 1;
                let mut d = template.clone();
                let id = mongodb::bson::oid::ObjectId::new();
                d.insert(
                    "_id",
                    doc! { "_data": format!("8265B0{serial:08X}2B022C0100296E5A1004") },
                );
                let full = d.get_document_mut("fullDocument").unwrap();
                full.insert("_id", id);
                full.insert("feedId", format!("c{c}"));
                full.insert("round", round as i32);
                d.insert("documentKey", doc! { "_id": id });
                d
            })
            .collect();
        all.chunks(CHANNELS / BATCHES).map(|c| c.to_vec()).collect()
    };
    // Pushes the batches one after the other, each once the previous one is in the log;
    // returns the getMores the simulator answered meanwhile and the time it took.
    let publish = |batches: Vec<Vec<Document>>| {
        let gate = &gate;
        async move {
            let before = gate.sim.counters().get_mores;
            let started = std::time::Instant::now();
            for batch in batches {
                let last = token(batch.last().unwrap());
                gate.sim.push(batch);
                gate.checkpointed(&StartAt::ResumeAfter(last)).await;
            }
            (gate.sim.counters().get_mores - before, started.elapsed())
        }
    };
    let subscriber = |i: usize| {
        let url = gate
            .server
            .stream_url(&[&format!("feeds:c{}", i % CHANNELS)]);
        async move {
            let t = token_with(&format!("s{i}"), &["feeds:*"], &[], false, 3600);
            Sse::open(&url, &[bearer(&t)]).await.0
        }
    };

    // One subscriber.
    let mut one = subscriber(0).await;
    let (get_mores_one, took_one) = publish(inserts(1)).await;
    let got = one.take(1, PATIENCE).await;
    assert_eq!(envelope(&got[0])["channel"], "feeds:c0");

    // A thousand subscribers, ten on each of a hundred channels.
    let mut sses: Vec<(usize, Sse)> = futures::stream::iter(0..SUBSCRIBERS)
        .map(|i| {
            let open = subscriber(i);
            async move { (i, open.await) }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let (get_mores_many, took_many) = publish(inserts(2)).await;
    let delivered: Vec<usize> = futures::stream::iter(sses.iter_mut())
        .map(|(i, sse)| async move {
            let got = sse.take(1, PATIENCE).await;
            let e = envelope(&got[0]);
            assert_eq!(e["channel"], format!("feeds:c{}", *i % CHANNELS));
            assert_eq!(e["data"]["feedId"], format!("c{}", *i % CHANNELS));
            assert_eq!(e["data"]["round"], 2);
            *i
        })
        .buffer_unordered(SUBSCRIBERS)
        .collect()
        .await;
    assert_eq!(delivered.len(), SUBSCRIBERS);

    let counters = gate.sim.counters();
    println!(
        "one subscriber: {get_mores_one} getMores in {took_one:?}; {SUBSCRIBERS} subscribers: \
         {get_mores_many} getMores in {took_many:?}; simulator: {counters:?}"
    );
    // One change stream for the collection, whatever the number of subscribers…
    assert_eq!(
        counters.change_streams.get("social.posts"),
        Some(&1),
        "{counters:?}"
    );
    assert_eq!(counters.aggregates(), 1, "{counters:?}");
    assert_eq!(gate.sim.open_cursors(), 1);
    // …over a connection or two of the driver's pool (and its monitor), not one per user…
    assert!(counters.connections <= 5, "{counters:?}");
    // …and getMores paced by the changes and the server's one-second await, not by the
    // subscribers: at most one per batch plus one per second of waiting (and one in flight).
    for (get_mores, took) in [(get_mores_one, took_one), (get_mores_many, took_many)] {
        let bound = BATCHES as u64 + took.as_secs() + 2;
        assert!(
            get_mores <= bound,
            "{get_mores} getMores in {took:?} (bound {bound})"
        );
    }
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
    let cfg: MongoSourceConfig = toml::from_str(
        "url = \"mongodb://db1/?replicaSet=rs0\"\ndatabase = \"social\"\ncollection = \"posts\"",
    )
    .unwrap();
    let driver = MongoDriver::connect(&url, cfg.watch_spec().unwrap())
        .await
        .expect("the client connects lazily");
    let e = match driver.open(&StartAt::Now).await {
        Err(e) => e,
        Ok(_) => panic!("nothing listens on port {port}"),
    };
    assert_eq!(classify(&e), ErrorClass::Transient, "{e}");

    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(LogOptions {
        retention_events: 100,
        retention_age_ms: 0,
        dedupe_window_ms: 600_000,
        file_cache_bytes: 0,
    }));
    let mapping: Mapping = toml::from_str(FEED_MAPPING).unwrap();
    let cx = SourceContext::new(
        NAME,
        mapping,
        log,
        dir.path().to_owned(),
        CancellationToken::new(),
    );
    let cfg = MongoSourceConfig {
        url: "mongodb://127.0.0.1:notaport/".into(),
        ..cfg
    };
    let result = MongoSource::new(cfg).run(&cx).await;
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

// ---------------------------------------------------------------------------------------
// The simulator itself

#[tokio::test]
async fn the_simulator_answers_a_legacy_handshake_refuses_unknown_commands_and_starts_at_an_operation_time(
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = MongoSim::start();
    // OP_QUERY `isMaster` on admin.$cmd, as old drivers open a connection.
    let mut query = Vec::new();
    query.extend(0i32.to_le_bytes());
    query.extend(b"admin.$cmd\0");
    query.extend(0i32.to_le_bytes());
    query.extend((-1i32).to_le_bytes());
    doc! { "isMaster": 1, "helloOk": true }
        .to_writer(&mut query)
        .unwrap();
    let mut message = Vec::new();
    message.extend(((16 + query.len()) as i32).to_le_bytes());
    message.extend(77i32.to_le_bytes());
    message.extend(0i32.to_le_bytes());
    message.extend(2004i32.to_le_bytes());
    message.extend(query);
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", sim.port()))
        .await
        .unwrap();
    conn.write_all(&message).await.unwrap();
    let mut header = [0u8; 16];
    conn.read_exact(&mut header).await.unwrap();
    let int = |i: usize| i32::from_le_bytes(header[i..i + 4].try_into().unwrap());
    assert_eq!(int(8), 77, "responseTo");
    assert_eq!(int(12), 1, "OP_REPLY");
    let mut body = vec![0u8; int(0) as usize - 16];
    conn.read_exact(&mut body).await.unwrap();
    assert_eq!(i32::from_le_bytes(body[16..20].try_into().unwrap()), 1);
    let reply = Document::from_reader(&body[20..]).unwrap();
    assert_eq!(reply.get_str("setName"), Ok("rs0"), "{reply}");
    assert_eq!(reply.get_bool("isWritablePrimary"), Ok(true));
    assert_eq!(
        reply.get_array("hosts").unwrap()[0],
        Bson::String(format!("127.0.0.1:{}", sim.port()))
    );

    // Through the driver: ping works, an unknown command gets the server's CommandNotFound.
    let client = mongodb::Client::with_uri_str(sim.uri()).await.unwrap();
    let db = client.database("social");
    db.run_command(doc! { "ping": 1 }).await.unwrap();
    let e = db.run_command(doc! { "frobnicate": 1 }).await.unwrap_err();
    match *e.kind {
        mongodb::error::ErrorKind::Command(ref c) => {
            assert_eq!(c.code, 59, "{c:?}");
            assert_eq!(c.code_name, "CommandNotFound");
        }
        ref other => panic!("{other:?}"),
    }
    assert_eq!(sim.counters().unknown, ["frobnicate"]);

    // startAtOperationTime (the source never sends it; the driver may, to resume a stream
    // that has no token yet): the first change at or after that cluster time.
    let feed = changes("feed_changes.json");
    sim.push(feed.clone());
    let at = feed[2].get_timestamp("clusterTime").unwrap();
    let mut stream = db
        .collection::<Document>("posts")
        .watch()
        .start_at_operation_time(at)
        .await
        .unwrap()
        .with_type::<Document>();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(token(&first), token(&feed[2]));
    assert_eq!(
        sim.stages()
            .last()
            .unwrap()
            .get_timestamp("startAtOperationTime"),
        Ok(at)
    );
    drop(stream);
    client.shutdown().await;
    assert_eq!(sim.counters().end_sessions, 1);
}
