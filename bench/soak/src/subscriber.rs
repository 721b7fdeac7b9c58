//! The subscribers: raw-TCP SSE clients that resume with `Last-Event-ID` whenever their
//! stream ends (token expiry, kick, their own churn), and fold every event into the
//! exactly-once check. Three roles:
//!
//! - **regular**: a few random channels, a token of 20–40 s (re-minted at each reconnect),
//!   kicked and churned; must drain at the end.
//! - **slow**: reads 64 bytes every 200 ms (320 B/s) through a 2 KiB receive buffer, with a
//!   token valid for the whole run. The server may let it lag, read the log for it, or drop
//!   it; what it does receive must still be in order, without duplicates, and without holes
//!   except after a `gap` (docs/api.md).
//! - **canary**: subscribes to `soak:canary`, the channel the cross-site requests try to
//!   publish to; it must receive nothing.
//!
//! The churn controller (`run_churn`) closes streams from the client side: most reopen a
//! little later with `Last-Event-ID`, some subscribers leave for good and a brand-new one
//! joins in their place. A brand-new subscriber's first connection resumes from the highest
//! id acknowledged so far, so that what it is owed is exact (without `Last-Event-ID` a
//! stream starts at a head the client cannot observe).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::check::ChanCheck;
use crate::ctx::{subscriber_addr, Ctx, Fault, Finals, SLOW_READERS, WELL_BEHAVED};
use crate::wire::{connect_from, read_head, SseParser};

/// A stream with no byte for this long (heartbeats come every 15 s) is given up and reopened.
const STALL: Duration = Duration::from_secs(20);
/// The canary's channel.
pub const CANARY: &str = "soak:canary";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Regular,
    Slow,
    Canary,
}

/// What the churn controller and the kicker know of a regular subscriber.
pub struct SubHandle {
    pub id: u64,
    pub user: String,
    /// A stream is open (its `connected` arrived) and not ended.
    pub open: AtomicBool,
    tx: mpsc::Sender<Cmd>,
}

enum Cmd {
    /// Close the stream now, reopen after this long with `Last-Event-ID`.
    Reopen(Duration),
    /// Close the stream and leave for good.
    Leave,
}

/// Everything a subscriber saw, for the report and the check.
#[derive(Debug)]
pub struct SubResult {
    pub id: u64,
    pub role: Role,
    pub chans: Vec<ChanCheck>,
    /// The position its first connection resumed from.
    pub start: u64,
    /// The highest id received.
    pub last_id: u64,
    pub left: bool,
    pub drained: bool,
    pub connects: u64,
    /// Ids that did not increase along the subscriber's life.
    pub order_violations: u64,
    /// Frames that were not a soak event of its channels (or did not parse).
    pub foreign: u64,
    pub gaps: u64,
    /// Streams the server ended (slow readers: without having asked).
    pub server_ends: u64,
    pub bytes: u64,
    pub events: u64,
}

/// Starts a brand-new regular subscriber and registers it with the churn controller.
pub fn spawn_regular(ctx: &Arc<Ctx>) -> Arc<SubHandle> {
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(4);
    let handle = Arc::new(SubHandle {
        id,
        user: format!("u{}", id / 4),
        open: AtomicBool::new(false),
        tx,
    });
    let mut rng = rand::thread_rng();
    let per = ctx.opts.channels_per_sub.min(ctx.opts.channels);
    let channels: Vec<usize> = sample(&mut rng, ctx.opts.channels, per).into_vec();
    let sub = Sub {
        ctx: ctx.clone(),
        role: Role::Regular,
        id,
        user: handle.user.clone(),
        src: subscriber_addr(id, ctx.opts.sub_addrs),
        names: channels.iter().map(|&c| Ctx::channel_name(c)).collect(),
        handle: Some(handle.clone()),
        cmds: Some(rx),
    };
    let task = tokio::spawn(sub.run(channels));
    lock(&ctx.tasks).push(task);
    lock(&ctx.registry).push(handle.clone());
    handle
}

