//! The admin side of the cluster control path on real `ssegate serve` processes: incidents and
//! the console's admin stream, refusals of bad admin requests (clear codes, nothing changed),
//! and — on two nodes sharing a test-started redis-server — a source stopped and started on
//! another node, incidents gathered from every node, the cluster gauge, and a drain of another
//! node (`{"node": id}`), after which the survivor forgets it and its connections are gone.
//! (Three nodes behind nginx, subscription changes, kick, broadcast and presence:
//! tests/cluster_control.rs.)

mod common;
mod engines;

use std::time::{Duration, Instant};

use common::*;
use engines::redis::Persistence;
use reqwest::Method;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

async fn post(url: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let (status, _, body) = call(Method::POST, url, &[bearer(token)], body).await;
    (status, body)
}

/// Polls `GET url` (admin) until `done` holds for its body, for at most `T`.
async fn until(url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (_, _, body) = get(url, &[bearer(&admin_token())]).await;
        if done(&body) {
            return body;
        }
        assert!(start.elapsed() < T, "{what}: last answer {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next event of `kind` on the admin stream (others skipped), within `T`.
async fn next_of(sse: &mut Sse, kind: &str) -> Value {
    let start = Instant::now();
    loop {
        let left = T.saturating_sub(start.elapsed());
        let e = sse.next_event(left).await;
        if e.event == kind {
            return serde_json::from_str(&e.data).expect("JSON data");
        }
    }
}

#[tokio::test]
async fn incidents_reach_the_list_and_the_admin_stream() {
    let server = Server::start(&[]);
    let stream = format!("{}/v1/admin/stream", server.url);
    // Not for non-admins.
    let refused = Sse::connect(&stream, &[bearer(&token("u1", &["**"], &[]))]).await;
    assert_error(refused.status, &refused.error, 403, "admin_required");

    let mut sse = Sse::connect(&stream, &[bearer(&admin_token())]).await;
    assert_eq!(sse.status, 200, "{}", sse.error);
    assert_eq!(
        sse.headers["content-type"], "text/event-stream",
        "{:?}",
        sse.headers
    );
    let status = next_of(&mut sse, "status").await;
    assert_eq!(status["nodes"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["nodes"][0]["self"], true);
    assert_eq!(status["nodes"][0]["ready"], true);
    assert_eq!(status["cluster"]["bus"], Value::Null);

    // A bad token on a stream request and a 403 on the admin API are incidents.
    let bad = Sse::connect(
        &format!("{}/v1/stream?channel=a", server.url),
        &[bearer("not-a-token")],
    )
    .await;
    assert_eq!(bad.status, 401);
    let incident = next_of(&mut sse, "incident").await;
    assert_eq!(incident["kind"], "auth", "{incident}");
    assert_eq!(incident["code"], bad.error["error"]["code"], "{incident}");
    assert_eq!(incident["path"], "/v1/stream");
    assert_eq!(incident["ip"], "127.0.0.1");
    assert_eq!(incident["node"], status["node_id"]);
    let (code, _, _) = get(
        &format!("{}/v1/channels", server.url),
        &[bearer(&token("u1", &["**"], &[]))],
    )
    .await;
    assert_eq!(code, 403);
    let second = next_of(&mut sse, "incident").await;
    assert_eq!(second["code"], "admin_required", "{second}");

    let (code, _, body) = get(
        &format!("{}/v1/admin/incidents", server.url),
        &[bearer(&admin_token())],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let list = body["incidents"].as_array().unwrap();
    let paths: Vec<&str> = list.iter().map(|i| i["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["/v1/channels", "/v1/stream", "/v1/admin/stream"],
        "newest first: {body}"
    );
    assert_eq!(body["unreachable"], json!([]));
}

#[tokio::test]
async fn bad_admin_requests_are_refused_and_change_nothing() {
    let server = Server::start(&[]);
    let admin = admin_token();
    let (_sse, connected) = Sse::open(
        &format!("{}/v1/stream?channel=chat:1", server.url),
        &[bearer(&token("u1", &["chat:*"], &[]))],
    )
    .await;
    let drain = format!("{}/v1/admin/drain", server.url);
    for (body, status, code) in [
        (json!([1]), 400, "invalid_json"),
        (json!({"bogus": 1}), 400, "invalid_json"),
        (json!({"node": "no-such-node"}), 404, "node_not_found"),
    ] {
        let (s, b) = post(&drain, &admin, Some(&body)).await;
        assert_error(s, &b, status, code);
    }
    let (s, b) = post(
        &format!("{}/v1/sources/x/stop?node=no-such-node", server.url),
        &admin,
        None,
    )
    .await;
    assert_error(s, &b, 404, "node_not_found");
    let (s, b) = post(&format!("{}/v1/sources/x/stop", server.url), &admin, None).await;
    assert_error(s, &b, 404, "source_not_found");
    let (s, _, b) = get(
        &format!("{}/v1/connections?channel=bad%20channel", server.url),
        &[bearer(&admin)],
    )
    .await;
    assert_error(s, &b, 400, "invalid_channel");
    // Presence: exact channels only; the grant or admin.
    let presence = |c: &str| format!("{}/v1/channels/{c}/presence", server.url);
    let (s, _, b) = get(&presence("chat:*"), &[bearer(&admin)]).await;
    assert_error(s, &b, 400, "invalid_channel");
    let (s, _, b) = get(&presence("chat:1"), &[bearer(&token("u2", &["**"], &[]))]).await;
    assert_error(s, &b, 403, "presence_forbidden");
    let (s, _, b) = get(
        &presence("chat:1"),
        &[bearer(&token_with_presence("u2", &[], &["chat:*"]))],
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b,
        json!({"channel": "chat:1", "users": [{"user": "u1", "connections": 1}],
               "connections": 1, "unreachable": []}),
        "a subscriber with the grant sees users, not connection ids"
    );
    let (s, _, b) = get(&presence("chat:1"), &[bearer(&admin)]).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["clients"][0]["connection_id"], connected["connection_id"]);
    assert_eq!(b["truncated"], false);
    // A subscription change for an id no node gave out.
    let (s, b) = post(
        &format!("{}/v1/connections/c_zz/subscriptions", server.url),
        &token("u1", &["chat:*"], &[]),
        Some(&json!({"add": ["chat:2"]})),
    )
    .await;
    assert_error(s, &b, 404, "connection_not_found");
    // Nothing changed: still one connection, still ready.
    let list = until(
        &format!("{}/v1/connections", server.url),
        "one connection",
        |b| b["connections"].as_array().is_some_and(|l| l.len() == 1),
    )
    .await;
    assert_eq!(list["connections"][0]["channels"], json!(["chat:1"]));
    let (s, _, _) = get(&format!("{}/readyz", server.url), &[]).await;
    assert_eq!(s, 200);
}

fn node(engine: &engines::Engine, id: &str) -> Server {
    Server::start_with_config(
        &format!(
            r#"[server]
node_id = "{id}"

[log]
kind = "redis"
url = "{url}"
stream = "admin"

[cluster]
heartbeat_ms = 200
node_timeout_ms = 1000

[[sources]]
name = "inbox"
type = "dapr"
pubsub = "pubsub"
topic = "inbox"
allow_unauthenticated = true
channel = "inbox:{{row.id}}"
event_type = "inbox.item"
"#,
            url = engines::redis::url(engine)
        ),
        &[],
    )
}

fn source_state(status: &Value) -> Value {
    status["sources"][0]["state"].clone()
}

#[tokio::test]
async fn sources_incidents_and_drain_reach_another_node() {
    let engine = engines::redis::start(Persistence::None);
    let a = node(&engine, "node-a");
    let mut b = node(&engine, "node-b");
    let status_a = format!("{}/v1/status", a.url);
    until(&status_a, "A sees both nodes", |s| {
        s["nodes"].as_array().is_some_and(|n| n.len() == 2)
    })
    .await;
    let text = metrics_text(&a).await;
    assert_eq!(metric(&text, "ssegate_cluster_nodes"), Some(2.0), "{text}");

    // Stop B's source through A; A's own keeps running.
    let admin = admin_token();
    let (s, body) = post(
        &format!("{}/v1/sources/inbox/stop?node=node-b", a.url),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["node"], "node-b");
    assert_eq!(body["state"], "stopped", "{body}");
    let (_, _, on_b) = get(&format!("{}/v1/status", b.url), &[bearer(&admin)]).await;
    assert_eq!(source_state(&on_b), "stopped", "{on_b}");
    let (_, _, on_a) = get(&status_a, &[bearer(&admin)]).await;
    assert_ne!(source_state(&on_a), "stopped", "{on_a}");
    // The heartbeat carries it to A's list of nodes.
    until(&status_a, "A sees B's source stopped", |s| {
        s["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["node_id"] == "node-b"))
            .is_some_and(|b| source_state(b) == "stopped")
    })
    .await;
    let (s, body) = post(
        &format!("{}/v1/sources/inbox/start?node=node-b", a.url),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["node"], "node-b");
    until(
        &format!("{}/v1/status", b.url),
        "B's source runs again",
        |s| source_state(s) == "running",
    )
    .await;

    // An incident on B is in A's list.
    let (s, _, _) = get(&format!("{}/v1/status", b.url), &[bearer("nope")]).await;
    assert_eq!(s, 401);
    let (_, _, incidents) = get(&format!("{}/v1/admin/incidents", a.url), &[bearer(&admin)]).await;
    assert_eq!(incidents["incidents"][0]["node"], "node-b", "{incidents}");

    // A stream on B, then B drained through A: its stream is sent away, B exits, A forgets
    // it, and a subscription change for B's connection is answered at once.
    let user = token("u1", &["x:*"], &[]);
    let (mut on_b_stream, connected) = Sse::open(
        &format!("{}/v1/stream?channel=x:1", b.url),
        &[bearer(&user)],
    )
    .await;
    let (s, body) = post(
        &format!("{}/v1/admin/drain", a.url),
        &admin,
        Some(&json!({"node": "node-b"})),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["nodes"], json!(["node-b"]));
    on_b_stream.expect_closing("shutdown", T).await;
    let start = Instant::now();
    while b.try_exited().is_none() {
        assert!(start.elapsed() < T, "node-b did not exit after its drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until(&status_a, "A forgets B", |s| {
        s["nodes"].as_array().is_some_and(|n| n.len() == 1)
    })
    .await;
    let (s, body) = post(
        &format!(
            "{}/v1/connections/{}/subscriptions",
            a.url,
            connected["connection_id"].as_str().unwrap()
        ),
        &user,
        Some(&json!({"add": ["x:2"]})),
    )
    .await;
    assert_error(s, &body, 404, "connection_not_found");
    let (s, _, _) = get(&format!("{}/readyz", a.url), &[]).await;
    assert_eq!(s, 200, "A is not drained");
}
