//! The Redis Streams log: one stream shared by every ssegate node, so any node can serve any
//! client's resume. Requires Redis 7.0 or later (or a server compatible with it: the Lua
//! scripts declare flags with a `#!lua` shebang).
//!
//! # Layout in Redis
//!
//! - `{stream}` (`log.stream`, default `ssegate`): a Redis stream; one entry per event, whose
//!   id (`<ms>-<seq>`, given by `XADD *`) is the event's [`Position`] (`hi` = ms, `lo` = seq)
//!   and its SSE `id`. Fields: `e` = the JSON of [`NewEvent`] (as the file log stores it),
//!   `t` = its publish time in Unix ms (so retention by age reads no JSON), `c` = its channel
//!   (so retention knows which channel index to trim without reading JSON).
//! - `{stream}:trimmed`: the id of the newest entry retention ever removed.
//! - `{stream}:key:{idempotency key}`: `"<expiry ms> <id> <id> …"`, with a Redis TTL.
//! - `{stream}:ch:{channel}`: the channel index, for [`EventLog::history`]: a sorted set with
//!   one member per retained event of that channel, every score 0, the member being the
//!   event's id encoded so that byte order is id order (`<'@'+digits of ms>ms-<'@'+digits of
//!   seq>seq`), so `ZREVRANGEBYLEX` walks it newest first from any id. Written by the append
//!   script, in the same script as the `XADD` (atomic with it). Kept bounded exactly:
//!   whenever retention removes entries of `{stream}` (the append script by count,
//!   [`EventLog::enforce_retention`] by age), the indexes of their channels (field `c`) lose
//!   the ids before the oldest retained one (`ZREMRANGEBYLEX`), and Redis deletes an index
//!   left empty, so a channel that stops getting events loses its key with its last retained
//!   event; the appended channels' indexes are trimmed the same way on every append. A key of
//!   another type where an index goes is replaced; index writes never fail an append.
//!
//! Nothing else may write to these keys; an entry deleted by hand (`XDEL`) is a loss ssegate
//! cannot report as a gap. Redis Cluster is not supported (the keys of one stream must live
//! on one server): use one primary, with replicas for failover if wanted.
//!
//! **Cost of the index** (measured on Redis 7.0): a small index (up to
//! `zset-max-listpack-entries`, 128 by default) is one listpack, about 25 bytes per event
//! plus ~80 bytes per key (and its name); a larger one is a skiplist, about 130 bytes per event.
//! Worst case therefore ~130 bytes per retained event, plus the channel name again in field
//! `c` of each event. (A stream per channel would cost less for busy channels, ~18 bytes per
//! event, but Redis preallocates 4 KB per stream node: ~4.7 KB for every channel with a few
//! events, which many small per-user channels would multiply.) On append: one `ZADD` per
//! event and one `ZREMRANGEBYLEX` per distinct channel of the call.
//!
//! **History** ([`EventLog::history`]) is one read-only script per step: `ZREVRANGEBYLEX` on
//! the channel's index from `through` back to `after` (exclusive), then `XRANGE id id` per id for
//! the event itself; an id older than the oldest entry of `{stream}` ends the walk (retention
//! removed it and every older one), an id missing otherwise (`XDEL`) is skipped. A step returns
//! at most 1,024 events and looks at at most 4,096 index entries; when the filter (events
//! targeted at other users) leaves the answer short, the next step goes on from where the last
//! stopped, asking for more each time, until `limit` events matched or the index ran out: the
//! cost grows with the events of that channel looked at, never with the log. Events appended
//! by ssegate versions before the index existed have no index entries: **history starts with
//! the first append of this version** (older events are still read and resumed as before).
//! During a rolling upgrade, events appended by older nodes are not in history either, and
//! retention applied by an older node does not trim the indexes: the entries it leaves are
//! harmless to answers (ids older than the stream's oldest end the walk) and go with the
//! channel's next append; a channel that never gets another keeps them (see the cost above) —
//! upgrade every node before relying on the bound.
//!
//! # Guarantees
//!
//! - **Atomic batches, in order**: an `append` is ONE Lua script (`EVALSHA`), so all its
//!   events get consecutive entries of the stream, in order, with no other publisher's event
//!   between them, whichever node appends. Redis runs a script to its end or, when it is out
//!   of memory, refuses it before its first write; its effects reach replicas and the AOF as
//!   one `MULTI`/`EXEC`.
//! - **Order**: positions strictly increase in append order (Redis makes stream ids
//!   monotonic even when its clock steps back); every node reads the same order.
//! - **Dedupe scope**: every node sharing the stream. The idempotency check and the append
//!   run in the same script, so two nodes racing on one key store it once. The window is
//!   measured with the gateway's clock (`now_ms`, like the other backends); Redis forgets a
//!   key one minute after its window (a TTL, to absorb clock differences between nodes).
//!   A repeat inside one batch is a duplicate too.
//! - **Retention**: by count, exactly, in the append script (`log.retention_events` entries
//!   are kept, at most 10,000 removed per append; a larger excess — after lowering the
//!   setting — goes on later appends and retention passes); by age (the event's publish
//!   time) in [`EventLog::enforce_retention`]. Both record the last removed id, so a reader
//!   gets a [`Gap`] exactly when an event after its position was removed (ids are not
//!   contiguous: "older than the oldest entry" alone would not tell).
//! - **Durability**: an append is acknowledged when the Redis primary has executed it: in
//!   its memory, and in its AOF as its `appendfsync` setting says. Durable across a Redis
//!   restart only with `appendonly yes`; across a power loss only with `appendfsync always`
//!   (`everysec`, the usual setting, may lose the last second). Replication is asynchronous:
//!   a failover to a replica may lose acknowledged appends the replica had not received.
//!   What "durable before acknowledged" means here is therefore the operator's Redis
//!   persistence setting, not something ssegate can enforce (it sends no `WAIT`/`WAITAOF`).
//!   If Redis loses its data anyway, the head moves back: clients resuming from a later id
//!   are told `gap` (their id is ahead of the log), but a loss below the new head, with the
//!   trimmed marker lost too, cannot be detected.
//! - **Outages**: commands go over one multiplexed connection (connect timeout 2 s, response
//!   timeout 3 s). When Redis cannot be reached, `append`, `read` and `bounds` return
//!   [`LogError::Unavailable`] at once (`/readyz` turns not ready) while one reconnection
//!   is tried at a time with jittered exponential backoff; when Redis is back everything
//!   works again without a restart. One warning is logged when an outage starts and one
//!   info line when it ends. An append whose connection broke or timed out after it was
//!   sent has an unknown outcome (it may have been stored): it is reported `Unavailable`,
//!   and a retry with the same idempotency key is safe. [`RedisLog::open`] succeeds while
//!   Redis is down (a malformed `log.url` or an unusable `log.tls_ca_file` is an error).
//! - **Reads** are one read-only script each: the entries after the position (at most 1,024
//!   per call, filtered here), the trimmed marker, the oldest id and the head, all from one
//!   consistent moment, so a trim racing a read is still reported as a gap.
//! - **Waiting reads**: a background task per log, on its own connection, blocks in
//!   `XREAD BLOCK` to learn the head as soon as any node appends, and wakes waiting readers;
//!   it reconnects with jittered exponential backoff. The multiplexed command connection
//!   never blocks.
//!
//! `log.url` is `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS;
//! `log.tls_ca_file` (PEM) is then the only trusted CA, else the bundled Mozilla roots are.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ErrorKind, RedisError, Script, ServerErrorKind, TlsCertificates,
    Value,
};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::config::EngineConfig;
use super::HISTORY_SCAN;
use super::{
    fill, wait_for_head, AppendItem, Appended, Bounds, Event, EventLog, Filter, Gap, History,
    HistoryQuery, LogError, LogOptions, NewEvent, Position, ReadBatch,
};
use crate::retry::{backoff_with_jitter, sleep_or_cancel};

