//! The OpenAPI document (`GET /v1/openapi.json`) against the real server: it is OpenAPI 3.1
//! whose schemas compile as JSON Schema 2020-12; it describes every route the server answers
//! and nothing it does not; the server's real answers and the JSON examples of docs/api.md
//! validate against it; the TypeScript client's copy of it (clients/js/test/openapi.json) is
//! current.

mod common;
mod engines;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    ssegate::http::openapi::document()
}

/// Every `(path, method, operation)` of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                ops.push((path.clone(), method.clone(), op.clone()));
            }
        }
    }
    ops
}

/// What `#/a/b` points to in `doc`.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// Every `$ref` anywhere in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// `schema` made strict: every object schema that lists its properties and says nothing of
/// others refuses others. The server's answers and the examples must not carry fields the
/// document does not name (the document itself stays open to additions).
fn strict(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out: serde_json::Map<String, Value> =
                m.iter().map(|(k, x)| (k.clone(), strict(x))).collect();
            if out.contains_key("properties") && !out.contains_key("additionalProperties") {
                out.insert("additionalProperties".into(), json!(false));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(strict).collect()),
        other => other.clone(),
    }
}

/// A JSON Schema 2020-12 validator (formats checked) for `schema`, whose `$ref`s point into
/// the document's components.
fn validator(doc: &Value, schema: &Value, strictly: bool) -> jsonschema::Validator {
    let mut root = if strictly {
        strict(schema)
    } else {
        schema.clone()
    };
    if !root.is_object() {
        root = json!({ "allOf": [root] });
    }
    root["components"] = if strictly {
        strict(&doc["components"])
    } else {
        doc["components"].clone()
    };
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}\n{schema}"))
}

/// Validates `instance` against `schema` (strictly), naming `what` on failure.
fn assert_valid(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    let v = validator(doc, schema, true);
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match the document:\n{}\ninstance: {instance}",
        errors.join("\n")
    );
}

/// The JSON schema of an operation's request body or of its answer with `status`.
fn body_schema(doc: &Value, method: &str, path: &str, part: &str) -> Option<Value> {
    let op = &doc["paths"][path][method];
    assert!(
        op.is_object(),
        "no operation {method} {path} in the document"
    );
    let content = if part == "request" {
        &op["requestBody"]["content"]
    } else {
        &op["responses"][part]["content"]
    };
    let content = content.as_object()?;
    content
        .iter()
        .find(|(t, _)| t.contains("json"))
        .map(|(_, c)| c["schema"].clone())
}

/// Checks a real answer: its status is documented for the operation, and its JSON body
/// matches the documented schema.
fn check_answer(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let documented = doc["paths"][path][method]["responses"][status.to_string()].is_object();
    assert!(
        documented,
        "{method} {path} answered {status}, which the document does not list: {body}"
    );
    let schema = body_schema(doc, method, path, &status.to_string())
        .unwrap_or_else(|| panic!("{method} {path} {status}: no JSON schema"));
    assert_valid(
        doc,
        &schema,
        body,
        &format!("the answer {status} of {method} {path}"),
    );
}

fn component(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The route patterns of src/http/mod.rs (`.route("…"`), in the document's form.
fn router_paths() -> BTreeSet<String> {
    let source = include_str!("../src/http/mod.rs");
    let mut out = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = rest[at + ".route(".len()..].trim_start();
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').expect("closing quote");
            out.insert(quoted[..end].replace("{*", "{"));
        }
    }
    out
}

/// A concrete URL path for a documented path: each parameter replaced by its `example`.
fn concrete(doc: &Value, path: &str, op: &Value) -> String {
    let mut out = path.to_owned();
    for p in op["parameters"].as_array().into_iter().flatten() {
        let p = match p.get("$ref").and_then(Value::as_str) {
            Some(r) => resolve(doc, r).expect("parameter ref"),
            None => p,
        };
        if p["in"] == "path" {
            let example = p["example"]
                .as_str()
                .unwrap_or_else(|| panic!("path parameter without example in {path}"));
            out = out.replace(&format!("{{{}}}", p["name"].as_str().unwrap()), example);
        }
    }
    assert!(
        !out.contains('{'),
        "{path}: a path parameter is not declared"
    );
    out
}

