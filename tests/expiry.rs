//! Token lifetime on a live stream: at the token's `exp` the stream gets `closing`
//! (`token_expired`) and ends — the verification leeway (`auth.leeway_s`, 5 s by default) does
//! not extend a stream (src/http/stream.rs computes the end from `exp` alone) — and a
//! reconnect with a fresh token and `Last-Event-ID` gets every event published in between
//! exactly once, in order.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_ends_the_stream_and_a_fresh_one_resumes_without_loss_or_duplicate() {
    let server = Server::start(&[("STREAM__HEARTBEAT_MS", "300")]);
    let publisher = publisher();
    let url = server.stream_url(&["a"]);

    let minted = Instant::now();
    let short = token_with("u1", &["a"], &[], false, 2);
    let (mut sse, _) = Sse::open(&url, &[bearer(&short)]).await;

    let mut published = Vec::new();
    let first = server.publish_many(&publisher, "a", 3, 1).await;
    published.extend(first.clone());
    let got = sse.take(3, T).await;
    assert_eq!(ids(&got), first, "events arrive while the token is valid");

    // Publishes keep coming across the expiry (one every 200 ms for 3 s).
    let background = {
        let url = server.url.clone();
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..15 {
                let res = http()
                    .post(format!("{url}/v1/publish"))
                    .bearer_auth(&publisher)
                    .json(&json!({"channel": "a", "type": "t", "data": {"bg": i}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                let body: serde_json::Value = res.json().await.unwrap();
                ids.push(body["ids"][0].as_str().unwrap().to_owned());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            ids
        })
    };

    let before_closing = sse
        .expect_closing("token_expired", Duration::from_secs(10))
        .await;
    let lived = minted.elapsed();
    // `exp` is whole seconds: now + 2 rounded down, so the stream lives 1 to 2 s. With the
    // 5 s leeway applied it would live at least 5 s.
    assert!(
        lived >= Duration::from_millis(900) && lived < Duration::from_millis(4500),
        "the stream ended {lived:?} after a 2 s token was minted"
    );
    let mut received = ids(&got);
    received.extend(ids(&before_closing));

    published.extend(background.await.unwrap());
    published.extend(server.publish_many(&publisher, "a", 3, 1).await);

    assert_eq!(
        received,
        published[..received.len()].to_vec(),
        "the first stream delivered a prefix of the log, in order"
    );
    assert!(
        received.len() < published.len(),
        "some events were published after the stream ended"
    );
    let last = received.last().unwrap().clone();

    // Reconnect with a fresh token where the client left off.
    let fresh = token("u1", &["a"], &[]);
    let (mut resumed, _) = Sse::open(&url, &[bearer(&fresh), last_event_id(&last)]).await;
    let missed = published[received.len()..].to_vec();
    let got = resumed.take(missed.len(), T).await;
    assert_eq!(ids(&got), missed, "every missed event once, in order");
    // No duplicate follows, and the stream stays live.
    resumed.expect_silence(Duration::from_millis(800)).await;
    let live = server.publish_many(&publisher, "a", 1, 1).await;
    assert_eq!(ids(&resumed.take(1, T).await), live);
}

/// A token that expires while the client is idle still ends the stream at `exp` (the cursor
/// does not wait for traffic).
#[tokio::test]
async fn an_idle_stream_ends_at_expiry() {
    let server = Server::start(&[]);
    let minted = Instant::now();
    let short = token_with("u1", &["a"], &[], false, 1);
    let (mut sse, _) = Sse::open(&server.stream_url(&["a"]), &[bearer(&short)]).await;
    let delivered = sse
        .expect_closing("token_expired", Duration::from_secs(10))
        .await;
    assert!(delivered.is_empty());
    assert!(
        minted.elapsed() < Duration::from_millis(3500),
        "{:?}",
        minted.elapsed()
    );
}

/// The stream ends at the token's `exp` itself, not up to a second later.
/// (Computed in milliseconds: a stream opened 700 ms into a second must not live 0.7 s
/// past `exp`.) The test opens the stream 700 ms into a second.
#[tokio::test]
async fn the_stream_ends_at_exp_not_up_to_a_second_later() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let wall_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let server = Server::start(&[]);
    let into_second = wall_ms() % 1000;
    tokio::time::sleep(Duration::from_millis((1700 - into_second) % 1000)).await;
    let short = token_with("u1", &["a"], &[], false, 1);
    let exp_ms = (wall_ms() / 1000 + 1) * 1000;
    let (mut sse, _) = Sse::open(&server.stream_url(&["a"]), &[bearer(&short)]).await;
    sse.expect_closing("token_expired", Duration::from_secs(10))
        .await;
    let late = wall_ms().saturating_sub(exp_ms);
    assert!(
        late < 600,
        "the stream ended {late} ms after the token's exp"
    );
}
