//! What every task of the soak shares: the options, the clock and phase signals, the
//! publishers' ledger, the live counters, and the registry of subscribers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::publisher::Ledger;
use crate::subscriber::{SubHandle, SubResult};
use crate::token::Minter;
use crate::wire::Target;

/// Publishers, the `/healthz` probe, the admin and the canary subscriber.
pub const WELL_BEHAVED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// Every attack connection and cross-site request.
pub const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The slow readers.
pub const SLOW_READERS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

/// The address of subscriber `id`: spread over `127.0.0.10 …` so that every address stays
/// under the node's default per-address stream and connect-rate limits.
pub fn subscriber_addr(id: u64, addrs: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + (id % u64::from(addrs.max(1))) as u8)
}

/// A debug fault injected into one delivery, to show the exactly-once check catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// One subscriber forgets one event it received (a loss).
    Skip,
    /// One subscriber counts one event twice (a duplicate).
    Dup,
    /// One event is appended to the canary's channel behind the publishers' back, as an
    /// accepted cross-site publish would (the "nothing changed" check must fail).
    Append,
}

/// Command-line options (see `USAGE` in main.rs).
#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub server_pid: u32,
    pub server_log: PathBuf,
    pub secret: String,
    /// Length of the load phase (publishing, churn, kicks).
    pub load: Duration,
    /// How long after the ramp the baseline ("start") sample is taken.
    pub warmup: Duration,
    /// Longest wait for every subscriber to receive every event after publishing stops.
    pub drain: Duration,
    pub streams: usize,
    pub slow: usize,
    pub channels: usize,
    pub channels_per_sub: usize,
    pub rate: u32,
    pub publishers: usize,
    /// Client-initiated disconnects (and as many connects) per second.
    pub churn: u32,
    /// Share of those disconnects that are subscribers leaving for good (each replaced by a
    /// brand-new subscriber); the rest reopen later with `Last-Event-ID`.
    pub leave_share: f64,
    pub ttl_min_s: u64,
    pub ttl_max_s: u64,
    pub kick_every: Duration,
    pub sub_addrs: u8,
    pub attack: bool,
    /// Most attack connections opened per second.
    pub attack_rate: u32,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
    /// The node's `limits.max_open_connections_per_ip` (for the report).
    pub per_ip_cap: usize,
    /// Tolerance on top of the server's timeouts (timer granularity, a loaded machine).
    pub slack: Duration,
    pub allowed_origin: String,
    /// Whether the node was started with the timeout settings (older builds lack them).
    pub settings_present: bool,
    pub fault: Option<Fault>,
    pub report: Option<PathBuf>,
    pub profile: String,
    /// Timing checks are reported, not counted (see `report::TIMING_CHECKS`).
    pub timing_advisory: bool,
}

/// Live counters, read by the sampler and the report.
#[derive(Default)]
pub struct Stats {
    /// Well-behaved (not slow) streams open now: `connected` received, not ended.
    pub open_streams: AtomicI64,
    pub open_slow: AtomicI64,
    pub connects: AtomicU64,
    pub joins: AtomicU64,
    pub leaves: AtomicU64,
    pub client_closes: AtomicU64,
    pub expired: AtomicU64,
    pub kicked: AtomicU64,
    /// Streams ended by the server without `closing`, or with a reason other than expiry or
    /// a kick (`shutdown`, `replaced`, …).
    pub unexpected_ends: AtomicU64,
    /// Streams with no byte (not even a heartbeat) for 20 s.
    pub stalls: AtomicU64,
    pub events: AtomicU64,
    /// Regular subscribers that have every event (set during the drain).
    pub drained: AtomicI64,
    /// Attack connections open now (as the attacker sees them).
    pub attack_open: AtomicI64,
    /// Refused or failed connects and requests, by kind (`stream 429
    /// too_many_connections_from_address`, `connect: …`).
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Closing reasons other than `token_expired` and `kicked`, by reason.
    pub other_closings: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn error(&self, kind: impl Into<String>) {
        let mut map = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(kind.into()).or_default() += 1;
    }

    pub fn other_closing(&self, reason: &str) {
        let mut map = self
            .other_closings
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *map.entry(reason.to_owned()).or_default() += 1;
    }
}

/// The final event of each channel once publishing stopped: `(seq, id)`, `(0, 0)` for none.
pub type Finals = Arc<Vec<(u64, u64)>>;

pub struct Ctx {
    pub opts: Options,
    pub target: Target,
    pub minter: Minter,
    pub t0: Instant,
    pub ledger: Ledger,
    pub stats: Stats,
    /// Publishing, churn and kicks stop.
    pub load_stop: CancellationToken,
    /// Everything else stops: subscribers, probes, the attacker.
    pub finish: CancellationToken,
    /// Set once publishing stopped and every publish was answered.
    pub finals: watch::Sender<Option<Finals>>,
    /// 0: no fault; 1 or 2: a `Fault` waiting for the next delivery (armed mid-run).
    pub fault: AtomicU8,
    /// A cross-site drain was accepted: the node is going away.
    pub drained_by_csrf: AtomicBool,
    /// The regular subscribers that have not left.
    pub registry: Mutex<Vec<Arc<SubHandle>>>,
    /// Every subscriber task (regular, slow, canary), for their results.
    pub tasks: Mutex<Vec<JoinHandle<SubResult>>>,
    pub next_id: AtomicU64,
}

impl Ctx {
    pub fn channel_name(c: usize) -> String {
        format!("soak:c{c:03}")
    }

    /// The index of `soak:cNNN`.
    pub fn channel_index(name: &str) -> Option<usize> {
        name.strip_prefix("soak:c")?.parse().ok()
    }

    pub fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    pub fn take_fault(&self) -> Option<Fault> {
        match self.fault.swap(0, Ordering::Relaxed) {
            1 => Some(Fault::Skip),
            2 => Some(Fault::Dup),
            _ => None,
        }
    }
}
