//! The nats log beyond the shared model suite (`log_model.rs`): two nodes on one stream,
//! atomic batches under concurrent publishers, an outage of nats-server and recovery, exact
//! gaps after retention by count and by age, a long catch-up, configuration errors. Every
//! test runs its own nats-server (JetStream, a temporary store) on a free port.

mod engines;

use std::sync::Arc;
use std::time::{Duration, Instant};

use engines::nats as engine;
use engines::Engine;
use serde_json::value::RawValue;
use ssegate::log::config::EngineConfig;
use ssegate::log::nats::NatsLog;
use ssegate::log::{
    all_events, AppendItem, Appended, Event, EventLog, Gap, LogError, LogOptions, NewEvent,
    Position,
};

fn options(retention_events: u64, retention_age_ms: u64, dedupe_window_ms: u64) -> LogOptions {
    LogOptions {
        retention_events,
        retention_age_ms,
        dedupe_window_ms,
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
    NatsLog::open(&config(url, stream), None, opts)
        .await
        .expect("open nats log")
}

fn event(channel: &str, n: &str) -> NewEvent {
    NewEvent::new(
        channel.to_owned(),
        "t".into(),
        RawValue::from_string(format!("{{\"n\":\"{n}\"}}")).unwrap(),
        None,
        1_700_000_000_000,
        usize::MAX,
    )
    .unwrap()
}

fn item(key: Option<&str>, names: &[&str]) -> AppendItem {
    AppendItem {
        key: key.map(str::to_owned),
        events: names.iter().map(|n| event("c", n)).collect(),
    }
}

fn name_of(e: &Event) -> String {
    serde_json::from_str::<serde_json::Value>(e.event.data.get()).unwrap()["n"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn positions(a: &[Appended]) -> Vec<Position> {
    a.iter().flat_map(|a| a.positions.clone()).collect()
}

/// Every retained event after `after`, read in steps of `step`, and the gap of the first step.
async fn read_all(log: &dyn EventLog, after: Position, step: usize) -> (Vec<Event>, Option<Gap>) {
    let mut at = after;
    let mut out = Vec::new();
    let mut gap = None;
    let mut first = true;
    loop {
        let batch = log.read(at, step, &all_events, None).await.expect("read");
        if first {
            gap = batch.gap;
            first = false;
        } else {
            assert!(batch.gap.is_none(), "a gap in the middle of a read-through");
        }
        out.extend(batch.events.iter().map(|e| (**e).clone()));
        assert!(batch.next >= at);
        at = batch.next;
        if batch.at_head {
            return (out, gap);
        }
    }
}

/// Retries `f` until it succeeds or `within` has passed.
async fn eventually<T, F, Fut>(within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LogError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still failing after {within:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_order_and_each_others_keys() {
    let nats = engine::start();
    let url = engine::url(&nats);
    let opts = options(100_000, 0, 60_000);
    let a = open(&url, "shared", opts).await;
    let b = open(&url, "shared", opts).await;
    assert_eq!(a.kind(), "nats");

    // Both publish at once, with keys.
    let publish = |log: Arc<dyn EventLog>, who: &'static str| {
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..40 {
                let key = format!("{who}-{i}");
                let got = log
                    .append(vec![item(Some(&key), &[&key])], 0)
                    .await
                    .expect("append");
                assert!(!got[0].duplicate);
                acked.push((key, got[0].positions[0]));
            }
            acked
        })
    };
    let (from_a, from_b) = tokio::join!(publish(a.clone(), "a"), publish(b.clone(), "b"));
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());

    // Both nodes read the same 80 events in the same order, at the acknowledged positions.
    let (seen_a, _) = read_all(&*a, Position::ZERO, 7).await;
    let (seen_b, _) = read_all(&*b, Position::ZERO, 1000).await;
    assert_eq!(seen_a.len(), 80);
    assert_eq!(seen_a, seen_b);
    for (key, pos) in from_a.iter().chain(&from_b) {
        let e = seen_a
            .iter()
            .find(|e| e.pos == *pos)
            .expect("acked event read");
        assert_eq!(&name_of(e), key);
    }
    assert!(seen_a.windows(2).all(|w| w[0].pos < w[1].pos));
    assert_eq!(a.bounds().await.unwrap(), b.bounds().await.unwrap());

    // Each node recognises the other's keys: nothing stored, the original position back.
    let again = b.append(vec![item(Some("a-3"), &["x"])], 0).await.unwrap();
    assert_eq!(again[0].positions, vec![from_a[3].1]);
    assert!(again[0].duplicate);
    let again = a
        .append(vec![item(Some("b-7"), &["y", "z"])], 0)
        .await
        .unwrap();
    assert_eq!(
        again[0].positions,
        vec![from_b[7].1],
        "the original's shape"
    );
    assert!(again[0].duplicate);

    // A batch with keys is deduplicated as a whole, on either node; an item whose key was
    // used alone is not recognised inside a batch (documented).
    let batch = || vec![item(Some("k1"), &["1", "2"]), item(None, &["3"])];
    let first = a.append(batch(), 0).await.unwrap();
    assert!(first.iter().all(|a| !a.duplicate));
    let second = b.append(batch(), 0).await.unwrap();
    assert!(second.iter().all(|a| a.duplicate));
    assert_eq!(positions(&first), positions(&second));
    let mixed = a
        .append(vec![item(Some("a-0"), &["4"]), item(None, &["5"])], 0)
        .await
        .unwrap();
    assert!(mixed.iter().all(|a| !a.duplicate));
    let (all, _) = read_all(&*b, Position::ZERO, 500).await;
    assert_eq!(all.len(), 80 + 3 + 2, "dedupe stored nothing else");

    // A waiting read on one node wakes up for an append on the other.
    let head = b.bounds().await.unwrap().head;
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let batch = b
                .read(head, 10, &all_events, Some(Duration::from_secs(10)))
                .await
                .unwrap();
            (batch, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = a.append(vec![item(None, &["wake"])], 0).await.unwrap();
    let (batch, waited) = waiter.await.unwrap();
    assert_eq!(batch.events.len(), 1, "{batch:?}");
    assert_eq!(batch.events[0].pos, got[0].positions[0]);
    assert!(waited < Duration::from_secs(3), "woke after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_atomic_and_never_interleaved() {
    let nats = engine::start();
    let url = engine::url(&nats);
    let opts = options(100_000, 0, 60_000);
    let a = open(&url, "atomic", opts).await;
    let b = open(&url, "atomic", opts).await;
    let publish = |log: Arc<dyn EventLog>, who: &'static str| {
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..25 {
                // Three items of 1, 2 and 3 events: one batch of six.
                let names: Vec<String> = (0..6).map(|j| format!("{who}-{i}-{j}")).collect();
                let n: Vec<&str> = names.iter().map(String::as_str).collect();
                let items = vec![
                    item(None, &n[0..1]),
                    item(None, &n[1..3]),
                    item(None, &n[3..6]),
                ];
                let got = log.append(items, 0).await.expect("append");
                assert_eq!(
                    got.iter().map(|a| a.positions.len()).collect::<Vec<_>>(),
                    [1, 2, 3]
                );
                acked.push((names, positions(&got)));
            }
            acked
        })
    };
    let (x, y) = tokio::join!(publish(a.clone(), "a"), publish(b.clone(), "b"));
    let batches: Vec<(Vec<String>, Vec<Position>)> =
        x.unwrap().into_iter().chain(y.unwrap()).collect();
    let (seen, _) = read_all(&*a, Position::ZERO, 4).await;
    assert_eq!(seen.len(), 50 * 6);
    let index = |p: Position| seen.iter().position(|e| e.pos == p).expect("read back");
    for (names, pos) in &batches {
        // Consecutive in the log, in order, nothing of anyone else's between.
        let first = index(pos[0]);
        for (j, (name, p)) in names.iter().zip(pos).enumerate() {
            assert_eq!(seen[first + j].pos, *p);
            assert_eq!(&name_of(&seen[first + j]), name);
        }
        assert!(
            pos.iter().all(|p| p.hi == pos[0].hi),
            "one message per batch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_nats_outage_without_losing_acknowledged_events() {
    let mut nats = engine::start();
    let url = engine::url(&nats);
    let opts = options(100_000, 0, 60_000);
    let log = open(&url, "outage", opts).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let name = format!("before-{i}");
        let got = log.append(vec![item(None, &[&name])], 0).await.unwrap();
        acked.push((name, got[0].positions[0]));
    }

    nats.kill();
    // The client notices within a request timeout (here at once: the socket closes)…
    let t = Instant::now();
    while log.bounds().await.is_ok() {
        assert!(t.elapsed() < Duration::from_secs(6), "bounds still answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …then everything is Unavailable at once, and nothing is sent (an append racing the
    // moment of the kill would have an unknown outcome instead).
    let t = Instant::now();
    for _ in 0..3 {
        match log.append(vec![item(None, &["during"])], 0).await {
            Err(LogError::Unavailable(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("acknowledged with nats-server dead"),
        }
        assert!(matches!(log.bounds().await, Err(LogError::Unavailable(_))));
        assert!(matches!(
            log.read(Position::ZERO, 10, &all_events, None).await,
            Err(LogError::Unavailable(_))
        ));
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );

    // Opening another node while NATS is down works; it connects later by itself.
    let t = Instant::now();
    let late = NatsLog::open(&config(&url, "outage"), None, opts)
        .await
        .expect("open while nats-server is down");
    eprintln!("opened while nats-server is down in {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    assert!(matches!(late.bounds().await, Err(LogError::Unavailable(_))));

    let nats = tokio::task::spawn_blocking(move || {
        nats.restart();
        nats
    })
    .await
    .unwrap();

    // Everything works again, without reopening.
    let head = eventually(Duration::from_secs(15), || log.bounds())
        .await
        .head;
    assert_eq!(
        head,
        acked.last().unwrap().1,
        "nothing appended during the outage"
    );
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move {
            log.read(head, 10, &all_events, Some(Duration::from_secs(10)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = eventually(Duration::from_secs(15), || {
        log.append(vec![item(None, &["after"])], 0)
    })
    .await;
    let woke = waiter.await.unwrap().expect("waiting read");
    assert_eq!(woke.events.len(), 1, "{woke:?}");
    assert_eq!(woke.events[0].pos, after[0].positions[0]);
    assert_eq!(name_of(&woke.events[0]), "after");

    // Nothing acknowledged before the kill is lost; the late node sees the same log.
    let (seen, gap) = read_all(&*log, Position::ZERO, 6).await;
    assert!(gap.is_none());
    let names: Vec<String> = seen.iter().map(name_of).collect();
    let mut want: Vec<String> = acked.iter().map(|(n, _)| n.clone()).collect();
    want.push("after".into());
    assert_eq!(names, want);
    for (name, pos) in &acked {
        assert_eq!(
            seen.iter().find(|e| e.pos == *pos).map(name_of),
            Some(name.clone())
        );
    }
    let (late_seen, _) = eventually(Duration::from_secs(15), || async {
        late.bounds().await?;
        Ok(read_all(&*late, Position::ZERO, 100).await)
    })
    .await;
    assert_eq!(late_seen, seen);
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_gives_exact_gaps() {
    let nats = engine::start();
    let url = engine::url(&nats);
    // Three messages (appends) are kept, whatever their size.
    let log = open(&url, "count", options(3, 0, 60_000)).await;
    let mut msgs = Vec::new();
    for names in [
        &["1"][..],
        &["2a", "2b"],
        &["3"],
        &["4a", "4b", "4c"],
        &["5"],
    ] {
        msgs.push(positions(
            &log.append(vec![item(None, names)], 0).await.unwrap(),
        ));
    }
    let bounds = log.bounds().await.unwrap();
    assert_eq!(bounds.oldest, Some(msgs[2][0]));
    assert_eq!(bounds.head, *msgs[4].last().unwrap());

    // From before everything: a gap naming the oldest retained event, then all that is left.
    let (seen, gap) = read_all(&*log, Position::ZERO, 2).await;
    assert_eq!(
        gap,
        Some(Gap {
            oldest: Some(msgs[2][0]),
            damaged: false,
        })
    );
    assert_eq!(
        seen.iter().map(name_of).collect::<Vec<_>>(),
        ["3", "4a", "4b", "4c", "5"]
    );
    // From the end of a dropped message: nothing after it was lost, no gap.
    let batch = log.read(msgs[1][1], 10, &all_events, None).await.unwrap();
    assert_eq!(batch.gap, None);
    assert_eq!(batch.events[0].pos, msgs[2][0]);
    // From the middle of a dropped message: its last event was lost, a gap.
    let batch = log.read(msgs[1][0], 10, &all_events, None).await.unwrap();
    assert_eq!(
        batch.gap,
        Some(Gap {
            oldest: Some(msgs[2][0]),
            damaged: false,
        })
    );
    assert_eq!(batch.events.len(), 5);
    // From the end of an older dropped message: message 2 was lost, a gap.
    let batch = log.read(msgs[0][0], 10, &all_events, None).await.unwrap();
    assert!(batch.gap.is_some());
    // From the middle of a retained message: the rest of it, no gap.
    let batch = log.read(msgs[3][0], 10, &all_events, None).await.unwrap();
    assert_eq!(batch.gap, None);
    assert_eq!(
        batch.events.iter().map(|e| e.pos).collect::<Vec<_>>(),
        [msgs[3][1], msgs[3][2], msgs[4][0]]
    );
    assert!(batch.at_head);
    assert_eq!(batch.next, bounds.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_gives_exact_gaps() {
    let nats = engine::start();
    let url = engine::url(&nats);
    let log = open(&url, "age", options(1_000, 1_500, 1_000)).await;
    let one = positions(&log.append(vec![item(None, &["1"])], 0).await.unwrap());
    let two = positions(
        &log.append(vec![item(None, &["2a", "2b"])], 0)
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(3_000)).await;

    // Everything expired: the log is empty, its head unchanged.
    let bounds = log.bounds().await.unwrap();
    assert_eq!(bounds.oldest, None);
    assert_eq!(bounds.head, two[1]);
    let batch = log.read(one[0], 10, &all_events, None).await.unwrap();
    assert_eq!(
        batch.gap,
        Some(Gap {
            oldest: None,
            damaged: false
        })
    );
    assert!(batch.events.is_empty() && batch.at_head);
    assert_eq!(batch.next, two[1]);
    let batch = log.read(two[1], 10, &all_events, None).await.unwrap();
    assert_eq!(batch.gap, None, "nothing after the head was lost");

    // Something new: a gap for a reader that missed message 2, none for one at the head.
    let three = positions(&log.append(vec![item(None, &["3"])], 0).await.unwrap());
    let batch = log.read(one[0], 10, &all_events, None).await.unwrap();
    assert_eq!(
        batch.gap,
        Some(Gap {
            oldest: Some(three[0]),
            damaged: false,
        })
    );
    assert_eq!(batch.events.len(), 1);
    let batch = log.read(two[0], 10, &all_events, None).await.unwrap();
    assert_eq!(
        batch.gap,
        Some(Gap {
            oldest: Some(three[0]),
            damaged: false,
        }),
        "2b was lost"
    );
    let batch = log.read(two[1], 10, &all_events, None).await.unwrap();
    assert_eq!(batch.gap, None);
    assert_eq!(batch.events[0].pos, three[0]);

    // The dedupe window (1 s here) ends: the same key is stored again.
    let k = log.append(vec![item(Some("k"), &["k"])], 0).await.unwrap();
    let dup = log.append(vec![item(Some("k"), &["k"])], 0).await.unwrap();
    assert!(dup[0].duplicate);
    assert_eq!(dup[0].positions, k[0].positions);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let later = log.append(vec![item(Some("k"), &["k"])], 0).await.unwrap();
    assert!(!later[0].duplicate);
    assert!(later[0].positions[0] > k[0].positions[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_catch_up_is_pipelined() {
    let nats = engine::start();
    let url = engine::url(&nats);
    let log = open(&url, "catchup", options(100_000, 0, 0)).await;
    let mut tasks = Vec::new();
    for t in 0..40 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                log.append(vec![item(None, &[&format!("{t}-{i}")])], 0)
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let started = Instant::now();
    let (seen, gap) = read_all(&*log, Position::ZERO, 512).await;
    let took = started.elapsed();
    assert!(gap.is_none());
    assert_eq!(seen.len(), 10_000);
    assert!(seen.windows(2).all(|w| w[0].pos < w[1].pos));
    eprintln!("caught up 10,000 single-event messages in {took:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_say_what_is_wrong() {
    let opts = options(10, 0, 0);
    let err = |r: Result<Arc<dyn EventLog>, LogError>| match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened"),
    };
    let e = err(NatsLog::open(&config("http://127.0.0.1:1", "s"), None, opts).await);
    assert!(e.contains("log.url"), "{e}");
    let e = err(NatsLog::open(&config("nats://[::1", "s"), None, opts).await);
    assert!(e.contains("log.url"), "{e}");
    let cfg = config("nats://127.0.0.1:1", "s");
    let missing = std::path::Path::new("/nonexistent/user.creds");
    let e = err(NatsLog::open(&cfg, Some(missing), opts).await);
    assert!(e.contains("nats_credentials_file"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.creds");
    std::fs::write(&junk, "not a creds file").unwrap();
    let e = err(NatsLog::open(&cfg, Some(&junk), opts).await);
    assert!(e.contains("nats_credentials_file"), "{e}");
    let mut cfg = config("tls://127.0.0.1:1", "s");
    cfg.tls_ca_file = Some(dir.path().join("missing.pem"));
    let e = err(NatsLog::open(&cfg, None, opts).await);
    assert!(e.contains("tls_ca_file"), "{e}");
}

/// tls:// with `log.tls_ca_file`: the server is trusted through that CA, and not without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    engines::tls::test_ca(d);
    let file = |name: &str| d.join(name).to_string_lossy().into_owned();
    let nats = Engine::start(engine::spec(&[
        "--tls",
        "--tlscert",
        &file("server.pem"),
        "--tlskey",
        &file("server.key"),
    ]));
    let url = format!("tls://127.0.0.1:{}", nats.port());

    let trusted = NatsLog::open(
        &EngineConfig {
            tls_ca_file: Some(d.join("ca.pem")),
            ..config(&url, "tls")
        },
        None,
        options(100, 0, 0),
    )
    .await
    .expect("open");
    let got = trusted
        .append(vec![item(None, &["secret"])], 0)
        .await
        .unwrap();
    assert_eq!(trusted.bounds().await.unwrap().head, got[0].positions[0]);

    // Without the CA the server's certificate is not trusted: opened (it may be a passing
    // problem), but unavailable.
    let untrusted = open(&url, "tls", options(100, 0, 0)).await;
    let result = untrusted.bounds().await;
    assert!(
        matches!(result, Err(LogError::Unavailable(_))),
        "{result:?}"
    );
    eprintln!("without the CA: {}", result.unwrap_err());
}

/// A stream JetStream will not let ssegate own is an error at open, which says why; a
/// stream an operator made replicated keeps its replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_stream_it_cannot_own() {
    use async_nats::jetstream::stream::{Config, StorageType};
    let nats = engine::start();
    let url = engine::url(&nats);
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    js.create_stream(Config {
        name: "other".into(),
        subjects: vec!["taken.>".into()],
        ..Config::default()
    })
    .await
    .unwrap();
    js.create_stream(Config {
        name: "mem".into(),
        subjects: vec!["mem.events".into()],
        storage: StorageType::Memory,
        ..Config::default()
    })
    .await
    .unwrap();
    let opts = options(100, 0, 0);
    let t = Instant::now();
    let e = match NatsLog::open(&config(&url, "taken"), None, opts).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened a stream whose subject another stream has"),
    };
    assert!(e.contains("taken"), "{e}");
    eprintln!("overlap: {e}");
    let e = match NatsLog::open(&config(&url, "mem"), None, opts).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened a memory stream"),
    };
    assert!(e.contains("file storage"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}

/// Three nats-servers in a JetStream cluster; streams replicated on all three, made so by
/// an operator before ssegate started; two nodes on different servers. Every node reads its
/// own appends at once and the other's in the same order, never a false gap — whether reads
/// go to the leader (no `allow_direct`), to any replica, lagging ones included
/// (`allow_direct` at creation), or must fall back to the leader because direct gets go
/// unanswered (`allow_direct` turned on by an update: broken on nats-server 2.9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_streams_on_a_cluster() {
    use async_nats::jetstream::stream::{Config, StorageType};
    let routes: Vec<u16> = (0..3).map(|_| engines::free_port()).collect();
    let route_urls = routes
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let servers: Vec<Engine> = (0..3)
        .map(|i| {
            let cluster = format!("nats://127.0.0.1:{}", routes[i]);
            let name = format!("n{i}");
            Engine::start(engine::spec(&[
                "--server_name",
                &name,
                "--cluster_name",
                "ssegate-test",
                "--cluster",
                &cluster,
                "--routes",
                &route_urls,
            ]))
        })
        .collect();
    let urls: Vec<String> = servers.iter().map(engine::url).collect();
    let js = async_nats::jetstream::new(async_nats::connect(&urls[0]).await.unwrap());

    for (name, direct_at_creation, direct_by_update) in [
        ("leader-reads", false, false),
        ("replica-reads", true, false),
        ("direct-by-update", false, true),
    ] {
        // The operator's stream (JetStream answers once the cluster has a leader).
        let mut stream = Config {
            name: name.into(),
            subjects: vec![format!("{name}.events")],
            storage: StorageType::File,
            num_replicas: 3,
            allow_direct: direct_at_creation,
            ..Config::default()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = js.create_stream(stream.clone()).await {
            assert!(Instant::now() < deadline, "no JetStream cluster: {e}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if direct_by_update {
            stream.allow_direct = true;
            js.update_stream(&stream).await.unwrap();
        }
        let opts = options(100_000, 0, 60_000);
        let a = open(&urls[1], name, opts).await;
        let b = open(&urls[2], name, opts).await;
        let info = js.get_stream(name).await.unwrap().cached_info().clone();
        assert_eq!(
            info.config.num_replicas, 3,
            "the operator's replicas are kept"
        );
        assert_eq!(
            info.config.allow_direct,
            direct_at_creation || direct_by_update,
            "and its allow_direct"
        );

        let t = Instant::now();
        let run = |me: Arc<dyn EventLog>, who: &'static str| {
            tokio::spawn(async move {
                let mut at = me.bounds().await.unwrap().head;
                for i in 0..100 {
                    let name = format!("{who}-{i}");
                    let got = me.append(vec![item(None, &[&name])], 0).await.unwrap();
                    let pos = got[0].positions[0];
                    // Read on from where this node was, at once, until its event shows up.
                    let mut found = false;
                    for _ in 0..100 {
                        let batch = me.read(at, 1_000, &all_events, None).await.unwrap();
                        assert!(batch.gap.is_none(), "{who}: a false gap after {at}");
                        assert!(
                            !batch.at_head || batch.next >= pos,
                            "{who}: at_head at {} before its own append {pos}",
                            batch.next
                        );
                        found |= batch.events.iter().any(|e| e.pos == pos);
                        at = batch.next;
                        if found || batch.at_head {
                            break;
                        }
                    }
                    assert!(found, "{who}: its own append {pos} not read back");
                }
            })
        };
        let (x, y) = tokio::join!(run(a.clone(), "a"), run(b.clone(), "b"));
        x.unwrap();
        y.unwrap();
        let (seen_a, gap_a) = read_all(&*a, Position::ZERO, 64).await;
        let (seen_b, gap_b) = read_all(&*b, Position::ZERO, 1_000).await;
        assert!(gap_a.is_none() && gap_b.is_none());
        assert_eq!(seen_a.len(), 200);
        assert_eq!(seen_a, seen_b);
        eprintln!(
            "{name}: 200 appends, each read back at once, in {:?}",
            t.elapsed()
        );
    }
    drop(servers);
}

/// Credentials the server refuses are an error at open that says so; the right ones, given
/// in the URL (percent-encoded), work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_an_error_at_open() {
    let nats = Engine::start(engine::spec(&["--user", "ssegate", "--pass", "s3:cr@t"]));
    let opts = options(100, 0, 0);
    let wrong = format!("nats://ssegate:wrong@127.0.0.1:{}", nats.port());
    let t = Instant::now();
    let e = match NatsLog::open(&config(&wrong, "auth"), None, opts).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened with a wrong password"),
    };
    assert!(e.contains("authorization"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    let right = format!("nats://ssegate:s3%3Acr%40t@127.0.0.1:{}", nats.port());
    let log = open(&right, "auth", opts).await;
    log.append(vec![item(None, &["ok"])], 0).await.unwrap();
}

// ---- history (per-channel index) ----

use ssegate::log::{History, HistoryQuery};

const END: Position = Position {
    hi: u64::MAX,
    lo: u64::MAX,
};

fn on(channel: &str, n: &str, users: Option<&[&str]>) -> NewEvent {
    NewEvent::new(
        channel.to_owned(),
        "t".into(),
        RawValue::from_string(format!("{{\"n\":\"{n}\"}}")).unwrap(),
        users.map(|u| u.iter().map(|s| s.to_string()).collect()),
        1_700_000_000_000,
        usize::MAX,
    )
    .unwrap()
}

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

fn names(h: &History) -> Vec<String> {
    h.events.iter().map(|e| name_of(e)).collect()
}

fn xs(r: std::ops::Range<usize>) -> Vec<String> {
    r.map(|i| format!("x{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_one_channel_from_the_index_on_any_node() {
    let nats = engine::start();
    let url = engine::url(&nats);
    let opts = options(100_000, 0, 60_000);
    let a = open(&url, "hist", opts).await;
    let b = open(&url, "hist", opts).await;
    // x gets 100 events among many of other channels, from both nodes, in messages shared
    // with other channels (one message per append).
    let mut x = Vec::new();
    for i in 0..100 {
        let node = if i % 2 == 0 { &a } else { &b };
        let appended = node
            .append(
                vec![
                    AppendItem {
                        key: None,
                        events: vec![on("y", &format!("y{i}"), None)],
                    },
                    AppendItem {
                        key: None,
                        events: vec![
                            on("z", &format!("z{i}"), None),
                            on("x", &format!("x{i}"), None),
                            on("x:sub", &format!("s{i}"), None),
                        ],
                    },
                ],
                0,
            )
            .await
            .unwrap();
        x.push(appended[1].positions[1]);
        node.append(vec![item(None, &["noise"])], 0).await.unwrap();
    }
    // Appended on A a moment ago, asked on B: B's index catches up first.
    let h = history(&b, "x", Position::ZERO, END, 4).await;
    assert_eq!(names(&h), xs(96..100));
    assert_eq!(h.events.iter().map(|e| e.pos).collect::<Vec<_>>(), x[96..]);
    assert!(h.more);
    assert!(h.events.iter().all(|e| e.event.channel == "x"));
    let h = history(&a, "x", Position::ZERO, END, 1_000).await;
    assert_eq!(names(&h), xs(0..100));
    assert!(!h.more);
    let h = history(&a, "x", Position::ZERO, END, 100).await;
    assert_eq!(names(&h), xs(0..100));
    assert!(!h.more);
    let h = history(&a, "x", Position::ZERO, END, 99).await;
    assert_eq!(names(&h), xs(1..100));
    assert!(h.more);
    // Paging back: `through` just before the first one returned.
    let h = history(&b, "x", Position::ZERO, x[50], 3).await;
    assert_eq!(names(&h), xs(48..51));
    assert!(h.more);
    let before = Position {
        hi: x[2].hi,
        lo: x[2].lo - 1,
    };
    let h = history(&b, "x", Position::ZERO, before, 5).await;
    assert_eq!(names(&h), xs(0..2));
    assert!(!h.more);
    // `after` exclusive, `through` inclusive.
    let h = history(&a, "x", x[2], x[7], 100).await;
    assert_eq!(names(&h), xs(3..8));
    assert!(!h.more);
    let h = history(&a, "x", x[2], x[7], 2).await;
    assert_eq!(names(&h), xs(6..8));
    assert!(h.more);
    assert!(history(&a, "x", x[7], x[7], 10).await.events.is_empty());
    assert!(history(&a, "x", Position::ZERO, END, 0)
        .await
        .events
        .is_empty());
    let h = history(&a, "x", x[99], END, 0).await;
    assert!(h.events.is_empty() && !h.more);
    assert!(history(&a, "nothing", Position::ZERO, END, 10)
        .await
        .events
        .is_empty());
    assert_eq!(
        names(&history(&a, "x:sub", Position::ZERO, END, 1).await),
        ["s99"]
    );

    // Targeted events of other users are left out, and the lookup keeps going back.
    let mut mine = Vec::new();
    for i in 0..200 {
        let n = format!("i{i}");
        let e = if i % 37 == 0 {
            mine.push(n.clone());
            on("inbox", &n, Some(&["u1"]))
        } else if i % 37 == 20 {
            mine.push(n.clone());
            on("inbox", &n, None)
        } else {
            on("inbox", &n, Some(&["u2", "u3"]))
        };
        a.append(
            vec![AppendItem {
                key: None,
                events: vec![e],
            }],
            0,
        )
        .await
        .unwrap();
    }
    let for_u1 = |e: &Event| e.targets("u1");
    let ask = |limit| {
        b.history(
            HistoryQuery {
                channel: "inbox",
                after: Position::ZERO,
                through: END,
                limit,
            },
            &for_u1,
        )
    };
    let h = ask(3).await.unwrap();
    assert_eq!(names(&h), mine[mine.len() - 3..]);
    assert!(h.more);
    let h = ask(100).await.unwrap();
    assert_eq!(names(&h), mine);
    assert!(!h.more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_never_returns_what_retention_dropped() {
    let nats = engine::start();
    let url = engine::url(&nats);
    // Three messages kept.
    let log = open(&url, "hret", options(3, 0, 60_000)).await;
    let mut all = Vec::new();
    for names in [&["1"][..], &["2a", "2b"], &["3"], &["4a", "4b"], &["5"]] {
        all.push(positions(
            &log.append(vec![item(None, names)], 0).await.unwrap(),
        ));
    }
    let h = history(&log, "c", Position::ZERO, END, 100).await;
    assert_eq!(names(&h), ["3", "4a", "4b", "5"]);
    assert!(!h.more);
    let h = history(&log, "c", Position::ZERO, END, 4).await;
    assert_eq!(names(&h), ["3", "4a", "4b", "5"]);
    assert!(!h.more, "nothing retained is left over");
    let h = history(&log, "c", Position::ZERO, all[3][0], 100).await;
    assert_eq!(names(&h), ["3", "4a"]);
    // After the index forgot them (its next trim) too.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let h = history(&log, "c", Position::ZERO, END, 100).await;
    assert_eq!(names(&h), ["3", "4a", "4b", "5"]);

    // By age: everything expires, history is empty.
    let aged = open(&url, "hage", options(1_000, 1_000, 500)).await;
    aged.append(vec![item(None, &["old"])], 0).await.unwrap();
    assert_eq!(
        names(&history(&aged, "c", Position::ZERO, END, 10).await),
        ["old"]
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let h = history(&aged, "c", Position::ZERO, END, 10).await;
    assert!(h.events.is_empty() && !h.more);
    aged.append(vec![item(None, &["new"])], 0).await.unwrap();
    assert_eq!(
        names(&history(&aged, "c", Position::ZERO, END, 10).await),
        ["new"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_index_is_rebuilt_after_a_restart_including_older_messages() {
    let mut nats = engine::start();
    let url = engine::url(&nats);
    let opts = options(1_000, 0, 60_000);
    let log = open(&url, "hrestart", opts).await;
    let first = positions(&log.append(vec![item(None, &["1", "2"])], 0).await.unwrap());
    // A message as versions before the channel index wrote it: no Ssegate-Channels header.
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Ssegate-Items", "1,1");
    let payload = serde_json::to_vec(&[on("c", "old-c", None), on("d", "old-d", None)]).unwrap();
    let ack = js
        .publish_with_headers("hrestart.events", headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let last = positions(&log.append(vec![item(None, &["3"])], 0).await.unwrap());
    assert_eq!(
        names(&history(&log, "c", Position::ZERO, END, 10).await),
        ["1", "2", "old-c", "3"]
    );
    assert_eq!(
        names(&history(&log, "d", Position::ZERO, END, 10).await),
        ["old-d"]
    );
    assert_eq!(
        history(&log, "d", Position::ZERO, END, 10).await.events[0].pos,
        Position {
            hi: ack.sequence,
            lo: 3
        }
    );
    drop(log);
    nats.restart();
    // A node started after the restart builds its index from the stream.
    let log = open(&url, "hrestart", opts).await;
    let h = eventually(Duration::from_secs(30), || {
        log.history(
            HistoryQuery {
                channel: "c",
                after: Position::ZERO,
                through: END,
                limit: 3,
            },
            &all_events,
        )
    })
    .await;
    assert_eq!(names(&h), ["2", "old-c", "3"]);
    assert!(h.more);
    assert_eq!(h.events[0].pos, first[1]);
    assert_eq!(h.events[2].pos, last[0]);
    let next = positions(&log.append(vec![item(None, &["4"])], 0).await.unwrap());
    let h = history(&log, "c", last[0], END, 10).await;
    assert_eq!(h.events.iter().map(|e| e.pos).collect::<Vec<_>>(), next);
}
