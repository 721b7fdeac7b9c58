//! The Mercure hub against real processes:
//!
//! 1. a real Mercure publisher, Symfony's Mercure component (Debian's `php-symfony-mercure`,
//!    run by `php` on `tests/fixtures/mercure/publish.php`), signing its own JWT from the
//!    shared secret, publishes public and private updates (several topics, chosen and
//!    generated ids, types, retry, multi-line data); an anonymous subscriber receives only
//!    the public ones, a subscriber whose token grants one private topic receives that one
//!    and not another, a `*`-granted subscriber receives all; the `id:` lines are the ids the
//!    publisher was answered, the data arrives intact, and the raw frames are Mercure's;
//! 2. two nodes on one Redis log (and the resume also on one NATS JetStream log): an update published on A reaches a subscriber on B; B is
//!    killed (`kill -9`) while A keeps publishing, and the subscriber resumes on A with the
//!    `Last-Event-ID` of the last update it got: every later update once, in order (with
//!    hub-made ids, and with publisher-chosen ids, whose position A must find in the log
//!    when B published them); the subscriptions API on A lists a subscription made on B,
//!    and forgets it within seconds once the subscriber leaves B;
//! 3. one node killed and restarted: a subscriber resumes with `Last-Event-ID` (hub-made or
//!    publisher-chosen) and receives every later update once.
//!
//! The PHP test fails (it does not skip) when `php` or the component is missing.

mod common;
mod engines;

use std::time::Duration;

use common::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

/// The hub's HMAC key for publishers and subscribers (`mercure.jwt_secret`).
const MERCURE_SECRET: &str = "mercure-interop-secret-0123456789abcdef";

const PHP_PUBLISHER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/mercure/publish.php"
);
/// Installed by Debian's php-symfony-mercure (on PHP's include path).
const SYMFONY_MERCURE_AUTOLOAD: &str = "/usr/share/php/Symfony/Component/Mercure/autoload.php";

const FEED: &str = "https://example.com/feed";

/// Config overrides (without `SSEGATE_`) of a node serving the Mercure hub.
fn mercure_env(subscriptions: bool) -> Vec<(&'static str, &'static str)> {
    vec![
        ("MERCURE__ENABLED", "true"),
        ("MERCURE__JWT_SECRET", MERCURE_SECRET),
        ("MERCURE__ANONYMOUS", "true"),
        (
            "MERCURE__SUBSCRIPTIONS",
            if subscriptions { "true" } else { "false" },
        ),
        ("LIMITS__PUBLISH_RATE", "0"),
        // Closed connections are noticed at the next heartbeat.
        ("STREAM__HEARTBEAT_MS", "500"),
    ]
}

/// A draft-07 token (HS256, `typ: JWT`) with `claims` and an `exp` an hour away.
fn mercure_jwt(mut claims: Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    claims["exp"] = json!(exp);
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(MERCURE_SECRET.as_bytes()),
    )
    .unwrap()
}

/// A subscriber's token granting the private updates of `grants` (draft-07 selectors).
fn subscriber_token(grants: &[&str]) -> String {
    mercure_jwt(json!({"mercure": {"subscribe": grants}}))
}

fn publisher_token() -> String {
    mercure_jwt(json!({"mercure": {"publish": ["*"]}}))
}

fn hub(url: &str) -> String {
    format!("{url}/.well-known/mercure")
}

/// Opens a Mercure subscription to `topics` (draft-07 `topic=` selectors); checks `200`.
async fn subscribe(url: &str, topics: &[&str], token: Option<&str>, last: Option<&str>) -> Sse {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for t in topics {
        q.append_pair("topic", t);
    }
    let mut headers = Vec::new();
    if let Some(t) = token {
        headers.push(bearer(t));
    }
    if let Some(id) = last {
        headers.push(last_event_id(id));
    }
    let sse = Sse::connect(&format!("{}?{}", hub(url), q.finish()), &headers).await;
    assert_eq!(sse.status, 200, "subscription refused: {}", sse.error);
    sse
}