/// Starts slow reader `i` on one to three channels.
pub fn spawn_slow(ctx: &Arc<Ctx>, i: usize) {
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let n = 1 + i % 3;
    let channels: Vec<usize> = sample(&mut rand::thread_rng(), ctx.opts.channels, n).into_vec();
    let sub = Sub {
        ctx: ctx.clone(),
        role: Role::Slow,
        id,
        user: format!("slow{i}"),
        src: SLOW_READERS,
        names: channels.iter().map(|&c| Ctx::channel_name(c)).collect(),
        handle: None,
        cmds: None,
    };
    lock(&ctx.tasks).push(tokio::spawn(sub.run(channels)));
}

/// Starts the canary of the cross-site publishes.
pub fn spawn_canary(ctx: &Arc<Ctx>) {
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let sub = Sub {
        ctx: ctx.clone(),
        role: Role::Canary,
        id,
        user: "canary".into(),
        src: WELL_BEHAVED,
        names: vec![CANARY.into()],
        handle: None,
        cmds: None,
    };
    lock(&ctx.tasks).push(tokio::spawn(sub.run(Vec::new())));
}

pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Sub {
    ctx: Arc<Ctx>,
    role: Role,
    id: u64,
    user: String,
    src: Ipv4Addr,
    names: Vec<String>,
    handle: Option<Arc<SubHandle>>,
    cmds: Option<mpsc::Receiver<Cmd>>,
}

/// How one connection ended.
enum End {
    Finish,
    Leave,
    Reopen(Duration),
    /// The server ended it (EOF or reset), after a `closing` or not.
    Server,
    Stalled,
}

/// Why opening a stream failed.
enum Refused {
    Status(u16, String, Option<u64>),
    Io(String),
}

/// The state that survives reconnections.
struct Seen {
    role: Role,
    chans: Vec<ChanCheck>,
    start: u64,
    last_id: u64,
    /// The `closing` reason of the current connection.
    closing: Option<String>,
    connected: bool,
    order_violations: u64,
    foreign: u64,
    gaps: u64,
    events: u64,
}

impl Seen {
    fn on_frame(&mut self, ctx: &Ctx, event: &str, id: Option<&str>, data: &str) {
        match event {
            "connected" => self.connected = true,
            "closing" => {
                let reason = serde_json::from_str::<serde_json::Value>(data)
                    .ok()
                    .and_then(|v| v.get("reason")?.as_str().map(str::to_owned));
                self.closing = Some(reason.unwrap_or_else(|| "?".into()));
            }
            "gap" => {
                self.gaps += 1;
                self.chans.iter_mut().for_each(ChanCheck::on_gap);
            }
            "subscribed" | "unsubscribed" => {}
            _ => match id {
                Some(id) => self.on_event(ctx, id, data),
                None => self.foreign += 1,
            },
        }
    }

    fn on_event(&mut self, ctx: &Ctx, id_text: &str, data: &str) {
        self.events += 1;
        ctx.stats.events.fetch_add(1, Ordering::Relaxed);
        let Ok(id) = id_text.parse::<u64>() else {
            self.foreign += 1;
            return;
        };
        if id <= self.last_id {
            self.order_violations += 1;
        } else {
            self.last_id = id;
        }
        if self.role == Role::Canary {
            return;
        }
        let envelope: serde_json::Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(_) => {
                self.foreign += 1;
                return;
            }
        };
        let seq = envelope.pointer("/data/s").and_then(|s| s.as_u64());
        let chan = envelope
            .get("channel")
            .and_then(|c| c.as_str())
            .and_then(Ctx::channel_index)
            .and_then(|c| self.chans.iter().position(|ch| ch.channel == c));
        let same_id = envelope.get("id").and_then(|i| i.as_str()) == Some(id_text);
        let (Some(seq), Some(pos), true) = (seq, chan, same_id) else {
            self.foreign += 1;
            return;
        };
        let times = match (self.role == Role::Regular)
            .then(|| ctx.take_fault())
            .flatten()
        {
            Some(Fault::Skip) => 0,
            Some(Fault::Dup) => 2,
            Some(Fault::Append) | None => 1,
        };
        for _ in 0..times {
            self.chans[pos].on_event(seq, id);
        }
    }

    /// Every event of its channels up to the end of the log has arrived.
    fn drained(&self, finals: &Finals) -> bool {
        self.chans.iter().all(|ch| {
            let (seq, id) = finals.get(ch.channel).copied().unwrap_or((0, 0));
            id <= self.start || ch.last.is_some_and(|(s, _)| s >= seq)
        })
    }
}

