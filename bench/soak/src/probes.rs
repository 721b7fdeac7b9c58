//! What is measured about the node rather than through the clients: `/healthz` latency every
//! 100 ms, RSS and open files every second, the server's log file, and (admin) the log head,
//! `/readyz` and the kicks.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::SeedableRng;
use tokio::time::Instant;

use crate::ctx::{Ctx, WELL_BEHAVED};
use crate::subscriber::{lock, pick_open};
use crate::wire::Client;

/// `/healthz` as a load balancer sees it.
pub struct HealthReport {
    /// Latency of the answered probes, microseconds.
    pub latency: Histogram<u64>,
    pub failures: u64,
    pub first_failures: Vec<String>,
}

/// Probes `/healthz` every 100 ms on a keep-alive connection from a well-behaved address
/// until `finish`; a probe without a `200` within 1 s is a failure.
pub async fn run_healthz(ctx: Arc<Ctx>) -> HealthReport {
    let mut report = HealthReport {
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        failures: 0,
        first_failures: Vec::new(),
    };
    let mut client = Client::new(WELL_BEHAVED, ctx.target.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.finish.cancelled() => return report,
            _ = tick.tick() => {}
        }
        let t = Instant::now();
        let answer = client
            .request("GET", "/healthz", &[], b"", Duration::from_secs(1))
            .await;
        let failure = match answer {
            Ok(r) if r.status() == 200 => {
                let _ = report.latency.record(t.elapsed().as_micros().max(1) as u64);
                continue;
            }
            Ok(r) => format!("{:.1} s: status {}", ctx.secs(), r.status()),
            Err(e) => format!("{:.1} s: {e}", ctx.secs()),
        };
        report.failures += 1;
        if report.first_failures.len() < 5 {
            report.first_failures.push(failure);
        }
    }
}

/// One resource sample of the node.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the soak started.
    pub t: f64,
    pub rss_kb: u64,
    pub fds: u64,
    pub open_streams: i64,
    pub open_slow: i64,
    pub attack_open: i64,
    /// CPU time used so far, in ticks of 10 ms: the whole machine (busy), the node, this
    /// program.
    pub machine_ticks: u64,
    pub server_ticks: u64,
    pub soak_ticks: u64,
}

/// Samples the node's RSS and open files every second until `finish`.
pub async fn run_sampler(ctx: Arc<Ctx>, samples: Arc<Mutex<Vec<Sample>>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pid = ctx.opts.server_pid;
    loop {
        tokio::select! {
            _ = ctx.finish.cancelled() => return,
            _ = tick.tick() => {}
        }
        let read = tokio::task::spawn_blocking(move || {
            (
                rss_kb(pid),
                open_files(pid),
                cpu_ticks(pid),
                machine_ticks(),
                cpu_ticks(std::process::id()),
            )
        })
        .await;
        let Ok((Some(rss_kb), Some(fds), server_ticks, machine_ticks, soak_ticks)) = read else {
            ctx.stats
                .error("sampler: the node's /proc entry cannot be read");
            continue;
        };
        let s = &ctx.stats;
        lock(&samples).push(Sample {
            t: ctx.secs(),
            rss_kb,
            fds,
            open_streams: s.open_streams.load(Ordering::Relaxed),
            open_slow: s.open_slow.load(Ordering::Relaxed),
            attack_open: s.attack_open.load(Ordering::Relaxed),
            machine_ticks: machine_ticks.unwrap_or(0),
            server_ticks: server_ticks.unwrap_or(0),
            soak_ticks: soak_ticks.unwrap_or(0),
        });
    }
}

/// VmRSS of `pid`, KiB.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User and system time of `pid`, ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Busy time of the whole machine (user, nice, system, irq, softirq, steal), ticks.
fn machine_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Some(
        [0, 1, 2, 5, 6, 7]
            .iter()
            .map(|&i| f.get(i).copied().unwrap_or(0))
            .sum(),
    )
}

/// CPU used between the samples nearest `from` and `to` seconds, in % of one core: the
/// node, this program, and the rest of the machine.
pub fn cpu_between(samples: &[Sample], from: f64, to: f64) -> Option<(f64, f64, f64)> {
    let a = samples.iter().find(|s| s.t >= from)?;
    let b = samples.iter().rev().find(|s| s.t <= to)?;
    let secs = b.t - a.t;
    if secs <= 0.0 {
        return None;
    }
    let pct = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
    let server = pct(a.server_ticks, b.server_ticks);
    let soak = pct(a.soak_ticks, b.soak_ticks);
    let machine = pct(a.machine_ticks, b.machine_ticks);
    Some((server, soak, (machine - server - soak).max(0.0)))
}

