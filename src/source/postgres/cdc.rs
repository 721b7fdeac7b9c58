//! `type = "postgres"`: change data capture by logical decoding.
//!
//! ```toml
//! [[sources]]
//! name = "etl-logs"
//! type = "postgres"
//! url = "postgres://ssegate:secret@db:5432/app"
//! table = "public.logs"                 # or tables = ["public.logs", "public.runs"]
//! # publication = "ssegate_etl_logs"    # default: ssegate_<name>; created if missing
//! # slot = "ssegate_etl_logs"           # default: ssegate_<name>; created if missing
//! # poll_interval = "50ms"              # how often the slot is read when it was empty
//! channel = "logs:{row.workspace_id}:{row.workflow_id}"
//! event_type = "log.{op}"
//! users = "{row.owner_id}"
//! ```
//!
//! How: one publication (`FOR TABLE` the configured tables) and one logical replication slot
//! with the built-in `pgoutput` plugin per source, read through the SQL interface:
//! `pg_logical_slot_peek_binary_changes` returns the committed transactions after the slot's
//! confirmed position without consuming them; their rows are appended to the log; only then
//! is the slot moved past them with `pg_replication_slot_advance`. The slot is read again at
//! once while it has changes, else every `poll_interval`.
//!
//! Why the SQL interface rather than the streaming replication protocol: it works over an
//! ordinary connection of the `tokio-postgres` client (which has no `COPY BOTH` support for
//! `START_REPLICATION`), with no extra dependency, and the slot does what matters either
//! way — it keeps every change until it is confirmed. The price is a delay of up to
//! `poll_interval` and one slot read per interval (the benchmark in docs/sources.md measures
//! both).
//!
//! Guarantees:
//! - **Every committed change, in commit order**: inserts, updates and deletes of the tables,
//!   transaction by transaction in the order they committed (a transaction's rows in their
//!   order), across tables.
//! - **Restart-safe**: the slot is advanced only after [`SourceContext::emit`] returned (the
//!   events are durable), so after a crash or `kill -9` the slot still holds every change
//!   not yet in the log. The commit LSN of the last transaction appended is also the
//!   source's checkpoint: at start the slot is moved up to it, so a crash between the
//!   append and the advance never replays what the log already has.
//! - **No duplicate**: each event's key is `<commit LSN>:<n>` (the transaction's commit LSN
//!   and the change's position in it), stable across replays, so the log's dedupe removes a
//!   change seen twice.
//! - The slot starts where it is created: rows changed before the source first ran are not
//!   sent (no initial snapshot).
//! - What a row carries: inserts and updates the new row; deletes the old row, which under the
//!   default `REPLICA IDENTITY` has only the primary key — set `REPLICA IDENTITY FULL` on the
//!   table for deletes to reach channels built from other columns. Truncates are logged, not
//!   sent.
//! - Needs `wal_level = logical`, a role with `REPLICATION` (or superuser) that owns the
//!   tables (to create the publication), and a free slot (`max_replication_slots`). A slot
//!   nobody reads keeps WAL on the server's disk: drop it when a source is removed
//!   (`SELECT pg_drop_replication_slot('ssegate_<name>')`).

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::pgoutput::{format_lsn, parse_lsn, Decoder, Message};
use super::{classify, connect, duration_str, ident, or_stop, resolve_table, validate_url, Table};
use crate::source::{BuildSource, Change, Source, SourceContext, SourceError};

/// Changes appended per log batch (a large transaction is appended in several, each change
/// keyed, the checkpoint saved after the last).
const EMIT_CHUNK: usize = 500;

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
    /// How long to wait before reading the slot again when it had nothing.
    #[serde(default = "default_poll_interval", with = "duration_str")]
    pub poll_interval: Duration,
    /// Most rows of decoded output read per slot read (whole transactions are always read).
    #[serde(default = "default_max_changes")]
    pub max_changes: u32,
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(50)
}

