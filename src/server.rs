//! Wires log, hub and HTTP together and runs until told to stop.
//!
//! Shutdown is a value passed in: when `shutdown` is cancelled the listener stops accepting,
//! every stream gets `closing` (`shutdown`) and ends, long-polls return, in-flight publishes
//! finish; whatever is still open after `server.shutdown_grace_ms` is cut, and the log says so.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::Config;
use crate::http::tls::TlsError;
use crate::http::{router, AppState};
use crate::hub::Hub;
use crate::limits::{ConnLimits, Limit, RateLimiter, SocketLimits};
use crate::log::LogError;
use crate::metrics::Metrics;
use crate::retry::sleep_or_cancel;
use crate::source::{SourceConfigError, Sources};

/// How often retention by age and the dedupe window are applied.
const RETENTION_EVERY: Duration = Duration::from_secs(1);

/// The name of the development signing key file in the data directory.
pub const DEV_SECRET_FILE: &str = "dev-secret";

/// How often rate-limiter buckets that have refilled are forgotten.
const LIMITER_CLEANUP_EVERY: Duration = Duration::from_secs(30);
/// Most rate-limiter buckets kept (per limiter).
const LIMITER_MAX_KEYS: usize = 100_000;

/// Why the gateway cannot open or serve, or the development key cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the event log")]
    Log(#[source] LogError),
    #[error("invalid sources")]
    Sources(#[source] SourceConfigError),
    #[error("cannot build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("invalid auth configuration: {0}")]
    Auth(String),
    #[error(
        "no way to authenticate anyone is configured: set auth.jwt_secret, auth.jwt_public_key_file, \
         auth.jwks_url, auth.forward_url or auth.publisher_keys (or run `ssegate serve --dev`)"
    )]
    NoAuth,
    #[error("invalid [mercure] configuration: {0}")]
    Mercure(String),
    #[error("cannot read the listener's address")]
    ListenerAddress(#[source] std::io::Error),
    #[error("cannot listen on {addr} (server.metrics_listen)")]
    MetricsListen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot create {}", .path.display())]
    CreateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", .path.display())]
    WriteSecret {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A gateway whose log is open and ready; [`Gateway::serve`] runs it.
pub struct Gateway {
    cfg: Arc<Config>,
    auth: Arc<Auth>,
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
    sources: Arc<Sources>,
    /// Stops the sources; cancelled when `serve`'s shutdown is.
    sources_stop: CancellationToken,
    mercure: Option<Arc<crate::mercure::Mercure>>,
}

impl Gateway {
    /// Checks the auth settings (reading key files), opens the configured log (creating the
    /// data directory) and builds the hub. Refuses a configuration with no way to
    /// authenticate anyone.
    pub async fn open(cfg: Config) -> Result<Self, ServerError> {
        let mut metrics = Metrics::default();
        let log = crate::log::open(&cfg.log, &cfg.server.data_dir)
            .await
            .map_err(ServerError::Log)?;
        let hub = Hub::new(log, cfg.stream.queue_frames);
        metrics.register_hub(hub.clone());
        let sources_stop = CancellationToken::new();
        let sources = Arc::new(
            Sources::new(
                &cfg.sources,
                hub.log().clone(),
                cfg.server.data_dir.join("sources"),
                sources_stop.clone(),
                cfg.limits.max_event_bytes,
            )
            .map_err(ServerError::Sources)?,
        );
        metrics.register_sources(sources.clone());
        let metrics = Arc::new(metrics);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(ServerError::HttpClient)?;
        let mercure = match cfg.mercure.enabled {
            true => Some(Arc::new(
                crate::mercure::Mercure::new(&cfg.mercure, http.clone())
                    .map_err(ServerError::Mercure)?,
            )),
            false => None,
        };
        let auth = Auth::new(&cfg.auth, http, metrics.clone()).map_err(ServerError::Auth)?;
        if !auth.is_configured() && mercure.is_none() {
            return Err(ServerError::NoAuth);
        }
        Ok(Self {
            cfg: Arc::new(cfg),
            auth: Arc::new(auth),
            metrics,
            hub,
            sources,
            sources_stop,
            mercure,
        })
    }

    /// The HTTP router of this gateway, for calling it in-process (tests:
    /// `tower::ServiceExt::oneshot`); nothing runs in the background (no dispatcher, no
    /// sources, no listener), so it answers every request that needs no live stream.
    pub fn router(&self) -> axum::Router {
        router(app_state(
            self,
            CancellationToken::new(),
            "in-process".into(),
            TaskTracker::new(),
        ))
    }

    /// Runs the gateway on `listener` until `signal` is cancelled (SIGTERM, SIGINT) or an
    /// admin asks for a drain; then drains (see the module docs) and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        signal: CancellationToken,
    ) -> Result<(), ServerError> {
        // Cancelled at the end of the drain: stop accepting, close what is left.
        let shutdown = CancellationToken::new();
        let addr = listener
            .local_addr()
            .map_err(ServerError::ListenerAddress)?;
        let node_id = self
            .cfg
            .server
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{}:{}", hostname(), addr.port()));
        let tasks = TaskTracker::new();
        let state = app_state(&self, shutdown.clone(), node_id, tasks.clone());
        let Gateway {
            cfg,
            auth,
            metrics: _,
            hub,
            sources,
            sources_stop,
            mercure,
        } = self;
        let log = hub.log().clone();
        tasks.spawn(hub.clone().run(shutdown.clone()));
        tasks.spawn(maintain_log(hub.clone(), shutdown.clone()));
        if let Some(forward) = auth.forward() {
            tasks.spawn(forward.clone().run(shutdown.clone()));
        }
        if let Some(jwks) = auth.jwks() {
            let jwks = jwks.clone();
            tasks.spawn(async move {
                if let Err(e) = jwks.refresh().await {
                    tracing::warn!(error = %e, "JWKS not loaded at start; tokens will trigger a fetch");
                }
            });
        }
        {
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                shutdown.cancelled().await;
                sources_stop.cancel();
            });
        }
        sources.start_auto();
        if let Some(mercure) = &mercure {
            tasks.spawn(mercure.registry.clone().run(log.clone(), shutdown.clone()));
            if let Some(jwks) = mercure.verifier.jwks() {
                let jwks = jwks.clone();
                tasks.spawn(async move {
                    if let Err(e) = jwks.refresh().await {
                        tracing::warn!(error = %e, "mercure JWKS not loaded at start; tokens will trigger a fetch");
                    }
                });
            }
        }
        {
            let (state, shutdown) = (state.clone(), shutdown.clone());
            tasks.spawn(async move {
                while !sleep_or_cancel(LIMITER_CLEANUP_EVERY, &shutdown).await {
                    state.connect_rate.cleanup();
                    state.publish_rate.cleanup();
                }
            });
        }
        tasks.spawn(crate::http::mercure::end_stale_subscriptions(state.clone()));
        tasks.spawn(state.cluster.clone().run(state.clone(), shutdown.clone()));
        tracing::info!(%addr, log = log.kind(), "ssegate listening");
        let grace = Duration::from_millis(cfg.server.shutdown_grace_ms);
        let window = Duration::from_millis(cfg.server.drain_window_ms).min(grace / 2);
        tasks.spawn(drain(state.clone(), signal, window, shutdown.clone()));
        let tls = match (&cfg.server.tls_cert_file, &cfg.server.tls_key_file) {
            (Some(cert), Some(key)) => {
                let tls = crate::http::tls::Tls::load(cert, key)?;
                tasks.spawn(tls.clone().watch(shutdown.clone()));
                Some(tls)
            }
            _ => None,
        };
        let serve_options = crate::http::serve::Options {
            grace,
            tls: None,
            head_timeout: Duration::from_millis(cfg.server.head_timeout_ms),
            idle_timeout: Duration::from_millis(cfg.server.idle_timeout_ms),
            sockets: socket_limits(&cfg),
            metrics: state.metrics.clone(),
        };
        if let Some(addr) = &cfg.server.metrics_listen {
            let metrics_listener =
                bind(addr)
                    .await
                    .map_err(|source| ServerError::MetricsListen {
                        addr: addr.clone(),
                        source,
                    })?;
            let local = metrics_listener
                .local_addr()
                .map_err(ServerError::ListenerAddress)?;
            tracing::info!(addr = %local, "metrics listening");
            tasks.spawn(crate::http::serve::serve(
                metrics_listener,
                crate::http::ops_router(state.clone()),
                shutdown.clone(),
                crate::http::serve::Options {
                    tls: None,
                    // Its own small caps: scrapers and probes need few connections.
                    sockets: SocketLimits::new(
                        METRICS_LISTENER_CONNECTIONS,
                        METRICS_LISTENER_CONNECTIONS / 2,
                        Vec::new(),
                    ),
                    ..serve_options.clone()
                },
            ));
        }
        let watch_shutdown = {
            let (hub, shutdown) = (hub.clone(), shutdown.clone());
            async move {
                shutdown.cancelled().await;
                hub.close_all("shutdown");
                tracing::info!(
                    streams = hub.connection_count(),
                    "shutting down: closing streams, finishing publishes"
                );
            }
        };
        tokio::join!(
            crate::http::serve::serve(
                listener,
                router(state.clone()),
                shutdown.clone(),
                crate::http::serve::Options {
                    tls,
                    ..serve_options
                },
            ),
            watch_shutdown,
        );
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
        tracing::info!("ssegate stopped");
        Ok(())
    }
}

