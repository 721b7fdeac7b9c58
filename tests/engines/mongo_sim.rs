//! A MongoDB wire-protocol **replica-set simulator** for tests: not MongoDB, but a TCP server
//! on a free loopback port that answers the official `mongodb` driver the way a one-member
//! replica set (`rs0`) would for change streams, so the driver's own code — handshake, server
//! monitoring, sessions, `aggregate` with `$changeStream`, the `getMore` loop, resume-token
//! bookkeeping, error labels, its automatic resume — runs in the tests.
//!
//! What it speaks: OP_MSG (opcode 2013; body section and document sequences, checksum flag
//! tolerated) and legacy OP_QUERY (2004) for a handshake `isMaster`/`hello`, answered with
//! OP_REPLY. Commands:
//!
//! - `hello` / `isMaster`: `setName` `rs0`, `hosts` = its own address, `isWritablePrimary`,
//!   wire versions 0–21 (MongoDB 7.0), sessions (`logicalSessionTimeoutMinutes`).
//! - `aggregate` whose first stage is `$changeStream`: a cursor (`firstBatch` with the changes
//!   already there, `postBatchResumeToken`, `operationTime`), started where the stage says:
//!   `resumeAfter` (after a change's `_id` or a post-batch token; an invalidate is refused
//!   with 280 `ChangeStreamFatalError`, as the server does), `startAfter` (also past an
//!   invalidate), `startAtOperationTime` (the first change at or after that cluster time), or
//!   now. A token older than the oplog (see [`MongoSim::roll_oplog`]) or unknown fails with
//!   286 `ChangeStreamHistoryLost`. `fullDocument` / `fullDocumentBeforeChange` left unset
//!   strip those fields from the replayed changes, as the server would not send them.
//! - `getMore`: `nextBatch` + `postBatchResumeToken`; with no change it waits up to
//!   `maxTimeMS` (1 s when absent, the server's default for awaitData cursors) for one. The
//!   batch ends after an `invalidate`, and the cursor with it (id 0).
//! - `killCursors`, `endSessions`, `ping`, `buildInfo`; anything else gets the server's
//!   `CommandNotFound` (59) reply and is recorded ([`Counters::unknown`]) and printed.
//!
//! Faults, queued by the test: an error reply (any document: a recorded server error with
//! its code and `errorLabels`) for the next `aggregate` or the next `getMore`, or the
//! connection dropped in the middle of the next `getMore` (read, never answered).
//!
//! What it does NOT do: store documents, run the pipeline or filter by namespace (it replays
//! exactly the change events the test pushes, in the shape the server sends them —
//! tests/fixtures/mongodb/), elections, secondaries, sharding, authentication, TLS,
//! compression, or the real oplog's timing. It proves the driver and the source together
//! against the protocol; it does not prove a real server's semantics.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The replica set's name.
pub const SET_NAME: &str = "rs0";
const OP_REPLY: i32 = 1;
const OP_QUERY: i32 = 2004;
const OP_MSG: i32 = 2013;
/// How long a `getMore` without `maxTimeMS` waits for a change (the server's default).
const DEFAULT_AWAIT: Duration = Duration::from_secs(1);
/// Changes per batch when the driver asks for no size.
const DEFAULT_BATCH: usize = 1000;

/// What the simulator does instead of answering a command normally.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this error document (`ok: 0`, `code`, `codeName`, `errorLabels`, …).
    Reply(Document),
    /// Close the connection without answering (a connection lost mid-command).
    Drop,
}

/// What the simulator counted since it started.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// TCP connections accepted (monitoring and pooled connections alike).
    pub connections: u64,
    /// `aggregate` commands with a `$changeStream` stage, by namespace (`db.coll`, `db`, or
    /// `admin` for a cluster stream).
    pub change_streams: BTreeMap<String, u64>,
    pub get_mores: u64,
    pub kill_cursors: u64,
    pub end_sessions: u64,
    /// Every command by name (handshakes included).
    pub commands: BTreeMap<String, u64>,
    /// Commands the simulator does not know (each answered with `CommandNotFound`).
    pub unknown: Vec<String>,
}

