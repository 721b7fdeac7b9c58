//! The embedded on-disk log, the default backend: segment files of checksummed records, the
//! shape of Kafka's log and JetStream's file store (see `docs/storage.md`).
//!
//! - **One writer thread** owns every write. It takes all append requests waiting at that
//!   moment, encodes them into one buffer, writes it with one `pwrite` at the end of the
//!   newest segment and makes it durable with one `fdatasync` before any of them is
//!   acknowledged: a group commit, which grows with the number of concurrent publishers.
//!   Every group ends with a COMMIT record, so a write torn by a crash never leaves half an
//!   append behind.
//! - **Segments** (`log/<first id>.seg`) roll at `log.segment_mb` or a quarter of
//!   `retention_events`; retention deletes whole segments once every event in them is
//!   dropped (live idempotency keys in them are written forward first).
//! - **The index** (where each event is, and its time) lives in memory, rebuilt at start by
//!   reading every segment and checking every checksum; so is the idempotency window.
//! - **Faults**: a torn tail is cut at start (logged with file and offset); damaged records
//!   are never delivered — readers get a `gap` over them — and reported (`/readyz`, metrics,
//!   one log line); a log with missing or truncated files refuses to start instead of
//!   starting over. A full disk refuses appends (`507 log_full`) without losing anything and
//!   heals by itself once space is free.
//! - **The tail**: the newest committed events stay in memory (bounded by bytes), so live
//!   delivery and short resumes never touch the file or decode anything.

pub mod format;
mod migrate;
pub mod repair;
pub mod scan;

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};

use crate::retry::lock;

use super::channel_index::ChannelIndex;
use super::{
    fill, wait_for_head, AppendItem, Appended, Bounds, Event, EventLog, FileStats, Filter, Gap,
    History, HistoryQuery, LogError, LogHealth, LogOptions, Position, ReadBatch, HISTORY_SCAN,
};
use format::{Encoder, ItemKey, HEADER_LEN};
use scan::{KeyEntry, Meta, Scan, MISSING};

/// Requests taken into one group commit at most.
const MAX_GROUP: usize = 1024;
/// Events decoded per read at most, whatever the filter keeps.
const MAX_SCAN: usize = 4_096;
/// Bytes read from a segment per read at most.
const MAX_READ_BYTES: u64 = 4 << 20;
/// The longest a group commit waits for more requests ([`Writer::gather`]).
const MAX_GATHER: Duration = Duration::from_millis(1);
/// While appends fail, how often the writer checks whether the disk takes writes again.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// When an append counts as durable (`log.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Acknowledged after `fdatasync`: on disk, whatever happens next.
    #[default]
    Always,
    /// Acknowledged after the write (in the page cache: survives the process, not a power
    /// loss); `fdatasync` follows at most this long after.
    Every(Duration),
}

/// Settings of the file log only.
#[derive(Debug, Clone, Copy)]
pub struct FileOptions {
    pub sync: SyncMode,
    /// A segment rolls at this size.
    pub segment_bytes: u64,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            sync: SyncMode::Always,
            segment_bytes: 64 << 20,
        }
    }
}

/// A segment in the index.
struct Seg {
    base: u64,
    path: PathBuf,
    file: Arc<File>,
    offsets: Vec<u32>,
    times: Vec<u64>,
    /// Committed bytes: readers never look past this.
    end: u64,
}

impl Seg {
    fn last(&self) -> u64 {
        self.base + self.offsets.len() as u64 - 1
    }
}

/// Where every committed event is.
struct Index {
    segs: VecDeque<Seg>,
    last_seq: u64,
    trimmed_through: u64,
    /// Positions by channel, for history (entries up to `trimmed_through` may linger until
    /// the next segment goes; lookups never go below it).
    channels: ChannelIndex,
}

impl Index {
    /// The segment holding `seq` (which must be after `trimmed_through`).
    fn seg_of(&self, seq: u64) -> Option<&Seg> {
        let i = self.segs.partition_point(|s| s.base <= seq);
        self.segs.get(i.checked_sub(1)?)
    }

    fn present(&self, seq: u64) -> bool {
        self.seg_of(seq)
            .and_then(|s| s.offsets.get((seq - s.base) as usize))
            .is_some_and(|o| *o != MISSING)
    }

    /// Where the record of `seq` is: (file, path, start, end), the end being the next
    /// record of an event or the segment's end.
    fn record_of(&self, seq: u64) -> Option<RecordAt> {
        let seg = self.seg_of(seq)?;
        let i = (seq - seg.base) as usize;
        let start = *seg.offsets.get(i)?;
        if start == MISSING {
            return None;
        }
        let end = seg.offsets[i + 1..]
            .iter()
            .find(|o| **o != MISSING)
            .map_or(seg.end, |o| u64::from(*o));
        Some(RecordAt {
            seq,
            file: seg.file.clone(),
            start: u64::from(start),
            end,
        })
    }
}

/// One record to read (see [`Index::record_of`]).
struct RecordAt {
    seq: u64,
    file: Arc<File>,
    start: u64,
    end: u64,
}

impl RecordAt {
    /// Reads and decodes the event; `None` if the record is damaged.
    fn read(&self) -> std::io::Result<Option<Event>> {
        let mut bytes = vec![0u8; (self.end - self.start) as usize];
        self.file.read_exact_at(&mut bytes, self.start)?;
        Ok(match format::frame(&bytes) {
            format::Frame::Valid {
                record: format::Record::Event { seq, body, .. },
                ..
            } if seq == self.seq => format::decode_event(body).map(|event| Event {
                pos: Position::seq(seq),
                event,
            }),
            _ => None,
        })
    }
}