/// What the HTTP handlers share, for a gateway whose parts are built.
fn app_state(
    gw: &Gateway,
    shutdown: CancellationToken,
    node_id: String,
    tasks: TaskTracker,
) -> Arc<AppState> {
    let cfg = &gw.cfg;
    let limits = &cfg.limits;
    let cluster = crate::cluster::Cluster::new(
        node_id.clone(),
        cfg.cluster.clone(),
        &cfg.presence,
        gw.hub.log().bus(),
        gw.metrics.cluster.clone(),
    );
    gw.hub.set_tag(cluster.tag.clone());
    if cluster.presence_events_configured() {
        // Local subscribers hear at once; the other nodes through the bus.
        let (hub, cluster) = (Arc::downgrade(&gw.hub), cluster.clone());
        gw.hub.on_presence(Box::new(move |conn, channel, joined| {
            if !cluster.has_presence_events(channel) {
                return;
            }
            if let Some(hub) = hub.upgrade() {
                hub.send_presence(channel, &conn.user, joined);
            }
            cluster.announce_presence(channel, &conn.user, &conn.id, joined);
        }));
    }
    Arc::new(AppState {
        sources: gw.sources.clone(),
        auth: gw.auth.clone(),
        metrics: gw.metrics.clone(),
        conn_limits: ConnLimits::new(
            limits.max_connections,
            limits.max_connections_per_user,
            limits.max_connections_per_ip,
        ),
        connect_rate: RateLimiter::new(
            Limit::ConnectRate,
            limits.connect_rate_per_ip,
            limits.connect_burst_per_ip,
            LIMITER_MAX_KEYS,
        ),
        publish_rate: RateLimiter::new(
            Limit::PublishRate,
            limits.publish_rate,
            limits.publish_burst,
            LIMITER_MAX_KEYS,
        ),
        hub: gw.hub.clone(),
        shutdown,
        draining: std::sync::atomic::AtomicBool::new(false),
        drain_request: CancellationToken::new(),
        started: Instant::now(),
        node_id,
        mercure: gw.mercure.clone(),
        tasks,
        cluster,
        cfg: cfg.clone(),
    })
}

