//! `type = "postgres_notify"`: an outbox table read on `LISTEN` wake-ups, for databases where
//! logical replication is not allowed.
//!
//! ```toml
//! [[sources]]
//! name = "etl-logs"
//! type = "postgres_notify"
//! url = "postgres://ssegate:secret@db:5432/app"
//! outbox_table = "public.ssegate_outbox"
//! record_column = "record"      # the jsonb column holding the row (default: the whole outbox row)
//! op_column = "op"              # insert | update | delete (default: every row is an insert)
//! # id_column = "id"            # the outbox's increasing id
//! # notify_channel = "ssegate_outbox"   # default: the outbox table's name
//! # interval = "5s"             # safety-net read when no notification came
//! # delete_processed = false    # delete outbox rows once they are in the log
//! # gap_timeout = "60s"         # see "Holes" below
//! channel = "logs:{row.workspace_id}:{row.workflow_id}"
//! event_type = "log.{op}"
//! users = "{row.owner_id}"
//! ```
//!
//! The application (usually a trigger, see docs/sources.md) writes one outbox row per change
//! in the same transaction as the change, and `NOTIFY`s the channel. The source `LISTEN`s; on
//! start, on every notification and every `interval` it reads the rows with an id above its
//! checkpoint, in id order, appends them, and only then saves the last id as its checkpoint
//! (and, with `delete_processed`, deletes the rows up to it). The notification's payload is ignored: it is
//! only a wake-up, and a lost one costs at most `interval`.
//!
//! Guarantees: rows in id order, each appended once (key = the outbox id), nothing skipped
//! across restarts (the checkpoint is saved after the append).
//!
//! Holes: ids come from a sequence when a row is inserted, but rows become visible when
//! their transaction commits, so a row may appear after a higher id was read (two writers),
//! and ids of rolled-back transactions never appear. When the ids read are not consecutive,
//! the source stops before the hole and waits until every transaction that was running when
//! it saw the hole has ended (`pg_current_snapshot()`): then a row that was going to fill the
//! hole would be visible, and a hole still empty is one no row will fill — it is passed. A
//! hole still open after `gap_timeout` (a very long transaction somewhere in the database) is
//! passed with a warning. This needs the sequence to hand out ids one at a time (`CACHE 1`,
//! the default).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    classify, column_type, connect, duration_str, ident, or_stop, resolve_table, validate_url,
};
use crate::source::{BuildSource, Change, Op, Source, SourceContext, SourceError};

/// How often a hole is looked at again.
const HOLE_RECHECK: Duration = Duration::from_millis(100);
/// How long after a hole is first seen its horizon is taken (see [`Holes`]).
const HORIZON_DELAY: Duration = Duration::from_millis(50);

/// Settings of a `postgres_notify` source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresNotifyConfig {
    /// Connection string.
    pub url: String,
    /// The outbox table (`schema.table`).
    #[serde(alias = "table")]
    pub outbox_table: String,
    /// Its increasing integer id column.
    #[serde(default = "default_id_column")]
    pub id_column: String,
    /// A JSON column holding the record; when unset the outbox row itself is the record.
    #[serde(default)]
    pub record_column: Option<String>,
    /// A text column holding `insert`, `update`, `delete` or `replace`; when unset, `insert`.
    #[serde(default)]
    pub op_column: Option<String>,
    /// The `LISTEN` channel; default the outbox table's name.
    #[serde(default)]
    pub notify_channel: Option<String>,
    /// Read even without a notification this often.
    #[serde(default = "default_interval", with = "duration_str")]
    pub interval: Duration,
    /// Most rows per read.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// Delete outbox rows once they are in the log.
    #[serde(default)]
    pub delete_processed: bool,
    /// Longest wait for a hole in the ids to fill.
    #[serde(default = "default_gap_timeout", with = "duration_str")]
    pub gap_timeout: Duration,
}

