//! Measurements: HDR histograms, `/proc` sampling, the JSON report, merging the reports of
//! several generator processes, and the comparison table.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest value a histogram holds (microseconds): one hour. Larger values are clamped.
const HIST_MAX: u64 = 3_600_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, v: u64) {
    h.saturating_record(v.clamp(1, HIST_MAX));
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pct {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Pct {
    pub fn of(h: &Histogram<u64>) -> Pct {
        if h.is_empty() {
            return Pct::default();
        }
        Pct {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// A histogram as `[[value, count], ...]` so that reports of several processes can be merged.
pub fn hist_to_vec(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn hist_from_vec(v: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = new_hist();
    for &(value, count) in v {
        let _ = h.record_n(value.clamp(1, HIST_MAX), count);
    }
    h
}

/// RSS, PSS and CPU time of a set of processes (and all their descendants).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProcSample {
    pub rss_kb: u64,
    pub pss_kb: u64,
    /// utime + stime, seconds.
    pub cpu_s: f64,
    pub processes: usize,
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux for x86 and arm).
const CLK_TCK: f64 = 100.0;

fn stat_fields(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields start after ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] = state (field 3), f[1] = ppid (4), f[11] = utime (14), f[12] = stime (15).
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ppid, ticks))
}

fn status_kb(pid: u32, file: &str, key: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/{file}")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .unwrap_or(0)
}

/// The given pids and all their descendants.
pub fn with_descendants(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, _)) = stat_fields(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(p) = todo.pop() {
        if out.contains(&p) {
            continue;
        }
        out.push(p);
        if let Some(c) = children.get(&p) {
            todo.extend(c);
        }
    }
    out.sort_unstable();
    out
}

pub fn sample(roots: &[u32]) -> ProcSample {
    let pids = with_descendants(roots);
    let mut s = ProcSample::default();
    for pid in pids {
        let Some((_, ticks)) = stat_fields(pid) else {
            continue;
        };
        s.processes += 1;
        s.cpu_s += ticks as f64 / CLK_TCK;
        s.rss_kb += status_kb(pid, "status", "VmRSS:");
        s.pss_kb += status_kb(pid, "smaps_rollup", "Pss:");
    }
    s
}

/// One sample per root process (each with its descendants), in the order given.
pub fn sample_each(roots: &[u32]) -> Vec<ProcSample> {
    roots.iter().map(|&r| sample(&[r])).collect()
}

/// CPU of each server process (node) during the measured phase.
pub fn node_stats(
    roots: &[u32],
    before: &[ProcSample],
    connected: &[ProcSample],
    after: &[ProcSample],
    phase_s: f64,
) -> Vec<NodeStats> {
    roots
        .iter()
        .zip(before.iter().zip(connected.iter().zip(after)))
        .map(|(&pid, (b, (c, a)))| NodeStats {
            pid,
            rss_connected_kb: c.rss_kb,
            cpu_connect_s: c.cpu_s - b.cpu_s,
            cpu_phase_s: a.cpu_s - c.cpu_s,
            cpu_phase_pct: if phase_s > 0.0 {
                (a.cpu_s - c.cpu_s) / phase_s * 100.0
            } else {
                0.0
            },
        })
        .collect()
}

/// This process's CPU seconds and peak RSS.
pub fn self_usage() -> (f64, u64) {
    let pid = std::process::id();
    let cpu = stat_fields(pid)
        .map(|(_, t)| t as f64 / CLK_TCK)
        .unwrap_or(0.0);
    (cpu, status_kb(pid, "status", "VmHWM:"))
}

/// The whole machine (all cores) during the run, measured by process 0: what else ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MachineStats {
    pub cores: usize,
    pub loadavg_start: f64,
    pub loadavg_end: f64,
    /// CPU seconds all processes of the machine used during the run.
    pub busy_cpu_s: f64,
    pub wall_s: f64,
    /// busy − server − generator, % of one core (filled in by merge when the server was
    /// measured).
    pub other_cpu_pct: Option<f64>,
    /// TcpExt ListenOverflows during the run (this network namespace): connection attempts
    /// dropped because a server's accept queue was full; each costs the client a SYN
    /// retransmission (1 s).
    pub listen_overflows: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct MachineSample {
    listen_overflows: u64,
    busy_ticks: u64,
    loadavg: f64,
    cores: usize,
}

pub fn machine_sample() -> MachineSample {
    let mut m = MachineSample::default();
    if let Ok(text) = std::fs::read_to_string("/proc/stat") {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("cpu ") {
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal
                m.busy_ticks = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
            } else if line.starts_with("cpu") {
                m.cores += 1;
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/netstat") {
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        if let (Some(names), Some(values)) = (lines.next(), lines.next()) {
            m.listen_overflows = names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == "ListenOverflows")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/loadavg") {
        m.loadavg = text
            .split_whitespace()
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0.0);
    }
    m
}

pub fn machine_stats(a: MachineSample, b: MachineSample, wall_s: f64) -> MachineStats {
    MachineStats {
        cores: b.cores,
        loadavg_start: a.loadavg,
        loadavg_end: b.loadavg,
        busy_cpu_s: b.busy_ticks.saturating_sub(a.busy_ticks) as f64 / CLK_TCK,
        wall_s,
        other_cpu_pct: None,
        listen_overflows: b.listen_overflows.saturating_sub(a.listen_overflows),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectStats {
    /// Seconds from the start of the connect phase until the last connection was established.
    pub duration_s: f64,
    /// Established connections per second over that time.
    pub rate_per_s: f64,
    /// Connect + request + response head + first body bytes, per connection.
    pub ttfb_us: Pct,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublishStats {
    pub requests: u64,
    pub events_acked: u64,
    pub events_failed: u64,
    pub batch: usize,
    pub publishers: usize,
    /// Target events/s (0: as fast as acknowledged).
    pub target_rate: f64,
    pub duration_s: f64,
    pub acked_per_s: f64,
    /// Request round trip.
    pub ack_us: Pct,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeliveryStats {
    pub deliveries: u64,
    /// `data:` lines without a timestamp (control events such as ssegate's `connected`).
    pub other_events: u64,
    /// Acknowledged events × subscribers of their channel.
    pub expected: u64,
    pub missing: u64,
    /// From the first publish to the last delivery.
    pub duration_s: f64,
    pub per_s: f64,
    /// Publish (timestamp in the payload) to delivery.
    pub latency_us: Pct,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerStats {
    pub pids: Vec<u32>,
    /// Before any connection of this run (all generator processes).
    pub before: ProcSample,
    /// After every generator process had established its connections.
    pub connected: ProcSample,
    /// At the end of the measured phase.
    pub after: ProcSample,
    /// (RSS connected − RSS before) / connections, bytes.
    pub rss_per_conn_bytes: Option<f64>,
    pub pss_per_conn_bytes: Option<f64>,
    /// CPU seconds used by the server while connecting, and during the measured phase.
    pub cpu_connect_s: f64,
    pub cpu_phase_s: f64,
    /// CPU % (of one core) during the measured phase.
    pub cpu_phase_pct: f64,
    /// Each server process (`--server-pid` given several: the nodes of a cluster), in the
    /// order given.
    #[serde(default)]
    pub nodes: Vec<NodeStats>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStats {
    pub pid: u32,
    pub rss_connected_kb: u64,
    pub cpu_connect_s: f64,
    pub cpu_phase_s: f64,
    pub cpu_phase_pct: f64,
}

/// Deliveries of a group of generator processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Group {
    pub processes: usize,
    pub subscribers: u64,
    pub connected: u64,
    pub deliveries: u64,
    pub expected: u64,
    pub missing: u64,
    /// Publish (timestamp in the payload) to delivery.
    pub latency_us: Pct,
}

/// Deliveries split by where the subscribers were: on the node the events were published
/// to (a part whose `url` is its `publish_url`) or on another node of the cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Locality {
    pub same_node: Group,
    pub cross_node: Group,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GeneratorStats {
    pub processes: usize,
    pub threads: usize,
    pub cpu_s: f64,
    pub wall_s: f64,
    /// CPU % of one core, all generator processes together.
    pub cpu_pct: f64,
    pub max_rss_kb: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResumeStats {
    pub supported: bool,
    pub events: u64,
    pub received: u64,
    /// From sending the request with `Last-Event-ID` until the last missed event arrived.
    pub ms: Option<f64>,
    pub note: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Histograms {
    pub latency: Vec<(u64, u64)>,
    pub ttfb: Vec<(u64, u64)>,
    pub ack: Vec<(u64, u64)>,
}

/// One generator process's result, or the merge of several.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub scenario: String,
    pub url: String,
    pub procs: usize,
    /// Which slice this is (absent in a merged report).
    pub proc_index: Option<usize>,
    pub subscribers: u64,
    pub channels: u64,
    pub connected: u64,
    pub connect: ConnectStats,
    pub publish: PublishStats,
    pub delivery: DeliveryStats,
    /// Measured by process 0 only.
    pub server: Option<ServerStats>,
    pub generator: GeneratorStats,
    /// Measured by process 0 only.
    pub machine: Option<MachineStats>,
    pub resume: Option<ResumeStats>,
    pub errors: BTreeMap<String, u64>,
    pub error_total: u64,
    pub notes: Vec<String>,
    pub histograms: Histograms,
    /// `--label` (e.g. the log engine of a cluster run).
    #[serde(default)]
    pub label: String,
    /// Where the events were published (by this process or, with `subscribe_only`, by
    /// another).
    #[serde(default)]
    pub publish_url: String,
    #[serde(default)]
    pub subscribe_only: bool,
    /// Merged: distinct server URLs of the parts (subscriptions and publishes).
    #[serde(default)]
    pub nodes: usize,
    /// Merged: deliveries on the publish node and on the other nodes.
    #[serde(default)]
    pub locality: Option<Locality>,
    /// The shared log engine's processes (`--engine-pid`), measured by process 0.
    #[serde(default)]
    pub engine: Option<ServerStats>,
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// Merges the reports of processes that ran the same scenario at the same time.
pub fn merge(parts: Vec<Report>) -> anyhow::Result<Report> {
    let Some(first) = parts.first() else {
        bail!("nothing to merge");
    };
    for p in &parts {
        if p.target != first.target || p.scenario != first.scenario {
            bail!(
                "cannot merge {}/{} with {}/{}",
                first.target,
                first.scenario,
                p.target,
                p.scenario
            );
        }
    }
    let mut m = Report {
        target: first.target.clone(),
        scenario: first.scenario.clone(),
        url: first.url.clone(),
        procs: parts.len(),
        proc_index: None,
        label: first.label.clone(),
        publish_url: parts
            .iter()
            .find(|p| !p.subscribe_only)
            .unwrap_or(first)
            .publish_url
            .clone(),
        ..Report::default()
    };
    let mut urls: Vec<&str> = Vec::new();
    for p in &parts {
        for u in [p.url.as_str(), p.publish_url.as_str()] {
            if !u.is_empty() && !urls.contains(&u) {
                urls.push(u);
            }
        }
    }
    m.nodes = urls.len();
    m.locality = Some(locality(&parts)?);
    let (mut lat, mut ttfb, mut ack) = (new_hist(), new_hist(), new_hist());
    let mut gen_wall: f64 = 0.0;
    for p in &parts {
        m.subscribers += p.subscribers;
        m.channels += p.channels;
        m.connected += p.connected;
        m.connect.duration_s = m.connect.duration_s.max(p.connect.duration_s);
        m.publish.requests += p.publish.requests;
        m.publish.events_acked += p.publish.events_acked;
        m.publish.events_failed += p.publish.events_failed;
        m.publish.batch = p.publish.batch;
        m.publish.publishers += p.publish.publishers;
        m.publish.target_rate += p.publish.target_rate;
        m.publish.duration_s = m.publish.duration_s.max(p.publish.duration_s);
        m.delivery.deliveries += p.delivery.deliveries;
        m.delivery.other_events += p.delivery.other_events;
        m.delivery.expected += p.delivery.expected;
        m.delivery.missing += p.delivery.missing;
        m.delivery.duration_s = m.delivery.duration_s.max(p.delivery.duration_s);
        if p.proc_index == Some(0) || m.server.is_none() {
            if let Some(s) = &p.server {
                m.server = Some(s.clone());
            }
            if let Some(s) = &p.machine {
                m.machine = Some(s.clone());
            }
            if let Some(s) = &p.engine {
                m.engine = Some(s.clone());
            }
        }
        m.generator.processes += p.generator.processes.max(1);
        m.generator.threads += p.generator.threads;
        m.generator.cpu_s += p.generator.cpu_s;
        m.generator.max_rss_kb += p.generator.max_rss_kb;
        gen_wall = gen_wall.max(p.generator.wall_s);
        if p.resume.is_some() {
            m.resume = p.resume.clone();
        }
        for (k, v) in &p.errors {
            *m.errors.entry(k.clone()).or_default() += v;
        }
        for n in &p.notes {
            if !m.notes.contains(n) {
                m.notes.push(n.clone());
            }
        }
        lat.add(hist_from_vec(&p.histograms.latency))?;
        ttfb.add(hist_from_vec(&p.histograms.ttfb))?;
        ack.add(hist_from_vec(&p.histograms.ack))?;
    }
    m.error_total = m.errors.values().sum();
    if m.connect.duration_s > 0.0 {
        m.connect.rate_per_s = round(m.connected as f64 / m.connect.duration_s, 1);
    }
    if m.publish.duration_s > 0.0 {
        m.publish.acked_per_s = round(m.publish.events_acked as f64 / m.publish.duration_s, 1);
    }
    if m.delivery.duration_s > 0.0 {
        m.delivery.per_s = round(m.delivery.deliveries as f64 / m.delivery.duration_s, 1);
    }
    if let Some(s) = &mut m.server {
        if m.connected > 0 {
            let c = m.connected as f64;
            s.rss_per_conn_bytes = Some(round(
                (s.connected.rss_kb as f64 - s.before.rss_kb as f64) * 1024.0 / c,
                1,
            ));
            s.pss_per_conn_bytes = Some(round(
                (s.connected.pss_kb as f64 - s.before.pss_kb as f64) * 1024.0 / c,
                1,
            ));
        }
    }
    if let (Some(mach), Some(sv)) = (&mut m.machine, &m.server) {
        if mach.wall_s > 0.0 {
            let server_cpu = sv.after.cpu_s - sv.before.cpu_s;
            let engine_cpu = m
                .engine
                .as_ref()
                .map_or(0.0, |e| e.after.cpu_s - e.before.cpu_s);
            mach.other_cpu_pct = Some(round(
                (mach.busy_cpu_s - server_cpu - engine_cpu - m.generator.cpu_s) / mach.wall_s
                    * 100.0,
                1,
            ));
        }
    }
    m.generator.wall_s = round(gen_wall, 3);
    if gen_wall > 0.0 {
        m.generator.cpu_pct = round(m.generator.cpu_s / gen_wall * 100.0, 1);
    }
    m.delivery.latency_us = Pct::of(&lat);
    m.connect.ttfb_us = Pct::of(&ttfb);
    m.publish.ack_us = Pct::of(&ack);
    m.histograms = Histograms {
        latency: hist_to_vec(&lat),
        ttfb: hist_to_vec(&ttfb),
        ack: hist_to_vec(&ack),
    };
    Ok(m)
}

/// Groups the parts by where their subscribers were (see [`Locality`]); parts without
/// subscribers (publish-only) count in neither group.
fn locality(parts: &[Report]) -> anyhow::Result<Locality> {
    let mut groups = [Group::default(), Group::default()];
    let mut hists = [new_hist(), new_hist()];
    for p in parts.iter().filter(|p| p.subscribers > 0) {
        let i = usize::from(!p.publish_url.is_empty() && p.url != p.publish_url);
        let g = &mut groups[i];
        g.processes += 1;
        g.subscribers += p.subscribers;
        g.connected += p.connected;
        g.deliveries += p.delivery.deliveries;
        g.expected += p.delivery.expected;
        g.missing += p.delivery.missing;
        hists[i].add(hist_from_vec(&p.histograms.latency))?;
    }
    let [mut same_node, mut cross_node] = groups;
    same_node.latency_us = Pct::of(&hists[0]);
    cross_node.latency_us = Pct::of(&hists[1]);
    Ok(Locality {
        same_node,
        cross_node,
    })
}

pub fn read_report(path: &Path) -> anyhow::Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a report", path.display()))
}

/// A human summary of one report (stderr).
pub fn summary(r: &Report) -> String {
    let mut s = format!(
        "{} / {}: {} of {} connected",
        r.target, r.scenario, r.connected, r.subscribers
    );
    if r.connect.duration_s > 0.0 {
        s += &format!(
            " in {:.2} s ({:.0} conn/s, ttfb p50 {} µs p99 {} µs)",
            r.connect.duration_s,
            r.connect.rate_per_s,
            r.connect.ttfb_us.p50,
            r.connect.ttfb_us.p99
        );
    }
    if r.publish.requests > 0 {
        s += &format!(
            "\n  published {} events in {:.2} s ({:.0}/s, ack p50 {} µs p99 {} µs)",
            r.publish.events_acked,
            r.publish.duration_s,
            r.publish.acked_per_s,
            r.publish.ack_us.p50,
            r.publish.ack_us.p99
        );
    }
    if r.delivery.deliveries > 0 || r.delivery.expected > 0 {
        let l = &r.delivery.latency_us;
        s += &format!(
            "\n  delivered {} of {} ({:.0}/s); latency µs p50 {} p90 {} p99 {} p999 {} max {}",
            r.delivery.deliveries,
            r.delivery.expected,
            r.delivery.per_s,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
    }
    if let Some(loc) = &r.locality {
        if loc.cross_node.processes > 0 {
            for (name, g) in [
                ("same-node", &loc.same_node),
                ("cross-node", &loc.cross_node),
            ] {
                let l = &g.latency_us;
                s += &format!(
                    "\n  {name} ({} subscribers): delivered {} of {}; latency µs p50 {} p99 {} p999 {} max {}",
                    g.subscribers, g.deliveries, g.expected, l.p50, l.p99, l.p999, l.max
                );
            }
        }
    }
    if let Some(sv) = &r.server {
        s += &format!(
            "\n  server ({} processes): RSS {} → {} → {} KiB",
            sv.connected.processes, sv.before.rss_kb, sv.connected.rss_kb, sv.after.rss_kb
        );
        if let Some(b) = sv.rss_per_conn_bytes {
            s += &format!(" ({b:.0} B/conn RSS");
            if let Some(p) = sv.pss_per_conn_bytes {
                s += &format!(", {p:.0} B/conn PSS");
            }
            s += ")";
        }
        s += &format!(
            "; CPU {:.2} s connecting, {:.2} s in phase ({:.0}%)",
            sv.cpu_connect_s, sv.cpu_phase_s, sv.cpu_phase_pct
        );
    }
    if let Some(sv) = &r.server {
        if !sv.nodes.is_empty() {
            let per: Vec<String> = sv
                .nodes
                .iter()
                .map(|n| format!("{:.0}%", n.cpu_phase_pct))
                .collect();
            s += &format!("\n  server CPU per node in phase: {}", per.join(", "));
        }
    }
    if let Some(ev) = &r.engine {
        s += &format!(
            "\n  log engine: RSS {} KiB; CPU {:.2} s in phase ({:.0}%)",
            ev.after.rss_kb, ev.cpu_phase_s, ev.cpu_phase_pct
        );
    }
    if let Some(rs) = &r.resume {
        match (rs.supported, rs.ms) {
            (false, _) => s += &format!("\n  resume: not supported: {}", rs.note),
            (true, Some(ms)) => {
                s += &format!(
                    "\n  resume: {} of {} events in {ms:.1} ms",
                    rs.received, rs.events
                )
            }
            (true, None) => {
                s += &format!(
                    "\n  resume: only {} of {} events arrived",
                    rs.received, rs.events
                )
            }
        }
    }
    s += &format!(
        "\n  generator: {:.2} CPU s over {:.2} s ({:.0}%), peak RSS {} KiB",
        r.generator.cpu_s, r.generator.wall_s, r.generator.cpu_pct, r.generator.max_rss_kb
    );
    if let Some(mc) = &r.machine {
        s += &format!(
            "\n  machine: load {:.1} → {:.1}, all processes {:.0}% CPU of {} cores{}",
            mc.loadavg_start,
            mc.loadavg_end,
            if mc.wall_s > 0.0 {
                mc.busy_cpu_s / mc.wall_s * 100.0
            } else {
                0.0
            },
            mc.cores,
            mc.other_cpu_pct
                .map(|o| format!(", others than server and generator {o:.0}%"))
                .unwrap_or_default()
        );
        if mc.listen_overflows > 0 {
            s += &format!(
                "\n  {} connection attempts dropped by a full accept queue (ListenOverflows)",
                mc.listen_overflows
            );
        }
    }
    if r.error_total > 0 {
        s += &format!("\n  errors: {:?}", r.errors);
    }
    for n in &r.notes {
        s += &format!("\n  note: {n}");
    }
    s
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
    /// Shown, no ratio.
    None,
}

struct Row {
    scenario: &'static str,
    metric: &'static str,
    better: Better,
    get: fn(&Report) -> Option<f64>,
    fmt: fn(f64) -> String,
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn ms(v_us: f64) -> String {
    if v_us < 10_000.0 {
        format!("{:.2} ms", v_us / 1000.0)
    } else {
        format!("{} ms", thousands(v_us / 1000.0))
    }
}

fn rows() -> Vec<Row> {
    fn lat(r: &Report) -> Option<&Pct> {
        (r.delivery.latency_us.count > 0).then_some(&r.delivery.latency_us)
    }
    vec![
        Row {
            scenario: "fanout",
            metric: "deliveries/s",
            better: Better::Higher,
            get: |r| Some(r.delivery.per_s),
            fmt: thousands,
        },
        Row {
            scenario: "fanout",
            metric: "events acked/s",
            better: Better::Higher,
            get: |r| Some(r.publish.acked_per_s),
            fmt: thousands,
        },
        Row {
            scenario: "fanout",
            metric: "latency p99",
            better: Better::Lower,
            get: |r| lat(r).map(|p| p.p99 as f64),
            fmt: ms,
        },
        Row {
            scenario: "fanout",
            metric: "missing deliveries",
            better: Better::None,
            get: |r| Some(r.delivery.missing as f64),
            fmt: thousands,
        },
        Row {
            scenario: "fanout",
            metric: "server CPU %",
            better: Better::None,
            get: |r| r.server.as_ref().map(|s| s.cpu_phase_pct),
            fmt: |v| format!("{v:.0}%"),
        },
        Row {
            scenario: "channels",
            metric: "latency p50",
            better: Better::Lower,
            get: |r| lat(r).map(|p| p.p50 as f64),
            fmt: ms,
        },
        Row {
            scenario: "channels",
            metric: "latency p90",
            better: Better::Lower,
            get: |r| lat(r).map(|p| p.p90 as f64),
            fmt: ms,
        },
        Row {
            scenario: "channels",
            metric: "latency p99",
            better: Better::Lower,
            get: |r| lat(r).map(|p| p.p99 as f64),
            fmt: ms,
        },
        Row {
            scenario: "channels",
            metric: "latency p99.9",
            better: Better::Lower,
            get: |r| lat(r).map(|p| p.p999 as f64),
            fmt: ms,
        },
        Row {
            scenario: "channels",
            metric: "latency max",
            better: Better::Lower,
            get: |r| lat(r).map(|p| p.max as f64),
            fmt: ms,
        },
        Row {
            scenario: "channels",
            metric: "deliveries/s",
            better: Better::Higher,
            get: |r| Some(r.delivery.per_s),
            fmt: thousands,
        },
        Row {
            scenario: "channels",
            metric: "missing deliveries",
            better: Better::None,
            get: |r| Some(r.delivery.missing as f64),
            fmt: thousands,
        },
        Row {
            scenario: "channels",
            metric: "server CPU %",
            better: Better::None,
            get: |r| r.server.as_ref().map(|s| s.cpu_phase_pct),
            fmt: |v| format!("{v:.0}%"),
        },
        Row {
            scenario: "idle",
            metric: "RSS per connection",
            better: Better::Lower,
            get: |r| r.server.as_ref().and_then(|s| s.rss_per_conn_bytes),
            fmt: |v| format!("{:.2} KiB", v / 1024.0),
        },
        Row {
            scenario: "idle",
            metric: "PSS per connection",
            better: Better::Lower,
            get: |r| r.server.as_ref().and_then(|s| s.pss_per_conn_bytes),
            fmt: |v| format!("{:.2} KiB", v / 1024.0),
        },
        Row {
            scenario: "idle",
            metric: "server RSS with all",
            better: Better::None,
            get: |r| {
                r.server
                    .as_ref()
                    .map(|s| s.connected.rss_kb as f64 * 1024.0)
            },
            fmt: |v| format!("{:.1} MiB", v / 1048576.0),
        },
        Row {
            scenario: "storm",
            metric: "connections/s",
            better: Better::Higher,
            get: |r| Some(r.connect.rate_per_s),
            fmt: thousands,
        },
        Row {
            scenario: "storm",
            metric: "time to first byte p99",
            better: Better::Lower,
            get: |r| (r.connect.ttfb_us.count > 0).then_some(r.connect.ttfb_us.p99 as f64),
            fmt: ms,
        },
        Row {
            scenario: "storm",
            metric: "server CPU s (connecting)",
            better: Better::Lower,
            get: |r| r.server.as_ref().map(|s| s.cpu_connect_s),
            fmt: |v| format!("{v:.2} s"),
        },
        Row {
            scenario: "resume",
            metric: "time to all missed events",
            better: Better::Lower,
            get: |r| r.resume.as_ref().and_then(|x| x.ms).map(|ms| ms * 1000.0),
            fmt: ms,
        },
    ]
}

fn cell_missing(r: &Report, row: &Row) -> String {
    if row.scenario == "resume" {
        if let Some(rs) = &r.resume {
            if !rs.supported {
                return "not supported".into();
            }
            return format!("incomplete ({}/{})", rs.received, rs.events);
        }
    }
    "—".into()
}

/// Renders the comparison: one markdown table, every target a column, each value with its
/// ratio to the best of all targets, the ratio of ssegate to the best peer, and the goals.
pub fn table(reports: &[Report]) -> String {
    let mut targets: Vec<String> = Vec::new();
    for t in ["ssegate", "nchan", "pushpin"] {
        if reports.iter().any(|r| r.target == t) {
            targets.push(t.to_owned());
        }
    }
    for r in reports {
        if !targets.contains(&r.target) {
            targets.push(r.target.clone());
        }
    }
    let find = |t: &str, s: &str| reports.iter().find(|r| r.target == t && r.scenario == s);
    let mut out = String::new();
    out += "| scenario | metric |";
    for t in &targets {
        out += &format!(" {t} |");
    }
    out += " ssegate ÷ best peer | goal (ssegate) |\n|---|---|";
    for _ in &targets {
        out += "---:|";
    }
    out += "---:|---|\n";
    let all_rows = rows();
    for scenario in ["fanout", "channels", "idle", "storm", "resume"] {
        if !reports.iter().any(|r| r.scenario == scenario) {
            continue;
        }
        for row in all_rows.iter().filter(|r| r.scenario == scenario) {
            out += &metric_row(row, &targets, &find);
        }
        out += &extra_row(scenario, "errors", &targets, &find, |r| {
            if r.error_total == 0 {
                return "0".into();
            }
            let kinds: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{} ({})", r.error_total, kinds.join(", "))
        });
        out += &extra_row(scenario, "generator CPU", &targets, &find, |r| {
            format!(
                "{:.0}% ({} proc)",
                r.generator.cpu_pct, r.generator.processes
            )
        });
        if scenario != "resume" {
            out += &extra_row(scenario, "accept queue overflows", &targets, &find, |r| {
                r.machine
                    .as_ref()
                    .map(|m| thousands(m.listen_overflows as f64))
                    .unwrap_or_else(|| "—".into())
            });
        }
        out += &extra_row(scenario, "other processes' CPU", &targets, &find, |r| {
            r.machine
                .as_ref()
                .and_then(|m| m.other_cpu_pct)
                .map(|o| format!("{o:.0}%"))
                .unwrap_or_else(|| "—".into())
        });
    }
    out
}

fn extra_row<'a>(
    scenario: &str,
    metric: &str,
    targets: &[String],
    find: &Find<'a>,
    cell: impl Fn(&Report) -> String,
) -> String {
    let mut out = format!("| {scenario} | {metric} |");
    for t in targets {
        match find(t, scenario) {
            Some(r) => out += &format!(" {} |", cell(r)),
            None => out += " not run |",
        }
    }
    out += " — | |\n";
    out
}

fn metric_row<'a>(row: &Row, targets: &[String], find: &Find<'a>) -> String {
    let mut out = String::new();
    let values: Vec<Option<f64>> = targets
        .iter()
        .map(|t| find(t, row.scenario).and_then(|r| (row.get)(r)))
        .collect();
    let best = match row.better {
        Better::Higher => values
            .iter()
            .flatten()
            .copied()
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v)))),
        Better::Lower => values
            .iter()
            .flatten()
            .copied()
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.min(v)))),
        Better::None => None,
    };
    out += &format!("| {} | {} |", row.scenario, row.metric);
    for (t, v) in targets.iter().zip(&values) {
        match (v, best) {
            (Some(v), Some(b)) if b > 0.0 => {
                out += &format!(" {} ({:.2}× best) |", (row.fmt)(*v), v / b)
            }
            (Some(v), _) => out += &format!(" {} |", (row.fmt)(*v)),
            (None, _) => {
                let cell = find(t, row.scenario)
                    .map(|r| cell_missing(r, row))
                    .unwrap_or_else(|| "not run".into());
                out += &format!(" {cell} |");
            }
        }
    }
    // ssegate ÷ best peer.
    let sse = targets
        .iter()
        .position(|t| t == "ssegate")
        .and_then(|i| values[i]);
    let peer_best = targets
        .iter()
        .zip(&values)
        .filter(|(t, _)| t.as_str() != "ssegate")
        .filter_map(|(_, v)| *v)
        .fold(None, |a: Option<f64>, v| {
            Some(match (a, row.better) {
                (None, _) => v,
                (Some(a), Better::Lower) => a.min(v),
                (Some(a), _) => a.max(v),
            })
        });
    match (sse, peer_best, row.better) {
        (Some(s), Some(p), Better::Higher | Better::Lower) if p > 0.0 => {
            out += &format!(" {:.2}× |", s / p)
        }
        _ => out += " — |",
    }
    out += &format!(" {} |\n", goal(row.scenario, row.metric, find));
    out
}

