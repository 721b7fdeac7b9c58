//! CORS end to end: `cors.allowed_origins` lists the origins whose pages may call the API
//! with credentials (shared/api.md: "credentials allowed only for listed origins"); others
//! get no CORS headers; preflights allow `Last-Event-ID` (EventSource resumes with it).

mod common;

use common::*;
use reqwest::header::HeaderMap;
use reqwest::Method;

const APP: &str = "https://app.example";
const EVIL: &str = "https://evil.example";

fn with_cors() -> Server {
    Server::start(&[("CORS__ALLOWED_ORIGINS", r#"["https://app.example"]"#)])
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

async fn get_with_origin(server: &Server, path: &str, origin: &str) -> HeaderMap {
    let (status, headers, body) = call(
        Method::GET,
        &format!("{}{path}", server.url),
        &[("origin", origin.to_owned())],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    headers
}

async fn preflight(server: &Server, origin: &str) -> (u16, HeaderMap) {
    let (status, headers, _) = call(
        Method::OPTIONS,
        &format!("{}/v1/stream?channel=a", server.url),
        &[
            ("origin", origin.to_owned()),
            ("access-control-request-method", "GET".into()),
            ("access-control-request-headers", "last-event-id".into()),
        ],
        None,
    )
    .await;
    (status, headers)
}

#[tokio::test]
async fn a_listed_origin_gets_its_origin_and_credentials() {
    let server = with_cors();
    let h = get_with_origin(&server, "/healthz", APP).await;
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));

    // On the stream itself too.
    let tok = token("u1", &["a"], &[]);
    let res = http()
        .get(server.stream_url(&["a"]))
        .header("origin", APP)
        .header("authorization", bearer(&tok).1)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(res.headers(), "access-control-allow-origin"),
        Some(APP)
    );
    assert_eq!(
        header(res.headers(), "access-control-allow-credentials"),
        Some("true")
    );
}

#[tokio::test]
async fn a_preflight_from_a_listed_origin_allows_last_event_id() {
    let server = with_cors();
    let (status, h) = preflight(&server, APP).await;
    assert!(status == 200 || status == 204, "preflight status {status}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    let allowed = header(&h, "access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed.split(',').any(|v| v.trim() == "last-event-id"),
        "allow-headers: {allowed:?}"
    );
    let methods = header(&h, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.split(',').any(|m| m.trim() == "GET"), "{methods:?}");
}

#[tokio::test]
async fn an_unlisted_origin_is_not_allowed() {
    let server = with_cors();
    let h = get_with_origin(&server, "/healthz", EVIL).await;
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    let (_, h) = preflight(&server, EVIL).await;
    assert_eq!(header(&h, "access-control-allow-origin"), None);
}

/// An unlisted origin gets no CORS header at all, not even `allow-credentials`.
#[tokio::test]
async fn an_unlisted_origin_gets_no_allow_credentials() {
    let server = with_cors();
    let h = get_with_origin(&server, "/healthz", EVIL).await;
    assert_eq!(
        header(&h, "access-control-allow-credentials"),
        None,
        "credentials allowed for an unlisted origin"
    );
    let (_, h) = preflight(&server, EVIL).await;
    assert_eq!(header(&h, "access-control-allow-credentials"), None);
}

/// Without `cors.allowed_origins` (the default: no cross-origin access) there are no CORS
/// headers.
#[tokio::test]
async fn without_allowed_origins_there_are_no_cors_headers() {
    let server = Server::start(&[]);
    let h = get_with_origin(&server, "/healthz", APP).await;
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    assert_eq!(
        header(&h, "access-control-allow-credentials"),
        None,
        "CORS credentials header sent although no origin is allowed"
    );
}
