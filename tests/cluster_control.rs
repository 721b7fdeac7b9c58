//! Issue 16, cluster control: several `ssegate serve` nodes on one shared log act as one
//! gateway for the admin and subscription API. Real processes everywhere: a test-started
//! redis-server or nats-server (JetStream), real `ssegate serve` nodes with distinct
//! `server.node_id`s (`[cluster] heartbeat_ms = 200`, `node_timeout_ms = 1000`), a REAL nginx
//! (`/usr/sbin/nginx`) in front of three of them with the shipped site file
//! (`deploy/nginx/ssegate.conf`) whose upstream lists the three nodes, plain round-robin, no
//! stickiness (requests are balanced per request, whatever connection they come on).
//!
//! 1. Subscription changes sent through nginx land on the node holding the stream, every
//!    time: ≥ 200 `POST /v1/connections/{id}/subscriptions` over streams spread on the three
//!    nodes, each answered 200; an event published to each added channel arrives on that
//!    stream, a removed channel's events stop arriving. nginx's access log shows most of the
//!    requests reached a node that does not hold the stream.
//! 2. `POST /v1/broadcast` and `DELETE /v1/users/{u}/connections` through nginx reach the
//!    streams on all three nodes (counts are cluster-wide, `unreachable: []`).
//! 3. `GET /v1/status` on each node lists the three nodes, `self` on itself; presence of
//!    `chat:1` lists the users of all three nodes (admin, and a user with the
//!    `ssegate.presence` claim; others get `403 presence_forbidden`); subscribers get
//!    `presence.join` / `presence.leave`; after `kill -9` of one node its users leave the
//!    presence list, the survivors get `presence.leave` for them, and `/v1/status` drops it.
//! 4. The same on NATS, short: two nodes, a subscription change sent to the node that does
//!    not hold the stream, a cluster-wide kick.
//! 5. A single node on the file log: connections, kick and presence work as before, with
//!    `unreachable: []` and one node in `nodes`.
//! 6. A node that stops answering (SIGSTOP) while still believed alive is named in
//!    `unreachable`; a subscription change for its stream is `503 node_unreachable`; once it
//!    runs again (SIGCONT) answers are whole again.
//!
//! Without `/usr/sbin/nginx` the nginx tests print `skipped: …` and pass, unless
//! `SSEGATE_TEST_REQUIRE_NGINX=1` (as tests/nginx.rs). Waiting for the cluster to converge
//! (a heartbeat, a node timeout) is a bounded poll, never a timed assertion.

mod common;
mod engines;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::nginx::{Nginx, NGINX};
use common::*;
use engines::Engine;
use reqwest::Method;
use serde_json::{json, Value};

/// Longest wait for one event or answer.
const T: Duration = Duration::from_secs(20);
/// Longest wait for the cluster to notice something (a heartbeat, a dead node): generous,
/// the contract says `node_timeout_ms` (1 s here) plus a heartbeat.
const CONVERGE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Tokens: signed here (HS256, the test secret), so that the `presence` grant of issue 16
// can be given without depending on the shape of `ssegate::auth::Grants`.

fn sign(sub: &str, grants: Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": sub, "iat": now, "exp": now + 3600, "ssegate": grants});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A client allowed to subscribe to `subscribe`, with the presence grant when given.
fn user(sub: &str, subscribe: &[&str], presence: Option<&[&str]>) -> String {
    let mut grants = json!({"subscribe": subscribe, "publish": [], "admin": false});
    if let Some(p) = presence {
        grants["presence"] = json!(p);
    }
    sign(sub, grants)
}

fn admin() -> String {
    sign(
        "admin",
        json!({"subscribe": [], "publish": [], "admin": true}),
    )
}

fn publisher_token() -> String {
    sign(
        "publisher",
        json!({"subscribe": [], "publish": ["**"], "admin": false}),
    )
}

// ---------------------------------------------------------------------------------------
// Nodes.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Bus {
    Redis,
    Nats,
}

