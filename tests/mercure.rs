//! Mercure hub conformance, written from the specification (draft-dunglas-mercure-08, and the
//! draft-07 generation still spoken by ssegate): one test per MUST/SHOULD of subscription,
//! publication, authorization, reconnection and active subscriptions, each against a real
//! `ssegate serve` over real HTTP, with tokens minted by `jsonwebtoken`. Attacker cases (header
//! injection through hostile bytes, private updates leaking on replay, forged subscription
//! events, token confusion) sit next to the rule they attack.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::*;
use futures::StreamExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

/// The hub's HMAC key (distinct from the native API's, so no token crosses over by accident).
const MS: &str = "mercure-hub-test-secret-0123456789abcdef";
/// How long an event that must arrive may take.
const ARRIVES: Duration = Duration::from_secs(5);
/// How long we watch for an event that must not arrive.
const QUIET: Duration = Duration::from_millis(400);

const BOOK1: &str = "https://example.com/books/1";
const BOOK2: &str = "https://example.com/books/2";
const BOOK7: &str = "https://example.com/books/7";

// ---------------------------------------------------------------------------------------------
// Test doubles: a hub, tokens, form encoding, publish and subscribe calls.

/// A server with `[mercure]` on and the lines of `extra` in that section.
fn hub(extra: &str) -> Server {
    Server::start_with_config(
        &format!("[mercure]\nenabled = true\njwt_secret = \"{MS}\"\n{extra}\n"),
        &[],
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(typ: &str, claims: &Value, secret: &str) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some(typ.to_owned());
    encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A draft-07 token (`typ: JWT`, no `exp`, no `sub`) with a `mercure` claim.
fn v7(subscribe: &[&str], publish: &[&str]) -> String {
    sign(
        "JWT",
        &json!({"mercure": {"subscribe": subscribe, "publish": publish}}),
        MS,
    )
}

/// A draft-08 access token (`typ: at+jwt`) with these `authorization_details`.
fn v8(details: Value) -> String {
    v8_claims(json!({"sub": "tester", "exp": now() + 3600, "authorization_details": details}))
}

fn v8_claims(claims: Value) -> String {
    sign("at+jwt", &claims, MS)
}

/// One `mercure` authorization detail; a topic `"URLPattern:<p>"` is a URL pattern, any other
/// an Exact matcher (written without `matchType`, the default).
fn detail(actions: &[&str], topics: &[&str]) -> Value {
    let topics: Vec<Value> = topics
        .iter()
        .map(|t| match t.strip_prefix("URLPattern:") {
            Some(p) => json!({"match": p, "matchType": "URLPattern"}),
            None => json!({"match": t}),
        })
        .collect();
    json!({"type": "mercure", "actions": actions, "topics": topics})
}

fn v8_sub(topics: &[&str]) -> String {
    v8(json!([detail(&["subscribe"], topics)]))
}

fn v8_publisher() -> String {
    v8(json!([detail(&["publish"], &["*"])]))
}

/// Percent-encodes everything but RFC 3986 unreserved bytes.
fn enc(s: &str) -> String {
    enc_bytes(s.as_bytes())
}

fn enc_bytes(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn hub_url(server: &Server) -> String {
    format!("{}/.well-known/mercure", server.url)
}

/// `POST /.well-known/mercure` with a raw form body; status, headers, body text.
async fn post_raw(
    server: &Server,
    headers: &[(&str, String)],
    content_type: &str,
    body: String,
) -> (u16, HeaderMap, String) {
    let mut req = http()
        .post(hub_url(server))
        .header("content-type", content_type)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let res = req.send().await.expect("publish request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap_or_default())
}

async fn post(server: &Server, token: &str, pairs: &[(&str, &str)]) -> (u16, HeaderMap, String) {
    post_raw(
        server,
        &[bearer(token)],
        "application/x-www-form-urlencoded",
        form(pairs),
    )
    .await
}

/// Publishes and returns the update's id (checks 200).
async fn publish(server: &Server, token: &str, pairs: &[(&str, &str)]) -> String {
    let (status, _, body) = post(server, token, pairs).await;
    assert_eq!(status, 200, "publish {pairs:?} refused: {body}");
    body
}

/// Checks a refusal's status and JSON `error.code`.
fn refused(status: u16, body: &str, want: u16, code: &str) {
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_error(status, &json, want, code);
}

fn challenge(headers: &HeaderMap) -> String {
    headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn sub_url(server: &Server, query: &[(&str, &str)]) -> String {
    format!("{}?{}", hub_url(server), form(query))
}

/// Opens a subscription and checks it was accepted.
async fn subscribe(server: &Server, query: &[(&str, &str)], headers: &[(&str, String)]) -> Sse {
    let sse = Sse::connect(&sub_url(server, query), headers).await;
    assert_eq!(sse.status, 200, "subscription refused: {}", sse.error);
    sse
}

/// The next update (an event with an id).
async fn next_update(sse: &mut Sse) -> Ev {
    sse.take(1, ARRIVES).await.remove(0)
}

/// Reads a raw response body until it holds `until` or `wait` passes.
async fn raw_stream(url: &str, headers: &[(&str, String)], until: &str, wait: Duration) -> String {
    let mut req = http().get(url);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let res = req.send().await.expect("raw stream");
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut text = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while !String::from_utf8_lossy(&text).contains(until) {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => text.extend_from_slice(&chunk),
            _ => break,
        }
    }
    String::from_utf8(text).expect("the stream is UTF-8")
}

fn response_last_event_id(sse: &Sse) -> Option<String> {
    sse.headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn api_get(server: &Server, path: &str, token: &str) -> (u16, HeaderMap, Value) {
    get(&format!("{}{path}", server.url), &[bearer(token)]).await
}

/// Polls the subscriptions API until `ok` holds (the registry follows the log).
async fn api_until(server: &Server, path: &str, token: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        let (status, _, body) = api_get(server, path, token).await;
        if status == 200 && ok(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never matched: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next `n` subscription documents satisfying `keep` (others, e.g. the subscription events
/// of other watchers, are skipped).
async fn docs_where(sse: &mut Sse, n: usize, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let doc: Value = serde_json::from_str(&next_update(sse).await.data).expect("JSON-LD");
        if keep(&doc) {
            out.push(doc);
        }
    }
    out
}

/// A token reading the whole subscriptions namespace (events and API).
fn v8_subscriptions_reader() -> String {
    v8_sub(&[
        "/.well-known/mercure/subscriptions",
        "URLPattern:/.well-known/mercure/subscriptions/*",
    ])
}

// ---------------------------------------------------------------------------------------------
// Subscription

/// "The `GET` HTTP method MUST be used." "The hub MUST send these updates as
/// text/event-stream-compliant events." "events dispatched by the hub MUST include an `id`."
#[tokio::test]
async fn subscription_is_a_get_answered_with_an_event_stream_whose_events_have_ids() {
    let server = hub("anonymous = true");
    let res = http()
        .put(sub_url(&server, &[("match", BOOK1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 405, "only GET subscribes");

    let mut sse = subscribe(&server, &[("match", BOOK1)], &[]).await;
    let ct = sse.headers["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let id = publish(
        &server,
        &v8_publisher(),
        &[("topic", BOOK1), ("data", "v1")],
    )
    .await;
    assert!(
        id.starts_with("urn:uuid:"),
        "a generated id is an IRI: {id}"
    );
    let ev = next_update(&mut sse).await;
    assert_eq!((ev.id.as_str(), ev.data.as_str()), (id.as_str(), "v1"));
    assert_eq!(ev.event, "message", "no type: the default SSE event");
}

/// Exact: "exact, case-sensitive, byte-for-byte comparison … MUST NOT resolve relative values
/// … MUST NOT perform Unicode or IRI normalization." `match` and `matchExact` both select it.
#[tokio::test]
async fn exact_matcher_is_byte_for_byte_without_resolution_or_normalization() {
    let server = hub("anonymous = true");
    let publisher = v8_publisher();
    let mut a = subscribe(&server, &[("match", BOOK1)], &[]).await;
    let mut b = subscribe(&server, &[("matchExact", "/books/1")], &[]).await;
    for topic in [
        "https://example.com/Books/1",
        "https://EXAMPLE.com/books/1",
        "https://example.com/books/%31",
        "https://example.com/books/1/",
        "https://example.com/books/./1",
    ] {
        publish(&server, &publisher, &[("topic", topic)]).await;
    }
    // The relative matcher is not resolved: the absolute topic on the hub's host is another.
    publish(
        &server,
        &publisher,
        &[("topic", &format!("{}/books/1", server.url))],
    )
    .await;
    let id_a = publish(&server, &publisher, &[("topic", BOOK1), ("data", "a")]).await;
    let id_b = publish(&server, &publisher, &[("topic", "/books/1"), ("data", "b")]).await;
    assert_eq!(next_update(&mut a).await.id, id_a);
    assert_eq!(next_update(&mut b).await.id, id_b);
    a.expect_quiet(QUIET).await;
    b.expect_quiet(QUIET).await;

    // No Unicode normalization: NFC "é" and NFD "e\u{301}" are two topics.
    let mut nfc = subscribe(&server, &[("match", "https://example.com/caf\u{e9}")], &[]).await;
    publish(
        &server,
        &publisher,
        &[("topic", "https://example.com/cafe\u{301}")],
    )
    .await;
    nfc.expect_quiet(QUIET).await;
}

/// "The hub MUST support using URL patterns as matchers." "When evaluating a relative pattern
/// or a relative topic, the hub MUST use the hub's URL as the base URL." No `ignoreCase`.
#[tokio::test]
async fn urlpattern_matcher_selects_by_pattern_and_resolves_relative_against_the_hub() {
    let server = hub("anonymous = true");
    let publisher = v8_publisher();
    let mut abs = subscribe(
        &server,
        &[("matchURLPattern", "https://example.com/books/:id")],
        &[],
    )
    .await;
    let mut rel = subscribe(&server, &[("matchURLPattern", "/books/:id")], &[]).await;
    publish(
        &server,
        &publisher,
        &[("topic", "https://example.com/authors/1")],
    )
    .await;
    publish(
        &server,
        &publisher,
        &[("topic", "https://example.com/BOOKS/1")],
    )
    .await;
    publish(
        &server,
        &publisher,
        &[("topic", "https://example.com/books/1/x")],
    )
    .await;
    let b1 = publish(&server, &publisher, &[("topic", BOOK1)]).await;
    let r1 = publish(&server, &publisher, &[("topic", "/books/9")]).await;
    let r2 = publish(
        &server,
        &publisher,
        &[("topic", &format!("{}/books/3", server.url))],
    )
    .await;
    assert_eq!(ids(&abs.take(1, ARRIVES).await), vec![b1]);
    assert_eq!(ids(&rel.take(2, ARRIVES).await), vec![r1, r2]);
    abs.expect_quiet(QUIET).await;
    rel.expect_quiet(QUIET).await;
}

/// "A request MAY contain several such parameters, in any combination." "The subscriber
/// receives updates for all topics matching at least one topic matcher" (once each).
/// "The matcher value `*` is reserved as a wildcard that matches every topic."
#[tokio::test]
async fn several_matchers_select_the_union_once_and_star_selects_everything() {
    let server = hub("anonymous = true");
    let publisher = v8_publisher();
    let mut sse = subscribe(
        &server,
        &[
            ("match", BOOK1),
            ("matchURLPattern", "https://example.com/books/:id"),
            ("match", "bar"),
        ],
        &[],
    )
    .await;
    let mut star = subscribe(&server, &[("matchURLPattern", "*")], &[]).await;
    let mut star_exact = subscribe(&server, &[("match", "*")], &[]).await;
    let a = publish(&server, &publisher, &[("topic", BOOK1)]).await;
    let b = publish(&server, &publisher, &[("topic", "bar")]).await;
    let c = publish(&server, &publisher, &[("topic", BOOK2)]).await;
    let d = publish(&server, &publisher, &[("topic", "urn:other")]).await;
    assert_eq!(
        ids(&sse.take(3, ARRIVES).await),
        vec![a.clone(), b.clone(), c.clone()]
    );
    sse.expect_quiet(QUIET).await;
    let all = vec![a, b, c, d];
    assert_eq!(ids(&star.take(4, ARRIVES).await), all);
    assert_eq!(ids(&star_exact.take(4, ARRIVES).await), all);
}

/// "A request using a parameter name in the reserved `match` namespace … that does not
/// correspond to a matcher type … MUST be rejected with a 400." Names are case-sensitive.
/// No matcher at all is a 400 too.
#[tokio::test]
async fn unknown_names_in_the_match_namespace_and_missing_matchers_are_400() {
    let server = hub("anonymous = true");
    for name in [
        "matchurlpattern",
        "MATCH",
        "Match",
        "matchRegex",
        "matchType",
        "matches",
    ] {
        let sse = Sse::connect(&sub_url(&server, &[(name, BOOK1)]), &[]).await;
        assert_error(sse.status, &sse.error, 400, "invalid_request");
    }
    // Unrelated parameters outside the namespace are fine.
    let ok = Sse::connect(&sub_url(&server, &[("match", BOOK1), ("utm", "x")]), &[]).await;
    assert_eq!(ok.status, 200);
    let none = Sse::connect(&sub_url(&server, &[("utm", "x")]), &[]).await;
    assert_error(none.status, &none.error, 400, "missing_topic");
}

/// "The value of each topic matcher query parameter MUST be valid UTF-8 and MUST NOT contain
/// C0 or C1 control characters or U+007F. Requests violating this MUST be rejected with 400."
#[tokio::test]
async fn matcher_values_with_control_characters_or_bad_utf8_are_400() {
    let server = hub("anonymous = true");
    for raw in [
        "a%00b",
        "a%0Ab",
        "a%0D%0Aid:%20x",
        "a%1Fb",
        "a%7Fb",
        "a%C2%85b",
        "a%FFb",
    ] {
        for name in ["match", "matchURLPattern", "topic"] {
            let url = format!("{}?{name}={raw}", hub_url(&server));
            let sse = Sse::connect(&url, &[]).await;
            assert_eq!(sse.status, 400, "{name}={raw}: {}", sse.error);
        }
    }
}

/// "hubs SHOULD apply implementation-defined maximums to the number of topic matcher query
/// parameters … and to the length of each matcher's pattern. Requests exceeding any such limit
/// MUST be rejected with a 400."
#[tokio::test]
async fn too_many_or_too_long_matchers_are_400() {
    let server = hub("anonymous = true\nmax_matchers = 3\nmax_topic_bytes = 64");
    let many: Vec<(&str, &str)> = vec![
        ("match", "a"),
        ("match", "b"),
        ("match", "c"),
        ("match", "d"),
    ];
    let sse = Sse::connect(&sub_url(&server, &many), &[]).await;
    assert_error(sse.status, &sse.error, 400, "too_many_matchers");
    let long = "x".repeat(65);
    let sse = Sse::connect(&sub_url(&server, &[("match", &long)]), &[]).await;
    assert_eq!(sse.status, 400, "{}", sse.error);
    let sse = Sse::connect(&sub_url(&server, &many[..3]), &[]).await;
    assert_eq!(sse.status, 200, "at the limit is fine");
}

/// "All other properties defined in the Server-Sent Events specification MAY be used and MUST
/// be supported": `event` (from `type`), `retry`, multi-line `data`.
#[tokio::test]
async fn type_retry_and_multiline_data_become_sse_fields() {
    let server = hub("anonymous = true");
    let url = sub_url(&server, &[("match", BOOK1)]);
    let reader = tokio::spawn(async move { raw_stream(&url, &[], "data: end", ARRIVES).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = publish(
        &server,
        &v8_publisher(),
        &[
            ("topic", BOOK1),
            ("type", "book.updated"),
            ("retry", "1500"),
            ("id", "https://example.com/revisions/42"),
            ("data", "line 1\nline 2\r\nend"),
        ],
    )
    .await;
    assert_eq!(
        id, "https://example.com/revisions/42",
        "the publisher's id is honoured"
    );
    let text = reader.await.unwrap();
    assert!(
        text.contains(
            "id: https://example.com/revisions/42\nevent: book.updated\nretry: 1500\n\
             data: line 1\ndata: line 2\ndata: end\n\n"
        ),
        "{text:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Publication

/// "The request MUST be encoded using the application/x-www-form-urlencoded format."
#[tokio::test]
async fn publish_must_be_form_urlencoded() {
    let server = hub("");
    let tok = v8_publisher();
    for ct in [
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
    ] {
        let (status, _, body) =
            post_raw(&server, &[bearer(&tok)], ct, form(&[("topic", BOOK1)])).await;
        refused(status, &body, 415, "unsupported_media_type");
    }
    let (status, _, body) = post_raw(
        &server,
        &[bearer(&tok)],
        "application/x-www-form-urlencoded; charset=utf-8",
        form(&[("topic", BOOK1)]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// "This field MUST appear exactly once; a request carrying more than one `topic` field MUST be
/// rejected with a 400." (draft-08 tokens; draft-07 allows alternates, tested below.)
#[tokio::test]
async fn v8_publish_needs_exactly_one_topic() {
    let server = hub("");
    let tok = v8_publisher();
    let (status, _, body) = post(&server, &tok, &[("topic", BOOK1), ("topic", BOOK2)]).await;
    refused(status, &body, 400, "invalid_request");
    let (status, _, body) = post(&server, &tok, &[("data", "x")]).await;
    refused(status, &body, 400, "missing_topic");
}

/// "The topic MUST NOT address the reserved hub namespace … after being resolved as a URI
/// reference against the hub's URL, its path component is `/.well-known/mercure` or begins with
/// `/.well-known/mercure/`, regardless of scheme or authority … MUST reject … with a 403."
/// Attack: a publisher forging subscription events, relative or absolute on the hub's host.
#[tokio::test]
async fn publisher_cannot_forge_topics_in_the_reserved_namespace() {
    let server = hub("subscriptions = true");
    let tok = v8_publisher();
    let reader = v8(json!([detail(&["subscribe"], &["*"])]));
    let mut watcher = subscribe(&server, &[("match", "*")], &[bearer(&reader)]).await;
    // Authorized for everything, it first sees its own (genuine) subscription event.
    let own: Value = serde_json::from_str(&next_update(&mut watcher).await.data).unwrap();
    assert_eq!(
        (own["type"].as_str(), own["match"].as_str()),
        (Some("Subscription"), Some("*"))
    );
    let forged = [
        "/.well-known/mercure".to_owned(),
        "/.well-known/mercure/subscriptions/Exact/x/urn%3Auuid%3A1".to_owned(),
        format!("{}/.well-known/mercure/subscriptions/Exact/x/y", server.url),
        "https://elsewhere.example/.well-known/mercure/subscriptions/x/y".to_owned(),
        "/books/../.well-known/mercure/subscriptions/x/y".to_owned(),
        "//attacker.example/.well-known/mercure/x".to_owned(),
    ];
    for topic in &forged {
        let doc = json!({"id": topic, "type": "Subscription", "active": true}).to_string();
        let (status, _, body) = post(
            &server,
            &tok,
            &[("topic", topic), ("data", &doc), ("private", "on")],
        )
        .await;
        refused(status, &body, 403, "reserved_topic");
    }
    watcher.expect_quiet(QUIET).await;
    // Not the namespace: only a prefix of the segment.
    publish(&server, &tok, &[("topic", "/.well-known/mercurey")]).await;
    assert_eq!(next_update(&mut watcher).await.event, "message");
}

/// Topic strings "MUST be valid UTF-8 and MUST NOT contain C0 or C1 control characters or
/// U+007F"; `data` "MUST be valid UTF-8".
#[tokio::test]
async fn publish_rejects_control_characters_in_topics_and_bad_utf8() {
    let server = hub("");
    let tok = v8_publisher();
    for raw in [
        "a%0Ab",
        "a%0D%0Aevent:%20x",
        "a%00",
        "a%7F",
        "a%C2%80",
        "a%FF",
    ] {
        let (status, _, body) = post_raw(
            &server,
            &[bearer(&tok)],
            "application/x-www-form-urlencoded",
            format!("topic={raw}"),
        )
        .await;
        assert_eq!(status, 400, "topic={raw}: {body}");
    }
    let (status, _, body) = post_raw(
        &server,
        &[bearer(&tok)],
        "application/x-www-form-urlencoded",
        format!("topic={}&data=%FF%FE", enc(BOOK1)),
    )
    .await;
    refused(status, &body, 400, "invalid_request");
}

/// `id`: "MUST NOT start with the `#` character and MUST NOT contain LF, CR or NUL … The hub
/// MUST reject client-supplied IDs violating the character constraints above with a 400."
/// Also refused: `earliest` and ids of the hub's own form (they would alias cursors).
#[tokio::test]
async fn publish_rejects_ids_that_could_break_the_stream_or_alias_cursors() {
    let server = hub("anonymous = true");
    let tok = v8_publisher();
    let mut sse = subscribe(&server, &[("match", BOOK1)], &[]).await;
    let generated = publish(&server, &tok, &[("topic", BOOK2)]).await;
    for id in [
        "#1",
        "a\nb",
        "a\rb",
        "a\0b",
        "x\r\nevent: evil",
        "earliest",
        generated.as_str(),
    ] {
        let (status, _, body) = post(&server, &tok, &[("topic", BOOK1), ("id", id)]).await;
        refused(status, &body, 400, "invalid_id");
    }
    let (status, _, body) =
        post(&server, &tok, &[("topic", BOOK1), ("id", &"i".repeat(300))]).await;
    assert_eq!(status, 413, "{body}");
    sse.expect_quiet(QUIET).await;
}

/// `type` "MUST NOT contain U+000A or U+000D; hubs MUST reject violating values with a 400";
/// `retry` "MUST consist solely of ASCII digits … MUST reject violating values with a 400".
#[tokio::test]
async fn publish_rejects_crlf_types_and_non_digit_retries() {
    let server = hub("");
    let tok = v8_publisher();
    for t in ["a\nb", "a\rb", "x\r\ndata: injected"] {
        let (status, _, body) = post(&server, &tok, &[("topic", BOOK1), ("type", t)]).await;
        refused(status, &body, 400, "invalid_type");
    }
    // ssegate's own control-event names are not for publishers.
    let (status, _, body) = post(&server, &tok, &[("topic", BOOK1), ("type", "closing")]).await;
    refused(status, &body, 400, "invalid_type");
    for r in ["-1", "1.5", " 10", "10 ", "1e3", "0x10", "١٢"] {
        let (status, _, body) = post(&server, &tok, &[("topic", BOOK1), ("retry", r)]).await;
        refused(status, &body, 400, "invalid_retry");
    }
    publish(
        &server,
        &tok,
        &[("topic", BOOK1), ("retry", "0"), ("type", "ok")],
    )
    .await;
}

/// "On success, the hub MUST return a 2xx … the response body MUST be the `id` … Hubs SHOULD use
/// 200." "If omitted, the hub MUST generate a valid IRI."
#[tokio::test]
async fn publish_answers_200_text_plain_with_the_id() {
    let server = hub("");
    let tok = v8_publisher();
    let (status, headers, body) = post(&server, &tok, &[("topic", BOOK1)]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let hex = body.strip_prefix("urn:uuid:").expect("an urn:uuid IRI");
    assert_eq!(hex.len(), 36, "{body}");
    let (_, _, again) = post(&server, &tok, &[("topic", BOOK1)]).await;
    assert_ne!(body, again, "each update gets its own id");
    let (_, _, mine) = post(
        &server,
        &tok,
        &[("topic", BOOK1), ("id", "urn:isbn:0451450523")],
    )
    .await;
    assert_eq!(mine, "urn:isbn:0451450523");
}

/// "Requests exceeding any such limit MUST be rejected with a 413."
#[tokio::test]
async fn oversized_updates_are_413() {
    let server = hub("");
    let tok = v8_publisher();
    let big = "x".repeat(70_000);
    let (status, _, body) = post(&server, &tok, &[("topic", BOOK1), ("data", &big)]).await;
    assert_eq!(status, 413, "{body}");
    let (status, _, body) = post(
        &server,
        &tok,
        &[("topic", BOOK1), ("type", &"t".repeat(200))],
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let long_topic = format!("https://example.com/{}", "t".repeat(2048));
    let (status, _, body) = post(&server, &tok, &[("topic", &long_topic)]).await;
    assert_eq!(status, 413, "{body}");
    let huge = "x".repeat(400_000);
    let (status, _, body) = post(&server, &tok, &[("topic", BOOK1), ("data", &huge)]).await;
    assert_eq!(status, 413, "{body}");
}

/// `private`: "The presence of the field name marks the update as private regardless of its
/// value … hubs MUST NOT interpret the field's value."
#[tokio::test]
async fn private_is_its_presence_whatever_its_value() {
    let server = hub("anonymous = true");
    let tok = v8_publisher();
    let mut anon = subscribe(&server, &[("match", BOOK1)], &[]).await;
    let mut reader = subscribe(&server, &[("match", BOOK1)], &[bearer(&v8_sub(&[BOOK1]))]).await;
    let mut sent = Vec::new();
    for v in ["", "false", "0", "off", "on"] {
        sent.push(publish(&server, &tok, &[("topic", BOOK1), ("private", v)]).await);
    }
    // `private` without `=` at all.
    let (status, _, body) = post_raw(
        &server,
        &[bearer(&tok)],
        "application/x-www-form-urlencoded",
        format!("topic={}&private", enc(BOOK1)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    sent.push(body);
    anon.expect_quiet(QUIET).await;
    assert_eq!(ids(&reader.take(6, ARRIVES).await), sent);
}

/// A publisher repeating an `id` (a retry) is not dispatched twice; the answer is the same.
#[tokio::test]
async fn a_repeated_publisher_id_is_dispatched_once() {
    let server = hub("anonymous = true");
    let tok = v8_publisher();
    let mut sse = subscribe(&server, &[("match", BOOK1)], &[]).await;
    let pairs = [("topic", BOOK1), ("id", "urn:x:retry-1"), ("data", "once")];
    assert_eq!(publish(&server, &tok, &pairs).await, "urn:x:retry-1");
    assert_eq!(publish(&server, &tok, &pairs).await, "urn:x:retry-1");
    let marker = publish(&server, &tok, &[("topic", BOOK1), ("data", "after")]).await;
    let got = sse.take(2, ARRIVES).await;
    assert_eq!(ids(&got), vec!["urn:x:retry-1".to_owned(), marker]);
}

// ---------------------------------------------------------------------------------------------
// Authorization: presenting tokens, errors, validation

/// "publishers MUST present an access token." No token: "MUST return a 401 … with a
/// `WWW-Authenticate: Bearer` challenge and MUST NOT include an error code."
#[tokio::test]
async fn missing_token_is_401_with_a_bare_bearer_challenge() {
    let server = hub("");
    let (status, headers, body) = post_raw(
        &server,
        &[],
        "application/x-www-form-urlencoded",
        form(&[("topic", BOOK1)]),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let c = challenge(&headers);
    assert!(c.starts_with("Bearer"), "{c}");
    assert!(!c.contains("error="), "no error code without a token: {c}");
    // A hub that requires subscribers' tokens answers the same.
    let sse = Sse::connect(&sub_url(&server, &[("match", BOOK1)]), &[]).await;
    assert_eq!(sse.status, 401);
    assert!(!challenge(&sse.headers).contains("error="));
}

/// "If a token is presented but fails validation … the hub MUST return a 401 with
/// `error="invalid_token"`": wrong key, expired, not yet valid, `alg=none`, an HS token made
/// with another role's key, a foreign `typ`, garbage.
#[tokio::test]
async fn invalid_tokens_are_401_invalid_token() {
    let server = hub("leeway_s = 0");
    let claims = json!({"sub": "p", "exp": now() + 3600,
        "authorization_details": [detail(&["publish", "subscribe"], &["*"])]});
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt"})),
        b64(&claims)
    );
    let none7 = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"mercure": {"publish": ["*"], "subscribe": ["*"]}}))
    );
    let mut bad = vec![
        (
            "wrong key",
            sign("at+jwt", &claims, "another-secret-another-secret-0000"),
        ),
        ("alg none", none),
        ("alg none v7", none7),
        (
            "expired",
            v8_claims(
                json!({"exp": now() - 60, "authorization_details": [detail(&["publish", "subscribe"], &["*"])]}),
            ),
        ),
        (
            "expired v7",
            sign(
                "JWT",
                &json!({"exp": now() - 60, "mercure": {"publish": ["*"], "subscribe": ["*"]}}),
                MS,
            ),
        ),
        (
            "not yet valid",
            v8_claims(
                json!({"exp": now() + 7200, "nbf": now() + 3600, "authorization_details": [detail(&["publish", "subscribe"], &["*"])]}),
            ),
        ),
        ("foreign typ", sign("dpop+jwt", &claims, MS)),
        ("garbage", "abc.def.ghi".to_owned()),
    ];
    // Tampered payload, original signature.
    let good = v8(json!([detail(&["publish"], &[BOOK1])]));
    let parts: Vec<&str> = good.split('.').collect();
    bad.push((
        "tampered",
        format!("{}.{}.{}", parts[0], b64(&claims), parts[2]),
    ));
    for (what, tok) in &bad {
        let (status, headers, body) = post(&server, tok, &[("topic", BOOK1)]).await;
        refused(status, &body, 401, "invalid_token");
        assert!(
            challenge(&headers).contains(r#"error="invalid_token""#),
            "{what}: {}",
            challenge(&headers)
        );
        let sse = Sse::connect(&sub_url(&server, &[("match", BOOK1)]), &[bearer(tok)]).await;
        assert_eq!(sse.status, 401, "{what} subscribing");
    }
}

/// "If a valid token does not authorize the requested operation, the hub MUST return a 403
/// with `error="insufficient_scope"`." Publishers: "Otherwise the hub MUST NOT dispatch".
#[tokio::test]
async fn publishing_outside_the_grant_is_403_insufficient_scope_and_not_dispatched() {
    let server = hub("anonymous = true");
    let mut sse = subscribe(&server, &[("match", "*")], &[]).await;
    let tok = v8(json!([
        detail(&["publish"], &[BOOK1]),
        detail(&["subscribe"], &[BOOK2]),
    ]));
    for topic in [BOOK2, BOOK7] {
        let (status, headers, body) = post(&server, &tok, &[("topic", topic)]).await;
        refused(status, &body, 403, "insufficient_scope");
        assert!(challenge(&headers).contains(r#"error="insufficient_scope""#));
    }
    // A subscriber's token (subscribe only) cannot publish either.
    let (status, _, body) = post(&server, &v8_sub(&["*"]), &[("topic", BOOK1)]).await;
    refused(status, &body, 403, "insufficient_scope");
    sse.expect_quiet(QUIET).await;
    publish(&server, &tok, &[("topic", BOOK1)]).await;
    next_update(&mut sse).await;
}

/// "If the request is malformed, the hub MUST return a 400 with `error="invalid_request"`";
/// the header "MUST contain the string `Bearer` followed by a space character and the token."
#[tokio::test]
async fn malformed_authorization_is_400_invalid_request() {
    let server = hub("");
    for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "Token x.y.z"] {
        let (status, headers, body) = post_raw(
            &server,
            &[("authorization", value.to_owned())],
            "application/x-www-form-urlencoded",
            form(&[("topic", BOOK1)]),
        )
        .await;
        refused(status, &body, 400, "invalid_request");
        assert!(
            challenge(&headers).contains(r#"error="invalid_request""#),
            "{value}"
        );
    }
}

/// "the hub MUST select exactly one token using the following precedence …: the
/// `Authorization` header, then the `access_token` query parameter, then the cookie. The token
/// from the selected mechanism MUST be used and the others MUST be ignored."
#[tokio::test]
async fn token_precedence_is_header_then_query_then_cookie() {
    let server = hub("");
    let good = v8_sub(&[BOOK1]);
    let bad = sign(
        "at+jwt",
        &json!({"exp": now() + 60}),
        "not-the-hub-key-not-the-hub-key-00",
    );
    let url = |tok: &str| sub_url(&server, &[("match", BOOK1), ("access_token", tok)]);
    let cookie = |tok: &str| ("cookie", format!("mercureAccessToken={tok}"));

    // Header wins over query and cookie, whichever is valid.
    let s = Sse::connect(&url(&bad), &[bearer(&good), cookie(&bad)]).await;
    assert_eq!(s.status, 200, "{}", s.error);
    let s = Sse::connect(&url(&good), &[bearer(&bad), cookie(&good)]).await;
    assert_eq!(s.status, 401, "the header's (bad) token is the one used");
    // Query wins over cookie.
    let s = Sse::connect(&url(&good), &[cookie(&bad)]).await;
    assert_eq!(s.status, 200, "{}", s.error);
    let s = Sse::connect(&url(&bad), &[cookie(&good)]).await;
    assert_eq!(s.status, 401, "the query's (bad) token is the one used");
    // The cookie alone.
    let s = Sse::connect(&sub_url(&server, &[("match", BOOK1)]), &[cookie(&good)]).await;
    assert_eq!(s.status, 200, "{}", s.error);

    // The token actually used decides what is read: header grants BOOK1, query grants BOOK2.
    let publisher = v8_publisher();
    let q2 = v8_sub(&[BOOK2]);
    let mut s = subscribe(
        &server,
        &[("match", BOOK1), ("match", BOOK2), ("access_token", &q2)],
        &[bearer(&good)],
    )
    .await;
    publish(&server, &publisher, &[("topic", BOOK2), ("private", "on")]).await;
    let b1 = publish(&server, &publisher, &[("topic", BOOK1), ("private", "on")]).await;
    assert_eq!(next_update(&mut s).await.id, b1);
}

/// "Hubs MUST enforce the `exp` claim" and "MUST close the connection no later than the
/// token's `exp` time".
#[tokio::test]
async fn the_stream_closes_when_the_token_expires() {
    let server = hub("");
    for tok in [
        v8_claims(
            json!({"exp": now() + 2, "authorization_details": [detail(&["subscribe"], &[BOOK1])]}),
        ),
        sign(
            "JWT",
            &json!({"exp": now() + 2, "mercure": {"subscribe": [BOOK1]}}),
            MS,
        ),
    ] {
        let mut sse = subscribe(&server, &[("match", BOOK1)], &[bearer(&tok)]).await;
        sse.expect_end(Duration::from_secs(5)).await;
    }
}

/// RFC 9068: "Hubs MUST verify that the token header `typ` is `at+jwt`" — so a draft-08 token
/// must carry `exp` ("exp is required"); a draft-07 token (`typ: JWT`) without `exp` or `sub`
/// stays valid.
#[tokio::test]
async fn v8_tokens_need_exp_while_v7_tokens_need_neither_exp_nor_sub() {
    let server = hub("");
    let no_exp =
        v8_claims(json!({"sub": "p", "authorization_details": [detail(&["publish"], &["*"])]}));
    let (status, _, body) = post(&server, &no_exp, &[("topic", BOOK1)]).await;
    refused(status, &body, 401, "invalid_token");
    publish(&server, &v7(&[], &["*"]), &[("topic", BOOK1)]).await;
}

/// "Hubs MUST be configured with their resource identifier and MUST verify that it appears in
/// the token `aud` claim … a single string or an array of strings."
#[tokio::test]
async fn audience_is_checked_as_string_or_array_member() {
    let server = hub("audience = \"https://hub.example.com\"");
    let grants = json!([detail(&["publish"], &["*"])]);
    let with = |aud: Value| {
        v8_claims(json!({"exp": now() + 60, "aud": aud, "authorization_details": grants}))
    };
    publish(
        &server,
        &with(json!("https://hub.example.com")),
        &[("topic", BOOK1)],
    )
    .await;
    publish(
        &server,
        &with(json!(["x", "https://hub.example.com"])),
        &[("topic", BOOK1)],
    )
    .await;
    for tok in [
        with(json!("https://other.example.com")),
        with(json!(["x"])),
        v8_claims(json!({"exp": now() + 60, "authorization_details": grants})),
    ] {
        let (status, _, body) = post(&server, &tok, &[("topic", BOOK1)]).await;
        refused(status, &body, 401, "invalid_token");
    }
}

/// "Different keys SHOULD be used to sign subscribers' and publishers' tokens"; the hub "MUST NOT
/// allow the token to cause an unexpected key to be selected".
#[tokio::test]
async fn publisher_and_subscriber_keys_are_not_interchangeable() {
    let pk = "publisher-key-publisher-key-0123456789";
    let sk = "subscriber-key-subscriber-key-0123456789";
    let server = Server::start_with_config(
        &format!(
            "[mercure]\nenabled = true\npublisher_jwt_secret = \"{pk}\"\nsubscriber_jwt_secret = \"{sk}\"\n"
        ),
        &[],
    );
    let grants = json!({"exp": now() + 60, "authorization_details": [detail(&["publish", "subscribe"], &["*"])]});
    let by_pub = sign("at+jwt", &grants, pk);
    let by_sub = sign("at+jwt", &grants, sk);
    let (status, _, body) = post(&server, &by_sub, &[("topic", BOOK1)]).await;
    refused(status, &body, 401, "invalid_token");
    let s = Sse::connect(&sub_url(&server, &[("match", BOOK1)]), &[bearer(&by_pub)]).await;
    assert_eq!(s.status, 401);
    let mut s = subscribe(&server, &[("match", BOOK1)], &[bearer(&by_sub)]).await;
    let id = publish(&server, &by_pub, &[("topic", BOOK1), ("private", "")]).await;
    assert_eq!(next_update(&mut s).await.id, id);
}

/// Public-key tokens (the allowlist "SHOULD include … ES256"), and "MUST verify that `alg` is
/// compatible with the key": an HS256 token keyed with the public key's PEM is refused.
#[tokio::test]
async fn es256_publisher_key_and_no_algorithm_confusion() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let public = dir.path().join("pub.pem");
    let run = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl {args:?}");
    };
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        key.to_str().unwrap(),
    ]);
    run(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let server = Server::start_with_config(
        &format!(
            "[mercure]\nenabled = true\nsubscriber_jwt_secret = \"{MS}\"\npublisher_public_key_file = \"{}\"\n",
            public.display()
        ),
        &[],
    );
    let claims =
        json!({"exp": now() + 60, "authorization_details": [detail(&["publish"], &["*"])]});
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some("at+jwt".into());
    let pem = std::fs::read(&key).unwrap();
    let es = encode(&header, &claims, &EncodingKey::from_ec_pem(&pem).unwrap()).unwrap();
    publish(&server, &es, &[("topic", BOOK1)]).await;

    let public_pem = std::fs::read(&public).unwrap();
    let mut hs = Header::new(Algorithm::HS256);
    hs.typ = Some("at+jwt".into());
    let confused = encode(&hs, &claims, &EncodingKey::from_secret(&public_pem)).unwrap();
    let (status, _, body) = post(&server, &confused, &[("topic", BOOK1)]).await;
    refused(status, &body, 401, "invalid_token");
    let (status, _, body) = post(&server, &sign("at+jwt", &claims, MS), &[("topic", BOOK1)]).await;
    refused(status, &body, 401, "invalid_token");
}

// ---------------------------------------------------------------------------------------------
// Authorization details, publishers, subscribers

/// "If any `mercure` authorization detail fails to parse or validate … the hub MUST reject the
/// token the same way and MUST NOT act on the basis of the remaining entries." Topic matcher
/// objects "MUST be a JSON object with a `match` property"; `matchType` "MUST be either `Exact`
/// or `URLPattern`" (case-sensitive); `actions` a non-empty subset of publish/subscribe.
#[tokio::test]
async fn one_bad_authorization_detail_invalidates_the_whole_token() {
    let server = hub("");
    let good = detail(&["publish"], &[BOOK1]);
    let bad_entries = [
        json!({"type": "mercure", "actions": ["publish"], "topics": [{"match": BOOK1, "matchType": "Regex"}]}),
        json!({"type": "mercure", "actions": ["publish"], "topics": [{"match": BOOK1, "matchType": "exact"}]}),
        json!({"type": "mercure", "actions": ["publish"], "topics": [BOOK1]}),
        json!({"type": "mercure", "actions": ["publish"], "topics": []}),
        json!({"type": "mercure", "actions": [], "topics": [{"match": BOOK1}]}),
        json!({"type": "mercure", "actions": ["delete"], "topics": [{"match": BOOK1}]}),
        json!({"type": "mercure", "topics": [{"match": BOOK1}]}),
        json!({"type": "mercure", "actions": ["publish"], "topics": [{"matchType": "Exact"}]}),
    ];
    for entry in bad_entries {
        let tok = v8(json!([good.clone(), entry.clone()]));
        let (status, headers, body) = post(&server, &tok, &[("topic", BOOK1)]).await;
        refused(status, &body, 401, "invalid_token");
        assert!(challenge(&headers).contains("invalid_token"), "{entry}");
    }
    publish(&server, &v8(json!([good])), &[("topic", BOOK1)]).await;
}

/// "Tokens exceeding any such limit MUST be rejected as invalid tokens, with a 401."
#[tokio::test]
async fn tokens_over_the_matcher_limits_are_invalid() {
    let server = hub("max_matchers = 2\nmax_topic_bytes = 64");
    let three = v8(json!([detail(&["publish"], &["a", "b", "c"])]));
    let long = v8(json!([detail(&["publish"], &[&"x".repeat(65)])]));
    for tok in [three, long] {
        let (status, _, body) = post(&server, &tok, &[("topic", "a")]).await;
        refused(status, &body, 401, "invalid_token");
    }
}

/// "If no `matchType` key is present, the hub MUST assume the `Exact` matcher type. A `match`
/// value of `*` … matches every topic regardless of `matchType`." "Tokens with no `mercure`
/// authorization detail grant no publish or subscribe rights."
#[tokio::test]
async fn detail_matchers_default_to_exact_star_is_everything_and_other_types_grant_nothing() {
    let server = hub("");
    let exact = v8(json!([detail(
        &["publish"],
        &["https://example.com/books/:id"]
    )]));
    let (status, _, body) = post(&server, &exact, &[("topic", BOOK1)]).await;
    refused(status, &body, 403, "insufficient_scope");
    publish(
        &server,
        &exact,
        &[("topic", "https://example.com/books/:id")],
    )
    .await;
    let pattern = v8(json!([detail(
        &["publish"],
        &["URLPattern:https://example.com/books/:id"]
    )]));
    publish(&server, &pattern, &[("topic", BOOK1)]).await;
    for star in [
        json!({"match": "*"}),
        json!({"match": "*", "matchType": "Exact"}),
        json!({"match": "*", "matchType": "URLPattern"}),
    ] {
        let tok = v8(json!([{"type": "mercure", "actions": ["publish"], "topics": [star]}]));
        publish(&server, &tok, &[("topic", "urn:anything")]).await;
    }
    let foreign =
        v8(json!([{"type": "payment", "actions": ["publish"], "topics": [{"match": "*"}]}]));
    let (status, _, body) = post(&server, &foreign, &[("topic", BOOK1)]).await;
    refused(status, &body, 403, "insufficient_scope");
}

/// Subscribers: "If the token does not grant `subscribe` on that topic, the hub MUST NOT
/// deliver the update." "The subscriber's routing matchers … never widen what it may read."
/// (The spec's own books/1, books/7 example.)
#[tokio::test]
async fn routing_matchers_never_widen_what_a_token_may_read() {
    let server = hub("anonymous = true");
    let publisher = v8_publisher();
    let mut sse = subscribe(
        &server,
        &[("matchURLPattern", "https://example.com/books/:id")],
        &[bearer(&v8_sub(&[BOOK1, BOOK7]))],
    )
    .await;
    let mut anon = subscribe(&server, &[("matchURLPattern", "*")], &[]).await;
    let p2 = publish(&server, &publisher, &[("topic", BOOK2), ("private", "on")]).await;
    let p1 = publish(&server, &publisher, &[("topic", BOOK1), ("private", "on")]).await;
    let pub2 = publish(&server, &publisher, &[("topic", BOOK2)]).await;
    let got = ids(&sse.take(2, ARRIVES).await);
    assert_eq!(got, vec![p1, pub2.clone()]);
    assert!(!got.contains(&p2));
    // "Hubs MAY accept unauthenticated subscribers; such subscribers receive only updates that
    // are not marked as private."
    assert_eq!(ids(&anon.take(1, ARRIVES).await), vec![pub2]);
    anon.expect_quiet(QUIET).await;
}

/// A token that only publishes, or only subscribes to another topic, reads no private update.
#[tokio::test]
async fn a_publish_grant_does_not_read_private_updates() {
    let server = hub("");
    let publisher = v8_publisher();
    let tok = v8(json!([
        detail(&["publish"], &[BOOK1]),
        detail(&["subscribe"], &[BOOK2])
    ]));
    let mut sse = subscribe(&server, &[("match", BOOK1)], &[bearer(&tok)]).await;
    publish(&server, &publisher, &[("topic", BOOK1), ("private", "on")]).await;
    sse.expect_quiet(QUIET).await;
}

// ---------------------------------------------------------------------------------------------
// Reconnection and state reconciliation

async fn three(server: &Server) -> (String, String, String) {
    let tok = v8_publisher();
    let a = publish(server, &tok, &[("topic", BOOK1), ("data", "a")]).await;
    let b = publish(server, &tok, &[("topic", BOOK1), ("data", "b")]).await;
    let c = publish(server, &tok, &[("topic", BOOK1), ("data", "c")]).await;
    (a, b, c)
}

/// "the hub SHOULD send all events published after the one bearing this identifier"; "When the
/// request contains a `Last-Event-ID` … the hub MUST set a `Last-Event-ID` header on the
/// response" (the requested id when visible).
#[tokio::test]
async fn last_event_id_header_replays_what_followed_and_is_echoed() {
    let server = hub("anonymous = true");
    let (a, b, c) = three(&server).await;
    let mut sse = subscribe(&server, &[("match", BOOK1)], &[last_event_id(&a)]).await;
    assert_eq!(response_last_event_id(&sse).as_deref(), Some(a.as_str()));
    assert_eq!(ids(&sse.take(2, ARRIVES).await), vec![b, c.clone()]);
    let d = publish(&server, &v8_publisher(), &[("topic", BOOK1)]).await;
    assert_eq!(ids(&sse.take(1, ARRIVES).await), vec![d]);
    // Without a Last-Event-ID: live only, and no header.
    let mut live = subscribe(&server, &[("match", BOOK1)], &[]).await;
    assert_eq!(response_last_event_id(&live), None);
    live.expect_quiet(QUIET).await;
    let _ = c;
}

/// "the hub MUST also accept the last event ID in a query parameter named `lastEventID`."
/// "If both … are present, the HTTP header MUST take precedence."
#[tokio::test]
async fn last_event_id_query_works_and_the_header_wins() {
    let server = hub("anonymous = true");
    let (a, b, c) = three(&server).await;
    let mut q = subscribe(&server, &[("match", BOOK1), ("lastEventID", &a)], &[]).await;
    assert_eq!(response_last_event_id(&q).as_deref(), Some(a.as_str()));
    assert_eq!(ids(&q.take(2, ARRIVES).await), vec![b.clone(), c.clone()]);
    let mut both = subscribe(
        &server,
        &[("match", BOOK1), ("lastEventID", &a)],
        &[last_event_id(&b)],
    )
    .await;
    assert_eq!(response_last_event_id(&both).as_deref(), Some(b.as_str()));
    assert_eq!(ids(&both.take(1, ARRIVES).await), vec![c]);
    both.expect_quiet(QUIET).await;
}

/// "The reserved value `earliest` requests that the hub send all updates it has"; the answer is
/// `earliest` "when the requested event does not exist or has been discarded".
#[tokio::test]
async fn earliest_and_unknown_ids_replay_everything_and_answer_earliest() {
    let server = hub("anonymous = true");
    let (a, b, c) = three(&server).await;
    for requested in [
        "earliest",
        "urn:uuid:00000000-0000-4000-8000-000000000000",
        "never-published",
    ] {
        let mut sse = subscribe(&server, &[("match", BOOK1)], &[last_event_id(requested)]).await;
        assert_eq!(
            response_last_event_id(&sse).as_deref(),
            Some("earliest"),
            "{requested}"
        );
        assert_eq!(
            ids(&sse.take(3, ARRIVES).await),
            vec![a.clone(), b.clone(), c.clone()]
        );
    }
}

/// "the hub MUST re-evaluate each candidate replayed event against the current access token …
/// private events the token does not authorize MUST NOT be dispatched, regardless of any
/// authorization that may have applied at publication time." Attack: the scope shrinks between
/// the first connection and the resume; anonymous resume with `earliest`.
#[tokio::test]
async fn replay_rechecks_private_updates_against_the_current_token() {
    let server = hub("anonymous = true");
    let publisher = v8_publisher();
    let wide = v8_sub(&[BOOK1, BOOK2]);
    let narrow = v8_sub(&[BOOK2]);
    let q = [("matchURLPattern", "https://example.com/books/:id")];
    let mut first = subscribe(&server, &q, &[bearer(&wide)]).await;
    let m0 = publish(&server, &publisher, &[("topic", BOOK2), ("data", "m0")]).await;
    let secret = publish(
        &server,
        &publisher,
        &[("topic", BOOK1), ("private", "on"), ("data", "secret")],
    )
    .await;
    let m1 = publish(&server, &publisher, &[("topic", BOOK2), ("data", "m1")]).await;
    assert_eq!(
        ids(&first.take(3, ARRIVES).await),
        vec![m0.clone(), secret.clone(), m1.clone()]
    );
    drop(first);

    let mut resumed = subscribe(&server, &q, &[bearer(&narrow), last_event_id(&m0)]).await;
    assert_eq!(ids(&resumed.take(1, ARRIVES).await), vec![m1.clone()]);
    resumed.expect_quiet(QUIET).await;

    for headers in [
        vec![bearer(&narrow), last_event_id("earliest")],
        vec![last_event_id("earliest")],
    ] {
        let mut sse = subscribe(&server, &q, &headers).await;
        let got = ids(&sse.take(2, ARRIVES).await);
        assert_eq!(got, vec![m0.clone(), m1.clone()]);
        sse.expect_quiet(QUIET).await;
    }
    // Also with the topic chosen explicitly, and with lastEventID in the query.
    let mut direct = subscribe(
        &server,
        &[("match", BOOK1), ("lastEventID", "earliest")],
        &[],
    )
    .await;
    direct.expect_quiet(QUIET).await;
}

/// "The hub MUST NOT disclose, via this header, the identifier of any event the subscriber is
/// not authorized to receive."
#[tokio::test]
async fn the_answered_last_event_id_never_names_an_unreadable_event() {
    let server = hub("anonymous = true");
    let publisher = v8_publisher();
    let secret = publish(
        &server,
        &publisher,
        &[("topic", BOOK1), ("private", "on"), ("id", "urn:secret:1")],
    )
    .await;
    let after = publish(&server, &publisher, &[("topic", BOOK1)]).await;
    for headers in [
        vec![last_event_id(&secret)],
        vec![bearer(&v8_sub(&[BOOK2])), last_event_id(&secret)],
    ] {
        let mut sse = subscribe(&server, &[("match", BOOK1)], &headers).await;
        assert_eq!(response_last_event_id(&sse).as_deref(), Some("earliest"));
        assert_eq!(ids(&sse.take(1, ARRIVES).await), vec![after.clone()]);
    }
    let reader = v8_sub(&[BOOK1]);
    let sse = subscribe(
        &server,
        &[("match", BOOK1)],
        &[bearer(&reader), last_event_id(&secret)],
    )
    .await;
    assert_eq!(
        response_last_event_id(&sse).as_deref(),
        Some(secret.as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// Attacker cases: hostile bytes

/// SSE field injection: data holding CR, LF, CRLF and text that looks like fields must stay
/// `data:` lines of one event (a lone CR ends a line for SSE parsers too).
#[tokio::test]
async fn data_with_cr_lf_cannot_inject_sse_fields() {
    let server = hub("anonymous = true");
    let url = sub_url(&server, &[("match", BOOK1)]);
    let raw = tokio::spawn({
        let url = url.clone();
        async move { raw_stream(&url, &[], "data: tail", ARRIVES).await }
    });
    let mut sse = subscribe(&server, &[("match", BOOK1)], &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hostile = "head\rid: evil\revent: evil\r\nretry: 1\n\nid: evil2\rdata: x\r\r: c\u{0}\rtail";
    let id = publish(
        &server,
        &v8_publisher(),
        &[("topic", BOOK1), ("data", hostile)],
    )
    .await;
    let text = raw.await.unwrap();
    let frames: Vec<&str> = text.split("\n\n").filter(|f| f.contains("data:")).collect();
    assert_eq!(frames.len(), 1, "exactly one event frame: {text:?}");
    for line in frames[0].lines() {
        assert!(
            line.starts_with("data: ") || line == format!("id: {id}"),
            "an extra field: {line:?} in {text:?}"
        );
        assert!(!line.contains('\r'));
    }
    let ev = next_update(&mut sse).await;
    assert_eq!(ev.id, id);
    assert_eq!(ev.event, "message");
    assert_eq!(
        ev.data,
        "head\nid: evil\nevent: evil\nretry: 1\n\nid: evil2\ndata: x\n\n: c\u{0}\ntail"
    );
    sse.expect_quiet(QUIET).await;
}

/// Hostile bytes in topics, ids and types are refused before they reach a stream, and what is
/// accepted (spaces, colons, Unicode, `%0A` as text) is framed harmlessly.
#[tokio::test]
async fn hostile_topics_ids_and_types_never_add_sse_fields() {
    let server = hub("anonymous = true");
    let tok = v8_publisher();
    let url = sub_url(&server, &[("match", "*")]);
    let raw = tokio::spawn(async move { raw_stream(&url, &[], "data: done", ARRIVES).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (field, value) in [
        ("topic", "t\nevent: x"),
        ("topic", "t\u{85}"),
        ("id", "i\r\ndata: x"),
        ("id", "i\0"),
        ("type", "y\rid: x"),
        ("type", "y\ndata: x"),
    ] {
        let mut pairs = vec![("topic", BOOK1), (field, value)];
        if field == "topic" {
            pairs.remove(0);
        }
        let (status, _, body) = post(&server, &tok, &pairs).await;
        assert_eq!(status, 400, "{field}={value:?}: {body}");
    }
    // Accepted but odd: an id and type with spaces, colons, `%0A` text and Unicode.
    let id = publish(
        &server,
        &tok,
        &[
            ("topic", "urn:t:%0A:é"),
            ("id", "id: with %0D%0A and \u{2028}"),
            ("type", "type: x \u{2029}"),
            ("data", "done"),
        ],
    )
    .await;
    let text = raw.await.unwrap();
    let frames: Vec<&str> = text.split("\n\n").filter(|f| f.contains("data:")).collect();
    assert_eq!(frames.len(), 1, "only the accepted update: {text:?}");
    assert_eq!(
        frames[0],
        format!("id: {id}\nevent: type: x \u{2029}\ndata: done"),
        "{text:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Active subscriptions and payloads

/// "it MUST publish an update every time a subscription is created or terminated"; topic
/// `/.well-known/mercure/subscriptions/{matchType}/{match}/{subscriber}` with each variable
/// "percent-encoded exactly once"; a JSON-LD document with `@context`, `id` (= topic), `type`
/// Subscription, `matchType`, `match`, `subscriber`, `active`; "MUST be marked as private".
#[tokio::test]
async fn subscription_events_on_create_and_terminate_with_the_spec_shape() {
    let server = hub("anonymous = true\nsubscriptions = true");
    let pattern = "/.well-known/mercure/subscriptions/:type/:match/:subscriber";
    let mut watcher = subscribe(
        &server,
        &[("matchURLPattern", pattern)],
        &[bearer(&v8_subscriptions_reader())],
    )
    .await;
    let mut anon_watcher = subscribe(&server, &[("matchURLPattern", pattern)], &[]).await;
    let mut star_watcher = subscribe(&server, &[("match", "*")], &[]).await;
    // Already encoded characters are encoded again, once: `%2F` → `%252F`.
    let odd = "https://example.com/a b/%2F?x=1#f";
    let subscriber = subscribe(
        &server,
        &[
            ("match", odd),
            ("matchURLPattern", "https://example.com/:selector"),
        ],
        &[],
    )
    .await;
    let sel = "https://example.com/:selector";
    let created = docs_where(&mut watcher, 2, |d| d["match"] == odd || d["match"] == sel).await;
    let exact = created
        .iter()
        .find(|d| d["matchType"] == "Exact")
        .expect("Exact");
    let pat = created
        .iter()
        .find(|d| d["matchType"] == "URLPattern")
        .expect("URLPattern");
    let who = exact["subscriber"].as_str().unwrap().to_owned();
    assert!(who.starts_with("urn:uuid:"), "{who}");
    assert_eq!(
        pat["subscriber"],
        who.as_str(),
        "one subscriber id per connection"
    );
    assert_eq!(exact["@context"], "https://mercure.rocks/");
    assert_eq!(exact["type"], "Subscription");
    assert_eq!(exact["match"], odd);
    assert_eq!(exact["active"], true);
    assert_eq!(
        exact["id"],
        format!(
            "/.well-known/mercure/subscriptions/Exact/{}/{}",
            enc(odd),
            enc(&who)
        )
    );
    assert!(exact["id"].as_str().unwrap().contains("%252F"));
    assert_eq!(
        pat["id"],
        format!(
            "/.well-known/mercure/subscriptions/URLPattern/{}/{}",
            enc("https://example.com/:selector"),
            enc(&who)
        )
    );
    drop(subscriber);
    let ended = docs_where(&mut watcher, 2, |d| d["subscriber"] == who.as_str()).await;
    assert!(ended
        .iter()
        .all(|d| d["active"] == false && d["subscriber"] == who.as_str()));
    // Private: no anonymous subscriber sees them, not even with `*`.
    anon_watcher.expect_quiet(QUIET).await;
    star_watcher.expect_quiet(Duration::from_millis(100)).await;
}

/// "The hub MUST ensure that the identifier is unique among active subscriptions."
#[tokio::test]
async fn subscriber_ids_are_unique_and_not_client_controlled() {
    let server = hub("anonymous = true\nsubscriptions = true");
    let reader = v8_subscriptions_reader();
    let tok = v8_sub(&[BOOK1]);
    let _a = subscribe(
        &server,
        &[("match", BOOK1), ("subscriber", "urn:me")],
        &[bearer(&tok)],
    )
    .await;
    let _b = subscribe(
        &server,
        &[("match", BOOK1)],
        &[bearer(&tok), ("x-subscriber", "urn:me".into())],
    )
    .await;
    let path = format!("/.well-known/mercure/subscriptions/Exact/{}", enc(BOOK1));
    let body = api_until(&server, &path, &reader, |b| {
        b["subscriptions"].as_array().is_some_and(|s| s.len() == 2)
    })
    .await;
    let subs: Vec<&str> = body["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subscriber"].as_str().unwrap())
        .collect();
    assert_ne!(subs[0], subs[1]);
    assert!(subs.iter().all(|s| *s != "urn:me"));
}

/// Subscription API: endpoints `/subscriptions`, `/{matchType}/{match}`,
/// `/{matchType}/{match}/{subscriber}`; "MUST set the Content-Type HTTP header to
/// application/ld+json"; collections have `@context`, `id`, `type` Subscriptions,
/// `subscriptions`; "all endpoints MUST set the `lastEventID` property"; unknown single → 404;
/// clients "MUST be authorized" (403 otherwise, 401 without a token).
#[tokio::test]
async fn subscription_api_shapes_authorization_and_404() {
    let server = hub("subscriptions = true");
    let reader = v8_subscriptions_reader();
    let _sub = subscribe(&server, &[("match", BOOK1)], &[bearer(&v8_sub(&[BOOK1]))]).await;
    let root = "/.well-known/mercure/subscriptions";
    let body = api_until(&server, root, &reader, |b| {
        b["subscriptions"].as_array().is_some_and(|s| !s.is_empty())
    })
    .await;
    assert_eq!(body["@context"], "https://mercure.rocks/");
    assert_eq!(body["id"], root);
    assert_eq!(body["type"], "Subscriptions");
    assert!(body["lastEventID"].as_str().is_some_and(|s| !s.is_empty()));
    let one = body["subscriptions"][0].clone();
    let id = one["id"].as_str().unwrap().to_owned();

    let by_match = format!("{root}/Exact/{}", enc(BOOK1));
    let (status, headers, coll) = api_get(&server, &by_match, &reader).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/ld+json");
    assert_eq!(coll["id"], by_match);
    assert_eq!(coll["subscriptions"][0]["id"], id.as_str());

    let (status, _, single) = api_get(&server, &id, &reader).await;
    assert_eq!(status, 200);
    assert_eq!(single["type"], "Subscription");
    assert_eq!(single["match"], BOOK1);
    assert!(single["lastEventID"].is_string());

    let (status, _, _) = api_get(
        &server,
        &format!("{by_match}/{}", enc("urn:uuid:nobody")),
        &reader,
    )
    .await;
    assert_eq!(status, 404);

    // Authorized per path: a token for another matcher's subscriptions only.
    let other = v8_sub(&[&format!("URLPattern:{root}/Exact/{}/*", enc(BOOK2))]);
    let (status, headers, body) = api_get(&server, &id, &other).await;
    assert_error(status, &body, 403, "insufficient_scope");
    assert!(challenge(&headers).contains("insufficient_scope"));
    let (status, _, _) = api_get(&server, root, &other).await;
    assert_eq!(status, 403);
    let (status, _, _) = get(&format!("{}{root}", server.url), &[]).await;
    assert_eq!(status, 401);
}

/// "The payload of the first `subscribe` authorization detail whose `topics` matches the
/// subscription's own matcher MUST be included under the `payload` key … both in the
/// subscription API and in subscription events." (The spec's three-detail example.)
#[tokio::test]
async fn payload_of_the_first_matching_subscribe_detail_is_shown() {
    let server = hub("subscriptions = true");
    let reader = v8_subscriptions_reader();
    let mut watcher = subscribe(
        &server,
        &[(
            "matchURLPattern",
            "/.well-known/mercure/subscriptions/Exact/:m/:s",
        )],
        &[bearer(&reader)],
    )
    .await;
    let mut d1 = detail(&["subscribe"], &["https://example.com/foo"]);
    d1["payload"] = json!({"custom1": "data only available for this topic"});
    let mut d2 = detail(&["subscribe"], &["URLPattern:https://example.com/bar/:id"]);
    d2["payload"] = json!({"custom2": "data available for matching subscriptions"});
    let mut d3 = detail(&["subscribe"], &["*"]);
    d3["payload"] = json!({"custom3": "default data for all other subscriptions"});
    let tok = v8(json!([d1, d2, d3]));
    let _s = subscribe(
        &server,
        &[
            ("match", "https://example.com/foo"),
            ("matchURLPattern", "https://example.com/bar/:id"),
            ("match", "https://example.com/other"),
        ],
        &[bearer(&tok)],
    )
    .await;
    let root = "/.well-known/mercure/subscriptions";
    let body = api_until(&server, root, &reader, |b| {
        b["subscriptions"].as_array().is_some_and(|s| s.len() >= 4)
    })
    .await;
    let payload_of = |m: &str| {
        body["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["match"] == m)
            .map(|s| s["payload"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        payload_of("https://example.com/foo"),
        json!({"custom1": "data only available for this topic"})
    );
    assert_eq!(
        payload_of("https://example.com/bar/:id"),
        json!({"custom2": "data available for matching subscriptions"})
    );
    assert_eq!(
        payload_of("https://example.com/other"),
        json!({"custom3": "default data for all other subscriptions"})
    );
    // The Exact subscription events carry them too.
    let foo = docs_where(&mut watcher, 1, |d| d["match"] == "https://example.com/foo")
        .await
        .remove(0);
    assert_eq!(
        foo["payload"]["custom1"],
        "data only available for this topic"
    );
}

/// "The web API MUST expose …" only when enabled: a hub without the feature answers 404.
#[tokio::test]
async fn subscription_api_is_absent_when_the_feature_is_off() {
    let server = hub("");
    let (status, _, _) = api_get(
        &server,
        "/.well-known/mercure/subscriptions",
        &v8_sub(&["*"]),
    )
    .await;
    assert_eq!(status, 404);
}

// ---------------------------------------------------------------------------------------------
// draft-07 generation

/// draft-07: `topic=` selectors are exact topics, RFC 6570 URI templates or `*`.
#[tokio::test]
async fn v7_topic_selectors_exact_template_and_star() {
    let server = hub("anonymous = true");
    let tok = v7(&[], &["*"]);
    let mut exact = subscribe(&server, &[("topic", BOOK1)], &[]).await;
    let mut template =
        subscribe(&server, &[("topic", "https://example.com/books/{id}")], &[]).await;
    let mut star = subscribe(&server, &[("topic", "*")], &[]).await;
    let a = publish(&server, &tok, &[("topic", BOOK1)]).await;
    let b = publish(
        &server,
        &tok,
        &[("topic", "https://example.com/books/1/reviews")],
    )
    .await;
    let c = publish(&server, &tok, &[("topic", BOOK2)]).await;
    assert_eq!(ids(&exact.take(1, ARRIVES).await), vec![a.clone()]);
    assert_eq!(
        ids(&template.take(2, ARRIVES).await),
        vec![a.clone(), c.clone()]
    );
    assert_eq!(ids(&star.take(3, ARRIVES).await), vec![a, b, c]);
    exact.expect_quiet(QUIET).await;
    template.expect_quiet(Duration::from_millis(100)).await;
}

/// draft-07: several `topic` fields per update — the first canonical, the others alternate;
/// a subscriber of any of them receives the update once; the publisher needs every topic.
#[tokio::test]
async fn v7_alternate_topics_deliver_once_and_need_every_publish_grant() {
    let server = hub("anonymous = true");
    let canon = "https://example.com/books/1";
    let alt = "https://example.com/authors/9/books/1";
    let tok = v7(&[], &["https://example.com/{+rest}"]);
    let mut by_canon = subscribe(&server, &[("topic", canon)], &[]).await;
    let mut by_alt = subscribe(&server, &[("topic", alt)], &[]).await;
    let mut by_both = subscribe(&server, &[("topic", canon), ("topic", alt)], &[]).await;
    let id = publish(
        &server,
        &tok,
        &[("topic", canon), ("topic", alt), ("data", "x")],
    )
    .await;
    for sse in [&mut by_canon, &mut by_alt, &mut by_both] {
        assert_eq!(ids(&sse.take(1, ARRIVES).await), vec![id.clone()]);
        sse.expect_quiet(Duration::from_millis(150)).await;
    }
    let narrow = v7(&[], &[canon]);
    let (status, _, body) = post(&server, &narrow, &[("topic", canon), ("topic", alt)]).await;
    refused(status, &body, 403, "insufficient_scope");
}

/// draft-07: a private update reaches a subscriber whose `mercure.subscribe` selectors match
/// one of its topics (canonical or alternate), never the others, live and on replay.
#[tokio::test]
async fn v7_private_updates_follow_the_subscribe_claim_live_and_on_replay() {
    let server = hub("anonymous = true");
    let canon = BOOK1;
    let alt = "https://example.com/users/dunglas/books/1";
    let publisher = v7(&[], &["*"]);
    let reader = v7(&["https://example.com/users/dunglas/{+any}"], &[]);
    let other = v7(&[BOOK2], &[]);
    let mut ok = subscribe(&server, &[("topic", canon)], &[bearer(&reader)]).await;
    let mut no = subscribe(&server, &[("topic", canon)], &[bearer(&other)]).await;
    let mut anon = subscribe(&server, &[("topic", "*")], &[]).await;
    let id = publish(
        &server,
        &publisher,
        &[("topic", canon), ("topic", alt), ("private", "on")],
    )
    .await;
    assert_eq!(ids(&ok.take(1, ARRIVES).await), vec![id.clone()]);
    no.expect_quiet(QUIET).await;
    anon.expect_quiet(Duration::from_millis(100)).await;
    let mut replay_no = subscribe(
        &server,
        &[("topic", "*")],
        &[bearer(&other), last_event_id("earliest")],
    )
    .await;
    replay_no.expect_quiet(QUIET).await;
    let mut replay_ok = subscribe(
        &server,
        &[("topic", "*")],
        &[bearer(&reader), last_event_id("earliest")],
    )
    .await;
    assert_eq!(ids(&replay_ok.take(1, ARRIVES).await), vec![id]);
}

/// draft-07 token places: cookie `mercureAuthorization`, query `authorization`, header.
#[tokio::test]
async fn v7_tokens_in_cookie_query_and_header() {
    let server = hub("");
    let tok = v7(&[BOOK1], &[]);
    let publisher = v7(&[], &[BOOK1]);
    let mut by_cookie = subscribe(
        &server,
        &[("topic", BOOK1)],
        &[("cookie", format!("theme=dark; mercureAuthorization={tok}"))],
    )
    .await;
    let mut by_query = subscribe(&server, &[("topic", BOOK1), ("authorization", &tok)], &[]).await;
    let mut by_header = subscribe(&server, &[("topic", BOOK1)], &[bearer(&tok)]).await;
    let id = publish(&server, &publisher, &[("topic", BOOK1), ("private", "on")]).await;
    for sse in [&mut by_cookie, &mut by_query, &mut by_header] {
        assert_eq!(ids(&sse.take(1, ARRIVES).await), vec![id.clone()]);
    }
    // A publisher may present its token in the query too.
    let (status, _, body) = post_raw(
        &server,
        &[],
        "application/x-www-form-urlencoded",
        form(&[("topic", BOOK1)]),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let res = http()
        .post(format!("{}?authorization={publisher}", hub_url(&server)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("topic", BOOK1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

/// draft-07 subscription events: topic `/.well-known/mercure/subscriptions/{topic}/{subscriber}`,
/// the document has `topic` and the token's `mercure.payload`.
#[tokio::test]
async fn v7_subscription_events_and_api_use_the_topic_shape() {
    let server = hub("subscriptions = true");
    let selector = "/.well-known/mercure/subscriptions{/topic}{/subscriber}";
    let watcher_tok = v7(&[selector], &[]);
    let mut watcher = subscribe(&server, &[("topic", selector)], &[bearer(&watcher_tok)]).await;
    let tok = sign(
        "JWT",
        &json!({"mercure": {"subscribe": [BOOK1], "payload": {"user": "https://example.com/users/dunglas"}}}),
        MS,
    );
    let s = subscribe(&server, &[("topic", BOOK1)], &[bearer(&tok)]).await;
    // The watcher's own subscription matches its selector too: skip it.
    let doc = docs_where(&mut watcher, 1, |d| d["topic"] == BOOK1)
        .await
        .remove(0);
    let who = doc["subscriber"].as_str().unwrap().to_owned();
    assert_eq!(doc["topic"], BOOK1);
    assert_eq!(doc["active"], true);
    assert_eq!(doc["type"], "Subscription");
    assert_eq!(doc["payload"]["user"], "https://example.com/users/dunglas");
    let topic = format!(
        "/.well-known/mercure/subscriptions/{}/{}",
        enc(BOOK1),
        enc(&who)
    );
    assert_eq!(doc["id"], topic.as_str());
    // The API follows the log: it may lag the event by a moment.
    let single = api_until(&server, &topic, &watcher_tok, |d| d["topic"] == BOOK1).await;
    assert_eq!(single["active"], true);
    drop(s);
    let doc: Value = serde_json::from_str(&next_update(&mut watcher).await.data).unwrap();
    assert_eq!(
        (doc["active"].clone(), doc["id"].clone()),
        (json!(false), json!(topic))
    );
}

// ---------------------------------------------------------------------------------------------
// ssegate around the hub: native API, metrics, admin

/// A native `/v1/stream` subscriber granted `mercure:*` sees Mercure updates; a native publish
/// to a `mercure:` channel is refused (it would bypass the hub's topic authorization).
#[tokio::test]
async fn native_streams_see_mercure_updates_and_native_publishes_cannot_forge_them() {
    let server = hub("");
    let (mut native, _) = Sse::open(
        &server.stream_url(&["mercure:*"]),
        &[bearer(&token("native", &["mercure:*"], &[]))],
    )
    .await;
    publish(
        &server,
        &v8_publisher(),
        &[
            ("topic", "https://example.com/native/1"),
            ("type", "book.updated"),
            ("data", "hello"),
        ],
    )
    .await;
    let ev = native.take(1, ARRIVES).await.remove(0);
    assert_eq!(ev.event, "book.updated");
    assert!(
        ev.data.contains("https://example.com/native/1") && ev.data.contains("hello"),
        "{}",
        ev.data
    );

    let (status, body) = server
        .publish(
            &publisher(),
            &json!([{"channel": "mercure:https%3A//example.com/native/1", "type": "t", "data": {"topics": ["x"], "data": "forged"}}]),
        )
        .await;
    assert_error(status, &body, 403, "reserved_channel");
    native.expect_quiet(QUIET).await;
}

/// Operations see the hub: `/metrics` counts Mercure publishes; the admin API lists Mercure
/// subscribers.
#[tokio::test]
async fn metrics_count_mercure_publishes_and_admin_lists_mercure_subscribers() {
    let server = hub("");
    let sample = "ssegate_events_published_total";
    let before = metric(&metrics_text(&server).await, sample).unwrap_or(0.0);
    let tok = v8_publisher();
    publish(&server, &tok, &[("topic", BOOK1)]).await;
    publish(&server, &tok, &[("topic", BOOK2), ("private", "on")]).await;
    let after = metric(&metrics_text(&server).await, sample).expect("the counter");
    assert_eq!(after - before, 2.0);

    let reader = v8_claims(json!({"sub": "mercure-reader-42", "exp": now() + 3600,
        "authorization_details": [detail(&["subscribe"], &[BOOK1])]}));
    let _sse = subscribe(&server, &[("match", BOOK1)], &[bearer(&reader)]).await;
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        let (status, _, body) = get(
            &format!("{}/v1/connections", server.url),
            &[bearer(&admin_token())],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let listed = body["connections"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["user"] == "mercure-reader-42"));
        if listed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not listed: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// More attacker cases

/// The reserved-namespace rule is on the *resolved* path, so every spelling that resolves there
/// is refused: backslashes (WHATWG URL parsing of http), encoded dot segments, relative
/// references resolved against `/.well-known/mercure` itself, other schemes. A watcher of the
/// subscriptions namespace receives none of them.
#[tokio::test]
async fn reserved_namespace_spellings_that_resolve_there_are_all_refused() {
    let server = hub("subscriptions = true");
    let tok = v8_publisher();
    let mut watcher = subscribe(
        &server,
        &[(
            "matchURLPattern",
            "/.well-known/mercure/subscriptions/Exact/*",
        )],
        &[bearer(&v8_subscriptions_reader())],
    )
    .await;
    let host = server.url.trim_start_matches("http://").to_owned();
    for topic in [
        "\\.well-known\\mercure\\subscriptions\\Exact\\x\\y".to_owned(),
        "/.well-known/x/%2e%2e/mercure/subscriptions/Exact/x/y".to_owned(),
        "/.well-known/x/%2E%2E/mercure/subscriptions/Exact/x/y".to_owned(),
        "/.well-known/%6Dercure/subscriptions/Exact/x/y".to_owned(),
        "mercure/subscriptions/Exact/x/y".to_owned(),
        "./mercure/subscriptions/Exact/x/y".to_owned(),
        "?x=1".to_owned(),
        "#x".to_owned(),
        format!("HTTP://{host}/.well-known/mercure/subscriptions/Exact/x/y"),
        format!("http:\\\\{host}\\.well-known\\mercure\\subscriptions\\Exact\\x\\y"),
        "ftp://h/.well-known/mercure/subscriptions/Exact/x/y".to_owned(),
        "foo:/.well-known/mercure/subscriptions/Exact/x/y".to_owned(),
    ] {
        let doc = json!({"type": "Subscription", "active": true, "subscriber": "urn:forged"});
        let (status, _, body) = post(
            &server,
            &tok,
            &[
                ("topic", &topic),
                ("data", &doc.to_string()),
                ("private", ""),
            ],
        )
        .await;
        refused(status, &body, 403, "reserved_topic");
    }
    watcher.expect_quiet(QUIET).await;
}

/// Authorization evaluates a grant against the update's *topic*: an Exact grant whose text
/// happens to equal a subscriber's URL pattern authorizes that one literal topic, never the
/// topics the pattern selects.
#[tokio::test]
async fn an_exact_grant_spelled_like_a_pattern_authorizes_only_that_literal_topic() {
    let server = hub("");
    let publisher = v8_publisher();
    let pattern = "https://example.com/books/:id";
    let tok = v8_sub(&[pattern]);
    let mut sse = subscribe(&server, &[("matchURLPattern", pattern)], &[bearer(&tok)]).await;
    publish(&server, &publisher, &[("topic", BOOK1), ("private", "on")]).await;
    sse.expect_quiet(QUIET).await;
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token made byte by byte: `header` and `payload` are JSON text, signed HS256 with `MS`.
fn crafted(header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(MS.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{input}.{sig}")
}

/// Token validation "in accordance with the JSON Web Token Best Current Practices": members named
/// twice (which one would be read?), a `crit` extension the hub does not understand (RFC 7515
/// §4.1.11: MUST reject), claims of the wrong JSON type — all correctly signed, all refused.
#[tokio::test]
async fn correctly_signed_but_ambiguous_or_mistyped_tokens_are_invalid() {
    let server = hub("");
    let exp = now() + 3600;
    let details = r#"[{"type":"mercure","actions":["publish"],"topics":[{"match":"*"}]}]"#;
    let good = crafted(
        r#"{"alg":"HS256","typ":"at+jwt"}"#,
        &format!(r#"{{"exp":{exp},"authorization_details":{details}}}"#),
    );
    publish(&server, &good, &[("topic", BOOK1)]).await;
    let cases = [
        (
            "typ twice",
            r#"{"alg":"HS256","typ":"JWT","typ":"at+jwt"}"#.to_owned(),
            format!(r#"{{"exp":{exp},"authorization_details":{details}}}"#),
        ),
        (
            "details twice",
            r#"{"alg":"HS256","typ":"at+jwt"}"#.to_owned(),
            format!(
                r#"{{"exp":{exp},"authorization_details":[],"authorization_details":{details}}}"#
            ),
        ),
        (
            "mercure claim twice",
            r#"{"alg":"HS256","typ":"JWT"}"#.to_owned(),
            r#"{"mercure":{"publish":[]},"mercure":{"publish":["*"]}}"#.to_owned(),
        ),
        (
            "exp twice",
            r#"{"alg":"HS256","typ":"at+jwt"}"#.to_owned(),
            format!(r#"{{"exp":1,"exp":{exp},"authorization_details":{details}}}"#),
        ),
        (
            "unknown crit",
            r#"{"alg":"HS256","typ":"at+jwt","crit":["x-hub"],"x-hub":1}"#.to_owned(),
            format!(r#"{{"exp":{exp},"authorization_details":{details}}}"#),
        ),
        (
            "exp as a string",
            r#"{"alg":"HS256","typ":"at+jwt"}"#.to_owned(),
            format!(r#"{{"exp":"{exp}","authorization_details":{details}}}"#),
        ),
        (
            "nbf as a string",
            r#"{"alg":"HS256","typ":"at+jwt"}"#.to_owned(),
            format!(r#"{{"exp":{exp},"nbf":"0","authorization_details":{details}}}"#),
        ),
        (
            "details as an object",
            r#"{"alg":"HS256","typ":"at+jwt"}"#.to_owned(),
            format!(r#"{{"exp":{exp},"authorization_details":{{"type":"mercure"}}}}"#),
        ),
        (
            "publish as a string",
            r#"{"alg":"HS256","typ":"JWT"}"#.to_owned(),
            r#"{"mercure":{"publish":"*"}}"#.to_owned(),
        ),
        (
            "payload not JSON",
            r#"{"alg":"HS256","typ":"JWT"}"#.to_owned(),
            "not json".to_owned(),
        ),
    ];
    for (what, header, payload) in cases {
        let tok = crafted(&header, &payload);
        let (status, _, body) = post(&server, &tok, &[("topic", BOOK1)]).await;
        assert_eq!(status, 401, "{what}: {body}");
    }
}

/// RFC 9068 `typ`: a media type, so `application/at+jwt` and any case name the same type.
#[tokio::test]
async fn at_jwt_type_is_a_case_insensitive_media_type() {
    let server = hub("");
    let claims =
        json!({"exp": now() + 60, "authorization_details": [detail(&["publish"], &["*"])]});
    for typ in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/At+Jwt",
    ] {
        publish(&server, &sign(typ, &claims, MS), &[("topic", BOOK1)]).await;
    }
    // An at+jwt token is read as draft-08 only: a `mercure` claim grants nothing there.
    let v7_claims_in_v8 = sign(
        "at+jwt",
        &json!({"exp": now() + 60, "mercure": {"publish": ["*"]}}),
        MS,
    );
    let (status, _, body) = post(&server, &v7_claims_in_v8, &[("topic", BOOK1)]).await;
    assert!(status == 401 || status == 403, "{status} {body}");
}

/// A `lastEventID` holding CR/LF or other hostile text never splits the response headers, and
/// the answer is `earliest` (no such event).
#[tokio::test]
async fn hostile_last_event_ids_do_not_reach_response_headers() {
    let server = hub("anonymous = true");
    publish(&server, &v8_publisher(), &[("topic", BOOK1)]).await;
    for id in ["x\r\nSet-Cookie: a=b", "x\nevil: 1", "\u{0}", "   "] {
        let sse = Sse::connect(
            &sub_url(&server, &[("match", BOOK1), ("lastEventID", id)]),
            &[],
        )
        .await;
        assert!(sse.headers.get("set-cookie").is_none() && sse.headers.get("evil").is_none());
        if sse.status == 200 {
            let answer = response_last_event_id(&sse);
            assert!(
                answer.is_none() || answer.as_deref() == Some("earliest"),
                "{answer:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// More reconciliation and active subscriptions

/// Query-parameter tokens: "Server success (2XX status) responses to these requests SHOULD
/// contain a Cache-Control header with the `private` option."
#[tokio::test]
async fn responses_to_query_token_requests_are_cache_control_private() {
    let server = hub("");
    let tok = v8_sub(&[BOOK1]);
    let sse = subscribe(&server, &[("match", BOOK1), ("access_token", &tok)], &[]).await;
    let cc = sse.headers["cache-control"].to_str().unwrap();
    assert!(cc.split(',').any(|d| d.trim() == "private"), "{cc}");
}

/// Subscription API `lastEventID`: "MUST be `earliest` if no events have been dispatched yet.
/// This value SHOULD be passed back to the hub when subscribing to subscription events to
/// prevent data loss" — so resuming from it yields what happened after the API call.
#[tokio::test]
async fn subscription_api_last_event_id_is_a_resume_point_for_subscription_events() {
    let server = hub("subscriptions = true");
    let reader = v8_subscriptions_reader();
    let root = "/.well-known/mercure/subscriptions";
    let (status, _, empty) = api_get(&server, root, &reader).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty["lastEventID"], "earliest");
    assert_eq!(empty["subscriptions"], json!([]));

    let _first = subscribe(&server, &[("match", BOOK1)], &[bearer(&v8_sub(&[BOOK1]))]).await;
    let listed = api_until(&server, root, &reader, |b| {
        b["subscriptions"].as_array().is_some_and(|s| s.len() == 1)
    })
    .await;
    let since = listed["lastEventID"].as_str().unwrap().to_owned();
    assert_ne!(since, "earliest");
    // Published after the listing: must come back on a resume from `since`.
    let _second = subscribe(&server, &[("match", BOOK2)], &[bearer(&v8_sub(&[BOOK2]))]).await;
    let mut events = subscribe(
        &server,
        &[
            (
                "matchURLPattern",
                "/.well-known/mercure/subscriptions/Exact/*",
            ),
            ("lastEventID", &since),
        ],
        &[bearer(&reader)],
    )
    .await;
    assert_eq!(
        response_last_event_id(&events).as_deref(),
        Some(since.as_str())
    );
    let doc = docs_where(&mut events, 1, |_| true).await.remove(0);
    assert_eq!(
        doc["match"], BOOK2,
        "the first event after the listing: {doc}"
    );
}

/// A subscription ended by its token's expiry is "terminated": an `active: false` event follows.
#[tokio::test]
async fn a_subscription_closed_by_token_expiry_publishes_its_termination() {
    let server = hub("subscriptions = true");
    let mut watcher = subscribe(
        &server,
        &[(
            "matchURLPattern",
            "/.well-known/mercure/subscriptions/Exact/*",
        )],
        &[bearer(&v8_subscriptions_reader())],
    )
    .await;
    let short = v8_claims(json!({"exp": now() + 2,
        "authorization_details": [detail(&["subscribe"], &[BOOK7])]}));
    let mut sse = subscribe(&server, &[("match", BOOK7)], &[bearer(&short)]).await;
    let on = docs_where(&mut watcher, 1, |d| d["match"] == BOOK7)
        .await
        .remove(0);
    sse.expect_end(Duration::from_secs(5)).await;
    let off = docs_where(&mut watcher, 1, |d| d["match"] == BOOK7)
        .await
        .remove(0);
    assert_eq!(
        (on["active"].clone(), off["active"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(on["subscriber"], off["subscriber"]);
}

/// Error responses: "The challenge SHOULD include a `resource_metadata` parameter pointing to
/// the hub's protected resource metadata"; "the hub SHOULD publish OAuth 2.0 Protected Resource
/// Metadata" at `/.well-known/oauth-protected-resource/.well-known/mercure`.
#[tokio::test]
async fn challenge_points_to_protected_resource_metadata() {
    let server = hub("");
    let sse = Sse::connect(&sub_url(&server, &[("match", BOOK1)]), &[]).await;
    assert!(challenge(&sse.headers).contains("resource_metadata="));
    let (status, _, body) = get(
        &format!(
            "{}/.well-known/oauth-protected-resource/.well-known/mercure",
            server.url
        ),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["mercure_version"], 8);
    assert_eq!(body["mercure_cookie"], true);
    assert_eq!(body["bearer_methods_supported"], json!(["header", "query"]));
    assert_eq!(
        body["resource"],
        format!("{}/.well-known/mercure", server.url),
        "the hub's URL is its resource identifier when no audience is configured"
    );
    assert!(
        challenge(&sse.headers).contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/.well-known/mercure\"",
            server.url
        )),
        "{}",
        challenge(&sse.headers)
    );
}

/// Ids up to the documented limit (256 bytes) are honoured; one byte more is a 413.
#[tokio::test]
async fn ids_up_to_the_limit_are_honoured() {
    let server = hub("anonymous = true");
    let tok = v8_publisher();
    let mut sse = subscribe(&server, &[("match", BOOK1)], &[]).await;
    let long = format!("urn:x:{}", "i".repeat(250));
    assert_eq!(long.len(), 256);
    assert_eq!(
        publish(&server, &tok, &[("topic", BOOK1), ("id", &long)]).await,
        long
    );
    assert_eq!(next_update(&mut sse).await.id, long);
    let (status, _, body) = post(
        &server,
        &tok,
        &[("topic", BOOK1), ("id", &format!("{long}i"))],
    )
    .await;
    assert_eq!(status, 413, "{body}");
}

/// Attack: a publisher allowed only on its own topic reuses an id another publisher will use
/// (revision IRIs are predictable). The later, legitimate update on another topic must still be
/// dispatched — a 200 for an update silently dropped would be a loss ("On success … 2xx").
#[tokio::test]
async fn an_id_taken_by_another_publisher_on_another_topic_does_not_swallow_an_update() {
    let server = hub("anonymous = true");
    let mallory = v8(json!([detail(
        &["publish"],
        &["https://example.com/mallory"]
    )]));
    let alice = v8(json!([detail(&["publish"], &[BOOK1])]));
    let mut sse = subscribe(&server, &[("match", BOOK1)], &[]).await;
    let rev = "https://example.com/books/1/revisions/2";
    publish(
        &server,
        &mallory,
        &[("topic", "https://example.com/mallory"), ("id", rev)],
    )
    .await;
    let (status, _, body) = post(
        &server,
        &alice,
        &[("topic", BOOK1), ("id", rev), ("data", "real")],
    )
    .await;
    if status == 200 {
        let ev = next_update(&mut sse).await;
        assert_eq!((ev.id.as_str(), ev.data.as_str()), (rev, "real"));
    } else {
        // Refusing the clash loudly is fine too; answering 200 and dropping it is not.
        assert!((400..500).contains(&status), "{status} {body}");
    }
}

/// "The `data` property MUST contain the topic's new version": an update without data still
/// reaches EventSource clients (an empty `data:` line; with none the event would not be
/// dispatched), and leading spaces and colons in data survive the framing.
#[tokio::test]
async fn empty_data_leading_spaces_and_colons_survive_the_framing() {
    let server = hub("anonymous = true");
    let tok = v8_publisher();
    let mut sse = subscribe(&server, &[("match", BOOK1)], &[]).await;
    let empty = publish(&server, &tok, &[("topic", BOOK1), ("type", "deleted")]).await;
    let odd = publish(
        &server,
        &tok,
        &[
            ("topic", BOOK1),
            ("data", "  two spaces\n: not a comment\n:\n "),
        ],
    )
    .await;
    let got = sse.take(2, ARRIVES).await;
    assert_eq!(
        (
            got[0].id.as_str(),
            got[0].event.as_str(),
            got[0].data.as_str()
        ),
        (empty.as_str(), "deleted", "")
    );
    assert_eq!(got[1].id, odd);
    assert_eq!(got[1].data, "  two spaces\n: not a comment\n:\n ");
}

/// "When more than one mechanism is present, the hub MUST select exactly one token": two
/// `Authorization` headers are not a choice the hub can make (400); a hub that does not take
/// tokens in URLs ("Hubs MAY support this method") says so rather than ignoring them.
#[tokio::test]
async fn two_authorization_headers_and_disabled_query_tokens_are_400() {
    let server = hub("allow_query_token = false");
    let tok = v8_sub(&[BOOK1]);
    let sse = Sse::connect(
        &sub_url(&server, &[("match", BOOK1)]),
        &[bearer(&tok), bearer(&v8_sub(&["*"]))],
    )
    .await;
    assert_error(sse.status, &sse.error, 400, "invalid_request");
    let sse = Sse::connect(
        &sub_url(&server, &[("match", BOOK1), ("access_token", &tok)]),
        &[],
    )
    .await;
    assert_error(sse.status, &sse.error, 400, "invalid_request");
    let sse = Sse::connect(&sub_url(&server, &[("match", BOOK1)]), &[bearer(&tok)]).await;
    assert_eq!(sse.status, 200);
}

/// draft-07 tokens need no `typ` at all (plain JWTs of the Mercure hub's older clients).
#[tokio::test]
async fn v7_tokens_without_typ_are_read_as_draft_07() {
    let server = hub("");
    let mut header = Header::new(Algorithm::HS256);
    header.typ = None;
    let tok = encode(
        &header,
        &json!({"mercure": {"publish": [BOOK1]}}),
        &EncodingKey::from_secret(MS.as_bytes()),
    )
    .unwrap();
    publish(&server, &tok, &[("topic", BOOK1)]).await;
    let (status, _, body) = post(&server, &tok, &[("topic", BOOK2)]).await;
    refused(status, &body, 403, "insufficient_scope");
}

/// Reconnection survives a hub restart: a publisher's own id (no longer in memory) is still
/// found in the log, the answer names it, and what followed is replayed.
#[tokio::test]
async fn resuming_from_a_publisher_id_works_after_a_restart() {
    let mut server = hub("anonymous = true");
    let tok = v8_publisher();
    publish(&server, &tok, &[("topic", BOOK1), ("id", "urn:rev:1")]).await;
    publish(&server, &tok, &[("topic", BOOK1), ("id", "urn:rev:2")]).await;
    server.kill9_and_restart();
    let mut sse = subscribe(&server, &[("match", BOOK1)], &[last_event_id("urn:rev:1")]).await;
    assert_eq!(response_last_event_id(&sse).as_deref(), Some("urn:rev:1"));
    assert_eq!(
        ids(&sse.take(1, ARRIVES).await),
        vec!["urn:rev:2".to_owned()]
    );
    sse.expect_quiet(QUIET).await;
}

/// The subscription API reads its path in canonical form: the same subscription whatever the
/// (valid) percent-encoding of the request, and authorization is checked on that same form.
#[tokio::test]
async fn subscription_api_paths_are_read_in_canonical_form() {
    let server = hub("subscriptions = true");
    let _s = subscribe(&server, &[("match", BOOK1)], &[bearer(&v8_sub(&[BOOK1]))]).await;
    let reader = v8_subscriptions_reader();
    let canonical = format!("/.well-known/mercure/subscriptions/Exact/{}", enc(BOOK1));
    api_until(&server, &canonical, &reader, |b| {
        b["subscriptions"].as_array().is_some_and(|s| s.len() == 1)
    })
    .await;
    let loose = "/.well-known/mercure/subscriptions/Exact/https:%2f%2fexample.com%2Fbooks%2F1";
    let (status, _, body) = api_get(&server, loose, &reader).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], canonical.as_str());
    assert_eq!(body["subscriptions"].as_array().map(Vec::len), Some(1));
    // A token for exactly the canonical collection reads it through either spelling, and
    // nothing else.
    let exact = v8_sub(&[&canonical]);
    let (status, _, _) = api_get(&server, loose, &exact).await;
    assert_eq!(status, 200);
    let (status, _, _) = api_get(&server, "/.well-known/mercure/subscriptions", &exact).await;
    assert_eq!(status, 403);
}
