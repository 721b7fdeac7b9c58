//! The attacker's connections, all from 127.0.0.2 (whose per-address limits stay at the
//! node's defaults): it keeps a number of each kind open, reopening whatever the server
//! closes at a bounded rate, and records when the server closed each one.
//!
//! - **slowloris**: a stream request head sent one header line every 1.5 s, never finished;
//!   owed a close by `server.head_timeout_ms` after connecting (a trickle must not reset it).
//! - **partial**: the 26 bytes `GET /v1/stream?channel=a\r\n` and nothing more; same deadline.
//! - **idle**: one `GET /healthz` on a keep-alive connection, then silence; owed a close by
//!   `server.idle_timeout_ms` after the answer.
//! - **flood**: every 20 s the attacker tops up 250 connections that send nothing, pushing its
//!   address past `limits.max_open_connections_per_ip`; those over the cap should be closed
//!   at once, the rest by the head deadline.
//!
//! A connection closed later than its deadline plus the slack, or still open past it when
//! the run ends, is late.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ctx::{Ctx, ATTACKER};
use crate::subscriber::lock;
use crate::wire::connect_from;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Slowloris,
    Partial,
    Idle,
    Flood,
}

pub const KINDS: [Kind; 4] = [Kind::Slowloris, Kind::Partial, Kind::Idle, Kind::Flood];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Slowloris => "slowloris",
            Kind::Partial => "partial_request",
            Kind::Idle => "idle_keepalive",
            Kind::Flood => "flood",
        }
    }

    /// How many of this kind the attacker keeps open.
    fn target(self) -> i64 {
        match self {
            Kind::Slowloris => 300,
            Kind::Partial => 300,
            Kind::Idle => 400,
            Kind::Flood => 250,
        }
    }
}

/// The figures of one kind.
pub struct KindReport {
    pub opened: u64,
    pub connect_failures: u64,
    pub closed_by_server: u64,
    /// Closed within 250 ms of connecting (the per-address cap), with or without an answer.
    pub closed_at_once: u64,
    pub closed_in_time: u64,
    pub late: u64,
    pub open_at_end: u64,
    /// Still open at the end and already past the deadline (counted in `late` too).
    pub overdue_at_end: u64,
    /// Got an answer (the idle kind's `200`; any other kind's error answer).
    pub answered: u64,
    /// The answers, by `status code` (`503 too_many_open_connections_from_address`).
    pub answers: BTreeMap<String, u64>,
    /// Lifetime of the connections the server closed, milliseconds.
    pub lifetime_ms: Histogram<u64>,
    /// The worst time past the deadline, milliseconds.
    pub worst_late_ms: u64,
}

impl KindReport {
    fn new() -> KindReport {
        KindReport {
            opened: 0,
            connect_failures: 0,
            closed_by_server: 0,
            closed_at_once: 0,
            closed_in_time: 0,
            late: 0,
            open_at_end: 0,
            overdue_at_end: 0,
            answered: 0,
            answers: BTreeMap::new(),
            lifetime_ms: Histogram::new_with_bounds(1, 24 * 3_600_000, 3)
                .expect("histogram bounds"),
            worst_late_ms: 0,
        }
    }
}

pub struct AttackReport {
    pub kinds: Vec<(Kind, KindReport)>,
    /// Most attack connections open at once, as the attacker saw them.
    pub peak_open: i64,
}

struct Shared {
    reports: Mutex<Vec<KindReport>>,
    /// Connections of each kind spawned and not ended.
    live: [AtomicI64; 4],
    peak: AtomicI64,
}

fn index(kind: Kind) -> usize {
    KINDS.iter().position(|&k| k == kind).unwrap_or(0)
}

/// Runs the attack until `stop`, then reports every connection's fate.
pub async fn run_attacker(ctx: Arc<Ctx>, stop: CancellationToken) -> AttackReport {
    let shared = Arc::new(Shared {
        reports: Mutex::new(KINDS.iter().map(|_| KindReport::new()).collect()),
        live: Default::default(),
        peak: AtomicI64::new(0),
    });
    let tracker = TaskTracker::new();
    let rate = f64::from(ctx.opts.attack_rate);
    let mut budget = 0.0;
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_flood = Instant::now() + Duration::from_secs(10);
    let steady = [Kind::Slowloris, Kind::Partial, Kind::Idle];
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        // By the time elapsed, not by ticks: a busy runtime delays ticks, not the rate.
        let now = Instant::now();
        budget = (budget + rate * (now - last).as_secs_f64()).min(rate / 10.0);
        last = now;
        // One of each kind in turn while the budget lasts and a kind is short.
        'fill: while budget >= 1.0 {
            let mut spawned = false;
            for &kind in &steady {
                if budget < 1.0 {
                    break 'fill;
                }
                if shared.live[index(kind)].load(Ordering::Relaxed) < kind.target() {
                    spawn(&tracker, &ctx, &shared, &stop, kind);
                    budget -= 1.0;
                    spawned = true;
                }
            }
            if !spawned {
                break;
            }
        }
        if Instant::now() >= next_flood {
            next_flood += Duration::from_secs(20);
            let short =
                Kind::Flood.target() - shared.live[index(Kind::Flood)].load(Ordering::Relaxed);
            for _ in 0..short.max(0) {
                spawn(&tracker, &ctx, &shared, &stop, Kind::Flood);
            }
        }
    }
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        ctx.stats
            .error("attacker: connections still ending after 10 s");
    }
    let reports = std::mem::take(&mut *lock(&shared.reports));
    AttackReport {
        kinds: KINDS.iter().copied().zip(reports).collect(),
        peak_open: shared.peak.load(Ordering::Relaxed),
    }
}

