//! `ssegate-bench`: a load generator for SSE gateways — ssegate, and for comparison the nginx
//! module nchan and pushpin — with the same scenarios and the same measurements for all three.
//!
//! - `ssegate-bench run --target ssegate|nchan|pushpin --scenario fanout|channels|idle|storm|resume ...`
//!   runs one scenario (or one slice of it: `--subscribers`, `--channels`, `--channel-offset`,
//!   `--procs`/`--proc-index`/`--sync-dir` to run in step with other processes) and prints
//!   one JSON object on stdout, a human summary on stderr.
//! - `ssegate-bench merge A.json B.json ...` merges the reports of processes that ran slices
//!   of the same scenario at the same time.
//! - `ssegate-bench table *.json` prints the comparison table (markdown).
//! - `ssegate-bench cluster-table *.json` prints the cluster table (bench/cluster.sh): one
//!   column per merged report, latency split into same-node and cross-node subscribers
//!   (`--publish-url` on another node than `--url`; `--subscribe-only` processes leave the
//!   publishing to another process of the run).
//! - `ssegate-bench grip-backend --listen 127.0.0.1:PORT` is the GRIP backend behind pushpin.
//!
//! Subscribers are cheap on purpose: a raw TCP connection each (bound to one of several
//! 127.x source addresses so that ephemeral ports never run out), a hand-written request and
//! an incremental scanner that takes `"t":<unix micros>` out of `data:` lines. Latency is
//! delivery time minus that timestamp (same clock: everything runs on this machine).
//! Traffic goes to loopback addresses only.

#[path = "ssegate-bench/grip.rs"]
mod grip;
#[path = "ssegate-bench/stats.rs"]
mod stats;
#[path = "ssegate-bench/wire.rs"]
mod wire;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use stats::{new_hist, record, Pct, ProcSample, Report};
use wire::{Dechunk, HttpClient, SseScan, Url};

