//! `ssegate demo`: the gateway on the embedded file log with a demo signing key, a web app
//! on the same origin, and a simulated ETL workload ([`workload`]).
//!
//! Demo only, and nowhere else: the demo key (kept in the data directory, like
//! `serve --dev`), `/demo/login?user=a` (sets the `ssegate_token` cookie to a token for a
//! demo user), `/demo/admin-token` (an admin token for anyone who asks), `/demo/session` and
//! the notification actions the bell calls. The routes are put in front of the API through
//! [`ssegate::http::DEMO_ROUTES`]; `ssegate serve` never sets it.
//!
//! The web app (`demo/`, Vite + React + `@ssegate/react`) is served from its build output:
//! `--web-dir`, `$SSEGATE_DEMO_DIR`, or `demo/dist` in the current directory or in this
//! repository. When none is built and npm is on the PATH, it is built first
//! (`npm ci && npm run build` in `demo/`). `/native.html`, a page using nothing but a native
//! `EventSource`, is part of the binary.

mod workload;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use ssegate::auth::{Auth, Grants, Minter};
use ssegate::config::Config;
use ssegate::server;
use workload::{Workload, USERS, WORKFLOWS};

/// Lifetime of the tokens `/demo/login` puts in the cookie.
const LOGIN_TTL_S: u64 = 12 * 3600;
/// Lifetime of the admin page's token.
const ADMIN_TTL_S: u64 = 3600;

const NATIVE_HTML: &str = include_str!("native.html");

#[derive(clap::Args)]
pub struct DemoArgs {
    /// TOML configuration file (optional: the demo needs none).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The log, the demo signing key and the workload's state live here (delete it to start
    /// over).
    #[arg(long, default_value = "./ssegate-demo-data")]
    data_dir: PathBuf,
    /// Milliseconds between two steps of the simulated pipelines; 0 runs no workload.
    #[arg(long, default_value_t = 400)]
    tick_ms: u64,
    /// Events the log keeps (`log.retention_events`): a small number makes `gap` easy to see.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    retention_events: Option<u64>,
    /// The built web app (a folder with index.html and assets/).
    #[arg(long, env = "SSEGATE_DEMO_DIR")]
    web_dir: Option<PathBuf>,
    /// Do not run npm to build the web app when it is not built.
    #[arg(long)]
    no_build: bool,
}

struct Demo {
    minter: Minter,
    /// Verifies the cookie on `/demo/*` (the gateway verifies it on `/v1/*`).
    auth: Auth,
    cookie_name: String,
    /// The built web app, if any.
    web: Option<PathBuf>,
    workload: Arc<Workload>,
}

/// The configuration: `--config` and `SSEGATE_*` (optional), then the demo's flags.
pub fn config(args: &DemoArgs) -> anyhow::Result<Config> {
    let mut cfg = Config::load(args.config.as_deref(), std::env::vars())?;
    cfg.server.listen = args.listen.clone();
    cfg.server.data_dir = args.data_dir.clone();
    if let Some(n) = args.retention_events {
        cfg.log.retention_events = n;
    }
    Ok(cfg)
}

