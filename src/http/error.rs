//! The one error type of the HTTP API:
//! `{"error": {"code": "snake_case_code", "message": "human sentence"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use std::time::Duration;

use crate::auth::AuthError;
use crate::channel::ChannelError;
use crate::log::LogError;
use crate::throttle::Throttle;

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed or asks for something impossible.
    BadRequest { code: &'static str, message: String },
    /// 401: no or bad credentials (403 when forward-auth refuses the session, 503 when it
    /// cannot decide).
    Unauthorized(AuthError),
    /// 403: the credentials do not grant these channels.
    ForbiddenChannels {
        action: &'static str,
        channels: Vec<String>,
    },
    /// 403: the credentials lack a grant (not channel-specific).
    Forbidden { code: &'static str, message: String },
    /// 404.
    NotFound { code: &'static str, message: String },
    /// 405: the endpoint exists, not with this method (`Allow` lists the methods).
    MethodNotAllowed,
    /// 408: the request (its body) did not arrive in time.
    Timeout { code: &'static str, message: String },
    /// 413: too large.
    TooLarge { code: &'static str, message: String },
    /// 415: a body of a type this endpoint does not take.
    UnsupportedMediaType { code: &'static str, message: String },
    /// 501: a part of HTTP this server does not implement (a transfer coding).
    NotImplemented { code: &'static str, message: String },
    /// 429, with `Retry-After`.
    TooMany {
        code: &'static str,
        message: String,
        retry_after_s: u64,
    },
    /// 503: the log is unavailable; nothing was appended.
    LogUnavailable(LogError),
    /// 503: not ready to answer this yet (`Retry-After: 1`).
    Unavailable { code: &'static str, message: String },
    /// 507: the disk under the log is full; nothing was appended.
    LogFull(String),
    /// Another node's refusal of an action it was asked to carry out, as it gave it.
    Remote(crate::cluster::Refusal),
}

/// The `code` of an error response, for the middleware that records incidents.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub String);

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_channel(name: &str, e: ChannelError) -> Self {
        let shown: String = name.chars().take(80).collect();
        Self::bad_request("invalid_channel", format!("invalid channel {shown:?}: {e}"))
    }

    pub fn forbidden_channels(action: &'static str, channels: Vec<String>) -> Self {
        ApiError::ForbiddenChannels { action, channels }
    }

    /// The refusal as another node hands it back (see [`crate::cluster`]).
    pub fn refusal(&self) -> crate::cluster::Refusal {
        let (status, code, message) = self.parts();
        crate::cluster::Refusal {
            status: status.as_u16(),
            code: code.to_owned(),
            message,
        }
    }

    fn parts(&self) -> (StatusCode, &str, String) {
        match self {
            ApiError::Remote(r) => (
                // Only an error status: anything else from another node is a bad answer.
                StatusCode::from_u16(r.status)
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .unwrap_or(StatusCode::BAD_GATEWAY),
                &r.code,
                r.message.clone(),
            ),
            ApiError::BadRequest { code, message } => {
                (StatusCode::BAD_REQUEST, code, message.clone())
            }
            ApiError::Unauthorized(e) => {
                let status = match e {
                    AuthError::Forbidden => StatusCode::FORBIDDEN,
                    // An outage is not a reason to log in again: retry later.
                    AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::UNAUTHORIZED,
                };
                (status, e.code(), e.to_string())
            }
            ApiError::ForbiddenChannels { action, channels } => (
                StatusCode::FORBIDDEN,
                "forbidden_channel",
                format!(
                    "your credentials do not allow you to {action} {}",
                    channels.join(", ")
                ),
            ),
            ApiError::Forbidden { code, message } => (StatusCode::FORBIDDEN, code, message.clone()),
            ApiError::NotFound { code, message } => (StatusCode::NOT_FOUND, code, message.clone()),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take this method (see the Allow header and docs/api.md)"
                    .into(),
            ),
            ApiError::Timeout { code, message } => {
                (StatusCode::REQUEST_TIMEOUT, code, message.clone())
            }
            ApiError::TooLarge { code, message } => {
                (StatusCode::PAYLOAD_TOO_LARGE, code, message.clone())
            }
            ApiError::UnsupportedMediaType { code, message } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, code, message.clone())
            }
            ApiError::NotImplemented { code, message } => {
                (StatusCode::NOT_IMPLEMENTED, code, message.clone())
            }
            ApiError::TooMany { code, message, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, code, message.clone())
            }
            ApiError::Unavailable { code, message } => {
                (StatusCode::SERVICE_UNAVAILABLE, code, message.clone())
            }
            ApiError::LogFull(reason) => (
                StatusCode::INSUFFICIENT_STORAGE,
                "log_full",
                format!("{reason}; the publish was not acknowledged: retry later (with the same idempotency `id`)"),
            ),
            ApiError::LogUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "log_unavailable",
                "the event log is unavailable and the publish was not acknowledged; retry later (with the same idempotency `id`, so a publish that did get through is not appended twice)".into(),
            ),
        }
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::TooLarge(message) => ApiError::TooLarge {
                code: "batch_too_large",
                message,
            },
            LogError::Full(reason) => ApiError::LogFull(reason),
            other => ApiError::LogUnavailable(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::LogUnavailable(e) = &self {
            static THROTTLE: Throttle = Throttle::new(Duration::from_secs(10));
            if let Some(suppressed) = THROTTLE.allow() {
                tracing::warn!(error = %e, suppressed, "requests fail: log unavailable");
            }
        }
        let (status, code, message) = self.parts();
        let mut body = json!({ "error": { "code": code, "message": message } });
        if let ApiError::ForbiddenChannels { channels, .. } = &self {
            body["error"]["channels"] = json!(channels);
        }
        let code = ErrorCode(code.to_owned());
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(code);

        let retry_after = match &self {
            ApiError::TooMany { retry_after_s, .. } => Some(*retry_after_s),
            ApiError::Unauthorized(AuthError::Unavailable(_)) => Some(2),
            ApiError::LogUnavailable(_) | ApiError::Unavailable { .. } => Some(1),
            ApiError::LogFull(_) => Some(5),
            _ => None,
        };
        if let Some(s) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}
