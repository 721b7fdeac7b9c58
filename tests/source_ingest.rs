//! The ingest sources end to end: a real `ssegate serve` process with `[[sources]]`, a real
//! broker (redis-server, nats-server with JetStream) started by the test on a free port, and
//! a real SSE client. Dapr: HTTP requests shaped like the sidecar's.

mod common;
mod engines;

use std::time::Duration;

use common::{
    admin_token, bearer, call, envelope, get, last_event_id, source_status, token_with, Server, Sse,
};
use engines::redis::Persistence;
use reqwest::Method;
use serde_json::{json, Value};

/// Waits until source `name` is `running`; fails at once (with the server log) when it failed.
async fn wait_running(server: &Server, name: &str) {
    for _ in 0..300 {
        let s = source_status(server, name).await;
        assert_ne!(s["state"], "failed", "{s}\n{}", server.log_text());
        if s["state"] == "running" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("source {name} is not running:\n{}", server.log_text());
}

/// Subscribes from the start of the log (`Last-Event-ID: 0`), so events appended before the
/// client connected are replayed too.
async fn subscribe(server: &Server, channel: &str) -> Sse {
    let sub = token_with("u1", &[channel], &[], false, 3600);
    Sse::open(
        &server.stream_url(&[channel]),
        &[bearer(&sub), last_event_id("0")],
    )
    .await
    .0
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn redis_cmd(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(conn).await.unwrap()
}

fn int(v: &redis::Value) -> i64 {
    match v {
        redis::Value::Int(n) => *n,
        redis::Value::Array(items) => items.get(1).map(int).unwrap_or(0),
        other => panic!("not a number: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Redis Pub/Sub

#[tokio::test]
async fn redis_pubsub_messages_reach_sse_clients() {
    let engine = engines::redis::start(Persistence::None);
    let url = engines::redis::url(&engine);
    let server = Server::start_with_config(
        &format!(
            r#"
[[sources]]
name = "chat"
type = "redis"
url = "{url}"
channels = ["chat"]
patterns = ["rooms.*"]
id_field = "msgId"
channel = "rooms:{{row.room}}"
event_type = "{{row.kind}}"
exclude = ["internal"]
"#
        ),
        &[],
    );
    wait_running(&server, "chat").await;
    let mut conn = redis_conn(&url).await;
    // Pub/Sub keeps nothing for absent subscribers: wait until the gateway listens.
    for _ in 0..200 {
        let channels = redis_cmd(&mut conn, &["PUBSUB", "NUMSUB", "chat"]).await;
        let patterns = redis_cmd(&mut conn, &["PUBSUB", "NUMPAT"]).await;
        if int(&channels) == 1 && int(&patterns) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sse = subscribe(&server, "rooms:r1").await;
    let publish = |channel: &'static str, body: Value| {
        let url = url.clone();
        async move {
            let mut c = redis_conn(&url).await;
            let n = redis_cmd(&mut c, &["PUBLISH", channel, &body.to_string()]).await;
            assert_eq!(int(&n), 1, "one subscriber: the gateway");
        }
    };
    publish(
        "chat",
        json!({"room": "r1", "kind": "message.posted", "text": "hi", "msgId": "m1", "internal": 7}),
    )
    .await;
    // The same id again (a publisher's retry): appended once.
    publish(
        "chat",
        json!({"room": "r1", "kind": "message.posted", "text": "hi", "msgId": "m1"}),
    )
    .await;
    let mut c = redis_conn(&url).await;
    redis_cmd(&mut c, &["PUBLISH", "chat", "not json"]).await;
    publish("chat", json!({"room": "a:b", "kind": "message.posted"})).await;
    publish(
        "rooms.r1",
        json!({"room": "r1", "kind": "message.edited", "text": "hi!", "msgId": "m2"}),
    )
    .await;
    let got = sse.take(2, Duration::from_secs(10)).await;
    assert_eq!(got[0].event, "message.posted");
    assert_eq!(
        envelope(&got[0])["data"],
        json!({"room": "r1", "kind": "message.posted", "text": "hi", "msgId": "m1"})
    );
    assert_eq!(envelope(&got[0])["channel"], "rooms:r1");
    assert_eq!(got[1].event, "message.edited");
    sse.expect_quiet(Duration::from_millis(300)).await;
    let status = source_status(&server, "chat").await;
    assert_eq!(status["type"], "redis");
    assert_eq!(
        status["skipped"], 2,
        "not JSON, and a channel value with `:`"
    );
}

// ---------------------------------------------------------------------------------------
// Redis Streams

#[tokio::test]
async fn redis_stream_entries_are_delivered_acked_after_the_append_and_pending_ones_reclaimed() {
    let engine = engines::redis::start(Persistence::Aof);
    let url = engines::redis::url(&engine);
    let mut conn = redis_conn(&url).await;
    redis_cmd(
        &mut conn,
        &["XGROUP", "CREATE", "orders", "ssegate", "$", "MKSTREAM"],
    )
    .await;
    // A previous run of this gateway read entry 1 and died before acknowledging it.
    redis_cmd(
        &mut conn,
        &[
            "XADD",
            "orders",
            "1-1",
            "data",
            r#"{"customer":"c1","n":1}"#,
        ],
    )
    .await;
    redis_cmd(
        &mut conn,
        &[
            "XREADGROUP",
            "GROUP",
            "ssegate",
            "gw-1",
            "STREAMS",
            "orders",
            ">",
        ],
    )
    .await;
    // Another gateway, gone for good, left entry 2 pending.
    redis_cmd(
        &mut conn,
        &[
            "XADD",
            "orders",
            "2-1",
            "data",
            r#"{"customer":"c1","n":2}"#,
        ],
    )
    .await;
    redis_cmd(
        &mut conn,
        &[
            "XREADGROUP",
            "GROUP",
            "ssegate",
            "gw-old",
            "STREAMS",
            "orders",
            ">",
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let config = format!(
        r#"
[[sources]]
name = "orders"
type = "redis_stream"
url = "{url}"
stream = "orders"
group = "ssegate"
consumer = "gw-1"
payload_field = "data"
claim_idle_ms = 200
channel = "orders:{{row.customer}}"
event_type = "order.created"
"#
    );
    let mut server = Server::start_with_config(&config, &[]);
    wait_running(&server, "orders").await;
    let mut sse = subscribe(&server, "orders:c1").await;
    let got = sse.take(2, Duration::from_secs(10)).await;
    let n: Vec<Value> = got
        .iter()
        .map(|e| envelope(e)["data"]["n"].clone())
        .collect();
    assert_eq!(
        n,
        [json!(1), json!(2)],
        "own pending entry first, then the claimed one"
    );
    // New entries, one of them unusable (skipped and acknowledged, not retried forever).
    redis_cmd(&mut conn, &["XADD", "orders", "*", "data", "{oops"]).await;
    redis_cmd(
        &mut conn,
        &["XADD", "orders", "*", "data", r#"{"customer":"c1","n":3}"#],
    )
    .await;
    let got = sse.take(1, Duration::from_secs(10)).await;
    assert_eq!(envelope(&got[0])["data"]["n"], 3);
    let last = got[0].id.clone();
    // Acknowledged only after the append: nothing stays pending.
    let mut pending = 1;
    for _ in 0..100 {
        // XPENDING's summary starts with the number of pending entries.
        pending = match redis_cmd(&mut conn, &["XPENDING", "orders", "ssegate"]).await {
            redis::Value::Array(items) => int(&items[0]),
            other => panic!("{other:?}"),
        };
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending, 0, "every entry acknowledged");
    assert_eq!(source_status(&server, "orders").await["skipped"], 1);

    // A crash and restart: acknowledged entries are not read again; new ones flow.
    server.kill9_and_restart();
    wait_running(&server, "orders").await;
    redis_cmd(
        &mut conn,
        &["XADD", "orders", "*", "data", r#"{"customer":"c1","n":4}"#],
    )
    .await;
    let sub = token_with("u1", &["orders:c1"], &[], false, 3600);
    let (mut sse, _) = Sse::open(
        &server.stream_url(&["orders:c1"]),
        &[bearer(&sub), last_event_id(&last)],
    )
    .await;
    let got = sse.take(1, Duration::from_secs(10)).await;
    assert_eq!(envelope(&got[0])["data"]["n"], 4, "no duplicate before it");
    sse.expect_quiet(Duration::from_millis(300)).await;
}

// ---------------------------------------------------------------------------------------
// NATS

#[tokio::test]
async fn nats_core_messages_reach_sse_clients_and_message_ids_dedupe() {
    let engine = engines::nats::start();
    let url = engines::nats::url(&engine);
    let server = Server::start_with_config(
        &format!(
            r#"
[[sources]]
name = "grades"
type = "nats"
url = "{url}"
subject = "grades.>"
queue = "ssegate"
channel = "students:{{row.student}}"
event_type = "grade.{{row.kind}}"
"#
        ),
        &[],
    );
    wait_running(&server, "grades").await;
    let mut sse = subscribe(&server, "students:s1").await;
    let nats = async_nats::connect(&url).await.unwrap();
    // Core NATS keeps nothing for absent subscribers: probe until the gateway listens.
    let mut probes = 0;
    loop {
        probes += 1;
        assert!(probes < 100, "the gateway never received a message");
        let body = json!({"student": "s1", "kind": "probe", "n": probes});
        nats.publish("grades.probe", body.to_string().into())
            .await
            .unwrap();
        nats.flush().await.unwrap();
        if let Some(e) = sse.next(Duration::from_millis(200)).await {
            if e.event == "grade.probe" {
                break;
            }
        }
    }
    // Stragglers of the probe loop.
    while sse.next(Duration::from_millis(300)).await.is_some() {}
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "g-1");
    for _ in 0..2 {
        nats.publish_with_headers(
            "grades.math",
            headers.clone(),
            json!({"student": "s1", "kind": "posted", "score": 9})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    }
    nats.publish("grades.math", "not json".into())
        .await
        .unwrap();
    nats.publish(
        "grades.art",
        json!({"student": "s1", "kind": "posted", "score": 7})
            .to_string()
            .into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    let got = sse.take(2, Duration::from_secs(10)).await;
    assert_eq!(got[0].event, "grade.posted");
    assert_eq!(envelope(&got[0])["data"]["score"], 9);
    assert_eq!(
        envelope(&got[1])["data"]["score"],
        7,
        "the repeated Nats-Msg-Id appended once"
    );
    sse.expect_quiet(Duration::from_millis(300)).await;
    assert_eq!(source_status(&server, "grades").await["skipped"], 1);
}

#[tokio::test]
async fn nats_jetstream_durable_consumer_acks_after_the_append_and_survives_a_crash() {
    use async_nats::jetstream;
    let engine = engines::nats::start();
    let url = engines::nats::url(&engine);
    let nats = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(nats.clone());
    js.create_stream(jetstream::stream::Config {
        name: "GRADES".into(),
        subjects: vec!["grades.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let publish = |n: u64| {
        let js = js.clone();
        async move {
            js.publish(
                "grades.math",
                json!({"student": "s1", "n": n}).to_string().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    // Stored before the gateway exists.
    publish(1).await;
    publish(2).await;
    let mut server = Server::start_with_config(
        &format!(
            r#"
[[sources]]
name = "grades"
type = "nats"
url = "{url}"
subject = "grades.>"
stream = "GRADES"
durable = "ssegate"
start = "all"
channel = "students:{{row.student}}"
event_type = "grade.posted"
"#
        ),
        &[],
    );
    wait_running(&server, "grades").await;
    let mut sse = subscribe(&server, "students:s1").await;
    publish(3).await;
    let got = sse.take(3, Duration::from_secs(15)).await;
    let n: Vec<Value> = got
        .iter()
        .map(|e| envelope(e)["data"]["n"].clone())
        .collect();
    assert_eq!(n, [json!(1), json!(2), json!(3)]);
    let last = got[2].id.clone();
    let stream = js.get_stream("GRADES").await.unwrap();
    let mut acked = false;
    for _ in 0..100 {
        let info = stream.consumer_info("ssegate").await.unwrap();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            acked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(acked, "every message acknowledged after its append");

    server.kill9_and_restart();
    wait_running(&server, "grades").await;
    publish(4).await;
    let sub = token_with("u1", &["students:s1"], &[], false, 3600);
    let (mut sse, _) = Sse::open(
        &server.stream_url(&["students:s1"]),
        &[bearer(&sub), last_event_id(&last)],
    )
    .await;
    let got = sse.take(1, Duration::from_secs(15)).await;
    assert_eq!(
        envelope(&got[0])["data"]["n"],
        4,
        "nothing redelivered before it"
    );
    sse.expect_quiet(Duration::from_millis(300)).await;
}

// ---------------------------------------------------------------------------------------
// Dapr

const DAPR_TOKEN: &str = "dapr-app-token-0123456789";

fn dapr_config(extra: &str) -> String {
    format!(
        r#"
[[sources]]
name = "mastery"
type = "dapr"
pubsub = "pubsub"
topic = "mastery-updates"
app_api_token = "{DAPR_TOKEN}"
dead_letter_topic = "mastery-dead"
channel = "students:{{row.studentId}}"
event_type = "mastery.updated"
{extra}
"#
    )
}

/// A CloudEvent as the sidecar delivers it (structured mode), for a message an app published
/// with `POST /v1.0/publish/pubsub/mastery-updates` and `Content-Type: application/json`.
fn sidecar_event(id: &str, data: Value) -> Value {
    json!({
        "data": data,
        "datacontenttype": "application/json",
        "id": id,
        "pubsubname": "pubsub",
        "source": "mastery-engine",
        "specversion": "1.0",
        "time": "2026-11-25T10:15:08Z",
        "topic": "mastery-updates",
        "traceid": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "",
        "type": "com.dapr.event.sent",
    })
}

/// POSTs like the sidecar: the body as is, its headers (content type, trace context, the
/// pub/sub name, the app token).
async fn sidecar_post(
    server: &Server,
    route: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value) {
    let mut req = common::http()
        .post(format!("{}{route}", server.url))
        .header("user-agent", "Go-http-client/1.1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("tracestate", "")
        .header("pubsubname", "pubsub");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.body(body.to_vec()).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn deliver(server: &Server, event: &Value) -> (u16, Value) {
    sidecar_post(
        server,
        "/dapr/events/mastery",
        &[
            ("content-type", "application/cloudevents+json"),
            ("dapr-api-token", DAPR_TOKEN),
        ],
        event.to_string().as_bytes(),
    )
    .await
}

#[tokio::test]
async fn dapr_deliveries_are_appended_once_and_answered_as_the_sidecar_expects() {
    let server = Server::start_with_config(&dapr_config(""), &[]);
    wait_running(&server, "mastery").await;
    // The sidecar's first question.
    let (status, _, subs) = get(&format!("{}/dapr/subscribe", server.url), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        subs,
        json!([{
            "pubsubname": "pubsub",
            "topic": "mastery-updates",
            "route": "/dapr/events/mastery",
            "deadLetterTopic": "mastery-dead",
        }])
    );
    let mut sse = subscribe(&server, "students:s1").await;
    let event = sidecar_event(
        "5929aaac-a5e2-4ca1-859c-edfe73f11565",
        json!({"studentId": "s1", "skill": "fractions", "score": 0.82}),
    );
    assert_eq!(
        deliver(&server, &event).await,
        (200, json!({"status": "SUCCESS"}))
    );
    // Dapr is at least once: a redelivery is acknowledged and appended nothing.
    assert_eq!(
        deliver(&server, &event).await,
        (200, json!({"status": "SUCCESS"}))
    );
    // Binary mode: the attributes in ce-* headers, the body is the data.
    let (status, body) = sidecar_post(
        &server,
        "/dapr/events/mastery",
        &[
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "b-1"),
            ("ce-source", "grader"),
            ("ce-type", "grade.posted"),
            ("dapr-api-token", DAPR_TOKEN),
        ],
        br#"{"studentId":"s1","skill":"ratios","score":1}"#,
    )
    .await;
    assert_eq!((status, body), (200, json!({"status": "SUCCESS"})));
    let got = sse.take(2, Duration::from_secs(10)).await;
    assert_eq!(got[0].event, "mastery.updated");
    assert_eq!(
        envelope(&got[0])["data"],
        json!({"studentId": "s1", "skill": "fractions", "score": 0.82})
    );
    assert_eq!(envelope(&got[1])["data"]["skill"], "ratios");

    // Messages that can never become events: DROP.
    let cloudevents = [
        ("content-type", "application/cloudevents+json"),
        ("dapr-api-token", DAPR_TOKEN),
    ];
    for body in [
        b"{not json".to_vec(),
        json!({"specversion": "1.0", "source": "s", "type": "t", "data": {"studentId": "s1"}})
            .to_string()
            .into_bytes(),
        sidecar_event("x-2", json!({"studentId": "a:b"}))
            .to_string()
            .into_bytes(),
    ] {
        let (status, reply) =
            sidecar_post(&server, "/dapr/events/mastery", &cloudevents, &body).await;
        assert_eq!(
            (status, reply["status"].clone()),
            (200, json!("DROP")),
            "{reply}"
        );
    }
    // Without the sidecar's token: refused, nothing appended (Dapr would retry).
    let (status, reply) = sidecar_post(
        &server,
        "/dapr/events/mastery",
        &[
            ("content-type", "application/cloudevents+json"),
            ("dapr-api-token", "wrong-token-0123456789"),
        ],
        sidecar_event("x-3", json!({"studentId": "s1"}))
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 401, "{reply}");
    let (status, _) = deliver_to(&server, "/dapr/events/nope").await;
    assert_eq!(status, 404);
    sse.expect_quiet(Duration::from_millis(300)).await;
    let s = source_status(&server, "mastery").await;
    assert_eq!(s["skipped"], 3, "{s}");

    // A stopped source answers RETRY: Dapr keeps the message.
    let (status, _, _) = call(
        Method::POST,
        &format!("{}/v1/sources/mastery/stop", server.url),
        &[bearer(&admin_token())],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, reply) = deliver(&server, &sidecar_event("x-4", json!({"studentId": "s1"}))).await;
    assert_eq!((status, reply), (503, json!({"status": "RETRY"})));
}

async fn deliver_to(server: &Server, route: &str) -> (u16, Value) {
    sidecar_post(
        server,
        route,
        &[
            ("content-type", "application/cloudevents+json"),
            ("dapr-api-token", DAPR_TOKEN),
        ],
        sidecar_event("z", json!({"studentId": "s1"}))
            .to_string()
            .as_bytes(),
    )
    .await
}

#[tokio::test]
async fn dapr_answers_retry_while_the_log_is_unavailable_and_success_once_it_is_back() {
    let mut engine = engines::redis::start(Persistence::Aof);
    let url = engines::redis::url(&engine);
    let server = Server::start_with_config(
        &dapr_config("append_timeout_ms = 1000"),
        &[("LOG__KIND", "redis"), ("LOG__URL", &url)],
    );
    wait_running(&server, "mastery").await;
    let mut sse = subscribe(&server, "students:s1").await;
    let first = sidecar_event("r-1", json!({"studentId": "s1", "n": 1}));
    assert_eq!(
        deliver(&server, &first).await,
        (200, json!({"status": "SUCCESS"}))
    );
    assert_eq!(
        envelope(&sse.take(1, Duration::from_secs(10)).await[0])["data"]["n"],
        1
    );

    engine.kill();
    let second = sidecar_event("r-2", json!({"studentId": "s1", "n": 2}));
    let started = std::time::Instant::now();
    assert_eq!(
        deliver(&server, &second).await,
        (200, json!({"status": "RETRY"}))
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // The sidecar redelivers until the log is back: then SUCCESS, and the event once.
    engine.restart();
    let mut reply = Value::Null;
    for _ in 0..60 {
        let (_, r) = deliver(&server, &second).await;
        reply = r;
        if reply["status"] == "SUCCESS" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(reply, json!({"status": "SUCCESS"}), "{}", server.log_text());
    assert_eq!(
        deliver(&server, &second).await,
        (200, json!({"status": "SUCCESS"}))
    );
    let mut rest = Vec::new();
    while let Some(e) = sse.next(Duration::from_secs(2)).await {
        if !e.id.is_empty() {
            rest.push(envelope(&e)["data"]["n"].clone());
        }
    }
    assert_eq!(rest, [json!(2)], "appended once");
}
