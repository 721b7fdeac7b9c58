//! Forward-auth end to end: the real gateway process asks a real local app (axum, `GET /auth`)
//! about the app's own session cookie. The app answers `200 {"user", "subscribe", "ttl_s"}`
//! for known sessions and `401` otherwise, counts its calls, and can be slowed down, stopped
//! (not started yet) or told to revoke a session.
//!
//! The test server also has `auth.jwt_secret` set (by `common`); forward-auth decides when a
//! request presents no token of ours — here, only the app's `Cookie`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Session {
    user: String,
    subscribe: Vec<String>,
    ttl_s: u64,
}

/// The app's side: its sessions, what it was asked, how slow it is.
#[derive(Default)]
struct App {
    calls: AtomicUsize,
    delay_ms: AtomicU64,
    sessions: Mutex<HashMap<String, Session>>,
    cookies: Mutex<Vec<Option<String>>>,
}

impl App {
    /// An app that knows `session=alice-1` (user alice) with the given `ttl_s`.
    fn with_alice(ttl_s: u64) -> Arc<App> {
        let app = Arc::new(App::default());
        app.set_session("alice-1", "alice", &["n:{sub}", "logs:w1:*"], ttl_s);
        app
    }

    fn set_session(&self, id: &str, user: &str, subscribe: &[&str], ttl_s: u64) {
        self.sessions.lock().unwrap().insert(
            id.to_owned(),
            Session {
                user: user.to_owned(),
                subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
                ttl_s,
            },
        );
    }

    fn revoke(&self, id: &str) {
        self.sessions.lock().unwrap().remove(id);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn auth(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    app.calls.fetch_add(1, Ordering::SeqCst);
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    app.cookies.lock().unwrap().push(cookie.clone());
    let delay = app.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let session_id = cookie.as_deref().and_then(|c| {
        c.split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| *k == "session")
            .map(|(_, v)| v.to_owned())
    });
    let session = session_id.and_then(|id| app.sessions.lock().unwrap().get(&id).cloned());
    match session {
        Some(s) => Json(json!({"user": s.user, "subscribe": s.subscribe, "ttl_s": s.ttl_s}))
            .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unknown session"})),
        )
            .into_response(),
    }
}

/// Serves the app on `listener` (in the background, for the rest of the test).
fn serve(app: Arc<App>, listener: tokio::net::TcpListener) {
    let router = Router::new().route("/auth", get(auth)).with_state(app);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
}

/// Starts the app on a free port; returns its `/auth` URL.
async fn start_app(app: Arc<App>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/auth", listener.local_addr().unwrap());
    serve(app, listener);
    url
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn cookie(session: &str) -> Vec<(&'static str, String)> {
    vec![("cookie", format!("session={session}"))]
}

fn poll_url(server: &Server, channel: &str) -> String {
    format!("{}/v1/poll?channel={channel}&timeout_ms=10", server.url)
}

async fn readyz(server: &Server) -> (u16, Value) {
    let (status, _, body) = common::get(&format!("{}/readyz", server.url), &[]).await;
    (status, body)
}

/// Waits (up to `within`) for `/readyz` to answer `want`.
async fn wait_ready(server: &Server, want: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = readyz(server).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} {body} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A1: the app's cookie alone opens a stream as the app's user, with the app's grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_session_cookie_opens_a_stream_with_the_apps_grants() {
    let app = App::with_alice(60);
    let url = start_app(app.clone()).await;
    let server = Server::start(&[("AUTH__FORWARD_URL", url.as_str())]);

    let (mut sse, connected) = Sse::open(
        &server.stream_url(&["n:alice", "logs:w1:f1"]),
        &cookie("alice-1"),
    )
    .await;
    assert_eq!(connected["user"], "alice");
    assert_eq!(connected["channels"], json!(["n:alice", "logs:w1:f1"]));
    assert_eq!(app.calls(), 1);
    assert_eq!(
        app.cookies.lock().unwrap().as_slice(),
        &[Some("session=alice-1".to_owned())],
        "the gateway passes the request's Cookie header on"
    );

    // Published in this order: the event for bob comes first in the log, so receiving exactly
    // the next two proves it was not delivered.
    let publisher = publisher();
    let mut published = Vec::new();
    for channel in ["n:bob", "n:alice", "logs:w1:f1"] {
        let (status, body) = server
            .publish(&publisher, &json!({"channel": channel, "type": "t"}))
            .await;
        assert_eq!(status, 200, "{body}");
        published.push(body["ids"][0].as_str().unwrap().to_owned());
    }
    let got = sse.take(2, T).await;
    assert_eq!(ids(&got), published[1..].to_vec());
    assert_eq!(envelope(&got[0])["channel"], "n:alice");
    assert_eq!(envelope(&got[1])["channel"], "logs:w1:f1");

    // A channel the app did not grant.
    let refused = Sse::connect(&server.stream_url(&["n:bob"]), &cookie("alice-1")).await;
    assert_error(refused.status, &refused.error, 403, "forbidden_channel");
    assert_eq!(refused.error["error"]["channels"], json!(["n:bob"]));

    // A token of ours still wins over forward-auth, without asking the app.
    let calls = app.calls();
    let jwt = token("u9", &["n:{sub}"], &[]);
    let (_jwt_sse, connected) = Sse::open(&server.stream_url(&["n:u9"]), &[bearer(&jwt)]).await;
    assert_eq!(connected["user"], "u9");
    assert_eq!(app.calls(), calls, "a JWT request does not call the app");
}

