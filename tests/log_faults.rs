//! The segment file log under faults, each against the real binary on a real data directory
//! (tests/common): `kill -9` during concurrent publishers, a torn tail, a damaged record,
//! missing or truncated segment files, a full disk, and `log.sync` on an interval.
//!
//! The files are changed the way a crash, a bad disk or an operator would: only through the
//! framing the contract states (`log/<20-digit first id>.seg`, a 32-byte header, then records
//! `len u32 LE | crc32c u32 LE | body`), never through the server's own code.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);
const HEADER_LEN: usize = 32;
const FRAME_LEN: usize = 8;

// ---------------------------------------------------------------------------------------------
// Files

fn data_dir(server: &Server) -> PathBuf {
    server.dir.join("data")
}

fn log_dir(server: &Server) -> PathBuf {
    data_dir(server).join("log")
}

/// The segment files of a log directory, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .is_some_and(|b| b.len() == 20 && b.bytes().all(|c| c.is_ascii_digit()))
        })
        .collect();
    out.sort();
    out
}

fn newest_segment(server: &Server) -> PathBuf {
    let segs = segments(&log_dir(server));
    segs.last()
        .unwrap_or_else(|| {
            panic!(
                "no segment file in {}: {:?}",
                log_dir(server).display(),
                listing(&data_dir(server))
            )
        })
        .clone()
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Every file under `dir`, recursively: relative path → (length, crc32c of the content).
/// `LOCK` is left out (its content is not the log's).
fn listing(dir: &Path) -> BTreeMap<String, (u64, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, u32)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.file_name().is_some_and(|n| n != "LOCK") {
                let bytes = std::fs::read(&path).unwrap();
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, (bytes.len() as u64, crc32c::crc32c(&bytes)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The records of a segment as the contract frames them: `(offset, length with the frame)`.
/// Checks the walk covers the whole file (the test reads the format the contract states).
fn frames(path: &Path) -> Vec<(usize, usize)> {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() >= HEADER_LEN,
        "{} is shorter than a header",
        path.display()
    );
    assert_eq!(
        &bytes[..8],
        b"SSEGLOG1",
        "{} starts with the magic",
        path.display()
    );
    let mut out = Vec::new();
    let mut pos = HEADER_LEN;
    while pos + FRAME_LEN <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap());
        let Some(body) = bytes.get(pos + FRAME_LEN..pos + FRAME_LEN + len) else {
            break;
        };
        if len == 0 || crc32c::crc32c(body) != crc {
            break;
        }
        out.push((pos, FRAME_LEN + len));
        pos += FRAME_LEN + len;
    }
    assert_eq!(
        pos,
        bytes.len(),
        "{}: records framed `len | crc32c | body` cover the whole file",
        path.display()
    );
    out
}

/// The record of `path` whose body holds `marker`: `(offset, length with the frame)`.
fn record_with(path: &Path, marker: &str) -> (usize, usize) {
    let bytes = std::fs::read(path).unwrap();
    let found: Vec<(usize, usize)> = frames(path)
        .into_iter()
        .filter(|&(o, l)| {
            bytes[o..o + l]
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
        })
        .collect();
    assert_eq!(found.len(), 1, "one record holds {marker:?}: {found:?}");
    found[0]
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// XORs `len` bytes at `at` with 0xA5 (every byte changes).
fn flip(path: &Path, at: usize, len: usize) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, at as u64).unwrap();
    for b in &mut buf {
        *b ^= 0xA5;
    }
    f.write_all_at(&buf, at as u64).unwrap();
    f.sync_all().unwrap();
}

fn truncate(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
    f.sync_all().unwrap();
}

// ---------------------------------------------------------------------------------------------
// The server

/// `ssegate` with none of the tests' own `SSEGATE_*` environment, and the test secret.
fn ssegate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ssegate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SSEGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("SSEGATE_AUTH__JWT_SECRET", SECRET);
    cmd
}

