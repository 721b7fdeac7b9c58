//! The OpenAPI 3.1 description of the HTTP API, served at `GET /v1/openapi.json`.
//!
//! Written here, in code, next to the handlers it describes: every route of
//! [`super::router`] has an operation (tests/openapi.rs fails for a route without one, and
//! checks real answers and the examples of docs/api.md against the schemas). Each schema is
//! written once, in `components/schemas`, by the small functions below.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "ssegate",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "A real-time gateway: services publish, browsers receive over Server-Sent Events.",
            "description": INFO,
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "tags": [
            { "name": "stream", "description": "Subscribing: streams, long-polls, subscription changes." },
            { "name": "publish", "description": "Appending events to the log." },
            { "name": "admin", "description": "Credentials with the admin grant; cluster-wide on the Redis and NATS logs." },
            { "name": "operations", "description": "Health, readiness, metrics, this document, the console." },
            { "name": "dapr", "description": "Dapr pub/sub delivery (a `type = \"dapr\"` source)." },
            { "name": "mercure", "description": "The Mercure hub protocol (`[mercure] enabled = true`); see docs/mercure.md." },
        ],
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "parameters": parameters(),
            "securitySchemes": security_schemes(),
        },
    })
}

const INFO: &str = "The contract, in prose, is docs/api.md. Every JSON error is \
`{\"error\": {\"code\", \"message\"}}` (schema `Error`); codes are stable. Besides the codes \
listed per operation, any request may get `400 invalid_host`, `400 malformed_body`, \
`403 cross_site_request` (a cookie-authenticated state change from an origin not allowed), \
`408 body_timeout`, `413 body_too_large`, `415 unsupported_media_type`, \
`501 unsupported_transfer_encoding`, `404 not_found` (no such endpoint) and \
`405 method_not_allowed` (with `Allow`). Every response carries `X-Request-Id`.";

/// The document as served: built once.
fn served() -> &'static Bytes {
    static DOC: OnceLock<Bytes> = OnceLock::new();
    DOC.get_or_init(|| Bytes::from(serde_json::to_vec(&document()).expect("serializes")))
}

/// `GET /v1/openapi.json`
pub(super) async fn serve() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        served().clone(),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Schema helpers.

/// `{"$ref": "#/components/schemas/<name>"}`
fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// An object with these properties, all of them required.
fn obj(props: Value) -> Value {
    let required: Vec<&String> = props.as_object().expect("properties").keys().collect();
    json!({ "type": "object", "required": required, "properties": props })
}