/// A2: answers are cached for `ttl_s` per credential; after `ttl_s` the app is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_for_ttl_s_then_asked_again() {
    let app = App::with_alice(2);
    let url = start_app(app.clone()).await;
    let server = Server::start(&[("AUTH__FORWARD_URL", url.as_str())]);

    // Long-polls and refused streams authenticate without opening a stream (an open stream
    // would be re-checked every ttl_s, which would add calls).
    let first = Instant::now();
    for _ in 0..3 {
        let (status, _, body) =
            common::get(&poll_url(&server, "n:alice"), &cookie("alice-1")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["events"], json!([]));
    }
    let refused = Sse::connect(&server.stream_url(&["n:bob"]), &cookie("alice-1")).await;
    assert_error(refused.status, &refused.error, 403, "forbidden_channel");
    assert!(
        first.elapsed() < Duration::from_millis(1500),
        "the requests must fall inside ttl_s for this test to mean anything"
    );
    assert_eq!(app.calls(), 1, "four requests within ttl_s, one call");

    // Another credential is another cache entry.
    let (status, _, body) = common::get(&poll_url(&server, "n:x"), &cookie("nobody")).await;
    assert_error(status, &body, 401, "invalid_token");
    assert_eq!(app.calls(), 2);

    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(first.elapsed())).await;
    let (status, _, body) = common::get(&poll_url(&server, "n:alice"), &cookie("alice-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.calls(), 3, "after ttl_s the app is asked again");
    let (status, _, _) = common::get(&poll_url(&server, "n:alice"), &cookie("alice-1")).await;
    assert_eq!(status, 200);
    assert_eq!(app.calls(), 3, "and that answer is cached again");
}

/// A3: the app's 401 is the gateway's 401, with the JSON error shape; no cookie at all is
/// `missing_credentials` without asking the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_app_refuses_is_401() {
    let app = App::with_alice(60);
    let url = start_app(app.clone()).await;
    let server = Server::start(&[("AUTH__FORWARD_URL", url.as_str())]);

    let refused = Sse::connect(&server.stream_url(&["n:alice"]), &cookie("mallory-7")).await;
    assert_error(refused.status, &refused.error, 401, "invalid_token");
    assert_eq!(app.calls(), 1);
    assert_eq!(
        app.cookies.lock().unwrap().as_slice(),
        &[Some("session=mallory-7".to_owned())]
    );

    let (status, _, body) = common::get(&poll_url(&server, "n:alice"), &cookie("mallory-8")).await;
    assert_error(status, &body, 401, "invalid_token");

    let calls = app.calls();
    let anonymous = Sse::connect(&server.stream_url(&["n:alice"]), &[]).await;
    assert_error(
        anonymous.status,
        &anonymous.error,
        401,
        "missing_credentials",
    );
    assert_eq!(app.calls(), calls, "nothing to forward, nothing asked");
}

