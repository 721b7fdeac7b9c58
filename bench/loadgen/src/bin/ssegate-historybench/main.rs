//! `ssegate-historybench`: issue 17's figure — "the last 100 events of one channel in a
//! 1,000,000-event log spread over 10,000 channels come back in ≤ 5 ms" — measured on every
//! backend.
//!
//! For each backend (`file`, `memory`, `redis`, `nats`) it fills a fresh log with `--events`
//! events round-robin over `--channels` channels (`hist:0` … `hist:9999`), appended in large
//! batches straight through the library's [`EventLog`] API; reopens it (the file log rebuilds
//! its index from the segments, the NATS log its in-process index from the stream) and times
//! that; then asks `history(limit)` of random channels `--queries` times, one at a time,
//! after `--warmup` unmeasured ones. For the file log it then starts a real `ssegate serve`
//! on the same directory and asks `GET /v1/channels/{c}/history?limit=N` over HTTP the same
//! way: the figure users see. redis-server and nats-server are started on free loopback
//! ports in the benchmark's directory (or `--redis-url` / `--nats-url` name running ones).
//!
//! Prints one markdown table on stdout (progress on stderr). Built only with the `history`
//! feature (the one binary of this package that depends on the ssegate crate):
//!
//! ```sh
//! cargo build --release -p ssegate -p ssegate-loadgen --features ssegate-loadgen/history \
//!   --bin ssegate --bin ssegate-historybench
//! target/release/ssegate-historybench                     # 1,000,000 events, all backends
//! target/release/ssegate-historybench --backends file --events 10000 --channels 100 --queries 50
//! ```

mod engines;
mod serve;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::value::RawValue;
use ssegate::log::config::{Backend, EngineConfig, LogConfig};
use ssegate::log::{all_events, AppendItem, EventLog, HistoryQuery, LogError, NewEvent, Position};

#[derive(Parser, Debug)]
#[command(
    name = "ssegate-historybench",
    about = "History queries of one channel in a large log, per backend"
)]
struct Cli {
    /// Backends to measure, in this order.
    #[arg(long, value_delimiter = ',', default_value = "file,memory,redis,nats")]
    backends: Vec<String>,
    /// Events in the log.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Channels the events are spread over (round-robin).
    #[arg(long, default_value_t = 10_000)]
    channels: usize,
    /// `limit` of every history query.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Measured queries per backend.
    #[arg(long, default_value_t = 1_000)]
    queries: usize,
    /// Unmeasured queries first.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Bytes of padding in each event's data.
    #[arg(long, default_value_t = 100)]
    data_bytes: usize,
    /// Events per append (file, memory).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Events per append on Redis (one Lua script each).
    #[arg(long, default_value_t = 1_000)]
    redis_batch: usize,
    /// Events per append on NATS: one append is one JetStream message, as one publish
    /// request is; 1 keeps the shape a server under many small publishes writes.
    #[arg(long, default_value_t = 1)]
    nats_batch: usize,
    /// Appends in flight at once (file, memory, redis).
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Appends in flight at once on NATS.
    #[arg(long, default_value_t = 256)]
    nats_concurrency: usize,
    /// A running Redis to use instead of starting one (a stream `histbench<pid>` is left in it).
    #[arg(long)]
    redis_url: Option<String>,
    /// A running NATS (JetStream) to use instead of starting one.
    #[arg(long)]
    nats_url: Option<String>,
    #[arg(long, default_value = "/usr/bin/redis-server")]
    redis_server: PathBuf,
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    nats_server: PathBuf,
    /// The ssegate binary for the HTTP figure (default: `ssegate` beside this program).
    #[arg(long)]
    ssegate_bin: Option<PathBuf>,
    /// Skip the HTTP figure.
    #[arg(long)]
    no_http: bool,
    /// Where logs and engines keep their files (default: a new directory in the temp dir,
    /// removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the directory.
    #[arg(long)]
    keep: bool,
    /// Seed of the random channel choice.
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// Also measure history with this limit (e.g. 1: the fixed cost of one call, apart from
    /// the events it reads), as rows of their own.
    #[arg(long)]
    also_limit: Option<usize>,
    /// The goal, milliseconds (compared with p99).
    #[arg(long, default_value_t = 5.0)]
    goal_ms: f64,
}

/// Query latencies, and answers that did not hold the expected number of events.
#[derive(Default)]
pub struct Latencies {
    samples: Vec<Duration>,
    short: usize,
    bytes: usize,
}

impl Latencies {
    pub fn record(&mut self, took: Duration, complete: bool, bytes: usize) {
        self.samples.push(took);
        if !complete {
            self.short += 1;
        }
        self.bytes = self.bytes.max(bytes);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut ms: Vec<f64> = self.samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        ms
    }