impl Counters {
    /// `aggregate`s with `$changeStream`, all namespaces.
    pub fn aggregates(&self) -> u64 {
        self.change_streams.values().sum()
    }
}

struct Cursor {
    ns: String,
    /// Index of the next change to return.
    pos: usize,
    full_document: bool,
    before_change: bool,
}

#[derive(Default)]
struct State {
    /// The oplog, as change events.
    events: Vec<Document>,
    /// Changes before this index have rolled out of the oplog.
    oldest: usize,
    /// The cluster clock: post-batch tokens of idle cursors change when it moves.
    clock: u32,
    /// The clock when the last change was pushed.
    clock_at_push: u32,
    /// Post-batch tokens handed out for positions between changes, and those positions.
    hwm: HashMap<String, usize>,
    cursors: HashMap<i64, Cursor>,
    next_cursor: i64,
    /// The `$changeStream` stage of every change-stream `aggregate`, in order.
    stages: Vec<Document>,
    aggregate_faults: VecDeque<Fault>,
    get_more_faults: VecDeque<Fault>,
    counters: Counters,
}

struct Shared {
    state: Mutex<State>,
    /// Woken when changes are pushed (awaiting `getMore`s).
    changed: Notify,
    address: String,
    election_id: ObjectId,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running simulator; stops (every connection closed) when dropped.
pub struct MongoSim {
    shared: Arc<Shared>,
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MongoSim {
    /// Starts on a free loopback port, on a thread (and runtime) of its own, so it serves
    /// whatever the test thread does meanwhile.
    pub fn start() -> MongoSim {
        let listener =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("simulator port");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_cursor: 7_000_000_001,
                ..State::default()
            }),
            changed: Notify::new(),
            address: format!("127.0.0.1:{port}"),
            election_id: ObjectId::new(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mongo-sim".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("simulator runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("listener");
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept(listener, task_shared) => {}
                    }
                });
                // Dropping the runtime closes every connection.
            })
            .expect("simulator thread");
        MongoSim {
            shared,
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for the replica set.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?replicaSet={SET_NAME}", self.port)
    }

    /// Changes happen on the server (they are written to the oplog).
    pub fn push(&self, docs: impl IntoIterator<Item = Document>) {
        let mut s = self.shared.lock();
        s.events.extend(docs);
        s.clock_at_push = s.clock;
        drop(s);
        self.shared.changed.notify_waiters();
    }

    /// The cluster's clock moves on (as with the server's periodic no-op writes): idle
    /// cursors get a newer post-batch resume token.
    pub fn tick(&self) {
        self.shared.lock().clock += 1;
    }

    /// The oplog rolls over: the first `n` changes are gone.
    pub fn roll_oplog(&self, n: usize) {
        self.shared.lock().oldest = n;
    }

    /// The next change-stream `aggregate` gets `fault` (queued, one per aggregate).
    pub fn fail_aggregate(&self, fault: Fault) {
        self.shared.lock().aggregate_faults.push_back(fault);
    }

    /// The next `getMore` gets `fault` (queued, one per getMore).
    pub fn fail_get_more(&self, fault: Fault) {
        self.shared.lock().get_more_faults.push_back(fault);
    }

    /// Forgets the faults not yet used (the server recovered).
    pub fn clear_faults(&self) {
        let mut s = self.shared.lock();
        s.aggregate_faults.clear();
        s.get_more_faults.clear();
    }

    /// Faults not yet used.
    pub fn pending_faults(&self) -> usize {
        let s = self.shared.lock();
        s.aggregate_faults.len() + s.get_more_faults.len()
    }

    pub fn counters(&self) -> Counters {
        self.shared.lock().counters.clone()
    }

    /// The `$changeStream` stage of every change-stream `aggregate` so far, in order.
    pub fn stages(&self) -> Vec<Document> {
        self.shared.lock().stages.clone()
    }

    /// Cursors open on the simulator.
    pub fn open_cursors(&self) -> usize {
        self.shared.lock().cursors.len()
    }
}

impl Drop for MongoSim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut connection_id = 0i64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        connection_id += 1;
        shared.lock().counters.connections += 1;
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, shared.clone(), connection_id));
    }
}

