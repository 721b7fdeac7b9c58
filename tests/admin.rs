//! The admin API end to end: list connections and channels, close a user's streams,
//! broadcast to every stream — each only with the admin grant.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

fn admin_token() -> String {
    token_with("ops", &[], &[], true, 3600)
}

async fn open(server: &Server, user: &str, channels: &[&str]) -> (Sse, String) {
    let tok = token(user, &["**"], &[]);
    let (sse, connected) = Sse::open(&server.stream_url(channels), &[bearer(&tok)]).await;
    let id = connected["connection_id"].as_str().unwrap().to_owned();
    (sse, id)
}

async fn admin_get(server: &Server, path: &str) -> Value {
    let (status, _, body) = call(
        Method::GET,
        &format!("{}{path}", server.url),
        &[bearer(&admin_token())],
        None,
    )
    .await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn connection_ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["connection_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Waits until `GET path` (admin) satisfies `ok`.
async fn wait_for(server: &Server, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let body = admin_get(server, path).await;
        if ok(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} never matched: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_admin_endpoint_refuses_anonymous_and_non_admin_callers() {
    let server = Server::start(&[]);
    let (mut sse, _) = open(&server, "u1", &["a"]).await;
    let user = token("u1", &["**"], &["**"]);
    let endpoints: [(Method, &str, Option<Value>); 4] = [
        (Method::GET, "/v1/connections?user=u1", None),
        (Method::DELETE, "/v1/users/u1/connections", None),
        (Method::GET, "/v1/channels", None),
        (
            Method::POST,
            "/v1/broadcast",
            Some(json!({"type": "announce", "data": 1})),
        ),
    ];
    for (method, path, body) in &endpoints {
        let url = format!("{}{path}", server.url);
        let (status, _, res) = call(method.clone(), &url, &[], body.as_ref()).await;
        assert_error(status, &res, 401, "missing_credentials");
        let (status, _, res) = call(method.clone(), &url, &[bearer(&user)], body.as_ref()).await;
        assert_error(status, &res, 403, "admin_required");
    }
    // Nothing happened to the stream: no kick, no broadcast.
    sse.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn connections_lists_the_open_streams_of_a_user_or_all() {
    let server = Server::start(&[]);
    let (_a, a) = open(&server, "u1", &["a"]).await;
    let (_b, b) = open(&server, "u1", &["b", "c"]).await;
    let (_c, c) = open(&server, "u2", &["a"]).await;

    let list = admin_get(&server, "/v1/connections?user=u1").await;
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(connection_ids(&list), want);
    let entry = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["connection_id"] == b.as_str())
        .unwrap();
    assert_eq!(entry["user"], "u1");
    assert_eq!(entry["channels"], json!(["b", "c"]));
    assert_eq!(entry["ip"], "127.0.0.1");
    assert!(entry["opened"].as_str().unwrap().ends_with('Z'), "{entry}");

    let all = admin_get(&server, "/v1/connections").await;
    let mut want = vec![a, b, c];
    want.sort();
    assert_eq!(connection_ids(&all), want);
    let none = admin_get(&server, "/v1/connections?user=nobody").await;
    assert_eq!(none["connections"], json!([]));
}

#[tokio::test]
async fn kicking_a_user_closes_each_of_its_streams_and_no_other() {
    let server = Server::start(&[]);
    let (mut a, _) = open(&server, "u1", &["a"]).await;
    let (mut b, _) = open(&server, "u1", &["b"]).await;
    let (mut other, other_id) = open(&server, "u2", &["a"]).await;

    let (status, _, body) = call(
        Method::DELETE,
        &format!("{}/v1/users/u1/connections", server.url),
        &[bearer(&admin_token())],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"closed": 2, "unreachable": []}));
    a.expect_closing("kicked", T).await;
    b.expect_closing("kicked", T).await;

    // The kicked streams are gone from the node; the other user's stream goes on.
    let left = wait_for(&server, "/v1/connections", |l| {
        l["connections"].as_array().unwrap().len() == 1
    })
    .await;
    assert_eq!(connection_ids(&left), vec![other_id]);
    let sent = server.publish_many(&publisher(), "a", 1, 1).await;
    assert_eq!(ids(&other.take(1, T).await), sent);

    // Kicking a user without streams closes none.
    let (status, _, body) = call(
        Method::DELETE,
        &format!("{}/v1/users/nobody/connections", server.url),
        &[bearer(&admin_token())],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"closed": 0, "unreachable": []}));
}