/// A node's config file: on the shared log, with the test's cluster timings and presence
/// events on `chat:*`.
fn node_config(node_id: &str, log: &str, timeouts: (u64, u64)) -> String {
    let (node_timeout_ms, request_timeout_ms) = timeouts;
    format!(
        "[server]
node_id = \"{node_id}\"

[log]
{log}

[cluster]
heartbeat_ms = 200
node_timeout_ms = {node_timeout_ms}
request_timeout_ms = {request_timeout_ms}

[presence]
events = [\"chat:*\"]

[limits]
publish_rate = 0
"
    )
}

fn shared_log(bus: Bus, engine: &Engine) -> String {
    match bus {
        Bus::Redis => format!(
            "kind = \"redis\"\nurl = \"{}\"\nstream = \"ctl\"",
            engines::redis::url(engine)
        ),
        Bus::Nats => format!(
            "kind = \"nats\"\nurl = \"{}\"\nstream = \"ctl\"",
            engines::nats::url(engine)
        ),
    }
}

/// The engine and `n` nodes on it, named `node-a`, `node-b`, …
struct Cluster {
    nodes: Vec<Server>,
    ids: Vec<String>,
    // Dropped last: the nodes go first.
    _engine: Engine,
}

impl Cluster {
    /// `node_timeout_ms` 1000, `request_timeout_ms` 2000.
    fn start(bus: Bus, n: usize) -> Cluster {
        Cluster::start_with(bus, n, (1000, 2000))
    }

    /// With these (`node_timeout_ms`, `request_timeout_ms`).
    fn start_with(bus: Bus, n: usize, timeouts: (u64, u64)) -> Cluster {
        let engine = match bus {
            Bus::Redis => engines::redis::start(engines::redis::Persistence::None),
            Bus::Nats => engines::nats::start(),
        };
        let log = shared_log(bus, &engine);
        let ids: Vec<String> = (0..n)
            .map(|i| format!("node-{}", (b'a' + i as u8) as char))
            .collect();
        let nodes = ids
            .iter()
            .map(|id| Server::start_with_config(&node_config(id, &log, timeouts), &[]))
            .collect();
        Cluster {
            nodes,
            ids,
            _engine: engine,
        }
    }

    /// Every node's server log (for failure messages).
    fn logs(&self) -> String {
        self.ids
            .iter()
            .zip(&self.nodes)
            .map(|(id, n)| format!("--- {id} ---\n{}", tail(&n.log_text(), 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every live node's `/v1/status` lists exactly `want` (node ids), all ready.
    async fn converge(&self, live: &[usize], want: &[&str]) {
        for &i in live {
            let node = &self.nodes[i];
            let deadline = Instant::now() + CONVERGE;
            loop {
                let status = status(node).await;
                let ready = status["nodes"]
                    .as_array()
                    .is_some_and(|all| all.iter().all(|n| n["ready"] == true));
                if node_ids(&status) == want && ready {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: /v1/status should list {want:?} within {CONVERGE:?}; last: {status:#}",
                    self.ids[i]
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// HTTP helpers.

async fn status(node: &Server) -> Value {
    let (code, _, body) = get(&format!("{}/v1/status", node.url), &[bearer(&admin())]).await;
    assert_eq!(code, 200, "/v1/status: {body}");
    body
}

fn node_ids(status: &Value) -> Vec<String> {
    status["nodes"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|n| n["node_id"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `GET base/v1/connections?query` (admin): checks `unreachable: []` and that every item
/// names its node; returns the items.
async fn connections(base: &str, query: &str) -> Vec<Value> {
    let (code, _, body) = get(
        &format!("{base}/v1/connections?{query}"),
        &[bearer(&admin())],
    )
    .await;
    assert_eq!(code, 200, "GET /v1/connections?{query}: {body}");
    assert_eq!(body["unreachable"], json!([]), "{body}");
    let items = body["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("connections: {body}"))
        .clone();
    for c in &items {
        assert!(c["node"].is_string(), "each connection names its node: {c}");
    }
    items
}

/// connection id → node id, from `GET /v1/connections?user=…`.
async fn holders(base: &str, user: &str) -> BTreeMap<String, String> {
    connections(base, &format!("user={user}"))
        .await
        .iter()
        .map(|c| {
            (
                c["connection_id"].as_str().unwrap().to_owned(),
                c["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn publish(base: &str, channel: &str, n: usize) -> String {
    let (code, _, body) = call(
        Method::POST,
        &format!("{base}/v1/publish"),
        &[bearer(&publisher_token())],
        Some(&json!({"channel": channel, "type": "t", "data": {"n": n}})),
    )
    .await;
    assert_eq!(code, 200, "publish to {channel}: {body}");
    published_ids(&body).remove(0)
}

/// `POST base/v1/connections/{id}/subscriptions` with the stream's own token.
/// `DELETE /v1/users/{user}/connections` (admin) at `base`.
async fn kick(base: &str, user: &str) -> (u16, Value) {
    let (code, _, body) = call(
        Method::DELETE,
        &format!("{base}/v1/users/{user}/connections"),
        &[bearer(&admin())],
        None,
    )
    .await;
    (code, body)
}

async fn change(base: &str, token: &str, id: &str, body: Value) -> (u16, Value) {
    let (code, _, answer) = call(
        Method::POST,
        &format!("{base}/v1/connections/{id}/subscriptions"),
        &[bearer(token)],
        Some(&body),
    )
    .await;
    (code, answer)
}

async fn presence(base: &str, channel: &str, token: &str) -> (u16, Value) {
    let (code, _, body) = get(
        &format!("{base}/v1/channels/{}/presence", encode(channel)),
        &[bearer(token)],
    )
    .await;
    (code, body)
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// user → connections, from a presence answer.
fn presence_users(body: &Value) -> BTreeMap<String, u64> {
    body["users"]
        .as_array()
        .unwrap_or_else(|| panic!("presence answer has users: {body}"))
        .iter()
        .map(|u| {
            (
                u["user"].as_str().unwrap().to_owned(),
                u["connections"].as_u64().unwrap(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Stream helpers.

/// A stream and what its `connected` event said.
struct Client {
    sse: Sse,
    id: String,
    token: String,
}

async fn open(base: &str, token: &str, channels: &[&str]) -> Client {
    let q: Vec<String> = channels.iter().map(|c| format!("channel={c}")).collect();
    let url = format!("{base}/v1/stream?{}", q.join("&"));
    let (sse, connected) = Sse::open(&url, &[bearer(token)]).await;
    Client {
        sse,
        id: connected["connection_id"]
            .as_str()
            .unwrap_or_else(|| panic!("connected names the connection: {connected}"))
            .to_owned(),
        token: token.to_owned(),
    }
}

/// The next event with an id (a delivered event), skipping control events; panics on
/// `closing`, at the end of the stream or after `T`.
async fn next_delivered(sse: &mut Sse, what: &str) -> Ev {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sse.next_or_end(left).await {
            Next::Event(e) if !e.id.is_empty() => return e,
            Next::Event(e) if e.event == "closing" => panic!("{what}: the stream closed: {e:?}"),
            Next::Event(_) => {}
            other => panic!("{what}: expected a delivered event, got {other:?}"),
        }
    }
}

/// Reads control events until one of type `event` whose data satisfies `want`; panics on a
/// delivered event (none is expected meanwhile), the end of the stream, or after `within`.
async fn expect_control(
    sse: &mut Sse,
    event: &str,
    within: Duration,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sse.next_or_end(left).await {
            Next::Event(e) => {
                assert!(e.id.is_empty(), "{what}: unexpected delivered event {e:?}");
                let data: Value = serde_json::from_str(&e.data)
                    .unwrap_or_else(|_| panic!("{what}: control data is JSON: {e:?}"));
                if e.event == event && want(&data) {
                    return data;
                }
                seen.push(format!("{} {}", e.event, e.data));
            }
            other => {
                panic!("{what}: expected `{event}`, got {other:?}; control events before: {seen:?}")
            }
        }
    }
}

/// Waits for `presence.join` / `presence.leave` of `user` on `channel` and checks its shape.
async fn expect_presence(sse: &mut Sse, kind: &str, channel: &str, user: &str, what: &str) {
    let data = expect_control(sse, kind, CONVERGE, what, |d| {
        d["data"]["user"] == user && d["channel"] == channel
    })
    .await;
    assert_eq!(data["type"], kind, "{what}: {data}");
    assert!(data["time"].is_string(), "{what}: {data}");
}

/// Three Redis nodes behind nginx; `None` when nginx is missing (skipped).
async fn three_behind_nginx() -> Option<(Cluster, Nginx)> {
    if !Path::new(NGINX).exists() {
        // Let Nginx::start print the message (or fail when nginx is required).
        Nginx::start(&[], &[]);
        return None;
    }
    let cluster = Cluster::start(Bus::Redis, 3);
    let all: Vec<&str> = cluster.ids.iter().map(String::as_str).collect();
    cluster.converge(&[0, 1, 2], &all).await;
    let urls: Vec<&str> = cluster.nodes.iter().map(|n| n.url.as_str()).collect();
    let nginx = Nginx::start(&urls, &[])?;
    Some((cluster, nginx))
}

/// Opens streams of `token` through nginx until every node holds at least `each` of them
/// (bounded: at most `each * 3 + 6` streams); returns them and connection id → node id.
async fn open_spread(
    cluster: &Cluster,
    nginx: &Nginx,
    sub: &str,
    token: &str,
    channels: &[&str],
    each: usize,
) -> (Vec<Client>, BTreeMap<String, String>) {
    let mut clients = Vec::new();
    let max = each * 3 + 6;
    loop {
        clients.push(open(&nginx.url, token, channels).await);
        if clients.len() < each * 3 {
            continue;
        }
        let held = holders(&nginx.url, sub).await;
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &clients {
            let node = held
                .get(&c.id)
                .unwrap_or_else(|| panic!("GET /v1/connections lists {}: {held:?}", c.id));
            *per_node.entry(node.as_str()).or_default() += 1;
        }
        if cluster
            .ids
            .iter()
            .all(|id| per_node.get(id.as_str()).copied().unwrap_or(0) >= each)
        {
            return (clients, held);
        }
        assert!(
            clients.len() < max,
            "{} streams through round-robin nginx should reach every node {each}× : {per_node:?}",
            clients.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// 1. Subscription changes through nginx.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscription_changes_through_nginx_land_on_the_right_stream() {
    let Some((cluster, nginx)) = three_behind_nginx().await else {
        return;
    };
    const STREAMS: usize = 6;
    // An add each round, and a remove from the second round of each stream on: 234 changes.
    const ROUNDS: usize = 120;
    let token = user("sc", &["sc:*"], None);
    let homes: Vec<String> = (0..STREAMS).map(|s| format!("sc:home{s}")).collect();
    let mut clients = Vec::new();
    for home in &homes {
        clients.push(open(&nginx.url, &token, &[home]).await);
    }
    let held = holders(&nginx.url, "sc").await;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &clients {
        let node = held
            .get(&c.id)
            .unwrap_or_else(|| panic!("{} is listed: {held:?}", c.id));
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        3,
        "six streams through round-robin nginx are spread over the three nodes: {per_node:?}"
    );
    println!("streams per node: {per_node:?}");

    let mut requests = 0;
    let mut previous: Vec<Option<String>> = vec![None; STREAMS];
    for k in 0..ROUNDS {
        let s = k % STREAMS;
        let what = format!("round {k}, stream {s} on {}", held[&clients[s].id]);
        let c = &mut clients[s];
        // Add a new channel: 200, `subscribed`, then its next event arrives here.
        let channel = format!("sc:n{k}");
        let (code, body) = change(&nginx.url, &c.token, &c.id, json!({"add": [channel]})).await;
        requests += 1;
        assert_eq!(
            code,
            200,
            "{what}: adding {channel}: {body}\n{}",
            cluster.logs()
        );
        let now: Vec<&str> = body["channels"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: {body}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(now.contains(&channel.as_str()), "{what}: {body}");
        expect_control(&mut c.sse, "subscribed", T, &what, |d| {
            d["channels"] == json!([channel.as_str()])
        })
        .await;
        let id = publish(&nginx.url, &channel, k).await;
        let got = next_delivered(&mut c.sse, &what).await;
        assert_eq!(
            (got.id.as_str(), envelope(&got)["channel"].as_str()),
            (id.as_str(), Some(channel.as_str())),
            "{what}: the event of the added channel arrives on its stream"
        );
        // Remove the channel added in this stream's previous round: 200, `unsubscribed`,
        // and its events stop: one published to it, then one to the home channel — the
        // next event on the stream is the home one.
        if let Some(old) = previous[s].replace(channel) {
            let (code, body) = change(&nginx.url, &c.token, &c.id, json!({"remove": [old]})).await;
            requests += 1;
            assert_eq!(
                code,
                200,
                "{what}: removing {old}: {body}\n{}",
                cluster.logs()
            );
            assert!(
                !body["channels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x.as_str() == Some(old.as_str())),
                "{what}: {body}"
            );
            expect_control(&mut c.sse, "unsubscribed", T, &what, |d| {
                d["channels"] == json!([old.as_str()])
            })
            .await;
            publish(&nginx.url, &old, k).await;
            let home = publish(&nginx.url, &homes[s], k).await;
            let got = next_delivered(&mut c.sse, &what).await;
            assert_eq!(
                got.id, home,
                "{what}: nothing of the removed {old} arrives, the home channel does: {}",
                got.data
            );
        }
    }
    assert!(requests >= 200, "{requests} subscription changes");
    // Every stream got nothing else: a last event on each home channel is the next one.
    for (s, c) in clients.iter_mut().enumerate() {
        let id = publish(&nginx.url, &homes[s], usize::MAX).await;
        assert_eq!(next_delivered(&mut c.sse, "last").await.id, id);
    }
    // nginx's access log: where each change went. Most reached a node that does not hold
    // the stream (round-robin over three: about two thirds), and were carried out anyway.
    let addr_of: BTreeMap<String, String> = cluster
        .ids
        .iter()
        .zip(&cluster.nodes)
        .map(|(id, n)| (id.clone(), n.url.trim_start_matches("http://").to_owned()))
        .collect();
    let log = nginx.access_log();
    let (mut logged, mut foreign) = (0, 0);
    for line in log.lines() {
        let Some(rest) = line.split("\"POST /v1/connections/").nth(1) else {
            continue;
        };
        let Some((conn, _)) = rest.split_once("/subscriptions ") else {
            continue;
        };
        let upstream = line
            .split("upstream=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("");
        logged += 1;
        if upstream != addr_of[&held[conn]] {
            foreign += 1;
        }
    }
    println!(
        "{requests} subscription changes through nginx, all 200; {foreign} of {logged} \
         logged by nginx went to a node that does not hold the stream"
    );
    assert_eq!(logged, requests, "nginx logged every change:\n{log}");
    assert!(
        foreign * 4 >= requests,
        "round-robin sent at least a quarter of the changes to another node ({foreign})"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Broadcast and kick through nginx.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_broadcast_and_kick_through_nginx_reach_every_node() {
    let Some((cluster, nginx)) = three_behind_nginx().await else {
        return;
    };
    let victim = user("victim", &["kb:*"], None);
    let bystander = user("bystander", &["kb:*"], None);
    let (mut victims, v_held) =
        open_spread(&cluster, &nginx, "victim", &victim, &["kb:v"], 1).await;
    let (mut others, o_held) =
        open_spread(&cluster, &nginx, "bystander", &bystander, &["kb:b"], 1).await;
    let total = victims.len() + others.len();
    println!(
        "victim streams: {:?}; bystander streams: {:?}",
        v_held.values().collect::<Vec<_>>(),
        o_held.values().collect::<Vec<_>>()
    );
    // Everything the cluster holds is ours.
    assert_eq!(connections(&nginx.url, "").await.len(), total);

    // Broadcast through nginx: every stream on every node.
    let (code, _, body) = call(
        Method::POST,
        &format!("{}/v1/broadcast", nginx.url),
        &[bearer(&admin())],
        Some(&json!({"type": "maintenance", "data": {"in": "5m"}})),
    )
    .await;
    assert_eq!(code, 200, "{body}\n{}", cluster.logs());
    assert_eq!(body["connections"], json!(total), "{body}");
    assert_eq!(body["unreachable"], json!([]), "{body}");
    for (i, c) in victims.iter_mut().chain(others.iter_mut()).enumerate() {
        let data = expect_control(&mut c.sse, "maintenance", T, &format!("stream {i}"), |_| {
            true
        })
        .await;
        assert_eq!(data["type"], "maintenance", "{data}");
        assert_eq!(data["data"], json!({"in": "5m"}), "{data}");
    }

    // Kick through nginx: the victim's streams on every node close, `closed` counts them.
    let (code, body) = kick(&nginx.url, "victim").await;
    assert_eq!(code, 200, "{body}\n{}", cluster.logs());
    assert_eq!(body["closed"], json!(victims.len()), "{body}");
    assert_eq!(body["unreachable"], json!([]), "{body}");
    for (i, c) in victims.iter_mut().enumerate() {
        c.sse.expect_closing("kicked", T).await;
        println!("victim stream {i} ({}) closed: kicked", v_held[&c.id]);
    }
    // The others stay open and served, on every node.
    let id = publish(&nginx.url, "kb:b", 0).await;
    for (i, c) in others.iter_mut().enumerate() {
        assert_eq!(
            next_delivered(&mut c.sse, "bystander").await.id,
            id,
            "bystander {i} on {}",
            o_held[&c.id]
        );
    }
    // The cluster no longer lists the victim's streams (they may take a moment to be gone
    // after `closing`); a second kick closes nothing.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let left = connections(&nginx.url, "user=victim").await;
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still listed: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        connections(&nginx.url, "user=bystander").await.len(),
        others.len()
    );
    let (code, body) = kick(&nginx.url, "victim").await;
    assert_eq!((code, &body["closed"]), (200, &json!(0)), "{body}");
}

// ---------------------------------------------------------------------------------------
// 3. Status and presence across three nodes; a node dies.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_status_and_presence_span_the_cluster_and_drop_a_dead_node() {
    let mut cluster = Cluster::start(Bus::Redis, 3);
    cluster
        .converge(&[0, 1, 2], &["node-a", "node-b", "node-c"])
        .await;
    // Status on each node: the three nodes, sorted, `self` on itself only.
    for (i, node) in cluster.nodes.iter().enumerate() {
        let st = status(node).await;
        assert_eq!(st["node_id"], cluster.ids[i], "{st}");
        assert_eq!(st["cluster"]["bus"], "redis", "{st}");
        assert_eq!(st["cluster"]["heartbeat_ms"], 200, "{st}");
        assert_eq!(st["cluster"]["node_timeout_ms"], 1000, "{st}");
        let nodes = st["nodes"].as_array().unwrap();
        for n in nodes {
            let me = n["node_id"] == cluster.ids[i];
            assert_eq!(n["self"], json!(me), "{}: {n}", cluster.ids[i]);
            for key in [
                "ready",
                "draining",
                "version",
                "uptime_s",
                "connections",
                "channels",
                "events_in_per_s",
                "events_out_per_s",
                "log_head",
                "dispatched",
                "lag_ms",
                "last_seen_ms",
                "sources",
            ] {
                assert!(n.get(key).is_some(), "NodeSummary has {key}: {n}");
            }
            assert_eq!(n["ready"], true, "{n}");
            assert_eq!(n["draining"], false, "{n}");
            if me {
                assert_eq!(n["last_seen_ms"], 0, "{n}");
            }
        }
    }

    // One subscriber of chat:1 on each node (directly, not through a balancer).
    let chat = ["chat:1"];
    let mut pa = open(&cluster.nodes[0].url, &user("pa", &["chat:*"], None), &chat).await;
    let mut pb = open(&cluster.nodes[1].url, &user("pb", &["chat:*"], None), &chat).await;
    expect_presence(
        &mut pa.sse,
        "presence.join",
        "chat:1",
        "pb",
        "pa sees pb join",
    )
    .await;
    let mut pc = open(&cluster.nodes[2].url, &user("pc", &["chat:*"], None), &chat).await;
    expect_presence(
        &mut pa.sse,
        "presence.join",
        "chat:1",
        "pc",
        "pa sees pc join",
    )
    .await;
    expect_presence(
        &mut pb.sse,
        "presence.join",
        "chat:1",
        "pc",
        "pb sees pc join",
    )
    .await;
    // A stream on another channel of the pattern, and one on a pattern: not counted.
    let _other = open(
        &cluster.nodes[2].url,
        &user("px", &["chat:*"], None),
        &["chat:2"],
    )
    .await;
    let _pattern = open(
        &cluster.nodes[1].url,
        &user("pp", &["chat:*"], None),
        &["chat:*"],
    )
    .await;

    // Presence on node A, as admin: users and clients of all three nodes.
    let (code, body) = presence(&cluster.nodes[0].url, "chat:1", &admin()).await;
    assert_eq!(code, 200, "{body}\n{}", cluster.logs());
    assert_eq!(body["channel"], "chat:1", "{body}");
    assert_eq!(body["unreachable"], json!([]), "{body}");
    assert_eq!(
        presence_users(&body),
        BTreeMap::from([("pa".into(), 1), ("pb".into(), 1), ("pc".into(), 1)]),
        "{body}"
    );
    assert_eq!(body["connections"], 3, "{body}");
    let clients: BTreeSet<(String, String, String)> = body["clients"]
        .as_array()
        .unwrap_or_else(|| panic!("admins get clients: {body}"))
        .iter()
        .map(|c| {
            (
                c["user"].as_str().unwrap().to_owned(),
                c["connection_id"].as_str().unwrap().to_owned(),
                c["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        clients,
        BTreeSet::from([
            ("pa".into(), pa.id.clone(), "node-a".into()),
            ("pb".into(), pb.id.clone(), "node-b".into()),
            ("pc".into(), pc.id.clone(), "node-c".into()),
        ]),
        "{body}"
    );
    // A user with the presence grant (on node B): the same users, no clients.
    let watcher = user("watcher", &[], Some(&["chat:*"]));
    let (code, body) = presence(&cluster.nodes[1].url, "chat:1", &watcher).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(presence_users(&body).len(), 3, "{body}");
    assert!(
        body.get("clients").is_none(),
        "only admins get clients: {body}"
    );
    // Without the grant, or with one that does not cover the channel: 403.
    for token in [
        user("nosy", &["chat:*"], None),
        user("elsewhere", &[], Some(&["room:*"])),
    ] {
        let (code, body) = presence(&cluster.nodes[1].url, "chat:1", &token).await;
        assert_error(code, &body, 403, "presence_forbidden");
    }
    // A pattern is refused.
    let (code, body) = presence(&cluster.nodes[0].url, "chat:*", &admin()).await;
    assert_error(code, &body, 400, "invalid_channel");

    // A channel removed through the subscriptions API (sent to node A, held by node B):
    // presence.leave for pb; added back: presence.join.
    let (code, body) = change(
        &cluster.nodes[0].url,
        &pb.token,
        &pb.id,
        json!({"remove": ["chat:1"], "add": ["chat:3"]}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    expect_presence(
        &mut pa.sse,
        "presence.leave",
        "chat:1",
        "pb",
        "pa sees pb leave",
    )
    .await;
    expect_presence(
        &mut pc.sse,
        "presence.leave",
        "chat:1",
        "pb",
        "pc sees pb leave",
    )
    .await;
    let (code, body) = change(
        &cluster.nodes[2].url,
        &pb.token,
        &pb.id,
        json!({"add": ["chat:1"]}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    expect_presence(
        &mut pa.sse,
        "presence.join",
        "chat:1",
        "pb",
        "pa sees pb again",
    )
    .await;

    // kill -9 node C: its user leaves the presence list (queried on A), the survivors get
    // presence.leave for pc, the other nodes' status drops node-c.
    cluster.nodes[2].kill9();
    let killed = Instant::now();
    let deadline = killed + CONVERGE;
    loop {
        let (code, body) = presence(&cluster.nodes[0].url, "chat:1", &admin()).await;
        // While node C is still believed alive it may be named unreachable.
        assert_eq!(code, 200, "{body}");
        let users = presence_users(&body);
        if !users.contains_key("pc") {
            assert_eq!(
                users,
                BTreeMap::from([("pa".into(), 1), ("pb".into(), 1)]),
                "{body}"
            );
            assert_eq!(body["connections"], 2, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pc is still present {CONVERGE:?} after node C died: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "node C's user left the presence list {:.2} s after kill -9 (node_timeout_ms 1000)",
        killed.elapsed().as_secs_f64()
    );
    expect_presence(
        &mut pa.sse,
        "presence.leave",
        "chat:1",
        "pc",
        "pa: pc's node died",
    )
    .await;
    expect_presence(
        &mut pb.sse,
        "presence.leave",
        "chat:1",
        "pc",
        "pb: pc's node died",
    )
    .await;
    cluster.converge(&[0, 1], &["node-a", "node-b"]).await;
    // Cluster-wide answers settle on the survivors, with nobody unreachable.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (code, body) = presence(&cluster.nodes[1].url, "chat:1", &admin()).await;
        assert_eq!(code, 200, "{body}");
        if body["unreachable"] == json!([]) {
            assert_eq!(presence_users(&body).len(), 2, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Connections on chat:1 (exactly, or by a pattern that covers it): none of node C's.
    let listed = connections(&cluster.nodes[0].url, "channel=chat:1").await;
    let on: BTreeSet<(&str, &str)> = listed
        .iter()
        .map(|c| (c["user"].as_str().unwrap(), c["node"].as_str().unwrap()))
        .collect();
    assert_eq!(
        on,
        BTreeSet::from([("pa", "node-a"), ("pb", "node-b"), ("pp", "node-b")]),
        "{listed:?}"
    );
    // A stream that ends normally: presence.leave too.
    drop(pb);
    expect_presence(
        &mut pa.sse,
        "presence.leave",
        "chat:1",
        "pb",
        "pa: pb's stream ended",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 4. NATS, short.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_subscription_change_and_kick_cross_nodes() {
    let cluster = Cluster::start(Bus::Nats, 2);
    cluster.converge(&[0, 1], &["node-a", "node-b"]).await;
    let st = status(&cluster.nodes[0]).await;
    assert_eq!(st["cluster"]["bus"], "nats", "{st}");
    let (a, b) = (&cluster.nodes[0].url, &cluster.nodes[1].url);
    let token = user("nu", &["nt:*"], None);
    // streams[0] on B, streams[1] on A.
    let mut streams = vec![
        open(b, &token, &["nt:home"]).await,
        open(a, &token, &["nt:home"]).await,
    ];
    let held = holders(a, "nu").await;
    assert_eq!(held[&streams[0].id], "node-b", "{held:?}");
    assert_eq!(held[&streams[1].id], "node-a", "{held:?}");
    // Changes to B's stream sent to A, and to A's stream sent to B.
    for (k, (s, via)) in [(0, a), (1, b), (0, a)].into_iter().enumerate() {
        let c = &mut streams[s];
        let channel = format!("nt:x{k}");
        let (code, body) = change(via, &c.token, &c.id, json!({"add": [channel]})).await;
        assert_eq!(code, 200, "change {k}: {body}\n{}", cluster.logs());
        expect_control(&mut c.sse, "subscribed", T, "nats", |d| {
            d["channels"] == json!([channel.as_str()])
        })
        .await;
        let id = publish(via, &channel, k).await;
        assert_eq!(next_delivered(&mut c.sse, "nats").await.id, id);
    }
    // An unknown connection: 404 connection_not_found (no node holds it).
    let real = streams[0].id.clone();
    let last = if real.ends_with('0') { '1' } else { '0' };
    let fake = format!("{}{last}", &real[..real.len() - 1]);
    let (code, body) = change(a, &token, &fake, json!({"add": ["nt:y"]})).await;
    assert_error(code, &body, 404, "connection_not_found");
    // Another user's connection: 404 too.
    let (code, body) = change(
        a,
        &user("intruder", &["nt:*"], None),
        &real,
        json!({"add": ["nt:y"]}),
    )
    .await;
    assert_error(code, &body, 404, "connection_not_found");
    // A cluster-wide kick sent to A closes the streams on both nodes.
    let (code, body) = kick(a, "nu").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["closed"], 2, "{body}");
    assert_eq!(body["unreachable"], json!([]), "{body}");
    for c in &mut streams {
        c.sse.expect_closing("kicked", T).await;
    }
}

// ---------------------------------------------------------------------------------------
// 5. One node on the file log: everything about this node, as before.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_file_log_keeps_connections_kick_and_presence() {
    let node = Server::start_with_config(
        "[server]
node_id = \"solo\"

[presence]
events = [\"chat:*\"]
",
        &[],
    );
    let url = node.url.as_str();
    let st = status(&node).await;
    assert_eq!(st["cluster"]["bus"], Value::Null, "{st}");
    let nodes = st["nodes"].as_array().unwrap_or_else(|| panic!("{st}"));
    assert_eq!(nodes.len(), 1, "{st}");
    assert_eq!(nodes[0]["node_id"], "solo", "{st}");
    assert_eq!(nodes[0]["self"], true, "{st}");

    let s1 = user("s1", &["chat:*"], None);
    let s2 = user("s2", &["chat:*"], None);
    let mut first = open(url, &s1, &["chat:1"]).await;
    let mut second = open(url, &s1, &["chat:1"]).await;
    expect_presence(
        &mut first.sse,
        "presence.join",
        "chat:1",
        "s1",
        "second s1 stream",
    )
    .await;
    let mut other = open(url, &s2, &["chat:1"]).await;
    expect_presence(&mut first.sse, "presence.join", "chat:1", "s2", "s2 joins").await;
    expect_presence(&mut second.sse, "presence.join", "chat:1", "s2", "s2 joins").await;

    let listed = connections(url, "user=s1").await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|c| c["node"] == "solo"), "{listed:?}");
    let (code, body) = presence(url, "chat:1", &admin()).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["unreachable"], json!([]), "{body}");
    assert_eq!(
        presence_users(&body),
        BTreeMap::from([("s1".into(), 2), ("s2".into(), 1)]),
        "{body}"
    );
    assert_eq!(body["connections"], 3, "{body}");
    let (code, body) = presence(url, "chat:1", &user("w", &[], Some(&["chat:*"]))).await;
    assert_eq!((code, presence_users(&body).len()), (200, 2), "{body}");
    let (code, body) = presence(url, "chat:1", &s2).await;
    assert_error(code, &body, 403, "presence_forbidden");

    let (code, body) = kick(url, "s1").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["closed"], 2, "{body}");
    assert_eq!(body["unreachable"], json!([]), "{body}");
    first.sse.expect_closing("kicked", T).await;
    second.sse.expect_closing("kicked", T).await;
    expect_presence(
        &mut other.sse,
        "presence.leave",
        "chat:1",
        "s1",
        "s1 kicked",
    )
    .await;
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (code, body) = presence(url, "chat:1", &admin()).await;
        assert_eq!(code, 200, "{body}");
        if presence_users(&body) == BTreeMap::from([("s2".into(), 1)]) {
            break;
        }
        assert!(Instant::now() < deadline, "s1 still present: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 6. A frozen node: believed alive (node_timeout_ms 5000), not answering (request_timeout_ms
// 500).

fn signal(node: &Server, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &node.pid().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {}", node.pid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_frozen_node_is_named_unreachable() {
    let cluster = Cluster::start_with(Bus::Redis, 3, (5000, 500));
    cluster
        .converge(&[0, 1, 2], &["node-a", "node-b", "node-c"])
        .await;
    let a = cluster.nodes[0].url.as_str();
    let fz = user("fz", &["fz:*"], None);
    let mut streams = Vec::new();
    for node in &cluster.nodes {
        streams.push(open(&node.url, &fz, &["fz:home"]).await);
    }
    let victim = user("fk", &["fz:*"], None);
    let mut kicked = vec![
        open(a, &victim, &["fz:home"]).await,
        open(&cluster.nodes[1].url, &victim, &["fz:home"]).await,
    ];

    // Freeze node C (SIGSTOP; the Server's drop still kills it).
    signal(&cluster.nodes[2], "-STOP");
    let (code, _, body) = get(&format!("{a}/v1/connections?user=fz"), &[bearer(&admin())]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["unreachable"], json!(["node-c"]), "{body}");
    let mut on: Vec<&str> = body["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["node"].as_str().unwrap())
        .collect();
    on.sort();
    assert_eq!(on, ["node-a", "node-b"], "{body}");
    // A change for C's stream: 503 node_unreachable (not 404: C is believed alive).
    let (code, body) = change(a, &fz, &streams[2].id, json!({"add": ["fz:late"]})).await;
    assert_error(code, &body, 503, "node_unreachable");
    // A kick of a user with no stream on C: done on A and B, C named unreachable.
    let (code, body) = kick(a, "fk").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["closed"], 2, "{body}");
    assert_eq!(body["unreachable"], json!(["node-c"]), "{body}");
    for c in &mut kicked {
        c.sse.expect_closing("kicked", T).await;
    }
    // Node C runs again: nobody unreachable, its stream listed and served.
    signal(&cluster.nodes[2], "-CONT");
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (code, _, body) =
            get(&format!("{a}/v1/connections?user=fz"), &[bearer(&admin())]).await;
        assert_eq!(code, 200, "{body}");
        if body["unreachable"] == json!([]) {
            assert_eq!(body["connections"].as_array().unwrap().len(), 3, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "C stays unreachable: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (The refused change may have been carried out late by C: its outcome was unknown.)
    let c = &mut streams[2];
    let (code, body) = change(a, &fz, &c.id, json!({"add": ["fz:after"]})).await;
    assert_eq!(code, 200, "{body}");
    expect_control(&mut c.sse, "subscribed", T, "after SIGCONT", |d| {
        d["channels"] == json!(["fz:after"])
    })
    .await;
    let id = publish(a, "fz:after", 0).await;
    assert_eq!(next_delivered(&mut c.sse, "after SIGCONT").await.id, id);
}