/// An object with these properties, those of `optional` not required.
fn obj_opt(props: Value, optional: &[&str]) -> Value {
    let mut o = obj(props);
    o["required"] = json!(o["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter(|k| !optional.contains(&k.as_str().expect("name")))
        .collect::<Vec<_>>());
    o
}

/// An object the server refuses unknown fields of (`400 invalid_json`).
fn closed(mut o: Value) -> Value {
    o["additionalProperties"] = json!(false);
    o
}

/// An object that may have other properties than those it lists.
fn open(mut o: Value) -> Value {
    o["additionalProperties"] = json!(true);
    o
}

fn with_doc(mut schema: Value, description: &str) -> Value {
    schema["description"] = json!(description);
    schema
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn strings() -> Value {
    json!({ "type": "array", "items": { "type": "string" } })
}

fn nullable_string() -> Value {
    json!({ "type": ["string", "null"] })
}

fn count() -> Value {
    json!({ "type": "integer", "minimum": 0 })
}

fn boolean() -> Value {
    json!({ "type": "boolean" })
}

fn time() -> Value {
    json!({ "type": "string", "format": "date-time" })
}

fn one_of_strings(values: &[&str]) -> Value {
    json!({ "type": "string", "enum": values })
}

fn array_of(item: Value) -> Value {
    json!({ "type": "array", "items": item })
}

/// Any JSON value.
fn any() -> Value {
    json!({})
}

/// `{<key>: <list>, "unreachable": […]}`: a cluster-wide answer.
fn cluster_wide(key: &str, value: Value) -> Value {
    let mut props = Map::new();
    props.insert(key.into(), value);
    props.insert("unreachable".into(), r("Unreachable"));
    obj(Value::Object(props))
}

fn schemas() -> Value {
    let mut all = Map::new();
    for group in [
        stream_schemas(),
        publish_schemas(),
        admin_schemas(),
        status_schemas(),
        other_schemas(),
    ] {
        if let Value::Object(m) = group {
            all.extend(m);
        }
    }
    Value::Object(all)
}

fn stream_schemas() -> Value {
    json!({
        "Error": obj(json!({
            "error": closed(obj_opt(json!({
                "code": { "type": "string", "pattern": "^[a-z][a-z0-9_]*$", "description": "Stable, snake_case." },
                "message": { "type": "string", "minLength": 1, "description": "A sentence for a human; may change." },
                "channels": with_doc(strings(), "With `403 forbidden_channel`: the channels refused."),
            }), &["channels"])),
        })),
        "EventId": with_doc(string(), "A log position: opaque, compare only for equality (`\"1042\"`, `\"1732500000123-0\"`, `\"7-1\"`)."),
        "Unreachable": with_doc(strings(), "Nodes believed alive that did not answer within `cluster.request_timeout_ms` (empty normally; always empty on the single-node logs)."),
        "Envelope": closed(obj(json!({
            "id": r("EventId"),
            "channel": string(),
            "type": string(),
            "time": with_doc(time(), "The publish time, RFC 3339 UTC with milliseconds."),
            "data": with_doc(any(), "The published JSON."),
        }))),
        "BroadcastMessage": closed(obj(json!({ "type": string(), "time": time(), "data": any() }))),
        "ConnectedEvent": closed(obj(json!({
            "connection_id": string(),
            "user": string(),
            "channels": strings(),
            "heartbeat_ms": count(),
            "last_event_id": with_doc(r("EventId"), "Where live delivery begins: the resume id, or the log head (`\"0\"` for an empty log). A client with no id of its own resumes from here."),
        }))),
        "GapEvent": closed(obj_opt(json!({
            "last_event_id": r("EventId"),
            "oldest_id": nullable_string(),
            "reason": one_of_strings(&["retention", "damaged", "unavailable"]),
            "channel": with_doc(string(), "When only the history of one added channel is concerned."),
        }), &["reason", "channel"])),
        "SubscriptionEvent": closed(obj(json!({ "channels": strings() }))),
        "ClosingEvent": closed(obj(json!({
            "reason": one_of_strings(&["shutdown", "token_expired", "revoked", "auth_unavailable", "replaced", "kicked"]),
        }))),
        "PresenceEvent": closed(obj(json!({
            "channel": string(),
            "type": one_of_strings(&["presence.join", "presence.leave"]),
            "time": time(),
            "data": closed(obj(json!({ "user": string() }))),
        }))),
    })
}

fn publish_schemas() -> Value {
    json!({
        "PublishEvent": closed(json!({
            "type": "object",
            "properties": {
                "channel": string(),
                "channels": { "type": "array", "items": { "type": "string" }, "minItems": 1 },
                "type": with_doc(json!({ "type": "string", "minLength": 1, "maxLength": 128 }), "Default `message`; no control characters; not a reserved control type."),
                "data": with_doc(any(), "Default `null`."),
                "id": with_doc(json!({ "type": "string", "minLength": 1, "maxLength": 256 }), "Idempotency key: a key seen within `log.dedupe_window_s` appends nothing and returns the original ids."),
                "users": with_doc(strings(), "Only connections of these users receive the event."),
            },
            "oneOf": [ { "required": ["channel"] }, { "required": ["channels"] } ],
        })),
        "PublishRequest": {
            "oneOf": [
                r("PublishEvent"),
                { "type": "array", "items": r("PublishEvent"), "minItems": 1, "description": "Appended atomically, in order." },
            ],
        },
        "PublishResponse": obj(json!({ "ids": with_doc(array_of(r("EventId")), "One id per appended event, in order.") })),
        "SubscriptionChange": closed(obj_opt(json!({
            "add": strings(),
            "remove": strings(),
            "last_event_id": with_doc(r("EventId"), "The added channels' events after this id are delivered too (as history frames without `id:`)."),
            "since": with_doc(r("EventId"), "The same as `last_event_id` (give one of them)."),
            "history": with_doc(json!({ "type": "integer", "minimum": 0, "maximum": 1000 }), "The added channels' newest this many events (after `since` when given) come first as history frames; patterns get none. 0: none."),
        }), &["add", "remove", "last_event_id", "since", "history"])),
        "History": obj_opt(json!({
            "channel": string(),
            "events": with_doc(array_of(r("Envelope")), "The channel's newest events (before `before`), oldest first."),
            "more": with_doc(boolean(), "Older events may have been left out (by `limit`, or because one answer looks at 10,000 events at most): ask again with `before` = `next_before`."),
            "next_before": with_doc(r("EventId"), "With `more`: the `before` of the next page."),
            "last_event_id": with_doc(r("EventId"), "The answer holds every event of the channel up to here: subscribe with `since` = it to go on with no gap and no duplicate."),
        }), &["next_before"]),
        "ChannelsNow": obj(json!({ "channels": with_doc(strings(), "All channels of the connection now.") })),
        "PollResponse": obj_opt(json!({
            "events": array_of(r("Envelope")),
            "last_event_id": with_doc(r("EventId"), "Where the next poll resumes."),
            "gap": boolean(),
            "oldest_id": with_doc(nullable_string(), "With `gap`: the oldest retained event."),
            "gap_reason": one_of_strings(&["retention", "damaged"]),
        }), &["oldest_id", "gap_reason"]),
    })
}

fn admin_schemas() -> Value {
    json!({
        "Connection": obj(json!({
            "connection_id": string(),
            "user": string(),
            "channels": strings(),
            "ip": nullable_string(),
            "opened": time(),
            "session_id": nullable_string(),
            "node": with_doc(string(), "The node holding the stream."),
        })),
        "ConnectionList": connection_list(),
        "Truncated": with_doc(boolean(), "A node had more than 1000 to list: each node lists its first 1000."),
        "Closed": cluster_wide("closed", count()),
        "ChannelList": cluster_wide("channels", array_of(obj(json!({
            "channel": with_doc(string(), "A channel or a pattern."),
            "subscribers": count(),
            "events": with_doc(count(), "Events of the channel dispatched since the node started (while it had subscribers there)."),
        })))),
        "Presence": obj_opt(json!({
            "channel": string(),
            "users": array_of(obj(json!({ "user": string(), "connections": count() }))),
            "connections": count(),
            "unreachable": r("Unreachable"),
            "clients": with_doc(array_of(obj(json!({ "user": string(), "connection_id": string(), "node": string() }))), "Admins only."),
            "truncated": with_doc(r("Truncated"), "Admins only: `clients` is cut."),
        }), &["clients", "truncated"]),
        "BroadcastRequest": closed(obj_opt(json!({
            "type": string(),
            "data": any(),
        }), &["data"])),
        "Broadcasted": cluster_wide("connections", with_doc(count(), "Streams that got it.")),
        "DrainRequest": closed(json!({
            "type": "object",
            "properties": {
                "node": with_doc(string(), "Drain that node."),
                "all": with_doc(json!({ "const": true }), "Drain every node."),
            },
            "description": "No body or `{}`: this node.",
        })),
        "Draining": obj(json!({
            "draining": { "const": true },
            "window_ms": count(),
            "nodes": with_doc(strings(), "The nodes that start draining."),
            "unreachable": r("Unreachable"),
        })),
        "SourceStatus": source_status(false),
        "SourceControlled": source_status(true),
    })
}

fn status_schemas() -> Value {
    json!({
        "Status": obj_opt(json!({
            "node_id": string(),
            "version": string(),
            "uptime_s": count(),
            "connections": count(),
            "channels": count(),
            "log": obj(json!({
                "kind": one_of_strings(&["memory", "file", "redis", "nats"]),
                "head": r("EventId"),
                "oldest": nullable_string(),
            })),
            "hub": with_doc(json!({ "type": "object", "additionalProperties": count() }), "Every hub counter of /metrics, without the `ssegate_` prefix and `_total` suffix."),
            "auth": obj(json!({ "forward_auth_up": { "type": ["boolean", "null"] } })),
            "sources": array_of(r("SourceStatus")),
            "mercure": {
                "oneOf": [
                    { "type": "null" },
                    obj(json!({
                        "subscribers": count(),
                        "active_subscriptions": { "type": ["integer", "null"], "minimum": 0 },
                        "subscriptions_caught_up": { "type": ["boolean", "null"] },
                    })),
                ],
            },
            "cluster": obj_opt(json!({
                "bus": { "enum": ["redis", "nats", null] },
                "listening": with_doc(boolean(), "Whether this node hears the bus (its own heartbeats come back within `node_timeout_ms`); always true on the single-node logs."),
                "heartbeat_ms": count(),
                "node_timeout_ms": count(),
            }), &["listening"]),
            "nodes": with_doc(array_of(r("NodeSummary")), "Every node, sorted by node_id, this one included."),
        }), &[]),
        "NodeSummary": obj_opt(json!({
            "node_id": string(),
            "self": boolean(),
            "ready": boolean(),
            "draining": boolean(),
            "version": string(),
            "uptime_s": count(),
            "connections": count(),
            "channels": count(),
            "events_in_per_s": with_doc(json!({ "type": "number", "minimum": 0 }), "Events this node appended per second over the last heartbeat period."),
            "events_out_per_s": with_doc(json!({ "type": "number", "minimum": 0 }), "Event frames delivered to its streams per second."),
            "log_head": nullable_string(),
            "dispatched": with_doc(string(), "How far its dispatcher has delivered."),
            "lag_ms": count(),
            "last_seen_ms": with_doc(count(), "Since its last heartbeat; 0 for this node."),
            "sources": array_of(r("SourceStatus")),
            "stale": with_doc(boolean(), "Present (true) when the node could not make a new summary within a heartbeat period (a slow log) and sent its last one again."),
        }), &["stale"]),
        "Incident": obj(json!({
            "time": time(),
            "node": string(),
            "kind": one_of_strings(&["auth", "limit"]),
            "code": with_doc(string(), "The error code answered (`invalid_token`, `rate_limited`, …)."),
            "ip": nullable_string(),
            "path": string(),
        })),
        "StatusError": with_doc(obj(json!({
            "status": { "type": "integer", "minimum": 400, "maximum": 599 },
            "code": string(),
            "message": string(),
        })), "In the admin stream, instead of `status` when the status could not be read (the log unavailable): the HTTP status `GET /v1/status` would answer, its code and message."),
        "IncidentList": cluster_wide("incidents", with_doc(json!({ "type": "array", "items": r("Incident"), "maxItems": 200 }), "Newest first.")),
    })
}

fn other_schemas() -> Value {
    json!({
        "Health": obj(json!({ "status": { "const": "ok" } })),
        "Readiness": obj_opt(json!({
            "status": one_of_strings(&["ready", "degraded", "not_ready"]),
            "reason": string(),
        }), &["reason"]),
        "TokenClaims": obj_opt(json!({
            "sub": json!({ "type": "string", "minLength": 1, "maxLength": 256 }),
            "exp": count(),
            "nbf": count(),
            "iss": string(),
            "aud": { "type": ["string", "array"] },
            "ssegate": {
                "type": "object",
                "properties": {
                    "subscribe": strings(),
                    "publish": strings(),
                    "presence": with_doc(strings(), "Channel patterns whose presence (`GET /v1/channels/{channel}/presence`) the principal may read."),
                    "admin": boolean(),
                },
            },
        }), &["nbf", "iss", "aud", "ssegate"]),
        "DaprSubscription": obj_opt(json!({
            "pubsubname": string(),
            "topic": string(),
            "route": string(),
            "deadLetterTopic": string(),
        }), &["deadLetterTopic"]),
        "DaprReply": obj_opt(json!({
            "status": one_of_strings(&["SUCCESS", "RETRY", "DROP"]),
            "message": string(),
        }), &["message"]),
        "CloudEvent": with_doc(
            open(obj_opt(
                json!({
                    "specversion": string(),
                    "id": string(),
                    "source": string(),
                    "type": string(),
                    "datacontenttype": string(),
                    "data": any(),
                }),
                &["datacontenttype", "data"],
            )),
            "A CloudEvent 1.0 in structured JSON; extension attributes (the sidecar's `topic`, `pubsubname`, `traceparent`, …) are allowed.",
        ),
        "MercureUpdate": obj_opt(json!({
            "topic": { "oneOf": [string(), strings()], "description": "Repeatable (alternate topics, draft-07)." },
            "data": string(),
            "private": string(),
            "id": string(),
            "type": string(),
            "retry": { "type": "string", "pattern": "^[0-9]+$" },
        }), &["data", "private", "id", "type", "retry"]),
        "MercureSubscription": obj_opt(json!({
            "@context": string(),
            "id": string(),
            "type": { "const": "Subscription" },
            "subscriber": string(),
            "topic": string(),
            "matchType": string(),
            "match": string(),
            "active": boolean(),
            "node": string(),
            "payload": any(),
            "lastEventID": string(),
        }), &["@context", "topic", "matchType", "match", "node", "payload", "lastEventID"]),
        "MercureSubscriptions": obj(json!({
            "@context": string(),
            "id": string(),
            "type": { "const": "Subscriptions" },
            "lastEventID": string(),
            "subscriptions": array_of(r("MercureSubscription")),
        })),
        "ProtectedResourceMetadata": obj_opt(json!({
            "resource": string(),
            "bearer_methods_supported": array_of(one_of_strings(&["header", "query"])),
            "mercure_cookie": boolean(),
            "mercure_version": { "const": 8 },
            "authorization_servers": strings(),
            "jwks_uri": string(),
        }), &["authorization_servers", "jwks_uri"]),
    })
}

/// `{"connections", "truncated", "unreachable"}`
fn connection_list() -> Value {
    let mut list = cluster_wide("connections", array_of(r("Connection")));
    list["properties"]["truncated"] = r("Truncated");
    list["required"]
        .as_array_mut()
        .expect("list")
        .push(json!("truncated"));
    list
}

/// A source's status object; `controlled`: the answer of start/stop, which names the node.
fn source_status(controlled: bool) -> Value {
    let mut s = obj(json!({
        "name": string(),
        "type": string(),
        "state": one_of_strings(&["running", "backoff", "failed", "stopped"]),
        "last_error": nullable_string(),
        "checkpoint": any(),
        "events": count(),
        "skipped": count(),
        "restarts": count(),
        "last_change_ms": count(),
    }));
    if controlled {
        s["properties"]["node"] = string();
        s["required"]
            .as_array_mut()
            .expect("list")
            .push(json!("node"));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Parameters and security.

fn param(name: &str, at: &str, schema: Value, description: &str) -> Value {
    json!({ "name": name, "in": at, "schema": schema, "description": description })
}

/// A path parameter; `example` is a value the tests request the path with.
fn path_param(name: &str, example: &str, description: &str) -> Value {
    let mut p = param(name, "path", string(), description);
    p["required"] = json!(true);
    p["example"] = json!(example);
    p
}

fn p(name: &str) -> Value {
    json!({ "$ref": format!("#/components/parameters/{name}") })
}

fn parameters() -> Value {
    let mut channel = param(
        "channel",
        "query",
        json!({ "type": "array", "items": { "type": "string" }, "minItems": 1 }),
        "A channel or pattern; repeat for several (at least one).",
    );
    channel["required"] = json!(true);
    channel["explode"] = json!(true);
    json!({
        "channel": channel,
        "last_event_id": param("last_event_id", "query", string(), "Resume after this event (the `Last-Event-ID` header wins)."),
        "Last-Event-ID": param("Last-Event-ID", "header", string(), "Resume after this event."),
        "access_token": param("access_token", "query", string(), "The token, when `auth.allow_query_token` (the default) allows it."),
        "since": param("since", "query", string(), "The same as `last_event_id`."),
        "history": param("history", "query", json!({ "type": "integer", "minimum": 0, "maximum": 1000 }), "Before live delivery, the newest this many events of each channel of the stream that is not a pattern, in log order, with their ids (1000 at most in all, the newest). Ignored when the stream resumes (`Last-Event-ID`, `last_event_id`, `since`)."),
        "session_id": param("session_id", "query", json!({ "type": "string", "minLength": 1, "maxLength": 128 }), "A newer stream of the same user with the same `session_id` ends the older one (`closing` `replaced`)."),
        "node": param("node", "query", string(), "On that node (default: the node that answers)."),
    })
}

fn security_schemes() -> Value {
    json!({
        "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A JWT (see docs/auth.md); with forward-auth, whatever the app's session takes." },
        "publisherKey": { "type": "http", "scheme": "bearer", "description": "A publisher key of `auth.publisher_keys` (a bearer token without dots)." },
        "cookie": { "type": "apiKey", "in": "cookie", "name": "ssegate_token", "description": "The JWT in the cookie `auth.cookie_name`." },
        "accessToken": { "type": "apiKey", "in": "query", "name": "access_token", "description": "The JWT in the query (when `auth.allow_query_token`)." },
        "daprApiToken": { "type": "apiKey", "in": "header", "name": "dapr-api-token", "description": "The source's `app_api_token`." },
        "mercureBearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A Mercure JWT (`mercure` claim)." },
        "mercureCookie": { "type": "apiKey", "in": "cookie", "name": "mercureAuthorization", "description": "A Mercure JWT in `mercure.cookie_name`." },
        "mercureQuery": { "type": "apiKey", "in": "query", "name": "authorization", "description": "A Mercure JWT in the query (`mercure.allow_query_token`)." },
    })
}

/// Who may call an operation.
#[derive(Clone, Copy)]
enum Auth {
    /// No credentials.
    Public,
    /// A subscriber: header, cookie or query token.
    Subscriber,
    /// A publisher: a JWT or a publisher key, in the header or the cookie.
    Publisher,
    /// The admin grant, header or cookie.
    Admin,
    /// The admin grant, header, cookie or query token (the admin stream).
    AdminStream,
    /// The admin grant or a `presence` grant covering the channel, header or cookie.
    Presence,
    Dapr,
    Mercure,
}

impl Auth {
    fn requirements(self) -> Value {
        let schemes: &[&str] = match self {
            Auth::Public => &[],
            Auth::Subscriber | Auth::AdminStream => &["bearer", "cookie", "accessToken"],
            Auth::Publisher => &["bearer", "publisherKey", "cookie"],
            Auth::Admin | Auth::Presence => &["bearer", "cookie"],
            Auth::Dapr => &["daprApiToken"],
            Auth::Mercure => &["mercureBearer", "mercureCookie", "mercureQuery"],
        };
        let list: Vec<Value> = schemes.iter().map(|s| json!({ *s: [] })).collect();
        if matches!(self, Auth::Dapr) {
            // The token is optional: only checked when the source sets one.
            return json!([list[0], {}]);
        }
        Value::Array(list)
    }

    /// The errors of authenticating this way.
    fn errors(self) -> Vec<(u16, &'static str)> {
        let mut list = match self {
            Auth::Public | Auth::Dapr | Auth::Mercure => return vec![],
            _ => vec![
                (
                    401,
                    "missing_credentials, token_expired, token_not_yet_valid, invalid_token",
                ),
                (403, "forbidden"),
                (503, "auth_unavailable"),
            ],
        };
        if matches!(self, Auth::Subscriber | Auth::AdminStream) {
            list.push((400, "query_token_disabled"));
        }
        if matches!(self, Auth::Admin | Auth::AdminStream) {
            list.push((403, "admin_required"));
        }
        list
    }
}

// ---------------------------------------------------------------------------------------------
// Operations.

/// One operation, built step by step.
struct Op {
    op: Value,
    /// Error codes by status.
    errors: BTreeMap<u16, Vec<String>>,
}

impl Op {
    fn new(tag: &str, id: &str, summary: &str, auth: Auth) -> Op {
        let mut op = Op {
            op: json!({
                "tags": [tag],
                "operationId": id,
                "summary": summary,
                "security": auth.requirements(),
                "responses": {},
            }),
            errors: BTreeMap::new(),
        };
        for (status, codes) in auth.errors() {
            op = op.err(status, codes);
        }
        op
    }

    fn describe(mut self, text: &str) -> Op {
        self.op["description"] = json!(text);
        self
    }

    fn params(mut self, list: Vec<Value>) -> Op {
        self.op["parameters"] = Value::Array(list);
        self
    }

    /// A JSON body of `schema` (a component).
    fn body(mut self, schema: &str, required: bool) -> Op {
        self.op["requestBody"] = json!({
            "required": required,
            "content": { "application/json": { "schema": r(schema) } },
        });
        self.err(400, "invalid_json")
    }

    fn body_as(mut self, content_type: &str, schema: Value) -> Op {
        self.op["requestBody"] =
            json!({ "required": true, "content": { content_type: { "schema": schema } } });
        self
    }

    /// A JSON answer of `schema` (a component).
    fn ok(self, status: u16, description: &str, schema: &str) -> Op {
        self.answer(status, description, "application/json", r(schema))
    }

    fn answer(mut self, status: u16, description: &str, content_type: &str, schema: Value) -> Op {
        self.op["responses"][status.to_string()] = json!({
            "description": description,
            "content": { content_type: { "schema": schema } },
        });
        self
    }

    /// A `text/event-stream` answer whose events carry these schemas (`x-sse-events`).
    fn sse(self, description: &str, events: Value) -> Op {
        let mut op = self.answer(
            200,
            description,
            "text/event-stream",
            json!({ "type": "string" }),
        );
        op.op["responses"]["200"]["x-sse-events"] = events;
        op
    }

    /// Error answers: `codes` (comma-separated) at `status`, in the JSON error body.
    fn err(mut self, status: u16, codes: &str) -> Op {
        let list = self.errors.entry(status).or_default();
        for code in codes.split(',').map(str::trim) {
            if !list.iter().any(|c| c == code) {
                list.push(code.to_owned());
            }
        }
        self
    }

    fn build(mut self) -> Value {
        for (status, codes) in &self.errors {
            let text: Vec<String> = codes.iter().map(|c| format!("`{c}`")).collect();
            self.op["responses"][status.to_string()] = json!({
                "description": text.join(", "),
                "content": { "application/json": { "schema": r("Error") } },
            });
        }
        self.op
    }
}

/// The errors of opening a stream or a poll.
fn subscribe_errors(op: Op) -> Op {
    op.err(
        400,
        "missing_channel, invalid_channel, too_many_channels, invalid_last_event_id, invalid_session_id",
    )
    .err(403, "forbidden_channel")
    .err(
        429,
        "too_many_connections, too_many_connections_for_user, too_many_connections_from_address, connection_rate_limited",
    )
    .err(503, "log_unavailable")
}

fn stream_params() -> Vec<Value> {
    vec![
        p("channel"),
        p("last_event_id"),
        p("since"),
        p("Last-Event-ID"),
        p("access_token"),
        p("session_id"),
    ]
}

/// The stream's parameters with `history`.
fn stream_params_with_history() -> Vec<Value> {
    let mut params = stream_params();
    params.insert(2, p("history"));
    params
}

fn stream_events() -> Value {
    json!({
        "connected": r("ConnectedEvent"),
        "<event type>": r("Envelope"),
        "gap": r("GapEvent"),
        "subscribed": r("SubscriptionEvent"),
        "unsubscribed": r("SubscriptionEvent"),
        "closing": r("ClosingEvent"),
        "presence.join": r("PresenceEvent"),
        "presence.leave": r("PresenceEvent"),
        "<broadcast type>": r("BroadcastMessage"),
    })
}

fn paths() -> Value {
    let stream = subscribe_errors(
        Op::new("stream", "stream", "Open a Server-Sent Events stream", Auth::Subscriber)
            .params(stream_params_with_history())
            .err(400, "invalid_history")
            .sse(
                "The stream: `connected` first, then events (`id:`, `event:` the type, `data:` the envelope), control events without `id:`, heartbeats `: hb`. While the node drains: `retry:` and `closing` (`shutdown`).",
                stream_events(),
            ),
    )
    .build();
    let stream_head = subscribe_errors(
        Op::new(
            "stream",
            "streamCheck",
            "Check a stream request without opening it",
            Auth::Subscriber,
        )
        .params(stream_params_with_history())
        .err(400, "invalid_history")
        .answer(
            200,
            "A `GET` would open the stream (no body).",
            "text/event-stream",
            json!({ "type": "string", "maxLength": 0 }),
        ),
    )
    .build();
    let mut poll_params = stream_params();
    poll_params.pop();
    poll_params.push(param(
        "timeout_ms",
        "query",
        json!({ "type": "integer", "minimum": 0 }),
        "Default 25000, at most `stream.max_poll_timeout_ms`.",
    ));
    let poll = subscribe_errors(
        Op::new("stream", "poll", "Long-poll for events", Auth::Subscriber)
            .params(poll_params)
            .ok(
                200,
                "Events after the resume position (at most 1000), or none at the timeout.",
                "PollResponse",
            )
            .err(400, "invalid_timeout"),
    )
    .build();
    let subscriptions = Op::new(
        "stream",
        "changeSubscriptions",
        "Add or remove channels of an open stream",
        Auth::Subscriber,
    )
    .describe("Carried out by the node holding the stream, whichever node receives it.")
    .params(vec![
        path_param(
            "id",
            "c_0000000000000000000000000000000000",
            "The `connection_id` of the stream's `connected` event.",
        ),
        p("access_token"),
    ])
    .body("SubscriptionChange", true)
    .ok(
        200,
        "The change is made; the stream carries `subscribed` / `unsubscribed`.",
        "ChannelsNow",
    )
    .err(
        400,
        "invalid_json, invalid_channel, too_many_channels, invalid_last_event_id, invalid_history",
    )
    .err(403, "forbidden_channel")
    .err(404, "connection_not_found")
    .err(503, "node_unreachable")
    .build();
    let publish = Op::new("publish", "publish", "Publish events", Auth::Publisher)
        .body("PublishRequest", true)
        .ok(200, "The events are durable.", "PublishResponse")
        .err(400, "empty_batch, batch_too_large, missing_channel, invalid_event, invalid_channel, invalid_type, invalid_id, invalid_users")
        .err(403, "forbidden_channel, reserved_channel")
        .err(413, "event_too_large, body_too_large, batch_too_large")
        .err(429, "publish_rate_limited")
        .err(503, "log_unavailable")
        .err(507, "log_full")
        .build();
    let connections = Op::new(
        "admin",
        "listConnections",
        "List the cluster's connections",
        Auth::Admin,
    )
    .params(vec![
        param("user", "query", string(), "Only this user's."),
        param(
            "channel",
            "query",
            string(),
            "Only those subscribed to this channel (or a pattern covering it).",
        ),
    ])
    .ok(200, "Every node's connections.", "ConnectionList")
    .build();
    let kick = Op::new(
        "admin",
        "closeUserConnections",
        "Close every stream of a user",
        Auth::Admin,
    )
    .params(vec![path_param("user", "u1", "The user id.")])
    .ok(200, "The streams got `closing` (`kicked`).", "Closed")
    .build();
    let channels = Op::new(
        "admin",
        "listChannels",
        "List the cluster's channels",
        Auth::Admin,
    )
    .ok(
        200,
        "Channels and patterns with subscribers, merged over the nodes.",
        "ChannelList",
    )
    .build();
    let history = Op::new(
        "stream",
        "history",
        "The newest events of a channel",
        Auth::Subscriber,
    )
    .describe("Authorized like a subscription to the channel; events targeted at other users are left out. Served from the log's per-channel index.")
    .params(vec![
        path_param("channel", "logs:w1:f1", "The channel, percent-encoded (not a pattern)."),
        param("limit", "query", json!({ "type": "integer", "minimum": 1, "maximum": 1000 }), "At most this many events (default 100)."),
        param("before", "query", string(), "Only events before this id (to page back)."),
        p("access_token"),
    ])
    .ok(200, "The channel's newest events, oldest first.", "History")
    .err(400, "invalid_channel, invalid_limit, invalid_last_event_id")
    .err(403, "forbidden_channel")
    .err(429, "connection_rate_limited")
    .err(503, "log_unavailable")
    .build();
    let presence = Op::new("admin", "presence", "Who is subscribed to a channel", Auth::Presence)
        .describe("Admins, or principals whose `presence` grant covers the channel. Counts connections subscribed to exactly that channel.")
        .params(vec![path_param("channel", "chat:1", "The channel, percent-encoded (not a pattern).")])
        .ok(200, "The channel's subscribers on every node.", "Presence")
        .err(400, "invalid_channel")
        .err(403, "presence_forbidden")
        .build();
    let broadcast = Op::new(
        "admin",
        "broadcast",
        "Send an event to every stream",
        Auth::Admin,
    )
    .body("BroadcastRequest", true)
    .ok(
        200,
        "Sent at once to every stream of every node; not stored.",
        "Broadcasted",
    )
    .err(400, "invalid_type")
    .err(413, "event_too_large")
    .build();
    let drain = Op::new(
        "admin",
        "drain",
        "Drain this node, another node, or all",
        Auth::Admin,
    )
    .body("DrainRequest", false)
    .ok(202, "The drain started.", "Draining")
    .err(404, "node_not_found")
    .build();
    let source = Op::new(
        "admin",
        "controlSource",
        "Start or stop a source",
        Auth::Admin,
    )
    .params(vec![
        path_param("name", "orders", "The source's name."),
        {
            let mut a = path_param("action", "start", "");
            a["schema"] = one_of_strings(&["start", "stop"]);
            a
        },
        p("node"),
    ])
    .ok(200, "The source's status on that node.", "SourceControlled")
    .err(404, "source_not_found, node_not_found")
    .build();
    let incidents = Op::new(
        "admin",
        "incidents",
        "Recent refusals for credentials and limits",
        Auth::Admin,
    )
    .ok(
        200,
        "At most 200, newest first, from every node.",
        "IncidentList",
    )
    .build();
    let admin_stream = Op::new("admin", "adminStream", "Status and incidents as they happen", Auth::AdminStream)
        .params(vec![p("access_token")])
        .sse(
            "`event: status` every second (the JSON of `GET /v1/status`; `status_error` when it cannot be read), `event: incident` for each incident this node records.",
            json!({ "status": r("Status"), "status_error": r("StatusError"), "incident": r("Incident") }),
        )
        .build();
    let status = Op::new("admin", "status", "This node and the cluster", Auth::Admin)
        .ok(
            200,
            "This node's status, and a summary of every node.",
            "Status",
        )
        .err(503, "log_unavailable")
        .build();
    let healthz = Op::new("operations", "healthz", "Liveness", Auth::Public)
        .ok(200, "The process runs.", "Health")
        .build();
    let readyz = Op::new("operations", "readyz", "Readiness", Auth::Public)
        .ok(
            200,
            "`ready`, or `degraded` (the file log found damaged records).",
            "Readiness",
        )
        .ok(503, "`not_ready` and why.", "Readiness")
        .build();
    let metrics = Op::new(
        "operations",
        "metrics",
        "Prometheus / OpenMetrics",
        Auth::Public,
    )
    .answer(
        200,
        "Every metric of docs/operations.md.",
        "application/openmetrics-text",
        string(),
    )
    .build();
    let openapi = Op::new("operations", "openapi", "This document", Auth::Public)
        .answer(
            200,
            "OpenAPI 3.1.",
            "application/json",
            json!({ "type": "object" }),
        )
        .build();
    let console = |id: &str| {
        Op::new("operations", id, "The admin console", Auth::Public)
            .describe("Every API call the console makes needs the admin grant.")
            .answer(200, "The console's page.", "text/html", string())
            .build()
    };
    let console_asset = Op::new(
        "operations",
        "consoleAsset",
        "A file of the admin console",
        Auth::Public,
    )
    .params(vec![path_param(
        "file",
        "console.js",
        "`console.js` or `console.css`.",
    )])
    .answer(
        200,
        "The file (`text/javascript` or `text/css`).",
        "text/plain",
        string(),
    )
    .err(404, "not_found")
    .build();
    let dapr_subscribe = Op::new(
        "dapr",
        "daprSubscribe",
        "The sidecar's subscription list",
        Auth::Public,
    )
    .answer(
        200,
        "One per dapr source.",
        "application/json",
        array_of(r("DaprSubscription")),
    )
    .build();
    let dapr_deliver = Op::new("dapr", "daprDeliver", "Deliver one CloudEvent", Auth::Dapr)
        .params(vec![path_param("name", "orders", "The dapr source's name.")])
        .body_as("application/cloudevents+json", r("CloudEvent"))
        .ok(200, "`SUCCESS` once durable (a redelivery appends nothing), `DROP` for a message that can never be mapped, `RETRY` when the log did not take it in time.", "DaprReply")
        .ok(404, "`DROP`: no dapr source of that name.", "DaprReply")
        .ok(503, "`RETRY`: the source is stopped.", "DaprReply")
        .err(401, "invalid_dapr_token")
        .build();
    let mercure_subscribe = mercure_errors(
        Op::new("mercure", "mercureSubscribe", "A Mercure subscription", Auth::Mercure)
            .params(vec![
                param("topic", "query", strings(), "Topic selectors (repeatable)."),
                param("match", "query", strings(), "Exact topics (draft-08)."),
                param("matchURLPattern", "query", strings(), "URL patterns (draft-08)."),
                param("lastEventID", "query", string(), "Resume after this id (`earliest`: from the oldest retained)."),
                p("Last-Event-ID"),
            ])
            .answer(200, "Mercure frames: `id:`, optional `event:` and `retry:`, a `data:` line per line of the update; the `Last-Event-ID` response header names where it resumed.", "text/event-stream", string())
            .err(400, "missing_topic, too_many_matchers"),
    )
    .build();
    let mercure_publish = mercure_errors(
        Op::new(
            "mercure",
            "mercurePublish",
            "Publish a Mercure update",
            Auth::Mercure,
        )
        .body_as("application/x-www-form-urlencoded", r("MercureUpdate"))
        .answer(
            200,
            "The update's id, once durable.",
            "text/plain",
            string(),
        )
        .err(
            400,
            "missing_topic, invalid_id, invalid_type, invalid_retry",
        )
        .err(403, "reserved_topic")
        .err(
            413,
            "event_too_large, topic_too_long, id_too_long, type_too_long",
        )
        .err(415, "unsupported_media_type")
        .err(429, "publish_rate_limited")
        .err(503, "log_unavailable")
        .err(507, "log_full"),
    )
    .build();
    let mercure_list = |id: &str, extra: Vec<Value>| {
        mercure_errors(
            Op::new(
                "mercure",
                id,
                "The cluster's active Mercure subscriptions",
                Auth::Mercure,
            )
            .params(extra)
            .answer(
                200,
                "`Subscriptions` (a collection) or one `Subscription`.",
                "application/ld+json",
                json!({ "oneOf": [r("MercureSubscriptions"), r("MercureSubscription")] }),
            )
            .err(404, "subscription_not_found")
            .err(503, "subscriptions_loading, log_unavailable"),
        )
        .build()
    };
    let metadata = Op::new(
        "mercure",
        "mercureResourceMetadata",
        "The hub's OAuth 2.0 protected resource metadata (RFC 9728)",
        Auth::Public,
    )
    .ok(200, "The metadata.", "ProtectedResourceMetadata")
    .err(404, "not_found")
    .build();
    json!({
        "/v1/stream": { "get": stream, "head": stream_head },
        "/v1/poll": { "get": poll },
        "/v1/publish": { "post": publish },
        "/v1/connections/{id}/subscriptions": { "post": subscriptions },
        "/v1/connections": { "get": connections },
        "/v1/users/{user}/connections": { "delete": kick },
        "/v1/channels": { "get": channels },
        "/v1/channels/{channel}/presence": { "get": presence },
        "/v1/channels/{channel}/history": { "get": history },
        "/v1/broadcast": { "post": broadcast },
        "/v1/sources/{name}/{action}": { "post": source },
        "/v1/admin/drain": { "post": drain },
        "/v1/admin/incidents": { "get": incidents },
        "/v1/admin/stream": { "get": admin_stream },
        "/v1/status": { "get": status },
        "/healthz": { "get": healthz },
        "/readyz": { "get": readyz },
        "/metrics": { "get": metrics },
        "/v1/openapi.json": { "get": openapi },
        "/admin": { "get": console("console") },
        "/admin/": { "get": console("consoleSlash") },
        "/admin/{file}": { "get": console_asset },
        "/dapr/subscribe": { "get": dapr_subscribe },
        "/dapr/events/{name}": { "post": dapr_deliver },
        "/.well-known/mercure": { "get": mercure_subscribe, "post": mercure_publish },
        "/.well-known/mercure/subscriptions": { "get": mercure_list("mercureSubscriptions", vec![]) },
        "/.well-known/mercure/subscriptions/{rest}": { "get": mercure_list("mercureSubscription", vec![
            path_param("rest", "https%3A%2F%2Fexample.com%2Fbooks%2F1", "`{topic}[/{subscriber}]` or `{matchType}/{match}[/{subscriber}]`, each segment percent-encoded (the only parameter that spans several path segments)."),
        ]) },
        "/.well-known/oauth-protected-resource/.well-known/mercure": { "get": metadata },
    })
}

/// What every Mercure request may be refused for (`WWW-Authenticate: Bearer realm="mercure"`
/// with the credential errors).
fn mercure_errors(op: Op) -> Op {
    op.err(400, "invalid_request")
        .err(401, "missing_credentials, invalid_token")
        .err(403, "insufficient_scope")
        .err(404, "not_found")
        .err(
            429,
            "too_many_connections, too_many_connections_for_user, too_many_connections_from_address, connection_rate_limited",
        )
}
