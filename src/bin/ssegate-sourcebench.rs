//! Load generator for `bench/sources.sh`: PostgreSQL change streams vs polling.
//!
//! One scenario, measured three ways: `users` people each watch one workflow's logs while a
//! writer inserts `rate` log rows per second for `secs` seconds into `bench_logs` (each row
//! stamped with the writer's clock, `created_ms`, just before its INSERT).
//!
//! - `run --mode sse`: the users are SSE clients of a gateway (whose source — logical
//!   replication or polling — the script configured), subscribed to `logs:{ws}:{wf}`;
//!   latency = receive time − `created_ms`, for every delivery.
//! - `run --mode db-poll`: the old way, every browser polling the database: one connection
//!   per user running `SELECT … WHERE workflow_id = $1 AND id > $2` every `poll_secs`;
//!   latency = the time a poller first sees the row − `created_ms`.
//!
//! Database load over the writer's window: statements/s from `pg_stat_statements` (the
//! writer's inserts and this program's own statistics queries left out), commits/s from
//! `pg_stat_database`, and the CPU of every PostgreSQL process (postmaster, its children, and
//! the children it reaped) from `/proc`. Each run appends one JSON line to `--out`; `table`
//! prints them as one Markdown table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::{json, Value};
use ssegate::auth::{Grants, Minter};
use ssegate::config::AuthConfig;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};

#[derive(Parser)]
#[command(about = "PostgreSQL sources benchmark (bench/sources.sh)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// (Re)creates `bench_logs`, drops replication slots and publications, installs
    /// pg_stat_statements.
    Setup {
        #[arg(long)]
        pg: String,
    },
    /// Runs one measurement and appends its result to `--out`.
    Run(RunArgs),
    /// Prints the results file as a Markdown table.
    Table { file: PathBuf },
    /// Prints a loopback port nobody listens on.
    FreePort,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Users are SSE clients of the gateway.
    Sse,
    /// Users poll the database themselves.
    DbPoll,
}

#[derive(Args, Clone)]
struct RunArgs {
    #[arg(long, value_enum)]
    mode: Mode,
    /// The row label in the table.
    #[arg(long)]
    label: String,
    #[arg(long)]
    pg: String,
    /// The gateway's base URL (sse mode).
    #[arg(long)]
    gateway: Option<String>,
    /// The gateway's JWT secret (sse mode).
    #[arg(long, default_value = "")]
    secret: String,
    /// Process id of the gateway, for its CPU (sse mode).
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Process id of the postmaster.
    #[arg(long)]
    postmaster_pid: u32,
    /// Wait until this replication slot exists before writing.
    #[arg(long)]
    wait_slot: Option<String>,
    #[arg(long, default_value_t = 1000)]
    users: usize,
    #[arg(long, default_value_t = 200)]
    workflows: usize,
    /// Rows per second written.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    #[arg(long, default_value_t = 30.0)]
    secs: f64,
    /// How long deliveries may still arrive after the writer stopped.
    #[arg(long, default_value_t = 8.0)]
    drain_secs: f64,
    /// Poll period of each user (db-poll mode).
    #[arg(long, default_value_t = 5.0)]
    poll_secs: f64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 50)]
    connect_concurrency: usize,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Setup { pg } => rt.block_on(setup(&pg)),
        Cmd::Run(args) => rt.block_on(run(args)),
        Cmd::Table { file } => table(&file),
        Cmd::FreePort => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", l.local_addr()?.port());
            Ok(())
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn setup(pg: &str) -> anyhow::Result<()> {
    let db = connect(pg).await?;
    db.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
         SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots;
         DO $$ DECLARE p text; BEGIN
           FOR p IN SELECT pubname FROM pg_publication LOOP
             EXECUTE format('DROP PUBLICATION %I', p);
           END LOOP;
         END $$;
         DROP TABLE IF EXISTS bench_logs;
         CREATE TABLE bench_logs (
             id bigserial PRIMARY KEY,
             workspace_id text NOT NULL,
             workflow_id text NOT NULL,
             owner_id text NOT NULL,
             created_ms bigint NOT NULL,
             line text NOT NULL
         );
         CREATE INDEX bench_logs_workflow ON bench_logs (workflow_id, id);",
    )
    .await?;
    db.batch_execute("VACUUM ANALYZE bench_logs").await?;
    Ok(())
}

