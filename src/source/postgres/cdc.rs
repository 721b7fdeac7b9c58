//! `type = "postgres"`: change data capture by logical decoding, streamed over the
//! replication protocol.
//!
//! ```toml
//! [[sources]]
//! name = "etl-logs"
//! type = "postgres"
//! url = "postgres://ssegate:secret@db:5432/app"
//! table = "public.logs"                 # or tables = ["public.logs", "public.runs"]
//! # publication = "ssegate_etl_logs"    # default: ssegate_<name>; created if missing
//! # slot = "ssegate_etl_logs"           # default: ssegate_<name>; created if missing
//! # sslmode = "verify-full"             # disable | prefer (default) | require | verify-ca | verify-full
//! # sslrootcert = "/etc/ssegate/db-ca.pem"
//! # max_changes = 2000                  # messages read ahead of the log, at most
//! channel = "logs:{row.workspace_id}:{row.workflow_id}"
//! event_type = "log.{op}"
//! users = "{row.owner_id}"
//! ```
//!
//! How: one publication (`FOR TABLE` the configured tables) and one logical replication slot
//! with the built-in `pgoutput` plugin per source, set up over an ordinary connection; then
//! a replication connection (`replication=database`, through the `pgwire-replication` crate)
//! runs `START_REPLICATION SLOT <slot> LOGICAL <position> (proto_version '1',
//! publication_names '<publication>')` and the server pushes each transaction as it commits
//! (CopyBoth: XLogData messages carrying pgoutput, decoded by [`super::pgoutput`]). There
//! is no polling: a change reaches the log a round trip after its commit.
//!
//! What the server is told (standby status updates) is only what the log holds: the flushed
//! position is raised to a transaction's end only after [`SourceContext::emit`] returned for
//! its changes, and the replication client sends nothing else as flushed — not on a timer,
//! not in the replies to the server's keepalives (answered at once when the server asks,
//! with the same position). While the watched tables are quiet, a keepalive's WAL position
//! is confirmed when every transaction received before it is in the log (the server
//! decoded everything before that position, and pgoutput sent every transaction of ours in
//! it), so the slot follows the WAL and the server keeps no WAL for us.
//!
//! Guarantees:
//! - **Every committed change, in commit order**: inserts, updates and deletes of the tables,
//!   transaction by transaction in the order they committed (a transaction's rows in their
//!   order), across tables.
//! - **Restart-safe**: the slot's confirmed position never passes what is in the log, so
//!   after a crash, a `kill -9` or a lost connection the slot still holds every change not
//!   yet in the log. The end LSN of the last transaction appended is also the source's
//!   checkpoint: at start the slot is moved up to it, so a crash between the append and the
//!   status update never replays what the log already has.
//! - **No duplicate**: each event's key is `<commit LSN>:<n>` (the transaction's commit LSN
//!   and the change's position in it), stable across replays, so the log's dedupe removes a
//!   change seen twice.
//! - **Whole transactions**: a transaction's changes are appended together with its
//!   checkpoint; a very large one goes out in chunks of 2,000 with no checkpoint until its
//!   last (a stop half-way replays it whole and the keys drop what the log has).
//! - The slot starts where it is created: rows changed before the source first ran are not
//!   sent (no initial snapshot).
//! - What a row carries: inserts and updates the new row; deletes the old row, which under the
//!   default `REPLICA IDENTITY` has only the primary key — set `REPLICA IDENTITY FULL` on the
//!   table for deletes to reach channels built from other columns. Truncates are logged, not
//!   sent.
//! - Needs `wal_level = logical`, a role with `REPLICATION` (or superuser) that owns the
//!   tables (to create the publication), a free slot (`max_replication_slots`) and a free
//!   WAL sender (`max_wal_senders`), and `pg_hba.conf` letting the role connect to the
//!   database (a `host` line for the database covers replication=database connections). A
//!   slot nobody reads keeps WAL on the server's disk: drop it when a source is removed
//!   (`SELECT pg_drop_replication_slot('ssegate_<name>')`).
//! - `poll_interval`, from the SQL-polling reader this replaced, is accepted and ignored
//!   (a warning says so at start).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent,
};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::pgoutput::{format_lsn, parse_lsn, Decoder, Message};
use super::tls::{SslMode, Tls};
use super::{classify, connect, duration_str, ident, is_fatal, resolve_table, validate_url, Table};
use crate::source::{BuildSource, Cause, Change, Source, SourceContext, SourceError};

