//! One gate for every event: a source whose mapping renders one of the stream's control
//! types (`closing`, `gap`, …) or an invalid event cannot put it on a stream. Such changes are
//! skipped, counted and logged like an oversized one, and the source goes on.

mod common;

use std::time::Duration;

use common::{bearer, get, last_event_id, token, token_with, Server, Sse};
use serde_json::Value;

const CONFIG: &str = r#"
[[sources]]
name = "rows"
type = "vec"
channel = "gate:{row.c}"
event_type = "{row.kind}"
changes = [
  { op = "insert", record = { c = "a", kind = "closing" }, key = "1" },
  { op = "insert", record = { c = "a", kind = "row.ok" }, key = "2" },
  { op = "insert", record = { c = "a", kind = "gap" }, key = "3" },
  { op = "insert", record = { c = "a", kind = "connected" }, key = "4" },
  { op = "insert", record = { c = "a", kind = "row.later" }, key = "5" },
]
"#;

async fn status(server: &Server) -> Value {
    let admin = token_with("root", &[], &[], true, 3600);
    let (code, _, body) = get(&format!("{}/v1/status", server.url), &[bearer(&admin)]).await;
    assert_eq!(code, 200, "{body}");
    body["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "rows")
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn a_source_mapping_that_renders_a_reserved_type_never_reaches_a_stream() {
    let server = Server::start_with_config(CONFIG, &[]);
    for _ in 0..500 {
        if status(&server).await["checkpoint"] == "5" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = status(&server).await;
    assert_eq!(s["checkpoint"], "5", "{s}");
    assert_eq!(s["skipped"], 3, "the three control types are skipped: {s}");
    assert_eq!(s["state"], "running", "the source goes on: {s}");

    // Replayed from the start of the log: only the two valid events, and the stream stays open.
    let sub = token("u1", &["gate:*"], &[]);
    let (mut sse, _) = Sse::open(
        &server.stream_url(&["gate:a"]),
        &[bearer(&sub), last_event_id("0")],
    )
    .await;
    let events = sse.take(2, Duration::from_secs(10)).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["row.ok", "row.later"]);
    sse.expect_quiet(Duration::from_millis(500)).await;
    assert!(
        server.log_text().contains("change skipped"),
        "each skipped change is logged"
    );
}
