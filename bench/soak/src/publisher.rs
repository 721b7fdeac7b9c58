//! The publishers and their ledger. Publisher k owns the channels c with c % publishers == k
//! and numbers each channel's events 1, 2, 3, … (`{"s": n}`); it sends one request at a time
//! on a keep-alive connection, so a channel's sequence order is its log order. It keeps its
//! share of the rate by sending, every 5 ms, a batch of whatever is due (one event when the
//! node keeps up, more when it lags). Every event has an idempotency key, so a batch whose
//! answer was lost is sent again until acknowledged without ever being appended twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::Instant;

use crate::ctx::{Ctx, WELL_BEHAVED};
use crate::subscriber::lock;
use crate::wire::Client;

/// Most events in one publish request.
const MAX_BATCH: u64 = 200;
/// How long one batch is retried before the publisher gives up on it.
const GIVE_UP: Duration = Duration::from_secs(15);

/// Every acknowledged event: per channel, the id of sequence number n at index n-1.
pub struct Ledger {
    ids: Vec<Mutex<Vec<u64>>>,
    max_acked: AtomicU64,
    acked: AtomicU64,
    /// Acknowledgements out of sequence or with ids not increasing along a channel.
    pub anomalies: AtomicU64,
}

impl Ledger {
    pub fn new(channels: usize) -> Ledger {
        Ledger {
            ids: (0..channels).map(|_| Mutex::new(Vec::new())).collect(),
            max_acked: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            anomalies: AtomicU64::new(0),
        }
    }

    fn record(&self, channel: usize, seq: u64, id: u64) {
        let mut ids = lock(&self.ids[channel]);
        if seq != ids.len() as u64 + 1 || ids.last().is_some_and(|&last| last >= id) {
            self.anomalies.fetch_add(1, Ordering::Relaxed);
        }
        ids.push(id);
        self.max_acked.fetch_max(id, Ordering::Relaxed);
        self.acked.fetch_add(1, Ordering::Relaxed);
    }

    /// The highest id acknowledged so far: a new subscriber resumes from here.
    pub fn max_acked(&self) -> u64 {
        self.max_acked.load(Ordering::Relaxed)
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Vec<Vec<u64>> {
        self.ids.iter().map(|m| lock(m).clone()).collect()
    }

    /// `(seq, id)` of each channel's last event, `(0, 0)` for none.
    pub fn finals(&self) -> Vec<(u64, u64)> {
        self.ids
            .iter()
            .map(|m| {
                let ids = lock(m);
                (ids.len() as u64, ids.last().copied().unwrap_or(0))
            })
            .collect()
    }
}

/// One publisher's figures.
pub struct PublisherReport {
    pub acked: u64,
    pub requests: u64,
    pub retries: u64,
    /// Events never acknowledged (their batch was given up).
    pub failed: u64,
    /// Request latency, microseconds.
    pub latency: Histogram<u64>,
}

pub async fn run_publisher(ctx: Arc<Ctx>, k: usize) -> PublisherReport {
    let opts = &ctx.opts;
    let owned: Vec<usize> = (0..opts.channels)
        .filter(|c| c % opts.publishers == k)
        .collect();
    let mut report = PublisherReport {
        acked: 0,
        requests: 0,
        retries: 0,
        failed: 0,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    };
    if owned.is_empty() {
        return report;
    }
    let rate = f64::from(opts.rate) / opts.publishers as f64;
    let auth = format!(
        "Bearer {}",
        ctx.minter.publisher("soak-publisher", 24 * 3600)
    );
    let mut client = Client::new(WELL_BEHAVED, ctx.target.clone());
    let mut next_seq = vec![1u64; owned.len()];
    let (mut rr, mut key, mut sent) = (0usize, 0u64, 0u64);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ctx.load_stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let due = (started.elapsed().as_secs_f64() * rate) as u64 - sent;
        let n = due.min(MAX_BATCH);
        if n == 0 {
            continue;
        }
        let mut events = Vec::with_capacity(n as usize);
        let mut meta = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let i = rr % owned.len();
            rr += 1;
            let (c, s) = (owned[i], next_seq[i]);
            next_seq[i] += 1;
            key += 1;
            events.push(json!({
                "channel": Ctx::channel_name(c),
                "type": "soak",
                "id": format!("p{k}-{key}"),
                "data": {"s": s},
            }));
            meta.push((c, s));
        }
        let body = serde_json::to_vec(&events).unwrap_or_default();
        match publish(&ctx, &mut client, &auth, &body, &mut report).await {
            Some(ids) if ids.len() == meta.len() => {
                for ((c, s), id) in meta.into_iter().zip(ids) {
                    ctx.ledger.record(c, s, id);
                }
                report.acked += n;
                sent += n;
            }
            Some(_) => {
                ctx.stats
                    .error("publish: answer with the wrong number of ids");
                report.failed += n;
                break;
            }
            None => {
                // Never acknowledged: whether it was appended is unknown, so this channel's
                // sequence cannot go on. Stop; the run fails on `failed`.
                report.failed += n;
                break;
            }
        }
    }
    report
}

/// Sends one batch until it is acknowledged: its ids, or `None` after `GIVE_UP` (or a
/// refusal that a retry cannot change).
async fn publish(
    ctx: &Ctx,
    client: &mut Client,
    auth: &str,
    body: &[u8],
    report: &mut PublisherReport,
) -> Option<Vec<u64>> {
    let first = Instant::now();
    loop {
        let t = Instant::now();
        report.requests += 1;
        let answer = client
            .request(
                "POST",
                "/v1/publish",
                &[
                    ("Authorization", auth),
                    ("Content-Type", "application/json"),
                ],
                body,
                Duration::from_secs(5),
            )
            .await;
        let wait = match answer {
            Ok(r) if r.status() == 200 => {
                let _ = report.latency.record(t.elapsed().as_micros().max(1) as u64);
                let ids = r.json().and_then(|v| {
                    v.get("ids")?
                        .as_array()?
                        .iter()
                        .map(|i| i.as_str()?.parse().ok())
                        .collect::<Option<Vec<u64>>>()
                });
                if ids.is_none() {
                    ctx.stats.error("publish: 200 without ids");
                }
                return ids;
            }
            Ok(r) if r.status() == 429 || r.status() >= 500 => {
                ctx.stats.error(format!(
                    "publish {} {}",
                    r.status(),
                    r.error_code().unwrap_or_default()
                ));
                let after = r
                    .head
                    .header("retry-after")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                Duration::from_millis(200.max(after * 1000))
            }
            Ok(r) => {
                ctx.stats.error(format!(
                    "publish {} {} (not retried)",
                    r.status(),
                    r.error_code().unwrap_or_default()
                ));
                return None;
            }
            Err(e) => {
                ctx.stats.error(format!("publish: {}", e.kind()));
                Duration::from_millis(200)
            }
        };
        if first.elapsed() + wait > GIVE_UP {
            ctx.stats.error("publish: batch given up");
            return None;
        }
        report.retries += 1;
        tokio::time::sleep(wait).await;
    }
}