impl Sub {
    async fn run(mut self, channels: Vec<usize>) -> SubResult {
        let ctx = self.ctx.clone();
        let start = ctx.ledger.max_acked();
        let mut seen = Seen {
            role: self.role,
            chans: channels.iter().map(|&c| ChanCheck::new(c)).collect(),
            start,
            last_id: start,
            closing: None,
            connected: false,
            order_violations: 0,
            foreign: 0,
            gaps: 0,
            events: 0,
        };
        let mut result = SubResult {
            id: self.id,
            role: self.role,
            chans: Vec::new(),
            start,
            last_id: start,
            left: false,
            drained: false,
            connects: 0,
            order_violations: 0,
            foreign: 0,
            gaps: 0,
            server_ends: 0,
            bytes: 0,
            events: 0,
        };
        let mut finals_rx = ctx.finals.subscribe();
        let mut rng = rand::rngs::StdRng::from_entropy();
        let mut wait = Duration::ZERO;
        loop {
            if !wait.is_zero() {
                match self.pause(wait).await {
                    Some(End::Leave) => {
                        result.left = true;
                        break;
                    }
                    Some(_) => break,
                    None => {}
                }
            }
            if ctx.finish.is_cancelled() {
                break;
            }
            let ttl = match self.role {
                Role::Regular => rng.gen_range(ctx.opts.ttl_min_s..=ctx.opts.ttl_max_s),
                // Slow readers and the canary stay for the whole run.
                _ => 24 * 3600,
            };
            let token = ctx.minter.subscriber(&self.user, ttl);
            result.connects += 1;
            ctx.stats.connects.fetch_add(1, Ordering::Relaxed);
            let (mut stream, first_bytes) = match self.open(&token, seen.last_id).await {
                Ok(s) => s,
                Err(Refused::Status(status, code, retry_after)) => {
                    ctx.stats
                        .error(format!("{:?} stream {status} {code}", self.role).to_lowercase());
                    let base = retry_after.map_or(500, |s| s * 1000);
                    wait = Duration::from_millis(base + rng.gen_range(0..500));
                    continue;
                }
                Err(Refused::Io(e)) => {
                    ctx.stats
                        .error(format!("{:?} stream: {e}", self.role).to_lowercase());
                    wait = Duration::from_millis(200 + rng.gen_range(0..500));
                    continue;
                }
            };
            seen.closing = None;
            seen.connected = false;
            let mut parser = SseParser::default();
            let mut counted = false;
            let mut buf = vec![0u8; first_bytes.len().max(16 * 1024)];
            let mut n = first_bytes.len();
            buf[..n].copy_from_slice(&first_bytes);
            let end = loop {
                if n > 0 {
                    result.bytes += n as u64;
                    parser.feed(&buf[..n], &mut |f| {
                        seen.on_frame(&ctx, &f.event, f.id.as_deref(), &f.data)
                    });
                }
                if seen.connected && !counted {
                    counted = true;
                    self.set_open(true);
                }
                if !result.drained && self.role == Role::Regular {
                    let finals = finals_rx.borrow().clone();
                    if finals.is_some_and(|f| seen.drained(&f)) {
                        result.drained = true;
                        ctx.stats.drained.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n = match self
                    .read(&mut stream, &mut buf, &mut finals_rx, seen.connected)
                    .await
                {
                    Ok(n) => n,
                    Err(end) => break end,
                };
            };
            if counted {
                self.set_open(false);
            }
            drop(stream);
            wait = match end {
                End::Finish => break,
                End::Leave => {
                    result.left = true;
                    break;
                }
                End::Reopen(after) => {
                    ctx.stats.client_closes.fetch_add(1, Ordering::Relaxed);
                    after
                }
                End::Stalled => {
                    ctx.stats.stalls.fetch_add(1, Ordering::Relaxed);
                    Duration::from_millis(100)
                }
                End::Server => {
                    result.server_ends += 1;
                    self.count_server_end(seen.closing.as_deref());
                    // Reconnect at once, spread a little (a kick ends several at a time).
                    Duration::from_millis(1 + rng.gen_range(0..250))
                }
            };
        }
        if result.left {
            ctx.stats.leaves.fetch_add(1, Ordering::Relaxed);
            ctx.stats.client_closes.fetch_add(1, Ordering::Relaxed);
        }
        // A subscriber with nothing left to receive when the finals arrive is drained too.
        if !result.drained && !result.left && self.role == Role::Regular {
            if let Some(finals) = finals_rx.borrow().clone() {
                if seen.drained(&finals) {
                    result.drained = true;
                    ctx.stats.drained.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        result.chans = seen.chans;
        result.last_id = seen.last_id;
        result.order_violations = seen.order_violations;
        result.foreign = seen.foreign;
        result.gaps = seen.gaps;
        result.events = seen.events;
        result
    }

    /// Counts a stream the server ended: expiry and kicks are expected, anything else is not
    /// (for a slow reader, being dropped is allowed but counted).
    fn count_server_end(&self, closing: Option<&str>) {
        let stats = &self.ctx.stats;
        match closing {
            Some("token_expired") => {
                stats.expired.fetch_add(1, Ordering::Relaxed);
            }
            Some("kicked") => {
                stats.kicked.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                let reason = other.unwrap_or("(none: the connection ended)");
                stats.other_closing(&format!("{:?}: {reason}", self.role).to_lowercase());
                if self.role != Role::Slow {
                    stats.unexpected_ends.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn set_open(&self, open: bool) {
        let delta = if open { 1 } else { -1 };
        match self.role {
            Role::Regular => {
                self.ctx
                    .stats
                    .open_streams
                    .fetch_add(delta, Ordering::Relaxed);
            }
            Role::Slow => {
                self.ctx.stats.open_slow.fetch_add(delta, Ordering::Relaxed);
            }
            Role::Canary => {}
        }
        if let Some(h) = &self.handle {
            h.open.store(open, Ordering::Relaxed);
        }
    }

    /// Waits `d` (offline: backoff or churn); `Some` when told to stop meanwhile.
    async fn pause(&mut self, d: Duration) -> Option<End> {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = self.ctx.finish.cancelled() => return Some(End::Finish),
                _ = &mut sleep => return None,
                cmd = recv(&mut self.cmds) => match cmd {
                    Some(Cmd::Leave) => return Some(End::Leave),
                    // Already offline.
                    Some(Cmd::Reopen(_)) => {}
                    None => self.cmds = None,
                }
            }
        }
    }

    /// Reads the next bytes of the stream: `Ok(0)` is a wake-up to re-check the drain.
    async fn read(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut [u8],
        finals_rx: &mut tokio::sync::watch::Receiver<Option<Finals>>,
        connected: bool,
    ) -> Result<usize, End> {
        let slow = self.role == Role::Slow;
        let read = async {
            if slow {
                tokio::time::sleep(Duration::from_millis(200)).await;
                stream.read(&mut buf[..64]).await
            } else {
                match tokio::time::timeout(STALL, stream.read(buf)).await {
                    Ok(r) => r,
                    Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                }
            }
        };
        tokio::select! {
            _ = self.ctx.finish.cancelled() => Err(End::Finish),
            cmd = recv(&mut self.cmds) => match cmd {
                Some(Cmd::Leave) => Err(End::Leave),
                Some(Cmd::Reopen(after)) => Err(End::Reopen(after)),
                None => {
                    self.cmds = None;
                    Ok(0)
                }
            },
            changed = finals_rx.changed(), if connected => {
                if changed.is_err() {
                    // The sender lives in Ctx as long as we do; never seen.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(0)
            }
            r = read => match r {
                Ok(0) => Err(End::Server),
                Ok(n) => Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(End::Stalled),
                Err(_) => Err(End::Server),
            }
        }
    }

    /// Sends the stream request and reads the response head: the socket and the first bytes
    /// of the event stream, or why it was refused.
    async fn open(&self, token: &str, last_id: u64) -> Result<(TcpStream, Vec<u8>), Refused> {
        let ctx = &self.ctx;
        let rcvbuf = (self.role == Role::Slow).then_some(2048);
        let mut stream = connect_from(self.src, ctx.target.addr, rcvbuf)
            .await
            .map_err(|e| Refused::Io(format!("connect: {}", e.kind())))?;
        let query: Vec<String> = self.names.iter().map(|n| format!("channel={n}")).collect();
        let request = format!(
            "GET /v1/stream?{} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\nLast-Event-ID: {last_id}\r\n\r\n",
            query.join("&"),
            ctx.target.host,
        );
        let mut buf = Vec::with_capacity(4096);
        let head = async {
            stream.write_all(request.as_bytes()).await?;
            read_head(&mut stream, &mut buf).await
        };
        let head = match tokio::time::timeout(Duration::from_secs(10), head).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Err(Refused::Io(format!("head: {}", e.kind()))),
            Err(_) => return Err(Refused::Io("head: timed out".into())),
        };
        if head.status != 200 {
            let retry_after = head.header("retry-after").and_then(|v| v.parse().ok());
            let status = head.status;
            let body = tokio::time::timeout(
                Duration::from_secs(5),
                crate::wire::read_body(&mut stream, &mut buf, head),
            )
            .await;
            let code = match body {
                Ok(Ok(r)) => r.error_code().unwrap_or_default(),
                _ => String::new(),
            };
            return Err(Refused::Status(status, code, retry_after));
        }
        if head
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            return Err(Refused::Io("a chunked event stream (not expected)".into()));
        }
        buf.drain(..head.len);
        Ok((stream, buf))
    }
}

async fn recv(cmds: &mut Option<mpsc::Receiver<Cmd>>) -> Option<Cmd> {
    match cmds {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The churn: `churn` times a second, an open regular stream is closed by its client; with
/// probability `leave_share` the subscriber leaves for good and a brand-new one joins,
/// otherwise it reopens 100–600 ms later with `Last-Event-ID`. Stops with the load.
pub async fn run_churn(ctx: Arc<Ctx>) {
    if ctx.opts.churn == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut rng = rand::rngs::StdRng::from_entropy();
    let started = tokio::time::Instant::now();
    let mut done = 0u64;
    loop {
        tokio::select! {
            _ = ctx.load_stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // By the time elapsed, not by ticks: a busy runtime delays ticks, not the rate.
        let due = (started.elapsed().as_secs_f64() * f64::from(ctx.opts.churn)) as u64;
        while done < due {
            done += 1;
            churn_one(&ctx, &mut rng);
        }
    }
}

fn churn_one(ctx: &Arc<Ctx>, rng: &mut impl Rng) {
    let Some(h) = pick_open(ctx, rng) else {
        ctx.stats.error("churn: no open stream to close");
        return;
    };
    // Not picked again before its task has closed the stream.
    h.open.store(false, Ordering::Relaxed);
    if rng.gen_bool(ctx.opts.leave_share) {
        if h.tx.try_send(Cmd::Leave).is_ok() {
            lock(&ctx.registry).retain(|o| o.id != h.id);
            spawn_regular(ctx);
            ctx.stats.joins.fetch_add(1, Ordering::Relaxed);
        }
    } else {
        let _ =
            h.tx.try_send(Cmd::Reopen(Duration::from_millis(rng.gen_range(100..=600))));
    }
}

/// A random regular subscriber whose stream is open now.
pub fn pick_open(ctx: &Ctx, rng: &mut impl Rng) -> Option<Arc<SubHandle>> {
    let reg = lock(&ctx.registry);
    if reg.is_empty() {
        return None;
    }
    (0..16)
        .map(|_| &reg[rng.gen_range(0..reg.len())])
        .find(|h| h.open.load(Ordering::Relaxed))
        .cloned()
}
