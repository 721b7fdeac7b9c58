//! `type = "postgres_poll"`: the baseline — a query every `interval` for the rows whose
//! increasing column is above the last value seen.
//!
//! ```toml
//! [[sources]]
//! name = "etl-logs"
//! type = "postgres_poll"
//! url = "postgres://ssegate:secret@db:5432/app"
//! table = "public.logs"
//! column = "id"             # unique, increasing (a bigserial id, an insertion sequence)
//! # interval = "5s"
//! # batch = 1000            # rows per query; a full batch is followed by another at once
//! # start = "now"           # first run: "now" (rows added from now on) or "beginning"
//! channel = "logs:{row.workspace_id}:{row.workflow_id}"
//! event_type = "log.{op}"   # {op} is always "insert"
//! ```
//!
//! Each round runs `SELECT … FROM <table> WHERE <column> > $last ORDER BY <column> LIMIT
//! <batch>`, appends the rows (key = the column's value) and then saves the last value as the
//! checkpoint: a restart resumes after it, nothing appended twice.
//!
//! What polling cannot see: updates (unless they move the column: an `updated_at` that is
//! unique would do), deletes, and the in-between states of a row changed several times
//! within an interval. A row whose transaction commits after a row with a higher value was
//! read (concurrent writers, a sequence value taken early in a long transaction) is missed
//! for good. The column must be unique (a duplicate at a batch boundary would be skipped).
//! A change waits up to `interval` (half of it on average) — the `postgres` source has none
//! of these limits.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    classify, column_type, connect, duration_str, ident, or_stop, resolve_table, validate_url,
};
use crate::source::{BuildSource, Change, Op, Source, SourceContext, SourceError};

/// Settings of a `postgres_poll` source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresPollConfig {
    /// Connection string.
    pub url: String,
    /// The table (`schema.table`).
    pub table: String,
    /// The unique, increasing column.
    #[serde(default = "default_column")]
    pub column: String,
    /// Time between queries.
    #[serde(default = "default_interval", with = "duration_str")]
    pub interval: Duration,
    /// Most rows per query.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// Where a source with no checkpoint starts.
    #[serde(default)]
    pub start: Start,
}

/// Where the first run of a poll source starts.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// After the rows there are when it first runs.
    #[default]
    Now,
    /// With the oldest row of the table.
    Beginning,
}

fn default_column() -> String {
    "id".into()
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_batch() -> u32 {
    1000
}

impl BuildSource for PostgresPollConfig {
    fn validate(&self) -> Result<(), String> {
        validate_url(&self.url)?;
        if self.table.is_empty() || self.column.is_empty() {
            return Err("`table` and `column` are required".into());
        }
        if self.interval.is_zero() {
            return Err("interval must be greater than 0".into());
        }
        if self.batch == 0 || self.batch > 100_000 {
            return Err("batch: between 1 and 100000".into());
        }
        Ok(())
    }

    fn build(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(PollSource { cfg: self.clone() }))
    }
}

struct PollSource {
    cfg: PostgresPollConfig,
}

#[async_trait]
impl Source for PollSource {
    async fn run(&mut self, cx: &SourceContext) -> Result<(), SourceError> {
        let cfg = &self.cfg;
        let client = connect(&cfg.url, None, cx, None).await?;
        let table = resolve_table(&client, &cfg.table).await?;
        let ty = column_type(&client, &table, &cfg.column).await?;
        let col = ident(&cfg.column);
        let select = format!("SELECT t.{col}::text, to_jsonb(t) FROM {} t", table.sql());
        let after_q = client
            .prepare(&format!(
                "{select} WHERE t.{col} > $1::text::{ty} ORDER BY t.{col} LIMIT $2"
            ))
            .await
            .map_err(|e| classify(e, "cannot prepare the poll query"))?;
        let all_q = client
            .prepare(&format!(
                "{select} WHERE t.{col} IS NOT NULL ORDER BY t.{col} LIMIT $1"
            ))
            .await
            .map_err(|e| classify(e, "cannot prepare the poll query"))?;
        let mut after = cx.checkpoint()?;
        if after.is_none() && cfg.start == Start::Now {
            let row = client
                .query_one(
                    &format!("SELECT max(t.{col})::text FROM {} t", table.sql()),
                    &[],
                )
                .await
                .map_err(|e| classify(e, "cannot read the column's last value"))?;
            after = row.get(0);
            // Saved at once: a restart must not move "now" past rows added meanwhile.
            if let Some(a) = &after {
                cx.emit(&[], Some(a)).await?;
            }
        }
        tracing::info!(source = %cx.name, table = %table.place(), column = %cfg.column, after = ?after, "polling");
        let place = table.place();
        let limit = i64::from(cfg.batch);
        loop {
            let rows = match &after {
                Some(a) => {
                    or_stop(
                        cx,
                        client.query(&after_q, &[a, &limit]),
                        "cannot poll the table",
                    )
                    .await?
                }
                None => {
                    or_stop(cx, client.query(&all_q, &[&limit]), "cannot poll the table").await?
                }
            };
            let Some(rows) = rows else { return Ok(()) };
            if let Some(last) = rows.last() {
                let last: String = last.get(0);
                let changes: Vec<Change> = rows
                    .iter()
                    .map(|r| Change {
                        op: Op::Insert,
                        record: r.get::<_, Value>(1),
                        place: place.clone(),
                        key: r.get(0),
                    })
                    .collect();
                cx.emit(&changes, Some(&last)).await?;
                after = Some(last);
            }
            if rows.len() as u64 == u64::from(cfg.batch) {
                continue;
            }
            if cx.sleep(cfg.interval).await {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cfg: PostgresPollConfig =
            toml::from_str("url = \"postgres://u@h/db\"\ntable = \"logs\"").unwrap();
        assert_eq!(cfg.column, "id");
        assert_eq!(cfg.interval, Duration::from_secs(5));
        assert_eq!(cfg.start, Start::Now);
        assert!(cfg.validate().is_ok());
        assert!(toml::from_str::<PostgresPollConfig>(
            "url = \"postgres://u@h/db\"\ntable = \"logs\"\ninterval = \"soon\""
        )
        .is_err());
    }
}