type Find<'a> = dyn Fn(&str, &str) -> Option<&'a Report> + 'a;

/// The goal of the issue for this row, met or missed with the measured number.
fn goal<'a>(scenario: &str, metric: &str, find: &Find<'a>) -> String {
    let sse = find("ssegate", scenario);
    let nchan = find("nchan", scenario);
    let verdict = |ok: bool| if ok { "**met**" } else { "**missed**" };
    match (scenario, metric) {
        ("fanout", "deliveries/s") => match (sse, nchan) {
            (Some(s), Some(n)) if n.delivery.per_s > 0.0 => {
                let x = s.delivery.per_s / n.delivery.per_s;
                format!("≥ 3× nchan: {} ({x:.2}×)", verdict(x >= 3.0))
            }
            _ => "≥ 3× nchan: no nchan figure".into(),
        },
        ("channels", "latency p99") => match sse {
            Some(s) if s.delivery.latency_us.count > 0 => {
                let p = s.delivery.latency_us.p99 as f64;
                let n = nchan
                    .filter(|n| n.delivery.latency_us.count > 0)
                    .map(|n| n.delivery.latency_us.p99 as f64);
                let ok5 = p <= 5_000.0;
                let okn = n.is_none_or(|n| p <= n);
                match n {
                    Some(n) => format!(
                        "≤ 5 ms and ≤ nchan: {} ({}, nchan {})",
                        verdict(ok5 && okn),
                        ms(p),
                        ms(n)
                    ),
                    None => format!("≤ 5 ms: {} ({}); no nchan figure", verdict(ok5), ms(p)),
                }
            }
            _ => "≤ 5 ms and ≤ nchan: no figure".into(),
        },
        ("idle", "RSS per connection") => {
            match sse.and_then(|s| s.server.as_ref()?.rss_per_conn_bytes) {
                Some(b) => format!("≤ 4 KiB: {} ({:.2} KiB)", verdict(b <= 4096.0), b / 1024.0),
                None => "≤ 4 KiB: no figure".into(),
            }
        }
        ("storm", "connections/s") => match sse {
            Some(s) if s.connect.rate_per_s > 0.0 => format!(
                "≥ 10,000/s incl. JWT: {} ({}/s)",
                verdict(s.connect.rate_per_s >= 10_000.0 && s.connected == s.subscribers),
                thousands(s.connect.rate_per_s)
            ),
            _ => "≥ 10,000/s: no figure".into(),
        },
        ("resume", "time to all missed events") => match sse.and_then(|s| s.resume.as_ref()) {
            Some(rs) if rs.events < 10_000 => format!(
                "10,000 events ≤ 100 ms: n/a at this scale ({} events{})",
                thousands(rs.events as f64),
                rs.ms.map(|m| format!(" in {m:.1} ms")).unwrap_or_default()
            ),
            Some(rs) => match rs.ms {
                Some(m) if rs.received >= rs.events => format!(
                    "{} events ≤ 100 ms: {} ({m:.1} ms)",
                    thousands(rs.events as f64),
                    verdict(m <= 100.0 && rs.events >= 10_000)
                ),
                _ => format!(
                    "≤ 100 ms: **missed** ({}/{} arrived)",
                    rs.received, rs.events
                ),
            },
            None => "≤ 100 ms: no figure".into(),
        },
        _ => String::new(),
    }
}

