//! PostgreSQL sources: three ways to turn table changes into events, from the best to the
//! most modest, for what a database allows.
//!
//! | `type` | how | sees | latency | database cost |
//! |---|---|---|---|---|
//! | `postgres` ([`cdc`]) | logical decoding (pgoutput) of a replication slot, streamed over a replication connection | inserts, updates, deletes, in commit order | a round trip after the commit | one WAL sender, decoding as WAL is written |
//! | `postgres_notify` ([`notify`]) | an outbox table filled by triggers + `LISTEN` | what the triggers write | a round trip after `NOTIFY` | one read per notification |
//! | `postgres_poll` ([`poll`]) | `WHERE column > $last ORDER BY column` every `interval` | new rows (updates only if the column moves) | ≈ `interval` (5 s) | one query per interval |
//!
//! Common to all three (on top of what [`crate::source`] guarantees): one connection per
//! source, never one per user; the position (commit LSN, outbox id, column value) is saved
//! only after the events are durable in the log, and each event is keyed by its change, so a
//! restart — even after a `kill -9` — resumes where the log stopped and appends nothing twice.
//! Errors are classified: a lost connection or a database that is restarting is
//! `Recoverable` (backoff, then resume); a missing table or column, a refused permission, a
//! bad URL or `wal_level` not `logical` is `Fatal` with a message that says what to fix.
//!
//! TLS ([`tls`]): `sslmode` and `sslrootcert` settings of `postgres` sources, else the URL's
//! `sslmode` (`prefer` by default, as libpq).
//!
//! Row values become JSON the way `to_jsonb` does it (numbers, booleans, JSON columns as
//! JSON, timestamps in ISO 8601, one-dimensional arrays as arrays, the rest as text), with
//! the session time zone set to UTC, so the three sources give the same event for the same
//! row.

pub mod cdc;
pub mod notify;
mod pgoutput;
pub mod poll;
pub mod tls;

use std::str::FromStr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::Client;

pub use cdc::PostgresConfig;
pub use notify::PostgresNotifyConfig;
pub use poll::PostgresPollConfig;
pub use tls::{SslMode, Tls};

use super::{Cause, SourceContext, SourceError};

/// How long connecting may take before it counts as a (recoverable) failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a connection URL (`postgres://user:pass@host:port/db?…` or `host=… dbname=…`).
fn validate_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("`url` is required (postgres://user:password@host:5432/db)".into());
    }
    tokio_postgres::Config::from_str(url)
        .map(|_| ())
        .map_err(|e| format!("`url` is not a PostgreSQL connection string: {e}"))
}

/// A connection for source `cx.name`, its session in UTC, with TLS as `tls` says (`None`:
/// as the URL says, `prefer` by default). The connection task runs until the client is
/// dropped or the connection breaks; with `notifications`, every `NOTIFY` received (and the
/// end of the connection, as the sender is dropped) is forwarded there.
async fn connect(
    url: &str,
    tls: Option<&Tls>,
    cx: &SourceContext,
    notifications: Option<mpsc::Sender<()>>,
) -> Result<Client, SourceError> {
    let mut cfg =
        tokio_postgres::Config::from_str(url).map_err(|e| SourceError::fatal("invalid url", e))?;
    let tls = match tls {
        Some(t) => t.clone(),
        None => Tls::resolve(None, None, &cfg),
    };
    cfg.ssl_mode(tls.postgres_mode());
    let connector = tls.connector().map_err(|e| SourceError::Fatal(e.into()))?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name(format!("ssegate:{}", cx.name));
    }
    let connecting = cfg.connect(connector);
    let (client, mut connection) = tokio::select! {
        r = connecting => r.map_err(|e| classify(e, "cannot connect"))?,
        _ = cx.cancelled() => return Err(SourceError::Recoverable("stopped while connecting".into())),
    };
    let name = cx.name.clone();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |c| connection.poll_message(c));
        while let Some(m) = futures::StreamExt::next(&mut messages).await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    if let Some(tx) = &notifications {
                        // A full queue already holds a wake-up: one is enough.
                        let _ = tx.try_send(());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(source = %name, error = %e, "connection ended");
                    break;
                }
            }
        }
    });
    client
        .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'")
        .await
        .map_err(|e| classify(e, "cannot set up the session"))?;
    Ok(client)
}