#[tokio::test]
async fn channels_lists_subscriber_counts() {
    let server = Server::start(&[]);
    let (_a, _) = open(&server, "u1", &["a", "b"]).await;
    let (_b, _) = open(&server, "u2", &["a"]).await;
    let (c, _) = open(&server, "u3", &["a", "c:x"]).await;

    let body = admin_get(&server, "/v1/channels").await;
    assert_eq!(
        body,
        json!({"channels": [
            {"channel": "a", "subscribers": 3, "events": 0},
            {"channel": "b", "subscribers": 1, "events": 0},
            {"channel": "c:x", "subscribers": 1, "events": 0},
        ], "unreachable": []})
    );

    // A closed stream no longer counts (the server notices the kick at once).
    drop(c);
    let (status, _, _) = call(
        Method::DELETE,
        &format!("{}/v1/users/u3/connections", server.url),
        &[bearer(&admin_token())],
        None,
    )
    .await;
    assert_eq!(status, 200);
    // Events are counted per channel with subscribers (the console's events/s).
    let (status, _) = server
        .publish(
            &publisher(),
            &json!({"channel": "a", "type": "t", "data": {}}),
        )
        .await;
    assert_eq!(status, 200);
    wait_for(&server, "/v1/channels", |b| {
        *b == json!({"channels": [
            {"channel": "a", "subscribers": 2, "events": 1},
            {"channel": "b", "subscribers": 1, "events": 0},
        ], "unreachable": []})
    })
    .await;
}

#[tokio::test]
async fn broadcast_reaches_every_open_stream_without_an_id() {
    let server = Server::start(&[]);
    let (mut a, _) = open(&server, "u1", &["a"]).await;
    let (mut b, _) = open(&server, "u2", &["b"]).await;
    // One stored event first, so the parser has a last event id a broadcast must not move.
    let sent = server.publish_many(&publisher(), "a", 1, 1).await;
    assert_eq!(ids(&a.take(1, T).await), sent);

    let (status, _, body) = call(
        Method::POST,
        &format!("{}/v1/broadcast", server.url),
        &[bearer(&admin_token())],
        Some(&json!({"type": "maintenance", "data": {"in_s": 60}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"connections": 2, "unreachable": []}));
    for sse in [&mut a, &mut b] {
        let e = sse.next_event(T).await;
        assert_eq!(e.event, "maintenance");
        assert!(e.id.is_empty(), "a broadcast carries no id: {e:?}");
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(data["type"], "maintenance");
        assert_eq!(data["data"], json!({"in_s": 60}));
        assert!(data["time"].as_str().unwrap().ends_with('Z'), "{data}");
        assert!(data.get("id").is_none(), "{data}");
    }

    // Not stored: a stream resuming from before it does not get it.
    let tok = token("u1", &["a"], &[]);
    let (mut resumed, _) = Sse::open(
        &server.stream_url(&["a"]),
        &[bearer(&tok), last_event_id("0")],
    )
    .await;
    let replay = resumed.next_event(T).await;
    assert_eq!(replay.id, sent[0]);
    resumed.expect_silence(Duration::from_millis(500)).await;

    // A broadcast needs a valid type.
    let (status, _, body) = call(
        Method::POST,
        &format!("{}/v1/broadcast", server.url),
        &[bearer(&admin_token())],
        Some(&json!({"type": "closing"})),
    )
    .await;
    assert_error(status, &body, 400, "invalid_type");
}
