//! Reading a log directory back: every segment checked record by record, the index of where
//! each event is, the idempotency keys still live, and what is wrong — a torn tail (cut off
//! at start), damaged records (reported, never delivered) or missing data (a start error).
//! `ssegate serve`, `ssegate log check` and `ssegate log repair` all begin here.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::format::{self, Frame, Record, HEADER_LEN};

/// An event slot whose record is missing (damaged, or a hole `log repair` accepted).
pub const MISSING: u32 = u32::MAX;

/// `log/meta.json`: what the directory promises beyond its segment files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    /// Every id up to here lives in a segment before the newest (updated at each roll).
    pub sealed_through: u64,
    /// Id ranges `log repair` accepted as lost (damaged or missing data).
    #[serde(default)]
    pub holes: Vec<(u64, u64)>,
}

impl Meta {
    pub fn in_hole(&self, from: u64, to: u64) -> bool {
        from > to || self.holes.iter().any(|&(a, b)| a <= from && to <= b)
    }
}

pub const META: &str = "meta.json";

/// One segment as read.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    pub path: PathBuf,
    pub base: u64,
    /// Byte offset of event `base + i`, or [`MISSING`].
    pub offsets: Vec<u32>,
    /// Publish time of event `base + i` (0 when missing).
    pub times: Vec<u64>,
    /// End of the last complete group commit: where appends continue.
    pub end: u64,
    pub file_len: u64,
}

impl SegmentScan {
    /// The newest id the segment accounts for (`base - 1` when it holds none).
    pub fn last(&self) -> u64 {
        self.base + self.offsets.len() as u64 - 1
    }
}

/// Damaged records: ids `from..=to` are unreadable; the damage starts at `offset` of `file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    pub offset: u64,
    pub from: u64,
    pub to: u64,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at byte {}: ids {}..={} damaged (checksum mismatch)",
            self.file.display(),
            self.offset,
            self.from,
            self.to
        )
    }
}

/// Bytes after the last complete group commit of the newest segment: a write a crash tore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torn {
    pub file: PathBuf,
    pub offset: u64,
    pub bytes: u64,
}

/// A live idempotency key: its window's end, its ids, the segment that holds its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub exp: u64,
    pub seqs: Vec<u64>,
    pub segment: u64,
}

/// A directory read back.
#[derive(Debug, Default)]
pub struct Scan {
    pub meta: Meta,
    pub segments: Vec<SegmentScan>,
    pub damage: Vec<Damage>,
    pub torn: Option<Torn>,
    pub keys: HashMap<String, KeyEntry>,
    /// The highest retention-by-age mark found.
    pub trimmed_through: u64,
}

impl Scan {
    pub fn last_seq(&self) -> u64 {
        self.segments.last().map_or(0, SegmentScan::last)
    }

    pub fn damaged_events(&self) -> u64 {
        self.damage.iter().map(|d| d.to - d.from + 1).sum()
    }
}

/// Why a log directory cannot be opened as it is. Each names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("log segment {path}: {reason}; the log cannot start over it (run `ssegate log check`, then `ssegate log repair` to set the file aside and accept the loss)")]
    Segment { path: PathBuf, reason: String },
    #[error("log segment {path} is written in log format {format}; this ssegate reads format {} (upgrade ssegate)", format::FORMAT)]
    Newer { path: PathBuf, format: u32 },
    #[error("log segment {path} ends in the middle of a record at byte {at}: the file was truncated and ids {from}..={to} are missing; restore it, or run `ssegate log repair` to accept the loss")]
    Truncated {
        path: PathBuf,
        at: u64,
        /// The end of its last complete group commit.
        keep: u64,
        from: u64,
        to: u64,
    },
    #[error("{path} is missing: the newest segment (ids after {sealed}) was deleted; restore it, or run `ssegate log repair` to accept the loss (ids then continue well past what it could have held)")]
    NewestMissing { path: PathBuf, sealed: u64 },
    #[error("{0}: the log's meta.json is missing or unreadable while segment files exist; restore it, or run `ssegate log repair`")]
    Meta(PathBuf),
    #[error("{dir}: the log existed (meta.json says ids up to {sealed} were written) but its segment files are missing; restore them, or run `ssegate log repair` to go on after id {sealed}")]
    Missing { dir: PathBuf, sealed: u64 },
    #[error("{path}: ids {from}..={to} are missing (a segment file was deleted or truncated); restore it, or run `ssegate log repair` to accept the loss")]
    Gap { path: PathBuf, from: u64, to: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The segment files of `dir`, oldest first: `(base from the name, path)`.
pub fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, ScanError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(base) = name
            .strip_suffix(".seg")
            .filter(|b| b.len() == 20)
            .and_then(|b| b.parse::<u64>().ok())
        {
            out.push((base, path));
        }
    }
    out.sort();
    Ok(out)
}

