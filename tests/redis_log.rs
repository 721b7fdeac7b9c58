//! The redis log beyond the shared model suite (`log_model.rs`): several nodes on one stream,
//! atomic batches under concurrent publishers, outages and recovery, exact gaps after
//! retention, TLS with a private CA. Every test runs its own redis-server on a free port.

mod engines;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engines::redis::{self as engine, Persistence};
use engines::Engine;
use serde_json::value::RawValue;
use ssegate::log::config::EngineConfig;
use ssegate::log::redis::RedisLog;
use ssegate::log::{
    all_events, AppendItem, Appended, Event, EventLog, LogError, LogOptions, NewEvent, Position,
};

const T0: u64 = 1_700_000_000_000;

fn options(retention_events: u64, retention_age_ms: u64) -> LogOptions {
    LogOptions {
        retention_events,
        retention_age_ms,
        dedupe_window_ms: 60_000,
        file_cache_bytes: 0,
    }
}

fn config(url: &str, stream: &str) -> EngineConfig {
    EngineConfig {
        url: url.to_owned(),
        stream: stream.to_owned(),
        tls_ca_file: None,
    }
}

async fn open(url: &str, stream: &str, opts: LogOptions) -> Arc<dyn EventLog> {
    RedisLog::open(&config(url, stream), opts)
        .await
        .expect("open redis log")
}

fn event(channel: &str, data: serde_json::Value, time_ms: u64) -> NewEvent {
    NewEvent::new(
        channel.to_owned(),
        "t".into(),
        RawValue::from_string(data.to_string()).unwrap(),
        None,
        time_ms,
        usize::MAX,
    )
    .unwrap()
}

fn item(key: Option<&str>, events: Vec<NewEvent>) -> AppendItem {
    AppendItem {
        key: key.map(str::to_owned),
        events,
    }
}

/// Appends one event with `data`; its position.
async fn append_one(log: &Arc<dyn EventLog>, data: serde_json::Value, time_ms: u64) -> Position {
    let appended = log
        .append(vec![item(None, vec![event("c", data, time_ms)])], time_ms)
        .await
        .expect("append");
    appended[0].positions[0]
}

/// Every event after `after`, reading in small steps until the head.
async fn read_all(log: &Arc<dyn EventLog>, mut after: Position) -> Vec<Arc<Event>> {
    let mut out = Vec::new();
    loop {
        let batch = log.read(after, 7, &all_events, None).await.expect("read");
        assert!(batch.gap.is_none() || out.is_empty(), "gap in the middle");
        out.extend(batch.events);
        assert!(batch.next >= after);
        after = batch.next;
        if batch.at_head {
            return out;
        }
    }
}

fn data(e: &Event) -> serde_json::Value {
    serde_json::from_str(e.event.data.get()).unwrap()
}