/// The channel index of the events in `segs`: every record read once more (the scan at start
/// checked them). A record that cannot be read is left out (a read reports its damage).
fn index_channels(segs: &VecDeque<Seg>) -> std::io::Result<ChannelIndex> {
    let mut channels = ChannelIndex::default();
    for seg in segs {
        let mut bytes = vec![0u8; seg.end as usize];
        seg.file.read_exact_at(&mut bytes, 0)?;
        for (i, offset) in seg.offsets.iter().enumerate() {
            if *offset == MISSING {
                continue;
            }
            if let Some(format::Frame::Valid {
                record: format::Record::Event { body, .. },
                ..
            }) = bytes.get(*offset as usize..).map(format::frame)
            {
                if let Some(channel) = format::event_channel(body) {
                    channels.push(channel, Position::seq(seg.base + i as u64));
                }
            }
        }
    }
    Ok(channels)
}

/// What the health endpoints and metrics read.
#[derive(Default)]
struct Health {
    cannot_append: Mutex<Option<String>>,
    failed: AtomicBool,
    /// Damage found: (last id, events, what); forgotten once retention drops those ids.
    damage: Mutex<Vec<(u64, u64, String)>>,
    commits: AtomicU64,
    syncs: AtomicU64,
    torn_bytes: AtomicU64,
    damaged_events: AtomicU64,
    failures_full: AtomicU64,
    failures_io: AtomicU64,
    disk_bytes: AtomicU64,
}

impl Health {
    fn damaged(&self, what: String, last: u64, events: u64) {
        let mut damage = lock(&self.damage);
        damage.push((last, events, what));
        self.damaged_events
            .store(damage.iter().map(|d| d.1).sum(), Ordering::Relaxed);
    }

    /// Retention dropped every id up to `trimmed_through`: damage there is gone with them.
    fn forget_damage_through(&self, trimmed_through: u64) {
        let mut damage = lock(&self.damage);
        if damage.iter().any(|d| d.0 <= trimmed_through) {
            damage.retain(|d| d.0 > trimmed_through);
            self.damaged_events
                .store(damage.iter().map(|d| d.1).sum(), Ordering::Relaxed);
        }
    }
}

enum Cmd {
    Append {
        items: Vec<AppendItem>,
        now_ms: u64,
        reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
    },
    Retain {
        now_ms: u64,
        reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
    },
}

pub struct FileLog {
    index: Arc<RwLock<Index>>,
    head: watch::Receiver<Position>,
    tail: Arc<Mutex<Tail>>,
    health: Arc<Health>,
    writer: Option<std_mpsc::Sender<Cmd>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Held while the log is open: one process at a time.
    _lock: File,
}

impl Drop for FileLog {
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(e.to_string())
}

/// Events after which a segment rolls (unless its size makes it roll first).
pub fn roll_events(opts: &LogOptions) -> u64 {
    (opts.retention_events / 4).max(256)
}

/// The directory of the log inside `server.data_dir`.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

/// Takes the log's lock file: one process (server, `log check`, `log repair`) at a time.
pub fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| LogError::Unreadable(format!("cannot open {}: {e}", path.display())))?;
    file.try_lock().map_err(|_| {
        LogError::Unreadable(format!(
            "{} is in use by another ssegate process (a running server, `log check` or `log repair`)",
            dir.display()
        ))
    })?;
    Ok(file)
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `meta.json` atomically (temporary file, fsync, rename, fsync of the directory).
pub(crate) fn write_meta(dir: &Path, meta: &Meta) -> std::io::Result<()> {
    let tmp = dir.join("meta.json.tmp");
    let file = File::create(&tmp)?;
    file.write_all_at(
        &serde_json::to_vec_pretty(meta).expect("meta serializes"),
        0,
    )?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(scan::META))?;
    sync_dir(dir)
}

/// Creates a segment starting at `base` (header written and synced, then renamed into place).
pub(crate) fn create_segment(dir: &Path, base: u64) -> std::io::Result<(PathBuf, File)> {
    let path = dir.join(scan::segment_name(base));
    let tmp = path.with_extension("seg.tmp");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&tmp)?;
    file.write_all_at(&format::header(base), 0)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok((path, file))
}

/// Creates an empty log in `dir` whose first id will be `base`.
pub(crate) fn create_log(dir: &Path, base: u64, meta: &Meta) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_meta(dir, meta)?;
    create_segment(dir, base)?;
    Ok(())
}

fn full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge
    )
}