pub fn segment_name(base: u64) -> String {
    format!("{base:020}.seg")
}

pub fn read_meta(dir: &Path) -> Option<Meta> {
    let text = std::fs::read(dir.join(META)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Reads every segment of `dir` (which must exist). `Ok` with damage or a torn tail means
/// the log can run (the damage is reported); `Err` means it cannot.
pub fn scan(dir: &Path) -> Result<Scan, ScanError> {
    let files = segment_files(dir)?;
    let meta = match read_meta(dir) {
        Some(meta) => meta,
        None if files.is_empty() && !dir.join(META).exists() => Meta::default(),
        None => return Err(ScanError::Meta(dir.join(META))),
    };
    if files.is_empty() {
        return Err(ScanError::Missing {
            dir: dir.to_owned(),
            sealed: meta.sealed_through,
        });
    }
    let mut scan = Scan {
        meta,
        ..Scan::default()
    };
    for (i, (name_base, path)) in files.iter().enumerate() {
        let next_base = files.get(i + 1).map(|(b, _)| *b);
        let seg = scan_segment(&mut scan, path, *name_base, next_base)?;
        if let Some(prev) = scan.segments.last() {
            let (from, to) = (prev.last() + 1, seg.base - 1);
            if !scan.meta.in_hole(from, to) {
                return Err(ScanError::Gap {
                    path: seg.path.clone(),
                    from,
                    to,
                });
            }
        }
        scan.segments.push(seg);
    }
    let newest = scan.segments.last().expect("at least one segment");
    let sealed = scan.meta.sealed_through;
    if sealed > 0 && newest.base <= sealed && !scan.meta.in_hole(sealed + 1, sealed + 1) {
        return Err(ScanError::NewestMissing {
            path: dir.join(segment_name(sealed + 1)),
            sealed,
        });
    }
    // The segment begun at the last roll holds ids after `sealed_through`; if the newest file
    // ends before it, that segment (or the end of this one) is gone.
    if newest.last() < scan.meta.sealed_through
        && !scan
            .meta
            .in_hole(newest.last() + 1, scan.meta.sealed_through)
    {
        return Err(ScanError::Gap {
            path: dir.join(segment_name(scan.meta.sealed_through + 1)),
            from: newest.last() + 1,
            to: scan.meta.sealed_through,
        });
    }
    Ok(scan)
}

/// Records of a group commit not yet closed by its COMMIT record.
#[derive(Default)]
struct Pending {
    events: Vec<(u64, u32, u64)>,
    keys: Vec<(String, KeyEntry)>,
    trim: u64,
}

fn scan_segment(
    scan: &mut Scan,
    path: &Path,
    name_base: u64,
    next_base: Option<u64>,
) -> Result<SegmentScan, ScanError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let bad = |reason: String| ScanError::Segment {
        path: path.to_owned(),
        reason,
    };
    let base = format::read_header(&bytes).map_err(|e| match e {
        format::HeaderError::Version(format) => ScanError::Newer {
            path: path.to_owned(),
            format,
        },
        e => bad(e.to_string()),
    })?;
    if base != name_base {
        return Err(bad(format!(
            "its header says it starts at id {base}, its name at {name_base}"
        )));
    }
    let newest = next_base.is_none();
    let gap = |from, to| ScanError::Gap {
        path: path.to_owned(),
        from,
        to,
    };
    let mut seg = SegmentScan {
        path: path.to_owned(),
        base,
        offsets: Vec::new(),
        times: Vec::new(),
        end: HEADER_LEN,
        file_len: bytes.len() as u64,
    };
    let mut pending = Pending::default();
    let mut pos = HEADER_LEN as usize;
    // Where damage began, while looking for the next good event after it.
    let mut damaged_at: Option<usize> = None;
    // The group being read: where it began, what the index held then, whether it met damage.
    let mut group = Group::at(&seg, scan);
    // The last complete group, if it met damage: in the newest segment, a power loss that
    // wrote its COMMIT but not every page before it looks like this; it is torn, not kept.
    let mut bad_last: Option<Group> = None;
    while pos < bytes.len() {
        group.damaged |= damaged_at.is_some();
        match format::frame(&bytes[pos..]) {
            Frame::Valid { record, len } => {
                match record {
                    Record::Event {
                        seq, time_ms, key, ..
                    } => {
                        let expected = seg.base + (seg.offsets.len() + pending.events.len()) as u64;
                        if seq < expected {
                            // A record out of order is as good as damaged.
                            damaged_at.get_or_insert(pos);
                            pos += len;
                            continue;
                        }
                        if seq > expected {
                            apply(scan, &mut seg, &mut pending);
                            let at = damaged_at.take();
                            fill_missing(scan, &mut seg, seq, at.map(|a| a as u64))
                                .map_err(|(from, to)| gap(from, to))?;
                        } else if damaged_at.take().is_some() {
                            // Damage that swallowed no event (a commit or key record).
                            apply(scan, &mut seg, &mut pending);
                        }
                        if let Some(k) = key {
                            group.keys.push(k.key.to_owned());
                            pending.keys.push((
                                k.key.to_owned(),
                                KeyEntry {
                                    exp: k.exp,
                                    seqs: (seq..seq + u64::from(k.count)).collect(),
                                    segment: seg.base,
                                },
                            ));
                        }
                        pending.events.push((seq, pos as u32, time_ms));
                    }
                    Record::Key { key, exp, seqs } => {
                        group.keys.push(key.to_owned());
                        pending.keys.push((
                            key.to_owned(),
                            KeyEntry {
                                exp,
                                seqs,
                                segment: seg.base,
                            },
                        ));
                    }
                    Record::Trim(t) => pending.trim = pending.trim.max(t),
                    Record::Commit(last) => {
                        apply(scan, &mut seg, &mut pending);
                        if last > seg.last() {
                            // The group's last events were damaged: the commit still counts them.
                            let at = damaged_at.take();
                            fill_missing(scan, &mut seg, last + 1, at.map(|a| a as u64))
                                .map_err(|(from, to)| gap(from, to))?;
                        }
                        group.damaged |= damaged_at.is_some();
                        damaged_at = None;
                        seg.end = (pos + len) as u64;
                        bad_last = group.damaged.then(|| group.clone());
                        group = Group::at(&seg, scan);
                    }
                }
                pos += len;
            }
            frame => {
                let past_end = matches!(frame, Frame::PastEnd);
                match resync(&bytes, pos + 1) {
                    Some(next) => {
                        damaged_at.get_or_insert(pos);
                        pos = next;
                    }
                    None if newest => break,
                    None if past_end && damaged_at.is_none() => {
                        let next = next_base.expect("sealed segments have a next");
                        apply(scan, &mut seg, &mut pending);
                        if seg.last() + 1 >= next {
                            // Every id is here: only a trailing record (a commit whose
                            // length field is damaged) is unreadable. Nothing is lost.
                            break;
                        }
                        return Err(ScanError::Truncated {
                            path: path.to_owned(),
                            at: pos as u64,
                            keep: seg.end,
                            from: seg.last() + 1,
                            to: next - 1,
                        });
                    }
                    None => {
                        damaged_at.get_or_insert(pos);
                        break;
                    }
                }
            }
        }
    }
    if newest {
        if let Some(g) = bad_last {
            // The last group met damage and nothing valid follows it: a write torn by a
            // power loss (its COMMIT reached the disk, a page before it did not). It was
            // never acknowledged whole; it goes whole.
            seg.offsets.truncate(g.events);
            seg.times.truncate(g.events);
            scan.damage.truncate(g.damage);
            for key in &g.keys {
                scan.keys.remove(key);
            }
            seg.end = g.start;
        }
        // Everything after the last complete group commit is a torn write: cut at start
        // (the records of `pending` are in it).
        if seg.end < seg.file_len {
            scan.torn = Some(Torn {
                file: path.to_owned(),
                offset: seg.end,
                bytes: seg.file_len - seg.end,
            });
        }
    } else {
        apply(scan, &mut seg, &mut pending);
        let next = next_base.expect("sealed segments have a next");
        if seg.last() + 1 < next {
            match damaged_at {
                Some(at) => {
                    // With damage seen, the missing ids are damaged: this cannot fail.
                    let _ = fill_missing(scan, &mut seg, next, Some(at as u64));
                }
                None if scan.meta.in_hole(seg.last() + 1, next - 1) => {}
                None => return Err(gap(seg.last() + 1, next - 1)),
            }
        }
        seg.end = seg.file_len;
    }
    Ok(seg)
}

/// Where a group commit began while reading a segment.
#[derive(Debug, Clone)]
struct Group {
    start: u64,
    events: usize,
    damage: usize,
    keys: Vec<String>,
    damaged: bool,
}

impl Group {
    fn at(seg: &SegmentScan, scan: &Scan) -> Self {
        Group {
            start: seg.end,
            events: seg.offsets.len(),
            damage: scan.damage.len(),
            keys: Vec::new(),
            damaged: false,
        }
    }
}

/// Commits the records of a group: into the index, the keys and the trim mark.
fn apply(scan: &mut Scan, seg: &mut SegmentScan, pending: &mut Pending) {
    for (_, offset, time) in pending.events.drain(..) {
        seg.offsets.push(offset);
        seg.times.push(time);
    }
    for (key, entry) in pending.keys.drain(..) {
        scan.keys.insert(key, entry);
    }
    scan.trimmed_through = scan.trimmed_through.max(pending.trim);
    pending.trim = 0;
}

/// Marks ids from the segment's next one up to `until - 1` missing: damaged (when damage was
/// seen at `damaged_at`) or an accepted hole; otherwise they vanished, an error.
fn fill_missing(
    scan: &mut Scan,
    seg: &mut SegmentScan,
    until: u64,
    damaged_at: Option<u64>,
) -> Result<(), (u64, u64)> {
    let from = seg.last() + 1;
    let to = until - 1;
    if from > to {
        return Ok(());
    }
    let hole = scan.meta.in_hole(from, to);
    match damaged_at {
        Some(offset) if !hole => scan.damage.push(Damage {
            file: seg.path.clone(),
            offset,
            from,
            to,
        }),
        None if !hole => return Err((from, to)),
        _ => {}
    }
    for _ in from..=to {
        seg.offsets.push(MISSING);
        seg.times.push(0);
    }
    Ok(())
}

/// The next offset after `from` where a valid record starts.
fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(format::FRAME_LEN)).find(|&at| {
        let kind = bytes[at + format::FRAME_LEN];
        (format::EVENT..=format::COMMIT).contains(&kind)
            && matches!(format::frame(&bytes[at..]), Frame::Valid { .. })
    })
}

/// The highest id any readable record of a file names (for a segment whose header is gone).
pub fn max_id_in(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut at = 0;
    let mut max = None;
    while let Some(pos) = resync(&bytes, at) {
        if let Frame::Valid { record, len } = format::frame(&bytes[pos..]) {
            if let Record::Event { seq, .. } | Record::Commit(seq) = record {
                max = max.max(Some(seq));
            }
            at = pos + len;
        } else {
            at = pos + 1;
        }
    }
    max
}
