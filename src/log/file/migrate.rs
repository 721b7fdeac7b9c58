//! The first start over a data directory of the previous file log (`log.redb`, one redb
//! database): every retained event is copied with its id, and every idempotency key with
//! its window, into a new segment log, which replaces nothing until it is complete and
//! synced; then `log.redb` is renamed `log.redb.migrated` (kept for the operator to delete).
//! A crash half-way leaves `log.migrating/`, which the next start removes and redoes.

// redb's error type is large; it only travels this one-off path.
#![allow(clippy::result_large_err)]

use std::os::unix::fs::FileExt;
use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::Deserialize;

use super::format::{self, Encoder};
use super::scan::Meta;
use super::{create_segment, sync_dir, write_meta};
use crate::event::NewEvent;
use crate::log::LogError;

/// The tables of the redb log (ssegate up to the segment log).
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Events per group commit written while copying.
const CHUNK: u64 = 4_096;

/// Segments roll at the default `log.segment_mb` while copying.
const SEGMENT_BYTES: u64 = 64 << 20;

/// The segment being written.
struct Out<'a> {
    dir: &'a Path,
    file: std::fs::File,
    end: u64,
    sealed_through: u64,
}

impl Out<'_> {
    /// Writes `buf` as one group ending at `last`.
    fn write(&mut self, buf: &mut Vec<u8>, last: u64) -> std::io::Result<()> {
        Encoder { buf }.commit(last);
        self.file.write_all_at(buf, self.end)?;
        self.end += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Starts the next segment at `base`.
    fn roll(&mut self, base: u64) -> std::io::Result<()> {
        self.file.sync_all()?;
        self.file = create_segment(self.dir, base)?.1;
        self.end = format::HEADER_LEN;
        self.sealed_through = base - 1;
        Ok(())
    }
}

#[derive(Deserialize)]
struct KeyEntry {
    exp: u64,
    pos: Vec<u64>,
}

fn failed(redb: &Path, e: impl std::fmt::Display) -> LogError {
    LogError::Unreadable(format!(
        "cannot migrate {} to the segment log: {e}",
        redb.display()
    ))
}

/// Copies `redb` into a new segment log at `dir` (which must not exist).
pub fn migrate(redb: &Path, dir: &Path) -> Result<(), LogError> {
    let started = std::time::Instant::now();
    let staging = dir.with_extension("migrating");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| failed(redb, e))?;
    let db = Database::open(redb).map_err(|e| failed(redb, e))?;
    let txn = db.begin_read().map_err(|e| failed(redb, e))?;
    let meta = |k: &str| -> Result<u64, LogError> {
        match txn.open_table(META) {
            Ok(t) => Ok(t
                .get(k)
                .map_err(|e| failed(redb, e))?
                .map(|v| v.value())
                .unwrap_or(0)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(failed(redb, e)),
        }
    };
    let last_seq = meta("last_seq")?;
    let trimmed_through = meta("trimmed_through")?;
    let base = trimmed_through + 1;
    let mut out = Out {
        dir: &staging,
        file: create_segment(&staging, base)
            .map_err(|e| failed(redb, e))?
            .1,
        end: format::HEADER_LEN,
        sealed_through: 0,
    };
    let mut buf = Vec::new();
    let mut next = base;
    if let Ok(events) = txn.open_table(EVENTS) {
        for entry in events.range(base..).map_err(|e| failed(redb, e))? {
            let (k, v) = entry.map_err(|e| failed(redb, e))?;
            let seq = k.value();
            if seq != next {
                return Err(failed(
                    redb,
                    format!("event {next} is missing (the next stored is {seq})"),
                ));
            }
            let event: NewEvent = serde_json::from_slice(v.value())
                .map_err(|e| failed(redb, format!("event {seq} does not decode: {e}")))?;
            Encoder { buf: &mut buf }.event(seq, &event, None);
            next += 1;
            if (next - base) % CHUNK == 0 {
                out.write(&mut buf, seq).map_err(|e| failed(redb, e))?;
                if out.end >= SEGMENT_BYTES {
                    out.roll(next).map_err(|e| failed(redb, e))?;
                }
            }
        }
    }
    if next - 1 != last_seq.max(base - 1) {
        return Err(failed(
            redb,
            format!(
                "it says the last id is {last_seq}, its events end at {}",
                next - 1
            ),
        ));
    }
    let mut keys = 0;
    if let Ok(table) = txn.open_table(KEYS) {
        for entry in table.iter().map_err(|e| failed(redb, e))? {
            let (k, v) = entry.map_err(|e| failed(redb, e))?;
            if let Ok(key) = serde_json::from_slice::<KeyEntry>(v.value()) {
                Encoder { buf: &mut buf }.key(k.value(), key.exp, &key.pos);
                keys += 1;
            }
        }
    }
    out.write(&mut buf, next - 1).map_err(|e| failed(redb, e))?;
    out.file.sync_all().map_err(|e| failed(redb, e))?;
    let copied = next - base;
    write_meta(
        &staging,
        &Meta {
            format: format::FORMAT,
            sealed_through: out.sealed_through,
            holes: Vec::new(),
        },
    )
    .map_err(|e| failed(redb, e))?;
    drop(txn);
    drop(db);
    std::fs::rename(&staging, dir).map_err(|e| failed(redb, e))?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    sync_dir(parent).map_err(|e| failed(redb, e))?;
    let kept = redb.with_extension("redb.migrated");
    std::fs::rename(redb, &kept).map_err(|e| failed(redb, e))?;
    sync_dir(parent).map_err(|e| failed(redb, e))?;
    tracing::info!(
        from = %redb.display(),
        to = %dir.display(),
        events = copied,
        first_id = base,
        last_id = last_seq,
        keys,
        ms = started.elapsed().as_millis() as u64,
        kept = %kept.display(),
        "log: migrated the redb log to the segment log (format {}); the old file is kept, delete it once satisfied",
        format::FORMAT
    );
    Ok(())
}