#[derive(Parser)]
#[command(
    name = "ssegate-bench",
    about = "Load generator for ssegate, nchan and pushpin"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario (or one process's slice of it); JSON on stdout, summary on stderr.
    Run(Box<RunArgs>),
    /// Merge the JSON reports of processes that ran slices of one scenario together.
    Merge { files: Vec<PathBuf> },
    /// Print the comparison table (markdown) of merged reports.
    Table { files: Vec<PathBuf> },
    /// Print the cluster table (markdown) of merged reports: one column per report (e.g. an
    /// engine with 1 node and with 3 nodes), latency split into same-node and cross-node.
    ClusterTable { files: Vec<PathBuf> },
    /// Serve GRIP stream holds for pushpin: `GET /stream/{channel}`.
    GripBackend {
        #[arg(long, default_value = "127.0.0.1:7998")]
        listen: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    Ssegate,
    Nchan,
    Pushpin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Many subscribers on one channel, publishing as fast as acknowledged.
    Fanout,
    /// Many connections over many channels at a fixed total rate: latency.
    Channels,
    /// Idle connections: server memory per connection.
    Idle,
    /// Open connections as fast as possible: connections per second.
    Storm,
    /// One client resuming many events behind with Last-Event-ID.
    Resume,
}

fn name<T: ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

#[derive(Args, Clone, Debug)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "ssegate")]
    target: Target,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Base URL of the server (subscriptions; publishing too except for pushpin).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Where to publish (default: the target's own; pushpin: http://127.0.0.1:5561/publish/).
    #[arg(long)]
    publish_url: Option<String>,
    /// Subscribers of this process (default: the scenario's).
    #[arg(long)]
    subscribers: Option<u64>,
    /// Channels of this process (default: the scenario's); subscriber j is on channel
    /// offset + j mod channels.
    #[arg(long)]
    channels: Option<u64>,
    #[arg(long, default_value_t = 0)]
    channel_offset: u64,
    /// Channel names are PREFIX-N (default bench-SCENARIO).
    #[arg(long)]
    channel_prefix: Option<String>,
    /// Events per second this process publishes; 0 = as fast as acknowledged.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of publishing (idle: seconds held after measuring).
    #[arg(long)]
    duration: Option<f64>,
    /// Concurrent publishers (each waits for its acknowledgement).
    #[arg(long)]
    publishers: Option<usize>,
    /// Events per publish request (ssegate: JSON array; pushpin: items; nchan: always 1).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Resume: events the client is behind.
    #[arg(long)]
    events: Option<u64>,
    /// HS256 secret of ssegate (auth.jwt_secret): a token is minted per connection.
    #[arg(long, env = "SSEGATE_BENCH_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// First source address; subscribers are spread over --source-count consecutive ones.
    #[arg(long, default_value = "127.0.0.1")]
    source_base: Ipv4Addr,
    #[arg(long, default_value_t = 16)]
    source_count: u32,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Longest time for one connection to be established, seconds.
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Server processes to measure (RSS, CPU); their descendants are included.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Generator processes running this scenario together, and which one this is (0 measures
    /// the server).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    #[arg(long, default_value_t = 0)]
    proc_index: usize,
    /// Directory where the processes meet at barriers (required with --procs > 1).
    #[arg(long)]
    sync_dir: Option<PathBuf>,
    /// Runtime worker threads (1: single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds to wait after all connections are established before measuring or
    /// publishing (default: idle 2, others 1).
    #[arg(long)]
    settle: Option<f64>,
    /// After connecting, wait until the server uses less than this much CPU (% of one core,
    /// over 250 ms) before measuring (at most 30 s).
    #[arg(long, default_value_t = 20.0)]
    quiet_pct: f64,
    /// After publishing, wait at most this long without a new delivery for the missing ones.
    #[arg(long, default_value_t = 3.0)]
    drain_timeout: f64,
    /// Read buffer per subscriber, bytes.
    #[arg(long, default_value_t = 8192)]
    read_buf: usize,
    /// Smoke test: exit 1 unless every subscriber connected, something was delivered and
    /// nothing failed.
    #[arg(long)]
    check: bool,
    /// Subscribe only (fanout, channels): another process of the run (same --sync-dir)
    /// publishes. Every process writes what it published into the sync directory, so each
    /// one counts the deliveries its own subscribers should get. --publish-url then names
    /// the node the events are published to: subscribers with --url equal to it are
    /// "same-node", the others "cross-node" in the merged report.
    #[arg(long)]
    subscribe_only: bool,
    /// Free-form label kept in the report (e.g. the log engine of a cluster run).
    #[arg(long)]
    label: Option<String>,
    /// Processes of a shared log engine (redis-server, nats-server) to measure like the
    /// server but reported apart (process 0 only).
    #[arg(long, value_delimiter = ',')]
    engine_pid: Vec<u32>,
}

/// The scenario's sizes after defaults.
#[derive(Debug, Clone)]
struct Plan {
    target: Target,
    scenario: Scenario,
    url: Url,
    publish_url: Url,
    subscribers: u64,
    channels: u64,
    channel_offset: u64,
    prefix: String,
    rate: f64,
    duration: f64,
    publishers: usize,
    batch: usize,
    events: u64,
    settle: f64,
}

impl Plan {
    fn new(a: &RunArgs) -> anyhow::Result<Plan> {
        let (subs, chans, rate, dur, pubs) = match a.scenario {
            Scenario::Fanout => (1_000, 1, 0.0, 10.0, 8),
            Scenario::Channels => (19_000, 1_000, 2_000.0, 30.0, 32),
            Scenario::Idle => (19_000, 1_000, 0.0, 3.0, 0),
            Scenario::Storm => (19_000, 1_000, 0.0, 0.0, 0),
            Scenario::Resume => (1, 1, 0.0, 0.0, 16),
        };
        let url = Url::parse(&a.url)?;
        let publish_url = match (&a.publish_url, a.target) {
            (Some(u), _) => Url::parse(u)?,
            (None, Target::Pushpin) => Url::parse("http://127.0.0.1:5561/publish/")?,
            (None, _) => url.clone(),
        };
        let mut plan = Plan {
            target: a.target,
            scenario: a.scenario,
            url,
            publish_url,
            subscribers: a.subscribers.unwrap_or(subs),
            channels: a.channels.unwrap_or(chans).max(1),
            channel_offset: a.channel_offset,
            prefix: a
                .channel_prefix
                .clone()
                .unwrap_or_else(|| format!("bench-{}", name(a.scenario))),
            rate: a.rate.unwrap_or(rate),
            duration: a.duration.unwrap_or(dur),
            publishers: a.publishers.unwrap_or(pubs),
            batch: a.batch.max(1),
            events: a.events.unwrap_or(10_000),
            settle: a.settle.unwrap_or(if a.scenario == Scenario::Idle {
                2.0
            } else {
                1.0
            }),
        };
        if plan.target == Target::Nchan {
            plan.batch = 1;
        }
        if plan.scenario == Scenario::Resume {
            plan.subscribers = 1;
            plan.channels = 1;
        }
        if plan.target == Target::Ssegate && a.jwt_secret.is_none() {
            bail!("--target ssegate needs --jwt-secret (or SSEGATE_BENCH_JWT_SECRET)");
        }
        let last_source = u32::from(a.source_base).saturating_add(a.source_count.max(1) - 1);
        if !a.source_base.is_loopback() || !Ipv4Addr::from(last_source).is_loopback() {
            bail!("--source-base/--source-count must stay within 127.0.0.0/8");
        }
        if !(plan.rate >= 0.0 && plan.rate.is_finite()) {
            bail!("--rate must be 0 or more");
        }
        if a.procs > 1 && a.sync_dir.is_none() {
            bail!("--procs > 1 needs --sync-dir");
        }
        if a.proc_index >= a.procs {
            bail!("--proc-index must be less than --procs");
        }
        if plan.scenario == Scenario::Resume && a.procs > 1 {
            bail!("the resume scenario runs in one process");
        }
        if a.subscribe_only {
            if !matches!(plan.scenario, Scenario::Fanout | Scenario::Channels) {
                bail!("--subscribe-only is for the fanout and channels scenarios");
            }
            if a.procs < 2 {
                bail!("--subscribe-only needs another process that publishes (--procs 2 or more, the same --sync-dir)");
            }
            plan.publishers = 0;
        }
        let fds = plan.subscribers + plan.publishers as u64 + 64;
        if let Some(limit) = open_files_limit() {
            if fds > limit {
                bail!(
                    "{} subscribers + {} publishers need about {fds} file descriptors but this process may open {limit}: raise `ulimit -n` or split the run over several processes (--subscribers, --channel-offset, --procs)",
                    plan.subscribers,
                    plan.publishers
                );
            }
        }
        Ok(plan)
    }

    fn channel(&self, local: u64) -> String {
        format!("{}-{}", self.prefix, self.channel_offset + local)
    }
}

fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Lock shards of the latency histogram (subscriber i records into shard i mod SHARDS).
const SHARDS: usize = 16;

/// What every subscriber task reports into.
struct Shared {
    /// Start of the connect phase.
    start: Instant,
    connected: AtomicU64,
    failed: AtomicU64,
    /// Microseconds after `start` at which the latest connection was established.
    last_established_us: AtomicU64,
    ttfb: Mutex<Histogram<u64>>,
    latency: Vec<Mutex<Histogram<u64>>>,
    deliveries: AtomicU64,
    other_events: AtomicU64,
    /// Wall clock (unix µs) of the last delivery.
    last_delivery_us: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    cancel: CancellationToken,
    stopping: AtomicBool,
}

impl Shared {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_established_us: AtomicU64::new(0),
            ttfb: Mutex::new(new_hist()),
            latency: (0..SHARDS).map(|_| Mutex::new(new_hist())).collect(),
            deliveries: AtomicU64::new(0),
            other_events: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            cancel: CancellationToken::new(),
            stopping: AtomicBool::new(false),
        }
    }

    fn error(&self, kind: impl Into<String>) {
        *self
            .errors
            .lock()
            .expect("errors lock")
            .entry(kind.into())
            .or_default() += 1;
    }

    fn deliver(&self, shard: usize, ts: &mut Vec<u64>, now: u64) {
        if ts.is_empty() {
            return;
        }
        let n = ts.len() as u64;
        {
            let mut h = self.latency[shard % SHARDS].lock().expect("latency lock");
            for t in ts.drain(..) {
                record(&mut h, now.saturating_sub(t));
            }
        }
        self.deliveries.fetch_add(n, Relaxed);
        self.last_delivery_us.fetch_max(now, Relaxed);
    }
}