/// The `Last-Event-ID` header of a subscription's response.
fn answered_last_id(sse: &Sse) -> String {
    sse.headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// POSTs one update (form fields) to the hub at `url`; returns the hub's answer, its id.
async fn post_update(url: &str, token: &str, fields: &[(&str, &str)]) -> String {
    let body = {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in fields {
            form.append_pair(k, v);
        }
        form.finish()
    };
    let res = http()
        .post(hub(url))
        .bearer_auth(token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("publish request");
    let status = res.status().as_u16();
    let body = res.text().await.unwrap_or_default();
    assert_eq!(status, 200, "publish refused: {body}");
    body
}

/// One update published by a test and what a subscriber must see of it.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    id: String,
    data: String,
}

fn received(events: &[Ev]) -> Vec<Sent> {
    events
        .iter()
        .map(|e| Sent {
            id: e.id.clone(),
            data: e.data.clone(),
        })
        .collect()
}

/// Publishes update `i` of the feed (data on two lines; id `<prefix>-<i>` when a prefix is
/// given, else the hub makes it).
async fn publish_feed(url: &str, token: &str, i: usize, id_prefix: Option<&str>) -> Sent {
    let data = format!("update {i}\n  line two of {i}");
    let id = id_prefix.map(|p| format!("{p}-{i}"));
    let mut fields = vec![("topic", FEED), ("type", "feed"), ("data", data.as_str())];
    if let Some(id) = id.as_deref() {
        fields.push(("id", id));
    }
    let answered = post_update(url, token, &fields).await;
    if let Some(id) = id {
        assert_eq!(answered, id, "the hub answers the publisher's id");
    } else {
        assert!(
            answered.starts_with("urn:uuid:"),
            "a hub-made id: {answered}"
        );
    }
    Sent { id: answered, data }
}

/// Runs Symfony's Mercure component on `updates`; returns the ids it printed, one per update.
fn php_publish(hub_url: &str, updates: &Value) -> Vec<String> {
    assert!(
        std::path::Path::new(SYMFONY_MERCURE_AUTOLOAD).exists(),
        "Symfony's Mercure component is not installed ({SYMFONY_MERCURE_AUTOLOAD} is \
         missing): install the Debian packages php-cli and php-symfony-mercure \
         (scripts/test installs them)"
    );
    let out = std::process::Command::new("php")
        .arg(PHP_PUBLISHER)
        .arg(hub_url)
        .arg(MERCURE_SECRET)
        .arg(updates.to_string())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `php` ({e}): this test publishes with Symfony's Mercure component; \
                 install the Debian packages php-cli and php-symfony-mercure (scripts/test \
                 installs them)"
            )
        });
    assert!(
        out.status.success(),
        "the PHP publisher failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        ids.len(),
        updates.as_array().unwrap().len(),
        "one id per update: {ids:?}"
    );
    ids
}

/// Reads a subscription's raw body until `until` (a whole frame) has arrived.
async fn raw_frames(url: &str, token: &str, until: &str) -> String {
    let mut res = http()
        .get(format!("{}?topic=*&lastEventID=earliest", hub(url)))
        .bearer_auth(token)
        .send()
        .await
        .expect("subscription request");
    assert_eq!(res.status(), 200);
    let deadline = tokio::time::Instant::now() + T;
    let mut text = String::new();
    while !text.contains(until) {
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {until:?} in time; got:\n{text}"))
            .expect("body chunk")
            .unwrap_or_else(|| panic!("the stream ended before {until:?}; got:\n{text}"));
        text.push_str(std::str::from_utf8(&chunk).expect("UTF-8 frames"));
    }
    text
}