/// Changes appended per log batch at a commit (several transactions that arrive together
/// are appended in one batch up to this many changes).
const EMIT_CHUNK: usize = 500;

/// How often, at most, a raised flushed position is sent to the server. Each status update
/// is one small message; the slot lags the log by at most this much.
const STATUS_INTERVAL: Duration = Duration::from_millis(200);

/// How long the replication connection may be quiet before the client sends a status
/// update anyway (the server's `wal_sender_timeout` is 60 s by default; it also asks for a
/// reply itself, which is answered at once).
const IDLE_STATUS: Duration = Duration::from_secs(10);

/// Settings of a `postgres` source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection string (`postgres://user:password@host:5432/db`).
    pub url: String,
    /// One table, `schema.table` (or `table` on the search path).
    #[serde(default)]
    pub table: Option<String>,
    /// Several tables (with or instead of `table`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Publication name; default `ssegate_<name>` (lowercase, `-` → `_`).
    #[serde(default)]
    pub publication: Option<String>,
    /// Replication slot name; default `ssegate_<name>` (lowercase, `-` → `_`).
    #[serde(default)]
    pub slot: Option<String>,
    /// TLS: `disable`, `prefer`, `require`, `verify-ca` or `verify-full`; default the URL's
    /// `sslmode`, else `prefer`.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// PEM file of the CA certificates to trust (needed by `verify-ca` and `verify-full`).
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Deprecated and ignored: the slot is streamed, not polled (kept so that old configs
    /// still load; a warning says so at start).
    #[serde(
        default,
        with = "duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub poll_interval: Option<Duration>,
    /// Most replication messages read ahead of the log (the bounded queue between the
    /// replication connection and the appends; the server waits when it is full).
    #[serde(default = "default_max_changes")]
    pub max_changes: u32,
}

fn default_max_changes() -> u32 {
    2000
}

/// `Option<Duration>` written like `"50ms"`.
mod duration_opt {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_str::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration_str::deserialize(d).map(Some)
    }
}

impl PostgresConfig {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.table.iter().cloned().collect();
        for t in &self.tables {
            if !names.contains(t) {
                names.push(t.clone());
            }
        }
        names
    }

    fn tls(&self, url: &tokio_postgres::Config) -> Tls {
        Tls::resolve(self.sslmode, self.sslrootcert.clone(), url)
    }
}

/// `ssegate_<source name>` as a PostgreSQL object name (lowercase, `[a-z0-9_]`, ≤ 63 bytes).
pub fn default_object_name(source: &str) -> String {
    let mut s: String = format!("ssegate_{source}")
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    s.truncate(63);
    s
}

fn valid_object_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "{what} {name:?}: use 1 to 63 lowercase letters, digits and `_`"
        ));
    }
    Ok(())
}

impl BuildSource for PostgresConfig {
    fn validate(&self) -> Result<(), String> {
        validate_url(&self.url)?;
        if self.table_names().is_empty() {
            return Err("`table` (or `tables`) is required, e.g. table = \"public.logs\"".into());
        }
        if let Some(p) = &self.publication {
            valid_object_name("publication", p)?;
        }
        if let Some(s) = &self.slot {
            valid_object_name("slot", s)?;
        }
        if self.max_changes == 0 {
            return Err("max_changes must be greater than 0".into());
        }
        let url = tokio_postgres::Config::from_str(&self.url).map_err(|e| e.to_string())?;
        replication_host(&url)?;
        self.tls(&url).validate()
    }

    fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        if self.poll_interval.is_some() {
            tracing::warn!(
                "postgres source: `poll_interval` is deprecated and ignored (the slot is \
                 streamed over the replication protocol); remove it from the config"
            );
        }
        Ok(Box::new(CdcSource { cfg: self.clone() }))
    }
}

struct CdcSource {
    cfg: PostgresConfig,
}

#[async_trait]
impl Source for CdcSource {
    async fn run(&mut self, cx: &SourceContext) -> Result<(), SourceError> {
        let cfg = &self.cfg;
        let publication = cfg
            .publication
            .clone()
            .unwrap_or_else(|| default_object_name(&cx.name));
        let slot = cfg
            .slot
            .clone()
            .unwrap_or_else(|| default_object_name(&cx.name));
        let url = tokio_postgres::Config::from_str(&cfg.url)
            .map_err(|e| SourceError::fatal("invalid url", e))?;
        let tls = cfg.tls(&url);

        // Set-up over an ordinary connection, closed before streaming.
        let start = {
            let client = connect(&cfg.url, Some(&tls), cx, None).await?;
            let mut tables = Vec::new();
            for name in cfg.table_names() {
                tables.push(resolve_table(&client, &name).await?);
            }
            check_server(&client, &tables).await?;
            ensure_publication(&client, &publication, &tables).await?;
            let mut confirmed = ensure_slot(&client, &slot).await?;
            // The log may be ahead of the slot (a crash between append and status update).
            if let Some(cp) = cx.checkpoint()?.as_deref().and_then(parse_lsn) {
                if cp > confirmed {
                    advance(&client, &slot, cp).await?;
                    confirmed = cp;
                }
            }
            (confirmed, tables)
        };
        let (mut confirmed, tables) = start;
        let places: BTreeSet<String> = tables.iter().map(Table::place).collect();

        let repl_cfg = replication_config(&url, &tls, cx, &slot, &publication, confirmed, cfg)?;
        let mut repl = ReplicationClient::connect(repl_cfg)
            .await
            .map_err(|e| wire_error(e, "cannot open the replication connection"))?;
        tokio::select! {
            r = repl.wait_started() => r.map_err(|e| wire_error(e, "cannot start replication"))?,
            _ = cx.cancelled() => return Ok(()),
        }
        tracing::info!(source = %cx.name, %slot, %publication, from = %format_lsn(confirmed), "streaming the replication slot");

        let mut decoder = Decoder::default();
        let mut batch = Batch::default();
        loop {
            // Wait for the next message; then take what else is already there, up to the
            // end of a transaction with enough changes, before appending.
            let ev = tokio::select! {
                r = repl.recv() => r,
                _ = cx.cancelled() => return Ok(()),
            };
            let mut next = Some(ev);
            while let Some(ev) = next.take() {
                let ev = ev
                    .map_err(|e| wire_error(e, "the replication stream broke"))?
                    .ok_or_else(|| {
                        SourceError::Recoverable("the server ended the replication stream".into())
                    })?;
                let msg = match ev {
                    ReplicationEvent::Begin { final_lsn, .. } => Message::Begin {
                        final_lsn: final_lsn.as_u64(),
                    },
                    ReplicationEvent::Commit { end_lsn, .. } => Message::Commit {
                        end_lsn: end_lsn.as_u64(),
                    },
                    ReplicationEvent::XLogData { data, .. } => {
                        decoder.decode(&data).map_err(|e| {
                            SourceError::recoverable("cannot decode the slot's output", e)
                        })?
                    }
                    ReplicationEvent::KeepAlive { wal_end, .. } => {
                        // Everything sent before this keepalive is in the log: the slot may
                        // move up to where the server has decoded.
                        if batch.is_idle() && wal_end.as_u64() > confirmed {
                            confirmed = wal_end.as_u64();
                            repl.update_applied_lsn(wal_end);
                        }
                        Message::Other
                    }
                    ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {
                        Message::Other
                    }
                };
                if let Some(full) = batch.add(msg, &places, &cx.name) {
                    emit(cx, &repl, &full, &mut confirmed).await?;
                }
                if batch.in_txn || batch.pending.len() < EMIT_CHUNK {
                    next = futures::FutureExt::now_or_never(repl.recv());
                }
            }
            if !batch.in_txn {
                if let Some(done) = batch.flush() {
                    emit(cx, &repl, &done, &mut confirmed).await?;
                }
            }
        }
    }
}

