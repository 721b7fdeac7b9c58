//! The database side: connecting, the `bench_logs` table, the writer, and the statement,
//! commit and CPU counters measured around it.

use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use ssegate_loadgen::now_ms;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};

use crate::cpu::{proc_cpu_ns, tree_cpu_ns};
use crate::{channel_of, RunArgs};

pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub async fn setup(pg: &str) -> anyhow::Result<()> {
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

/// Counters of the database and its processes at one moment.
pub struct DbSnapshot {
    pub at: Instant,
    /// Statements run, excluding the writer's inserts and statistics queries.
    pub statements: i64,
    pub commits: i64,
    pub pg_cpu_ns: u64,
    pub gateway_cpu_ns: u64,
}

pub async fn snapshot(db: &Client, args: &RunArgs) -> anyhow::Result<DbSnapshot> {
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

/// Inserts rows at the configured rate; returns the deliveries expected.
pub async fn write_rows(args: &RunArgs, watchers: &[u64]) -> anyhow::Result<u64> {
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