/// Most connections the metrics listener holds (half of them from one address).
const METRICS_LISTENER_CONNECTIONS: usize = 32;

/// The caps on the main listener's connections: `limits.max_open_connections`, or when it is
/// 0 what the open-file limit leaves (the soft limit is raised to the hard one first, as
/// most servers do); per address `limits.max_open_connections_per_ip`.
fn socket_limits(cfg: &Config) -> Arc<SocketLimits> {
    let limits = &cfg.limits;
    let total = if limits.max_open_connections > 0 {
        limits.max_open_connections
    } else {
        let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
                1024
            }
        };
        SocketLimits::default_total(open_files)
    };
    let sockets = SocketLimits::new(
        total,
        limits.max_open_connections_per_ip,
        cfg.server.trusted_proxies.clone(),
    );
    let (total, per_ip) = sockets.caps();
    tracing::info!(total, per_ip, "open connections capped");
    sockets
}

/// Waits for a signal or a drain request, then drains: `/readyz` turns not ready at once, the
/// open streams get `closing` (`shutdown`) spread evenly over `window`, and then `shutdown` is
/// cancelled (the listener stops, whatever is left closes, in-flight requests finish).
async fn drain(
    state: Arc<AppState>,
    signal: CancellationToken,
    window: Duration,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = signal.cancelled() => {}
        _ = state.drain_request.cancelled() => {}
        _ = shutdown.cancelled() => return,
    }
    state.draining.store(true, Ordering::SeqCst);
    let conns = state.hub.connections(None);
    tracing::info!(
        streams = conns.len(),
        window_ms = window.as_millis() as u64,
        "draining: not ready; closing streams over the window"
    );
    // The first tenth of the window lets health checks see "not ready" before any client is
    // sent away (it would otherwise come straight back here); the rest spreads the closings.
    let start = tokio::time::Instant::now() + window / 10;
    let spread = window - window / 10;
    let n = conns.len().max(1) as u32;
    for (i, conn) in conns.iter().enumerate() {
        tokio::time::sleep_until(start + spread * i as u32 / n).await;
        conn.push_control(crate::hub::Control::Close("shutdown"));
    }
    // No need to wait out the rest of the window once every stream has been sent away
    // (streams opened meanwhile get `closing` at once); with none, only the first tenth.
    tokio::time::sleep_until(start).await;
    shutdown.cancel();
}