impl FileLog {
    /// Opens the log in `data_dir/log` — creating it, or migrating `data_dir/log.redb` (the
    /// format before segment files) on the first start.
    pub fn open(data_dir: &Path, opts: LogOptions, fopts: FileOptions) -> Result<Self, LogError> {
        let dir = log_dir(data_dir);
        std::fs::create_dir_all(data_dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", data_dir.display())))?;
        if !dir.exists() {
            let redb = data_dir.join("log.redb");
            if redb.exists() {
                migrate::migrate(&redb, &dir)?;
            } else {
                create_log(
                    &dir,
                    1,
                    &Meta {
                        format: format::FORMAT,
                        ..Meta::default()
                    },
                )
                .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
            }
        }
        let lock_file = lock_dir(&dir)?;
        for (_, path) in leftovers(&dir) {
            let _ = std::fs::remove_file(path);
        }
        let mut scan = scan::scan(&dir).map_err(|e| LogError::Unreadable(e.to_string()))?;
        let health = Arc::new(Health::default());
        if let Some(torn) = &scan.torn {
            let file = OpenOptions::new()
                .write(true)
                .open(&torn.file)
                .and_then(|f| f.set_len(torn.offset).and_then(|()| f.sync_all()));
            if let Err(e) = file {
                return Err(unavailable(format!(
                    "cannot cut the torn tail of {}: {e}",
                    torn.file.display()
                )));
            }
            tracing::warn!(
                file = %torn.file.display(),
                offset = torn.offset,
                bytes = torn.bytes,
                "log: cut a torn tail (a write a crash interrupted; nothing in it was acknowledged)"
            );
            health.torn_bytes.store(torn.bytes, Ordering::Relaxed);
            if let Some(seg) = scan.segments.last_mut() {
                seg.file_len = torn.offset;
            }
        }
        for d in &scan.damage {
            tracing::error!(
                file = %d.file.display(),
                offset = d.offset,
                first_id = d.from,
                last_id = d.to,
                "log: damaged records (checksum mismatch): these events are never delivered; run `ssegate log check`, then `ssegate log repair`"
            );
            health.damaged(d.to_string(), d.to, d.to - d.from + 1);
        }
        Self::start(dir, scan, opts, fopts, health, lock_file)
    }

    fn start(
        dir: PathBuf,
        mut scan: Scan,
        opts: LogOptions,
        fopts: FileOptions,
        health: Arc<Health>,
        lock_file: File,
    ) -> Result<Self, LogError> {
        // Ids never go back: past every hole `log repair` accepted, and past `sealed_through`.
        let holes_end = scan.meta.holes.iter().map(|h| h.1).max().unwrap_or(0);
        let last_seq = scan.last_seq().max(holes_end).max(scan.meta.sealed_through);
        let open = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))
        };
        let mut segs = VecDeque::new();
        for s in scan.segments.drain(..) {
            let file = open(&s.path)?;
            segs.push_back(Seg {
                base: s.base,
                file: Arc::new(file),
                offsets: s.offsets,
                times: s.times,
                end: s.end.min(s.file_len),
                path: s.path,
            });
        }
        let first = segs.front().map_or(1, |s| s.base);
        let trimmed_through = scan
            .trimmed_through
            .max(first - 1)
            .max(last_seq.saturating_sub(opts.retention_events));
        let channels =
            index_channels(&segs).map_err(|e| unavailable(format!("cannot read the log: {e}")))?;
        let mut index = Index {
            segs,
            last_seq,
            trimmed_through,
            channels,
        };
        if last_seq > index.segs.back().map_or(0, Seg::last) {
            // The newest ids are a hole: go on in a new segment after them.
            let (path, file) = create_segment(&dir, last_seq + 1)
                .map_err(|e| unavailable(format!("cannot create a segment: {e}")))?;
            index.segs.push_back(Seg {
                base: last_seq + 1,
                path,
                file: Arc::new(file),
                offsets: Vec::new(),
                times: Vec::new(),
                end: HEADER_LEN,
            });
        }
        let active = index.segs.back().expect("a segment");
        let (active_file, active_base, end) = (active.file.clone(), active.base, active.end);
        health
            .disk_bytes
            .store(index.segs.iter().map(|s| s.end).sum(), Ordering::Relaxed);
        let mut key_expiry: Vec<(u64, String)> =
            scan.keys.iter().map(|(k, e)| (e.exp, k.clone())).collect();
        key_expiry.sort();
        let index = Arc::new(RwLock::new(index));
        let (head_tx, head) = watch::channel(Position::seq(last_seq));
        let tail = Arc::new(Mutex::new(Tail {
            max_bytes: opts.file_cache_bytes,
            ..Tail::default()
        }));
        let (writer, rx) = std_mpsc::channel();
        let w = Writer {
            dir,
            opts,
            fopts,
            roll_events: roll_events(&opts),
            index: index.clone(),
            head: head_tx,
            tail: tail.clone(),
            health: health.clone(),
            file: active_file,
            active_base,
            end,
            last_seq,
            trimmed_through,
            keys: std::mem::take(&mut scan.keys),
            key_expiry: key_expiry.into(),
            meta: scan.meta,
            buf: Vec::new(),
            dirty_since: None,
            last_group: 0,
            last_sync: Duration::ZERO,
        };
        let thread = std::thread::Builder::new()
            .name("ssegate-log-writer".into())
            .spawn(move || w.run(rx))
            .map_err(unavailable)?;
        Ok(Self {
            index,
            head,
            tail,
            health,
            writer: Some(writer),
            thread: Some(thread),
            _lock: lock_file,
        })
    }

    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Vec<Appended>, LogError>>) -> Cmd,
    ) -> Result<Vec<Appended>, LogError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .as_ref()
            .ok_or(LogError::Closed)?
            .send(make(reply))
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// Marks `seq` damaged (found so by a read after start).
    fn damaged_at_read(&self, seq: u64, path: &Path, offset: u64) {
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        let Some(i) = index.segs.iter().rposition(|s| s.base <= seq) else {
            return;
        };
        let seg = &mut index.segs[i];
        let slot = (seq - seg.base) as usize;
        if seg.offsets.get(slot).is_some_and(|o| *o != MISSING) {
            seg.offsets[slot] = MISSING;
            drop(index);
            tracing::error!(
                file = %path.display(),
                offset,
                id = seq,
                "log: a damaged record (checksum mismatch) found by a read: it is never delivered; run `ssegate log check`, then `ssegate log repair`"
            );
            self.health.damaged(
                format!(
                    "{} at byte {offset}: id {seq} damaged (checksum mismatch)",
                    path.display()
                ),
                seq,
                1,
            );
        }
    }
}

