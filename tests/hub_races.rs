//! Races between the hub's dispatcher and a connection's changes, made certain: the log under
//! the hub is a real in-memory log whose answers to the dispatcher (its waiting reads) can be
//! held back, so the dispatcher is made to lag the head at the moment a change arrives.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use ssegate::hub::{ChannelChange, ConnInfo, Cursor, CursorOptions, Hub};
use ssegate::log::memory::MemoryLog;
use ssegate::log::{
    AppendItem, Appended, Bounds, EventLog, Filter, History, HistoryQuery, LogError, LogOptions,
    NewEvent, Position, ReadBatch,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A memory log whose waiting reads (the dispatcher's) return only while the gate is open.
struct GatedLog {
    inner: MemoryLog,
    open: watch::Receiver<bool>,
}

#[async_trait]
impl EventLog for GatedLog {
    fn kind(&self) -> &'static str {
        "gated-memory"
    }
    async fn append(&self, items: Vec<AppendItem>, now_ms: u64) -> Result<Vec<Appended>, LogError> {
        self.inner.append(items, now_ms).await
    }
    async fn read(
        &self,
        after: Position,
        max: usize,
        filter: Filter<'_>,
        wait: Option<Duration>,
    ) -> Result<ReadBatch, LogError> {
        let batch = self.inner.read(after, max, filter, wait).await?;
        if wait.is_some() {
            let mut open = self.open.clone();
            open.wait_for(|o| *o).await.expect("gate kept");
        }
        Ok(batch)
    }
    async fn bounds(&self) -> Result<Bounds, LogError> {
        self.inner.bounds().await
    }
    async fn history(&self, q: HistoryQuery<'_>, filter: Filter<'_>) -> Result<History, LogError> {
        self.inner.history(q, filter).await
    }
    async fn enforce_retention(&self, now_ms: u64) -> Result<(), LogError> {
        self.inner.enforce_retention(now_ms).await
    }
}

fn item(channel: &str, i: usize) -> AppendItem {
    let data = serde_json::value::RawValue::from_string(format!("{{\"i\":{i}}}")).unwrap();
    AppendItem {
        key: None,
        events: vec![NewEvent::new(channel.into(), "t".into(), data, None, 0, usize::MAX).unwrap()],
    }
}

/// The `data.i` of the event frames of a chunk, in order (control frames have none).
fn numbers(chunk: &Bytes) -> Vec<usize> {
    let text = std::str::from_utf8(chunk).unwrap();
    text.split("\n\n")
        .filter_map(|f| f.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["data"]["i"].as_u64())
        .map(|i| i as usize)
        .collect()
}

/// A channel added with `history` while the dispatcher lags the head: the events between
/// what the dispatcher had handled and the head read for the change come once each — they
/// were neither history nor live before (seen in CI as one log line missing in the browser).
#[tokio::test]
async fn a_channel_added_with_history_while_the_dispatcher_lags_gets_every_event_once() {
    let (gate, open) = watch::channel(true);
    let log = Arc::new(GatedLog {
        inner: MemoryLog::new(LogOptions {
            retention_events: 1_000,
            retention_age_ms: 0,
            dedupe_window_ms: 1_000,
            file_cache_bytes: 0,
        }),
        open,
    });
    let hub = Hub::new(log.clone(), 64);
    let shutdown = CancellationToken::new();
    tokio::spawn(hub.clone().run(shutdown.clone()));

    let reg = hub.register("u".into(), &["other".to_string()], ConnInfo::default());
    let conn = reg.conn.clone();
    let mut cursor = Cursor::new(
        hub.clone(),
        reg,
        Position::ZERO,
        false,
        Bytes::new(),
        CursorOptions {
            heartbeat: Duration::from_secs(3600),
            catchup_batch: 5,
            expires_at: None,
            shutdown: shutdown.clone(),
        },
    );
    // Two events the dispatcher handles, then three it is kept from handling.
    log.append(vec![item("x", 1), item("x", 2)], 0)
        .await
        .unwrap();
    while hub.dispatched() < Position::seq(2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.send_replace(false);
    log.append(vec![item("x", 3), item("x", 4), item("x", 5)], 0)
        .await
        .unwrap();
    let head = log.bounds().await.unwrap().head;
    assert_eq!(head, Position::seq(5));
    assert_eq!(hub.dispatched(), Position::seq(2), "the dispatcher lags");

    let add = ["x".to_string()];
    let change = ChannelChange {
        add: &add,
        remove: &[],
        since: head,
        history: Some(100),
        explicit_since: false,
    };
    hub.update(&conn, &change, 16).expect("the change");
    gate.send_replace(true);
    log.append(vec![item("x", 6)], 0).await.unwrap();

    let mut got = Vec::new();
    while got.last() != Some(&6) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), cursor.next_chunk())
            .await
            .unwrap_or_else(|_| panic!("event 6 never came; got {got:?}"))
            .expect("stream open");
        got.extend(numbers(&chunk));
    }
    assert_eq!(
        got,
        vec![1, 2, 3, 4, 5, 6],
        "history then live, none missing, none twice"
    );
    shutdown.cancel();
}