const BOOK1: &str = "https://example.com/books/1";
const BOOK2: &str = "https://example.com/books/2";
const AUTHOR: &str = "https://example.com/authors/herbert";
const ALICE: &str = "https://example.com/users/alice";
const BOB: &str = "https://example.com/users/bob";
const CAROL: &str = "https://example.com/users/carol";
const FENCE: &str = "https://example.com/fence";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symfony_mercure_publisher_public_and_private_updates() {
    let server = Server::start(&mercure_env(false));
    // Everyone also subscribes to FENCE: the last update, after which nothing else comes.
    let mut anonymous = subscribe(
        &server.url,
        &[
            "https://example.com/books/{id}",
            "https://example.com/users/{name}",
            FENCE,
        ],
        None,
        None,
    )
    .await;
    let mut alice = subscribe(
        &server.url,
        &[
            "https://example.com/users/{name}",
            "https://example.com/authors/{name}",
            FENCE,
        ],
        Some(&subscriber_token(&[ALICE])),
        None,
    )
    .await;
    let all_token = subscriber_token(&["*"]);
    let mut everything = subscribe(&server.url, &["*"], Some(&all_token), None).await;

    let updates = json!([
        {"topics": [BOOK1], "type": "book.updated", "id": "book-1-rev-2",
         "data": "{\"title\": \"Dune — «épopée»\",\n \"year\": 1965}"},
        {"topics": [ALICE], "private": true, "type": "notification",
         "data": "hello alice\nline two"},
        {"topics": [BOB], "private": true, "id": "bob-secret-1",
         "data": "bob's secret"},
        {"topics": [BOOK2, AUTHOR], "retry": 2500,
         "data": "two topics\n\nwith a blank line"},
        {"topics": [BOB, ALICE], "private": true, "type": "notification", "id": "bob-and-alice",
         "data": "for bob and alice"},
        {"topics": [CAROL], "type": "profile",
         "data": "carol's public profile\n"},
        {"topics": [FENCE], "type": "fence", "id": "fence-1", "data": "end"},
    ]);
    let ids = php_publish(&hub(&server.url), &updates);
    let updates = updates.as_array().unwrap();
    for (id, u) in ids.iter().zip(updates) {
        match u["id"].as_str() {
            Some(chosen) => assert_eq!(id, chosen, "the publisher's id is answered"),
            None => assert!(id.starts_with("urn:uuid:"), "a hub-made id: {id}"),
        }
    }
    let expect = |which: &[usize]| -> Vec<(String, String, String)> {
        which
            .iter()
            .map(|&i| {
                let u = &updates[i];
                (
                    ids[i].clone(),
                    u["type"].as_str().unwrap_or("message").to_owned(),
                    u["data"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let seen = |events: Vec<Ev>| -> Vec<(String, String, String)> {
        events
            .into_iter()
            .map(|e| (e.id, e.event, e.data))
            .collect()
    };

    // Public updates only, on the topics asked for.
    let want = expect(&[0, 3, 5, 6]);
    assert_eq!(seen(anonymous.take(want.len(), T).await), want, "anonymous");
    // Alice's private updates (also the one with Bob's topic first), not Bob's alone; the
    // update on BOOK2 reaches her through its other topic, AUTHOR.
    let want = expect(&[1, 3, 4, 5, 6]);
    assert_eq!(seen(alice.take(want.len(), T).await), want, "alice");
    let want = expect(&[0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(
        seen(everything.take(want.len(), T).await),
        want,
        "a subscriber granted `*`"
    );
    for sse in [&mut anonymous, &mut alice, &mut everything] {
        sse.expect_quiet(Duration::from_millis(300)).await;
    }

    // Resuming from a private update it may not see: the hub does not confirm the id
    // (`earliest`), and replays the public updates after it.
    let mut resumed = subscribe(
        &server.url,
        &[
            "https://example.com/books/{id}",
            "https://example.com/users/{name}",
            FENCE,
        ],
        None,
        Some("bob-secret-1"),
    )
    .await;
    assert_eq!(answered_last_id(&resumed), "earliest");
    let want = expect(&[3, 5, 6]);
    assert_eq!(
        seen(resumed.take(want.len(), T).await),
        want,
        "anonymous, resumed"
    );

    // The frames as written: fields in Mercure's order, no `event:` without a type, each
    // data line on its own `data:` line (leading spaces kept after the one separator).
    let raw = raw_frames(
        &server.url,
        &all_token,
        "id: fence-1\nevent: fence\ndata: end\n\n",
    )
    .await;
    for frame in [
        "id: book-1-rev-2\nevent: book.updated\ndata: {\"title\": \"Dune — «épopée»\",\ndata:  \"year\": 1965}\n\n".to_owned(),
        format!("id: {}\nretry: 2500\ndata: two topics\ndata: \ndata: with a blank line\n\n", ids[3]),
        format!("id: {}\nevent: profile\ndata: carol's public profile\ndata: \n\n", ids[5]),
    ] {
        assert!(raw.contains(&frame), "no frame {frame:?} in:\n{raw}");
    }
}

/// Node of a cluster on the Redis log `stream` at `redis_url`, serving the Mercure hub.
fn node(redis_url: &str, stream: &str, subscriptions: bool) -> Server {
    node_on("redis", redis_url, stream, subscriptions)
}

/// Node of a cluster on the shared log of `kind` (`redis`, `nats`) at `url`.
fn node_on(kind: &str, url: &str, stream: &str, subscriptions: bool) -> Server {
    let mut env = mercure_env(subscriptions);
    env.extend([
        ("LOG__KIND", kind),
        ("LOG__URL", url),
        ("LOG__STREAM", stream),
    ]);
    Server::start(&env)
}

/// Two nodes on a shared log of `kind` (`redis`, `nats`); publish on A, subscriber on B; B
/// killed while A keeps publishing; resume on A. `id_prefix`: publisher-chosen ids
/// (`<prefix>-<i>`), else hub-made ids.
async fn resume_on_other_node(kind: &str, id_prefix: Option<&'static str>) {
    let engine = match kind {
        "nats" => engines::nats::start(),
        _ => engines::redis::start(engines::redis::Persistence::None),
    };
    let url = match kind {
        "nats" => engines::nats::url(&engine),
        _ => engines::redis::url(&engine),
    };
    let stream = format!("mercure-{}", id_prefix.unwrap_or("hub"));
    let a = node_on(kind, &url, &stream, false);
    let mut b = node_on(kind, &url, &stream, false);
    let sub = subscriber_token(&[FEED]);
    let publisher = publisher_token();
    let mut on_b = subscribe(&b.url, &[FEED], Some(&sub), None).await;

    // Published on A, received on B.
    let mut warm = Vec::new();
    for i in 0..5 {
        let prefix = id_prefix.map(|_| "warm");
        warm.push(publish_feed(&a.url, &publisher, i, prefix).await);
    }
    assert_eq!(received(&on_b.take(5, T).await), warm, "A → B");

    // Updates 0..100 alternate between A and B, 100..300 go to A only; B is killed once its
    // subscriber got 110 of them, and A waits at 200 for the kill, so A publishes before,
    // during and after it.
    const N: usize = 300;
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    let (a_url, b_url, p) = (a.url.clone(), b.url.clone(), publisher.clone());
    let publishing = tokio::spawn(async move {
        let mut killed = Some(killed_rx);
        let mut sent = Vec::with_capacity(N);
        for i in 0..N {
            if i == 200 {
                let _ = killed.take().unwrap().await;
            }
            let on_b = i < 100 && i % 2 == 1;
            let url = if on_b { &b_url } else { &a_url };
            sent.push((publish_feed(url, &p, i, id_prefix).await, on_b));
        }
        sent
    });
    let mut got = on_b.take(110, T).await;
    b.kill9();
    let _ = killed_tx.send(());
    // What was already on its way before the kill.
    loop {
        match on_b.next_or_end(Duration::from_secs(5)).await {
            Next::Event(e) if !e.id.is_empty() => got.push(e),
            Next::Event(_) => {}
            Next::End | Next::Broken(_) => break,
            Next::Timeout => panic!("the stream of the killed node neither ended nor broke"),
        }
    }
    let sent = publishing.await.unwrap();
    let all: Vec<Sent> = sent.iter().map(|(s, _)| s.clone()).collect();
    let got = received(&got);
    assert_eq!(got, all[..got.len()], "B delivered the updates in order");

    // Resume on A where B stopped.
    let last = got.last().unwrap().id.clone();
    let mut on_a = subscribe(&a.url, &[FEED], Some(&sub), Some(&last)).await;
    assert_eq!(answered_last_id(&on_a), last, "A found the last update");
    let rest = received(&on_a.take(N - got.len(), T).await);
    assert_eq!(
        rest,
        all[got.len()..],
        "every remaining update once, in order"
    );
    on_a.expect_quiet(Duration::from_millis(500)).await;

    // Resume on A from the last update B published: A never saw that id published, it has
    // to find it in the log.
    let k = sent.iter().rposition(|(_, on_b)| *on_b).unwrap();
    let from_b = &all[k].id;
    let mut again = subscribe(&a.url, &[FEED], Some(&sub), Some(from_b)).await;
    assert_eq!(
        answered_last_id(&again),
        *from_b,
        "A found the update published on B"
    );
    let rest = received(&again.take(N - k - 1, T).await);
    assert_eq!(rest, all[k + 1..], "every update after B's last one, once");
    again.expect_quiet(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_resume_on_the_other_node_with_hub_ids() {
    resume_on_other_node("redis", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_resume_on_the_other_node_with_publisher_ids() {
    resume_on_other_node("redis", Some("pub")).await;
}

/// The same on a NATS JetStream log (ids of a JetStream log are its sequence numbers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_nats_resume_on_the_other_node_with_hub_and_publisher_ids() {
    resume_on_other_node("nats", None).await;
    resume_on_other_node("nats", Some("pub")).await;
}

/// A node serves before its dispatcher knows where to start (the log head, read in the
/// background; retried every 500 ms while the log is down). A subscriber taken meanwhile
/// starts at the head it read itself; the dispatcher may not start past it, or the updates
/// in between never reach it. Made reproducible by starting the node while NATS is down:
/// once the log is back, the node is ready at once, its dispatcher only at its next retry.
/// (Over a few milliseconds at startup, the same race made
/// `two_nodes_on_nats_resume_on_the_other_node_with_hub_and_publisher_ids` flaky: B's
/// subscriber got the last 2-3 of the 5 warm-up updates, never the first ones.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_subscriber_taken_before_the_dispatcher_started_misses_nothing() {
    let mut engine = engines::nats::start();
    let url = engines::nats::url(&engine);
    engine.kill();
    let b = node_on("nats", &url, "mercure-late-dispatcher", false);
    engine.restart();
    let deadline = tokio::time::Instant::now() + T;
    while get(&format!("{}/readyz", b.url), &[]).await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never became ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sub = subscriber_token(&[FEED]);
    let publisher = publisher_token();
    let mut on_b = subscribe(&b.url, &[FEED], Some(&sub), None).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(publish_feed(&b.url, &publisher, i, None).await);
    }
    assert_eq!(
        received(&on_b.take(sent.len(), T).await),
        sent,
        "every update published after the subscription, in order"
    );
}

/// Percent-encodes everything but A-Z a-z 0-9 `-._~` (the hub's encoding of subscription
/// id components).
fn encode_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The subscriptions of `topic` that node `url` lists.
async fn listed(url: &str, token: &str, topic: &str) -> Vec<Value> {
    let (status, headers, body) =
        get(&format!("{}/subscriptions", hub(url)), &[bearer(token)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/ld+json",
        "{body}"
    );
    assert_eq!(body["type"], "Subscriptions", "{body}");
    body["subscriptions"]
        .as_array()
        .expect("a list of subscriptions")
        .iter()
        .filter(|d| d["topic"] == topic)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_subscriptions_api_lists_the_other_nodes_subscribers() {
    let redis = engines::redis::start(engines::redis::Persistence::None);
    let redis_url = engines::redis::url(&redis);
    let a = node(&redis_url, "mercure-subscriptions", true);
    let b = node(&redis_url, "mercure-subscriptions", true);
    let api = subscriber_token(&["/.well-known/mercure/subscriptions{/topic}{/subscriber}"]);
    let watched = "https://example.com/watched/{id}";
    let payload = json!({"user": "https://example.com/users/dunglas"});
    let token =
        mercure_jwt(json!({"mercure": {"subscribe": [watched], "payload": payload.clone()}}));
    let on_b = subscribe(&b.url, &[watched], Some(&token), None).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let doc = loop {
        let docs = listed(&a.url, &api, watched).await;
        if let Some(d) = docs.first() {
            assert_eq!(docs.len(), 1, "one subscription: {docs:?}");
            break d.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A does not list the subscription made on B"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let subscriber = doc["subscriber"].as_str().expect("a subscriber").to_owned();
    assert!(subscriber.starts_with("urn:uuid:"), "{doc}");
    assert_eq!(doc["type"], "Subscription", "{doc}");
    assert_eq!(doc["active"], true, "{doc}");
    assert_eq!(doc["payload"], payload, "the token's payload: {doc}");
    let b_port = b.url.rsplit(':').next().unwrap();
    assert!(
        doc["node"]
            .as_str()
            .is_some_and(|n| n.ends_with(&format!(":{b_port}"))),
        "announced by B: {doc}"
    );
    let id = format!(
        "/.well-known/mercure/subscriptions/{}/{}",
        encode_component(watched),
        encode_component(&subscriber)
    );
    assert_eq!(doc["id"], id, "{doc}");
    let (status, _, one) = get(&format!("{}{id}", a.url), &[bearer(&api)]).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["subscriber"], subscriber.as_str(), "{one}");
    assert!(one["lastEventID"].is_string(), "{one}");

    // The subscriber leaves B (B stays up): A forgets it within seconds.
    drop(on_b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !listed(&a.url, &api, watched).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A still lists the subscription 5 s after its subscriber left B"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, body) = get(&format!("{}{id}", a.url), &[bearer(&api)]).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_resume_after_kill9_and_restart() {
    let mut server = Server::start(&mercure_env(false));
    let sub = subscriber_token(&[FEED]);
    let publisher = publisher_token();
    // Even updates get hub-made ids, odd ones publisher-chosen ids.
    const N: usize = 40;
    let mut sent = Vec::new();
    for i in 0..N {
        let prefix = (i % 2 == 1).then_some("durable");
        sent.push(publish_feed(&server.url, &publisher, i, prefix).await);
    }
    server.kill9_and_restart();

    // From a hub-made id, then from a publisher's (which the restarted node must find in
    // the log: it remembers nothing of before).
    for k in [10, 21] {
        let from = &sent[k].id;
        let mut sse = subscribe(&server.url, &[FEED], Some(&sub), Some(from)).await;
        assert_eq!(answered_last_id(&sse), *from, "the update was found");
        let rest = received(&sse.take(sent.len() - k - 1, T).await);
        assert_eq!(rest, sent[k + 1..], "every later update once, from {from}");
        sse.expect_quiet(Duration::from_millis(300)).await;
        // Live updates follow the replay.
        let live = publish_feed(&server.url, &publisher, N + k, Some("after")).await;
        assert_eq!(received(&sse.take(1, T).await), std::slice::from_ref(&live));
        sent.push(live);
        sse.expect_quiet(Duration::from_millis(300)).await;
    }
}
