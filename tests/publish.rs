//! `POST /v1/publish` against a real server: batches, fan-out to several channels,
//! idempotency, and bad input that gets a clear error and appends nothing.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn head(server: &Server) -> String {
    let admin = token_with("admin", &[], &[], true, 600);
    let res = http()
        .get(format!("{}/v1/status", server.url))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["log"]["head"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn batches_and_multi_channel_events_get_ids_in_order() {
    let server = Server::start(&[]);
    let p = publisher();
    let (status, body) = server
        .publish(
            &p,
            &json!([
                {"channel": "a", "type": "x", "data": 1},
                {"channels": ["b", "c"], "type": "y", "data": {"k": [1, 2]}},
                {"channel": "a", "data": null}
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ids"], json!(["1", "2", "3", "4"]));
    let (mut sse, _) = Sse::open(
        &server.stream_url(&["c"]),
        &[bearer(&token("u", &["c"], &[])), last_event_id("0")],
    )
    .await;
    let got = sse.take(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].id, "3");
    assert_eq!(envelope(&got[0])["data"], json!({"k": [1, 2]}));
}

#[tokio::test]
async fn the_same_idempotency_key_appends_once_and_returns_the_same_ids() {
    let server = Server::start(&[]);
    let p = publisher();
    let ev = json!({"channel": "i", "type": "t", "data": {"v": 1}, "id": "order-42"});
    let (s1, b1) = server.publish(&p, &ev).await;
    let (s2, b2) = server.publish(&p, &ev).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(b1["ids"], b2["ids"]);
    assert_eq!(head(&server).await, "1");
    // Also inside one batch, and with several channels.
    let multi = json!({"channels": ["i", "j"], "data": 2, "id": "k2"});
    let (_, b3) = server.publish(&p, &json!([multi, multi])).await;
    assert_eq!(b3["ids"], json!(["2", "3", "2", "3"]));
    assert_eq!(head(&server).await, "3");
    // A subscriber resuming from the start sees each event once.
    let (mut sse, _) = Sse::open(
        &server.stream_url(&["i"]),
        &[bearer(&token("u", &["i"], &[])), last_event_id("0")],
    )
    .await;
    let got = sse.take(2, Duration::from_secs(10)).await;
    assert_eq!(ids(&got), ["1", "2"]);
    sse.expect_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn idempotency_keys_expire_after_the_window() {
    let server = Server::start(&[("LOG__DEDUPE_WINDOW_S", "1")]);
    let p = publisher();
    let ev = json!({"channel": "i", "data": 1, "id": "k"});
    let (_, b1) = server.publish(&p, &ev).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, b2) = server.publish(&p, &ev).await;
    assert_ne!(b1["ids"], b2["ids"]);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_appends_nothing() {
    let server = Server::start(&[("LIMITS__MAX_EVENT_BYTES", "1024")]);
    let p = publisher();
    let good = json!({"channel": "ok", "data": 1});
    let long_channel = "a".repeat(257);
    let big = "x".repeat(2000);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            b"{\"channel\": \"ok\",".to_vec(),
            400,
            "invalid_json",
        ),
        ("not an object", b"42".to_vec(), 400, "invalid_json"),
        (
            "unknown field",
            br#"{"channel":"ok","dta":1}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            "missing channel",
            br#"{"type":"t","data":1}"#.to_vec(),
            400,
            "missing_channel",
        ),
        (
            "empty channels",
            br#"{"channels":[],"data":1}"#.to_vec(),
            400,
            "missing_channel",
        ),
        (
            "space in channel",
            br#"{"channel":"a b"}"#.to_vec(),
            400,
            "invalid_channel",
        ),
        (
            "newline in channel",
            br#"{"channel":"a\nb"}"#.to_vec(),
            400,
            "invalid_channel",
        ),
        (
            "empty segment",
            br#"{"channel":"a::b"}"#.to_vec(),
            400,
            "invalid_channel",
        ),
        (
            "trailing colon",
            br#"{"channel":"a:"}"#.to_vec(),
            400,
            "invalid_channel",
        ),
        (
            "wildcard in channel",
            br#"{"channel":"a:*"}"#.to_vec(),
            400,
            "invalid_channel",
        ),
        (
            "channel over 256 bytes",
            format!(r#"{{"channel":"{long_channel}"}}"#).into_bytes(),
            400,
            "invalid_channel",
        ),
        (
            "LF in type",
            br#"{"channel":"ok","type":"a\nb"}"#.to_vec(),
            400,
            "invalid_type",
        ),
        (
            "CR in type",
            br#"{"channel":"ok","type":"a\rdata: x"}"#.to_vec(),
            400,
            "invalid_type",
        ),
        (
            "LF in id",
            br#"{"channel":"ok","id":"k\nid: 9"}"#.to_vec(),
            400,
            "invalid_id",
        ),
        (
            "CR in id",
            br#"{"channel":"ok","id":"k\r"}"#.to_vec(),
            400,
            "invalid_id",
        ),
        ("empty batch", b"[]".to_vec(), 400, "empty_batch"),
        (
            "one bad event in a batch",
            serde_json::to_vec(&json!([good, {"channel": "bad channel"}])).unwrap(),
            400,
            "invalid_channel",
        ),
        (
            "event over max_event_bytes",
            serde_json::to_vec(&json!({"channel": "ok", "data": big})).unwrap(),
            413,
            "event_too_large",
        ),
        (
            "oversized event in a batch",
            serde_json::to_vec(&json!([good, {"channel": "ok", "data": big}])).unwrap(),
            413,
            "event_too_large",
        ),
    ];
    for (what, body, status, code) in cases {
        let (got_status, got) = server.publish_raw(&p, body).await;
        assert_eq!(got_status, status, "{what}: {got}");
        assert_eq!(got["error"]["code"], code, "{what}: {got}");
        assert!(
            got["error"]["message"].as_str().unwrap().len() > 10,
            "{what}"
        );
    }

    // Credentials.
    let res = http()
        .post(format!("{}/v1/publish", server.url))
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "missing_credentials"
    );
    let subscriber_only = token("u", &["**"], &[]);
    let (s, b) = server.publish(&subscriber_only, &good).await;
    assert_eq!(
        (s, b["error"]["code"].as_str().unwrap()),
        (403, "forbidden_channel")
    );
    let narrow = token("svc", &[], &["ok"]);
    let (s, b) = server
        .publish(&narrow, &json!([good, {"channel": "other", "data": 1}]))
        .await;
    assert_eq!(s, 403);
    assert_eq!(b["error"]["channels"], json!(["other"]));
    for bad in bad_tokens() {
        let (s, b) = server.publish(&bad, &good).await;
        assert_eq!(s, 401, "{bad}: {b}");
    }

    assert_eq!(head(&server).await, "0", "nothing was appended");
    let (s, _) = server.publish(&p, &good).await;
    assert_eq!(s, 200);
    assert_eq!(head(&server).await, "1");
}

/// Expired (beyond the leeway), tampered and `alg: none` tokens.
fn bad_tokens() -> Vec<String> {
    use base64_url as b64;
    let good = publisher();
    let parts: Vec<&str> = good.split('.').collect();
    let payload: Value = serde_json::from_slice(&b64::decode(parts[1])).unwrap();

    let mut expired = payload.clone();
    expired["exp"] = json!(payload["iat"].as_u64().unwrap() - 3600);
    let expired = sign(&expired);

    let mut escalated = payload.clone();
    escalated["sub"] = json!("someone-else");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64::encode(&serde_json::to_vec(&escalated).unwrap()),
        parts[2]
    );

    let none_header = b64::encode(br#"{"alg":"none","typ":"JWT"}"#);
    let none = format!("{none_header}.{}.", parts[1]);
    let none_sig = format!("{none_header}.{}.{}", parts[1], parts[2]);

    vec![expired, tampered, none, none_sig]
}

fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Unpadded base64url, enough for JWT parts.
mod base64_url {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    pub fn decode(text: &str) -> Vec<u8> {
        let vals: Vec<u32> = text
            .bytes()
            .map(|c| A.iter().position(|a| *a == c).unwrap() as u32)
            .collect();
        let mut out = Vec::new();
        for chunk in vals.chunks(4) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, v)| n | v << (18 - 6 * i));
            for i in 0..chunk.len() - 1 {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }
}