#[tokio::test]
async fn the_served_document_is_openapi_3_1_and_its_schemas_compile() {
    let server = Server::start(&[]);
    let res = http()
        .get(format!("{}/v1/openapi.json", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc, document(), "the served document is document()");

    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    assert_eq!(doc["info"]["title"], "ssegate");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let mut ids = BTreeSet::new();
    for (path, method, op) in operations(&doc) {
        assert!(path.starts_with('/'), "{path}");
        let responses = op["responses"].as_object().expect("responses");
        assert!(!responses.is_empty(), "{method} {path} has no responses");
        for (status, r) in responses {
            assert!(
                status.len() == 3 && status.parse::<u16>().is_ok(),
                "{method} {path}: {status}"
            );
            assert!(r["description"].is_string(), "{method} {path} {status}");
        }
        let id = op["operationId"].as_str().expect("operationId").to_owned();
        assert!(ids.insert(id.clone()), "operationId {id} twice");
        // Every template parameter is declared, as a required path parameter.
        concrete(&doc, &path, &op);
        for s in op["security"].as_array().expect("security") {
            for scheme in s.as_object().unwrap().keys() {
                assert!(
                    doc["components"]["securitySchemes"][scheme].is_object(),
                    "{method} {path}: security scheme {scheme}"
                );
            }
        }
        // The inline schemas compile (they may refer to components).
        for part in std::iter::once("request".to_owned()).chain(responses.keys().cloned()) {
            if let Some(schema) = body_schema(&doc, &method, &path, &part) {
                validator(&doc, &schema, false);
                validator(&doc, &schema, true);
            }
        }
    }

    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 50, "the document uses its components");
    for r in &all {
        assert!(resolve(&doc, r).is_some(), "$ref {r} does not resolve");
    }

    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for (name, schema) in schemas {
        jsonschema::draft202012::meta::validate(schema)
            .unwrap_or_else(|e| panic!("schema {name} is not JSON Schema 2020-12: {e}"));
        validator(&doc, &component(name), true);
    }
    // An invalid instance is refused (the validators do validate).
    let error = validator(&doc, &component("Error"), true);
    assert!(error.is_valid(&json!({"error": {"code": "not_found", "message": "x"}})));
    assert!(!error.is_valid(&json!({"error": {"code": "not_found"}})));
    assert!(!error.is_valid(&json!({"error": {"code": "x", "message": "m", "extra": 1}})));
}