/// Runs the demo until `shutdown`.
pub async fn run(
    args: DemoArgs,
    mut cfg: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let secret = match &cfg.auth.jwt_secret {
        Some(s) => s.clone(),
        None => server::dev_secret(&cfg.server.data_dir)?,
    };
    cfg.auth.jwt_secret = Some(secret.clone());
    let web = web_app(&args).await;

    let gateway = server::Gateway::open(cfg.clone()).await?;
    let listener = server::bind(&cfg.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
    let mut addr = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let base = format!("http://{addr}");
    let workload = Arc::new(Workload::new(
        &base,
        Minter::new(&secret, &cfg.auth),
        &cfg.server.data_dir,
    ));
    let metrics = Arc::new(ssegate::metrics::Metrics::default());
    let demo = Demo {
        minter: Minter::new(&secret, &cfg.auth),
        auth: Auth::new(&cfg.auth, reqwest::Client::new(), metrics)
            .map_err(|e| anyhow::anyhow!("invalid auth configuration: {e}"))?,
        cookie_name: cfg.auth.cookie_name.clone(),
        web,
        workload: workload.clone(),
    };
    if ssegate::http::DEMO_ROUTES.set(routes(demo)).is_err() {
        anyhow::bail!("the demo routes are already set");
    }
    print_banner(&base, &args);
    if args.tick_ms > 0 {
        let (tick, shutdown) = (Duration::from_millis(args.tick_ms), shutdown.clone());
        tokio::spawn(async move { workload.run(tick, shutdown).await });
    }
    Ok(gateway.serve(listener, shutdown).await?)
}

fn print_banner(base: &str, args: &DemoArgs) {
    use std::io::Write;
    let mut text = format!("ssegate demo listening on {base}\n\n  Open {base} and sign in as\n");
    for u in &USERS {
        let channels: Vec<String> = u
            .workflows
            .iter()
            .map(|&w| WORKFLOWS[w].channel())
            .chain([format!("notifications:{}", u.id)])
            .collect();
        text += &format!(
            "    {:<10} {base}/demo/login?user={}   may subscribe to {}\n",
            format!("{} ({})", u.name, u.id),
            u.id,
            channels.join(", ")
        );
    }
    text += &format!(
        "  Admin page:          {base}/#/admin\n  \
         Native EventSource:  {base}/native.html?channel=logs:w1:f2 (once signed in)\n  \
         Simulated pipelines: {}; log, demo key and state in {}\n",
        if args.tick_ms > 0 {
            format!("a step every {} ms", args.tick_ms)
        } else {
            "off (--tick-ms 0)".into()
        },
        args.data_dir.display()
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn routes(demo: Demo) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/{*path}", get(asset))
        .route("/native.html", get(|| async { Html(NATIVE_HTML) }))
        .route("/demo/login", get(login))
        .route("/demo/logout", get(logout))
        .route("/demo/users", get(users))
        .route("/demo/session", get(session))
        .route("/demo/admin-token", get(admin_token))
        .route("/demo/notifications", post(notify_test))
        .route("/demo/notifications/{id}/read", post(mark_read))
        .route("/demo/notifications/{id}", delete(delete_notification))
        .with_state(Arc::new(demo))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn grants(user: &workload::User) -> Grants {
    Grants {
        subscribe: user
            .workflows
            .iter()
            .map(|&w| WORKFLOWS[w].channel())
            .chain(["notifications:{sub}".to_owned()])
            .collect(),
        ..Grants::default()
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    user: String,
    next: Option<String>,
}

/// `GET /demo/login?user=a[&next=/path]`: the cookie, then back to the app.
async fn login(State(demo): State<Arc<Demo>>, Query(q): Query<LoginQuery>) -> Response {
    let Some(user) = workload::user(&q.user) else {
        return error(StatusCode::BAD_REQUEST, "unknown_user", "demo users: a, b");
    };
    let token = match demo.minter.mint(user.id, grants(user), LOGIN_TTL_S) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "mint", &e.to_string()),
    };
    // Only paths of this site: never an open redirect.
    let next = q
        .next
        .filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or_else(|| "/".into());
    let cookie = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={LOGIN_TTL_S}",
        demo.cookie_name
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

async fn logout(State(demo): State<Arc<Demo>>) -> Response {
    let cookie = format!(
        "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0",
        demo.cookie_name
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

fn user_json(u: &workload::User) -> serde_json::Value {
    json!({
        "id": u.id,
        "name": u.name,
        "channels": grants(u).subscribe.iter().map(|c| c.replace("{sub}", u.id)).collect::<Vec<_>>(),
    })
}

async fn users() -> Json<serde_json::Value> {
    Json(json!({ "users": USERS.iter().map(user_json).collect::<Vec<_>>() }))
}

/// The demo user of the request's cookie.
async fn signed_in(demo: &Demo, headers: &HeaderMap) -> Result<&'static workload::User, Response> {
    let token = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == demo.cookie_name && !v.is_empty())
        .map(|(_, v)| v);
    let unauthorized = |m: &str| error(StatusCode::UNAUTHORIZED, "not_signed_in", m);
    let Some(token) = token else {
        return Err(unauthorized("sign in at /demo/login?user=a"));
    };
    let principal = demo
        .auth
        .verify_jwt(token)
        .await
        .map_err(|e| unauthorized(&e.to_string()))?;
    workload::user(&principal.user).ok_or_else(|| unauthorized("not a demo user"))
}

/// `GET /demo/session`: who is signed in, their workflows (and one they may not see, to
/// show the gateway refusing it), their notifications as of `last_event_id`, and where to
/// resume to replay the latest log lines.
async fn session(State(demo): State<Arc<Demo>>, headers: HeaderMap) -> Response {
    let user = match signed_in(&demo, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let snap = demo.workload.snapshot(user).await;
    let workflows: Vec<_> = WORKFLOWS
        .iter()
        .enumerate()
        .map(|(i, w)| {
            json!({
                "workspace": w.workspace, "workflow": w.id, "name": w.name,
                "channel": w.channel(), "allowed": user.workflows.contains(&i),
            })
        })
        .collect();
    let mut body = user_json(user);
    body["workflows"] = json!(workflows);
    body["notifications_channel"] = json!(format!("notifications:{}", user.id));
    body["notifications"] = json!(snap.notifications);
    body["last_event_id"] = json!(snap.last_event_id);
    body["history_from"] = json!(snap.history_from);
    Json(body).into_response()
}

/// `GET /demo/admin-token`: an admin token for the admin page. Demo only: anyone may ask.
async fn admin_token(State(demo): State<Arc<Demo>>) -> Response {
    let grants = Grants {
        admin: true,
        ..Grants::default()
    };
    match demo.minter.mint("demo-admin", grants, ADMIN_TTL_S) {
        Ok(token) => Json(json!({ "token": token, "expires_in_s": ADMIN_TTL_S })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "mint", &e.to_string()),
    }
}

fn action_result(result: Result<(), workload::ActionError>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ workload::ActionError::NotFound) => error(
            StatusCode::NOT_FOUND,
            "notification_not_found",
            &e.to_string(),
        ),
        Err(e) => error(StatusCode::BAD_GATEWAY, "publish_failed", &e.to_string()),
    }
}

async fn notify_test(State(demo): State<Arc<Demo>>, headers: HeaderMap) -> Response {
    match signed_in(&demo, &headers).await {
        Ok(u) => action_result(demo.workload.notify_test(u.id).await),
        Err(r) => r,
    }
}

async fn mark_read(
    State(demo): State<Arc<Demo>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    match signed_in(&demo, &headers).await {
        Ok(u) => action_result(demo.workload.mark_read(u.id, &id).await),
        Err(r) => r,
    }
}

async fn delete_notification(
    State(demo): State<Arc<Demo>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    match signed_in(&demo, &headers).await {
        Ok(u) => action_result(demo.workload.delete(u.id, &id).await),
        Err(r) => r,
    }
}

async fn index(State(demo): State<Arc<Demo>>) -> Response {
    let Some(web) = &demo.web else {
        return Html(NOT_BUILT).into_response();
    };
    match tokio::fs::read(web.join("index.html")).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => Html(NOT_BUILT).into_response(),
    }
}

/// `GET /assets/…`: Vite's hashed build output, cached for good.
async fn asset(State(demo): State<Arc<Demo>>, UrlPath(path): UrlPath<String>) -> Response {
    let not_found = || error(StatusCode::NOT_FOUND, "not_found", "no such file");
    let rel = Path::new(&path);
    let plain = rel
        .components()
        .all(|c| matches!(c, Component::Normal(s) if !s.to_string_lossy().starts_with('.')));
    let (Some(web), true) = (&demo.web, plain) else {
        return not_found();
    };
    let Ok(bytes) = tokio::fs::read(web.join("assets").join(rel)).await else {
        return not_found();
    };
    let kind = match rel.extension().and_then(|e| e.to_str()) {
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json" | "map") => "application/json",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        bytes,
    )
        .into_response()
}

const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>ssegate demo</title>\
<body style=\"font:16px system-ui;max-width:40em;margin:3em auto\"><h1>The demo web app is not built</h1>\
<p>Build it and start <code>ssegate demo</code> again:</p>\
<pre>cd demo &amp;&amp; npm ci &amp;&amp; npm run build</pre>\
<p>Meanwhile the plain <code>EventSource</code> page works: \
<a href=\"/demo/login?user=a&amp;next=/native.html%3Fchannel%3Dlogs:w1:f1\">sign in as Alice and open it</a>.</p>";

/// Finds the built web app, building it with npm when it is not built and npm is here.
async fn web_app(args: &DemoArgs) -> Option<PathBuf> {
    let built = |d: &Path| d.join("index.html").is_file();
    if let Some(dir) = &args.web_dir {
        if built(dir) {
            return Some(dir.clone());
        }
        eprintln!("warning: no index.html in --web-dir {}", dir.display());
        return None;
    }
    let sources = [
        PathBuf::from("demo"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("demo"),
    ];
    if let Some(dist) = sources.iter().map(|d| d.join("dist")).find(|d| built(d)) {
        return Some(dist);
    }
    let how = "build it with: cd demo && npm ci && npm run build";
    let Some(src) = sources.iter().find(|d| d.join("package.json").is_file()) else {
        eprintln!(
            "warning: the demo web app is not here (no demo/ folder); only /native.html is served"
        );
        return None;
    };
    let npm = || {
        let mut c = tokio::process::Command::new("npm");
        c.current_dir(src).stdout(std::io::stderr());
        c
    };
    let has_npm = npm()
        .arg("--version")
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if args.no_build || !has_npm {
        eprintln!(
            "warning: the demo web app is not built ({}); {how}",
            if has_npm {
                "--no-build"
            } else {
                "npm not found"
            }
        );
        return None;
    }
    eprintln!(
        "building the demo web app in {} (npm ci && npm run build)…",
        src.display()
    );
    let mut ok = true;
    if !src.join("node_modules").is_dir() {
        ok = npm()
            .args(["ci", "--no-audit", "--no-fund"])
            .status()
            .await
            .is_ok_and(|s| s.success());
    }
    ok = ok
        && npm()
            .args(["run", "build"])
            .status()
            .await
            .is_ok_and(|s| s.success());
    let dist = src.join("dist");
    if ok && built(&dist) {
        return Some(dist);
    }
    eprintln!("warning: building the demo web app failed; {how}");
    None
}
