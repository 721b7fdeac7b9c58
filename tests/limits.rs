//! Limits end to end against a real server: each refuses at its configured threshold and not
//! before, with the JSON error of src/limits.rs (`Limit::code`) and `Retry-After` for 429s;
//! a closed stream frees its place; `session_id` replaces a user's older stream of the same
//! session.
//!
//! Every test client comes from 127.0.0.1, so per-IP limits are told apart from per-user
//! ones by using different users.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(10);

async fn open_as(server: &Server, user: &str, channel: &str) -> Sse {
    let tok = token(user, &["**"], &[]);
    let (sse, connected) = Sse::open(&server.stream_url(&[channel]), &[bearer(&tok)]).await;
    assert_eq!(connected["user"], user);
    sse
}

async fn connect_as(server: &Server, user: &str, channel: &str) -> Sse {
    let tok = token(user, &["**"], &[]);
    Sse::connect(&server.stream_url(&[channel]), &[bearer(&tok)]).await
}

/// Checks a 429 with `code` and a positive `Retry-After`; returns the Retry-After.
fn assert_429(c: &Sse, code: &str) -> u64 {
    assert_error(c.status, &c.error, 429, code);
    let s = retry_after(&c.headers);
    assert!(s >= 1, "Retry-After {s}");
    s
}