/// Appends `out`; once it is durable, lets the server forget what it ends (a transaction's
/// end LSN).
async fn emit(
    cx: &SourceContext,
    repl: &ReplicationClient,
    out: &Emit,
    confirmed: &mut u64,
) -> Result<(), SourceError> {
    let checkpoint = out.checkpoint.map(format_lsn);
    cx.emit(&out.changes, checkpoint.as_deref()).await?;
    if let Some(end) = out.checkpoint {
        if end > *confirmed {
            *confirmed = end;
            repl.update_applied_lsn(Lsn::from_u64(end));
        }
    }
    Ok(())
}

/// The host the replication connection connects to over TCP (`localhost` if the URL names
/// none). It takes one TCP host: a Unix socket directory or several hosts are refused (at
/// validation), rather than tried as a host name and backed off from forever.
fn replication_host(url: &tokio_postgres::Config) -> Result<String, String> {
    let hosts = url.get_hosts();
    if hosts.len() > 1 {
        return Err(format!(
            "`url` names {} hosts: several hosts are not supported by the replication \
             connection of the postgres source; give one host",
            hosts.len()
        ));
    }
    let socket = |dir: &str| {
        format!(
            "`url` host {dir:?} is a Unix socket directory: the postgres source streams over \
             TCP; give a host name or address (e.g. host=127.0.0.1), not a Unix socket directory"
        )
    };
    match hosts.first() {
        None => Ok("localhost".to_owned()),
        Some(tokio_postgres::config::Host::Tcp(h)) if h.starts_with('/') => Err(socket(h)),
        Some(tokio_postgres::config::Host::Tcp(h)) => Ok(h.clone()),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(dir)) => Err(socket(&dir.display().to_string())),
    }
}

/// The replication connection's settings, from the source's URL and settings.
fn replication_config(
    url: &tokio_postgres::Config,
    tls: &Tls,
    cx: &SourceContext,
    slot: &str,
    publication: &str,
    start: u64,
    cfg: &PostgresConfig,
) -> Result<ReplicationConfig, SourceError> {
    let host = replication_host(url).map_err(|e| SourceError::fatal("invalid url", e))?;
    let port = url.get_ports().first().copied().unwrap_or(5432);
    let user = url.get_user().unwrap_or("postgres").to_owned();
    let password = url
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = url.get_dbname().unwrap_or(&user).to_owned();
    let app = url
        .get_application_name()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("ssegate:{}", cx.name));
    Ok(
        ReplicationConfig::new(host.clone(), user, password, database, slot, publication)
            .with_port(port)
            .with_tls(tls.replication(&host))
            .with_start_lsn(Lsn::from_u64(start))
            .with_status_interval(STATUS_INTERVAL)
            .with_wakeup_interval(IDLE_STATUS)
            .with_buffer_size(cfg.max_changes as usize)
            .with_application_name(app)
            // Values as the other PostgreSQL sources render them (see the module docs).
            .with_options("-c TimeZone=UTC -c DateStyle=ISO,YMD"),
    )
}

