//! `/metrics` during a scripted run: connect, publish, resume, gap, auth failures, a rate
//! limit, a slow client, closes — each metric moves by the expected amount.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

struct Scrape(String);

impl Scrape {
    async fn of(server: &Server) -> Scrape {
        Scrape(metrics_text(server).await)
    }

    fn get(&self, sample: &str) -> f64 {
        metric(&self.0, sample).unwrap_or(0.0)
    }
}

/// Asserts `after - before == expected` for each sample.
fn moved(before: &Scrape, after: &Scrape, expected: &[(&str, f64)]) {
    for (sample, want) in expected {
        let got = after.get(sample) - before.get(sample);
        assert_eq!(
            got, *want,
            "{sample} moved by {got}, expected {want}\n{}",
            after.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_moves_by_the_expected_amount() {
    let server = Server::start(&[
        ("LOG__RETENTION_EVENTS", "60"),
        ("LIMITS__MAX_CONNECTIONS_PER_USER", "2"),
        ("STREAM__QUEUE_FRAMES", "4"),
    ]);
    let p = publisher();
    let u1 = token("u1", &["c", "slow"], &[]);
    let u2 = token("u2", &["c"], &[]);

    // Connect and publish: opened, connections, published, delivered, latency observed.
    let m0 = Scrape::of(&server).await;
    let (mut a, _) = Sse::open(&server.stream_url(&["c"]), &[bearer(&u1)]).await;
    // Fewer events than the queue holds (4), so all are delivered live.
    let first = server.publish_many(&p, "c", 3, 3).await;
    assert_eq!(ids(&a.take(3, T).await), first);
    let m1 = Scrape::of(&server).await;
    moved(
        &m0,
        &m1,
        &[
            ("ssegate_connections_opened_total", 1.0),
            ("ssegate_connections", 1.0),
            ("ssegate_events_published_total", 3.0),
            ("ssegate_events_delivered_total", 3.0),
            ("ssegate_delivery_latency_seconds_count", 3.0),
            ("ssegate_resumes_total", 0.0),
        ],
    );

    // Resume from the first event: one resume, 2 more deliveries (replayed).
    let (mut b, _) = Sse::open(
        &server.stream_url(&["c"]),
        &[bearer(&u2), last_event_id(&first[0])],
    )
    .await;
    assert_eq!(ids(&b.take(2, T).await), first[1..].to_vec());
    let m2 = Scrape::of(&server).await;
    moved(
        &m1,
        &m2,
        &[
            ("ssegate_resumes_total", 1.0),
            ("ssegate_events_delivered_total", 2.0),
            ("ssegate_gaps_total", 0.0),
        ],
    );

    // 100 more events (in tens, read as they come) push the first ones out of retention
    // (60): a resume from the first one gets a gap, then the 60 retained events.
    let mut more = Vec::new();
    for _ in 0..10 {
        let ten = server.publish_many(&p, "c", 10, 10).await;
        assert_eq!(ids(&a.take(10, T).await), ten);
        assert_eq!(ids(&b.take(10, T).await), ten);
        more.extend(ten);
    }
    let (mut c, _) = Sse::open(
        &server.stream_url(&["c"]),
        &[bearer(&u2), last_event_id(&first[0])],
    )
    .await;
    assert_eq!(c.next_event(T).await.event, "gap");
    assert_eq!(ids(&c.take(60, T).await), more[40..].to_vec());
    let m3 = Scrape::of(&server).await;
    moved(
        &m2,
        &m3,
        &[
            ("ssegate_gaps_total", 1.0),
            ("ssegate_resumes_total", 1.0),
            ("ssegate_events_published_total", 100.0),
            ("ssegate_events_delivered_total", 260.0),
        ],
    );

    // Auth failures by reason.
    let url = server.stream_url(&["c"]);
    assert_eq!(Sse::connect(&url, &[]).await.status, 401);
    assert_eq!(Sse::connect(&url, &[bearer("not-a-jwt")]).await.status, 401);
    assert_eq!(Sse::connect(&url, &[bearer("a.b.c")]).await.status, 401);
    // A limit: u1 may hold 2 streams; it has one, the second is fine, the third is refused.
    let (mut slow, _) = Sse::open(&server.stream_url(&["slow"]), &[bearer(&u1)]).await;
    assert_eq!(Sse::connect(&url, &[bearer(&u1)]).await.status, 429);
    let m4 = Scrape::of(&server).await;
    moved(
        &m3,
        &m4,
        &[
            (
                "ssegate_auth_failures_total{reason=\"missing_credentials\"}",
                1.0,
            ),
            ("ssegate_auth_failures_total{reason=\"invalid_token\"}", 2.0),
            (
                "ssegate_rate_limited_total{limit=\"too_many_connections_for_user\"}",
                1.0,
            ),
        ],
    );

    // A slow client: its queue (4 frames) overflows and it switches to reading the log;
    // reading again it gets every event.
    let burst = server.publish_many(&p, "slow", 40, 40).await;
    assert_eq!(ids(&slow.take(40, T).await), burst);
    let m5b = Scrape::of(&server).await;
    let delta = |name: &str| m5b.get(name) - m4.get(name);
    assert!(delta("ssegate_queue_overflows_total") >= 1.0);
    assert!(delta("ssegate_catchup_entries_total") >= 1.0);

    // Closes by reason: a client going away, an admin kick.
    drop(c);
    let admin = token_with("admin", &[], &[], true, 3600);
    let res = http()
        .delete(format!("{}/v1/users/u1/connections", server.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        json!({"closed": 2, "unreachable": []})
    );
    a.expect_closing("kicked", T).await;
    slow.expect_closing("kicked", T).await;
    let deadline = tokio::time::Instant::now() + T;
    let m6 = loop {
        let m = Scrape::of(&server).await;
        if m.get("ssegate_connections") == 1.0 {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections never dropped to 1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    moved(
        &m5b,
        &m6,
        &[
            ("ssegate_connections_closed_total{reason=\"kicked\"}", 2.0),
            (
                "ssegate_connections_closed_total{reason=\"client_gone\"}",
                1.0,
            ),
        ],
    );
    drop(b);
}