#[tokio::test]
async fn max_connections_refuses_the_next_stream_and_a_closed_stream_frees_its_place() {
    // A short heartbeat makes the server notice a client that went away.
    let server = Server::start(&[
        ("LIMITS__MAX_CONNECTIONS", "2"),
        ("STREAM__HEARTBEAT_MS", "200"),
    ]);
    let s1 = open_as(&server, "u1", "a").await;
    let _s2 = open_as(&server, "u2", "a").await;
    let refused = connect_as(&server, "u3", "a").await;
    assert_eq!(assert_429(&refused, "too_many_connections"), 5);

    // The client closes its stream: the place is given back (once the server notices).
    drop(s1);
    let deadline = Instant::now() + T;
    loop {
        let c = connect_as(&server, "u3", "a").await;
        if c.status == 200 {
            break;
        }
        assert_429(&c, "too_many_connections");
        assert!(
            Instant::now() < deadline,
            "the closed stream's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn max_connections_per_user_refuses_that_user_only() {
    let server = Server::start(&[("LIMITS__MAX_CONNECTIONS_PER_USER", "2")]);
    let _a = open_as(&server, "u1", "a").await;
    let _b = open_as(&server, "u1", "b").await;
    let refused = connect_as(&server, "u1", "c").await;
    assert_429(&refused, "too_many_connections_for_user");
    // Another user from the same address is not limited.
    let _c = open_as(&server, "u2", "a").await;
    let _d = open_as(&server, "u2", "a").await;
    assert_429(
        &connect_as(&server, "u2", "a").await,
        "too_many_connections_for_user",
    );
}

#[tokio::test]
async fn max_connections_per_ip_counts_every_user_of_the_address() {
    let server = Server::start(&[("LIMITS__MAX_CONNECTIONS_PER_IP", "3")]);
    let _a = open_as(&server, "u1", "a").await;
    let _b = open_as(&server, "u2", "a").await;
    let _c = open_as(&server, "u3", "a").await;
    let refused = connect_as(&server, "u4", "a").await;
    assert_429(&refused, "too_many_connections_from_address");
}

#[tokio::test]
async fn connection_rate_allows_the_burst_then_refuses() {
    // Burst 3, then one new stream every 20 s.
    let server = Server::start(&[
        ("LIMITS__CONNECT_RATE_PER_IP", "0.05"),
        ("LIMITS__CONNECT_BURST_PER_IP", "3"),
    ]);
    let mut open = Vec::new();
    for user in ["u1", "u2", "u3"] {
        open.push(open_as(&server, user, "a").await);
    }
    let refused = connect_as(&server, "u4", "a").await;
    let s = assert_429(&refused, "connection_rate_limited");
    assert!(s <= 20, "Retry-After {s} for a rate of one per 20 s");
    // Long-polls draw from the same bucket.
    let (status, headers, body) = common::get(
        &format!("{}/v1/poll?channel=a&timeout_ms=10", server.url),
        &[bearer(&token("u5", &["a"], &[]))],
    )
    .await;
    assert_error(status, &body, 429, "connection_rate_limited");
    assert!(retry_after(&headers) >= 1);
    // Refusals are counted by limit (metrics requests are not rate limited).
    let m = metrics_text(&server).await;
    assert_eq!(
        metric(
            &m,
            "ssegate_rate_limited_total{limit=\"connection_rate_limited\"}"
        ),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test]
async fn publish_rate_allows_the_burst_per_publisher_then_refuses_and_appends_nothing() {
    let server = Server::start(&[
        ("LIMITS__PUBLISH_RATE", "0.05"),
        ("LIMITS__PUBLISH_BURST", "4"),
        ("LIMITS__MAX_BATCH_EVENTS", "4"),
    ]);
    let (mut sse, _) = Sse::open(
        &server.stream_url(&["a"]),
        &[bearer(&token("sub", &["a"], &[]))],
    )
    .await;
    let p1 = token("p1", &[], &["**"]);
    let mut accepted = Vec::new();
    for i in 0..4 {
        let (status, body) = server
            .publish(&p1, &json!({"channel": "a", "type": "t", "data": i}))
            .await;
        assert_eq!(status, 200, "event {i} is within the burst: {body}");
        accepted.push(body["ids"][0].as_str().unwrap().to_owned());
    }
    let res = http()
        .post(format!("{}/v1/publish", server.url))
        .bearer_auth(&p1)
        .json(&json!({"channel": "a", "type": "t", "data": "over"}))
        .send()
        .await
        .unwrap();
    let headers = res.headers().clone();
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_error(status, &body, 429, "publish_rate_limited");
    assert!(retry_after(&headers) >= 1);

    // Another publisher has its own bucket; a full batch (= burst) passes, one more does not.
    let p2 = token("p2", &[], &["**"]);
    let batch: Vec<_> = (0..4)
        .map(|i| json!({"channel": "a", "type": "t", "data": {"p2": i}}))
        .collect();
    let (status, body) = server.publish(&p2, &json!(batch)).await;
    assert_eq!(status, 200, "{body}");
    accepted.extend(
        body["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned()),
    );
    let (status, body) = server
        .publish(&p2, &json!({"channel": "a", "type": "t"}))
        .await;
    assert_error(status, &body, 429, "publish_rate_limited");
    let m = metrics_text(&server).await;
    assert_eq!(
        metric(
            &m,
            "ssegate_rate_limited_total{limit=\"publish_rate_limited\"}"
        ),
        Some(2.0),
        "{m}"
    );

    // The refused publishes appended nothing.
    assert_eq!(ids(&sse.take(accepted.len(), T).await), accepted);
    sse.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn max_channels_per_connection_is_400_above_the_limit() {
    let server = Server::start(&[("LIMITS__MAX_CHANNELS_PER_CONNECTION", "3")]);
    let tok = token("u1", &["**"], &[]);
    let (_sse, connected) = Sse::open(&server.stream_url(&["a", "b", "c"]), &[bearer(&tok)]).await;
    let refused = Sse::connect(&server.stream_url(&["a", "b", "c", "d"]), &[bearer(&tok)]).await;
    assert_error(refused.status, &refused.error, 400, "too_many_channels");

    // Adding a fourth channel to the live connection is refused the same way.
    let id = connected["connection_id"].as_str().unwrap();
    let (status, _, body) = call(
        reqwest::Method::POST,
        &format!("{}/v1/connections/{id}/subscriptions", server.url),
        &[bearer(&tok)],
        Some(&json!({"add": ["d"]})),
    )
    .await;
    assert_error(status, &body, 400, "too_many_channels");
}

#[tokio::test]
async fn max_event_bytes_is_413_one_byte_above_the_limit() {
    let server = Server::start(&[("LIMITS__MAX_EVENT_BYTES", "256")]);
    let publisher = publisher();
    // Encoded size as src/http/publish.rs counts it: data + channel + 2 × type + 128
    // (envelope overhead). With channel "c", type "t" and a string of k characters
    // (k + 2 bytes of JSON): k + 133.
    let event = |k: usize| json!({"channel": "c", "type": "t", "data": "x".repeat(k)});
    let (status, body) = server.publish(&publisher, &event(123)).await;
    assert_eq!(status, 200, "256 bytes is at the limit: {body}");
    let (status, body) = server.publish(&publisher, &event(124)).await;
    assert_error(status, &body, 413, "event_too_large");
    // In a batch, one oversized event refuses the whole batch.
    let (status, body) = server
        .publish(&publisher, &json!([event(1), event(2000)]))
        .await;
    assert_error(status, &body, 413, "event_too_large");
}

#[tokio::test]
async fn a_session_id_replaces_the_users_older_stream_of_that_session_only() {
    let server = Server::start(&[("STREAM__HEARTBEAT_MS", "300")]);
    let publisher = publisher();
    let u1 = token("u1", &["a"], &[]);
    let u2 = token("u2", &["a"], &[]);
    let url = |session: &str| format!("{}&session_id={session}", server.stream_url(&["a"]));

    let (mut old, _) = Sse::open(&url("tab1"), &[bearer(&u1)]).await;
    let (mut other_tab, _) = Sse::open(&url("tab2"), &[bearer(&u1)]).await;
    let (mut other_user, _) = Sse::open(&url("tab1"), &[bearer(&u2)]).await;
    let (mut new, _) = Sse::open(&url("tab1"), &[bearer(&u1)]).await;

    let delivered = old.expect_closing("replaced", T).await;
    assert!(delivered.is_empty());

    let sent = server.publish_many(&publisher, "a", 2, 1).await;
    for sse in [&mut new, &mut other_tab, &mut other_user] {
        assert_eq!(ids(&sse.take(2, T).await), sent);
    }
    // The survivors stay open.
    new.expect_silence(Duration::from_millis(500)).await;
    other_tab.expect_silence(Duration::from_millis(100)).await;
    other_user.expect_silence(Duration::from_millis(100)).await;
}