/// Entries fetched per read at most, whatever the filter keeps.
const MAX_SCAN: usize = 1_024;
/// Events one history step returns at most.
const HISTORY_STEP: usize = 1_024;
/// Index entries one history step looks at at most (keeps each script short).
const HISTORY_LOOK: usize = 4_096;
/// Entries one script removes at most (keeps each script short).
const MAX_TRIM: u64 = 10_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on a whole operation (connect, script load, call), whatever happens below.
const OP_TIMEOUT: Duration = Duration::from_secs(8);
/// How long the tailer blocks in `XREAD`.
const BLOCK_MS: u64 = 1_000;
/// Redis keeps an idempotency key this long after its window (clock differences).
const KEY_GRACE_MS: u64 = 60_000;
/// Server errors other than outages are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Helpers shared by the scripts: ms values are compared as decimal strings (exact for any
/// u64, where Lua numbers are doubles).
const LUA_LIB: &str = r#"
local function num_lt(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end

-- Stream ids `ms-seq` compared exactly.
local function id_lt(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then return num_lt(am, bm) end
  return num_lt(as, bs)
end

-- The channel index of `channel`: a sorted set (every score 0) of that channel's event ids
-- in `stream`, each encoded by `enc` so that their byte order is the ids' order.
local function index_key(stream, channel)
  return stream .. ':ch:' .. channel
end

-- `ms-seq` → <'@' + length of ms> ms '-' <'@' + length of seq> seq.
local function enc(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return string.char(64 + #ms) .. ms .. '-' .. string.char(64 + #seq) .. seq
end

local function dec(member)
  local a = string.byte(member, 1) - 64
  return string.sub(member, 2, 1 + a) .. '-' .. string.sub(member, 4 + a)
end

-- Records event `id` of `channel`. Never fails the script: a key of another type where the
-- index goes is replaced.
local function index_add(stream, channel, id)
  local key = index_key(stream, channel)
  local r = redis.pcall('ZADD', key, 0, enc(id))
  if type(r) == 'table' and r.err then
    redis.pcall('DEL', key)
    redis.pcall('ZADD', key, 0, enc(id))
  end
end

-- Forgets, in the index of each channel of the set `channels`, the ids before the oldest
-- entry of `stream` (retention removed those events); Redis deletes an index left empty.
local function index_trim(stream, channels)
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  for channel in pairs(channels) do
    local key = index_key(stream, channel)
    if #first == 0 then
      redis.pcall('DEL', key)
    else
      redis.pcall('ZREMRANGEBYLEX', key, '-', '(' .. enc(first[1][1]))
    end
  end
end

-- Removes the oldest entries while more than `keep` remain or, when `cutoff` is not '',
-- while the oldest was published before `cutoff` (or has no valid publish time); at most
-- `max`. Records the last removed id in `marker`, then trims the channel indexes of the
-- removed events (their field `c`) and of the channels in the set `touched`. Returns how
-- many were removed.
local function trim(stream, marker, keep, cutoff, max, touched)
  local len = redis.call('XLEN', stream)
  local removed, last = 0, nil
  local channels = touched or {}
  -- By count alone, exactly the entries to remove are fetched; by age, a few first, then
  -- more while they all turn out old.
  local probe = 4
  while removed < max and len > 0 do
    local want = len - keep
    if cutoff ~= '' and want < probe then want = probe end
    if want <= 0 then break end
    want = math.min(want, max - removed, 256)
    probe = probe * 4
    local es = redis.call('XRANGE', stream, '-', '+', 'COUNT', want)
    local take = 0
    for _, e in ipairs(es) do
      local t, c = nil, nil
      local f = e[2]
      for j = 1, #f - 1, 2 do
        if f[j] == 't' then t = f[j + 1] elseif f[j] == 'c' then c = f[j + 1] end
      end
      local old = len - take > keep
      if not old and cutoff ~= '' then
        old = t == nil or not string.match(t, '^%d+$') or num_lt(t, cutoff)
      end
      if not old then break end
      take = take + 1
      last = e[1]
      if c then channels[c] = true end
    end
    if take == 0 then break end
    len = len - take
    removed = removed + take
    redis.call('XTRIM', stream, 'MAXLEN', len)
    if take < #es then break end
  end
  if last then redis.call('SET', marker, last) end
  index_trim(stream, channels)
  return removed
end
"#;

/// KEYS: stream, trimmed marker, then the idempotency keys of the items that have one, in
/// item order. ARGV: now_ms, expiry_ms ('' = remember no key), key TTL ms, retention_events,
/// max trim, item count, then per item: has_key ('1'/'0'), event count, then per event: JSON,
/// time_ms, channel. Returns per item `{duplicate (0/1), id…}`. Every read that can fail on a
/// foreign value (GET of a key of another type) runs before the first write; the channel
/// index writes cannot fail the script (see `index_add`).
const LUA_APPEND: &str = r#"
local stream, marker = KEYS[1], KEYS[2]
local now, expiry, ttl = ARGV[1], ARGV[2], ARGV[3]
local keep, max_trim, n_items = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local found = {}
local a, k = 7, 3
for i = 1, n_items do
  if ARGV[a] == '1' then
    local v = redis.call('GET', KEYS[k])
    if v then
      local exp, ids = string.match(v, '^(%d+)(.*)$')
      if exp and num_lt(now, exp) then found[KEYS[k]] = ids end
    end
    k = k + 1
  end
  a = a + 2 + 3 * tonumber(ARGV[a + 1])
end
local out = {}
local added = 0
local touched = {}
a, k = 7, 3
for i = 1, n_items do
  local key = nil
  if ARGV[a] == '1' then
    key = KEYS[k]
    k = k + 1
  end
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  local seen = nil
  if key then seen = found[key] end
  local r = {}
  if seen then
    r[1] = 1
    for id in string.gmatch(seen, '%S+') do r[#r + 1] = id end
    a = a + 3 * n
  else
    r[1] = 0
    for j = 1, n do
      local channel = ARGV[a + 2]
      local id = redis.call('XADD', stream, '*', 'e', ARGV[a], 't', ARGV[a + 1], 'c', channel)
      index_add(stream, channel, id)
      touched[channel] = true
      r[#r + 1] = id
      a = a + 3
    end
    added = added + n
    if key and expiry ~= '' then
      local ids = table.concat(r, ' ', 2)
      redis.call('SET', key, expiry .. ' ' .. ids, 'PX', ttl)
      found[key] = ' ' .. ids
    end
  end
  out[i] = r
end
if added > 0 then trim(stream, marker, keep, '', max_trim, touched) end
return out
"#;

/// KEYS: stream, trimmed marker. ARGV: retention_events, cutoff ms ('' = no age limit), max.
/// Returns how many entries were removed.
const LUA_TRIM: &str = r#"
return trim(KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]))
"#;

/// A consistent snapshot for reads and bounds. KEYS: stream, trimmed marker. ARGV: first id to
/// return (inclusive; '' = return no entries), count. Returns
/// `{trimmed marker or '', oldest id or '', head id or '', entries}`; the head is the newest
/// id ever added (`last-generated-id`), also when retention emptied the stream.
const LUA_READ: &str = r#"#!lua flags=no-writes
local stream, marker = KEYS[1], KEYS[2]
local trimmed = redis.call('GET', marker) or ''
local oldest, head = '', ''
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
if #first > 0 then oldest = first[1][1] end
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
if #last > 0 then
  head = last[1][1]
elseif redis.call('EXISTS', stream) == 1 then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info - 1, 2 do
    if info[i] == 'last-generated-id' then head = info[i + 1] end
  end
end
local entries = {}
if ARGV[1] ~= '' then
  entries = redis.call('XRANGE', stream, ARGV[1], '+', 'COUNT', ARGV[2])
end
return {trimmed, oldest, head, entries}
"#;

/// One step of a history lookup, read-only. KEYS: stream, channel index. ARGV: end of the
/// range (an id), whether that end is exclusive ('1'/'0'), start (an id, exclusive; '' =
/// none), how many retained events to return at most, how many index entries to look at at
/// most. Walks the index
/// newest first; an id before the stream's oldest entry ends the walk (retention removes the
/// oldest first, so every older one is gone too); an id missing from the stream otherwise is
/// skipped. Returns `{entries (newest first), last id looked at or '', done (0/1)}`; `done`:
/// no retained event of the channel is left in the range past the last id looked at.
const LUA_HISTORY: &str = r#"
local stream, index = KEYS[1], KEYS[2]
local stop = enc(ARGV[1])
if ARGV[2] == '1' then stop = '(' .. stop else stop = '[' .. stop end
local start = '-'
if ARGV[3] ~= '' then start = '(' .. enc(ARGV[3]) end
local want, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
if #first == 0 then return {{}, '', 1} end
local oldest = first[1][1]
local out, last, looked = {}, '', 0
while true do
  local n = math.min(budget - looked, 256)
  -- One past what is wanted: whether a candidate is left is known without another call.
  if #out >= want then n = 1 end
  if n <= 0 then return {out, last, 0} end
  local ids = redis.call('ZREVRANGEBYLEX', index, stop, start, 'LIMIT', 0, n)
  for _, member in ipairs(ids) do
    local id = dec(member)
    if id_lt(id, oldest) then return {out, last, 1} end
    if #out >= want then return {out, last, 0} end
    looked = looked + 1
    last = id
    local m = redis.call('XRANGE', stream, id, id)
    if #m > 0 then out[#out + 1] = m[1] end
  end
  if #ids < n then return {out, last, 1} end
  stop = '(' .. enc(last)
end
"#;

pub struct RedisLog {
    shared: Arc<Shared>,
    head: watch::Receiver<Position>,
    /// Stops the tailer when the log is dropped.
    _stop: DropGuard,
}

struct Shared {
    stream: String,
    trimmed_key: String,
    key_prefix: String,
    opts: LogOptions,
    client: Client,
    conn: Connector,
    health: Health,
    /// Newest head seen (by the tailer or an append), for waiting readers.
    head: watch::Sender<Position>,
    append: Script,
    trim: Script,
    read: Script,
    history: Script,
}

impl RedisLog {
    /// Builds the log for `cfg.url` and starts its tailer. Redis need not be reachable yet.
    pub async fn open(cfg: &EngineConfig, opts: LogOptions) -> Result<Arc<dyn EventLog>, LogError> {
        crate::install_crypto_provider();
        let client = client(cfg)?;
        let endpoint = client.get_connection_info().addr().to_string();
        let stream = cfg.stream.clone();
        let (head, head_rx) = watch::channel(Position::ZERO);
        let command_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let shared = Arc::new(Shared {
            trimmed_key: format!("{stream}:trimmed"),
            key_prefix: format!("{stream}:key:"),
            stream,
            opts,
            conn: Connector::new(client.clone(), command_config),
            client,
            health: Health::new(endpoint),
            head,
            append: Script::new(&format!("#!lua\n{LUA_LIB}\n{LUA_APPEND}")),
            trim: Script::new(&format!("#!lua\n{LUA_LIB}\n{LUA_TRIM}")),
            read: Script::new(LUA_READ),
            history: Script::new(&format!("#!lua flags=no-writes\n{LUA_LIB}\n{LUA_HISTORY}")),
        });
        let stop = CancellationToken::new();
        tokio::spawn(tail(shared.clone(), stop.clone()));
        Ok(Arc::new(RedisLog {
            shared,
            head: head_rx,
            _stop: stop.drop_guard(),
        }))
    }
}

/// The client for `cfg.url`, with `cfg.tls_ca_file` as the only trusted CA when set.
fn client(cfg: &EngineConfig) -> Result<Client, LogError> {
    let config_error = LogError::Config;
    let url = cfg.url.as_str();
    let client = match &cfg.tls_ca_file {
        None => Client::open(url),
        Some(path) => {
            if !url.starts_with("rediss://") && !url.starts_with("valkeys://") {
                return Err(config_error(
                    "log.tls_ca_file is set but log.url does not use TLS (rediss://)".into(),
                ));
            }
            let pem = std::fs::read(path).map_err(|e| {
                config_error(format!(
                    "cannot read log.tls_ca_file {}: {e}",
                    path.display()
                ))
            })?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(config_error(format!(
                    "log.tls_ca_file {} holds no PEM certificate",
                    path.display()
                )));
            }
            Client::build_with_tls(
                url,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
    };
    // The URL may hold a password: the message never repeats it.
    client.map_err(|e| config_error(format!("log.url is not a usable Redis URL: {e}")))
}

/// The command connection: one multiplexed connection, replaced when it breaks. While Redis
/// is unreachable, callers fail at once and one reconnection is tried per backoff period.
struct Connector {
    client: Client,
    config: AsyncConnectionConfig,
    slot: Mutex<Slot>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Slot {
    conn: Option<(u64, MultiplexedConnection)>,
    generation: u64,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

impl Connector {
    fn new(client: Client, config: AsyncConnectionConfig) -> Self {
        Self {
            client,
            config,
            slot: Mutex::default(),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        // Every critical section leaves the slot consistent.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn get(&self, health: &Health) -> Result<(u64, MultiplexedConnection), LogError> {
        if let Some(c) = self.slot().conn.clone() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        {
            let slot = self.slot();
            if let Some(c) = slot.conn.clone() {
                return Ok(c);
            }
            if slot.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(LogError::Unavailable(format!(
                    "redis is unreachable ({}); reconnecting",
                    slot.last_error
                )));
            }
        }
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT + Duration::from_secs(1),
            self.client
                .get_multiplexed_async_connection_with_config(&self.config),
        )
        .await;
        let mut slot = self.slot();
        match attempt {
            Ok(Ok(conn)) => {
                slot.generation += 1;
                slot.failures = 0;
                slot.retry_at = None;
                let c = (slot.generation, conn);
                slot.conn = Some(c.clone());
                drop(slot);
                health.up();
                Ok(c)
            }
            Ok(Err(e)) => Err(self.connect_failed(slot, e.to_string(), health)),
            Err(_) => Err(self.connect_failed(slot, "connection timed out".into(), health)),
        }
    }

    fn connect_failed(
        &self,
        mut slot: std::sync::MutexGuard<'_, Slot>,
        error: String,
        health: &Health,
    ) -> LogError {
        slot.failures = slot.failures.saturating_add(1);
        slot.retry_at = Some(Instant::now() + backoff_with_jitter(slot.failures));
        slot.last_error = error.clone();
        drop(slot);
        health.down(&error);
        LogError::Unavailable(format!("redis is unreachable: {error}"))
    }

    /// Lets the next call connect at once (the tailer just reached Redis again).
    fn retry_now(&self) {
        self.slot().retry_at = None;
    }

    /// Forgets connection `generation` (if still current): the next call reconnects.
    fn broken(&self, generation: u64) {
        let mut slot = self.slot();
        if slot.conn.as_ref().is_some_and(|(g, _)| *g == generation) {
            slot.conn = None;
        }
    }
}

/// Whether Redis is reachable, to log one line when an outage starts and one when it ends.
struct Health {
    endpoint: String,
    down: AtomicBool,
    /// Last warning about a server error that is not an outage (rate-limited).
    last_warn: Mutex<Option<Instant>>,
}

impl Health {
    fn new(endpoint: String) -> Self {
        Self {
            endpoint,
            down: AtomicBool::new(false),
            last_warn: Mutex::new(None),
        }
    }

    fn down(&self, error: &str) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(redis = %self.endpoint, error, "the redis log is unreachable; reconnecting in the background");
        }
    }

    fn up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!(redis = %self.endpoint, "the redis log is reachable again");
        }
    }

    fn server_error(&self, error: &RedisError) {
        let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(redis = %self.endpoint, error = %error, "the redis log refused a command (further such errors are not logged for 30 s)");
        }
    }
}

/// Errors after which the connection is not to be used again.
fn connection_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_timeout()
        // A primary demoted to replica: reconnect (and resolve the name) to find the new one.
        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

impl Shared {
    /// Runs a script on the command connection.
    async fn eval(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<Value, LogError> {
        let work = async {
            let (generation, mut conn) = self.conn.get(&self.health).await?;
            invocation
                .invoke_async::<Value>(&mut conn)
                .await
                .map_err(|e| self.failed(generation, e))
        };
        match tokio::time::timeout(OP_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => {
                if let Some((generation, _)) = self.conn.slot().conn.clone() {
                    self.conn.broken(generation);
                }
                self.health.down("no answer in time");
                Err(LogError::Unavailable("redis did not answer in time".into()))
            }
        }
    }

    fn failed(&self, generation: u64, e: RedisError) -> LogError {
        if connection_lost(&e) {
            self.conn.broken(generation);
            self.health.down(&e.to_string());
        } else {
            self.health.server_error(&e);
        }
        LogError::Unavailable(format!("redis: {e}"))
    }

    fn publish_head(&self, head: Position) {
        self.head.send_if_modified(|h| {
            let newer = head > *h;
            if newer {
                *h = head;
            }
            newer
        });
    }

    /// The key of `channel`'s index (see the module docs).
    fn index_key(&self, channel: &str) -> String {
        format!("{}:ch:{channel}", self.stream)
    }

    fn read_invocation(
        &self,
        start: Option<Position>,
        count: usize,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.read.prepare_invoke();
        invocation
            .key(&self.stream)
            .key(&self.trimmed_key)
            .arg(start.map(redis_id).unwrap_or_default())
            .arg(count);
        invocation
    }

    /// Trims by count and (when `cutoff` is given) by age, in steps of at most `MAX_TRIM`.
    async fn trim(&self, cutoff: Option<u64>) -> Result<(), LogError> {
        loop {
            let mut invocation = self.trim.prepare_invoke();
            invocation
                .key(&self.stream)
                .key(&self.trimmed_key)
                .arg(self.opts.retention_events)
                .arg(cutoff.map(|c| c.to_string()).unwrap_or_default())
                .arg(MAX_TRIM);
            let removed = match self.eval(&invocation).await? {
                Value::Int(n) => n,
                other => return Err(unexpected("trim", &other)),
            };
            if removed < MAX_TRIM as i64 {
                return Ok(());
            }
        }
    }
}

/// One step of a history lookup (see `LUA_HISTORY`).
struct HistoryStep {
    /// Stream entries, newest first.
    entries: Vec<Value>,
    /// The last index id looked at.
    last: Option<String>,
    /// No retained event of the channel is left in the range past `last`.
    done: bool,
}

fn parse_history_step(reply: Value) -> Result<HistoryStep, LogError> {
    let Value::Array(parts) = reply else {
        return Err(unexpected("history", &reply));
    };
    let [entries, last, done] = <[Value; 3]>::try_from(parts)
        .map_err(|parts| unexpected("history", &Value::Array(parts)))?;
    let entries = match entries {
        Value::Array(entries) => entries,
        Value::Nil => Vec::new(),
        other => return Err(unexpected("history", &other)),
    };
    let last = match text(&last) {
        Some("") => None,
        Some(id) => Some(id.to_owned()),
        None if last == Value::Nil => None,
        None => return Err(unexpected("history", &last)),
    };
    let done = match done {
        Value::Int(d) => d != 0,
        other => return Err(unexpected("history", &other)),
    };
    Ok(HistoryStep {
        entries,
        last,
        done,
    })
}

/// A read's view of the log, taken atomically.
struct Snapshot {
    trimmed: Option<Position>,
    oldest: Option<Position>,
    head: Position,
    entries: Vec<Event>,
}

fn parse_snapshot(reply: Value) -> Result<Snapshot, LogError> {
    let Value::Array(parts) = reply else {
        return Err(unexpected("read", &reply));
    };
    let [trimmed, oldest, head, entries] =
        <[Value; 4]>::try_from(parts).map_err(|parts| unexpected("read", &Value::Array(parts)))?;
    let entries = match entries {
        Value::Array(entries) => entries
            .iter()
            .map(parse_entry)
            .collect::<Result<Vec<_>, _>>()?,
        Value::Nil => Vec::new(),
        other => return Err(unexpected("read", &other)),
    };
    Ok(Snapshot {
        trimmed: optional_id(&trimmed)?,
        oldest: optional_id(&oldest)?,
        head: optional_id(&head)?.unwrap_or(Position::ZERO),
        entries,
    })
}

/// `[id, [field, value, …]]` → the event in field `e`.
fn parse_entry(entry: &Value) -> Result<Event, LogError> {
    let Value::Array(parts) = entry else {
        return Err(unexpected("entry", entry));
    };
    let (Some(id), Some(Value::Array(fields))) = (parts.first(), parts.get(1)) else {
        return Err(unexpected("entry", entry));
    };
    let pos = parse_id(text(id).ok_or_else(|| unexpected("entry id", id))?)?;
    let json = fields
        .chunks(2)
        .find(|pair| pair.first().and_then(bytes) == Some(b"e".as_slice()))
        .and_then(|pair| pair.get(1))
        .and_then(bytes)
        .ok_or_else(|| LogError::Corrupt {
            pos,
            message: "the stream entry has no field `e`".into(),
        })?;
    let event: NewEvent = serde_json::from_slice(json).map_err(|e| LogError::Corrupt {
        pos,
        message: e.to_string(),
    })?;
    Ok(Event { pos, event })
}

fn parse_appended(reply: Value, items: &[AppendItem]) -> Result<Vec<Appended>, LogError> {
    let Value::Array(results) = reply else {
        return Err(unexpected("append", &reply));
    };
    if results.len() != items.len() {
        return Err(unexpected("append", &Value::Array(results)));
    }
    results
        .iter()
        .zip(items)
        .map(|(result, item)| {
            let Value::Array(parts) = result else {
                return Err(unexpected("append", result));
            };
            let duplicate = match parts.first() {
                Some(Value::Int(0)) => false,
                Some(Value::Int(1)) => true,
                _ => return Err(unexpected("append", result)),
            };
            let positions = parts[1..]
                .iter()
                .map(|id| parse_id(text(id).ok_or_else(|| unexpected("append id", id))?))
                .collect::<Result<Vec<_>, _>>()?;
            if !duplicate && positions.len() != item.events.len() {
                return Err(unexpected("append", result));
            }
            Ok(Appended {
                positions,
                duplicate,
            })
        })
        .collect()
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    bytes(v).and_then(|b| std::str::from_utf8(b).ok())
}

/// `''` (or nil) → `None`, else a stream id.
fn optional_id(v: &Value) -> Result<Option<Position>, LogError> {
    match v {
        Value::Nil => Ok(None),
        _ => match text(v) {
            Some("") => Ok(None),
            Some(s) => parse_id(s).map(Some),
            None => Err(unexpected("id", v)),
        },
    }
}

/// A Redis stream id (`ms-seq`) as a position.
fn parse_id(s: &str) -> Result<Position, LogError> {
    let (hi, lo) = s.split_once('-').ok_or_else(|| {
        LogError::Unavailable(format!("redis returned a malformed stream id {s:?}"))
    })?;
    match (hi.parse(), lo.parse()) {
        (Ok(hi), Ok(lo)) => Ok(Position { hi, lo }),
        _ => Err(LogError::Unavailable(format!(
            "redis returned a malformed stream id {s:?}"
        ))),
    }
}

/// A position as a Redis stream id: always both parts (`"42"` would mean `42-0` to Redis as
/// a range start but `42-<max>` as an end).
fn redis_id(p: Position) -> String {
    format!("{}-{}", p.hi, p.lo)
}

/// The first stream id after `p`, if there is one.
fn successor(p: Position) -> Option<Position> {
    if p.lo < u64::MAX {
        Some(Position {
            hi: p.hi,
            lo: p.lo + 1,
        })
    } else if p.hi < u64::MAX {
        Some(Position {
            hi: p.hi + 1,
            lo: 0,
        })
    } else {
        None
    }
}

fn unexpected(what: &str, v: &Value) -> LogError {
    let mut shown = format!("{v:?}");
    if shown.len() > 200 {
        let mut cut = 200;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push('…');
    }
    LogError::Unavailable(format!("unexpected {what} reply from redis: {shown}"))
}

#[async_trait]
impl EventLog for RedisLog {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn bus(&self) -> Option<Arc<dyn crate::cluster::Bus>> {
        Some(Arc::new(RedisBus {
            shared: self.shared.clone(),
        }))
    }

    async fn append(&self, items: Vec<AppendItem>, now_ms: u64) -> Result<Vec<Appended>, LogError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let s = &self.shared;
        let window = s.opts.dedupe_window_ms;
        let mut invocation = s.append.prepare_invoke();
        invocation.key(&s.stream).key(&s.trimmed_key);
        for key in items.iter().filter_map(|i| i.key.as_ref()) {
            invocation.key(format!("{}{key}", s.key_prefix));
        }
        let expiry = if window > 0 {
            now_ms.saturating_add(window).to_string()
        } else {
            String::new()
        };
        invocation
            .arg(now_ms)
            .arg(expiry)
            .arg(window.saturating_add(KEY_GRACE_MS))
            .arg(s.opts.retention_events)
            .arg(MAX_TRIM)
            .arg(items.len());
        for item in &items {
            invocation
                .arg(if item.key.is_some() { "1" } else { "0" })
                .arg(item.events.len());
            for event in &item.events {
                let json = serde_json::to_string(event).expect("events serialize");
                invocation.arg(json).arg(event.time_ms).arg(&event.channel);
            }
        }
        let reply = s.eval(&invocation).await?;
        let appended = parse_appended(reply, &items)?;
        if let Some(head) = appended
            .iter()
            .filter(|a| !a.duplicate)
            .filter_map(|a| a.positions.last())
            .max()
        {
            s.publish_head(*head);
        }
        Ok(appended)
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
        let scan = max.clamp(1, MAX_SCAN);
        let snap = parse_snapshot(
            self.shared
                .eval(&self.shared.read_invocation(successor(after), scan))
                .await?,
        )?;
        self.shared.publish_head(snap.head);
        let mut batch = ReadBatch {
            next: after,
            at_head: snap.entries.len() < scan
                || snap.entries.last().is_some_and(|e| e.pos >= snap.head),
            ..ReadBatch::default()
        };
        // Retention removes the oldest entries first, so something after `after` is gone
        // exactly when the newest removed id is after it.
        if let Some(trimmed) = snap.trimmed.filter(|t| after < *t) {
            batch.gap = Some(Gap {
                oldest: snap.oldest,
                damaged: false,
            });
            batch.next = trimmed;
        }
        // At most `scan` entries came back, so only `max` can stop the fill.
        let mut scan_left = scan;
        if !fill(&mut batch, snap.entries, max, &mut scan_left, filter) {
            batch.at_head = false;
        }
        Ok(batch)
    }

    async fn history(&self, q: HistoryQuery<'_>, filter: Filter<'_>) -> Result<History, LogError> {
        let s = &self.shared;
        let mut history = History::default();
        if q.through <= q.after {
            return Ok(history);
        }
        let index = s.index_key(q.channel);
        let start = if q.after == Position::ZERO {
            String::new()
        } else {
            redis_id(q.after)
        };
        let (mut stop, mut exclusive) = (redis_id(q.through), "0");
        // Events asked for beyond the ones still needed, doubled after every step the filter
        // left short (targeted events of other users).
        let mut extra = 0usize;
        let mut looked = 0usize;
        'steps: loop {
            let needed = q.limit - history.events.len();
            let want = needed.max(extra).min(HISTORY_STEP);
            let mut invocation = s.history.prepare_invoke();
            invocation
                .key(&s.stream)
                .key(&index)
                .arg(&stop)
                .arg(exclusive)
                .arg(&start)
                .arg(want)
                .arg(HISTORY_LOOK);
            let step = parse_history_step(s.eval(&invocation).await?)?;
            for entry in &step.entries {
                if history.events.len() >= q.limit || looked == HISTORY_SCAN {
                    // A retained event of the channel is left over.
                    history.more = true;
                    break 'steps;
                }
                looked += 1;
                let event = parse_entry(entry)?;
                history.looked_back_to = Some(event.pos);
                if filter(&event) {
                    history.events.push(Arc::new(event));
                }
            }
            if history.events.len() >= q.limit || looked == HISTORY_SCAN {
                history.more = !step.done;
                break;
            }
            match step.last {
                Some(last) if !step.done => (stop, exclusive) = (last, "1"),
                _ => break,
            }
            extra = (extra * 2).clamp(16, HISTORY_STEP);
        }
        history.events.reverse();
        Ok(history)
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        let snap = parse_snapshot(
            self.shared
                .eval(&self.shared.read_invocation(None, 0))
                .await?,
        )?;
        self.shared.publish_head(snap.head);
        Ok(Bounds {
            head: snap.head,
            oldest: snap.oldest,
        })
    }

    async fn enforce_retention(&self, now_ms: u64) -> Result<(), LogError> {
        let age = self.shared.opts.retention_age_ms;
        self.shared
            .trim((age > 0).then(|| now_ms.saturating_sub(age)))
            .await
    }
}