fn now_ms() -> u64 {
    ssegate::time::now_ms()
}

/// Workflow `wf` lives in workspace `wf % 20`.
fn channel_of(wf: usize) -> (String, String) {
    (format!("ws{}", wf % 20), format!("wf{wf}"))
}

/// Counters of the database and its processes at one moment.
struct DbSnapshot {
    at: Instant,
    /// Statements run, excluding the writer's inserts and statistics queries.
    statements: i64,
    commits: i64,
    pg_cpu_ns: u64,
    gateway_cpu_ns: u64,
}

async fn snapshot(db: &Client, args: &RunArgs) -> anyhow::Result<DbSnapshot> {
    let statements: i64 = db
        .query_one(
            "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements
             WHERE query NOT ILIKE '%pg_stat%' AND query NOT ILIKE 'INSERT INTO bench_logs%'",
            &[],
        )
        .await?
        .get(0);
    let commits: i64 = db
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0);
    Ok(DbSnapshot {
        at: Instant::now(),
        statements,
        commits,
        pg_cpu_ns: tree_cpu_ns(args.postmaster_pid),
        gateway_cpu_ns: args.gateway_pid.map_or(0, proc_cpu_ns),
    })
}

/// CPU time of a live process in nanoseconds, all its threads summed
/// (`/proc/PID/task/*/schedstat`: exact, where the tick counts of `/proc/PID/stat` round each
/// backend's few milliseconds down to nothing; `/proc/PID/schedstat` alone is only the main
/// thread, which in ssegate does almost nothing).
fn proc_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// cutime + cstime of a process (the children it reaped), in nanoseconds.
fn reaped_cpu_ns(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    // Fields after the command: state(3) ppid(4) … cutime(16) cstime(17), in ticks.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (n(16) + n(17)) * 10_000_000 // USER_HZ = 100
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU (ns) of the postmaster, the children it reaped, and its live children.
fn tree_cpu_ns(postmaster: u32) -> u64 {
    let mut total = proc_cpu_ns(postmaster) + reaped_cpu_ns(postmaster);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if parent_of(pid) == Some(postmaster) {
                total += proc_cpu_ns(pid);
            }
        }
    }
    total
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000, 3).expect("histogram bounds")
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.users == 0 || args.workflows == 0 || args.rate <= 0.0 {
        bail!("users, workflows and rate must be positive");
    }
    let db = connect(&args.pg).await?;
    if let Some(slot) = &args.wait_slot {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1::text",
                    &[slot],
                )
                .await?
                .get(0);
            if n > 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("replication slot {slot} never appeared");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let watchers: Vec<u64> = (0..args.workflows)
        .map(|wf| (0..args.users).filter(|u| u % args.workflows == wf).count() as u64)
        .collect();
    let received = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    eprintln!("== {}: connecting {} users", args.label, args.users);
    let readers = match args.mode {
        Mode::Sse => start_sse_clients(&args, received.clone(), stop.clone()).await?,
        Mode::DbPoll => start_db_pollers(&args, &db, received.clone(), stop.clone()).await?,
    };
    // Let the connections settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    db.batch_execute("SELECT pg_stat_statements_reset()")
        .await?;
    let before = snapshot(&db, &args).await?;
    eprintln!(
        "== {}: writing {} rows/s for {} s",
        args.label, args.rate, args.secs
    );
    let expected = write_rows(&args, &watchers).await?;
    let after = snapshot(&db, &args).await?;
    // Deliveries may still be on their way (up to a poll interval).
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain_secs);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let mut hist = new_hist();
    for r in readers {
        if let Ok(Ok(h)) = tokio::time::timeout(Duration::from_secs(10), r).await {
            hist.add(&h).ok();
        }
    }
    let got = hist.len();
    let window = after.at.duration_since(before.at).as_secs_f64();
    let pct = |ns: u64| ns as f64 / 1e9 / window * 100.0;
    let pg_cpu = pct(after.pg_cpu_ns.saturating_sub(before.pg_cpu_ns));
    let gw_cpu = pct(after.gateway_cpu_ns.saturating_sub(before.gateway_cpu_ns));
    let result = json!({
        "label": args.label,
        "mode": match args.mode { Mode::Sse => "sse", Mode::DbPoll => "db-poll" },
        "users": args.users,
        "workflows": args.workflows,
        "rate": args.rate,
        "secs": args.secs,
        "expected": expected,
        "delivered": got,
        "p50_ms": hist.value_at_quantile(0.5),
        "p99_ms": hist.value_at_quantile(0.99),
        "max_ms": hist.max(),
        "statements_per_s": (after.statements - before.statements) as f64 / window,
        "commits_per_s": (after.commits - before.commits) as f64 / window,
        "pg_cpu_pct": pg_cpu,
        "gateway_cpu_pct": args.gateway_pid.map(|_| gw_cpu),
        "window_s": window,
    });
    println!("{result}");
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)?;
    writeln!(f, "{result}")?;
    Ok(())
}