/// One connection: a request, an answer, until the client leaves or a fault drops it.
async fn serve(mut stream: TcpStream, shared: Arc<Shared>, connection_id: i64) {
    loop {
        let mut header = [0u8; 16];
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let int = |i: usize| i32::from_le_bytes(header[i..i + 4].try_into().unwrap());
        let (length, request_id, op_code) = (int(0), int(4), int(12));
        if !(16..=48_000_000).contains(&length) {
            eprintln!("mongo-sim: bad message length {length}");
            return;
        }
        let mut body = vec![0u8; length as usize - 16];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let (command, legacy) = match op_code {
            OP_MSG => match parse_op_msg(&body) {
                Ok(c) => (c, false),
                Err(e) => {
                    eprintln!("mongo-sim: unreadable OP_MSG: {e}");
                    return;
                }
            },
            OP_QUERY => match parse_op_query(&body) {
                Ok(c) => (c, true),
                Err(e) => {
                    eprintln!("mongo-sim: unreadable OP_QUERY: {e}");
                    return;
                }
            },
            other => {
                eprintln!("mongo-sim: opcode {other} not simulated; closing the connection");
                return;
            }
        };
        let Some(reply) = answer(&shared, command, connection_id).await else {
            // A fault: the connection drops in the middle of the command.
            return;
        };
        let message = if legacy {
            op_reply(request_id, &reply)
        } else {
            op_msg(request_id, &reply)
        };
        if stream.write_all(&message).await.is_err() {
            return;
        }
    }
}

fn parse_op_msg(body: &[u8]) -> Result<Document, String> {
    let flags = u32::from_le_bytes(body.get(..4).ok_or("short")?.try_into().unwrap());
    let mut end = body.len();
    if flags & 1 != 0 {
        end -= 4; // CRC-32C checksum: not checked
    }
    let mut rest = &body[4..end];
    let mut command: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<Document>)> = Vec::new();
    while !rest.is_empty() {
        let kind = rest[0];
        rest = &rest[1..];
        match kind {
            0 => {
                let len = doc_len(rest)?;
                command = Some(Document::from_reader(&rest[..len]).map_err(|e| e.to_string())?);
                rest = &rest[len..];
            }
            1 => {
                let size = doc_len(rest)?;
                let mut section = &rest[4..size];
                rest = &rest[size..];
                let nul = section.iter().position(|b| *b == 0).ok_or("identifier")?;
                let id = String::from_utf8_lossy(&section[..nul]).into_owned();
                section = &section[nul + 1..];
                let mut docs = Vec::new();
                while !section.is_empty() {
                    let len = doc_len(section)?;
                    docs.push(Document::from_reader(&section[..len]).map_err(|e| e.to_string())?);
                    section = &section[len..];
                }
                sequences.push((id, docs));
            }
            other => return Err(format!("section kind {other}")),
        }
    }
    let mut command = command.ok_or("no body section")?;
    for (id, docs) in sequences {
        command.insert(id, docs.into_iter().map(Bson::Document).collect::<Vec<_>>());
    }
    Ok(command)
}

fn parse_op_query(body: &[u8]) -> Result<Document, String> {
    let rest = body.get(4..).ok_or("short")?;
    let nul = rest.iter().position(|b| *b == 0).ok_or("collection name")?;
    let collection = String::from_utf8_lossy(&rest[..nul]).into_owned();
    let rest = rest.get(nul + 1 + 8..).ok_or("short")?;
    let len = doc_len(rest)?;
    let mut query = Document::from_reader(&rest[..len]).map_err(|e| e.to_string())?;
    // `{$query: {...}}` wrapping, as some drivers send it.
    if let Ok(inner) = query.get_document("$query") {
        query = inner.clone();
    }
    if let Some(db) = collection.strip_suffix(".$cmd") {
        query.insert("$db", db);
    }
    Ok(query)
}

fn doc_len(bytes: &[u8]) -> Result<usize, String> {
    let len = i32::from_le_bytes(bytes.get(..4).ok_or("short")?.try_into().unwrap());
    if len < 5 || len as usize > bytes.len() {
        return Err(format!("bad document length {len}"));
    }
    Ok(len as usize)
}

