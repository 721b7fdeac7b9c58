//! ssegate behind a REAL nginx configured with the shipped site file
//! (`deploy/nginx/ssegate.conf`): events pass through unbuffered, heartbeats keep an idle
//! stream open past nginx's read timeout, `Last-Event-ID` and `X-Forwarded-For` reach
//! ssegate, large publishes pass, `/metrics` is not exposed. Also checks that the Grafana
//! dashboard (`deploy/grafana/ssegate-dashboard.json`) queries only metrics a live server
//! exposes.
//!
//! nginx is Debian's (`apt-get install -y -q --no-install-recommends nginx`). Without
//! `/usr/sbin/nginx` the nginx tests print `skipped: …` and pass,
//! unless `SSEGATE_TEST_REQUIRE_NGINX=1`, which makes that a failure (for CI, once nginx is
//! installed there).
//!
//! Each test runs its own nginx (master + 1 worker, foreground) on a free port with a
//! temporary prefix directory: a minimal main `nginx.conf` written here (as Debian's: `gzip on`,
//! plus event streams in `gzip_types`, so the site's `gzip off` is exercised) that `include`s
//! the site file. Only these values of the site file are changed: the upstream address, the
//! `listen` address, the access log path and, in the heartbeat tests, the stream location's
//! `proxy_read_timeout` (shipped: 1h; here 2s, so that a few seconds of idleness outlast it).
//! Every other directive is kept as shipped; the configuration is checked with `nginx -t`
//! before nginx starts.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::nginx::Nginx;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const DASHBOARD: &str = include_str!("../deploy/grafana/ssegate-dashboard.json");
const ALERTS: &str = include_str!("../deploy/prometheus/ssegate-alerts.yml");
const T: Duration = Duration::from_secs(20);

/// Metric names the dashboard and alert rules may use before a server exposes them (announced by the
/// engineer adding them). Printed, never silently accepted; empty when all exist.
const PENDING_METRICS: &[&str] = &[];

/// nginx (the shipped site) in front of `upstream`, with the stream location's
/// `proxy_read_timeout` (shipped: 1h) replaced when `read_timeout` is given.
fn nginx_for(upstream: &str, read_timeout: Option<&str>) -> Option<Nginx> {
    let replace: Vec<(&str, String)> = read_timeout
        .map(|t| ("proxy_read_timeout 1h;", format!("proxy_read_timeout {t};")))
        .into_iter()
        .collect();
    Nginx::start(&[upstream], &replace)
}

fn stream_url(nginx: &Nginx, channels: &[&str]) -> String {
    let q: Vec<String> = channels.iter().map(|c| format!("channel={c}")).collect();
    format!("{}/v1/stream?{}", nginx.url, q.join("&"))
}