    fn pct(sorted: &[f64], p: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[i.clamp(1, sorted.len()) - 1]
    }
}

/// One line of the table.
struct Row {
    what: String,
    fill: Option<Duration>,
    events: u64,
    reopen: Option<(String, Duration)>,
    lat: Latencies,
    memory: String,
}

fn channel(k: usize) -> String {
    format!("hist:{k}")
}

/// Events of channel `k` (round-robin).
fn events_of(cli: &Cli, k: usize) -> u64 {
    let c = cli.channels as u64;
    cli.events / c + u64::from((k as u64) < cli.events % c)
}

fn expected(cli: &Cli, k: usize, limit: usize) -> usize {
    (events_of(cli, k) as usize).min(limit)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Appends `cli.events` events, `batch` per append, `concurrency` appends at a time.
async fn fill(
    cli: &Cli,
    log: Arc<dyn EventLog>,
    batch: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let next = Arc::new(AtomicU64::new(0));
    let pad = "x".repeat(cli.data_bytes);
    let (events, channels) = (cli.events, cli.channels as u64);
    let t0 = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (log, next, pad) = (log.clone(), next.clone(), pad.clone());
        workers.spawn(async move {
            loop {
                let start = next.fetch_add(batch as u64, Ordering::Relaxed);
                if start >= events {
                    return anyhow::Ok(());
                }
                let end = (start + batch as u64).min(events);
                let now = ssegate_loadgen::now_ms();
                let mut items = Vec::with_capacity((end - start) as usize);
                for i in start..end {
                    let data = RawValue::from_string(format!("{{\"n\":{i},\"p\":\"{pad}\"}}"))?;
                    let event = NewEvent::new(
                        channel((i % channels) as usize),
                        "bench".into(),
                        data,
                        None,
                        now,
                        1 << 20,
                    )?;
                    items.push(AppendItem {
                        key: None,
                        events: vec![event],
                    });
                }
                let mut tries = 0;
                loop {
                    match log.append(items.clone(), now).await {
                        Ok(_) => break,
                        Err(LogError::Unavailable(e)) if tries < 20 => {
                            tries += 1;
                            eprintln!("   append unavailable ({e}), retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        });
    }
    let progress = {
        let next = next.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                eprintln!(
                    "   {} events appended, {:.0} s",
                    next.load(Ordering::Relaxed).min(events),
                    t0.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut result = Ok(());
    while let Some(done) = workers.join_next().await {
        if let Err(e) = done.map_err(anyhow::Error::from).and_then(|r| r) {
            if result.is_ok() {
                result = Err(e);
                workers.abort_all();
            }
        }
    }
    progress.abort();
    result?;
    Ok(t0.elapsed())
}

/// The first history call that succeeds (the NATS log answers `Unavailable` until its
/// index has caught up with the stream); the time it took.
async fn first_history(log: &dyn EventLog, head: Position) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let q = HistoryQuery {
            channel: "hist:0",
            after: Position::ZERO,
            through: head,
            limit: 1,
        };
        match log.history(q, &all_events).await {
            Ok(_) => return Ok(t0.elapsed()),
            Err(LogError::Unavailable(e)) if t0.elapsed() < Duration::from_secs(600) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn measure(
    cli: &Cli,
    log: &dyn EventLog,
    head: Position,
    limit: usize,
    rng: &mut StdRng,
) -> anyhow::Result<Latencies> {
    let mut lat = Latencies::default();
    for i in 0..cli.warmup + cli.queries {
        let k = rng.gen_range(0..cli.channels);
        let name = channel(k);
        let q = HistoryQuery {
            channel: &name,
            after: Position::ZERO,
            through: head,
            limit,
        };
        let t = Instant::now();
        let h = log.history(q, &all_events).await?;
        let took = t.elapsed();
        if i >= cli.warmup {
            let complete = h.events.len() == expected(cli, k, limit)
                && h.events.iter().all(|e| e.event.channel == name);
            lat.record(took, complete, 0);
        }
    }
    Ok(lat)
}

/// Opens the log `cfg` describes, retrying while the previous instance lets go of it.
async fn open(cfg: &LogConfig, data: &Path) -> anyhow::Result<(Arc<dyn EventLog>, Duration)> {
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let t0 = Instant::now();
        match ssegate::log::open(cfg, data).await {
            Ok(log) => return Ok((log, t0.elapsed())),
            Err(e) if Instant::now() < give_up => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn config(cli: &Cli, backend: Backend) -> LogConfig {
    let mut cfg = LogConfig::default();
    cfg.backend = backend;
    cfg.retention_events = cfg.retention_events.max(cli.events);
    cfg
}

fn engine(url: &str) -> EngineConfig {
    EngineConfig {
        url: url.into(),
        stream: format!("histbench{}", std::process::id()),
        tls_ca_file: None,
    }
}

async fn bench_backend(
    cli: &Cli,
    name: &str,
    base: &Path,
    rng: &mut StdRng,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("data");
    let mut engine_proc = None;
    let (cfg, batch, concurrency) = match name {
        "file" => (LogConfig::default(), cli.batch, cli.concurrency),
        "memory" => (LogConfig::memory(), cli.batch, cli.concurrency),
        "redis" => {
            let url = match &cli.redis_url {
                Some(u) => u.clone(),
                None => {
                    let e = engines::redis(&cli.redis_server, &dir.join("redis"))?;
                    let u = e.url.clone();
                    engine_proc = Some(e);
                    u
                }
            };
            (
                LogConfig {
                    backend: Backend::Redis(engine(&url)),
                    ..LogConfig::default()
                },
                cli.redis_batch,
                cli.concurrency,
            )
        }
        "nats" => {
            let url = match &cli.nats_url {
                Some(u) => u.clone(),
                None => {
                    let e = engines::nats(&cli.nats_server, &dir.join("nats"))?;
                    let u = e.url.clone();
                    engine_proc = Some(e);
                    u
                }
            };
            (
                LogConfig {
                    backend: Backend::Nats {
                        engine: engine(&url),
                        credentials_file: None,
                    },
                    ..LogConfig::default()
                },
                cli.nats_batch,
                cli.nats_concurrency,
            )
        }
        other => bail!("unknown backend {other:?} (file, memory, redis, nats)"),
    };
    let cfg = config(cli, cfg.backend);
    let me = std::process::id();

    eprintln!("== {name}: filling {} events over {} channels ({batch} per append, {concurrency} at a time)", cli.events, cli.channels);
    let rss0 = rss_kib(me).unwrap_or(0);
    let (log, _) = open(&cfg, &data).await?;
    let fill_time = fill(cli, log.clone(), batch, concurrency).await?;
    let head = log.bounds().await?.head;
    eprintln!("   filled in {:.1} s, head {head}", fill_time.as_secs_f64());
    let mut memory = String::new();
    let mut reopen = None;
    let log = match name {
        "memory" => {
            first_history(&*log, head).await?;
            let rss1 = rss_kib(me).unwrap_or(0);
            memory = format!(
                "process RSS +{} (all events and the index)",
                mib(rss1.saturating_sub(rss0))
            );
            log
        }
        _ => {
            drop(log);
            // Let the NATS index consumer and the file writer of the first instance go.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let t0 = Instant::now();
            let (log, opened) = open(&cfg, &data).await?;
            let first = first_history(&*log, head).await?;
            let total = t0.elapsed();
            let what = match name {
                "file" => "open (index rebuilt from the segments)",
                "nats" => "open + index caught up with the stream",
                _ => "open + first history",
            };
            eprintln!(
                "   reopened: open {:.3} s, first history after {:.3} s more",
                opened.as_secs_f64(),
                first.as_secs_f64()
            );
            reopen = Some((what.to_string(), total));
            match (name, &engine_proc) {
                ("file", _) => memory = format!("disk {}", mib(dir_bytes(&data) / 1024)),
                ("redis", Some(e)) => {
                    if let Some(b) = engines::redis_used_memory(e.port) {
                        memory = format!("redis used_memory {}", mib(b / 1024));
                    }
                }
                ("nats", Some(e)) => {
                    if let Some(kib) = rss_kib(e.pid()) {
                        memory = format!("nats-server RSS {}", mib(kib));
                    }
                }
                _ => {}
            }
            log
        }
    };
    let lat = measure(cli, &*log, head, cli.limit, rng).await?;
    eprintln!("   history: {}", summary(&lat));
    rows.push(Row {
        what: format!("{name}: EventLog::history"),
        fill: Some(fill_time),
        events: cli.events,
        reopen,
        lat,
        memory,
    });
    if let Some(limit) = cli.also_limit {
        let lat = measure(cli, &*log, head, limit, rng).await?;
        eprintln!("   history(limit={limit}): {}", summary(&lat));
        rows.push(Row {
            what: format!("{name}: EventLog::history, limit={limit}"),
            fill: None,
            events: cli.events,
            reopen: None,
            lat,
            memory: String::new(),
        });
    }
    drop(log);

    if name == "file" && !cli.no_http {
        tokio::time::sleep(Duration::from_millis(200)).await;
        http_figure(cli, base, &data, rng, rows).await?;
    }
    drop(engine_proc);
    Ok(())
}

/// `ssegate serve` on the filled file log: its start (the index rebuilt), its RSS against
/// one on an empty log, and the HTTP history figure.
async fn http_figure(
    cli: &Cli,
    base: &Path,
    data: &Path,
    rng: &mut StdRng,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let bin = match &cli.ssegate_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("ssegate"),
    };
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect();
    let empty_dir = base.join("empty").join("data");
    std::fs::create_dir_all(&empty_dir)?;
    let empty_rss = {
        let s = serve::Server::start(&bin, &empty_dir, &secret).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        rss_kib(s.pid()).unwrap_or(0)
    };
    eprintln!(
        "== http: ssegate serve on the filled file log ({})",
        bin.display()
    );
    let server = serve::Server::start(&bin, data, &secret).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss = rss_kib(server.pid()).unwrap_or(0);
    eprintln!(
        "   ready in {:.3} s; RSS {} (empty log: {})",
        server.ready_in.as_secs_f64(),
        mib(rss),
        mib(empty_rss)
    );
    let lat = serve::measure(
        &server,
        &secret,
        cli,
        expected(cli, 0, cli.limit).min(expected(cli, cli.channels - 1, cli.limit)),
        rng,
    )
    .await?;
    let rss_after = rss_kib(server.pid()).unwrap_or(0);
    eprintln!("   HTTP history: {}", summary(&lat));
    rows.push(Row {
        what: "file: HTTP GET /v1/channels/{c}/history".into(),
        fill: None,
        events: cli.events,
        reopen: Some((
            "`ssegate serve` start to /readyz 200".into(),
            server.ready_in,
        )),
        lat,
        memory: format!(
            "server RSS {} at ready ({} on an empty log: +{}), {} after the queries",
            mib(rss),
            mib(empty_rss),
            mib(rss.saturating_sub(empty_rss)),
            mib(rss_after)
        ),
    });
    Ok(())
}

fn summary(l: &Latencies) -> String {
    let s = l.sorted();
    format!(
        "p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} queries ({} incomplete answers)",
        Latencies::pct(&s, 50.0),
        Latencies::pct(&s, 95.0),
        Latencies::pct(&s, 99.0),
        s.last().copied().unwrap_or(f64::NAN),
        s.len(),
        l.short
    )
}

fn table(cli: &Cli, rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "history(limit={}) of a random channel; {} events round-robin over {} channels; {} queries one at a time after {} unmeasured\n\n",
        cli.limit, cli.events, cli.channels, cli.queries, cli.warmup
    ));
    out.push_str(
        "| what | fill | reopen | p50 | p95 | p99 | max | incomplete | p99 ≤ goal | memory |\n",
    );
    out.push_str("|---|---:|---|---:|---:|---:|---:|---:|---|---|\n");
    for r in rows {
        let s = r.lat.sorted();
        let p99 = Latencies::pct(&s, 99.0);
        let verdict = if p99 <= cli.goal_ms {
            format!("met ({:.2}× under {} ms)", cli.goal_ms / p99, cli.goal_ms)
        } else {
            format!("**missed** by {:.2} ms", p99 - cli.goal_ms)
        };
        let fill = r.fill.map_or("—".into(), |d| {
            format!(
                "{:.1} s ({:.0} events/s)",
                d.as_secs_f64(),
                r.events as f64 / d.as_secs_f64()
            )
        });
        let reopen = r.reopen.as_ref().map_or("—".into(), |(w, d)| {
            format!("{:.3} s ({w})", d.as_secs_f64())
        });
        out.push_str(&format!(
            "| {} | {} | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {} | {} | {} |\n",
            r.what,
            fill,
            reopen,
            Latencies::pct(&s, 50.0),
            Latencies::pct(&s, 95.0),
            p99,
            s.last().copied().unwrap_or(f64::NAN),
            r.lat.short,
            verdict,
            r.memory
        ));
    }
    out
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.channels == 0 || cli.events < cli.channels as u64 {
        bail!("--events must be at least --channels (> 0)");
    }
    let (base, temporary) = match &cli.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("ssegate-historybench.{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&base)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let mut rng = StdRng::seed_from_u64(cli.seed);
        let mut rows = Vec::new();
        for name in &cli.backends {
            if let Err(e) = bench_backend(&cli, name, &base, &mut rng, &mut rows).await {
                eprintln!("== {name}: FAILED: {e:#}");
                return Err(e);
            }
        }
        Ok(rows)
    });
    drop(rt);
    if temporary && !cli.keep {
        let _ = std::fs::remove_dir_all(&base);
    } else {
        eprintln!("kept {}", base.display());
    }
    let rows = result?;
    print!("{}", table(&cli, &rows));
    if rows.iter().any(|r| r.lat.short > 0) {
        bail!("some answers did not hold the expected events");
    }
    Ok(())
}
