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

mod cpu;
mod db;
mod table;
mod users;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::Instant;

use db::{connect, setup, snapshot, write_rows};
use table::table;
use users::{start_db_pollers, start_sse_clients};

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

/// Workflow `wf` lives in workspace `wf % 20`.
fn channel_of(wf: usize) -> (String, String) {
    (format!("ws{}", wf % 20), format!("wf{wf}"))
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