type Cell = fn(&Report) -> String;

/// Milliseconds with enough digits to tell 10.2 ms from 10 ms.
fn ms1(v_us: f64) -> String {
    if v_us < 10_000.0 {
        format!("{:.2} ms", v_us / 1000.0)
    } else if v_us < 100_000.0 {
        format!("{:.1} ms", v_us / 1000.0)
    } else {
        ms(v_us)
    }
}

/// The cluster comparison (bench/cluster.sh): one column per merged report (an engine with
/// 1 node, with 3 nodes, ...), one row per metric, then the goal.
pub fn cluster_table(reports: &[Report]) -> String {
    fn lat(g: &Group, f: fn(&Pct) -> u64) -> String {
        if g.latency_us.count == 0 {
            "—".into()
        } else {
            ms1(f(&g.latency_us) as f64)
        }
    }
    fn same(r: &Report) -> Group {
        r.locality
            .as_ref()
            .map(|l| l.same_node.clone())
            .unwrap_or_default()
    }
    fn cross(r: &Report) -> Group {
        r.locality
            .as_ref()
            .map(|l| l.cross_node.clone())
            .unwrap_or_default()
    }
    let rows: Vec<(&str, Cell)> = vec![
        ("subscribers connected", |r| {
            format!(
                "{} of {}",
                thousands(r.connected as f64),
                thousands(r.subscribers as f64)
            )
        }),
        ("events published/s (acknowledged)", |r| {
            if r.publish.target_rate > 0.0 && r.publish.acked_per_s < r.publish.target_rate * 0.98 {
                format!(
                    "{} (target {})",
                    thousands(r.publish.acked_per_s),
                    thousands(r.publish.target_rate)
                )
            } else {
                thousands(r.publish.acked_per_s)
            }
        }),
        ("publish ack p50 / p99", |r| {
            format!(
                "{} / {}",
                ms(r.publish.ack_us.p50 as f64),
                ms(r.publish.ack_us.p99 as f64)
            )
        }),
        ("deliveries/s (all nodes)", |r| thousands(r.delivery.per_s)),
        ("missing deliveries", |r| {
            format!(
                "{} of {}",
                thousands(r.delivery.missing as f64),
                thousands(r.delivery.expected as f64)
            )
        }),
        ("same-node latency p50", |r| lat(&same(r), |p| p.p50)),
        ("same-node latency p99", |r| lat(&same(r), |p| p.p99)),
        ("same-node latency p99.9", |r| lat(&same(r), |p| p.p999)),
        ("cross-node latency p50", |r| lat(&cross(r), |p| p.p50)),
        ("cross-node latency p99", |r| lat(&cross(r), |p| p.p99)),
        ("cross-node latency p99.9", |r| lat(&cross(r), |p| p.p999)),
        ("cross-node latency max", |r| lat(&cross(r), |p| p.max)),
        ("ssegate CPU (sum of nodes)", |r| match &r.server {
            Some(sv) if sv.nodes.len() > 1 => {
                let per: Vec<String> = sv
                    .nodes
                    .iter()
                    .map(|n| format!("{:.0}", n.cpu_phase_pct))
                    .collect();
                format!("{:.0}% ({} %)", sv.cpu_phase_pct, per.join(" + "))
            }
            Some(sv) => format!("{:.0}%", sv.cpu_phase_pct),
            None => "—".into(),
        }),
        ("log engine CPU", |r| {
            r.engine
                .as_ref()
                .map(|e| format!("{:.0}%", e.cpu_phase_pct))
                .unwrap_or_else(|| "—".into())
        }),
        ("generator CPU", |r| {
            format!(
                "{:.0}% ({} proc)",
                r.generator.cpu_pct, r.generator.processes
            )
        }),
        ("other processes' CPU", |r| {
            r.machine
                .as_ref()
                .and_then(|m| m.other_cpu_pct)
                .map(|o| format!("{o:.0}%"))
                .unwrap_or_else(|| "—".into())
        }),
        ("errors", |r| {
            if r.error_total == 0 {
                return "0".into();
            }
            let kinds: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{} ({})", r.error_total, kinds.join(", "))
        }),
        ("goal: cross-node p99 ≤ 10 ms", |r| {
            let g = cross(r);
            if g.processes == 0 {
                "n/a (1 node)".into()
            } else if g.latency_us.count == 0 {
                "**missed** (nothing delivered)".into()
            } else {
                let p99 = g.latency_us.p99 as f64;
                let ok = p99 <= 10_000.0 && g.missing == 0;
                let why = if g.missing > 0 {
                    format!(", {} missing", thousands(g.missing as f64))
                } else {
                    String::new()
                };
                format!(
                    "{} ({}{why})",
                    if ok { "**met**" } else { "**missed**" },
                    ms1(p99)
                )
            }
        }),
    ];
    let mut cols: Vec<&Report> = reports.iter().collect();
    let labels: Vec<&str> = {
        let mut l: Vec<&str> = Vec::new();
        for r in reports {
            if !l.contains(&r.label.as_str()) {
                l.push(&r.label);
            }
        }
        l
    };
    cols.sort_by_key(|r| {
        (
            labels.iter().position(|l| *l == r.label).unwrap_or(0),
            r.nodes,
        )
    });
    let mut out = String::from("| metric |");
    for r in &cols {
        let label = if r.label.is_empty() {
            &r.target
        } else {
            &r.label
        };
        let n = r.nodes.max(1);
        out += &format!(" {label}, {n} node{} |", if n == 1 { "" } else { "s" });
    }
    out += "\n|---|";
    for _ in &cols {
        out += "---:|";
    }
    out += "\n";
    for (metric, cell) in rows {
        out += &format!("| {metric} |");
        for r in &cols {
            out += &format!(" {} |", cell(r));
        }
        out += "\n";
    }
    let mut notes = String::new();
    for r in &cols {
        for n in &r.notes {
            notes += &format!("- {}, {} node(s): {n}\n", r.label, r.nodes.max(1));
        }
    }
    if !notes.is_empty() {
        out += "\nNotes:\n";
        out += &notes;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_round_trip() {
        let mut h = new_hist();
        for v in [1, 5, 100, 1000, 1000, 123_456, 5_000_000_000] {
            record(&mut h, v);
        }
        let back = hist_from_vec(&hist_to_vec(&h));
        assert_eq!(back.len(), h.len());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(back.max(), h.max());
    }

    #[test]
    fn merge_adds_counts_and_takes_the_longest_duration() {
        let mut a = Report {
            target: "ssegate".into(),
            scenario: "storm".into(),
            proc_index: Some(0),
            subscribers: 10,
            connected: 10,
            ..Report::default()
        };
        a.connect.duration_s = 1.0;
        let mut b = a.clone();
        b.proc_index = Some(1);
        b.connect.duration_s = 2.0;
        b.errors.insert("eof".into(), 2);
        let m = merge(vec![a, b]).unwrap();
        assert_eq!(m.connected, 20);
        assert_eq!(m.connect.rate_per_s, 10.0);
        assert_eq!(m.error_total, 2);
        assert!(table(&[m]).contains("storm"));
    }

    #[test]
    fn merge_splits_same_node_and_cross_node() {
        let node1 = "http://127.0.0.1:1";
        let part = |i: usize, url: &str, subs: u64, lat: u64| {
            let mut r = Report {
                target: "ssegate".into(),
                scenario: "channels".into(),
                proc_index: Some(i),
                url: url.into(),
                publish_url: node1.into(),
                subscribe_only: i > 0,
                subscribers: subs,
                connected: subs,
                label: "redis".into(),
                ..Report::default()
            };
            r.delivery.deliveries = subs * 10;
            r.delivery.expected = subs * 10;
            let mut h = new_hist();
            for _ in 0..r.delivery.deliveries {
                record(&mut h, lat);
            }
            r.histograms.latency = hist_to_vec(&h);
            r
        };
        let parts = vec![
            part(0, node1, 0, 1),
            part(1, node1, 6, 1_000),
            part(2, "http://127.0.0.1:2", 6, 5_000),
            part(3, "http://127.0.0.1:3", 6, 5_000),
        ];
        let m = merge(parts).unwrap();
        assert_eq!(m.nodes, 3);
        assert_eq!(m.label, "redis");
        let loc = m.locality.as_ref().unwrap();
        assert_eq!(loc.same_node.processes, 1);
        assert_eq!(loc.same_node.subscribers, 6);
        assert_eq!(loc.cross_node.processes, 2);
        assert_eq!(loc.cross_node.deliveries, 120);
        assert!(loc.same_node.latency_us.p99 < 1_100);
        assert!(loc.cross_node.latency_us.p50 > 4_900);
        let t = cluster_table(&[m]);
        assert!(t.contains("redis, 3 nodes"), "{t}");
        assert!(t.contains("**met** (5.00 ms)"), "{t}");
    }

    #[test]
    fn reports_without_the_cluster_fields_still_parse() {
        let r = Report::default();
        let mut v = serde_json::to_value(&r).unwrap();
        for k in [
            "label",
            "publish_url",
            "subscribe_only",
            "nodes",
            "locality",
            "engine",
        ] {
            v.as_object_mut().unwrap().remove(k);
        }
        v["server"] = serde_json::to_value(ServerStats::default()).unwrap();
        v["server"].as_object_mut().unwrap().remove("nodes");
        let back: Report = serde_json::from_value(v).unwrap();
        assert!(back.server.unwrap().nodes.is_empty());
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(12.0), "12");
        assert_eq!(thousands(-1000.0), "-1,000");
    }
}