/// A4 (unreachable): a request while the app is down fails closed at once with
/// `503 auth_unavailable`.
/// (Not 401: an outage is no reason to log in again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_unreachable_is_503_auth_unavailable_at_once() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/auth");
    let server = Server::start(&[
        ("AUTH__FORWARD_URL", url.as_str()),
        ("AUTH__FORWARD_TIMEOUT_MS", "300"),
    ]);
    let start = Instant::now();
    let refused = Sse::connect(&server.stream_url(&["n:alice"]), &cookie("alice-1")).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(refused.error["error"]["code"], "auth_unavailable");
    assert_eq!(
        refused.status, 503,
        "forward-auth unreachable must be 503 auth_unavailable (got {} {})",
        refused.status, refused.error
    );
    assert_error(refused.status, &refused.error, 503, "auth_unavailable");
}

/// A4 (too slow): an app slower than `auth.forward_timeout_ms` (300 ms) fails closed with
/// `503 auth_unavailable` well before the app would have answered (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_slower_than_the_timeout_is_503_auth_unavailable_within_the_timeout() {
    let app = App::with_alice(60);
    app.delay_ms.store(5_000, Ordering::SeqCst);
    let url = start_app(app.clone()).await;
    let server = Server::start(&[
        ("AUTH__FORWARD_URL", url.as_str()),
        ("AUTH__FORWARD_TIMEOUT_MS", "300"),
    ]);
    let start = Instant::now();
    let refused = Sse::connect(&server.stream_url(&["n:alice"]), &cookie("alice-1")).await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(app.calls(), 1, "the app was asked");
    assert_eq!(refused.error["error"]["code"], "auth_unavailable");
    assert_eq!(
        refused.status, 503,
        "forward-auth timeout must be 503 auth_unavailable (got {} {})",
        refused.status, refused.error
    );
}

/// A4 (readiness, unreachable app): after a failed call `/readyz` is 503; once the app listens
/// again the gateway's probe (every 2 s) makes it ready without any traffic, and the cookie
/// works. (The status of the refusal itself is checked, and found wrong, above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_an_unreachable_app_and_recovers_when_it_is_back() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/auth");
    let server = Server::start(&[
        ("AUTH__FORWARD_URL", url.as_str()),
        ("AUTH__FORWARD_TIMEOUT_MS", "300"),
    ]);
    assert_eq!(readyz(&server).await.0, 200, "ready until a call fails");

    let refused = Sse::connect(&server.stream_url(&["n:alice"]), &cookie("alice-1")).await;
    assert_eq!(
        refused.error["error"]["code"], "auth_unavailable",
        "{}",
        refused.error
    );
    let (status, body) = readyz(&server).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["reason"].as_str().unwrap().contains("forward-auth"),
        "{body}"
    );
    let m = metrics_text(&server).await;
    assert_eq!(metric(&m, "ssegate_forward_auth_up"), Some(0.0), "{m}");
    assert_eq!(
        metric(
            &m,
            "ssegate_forward_auth_calls_total{result=\"unavailable\"}"
        ),
        Some(1.0),
        "{m}"
    );

    // Still down a probe later.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(readyz(&server).await.0, 503);

    let app = App::with_alice(60);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    serve(app.clone(), listener);
    wait_ready(&server, 200, Duration::from_secs(10)).await;
    assert!(app.calls() >= 1, "the probe reached the app");
    let (_sse, connected) = Sse::open(&server.stream_url(&["n:alice"]), &cookie("alice-1")).await;
    assert_eq!(connected["user"], "alice");
    let m = metrics_text(&server).await;
    assert_eq!(metric(&m, "ssegate_forward_auth_up"), Some(1.0), "{m}");
}