fn default_max_changes() -> u32 {
    2000
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
        if self.poll_interval.is_zero() || self.poll_interval > Duration::from_secs(60) {
            return Err("poll_interval: between 1ms and 60s".into());
        }
        if self.max_changes == 0 {
            return Err("max_changes must be greater than 0".into());
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Source>, SourceError> {
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
        let client = connect(&cfg.url, cx, None).await?;
        let mut tables = Vec::new();
        for name in cfg.table_names() {
            tables.push(resolve_table(&client, &name).await?);
        }
        check_server(&client, &tables).await?;
        ensure_publication(&client, &publication, &tables).await?;
        let mut confirmed = ensure_slot(&client, &slot).await?;
        // The log may be ahead of the slot (a crash between append and advance).
        if let Some(cp) = cx.checkpoint()?.as_deref().and_then(parse_lsn) {
            if cp > confirmed {
                advance(&client, &slot, cp).await?;
                confirmed = cp;
            }
        }
        tracing::info!(source = %cx.name, %slot, %publication, from = %format_lsn(confirmed), "reading the replication slot");

        let places: BTreeSet<String> = tables.iter().map(Table::place).collect();
        let peek = client
            .prepare(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1::text::name, NULL, $2, \
                 'proto_version', '1', 'publication_names', $3)",
            )
            .await
            .map_err(|e| classify(e, "cannot prepare the slot read"))?;
        let max_changes = i32::try_from(cfg.max_changes).unwrap_or(i32::MAX);
        let wal = client
            .prepare("SELECT pg_current_wal_flush_lsn()::text, pg_current_wal_insert_lsn()::text")
            .await
            .map_err(|e| classify(e, "cannot prepare the WAL position query"))?;
        let mut decoder = Decoder::default();
        let mut idle = IdleAdvance::default();
        loop {
            // While the tables are quiet, move the slot along the WAL anyway (see IdleAdvance).
            let probe = if idle.probe_due() {
                let Some(row) = or_stop(
                    cx,
                    client.query_one(&wal, &[]),
                    "cannot read the WAL position",
                )
                .await?
                else {
                    return Ok(());
                };
                let lsn = |i: usize| parse_lsn(&row.get::<_, String>(i)).unwrap_or(0);
                Some((lsn(0), lsn(1)))
            } else {
                None
            };
            let Some(rows) = or_stop(
                cx,
                client.query(&peek, &[&slot, &max_changes, &ident(&publication)]),
                "cannot read the replication slot",
            )
            .await
            .map_err(|e| match e {
                SourceError::Fatal(m) if m.contains("SQLSTATE 42501") => {
                    SourceError::Fatal(m.with_note(REPLICATION_HINT))
                }
                e => e,
            })?
            else {
                return Ok(());
            };
            let got = rows.len();
            let mut batch = Batch::default();
            for row in rows {
                let data: &[u8] = row.get(0);
                let msg = decoder
                    .decode(data)
                    .map_err(|e| SourceError::recoverable("cannot decode the slot's output", e))?;
                if let Some(full) = batch.add(msg, &places, &cx.name) {
                    cx.emit(&full.changes, full.checkpoint.as_deref()).await?;
                }
            }
            if let Some(last) = batch.flush() {
                cx.emit(&last.changes, last.checkpoint.as_deref()).await?;
            }
            if let Some(end) = batch.committed {
                if end > confirmed {
                    advance(&client, &slot, end).await?;
                    confirmed = end;
                }
                idle.reset();
            } else if got == 0 {
                if let Some(to) = idle.after_empty_read(probe, confirmed) {
                    advance(&client, &slot, to).await?;
                    confirmed = to;
                }
            }
            if cx.is_cancelled() {
                return Ok(());
            }
            // A full read may have left more behind: read again at once.
            if got < max_changes as usize && cx.sleep(cfg.poll_interval).await {
                return Ok(());
            }
        }
    }
}

/// Moves the slot along the WAL while its tables are quiet.
///
/// pgoutput sends nothing for transactions that do not touch the publication, so on a busy
/// database whose watched tables are quiet the slot's position would never move: the server
/// would keep all WAL since, and every read would decode it again. So about once a second,
/// before an empty read, the WAL's flush and insert positions are taken. The insert position
/// is where the next record starts: every record before it is complete. Once a read that
/// began with the flush position at or past an earlier insert mark found nothing, no
/// transaction of ours committed before that mark, and the slot may be moved to it.
#[derive(Debug, Default)]
struct IdleAdvance {
    /// An insert position taken during an earlier empty read.
    mark: Option<u64>,
    last_probe: Option<tokio::time::Instant>,
}

