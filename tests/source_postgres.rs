//! PostgreSQL sources end to end: a private PostgreSQL (tests/engines/postgres.rs), a real
//! `ssegate serve` process configured with `[[sources]]`, real SSE clients.
//!
//! - `postgres` (logical decoding streamed over a replication connection): inserts, updates
//!   and deletes of two tables reach the users they target on templated channels; a
//!   `kill -9` in the middle of 10,000 changes loses none and duplicates none; the slot's
//!   confirmed position never passes what the log holds (the log is stopped under it);
//!   the server's keepalives are answered (a `wal_sender_timeout` of 1 s never ends the
//!   stream); PostgreSQL restarted mid-stream loses nothing; TLS with `verify-full`, and the
//!   errors of a wrong host or an unknown CA in `/v1/status`.
//! - `postgres_notify` (outbox + LISTEN) and `postgres_poll`: the same restart test.
//! - Errors: a missing table, `wal_level` not logical or a role without REPLICATION leave the
//!   source `failed` with a message saying so; a database that goes away puts the sources in
//!   `backoff`, and they resume when it is back.

mod common;
mod engines;

use std::path::Path;
use std::time::Duration;

use common::{bearer, envelope, last_event_id, token, Next, Server, Sse};
use engines::postgres::Postgres;
use serde_json::Value;
use tokio::time::Instant;

/// The event type and users of the restart tests' sources.
const LOG_EVENTS_FOR_OWNER: &str = r#"event_type = "log.{op}"
users = "{row.owner_id}"
"#;

/// Row changes written during the restart tests.
const CHANGES: i64 = 10_000;
/// Events received before the gateway is killed.
const KILL_AFTER: usize = 3_000;

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test postgres");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

const LOGS_DDL: &str = "
    CREATE TABLE logs (
        id bigserial PRIMARY KEY,
        workspace_id text NOT NULL,
        workflow_id text NOT NULL,
        owner_id text NOT NULL,
        seq bigint NOT NULL DEFAULT 0,
        line text,
        secret text
    );
    ALTER TABLE logs REPLICA IDENTITY FULL;";