/// Decodes a response body: chunked transfer coding (when used), then SSE.
struct Body {
    dechunk: Option<Dechunk>,
    sse: SseScan,
    ended: bool,
}

impl Body {
    fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        match &mut self.dechunk {
            Some(d) => {
                let sse = &mut self.sse;
                self.ended = d.feed(data, |b| sse.feed(b))?;
            }
            None => self.sse.feed(data),
        }
        Ok(())
    }
}

fn io_kind(prefix: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    let k = match e.kind() {
        ConnectionRefused => "refused",
        ConnectionReset => "reset",
        ConnectionAborted => "aborted",
        TimedOut => "timeout",
        AddrNotAvailable => "addr_not_available",
        AddrInUse => "addr_in_use",
        BrokenPipe => "broken_pipe",
        UnexpectedEof => "eof",
        _ => {
            return match e.raw_os_error() {
                Some(24) => format!("{prefix}_too_many_open_files"),
                Some(n) => format!("{prefix}_os_error_{n}"),
                None => format!("{prefix}_other"),
            }
        }
    };
    format!("{prefix}_{k}")
}

/// Connects, sends the request, reads the response head and the first body bytes.
async fn open_stream(
    addr: SocketAddr,
    src: Ipv4Addr,
    req: &[u8],
    buf: &mut [u8],
) -> Result<(tokio::net::TcpStream, Body), String> {
    let mut stream = wire::connect_from(src, addr)
        .await
        .map_err(|e| io_kind("connect", &e))?;
    stream
        .write_all(req)
        .await
        .map_err(|e| io_kind("write", &e))?;
    let mut head_buf: Vec<u8> = Vec::new();
    loop {
        let n = stream
            .read(buf)
            .await
            .map_err(|e| io_kind("read_head", &e))?;
        if n == 0 {
            return Err("closed_before_response".into());
        }
        head_buf.extend_from_slice(&buf[..n]);
        let head = match wire::parse_head(&head_buf) {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(_) => return Err("bad_response_head".into()),
        };
        if head.status != 200 {
            let body = &head_buf[head.len..];
            return Err(match wire::error_code(body) {
                Some(code) => format!("http_{}_{code}", head.status),
                None => format!("http_{}", head.status),
            });
        }
        let mut body = Body {
            dechunk: head.chunked.then(Dechunk::default),
            sse: SseScan::default(),
            ended: false,
        };
        let mut rest = head_buf.split_off(head.len);
        // Established once the first body bytes arrived.
        while rest.is_empty() {
            let n = stream
                .read(buf)
                .await
                .map_err(|e| io_kind("read_first", &e))?;
            if n == 0 {
                return Err("closed_before_first_byte".into());
            }
            rest.extend_from_slice(&buf[..n]);
        }
        body.feed(&rest).map_err(|_| "bad_chunking".to_string())?;
        return Ok((stream, body));
    }
}

struct SubConfig {
    addr: SocketAddr,
    connect_timeout: Duration,
    read_buf: usize,
}

async fn subscriber(
    sh: Arc<Shared>,
    cfg: Arc<SubConfig>,
    idx: usize,
    req: Vec<u8>,
    src: Ipv4Addr,
    sem: Arc<Semaphore>,
) {
    let Ok(permit) = sem.acquire_owned().await else {
        return;
    };
    let mut buf = vec![0u8; cfg.read_buf];
    let t0 = Instant::now();
    let opened = tokio::time::timeout(
        cfg.connect_timeout,
        open_stream(cfg.addr, src, &req, &mut buf),
    )
    .await;
    drop(req);
    let (mut stream, mut body) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(kind)) => {
            sh.error(kind);
            sh.failed.fetch_add(1, Relaxed);
            return;
        }
        Err(_) => {
            sh.error("connect_timeout");
            sh.failed.fetch_add(1, Relaxed);
            return;
        }
    };
    let now = now_us();
    record(
        &mut sh.ttfb.lock().expect("ttfb lock"),
        t0.elapsed().as_micros() as u64,
    );
    sh.last_established_us
        .fetch_max(sh.start.elapsed().as_micros() as u64, Relaxed);
    sh.connected.fetch_add(1, Relaxed);
    drop(permit);
    sh.deliver(idx, &mut body.sse.ts, now);

    let cancelled = sh.cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        if body.ended {
            if !sh.stopping.load(Relaxed) {
                sh.error("stream_ended");
            }
            break;
        }
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            r = stream.read(&mut buf) => match r {
                Ok(0) => {
                    if !sh.stopping.load(Relaxed) {
                        sh.error("stream_ended");
                    }
                    break;
                }
                Ok(n) => {
                    let now = now_us();
                    if body.feed(&buf[..n]).is_err() {
                        sh.error("bad_chunking");
                        break;
                    }
                    sh.deliver(idx, &mut body.sse.ts, now);
                }
                Err(e) => {
                    if !sh.stopping.load(Relaxed) {
                        sh.error(io_kind("read", &e));
                    }
                    break;
                }
            }
        }
    }
    if body.sse.other > 0 {
        sh.other_events.fetch_add(body.sse.other, Relaxed);
    }
}

fn sub_request(
    plan: &Plan,
    channel: &str,
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> Vec<u8> {
    let base = &plan.url.base;
    let path = match plan.target {
        Target::Ssegate => format!("{base}/v1/stream?channel={channel}"),
        Target::Nchan => format!("{base}/sub/{channel}"),
        Target::Pushpin => format!("{base}/stream/{channel}"),
    };
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
        plan.url.host
    );
    if let Some(t) = token {
        r += &format!("Authorization: Bearer {t}\r\n");
    }
    if let Some(id) = last_event_id {
        r += &format!("Last-Event-ID: {id}\r\n");
    }
    r += "\r\n";
    r.into_bytes()
}

