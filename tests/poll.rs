//! `GET /v1/poll`, the long-poll fallback: immediate answers, waiting, timeouts and gaps.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

async fn poll(server: &Server, tok: &str, query: &str) -> (u16, Value, Duration) {
    let start = Instant::now();
    let res = http()
        .get(format!("{}/v1/poll?{query}", server.url))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap(), start.elapsed())
}

fn event_ids(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn returns_available_events_at_once_filtered_by_channel() {
    let server = Server::start(&[]);
    let p = publisher();
    let sub = token("u1", &["p:*"], &[]);
    let mine = server.publish_many(&p, "p:1", 3, 3).await;
    server.publish_many(&p, "other", 2, 2).await;
    let (status, body, took) = poll(
        &server,
        &sub,
        "channel=p:1&last_event_id=0&timeout_ms=20000",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(event_ids(&body), mine);
    assert_eq!(body["gap"], false);
    assert!(
        took < Duration::from_secs(10),
        "answered without waiting for the timeout"
    );
    let env = &body["events"][0];
    assert_eq!(env["channel"], "p:1");
    assert_eq!(env["type"], "t");
    assert_eq!(env["data"]["n"], 0);
    // Resuming from the returned position: the other channel's events are skipped, not
    // returned, and the position moves past them.
    let next = body["last_event_id"].as_str().unwrap().to_owned();
    let (_, body, _) = poll(
        &server,
        &sub,
        &format!("channel=p:1&last_event_id={next}&timeout_ms=300"),
    )
    .await;
    assert!(event_ids(&body).is_empty());
    assert_eq!(body["last_event_id"], "5");
}

#[tokio::test]
async fn waits_for_the_next_event_up_to_the_timeout() {
    let server = Server::start(&[]);
    let p = publisher();
    let sub = token("u1", &["w"], &[]);
    // Nothing arrives: an empty answer at the timeout, position unchanged.
    let (status, body, took) = poll(&server, &sub, "channel=w&timeout_ms=400").await;
    assert_eq!(status, 200);
    assert!(event_ids(&body).is_empty());
    assert_eq!(body["last_event_id"], "0");
    assert!(
        took >= Duration::from_millis(380),
        "waited for the timeout: {took:?}"
    );

    // An event published while the poll waits is returned as soon as it is appended.
    let url = server.url.clone();
    let sub2 = sub.clone();
    let waiting = tokio::spawn(async move {
        let res = http()
            .get(format!(
                "{url}/v1/poll?channel=w&last_event_id=0&timeout_ms=20000"
            ))
            .bearer_auth(sub2)
            .send()
            .await
            .unwrap();
        res.json::<Value>().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = server.publish_many(&p, "w", 1, 1).await;
    let body = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the poll returned before its 20 s timeout")
        .unwrap();
    assert_eq!(event_ids(&body), ids);
}

#[tokio::test]
async fn reports_gap_like_the_stream() {
    let server = Server::start(&[("LOG__RETENTION_EVENTS", "10")]);
    let p = publisher();
    let sub = token("u1", &["g"], &[]);
    let all = server.publish_many(&p, "g", 50, 25).await;
    let (_, body, _) = poll(
        &server,
        &sub,
        &format!("channel=g&last_event_id={}&timeout_ms=1000", all[2]),
    )
    .await;
    assert_eq!(body["gap"], true);
    assert_eq!(body["oldest_id"], all[40]);
    assert_eq!(event_ids(&body), all[40..].to_vec());
}

#[tokio::test]
async fn refuses_like_the_stream() {
    let server = Server::start(&[]);
    let sub = token("u1", &["g"], &[]);
    let (s, b, _) = poll(&server, &sub, "channel=secret&timeout_ms=10").await;
    assert_eq!(
        (s, b["error"]["code"].as_str().unwrap()),
        (403, "forbidden_channel")
    );
    let (s, b, _) = poll(&server, &sub, "channel=g&timeout_ms=soon").await;
    assert_eq!(
        (s, b["error"]["code"].as_str().unwrap()),
        (400, "invalid_timeout")
    );
    let (s, _, _) = poll(&server, "bad", "channel=g").await;
    assert_eq!(s, 401);
}