fn default_id_column() -> String {
    "id".into()
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_batch() -> u32 {
    1000
}

fn default_gap_timeout() -> Duration {
    Duration::from_secs(60)
}

impl BuildSource for PostgresNotifyConfig {
    fn validate(&self) -> Result<(), String> {
        validate_url(&self.url)?;
        if self.outbox_table.is_empty() {
            return Err("`outbox_table` is required".into());
        }
        if self.interval.is_zero() {
            return Err("interval must be greater than 0".into());
        }
        if self.batch == 0 || self.batch > 100_000 {
            return Err("batch: between 1 and 100000".into());
        }
        if self.notify_channel.as_deref() == Some("") || self.id_column.is_empty() {
            return Err("notify_channel and id_column may not be empty".into());
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(NotifySource { cfg: self.clone() }))
    }
}

struct NotifySource {
    cfg: PostgresNotifyConfig,
}

#[async_trait]
impl Source for NotifySource {
    async fn run(&mut self, cx: &SourceContext) -> Result<(), SourceError> {
        let cfg = &self.cfg;
        let (wake_tx, mut wake) = mpsc::channel(1);
        let client = connect(&cfg.url, None, cx, Some(wake_tx)).await?;
        let table = resolve_table(&client, &cfg.outbox_table).await?;
        let id_type = column_type(&client, &table, &cfg.id_column).await?;
        if !matches!(id_type.as_str(), "bigint" | "integer" | "smallint") {
            return Err(SourceError::Fatal(
                format!(
                "id column {:?} of {} is {id_type}: it must be an integer filled from a sequence",
                cfg.id_column,
                table.place()
            )
                .into(),
            ));
        }
        for c in [&cfg.record_column, &cfg.op_column].into_iter().flatten() {
            column_type(&client, &table, c).await?;
        }
        let channel = cfg.notify_channel.clone().unwrap_or(table.name.clone());
        // Listen first: a notification sent while we read is then not lost.
        client
            .batch_execute(&format!("LISTEN {}", ident(&channel)))
            .await
            .map_err(|e| classify(e, "cannot LISTEN"))?;
        let id = ident(&cfg.id_column);
        let read = client
            .prepare(&format!(
                "SELECT o.{id}::int8, to_jsonb(o) FROM {} o WHERE o.{id} > $1::int8 ORDER BY o.{id} LIMIT $2",
                table.sql()
            ))
            .await
            .map_err(|e| classify(e, "cannot prepare the outbox read"))?;
        let snapshot = client
            .prepare(
                "SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text \
                 FROM pg_current_snapshot() s",
            )
            .await
            .map_err(|e| classify(e, "cannot prepare the snapshot query"))?;
        let delete = client
            .prepare(&format!(
                "DELETE FROM {} WHERE {id} <= $1::int8",
                table.sql()
            ))
            .await
            .map_err(|e| classify(e, "cannot prepare the outbox delete"))?;
        let mut after: Option<i64> = match cx.checkpoint()? {
            None => None,
            Some(cp) => Some(cp.trim().parse().map_err(|_| {
                SourceError::Fatal(format!("checkpoint {cp:?} is not an outbox id").into())
            })?),
        };
        tracing::info!(source = %cx.name, outbox = %table.place(), %channel, after = ?after, "reading the outbox");
        let place = table.place();
        let mut holes = Holes::default();
        loop {
            // Every wake-up so far is answered by the read below.
            while wake.try_recv().is_ok() {}
            let Some(snap) = or_stop(
                cx,
                client.query_one(&snapshot, &[]),
                "cannot read the snapshot",
            )
            .await?
            else {
                return Ok(());
            };
            let xmin: u64 = snap.get::<_, String>(0).parse().unwrap_or(0);
            let xmax: u64 = snap.get::<_, String>(1).parse().unwrap_or(u64::MAX);
            let limit = i64::from(cfg.batch);
            let Some(rows) = or_stop(
                cx,
                client.query(&read, &[&after.unwrap_or(i64::MIN), &limit]),
                "cannot read the outbox",
            )
            .await?
            else {
                return Ok(());
            };
            let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            let take = holes.accept(
                after,
                &ids,
                Horizon { xmin, xmax },
                Instant::now(),
                cfg.gap_timeout,
                &cx.name,
            );
            if take > 0 {
                let mut changes = Vec::with_capacity(take);
                for row in &rows[..take] {
                    let id: i64 = row.get(0);
                    let outbox_row: Value = row.get(1);
                    match self.change(id, outbox_row, &place) {
                        Ok(c) => changes.push(c),
                        Err(e) => {
                            cx.status
                                .skipped
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(source = %cx.name, id, error = %e, "outbox row skipped");
                        }
                    }
                }
                let last = ids[take - 1];
                cx.emit(&changes, Some(&last.to_string())).await?;
                after = Some(last);
                if cfg.delete_processed {
                    // Also what a crash between the append and the delete left behind.
                    client
                        .execute(&delete, &[&last])
                        .await
                        .map_err(|e| classify(e, "cannot delete processed outbox rows"))?;
                }
            }
            if take == rows.len() && rows.len() as u64 == u64::from(cfg.batch) {
                continue;
            }
            let wait = if holes.waiting() {
                HOLE_RECHECK
            } else {
                cfg.interval
            };
            tokio::select! {
                _ = cx.cancelled() => return Ok(()),
                woke = wake.recv() => if woke.is_none() {
                    return Err(SourceError::Recoverable("the connection to PostgreSQL was lost".into()));
                },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

impl NotifySource {
    fn change(&self, id: i64, row: Value, place: &str) -> Result<Change, String> {
        let op = match &self.cfg.op_column {
            None => Op::Insert,
            Some(c) => match row
                .get(c)
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase)
            {
                Some(s) if s == "insert" => Op::Insert,
                Some(s) if s == "update" => Op::Update,
                Some(s) if s == "delete" => Op::Delete,
                Some(s) if s == "replace" => Op::Replace,
                other => return Err(format!("column {c:?} holds {other:?}, not an operation")),
            },
        };
        let record = match &self.cfg.record_column {
            None => row,
            Some(c) => match row.get(c) {
                Some(v @ Value::Object(_)) => v.clone(),
                other => return Err(format!("column {c:?} holds {other:?}, not a JSON object")),
            },
        };
        Ok(Change {
            op,
            record,
            place: place.to_owned(),
            key: id.to_string(),
        })
    }
}

/// Transaction ids of a snapshot: every transaction below `xmin` has ended; none at or above
/// `xmax` had started.
#[derive(Debug, Clone, Copy)]
struct Horizon {
    xmin: u64,
    xmax: u64,
}

/// Decides how far the ids read may be taken when they have holes (see the module docs).
#[derive(Debug, Default)]
struct Holes {
    waiting: Option<Hole>,
}

#[derive(Debug)]
struct Hole {
    /// The first missing id.
    at: i64,
    since: Instant,
    /// `xmax` of a snapshot taken after whoever holds the missing id had its transaction id:
    /// once every transaction below it has ended, the hole is final.
    horizon: Option<u64>,
}

impl Holes {
    fn waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// How many of `ids` (ascending, read after `after`, with `snap` taken just before the
    /// read) can be appended now.
    fn accept(
        &mut self,
        after: Option<i64>,
        ids: &[i64],
        snap: Horizon,
        now: Instant,
        gap_timeout: Duration,
        source: &str,
    ) -> usize {
        // The first read of a new source starts at the oldest row there is.
        let Some(mut expected) = after.map(|a| a + 1).or(ids.first().copied()) else {
            return 0;
        };
        for (n, &id) in ids.iter().enumerate() {
            if id == expected {
                expected += 1;
                continue;
            }
            match &mut self.waiting {
                Some(h) if h.at == expected => {
                    let final_ = h.horizon.is_some_and(|x| snap.xmin >= x);
                    let timed_out = now.duration_since(h.since) >= gap_timeout;
                    if final_ || timed_out {
                        if timed_out && !final_ {
                            tracing::warn!(source, from = expected, to = id - 1, "outbox ids still missing after gap_timeout: passed (rows committed later with these ids will not be sent)");
                        } else {
                            tracing::debug!(
                                source,
                                from = expected,
                                to = id - 1,
                                "outbox ids never used: passed"
                            );
                        }
                        self.waiting = None;
                        expected = id + 1;
                        continue;
                    }
                    if h.horizon.is_none() && now.duration_since(h.since) >= HORIZON_DELAY {
                        h.horizon = Some(snap.xmax);
                    }
                }
                _ => {
                    self.waiting = Some(Hole {
                        at: expected,
                        since: now,
                        horizon: None,
                    })
                }
            }
            return n;
        }
        if self.waiting.as_ref().is_some_and(|h| h.at < expected) {
            self.waiting = None;
        }
        ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(60);

    fn snap(xmin: u64, xmax: u64) -> Horizon {
        Horizon { xmin, xmax }
    }

    #[test]
    fn consecutive_ids_pass_and_a_first_read_starts_anywhere() {
        let mut h = Holes::default();
        let now = Instant::now();
        assert_eq!(h.accept(None, &[7, 8, 9], snap(1, 2), now, T, "s"), 3);
        assert_eq!(h.accept(Some(9), &[10, 11], snap(1, 2), now, T, "s"), 2);
        assert_eq!(h.accept(Some(11), &[], snap(1, 2), now, T, "s"), 0);
        assert!(!h.waiting());
    }

    #[test]
    fn a_hole_waits_for_the_transactions_that_could_fill_it() {
        let mut h = Holes::default();
        let t0 = Instant::now();
        // 3 is missing: stop before it.
        assert_eq!(h.accept(Some(1), &[2, 4, 5], snap(100, 110), t0, T, "s"), 1);
        assert!(h.waiting());
        // Too early for a horizon; then the horizon is taken (xmax 120).
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(h.accept(Some(2), &[4, 5], snap(100, 110), t1, T, "s"), 0);
        let t2 = t0 + Duration::from_millis(100);
        assert_eq!(h.accept(Some(2), &[4, 5], snap(105, 120), t2, T, "s"), 0);
        // Transactions below 120 still running: wait.
        assert_eq!(h.accept(Some(2), &[4, 5], snap(119, 125), t2, T, "s"), 0);
        // The hole filled meanwhile: everything passes, nothing skipped.
        assert_eq!(h.accept(Some(2), &[3, 4, 5], snap(119, 125), t2, T, "s"), 3);
        assert!(!h.waiting());
    }

    #[test]
    fn a_hole_no_transaction_can_fill_is_passed() {
        let mut h = Holes::default();
        let t0 = Instant::now();
        assert_eq!(h.accept(Some(2), &[4], snap(100, 110), t0, T, "s"), 0);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(h.accept(Some(2), &[4], snap(100, 110), t1, T, "s"), 0);
        assert_eq!(h.accept(Some(2), &[4, 6], snap(110, 111), t1, T, "s"), 1);
        // The next hole (5) starts its own wait.
        assert!(h.waiting());
        assert_eq!(h.accept(Some(4), &[6], snap(110, 111), t1, T, "s"), 0);
    }

    #[test]
    fn a_hole_held_open_by_a_long_transaction_is_passed_after_the_timeout() {
        let mut h = Holes::default();
        let t0 = Instant::now();
        assert_eq!(h.accept(Some(2), &[4], snap(50, 110), t0, T, "s"), 0);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(h.accept(Some(2), &[4], snap(50, 110), t1, T, "s"), 0);
        assert_eq!(h.accept(Some(2), &[4], snap(50, 110), t0 + T, T, "s"), 1);
    }
}
