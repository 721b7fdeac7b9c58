//! `/proc` sampling: RSS, PSS and CPU of process trees (the server, the log engine), of this
//! process, and of the whole machine.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::report::NodeStats;

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