/// Temporary files a crash may have left (a segment being created, meta being replaced).
fn leftovers(dir: &Path) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            name.ends_with(".tmp").then_some((name, p))
        })
        .collect()
}

struct Writer {
    dir: PathBuf,
    opts: LogOptions,
    fopts: FileOptions,
    roll_events: u64,
    index: Arc<RwLock<Index>>,
    head: watch::Sender<Position>,
    tail: Arc<Mutex<Tail>>,
    health: Arc<Health>,
    /// The newest segment, where appends go.
    file: Arc<File>,
    active_base: u64,
    /// Committed length of the newest segment.
    end: u64,
    last_seq: u64,
    trimmed_through: u64,
    keys: HashMap<String, KeyEntry>,
    key_expiry: VecDeque<(u64, String)>,
    meta: Meta,
    buf: Vec<u8>,
    /// With `SyncMode::Every`: when the oldest write not yet synced was made.
    dirty_since: Option<Instant>,
    /// Requests in the last group commit, and how long its sync took.
    last_group: usize,
    last_sync: Duration,
}

/// What one group commit changes, applied only once it is durable.
#[derive(Default)]
struct Staged {
    events: Vec<Arc<Event>>,
    /// (offset in the buffer, time) of each new event.
    slots: Vec<(u64, u64)>,
    keys: Vec<(String, KeyEntry)>,
    /// Keys whose records move into the newest segment (theirs is being deleted).
    carried: Vec<String>,
    /// Segments retention deletes.
    doomed: usize,
    last_seq: u64,
    trimmed_through: u64,
}