/// Sorts an error of the replication connection: a server error by its SQLSTATE (as
/// [`classify`] does), a refused login as fatal, the rest (connection lost, TLS handshake,
/// protocol) as recoverable.
fn wire_error(e: PgWireError, what: &str) -> SourceError {
    let code = match &e {
        PgWireError::Server(text) => text
            .split("SQLSTATE ")
            .nth(1)
            .map(|c| c.chars().take(5).collect::<String>()),
        _ => None,
    };
    match code {
        Some(code) => {
            let msg = format!("{what}: {e}");
            let cause = Cause::rendering(msg, e);
            if code == "42501" {
                SourceError::Fatal(cause.with_note(REPLICATION_HINT))
            } else if is_fatal(&code) {
                SourceError::Fatal(cause)
            } else {
                SourceError::Recoverable(cause)
            }
        }
        None if matches!(e, PgWireError::Auth(_)) => SourceError::fatal(what, e),
        None => SourceError::recoverable(what, e),
    }
}

/// Changes to append, with the checkpoint to save after them (when they end a transaction).
struct Emit {
    changes: Vec<Change>,
    /// The end LSN of the last transaction whose changes this append completes.
    checkpoint: Option<u64>,
}

/// The decoded stream, grouped into appends.
#[derive(Default)]
struct Batch {
    /// Between a Begin and its Commit.
    in_txn: bool,
    /// Changes not yet handed out.
    pending: Vec<Change>,
    /// How many of `pending` belong to complete transactions.
    complete: usize,
    /// Commit LSN of the open transaction (from its Begin).
    final_lsn: u64,
    /// Position of the next change in the open transaction.
    n: u64,
    /// End LSN of the last complete transaction seen: where the slot may be advanced once
    /// everything up to it is appended.
    committed: Option<u64>,
    /// The last checkpoint handed out.
    checkpointed: Option<u64>,
}

impl Batch {
    /// Takes one message; returns an append when enough changes gathered.
    fn add(&mut self, msg: Message, places: &BTreeSet<String>, source: &str) -> Option<Emit> {
        match msg {
            Message::Begin { final_lsn } => {
                self.in_txn = true;
                self.final_lsn = final_lsn;
                self.n = 0;
                None
            }
            Message::Row { op, place, record } => {
                let key = format!("{}:{}", format_lsn(self.final_lsn), self.n);
                self.n += 1;
                if !places.contains(&place) {
                    return None;
                }
                self.pending.push(Change {
                    op,
                    record,
                    place,
                    key,
                });
                // A huge transaction goes out in chunks with no checkpoint: if we stop
                // half-way, the slot replays it whole and the keys drop what is in the log.
                if self.pending.len() < 4 * EMIT_CHUNK {
                    return None;
                }
                self.complete = 0;
                Some(Emit {
                    changes: std::mem::take(&mut self.pending),
                    checkpoint: None,
                })
            }
            Message::Commit { end_lsn } => {
                self.in_txn = false;
                self.committed = Some(end_lsn);
                self.complete = self.pending.len();
                if self.pending.len() < EMIT_CHUNK {
                    return None;
                }
                self.complete = 0;
                self.checkpointed = Some(end_lsn);
                Some(Emit {
                    changes: std::mem::take(&mut self.pending),
                    checkpoint: Some(end_lsn),
                })
            }
            Message::Truncate { places: truncated } => {
                if truncated.iter().any(|p| places.contains(p)) {
                    tracing::warn!(source, tables = ?truncated, "TRUNCATE is not sent as events");
                }
                None
            }
            Message::Other => None,
        }
    }

    /// What is left at the end of a burst of messages: the complete transactions,
    /// checkpointed.
    ///
    /// Only between transactions: the rows of an open one stay for its commit.
    fn flush(&mut self) -> Option<Emit> {
        debug_assert!(!self.in_txn);
        debug_assert_eq!(self.complete, self.pending.len());
        let end = self.committed?;
        if self.checkpointed == Some(end) && self.pending.is_empty() {
            return None;
        }
        self.complete = 0;
        self.checkpointed = Some(end);
        Some(Emit {
            changes: std::mem::take(&mut self.pending),
            checkpoint: Some(end),
        })
    }