fn spawn(
    tracker: &TaskTracker,
    ctx: &Arc<Ctx>,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    kind: Kind,
) {
    shared.live[index(kind)].fetch_add(1, Ordering::Relaxed);
    tracker.spawn(attack_conn(ctx.clone(), shared.clone(), stop.clone(), kind));
}

async fn attack_conn(ctx: Arc<Ctx>, shared: Arc<Shared>, stop: CancellationToken, kind: Kind) {
    let outcome = tokio::select! {
        _ = stop.cancelled() => None,
        c = connect_from(ATTACKER, ctx.target.addr, None) => Some(c),
    };
    let stream = match outcome {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            ctx.stats.error(format!("attack connect: {}", e.kind()));
            lock(&shared.reports)[index(kind)].connect_failures += 1;
            shared.live[index(kind)].fetch_sub(1, Ordering::Relaxed);
            return;
        }
        None => {
            shared.live[index(kind)].fetch_sub(1, Ordering::Relaxed);
            return;
        }
    };
    // The deadlines run from the established connection (the handshake may wait in a
    // backlog first).
    let t0 = Instant::now();
    let open = ctx.stats.attack_open.fetch_add(1, Ordering::Relaxed) + 1;
    shared.peak.fetch_max(open, Ordering::Relaxed);
    let host = &ctx.target.host;
    let first: Vec<u8> = match kind {
        Kind::Slowloris => {
            format!("GET /v1/stream?channel=soak:c000 HTTP/1.1\r\nHost: {host}\r\n").into()
        }
        Kind::Partial => b"GET /v1/stream?channel=a\r\n".to_vec(),
        Kind::Idle => format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").into(),
        Kind::Flood => Vec::new(),
    };
    let (mut rd, mut wr) = stream.into_split();
    let mut closed = None;
    let mut answered = None;
    let mut answer = Vec::new();
    if !first.is_empty() && wr.write_all(&first).await.is_err() {
        closed = Some(Instant::now());
    }
    let mut next_line = t0 + Duration::from_millis(1500);
    let mut lines = 0u32;
    let mut buf = [0u8; 2048];
    while closed.is_none() {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => closed = Some(Instant::now()),
                Ok(n) => {
                    answered.get_or_insert_with(Instant::now);
                    if answer.len() < 1024 {
                        answer.extend_from_slice(&buf[..n.min(1024)]);
                    }
                }
            },
            _ = tokio::time::sleep_until(next_line), if kind == Kind::Slowloris => {
                lines += 1;
                next_line += Duration::from_millis(1500);
                let line = format!("X-Slow-{lines}: x\r\n");
                if wr.write_all(line.as_bytes()).await.is_err() {
                    closed = Some(Instant::now());
                }
            }
        }
    }
    ctx.stats.attack_open.fetch_sub(1, Ordering::Relaxed);
    shared.live[index(kind)].fetch_sub(1, Ordering::Relaxed);
    let opts = &ctx.opts;
    let deadline = match (kind, answered) {
        (Kind::Idle, Some(at)) => at + opts.idle_timeout,
        _ => t0 + opts.head_timeout,
    };
    let mut reports = lock(&shared.reports);
    let r = &mut reports[index(kind)];
    r.opened += 1;
    r.answered += u64::from(answered.is_some());
    if answered.is_some() {
        *r.answers.entry(describe(&answer)).or_default() += 1;
    }
    match closed {
        Some(at) => {
            r.closed_by_server += 1;
            let lifetime = at - t0;
            let _ = r.lifetime_ms.record(lifetime.as_millis().max(1) as u64);
            if lifetime < Duration::from_millis(250) {
                r.closed_at_once += 1;
            }
            if at <= deadline + opts.slack {
                r.closed_in_time += 1;
            } else {
                r.late += 1;
                r.worst_late_ms = r.worst_late_ms.max((at - deadline).as_millis() as u64);
            }
        }
        None => {
            r.open_at_end += 1;
            let now = Instant::now();
            if now > deadline + opts.slack {
                r.overdue_at_end += 1;
                r.late += 1;
                r.worst_late_ms = r.worst_late_ms.max((now - deadline).as_millis() as u64);
            }
        }
    }
}

/// `status code` of the start of an answer: `503 too_many_open_connections_from_address`.
fn describe(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    let status = text.get(9..12).unwrap_or("?");
    let code = text
        .split_once("\"code\":\"")
        .and_then(|(_, rest)| rest.split('"').next())
        .unwrap_or("");
    format!("{status} {code}").trim_end().to_owned()
}