impl Writer {
    fn run(mut self, rx: std_mpsc::Receiver<Cmd>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        loop {
            let wait = if self.health.failed.load(Ordering::Relaxed) {
                Some(PROBE_EVERY)
            } else {
                match (self.fopts.sync, self.dirty_since) {
                    (SyncMode::Every(every), Some(since)) => {
                        Some(every.saturating_sub(since.elapsed()))
                    }
                    _ => None,
                }
            };
            let first = match wait {
                None => match rx.recv() {
                    Ok(cmd) => cmd,
                    Err(_) => break,
                },
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(cmd) => cmd,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        self.idle();
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(cmd) => group.push(cmd),
                    Err(_) => break,
                }
            }
            self.gather(&rx, &mut group);
            self.last_group = group.len();
            self.commit(&mut group);
        }
        if self.dirty_since.is_some() {
            let _ = self.file.sync_data();
        }
    }

    /// Fewer requests came than last time: their publishers are most likely still on their
    /// way back with the next ones (each waited for the last sync's answer). Waiting a
    /// fraction of a sync for them lets one sync serve them all instead of two serving
    /// halves — what makes a group grow with the number of concurrent publishers.
    fn gather(&self, rx: &std_mpsc::Receiver<Cmd>, group: &mut Vec<Cmd>) {
        if self.fopts.sync != SyncMode::Always || group.len() >= self.last_group {
            return;
        }
        let deadline = Instant::now() + (self.last_sync / 2).min(MAX_GATHER);
        while group.len() < self.last_group {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(cmd) => group.push(cmd),
                Err(_) => break,
            }
        }
    }

    /// Nothing to write: sync what `SyncMode::Every` left unsynced, or check whether a disk
    /// that refused writes takes them again.
    fn idle(&mut self) {
        if self.dirty_since.is_some() {
            if let Err(e) = self.sync() {
                self.fail(&e, 0);
            }
            return;
        }
        if self.health.failed.load(Ordering::Relaxed) && self.probe().is_ok() {
            self.recovered();
        }
    }

    /// Writes and syncs a scratch file as large as a big group commit.
    fn probe(&self) -> std::io::Result<()> {
        let path = self.dir.join("probe.tmp");
        let result = (|| {
            let file = File::create(&path)?;
            file.write_all_at(&vec![0u8; 256 << 10], 0)?;
            file.sync_data()
        })();
        let _ = std::fs::remove_file(&path);
        result
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        self.file.sync_data()?;
        self.last_sync = started.elapsed();
        self.health.syncs.fetch_add(1, Ordering::Relaxed);
        self.dirty_since = None;
        Ok(())
    }

    fn fail(&self, e: &std::io::Error, requests: usize) {
        let (reason, counter) = if full(e) {
            (
                format!("the log cannot append: the disk is full ({e}); it appends again by itself once space is free"),
                &self.health.failures_full,
            )
        } else {
            (
                format!("the log cannot append: {e}"),
                &self.health.failures_io,
            )
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !self.health.failed.swap(true, Ordering::Relaxed) {
            tracing::error!(dir = %self.dir.display(), error = %e, requests, "log: appends fail; publishes are refused until it can write again");
        }
        *lock(&self.health.cannot_append) = Some(reason);
    }

    fn recovered(&self) {
        if self.health.failed.swap(false, Ordering::Relaxed) {
            tracing::info!(dir = %self.dir.display(), "log: appends work again");
        }
        *lock(&self.health.cannot_append) = None;
    }

    fn forget_keys(&mut self, now_ms: u64) {
        while let Some((exp, _)) = self.key_expiry.front() {
            if *exp > now_ms {
                break;
            }
            let (exp, key) = self.key_expiry.pop_front().expect("front exists");
            if self.keys.get(&key).is_some_and(|e| e.exp == exp) {
                self.keys.remove(&key);
            }
        }
    }

    fn needs_roll(&self) -> bool {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let events = index.segs.back().map_or(0, |s| s.offsets.len()) as u64;
        events > 0 && (self.end >= self.fopts.segment_bytes || events >= self.roll_events)
    }

    /// Starts a new segment after the newest id; `meta.json` records that every id so far is
    /// in the segments before it.
    fn roll(&mut self) -> std::io::Result<()> {
        if self.dirty_since.is_some() {
            self.sync()?;
        }
        let base = self.last_seq + 1;
        let (path, file) = create_segment(&self.dir, base)?;
        self.meta.sealed_through = self.last_seq;
        write_meta(&self.dir, &self.meta)?;
        let file = Arc::new(file);
        self.file = file.clone();
        self.active_base = base;
        self.end = HEADER_LEN;
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .segs
            .push_back(Seg {
                base,
                path,
                file,
                offsets: Vec::new(),
                times: Vec::new(),
                end: HEADER_LEN,
            });
        self.health
            .disk_bytes
            .fetch_add(HEADER_LEN, Ordering::Relaxed);
        Ok(())
    }

    fn commit(&mut self, group: &mut Vec<Cmd>) {
        if self.needs_roll() {
            if let Err(e) = self.roll() {
                self.fail(&e, group.len());
                let error = self.append_error(&e);
                for cmd in group.drain(..) {
                    let _ = reply_of(cmd).send(Err(error.clone()));
                }
                return;
            }
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut staged = Staged {
            last_seq: self.last_seq,
            trimmed_through: self.trimmed_through,
            ..Staged::default()
        };
        let mut results = Vec::with_capacity(group.len());
        let mut now_max = 0;
        for cmd in group.iter_mut() {
            match cmd {
                Cmd::Append { items, now_ms, .. } => {
                    now_max = now_max.max(*now_ms);
                    self.forget_keys(*now_ms);
                    let items = std::mem::take(items);
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        out.push(self.stage_item(item, *now_ms, &mut buf, &mut staged));
                    }
                    results.push(out);
                }
                Cmd::Retain { now_ms, .. } => {
                    now_max = now_max.max(*now_ms);
                    self.forget_keys(*now_ms);
                    self.stage_age_retention(*now_ms, &mut buf, &mut staged);
                    results.push(Vec::new());
                }
            }
        }
        staged.trimmed_through = staged
            .trimmed_through
            .max(staged.last_seq.saturating_sub(self.opts.retention_events));
        self.stage_deletions(now_max, &mut buf, &mut staged);
        if buf.is_empty() && staged.doomed == 0 && staged.trimmed_through == self.trimmed_through {
            // Nothing changed (a retention pass with nothing to drop): no write, no sync.
            self.buf = buf;
            for (cmd, result) in group.drain(..).zip(results) {
                let _ = reply_of(cmd).send(Ok(result));
            }
            return;
        }
        Encoder { buf: &mut buf }.commit(staged.last_seq);

        let written = self.file.write_all_at(&buf, self.end).and_then(|()| {
            self.health.commits.fetch_add(1, Ordering::Relaxed);
            match self.fopts.sync {
                SyncMode::Always => self.sync(),
                SyncMode::Every(every) => {
                    let since = *self.dirty_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= every {
                        self.sync()
                    } else {
                        Ok(())
                    }
                }
            }
        });
        if let Err(e) = written {
            // Nothing of this group is acknowledged; cut what reached the file so the next
            // group starts at the committed end (it would overwrite it anyway).
            let _ = self.file.set_len(self.end);
            self.fail(&e, group.len());
            let error = self.append_error(&e);
            for cmd in group.drain(..) {
                let _ = reply_of(cmd).send(Err(error.clone()));
            }
            self.buf = buf;
            return;
        }
        if self.health.failed.load(Ordering::Relaxed) {
            self.recovered();
        }
        self.publish(&buf, staged);
        self.buf = buf;
        for (cmd, result) in group.drain(..).zip(results) {
            let _ = reply_of(cmd).send(Ok(result));
        }
    }

    fn append_error(&self, e: &std::io::Error) -> LogError {
        if full(e) {
            LogError::Full(format!(
                "the disk of the log is full ({e}); nothing was appended"
            ))
        } else {
            unavailable(format!("the log cannot append: {e}"))
        }
    }

    fn stage_item(
        &mut self,
        item: AppendItem,
        now_ms: u64,
        buf: &mut Vec<u8>,
        staged: &mut Staged,
    ) -> Appended {
        if let Some(key) = &item.key {
            let found = staged
                .keys
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, e)| e)
                .or_else(|| self.keys.get(key));
            if let Some(entry) = found {
                return Appended {
                    positions: entry.seqs.iter().copied().map(Position::seq).collect(),
                    duplicate: true,
                };
            }
        }
        let keyed = item.key.filter(|_| self.opts.dedupe_window_ms > 0);
        let exp = now_ms.saturating_add(self.opts.dedupe_window_ms);
        let count = item.events.len() as u32;
        let mut positions = Vec::with_capacity(item.events.len());
        for (i, event) in item.events.into_iter().enumerate() {
            staged.last_seq += 1;
            let pos = Position::seq(staged.last_seq);
            staged.slots.push((buf.len() as u64, event.time_ms));
            let key = keyed
                .as_deref()
                .filter(|_| i == 0)
                .map(|key| ItemKey { key, exp, count });
            Encoder { buf }.event(staged.last_seq, &event, key);
            positions.push(pos);
            staged.events.push(Arc::new(Event { pos, event }));
        }
        if let Some(key) = keyed {
            let entry = KeyEntry {
                exp,
                seqs: positions.iter().map(|p| p.lo).collect(),
                segment: self.active_base,
            };
            staged.keys.push((key, entry));
        }
        Appended {
            positions,
            duplicate: false,
        }
    }

    /// Retention by age: drops the oldest events published before the cutoff, and writes
    /// the mark so that a restart does not bring them back.
    fn stage_age_retention(&self, now_ms: u64, buf: &mut Vec<u8>, staged: &mut Staged) {
        if self.opts.retention_age_ms == 0 {
            return;
        }
        let cutoff = now_ms.saturating_sub(self.opts.retention_age_ms);
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let mut through = staged.trimmed_through;
        'segs: for seg in index.segs.iter() {
            if seg.last() <= through {
                continue;
            }
            let start = (through + 1 - seg.base) as usize;
            for (i, time) in seg.times.iter().enumerate().skip(start) {
                if seg.offsets[i] != MISSING && *time >= cutoff {
                    break 'segs;
                }
                through = seg.base + i as u64;
            }
        }
        if through > staged.trimmed_through {
            staged.trimmed_through = through;
            Encoder { buf }.trim(through);
        }
    }

    /// Segments whose every event retention dropped go; their live keys are written forward.
    fn stage_deletions(&mut self, now_ms: u64, buf: &mut Vec<u8>, staged: &mut Staged) {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let n = index.segs.len();
        let doomed: Vec<u64> = index
            .segs
            .iter()
            .take(n.saturating_sub(1))
            .take_while(|s| s.last() <= staged.trimmed_through)
            .map(|s| s.base)
            .collect();
        drop(index);
        if doomed.is_empty() {
            return;
        }
        for (key, entry) in &self.keys {
            if doomed.contains(&entry.segment) && entry.exp > now_ms {
                Encoder { buf }.key(key, entry.exp, &entry.seqs);
                staged.carried.push(key.clone());
            }
        }
        staged.doomed = doomed.len();
    }

    /// Makes a durable group visible: index, state, keys, tail, then the head.
    fn publish(&mut self, buf: &[u8], staged: Staged) {
        let start = self.end;
        self.end += buf.len() as u64;
        let mut removed = Vec::new();
        {
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            let active = index.segs.back_mut().expect("a segment");
            for (offset, time) in &staged.slots {
                active.offsets.push((start + offset) as u32);
                active.times.push(*time);
            }
            active.end = self.end;
            index.last_seq = staged.last_seq;
            index.trimmed_through = staged.trimmed_through;
            for event in &staged.events {
                index.channels.push(&event.event.channel, event.pos);
            }
            for _ in 0..staged.doomed {
                if let Some(seg) = index.segs.pop_front() {
                    removed.push(seg);
                }
            }
            if !removed.is_empty() {
                let oldest = Position::seq(index.trimmed_through + 1);
                index.channels.trim_before(oldest);
            }
        }
        self.health
            .disk_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        for seg in removed {
            match std::fs::remove_file(&seg.path) {
                Ok(()) => {
                    self.health.disk_bytes.fetch_sub(
                        seg.end.min(self.health.disk_bytes.load(Ordering::Relaxed)),
                        Ordering::Relaxed,
                    );
                }
                Err(e) => {
                    tracing::warn!(file = %seg.path.display(), error = %e, "log: cannot delete a segment retention dropped");
                }
            }
        }
        self.last_seq = staged.last_seq;
        if staged.trimmed_through > self.trimmed_through {
            self.health.forget_damage_through(staged.trimmed_through);
        }
        self.trimmed_through = staged.trimmed_through;
        for key in staged.carried {
            if let Some(entry) = self.keys.get_mut(&key) {
                entry.segment = self.active_base;
            }
        }
        for (key, entry) in staged.keys {
            self.key_expiry.push_back((entry.exp, key.clone()));
            self.keys.insert(key, entry);
        }
        {
            let mut tail = lock(&self.tail);
            for event in staged.events {
                tail.push(event);
            }
            tail.trim(self.trimmed_through);
        }
        let head = Position::seq(self.last_seq);
        self.head
            .send_if_modified(|h| std::mem::replace(h, head) != head);
    }
}