/// `ssegate log <action> --data-dir D`: exit code and stdout + stderr.
fn log_cli(action: &str, data: &Path) -> (i32, String) {
    let out = ssegate()
        .args(["log", action, "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Starts `ssegate serve` on `data` expecting it to refuse: its exit status (None when it
/// was still running after `within`, then killed), its stdout and stderr.
fn serve_refusal(
    data: &Path,
    env: &[(&str, &str)],
    within: Duration,
) -> (Option<ExitStatus>, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("stdout");
    let err_path = tmp.path().join("stderr");
    let mut child = ssegate()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .envs(
            env.iter()
                .map(|(k, v)| (format!("SSEGATE_{k}"), v.to_string())),
        )
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| {
        let mut s = String::new();
        let _ = std::fs::File::open(p).and_then(|mut f| f.read_to_string(&mut s));
        s
    };
    (status, read(&out_path), read(&err_path))
}

async fn readyz(server: &Server) -> (u16, Value) {
    let (status, _, body) = get(&format!("{}/readyz", server.url), &[]).await;
    (status, body)
}

/// One sample of `/metrics`; panics with the metrics text when it is missing.
async fn metric_of(server: &Server, sample: &str) -> f64 {
    let text = metrics_text(server).await;
    metric(&text, sample).unwrap_or_else(|| {
        let near: Vec<&str> = text.lines().filter(|l| l.contains("ssegate_log")).collect();
        panic!(
            "no metric {sample}; the log's metrics are:\n{}",
            near.join("\n")
        )
    })
}

/// The lines of the server's log that contain `word` (case-insensitive).
fn log_lines(server: &Server, word: &str) -> Vec<String> {
    let word = word.to_lowercase();
    server
        .log_text()
        .lines()
        .filter(|l| l.to_lowercase().contains(&word))
        .map(str::to_owned)
        .collect()
}

/// Whether a log line carries the field `offset` with this value (text or JSON format).
fn has_offset(line: &str, offset: u64) -> bool {
    line.contains(&format!("offset={offset}")) || line.contains(&format!("\"offset\":{offset}"))
}

/// Publishes `n` events on `channel`, one request each (so one group commit each), with data
/// `{"m": "<tag>-<i>"}`; returns their ids.
async fn publish_each(server: &Server, channel: &str, tag: &str, n: usize) -> Vec<String> {
    publish_batches(server, channel, tag, n, 1).await
}

/// Publishes `n` events on `channel` in batches of `batch` (one group commit each), with data
/// `{"m": "<tag>-<i>"}`; returns their ids.
async fn publish_batches(
    server: &Server,
    channel: &str,
    tag: &str,
    n: usize,
    batch: usize,
) -> Vec<String> {
    let p = publisher();
    let mut ids = Vec::with_capacity(n);
    for start in (0..n).step_by(batch) {
        let events: Vec<Value> = (start..(start + batch).min(n))
            .map(|i| json!({"channel": channel, "type": "t", "data": {"m": marker(tag, i)}}))
            .collect();
        let (status, body) = server.publish(&p, &Value::Array(events)).await;
        assert_eq!(status, 200, "{body}");
        ids.extend(published_ids(&body));
    }
    ids
}

fn marker(tag: &str, i: usize) -> String {
    format!("{tag}-{i:05}")
}

/// Everything a stream sends until the event with id `last` (control events included).
async fn read_until(sse: &mut Sse, last: &str, within: Duration) -> Vec<Ev> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sse.next_or_end(left).await {
            Next::Event(e) => {
                let done = e.id == last;
                out.push(e);
                if done {
                    return out;
                }
            }
            other => panic!(
                "waiting for id {last}: got {} events ({:?} … {:?}), then {other:?}",
                out.len(),
                out.first().map(|e: &Ev| (&e.id, &e.event)),
                out.last().map(|e: &Ev| (&e.id, &e.event))
            ),
        }
    }
}

/// Opens a stream on `channels` resuming after `from`.
async fn resume(server: &Server, channels: &[&str], from: &str) -> Sse {
    let sub = token("reader", &["**"], &[]);
    Sse::open(
        &server.stream_url(channels),
        &[bearer(&sub), last_event_id(from)],
    )
    .await
    .0
}

/// Reads `channel` from `from` up to the event with id `last`: the events with an id.
async fn read_range(server: &Server, channel: &str, from: &str, last: &str) -> Vec<Ev> {
    let mut sse = resume(server, &[channel], from).await;
    let got = read_until(&mut sse, last, T).await;
    got.into_iter().filter(|e| !e.id.is_empty()).collect()
}

async fn publish_one(server: &Server, channel: &str, data: Value) -> String {
    let (status, body) = server
        .publish(
            &publisher(),
            &json!({"channel": channel, "type": "t", "data": data}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    published_ids(&body).remove(0)
}

fn next_id(id: &str) -> String {
    (id.parse::<u64>().unwrap() + 1).to_string()
}

// ---------------------------------------------------------------------------------------------
// Concurrent publishers killed with -9

/// What one publisher had acknowledged, and how many requests it started.
struct Published {
    w: u64,
    acked: Vec<(u64, u64)>,
    attempts: u64,
}

/// 8 publishers on `k:<w>`, each publishing as fast as it is acknowledged, until the server
/// dies or `stop` is set.
fn start_publishers(
    server: &Server,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Published>> {
    let p = publisher();
    (0..8u64)
        .map(|w| {
            let (url, p, stop) = (server.url.clone(), p.clone(), stop.clone());
            tokio::spawn(async move {
                let client = http();
                let pad = "p".repeat(200);
                let mut out = Published {
                    w,
                    acked: Vec::new(),
                    attempts: 0,
                };
                while !stop.load(Ordering::Relaxed) {
                    let i = out.attempts;
                    out.attempts += 1;
                    let res = client
                        .post(format!("{url}/v1/publish"))
                        .bearer_auth(&p)
                        .json(&json!({"channel": format!("k:{w}"), "type": "t", "data": {"w": w, "i": i, "pad": pad}}))
                        .send()
                        .await;
                    // A request in flight at the kill fails: it was never acknowledged.
                    let Ok(res) = res else { break };
                    let status = res.status().as_u16();
                    let Ok(body) = res.json::<Value>().await else {
                        break;
                    };
                    assert_eq!(status, 200, "publisher {w}: {body}");
                    let id: u64 = body["ids"][0].as_str().unwrap().parse().unwrap();
                    out.acked.push((id, i));
                }
                out
            })
        })
        .collect()
}

/// After a restart: reads every event of `k:*` from 0 and checks every acknowledged event is
/// there exactly once, in order, with its id and content; anything else is a complete event
/// one publisher sent but never got an answer for.
async fn check_acknowledged_survived(server: &Server, published: &[Published]) {
    let acked: HashMap<u64, (u64, u64)> = published
        .iter()
        .flat_map(|p| p.acked.iter().map(move |&(id, i)| (id, (p.w, i))))
        .collect();
    let total: usize = published.iter().map(|p| p.acked.len()).sum();
    assert_eq!(acked.len(), total, "no id was acknowledged twice");
    assert!(total > 0, "something was acknowledged");
    let head = publish_one(server, "k:end", json!("end")).await;
    let got = read_range(server, "k:*", "0", &head).await;
    let got_ids: Vec<u64> = got.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(
        got_ids.windows(2).all(|w| w[0] < w[1]),
        "ids strictly increase (in order, none twice)"
    );
    assert_eq!(
        got_ids,
        (1..=got_ids.len() as u64).collect::<Vec<_>>(),
        "ids are 1..=head with no hole"
    );
    let pad = "p".repeat(200);
    let mut seen = HashSet::new();
    let mut unacked = Vec::new();
    for e in &got[..got.len() - 1] {
        let id: u64 = e.id.parse().unwrap();
        let env = envelope(e);
        let data = &env["data"];
        let (w, i) = (
            data["w"].as_u64().unwrap_or(u64::MAX),
            data["i"].as_u64().unwrap_or(u64::MAX),
        );
        assert!(
            w < 8
                && env["channel"] == format!("k:{w}")
                && env["type"] == "t"
                && data["pad"] == pad.as_str(),
            "event {id} is a complete event of a publisher: {env}"
        );
        assert!(
            seen.insert((w, i)),
            "({w}, {i}) stored twice (again at {id})"
        );
        match acked.get(&id) {
            Some(&want) => assert_eq!((w, i), want, "event {id} has the acknowledged content"),
            None => {
                assert!(
                    i < published[w as usize].attempts,
                    "event {id} ({w}, {i}) was never sent"
                );
                unacked.push((id, w, i));
            }
        }
    }
    let missing: Vec<&u64> = acked.keys().filter(|id| !got_ids.contains(id)).collect();
    assert!(missing.is_empty(), "acknowledged events lost: {missing:?}");
    assert!(
        unacked.len() <= 8,
        "at most one unacknowledged (in flight) event per publisher: {unacked:?}"
    );
    println!(
        "{} acknowledged, {} stored without an answer {:?}, head {head}",
        total,
        unacked.len(),
        unacked
    );
}

/// Runs the 8 publishers for `secs`, reads the commit/sync counters, kills the server with -9
/// and returns what was published and the two counters.
async fn publish_then_kill(server: &mut Server, secs: u64) -> (Vec<Published>, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = start_publishers(server, stop.clone());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    // Both from one scrape.
    let text = metrics_text(server).await;
    let counter =
        |name: &str| metric(&text, name).unwrap_or_else(|| panic!("no metric {name} in:\n{text}"));
    let (commits, syncs) = (
        counter("ssegate_log_commits_total"),
        counter("ssegate_log_syncs_total"),
    );
    // Kill while the publishers are still going.
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut published = Vec::new();
    for t in tasks {
        published.push(t.await.unwrap());
    }
    (published, commits, syncs)
}

/// Point 2: `kill -9` during 8 concurrent publishers loses nothing acknowledged, and with
/// `log.sync = "always"` every group commit is synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_8_publishers_keeps_every_acknowledged_event_once_in_order() {
    let mut server = Server::start(&[]);
    let (published, commits, syncs) = publish_then_kill(&mut server, 2).await;
    let total: usize = published.iter().map(|p| p.acked.len()).sum();
    println!("sync=always: {total} acknowledged, {commits} commits, {syncs} syncs");
    assert!(commits > 0.0, "commits counted");
    // The scrape may fall between a commit's write and its sync: one group in flight.
    assert!(
        syncs + 1.0 >= commits,
        "sync=always: every commit synced ({syncs} syncs, {commits} commits)"
    );
    server.kill9_and_restart();
    check_acknowledged_survived(&server, &published).await;
}

/// Point 7: `log.sync = "5ms"` acknowledges after the write and syncs at most every 5 ms:
/// far fewer syncs than commits, and a process crash (`kill -9`, not a power loss) loses
/// nothing acknowledged (the writes are in the page cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_every_5ms_acknowledges_before_the_sync_and_survives_kill_9() {
    let mut server = Server::start(&[("LOG__SYNC", "5ms")]);
    let (published, commits, syncs) = publish_then_kill(&mut server, 2).await;
    let total: usize = published.iter().map(|p| p.acked.len()).sum();
    println!("sync=5ms: {total} acknowledged, {commits} commits, {syncs} syncs");
    assert!(total > 100, "publishes acknowledged: {total}");
    assert!(
        syncs < commits,
        "sync=5ms: fewer syncs than commits ({syncs} syncs, {commits} commits)"
    );
    server.kill9_and_restart();
    check_acknowledged_survived(&server, &published).await;
}

// ---------------------------------------------------------------------------------------------
// Torn tail

enum Tail {
    /// The first bytes of the last event record, as a crash in the middle of its write
    /// leaves them.
    PartialRecord,
    Zeros,
    Random,
}

/// Point 3: bytes after the last record of the newest segment (a write a crash tore) are
/// cut at start with one log line naming the file and offset, counted in
/// `ssegate_log_torn_bytes_total`; every event is there and ids continue.
async fn torn_tail(kind: Tail) {
    let mut server = Server::start(&[]);
    let mut ids = publish_each(&server, "c", "torn", 40).await;
    ids.extend(server.publish_many(&publisher(), "c", 20, 10).await);
    server.kill9();
    let seg = newest_segment(&server);
    let len = std::fs::metadata(&seg).unwrap().len();
    let tail: Vec<u8> = match kind {
        Tail::PartialRecord => {
            let bytes = std::fs::read(&seg).unwrap();
            // The last record long enough to be an event (a commit record is short).
            let &(o, l) = frames(&seg)
                .iter()
                .rev()
                .find(|&&(_, l)| l >= 40)
                .expect("an event record");
            bytes[o..o + l - 7].to_vec()
        }
        Tail::Zeros => vec![0; 4096],
        Tail::Random => (0..3000).map(|_| rand::random::<u8>()).collect(),
    };
    append(&seg, &tail);
    server.kill9_and_restart();

    let torn = log_lines(&server, "torn");
    assert_eq!(torn.len(), 1, "one log line about the torn tail: {torn:#?}");
    assert!(
        torn[0].contains(&file_name(&seg)) && has_offset(&torn[0], len),
        "the line names {} and offset {len}: {}",
        file_name(&seg),
        torn[0]
    );
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        len,
        "the torn bytes were cut off"
    );
    assert_eq!(
        metric_of(&server, "ssegate_log_torn_bytes_total").await,
        tail.len() as f64,
        "ssegate_log_torn_bytes_total counts the bytes cut"
    );
    let got = read_range(&server, "c", "0", ids.last().unwrap()).await;
    assert_eq!(common::ids(&got), ids, "every event there, in order");
    for (i, e) in got.iter().take(40).enumerate() {
        assert_eq!(envelope(e)["data"]["m"], marker("torn", i));
    }
    let next = publish_one(&server, "c", json!("after")).await;
    assert_eq!(next, next_id(ids.last().unwrap()), "ids continue");
    let (status, body) = readyz(&server).await;
    assert_eq!((status, &body["status"]), (200, &json!("ready")), "{body}");
    // The new event is durable where the tail was cut.
    server.kill9_and_restart();
    let got = read_range(&server, "c", "0", &next).await;
    assert_eq!(got.len(), ids.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_of_a_partial_record_is_cut_at_start() {
    torn_tail(Tail::PartialRecord).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_of_4_kib_of_zeros_is_cut_at_start() {
    torn_tail(Tail::Zeros).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_of_random_bytes_is_cut_at_start() {
    torn_tail(Tail::Random).await;
}

// ---------------------------------------------------------------------------------------------
// A damaged record

enum Damage {
    /// 4 bytes in the middle of the record, in the newest segment.
    Middle,
    /// The record's last 8 bytes, in the newest segment.
    End,
    /// 4 bytes in the middle of the record, in a sealed (older) segment.
    Sealed,
    /// The record's length field (its first 4 bytes), in the newest segment.
    Length,
}

/// Reads `d` from 20 up to `last`: events 21..=29, a gap over the damaged 30, then 31..
async fn expect_gap_over_30(server: &Server, last: &str, reason: Option<&str>) {
    let mut sse = resume(server, &["d"], "20").await;
    let got = read_until(&mut sse, last, T).await;
    let gaps: Vec<&Ev> = got.iter().filter(|e| e.event == "gap").collect();
    assert_eq!(gaps.len(), 1, "one gap: {got:#?}");
    let at = got.iter().position(|e| e.event == "gap").unwrap();
    let before: Vec<String> = got[..at]
        .iter()
        .filter(|e| !e.id.is_empty())
        .map(|e| e.id.clone())
        .collect();
    let after: Vec<String> = got[at + 1..]
        .iter()
        .filter(|e| !e.id.is_empty())
        .map(|e| e.id.clone())
        .collect();
    let want_before: Vec<String> = (21..30).map(|i: u64| i.to_string()).collect();
    assert_eq!(
        before, want_before,
        "the events before the damage, then the gap"
    );
    let want_after: Vec<String> = (31..=last.parse::<u64>().unwrap())
        .map(|i| i.to_string())
        .collect();
    assert_eq!(
        after, want_after,
        "after the gap, the events after the damage"
    );
    let gap: Value = serde_json::from_str(&gaps[0].data).unwrap();
    assert_eq!(gap["oldest_id"], "31", "gap data: {gap}");
    assert!(
        !gap["last_event_id"].is_null(),
        "gap data names last_event_id: {gap}"
    );
    if let Some(reason) = reason {
        assert_eq!(gap["reason"], reason, "gap data: {gap}");
    }
    for e in &got {
        let data: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
        assert!(
            e.id != "30" && (e.event == "gap" || data["id"] != "30"),
            "the damaged event is never delivered: {e:?}"
        );
    }
}

/// Point 4: a record damaged in place (not the tail) is reported and never delivered:
/// readers get a gap over it; `log check` finds it, `log repair` accepts the loss.
async fn damaged_record(how: Damage) {
    let (env, n): (&[(&str, &str)], usize) = match how {
        Damage::Sealed => (&[ROLL_EVERY_256], 300),
        _ => (&[], 60),
    };
    let mut server = Server::start(env);
    let ids = match how {
        Damage::Sealed => publish_batches(&server, "d", "dmg", n, 10).await,
        _ => publish_each(&server, "d", "dmg", n).await,
    };
    assert_eq!(ids.first().map(String::as_str), Some("1"));
    let last = n.to_string();
    assert_eq!(ids.last(), Some(&last));
    server.kill9();
    let segs = segments(&log_dir(&server));
    // Event 30 is marker dmg-00029 (data {"m": …}).
    let want = marker("dmg", 29);
    let seg = segs
        .iter()
        .find(|s| {
            let bytes = std::fs::read(s).unwrap();
            bytes.windows(want.len()).any(|w| w == want.as_bytes())
        })
        .expect("a segment holds event 30")
        .clone();
    match how {
        Damage::Sealed => assert_ne!(Some(&seg), segs.last(), "event 30 is in a sealed segment"),
        _ => assert_eq!(segs.len(), 1),
    }
    let (o, l) = record_with(&seg, &want);
    match how {
        Damage::Middle | Damage::Sealed => flip(&seg, o + l / 2, 4),
        Damage::End => flip(&seg, o + l - 8, 8),
        Damage::Length => flip(&seg, o, 4),
    }
    server.kill9_and_restart();

    let damaged = log_lines(&server, "damaged");
    assert_eq!(
        damaged.len(),
        1,
        "one log line about the damage: {damaged:#?}"
    );
    assert!(
        damaged[0].contains(&file_name(&seg)) && has_offset(&damaged[0], o as u64),
        "the line names {} and offset {o}: {}",
        file_name(&seg),
        damaged[0]
    );
    let events = metric_of(&server, "ssegate_log_damaged_events").await;
    assert!(events >= 1.0, "ssegate_log_damaged_events {events}");
    let (status, body) = readyz(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("damaged")),
        "{body}"
    );
    expect_gap_over_30(&server, &last, Some("damaged")).await;
    // The channel's history (its index rebuilt at start) leaves the damaged record out too.
    let sub = token("u", &["d"], &[]);
    let url = format!("{}/v1/channels/d/history?limit=1000", server.url);
    let (status, _, body) = get(&url, &[bearer(&sub)]).await;
    assert_eq!(status, 200, "{body}");
    let got: Vec<&str> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| *id != "30")
        .collect();
    assert_eq!(got, want, "history over a damaged record");
    // A read does not report the same damage again.
    assert_eq!(
        log_lines(&server, "damaged").len(),
        1,
        "{}",
        server.log_text()
    );

    server.kill9();
    let data = data_dir(&server);
    let (code, text) = log_cli("check", &data);
    assert_eq!(code, 1, "log check finds the damage:\n{text}");
    assert!(
        text.contains(&file_name(&seg)),
        "log check names the file:\n{text}"
    );
    let (code, text) = log_cli("repair", &data);
    assert_eq!(code, 0, "log repair:\n{text}");
    let (code, text) = log_cli("check", &data);
    assert_eq!(code, 0, "log check after repair:\n{text}");

    server.kill9_and_restart();
    let (status, body) = readyz(&server).await;
    assert_eq!((status, &body["status"]), (200, &json!("ready")), "{body}");
    let next = publish_one(&server, "d", json!("after")).await;
    assert_eq!(next, next_id(&last), "ids continue");
    // The damaged id stays a gap.
    expect_gap_over_30(&server, &next, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_damaged_in_the_middle_is_never_delivered_and_repair_accepts_the_loss() {
    damaged_record(Damage::Middle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_damaged_in_a_sealed_segment_is_never_delivered_and_repair_accepts_the_loss() {
    damaged_record(Damage::Sealed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_length_field_is_damaged_is_never_delivered_and_repair_accepts_the_loss() {
    damaged_record(Damage::Length).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_last_8_bytes_are_damaged_is_never_delivered_and_repair_accepts_the_loss() {
    damaged_record(Damage::End).await;
}

/// No events kept in memory: every read goes to the segment file.
const NO_TAIL: (&str, &str) = ("LOG__FILE_CACHE_MB", "0");

/// The lines of the server's log that contain `word`, once there are `n` of them (a line is
/// written before the read that found it answers, but the log file may lag a moment).
async fn log_lines_n(server: &Server, word: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let lines = log_lines(server, word);
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Point 4, after start: a record damaged while the server runs (nothing cached, so the read
/// meets the bytes) is caught by its checksum at read time: reported once (log line with the
/// file and offset, metric, `/readyz` degraded) and never delivered — a gap over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_damaged_while_the_server_runs_is_reported_by_the_read_and_never_delivered() {
    let server = Server::start(&[NO_TAIL]);
    let ids = publish_each(&server, "d", "dmg", 50).await;
    assert_eq!(ids, (1..=50).map(|i| i.to_string()).collect::<Vec<_>>());
    let seg = newest_segment(&server);
    assert_eq!(segments(&log_dir(&server)).len(), 1);
    // Event 30 is marker dmg-00029.
    let (o, l) = record_with(&seg, &marker("dmg", 29));
    flip(&seg, o + l / 2, 4);
    let (status, body) = readyz(&server).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("ready")),
        "before a read meets the damage: {body}"
    );

    expect_gap_over_30(&server, "50", Some("damaged")).await;

    let damaged = log_lines_n(&server, "damaged", 1).await;
    assert_eq!(
        damaged.len(),
        1,
        "one log line about the damage: {damaged:#?}"
    );
    assert!(
        damaged[0].contains("ERROR")
            && damaged[0].contains(&file_name(&seg))
            && has_offset(&damaged[0], o as u64),
        "an ERROR line naming {} and offset {o}: {}",
        file_name(&seg),
        damaged[0]
    );
    let events = metric_of(&server, "ssegate_log_damaged_events").await;
    assert!(events >= 1.0, "ssegate_log_damaged_events {events}");
    let (status, body) = readyz(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("damaged")),
        "{body}"
    );
    // Another reader gets the same gap; the damage is not reported again.
    expect_gap_over_30(&server, "50", Some("damaged")).await;
    assert_eq!(
        log_lines(&server, "damaged").len(),
        1,
        "{}",
        server.log_text()
    );
    assert_eq!(
        metric_of(&server, "ssegate_log_damaged_events").await,
        events,
        "counted once"
    );
    // Publishing goes on after the damage.
    let next = publish_one(&server, "d", json!("after")).await;
    assert_eq!(next, "51");
}

/// A damaged COMMIT record (the short record ending a group commit) between two events,
/// while the server runs: the read skips it, no event is lost and there is no gap — nor after
/// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_record_damaged_while_the_server_runs_costs_no_event() {
    let mut server = Server::start(&[NO_TAIL]);
    let ids = publish_each(&server, "d", "dmg", 50).await;
    assert_eq!(ids.last().map(String::as_str), Some("50"));
    let seg = newest_segment(&server);
    // One group per publish: event 30's record, then its COMMIT (kind 4, last id u64).
    let (o, l) = record_with(&seg, &marker("dmg", 29));
    let all = frames(&seg);
    let at = all.iter().position(|&(fo, _)| fo == o).unwrap();
    let (co, cl) = all[at + 1];
    assert_eq!(co, o + l);
    let bytes = std::fs::read(&seg).unwrap();
    assert_eq!(
        (cl, bytes[co + FRAME_LEN]),
        (FRAME_LEN + 9, 4),
        "a COMMIT record follows event 30"
    );
    assert_eq!(
        u64::from_le_bytes(bytes[co + FRAME_LEN + 1..co + cl].try_into().unwrap()),
        30,
        "the COMMIT names id 30"
    );
    // 4 bytes of its id.
    flip(&seg, co + FRAME_LEN + 1, 4);

    let check = |got: Vec<Ev>| {
        let gaps: Vec<&Ev> = got.iter().filter(|e| e.event == "gap").collect();
        assert!(gaps.is_empty(), "no gap: {gaps:#?}");
        let events: Vec<Ev> = got.into_iter().filter(|e| !e.id.is_empty()).collect();
        let want: Vec<String> = (21..=50).map(|i: u64| i.to_string()).collect();
        assert_eq!(common::ids(&events), want, "every event after 20");
        for (i, e) in events.iter().enumerate() {
            assert_eq!(envelope(e)["data"]["m"], marker("dmg", 20 + i));
        }
    };
    let mut sse = resume(&server, &["d"], "20").await;
    check(read_until(&mut sse, "50", T).await);
    drop(sse);
    let (status, body) = readyz(&server).await;
    println!("/readyz after reading over a damaged COMMIT: {status} {body}");
    assert_eq!(status, 200, "{body}");

    server.kill9_and_restart();
    let mut sse = resume(&server, &["d"], "20").await;
    check(read_until(&mut sse, "50", T).await);
    let next = publish_one(&server, "d", json!("after")).await;
    assert_eq!(next, "51", "ids continue");
}

/// A crash in the middle of a group commit's write leaves its first records whole on disk and
/// not its COMMIT: start cuts the whole group (none of its events is ever visible) and ids
/// continue at its first id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commit_cut_in_its_middle_is_cut_whole_at_start() {
    let mut server = Server::start(&[]);
    let ids = publish_batches(&server, "g", "grp", 50, 10).await;
    assert_eq!(ids.last().map(String::as_str), Some("50"));
    server.kill9();
    let seg = newest_segment(&server);
    let all = frames(&seg);
    let bytes = std::fs::read(&seg).unwrap();
    // The last group (one request of 10 events): 10 EVENT records, then its COMMIT.
    let group = &all[all.len() - 11..];
    assert!(
        group[..10].iter().all(|&(o, _)| bytes[o + FRAME_LEN] == 1) && {
            let (o, _) = group[10];
            bytes[o + FRAME_LEN] == 4
        },
        "the last group is 10 events and a COMMIT"
    );
    let group_start = group[0].0;
    // 5 whole event records (ids 41..45) and 3 bytes of the 6th.
    let cut = group[5].0 + 3;
    truncate(&seg, cut as u64);
    server.kill9_and_restart();

    let torn = log_lines(&server, "torn");
    assert_eq!(torn.len(), 1, "one log line about the torn tail: {torn:#?}");
    assert!(
        torn[0].contains(&file_name(&seg)) && has_offset(&torn[0], group_start as u64),
        "the line names {} and offset {group_start} (the group's start): {}",
        file_name(&seg),
        torn[0]
    );
    assert_eq!(
        metric_of(&server, "ssegate_log_torn_bytes_total").await,
        (cut - group_start) as f64
    );
    let next = publish_one(&server, "g", json!("after")).await;
    assert_eq!(next, "41", "ids continue at the cut group's first id");
    let got = read_range(&server, "g", "0", &next).await;
    assert_eq!(
        common::ids(&got),
        (1..=41).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(
        envelope(&got[40])["data"],
        json!("after"),
        "id 41 is the new event, not one of the cut group"
    );
}

/// REVIEW (fails at 199f0d0): one bit of the length field of a sealed segment's last record (its
/// final COMMIT) flipped, so that the record seems to run past the end of the file. That is a
/// damaged record in a sealed segment, not a truncated file: no event is damaged (the COMMIT
/// holds none), so the node must start with every event. `scan_segment` takes `PastEnd`
/// with nothing readable after it for a truncation and refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_length_field_of_a_sealed_segments_last_commit_is_not_a_truncation() {
    let mut server = Server::start(&[ROLL_EVERY_256]);
    let ids = publish_batches(&server, "d", "dmg", 300, 10).await;
    assert_eq!(ids.last().map(String::as_str), Some("300"));
    server.kill9();
    let segs = segments(&log_dir(&server));
    assert!(segs.len() >= 2, "a sealed segment: {segs:?}");
    let sealed = &segs[0];
    let &(o, l) = frames(sealed).last().unwrap();
    let bytes = std::fs::read(sealed).unwrap();
    assert_eq!(
        (l, bytes[o + FRAME_LEN]),
        (FRAME_LEN + 9, 4),
        "a sealed segment ends with a COMMIT record"
    );
    // The length's second byte: 17 becomes 42,257 (under the 16 MiB limit, past the end).
    flip(sealed, o + 1, 1);
    let data = data_dir(&server);
    let (status, _, stderr) = serve_refusal(&data, &[ROLL_EVERY_256], Duration::from_secs(4));
    let (_, check) = log_cli("check", &data);
    assert!(
        status.is_none(),
        "ssegate serve refused to start ({status:?}) over a damaged COMMIT length in {}:\n{stderr}\nlog check:\n{check}",
        file_name(sealed)
    );
    server.kill9_and_restart();
    let got = read_range(&server, "d", "0", "300").await;
    assert_eq!(common::ids(&got), ids, "every event");
}

/// REVIEW (fails at 199f0d0): the damage report follows the log. Once retention has deleted
/// the segment that held the damaged record, nothing damaged is left (a reader from before
/// it gets a `retention` gap, `log check` would find nothing), so `/readyz` is `ready` again
/// and `ssegate_log_damaged_events` 0 — not `degraded` and a firing `SsegateLogDamaged` alert
/// until the next restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_a_segment_retention_deleted_is_no_longer_reported() {
    let mut server = Server::start(&[ROLL_EVERY_256]);
    publish_batches(&server, "d", "dmg", 300, 10).await;
    server.kill9();
    let seg = segments(&log_dir(&server))[0].clone();
    let (o, l) = record_with(&seg, &marker("dmg", 29));
    flip(&seg, o + l / 2, 4);
    server.kill9_and_restart();
    let (_, body) = readyz(&server).await;
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(metric_of(&server, "ssegate_log_damaged_events").await >= 1.0);

    // Retention 1,024: at 1,400 events every id of the first segment is dropped.
    publish_batches(&server, "d", "more", 1100, 100).await;
    assert!(!seg.exists(), "retention deleted {}", file_name(&seg));
    let mut sse = resume(&server, &["d"], "20").await;
    let first = sse.next_event(T).await;
    assert_eq!(first.event, "gap", "{first:?}");
    let gap: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(gap["reason"], "retention", "{gap}");
    drop(sse);

    let (status, body) = readyz(&server).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("ready")),
        "the damaged record went with its segment: {body}"
    );
    assert_eq!(
        metric_of(&server, "ssegate_log_damaged_events").await,
        0.0,
        "ssegate_log_damaged_events after retention deleted the damage"
    );
}

// ---------------------------------------------------------------------------------------------
// Missing, empty or truncated segments

/// Segments roll every 256 events (a quarter of the retention) with this retention.
const ROLL_EVERY_256: (&str, &str) = ("LOG__RETENTION_EVENTS", "1024");

/// Point 5: after `mutate` (given the segment files, oldest first; returns the file it
/// touched and whether a name of the log directory is enough), `ssegate serve` refuses to
/// start: exits non-zero within a few seconds, says which file, and changes nothing.
async fn refuses_to_start(
    env: &[(&str, &str)],
    events: usize,
    min_segments: usize,
    mutate: impl FnOnce(&[PathBuf]) -> PathBuf,
) {
    let mut server = Server::start(env);
    let ids = server.publish_many(&publisher(), "m", events, 32).await;
    assert_eq!(ids.len(), events);
    server.kill9();
    let segs = segments(&log_dir(&server));
    assert!(
        segs.len() >= min_segments,
        "at least {min_segments} segments: {segs:?}"
    );
    let touched = mutate(&segs);
    let data = data_dir(&server);
    let before = listing(&data);
    let (status, stdout, stderr) = serve_refusal(&data, env, Duration::from_secs(8));
    let after = listing(&data);
    let Some(status) = status else {
        panic!(
            "ssegate serve started over a log missing data ({} touched); stdout: {stdout}\nstderr:\n{stderr}",
            touched.display()
        );
    };
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(
        stderr.contains(&file_name(&touched)),
        "stderr names {}:\n{stderr}",
        file_name(&touched)
    );
    // Also: no new log from id 1 (a new segment or meta.json would show).
    assert_eq!(before, after, "the data directory is unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_segment_deleted_refuses_to_start() {
    refuses_to_start(&[ROLL_EVERY_256], 600, 2, |segs| {
        let newest = segs.last().unwrap().clone();
        std::fs::remove_file(&newest).unwrap();
        newest
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_truncated_to_0_bytes_refuses_to_start() {
    refuses_to_start(&[], 30, 1, |segs| {
        let newest = segs.last().unwrap().clone();
        truncate(&newest, 0);
        newest
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_truncated_to_10_bytes_refuses_to_start() {
    refuses_to_start(&[], 30, 1, |segs| {
        let newest = segs.last().unwrap().clone();
        truncate(&newest, 10);
        newest
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_segment_cut_to_half_refuses_to_start() {
    refuses_to_start(&[ROLL_EVERY_256], 600, 2, |segs| {
        let oldest = segs[0].clone();
        let len = std::fs::metadata(&oldest).unwrap().len();
        truncate(&oldest, len / 2);
        oldest
    })
    .await;
}

/// Every segment gone while `meta.json` stays: the message names the log directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_segment_deleted_refuses_to_start() {
    let mut server = Server::start(&[]);
    server.publish_many(&publisher(), "m", 30, 10).await;
    server.kill9();
    for seg in segments(&log_dir(&server)) {
        std::fs::remove_file(seg).unwrap();
    }
    let data = data_dir(&server);
    let before = listing(&data);
    let (status, stdout, stderr) = serve_refusal(&data, &[], Duration::from_secs(8));
    assert!(
        status.is_some_and(|s| !s.success()),
        "ssegate serve refuses ({status:?}); stdout: {stdout}\nstderr:\n{stderr}"
    );
    let dir = log_dir(&server);
    assert!(
        stderr.contains(&dir.display().to_string()) || stderr.contains("00000000000000000001.seg"),
        "stderr names the log directory or the segment:\n{stderr}"
    );
    assert_eq!(before, listing(&data), "the data directory is unchanged");
}

// ---------------------------------------------------------------------------------------------
// A full disk

/// Unmounts the tmpfs when the test ends, however it ends.
struct Umount(PathBuf);

impl Drop for Umount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let mut written = 0;
    for chunk in [64 << 10, 4 << 10, 512, 1] {
        let buf = vec![0x55u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(n) if n > 0 => written += n as u64,
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let _ = f.sync_all();
    written
}

/// Point 6: on a full disk a publish is refused with `507 log_full` and `Retry-After`,
/// `/readyz` is 503 and `ssegate_log_up` 0; once space is freed the node heals by itself
/// (no restart), and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_publishes_with_507_and_heals_when_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&data)
        .output()
        .unwrap();
    if !mounted.status.success() {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        return;
    }
    let _umount = Umount(data.clone());
    let mut server = Server::start_in(tmp.path(), &[]);
    let p = publisher();
    let pad = "f".repeat(2000);
    let mut acked: Vec<(String, u64)> = Vec::new();
    for i in 0..100u64 {
        let (status, body) = server
            .publish(&p, &json!({"channel": "f", "data": {"i": i, "pad": pad}}))
            .await;
        assert_eq!(status, 200, "{body}");
        acked.push((published_ids(&body).remove(0), i));
    }
    let filler = data.join("filler");
    let filled = fill(&filler);
    println!("filler: {filled} bytes");

    // Larger than any slack left in the segment's last page.
    let big = "B".repeat(16 << 10);
    let (status, headers, body) = call(
        reqwest::Method::POST,
        &format!("{}/v1/publish", server.url),
        &[bearer(&p)],
        Some(&json!({"channel": "f", "data": {"refused": 0, "big": big}})),
    )
    .await;
    assert_error(status, &body, 507, "log_full");
    assert!(retry_after(&headers) >= 1, "Retry-After");
    let (status, body) = readyz(&server).await;
    assert_eq!(status, 503, "/readyz while the disk is full: {body}");
    assert_eq!(body["status"], "not_ready", "{body}");
    assert!(
        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "/readyz says why: {body}"
    );
    println!("/readyz while full: {body}");
    assert_eq!(
        metric_of(&server, "ssegate_log_up").await,
        0.0,
        "ssegate_log_up while full"
    );
    // Still refused, still nothing stored.
    let (status, body) = server
        .publish(
            &p,
            &json!({"channel": "f", "data": {"refused": 1, "big": big}}),
        )
        .await;
    assert_error(status, &body, 507, "log_full");

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    loop {
        let (status, body) = readyz(&server).await;
        if status == 200 {
            assert_eq!(body["status"], "ready", "{body}");
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(5),
            "/readyz still {status} {body} 5 s after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("ready again {:?} after space was freed", freed.elapsed());
    assert_eq!(
        metric_of(&server, "ssegate_log_up").await,
        1.0,
        "ssegate_log_up after"
    );
    for i in 100..110u64 {
        let (status, body) = server
            .publish(&p, &json!({"channel": "f", "data": {"i": i, "big": big}}))
            .await;
        assert_eq!(status, 200, "publishing again: {body}");
        acked.push((published_ids(&body).remove(0), i));
    }

    server.kill9_and_restart();
    let last = acked.last().unwrap().0.clone();
    let got = read_range(&server, "f", "0", &last).await;
    let got: Vec<(String, Value)> = got
        .iter()
        .map(|e| (e.id.clone(), envelope(e)["data"].clone()))
        .collect();
    assert!(
        got.iter().all(|(_, d)| d.get("refused").is_none()),
        "a refused (507) publish was not stored"
    );
    let want: Vec<(String, u64)> = acked.clone();
    let have: Vec<(String, u64)> = got
        .iter()
        .map(|(id, d)| (id.clone(), d["i"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        have, want,
        "every acknowledged event exactly once, in order, same ids"
    );
    // The refused appends left nothing behind in the segment (no half-written record for
    // the restart to find damaged or torn).
    let (status, body) = readyz(&server).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("ready")),
        "after the restart: {body}"
    );
    let faults: Vec<String> = server
        .log_text()
        .lines()
        .filter(|l| l.contains("torn") || l.contains("damaged"))
        .map(str::to_owned)
        .collect();
    assert!(faults.is_empty(), "the restart found: {faults:#?}");
    drop(server);
}

/// A power loss can write a group's COMMIT and lose a page before it (pages reach the disk in
/// any order): the last group of the newest segment with a hole in it is a torn write —
/// never acknowledged whole — and is cut whole at start, not kept in part as "damaged".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_group_with_a_lost_page_but_its_commit_written_is_cut_whole() {
    let mut server = Server::start(&[]);
    let ids = publish_batches(&server, "p", "pwr", 50, 10).await;
    assert_eq!(ids.last().map(String::as_str), Some("50"));
    server.kill9();
    let seg = newest_segment(&server);
    let all = frames(&seg);
    let group = &all[all.len() - 11..];
    let group_start = group[0].0;
    let len_before = std::fs::metadata(&seg).unwrap().len();
    // The 6th event record (id 46) zeroed, as a page never written; its COMMIT stays.
    let (at, len) = group[5];
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[at..at + len].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    server.kill9_and_restart();

    assert!(
        log_lines(&server, "damaged").is_empty(),
        "a torn last group is not damage"
    );
    let torn = log_lines(&server, "torn");
    assert_eq!(torn.len(), 1, "one line about the torn group: {torn:#?}");
    assert!(has_offset(&torn[0], group_start as u64), "{}", torn[0]);
    assert_eq!(
        metric_of(&server, "ssegate_log_torn_bytes_total").await,
        (len_before - group_start as u64) as f64
    );
    let next = publish_one(&server, "p", json!("after")).await;
    assert_eq!(next, "41", "none of the torn group's ids is kept");
    let got = read_range(&server, "p", "0", &next).await;
    assert_eq!(
        common::ids(&got),
        (1..=41).map(|i| i.to_string()).collect::<Vec<_>>()
    );
}

/// An idle node writes nothing: the retention pass every second finds nothing to do and
/// neither writes nor syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_neither_writes_nor_syncs() {
    let server = Server::start(&[]);
    publish_each(&server, "idle", "idl", 3).await;
    let seg = newest_segment(&server);
    let commits = metric_of(&server, "ssegate_log_commits_total").await;
    let syncs = metric_of(&server, "ssegate_log_syncs_total").await;
    let len = std::fs::metadata(&seg).unwrap().len();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(
        metric_of(&server, "ssegate_log_commits_total").await,
        commits
    );
    assert_eq!(metric_of(&server, "ssegate_log_syncs_total").await, syncs);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
}