/// Calls `f` until it succeeds or `within` has passed.
async fn eventually<T, F, Fut>(within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LogError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("still failing after {within:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_order_idempotency_and_wakeups() {
    let redis = engine::start(Persistence::None);
    let url = engine::url(&redis);
    let a = open(&url, "shared", options(1_000, 0)).await;
    let b = open(&url, "shared", options(1_000, 0)).await;

    let mut appended = Vec::new();
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        appended.push(append_one(node, serde_json::json!({ "i": i }), T0).await);
    }
    let seen_a = read_all(&a, Position::ZERO).await;
    let seen_b = read_all(&b, Position::ZERO).await;
    let order = |seen: &[Arc<Event>]| -> Vec<(Position, serde_json::Value)> {
        seen.iter().map(|e| (e.pos, data(e))).collect()
    };
    assert_eq!(order(&seen_a), order(&seen_b), "both nodes read one order");
    assert_eq!(
        seen_a.iter().map(|e| e.pos).collect::<Vec<_>>(),
        appended,
        "in append order"
    );
    assert!(seen_a
        .iter()
        .enumerate()
        .all(|(i, e)| data(e) == serde_json::json!({ "i": i })));
    // Positions are Redis stream ids, shown as the SSE id `<ms>-<seq>`, and parse back.
    let id = appended[0].to_string();
    assert!(id.contains('-'), "{id}");
    assert_eq!(id.parse::<Position>().unwrap(), appended[0]);

    // Idempotency keys are shared: B's repeat of A's key stores nothing.
    let first = a
        .append(
            vec![item(
                Some("order-1"),
                vec![event("c", serde_json::json!("x"), T0)],
            )],
            T0,
        )
        .await
        .unwrap();
    let again = b
        .append(
            vec![item(
                Some("order-1"),
                vec![event("c", serde_json::json!("y"), T0)],
            )],
            T0 + 1_000,
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![Appended {
            positions: first[0].positions.clone(),
            duplicate: true
        }]
    );
    let bounds = a.bounds().await.unwrap();
    assert_eq!(bounds, b.bounds().await.unwrap());
    assert_eq!(bounds.head, first[0].positions[0]);

    // Two nodes racing on one key: exactly one stores it.
    let (ra, rb) = tokio::join!(
        a.append(
            vec![item(
                Some("race"),
                vec![event("c", serde_json::json!("a"), T0)]
            )],
            T0
        ),
        b.append(
            vec![item(
                Some("race"),
                vec![event("c", serde_json::json!("b"), T0)]
            )],
            T0
        ),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_ne!(ra[0].duplicate, rb[0].duplicate, "one of them stored it");
    assert_eq!(ra[0].positions, rb[0].positions);

    // A reader waiting on B is woken by an append on A (B's tailer learns it).
    let head = b.bounds().await.unwrap().head;
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let batch = b
                .read(head, 10, &all_events, Some(Duration::from_secs(20)))
                .await;
            (started.elapsed(), batch)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pos = append_one(&a, serde_json::json!("wake"), T0).await;
    let (waited, batch) = waiting.await.unwrap();
    let batch = batch.unwrap();
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].pos, pos);
    assert!(waited < Duration::from_secs(5), "woken after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_atomic_among_concurrent_publishers() {
    const PUBLISHERS: usize = 6;
    const BATCHES: usize = 20;
    const SIZE: usize = 5;
    let redis = engine::start(Persistence::None);
    let url = engine::url(&redis);
    let nodes = [
        open(&url, "atomic", options(100_000, 0)).await,
        open(&url, "atomic", options(100_000, 0)).await,
    ];
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let log = nodes[p % nodes.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for b in 0..BATCHES {
                // Two items per call: the whole call is one atomic unit.
                let events = |half: usize| {
                    (0..SIZE)
                        .map(|i| event("c", serde_json::json!([p, b, half * SIZE + i]), T0))
                        .collect()
                };
                let appended = log
                    .append(vec![item(None, events(0)), item(None, events(1))], T0)
                    .await
                    .unwrap();
                let positions: Vec<Position> =
                    appended.into_iter().flat_map(|a| a.positions).collect();
                out.push(((p, b), positions));
            }
            out
        }));
    }
    let mut returned: HashMap<(usize, usize), Vec<Position>> = HashMap::new();
    for t in tasks {
        returned.extend(t.await.unwrap());
    }
    let all = read_all(&nodes[0], Position::ZERO).await;
    assert_eq!(all.len(), PUBLISHERS * BATCHES * SIZE * 2);
    let mut i = 0;
    while i < all.len() {
        // Each call's events are next to each other, in order, with the positions returned.
        let first = data(&all[i]);
        let (p, b) = (
            first[0].as_u64().unwrap() as usize,
            first[1].as_u64().unwrap() as usize,
        );
        let call = &all[i..i + SIZE * 2];
        for (k, e) in call.iter().enumerate() {
            assert_eq!(data(e), serde_json::json!([p, b, k]), "interleaved at {i}");
        }
        let positions: Vec<Position> = call.iter().map(|e| e.pos).collect();
        assert_eq!(returned[&(p, b)], positions);
        i += SIZE * 2;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_fast_and_recovers_without_restart() {
    let mut redis = Engine::start(engine::spec(Persistence::Aof, &[]));
    let url = engine::url(&redis);
    let a = open(&url, "outage", options(1_000, 0)).await;
    let b = open(&url, "outage", options(1_000, 0)).await;
    let before = append_one(&a, serde_json::json!("before"), T0).await;

    // A reader on A waits for news through the whole outage.
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move {
            a.read(before, 10, &all_events, Some(Duration::from_secs(60)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    redis.kill();
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        a.append(
            vec![item(None, vec![event("c", serde_json::json!("lost"), T0)])],
            T0,
        ),
    )
    .await
    .expect("append during the outage returns");
    assert!(
        matches!(result, Err(LogError::Unavailable(_))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let bounds = tokio::time::timeout(Duration::from_secs(30), a.bounds())
        .await
        .expect("bounds returns");
    assert!(
        matches!(bounds, Err(LogError::Unavailable(_))),
        "{bounds:?}"
    );
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        b.read(Position::ZERO, 10, &all_events, None),
    )
    .await
    .expect("read returns");
    assert!(matches!(read, Err(LogError::Unavailable(_))), "{read:?}");
    // While it lasts, calls keep failing fast (no pile-up behind reconnection attempts).
    let started = Instant::now();
    for _ in 0..50 {
        assert!(a.bounds().await.is_err());
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!waiting.is_finished(), "the waiting reader still waits");

    redis.restart();
    // B (another node) publishes once Redis is back; A's waiting reader hears of it
    // through A's tailer, which reconnected by itself.
    let after = eventually(Duration::from_secs(30), || {
        b.append(
            vec![item(None, vec![event("c", serde_json::json!("after"), T0)])],
            T0,
        )
    })
    .await[0]
        .positions[0];
    let batch = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting reader returns")
        .unwrap()
        .expect("and reads");
    assert_eq!(
        batch.events.iter().map(|e| e.pos).collect::<Vec<_>>(),
        vec![after]
    );
    // Nothing acknowledged was lost (AOF), nothing refused was stored, A appends again.
    let again = eventually(Duration::from_secs(30), || {
        a.append(
            vec![item(None, vec![event("c", serde_json::json!("again"), T0)])],
            T0,
        )
    })
    .await;
    let all: Vec<serde_json::Value> = read_all(&a, Position::ZERO)
        .await
        .iter()
        .map(|e| data(e))
        .collect();
    assert_eq!(
        all,
        ["before", "after", "again"].map(|s| serde_json::json!(s))
    );
    assert_eq!(a.bounds().await.unwrap().head, again[0].positions[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_while_redis_is_down_and_connects_when_it_comes() {
    let port = engines::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let log = open(&url, "late", options(1_000, 0)).await;
    assert!(matches!(log.bounds().await, Err(LogError::Unavailable(_))));
    let result = log
        .append(
            vec![item(None, vec![event("c", serde_json::json!(1), T0)])],
            T0,
        )
        .await;
    assert!(
        matches!(result, Err(LogError::Unavailable(_))),
        "{result:?}"
    );
    let _redis = Engine::start_on(engine::spec(Persistence::None, &[]), port);
    let pos = eventually(Duration::from_secs(30), || {
        log.append(
            vec![item(None, vec![event("c", serde_json::json!(2), T0)])],
            T0,
        )
    })
    .await[0]
        .positions[0];
    assert_eq!(log.bounds().await.unwrap().head, pos);
    assert_eq!(read_all(&log, Position::ZERO).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_reports_exact_gaps() {
    let redis = engine::start(Persistence::None);
    let log = open(&engine::url(&redis), "count", options(5, 0)).await;
    let mut p = Vec::new();
    for i in 0..12 {
        p.push(append_one(&log, serde_json::json!(i), T0).await);
        // Ids in distinct milliseconds leave room for positions between them.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let bounds = log.bounds().await.unwrap();
    assert_eq!(bounds.head, p[11]);
    assert_eq!(bounds.oldest, Some(p[7]), "exactly 5 kept");

    let read = |after: Position| {
        let log = log.clone();
        async move { log.read(after, 100, &all_events, None).await.unwrap() }
    };
    let positions =
        |b: &ssegate::log::ReadBatch| b.events.iter().map(|e| e.pos).collect::<Vec<_>>();
    for after in [
        Position::ZERO,
        p[0],
        p[5],
        Position {
            hi: p[5].hi,
            lo: p[5].lo + 1,
        },
    ] {
        let batch = read(after).await;
        let gap = batch.gap.unwrap_or_else(|| panic!("gap after {after}"));
        assert_eq!(gap.oldest, Some(p[7]));
        assert_eq!(positions(&batch), p[7..].to_vec());
        assert!(batch.at_head);
        assert_eq!(batch.next, p[11]);
    }
    // After the newest removed event nothing was lost, even from between two ids.
    assert!(p[7].hi > p[6].hi);
    for after in [
        p[6],
        Position {
            hi: p[6].hi,
            lo: p[6].lo + 1,
        },
    ] {
        let batch = read(after).await;
        assert!(batch.gap.is_none(), "no gap after {after}");
        assert_eq!(positions(&batch), p[7..].to_vec());
    }
    let batch = read(p[11]).await;
    assert!(batch.gap.is_none() && batch.events.is_empty() && batch.at_head);
    assert_eq!(batch.next, p[11]);
    // A filtered read that skips everything still moves past what it scanned, and past
    // the gap.
    let none = |_: &Event| false;
    let batch = log.read(p[0], 100, &none, None).await.unwrap();
    assert!(batch.gap.is_some() && batch.events.is_empty());
    assert_eq!(batch.next, p[11]);

    // A lower limit (a node started with another setting) applies at its retention pass.
    let smaller = open(&engine::url(&redis), "count", options(2, 0)).await;
    smaller.enforce_retention(T0).await.unwrap();
    assert_eq!(log.bounds().await.unwrap().oldest, Some(p[10]));
    assert!(log
        .read(p[8], 100, &all_events, None)
        .await
        .unwrap()
        .gap
        .is_some());
    let batch = log.read(p[9], 100, &all_events, None).await.unwrap();
    assert!(batch.gap.is_none());
    assert_eq!(positions(&batch), p[10..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_reports_exact_gaps() {
    let redis = engine::start(Persistence::None);
    let log = open(&engine::url(&redis), "age", options(1_000, 1_000)).await;
    let mut p = Vec::new();
    for i in 0..3 {
        p.push(append_one(&log, serde_json::json!(i), T0).await);
    }
    for i in 3..5 {
        p.push(append_one(&log, serde_json::json!(i), T0 + 5_000).await);
    }
    // Nothing is old enough yet.
    log.enforce_retention(T0 + 900).await.unwrap();
    assert_eq!(log.bounds().await.unwrap().oldest, Some(p[0]));
    // The first three are older than a second at T0 + 5.5 s.
    log.enforce_retention(T0 + 5_500).await.unwrap();
    let bounds = log.bounds().await.unwrap();
    assert_eq!((bounds.head, bounds.oldest), (p[4], Some(p[3])));
    let batch = log.read(p[1], 100, &all_events, None).await.unwrap();
    assert_eq!(batch.gap.map(|g| g.oldest), Some(Some(p[3])));
    assert_eq!(batch.events.len(), 2);
    let batch = log.read(p[2], 100, &all_events, None).await.unwrap();
    assert!(batch.gap.is_none());
    assert_eq!(batch.events.len(), 2);

    // Everything expires: the log is empty, its head stays where it was.
    log.enforce_retention(T0 + 60_000).await.unwrap();
    let bounds = log.bounds().await.unwrap();
    assert_eq!((bounds.head, bounds.oldest), (p[4], None));
    let batch = log
        .read(Position::ZERO, 100, &all_events, None)
        .await
        .unwrap();
    assert_eq!(batch.gap.map(|g| g.oldest), Some(None));
    assert!(batch.events.is_empty() && batch.at_head);
    assert_eq!(batch.next, p[4]);
    let batch = log.read(p[4], 100, &all_events, None).await.unwrap();
    assert!(batch.gap.is_none());
    // The head survives a reopen too, and the next append goes after it.
    drop(log);
    let log = open(&engine::url(&redis), "age", options(1_000, 1_000)).await;
    assert_eq!(log.bounds().await.unwrap().head, p[4]);
    let next = append_one(&log, serde_json::json!(5), T0 + 60_000).await;
    assert!(next > p[4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_window_follows_the_callers_clock() {
    let redis = engine::start(Persistence::None);
    let log = open(&engine::url(&redis), "dedupe", options(1_000, 0)).await;
    let once = |now: u64| {
        let log = log.clone();
        async move {
            log.append(
                vec![
                    item(Some("k"), vec![event("c", serde_json::json!(now), now)]),
                    // A repeat inside the same batch is a duplicate too.
                    item(Some("k"), vec![event("c", serde_json::json!(now), now)]),
                ],
                now,
            )
            .await
            .unwrap()
        }
    };
    let first = once(T0).await;
    assert!(!first[0].duplicate && first[1].duplicate);
    assert_eq!(first[0].positions, first[1].positions);
    let within = once(T0 + 59_999).await;
    assert!(within[0].duplicate);
    assert_eq!(within[0].positions, first[0].positions);
    let after = once(T0 + 60_000).await;
    assert!(!after[0].duplicate, "the window is over");
    assert!(after[0].positions[0] > first[0].positions[0]);
}

#[tokio::test]
async fn unusable_configuration_is_refused_at_open() {
    let refused = |cfg: EngineConfig| async move {
        match RedisLog::open(&cfg, options(10, 0)).await {
            Err(LogError::Config(m)) => m,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened"),
        }
    };
    let m = refused(config("http://127.0.0.1:6379", "s")).await;
    assert!(m.contains("log.url"), "{m}");
    let m = refused(EngineConfig {
        tls_ca_file: Some("/nonexistent/ca.pem".into()),
        ..config("redis://user:hunter2@127.0.0.1:6379", "s")
    })
    .await;
    assert!(m.contains("rediss://") && !m.contains("hunter2"), "{m}");
}

/// rediss:// with `log.tls_ca_file`: trusted only through that CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    engines::tls::test_ca(d);
    let file = |name: &str| d.join(name).to_string_lossy().into_owned();
    let mut spec = engine::spec(
        Persistence::None,
        &[
            "--port",
            "0",
            "--tls-port",
            "{port}",
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    );
    spec.ready = engines::tcp_accepts;
    let redis = Engine::start(spec);
    let url = format!("rediss://127.0.0.1:{}", redis.port());

    let trusted = RedisLog::open(
        &EngineConfig {
            tls_ca_file: Some(d.join("ca.pem")),
            ..config(&url, "tls")
        },
        options(100, 0),
    )
    .await
    .expect("open");
    let pos = eventually(Duration::from_secs(20), || {
        trusted.append(
            vec![item(
                None,
                vec![event("c", serde_json::json!("secret"), T0)],
            )],
            T0,
        )
    })
    .await[0]
        .positions[0];
    assert_eq!(trusted.bounds().await.unwrap().head, pos);

    // Without the CA the server's certificate is not trusted.
    let untrusted = open(&url, "tls", options(100, 0)).await;
    let result = untrusted.bounds().await;
    assert!(
        matches!(result, Err(LogError::Unavailable(_))),
        "{result:?}"
    );
}

// ---- history (per-channel index) ----

use ssegate::log::{History, HistoryQuery};

fn targeted(channel: &str, data: serde_json::Value, users: &[&str]) -> NewEvent {
    NewEvent::new(
        channel.to_owned(),
        "t".into(),
        RawValue::from_string(data.to_string()).unwrap(),
        Some(users.iter().map(|u| u.to_string()).collect()),
        T0,
        usize::MAX,
    )
    .unwrap()
}

const END: Position = Position {
    hi: u64::MAX,
    lo: u64::MAX,
};

async fn history(
    log: &Arc<dyn EventLog>,
    channel: &str,
    after: Position,
    through: Position,
    limit: usize,
) -> History {
    log.history(
        HistoryQuery {
            channel,
            after,
            through,
            limit,
        },
        &all_events,
    )
    .await
    .expect("history")
}

fn datas(h: &History) -> Vec<serde_json::Value> {
    h.events.iter().map(|e| data(e)).collect()
}

/// Appends `n` events of `channel` (data `[channel, i]`) one call each; their positions.
async fn append_n(
    log: &Arc<dyn EventLog>,
    channel: &str,
    range: std::ops::Range<usize>,
) -> Vec<Position> {
    let mut out = Vec::new();
    for i in range {
        let a = log
            .append(
                vec![item(
                    None,
                    vec![event(channel, serde_json::json!([channel, i]), T0)],
                )],
                T0,
            )
            .await
            .unwrap();
        out.push(a[0].positions[0]);
    }
    out
}

/// The keys of the stream's channel indexes and their lengths.
async fn index_keys(url: &str, stream: &str) -> Vec<(String, usize)> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{stream}:ch:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        let len: usize = redis::cmd("ZCARD")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.push((k, len));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_one_channel_from_its_index_on_any_node() {
    let redis = engine::start(Persistence::None);
    let url = engine::url(&redis);
    let a = open(&url, "hist", options(1_000, 0)).await;
    let b = open(&url, "hist", options(1_000, 0)).await;

    // x gets 10 events among many of other channels, from both nodes, some in batches
    // with other channels.
    let mut x = Vec::new();
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        let appended = node
            .append(
                vec![
                    item(None, vec![event("y", serde_json::json!(["y", i]), T0)]),
                    item(
                        None,
                        vec![
                            event("z", serde_json::json!(["z", i]), T0),
                            event("x", serde_json::json!(["x", i]), T0),
                            event("other:x", serde_json::json!(["other:x", i]), T0),
                        ],
                    ),
                ],
                T0,
            )
            .await
            .unwrap();
        x.push(appended[1].positions[1]);
        append_n(node, "noise", 0..3).await;
    }
    let xs = |r: std::ops::Range<usize>| r.map(|i| serde_json::json!(["x", i])).collect::<Vec<_>>();

    // The newest 4, in log order, with `more`; asked on the other node.
    let h = history(&b, "x", Position::ZERO, END, 4).await;
    assert_eq!(datas(&h), xs(6..10));
    assert_eq!(h.events.iter().map(|e| e.pos).collect::<Vec<_>>(), x[6..]);
    assert!(h.more);
    assert!(h.events.iter().all(|e| e.event.channel == "x"));
    // Everything: no more.
    let h = history(&a, "x", Position::ZERO, END, 100).await;
    assert_eq!(datas(&h), xs(0..10));
    assert!(!h.more);
    // Exactly all of them: no more either.
    let h = history(&a, "x", Position::ZERO, END, 10).await;
    assert_eq!(datas(&h), xs(0..10));
    assert!(!h.more);
    // Paging back: `through` just before the first one returned.
    let h = history(&a, "x", Position::ZERO, x[5], 3).await;
    assert_eq!(datas(&h), xs(3..6));
    assert!(h.more);
    let before = Position {
        hi: x[3].hi,
        lo: x[3].lo - 1,
    };
    let h = history(&a, "x", Position::ZERO, before, 3).await;
    assert_eq!(datas(&h), xs(0..3));
    assert!(!h.more);
    // `after` is exclusive, `through` inclusive.
    let h = history(&a, "x", x[2], x[7], 100).await;
    assert_eq!(datas(&h), xs(3..8));
    assert!(!h.more);
    let h = history(&a, "x", x[2], x[7], 2).await;
    assert_eq!(datas(&h), xs(6..8));
    assert!(h.more);
    assert!(history(&a, "x", x[7], x[7], 10).await.events.is_empty());
    assert!(history(&a, "x", x[7], x[2], 10).await.events.is_empty());
    // limit 0 tells only whether there is anything.
    let h = history(&a, "x", Position::ZERO, END, 0).await;
    assert!(h.events.is_empty() && h.more);
    let h = history(&a, "x", x[9], END, 0).await;
    assert!(h.events.is_empty() && !h.more);
    // A channel with nothing, and a pattern-looking name, are empty.
    assert!(history(&a, "nothing", Position::ZERO, END, 10)
        .await
        .events
        .is_empty());
    assert!(history(&a, "other", Position::ZERO, END, 10)
        .await
        .events
        .is_empty());
    assert_eq!(
        history(&a, "other:x", Position::ZERO, END, 1)
            .await
            .events
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_leaves_out_what_the_filter_refuses_and_keeps_looking_back() {
    let redis = engine::start(Persistence::None);
    let log = open(&engine::url(&redis), "filter", options(10_000, 0)).await;
    // u1's events are 5 among 300 targeted at u2 and 5 for everyone, spread out.
    let mut mine = Vec::new();
    for i in 0..310 {
        let e = if i % 31 == 0 {
            mine.push(i);
            targeted("inbox", serde_json::json!(i), &["u1", "u3"])
        } else if i % 31 == 15 {
            mine.push(i);
            event("inbox", serde_json::json!(i), T0)
        } else {
            targeted("inbox", serde_json::json!(i), &["u2"])
        };
        log.append(vec![item(None, vec![e])], T0).await.unwrap();
    }
    let for_u1 = |e: &Event| e.targets("u1");
    let ask = |limit: usize, through: Position| {
        let log = log.clone();
        async move {
            log.history(
                HistoryQuery {
                    channel: "inbox",
                    after: Position::ZERO,
                    through,
                    limit,
                },
                &for_u1,
            )
            .await
            .unwrap()
        }
    };
    let want = |r: &[usize]| r.iter().map(|i| serde_json::json!(i)).collect::<Vec<_>>();
    let h = ask(3, END).await;
    assert_eq!(datas(&h), want(&mine[mine.len() - 3..]));
    assert!(h.more);
    let h = ask(100, END).await;
    assert_eq!(datas(&h), want(&mine));
    assert!(!h.more);
    assert!(h.events.iter().all(|e| e.targets("u1")));
    // Paging back through events of others.
    let h2 = ask(
        100,
        Position {
            hi: h.events[2].pos.hi,
            lo: h.events[2].pos.lo - 1,
        },
    )
    .await;
    assert_eq!(datas(&h2), want(&mine[..2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_never_returns_what_retention_removed_and_the_index_shrinks_with_it() {
    let redis = engine::start(Persistence::None);
    let url = engine::url(&redis);
    let log = open(&url, "ret", options(6, 60_000)).await;
    let quiet = append_n(&log, "quiet", 0..3).await;
    let busy = append_n(&log, "busy", 0..4).await;
    // 7 appended, 6 kept: quiet's first is gone.
    let h = history(&log, "quiet", Position::ZERO, END, 10).await;
    assert_eq!(
        h.events.iter().map(|e| e.pos).collect::<Vec<_>>(),
        quiet[1..]
    );
    assert!(!h.more);
    let h = history(&log, "quiet", Position::ZERO, END, 1).await;
    assert_eq!(h.events[0].pos, quiet[2]);
    assert!(h.more);
    assert_eq!(
        index_keys(&url, "ret").await,
        [
            ("ret:ch:busy".to_owned(), 4),
            ("ret:ch:quiet".to_owned(), 2)
        ]
    );
    // busy goes on: every quiet event is removed, and quiet's index with them.
    let more_busy = append_n(&log, "busy", 4..10).await;
    let h = history(&log, "quiet", Position::ZERO, END, 10).await;
    assert!(h.events.is_empty() && !h.more);
    let h = history(&log, "busy", Position::ZERO, END, 10).await;
    assert_eq!(h.events.len(), 6);
    assert_eq!(h.events.last().unwrap().pos, *more_busy.last().unwrap());
    assert!(h.events[0].pos > busy[3]);
    assert_eq!(
        index_keys(&url, "ret").await,
        [("ret:ch:busy".to_owned(), 6)]
    );

    // Retention by age: everything older than the cutoff goes, indexes too.
    let late = log
        .append(
            vec![item(
                None,
                vec![event("late", serde_json::json!(1), T0 + 120_000)],
            )],
            T0,
        )
        .await
        .unwrap()[0]
        .positions[0];
    log.enforce_retention(T0 + 90_000).await.unwrap();
    assert!(history(&log, "busy", Position::ZERO, END, 10)
        .await
        .events
        .is_empty());
    let h = history(&log, "late", Position::ZERO, END, 10).await;
    assert_eq!(h.events.iter().map(|e| e.pos).collect::<Vec<_>>(), [late]);
    assert_eq!(
        index_keys(&url, "ret").await,
        [("ret:ch:late".to_owned(), 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_restart_of_redis_and_of_the_node() {
    let mut redis = Engine::start(engine::spec(Persistence::Aof, &[]));
    let url = engine::url(&redis);
    let log = open(&url, "restart", options(1_000, 0)).await;
    let p = append_n(&log, "c1", 0..5).await;
    append_n(&log, "c2", 0..5).await;
    drop(log);
    redis.restart();
    let log = open(&url, "restart", options(1_000, 0)).await;
    let h = eventually(Duration::from_secs(30), || {
        log.history(
            HistoryQuery {
                channel: "c1",
                after: Position::ZERO,
                through: END,
                limit: 3,
            },
            &all_events,
        )
    })
    .await;
    assert_eq!(h.events.iter().map(|e| e.pos).collect::<Vec<_>>(), p[2..]);
    assert!(h.more);
    // And it goes on from there.
    let q = append_n(&log, "c1", 5..6).await;
    let h = history(&log, "c1", Position::ZERO, END, 2).await;
    assert_eq!(
        h.events.iter().map(|e| e.pos).collect::<Vec<_>>(),
        [p[4], q[0]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_a_duplicate_append_is_the_original_only() {
    let redis = engine::start(Persistence::None);
    let log = open(&engine::url(&redis), "dup", options(1_000, 0)).await;
    let once = || {
        log.append(
            vec![item(
                Some("k"),
                vec![event("d", serde_json::json!("v"), T0)],
            )],
            T0,
        )
    };
    let first = once().await.unwrap();
    let again = once().await.unwrap();
    assert!(again[0].duplicate);
    let h = history(&log, "d", Position::ZERO, END, 10).await;
    assert_eq!(h.events.len(), 1);
    assert_eq!(h.events[0].pos, first[0].positions[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_key_where_an_index_goes_never_fails_an_append() {
    let redis = engine::start(Persistence::None);
    let url = engine::url(&redis);
    let log = open(&url, "repair", options(1_000, 0)).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Keys of other types where indexes go (a stream, a string).
    let _: String = redis::cmd("XADD")
        .arg("repair:ch:stale")
        .arg("99999999999999-0")
        .arg("i")
        .arg("")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("repair:ch:foreign")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let appended = log
        .append(
            vec![item(
                None,
                vec![
                    event("stale", serde_json::json!(1), T0),
                    event("foreign", serde_json::json!(2), T0),
                ],
            )],
            T0,
        )
        .await
        .expect("append");
    let p = &appended[0].positions;
    for (channel, pos) in [("stale", p[0]), ("foreign", p[1])] {
        let h = history(&log, channel, Position::ZERO, END, 10).await;
        assert_eq!(
            h.events.iter().map(|e| e.pos).collect::<Vec<_>>(),
            [pos],
            "{channel}"
        );
    }
    assert_eq!(
        index_keys(&url, "repair").await,
        [
            ("repair:ch:foreign".to_owned(), 1),
            ("repair:ch:stale".to_owned(), 1)
        ]
    );
}
