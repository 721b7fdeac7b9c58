//! CPU time of processes from `/proc`: the gateway's, and the PostgreSQL postmaster's with
//! all its backends (live and reaped).

/// CPU time of a live process in nanoseconds, all its threads summed
/// (`/proc/PID/task/*/schedstat`: exact, where the tick counts of `/proc/PID/stat` round each
/// backend's few milliseconds down to nothing; `/proc/PID/schedstat` alone is only the main
/// thread, which in ssegate does almost nothing).
pub fn proc_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// cutime + cstime of a process (the children it reaped), in nanoseconds.
fn reaped_cpu_ns(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    // Fields after the command: state(3) ppid(4) … cutime(16) cstime(17), in ticks.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (n(16) + n(17)) * 10_000_000 // USER_HZ = 100
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU (ns) of the postmaster, the children it reaped, and its live children.
pub fn tree_cpu_ns(postmaster: u32) -> u64 {
    let mut total = proc_cpu_ns(postmaster) + reaped_cpu_ns(postmaster);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if parent_of(pid) == Some(postmaster) {
                total += proc_cpu_ns(pid);
            }
        }
    }
    total
}