fn to_bytes(d: &Document) -> Vec<u8> {
    let mut out = Vec::new();
    d.to_writer(&mut out).expect("BSON");
    out
}

fn frame(op_code: i32, response_to: i32, payload: &[u8]) -> Vec<u8> {
    static NEXT_ID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(1);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend(((16 + payload.len()) as i32).to_le_bytes());
    out.extend(id.to_le_bytes());
    out.extend(response_to.to_le_bytes());
    out.extend(op_code.to_le_bytes());
    out.extend(payload);
    out
}

fn op_msg(response_to: i32, reply: &Document) -> Vec<u8> {
    let mut payload = 0u32.to_le_bytes().to_vec();
    payload.push(0);
    payload.extend(to_bytes(reply));
    frame(OP_MSG, response_to, &payload)
}

fn op_reply(response_to: i32, reply: &Document) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend(0i32.to_le_bytes()); // responseFlags
    payload.extend(0i64.to_le_bytes()); // cursorID
    payload.extend(0i32.to_le_bytes()); // startingFrom
    payload.extend(1i32.to_le_bytes()); // numberReturned
    payload.extend(to_bytes(reply));
    frame(OP_REPLY, response_to, &payload)
}

fn error(code: i32, code_name: &str, message: impl Into<String>) -> Document {
    doc! { "ok": 0.0, "errmsg": message.into(), "code": code, "codeName": code_name }
}

fn now_timestamp() -> Timestamp {
    static INC: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    Timestamp {
        time: (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()) as u32,
        increment: INC.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    }
}

/// The answer to one command; `None` to drop the connection instead.
async fn answer(shared: &Shared, command: Document, connection_id: i64) -> Option<Document> {
    let name = command.keys().next().cloned().unwrap_or_default();
    shared
        .lock()
        .counters
        .commands
        .entry(name.clone())
        .and_modify(|n| *n += 1)
        .or_insert(1);
    let mut reply = match name.as_str() {
        "hello" | "isMaster" | "ismaster" => hello(shared, connection_id),
        "ping" => doc! { "ok": 1.0 },
        "buildInfo" | "buildinfo" => doc! {
            "version": "7.0.0-simulator",
            "versionArray": [7, 0, 0, 0],
            "maxBsonObjectSize": 16 * 1024 * 1024,
            "ok": 1.0,
        },
        "endSessions" => {
            shared.lock().counters.end_sessions += 1;
            doc! { "ok": 1.0 }
        }
        "killCursors" => kill_cursors(shared, &command),
        "aggregate" => aggregate(shared, &command)?,
        "getMore" => get_more(shared, &command).await?,
        _ => {
            eprintln!("mongo-sim: command {name:?} is not simulated: {command}");
            shared.lock().counters.unknown.push(name.clone());
            error(59, "CommandNotFound", format!("no such command: '{name}'"))
        }
    };
    if !reply.contains_key("operationTime")
        && name != "hello"
        && !name.eq_ignore_ascii_case("ismaster")
    {
        reply.insert("operationTime", now_timestamp());
    }
    Some(reply)
}

fn hello(shared: &Shared, connection_id: i64) -> Document {
    let me = shared.address.clone();
    doc! {
        "helloOk": true,
        "isWritablePrimary": true,
        "ismaster": true,
        "secondary": false,
        "setName": SET_NAME,
        "setVersion": 1,
        "hosts": [me.clone()],
        "primary": me.clone(),
        "me": me,
        "electionId": shared.election_id,
        "maxBsonObjectSize": 16 * 1024 * 1024,
        "maxMessageSizeBytes": 48_000_000,
        "maxWriteBatchSize": 100_000,
        "localTime": DateTime::now(),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": connection_id,
        "minWireVersion": 0,
        "maxWireVersion": 21,
        "readOnly": false,
        "ok": 1.0,
    }
}

