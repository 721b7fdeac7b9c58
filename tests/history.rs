//! History, then live, exactly once: `GET /v1/channels/{channel}/history`, a stream's
//! `history=N` and `since=`, a subscription change's `history` / `since` — against real
//! server processes, on the file log (also after a restart) and across two nodes sharing a
//! Redis log.

mod common;
mod engines;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

/// Publishes one event per entry of `channels` (in that order, numbered from `from`);
/// returns the ids.
async fn publish_on(server: &Server, channels: &[&str], from: usize) -> Vec<String> {
    let p = publisher();
    let mut ids = Vec::new();
    for (i, c) in channels.iter().enumerate() {
        let (status, body) = server
            .publish(
                &p,
                &json!({"channel": c, "type": "line", "data": {"n": from + i}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["ids"][0].as_str().unwrap().to_owned());
    }
    ids
}

/// `count` events spread round-robin over `channels`; returns (channel, id) in log order.
async fn spread(server: &Server, channels: &[&str], count: usize) -> Vec<(String, String)> {
    let order: Vec<&str> = (0..count).map(|i| channels[i % channels.len()]).collect();
    let ids = publish_on(server, &order, 0).await;
    order.into_iter().map(str::to_owned).zip(ids).collect()
}

fn ids_of(events: &Value) -> Vec<String> {
    events
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

fn of_channel(log: &[(String, String)], channel: &str) -> Vec<String> {
    log.iter()
        .filter(|(c, _)| c == channel)
        .map(|(_, id)| id.clone())
        .collect()
}

async fn history(server: &Server, channel: &str, query: &str, tok: &str) -> (u16, Value) {
    let url = format!("{}/v1/channels/{channel}/history?{query}", server.url);
    let (status, _, body) = get(&url, &[bearer(tok)]).await;
    (status, body)
}

async fn change(server: &Server, conn: &str, tok: &str, body: &Value) -> (u16, Value) {
    let url = format!("{}/v1/connections/{conn}/subscriptions", server.url);
    let (status, _, body) = call(Method::POST, &url, &[bearer(tok)], Some(body)).await;
    (status, body)
}

/// The next `n` events without an `id:` line that are not control events (history frames),
/// with the control events met on the way.
async fn history_frames(sse: &mut Sse, n: usize) -> (Vec<Value>, Vec<String>) {
    let mut frames = Vec::new();
    let mut controls = Vec::new();
    while frames.len() < n {
        let e = sse.next_event(T).await;
        assert!(e.id.is_empty(), "a history frame has no id: line: {e:?}");
        match e.event.as_str() {
            "subscribed" | "unsubscribed" | "gap" | "connected" => controls.push(e.event),
            _ => frames.push(envelope(&e)),
        }
    }
    (frames, controls)
}

#[tokio::test]
async fn rest_history_pages_back_through_one_channel_and_refuses_bad_input() {
    let server = Server::start(&[("LIMITS__PUBLISH_RATE", "0")]);
    let log = spread(&server, &["logs:a", "logs:b", "logs:c"], 90).await;
    let a = of_channel(&log, "logs:a");
    // Targeted at someone else: never in u1's history.
    let p = publisher();
    let (status, body) = server
        .publish(
            &p,
            &json!({"channel": "logs:a", "type": "secret", "data": {}, "users": ["u2"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let head = body["ids"][0].as_str().unwrap().to_owned();
    let sub = token("u1", &["logs:*"], &[]);

    let (status, page) = history(&server, "logs:a", "limit=10", &sub).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["channel"], "logs:a");
    assert_eq!(ids_of(&page["events"]), a[20..30]);
    assert_eq!(page["more"], true);
    assert_eq!(page["last_event_id"], head);
    let first = &page["events"][0];
    assert_eq!(first["channel"], "logs:a");
    assert_eq!(first["type"], "line");
    assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(first["data"]["n"].is_u64());

    // Page back with `before`, down to the first event.
    assert_eq!(page["next_before"], page["events"][0]["id"]);
    let before = page["next_before"].as_str().unwrap();
    let (status, older) = history(
        &server,
        "logs:a",
        &format!("limit=15&before={before}"),
        &sub,
    )
    .await;
    assert_eq!(status, 200, "{older}");
    assert_eq!(ids_of(&older["events"]), a[5..20]);
    assert_eq!(older["more"], true);
    let before = older["events"][0]["id"].as_str().unwrap();
    let (_, oldest) = history(&server, "logs:a", &format!("before={before}"), &sub).await;
    assert_eq!(ids_of(&oldest["events"]), a[..5]);
    assert_eq!(oldest["more"], false);
    assert!(oldest.get("next_before").is_none(), "{oldest}");
    // `before` past the head: complete up to the head only.
    let (_, ahead) = history(&server, "logs:a", "limit=1&before=999999", &sub).await;
    assert_eq!(ahead["last_event_id"], head);

    // The default limit (100) takes the whole channel; u2 sees its own event.
    let (_, all) = history(&server, "logs:a", "", &sub).await;
    assert_eq!(ids_of(&all["events"]), a);
    let u2 = token("u2", &["logs:a"], &[]);
    let (_, theirs) = history(&server, "logs:a", "limit=1", &u2).await;
    assert_eq!(ids_of(&theirs["events"]), std::slice::from_ref(&head));
    assert_eq!(theirs["events"][0]["type"], "secret");
    // An empty channel.
    let (status, none) = history(&server, "logs:zzz", "", &sub).await;
    assert_eq!(status, 200);
    assert_eq!(none["events"], json!([]));
    assert_eq!(none["more"], false);

    // Refusals.
    for (channel, query, tok, want_status, code) in [
        ("logs:*", "", sub.as_str(), 400, "invalid_channel"),
        ("bad%20name", "", sub.as_str(), 400, "invalid_channel"),
        ("logs:a", "limit=0", sub.as_str(), 400, "invalid_limit"),
        ("logs:a", "limit=1001", sub.as_str(), 400, "invalid_limit"),
        ("logs:a", "limit=ten", sub.as_str(), 400, "invalid_limit"),
        (
            "logs:a",
            "before=x-1",
            sub.as_str(),
            400,
            "invalid_last_event_id",
        ),
        ("other:a", "", sub.as_str(), 403, "forbidden_channel"),
        ("logs:a", "", "not-a-token", 401, "invalid_token"),
    ] {
        let (status, body) = history(&server, channel, query, tok).await;
        assert_error(status, &body, want_status, code);
    }
    let url = format!("{}/v1/channels/logs:a/history", server.url);
    let (status, _, body) = get(&url, &[]).await;
    assert_error(status, &body, 401, "missing_credentials");
}

#[tokio::test]
async fn a_stream_with_history_gets_each_channels_latest_then_live_and_resumes_without_it() {
    let server = Server::start(&[("LIMITS__PUBLISH_RATE", "0")]);
    let log = spread(&server, &["logs:a", "logs:b", "logs:c"], 60).await;
    let sub = token("u1", &["logs:*"], &[]);
    let url = format!(
        "{}&history=3",
        server.stream_url(&["logs:a", "logs:b", "logs:*"])
    );
    let (mut sse, connected) = Sse::open(&url, &[bearer(&sub)]).await;
    let head = log.last().unwrap().1.clone();
    assert_eq!(connected["last_event_id"], head);
    // The newest 3 of each exact channel, merged in log order, with ids (a pattern has none).
    let mut want: Vec<String> = [
        &of_channel(&log, "logs:a")[17..],
        &of_channel(&log, "logs:b")[17..],
    ]
    .concat();
    want.sort_by_key(|id| id.parse::<u64>().unwrap());
    let got = sse.take(6, T).await;
    assert_eq!(ids(&got), want);
    // Then live, on every channel of the stream (the pattern's too).
    let live = publish_on(&server, &["logs:c", "logs:a"], 100).await;
    assert_eq!(ids(&sse.take(2, T).await), live);
    sse.expect_quiet(Duration::from_millis(300)).await;
    drop(sse);

    // Resuming from the last event seen: no history again, only what came after.
    let later = publish_on(&server, &["logs:b"], 200).await;
    let (mut again, _) = Sse::open(&url, &[bearer(&sub), last_event_id(&live[1])]).await;
    assert_eq!(ids(&again.take(1, T).await), later);
    again.expect_quiet(Duration::from_millis(300)).await;

    // `since` is `last_event_id` in the query.
    let since = format!("{}&since={}", server.stream_url(&["logs:a"]), live[0]);
    let (mut from, connected) = Sse::open(&since, &[bearer(&sub)]).await;
    assert_eq!(connected["last_event_id"], live[0]);
    assert_eq!(ids(&from.take(1, T).await), [live[1].clone()]);

    // A fresh stream of an empty log's channel: no history, live at once.
    let (mut empty, _) = Sse::open(
        &format!("{}&history=5", server.stream_url(&["logs:new"])),
        &[bearer(&sub)],
    )
    .await;
    let fresh = publish_on(&server, &["logs:new"], 300).await;
    assert_eq!(ids(&empty.take(1, T).await), fresh);

    for bad in ["-1", "1001", "many"] {
        let sse = Sse::connect(
            &format!("{}&history={bad}", server.stream_url(&["logs:a"])),
            &[bearer(&sub)],
        )
        .await;
        assert_error(sse.status, &sse.error, 400, "invalid_history");
    }
}

#[tokio::test]
async fn rest_history_then_since_loses_and_repeats_nothing() {
    let server = Server::start(&[("LIMITS__PUBLISH_RATE", "0")]);
    let log = spread(&server, &["feed:1", "feed:2"], 40).await;
    let sub = token("u1", &["feed:*"], &[]);
    let (_, page) = history(&server, "feed:1", "limit=5", &sub).await;
    assert_eq!(ids_of(&page["events"]), of_channel(&log, "feed:1")[15..]);
    let loaded_up_to = page["last_event_id"].as_str().unwrap().to_owned();
    // Published between the page load and the subscription.
    let between = publish_on(&server, &["feed:1", "feed:2", "feed:1"], 100).await;
    let url = format!("{}&since={loaded_up_to}", server.stream_url(&["feed:1"]));
    let (mut sse, _) = Sse::open(&url, &[bearer(&sub)]).await;
    assert_eq!(
        ids(&sse.take(2, T).await),
        [between[0].clone(), between[2].clone()]
    );
    sse.expect_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_channel_added_with_history_gets_its_latest_as_history_frames_then_live() {
    let server = Server::start(&[("LIMITS__PUBLISH_RATE", "0")]);
    let log = spread(&server, &["logs:a", "logs:b"], 40).await;
    let sub = token("u1", &["logs:*"], &[]);
    let (mut sse, connected) = Sse::open(&server.stream_url(&["logs:a"]), &[bearer(&sub)]).await;
    let conn = connected["connection_id"].as_str().unwrap().to_owned();

    let (status, body) = change(
        &server,
        &conn,
        &sub,
        &json!({"add": ["logs:b"], "history": 4}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (frames, controls) = history_frames(&mut sse, 4).await;
    assert_eq!(controls, ["subscribed"]);
    assert_eq!(ids_of(&json!(frames)), of_channel(&log, "logs:b")[16..]);
    let live = publish_on(&server, &["logs:b", "logs:a"], 100).await;
    assert_eq!(ids(&sse.take(2, T).await), live);

    // With `since` as well: only what is after it, the newest `history` of those.
    let b = of_channel(&log, "logs:b");
    let (status, body) = change(&server, &conn, &sub, &json!({"remove": ["logs:b"]})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = change(
        &server,
        &conn,
        &sub,
        &json!({"add": ["logs:b"], "since": b[17], "history": 100}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (frames, _) = history_frames(&mut sse, 3).await;
    assert_eq!(
        ids_of(&json!(frames)),
        [b[18].clone(), b[19].clone(), live[0].clone()]
    );
    sse.expect_quiet(Duration::from_millis(300)).await;

    // Refusals change nothing.
    for (body, code) in [
        (json!({"add": ["logs:c"], "history": -1}), "invalid_history"),
        (
            json!({"add": ["logs:c"], "history": 1001}),
            "invalid_history",
        ),
        (
            json!({"add": ["logs:c"], "history": "5"}),
            "invalid_history",
        ),
        (
            json!({"add": ["logs:c"], "since": "1", "last_event_id": "1"}),
            "invalid_json",
        ),
        (
            json!({"add": ["logs:c"], "since": "x"}),
            "invalid_last_event_id",
        ),
    ] {
        let (status, got) = change(&server, &conn, &sub, &body).await;
        assert_error(status, &got, 400, code);
    }
    let (_, body) = change(&server, &conn, &sub, &json!({})).await;
    assert_eq!(body["channels"], json!(["logs:a", "logs:b"]));
}

#[tokio::test]
async fn history_survives_a_restart_of_the_file_log() {
    let mut server = Server::start(&[("LIMITS__PUBLISH_RATE", "0")]);
    let log = spread(&server, &["x:1", "x:2", "x:3"], 30).await;
    server.kill9_and_restart();
    let sub = token("u1", &["x:*"], &[]);
    let (status, page) = history(&server, "x:2", "limit=4", &sub).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids_of(&page["events"]), of_channel(&log, "x:2")[6..]);
    // New events join the rebuilt index.
    let more = publish_on(&server, &["x:2"], 100).await;
    let (_, page) = history(&server, "x:2", "limit=2", &sub).await;
    assert_eq!(
        ids_of(&page["events"]),
        [of_channel(&log, "x:2")[9].clone(), more[0].clone()]
    );
}

#[tokio::test]
async fn history_across_two_nodes_on_redis() {
    let engine = engines::redis::start(engines::redis::Persistence::None);
    let url = engines::redis::url(&engine);
    let node = || {
        Server::start(&[
            ("LOG__KIND", "redis"),
            ("LOG__URL", url.as_str()),
            ("LOG__STREAM", "history"),
            ("LIMITS__PUBLISH_RATE", "0"),
        ])
    };
    let (a, b) = (node(), node());
    let log = spread(&a, &["j:1", "j:2"], 20).await;
    let sub = token("u1", &["j:*"], &[]);
    // REST on the other node.
    let (status, page) = history(&b, "j:1", "limit=3", &sub).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids_of(&page["events"]), of_channel(&log, "j:1")[7..]);
    // A stream with history on the other node.
    let (mut sse, _) = Sse::open(
        &format!("{}&history=2", b.stream_url(&["j:2"])),
        &[bearer(&sub)],
    )
    .await;
    assert_eq!(ids(&sse.take(2, T).await), of_channel(&log, "j:2")[8..]);
    // A channel added with history through node A for B's stream.
    let conn = {
        let (mut probe, connected) = Sse::open(&b.stream_url(&["j:9"]), &[bearer(&sub)]).await;
        let conn = connected["connection_id"].as_str().unwrap().to_owned();
        let (status, body) = change(&a, &conn, &sub, &json!({"add": ["j:1"], "history": 2})).await;
        assert_eq!(status, 200, "{body}");
        let (frames, _) = history_frames(&mut probe, 2).await;
        assert_eq!(ids_of(&json!(frames)), of_channel(&log, "j:1")[8..]);
        let live = publish_on(&a, &["j:1"], 100).await;
        assert_eq!(ids(&probe.take(1, T).await), live);
        conn
    };
    assert!(conn.starts_with("c_"));
}

#[tokio::test]
async fn a_streams_history_is_the_newest_thousand_events_at_most() {
    let server = Server::start(&[("LIMITS__PUBLISH_RATE", "0")]);
    let p = publisher();
    let mut all = Vec::new();
    for batch in 0..12 {
        let body: Vec<Value> = (0..100)
            .map(|i| {
                let channel = ["big:1", "big:2"][i % 2];
                json!({"channel": channel, "data": {"n": batch * 100 + i}})
            })
            .collect();
        let (status, answer) = server.publish(&p, &json!(body)).await;
        assert_eq!(status, 200, "{answer}");
        all.extend(published_ids(&answer));
    }
    let sub = token("u1", &["big:*"], &[]);
    let url = format!("{}&history=600", server.stream_url(&["big:1", "big:2"]));
    let (mut sse, _) = Sse::open(&url, &[bearer(&sub)]).await;
    assert_eq!(ids(&sse.take(1000, T).await), all[200..]);
    sse.expect_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn one_answer_looks_at_ten_thousand_events_at_most_and_pages_on() {
    let server = Server::start(&[("LIMITS__PUBLISH_RATE", "0")]);
    let p = publisher();
    let public = publish_on(&server, &["crowd"; 5], 0).await;
    for _ in 0..11 {
        let body: Vec<Value> = (0..1000)
            .map(|i| json!({"channel": "crowd", "data": {"i": i}, "users": ["u2"]}))
            .collect();
        let (status, answer) = server.publish(&p, &json!(body)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let sub = token("u1", &["crowd"], &[]);
    let (status, first) = history(&server, "crowd", "limit=10", &sub).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["events"], json!([]));
    assert_eq!(first["more"], true);
    let next = first["next_before"]
        .as_str()
        .expect("next_before")
        .to_owned();
    let (_, second) = history(&server, "crowd", &format!("limit=10&before={next}"), &sub).await;
    assert_eq!(ids_of(&second["events"]), public);
    assert_eq!(second["more"], false);
}

#[tokio::test]
async fn a_channel_a_pattern_already_covers_gets_no_history_twice() {
    let server = Server::start(&[("LIMITS__PUBLISH_RATE", "0")]);
    spread(&server, &["p:1", "p:2"], 10).await;
    let sub = token("u1", &["p:*"], &[]);
    let (mut sse, connected) = Sse::open(&server.stream_url(&["p:*"]), &[bearer(&sub)]).await;
    let conn = connected["connection_id"].as_str().unwrap().to_owned();
    let (status, body) = change(&server, &conn, &sub, &json!({"add": ["p:1"], "history": 3})).await;
    assert_eq!(status, 200, "{body}");
    let e = sse.next_event(T).await;
    assert_eq!(e.event, "subscribed");
    let live = publish_on(&server, &["p:1"], 100).await;
    assert_eq!(ids(&sse.take(1, T).await), live);
    sse.expect_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn on_nats_paging_back_inside_one_message_then_since_loses_nothing() {
    let engine = engines::nats::start();
    let url = engines::nats::url(&engine);
    let server = Server::start(&[
        ("LOG__KIND", "nats"),
        ("LOG__URL", url.as_str()),
        ("LOG__STREAM", "history"),
        ("LIMITS__PUBLISH_RATE", "0"),
    ]);
    // One publish of three events: one JetStream message, positions `<seq>-0 -2 -5`.
    let p = publisher();
    let body: Vec<Value> = (0..3)
        .map(|n| json!({"channel": "batch", "data": {"n": n}}))
        .collect();
    let (status, answer) = server.publish(&p, &json!(body)).await;
    assert_eq!(status, 200, "{answer}");
    let batch = published_ids(&answer);
    let sub = token("u1", &["batch"], &[]);
    let (status, page) = history(&server, "batch", &format!("before={}", batch[1]), &sub).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids_of(&page["events"]), batch[..1]);
    let since = page["last_event_id"].as_str().unwrap();
    let url = format!("{}&since={since}", server.stream_url(&["batch"]));
    let (mut sse, _) = Sse::open(&url, &[bearer(&sub)]).await;
    assert_eq!(ids(&sse.take(2, T).await), batch[1..]);
    sse.expect_quiet(Duration::from_millis(300)).await;
}
