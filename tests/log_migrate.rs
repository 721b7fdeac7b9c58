//! The first start of the segment log over a data directory of the redb log it replaces:
//! every event comes across with its id and content, the idempotency keys with their window,
//! `log.redb` is kept as `log.redb.migrated`, and it happens once.
//!
//! The data directory is `tests/fixtures/redb-v1` (written by the last release with the redb
//! log; see its README). Its keys were stored with a 100-year window and its events are
//! older than the default 7-day retention, so the server runs with the same window and no
//! age limit.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

const ENV: &[(&str, &str)] = &[
    ("LOG__DEDUPE_WINDOW_S", "3153600000"),
    ("LOG__RETENTION_AGE_S", "0"),
];

const READERS: [&str; 4] = ["nobody", "alice", "bob", "carol"];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redb-v1")
}

struct Expected {
    /// In id order.
    events: Vec<Value>,
    keys: BTreeMap<String, Vec<String>>,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(fixture().join("expected.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let events = doc["events"].as_array().unwrap().clone();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["id"], (i + 1).to_string(), "expected.json lists ids 1..N");
    }
    let keys = serde_json::from_value(doc["keys"].clone()).unwrap();
    Expected { events, keys }
}

/// The redb log's `last_seq` and number of events (the tables of ssegate up to 50a63f3).
fn redb_events(path: &Path) -> (u64, u64) {
    use redb::{ReadableTableMetadata, TableDefinition};
    const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    let db = redb::Database::open(path)
        .unwrap_or_else(|e| panic!("{} opens as a redb database: {e}", path.display()));
    let txn = db.begin_read().unwrap();
    let last = txn
        .open_table(META)
        .unwrap()
        .get("last_seq")
        .unwrap()
        .map_or(0, |v| v.value());
    (last, txn.open_table(EVENTS).unwrap().len().unwrap())
}

/// Whether `reader` receives `e` (events naming `users` reach only those users).
fn visible(e: &Value, reader: &str) -> bool {
    match e["users"].as_array() {
        None => true,
        Some(users) => users.iter().any(|u| u == reader),
    }
}

/// Reads `channels` from `Last-Event-ID: 0` as `reader` and checks it gets exactly `want`
/// (ids and envelopes), then nothing more.
async fn expect_history(server: &Server, reader: &str, channels: &[&str], want: &[&Value]) {
    let sub = token(reader, &["fx:**"], &[]);
    let (mut sse, _) = Sse::open(
        &server.stream_url(channels),
        &[bearer(&sub), last_event_id("0")],
    )
    .await;
    let got = sse.take(want.len(), T).await;
    for (e, w) in got.iter().zip(want) {
        let env = envelope(e);
        assert_eq!(
            e.id,
            w["id"].as_str().unwrap(),
            "{reader} on {channels:?}: ids in order"
        );
        assert_eq!(e.event, w["type"].as_str().unwrap(), "event {}", e.id);
        for field in ["id", "channel", "type", "time", "data"] {
            assert_eq!(
                env[field], w[field],
                "{reader} on {channels:?}: event {} field {field}: got {env}, want {w}",
                e.id
            );
        }
    }
    sse.expect_quiet(Duration::from_millis(300)).await;
}

/// The fixture's publish of `key`, rebuilt from the events it stored.
fn keyed_body(exp: &Expected, key: &str) -> Value {
    let evs: Vec<&Value> = exp.keys[key]
        .iter()
        .map(|id| &exp.events[id.parse::<usize>().unwrap() - 1])
        .collect();
    let first = evs[0];
    let mut body = json!({"type": first["type"], "data": first["data"], "id": key});
    if evs.len() == 1 {
        body["channel"] = first["channel"].clone();
    } else {
        body["channels"] = evs.iter().map(|e| e["channel"].clone()).collect();
    }
    if !first["users"].is_null() {
        body["users"] = first["users"].clone();
    }
    body
}

async fn publish_next(server: &Server) -> String {
    let (status, body) = server
        .publish(
            &publisher(),
            &json!({"channel": "fx:a", "type": "new", "data": "after"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    published_ids(&body).remove(0)
}

fn migrated_lines(server: &Server) -> Vec<String> {
    server
        .log_text()
        .lines()
        .filter(|l| l.contains("migrated"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redb_log_of_the_last_release_is_migrated_once_with_every_event_id_and_key() {
    let exp = expected();
    let n = exp.events.len();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(fixture().join("log.redb"), data.join("log.redb")).unwrap();

    let mut server = Server::start_in(tmp.path(), ENV);
    let lines = migrated_lines(&server);
    assert_eq!(
        lines.len(),
        1,
        "one log line says the log was migrated:\n{}",
        server.log_text()
    );
    assert!(!data.join("log.redb").exists(), "log.redb was renamed");
    assert_eq!(
        redb_events(&data.join("log.redb.migrated")),
        (n as u64, n as u64),
        "log.redb.migrated is kept, every event in it"
    );
    assert!(
        data.join("log").join("meta.json").exists(),
        "the segment log exists"
    );

    // Every event, as each reader sees it (`users`), on every channel at once…
    for reader in READERS {
        let want: Vec<&Value> = exp.events.iter().filter(|e| visible(e, reader)).collect();
        expect_history(&server, reader, &["fx:**"], &want).await;
    }
    // …and channel by channel.
    let channels: Vec<String> = {
        let mut c: Vec<String> = exp
            .events
            .iter()
            .map(|e| e["channel"].as_str().unwrap().to_owned())
            .collect();
        c.sort();
        c.dedup();
        c
    };
    for channel in &channels {
        let want: Vec<&Value> = exp
            .events
            .iter()
            .filter(|e| e["channel"] == channel.as_str() && visible(e, "alice"))
            .collect();
        expect_history(&server, "alice", &[channel], &want).await;
    }

    // The idempotency keys came across: a repeat answers the original ids, appends nothing.
    let p = publisher();
    for (key, ids) in &exp.keys {
        let (status, body) = server.publish(&p, &keyed_body(&exp, key)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            &published_ids(&body),
            ids,
            "key {key} answers its original ids"
        );
    }
    let next = publish_next(&server).await;
    assert_eq!(next, (n + 1).to_string(), "a new publish gets the next id");

    // A second start does not migrate again, even with a log.redb back in place.
    std::fs::copy(fixture().join("log.redb"), data.join("log.redb")).unwrap();
    server.kill9_and_restart();
    assert_eq!(
        migrated_lines(&server),
        lines,
        "no second migration:\n{}",
        server.log_text()
    );
    assert!(
        data.join("log.redb").exists(),
        "a log.redb beside the segment log is left alone"
    );
    let after = publish_next(&server).await;
    assert_eq!(after, (n + 2).to_string(), "ids continue after the restart");
    // The keys were written into the segment log, not only remembered.
    let (key, ids) = exp.keys.iter().next().unwrap();
    let (status, body) = server.publish(&p, &keyed_body(&exp, key)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(&published_ids(&body), ids, "key {key} after a restart");
    let want: Vec<&Value> = exp.events.iter().filter(|e| visible(e, "nobody")).collect();
    let sub = token("nobody", &["fx:**"], &[]);
    let (mut sse, _) = Sse::open(
        &server.stream_url(&["fx:**"]),
        &[bearer(&sub), last_event_id("0")],
    )
    .await;
    let got = sse.take(want.len() + 2, T).await;
    let mut want_ids: Vec<String> = want
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    want_ids.extend([next, after]);
    assert_eq!(
        common::ids(&got),
        want_ids,
        "the migrated events once, then the new ones"
    );
    sse.expect_quiet(Duration::from_millis(300)).await;
}