/// `POST /v1/publish` through nginx (the site's `location /`).
async fn publish_via(nginx: &Nginx, token: &str, body: &Value) -> (u16, Value) {
    let (status, _, body) = call(
        Method::POST,
        &format!("{}/v1/publish", nginx.url),
        &[bearer(token)],
        Some(body),
    )
    .await;
    (status, body)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Waits for the event `id` on `sse`, skipping control events; returns when it arrived.
async fn arrival(sse: &mut Sse, id: &str) -> Instant {
    let ev = sse.take(1, Duration::from_secs(5)).await.remove(0);
    let at = Instant::now();
    assert_eq!(ev.id, id, "events arrive in publish order");
    at
}

/// 1. No buffering: each event reaches the client through nginx within 50 ms of its
/// publish being acknowledged. The same events are read directly from ssegate, for
/// comparison. A loaded machine can delay a single event: the measurement is retried up to
/// 3 times before failing.
#[tokio::test]
async fn events_pass_through_nginx_unbuffered() {
    const EVENTS: usize = 20;
    const LIMIT: Duration = Duration::from_millis(50);
    let server = Server::start(&[]);
    let Some(nginx) = nginx_for(&server.url, None) else {
        return;
    };
    let sub = token("u1", &["nb:*"], &[]);
    let publisher = publisher();
    // `Accept-Encoding: gzip` with `gzip on` globally: the stream must still come through
    // uncompressed (the client here does not decompress: a gzipped stream would not parse).
    let (mut via_nginx, connected) = Sse::open(
        &stream_url(&nginx, &["nb:1"]),
        &[bearer(&sub), ("accept-encoding", "gzip".into())],
    )
    .await;
    assert_eq!(connected["user"], "u1");
    assert!(via_nginx.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(
        via_nginx.headers.get("content-encoding").is_none(),
        "the stream is not compressed: {:?}",
        via_nginx.headers
    );
    let (mut direct, _) = Sse::open(&server.stream_url(&["nb:1"]), &[bearer(&sub)]).await;

    let mut attempts = Vec::new();
    for attempt in 1..=3 {
        let mut through = Vec::with_capacity(EVENTS);
        let mut straight = Vec::with_capacity(EVENTS);
        for i in 0..EVENTS {
            // Spaced out: each event travels alone, as in a quiet stream (nothing behind it
            // could push it out of a buffer).
            tokio::time::sleep(Duration::from_millis(25)).await;
            let (status, body) = server
                .publish(
                    &publisher,
                    &json!({"channel": "nb:1", "type": "t", "data": {"attempt": attempt, "i": i}}),
                )
                .await;
            let acked = Instant::now();
            assert_eq!(status, 200, "{body}");
            let id = published_ids(&body).remove(0);
            let (a, b) = tokio::join!(arrival(&mut via_nginx, &id), arrival(&mut direct, &id));
            through.push(a.saturating_duration_since(acked));
            straight.push(b.saturating_duration_since(acked));
        }
        let max = *through.iter().max().unwrap();
        let mut sorted = through.clone();
        sorted.sort();
        let figures = format!(
            "attempt {attempt}: publish ack → arrival through nginx: median {:.2} ms, max {:.2} ms \
             (directly from ssegate: max {:.2} ms); all (ms): {:?}",
            millis(sorted[EVENTS / 2]),
            millis(max),
            millis(*straight.iter().max().unwrap()),
            through
                .iter()
                .map(|d| (millis(*d) * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
        println!("{figures}");
        attempts.push(figures);
        if max < LIMIT {
            return;
        }
    }
    panic!(
        "an event took ≥ {} ms through nginx in each of 3 attempts:\n{}\n--- nginx error log ---\n{}",
        LIMIT.as_millis(),
        attempts.join("\n"),
        nginx.error_log()
    );
}

/// 2. Heartbeats every 500 ms keep an idle stream open through nginx although its
/// `proxy_read_timeout` is 2 s: after 5 s of no events, a publish still arrives on the same
/// stream.
#[tokio::test]
async fn heartbeats_keep_an_idle_stream_open_past_the_read_timeout() {
    let server = Server::start(&[("STREAM__HEARTBEAT_MS", "500")]);
    let Some(nginx) = nginx_for(&server.url, Some("2s")) else {
        return;
    };
    let sub = token("u1", &["hb:*"], &[]);
    let (mut sse, _) = Sse::open(&stream_url(&nginx, &["hb:1"]), &[bearer(&sub)]).await;
    let idle = Instant::now();
    // Heartbeats are comments: no event, no end of stream for 5 s.
    sse.expect_silence(Duration::from_secs(5)).await;
    println!(
        "idle for {:.1} s through nginx with proxy_read_timeout 2s: still open",
        idle.elapsed().as_secs_f64()
    );
    let (status, body) = server
        .publish(
            &publisher(),
            &json!({"channel": "hb:1", "type": "t", "data": {"after": "idle"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = published_ids(&body).remove(0);
    let got = sse.take(1, T).await;
    assert_eq!(got[0].id, id);
    assert!(
        !nginx.error_log().contains("upstream timed out"),
        "nginx timed the stream out:\n{}",
        nginx.error_log()
    );
}

/// 2b. The control for 2: with heartbeats slower than nginx's read timeout (the default
/// 15 s against 2 s), nginx does end the idle stream — so the shortened timeout is in force
/// and 2 shows the heartbeats at work.
#[tokio::test]
async fn without_faster_heartbeats_nginx_ends_the_idle_stream() {
    let server = Server::start(&[]);
    let Some(nginx) = nginx_for(&server.url, Some("2s")) else {
        return;
    };
    let sub = token("u1", &["hb:*"], &[]);
    let (mut sse, _) = Sse::open(&stream_url(&nginx, &["hb:1"]), &[bearer(&sub)]).await;
    let idle = Instant::now();
    match sse.next_or_end(Duration::from_secs(8)).await {
        Next::End | Next::Broken(_) => {}
        other => panic!("expected nginx to end the idle stream, got {other:?}"),
    }
    let after = idle.elapsed();
    println!(
        "nginx ended the idle stream after {:.1} s",
        after.as_secs_f64()
    );
    assert!(
        after >= Duration::from_millis(1500),
        "ended too early ({after:?}): not the read timeout"
    );
    assert!(nginx.error_log().contains("upstream timed out"));
}

/// 3. `Last-Event-ID` passes through nginx: a client reconnecting with it receives exactly
/// the events it missed, in order, then live events. Publishes go through nginx too (the
/// site's `location /`).
#[tokio::test]
async fn last_event_id_passes_through_nginx() {
    let server = Server::start(&[]);
    let Some(nginx) = nginx_for(&server.url, None) else {
        return;
    };
    let sub = token("u1", &["le:*"], &[]);
    let publisher = publisher();
    let url = stream_url(&nginx, &["le:1"]);
    let publish = |i: usize| json!({"channel": "le:1", "type": "t", "data": {"i": i}});

    let (mut sse, _) = Sse::open(&url, &[bearer(&sub)]).await;
    let mut seen = Vec::new();
    for i in 0..3 {
        let (status, body) = publish_via(&nginx, &publisher, &publish(i)).await;
        assert_eq!(status, 200, "{body}");
        seen.extend(published_ids(&body));
    }
    assert_eq!(ids(&sse.take(3, T).await), seen);
    drop(sse);

    let mut missed = Vec::new();
    for i in 3..8 {
        let (status, body) = publish_via(&nginx, &publisher, &publish(i)).await;
        assert_eq!(status, 200, "{body}");
        missed.extend(published_ids(&body));
    }
    let (mut sse, _) = Sse::open(&url, &[bearer(&sub), last_event_id(&seen[2])]).await;
    let got = sse.take(missed.len(), T).await;
    assert_eq!(ids(&got), missed, "exactly the missed events, in order");
    for (n, e) in got.iter().enumerate() {
        assert_eq!(envelope(e)["data"]["i"], 3 + n);
    }
    // Nothing more (no duplicate), then live delivery on the resumed stream.
    sse.expect_quiet(Duration::from_millis(300)).await;
    let (status, body) = publish_via(&nginx, &publisher, &publish(8)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&sse.take(1, T).await), published_ids(&body));
    sse.expect_quiet(Duration::from_millis(300)).await;
}

/// `X-Forwarded-For` through nginx: with nginx's address in `server.trusted_proxies`,
/// ssegate sees the client's address (here 127.0.0.2), not nginx's — and not an address the
/// client wrote into `X-Forwarded-For` itself.
#[tokio::test]
async fn the_client_address_comes_through_x_forwarded_for() {
    let server = Server::start(&[("SERVER__TRUSTED_PROXIES", "[\"127.0.0.1\"]")]);
    let Some(nginx) = nginx_for(&server.url, None) else {
        return;
    };
    let sub = token("u1", &["xff:*"], &[]);
    let client = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .unwrap();
    let stream = client
        .get(stream_url(&nginx, &["xff:1"]))
        .bearer_auth(&sub)
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .expect("stream through nginx from 127.0.0.2");
    assert_eq!(stream.status(), 200);
    let admin = token_with("ops", &[], &[], true, 3600);
    let (status, _, body) = get(
        &format!("{}/v1/connections?user=u1", server.url),
        &[bearer(&admin)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let connections = body["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 1, "{body}");
    assert_eq!(connections[0]["ip"], "127.0.0.2", "{body}");
    drop(stream);
}

/// The rest of the API through nginx: a publish larger than nginx's default 1 MiB body limit
/// passes (`client_max_body_size`), `/readyz` answers, `/metrics` is not exposed.
#[tokio::test]
async fn large_publishes_pass_and_metrics_stay_private() {
    let server = Server::start(&[]);
    let Some(nginx) = nginx_for(&server.url, None) else {
        return;
    };
    let line = "x".repeat(50_000);
    let batch: Vec<Value> = (0..40)
        .map(|i| json!({"channel": "big:1", "type": "t", "data": {"i": i, "line": line}}))
        .collect();
    let body = Value::Array(batch);
    assert!(serde_json::to_vec(&body).unwrap().len() > 1024 * 1024);
    let (status, answer) = publish_via(&nginx, &publisher(), &body).await;
    assert_eq!(status, 200, "{answer}\n{}", nginx.error_log());
    assert_eq!(published_ids(&answer).len(), 40);

    let (status, _, ready) = get(&format!("{}/readyz", nginx.url), &[]).await;
    assert_eq!((status, &ready["status"]), (200, &json!("ready")));
    let (status, _, _) = get(&format!("{}/metrics", nginx.url), &[]).await;
    assert_eq!(
        status, 404,
        "/metrics is not served through the public proxy"
    );
}

/// One id per request in both logs: nginx sends its `$request_id` as `X-Request-Id` (replacing
/// one the client sent), ssegate names it in its log line for the stream and returns it, and
/// nginx's access log (the site's `ssegate` format) records it — without the query string,
/// which may carry a token.
#[tokio::test]
async fn request_ids_correlate_nginx_and_ssegate_logs() {
    let server = Server::start(&[]);
    let Some(nginx) = nginx_for(&server.url, None) else {
        return;
    };
    let sub = token("u1", &["rid:*"], &[]);
    let (sse, _) = Sse::open(
        &stream_url(&nginx, &["rid:1"]),
        &[
            bearer(&sub),
            ("x-request-id", "chosen-by-the-client".into()),
        ],
    )
    .await;
    let id = sse.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "nginx's $request_id, not the client's: {id:?}"
    );
    assert!(
        server.log_text().contains(&id),
        "ssegate's log names the request id {id}:\n{}",
        server.log_text()
    );
    drop(sse);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = nginx.access_log();
        if log.contains(&format!("request_id={id}")) {
            assert!(
                !log.contains(&sub) && !log.contains("access_token"),
                "no query strings (tokens) in the access log:\n{log}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nginx's access log has no line with request_id={id}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The preStop drain through nginx: `POST /v1/admin/drain` (what deploy/k8s's hook sends)
/// makes `/readyz` answer 503 and every stream gets `closing` (`shutdown`), then ends
/// cleanly: nginx passes the close on as the end of the response, not as an error.
#[tokio::test]
async fn a_drain_closes_streams_through_nginx_cleanly() {
    let server = Server::start(&[("SERVER__DRAIN_WINDOW_MS", "1000")]);
    let Some(nginx) = nginx_for(&server.url, None) else {
        return;
    };
    let sub = token("u1", &["dr:*"], &[]);
    let url = stream_url(&nginx, &["dr:1"]);
    let (mut first, _) = Sse::open(&url, &[bearer(&sub)]).await;
    let (mut second, _) = Sse::open(&url, &[bearer(&sub)]).await;
    let admin = token_with("ops", &[], &[], true, 3600);
    let (status, _, body) = call(
        Method::POST,
        &format!("{}/v1/admin/drain", nginx.url),
        &[bearer(&admin)],
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, _, ready) = get(&format!("{}/readyz", nginx.url), &[]).await;
    assert_eq!(status, 503, "not ready while draining: {ready}");
    let started = Instant::now();
    first
        .expect_closing("shutdown", Duration::from_secs(10))
        .await;
    second
        .expect_closing("shutdown", Duration::from_secs(10))
        .await;
    println!(
        "both streams closed through nginx {:.2} s after the drain request (window 1 s)",
        started.elapsed().as_secs_f64()
    );
}

/// Every metric the Grafana dashboard and the Prometheus alert rules query is exposed by a
/// live server (`GET /metrics`), so no panel stays empty and no alert stays silent because of
/// a misspelt or renamed metric.
#[tokio::test]
async fn dashboard_and_alerts_query_only_exposed_metrics() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    assert!(!queries.is_empty(), "the dashboard has queries");
    // The rules file is YAML; its expressions are the `expr:` lines (one line each).
    let rules: Vec<String> = ALERTS
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect();
    assert!(rules.len() >= 10, "the alert rules have expressions");
    queries.extend(rules);
    let mut used: Vec<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    used.sort();
    used.dedup();

    let server = Server::start(&[]);
    let text = metrics_text(&server).await;
    let exposed = exposed_names(&text);
    let mut missing = Vec::new();
    for name in &used {
        if exposed.contains(name) {
            continue;
        }
        if PENDING_METRICS.contains(&name.as_str()) {
            println!("pending (not exposed yet, allowed by PENDING_METRICS): {name}");
        } else {
            missing.push(name.clone());
        }
    }
    println!(
        "the dashboard and alert rules query {} metrics, all exposed: {}",
        used.len(),
        used.join(", ")
    );
    assert!(
        missing.is_empty(),
        "the dashboard or alert rules query metrics a live ssegate does not expose: {missing:?}\n\
         exposed: {exposed:?}"
    );
    for name in PENDING_METRICS {
        if exposed.contains(&name.to_string()) {
            println!("{name} is exposed now: remove it from PENDING_METRICS");
        }
    }
}

/// Every `expr` (panel targets) and string `query` (template variables) in the dashboard.
fn collect_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => collect_queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_queries(v, out)),
        _ => {}
    }
}

/// The `ssegate_…` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ssegate_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        if !before.is_some_and(is_name) {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The sample names a Prometheus/OpenMetrics exposition offers, including those of families
/// that have no sample yet (from their `# TYPE` line: a counter `x` is queried as
/// `x_total`, a histogram as `x_bucket`, `x_sum`, `x_count`).
fn exposed_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                "stateset" | "gauge" | "unknown" => &[""],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.push(line[..end].to_owned());
        }
    }
    names.sort();
    names.dedup();
    names
}