/// Learns the head as soon as any node appends, on a connection of its own (`XREAD BLOCK`
/// would hold up every command queued behind it on the shared one), and publishes it to
/// waiting readers. Reconnects with jittered exponential backoff; ends when the log is
/// dropped.
async fn tail(shared: Arc<Shared>, stop: CancellationToken) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS) + RESPONSE_TIMEOUT));
    let mut failures = 0u32;
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(
                CONNECT_TIMEOUT + Duration::from_secs(1),
                shared.client.get_multiplexed_async_connection_with_config(&config),
            ) => r,
        };
        let error = match attempt {
            Ok(Ok(mut conn)) => {
                // Redis is back: commands need not wait for their own backoff to end.
                shared.conn.retry_now();
                shared.health.up();
                let error = tokio::select! {
                    _ = stop.cancelled() => return,
                    e = follow(&shared, &mut conn, &mut failures) => e,
                };
                if connection_lost(&error) {
                    shared.health.down(&error.to_string());
                } else {
                    shared.health.server_error(&error);
                }
                error.to_string()
            }
            Ok(Err(e)) => {
                shared.health.down(&e.to_string());
                e.to_string()
            }
            Err(_) => {
                shared.health.down("connection timed out");
                "connection timed out".into()
            }
        };
        failures = failures.saturating_add(1);
        let backoff = backoff_with_jitter(failures);
        tracing::debug!(error, ?backoff, "redis log tailer reconnecting");
        if sleep_or_cancel(backoff, &stop).await {
            return;
        }
    }
}

