//! Forward-auth: the app's own sessions decide who a request is.
//!
//! The gateway calls `auth.forward_url` (`GET`) with the request's `Cookie` and
//! `Authorization` headers. The app answers `200`
//! `{"user": "u1", "subscribe": [...], "publish": [...], "admin": false, "ttl_s": 60}`
//! (only `user` is required) or `401`/`403`. Answers are cached per credential (the exact
//! header values, never a lossy hash of them) for `ttl_s`, capped by
//! `auth.forward_max_ttl_s`; refusals for one second, so a storm of bad cookies does not
//! become a storm of calls. A call that times out (`auth.forward_timeout_ms`) or cannot
//! reach the app fails closed (`503 auth_unavailable`). The cache holds at most
//! `auth.forward_cache_entries` answers.
//!
//! Whether the app is reachable is tracked ([`Forward::up`]): `/readyz` and the metrics show
//! it, and while it is down a probe calls the URL every two seconds so readiness comes back
//! by itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{AuthError, Grants};
use crate::metrics::Metrics;

/// The credentials forward-auth passes on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ForwardCreds {
    pub cookie: Option<String>,
    pub authorization: Option<String>,
}

impl ForwardCreds {
    pub fn is_empty(&self) -> bool {
        self.cookie.is_none() && self.authorization.is_none()
    }
}

/// What the app said about a session.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub grants: Grants,
    /// How long the answer holds; live streams are re-checked this often.
    pub ttl: Duration,
}

#[derive(Deserialize)]
struct Answer {
    user: String,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    presence: Vec<String>,
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// Default `ttl_s` when the app gives none.
const DEFAULT_TTL_S: u64 = 60;
/// How long a refusal is cached.
const REFUSAL_TTL: Duration = Duration::from_secs(1);

type Cached = (Instant, Result<Session, AuthError>);

pub struct Forward {
    url: String,
    http: reqwest::Client,
    timeout: Duration,
    max_ttl: Duration,
    max_entries: usize,
    cache: Mutex<HashMap<ForwardCreds, Cached>>,
    up: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Forward {
    pub fn new(
        url: String,
        http: reqwest::Client,
        timeout: Duration,
        max_ttl: Duration,
        max_entries: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            url,
            http,
            timeout,
            max_ttl,
            max_entries,
            cache: Mutex::default(),
            up: AtomicBool::new(true),
            metrics,
        }
    }

    /// Whether the last call (or probe) reached the app.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<ForwardCreds, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session for these credentials, from the cache or the app.
    pub async fn check(&self, creds: &ForwardCreds) -> Result<Session, AuthError> {
        if let Some((until, answer)) = self.cache().get(creds) {
            if *until > Instant::now() {
                return answer.clone();
            }
        }
        self.check_fresh(creds).await
    }

    /// Asks the app, bypassing the cache (the re-check of a live stream), and caches the
    /// answer. Unreachable is not cached.
    pub async fn check_fresh(&self, creds: &ForwardCreds) -> Result<Session, AuthError> {
        let answer = self.call(creds).await;
        let ttl = match &answer {
            Ok(session) => session.ttl,
            Err(AuthError::Unavailable(_)) => return answer,
            Err(_) => REFUSAL_TTL,
        };
        let now = Instant::now();
        let mut cache = self.cache();
        if cache.len() >= self.max_entries {
            cache.retain(|_, (until, _)| *until > now);
        }
        if cache.len() < self.max_entries && !ttl.is_zero() {
            cache.insert(creds.clone(), (now + ttl, answer.clone()));
        }
        answer
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.metrics.forward_auth_up.set(i64::from(up));
    }

    async fn call(&self, creds: &ForwardCreds) -> Result<Session, AuthError> {
        let answer = self.call_app(creds).await;
        let result = match &answer {
            Ok(_) => "ok",
            Err(AuthError::Unavailable(_)) => "unavailable",
            Err(_) => "refused",
        };
        self.metrics
            .forward_auth_calls
            .get_or_create(&vec![("result", result)])
            .inc();
        answer
    }

    async fn call_app(&self, creds: &ForwardCreds) -> Result<Session, AuthError> {
        let mut req = self.http.get(&self.url).timeout(self.timeout);
        if let Some(c) = &creds.cookie {
            req = req.header(reqwest::header::COOKIE, c);
        }
        if let Some(a) = &creds.authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let res = match req.send().await {
            Ok(res) => res,
            Err(e) => {
                self.set_up(false);
                let why = if e.is_timeout() {
                    format!("no answer within {} ms", self.timeout.as_millis())
                } else {
                    "cannot reach it".to_owned()
                };
                tracing::warn!(url = %self.url, error = %e, "forward-auth call failed");
                return Err(AuthError::Unavailable(format!(
                    "the authentication service did not answer ({why}); retry later"
                )));
            }
        };
        self.set_up(true);
        match res.status().as_u16() {
            200 => {}
            401 => return Err(AuthError::Invalid("the session is not valid".into())),
            403 => return Err(AuthError::Forbidden),
            status => {
                tracing::warn!(url = %self.url, status, "forward-auth answered an unexpected status");
                return Err(AuthError::Unavailable(format!(
                    "the authentication service answered {status}; retry later"
                )));
            }
        }
        let answer: Answer = res.json().await.map_err(|e| {
            tracing::warn!(url = %self.url, error = %e, "forward-auth answer is not the expected JSON");
            AuthError::Unavailable(
                "the authentication service gave an answer this gateway cannot read".into(),
            )
        })?;
        super::validate_user(&answer.user)?;
        let ttl = Duration::from_secs(answer.ttl_s.unwrap_or(DEFAULT_TTL_S)).min(self.max_ttl);
        Ok(Session {
            user: answer.user,
            grants: Grants {
                subscribe: answer.subscribe,
                publish: answer.publish,
                admin: answer.admin,
                presence: answer.presence,
            },
            ttl,
        })
    }

    /// While the app is down, calls it every two seconds (any HTTP answer counts as up) so
    /// readiness recovers without traffic; drops expired cache entries once a minute.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = 0u64;
        while !crate::retry::sleep_or_cancel(Duration::from_secs(2), &shutdown).await {
            ticks += 1;
            if !self.up() {
                let probe = self.http.get(&self.url).timeout(self.timeout).send().await;
                if probe.is_ok() {
                    tracing::info!(url = %self.url, "forward-auth service reachable again");
                    self.set_up(true);
                }
            }
            if ticks.is_multiple_of(30) {
                let now = Instant::now();
                self.cache().retain(|_, (until, _)| *until > now);
            }
        }
    }
}