impl IdleAdvance {
    const EVERY: Duration = Duration::from_secs(1);

    /// Whether to take the positions before this read (about once a second).
    fn probe_due(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if self
            .last_probe
            .is_some_and(|t| now.duration_since(t) < Self::EVERY)
        {
            return false;
        }
        self.last_probe = Some(now);
        true
    }

    fn reset(&mut self) {
        self.mark = None;
    }

    /// After a read that returned nothing, with `probe` = (flush, insert) positions taken
    /// just before it: where the slot may be moved, if anywhere.
    fn after_empty_read(&mut self, probe: Option<(u64, u64)>, confirmed: u64) -> Option<u64> {
        let (flush, insert) = probe?;
        let to = self.mark.filter(|&m| flush >= m && m > confirmed);
        self.mark = Some(insert);
        to
    }
}

/// Changes to append, with the checkpoint to save after them (when they end a transaction).
struct Emit {
    changes: Vec<Change>,
    checkpoint: Option<String>,
}

/// The decoded output of one slot read, grouped into appends.
#[derive(Default)]
struct Batch {
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
                self.committed = Some(end_lsn);
                self.complete = self.pending.len();
                if self.pending.len() < EMIT_CHUNK {
                    return None;
                }
                self.complete = 0;
                self.checkpointed = Some(end_lsn);
                Some(Emit {
                    changes: std::mem::take(&mut self.pending),
                    checkpoint: Some(format_lsn(end_lsn)),
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

    /// What is left once the read is over: the complete transactions, checkpointed.
    fn flush(&mut self) -> Option<Emit> {
        // Rows of a transaction whose commit this read did not include (a read always ends
        // on a commit, so this is only defensive) are read again next time.
        self.pending.truncate(self.complete);
        let end = self.committed?;
        if self.checkpointed == Some(end) && self.pending.is_empty() {
            return None;
        }
        self.complete = 0;
        self.checkpointed = Some(end);
        Some(Emit {
            changes: std::mem::take(&mut self.pending),
            checkpoint: Some(format_lsn(end)),
        })
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
               poll_interval = "100ms""#,
        )
        .unwrap();
        assert_eq!(cfg.table_names(), ["public.logs", "runs"]);
        assert_eq!(cfg.poll_interval, Duration::from_millis(100));
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
    fn a_quiet_slot_moves_only_to_marks_a_later_empty_read_covered() {
        let mut idle = IdleAdvance::default();
        assert!(idle.probe_due());
        assert!(!idle.probe_due(), "not again within a second");
        // First empty read: sets the mark, moves nothing.
        assert_eq!(idle.after_empty_read(Some((100, 120)), 50), None);
        // Flushed WAL not yet past the mark: nothing.
        assert_eq!(idle.after_empty_read(Some((110, 130)), 50), None);
        // The mark is now 130; flushed past it and empty: move there.
        assert_eq!(idle.after_empty_read(Some((140, 150)), 50), Some(130));
        // A read with rows forgets the mark.
        idle.reset();
        assert_eq!(idle.after_empty_read(Some((200, 210)), 130), None);
        // No probe before the read: nothing.
        assert_eq!(idle.after_empty_read(None, 130), None);
        // Never backwards.
        assert_eq!(idle.after_empty_read(Some((300, 310)), 400), None);
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
        assert_eq!(out.checkpoint.as_deref(), Some("0/20"));
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
        assert_eq!(rest.checkpoint.as_deref(), Some("0/40"));

        // Rows after the last commit are not handed out; nothing twice.
        let mut b = Batch::default();
        b.add(Message::Begin { final_lsn: 0x50 }, &places, "s");
        b.add(row(1, "public.logs"), &places, "s");
        b.add(Message::Commit { end_lsn: 0x60 }, &places, "s");
        b.add(Message::Begin { final_lsn: 0x70 }, &places, "s");
        b.add(row(2, "public.logs"), &places, "s");
        let out = b.flush().unwrap();
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].key, "0/50:0");
        assert_eq!(out.checkpoint.as_deref(), Some("0/60"));
        assert!(b.flush().is_none());
    }
}