/// Entries of /proc/PID/fd.
fn open_files(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The median of the samples taken in `[from, to)` seconds: RSS, and open files without the
/// attack's connections (with the attack count of that same sample).
pub fn median_sample(samples: &[Sample], from: f64, to: f64) -> Option<Sample> {
    let mut window: Vec<Sample> = samples
        .iter()
        .filter(|s| s.t >= from && s.t < to)
        .copied()
        .collect();
    if window.is_empty() {
        return None;
    }
    let mid = window.len() / 2;
    let mut pick = window[mid];
    window.sort_by_key(|s| s.rss_kb);
    pick.rss_kb = window[mid].rss_kb;
    // Open files without the attack's connections: the sample with the median of those.
    window.sort_by_key(|s| s.fds.saturating_sub(s.attack_open.max(0) as u64));
    pick.fds = window[mid].fds;
    pick.attack_open = window[mid].attack_open;
    Some(pick)
}

/// What the server's log file holds that it should not.
#[derive(Debug, Default)]
pub struct LogScan {
    pub lines: u64,
    pub errors: u64,
    pub panics: u64,
    pub warnings: u64,
    pub examples: Vec<String>,
    pub warning_examples: Vec<String>,
}

/// Counts ERROR lines (JSON `"level":"ERROR"` or the pretty format's ` ERROR `), panics and
/// warnings in the server's log.
pub fn scan_log(path: &Path) -> std::io::Result<LogScan> {
    let text = std::fs::read_to_string(path)?;
    let mut scan = LogScan::default();
    for line in text.lines() {
        scan.lines += 1;
        let error = line.contains("\"level\":\"ERROR\"") || line.contains(" ERROR ");
        let panic = line.to_ascii_lowercase().contains("panic");
        let warning = line.contains("\"level\":\"WARN\"") || line.contains(" WARN ");
        scan.errors += u64::from(error);
        scan.panics += u64::from(panic);
        scan.warnings += u64::from(warning);
        if (error || panic) && scan.examples.len() < 3 {
            scan.examples.push(line.chars().take(300).collect());
        } else if warning && scan.warning_examples.len() < 3 {
            scan.warning_examples.push(line.chars().take(300).collect());
        }
    }
    Ok(scan)
}

/// The kicks an administrator made.
#[derive(Debug, Default)]
pub struct KickReport {
    pub requests: u64,
    /// Streams the node said it closed (`{"closed": n}`).
    pub closed: u64,
    pub failures: u64,
}

/// Every `kick_every`, kicks the user of a random open regular stream
/// (`DELETE /v1/users/{user}/connections`, admin token) until the load stops.
pub async fn run_kicker(ctx: Arc<Ctx>) -> KickReport {
    let mut report = KickReport::default();
    if ctx.opts.kick_every.is_zero() {
        return report;
    }
    let auth = format!("Bearer {}", ctx.minter.admin(24 * 3600));
    let mut client = Client::new(WELL_BEHAVED, ctx.target.clone());
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut tick =
        tokio::time::interval_at(Instant::now() + ctx.opts.kick_every, ctx.opts.kick_every);
    loop {
        tokio::select! {
            _ = ctx.load_stop.cancelled() => return report,
            _ = tick.tick() => {}
        }
        let Some(h) = pick_open(&ctx, &mut rng) else {
            continue;
        };
        report.requests += 1;
        let path = format!("/v1/users/{}/connections", h.user);
        let answer = client
            .request(
                "DELETE",
                &path,
                &[("Authorization", &auth)],
                b"",
                Duration::from_secs(5),
            )
            .await;
        match answer {
            Ok(r) if r.status() == 200 => {
                report.closed += r
                    .json()
                    .and_then(|v| v.get("closed")?.as_u64())
                    .unwrap_or(0);
            }
            Ok(r) => {
                report.failures += 1;
                ctx.stats.error(format!("kick {}", r.status()));
            }
            Err(e) => {
                report.failures += 1;
                ctx.stats.error(format!("kick: {}", e.kind()));
            }
        }
    }
}

/// The node's state at the end: the log head from `/v1/status` and the `/readyz` status.
#[derive(Debug, Default)]
pub struct NodeState {
    pub log_head: Option<u64>,
    pub readyz: Option<u16>,
    pub status_error: Option<String>,
}

pub async fn node_state(ctx: &Ctx) -> NodeState {
    let mut state = NodeState::default();
    let auth = format!("Bearer {}", ctx.minter.admin(600));
    let mut client = Client::new(WELL_BEHAVED, ctx.target.clone());
    match client
        .request(
            "GET",
            "/v1/status",
            &[("Authorization", &auth)],
            b"",
            Duration::from_secs(5),
        )
        .await
    {
        Ok(r) if r.status() == 200 => {
            state.log_head = r
                .json()
                .and_then(|v| v.pointer("/log/head")?.as_str()?.parse().ok());
        }
        Ok(r) => state.status_error = Some(format!("status {}", r.status())),
        Err(e) => state.status_error = Some(e.to_string()),
    }
    state.readyz = client
        .request("GET", "/readyz", &[], b"", Duration::from_secs(5))
        .await
        .ok()
        .map(|r| r.status());
    state
}