fn kill_cursors(shared: &Shared, command: &Document) -> Document {
    let mut s = shared.lock();
    s.counters.kill_cursors += 1;
    let mut killed = Vec::new();
    let mut not_found = Vec::new();
    for id in command
        .get_array("cursors")
        .map(|a| a.as_slice())
        .unwrap_or(&[])
    {
        let id = match id {
            Bson::Int64(i) => *i,
            Bson::Int32(i) => *i as i64,
            _ => continue,
        };
        if s.cursors.remove(&id).is_some() {
            killed.push(id);
        } else {
            not_found.push(id);
        }
    }
    doc! {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": [],
        "cursorsUnknown": [],
        "ok": 1.0,
    }
}

fn token_of(d: &Document) -> Option<&Document> {
    d.get_document("_id").ok()
}

fn is_invalidate(d: &Document) -> bool {
    d.get_str("operationType") == Ok("invalidate")
}

/// The post-batch resume token of a cursor at `pos` after returning `batch`.
fn post_batch_token(s: &mut State, pos: usize, batch: &[Document]) -> Document {
    if let Some(t) = batch.last().and_then(token_of) {
        return t.clone();
    }
    // No change since the last one and the clock did not move: the last change's token.
    if pos > 0 && pos == s.events.len() && s.clock == s.clock_at_push {
        let last = &s.events[pos - 1];
        if !is_invalidate(last) {
            if let Some(t) = token_of(last) {
                return t.clone();
            }
        }
    }
    let data = format!("82{:08X}{:08X}5A1004", 0x6570_0000u32 + s.clock, pos);
    s.hwm.insert(data.clone(), pos);
    doc! { "_data": data }
}

/// Where a resume token points: the index of the next change, or the server's error.
fn resolve(s: &State, token: &Document, after_invalidate: bool) -> Result<usize, Document> {
    let lost = || {
        error(
            286,
            "ChangeStreamHistoryLost",
            "Executor error during aggregate :: caused by :: Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
        )
    };
    if let Ok(data) = token.get_str("_data") {
        if let Some(pos) = s.hwm.get(data) {
            return if *pos >= s.oldest {
                Ok(*pos)
            } else {
                Err(lost())
            };
        }
    }
    let Some(i) = s.events.iter().position(|e| token_of(e) == Some(token)) else {
        return Err(lost());
    };
    if i < s.oldest {
        return Err(lost());
    }
    if is_invalidate(&s.events[i]) && !after_invalidate {
        return Err(error(
            280,
            "ChangeStreamFatalError",
            "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification.",
        ));
    }
    Ok(i + 1)
}

/// Changes from `cursor.pos`, at most `limit`, ending after an invalidate; true when the
/// cursor is done (an invalidate was returned).
fn take_batch(s: &State, cursor: &mut Cursor, limit: usize) -> (Vec<Document>, bool) {
    let mut batch = Vec::new();
    while cursor.pos < s.events.len() && batch.len() < limit {
        let mut event = s.events[cursor.pos].clone();
        cursor.pos += 1;
        if !cursor.full_document && event.get_str("operationType") == Ok("update") {
            event.remove("fullDocument");
        }
        if !cursor.before_change {
            event.remove("fullDocumentBeforeChange");
        }
        let end = is_invalidate(&event);
        batch.push(event);
        if end {
            return (batch, true);
        }
    }
    (batch, false)
}

fn batch_size(d: &Document) -> Option<usize> {
    match d.get("batchSize") {
        Some(Bson::Int32(n)) if *n > 0 => Some(*n as usize),
        Some(Bson::Int64(n)) if *n > 0 => Some(*n as usize),
        _ => None,
    }
}