    /// Between transactions with everything handed out and checkpointed: all the stream
    /// gave so far is in the log.
    fn is_idle(&self) -> bool {
        !self.in_txn && self.pending.is_empty() && self.checkpointed == self.committed
    }
}

/// `wal_level` (said clearly here rather than by the slot's error), and the tables' replica
/// identity. Whether the role may use slots is left to the slot functions themselves:
/// managed services grant it in their own ways.
async fn check_server(client: &Client, tables: &[Table]) -> Result<(), SourceError> {
    let row = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(|e| classify(e, "cannot check the server settings"))?;
    let wal_level: String = row.get(0);
    if wal_level != "logical" {
        return Err(SourceError::Fatal(
            format!(
                "wal_level is {wal_level:?}: logical decoding needs wal_level = logical \
             (set it in postgresql.conf and restart PostgreSQL), or use a postgres_notify or \
             postgres_poll source"
            )
            .into(),
        ));
    }
    for t in tables {
        let identity: String = client
            .query_one(
                "SELECT relreplident::text FROM pg_class WHERE oid = $1::text::regclass",
                &[&t.sql()],
            )
            .await
            .map(|r| r.get(0))
            .map_err(|e| classify(e, "cannot read the table's replica identity"))?;
        if identity != "f" {
            tracing::warn!(
                table = %t.place(),
                "deletes carry only the primary key under this REPLICA IDENTITY: \
                 ALTER TABLE {} REPLICA IDENTITY FULL for deletes to have every column",
                t.sql()
            );
        }
    }
    Ok(())
}

/// Creates the publication for `tables`, or adds the tables an existing one lacks.
async fn ensure_publication(
    client: &Client,
    name: &str,
    tables: &[Table],
) -> Result<(), SourceError> {
    let exists = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| classify(e, "cannot look up the publication"))?;
    let list = |ts: &[&Table]| ts.iter().map(|t| t.sql()).collect::<Vec<_>>().join(", ");
    match exists {
        None => {
            let all: Vec<&Table> = tables.iter().collect();
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete')",
                ident(name),
                list(&all)
            );
            match client.batch_execute(&sql).await {
                Ok(()) => tracing::info!(publication = name, "publication created"),
                // Another node created it meanwhile.
                Err(e) if e.code().is_some_and(|c| c.code() == "42710") => {}
                Err(e) => {
                    let denied = e.code().is_some_and(|c| c.code() == "42501");
                    let err = classify(e, &format!("cannot create publication {name:?}"));
                    return Err(match err {
                        SourceError::Fatal(m) if denied => SourceError::Fatal(
                            m.with_note(format!("create it as the tables' owner: {sql}")),
                        ),
                        other => other,
                    });
                }
            }
        }
        Some(row) if row.get::<_, bool>(0) => {}
        Some(_) => {
            let have: Vec<(String, String)> = client
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
                     WHERE pubname = $1",
                    &[&name],
                )
                .await
                .map_err(|e| classify(e, "cannot list the publication's tables"))?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let missing: Vec<&Table> = tables
                .iter()
                .filter(|t| !have.contains(&(t.schema.clone(), t.name.clone())))
                .collect();
            if !missing.is_empty() {
                let sql = format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    ident(name),
                    list(&missing)
                );
                client.batch_execute(&sql).await.map_err(|e| {
                    classify(e, &format!("cannot add tables to publication {name:?}"))
                })?;
                tracing::info!(publication = name, tables = %list(&missing), "tables added to the publication");
            }
        }
    }
    Ok(())
}

