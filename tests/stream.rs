//! `GET /v1/stream` end to end against a real server process: multi-channel delivery, the
//! wire format, resume, retention gaps, and channels changed on a live connection.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn two_channels_in_publish_order_with_envelope_and_nothing_else() {
    let server = Server::start(&[("STREAM__HEARTBEAT_MS", "300")]);
    let sub = token("u1", &["logs:w1:*", "notifications:{sub}"], &[]);
    let url = server.stream_url(&["logs:w1:f1", "notifications:u1"]);
    let (mut sse, connected) = Sse::open(&url, &[bearer(&sub)]).await;
    assert_eq!(
        sse.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(sse.headers["cache-control"], "no-cache, no-transform");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    assert!(sse.headers.get("content-length").is_none());
    assert!(sse.headers.get("content-encoding").is_none());
    assert_eq!(connected["user"], "u1");
    assert_eq!(
        connected["channels"],
        json!(["logs:w1:f1", "notifications:u1"])
    );
    assert!(connected["connection_id"]
        .as_str()
        .unwrap()
        .starts_with("c_"));

    let publisher = publisher();
    let mut expected = Vec::new();
    for i in 0..30 {
        let channel = ["logs:w1:f1", "notifications:u1", "logs:w1:f2"][i % 3];
        let (status, body) = server
            .publish(
                &publisher,
                &json!({"channel": channel, "type": format!("t.{i}"), "data": {"i": i}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        if channel != "logs:w1:f2" {
            expected.push((body["ids"][0].as_str().unwrap().to_owned(), channel, i));
        }
    }
    let got = sse.take(expected.len(), T).await;
    for (e, (id, channel, i)) in got.iter().zip(&expected) {
        assert_eq!(&e.id, id);
        assert_eq!(e.event, format!("t.{i}"));
        let env = envelope(e);
        assert_eq!(env["id"], *id);
        assert_eq!(env["channel"], *channel);
        assert_eq!(env["type"], format!("t.{i}"));
        assert_eq!(env["data"], json!({"i": i}));
        assert!(env["time"].as_str().unwrap().ends_with('Z'));
    }
    // Nothing from the third channel, and heartbeats keep an idle stream alive.
    sse.expect_quiet(Duration::from_millis(1200)).await;
}

#[tokio::test]
async fn the_first_bytes_arrive_at_once() {
    let server = Server::start(&[]);
    let sub = token("u1", &["a"], &[]);
    let start = std::time::Instant::now();
    let (_sse, _) = Sse::open(&server.stream_url(&["a"]), &[bearer(&sub)]).await;
    // Generous bound for a shared machine: the point is "not after the first event or heartbeat".
    assert!(start.elapsed() < Duration::from_secs(5));
}

async fn resume_case(use_query: bool) {
    let server = Server::start(&[]);
    let sub = token("u1", &["a:*"], &[]);
    let publisher = publisher();
    let url = server.stream_url(&["a:1", "a:2"]);
    let (mut sse, _) = Sse::open(&url, &[bearer(&sub)]).await;
    server.publish_many(&publisher, "a:1", 10, 10).await;
    let first = sse.take(10, T).await;
    drop(sse);
    let last = first.last().unwrap().id.clone();

    // 1,000 on its channels (interleaved over both), 1,000 on others.
    let mut expected = Vec::new();
    for round in 0..10 {
        let mut batch = Vec::new();
        for j in 0..200 {
            let channel = match j % 4 {
                0 => "a:1",
                1 => "a:2",
                2 => "a:3",
                _ => "b",
            };
            batch.push(json!({"channel": channel, "type": "t", "data": {"round": round, "j": j}}));
        }
        let (status, body) = server
            .publish(&publisher, &Value::Array(batch.clone()))
            .await;
        assert_eq!(status, 200, "{body}");
        for (ev, id) in batch.iter().zip(body["ids"].as_array().unwrap()) {
            if ev["channel"] == "a:1" || ev["channel"] == "a:2" {
                expected.push(id.as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(expected.len(), 1000);
    let (mut sse, _) = if use_query {
        Sse::open(&format!("{url}&last_event_id={last}"), &[bearer(&sub)]).await
    } else {
        Sse::open(&url, &[bearer(&sub), last_event_id(&last)]).await
    };
    let replayed = sse.take(1000, T).await;
    assert_eq!(
        ids(&replayed),
        expected,
        "exactly the missed events, in order"
    );
    // Then live, with no duplicate at the seam.
    let live = server.publish_many(&publisher, "a:2", 5, 5).await;
    let got = sse.take(5, T).await;
    assert_eq!(ids(&got), live);
    sse.expect_quiet(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn resume_with_last_event_id_header() {
    resume_case(false).await;
}

#[tokio::test]
async fn resume_with_last_event_id_query() {
    resume_case(true).await;
}

#[tokio::test]
async fn resume_while_publishing_has_no_gap_and_no_duplicate_at_the_seam() {
    let server = Server::start(&[("STREAM__CATCHUP_BATCH", "7")]);
    let sub = token("u1", &["s"], &[]);
    let publisher = publisher();
    let first = server.publish_many(&publisher, "s", 1, 1).await;
    let url = server.stream_url(&["s"]);
    let pub_url = server.url.clone();
    let p2 = publisher.clone();
    let writer = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..300 {
            let res = http()
                .post(format!("{pub_url}/v1/publish"))
                .bearer_auth(&p2)
                .json(&json!({"channel": "s", "data": i}))
                .send()
                .await
                .unwrap();
            let body: Value = res.json().await.unwrap();
            ids.push(body["ids"][0].as_str().unwrap().to_owned());
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (mut sse, _) = Sse::open(&url, &[bearer(&sub), last_event_id(&first[0])]).await;
    let published = writer.await.unwrap();
    let got = sse.take(published.len(), T).await;
    assert_eq!(ids(&got), published);
    sse.expect_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn resume_from_an_expired_id_yields_gap_naming_the_oldest_then_the_retained_events() {
    let server = Server::start(&[("LOG__RETENTION_EVENTS", "50")]);
    let sub = token("u1", &["r"], &[]);
    let publisher = publisher();
    let all = server.publish_many(&publisher, "r", 200, 40).await;
    let (mut sse, _) = Sse::open(
        &server.stream_url(&["r"]),
        &[bearer(&sub), last_event_id(&all[10])],
    )
    .await;
    let gap = sse.next(T).await.unwrap();
    assert_eq!(gap.event, "gap");
    assert!(gap.id.is_empty());
    let data: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data["last_event_id"], all[10]);
    assert_eq!(data["oldest_id"], all[150]);
    let retained = sse.take(50, T).await;
    assert_eq!(ids(&retained), all[150..].to_vec());
}

#[tokio::test]
async fn an_id_from_the_future_yields_gap_then_live() {
    let server = Server::start(&[]);
    let sub = token("u1", &["f"], &[]);
    let (mut sse, _) = Sse::open(
        &server.stream_url(&["f"]),
        &[bearer(&sub), last_event_id("999999")],
    )
    .await;
    let gap = sse.next(T).await.unwrap();
    assert_eq!(gap.event, "gap");
    let live = server.publish_many(&publisher(), "f", 3, 3).await;
    assert_eq!(ids(&sse.take(3, T).await), live);
}

#[tokio::test]
async fn channels_added_and_removed_on_a_live_connection() {
    let server = Server::start(&[]);
    let sub = token("u1", &["d:*"], &[]);
    let publisher = publisher();
    let (mut sse, connected) = Sse::open(&server.stream_url(&["d:1"]), &[bearer(&sub)]).await;
    let conn_id = connected["connection_id"].as_str().unwrap().to_owned();
    let subs_url = format!("{}/v1/connections/{conn_id}/subscriptions", server.url);

    // Before adding, d:2 is not delivered.
    server.publish_many(&publisher, "d:2", 1, 1).await;
    let res = http()
        .post(&subs_url)
        .bearer_auth(&sub)
        .json(&json!({"add": ["d:2"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["channels"], json!(["d:1", "d:2"]));
    let subscribed = sse.next(T).await.unwrap();
    assert_eq!(subscribed.event, "subscribed");
    assert_eq!(
        serde_json::from_str::<Value>(&subscribed.data).unwrap()["channels"],
        json!(["d:2"])
    );
    let added = server.publish_many(&publisher, "d:2", 2, 2).await;
    assert_eq!(ids(&sse.take(2, T).await), added);

    // A channel the token does not grant: 403, and nothing changes.
    let res = http()
        .post(&subs_url)
        .bearer_auth(&sub)
        .json(&json!({"add": ["secret:1"], "remove": ["d:1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden_channel");
    assert_eq!(body["error"]["channels"], json!(["secret:1"]));
    let still = server.publish_many(&publisher, "d:1", 1, 1).await;
    assert_eq!(
        ids(&sse.take(1, T).await),
        still,
        "d:1 still subscribed after the refused change"
    );

    // Removing stops delivery.
    let res = http()
        .post(&subs_url)
        .bearer_auth(&sub)
        .json(&json!({"remove": ["d:1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let unsubscribed = sse.next(T).await.unwrap();
    assert_eq!(unsubscribed.event, "unsubscribed");
    server.publish_many(&publisher, "d:1", 3, 3).await;
    let kept = server.publish_many(&publisher, "d:2", 1, 1).await;
    assert_eq!(
        ids(&sse.take(1, T).await),
        kept,
        "d:1 events no longer arrive"
    );

    // Another user cannot touch this connection.
    let other = token("u2", &["d:*"], &[]);
    let res = http()
        .post(&subs_url)
        .bearer_auth(&other)
        .json(&json!({"add": ["d:3"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn a_channel_added_with_last_event_id_gets_its_history_first_without_moving_the_resume_position(
) {
    let server = Server::start(&[]);
    let sub = token("u1", &["h:*"], &[]);
    let publisher = publisher();
    let history = server.publish_many(&publisher, "h:2", 5, 5).await;
    let (mut sse, connected) = Sse::open(&server.stream_url(&["h:1"]), &[bearer(&sub)]).await;
    let on_first = server.publish_many(&publisher, "h:1", 2, 2).await;
    assert_eq!(ids(&sse.take(2, T).await), on_first);
    let conn_id = connected["connection_id"].as_str().unwrap();
    let res = http()
        .post(format!(
            "{}/v1/connections/{conn_id}/subscriptions",
            server.url
        ))
        .bearer_auth(&sub)
        .json(&json!({"add": ["h:2"], "last_event_id": history[1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(sse.next(T).await.unwrap().event, "subscribed");
    // History: the three events after history[1], in order, each without an `id:` line.
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = sse.next(T).await.expect("history event");
        assert!(
            e.id.is_empty(),
            "history must not move the resume position: {e:?}"
        );
        assert_eq!(e.event, "t");
        got.push(envelope(&e)["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, history[2..].to_vec());
    // Then live, both channels, in log order, with ids.
    let mut live = server.publish_many(&publisher, "h:2", 1, 1).await;
    live.extend(server.publish_many(&publisher, "h:1", 1, 1).await);
    assert_eq!(ids(&sse.take(2, T).await), live);
    sse.expect_quiet(Duration::from_millis(300)).await;

    // A bad last_event_id is refused and changes nothing.
    let res = http()
        .post(format!(
            "{}/v1/connections/{conn_id}/subscriptions",
            server.url
        ))
        .bearer_auth(&sub)
        .json(&json!({"add": ["h:3"], "last_event_id": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    server.publish_many(&publisher, "h:3", 1, 1).await;
    sse.expect_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn events_published_just_before_a_channel_is_added_are_never_delivered() {
    // The dispatcher runs behind acknowledgements; an add must still not deliver what was
    // acknowledged before the request. Repeat to give the race its chances.
    let server = Server::start(&[]);
    let sub = token("u1", &["r:*"], &[]);
    let publisher = publisher();
    let (mut sse, connected) = Sse::open(&server.stream_url(&["r:base"]), &[bearer(&sub)]).await;
    let conn_id = connected["connection_id"].as_str().unwrap();
    for round in 0..20 {
        let channel = format!("r:{round}");
        server.publish_many(&publisher, &channel, 1000, 1000).await;
        let res = http()
            .post(format!(
                "{}/v1/connections/{conn_id}/subscriptions",
                server.url
            ))
            .bearer_auth(&sub)
            .json(&json!({"add": [channel]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let after = server.publish_many(&publisher, &channel, 1, 1).await;
        // The first event of any kind but control ones is the one published after the add
        // (history without an id would show up here too).
        let e = loop {
            let e = sse.next(T).await.expect("event");
            if e.event != "subscribed" {
                break e;
            }
        };
        assert_eq!(
            (e.event.as_str(), e.id.as_str()),
            ("t", after[0].as_str()),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn stream_refusals_are_clear_json_errors() {
    let server = Server::start(&[("LIMITS__MAX_CHANNELS_PER_CONNECTION", "3")]);
    let sub = token("u1", &["ok:*"], &[]);
    let cases: Vec<(String, Option<String>, u16, &str)> = vec![
        (
            server.stream_url(&["ok:1"]),
            None,
            401,
            "missing_credentials",
        ),
        (
            server.stream_url(&["ok:1"]),
            Some("not-a-jwt".into()),
            401,
            "invalid_token",
        ),
        (
            server.stream_url(&["no:1"]),
            Some(sub.clone()),
            403,
            "forbidden_channel",
        ),
        (
            format!("{}/v1/stream", server.url),
            Some(sub.clone()),
            400,
            "missing_channel",
        ),
        (
            server.stream_url(&["ok::1"]),
            Some(sub.clone()),
            400,
            "invalid_channel",
        ),
        (
            server.stream_url(&["ok:1", "ok:2", "ok:3", "ok:4"]),
            Some(sub.clone()),
            400,
            "too_many_channels",
        ),
        (
            format!("{}&last_event_id=abc", server.stream_url(&["ok:1"])),
            Some(sub.clone()),
            400,
            "invalid_last_event_id",
        ),
    ];
    for (url, tok, status, code) in cases {
        let mut req = http().get(&url);
        if let Some(t) = tok {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{url}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{url}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 10);
    }
    // The cookie and the query parameter carry credentials too.
    let res = http()
        .get(server.stream_url(&["ok:1"]))
        .header("cookie", format!("other=1; ssegate_token={sub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = http()
        .get(format!(
            "{}&access_token={sub}",
            server.stream_url(&["ok:1"])
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}