fn aggregate(shared: &Shared, command: &Document) -> Option<Document> {
    let db = command.get_str("$db").unwrap_or("test").to_owned();
    let ns = match command.get("aggregate") {
        Some(Bson::String(coll)) => format!("{db}.{coll}"),
        _ => db.clone(),
    };
    let stage = command
        .get_array("pipeline")
        .ok()
        .and_then(|p| p.first())
        .and_then(Bson::as_document)
        .and_then(|s| s.get_document("$changeStream").ok())
        .cloned();
    let Some(stage) = stage else {
        return Some(error(
            40324,
            "Location40324",
            "the simulator runs only change-stream aggregates ($changeStream first)",
        ));
    };
    let mut s = shared.lock();
    *s.counters.change_streams.entry(ns.clone()).or_insert(0) += 1;
    s.stages.push(stage.clone());
    match s.aggregate_faults.pop_front() {
        Some(Fault::Drop) => return None,
        Some(Fault::Reply(d)) => return Some(d),
        None => {}
    }
    let pos = if let Ok(t) = stage.get_document("startAfter") {
        resolve(&s, t, true)
    } else if let Ok(t) = stage.get_document("resumeAfter") {
        resolve(&s, t, false)
    } else if let Ok(ts) = stage.get_timestamp("startAtOperationTime") {
        let at = |e: &Document| e.get_timestamp("clusterTime").ok();
        let key = |t: Timestamp| (t.time, t.increment);
        let i = s
            .events
            .iter()
            .position(|e| at(e).is_some_and(|t| key(t) >= key(ts)))
            .unwrap_or(s.events.len());
        if i < s.oldest {
            Err(error(
                286,
                "ChangeStreamHistoryLost",
                "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
            ))
        } else {
            Ok(i)
        }
    } else {
        Ok(s.events.len())
    };
    let pos = match pos {
        Ok(pos) => pos,
        Err(e) => return Some(e),
    };
    let full = stage.get_str("fullDocument").unwrap_or("default");
    let before = stage.get_str("fullDocumentBeforeChange").unwrap_or("off");
    let mut cursor = Cursor {
        ns: ns.clone(),
        pos,
        full_document: full != "default",
        before_change: before != "off",
    };
    let limit = command
        .get_document("cursor")
        .ok()
        .and_then(batch_size)
        .unwrap_or(101);
    let (batch, done) = take_batch(&s, &mut cursor, limit);
    let token = post_batch_token(&mut s, cursor.pos, &batch);
    let id = if done {
        0
    } else {
        let id = s.next_cursor;
        s.next_cursor += 1;
        s.cursors.insert(id, cursor);
        id
    };
    Some(doc! {
        "cursor": {
            "firstBatch": batch,
            "postBatchResumeToken": token,
            "id": id,
            "ns": ns,
        },
        "operationTime": now_timestamp(),
        "ok": 1.0,
    })
}

async fn get_more(shared: &Shared, command: &Document) -> Option<Document> {
    let id = match command.get("getMore") {
        Some(Bson::Int64(i)) => *i,
        Some(Bson::Int32(i)) => *i as i64,
        _ => return Some(error(14, "TypeMismatch", "getMore takes a cursor id")),
    };
    let wait = match command.get("maxTimeMS") {
        Some(Bson::Int32(n)) => Duration::from_millis(*n as u64),
        Some(Bson::Int64(n)) => Duration::from_millis(*n as u64),
        _ => DEFAULT_AWAIT,
    };
    let limit = batch_size(command).unwrap_or(DEFAULT_BATCH);
    {
        let mut s = shared.lock();
        s.counters.get_mores += 1;
        match s.get_more_faults.pop_front() {
            Some(Fault::Drop) => return None,
            Some(Fault::Reply(d)) => {
                // The server kills a cursor whose getMore failed.
                s.cursors.remove(&id);
                return Some(d);
            }
            None => {}
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            let mut s = shared.lock();
            let Some(mut cursor) = s.cursors.remove(&id) else {
                return Some(error(
                    43,
                    "CursorNotFound",
                    format!("cursor id {id} not found"),
                ));
            };
            let available = cursor.pos < s.events.len();
            if available || tokio::time::Instant::now() >= deadline {
                let (batch, done) = take_batch(&s, &mut cursor, limit);
                let token = post_batch_token(&mut s, cursor.pos, &batch);
                let ns = cursor.ns.clone();
                let reply_id = if done { 0 } else { id };
                if !done {
                    s.cursors.insert(id, cursor);
                }
                return Some(doc! {
                    "cursor": {
                        "nextBatch": batch,
                        "postBatchResumeToken": token,
                        "id": reply_id,
                        "ns": ns,
                    },
                    "ok": 1.0,
                });
            }
            s.cursors.insert(id, cursor);
        }
        let _ = tokio::time::timeout_at(deadline, changed).await;
    }
}