fn reply_of(cmd: Cmd) -> oneshot::Sender<Result<Vec<Appended>, LogError>> {
    match cmd {
        Cmd::Append { reply, .. } | Cmd::Retain { reply, .. } => reply,
    }
}

impl FileLog {
    /// The events at `positions` (in that order), from the tail when it holds them, else
    /// from the segments (off the async threads). Damaged records are left out.
    async fn fetch(&self, positions: &[Position]) -> Result<Vec<Arc<Event>>, LogError> {
        let mut found: Vec<Option<Arc<Event>>> = {
            let tail = lock(&self.tail);
            let first = tail.events.front().map_or(u64::MAX, |e| e.pos.lo);
            positions
                .iter()
                .map(|p| {
                    let i = p.lo.checked_sub(first)?;
                    tail.events.get(i as usize).cloned()
                })
                .collect()
        };
        let reads: Vec<(usize, RecordAt)> = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            positions
                .iter()
                .enumerate()
                .filter(|(i, _)| found[*i].is_none())
                .filter_map(|(i, p)| Some((i, index.record_of(p.lo)?)))
                .collect()
        };
        if !reads.is_empty() {
            let read = tokio::task::spawn_blocking(move || {
                reads
                    .into_iter()
                    .map(|(i, r)| Ok((i, r.read()?)))
                    .collect::<std::io::Result<Vec<_>>>()
            })
            .await
            .map_err(unavailable)?
            .map_err(|e| unavailable(format!("cannot read the log: {e}")))?;
            for (i, event) in read {
                found[i] = event.map(Arc::new);
            }
        }
        Ok(found.into_iter().flatten().collect())
    }
}