/// Creates the slot when missing; returns its confirmed position.
async fn ensure_slot(client: &Client, slot: &str) -> Result<u64, SourceError> {
    let find = || async {
        client
            .query_opt(
                "SELECT plugin::text, database::text = current_database()::text, \
                 confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1::text",
                &[&slot],
            )
            .await
            .map_err(|e| classify(e, "cannot look up the replication slot"))
    };
    let mut row = find().await?;
    if row.is_none() {
        match client
            .execute(
                "SELECT pg_create_logical_replication_slot($1::text::name, 'pgoutput')",
                &[&slot],
            )
            .await
        {
            Ok(_) => tracing::info!(slot, "replication slot created"),
            // Another node created it meanwhile.
            Err(e) if e.code().is_some_and(|c| c.code() == "42710") => {}
            Err(e) => {
                return Err(slot_error(
                    e,
                    &format!("cannot create replication slot {slot:?}"),
                ))
            }
        }
        row = find().await?;
    }
    let row = row.ok_or_else(|| {
        SourceError::Recoverable(format!("replication slot {slot:?} vanished").into())
    })?;
    let plugin: Option<String> = row.get(0);
    let same_db: Option<bool> = row.get(1);
    if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
        return Err(SourceError::Fatal(
            format!(
                "replication slot {slot:?} exists but is not a pgoutput slot of this database \
             (plugin {plugin:?}); name another with `slot = \"…\"`"
            )
            .into(),
        ));
    }
    let confirmed: Option<String> = row.get(2);
    Ok(confirmed.as_deref().and_then(parse_lsn).unwrap_or(0))
}

const REPLICATION_HINT: &str = "the role needs the REPLICATION attribute (ALTER ROLE … \
     REPLICATION, or your service's replication role), or use a postgres_notify or \
     postgres_poll source";

/// A slot function's error; a refused permission says what the role lacks.
fn slot_error(e: tokio_postgres::Error, what: &str) -> SourceError {
    let denied = e.code().is_some_and(|c| c.code() == "42501");
    match classify(e, what) {
        SourceError::Fatal(m) if denied => SourceError::Fatal(m.with_note(REPLICATION_HINT)),
        other => other,
    }
}