#[tokio::test]
async fn every_route_is_described_and_nothing_else() {
    let doc = document();
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let routed = router_paths();
    assert!(
        routed.len() > 20,
        "routes read from src/http/mod.rs: {routed:?}"
    );
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes of src/http/mod.rs not in the document: {undocumented:?}; \
         paths of the document not routed: {unrouted:?}"
    );

    // Mercure on, so its routes answer as themselves (off, they are `404 not_found`).
    let server = Server::start_with_config(
        "[mercure]\nenabled = true\nsubscriptions = true\njwt_secret = \"openapi-mercure-secret-0123456789\"\n",
        &[],
    );
    let mut by_path: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for (path, method, op) in operations(&doc) {
        let url = concrete(&doc, &path, &op);
        let entry = by_path.entry(path).or_insert((url, BTreeSet::new()));
        entry.1.insert(method);
    }
    let mut failures = Vec::new();
    for (path, (url, methods)) in &by_path {
        for method in ["get", "post", "put", "patch", "delete", "head"] {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let res = http()
                .request(m, format!("{}{url}", server.url))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let code = body["error"]["code"].as_str().unwrap_or("");
            // HEAD is answered wherever GET is (as HTTP has it).
            let described =
                methods.contains(method) || (method == "head" && methods.contains("get"));
            let fallback =
                (status == 404 && (code == "not_found" || method == "head")) || status == 405;
            if described && fallback {
                failures.push(format!(
                    "{method} {url} ({path}) is described but answered {status} {body}"
                ));
            }
            if !described && !fallback {
                failures.push(format!(
                    "{method} {url} ({path}) is not described but answered {status} {body}"
                ));
            }
            if !described && status == 405 && method != "head" {
                assert_eq!(code, "method_not_allowed", "{method} {url}: {body}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let metadata = "/.well-known/oauth-protected-resource/.well-known/mercure";
    let (s, _, body) = get(&format!("{}{metadata}", server.url), &[]).await;
    assert_eq!(s, 200, "{body}");
    check_answer(&doc, "get", metadata, s, &body);
}

/// The JSON examples of docs/api.md: each `json` block follows a marker
/// `<!-- example: METHOD PATH request|STATUS -->` or `<!-- example: schema NAME -->`.
fn api_md_examples() -> Vec<(String, Value, usize)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");
    let text = std::fs::read_to_string(path).expect("docs/api.md");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(marker) = line.strip_prefix("<!-- example:") {
            let marker = marker.trim_end_matches("-->").trim().to_owned();
            let mut j = i + 1;
            while j < lines.len() && lines[j].trim().is_empty() {
                j += 1;
            }
            assert!(
                j < lines.len() && lines[j].trim() == "```json",
                "docs/api.md:{}: the marker `{marker}` is not followed by a ```json block",
                i + 1
            );
            i = j;
            continue;
        }
        if line.starts_with("```json") {
            let marker = (0..i)
                .rev()
                .map(|k| lines[k].trim())
                .find(|l| !l.is_empty())
                .and_then(|l| l.strip_prefix("<!-- example:"))
                .map(|m| m.trim_end_matches("-->").trim().to_owned())
                .unwrap_or_else(|| {
                    panic!(
                        "docs/api.md:{}: a JSON example without a marker \
                         (`<!-- example: POST /v1/publish request -->`, \
                         `<!-- example: GET /v1/status 200 -->` or `<!-- example: schema Name -->`)",
                        i + 1
                    )
                });
            let end = (i + 1..lines.len())
                .find(|&k| lines[k].trim() == "```")
                .expect("closing fence");
            let block = lines[i + 1..end].join("\n");
            let value: Value = serde_json::from_str(&block)
                .unwrap_or_else(|e| panic!("docs/api.md:{}: the example is not JSON: {e}", i + 1));
            out.push((marker, value, i + 1));
            i = end;
        }
        i += 1;
    }
    out
}

#[test]
fn every_json_example_of_api_md_matches_the_document() {
    let doc = document();
    let examples = api_md_examples();
    assert!(examples.len() >= 10, "examples found: {}", examples.len());
    for (marker, value, line) in examples {
        let words: Vec<&str> = marker.split_whitespace().collect();
        let schema = match words.as_slice() {
            ["schema", name] => {
                assert!(
                    doc["components"]["schemas"][name].is_object(),
                    "docs/api.md:{line}: no schema {name}"
                );
                component(name)
            }
            [method, path, part] => {
                let method = method.to_lowercase();
                body_schema(&doc, &method, path, part).unwrap_or_else(|| {
                    panic!("docs/api.md:{line}: `{marker}` has no JSON schema in the document")
                })
            }
            _ => panic!("docs/api.md:{line}: a marker of an unknown form: `{marker}`"),
        };
        assert_valid(
            &doc,
            &schema,
            &value,
            &format!("docs/api.md:{line} (`{marker}`)"),
        );
    }
}

/// A request and the status expected: method, path, the documented path, token, body, status.
type Case<'a> = (Method, String, &'a str, Option<&'a str>, Option<Value>, u16);

/// A request; returns status and JSON body (`Null` when not JSON).
async fn send(method: Method, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let headers: Vec<(&str, String)> = token.map(bearer).into_iter().collect();
    let (status, _, body) = call(method, url, &headers, body.as_ref()).await;
    (status, body)
}

#[tokio::test]
async fn the_servers_answers_match_the_schemas() {
    let doc = document();
    let server = Server::start(&[]);
    let url = |p: &str| format!("{}{p}", server.url);
    let admin = admin_token();
    let user = token("u1", &["chat:*"], &["chat:**"]);
    let other = token("u2", &["chat:*"], &[]);
    let admin_ = Some(admin.as_str());
    let wait = Duration::from_secs(10);
    let event_matches = |data: &str, schema: &str| {
        let v: Value = serde_json::from_str(data).expect("event data is JSON");
        assert_valid(&doc, &component(schema), &v, &format!("a {schema}"));
    };

    for p in ["/healthz", "/readyz"] {
        let (s, b) = send(Method::GET, &url(p), None, None).await;
        check_answer(&doc, "get", p, s, &b);
    }

    let (mut sse, connected) = Sse::open(&server.stream_url(&["chat:1"]), &[bearer(&user)]).await;
    assert_valid(&doc, &component("ConnectedEvent"), &connected, "connected");
    let conn = connected["connection_id"].as_str().unwrap().to_owned();

    let (s, b) = send(
        Method::POST,
        &url("/v1/publish"),
        Some(&user),
        Some(json!({"channel": "chat:1", "type": "said", "data": {"text": "hi"}})),
    )
    .await;
    check_answer(&doc, "post", "/v1/publish", s, &b);
    assert_eq!(s, 200);
    let ev = sse.next_event(wait).await;
    assert_eq!(ev.event, "said");
    event_matches(&ev.data, "Envelope");

    let subs = format!("/v1/connections/{conn}/subscriptions");
    let (s, b) = send(
        Method::POST,
        &url(&subs),
        Some(&user),
        Some(json!({"add": ["chat:2"]})),
    )
    .await;
    check_answer(&doc, "post", "/v1/connections/{id}/subscriptions", s, &b);
    assert_eq!(s, 200, "{b}");
    let ev = sse.next_event(wait).await;
    assert_eq!(ev.event, "subscribed");
    event_matches(&ev.data, "SubscriptionEvent");

    let (s, b) = send(
        Method::POST,
        &url("/v1/broadcast"),
        admin_,
        Some(json!({"type": "maintenance", "data": {"in_s": 60}})),
    )
    .await;
    check_answer(&doc, "post", "/v1/broadcast", s, &b);
    assert_eq!(s, 200, "{b}");
    let ev = sse.next_event(wait).await;
    assert_eq!(ev.event, "maintenance");
    event_matches(&ev.data, "BroadcastMessage");

    for (p, template) in [
        ("/v1/status", "/v1/status"),
        ("/v1/connections", "/v1/connections"),
        ("/v1/connections?user=u1&channel=chat:1", "/v1/connections"),
        ("/v1/channels", "/v1/channels"),
        ("/v1/admin/incidents", "/v1/admin/incidents"),
        (
            "/v1/channels/chat%3A1/presence",
            "/v1/channels/{channel}/presence",
        ),
    ] {
        let (s, b) = send(Method::GET, &url(p), admin_, None).await;
        assert_eq!(s, 200, "{p}: {b}");
        check_answer(&doc, "get", template, s, &b);
    }

    let poll = "/v1/poll?channel=chat:1&last_event_id=0&timeout_ms=0";
    let (s, b) = send(Method::GET, &url(poll), Some(&user), None).await;
    check_answer(&doc, "get", "/v1/poll", s, &b);
    assert_eq!(s, 200, "{b}");

    // Refusals.
    let refusals: Vec<Case> = vec![
        (
            Method::GET,
            "/v1/status".into(),
            "/v1/status",
            None,
            None,
            401,
        ),
        (
            Method::GET,
            "/v1/status".into(),
            "/v1/status",
            Some("a.b.c"),
            None,
            401,
        ),
        (
            Method::GET,
            "/v1/status".into(),
            "/v1/status",
            Some(&user),
            None,
            403,
        ),
        (
            Method::POST,
            "/v1/publish".into(),
            "/v1/publish",
            Some(&user),
            Some(json!({"channel": "chat:1", "nope": 1})),
            400,
        ),
        (
            Method::POST,
            "/v1/publish".into(),
            "/v1/publish",
            Some(&other),
            Some(json!({"channel": "chat:1"})),
            403,
        ),
        (
            Method::GET,
            "/v1/stream?channel=a%20b".into(),
            "/v1/stream",
            Some(&user),
            None,
            400,
        ),
        (
            Method::GET,
            "/v1/stream?channel=admin:1".into(),
            "/v1/stream",
            Some(&user),
            None,
            403,
        ),
        (
            Method::GET,
            "/v1/poll?channel=chat:1&timeout_ms=x".into(),
            "/v1/poll",
            Some(&user),
            None,
            400,
        ),
        (
            Method::POST,
            "/v1/connections/c_nope/subscriptions".into(),
            "/v1/connections/{id}/subscriptions",
            Some(&user),
            Some(json!({})),
            404,
        ),
        (
            Method::POST,
            subs.clone(),
            "/v1/connections/{id}/subscriptions",
            Some(&user),
            Some(json!({"add": ["admin:1"]})),
            403,
        ),
        (
            Method::POST,
            "/v1/sources/nope/start".into(),
            "/v1/sources/{name}/{action}",
            admin_,
            None,
            404,
        ),
        (
            Method::GET,
            "/v1/channels/chat%3A%2A/presence".into(),
            "/v1/channels/{channel}/presence",
            admin_,
            None,
            400,
        ),
        (
            Method::GET,
            "/v1/channels/chat%3A1/presence".into(),
            "/v1/channels/{channel}/presence",
            Some(&user),
            None,
            403,
        ),
        (
            Method::POST,
            "/v1/broadcast".into(),
            "/v1/broadcast",
            admin_,
            Some(json!({"type": "connected"})),
            400,
        ),
    ];
    for (method, path, template, token, body, want) in refusals {
        let m = method.as_str().to_lowercase();
        let (s, b) = send(method, &url(&path), token, body).await;
        assert_eq!(s, want, "{m} {path}: {b}");
        check_answer(&doc, &m, template, s, &b);
    }
    // The router's own refusals have the error body too.
    for (method, path, want) in [
        (Method::GET, "/v1/nope", 404),
        (Method::PUT, "/v1/publish", 405),
    ] {
        let (s, b) = send(method, &url(path), None, None).await;
        assert_eq!(s, want);
        assert_valid(&doc, &component("Error"), &b, path);
    }

    let (s, b) = send(
        Method::DELETE,
        &url("/v1/users/u1/connections"),
        admin_,
        None,
    )
    .await;
    check_answer(&doc, "delete", "/v1/users/{user}/connections", s, &b);
    assert_eq!(s, 200, "{b}");
    let closing = sse.next_event(wait).await;
    assert_eq!(closing.event, "closing");
    event_matches(&closing.data, "ClosingEvent");

    let metrics = http().get(url("/metrics")).send().await.unwrap();
    assert!(
        doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"][metrics.headers()
            ["content-type"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()]
        .is_object()
    );

    let (s, b) = send(
        Method::POST,
        &url("/v1/admin/drain"),
        admin_,
        Some(json!({"node": "no-such-node"})),
    )
    .await;
    check_answer(&doc, "post", "/v1/admin/drain", s, &b);
    assert_eq!(s, 404, "{b}");
    // Last: the drain ends the server.
    let (s, b) = send(
        Method::POST,
        &url("/v1/admin/drain"),
        admin_,
        Some(json!({})),
    )
    .await;
    check_answer(&doc, "post", "/v1/admin/drain", s, &b);
    assert_eq!(s, 202, "{b}");
}

/// The events of the streams (`x-sse-events` of the document): presence events and the admin
/// stream's status and incidents.
#[tokio::test]
async fn stream_events_match_the_schemas() {
    let doc = document();
    let server = Server::start_with_config("[presence]\nevents = [\"room:*\"]\n", &[]);
    let wait = Duration::from_secs(10);
    let sse_schema = |path: &str, event: &str| {
        doc["paths"][path]["get"]["responses"]["200"]["x-sse-events"][event].clone()
    };
    let matches = |path: &str, e: &Ev| {
        let schema = sse_schema(path, &e.event);
        assert!(
            schema.is_object(),
            "{path}: event {} is not described",
            e.event
        );
        let data: Value = serde_json::from_str(&e.data).expect("JSON data");
        assert_valid(
            &doc,
            &schema,
            &data,
            &format!("event {} of {path}", e.event),
        );
    };

    let user = token("u1", &["room:*"], &[]);
    let (mut first, _) = Sse::open(&server.stream_url(&["room:1"]), &[bearer(&user)]).await;
    let (_second, _) = Sse::open(&server.stream_url(&["room:1"]), &[bearer(&user)]).await;
    let join = loop {
        let e = first.next_event(wait).await;
        if e.event == "presence.join" {
            break e;
        }
    };
    matches("/v1/stream", &join);
    assert_eq!(
        serde_json::from_str::<Value>(&join.data).unwrap()["channel"],
        "room:1"
    );

    let admin = format!("{}/v1/admin/stream", server.url);
    let mut stream = Sse::connect(&admin, &[bearer(&admin_token())]).await;
    assert_eq!(stream.status, 200, "{}", stream.error);
    let status = stream.next_event(wait).await;
    assert_eq!(status.event, "status");
    matches("/v1/admin/stream", &status);
    // A refused token is an incident.
    let (s, _, _) = get(&format!("{}/v1/status", server.url), &[bearer("a.b.c")]).await;
    assert_eq!(s, 401);
    let incident = loop {
        let e = stream.next_event(wait).await;
        matches("/v1/admin/stream", &e);
        if e.event == "incident" {
            break e;
        }
    };
    let incident: Value = serde_json::from_str(&incident.data).unwrap();
    assert_eq!(incident["code"], "invalid_token", "{incident}");
    // The admin stream refuses others, with a documented error.
    let (s, _, body) = get(&admin, &[bearer(&user)]).await;
    check_answer(&doc, "get", "/v1/admin/stream", s, &body);
    assert_eq!(s, 403);
}

/// Two nodes on one Redis log: the cluster-wide answers (status with both nodes' summaries,
/// connections, channels, presence, subscription changes through the other node, drains and
/// source control naming a node) match the schemas.
#[tokio::test]
async fn cluster_answers_match_the_schemas() {
    let doc = document();
    let redis = engines::redis::start(engines::redis::Persistence::None);
    let config = |id: &str| {
        format!(
            "[server]\nnode_id = \"{id}\"\n[log]\nkind = \"redis\"\nurl = \"{}\"\nstream = \"oa\"\n\
             [cluster]\nheartbeat_ms = 200\nnode_timeout_ms = 1000\n[presence]\nevents = [\"chat:*\"]\n",
            engines::redis::url(&redis)
        )
    };
    let a = Server::start_with_config(&config("node-a"), &[]);
    let b = Server::start_with_config(&config("node-b"), &[]);
    let admin = admin_token();
    let admin_ = Some(admin.as_str());
    let user = token("u1", &["chat:*"], &[]);

    // node-a hears of node-b (heartbeats), bounded.
    let mut status = Value::Null;
    for _ in 0..200 {
        let (s, b) = send(Method::GET, &format!("{}/v1/status", a.url), admin_, None).await;
        assert_eq!(s, 200, "{b}");
        status = b;
        if status["nodes"].as_array().is_some_and(|n| n.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    check_answer(&doc, "get", "/v1/status", 200, &status);

    let (_sse, connected) = Sse::open(&b.stream_url(&["chat:1"]), &[bearer(&user)]).await;
    let conn = connected["connection_id"].as_str().unwrap().to_owned();
    let subs = format!("/v1/connections/{conn}/subscriptions");
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/v1/connections".into(),
            "/v1/connections",
            admin_,
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/channels".into(),
            "/v1/channels",
            admin_,
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/channels/chat%3A1/presence".into(),
            "/v1/channels/{channel}/presence",
            admin_,
            None,
            200,
        ),
        (
            Method::GET,
            "/v1/admin/incidents".into(),
            "/v1/admin/incidents",
            admin_,
            None,
            200,
        ),
        (
            Method::POST,
            subs,
            "/v1/connections/{id}/subscriptions",
            Some(&user),
            Some(json!({"add": ["chat:2"]})),
            200,
        ),
        (
            Method::POST,
            "/v1/broadcast".into(),
            "/v1/broadcast",
            admin_,
            Some(json!({"type": "note"})),
            200,
        ),
        (
            Method::POST,
            "/v1/sources/nope/start?node=node-b".into(),
            "/v1/sources/{name}/{action}",
            admin_,
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/sources/nope/start?node=node-z".into(),
            "/v1/sources/{name}/{action}",
            admin_,
            None,
            404,
        ),
        (
            Method::POST,
            "/v1/admin/drain".into(),
            "/v1/admin/drain",
            admin_,
            Some(json!({"node": "node-b"})),
            202,
        ),
    ];
    for (method, path, template, token, body, want) in cases {
        let m = method.as_str().to_lowercase();
        let (s, answer) = send(method, &format!("{}{path}", a.url), token, body).await;
        assert_eq!(s, want, "{m} {path}: {answer}");
        check_answer(&doc, &m, template, s, &answer);
        match template {
            "/v1/connections" => assert_eq!(answer["connections"][0]["node"], "node-b", "{answer}"),
            "/v1/admin/drain" => assert_eq!(answer["nodes"], json!(["node-b"]), "{answer}"),
            _ => {}
        }
    }
}

/// The TypeScript client's types are generated from clients/js/test/openapi.json
/// (`npm run openapi:types` in clients/js): it must be this document.
/// `SSEGATE_UPDATE_OPENAPI=1 cargo nextest run --test openapi` rewrites it.
#[test]
fn the_js_clients_copy_of_the_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js/test/openapi.json");
    let text = serde_json::to_string_pretty(&document()).unwrap() + "\n";
    if std::env::var_os("SSEGATE_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &text).expect("write clients/js/test/openapi.json");
    }
    let copy = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        copy == text,
        "clients/js/test/openapi.json is not the current document: run \
         `SSEGATE_UPDATE_OPENAPI=1 cargo nextest run --test openapi`, then \
         `npm run openapi:types` in clients/js"
    );
}