/// The newest committed events in memory: contiguous positions ending at the head, at most
/// `max_bytes` (approximately) of them.
#[derive(Default)]
struct Tail {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    max_bytes: usize,
}

impl Tail {
    fn push(&mut self, event: Arc<Event>) {
        self.bytes += event.event.approx_bytes();
        self.events.push_back(event);
    }

    /// Drops what retention removed (positions up to `trimmed_through`) and what exceeds the
    /// byte bound.
    fn trim(&mut self, trimmed_through: u64) {
        while let Some(front) = self.events.front() {
            if front.pos.lo > trimmed_through && self.bytes <= self.max_bytes {
                break;
            }
            self.bytes -= front.event.approx_bytes();
            self.events.pop_front();
        }
    }

    /// Index of the first event after `after`, if the tail holds every event after it.
    fn start_after(&self, after: Position) -> Option<usize> {
        let first = self.events.front()?.pos.lo;
        (after.hi == 0 && after.lo + 1 >= first).then(|| (after.lo + 1 - first) as usize)
    }
}

/// A read of the file, planned under the index lock and done without it.
struct Plan {
    file: Arc<File>,
    path: PathBuf,
    from: u64,
    to: u64,
    start: u64,
    end: u64,
    /// Offsets of the events `from..=to`.
    offsets: Vec<u32>,
}

#[async_trait]
impl EventLog for FileLog {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn append(&self, items: Vec<AppendItem>, now_ms: u64) -> Result<Vec<Appended>, LogError> {
        self.call(|reply| Cmd::Append {
            items,
            now_ms,
            reply,
        })
        .await
    }