/// Confirms everything up to `lsn`: the slot will not give it again.
async fn advance(client: &Client, slot: &str, lsn: u64) -> Result<(), SourceError> {
    client
        .execute(
            "SELECT pg_replication_slot_advance($1::text::name, $2::text::pg_lsn)",
            &[&slot, &format_lsn(lsn)],
        )
        .await
        .map_err(|e| classify(e, "cannot advance the replication slot"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Op;
    use serde_json::json;

    #[test]
    fn names_and_settings() {
        assert_eq!(default_object_name("ETL-logs_1"), "ssegate_etl_logs_1");
        assert_eq!(default_object_name(&"x".repeat(80)).len(), 63);
        let cfg: PostgresConfig = toml::from_str(
            r#"url = "postgres://u@127.0.0.1/db"
               table = "public.logs"
               tables = ["public.logs", "runs"]
               poll_interval = "100ms"
               sslmode = "verify-ca"
               sslrootcert = "/nonexistent/ca.pem""#,
        )
        .unwrap();
        assert_eq!(cfg.table_names(), ["public.logs", "runs"]);
        assert_eq!(cfg.poll_interval, Some(Duration::from_millis(100)));
        assert!(cfg.validate().unwrap_err().contains("/nonexistent/ca.pem"));
        let cfg = PostgresConfig {
            sslmode: None,
            sslrootcert: None,
            ..cfg
        };
        assert!(cfg.validate().is_ok());
        let bad = PostgresConfig {
            slot: Some("Bad-Slot".into()),
            ..cfg.clone()
        };
        assert!(bad.validate().unwrap_err().contains("slot"));
        let none = PostgresConfig {
            table: None,
            tables: vec![],
            ..cfg
        };
        assert!(none.validate().unwrap_err().contains("table"));
    }

    #[test]
    fn the_replication_connection_takes_one_tcp_host() {
        let with_url = |url: &str| {
            toml::from_str::<PostgresConfig>(&format!("url = {url:?}\ntable = \"logs\""))
                .unwrap()
                .validate()
        };
        for url in [
            "postgres://u@127.0.0.1:5433/db",
            "postgres://u@db.example/db",
            "host=db.example port=5433 user=u dbname=db",
            "postgres:///db?user=u",
        ] {
            assert_eq!(with_url(url), Ok(()), "{url}");
        }
        for url in [
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/db",
            "postgres:///db?host=/var/run/postgresql",
            "host=/var/run/postgresql user=u dbname=db",
        ] {
            let e = with_url(url).unwrap_err();
            assert!(
                e.contains("`url`") && e.contains("streams over TCP") && e.contains("Unix socket"),
                "{url}: {e}"
            );
        }
        for url in [
            "postgres://u@a.example,b.example/db",
            "host=a.example,b.example user=u dbname=db",
        ] {
            let e = with_url(url).unwrap_err();
            assert!(
                e.contains("`url`") && e.contains("several hosts are not supported"),
                "{url}: {e}"
            );
        }
    }

    fn row(n: i64, place: &str) -> Message {
        Message::Row {
            op: Op::Insert,
            place: place.into(),
            record: json!({ "n": n }),
        }
    }

    #[test]
    fn batches_key_changes_by_commit_lsn_and_position_and_checkpoint_on_commits() {
        let places: BTreeSet<String> = ["public.logs".to_owned()].into();
        let mut b = Batch::default();
        assert!(b
            .add(Message::Begin { final_lsn: 0x10 }, &places, "s")
            .is_none());
        assert!(b.add(row(1, "public.logs"), &places, "s").is_none());
        assert!(b.add(row(2, "public.other"), &places, "s").is_none());
        assert!(b.add(row(3, "public.logs"), &places, "s").is_none());
        assert!(b
            .add(Message::Commit { end_lsn: 0x20 }, &places, "s")
            .is_none());
        let out = b.flush().unwrap();
        let keys: Vec<&str> = out.changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["0/10:0", "0/10:2"]);
        assert_eq!(out.checkpoint, Some(0x20));
        assert_eq!(b.committed, Some(0x20));

        // A big transaction leaves in chunks without a checkpoint, the rest with it.
        let mut b = Batch::default();
        b.add(Message::Begin { final_lsn: 0x30 }, &places, "s");
        let mut chunks = 0;
        for i in 0..(4 * EMIT_CHUNK + 10) {
            if let Some(e) = b.add(row(i as i64, "public.logs"), &places, "s") {
                assert!(e.checkpoint.is_none());
                chunks += 1;
            }
        }
        assert_eq!(chunks, 1);
        assert!(b
            .add(Message::Commit { end_lsn: 0x40 }, &places, "s")
            .is_none());
        let rest = b.flush().unwrap();
        assert_eq!(rest.changes.len(), 10);
        assert_eq!(rest.checkpoint, Some(0x40));

        // A transaction's rows wait for its commit; idle only once all is handed out.
        let mut b = Batch::default();
        assert!(b.is_idle());
        b.add(Message::Begin { final_lsn: 0x50 }, &places, "s");
        b.add(row(1, "public.logs"), &places, "s");
        assert!(!b.is_idle(), "open transaction");
        b.add(Message::Commit { end_lsn: 0x60 }, &places, "s");
        assert!(!b.is_idle(), "not appended yet");
        let out = b.flush().unwrap();
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].key, "0/50:0");
        assert_eq!(out.checkpoint, Some(0x60));
        assert!(b.is_idle());
        assert!(b.flush().is_none(), "nothing twice");
        // A transaction of other tables only still moves the checkpoint.
        b.add(Message::Begin { final_lsn: 0x70 }, &places, "s");
        b.add(row(2, "public.other"), &places, "s");
        b.add(Message::Commit { end_lsn: 0x80 }, &places, "s");
        assert!(!b.is_idle());
        let out = b.flush().unwrap();
        assert!(out.changes.is_empty());
        assert_eq!(out.checkpoint, Some(0x80));
        assert!(b.is_idle());
    }
}