/// The tailer's loop on one connection; returns the error that ended it.
async fn follow(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    failures: &mut u32,
) -> RedisError {
    loop {
        let head = match shared
            .read_invocation(None, 0)
            .invoke_async::<Value>(conn)
            .await
        {
            Ok(reply) => match parse_snapshot(reply) {
                Ok(snap) => snap.head,
                Err(e) => {
                    return RedisError::from((ErrorKind::Client, "unexpected reply", e.to_string()))
                }
            },
            Err(e) => return e,
        };
        *failures = 0;
        shared.publish_head(head);
        let woke = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&shared.stream)
            .arg(redis_id(head))
            .query_async::<Value>(conn)
            .await;
        match woke {
            Ok(Value::Nil) => {}
            // Entries arrived: a short pause lets a burst of appends be learnt in one step.
            Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            Err(e) => return e,
        }
    }
}

/// The cluster control bus on Redis pub/sub: topic `t` is the channel `{stream}:ctl:t`. It
/// publishes over the command connection and listens on a connection of its own.
struct RedisBus {
    shared: Arc<Shared>,
}

impl RedisBus {
    fn channel(&self, topic: &str) -> String {
        format!("{}:ctl:{topic}", self.shared.stream)
    }
}

#[async_trait]
impl crate::cluster::Bus for RedisBus {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, topic: &str, payload: bytes::Bytes) -> Result<(), String> {
        let shared = &self.shared;
        let (generation, mut conn) = shared
            .conn
            .get(&shared.health)
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("PUBLISH")
            .arg(self.channel(topic))
            .arg(payload.as_ref())
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| {
                if connection_lost(&e) {
                    shared.conn.broken(generation);
                }
                e.to_string()
            })
    }

    async fn listen(
        &self,
        topics: Vec<String>,
        tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
        stop: CancellationToken,
    ) {
        use futures::StreamExt;
        let channels: Vec<String> = topics.iter().map(|t| self.channel(t)).collect();
        let mut failures = 0u32;
        loop {
            let subscribe = async {
                let mut pubsub = self.shared.client.get_async_pubsub().await?;
                for c in &channels {
                    pubsub.subscribe(c).await?;
                }
                Ok::<_, RedisError>(pubsub)
            };
            let attempt = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), subscribe) => r,
            };
            match attempt {
                Ok(Ok(pubsub)) => {
                    if failures > 0 {
                        tracing::info!("redis cluster bus: listening again");
                    }
                    failures = 0;
                    let mut messages = pubsub.into_on_message();
                    loop {
                        let message = tokio::select! {
                            _ = stop.cancelled() => return,
                            m = messages.next() => m,
                        };
                        let Some(message) = message else { break };
                        let payload = bytes::Bytes::copy_from_slice(message.get_payload_bytes());
                        if tx.send(payload).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "redis cluster bus cannot subscribe"),
                Err(_) => tracing::debug!("redis cluster bus: connecting timed out"),
            }
            failures = failures.saturating_add(1);
            if sleep_or_cancel(backoff_with_jitter(failures), &stop).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_successors() {
        let p = parse_id("1700000000000-3").unwrap();
        assert_eq!(
            p,
            Position {
                hi: 1_700_000_000_000,
                lo: 3
            }
        );
        assert_eq!(redis_id(p), "1700000000000-3");
        assert_eq!(p.to_string(), "1700000000000-3");
        assert_eq!(redis_id(Position::ZERO), "0-0");
        assert!(parse_id("12").is_err());
        assert!(parse_id("a-1").is_err());
        assert_eq!(
            successor(Position {
                hi: 5,
                lo: u64::MAX
            }),
            Some(Position { hi: 6, lo: 0 })
        );
        assert_eq!(
            successor(Position {
                hi: u64::MAX,
                lo: u64::MAX
            }),
            None
        );
    }

    #[test]
    fn bad_urls_and_ca_files_are_refused_with_a_reason() {
        let cfg = |url: &str, ca: Option<&str>| EngineConfig {
            url: url.into(),
            stream: "s".into(),
            tls_ca_file: ca.map(Into::into),
        };
        let message = |c: &EngineConfig| match client(c) {
            Err(LogError::Config(m)) => m,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted"),
        };
        assert!(message(&cfg("http://localhost:6379", None)).contains("log.url"));
        assert!(message(&cfg("not a url", None)).contains("log.url"));
        let m = message(&cfg(
            "redis://user:s3cret@host:6379",
            Some("/nonexistent.pem"),
        ));
        assert!(m.contains("rediss://"), "{m}");
        assert!(!m.contains("s3cret"));
        let m = message(&cfg("rediss://host:6379", Some("/nonexistent.pem")));
        assert!(m.contains("cannot read log.tls_ca_file"), "{m}");
        let dir = std::env::temp_dir().join(format!("ssegate-redis-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate").unwrap();
        let m = message(&cfg("rediss://host:6379", Some(dir.to_str().unwrap())));
        std::fs::remove_file(&dir).unwrap();
        assert!(m.contains("no PEM certificate"), "{m}");
        assert!(client(&cfg("redis://user:pw@localhost:6379/2", None)).is_ok());
    }
}