    async fn read(
        &self,
        after: Position,
        max: usize,
        filter: Filter<'_>,
        wait: Option<Duration>,
    ) -> Result<ReadBatch, LogError> {
        if let Some(wait) = wait {
            wait_for_head(self.head.clone(), after, wait).await;
        }
        let mut batch = ReadBatch {
            next: after,
            ..ReadBatch::default()
        };
        let (last_seq, trimmed_through) = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            (index.last_seq, index.trimmed_through)
        };
        if after.hi != 0 || after.lo >= last_seq {
            batch.at_head = true;
            return Ok(batch);
        }
        if after.lo >= trimmed_through {
            let tail = lock(&self.tail);
            if let Some(start) = tail.start_after(after) {
                let mut scan_left = MAX_SCAN;
                let events = tail.events.range(start..);
                batch.at_head = fill(&mut batch, events, max, &mut scan_left, filter);
                return Ok(batch);
            }
        }
        // Skip ids whose records are damaged or lost: a gap says so.
        let plan = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            // Under the same lock as the plan: retention may have moved since the tail check.
            let trimmed_through = index.trimmed_through;
            let mut from = after.lo.max(trimmed_through) + 1;
            if after.lo < trimmed_through {
                batch.gap = Some(Gap {
                    oldest: (trimmed_through < index.last_seq)
                        .then(|| Position::seq(trimmed_through + 1)),
                    damaged: false,
                });
                batch.next = Position::seq(trimmed_through);
            }
            let skipped_from = from;
            while from <= index.last_seq && !index.present(from) {
                from += 1;
            }
            if from > skipped_from && skipped_from > index.trimmed_through {
                batch.gap = Some(Gap {
                    oldest: (from <= index.last_seq).then(|| Position::seq(from)),
                    damaged: true,
                });
                batch.next = Position::seq(from - 1);
            }
            if from > index.last_seq {
                batch.at_head = true;
                return Ok(batch);
            }
            let seg = index.seg_of(from).expect("a present id has a segment");
            let scan = max.clamp(1, MAX_SCAN) as u64;
            let first = (from - seg.base) as usize;
            let start = u64::from(seg.offsets[first]);
            let mut to = from;
            let mut end = seg.end;
            for (i, offset) in seg.offsets.iter().enumerate().skip(first + 1) {
                let offset = u64::from(*offset);
                if offset == u64::from(MISSING)
                    || to - from + 1 >= scan
                    || offset - start >= MAX_READ_BYTES
                {
                    end = if offset == u64::from(MISSING) {
                        // Up to the next present record (or the end): the records between
                        // are skipped by id.
                        seg.offsets[i..]
                            .iter()
                            .find(|o| **o != MISSING)
                            .map_or(seg.end, |o| u64::from(*o))
                    } else {
                        offset
                    };
                    break;
                }
                to = seg.base + i as u64;
            }
            let offsets = seg.offsets[first..=(to - seg.base) as usize].to_vec();
            Plan {
                file: seg.file.clone(),
                path: seg.path.clone(),
                from,
                to,
                start,
                end,
                offsets,
            }
        };
        let Plan {
            file,
            path,
            from,
            to,
            start,
            end,
            offsets,
        } = plan;
        let bytes = tokio::task::spawn_blocking(move || {
            let mut bytes = vec![0u8; (end - start) as usize];
            file.read_exact_at(&mut bytes, start).map(|()| bytes)
        })
        .await
        .map_err(unavailable)?
        .map_err(|e| unavailable(format!("cannot read {}: {e}", path.display())))?;
        let mut events = Vec::with_capacity((to - from + 1) as usize);
        let mut at = 0usize;
        let mut want = from;
        while want <= to && at < bytes.len() {
            match format::frame(&bytes[at..]) {
                format::Frame::Valid { record, len } => {
                    if let format::Record::Event { seq, body, .. } = record {
                        if seq == want {
                            match format::decode_event(body) {
                                Some(event) => events.push(Event {
                                    pos: Position::seq(seq),
                                    event,
                                }),
                                None => {
                                    self.damaged_at_read(seq, &path, start + at as u64);
                                    break;
                                }
                            }
                            want += 1;
                        }
                    }
                    at += len;
                }
                _ => {
                    // A damaged record between events (a commit, a key) costs no event:
                    // go on at the next event's record; only a damaged event is missing.
                    let next = u64::from(offsets[(want - from) as usize]) - start;
                    if next as usize > at {
                        at = next as usize;
                        continue;
                    }
                    self.damaged_at_read(want, &path, start + at as u64);
                    break;
                }
            }
        }
        let complete = want > to;
        let mut scan_left = MAX_SCAN;
        let all = fill(&mut batch, events, max, &mut scan_left, filter);
        batch.at_head = all && complete && to >= last_seq;
        Ok(batch)
    }

    async fn history(&self, q: HistoryQuery<'_>, filter: Filter<'_>) -> Result<History, LogError> {
        // Candidates are taken newest first, a batch at a time, until `limit` pass `filter`
        // or HISTORY_SCAN were looked at.
        let mut history = History::default();
        let mut through = q.through;
        let mut looked = 0;
        loop {
            if q.limit == 0 {
                break;
            }
            let want = (q.limit - history.events.len())
                .max(32)
                .min(HISTORY_SCAN - looked);
            let (positions, more) = {
                let index = self.index.read().unwrap_or_else(|p| p.into_inner());
                let after = q.after.max(Position::seq(index.trimmed_through));
                let range = HistoryQuery {
                    after,
                    through,
                    ..q
                };
                let mut candidates = index.channels.newest_first(&range);
                let positions: Vec<Position> = candidates.by_ref().take(want).collect();
                (positions, candidates.next().is_some())
            };
            let Some(oldest) = positions.last().copied() else {
                break;
            };
            looked += positions.len();
            let mut fetched = self.fetch(&positions).await?.into_iter();
            for event in fetched.by_ref() {
                history.looked_back_to = Some(event.pos);
                if filter(&event) {
                    history.events.push(event);
                    if history.events.len() == q.limit {
                        break;
                    }
                }
            }
            if history.events.len() == q.limit || looked >= HISTORY_SCAN {
                history.more = more || fetched.next().is_some();
                if history.more && history.events.len() < q.limit {
                    history.looked_back_to = Some(oldest);
                }
                break;
            }
            if !more {
                break;
            }
            through = Position::seq(oldest.lo - 1);
        }
        history.events.reverse();
        Ok(history)
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        Ok(Bounds {
            head: Position::seq(index.last_seq),
            oldest: (index.trimmed_through < index.last_seq)
                .then(|| Position::seq(index.trimmed_through + 1)),
        })
    }

    async fn enforce_retention(&self, now_ms: u64) -> Result<(), LogError> {
        self.call(|reply| Cmd::Retain { now_ms, reply }).await?;
        Ok(())
    }

    fn health(&self) -> LogHealth {
        let h = &self.health;
        let damage = lock(&h.damage);
        LogHealth {
            cannot_append: lock(&h.cannot_append).clone(),
            damaged: (!damage.is_empty()).then(|| {
                format!(
                    "the log has damaged records, never delivered (readers get a gap): {}{}; run `ssegate log check`, then `ssegate log repair`",
                    damage.iter().take(3).map(|d| d.2.as_str()).collect::<Vec<_>>().join("; "),
                    if damage.len() > 3 { format!(" and {} more", damage.len() - 3) } else { String::new() }
                )
            }),
            file: Some(FileStats {
                commits: h.commits.load(Ordering::Relaxed),
                syncs: h.syncs.load(Ordering::Relaxed),
                torn_bytes: h.torn_bytes.load(Ordering::Relaxed),
                damaged_events: h.damaged_events.load(Ordering::Relaxed),
                append_failures_full: h.failures_full.load(Ordering::Relaxed),
                append_failures_io: h.failures_io.load(Ordering::Relaxed),
                disk_bytes: h.disk_bytes.load(Ordering::Relaxed),
            }),
        }
    }
}