/// Runs `fut` unless the source is told to stop first (then `Ok(None)`).
async fn or_stop<T>(
    cx: &SourceContext,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    what: &str,
) -> Result<Option<T>, SourceError> {
    tokio::select! {
        r = fut => r.map(Some).map_err(|e| classify(e, what)),
        _ = cx.cancelled() => Ok(None),
    }
}

/// Sorts a database error into retry-worthy or not. Without a SQLSTATE the connection
/// failed (refused, reset, timed out): recoverable.
fn classify(e: tokio_postgres::Error, what: &str) -> SourceError {
    let Some(db) = e.as_db_error() else {
        return SourceError::recoverable(what, e);
    };
    let code = db.code().code();
    let mut msg = format!("{what}: {} (SQLSTATE {code})", db.message());
    if let Some(hint) = db.hint() {
        msg.push_str("; hint: ");
        msg.push_str(hint);
    }
    // The message says what the error says (text, code, hint) better than its `Display`.
    let fatal = is_fatal(code);
    let cause = Cause::rendering(msg, e);
    if fatal {
        SourceError::Fatal(cause)
    } else {
        SourceError::Recoverable(cause)
    }
}

/// SQLSTATEs that retrying cannot fix: bad credentials or database (28, 3D), missing objects
/// or permissions (42), unsupported features (0A), wrong server settings (55000: e.g.
/// `wal_level`), bad data in a query we built from the config (22).
fn is_fatal(code: &str) -> bool {
    code.starts_with("28")
        || code.starts_with("3D")
        || code.starts_with("42")
        || code.starts_with("0A")
        || code.starts_with("22")
        || code == "55000"
}

/// `name` as a quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A table the config names, as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table {
    schema: String,
    name: String,
}

impl Table {
    /// `"schema"."name"` for SQL.
    fn sql(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }

    /// `schema.name`, the `{table}` of events.
    fn place(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Finds `name` (`schema.table`, or `table` on the search path); `Fatal` when it does not
/// exist, as no retry will create it.
async fn resolve_table(client: &Client, name: &str) -> Result<Table, SourceError> {
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
            &[&name],
        )
        .await
        .map_err(|e| classify(e, &format!("cannot look up table {name:?}")))?;
    match row {
        Some(r) => Ok(Table {
            schema: r.get(0),
            name: r.get(1),
        }),
        None => Err(SourceError::Fatal(
            format!("table {name:?} does not exist (or this role cannot see it)").into(),
        )),
    }
}

/// Checks a column of `table` exists; returns its SQL type (`bigint`, `timestamp with time
/// zone`, …).
async fn column_type(client: &Client, table: &Table, column: &str) -> Result<String, SourceError> {
    let row = client
        .query_opt(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND a.attnum > 0 \
             AND NOT a.attisdropped",
            &[&table.sql(), &column],
        )
        .await
        .map_err(|e| classify(e, "cannot look up a column"))?;
    row.map(|r| r.get(0)).ok_or_else(|| {
        SourceError::Fatal(
            format!(
                "column {column:?} does not exist in table {}",
                table.place()
            )
            .into(),
        )
    })
}

/// `serde(with)` for durations written like `"5s"`, `"100ms"`, `"1m"`.
mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like \"5s\": {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_and_recoverable_codes() {
        for c in ["42P01", "42501", "28P01", "3D000", "55000", "0A000"] {
            assert!(is_fatal(c), "{c}");
        }
        for c in ["08006", "57P01", "57P03", "53300", "55006", "40001"] {
            assert!(!is_fatal(c), "{c}");
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        let t = Table {
            schema: "public".into(),
            name: "we\"ird".into(),
        };
        assert_eq!(t.sql(), "\"public\".\"we\"\"ird\"");
        assert_eq!(t.place(), "public.we\"ird");
        assert!(validate_url("postgres://u@127.0.0.1:5/db").is_ok());
        assert!(validate_url("").is_err());
    }
}