/// The outbox and the trigger of docs/sources.md, on `logs`.
const OUTBOX_DDL: &str = "
    CREATE TABLE ssegate_outbox (
        id bigserial PRIMARY KEY,
        op text NOT NULL,
        place text NOT NULL,
        record jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE FUNCTION ssegate_outbox_capture() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO ssegate_outbox (op, place, record)
        VALUES (lower(TG_OP), TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
                to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END));
        PERFORM pg_notify('ssegate_outbox', '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER logs_outbox AFTER INSERT OR UPDATE OR DELETE ON logs
        FOR EACH ROW EXECUTE FUNCTION ssegate_outbox_capture();";

/// A gateway started with `toml` (`URL` replaced by the database's URL).
fn gateway(toml: &str, pg: &Postgres) -> Server {
    Server::start_with_config(&toml.replace("URL", &pg.url()), &[])
}

/// The same with config overrides (`("LOG__KIND", "redis")`).
fn gateway_env(toml: &str, pg: &Postgres, env: &[(&str, &str)]) -> Server {
    Server::start_with_config(&toml.replace("URL", &pg.url()), env)
}

/// The `/v1/status` entry of source `name` (which must exist).
async fn source_status(server: &Server, name: &str) -> Value {
    let s = common::source_status(server, name).await;
    assert!(!s.is_null(), "no source {name:?}");
    s
}

/// Waits until source `name` is in `state`; returns its status then.
async fn wait_state(server: &Server, name: &str, state: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = source_status(server, name).await;
        if s["state"] == state {
            return s;
        }
        if Instant::now() > deadline {
            panic!(
                "source {name:?} never became {state:?}: {s}\nserver log:\n{}",
                server.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the source's replication slot exists (changes before it are not captured).
async fn wait_slot(db: &tokio_postgres::Client, slot: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1::text",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "slot {slot} never created");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The record carried by a delivered event.
fn record(e: &common::Ev) -> Value {
    envelope(e)["data"].clone()
}

/// The channels of `events`, sorted.
fn channels(events: &[common::Ev]) -> Vec<String> {
    let mut channels: Vec<String> = events
        .iter()
        .map(|e| envelope(e)["channel"].as_str().unwrap().to_owned())
        .collect();
    channels.sort();
    channels
}

/// A client of `pg`'s database, with the `logs` table created.
async fn logs_db(pg: &Postgres) -> tokio_postgres::Client {
    let db = connect(&pg.url()).await;
    db.batch_execute(LOGS_DDL).await.unwrap();
    db
}

/// The channel template of the sources on `logs`: `logs:w1:f1` for alice's rows.
const LOGS_CHANNEL: &str = "logs:{row.workspace_id}:{row.workflow_id}";

/// A `[[sources]]` block: a `postgres` (logical decoding) source `name` on `public.logs` at
/// `url` (`URL`: the test database), publishing on `channel`, with `extra` TOML lines.
fn cdc_source_at(name: &str, url: &str, channel: &str, extra: &str) -> String {
    format!(
        r#"
[[sources]]
name = "{name}"
type = "postgres"
url = "{url}"
table = "public.logs"
channel = "{channel}"
{extra}"#
    )
}

/// The same on the test database and `LOGS_CHANNEL`.
fn cdc_source(name: &str, extra: &str) -> String {
    cdc_source_at(name, "URL", LOGS_CHANNEL, extra)
}

/// SQL inserting a row of alice's on `logs:w1:f1` with `seq`.
fn insert_alice(seq: i64) -> String {
    format!(
        "INSERT INTO logs (workspace_id, workflow_id, owner_id, seq) VALUES ('w1', 'f1', 'alice', {seq})"
    )
}

/// Where the WAL stands (`pg_current_wal_lsn`), as text.
async fn wal_lsn(db: &tokio_postgres::Client) -> String {
    db.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Alice's token: she reads `logs:w1:*`.
fn alice() -> String {
    token("alice", &["logs:w1:*"], &[])
}

/// Alice subscribed to `logs:w1:f1`, after `last_id` when given.
async fn alice_stream(server: &Server, last_id: Option<&str>) -> Sse {
    let mut headers = vec![bearer(&alice())];
    headers.extend(last_id.map(last_event_id));
    Sse::open(&server.stream_url(&["logs:w1:f1"]), &headers)
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_changes_of_two_tables_reach_the_users_they_target() {
    let pg = Postgres::start();
    let db = logs_db(&pg).await;
    db.batch_execute(
        "CREATE TABLE runs (id bigserial PRIMARY KEY, workspace_id text, workflow_id text,
                            owner_id text, status text);
         ALTER TABLE runs REPLICA IDENTITY FULL;",
    )
    .await
    .unwrap();
    let server = gateway(
        &cdc_source(
            "etl-logs",
            r#"tables = ["runs"]
event_type = "{table}.{op}"
users = "{row.owner_id}"
exclude = ["secret"]
"#,
        ),
        &pg,
    );
    wait_slot(&db, "ssegate_etl_logs").await;
    let open = |user: &str, grant: &str, channel: &str| {
        let url = server.stream_url(&[channel]);
        let t = token(user, &[grant], &[]);
        async move { Sse::open(&url, &[bearer(&t)]).await.0 }
    };
    let mut alice = open("alice", "logs:w1:*", "logs:w1:f1").await;
    let mut bob = open("bob", "logs:w1:*", "logs:w1:f1").await;
    let mut carol = open("carol", "logs:w2:*", "logs:w2:f9").await;

    for sql in [
        "INSERT INTO logs (workspace_id, workflow_id, owner_id, line, secret) VALUES ('w1', 'f1', 'alice', 'hello', 's3cret')",
        "UPDATE logs SET line = 'hello again' WHERE line = 'hello'",
        "INSERT INTO runs (workspace_id, workflow_id, owner_id, status) VALUES ('w1', 'f1', 'alice', 'running')",
        "INSERT INTO logs (workspace_id, workflow_id, owner_id, line) VALUES ('w1', 'f1', 'bob', 'for bob')",
        "INSERT INTO logs (workspace_id, workflow_id, owner_id, line) VALUES ('w2', 'f9', 'carol', 'for carol')",
        "UPDATE runs SET status = 'done'",
        "DELETE FROM logs WHERE owner_id = 'alice'",
        "DELETE FROM runs",
    ] {
        db.batch_execute(sql).await.unwrap();
    }

    let got = alice.take(6, Duration::from_secs(20)).await;
    let seen: Vec<(String, Value, Value)> = got
        .iter()
        .map(|e| {
            let r = record(e);
            (e.event.clone(), r["line"].clone(), r["status"].clone())
        })
        .collect();
    let s = |v: &str| Value::String(v.into());
    assert_eq!(
        seen,
        vec![
            ("public.logs.insert".into(), s("hello"), Value::Null),
            ("public.logs.update".into(), s("hello again"), Value::Null),
            ("public.runs.insert".into(), Value::Null, s("running")),
            ("public.runs.update".into(), Value::Null, s("done")),
            ("public.logs.delete".into(), s("hello again"), Value::Null),
            ("public.runs.delete".into(), Value::Null, s("done")),
        ]
    );
    for e in &got {
        let env = envelope(e);
        assert_eq!(env["channel"], "logs:w1:f1");
        assert!(env["data"].get("secret").is_none(), "excluded: {env}");
        assert_eq!(env["data"]["owner_id"], "alice");
    }
    // Typed values: the id is a number, as to_jsonb would give it.
    assert!(record(&got[0])["id"].is_i64(), "{}", record(&got[0]));

    let b = bob.take(1, Duration::from_secs(10)).await;
    assert_eq!(record(&b[0])["line"], "for bob");
    let c = carol.take(1, Duration::from_secs(10)).await;
    assert_eq!(record(&c[0])["line"], "for carol");
    assert_eq!(envelope(&c[0])["channel"], "logs:w2:f9");
    // Nobody gets what was not for them.
    alice.expect_quiet(Duration::from_millis(500)).await;
    bob.expect_quiet(Duration::from_millis(100)).await;
    carol.expect_quiet(Duration::from_millis(100)).await;

    let st = source_status(&server, "etl-logs").await;
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["type"], "postgres");
    assert_eq!(st["events"], 8, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_slot_follows_the_wal_while_its_tables_are_quiet() {
    let pg = Postgres::start();
    let db = logs_db(&pg).await;
    db.batch_execute("CREATE TABLE busy (id bigserial PRIMARY KEY, v text)")
        .await
        .unwrap();
    let server = gateway(&cdc_source("quiet", ""), &pg);
    wait_slot(&db, "ssegate_quiet").await;
    let mut sse = alice_stream(&server, None).await;
    // Only another table changes: the slot must still move, or the server keeps all WAL.
    db.batch_execute("INSERT INTO busy (v) SELECT 'x' FROM generate_series(1, 5000)")
        .await
        .unwrap();
    let wal_now = wal_lsn(&db).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let caught_up: bool = db
            .query_one(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots
                 WHERE slot_name = 'ssegate_quiet'",
                &[&wal_now],
            )
            .await
            .unwrap()
            .get(0);
        if caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "the slot stayed behind the WAL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And nothing of ours was skipped by moving it.
    db.batch_execute(&insert_alice(7)).await.unwrap();
    let got = sse.take(1, Duration::from_secs(10)).await;
    assert_eq!(record(&got[0])["seq"], 7);
    sse.expect_quiet(Duration::from_millis(300)).await;
}

/// Writes `CHANGES` row changes to `logs` for user alice on `logs:w1:f1`, in transactions of
/// four inserts and one update, `seq` increasing with every change (the update moves the row
/// to the next seq): the events must carry seq 0, 1, 2, … in order. With `inserts_only`,
/// transactions of five inserts.
async fn write_changes(url: String, inserts_only: bool) {
    let mut db = connect(&url).await;
    let mut seq = 0i64;
    let mut txns = 0;
    while seq < CHANGES {
        let tx = db.transaction().await.unwrap();
        let mut first_id = 0i64;
        for i in 0..5 {
            if i == 4 && !inserts_only {
                tx.execute("UPDATE logs SET seq = $1 WHERE id = $2", &[&seq, &first_id])
                    .await
                    .unwrap();
            } else {
                let id: i64 = tx
                    .query_one(
                        "INSERT INTO logs (workspace_id, workflow_id, owner_id, seq, line)
                         VALUES ('w1', 'f1', 'alice', $1, 'line') RETURNING id",
                        &[&seq],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if i == 0 {
                    first_id = id;
                }
            }
            seq += 1;
        }
        tx.commit().await.unwrap();
        txns += 1;
        // Paced (10,000 changes in several seconds): the kill lands mid-stream.
        if txns % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Reads events into `seqs` (and the last id into `last`) until `until` seqs arrived; false
/// when the stream ended first.
async fn read_seqs(
    sse: &mut Sse,
    seqs: &mut Vec<i64>,
    last: &mut String,
    until: usize,
    deadline: Instant,
) -> bool {
    while seqs.len() < until {
        let left = deadline.saturating_duration_since(Instant::now());
        match sse.next_or_end(left).await {
            Next::Event(e) if !e.id.is_empty() => {
                let r = record(&e);
                seqs.push(r["seq"].as_i64().unwrap_or_else(|| panic!("no seq: {r}")));
                *last = e.id;
            }
            Next::Event(_) => {}
            Next::End | Next::Broken(_) => return false,
            Next::Timeout => panic!(
                "timed out with {} of {until} changes (last seq {:?})",
                seqs.len(),
                seqs.last()
            ),
        }
    }
    true
}

/// The restart test shared by the three source types: a subscriber follows the stream of
/// changes, the gateway is killed with SIGKILL after `KILL_AFTER` events and restarted on
/// the same data dir while the writer goes on; the subscriber resumes with Last-Event-ID and
/// must see every change exactly once, in order. A reader from the start of the log then
/// sees the same: the log itself has no duplicate.
async fn kill_9_mid_stream(pg: &Postgres, mut server: Server, inserts_only: bool) {
    let mut sse = alice_stream(&server, None).await;
    let writer = tokio::spawn(write_changes(pg.url(), inserts_only));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seqs = Vec::new();
    let mut last = String::new();
    assert!(read_seqs(&mut sse, &mut seqs, &mut last, KILL_AFTER, deadline).await);
    if writer.is_finished() {
        eprintln!("note: the writer was done before the kill");
    }
    server.kill9_and_restart();
    let mut sse = alice_stream(&server, Some(&last)).await;
    assert!(
        read_seqs(&mut sse, &mut seqs, &mut last, CHANGES as usize, deadline).await,
        "stream ended"
    );
    writer.await.unwrap();
    let want: Vec<i64> = (0..CHANGES).collect();
    if seqs != want {
        let first_bad = seqs.iter().zip(&want).position(|(a, b)| a != b);
        panic!(
            "changes out of order, missing or twice: first difference at {first_bad:?}, {} received",
            seqs.len()
        );
    }
    sse.expect_quiet(Duration::from_millis(500)).await;

    let mut all = alice_stream(&server, Some("0")).await;
    let mut replayed = Vec::new();
    let mut last = String::new();
    assert!(
        read_seqs(
            &mut all,
            &mut replayed,
            &mut last,
            CHANGES as usize,
            deadline
        )
        .await
    );
    assert_eq!(replayed, want, "the log holds each change once");
    all.expect_quiet(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_kill_9_mid_stream_loses_and_repeats_nothing() {
    let pg = Postgres::start();
    let db = logs_db(&pg).await;
    let server = gateway(&cdc_source("cdc", LOG_EVENTS_FOR_OWNER), &pg);
    wait_slot(&db, "ssegate_cdc").await;
    kill_9_mid_stream(&pg, server, false).await;
    // Everything in the log is confirmed to the slot (the status update follows the append):
    // the slot's position reaches the WAL written by the end of the writer.
    let wal = wal_lsn(&db).await;
    wait_confirmed(&db, "ssegate_cdc", &wal, Duration::from_secs(30)).await;
}

/// The slot's `confirmed_flush_lsn`, as text.
async fn confirmed_flush(db: &tokio_postgres::Client, slot: &str) -> String {
    db.query_one(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1::text",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

/// A source's WAL sender, as `pg_stat_replication` shows it.
struct WalSender {
    pid: i32,
    /// The last WAL position sent.
    sent: Option<String>,
    /// When the client last answered.
    reply: Option<String>,
}

/// The WAL sender streaming to source `name`, if there is one.
async fn wal_sender(db: &tokio_postgres::Client, name: &str) -> Option<WalSender> {
    db.query_opt(
        "SELECT pid, sent_lsn::text, reply_time::text FROM pg_stat_replication
         WHERE application_name = $1::text",
        &[&format!("ssegate:{name}")],
    )
    .await
    .unwrap()
    .map(|r| WalSender {
        pid: r.get(0),
        sent: r.get(1),
        reply: r.get(2),
    })
}

/// Whether LSN `a` ≥ `b` (both text).
async fn lsn_ge(db: &tokio_postgres::Client, a: &str, b: &str) -> bool {
    db.query_one("SELECT $1::text::pg_lsn >= $2::text::pg_lsn", &[&a, &b])
        .await
        .unwrap()
        .get(0)
}

/// Waits until the slot has confirmed `lsn`.
async fn wait_confirmed(db: &tokio_postgres::Client, slot: &str, lsn: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let at = confirmed_flush(db, slot).await;
        if lsn_ge(db, &at, lsn).await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "slot {slot} stayed at {at}, behind {lsn}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_kill_9_mid_stream_loses_and_repeats_nothing() {
    let pg = Postgres::start();
    let db = logs_db(&pg).await;
    db.batch_execute(OUTBOX_DDL).await.unwrap();
    let server = gateway(
        &format!(
            r#"
[[sources]]
name = "outbox"
type = "postgres_notify"
url = "URL"
outbox_table = "public.ssegate_outbox"
record_column = "record"
op_column = "op"
delete_processed = true
channel = "{LOGS_CHANNEL}"
{LOG_EVENTS_FOR_OWNER}"#
        ),
        &pg,
    );
    wait_state(&server, "outbox", "running", Duration::from_secs(10)).await;
    kill_9_mid_stream(&pg, server, false).await;
    // Processed rows were deleted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = db
            .query_one("SELECT count(*) FROM ssegate_outbox", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} outbox rows left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_kill_9_mid_stream_loses_and_repeats_nothing() {
    let pg = Postgres::start();
    let _db = logs_db(&pg).await;
    let server = gateway(
        &format!(
            r#"
[[sources]]
name = "poll"
type = "postgres_poll"
url = "URL"
table = "public.logs"
column = "id"
interval = "100ms"
start = "beginning"
channel = "{LOGS_CHANNEL}"
{LOG_EVENTS_FOR_OWNER}"#
        ),
        &pg,
    );
    wait_state(&server, "poll", "running", Duration::from_secs(10)).await;
    kill_9_mid_stream(&pg, server, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_retrying_cannot_fix_fails_with_a_clear_message() {
    let pg = Postgres::start();
    let replica_only = Postgres::start_with(&["wal_level=replica"]);
    pg.psql(
        "CREATE ROLE app LOGIN; CREATE TABLE logs (id bigserial PRIMARY KEY, w text);
         CREATE TABLE app_logs (id bigserial PRIMARY KEY, w text);
         ALTER TABLE app_logs OWNER TO app; GRANT CREATE ON DATABASE postgres TO app",
    );
    let url_app = pg.url().replace("postgres@", "app@");
    let toml = format!(
        r#"
[[sources]]
name = "cdc-missing"
type = "postgres"
url = "URL"
table = "public.nope"
channel = "t:{{row.w}}"

[[sources]]
name = "notify-missing"
type = "postgres_notify"
url = "URL"
outbox_table = "public.nope"
channel = "t:{{row.w}}"

[[sources]]
name = "poll-missing"
type = "postgres_poll"
url = "URL"
table = "public.nope"
channel = "t:{{row.w}}"

[[sources]]
name = "poll-bad-column"
type = "postgres_poll"
url = "URL"
table = "public.logs"
column = "nope"
channel = "t:{{row.w}}"

[[sources]]
name = "cdc-wal-level"
type = "postgres"
url = "{replica}"
table = "pg_catalog.pg_class"
channel = "t:{{row.w}}"

[[sources]]
name = "cdc-no-replication"
type = "postgres"
url = "{url_app}"
table = "public.app_logs"
channel = "t:{{row.w}}"

[[sources]]
name = "cdc-not-owner"
type = "postgres"
url = "{url_app}"
table = "public.logs"
channel = "t:{{row.w}}"
"#,
        replica = replica_only.url(),
    );
    let server = gateway(&toml, &pg);
    let t = Duration::from_secs(20);
    for (name, says) in [
        ("cdc-missing", "\"public.nope\" does not exist"),
        ("notify-missing", "\"public.nope\" does not exist"),
        ("poll-missing", "\"public.nope\" does not exist"),
        ("poll-bad-column", "column \"nope\" does not exist"),
        ("cdc-wal-level", "wal_level = logical"),
        ("cdc-no-replication", "REPLICATION"),
        (
            "cdc-not-owner",
            "create it as the tables' owner: CREATE PUBLICATION",
        ),
    ] {
        let st = wait_state(&server, name, "failed", t).await;
        let err = st["last_error"].as_str().unwrap_or_default();
        assert!(err.contains(says), "{name}: {err:?} should say {says:?}");
        assert_eq!(st["restarts"], 0, "{name} failed at once: {st}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_backs_off_and_recovers() {
    let mut pg = Postgres::start();
    let db = logs_db(&pg).await;
    db.batch_execute(OUTBOX_DDL).await.unwrap();
    drop(db);
    let server = gateway(
        r#"
[[sources]]
name = "cdc"
type = "postgres"
url = "URL"
table = "public.logs"
channel = "cdc:{row.workflow_id}"

[[sources]]
name = "outbox"
type = "postgres_notify"
url = "URL"
outbox_table = "ssegate_outbox"
record_column = "record"
op_column = "op"
channel = "notify:{row.workflow_id}"

[[sources]]
name = "poll"
type = "postgres_poll"
url = "URL"
table = "public.logs"
interval = "100ms"
start = "beginning"
channel = "poll:{row.workflow_id}"
"#,
        &pg,
    );
    let sub = token("watcher", &["cdc:*", "notify:*", "poll:*"], &[]);
    let (mut sse, _) = Sse::open(
        &server.stream_url(&["cdc:f1", "notify:f1", "poll:f1"]),
        &[bearer(&sub)],
    )
    .await;
    let pg_url = pg.url();
    let insert = |n: i64| {
        let url = pg_url.clone();
        async move {
            let db = connect(&url).await;
            db.execute(
                "INSERT INTO logs (workspace_id, workflow_id, owner_id, seq) VALUES ('w', 'f1', 'u', $1)",
                &[&n],
            )
            .await
            .unwrap();
        }
    };
    {
        let db = connect(&pg.url()).await;
        wait_slot(&db, "ssegate_cdc").await;
    }
    wait_state(&server, "outbox", "running", Duration::from_secs(10)).await;
    insert(1).await;
    let got = sse.take(3, Duration::from_secs(20)).await;
    assert_eq!(channels(&got), ["cdc:f1", "notify:f1", "poll:f1"]);

    pg.stop();
    for name in ["cdc", "outbox", "poll"] {
        let st = wait_state(&server, name, "backoff", Duration::from_secs(20)).await;
        assert!(
            st["last_error"].as_str().is_some_and(|e| !e.is_empty()),
            "{st}"
        );
    }
    pg.restart();
    insert(2).await;
    let got = sse.take(3, Duration::from_secs(30)).await;
    let mut seen: Vec<(String, i64)> = got
        .iter()
        .map(|e| {
            let env = envelope(e);
            (
                env["channel"].as_str().unwrap().to_owned(),
                env["data"]["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("cdc:f1".to_owned(), 2),
            ("notify:f1".to_owned(), 2),
            ("poll:f1".to_owned(), 2)
        ]
    );
    for name in ["cdc", "outbox", "poll"] {
        let st = source_status(&server, name).await;
        assert_eq!(st["state"], "running", "{st}");
        assert!(st["restarts"].as_u64().unwrap() >= 1, "{st}");
    }
    sse.expect_quiet(Duration::from_millis(300)).await;
}

/// The status updates carry only what the log holds. The log is Redis, stopped while a
/// change is streamed: the source receives it and cannot append it, the server keeps asking
/// for replies (a `wal_sender_timeout` of 1 s asks every half second) and gets them, and the
/// slot's confirmed position stays before the change; once Redis is back the change is
/// delivered, once, and the slot moves past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_status_updates_never_confirm_what_the_log_does_not_hold() {
    // The server asks for a reply every 2.5 s of silence.
    let pg = Postgres::start_with(&["wal_sender_timeout=5s"]);
    let mut db = logs_db(&pg).await;
    let mut redis = engines::redis::start(engines::redis::Persistence::Aof);
    let redis_url = engines::redis::url(&redis);
    let server = gateway_env(
        &cdc_source("held", ""),
        &pg,
        &[
            ("LOG__KIND", "redis"),
            ("LOG__URL", &redis_url),
            ("LOG__STREAM", "held"),
        ],
    );
    wait_slot(&db, "ssegate_held").await;
    wait_state(&server, "held", "running", Duration::from_secs(20)).await;
    let mut sse = alice_stream(&server, None).await;
    db.batch_execute(&insert_alice(1)).await.unwrap();
    let got = sse.take(1, Duration::from_secs(20)).await;
    assert_eq!(record(&got[0])["seq"], 1);
    let first_id = got[0].id.clone();
    drop(sse);
    let before = wal_lsn(&db).await;
    wait_confirmed(&db, "ssegate_held", &before, Duration::from_secs(20)).await;

    redis.kill();
    // Where the WAL stands after insert 2's row, before its commit record: confirming
    // insert 2 (its end LSN) moves the slot past this point.
    let tx = db.transaction().await.unwrap();
    tx.batch_execute(&insert_alice(2)).await.unwrap();
    let inside: String = tx
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    let after = wal_lsn(&db).await;
    // The WAL sender has sent the change, and the client has answered at least three of
    // its keepalives since.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut replies = Vec::new();
    while replies.len() < 4 {
        if let Some(WalSender {
            sent: Some(sent),
            reply: Some(reply),
            ..
        }) = wal_sender(&db, "held").await
        {
            if lsn_ge(&db, &sent, &after).await && !replies.contains(&reply) {
                replies.push(reply);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no status updates while the log is down ({replies:?})\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = confirmed_flush(&db, "ssegate_held").await;
    assert!(
        lsn_ge(&db, &inside, &held).await,
        "the slot confirmed {held}, past {inside} inside insert 2 (committed by {after}), \
         which the log does not hold"
    );

    redis.restart();
    // The stream may have ended with the log: once the log is back, resume after the first
    // change.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, _) = common::get(&format!("{}/readyz", server.url), &[]).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never found its log again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sse = alice_stream(&server, Some(&first_id)).await;
    let got = sse.take(1, Duration::from_secs(30)).await;
    assert_eq!(record(&got[0])["seq"], 2);
    wait_confirmed(&db, "ssegate_held", &after, Duration::from_secs(20)).await;
    sse.expect_quiet(Duration::from_millis(300)).await;
}

/// With `wal_sender_timeout = 5s` the server asks for a reply after 2.5 s of silence and
/// ends a stream that stays silent for 5 s (the client's own status updates come every
/// 10 s): a quiet source keeps its one stream (same WAL sender, no restart) for three
/// timeouts, then still delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_keepalives_are_answered() {
    let pg = Postgres::start_with(&["wal_sender_timeout=5s"]);
    let db = logs_db(&pg).await;
    let server = gateway(&cdc_source("quiet", ""), &pg);
    wait_slot(&db, "ssegate_quiet").await;
    let sender = || async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(WalSender {
                pid,
                reply: Some(reply),
                ..
            }) = wal_sender(&db, "quiet").await
            {
                return (pid, reply);
            }
            assert!(Instant::now() < deadline, "no WAL sender for the source");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (pid, mut last_reply) = sender().await;
    // Three timeouts (15 s), all on one WAL sender, kept alive by replies: unanswered, the
    // server would end the stream after 5 s and the source would open another.
    let watch = Instant::now();
    let mut replies = 0;
    while watch.elapsed() < Duration::from_secs(15) {
        let (now_pid, reply) = sender().await;
        assert_eq!(now_pid, pid, "the stream was ended and opened again");
        if reply != last_reply {
            replies += 1;
            last_reply = reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(replies >= 3, "{replies} replies in 15 s");
    assert!(
        !pg.output().contains("replication timeout"),
        "{}",
        pg.output()
    );
    let st = source_status(&server, "quiet").await;
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["restarts"], 0, "{st}");
    let mut sse = alice_stream(&server, None).await;
    db.batch_execute(&insert_alice(5)).await.unwrap();
    let got = sse.take(1, Duration::from_secs(20)).await;
    assert_eq!(record(&got[0])["seq"], 5);
}

/// PostgreSQL stopped (fast shutdown: the WAL sender goes away mid-stream) and started
/// again while a writer is writing and the source streaming: the source backs off, resumes
/// from the slot, and the subscriber sees every change once, in order. The writer waits at
/// change 1,000 until PostgreSQL is stopped, so however slow delivery is, changes are still
/// being streamed when it stops and 1,000 are written through the outage and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_postgres_restarted_mid_stream_loses_and_repeats_nothing() {
    const TOTAL: i64 = 2_000;
    const PAUSE_AT: i64 = 1_000;
    let mut pg = Postgres::start();
    let db = logs_db(&pg).await;
    // The writer retries a transaction whose outcome it did not learn: seq makes it idempotent.
    db.batch_execute("CREATE UNIQUE INDEX ON logs (seq)")
        .await
        .unwrap();
    drop(db);
    let server = gateway(&cdc_source("cdc", ""), &pg);
    {
        let db = connect(&pg.url()).await;
        wait_slot(&db, "ssegate_cdc").await;
    }
    let mut sse = alice_stream(&server, None).await;
    // Transactions of ten rows, paced; through the outage it reconnects and retries.
    let url = pg.url();
    let stopped = std::sync::Arc::new(tokio::sync::Notify::new());
    let wake = stopped.clone();
    let writer = tokio::spawn(async move {
        let mut seq = 0i64;
        let mut db: Option<tokio_postgres::Client> = None;
        let mut paused = false;
        while seq < TOTAL {
            if seq == PAUSE_AT && !paused {
                wake.notified().await;
                paused = true;
            }
            if db.is_none() {
                db = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok((client, conn)) => {
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        Some(client)
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
            }
            let done = db
                .as_ref()
                .unwrap()
                .execute(
                    "INSERT INTO logs (workspace_id, workflow_id, owner_id, seq)
                     SELECT 'w1', 'f1', 'alice', s FROM generate_series($1::bigint, $1::bigint + 9) s
                     ON CONFLICT (seq) DO NOTHING",
                    &[&seq],
                )
                .await;
            match done {
                Ok(_) => {
                    seq += 10;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(_) => db = None,
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seqs = Vec::new();
    let mut last = String::new();
    assert!(read_seqs(&mut sse, &mut seqs, &mut last, 300, deadline).await);
    pg.stop();
    stopped.notify_one();
    wait_state(&server, "cdc", "backoff", Duration::from_secs(30)).await;
    pg.restart();
    assert!(read_seqs(&mut sse, &mut seqs, &mut last, TOTAL as usize, deadline).await);
    writer.await.unwrap();
    assert_eq!(seqs, (0..TOTAL).collect::<Vec<_>>());
    sse.expect_quiet(Duration::from_millis(500)).await;
    let st = wait_state(&server, "cdc", "running", Duration::from_secs(10)).await;
    assert!(st["restarts"].as_u64().unwrap() >= 1, "{st}");
}

/// TLS to PostgreSQL (`ssl = on`, a certificate for 127.0.0.1 only, signed by a private
/// CA): `verify-full` with the CA streams changes over an encrypted replication connection;
/// the same CA with the host named `localhost`, or another CA, fail with what is wrong in
/// `/v1/status`; `require` encrypts without checking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_over_tls_verifies_the_server() {
    let certs = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    engines::tls::test_ca(certs.path());
    engines::tls::test_ca(other.path());
    engines::tls::signed_cert(certs.path(), "db", "IP:127.0.0.1");
    let pg = Postgres::start();
    pg.enable_tls(&certs.path().join("db.pem"), &certs.path().join("db.key"));
    let db = logs_db(&pg).await;
    let verify_with = |ca: &Path| {
        format!(
            "sslmode = \"verify-full\"\nsslrootcert = \"{}\"\n",
            ca.join("ca.pem").display()
        )
    };
    let localhost = pg.url().replace("127.0.0.1", "localhost");
    let toml = [
        cdc_source("tls", &verify_with(certs.path())),
        cdc_source_at(
            "tls-require",
            "URL?sslmode=require",
            "req:{row.workspace_id}:{row.workflow_id}",
            "",
        ),
        cdc_source_at(
            "tls-wrong-host",
            &localhost,
            "x:{row.workflow_id}",
            &verify_with(certs.path()),
        ),
        cdc_source_at(
            "tls-unknown-ca",
            "URL",
            "x:{row.workflow_id}",
            &verify_with(other.path()),
        ),
    ]
    .concat();
    let server = gateway(&toml, &pg);
    wait_slot(&db, "ssegate_tls").await;
    wait_slot(&db, "ssegate_tls_require").await;
    let alice = token("alice", &["logs:w1:*", "req:w1:*"], &[]);
    let (mut sse, _) = Sse::open(
        &server.stream_url(&["logs:w1:f1", "req:w1:f1"]),
        &[bearer(&alice)],
    )
    .await;
    db.batch_execute(&insert_alice(9)).await.unwrap();
    let got = sse.take(2, Duration::from_secs(20)).await;
    assert_eq!(channels(&got), ["logs:w1:f1", "req:w1:f1"]);
    assert!(got.iter().all(|e| record(e)["seq"] == 9));
    // Both replication connections are encrypted.
    let encrypted: Vec<(String, bool)> = db
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_replication a
             JOIN pg_stat_ssl s USING (pid) ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        encrypted,
        [
            ("ssegate:tls".to_owned(), true),
            ("ssegate:tls-require".to_owned(), true)
        ]
    );
    for (name, says) in [
        ("tls-wrong-host", "not valid for name"),
        // Another CA of the same name: the issuer is found by name, its signature fails.
        ("tls-unknown-ca", "invalid peer certificate: BadSignature"),
    ] {
        let st = wait_state(&server, name, "backoff", Duration::from_secs(20)).await;
        let err = st["last_error"].as_str().unwrap_or_default();
        assert!(
            err.contains(says) && err.contains("TLS"),
            "{name}: {err:?} should say {says:?}"
        );
    }
}