/// Inserts rows at the configured rate; returns the deliveries expected.
async fn write_rows(args: &RunArgs, watchers: &[u64]) -> anyhow::Result<u64> {
    let db = connect(&args.pg).await?;
    let insert = db
        .prepare(
            "INSERT INTO bench_logs (workspace_id, workflow_id, owner_id, created_ms, line)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    let total = (args.rate * args.secs).round() as u64;
    let start = Instant::now();
    let mut expected = 0;
    let mut rng = rand::thread_rng();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / args.rate);
        tokio::time::sleep_until(due).await;
        let wf = rng.gen_range(0..args.workflows);
        let (ws, wf_id) = channel_of(wf);
        let owner = format!("u{wf}");
        let created = now_ms() as i64;
        let line = format!("step {i} of the pipeline done");
        db.execute(&insert, &[&ws, &wf_id, &owner, &created, &line])
            .await?;
        expected += watchers[wf];
    }
    Ok(expected)
}

type Reader = tokio::task::JoinHandle<Histogram<u64>>;

async fn start_sse_clients(
    args: &RunArgs,
    received: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<Reader>> {
    let base = args
        .gateway
        .clone()
        .context("--gateway is required in sse mode")?;
    let minter = Minter::new(&args.secret, &AuthConfig::default());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let connected = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    let mut readers = Vec::with_capacity(args.users);
    for u in 0..args.users {
        let (ws, wf) = channel_of(u % args.workflows);
        let channel = format!("logs:{ws}:{wf}");
        let token = minter
            .mint(
                &format!("u{u}"),
                Grants {
                    subscribe: vec![channel.clone()],
                    publish: vec![],
                    admin: false,
                },
                3600,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let url = format!("{base}/v1/stream?channel={channel}");
        let (http, received, stop, connected, sem) = (
            http.clone(),
            received.clone(),
            stop.clone(),
            connected.clone(),
            sem.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let permit = sem.acquire_owned().await;
            let res = http.get(&url).bearer_auth(&token).send().await;
            drop(permit);
            let Ok(mut res) = res else { return hist };
            if !res.status().is_success() {
                eprintln!("stream refused: {}", res.status());
                return hist;
            }
            connected.fetch_add(1, Ordering::Relaxed);
            let mut buf: Vec<u8> = Vec::new();
            loop {
                let chunk = tokio::select! {
                    _ = stop.cancelled() => break,
                    c = res.chunk() => c,
                };
                let Ok(Some(chunk)) = chunk else { break };
                let now = now_ms();
                buf.extend_from_slice(&chunk);
                while let Some(end) = find_event_end(&buf) {
                    let frame: Vec<u8> = buf.drain(..end).collect();
                    if let Some(created) = created_ms_of_frame(&frame) {
                        hist.record(now.saturating_sub(created).max(1)).ok();
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (connected.load(Ordering::Relaxed) as usize) < args.users {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} SSE clients connected",
                connected.load(Ordering::Relaxed),
                args.users
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(readers)
}

/// The end (after the blank line) of the first complete SSE event in `buf`.
fn find_event_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// `created_ms` of the record in an event frame (`data: {envelope}`), if it is one.
fn created_ms_of_frame(frame: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(frame).ok()?;
    let mut has_id = false;
    let mut data = String::new();
    for line in text.lines() {
        if line.starts_with("id:") {
            has_id = true;
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    if !has_id {
        return None;
    }
    let v: Value = serde_json::from_str(&data).ok()?;
    v["data"]["created_ms"].as_u64()
}

async fn start_db_pollers(
    args: &RunArgs,
    db: &Client,
    received: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<Reader>> {
    let start_id: i64 = db
        .query_one("SELECT coalesce(max(id), 0) FROM bench_logs", &[])
        .await?
        .get(0);
    let sem = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    let mut clients = Vec::with_capacity(args.users);
    let mut opening = Vec::with_capacity(args.users);
    for _ in 0..args.users {
        let (url, sem) = (args.pg.clone(), sem.clone());
        opening.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            connect(&url).await
        }));
    }
    for o in opening {
        clients.push(o.await??);
    }
    let period = Duration::from_secs_f64(args.poll_secs);
    let mut readers = Vec::with_capacity(args.users);
    for (u, client) in clients.into_iter().enumerate() {
        let (_, wf) = channel_of(u % args.workflows);
        let (received, stop) = (received.clone(), stop.clone());
        // Browsers opened the page at different moments.
        let phase = Duration::from_secs_f64(rand::thread_rng().gen_range(0.0..args.poll_secs));
        readers.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let Ok(query) = client
                .prepare(
                    "SELECT id, created_ms FROM bench_logs WHERE workflow_id = $1 AND id > $2
                     ORDER BY id",
                )
                .await
            else {
                return hist;
            };
            let mut last = start_id;
            let mut next = Instant::now() + phase;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep_until(next) => {}
                }
                next += period;
                let Ok(rows) = client.query(&query, &[&wf, &last]).await else {
                    break;
                };
                let now = now_ms();
                for r in rows {
                    let id: i64 = r.get(0);
                    let created: i64 = r.get(1);
                    last = last.max(id);
                    hist.record(now.saturating_sub(created as u64).max(1)).ok();
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    Ok(readers)
}

fn table(file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)?;
    let rows: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    println!(
        "| how the {} users get new rows | delivered | latency p50 | p99 | max | DB statements/s | DB commits/s | PostgreSQL CPU | ssegate CPU |",
        rows.first().and_then(|r| r["users"].as_u64()).unwrap_or(0)
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let ms = |v: &Value| {
        let n = v.as_f64().unwrap_or(0.0);
        if n >= 1000.0 {
            format!("{:.2} s", n / 1000.0)
        } else {
            format!("{n:.0} ms")
        }
    };
    let mut by_label: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        *by_label
            .entry(r["label"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
        println!(
            "| {} | {}/{} | {} | {} | {} | {:.1} | {:.1} | {:.1} % | {} |",
            r["label"].as_str().unwrap_or(""),
            r["delivered"],
            r["expected"],
            ms(&r["p50_ms"]),
            ms(&r["p99_ms"]),
            ms(&r["max_ms"]),
            r["statements_per_s"].as_f64().unwrap_or(0.0),
            r["commits_per_s"].as_f64().unwrap_or(0.0),
            r["pg_cpu_pct"].as_f64().unwrap_or(0.0),
            r["gateway_cpu_pct"]
                .as_f64()
                .map_or("—".to_owned(), |c| format!("{c:.1} %")),
        );
    }
    if by_label.values().any(|&n| n > 1) {
        eprintln!("note: some labels appear more than once (several runs in one file)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames() {
        let buf = b"id: 7\nevent: log.insert\ndata: {\"data\":{\"created_ms\":42}}\n\n: hb\n\n";
        let end = find_event_end(buf).unwrap();
        assert_eq!(created_ms_of_frame(&buf[..end]), Some(42));
        assert_eq!(created_ms_of_frame(b"event: connected\ndata: {}\n\n"), None);
    }
}
