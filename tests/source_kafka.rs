//! The Kafka source end to end: a real `ssegate serve` process with a `type = "kafka"`
//! source, a real Kafka-protocol broker (tansu 0.6.0, see tests/engines/kafka.rs) started by
//! the test on a free port, messages produced over the Kafka protocol (librdkafka), and real
//! SSE clients.

mod common;
mod engines;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    bearer, envelope, last_event_id, metric, metrics_text, source_status, token_with, Server, Sse,
};
use engines::kafka::{brokers, create_topic, produce, producer};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

/// Waits until `check` holds for source `name`'s status; fails with the status and the
/// server log when it does not within `T`, or when the source failed.
async fn wait_status(server: &Server, name: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    loop {
        let s = source_status(server, name).await;
        assert!(
            s["state"] != "failed" || check(&s),
            "source {name} failed: {s}\n{}",
            server.log_text()
        );
        if check(&s) {
            return;
        }
        assert!(
            start.elapsed() < T,
            "source {name}: {what}, never: {s}\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The source table for `topic` in group `group` with `extra` settings and templates.
fn source(brokers: &str, topic: &str, group: &str, extra: &str) -> String {
    format!(
        r#"
[[sources]]
name = "orders"
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group = "{group}"
start = "all"
session_timeout_ms = 6000
{extra}
"#
    )
}

/// Every event of `channel` from the start of the log, as user `user` sees it.
async fn read_all(server: &Server, user: &str, channel: &str, n: usize) -> Vec<Value> {
    let sub = token_with(user, &[channel], &[], false, 3600);
    let (mut sse, _) = Sse::open(
        &server.stream_url(&[channel]),
        &[bearer(&sub), last_event_id("0")],
    )
    .await;
    let deadline = tokio::time::Instant::now() + T;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sse.next_or_end(left).await {
            common::Next::Event(e) if !e.id.is_empty() => got.push(e),
            common::Next::Event(_) => {}
            other => panic!(
                "{channel}: got {} of {n} events, then {other:?}\nsource: {}\n{}",
                got.len(),
                source_status(server, "orders").await,
                server.log_text()
            ),
        }
    }
    // Nothing more: a duplicate would come right after.
    sse.expect_quiet(Duration::from_millis(1500)).await;
    got.iter().map(envelope).collect()
}

/// The `n` field of each event's data.
fn numbers(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["data"]["n"].as_i64().expect("n"))
        .collect()
}

#[tokio::test]
async fn kafka_messages_reach_their_users_in_partition_order_with_metadata_in_templates() {
    let broker = engines::kafka::start();
    let brokers = brokers(&broker);
    create_topic(&brokers, "orders", 2).await;
    let p = producer(&brokers);
    // Produced before the gateway starts: `start = "all"` reads them too.
    for n in 0..5 {
        let owner = if n == 2 { "bob" } else { "alice" };
        let v = json!({"customer": "c1", "owner": owner, "n": n}).to_string();
        produce(&p, "orders", 0, "c1", v.as_bytes(), &[("kind", "created")]).await;
    }
    let server = Server::start_with_config(
        &source(
            &brokers,
            "orders",
            "gw",
            r#"channel = "orders:{row.customer}"
event_type = "order.{kafka.headers.kind}"
users = "{row.owner}"
exclude = ["owner"]"#,
        ),
        &[],
    );
    wait_status(&server, "orders", "5 events", |s| s["events"] == 5).await;
    // More while it runs, on both partitions, and one message that is not JSON.
    produce(&p, "orders", 0, "c1", b"{not json", &[("kind", "created")]).await;
    for n in 5..10 {
        let v = json!({"customer": "c1", "owner": "alice", "n": n}).to_string();
        produce(&p, "orders", 0, "c1", v.as_bytes(), &[("kind", "updated")]).await;
        let v = json!({"customer": "c2", "owner": "carol", "n": n}).to_string();
        produce(&p, "orders", 1, "c2", v.as_bytes(), &[("kind", "updated")]).await;
    }
    let alice = read_all(&server, "alice", "orders:c1", 9).await;
    assert_eq!(
        numbers(&alice),
        [0, 1, 3, 4, 5, 6, 7, 8, 9],
        "bob's event is not alice's"
    );
    assert_eq!(alice[0]["type"], "order.created");
    assert_eq!(alice[8]["type"], "order.updated");
    assert_eq!(alice[0]["data"], json!({"customer": "c1", "n": 0}));
    let bob = read_all(&server, "bob", "orders:c1", 1).await;
    assert_eq!(numbers(&bob), [2]);
    let carol = read_all(&server, "carol", "orders:c2", 5).await;
    assert_eq!(numbers(&carol), [5, 6, 7, 8, 9]);
    let s = source_status(&server, "orders").await;
    assert_eq!(
        (s["type"].clone(), s["state"].clone()),
        (json!("kafka"), json!("running"))
    );
    assert_eq!(
        (s["events"].clone(), s["skipped"].clone()),
        (json!(15), json!(1)),
        "{s}"
    );
    assert_eq!(
        s["checkpoint"], "orders/0:11,orders/1:5",
        "next offset of each partition"
    );
    let text = metrics_text(&server).await;
    assert_eq!(
        metric(&text, "ssegate_source_skipped_total{source=\"orders\"}"),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn kafka_templates_see_the_key_topic_partition_and_offset() {
    let broker = engines::kafka::start();
    let brokers = brokers(&broker);
    create_topic(&brokers, "audit", 1).await;
    let p = producer(&brokers);
    produce(&p, "audit", 0, "tenant-7", br#"{"what": "login"}"#, &[]).await;
    let server = Server::start_with_config(
        &source(
            &brokers,
            "audit",
            "gw",
            r#"channel = "audit:{kafka.key}"
event_type = "{table}.p{kafka.partition}.o{kafka.offset}""#,
        ),
        &[],
    );
    let got = read_all(&server, "u", "audit:tenant-7", 1).await;
    assert_eq!(got[0]["type"], "audit.p0.o0");
    assert_eq!(got[0]["data"], json!({"what": "login"}));
    // A message without a key cannot build the channel: skipped, counted, never published
    // on a wrong channel.
    let record = rdkafka::producer::FutureRecord::<(), _>::to("audit")
        .partition(0)
        .payload(r#"{"what": "logout"}"#);
    p.send(record, Duration::from_secs(30)).await.unwrap();
    wait_status(&server, "orders", "the keyless message skipped", |s| {
        s["skipped"] == 1
    })
    .await;
}

/// `kill -9` of the gateway, twice, while 2,400 messages stream in over two partitions:
/// every message is on the stream exactly once, in partition order.
#[tokio::test]
async fn kafka_kill_9_mid_stream_every_message_exactly_once_in_partition_order() {
    const PER_PARTITION: i64 = 1200;
    let broker = engines::kafka::start();
    let brokers = brokers(&broker);
    create_topic(&brokers, "orders", 2).await;
    let mut server = Server::start_with_config(
        &source(
            &brokers,
            "orders",
            "gw",
            r#"channel = "orders:p{kafka.partition}"
commit_interval_ms = 200"#,
        ),
        &[("LIMITS__PUBLISH_RATE", "0")],
    );
    wait_status(&server, "orders", "running", |s| s["state"] == "running").await;
    let producing = {
        let brokers = brokers.clone();
        tokio::spawn(async move {
            let p = producer(&brokers);
            for n in 0..PER_PARTITION {
                for part in 0..2 {
                    let v = json!({"n": n}).to_string();
                    produce(&p, "orders", part, "k", v.as_bytes(), &[]).await;
                }
                if n % 100 == 99 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };
    for kill in 0..2 {
        // Let part of the stream in, then kill the gateway in the middle of it.
        let seen = 400 + 600 * kill;
        wait_status(&server, "orders", "events flowing", |s| {
            s["events"].as_u64().unwrap_or(0) >= seen
        })
        .await;
        server.kill9_and_restart();
    }
    producing.await.unwrap();
    for part in 0..2 {
        let got = read_all(
            &server,
            "u",
            &format!("orders:p{part}"),
            PER_PARTITION as usize,
        )
        .await;
        assert_eq!(
            numbers(&got),
            (0..PER_PARTITION).collect::<Vec<_>>(),
            "partition {part}: every message once, in order"
        );
    }
}

/// The broker is killed and started again: the source backs off (and says so in
/// `/v1/status`), then resumes where it was; nothing acknowledged by the broker is lost.
#[tokio::test]
async fn kafka_broker_restart_backs_off_and_resumes_without_loss() {
    let mut broker = engines::kafka::start();
    let brokers = brokers(&broker);
    create_topic(&brokers, "orders", 1).await;
    let server = Server::start_with_config(
        &source(&brokers, "orders", "gw", r#"channel = "orders:all""#),
        &[],
    );
    wait_status(&server, "orders", "running", |s| s["state"] == "running").await;
    {
        let p = producer(&brokers);
        for n in 0..100 {
            let v = json!({"n": n}).to_string();
            produce(&p, "orders", 0, "k", v.as_bytes(), &[]).await;
        }
    }
    // Killed as soon as it acknowledged the last message: some may not be read yet.
    broker.kill();
    wait_status(&server, "orders", "backoff while the broker is down", |s| {
        s["state"] == "backoff"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("kafka"))
    })
    .await;
    broker.restart();
    let p = producer(&brokers);
    for n in 100..200 {
        let v = json!({"n": n}).to_string();
        produce(&p, "orders", 0, "k", v.as_bytes(), &[]).await;
    }
    let got = read_all(&server, "u", "orders:all", 200).await;
    assert_eq!(numbers(&got), (0..200).collect::<Vec<_>>());
    wait_status(&server, "orders", "running again", |s| {
        s["state"] == "running"
    })
    .await;
}

/// Gateway nodes in one consumer group on one shared Redis log, changing while the messages
/// stream in: node A alone; node B joins (the group takes partitions from A and gives them
/// to B); B stops gracefully (SIGTERM: it commits and leaves, A takes its partitions back);
/// node C joins and is killed (`kill -9`: A takes its partitions over after the session
/// timeout, from their committed offsets). Every message is in the log exactly once, in
/// partition order.
#[tokio::test]
async fn kafka_nodes_joining_leaving_and_dying_in_one_group_on_a_shared_redis_log_exactly_once() {
    let redis = engines::redis::start(engines::redis::Persistence::None);
    let redis_url = engines::redis::url(&redis);
    let broker = engines::kafka::start();
    let brokers = brokers(&broker);
    create_topic(&brokers, "orders", 4).await;
    let config = source(
        &brokers,
        "orders",
        "gw",
        r#"channel = "orders:all"
commit_interval_ms = 200"#,
    );
    let env = [
        ("LOG__KIND", "redis"),
        ("LOG__URL", redis_url.as_str()),
        ("LOG__STREAM", "kafka-test"),
        ("LIMITS__PUBLISH_RATE", "0"),
    ];
    let p = producer(&brokers);
    let mut rounds = 0i64;
    // Produces a message on each partition per round, until `node` has appended events and
    // at least `min` more rounds went by.
    async fn produce_until(
        p: &rdkafka::producer::FutureProducer,
        rounds: &mut i64,
        node: Option<&Server>,
        min: i64,
    ) {
        let start = Instant::now();
        let first = *rounds;
        loop {
            for part in 0..4 {
                let v = json!({"n": *rounds, "p": part}).to_string();
                produce(p, "orders", part, "k", v.as_bytes(), &[]).await;
            }
            *rounds += 1;
            let reading = match node {
                Some(n) => source_status(n, "orders").await["events"].as_u64() > Some(0),
                None => true,
            };
            if reading && *rounds - first >= min {
                return;
            }
            assert!(
                start.elapsed() < T,
                "the node never got partitions: {}",
                node.map(|n| n.log_text()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let a = Server::start_with_config(&config, &env);
    wait_status(&a, "orders", "running", |s| s["state"] == "running").await;
    produce_until(&p, &mut rounds, Some(&a), 30).await;
    let b = Server::start_with_config(&config, &env);
    produce_until(&p, &mut rounds, Some(&b), 30).await;
    b.sigterm();
    produce_until(&p, &mut rounds, None, 30).await;
    let mut c = Server::start_with_config(&config, &env);
    produce_until(&p, &mut rounds, Some(&c), 30).await;
    c.kill9();
    produce_until(&p, &mut rounds, None, 100).await;
    let sent = 4 * rounds as usize;
    let got = read_all(&a, "u", "orders:all", sent).await;
    let mut by_partition: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for e in &got {
        by_partition
            .entry(e["data"]["p"].as_i64().unwrap())
            .or_default()
            .push(e["data"]["n"].as_i64().unwrap());
    }
    for (part, ns) in by_partition {
        assert_eq!(
            ns,
            (0..rounds).collect::<Vec<_>>(),
            "partition {part}: each message once, in order"
        );
    }
}

/// TLS to the broker: with the CA that signed the broker's certificate the source reads;
/// without it, it backs off and says why. (The TLS server is a terminator in front of tansu,
/// see [`engines::kafka::tls_terminator`]; the client side is librdkafka's own TLS.)
#[tokio::test]
async fn kafka_over_tls_verifies_the_broker_certificate() {
    let certs = tempfile::tempdir().unwrap();
    engines::tls::test_ca(certs.path());
    let cert = certs.path().join("server.pem");
    let key = certs.path().join("server.key");
    let ca = certs.path().join("ca.pem");
    // The broker on a port of its own, advertising the TLS port in front of it.
    let tls_port = engines::free_port();
    let broker = engines::Engine::start(engines::kafka::spec_advertising(tls_port));
    let _terminator = engines::kafka::tls_terminator(&cert, &key, tls_port, broker.port()).await;
    let brokers = format!("127.0.0.1:{tls_port}");
    let tls_client = |c: &mut rdkafka::config::ClientConfig| {
        c.set("security.protocol", "ssl")
            .set("ssl.ca.location", ca.to_str().unwrap());
    };
    let mut admin_cfg = rdkafka::config::ClientConfig::new();
    admin_cfg.set("bootstrap.servers", &brokers);
    tls_client(&mut admin_cfg);
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        admin_cfg.create().unwrap();
    admin
        .create_topics(
            &[rdkafka::admin::NewTopic::new(
                "secure",
                1,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let mut pcfg = rdkafka::config::ClientConfig::new();
    pcfg.set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "false");
    tls_client(&mut pcfg);
    let p: rdkafka::producer::FutureProducer = pcfg.create().unwrap();
    produce(&p, "secure", 0, "k", br#"{"n": 1}"#, &[]).await;
    let config = format!(
        "{}\n{}",
        source(
            &brokers,
            "secure",
            "gw",
            &format!(
                "channel = \"secure:all\"\nsecurity_protocol = \"ssl\"\ntls_ca_file = \"{}\"",
                ca.display()
            )
        ),
        source(
            &brokers,
            "secure",
            "gw2",
            "channel = \"untrusted:all\"\nsecurity_protocol = \"ssl\"",
        )
        .replace("name = \"orders\"", "name = \"untrusted\""),
    )
    .replace("name = \"orders\"", "name = \"trusted\"");
    let server = Server::start_with_config(&config, &[]);
    let got = read_all(&server, "u", "secure:all", 1).await;
    assert_eq!(numbers(&got), [1]);
    wait_status(&server, "untrusted", "a certificate error", |s| {
        s["state"] == "backoff"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("certificate"))
    })
    .await;
    assert_eq!(source_status(&server, "untrusted").await["events"], 0);
}

/// SASL (SCRAM-SHA-512) to a broker that requires it: with the right password the source
/// reads; with a wrong one it stops (`failed`: retrying cannot help) and says why.
#[tokio::test]
async fn kafka_over_sasl_scram_authenticates_and_a_wrong_password_fails_the_source() {
    let mut broker = engines::Engine::start(engines::kafka::spec_authenticating_when_marked());
    let brokers = brokers(&broker);
    engines::kafka::create_user(&brokers, "gateway", "right-password-1");
    create_topic(&brokers, "orders", 1).await;
    {
        let p = producer(&brokers);
        produce(&p, "orders", 0, "k", br#"{"n": 1}"#, &[]).await;
    }
    std::fs::write(broker.dir().join("authenticate"), "").unwrap();
    broker.restart();
    let sasl = |name: &str, channel: &str, password: &str| {
        source(
            &brokers,
            "orders",
            name,
            &format!(
                "channel = \"{channel}:all\"\nsecurity_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"gateway\"\nsasl_password = \"{password}\""
            ),
        )
        .replace("name = \"orders\"", &format!("name = \"{name}\""))
    };
    let config = format!(
        "{}\n{}",
        sasl("good", "orders", "right-password-1"),
        sasl("bad", "refused", "wrong-password")
    );
    let server = Server::start_with_config(&config, &[]);
    let got = read_all(&server, "u", "orders:all", 1).await;
    assert_eq!(numbers(&got), [1]);
    wait_status(&server, "bad", "an authentication failure", |s| {
        s["state"] == "failed"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("authentication"))
    })
    .await;
    assert_eq!(source_status(&server, "bad").await["events"], 0);
    // The password is nowhere in what the gateway says.
    assert!(!server.log_text().contains("wrong-password"));
    assert!(!server.log_text().contains("right-password-1"));
}

/// Benchmark, not a test (ignored; run it on a quiet machine, in release mode):
/// `cargo nextest run --release --run-ignored only --test source_kafka --no-capture
/// kafka_source_throughput`. 4 partitions hold `SSEGATE_BENCH_KAFKA_MESSAGES` (200,000) JSON
/// messages of about 200 bytes, produced before the gateway starts; the gateway's source
/// reads them all (`start = "all"`) into the file log. Prints messages/s from the source's
/// start to its last append, and the appends' batch sizes.
#[tokio::test]
#[ignore = "benchmark: prints figures"]
async fn kafka_source_throughput() {
    let n: usize = std::env::var("SSEGATE_BENCH_KAFKA_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let broker = engines::kafka::start();
    let brokers = brokers(&broker);
    create_topic(&brokers, "orders", 4).await;
    let p: rdkafka::producer::FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "false")
        .set("linger.ms", "20")
        .set("batch.num.messages", "2000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .unwrap();
    let pad = "x".repeat(120);
    let produced = Instant::now();
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let v = json!({"customer": format!("c{}", i % 100), "n": i, "pad": pad}).to_string();
        let record = rdkafka::producer::FutureRecord::to("orders")
            .partition((i % 4) as i32)
            .key("k")
            .payload(&v);
        pending.push(p.send_result(record).expect("queue"));
    }
    for d in pending {
        d.await.unwrap().unwrap();
    }
    let produce_secs = produced.elapsed().as_secs_f64();
    let server = Server::start_with_config(
        &source(
            &brokers,
            "orders",
            "bench",
            r#"channel = "orders:{row.customer}""#,
        ),
        &[],
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    loop {
        let s = source_status(&server, "orders").await;
        if s["events"].as_u64() >= Some(n as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "not all read: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let text = metrics_text(&server).await;
    let commits = metric(&text, "ssegate_log_commits_total").unwrap_or(0.0);
    println!(
        "kafka source: {n} messages of ~200 bytes on 4 partitions: produced (librdkafka → tansu) at {:.0}/s; read into the file log at {:.0} messages/s ({secs:.2} s from the gateway's start, {commits:.0} log commits, {:.0} messages per commit)",
        n as f64 / produce_secs,
        n as f64 / secs,
        n as f64 / commits.max(1.0)
    );
}