/// A4 (readiness, slow app): a timed-out call makes `/readyz` 503; when the app answers in
/// time again readiness comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_slow_app_and_recovers_when_it_is_fast_again() {
    let app = App::with_alice(60);
    app.delay_ms.store(5_000, Ordering::SeqCst);
    let url = start_app(app.clone()).await;
    let server = Server::start(&[
        ("AUTH__FORWARD_URL", url.as_str()),
        ("AUTH__FORWARD_TIMEOUT_MS", "300"),
    ]);
    let refused = Sse::connect(&server.stream_url(&["n:alice"]), &cookie("alice-1")).await;
    assert_eq!(
        refused.error["error"]["code"], "auth_unavailable",
        "{}",
        refused.error
    );
    assert_eq!(readyz(&server).await.0, 503);

    app.delay_ms.store(0, Ordering::SeqCst);
    wait_ready(&server, 200, Duration::from_secs(10)).await;
    let (_sse, connected) = Sse::open(&server.stream_url(&["n:alice"]), &cookie("alice-1")).await;
    assert_eq!(connected["user"], "alice");
}

/// A5: an open stream is re-checked every `ttl_s` (1 s): once the app refuses the session the
/// stream gets `closing` `{"reason":"revoked"}` and ends within about one ttl; a stream whose
/// channel is no longer granted ends the same way; other streams go on. The calls show in
/// `/metrics` as `ssegate_forward_auth_calls_total{result=…}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_ends_the_open_stream_within_ttl() {
    let app = App::with_alice(1);
    app.set_session("carol-1", "carol", &["logs:w1:*"], 1);
    let url = start_app(app.clone()).await;
    let server = Server::start(&[("AUTH__FORWARD_URL", url.as_str())]);
    let publisher = publisher();

    let (mut alice, _) = Sse::open(&server.stream_url(&["n:alice"]), &cookie("alice-1")).await;
    let (mut carol, _) = Sse::open(&server.stream_url(&["logs:w1:f1"]), &cookie("carol-1")).await;

    // Several re-checks pass while the session is valid: the streams stay open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let calls_before = app.calls();
    assert!(calls_before >= 4, "two opens and re-checks: {calls_before}");
    for channel in ["n:alice", "logs:w1:f1"] {
        let (status, _) = server
            .publish(&publisher, &json!({"channel": channel, "type": "t"}))
            .await;
        assert_eq!(status, 200);
    }
    assert_eq!(alice.take(1, T).await.len(), 1);
    assert_eq!(carol.take(1, T).await.len(), 1);

    // The app logs alice out.
    app.revoke("alice-1");
    let revoked = Instant::now();
    alice
        .expect_closing("revoked", Duration::from_secs(5))
        .await;
    let took = revoked.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "ttl_s is 1 s; the stream ended {took:?} after the revocation"
    );
    // A new stream with the revoked cookie is refused.
    let refused = Sse::connect(&server.stream_url(&["n:alice"]), &cookie("alice-1")).await;
    assert_error(refused.status, &refused.error, 401, "invalid_token");

    // Carol's stream was not affected…
    let (status, _) = server
        .publish(&publisher, &json!({"channel": "logs:w1:f1", "type": "t"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(carol.take(1, T).await.len(), 1);
    // …until the app stops granting her channel.
    app.set_session("carol-1", "carol", &["other:*"], 1);
    carol
        .expect_closing("revoked", Duration::from_secs(5))
        .await;

    let m = metrics_text(&server).await;
    assert!(
        m.contains("# TYPE ssegate_forward_auth_calls counter"),
        "{m}"
    );
    let ok = metric(&m, "ssegate_forward_auth_calls_total{result=\"ok\"}").unwrap_or(0.0);
    let refused = metric(&m, "ssegate_forward_auth_calls_total{result=\"refused\"}").unwrap_or(0.0);
    assert!(ok >= 4.0, "ok calls: {ok}\n{m}");
    // Alice's re-check; the new stream with her cookie was answered from the one-second
    // refusal cache; carol's re-check was an `ok` answer with other grants.
    assert!(refused >= 1.0, "refused calls: {refused}\n{m}");
    assert_eq!(
        (ok + refused) as usize,
        app.calls(),
        "every call the app saw is counted once\n{m}"
    );
}