/// A publish request for the events (channel, seq) with timestamp `t`.
fn publish_request(plan: &Plan, token: Option<&str>, events: &[(String, u64)], t: u64) -> Vec<u8> {
    let u = &plan.publish_url;
    let (path, body) = match plan.target {
        Target::Ssegate => {
            let items: Vec<String> = events
                .iter()
                .map(|(c, s)| {
                    format!(r#"{{"channel":"{c}","type":"b","data":{{"t":{t},"s":{s}}}}}"#)
                })
                .collect();
            let body = if items.len() == 1 {
                items.into_iter().next().unwrap_or_default()
            } else {
                format!("[{}]", items.join(","))
            };
            (format!("{}/v1/publish", u.base), body)
        }
        Target::Nchan => {
            let (c, s) = &events[0];
            (
                format!("{}/pub/{c}", u.base),
                format!(r#"{{"t":{t},"s":{s}}}"#),
            )
        }
        Target::Pushpin => {
            let items: Vec<String> = events
                .iter()
                .map(|(c, s)| {
                    let content = format!("event: b\ndata: {{\"t\":{t},\"s\":{s}}}\n\n");
                    let content = serde_json::to_string(&content).unwrap_or_default();
                    format!(
                        r#"{{"channel":"{c}","formats":{{"http-stream":{{"content":{content}}}}}}}"#
                    )
                })
                .collect();
            // The URL's path is the publish endpoint itself.
            let path = if u.base.is_empty() {
                "/publish/".to_owned()
            } else {
                format!("{}/", u.base)
            };
            (path, format!(r#"{{"items":[{}]}}"#, items.join(",")))
        }
    };
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: text/json, application/json\r\nContent-Length: {}\r\n",
        u.host,
        body.len()
    );
    if let Some(t) = token {
        r += &format!("Authorization: Bearer {t}\r\n");
    }
    r += "\r\n";
    r += &body;
    r.into_bytes()
}

/// Publishing state shared by the publisher tasks.
struct PubShared {
    next: AtomicU64,
    requests: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    /// Acknowledged events per channel of this process.
    acked_by_channel: Vec<AtomicU64>,
    ack: Mutex<Histogram<u64>>,
    last_ack: Mutex<Option<Instant>>,
}

#[allow(clippy::too_many_arguments)]
async fn publisher(
    plan: Arc<Plan>,
    sh: Arc<Shared>,
    ps: Arc<PubShared>,
    token: Option<Arc<String>>,
    start: Instant,
    deadline: Instant,
    total: Option<u64>,
    src: Ipv4Addr,
) {
    let mut client = HttpClient::new(plan.publish_url.addr, src, Duration::from_secs(30));
    let batch = plan.batch as u64;
    loop {
        let k = ps.next.fetch_add(batch, Relaxed);
        let n = match total {
            Some(total) => {
                if k >= total {
                    break;
                }
                let due = start + Duration::from_secs_f64(k as f64 / plan.rate);
                if due > deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                batch.min(total - k)
            }
            None => {
                if Instant::now() >= deadline {
                    break;
                }
                batch
            }
        };
        let events: Vec<(String, u64)> = (k..k + n)
            .map(|s| (plan.channel(s % plan.channels), s))
            .collect();
        let req = publish_request(
            &plan,
            token.as_deref().map(|s| s.as_str()),
            &events,
            now_us(),
        );
        let sent = Instant::now();
        let res = client.request(&req).await;
        ps.requests.fetch_add(1, Relaxed);
        match res {
            Ok(r) if (200..300).contains(&r.status) => {
                let done = Instant::now();
                record(
                    &mut ps.ack.lock().expect("ack lock"),
                    (done - sent).as_micros() as u64,
                );
                ps.acked.fetch_add(n, Relaxed);
                for s in k..k + n {
                    ps.acked_by_channel[(s % plan.channels) as usize].fetch_add(1, Relaxed);
                }
                let mut last = ps.last_ack.lock().expect("last ack lock");
                if last.is_none_or(|l| l < done) {
                    *last = Some(done);
                }
            }
            Ok(r) => {
                ps.failed.fetch_add(n, Relaxed);
                sh.error(match wire::error_code(&r.body) {
                    Some(code) => format!("publish_http_{}_{code}", r.status),
                    None => format!("publish_http_{}", r.status),
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => {
                ps.failed.fetch_add(n, Relaxed);
                sh.error("publish_io");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Processes of one run meeting at named points.
struct Sync {
    dir: PathBuf,
    procs: usize,
    index: usize,
}

impl Sync {
    /// Waits until every process has arrived at `name`. Returns false (and the run goes on)
    /// when some did not arrive within `timeout`.
    async fn barrier(&self, name: &str, timeout: Duration) -> anyhow::Result<bool> {
        if self.procs <= 1 {
            return Ok(true);
        }
        std::fs::write(self.dir.join(format!("{name}.{}", self.index)), b"")
            .with_context(|| format!("cannot write to {}", self.dir.display()))?;
        let prefix = format!("{name}.");
        let deadline = Instant::now() + timeout;
        loop {
            let count = std::fs::read_dir(&self.dir)?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count();
            if count >= self.procs {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn mint_tokens(secret: &str, plan: &Plan, proc_index: usize) -> anyhow::Result<Vec<String>> {
    use ssegate::auth::{Grants, Minter};
    let minter = Minter::new(secret, &ssegate::config::AuthConfig::default());
    (0..plan.subscribers)
        .map(|j| {
            let grants = Grants {
                subscribe: vec![plan.channel(j % plan.channels)],
                ..Grants::default()
            };
            minter
                .mint(&format!("bench-p{proc_index}-u{j}"), grants, 7200)
                .map_err(|e| anyhow::anyhow!("cannot mint a token: {e}"))
        })
        .collect()
}

fn publisher_token(secret: &str) -> anyhow::Result<String> {
    use ssegate::auth::{Grants, Minter};
    Minter::new(secret, &ssegate::config::AuthConfig::default())
        .mint(
            "bench-publisher",
            Grants {
                publish: vec!["*".into()],
                ..Grants::default()
            },
            7200,
        )
        .map_err(|e| anyhow::anyhow!("cannot mint the publisher token: {e}"))
}

fn source_ip(base: Ipv4Addr, count: u32, j: u64) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add((j % count.max(1) as u64) as u32))
}

async fn run(args: RunArgs) -> anyhow::Result<Report> {
    let plan = Arc::new(Plan::new(&args)?);
    let leader = args.proc_index == 0;
    let sync = Sync {
        dir: args.sync_dir.clone().unwrap_or_default(),
        procs: args.procs,
        index: args.proc_index,
    };
    let mut report = Report {
        target: name(plan.target),
        scenario: name(plan.scenario),
        url: format!("http://{}{}", plan.url.host, plan.url.base),
        procs: args.procs,
        proc_index: Some(args.proc_index),
        subscribers: plan.subscribers,
        channels: plan.channels,
        label: args.label.clone().unwrap_or_default(),
        publish_url: format!("http://{}{}", plan.publish_url.host, plan.publish_url.base),
        subscribe_only: args.subscribe_only,
        ..Report::default()
    };
    report.generator.processes = 1;
    report.generator.threads = args.threads;

    if plan.scenario == Scenario::Resume {
        return run_resume(&args, plan, report).await;
    }

    // Everything a subscriber sends is prepared before the storm.
    let tokens = match (&args.jwt_secret, plan.target) {
        (Some(secret), Target::Ssegate) => Some(mint_tokens(secret, &plan, args.proc_index)?),
        _ => None,
    };
    let mut requests: Vec<Vec<u8>> = (0..plan.subscribers)
        .map(|j| {
            let token = tokens.as_ref().map(|t| t[j as usize].as_str());
            sub_request(&plan, &plan.channel(j % plan.channels), token, None)
        })
        .collect();
    drop(tokens);
    let mut subs_per_channel = vec![0u64; plan.channels as usize];
    for j in 0..plan.subscribers {
        subs_per_channel[(j % plan.channels) as usize] += 1;
    }
    let pub_token = match (&args.jwt_secret, plan.target) {
        (Some(secret), Target::Ssegate) => Some(Arc::new(publisher_token(secret)?)),
        _ => None,
    };

    let barrier_timeout = Duration::from_secs_f64(args.connect_timeout * 4.0 + 120.0);
    let server_pids = args.server_pid.clone();
    let measure = leader && !server_pids.is_empty();
    let engine_pids = if leader {
        args.engine_pid.clone()
    } else {
        Vec::new()
    };
    let measure_engine = !engine_pids.is_empty();
    let s_before = measure.then(|| stats::sample(&server_pids));
    let e_before = measure_engine.then(|| stats::sample(&engine_pids));
    let n_before = measure.then(|| stats::sample_each(&server_pids));
    if !sync.barrier("start", barrier_timeout).await? {
        report
            .notes
            .push("not every generator process reached the start barrier".into());
    }
    let (gen_cpu0, _) = stats::self_usage();
    let gen_t0 = Instant::now();
    let machine0 = stats::machine_sample();

    // Connect phase.
    let sh = Arc::new(Shared::new());
    let cfg = Arc::new(SubConfig {
        addr: plan.url.addr,
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        read_buf: args.read_buf.max(512),
    });
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let n = plan.subscribers;
    let mut handles = Vec::with_capacity(n as usize);
    for (j, req) in requests.drain(..).enumerate() {
        let src = source_ip(args.source_base, args.source_count, j as u64);
        handles.push(tokio::spawn(subscriber(
            sh.clone(),
            cfg.clone(),
            j,
            req,
            src,
            sem.clone(),
        )));
    }
    let phase_limit = Duration::from_secs_f64(args.connect_timeout * 2.0 + n as f64 / 200.0);
    loop {
        let done = sh.connected.load(Relaxed) + sh.failed.load(Relaxed);
        if done >= n {
            break;
        }
        if sh.start.elapsed() > phase_limit {
            report.notes.push(format!(
                "{} connections still pending after {:.0} s",
                n - done,
                phase_limit.as_secs_f64()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let connected = sh.connected.load(Relaxed);
    report.connected = connected;
    report.connect.duration_s = sh.last_established_us.load(Relaxed) as f64 / 1e6;
    if report.connect.duration_s > 0.0 {
        report.connect.rate_per_s = connected as f64 / report.connect.duration_s;
    }
    if !sync.barrier("connected", barrier_timeout).await? {
        report
            .notes
            .push("not every generator process reached the connected barrier".into());
    }
    // Settle: at least `settle` seconds, then (process 0, which watches the server) until
    // the server has finished its work on the new connections: some servers go on
    // registering subscriptions after they answered.
    tokio::time::sleep(Duration::from_secs_f64(plan.settle)).await;
    if measure {
        let quiet = wait_quiet(&server_pids, args.quiet_pct, Duration::from_secs(30)).await;
        if !quiet {
            report.notes.push(format!(
                "the server did not become quiet (< {}% CPU) within 30 s after connecting",
                args.quiet_pct
            ));
        }
    }
    if !sync.barrier("settled", barrier_timeout).await? {
        report
            .notes
            .push("not every generator process reached the settled barrier".into());
    }
    let s_connected = measure.then(|| stats::sample(&server_pids));
    let e_connected = measure_engine.then(|| stats::sample(&engine_pids));
    let n_connected = measure.then(|| stats::sample_each(&server_pids));

    // Measured phase.
    let phase_t0 = Instant::now();
    match plan.scenario {
        Scenario::Fanout | Scenario::Channels => {
            publish_phase(
                &plan,
                &sh,
                pub_token,
                subs_per_channel,
                &args,
                &sync,
                &mut report,
            )
            .await?;
        }
        Scenario::Idle => {
            tokio::time::sleep(Duration::from_secs_f64(plan.duration)).await;
        }
        Scenario::Storm | Scenario::Resume => {}
    }
    let phase_s = phase_t0.elapsed().as_secs_f64();
    let s_after = measure.then(|| stats::sample(&server_pids));
    let e_after = measure_engine.then(|| stats::sample(&engine_pids));
    let n_after = measure.then(|| stats::sample_each(&server_pids));
    if !sync.barrier("done", barrier_timeout).await? {
        report
            .notes
            .push("not every generator process reached the done barrier".into());
    }
    sh.stopping.store(true, Relaxed);
    sh.cancel.cancel();
    // Let the subscribers see the cancellation (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for h in handles {
            let _ = h.await;
        }
    })
    .await;

    let (gen_cpu1, gen_rss) = stats::self_usage();
    let wall = gen_t0.elapsed().as_secs_f64();
    if leader {
        report.machine = Some(stats::machine_stats(
            machine0,
            stats::machine_sample(),
            wall,
        ));
    }
    report.generator.cpu_s = gen_cpu1 - gen_cpu0;
    report.generator.wall_s = wall;
    report.generator.cpu_pct = report.generator.cpu_s / wall * 100.0;
    report.generator.max_rss_kb = gen_rss;

    if let (Some(b), Some(c), Some(a)) = (s_before, s_connected, s_after) {
        let mut sv = server_stats(&server_pids, b, c, a, connected, phase_s);
        if let (Some(nb), Some(nc), Some(na)) = (n_before, n_connected, n_after) {
            if server_pids.len() > 1 {
                sv.nodes = stats::node_stats(&server_pids, &nb, &nc, &na, phase_s);
            }
        }
        report.server = Some(sv);
    }
    if let (Some(b), Some(c), Some(a)) = (e_before, e_connected, e_after) {
        let mut ev = server_stats(&engine_pids, b, c, a, 0, phase_s);
        ev.rss_per_conn_bytes = None;
        ev.pss_per_conn_bytes = None;
        report.engine = Some(ev);
    }
    let mut lat = new_hist();
    for h in &sh.latency {
        lat.add(&*h.lock().expect("latency lock"))?;
    }
    let ttfb = sh.ttfb.lock().expect("ttfb lock").clone();
    report.delivery.deliveries = sh.deliveries.load(Relaxed);
    report.delivery.other_events = sh.other_events.load(Relaxed);
    report.delivery.latency_us = Pct::of(&lat);
    report.connect.ttfb_us = Pct::of(&ttfb);
    report.histograms.latency = stats::hist_to_vec(&lat);
    report.histograms.ttfb = stats::hist_to_vec(&ttfb);
    report.errors = sh.errors.lock().expect("errors lock").clone();
    report.error_total = report.errors.values().sum();
    finish_delivery(&mut report);
    Ok(report)
}

/// Waits until the processes use less than `pct`% of one core over 250 ms.
async fn wait_quiet(pids: &[u32], pct: f64, limit: Duration) -> bool {
    let t0 = Instant::now();
    let mut prev = stats::sample(pids).cpu_s;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = stats::sample(pids).cpu_s;
        if (now - prev) / 0.25 * 100.0 < pct {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        prev = now;
    }
}

fn finish_delivery(report: &mut Report) {
    let d = &mut report.delivery;
    d.missing = d.expected.saturating_sub(d.deliveries);
    if d.deliveries > d.expected && d.expected > 0 {
        report.notes.push(format!(
            "{} more deliveries than expected (duplicates?)",
            d.deliveries - d.expected
        ));
    }
    if d.duration_s > 0.0 {
        d.per_s = d.deliveries as f64 / d.duration_s;
    }
}

fn server_stats(
    pids: &[u32],
    before: ProcSample,
    connected: ProcSample,
    after: ProcSample,
    connections: u64,
    phase_s: f64,
) -> stats::ServerStats {
    let c = connections.max(1) as f64;
    stats::ServerStats {
        pids: stats::with_descendants(pids),
        before,
        connected,
        after,
        rss_per_conn_bytes: (connections > 0)
            .then(|| (connected.rss_kb as f64 - before.rss_kb as f64) * 1024.0 / c),
        pss_per_conn_bytes: (connections > 0)
            .then(|| (connected.pss_kb as f64 - before.pss_kb as f64) * 1024.0 / c),
        cpu_connect_s: connected.cpu_s - before.cpu_s,
        cpu_phase_s: after.cpu_s - connected.cpu_s,
        cpu_phase_pct: if phase_s > 0.0 {
            (after.cpu_s - connected.cpu_s) / phase_s * 100.0
        } else {
            0.0
        },
        nodes: Vec::new(),
    }
}

/// Publishes (unless --subscribe-only), learns how many deliveries this process's
/// subscribers should get, and waits for them (bounded).
async fn publish_phase(
    plan: &Arc<Plan>,
    sh: &Arc<Shared>,
    pub_token: Option<Arc<String>>,
    subs_per_channel: Vec<u64>,
    args: &RunArgs,
    sync: &Sync,
    report: &mut Report,
) -> anyhow::Result<()> {
    let start_wall = now_us();
    let acked_by_channel = if args.subscribe_only {
        vec![0; plan.channels as usize]
    } else {
        publish(plan, sh, pub_token, args, report).await
    };
    let expected = if sync.procs > 1 {
        // Other processes may have published on this process's channels (--subscribe-only):
        // every process tells what it published, and each counts for its own subscribers.
        let wait = Duration::from_secs_f64(plan.duration * 2.0 + 10.0 + 30.0 + 240.0);
        let acked = exchange_acked(sync, plan, &acked_by_channel, wait, report).await?;
        acked
            .iter()
            .filter(|(c, _)| **c >= plan.channel_offset)
            .filter_map(|(c, n)| {
                subs_per_channel
                    .get((c - plan.channel_offset) as usize)
                    .map(|s| s * n)
            })
            .sum()
    } else {
        acked_by_channel
            .iter()
            .zip(&subs_per_channel)
            .map(|(n, s)| n * s)
            .sum()
    };
    // Drain: wait for the missing deliveries while they keep coming.
    let mut last_count = sh.deliveries.load(Relaxed);
    let mut last_progress = Instant::now();
    let drain_limit = Instant::now() + Duration::from_secs(120);
    while sh.deliveries.load(Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let c = sh.deliveries.load(Relaxed);
        if c != last_count {
            last_count = c;
            last_progress = Instant::now();
        } else if last_progress.elapsed().as_secs_f64() > args.drain_timeout {
            break;
        }
        if Instant::now() > drain_limit {
            break;
        }
    }
    let last_delivery = sh.last_delivery_us.load(Relaxed);
    report.delivery.expected = expected;
    report.delivery.duration_s = if last_delivery > start_wall {
        (last_delivery - start_wall) as f64 / 1e6
    } else {
        0.0
    };
    Ok(())
}

/// Writes what this process published (global channel → acknowledged events) into the sync
/// directory, waits until every process has, and returns the sum over all processes.
async fn exchange_acked(
    sync: &Sync,
    plan: &Plan,
    acked_by_channel: &[u64],
    wait: Duration,
    report: &mut Report,
) -> anyhow::Result<BTreeMap<u64, u64>> {
    let mine: Vec<(u64, u64)> = acked_by_channel
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| (plan.channel_offset + c as u64, *n))
        .collect();
    let file = sync.dir.join(format!("acked-{}.json", sync.index));
    let tmp = sync.dir.join(format!(".acked-{}.tmp", sync.index));
    std::fs::write(&tmp, serde_json::to_vec(&mine)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &file)?;
    if !sync.barrier("published", wait).await? {
        report.notes.push(
            "not every generator process reached the published barrier: expected deliveries are undercounted".into(),
        );
    }
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(&sync.dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("acked-") && name.ends_with(".json")) {
            continue;
        }
        let text = std::fs::read(entry.path())?;
        let theirs: Vec<(u64, u64)> = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a list of counts", entry.path().display()))?;
        for (c, n) in theirs {
            *all.entry(c).or_default() += n;
        }
    }
    Ok(all)
}

/// Publishes at the plan's rate (or as fast as acknowledged) and returns the events
/// acknowledged per channel of this process.
async fn publish(
    plan: &Arc<Plan>,
    sh: &Arc<Shared>,
    pub_token: Option<Arc<String>>,
    args: &RunArgs,
    report: &mut Report,
) -> Vec<u64> {
    let ps = Arc::new(PubShared {
        next: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        acked_by_channel: (0..plan.channels).map(|_| AtomicU64::new(0)).collect(),
        ack: Mutex::new(new_hist()),
        last_ack: Mutex::new(None),
    });
    let start = Instant::now();
    let total = (plan.rate > 0.0).then(|| (plan.rate * plan.duration).round() as u64);
    // Paced publishing may run late when the server is slow, but not forever.
    let deadline = if total.is_some() {
        start + Duration::from_secs_f64(plan.duration * 2.0 + 10.0)
    } else {
        start + Duration::from_secs_f64(plan.duration)
    };
    // Publishers connect from addresses of their own (127.0.200+proc.1+i): a peer that
    // closes every publish connection leaves many sockets in TIME_WAIT.
    let publishers: Vec<_> = (0..plan.publishers.max(1))
        .map(|i| {
            let src = Ipv4Addr::new(
                127,
                0,
                200 + (args.proc_index % 50) as u8,
                1 + (i % 250) as u8,
            );
            tokio::spawn(publisher(
                plan.clone(),
                sh.clone(),
                ps.clone(),
                pub_token.clone(),
                start,
                deadline,
                total,
                src,
            ))
        })
        .collect();
    for p in publishers {
        let _ = p.await;
    }
    let publish_end = ps.last_ack.lock().expect("last ack").unwrap_or(start);
    let publish_s = (publish_end - start).as_secs_f64();
    if let Some(total) = total {
        if ps.next.load(Relaxed) < total {
            report.notes.push(format!(
                "publishing fell behind the target rate: {} of {total} events sent before the deadline",
                ps.next.load(Relaxed)
            ));
        }
    }
    report.publish = stats::PublishStats {
        requests: ps.requests.load(Relaxed),
        events_acked: ps.acked.load(Relaxed),
        events_failed: ps.failed.load(Relaxed),
        batch: plan.batch,
        publishers: plan.publishers.max(1),
        target_rate: plan.rate,
        duration_s: publish_s,
        acked_per_s: if publish_s > 0.0 {
            ps.acked.load(Relaxed) as f64 / publish_s
        } else {
            0.0
        },
        ack_us: Pct::of(&ps.ack.lock().expect("ack")),
    };
    report.histograms.ack = stats::hist_to_vec(&ps.ack.lock().expect("ack"));
    ps.acked_by_channel
        .iter()
        .map(|n| n.load(Relaxed))
        .collect()
}

/// Resume: publish a marker, then `events` events, then connect with `Last-Event-ID` = the
/// marker's id and time until every missed event arrived.
async fn run_resume(args: &RunArgs, plan: Arc<Plan>, mut report: Report) -> anyhow::Result<Report> {
    let total = plan.events;
    let mut resume = stats::ResumeStats {
        supported: true,
        events: total,
        ..Default::default()
    };
    if plan.target == Target::Pushpin {
        resume.supported = false;
        resume.note = "pushpin keeps no message history: resuming with Last-Event-ID would need the backend to replay (GRIP prev-id/recovery), which is not part of pushpin itself".into();
        report.resume = Some(resume);
        return Ok(report);
    }
    let secret = args.jwt_secret.as_deref();
    let pub_token = match (secret, plan.target) {
        (Some(s), Target::Ssegate) => Some(publisher_token(s)?),
        _ => None,
    };
    let channel = plan.channel(0);
    let mut client = HttpClient::new(
        plan.publish_url.addr,
        Ipv4Addr::LOCALHOST,
        Duration::from_secs(30),
    );
    // The marker: the client last saw this event.
    let req = publish_request(
        &plan,
        pub_token.as_deref(),
        &[(channel.clone(), 0)],
        now_us(),
    );
    let res = client
        .request(&req)
        .await
        .context("publishing the marker")?;
    if !(200..300).contains(&res.status) {
        bail!(
            "publishing the marker failed with {}: {}",
            res.status,
            String::from_utf8_lossy(&res.body)
        );
    }
    let body: serde_json::Value = serde_json::from_slice(&res.body).with_context(|| {
        format!(
            "the publish answer is not JSON: {}",
            String::from_utf8_lossy(&res.body)
        )
    })?;
    let marker = match plan.target {
        Target::Ssegate => body["ids"][0].as_str().map(str::to_owned),
        _ => body["last_message_id"].as_str().map(str::to_owned),
    }
    .with_context(|| format!("no message id in the publish answer {body}"))?;

    // The backlog, published before the client comes back.
    let batch = if plan.target == Target::Ssegate {
        plan.batch.max(500) as u64
    } else {
        1
    };
    let workers = if plan.target == Target::Ssegate {
        1
    } else {
        plan.publishers.max(1)
    };
    let next = Arc::new(AtomicU64::new(1));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (plan, next, failures, channel, token) = (
            plan.clone(),
            next.clone(),
            failures.clone(),
            channel.clone(),
            pub_token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = HttpClient::new(
                plan.publish_url.addr,
                Ipv4Addr::LOCALHOST,
                Duration::from_secs(30),
            );
            loop {
                let k = next.fetch_add(batch, Relaxed);
                if k > total {
                    break;
                }
                let n = batch.min(total + 1 - k);
                let events: Vec<(String, u64)> = (k..k + n).map(|s| (channel.clone(), s)).collect();
                let req = publish_request(&plan, token.as_deref(), &events, now_us());
                match client.request(&req).await {
                    Ok(r) if (200..300).contains(&r.status) => {}
                    _ => {
                        failures.fetch_add(n, Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let failed = failures.load(Relaxed);
    if failed > 0 {
        bail!("{failed} backlog events could not be published");
    }

    // The client comes back.
    let token = match (secret, plan.target) {
        (Some(s), Target::Ssegate) => Some(mint_tokens(s, &plan, 0)?.remove(0)),
        _ => None,
    };
    let req = sub_request(&plan, &channel, token.as_deref(), Some(&marker));
    let sh = Arc::new(Shared::new());
    let cfg = Arc::new(SubConfig {
        addr: plan.url.addr,
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        read_buf: args.read_buf.max(65536),
    });
    let (gen_cpu0, _) = stats::self_usage();
    let start_wall = now_us();
    let t0 = Instant::now();
    let handle = tokio::spawn(subscriber(
        sh.clone(),
        cfg,
        0,
        req,
        source_ip(args.source_base, args.source_count, 0),
        Arc::new(Semaphore::new(1)),
    ));
    let limit = Duration::from_secs(60);
    while sh.deliveries.load(Relaxed) < total
        && t0.elapsed() < limit
        && sh.failed.load(Relaxed) == 0
        && !handle.is_finished()
    {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let received = sh.deliveries.load(Relaxed);
    resume.received = received;
    if received >= total {
        let last = sh.last_delivery_us.load(Relaxed);
        resume.ms = Some(last.saturating_sub(start_wall) as f64 / 1000.0);
    }
    resume.note = format!("Last-Event-ID: {marker}");
    sh.stopping.store(true, Relaxed);
    sh.cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
    let (gen_cpu1, gen_rss) = stats::self_usage();
    report.connected = sh.connected.load(Relaxed);
    report.generator.cpu_s = gen_cpu1 - gen_cpu0;
    report.generator.wall_s = t0.elapsed().as_secs_f64();
    report.generator.cpu_pct = report.generator.cpu_s / report.generator.wall_s * 100.0;
    report.generator.max_rss_kb = gen_rss;
    let mut lat = new_hist();
    lat.add(&*sh.latency[0].lock().expect("latency lock"))?;
    report.delivery.deliveries = received;
    report.delivery.expected = total;
    report.delivery.missing = total.saturating_sub(received);
    report.delivery.latency_us = Pct::of(&lat);
    report.histograms.latency = stats::hist_to_vec(&lat);
    report.errors = sh.errors.lock().expect("errors lock").clone();
    report.error_total = report.errors.values().sum();
    report.resume = Some(resume);
    Ok(report)
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let check = args.check;
            let threads = args.threads;
            let report = runtime(threads)?.block_on(run(*args))?;
            println!("{}", serde_json::to_string(&report)?);
            eprintln!("{}", stats::summary(&report));
            if check {
                let mut problems = Vec::new();
                if report.connected < report.subscribers {
                    problems.push(format!(
                        "only {} of {} subscribers connected",
                        report.connected, report.subscribers
                    ));
                }
                if report.delivery.deliveries == 0 {
                    problems.push("nothing was delivered".into());
                }
                if report.error_total > 0 {
                    problems.push(format!("errors: {:?}", report.errors));
                }
                if !problems.is_empty() {
                    eprintln!("CHECK FAILED: {}", problems.join("; "));
                    std::process::exit(1);
                }
                eprintln!("check passed");
            }
            Ok(())
        }
        Command::Merge { files } => {
            let parts = files
                .iter()
                .map(|f| stats::read_report(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let merged = stats::merge(parts)?;
            println!("{}", serde_json::to_string(&merged)?);
            eprintln!("{}", stats::summary(&merged));
            Ok(())
        }
        Command::Table { files } => {
            let reports = files
                .iter()
                .map(|f| stats::read_report(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            print!("{}", stats::table(&reports));
            Ok(())
        }
        Command::ClusterTable { files } => {
            let reports = files
                .iter()
                .map(|f| stats::read_report(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            print!("{}", stats::cluster_table(&reports));
            Ok(())
        }
        Command::GripBackend { listen } => runtime(1)?.block_on(grip::serve(&listen)),
    }
}
