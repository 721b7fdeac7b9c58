//! `ssegate log check` and `ssegate log repair`: what is wrong with a stopped node's file
//! log, and making it start again while keeping every good event and every id.
//!
//! Repair never invents data and never reuses an id: it cuts a torn tail, records damaged
//! and missing id ranges as holes in `meta.json` (readers get a `gap` over them), sets
//! aside (`*.seg.damaged`) a segment whose header cannot be read, and cuts a truncated
//! segment back to its last complete group commit. Ids continue after the highest ever
//! written.

use std::fmt::Write as _;
use std::path::Path;

use super::scan::{self, Meta, ScanError};
use super::{create_log, create_segment, lock_dir, log_dir, write_meta};
use crate::log::LogError;

/// What `check` found.
#[derive(Debug)]
pub struct Report {
    /// Clean: the log would start with no damage reported.
    pub ok: bool,
    pub text: String,
}

/// Reads the log of `data_dir` (the server must be stopped) and describes it.
pub fn check(data_dir: &Path) -> Result<Report, LogError> {
    let dir = log_dir(data_dir);
    if !dir.exists() {
        let redb = data_dir.join("log.redb");
        let text = if redb.exists() {
            format!(
                "{}: a log of the previous format; the next `ssegate serve` migrates it\n",
                redb.display()
            )
        } else {
            format!(
                "{}: no log yet (the next `ssegate serve` creates it)\n",
                dir.display()
            )
        };
        return Ok(Report { ok: true, text });
    }
    let _lock = lock_dir(&dir)?;
    let mut text = String::new();
    match scan::scan(&dir) {
        Ok(scan) => {
            let events: usize = scan
                .segments
                .iter()
                .map(|s| s.offsets.iter().filter(|o| **o != scan::MISSING).count())
                .sum();
            let _ = writeln!(
                text,
                "{}: {} segment(s), {} event(s) stored, ids up to {}, {} live idempotency key(s)",
                dir.display(),
                scan.segments.len(),
                events,
                scan.last_seq(),
                scan.keys.len()
            );
            for seg in &scan.segments {
                let _ = writeln!(
                    text,
                    "  {}: ids {}..={}, {} bytes",
                    seg.path.display(),
                    seg.base,
                    seg.last(),
                    seg.file_len
                );
            }
            for (a, b) in &scan.meta.holes {
                let _ = writeln!(
                    text,
                    "  accepted hole: ids {a}..={b} (lost, readers get a gap)"
                );
            }
            if let Some(t) = &scan.torn {
                let _ = writeln!(
                    text,
                    "torn tail: {} at byte {}: {} byte(s) of an interrupted write (never acknowledged); the next start cuts them",
                    t.file.display(),
                    t.offset,
                    t.bytes
                );
            }
            for d in &scan.damage {
                let _ = writeln!(text, "DAMAGED: {d}");
            }
            let ok = scan.damage.is_empty();
            if !ok {
                let _ = writeln!(
                    text,
                    "{} damaged event(s): `ssegate log repair` records them as lost (readers already get a gap over them)",
                    scan.damaged_events()
                );
            }
            Ok(Report { ok, text })
        }
        Err(e) => {
            let _ = writeln!(text, "CANNOT START: {e}");
            Ok(Report { ok: false, text })
        }
    }
}

/// Makes the log of `data_dir` start again (the server must be stopped); returns what it
/// did, one line each.
///
/// `margin`: how many ids a lost newest segment may have held (ids continue after them):
/// twice what a segment holds before it rolls.
pub fn repair(data_dir: &Path, margin: u64) -> Result<Vec<String>, LogError> {
    let dir = log_dir(data_dir);
    if !dir.exists() {
        return Ok(vec!["no log to repair".into()]);
    }
    let _lock = lock_dir(&dir)?;
    let io = |e: std::io::Error| LogError::Unavailable(e.to_string());
    let mut done = Vec::new();
    for _ in 0..1_000 {
        let mut meta = scan::read_meta(&dir).unwrap_or(Meta {
            format: super::format::FORMAT,
            ..Meta::default()
        });
        match scan::scan(&dir) {
            Ok(scan) => {
                if let Some(t) = &scan.torn {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&t.file)
                        .and_then(|f| f.set_len(t.offset).and_then(|()| f.sync_all()))
                        .map_err(io)?;
                    done.push(format!(
                        "cut {} torn byte(s) from {} at byte {}",
                        t.bytes,
                        t.file.display(),
                        t.offset
                    ));
                }
                for d in &scan.damage {
                    meta.holes.push((d.from, d.to));
                    done.push(format!("recorded as lost: {d}"));
                }
                if !scan.damage.is_empty() {
                    write_meta(&dir, &meta).map_err(io)?;
                }
                if done.is_empty() {
                    done.push("nothing to repair".into());
                }
                return Ok(done);
            }
            Err(ScanError::Gap { path, from, to }) => {
                meta.holes.push((from, to));
                write_meta(&dir, &meta).map_err(io)?;
                done.push(format!(
                    "recorded as lost: ids {from}..={to} (missing around {})",
                    path.display()
                ));
            }
            Err(ScanError::Truncated {
                path,
                keep,
                from,
                to,
                ..
            }) => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(keep).and_then(|()| f.sync_all()))
                    .map_err(io)?;
                meta.holes.push((from, to));
                write_meta(&dir, &meta).map_err(io)?;
                done.push(format!(
                    "cut {} back to byte {keep} (its last complete write); recorded as lost: ids {from}..={to}",
                    path.display()
                ));
            }
            Err(ScanError::Segment { path, reason }) => {
                // Its ids are lost; the highest it may have held must never be issued again.
                let highest = scan::max_id_in(&path).unwrap_or(0);
                if highest > meta.sealed_through {
                    meta.holes.push((meta.sealed_through + 1, highest));
                    write_meta(&dir, &meta).map_err(io)?;
                }
                let aside = path.with_extension("seg.damaged");
                std::fs::rename(&path, &aside).map_err(io)?;
                done.push(format!(
                    "set aside {} as {} ({reason})",
                    path.display(),
                    aside.display()
                ));
            }
            Err(ScanError::NewestMissing { path, sealed }) => {
                meta.holes.push((sealed + 1, sealed + margin));
                create_segment(&dir, sealed + margin + 1).map_err(io)?;
                write_meta(&dir, &meta).map_err(io)?;
                done.push(format!(
                    "{} is missing: recorded ids {}..={} as lost; new ids start at {}",
                    path.display(),
                    sealed + 1,
                    sealed + margin,
                    sealed + margin + 1
                ));
            }
            Err(ScanError::Missing { sealed, .. }) => {
                if sealed > 0 {
                    meta.holes.push((1, sealed));
                }
                create_log(&dir, sealed + 1, &meta).map_err(io)?;
                done.push(format!(
                    "no segment files: a new segment after id {sealed} (ids never restart)"
                ));
            }
            Err(ScanError::Meta(path)) => {
                let files =
                    scan::segment_files(&dir).map_err(|e| LogError::Unavailable(e.to_string()))?;
                meta.sealed_through = files.last().map_or(0, |(base, _)| base - 1);
                write_meta(&dir, &meta).map_err(io)?;
                done.push(format!("wrote a new {}", path.display()));
            }
            Err(e @ (ScanError::Newer { .. } | ScanError::Io { .. })) => {
                return Err(LogError::Unreadable(e.to_string()));
            }
        }
    }
    Err(LogError::Unreadable(
        "repair did not converge; keep a copy of the directory and report it".into(),
    ))
}
