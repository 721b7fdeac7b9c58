//! The admin API (credentials with the admin grant): list connections and channels, close a
//! user's streams, broadcast to every stream, drain, start and stop sources — on every node of
//! the cluster (see [`crate::cluster`]) — plus presence, recent incidents and the console's
//! live stream.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};

use super::control::MAX_LISTED;
use super::{authenticate, require_admin, ApiError, AppState};
use crate::cluster::{Action, AskError, Gathered};
use crate::hub::frame;

async fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    require_admin(&authenticate(state, headers, None).await?)
}

/// The answers of a cluster-wide action, each node's value (a refusal by any node is the
/// answer), and the nodes that did not answer.
fn gathered(g: Gathered) -> Result<(Vec<Value>, Vec<String>), ApiError> {
    let mut values = Vec::with_capacity(g.answers.len());
    for (_, answer) in g.answers {
        values.push(answer.map_err(ApiError::Remote)?);
    }
    Ok((values, g.unreachable))
}

/// Every node's list, one list.
fn concat(values: Vec<Value>) -> Vec<Value> {
    values
        .into_iter()
        .flat_map(|v| match v {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
        .collect()
}

/// Every node's list, one list, each node's cut to [`MAX_LISTED`]; and whether one was cut.
fn capped(lists: impl IntoIterator<Item = Value>) -> (Vec<Value>, bool) {
    let mut truncated = false;
    let mut all = Vec::new();
    for list in lists {
        if let Value::Array(mut items) = list {
            truncated |= items.len() > MAX_LISTED;
            items.truncate(MAX_LISTED);
            all.extend(items);
        }
    }
    (all, truncated)
}

/// The sum of `field` over every node's answer.
fn sum(values: &[Value], field: &str) -> u64 {
    values.iter().filter_map(|v| v[field].as_u64()).sum()
}

/// One query parameter.
fn query_param(raw: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A channel named in a query or path: an exact, valid channel.
fn exact_channel(channel: &str) -> Result<(), ApiError> {
    crate::channel::validate_channel(channel).map_err(|e| ApiError::invalid_channel(channel, e))
}

/// `GET /v1/connections?user=…&channel=…`: every node's.
pub(super) async fn connections(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let user = query_param(raw.as_deref(), "user");
    let channel = query_param(raw.as_deref(), "channel");
    if let Some(c) = &channel {
        exact_channel(c)?;
    }
    let g = state
        .cluster
        .gather(&*state, Action::Connections { user, channel })
        .await;
    let (values, unreachable) = gathered(g)?;
    let (list, truncated) = capped(values);
    Ok(Json(json!({
        "connections": list,
        "truncated": truncated,
        "unreachable": unreachable,
    })))
}

/// `DELETE /v1/users/{user}/connections`: every stream of the user, on every node, gets
/// `closing` (`kicked`) and ends. (Its credentials stay valid: revoke them at their issuer.)
pub(super) async fn kick_user(
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let g = state.cluster.gather(&*state, Action::Kick { user }).await;
    let (values, unreachable) = gathered(g)?;
    Ok(Json(
        json!({ "closed": sum(&values, "closed"), "unreachable": unreachable }),
    ))
}

/// `GET /v1/channels`: every node's, merged (subscribers added up; every node reads every
/// event, so the event counts are the largest any node has).
pub(super) async fn channels(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let g = state.cluster.gather(&*state, Action::Channels).await;
    let (values, unreachable) = gathered(g)?;
    let mut merged: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for c in concat(values) {
        let Some(name) = c["channel"].as_str() else {
            continue;
        };
        let entry = merged.entry(name.to_owned()).or_default();
        entry.0 += c["subscribers"].as_u64().unwrap_or(0);
        entry.1 = entry.1.max(c["events"].as_u64().unwrap_or(0));
    }
    let list: Vec<Value> = merged
        .into_iter()
        .map(|(channel, (subscribers, events))| {
            json!({ "channel": channel, "subscribers": subscribers, "events": events })
        })
        .collect();
    Ok(Json(
        json!({ "channels": list, "unreachable": unreachable }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// `POST /v1/broadcast` `{"type", "data"}`: an event to every open stream of every node, sent
/// at once and not stored (no `id:`; a client that is not connected does not get it).
pub(super) async fn broadcast(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    // A little over the event limit, so an oversized broadcast is told so below.
    let body =
        super::edge::read_body(&state, body, state.cfg.limits.max_event_bytes + 4096).await?;
    let b: Broadcast = super::json_object(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body must be {{\"type\": \"…\", \"data\": …}}: {e}"),
        )
    })?;
    super::control::check_broadcast_type(&b.kind)?;
    if body.len() > state.cfg.limits.max_event_bytes {
        return Err(ApiError::TooLarge {
            code: "event_too_large",
            message: format!(
                "the broadcast is larger than {} bytes (limits.max_event_bytes)",
                state.cfg.limits.max_event_bytes
            ),
        });
    }
    let data = b
        .data
        .map(|d| serde_json::from_str::<Value>(d.get()).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let envelope = json!({
        "type": b.kind,
        "time": crate::time::rfc3339_ms(crate::time::now_ms()),
        "data": data,
    });
    let g = state
        .cluster
        .gather(
            &*state,
            Action::Broadcast {
                kind: b.kind,
                envelope,
            },
        )
        .await;
    let (values, unreachable) = gathered(g)?;
    Ok(Json(json!({
        "connections": sum(&values, "connections"),
        "unreachable": unreachable,
    })))
}

/// Carries out `action` on node `node` (this one when `None`): `404 node_not_found` for a
/// node that is not (or no longer) in the cluster, `503 node_unreachable` when it does not
/// answer in time.
async fn on_node(
    state: &Arc<AppState>,
    node: Option<&str>,
    action: Action,
) -> Result<Value, ApiError> {
    let node = node.unwrap_or(&state.node_id);
    let not_found = || ApiError::NotFound {
        code: "node_not_found",
        message: format!("no live node {node:?} in this cluster (see GET /v1/status)"),
    };
    let tag = state.cluster.tag_of_node(node).ok_or_else(not_found)?;
    asked(state.cluster.ask(&**state, &tag, action).await, not_found)
}

/// The answer of an action asked of one node: its value, its refusal, `unknown` when no such
/// node is alive, `503 node_unreachable` when it did not answer in time.
pub(super) fn asked(
    result: Result<(String, crate::cluster::Answer), AskError>,
    unknown: impl FnOnce() -> ApiError,
) -> Result<Value, ApiError> {
    match result {
        Ok((_, answer)) => answer.map_err(ApiError::Remote),
        Err(AskError::UnknownNode(_)) => Err(unknown()),
        Err(e @ AskError::NoAnswer(_)) => Err(ApiError::Unavailable {
            code: "node_unreachable",
            message: e.to_string(),
        }),
    }
}

/// `POST /v1/sources/{name}/start` and `…/stop` (`?node=`: on that node).
pub(super) async fn source_control(
    State(state): State<Arc<AppState>>,
    Path((name, action)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let start = match action.as_str() {
        "start" => true,
        "stop" => false,
        _ => {
            return Err(ApiError::NotFound {
                code: "not_found",
                message: "use /v1/sources/{name}/start or /v1/sources/{name}/stop".into(),
            })
        }
    };
    let node = query_param(raw.as_deref(), "node");
    on_node(&state, node.as_deref(), Action::Source { name, start })
        .await
        .map(Json)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Drain {
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    all: bool,
}

/// `POST /v1/admin/drain` (`{}`: this node; `{"node": id}`: that one; `{"all": true}`: every
/// node): starts the drain a node does on SIGTERM (`/readyz` not ready, streams closed over
/// `server.drain_window_ms`, then the process exits).
pub(super) async fn drain(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    admin(&state, &headers).await?;
    let body = super::edge::read_body(&state, body, 4096).await?;
    let which: Drain = if body.iter().all(u8::is_ascii_whitespace) {
        Drain::default()
    } else {
        super::json_object(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the body must be {{}}, {{\"node\": \"…\"}} or {{\"all\": true}}: {e}"),
            )
        })?
    };
    let (values, unreachable) = if which.all {
        gathered(state.cluster.gather(&*state, Action::Drain).await)?
    } else {
        let v = on_node(&state, which.node.as_deref(), Action::Drain).await?;
        (vec![v], Vec::new())
    };
    let nodes: Vec<Value> = values.iter().map(|v| v["node"].clone()).collect();
    // The longest window of the drained nodes.
    let window_ms = values.iter().filter_map(|v| v["window_ms"].as_u64()).max();
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(json!({
            "draining": true,
            "window_ms": window_ms,
            "nodes": nodes,
            "unreachable": unreachable,
        })),
    ))
}

/// `GET /v1/channels/{channel}/presence`: who is connected to the channel, on every node —
/// for admins and for principals whose `presence` grant covers it.
pub(super) async fn presence(
    State(state): State<Arc<AppState>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = authenticate(&state, &headers, None).await?;
    exact_channel(&channel)?;
    if !principal.may_see_presence(&channel) {
        return Err(ApiError::Forbidden {
            code: "presence_forbidden",
            message: format!(
                "your credentials do not allow you to see who is connected to {channel}"
            ),
        });
    }
    let g = state
        .cluster
        .gather(
            &*state,
            Action::Presence {
                channel: channel.clone(),
            },
        )
        .await;
    let (mut values, unreachable) = gathered(g)?;
    // Answers of other nodes: objects are expected, anything else counts as empty.
    values.retain(Value::is_object);
    let mut users: BTreeMap<String, u64> = BTreeMap::new();
    for v in &values {
        for (user, n) in v["users"].as_object().into_iter().flatten() {
            *users.entry(user.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    let (clients, truncated) = capped(values.iter_mut().map(|v| v["clients"].take()));
    let users: Vec<Value> = users
        .into_iter()
        .map(|(user, connections)| json!({ "user": user, "connections": connections }))
        .collect();
    let mut answer = json!({
        "channel": channel,
        "users": users,
        "connections": sum(&values, "connections"),
        "unreachable": unreachable,
    });
    if principal.grants.admin {
        answer["clients"] = json!(clients);
        answer["truncated"] = json!(truncated);
    }
    Ok(Json(answer))
}

/// `GET /v1/admin/incidents`: the recent refusals of every node, newest first.
pub(super) async fn incidents(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers).await?;
    let (values, unreachable) = gathered(state.cluster.gather(&*state, Action::Incidents).await)?;
    let mut list = concat(values);
    // RFC 3339 times of one format sort as text.
    list.sort_by(|a, b| b["time"].as_str().cmp(&a["time"].as_str()));
    list.truncate(crate::cluster::incidents::KEEP);
    Ok(Json(
        json!({ "incidents": list, "unreachable": unreachable }),
    ))
}

/// `GET /v1/admin/stream`: the console's live feed — `status` (as `GET /v1/status`) every
/// second and `incident` as this node records one, until the server stops.
pub(super) async fn stream(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = query_param(raw.as_deref(), "access_token");
    let principal = authenticate(&state, &headers, token.as_deref()).await?;
    require_admin(&principal)?;
    // The stream ends when the credentials do (the console signs in again).
    let ends = principal.expires_at.map(|exp| {
        let left = (exp * 1000).saturating_sub(crate::time::now_ms());
        tokio::time::Instant::now() + std::time::Duration::from_millis(left)
    });
    let incidents = state.cluster.incidents.subscribe();
    let mut ticks = tokio::time::interval(ADMIN_STREAM_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let frames = futures::stream::unfold(
        (state, ticks, incidents),
        move |(state, mut ticks, mut incidents)| async move {
            let frame = loop {
                tokio::select! {
                    _ = state.shutdown.cancelled() => return None,
                    _ = async { match ends {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    } } => return None,
                    _ = ticks.tick() => match super::ops::status_of(&state).await {
                        Ok(status) => break frame::control_frame("status", &status),
                        Err(e) => break frame::control_frame("status_error", &e.refusal()),
                    },
                    i = incidents.recv() => match i {
                        Ok(incident) => break frame::control_frame("incident", &incident),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    },
                }
            };
            Some((
                Ok::<_, std::convert::Infallible>(frame),
                (state, ticks, incidents),
            ))
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(frames),
    )
        .into_response())
}

/// How often the admin stream sends `status`.
const ADMIN_STREAM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