/// Every second: checks the log answers (the `ssegate_log_up` gauge; a recovery is counted
/// and logged), and applies retention by age and the dedupe window.
async fn maintain_log(hub: Arc<Hub>, shutdown: CancellationToken) {
    let log = hub.log().clone();
    let stats = &hub.stats;
    let throttle = crate::throttle::Throttle::new(Duration::from_secs(60));
    while !sleep_or_cancel(RETENTION_EVERY, &shutdown).await {
        let up = log.bounds().await.is_ok() && log.health().cannot_append.is_none();
        let was_up = stats.log_up.swap(up, Ordering::Relaxed);
        match (was_up, up) {
            (true, false) => tracing::warn!(log = log.kind(), "the log does not answer"),
            (false, true) => {
                stats.log_recoveries.fetch_add(1, Ordering::Relaxed);
                tracing::info!(log = log.kind(), "the log answers again");
            }
            _ => {}
        }
        if !up {
            continue;
        }
        if let Err(e) = log.enforce_retention(crate::time::now_ms()).await {
            if let Some(suppressed) = throttle.allow() {
                tracing::warn!(error = %e, suppressed, "retention pass failed");
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ssegate".into())
}

/// Pending connections the kernel queues before `accept` (a connect storm must not find the
/// queue full: dropped SYNs are retried only after a second).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listener (`host:port`; port 0 picks a free port) with a long accept queue and
/// `SO_REUSEADDR`.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the address resolves to nothing")))
}

/// Reads the development signing key from the data directory, creating it (readable by the
/// owner only) the first time.
pub fn dev_secret(data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join(DEV_SECRET_FILE);
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if s.len() >= 32 {
            return Ok(s);
        }
    }
    std::fs::create_dir_all(data_dir).map_err(|source| ServerError::CreateDir {
        path: data_dir.to_owned(),
        source,
    })?;
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().gen();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options
        .open(&path)
        .and_then(|mut f| f.write_all(secret.as_bytes()))
        .map_err(|source| ServerError::WriteSecret {
            path: path.clone(),
            source,
        })?;
    Ok(secret)
}
