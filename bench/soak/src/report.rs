//! The verdict: every check with its figures, as a JSON report and a few lines for a person.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::attacker::AttackReport;
use crate::check::{verify, Until, Verdict};
use crate::csrf::VariantReport;
use crate::ctx::Ctx;
use crate::probes::{HealthReport, KickReport, LogScan, NodeState, Sample};
use crate::publisher::PublisherReport;
use crate::subscriber::{lock, Role, SubResult};

/// Everything the run produced.
pub struct Outcome {
    pub ramp_s: f64,
    pub ramp_complete: bool,
    pub population: usize,
    pub load_s: f64,
    pub drain_s: f64,
    pub all_drained: bool,
    pub total_s: f64,
    /// Seconds since the start at which the baseline window began.
    pub baseline_at: f64,
    /// Length of the start and end windows, seconds.
    pub window_s: f64,
    pub baseline: Option<Sample>,
    pub end: Option<Sample>,
    pub samples: Vec<Sample>,
    pub publishers: Vec<PublisherReport>,
    pub subscribers: Vec<SubResult>,
    pub health: HealthReport,
    pub kicks: KickReport,
    pub attack: Option<AttackReport>,
    pub csrf: Vec<VariantReport>,
    pub node: NodeState,
    pub log: Result<LogScan, String>,
    /// The load ended early because a cross-site drain was accepted.
    pub aborted: bool,
}

/// The checks on timing: with `--timing-advisory` (the short run in the test command, on a
/// debug build of a shared machine) they are reported but fail nothing — figures, not
/// assertions; the recorded runs keep them strict.
const TIMING_CHECKS: [&str; 1] = ["/healthz p99 < 50 ms"];

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn pct(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

fn change(from: u64, to: u64) -> f64 {
    if from == 0 {
        return f64::INFINITY;
    }
    (to as f64 - from as f64) / from as f64 * 100.0
}

/// Builds the report: the JSON document, the summary lines, and whether every check passed.
pub fn build(ctx: &Ctx, o: &Outcome) -> (Value, String, bool) {
    let opts = &ctx.opts;
    let stats = &ctx.stats;
    let mut checks = Vec::new();

    // --- the scenario ran as specified ---
    let acked: u64 = o.publishers.iter().map(|p| p.acked).sum();
    let failed: u64 = o.publishers.iter().map(|p| p.failed).sum();
    let rate = acked as f64 / o.load_s.max(0.001);
    let open_during_load: Vec<&Sample> = o
        .samples
        .iter()
        .filter(|s| s.t >= o.ramp_s && s.t < o.ramp_s + o.load_s)
        .collect();
    let open_mean = if open_during_load.is_empty() {
        0.0
    } else {
        open_during_load
            .iter()
            .map(|s| s.open_streams as f64)
            .sum::<f64>()
            / open_during_load.len() as f64
    };
    let open_min = open_during_load
        .iter()
        .map(|s| s.open_streams)
        .min()
        .unwrap_or(0);
    let rate_ok = rate >= 0.95 * f64::from(opts.rate);
    let churn = stats.client_closes.load(Ordering::Relaxed) as f64 / o.load_s.max(0.001);
    let churn_ok = churn >= 0.9 * f64::from(opts.churn);
    checks.push(Check {
        name: "scenario",
        ok: o.ramp_complete && rate_ok && churn_ok && !o.aborted,
        detail: format!(
            "{} streams + {} slow readers opened in {:.1} s{}; {churn:.0} client disconnects/s of {} asked; {rate:.0} events/s acknowledged of {} asked{}",
            opts.streams,
            opts.slow,
            o.ramp_s,
            if o.ramp_complete { "" } else { " (NOT all of them)" },
            opts.churn,
            opts.rate,
            if o.aborted { "; the load was cut short (the node was drained by a cross-site request)" } else { "" },
        ),
    });

    // --- publishes ---
    let anomalies = ctx.ledger.anomalies.load(Ordering::Relaxed);
    checks.push(Check {
        name: "publishes acknowledged",
        ok: failed == 0 && anomalies == 0,
        detail: format!(
            "{acked} events acknowledged, {failed} never acknowledged, {anomalies} acknowledgements out of channel order"
        ),
    });

    // --- exactly once ---
    let ledger = ctx.ledger.snapshot();
    let mut regular = Verdict::default();
    let (mut regular_n, mut failing, mut not_drained, mut left) = (0u64, 0u64, 0u64, 0u64);
    let mut examples = Vec::new();
    let mut slow = Verdict::default();
    let (mut slow_n, mut slow_failing, mut slow_gaps, mut slow_bytes, mut slow_events) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut canary_events = 0u64;
    let mut order_violations = 0u64;
    let mut foreign = 0u64;
    for s in &o.subscribers {
        match s.role {
            Role::Canary => {
                canary_events += s.events;
                continue;
            }
            Role::Regular => {
                regular_n += 1;
                left += u64::from(s.left);
                let until = if s.left {
                    Until::Id(s.last_id)
                } else {
                    Until::End
                };
                let v = verify(&s.chans, s.start, until, &ledger);
                let mut problems = v.problems.clone();
                if !s.left && !s.drained && v.problems.is_empty() {
                    problems.push_str("not drained; ");
                }
                if !s.left && !s.drained {
                    not_drained += 1;
                }
                if s.order_violations > 0 {
                    let _ = write!(problems, "{} ids out of order; ", s.order_violations);
                }
                if s.foreign > 0 {
                    let _ = write!(problems, "{} frames not of its channels; ", s.foreign);
                }
                if !problems.is_empty() {
                    failing += 1;
                    if examples.len() < 5 {
                        examples.push(format!(
                            "subscriber {} (from id {}): {problems}",
                            s.id, s.start
                        ));
                    }
                }
                add(&mut regular, &v);
            }
            Role::Slow => {
                slow_n += 1;
                slow_gaps += s.gaps;
                slow_bytes += s.bytes;
                slow_events += s.events;
                let v = verify(&s.chans, s.start, Until::Id(s.last_id), &ledger);
                if !v.problems.is_empty() || s.order_violations > 0 || s.foreign > 0 {
                    slow_failing += 1;
                    if examples.len() < 5 {
                        examples.push(format!("slow reader {}: {}", s.id, v.problems));
                    }
                }
                add(&mut slow, &v);
            }
        }
        order_violations += s.order_violations;
        foreign += s.foreign;
    }
    checks.push(Check {
        name: "exactly once",
        ok: failing == 0 && not_drained == 0 && regular.owed > 0,
        detail: format!(
            "{regular_n} subscribers ({left} left early) owed {} events: {} delivered, {} missing, {} duplicate, {} not owed; {failing} subscribers wrong, {not_drained} not drained",
            regular.owed, regular.delivered, regular.missing, regular.duplicates, regular.unexpected
        ),
    });
    checks.push(Check {
        name: "slow readers",
        ok: slow_failing == 0,
        detail: format!(
            "{slow_n} slow readers read {slow_bytes} bytes ({slow_events} events): {} missing, {} duplicate, {} lost to retention after {slow_gaps} gap(s); {slow_failing} wrong",
            slow.missing, slow.duplicates, slow.excused
        ),
    });

    // --- streams ended only as expected ---
    let unexpected = stats.unexpected_ends.load(Ordering::Relaxed);
    let stalls = stats.stalls.load(Ordering::Relaxed);
    let other_closings = lock(&stats.other_closings).clone();
    checks.push(Check {
        name: "streams ended only by expiry, kicks or their client",
        ok: unexpected == 0 && stalls == 0,
        detail: format!(
            "{unexpected} ended otherwise, {stalls} stalled 20 s{}",
            if other_closings.is_empty() {
                String::new()
            } else {
                format!(" ({other_closings:?})")
            }
        ),
    });

    // --- resources ---
    // The attack runs in both windows, at whatever level the server lets it keep: its
    // connections are taken out of the open-file count (the attacker counts them at the same
    // instant), so that what is compared is what the node keeps for everything else.
    let own = |s: &Sample| s.fds.saturating_sub(s.attack_open.max(0) as u64);
    let (rss_change, fds_change) = match (o.baseline, o.end) {
        (Some(b), Some(e)) => (change(b.rss_kb, e.rss_kb), change(own(&b), own(&e))),
        _ => (f64::INFINITY, f64::INFINITY),
    };
    let resource_detail = match (o.baseline, o.end) {
        (Some(b), Some(e)) => format!(
            "RSS {:.1} → {:.1} MiB ({rss_change:+.1} %), open files {} → {} ({fds_change:+.1} %; with the attack's {} and {}: {} → {})",
            b.rss_kb as f64 / 1024.0,
            e.rss_kb as f64 / 1024.0,
            own(&b),
            own(&e),
            b.attack_open,
            e.attack_open,
            b.fds,
            e.fds
        ),
        _ => "no samples".into(),
    };
    checks.push(Check {
        name: "RSS and open files within 10 %",
        ok: rss_change.abs() <= 10.0 && fds_change.abs() <= 10.0,
        detail: resource_detail,
    });

    // --- healthz ---
    let h = &o.health.latency;
    let probes = h.len() + o.health.failures;
    let mut with_failures = h.clone();
    let _ = with_failures.record_n(1_000_000, o.health.failures);
    let p99 = pct(&with_failures, 0.99);
    checks.push(Check {
        name: "/healthz p99 < 50 ms",
        ok: p99 < 50_000 && o.health.failures == 0,
        detail: format!(
            "{probes} probes: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {} failed",
            ms(pct(h, 0.5)),
            ms(p99),
            ms(h.max()),
            o.health.failures
        ),
    });

    // --- server log ---
    let log_check = match &o.log {
        Ok(scan) => Check {
            name: "no panic or ERROR in the server log",
            ok: scan.errors == 0 && scan.panics == 0,
            detail: format!(
                "{} lines: {} ERROR, {} panic, {} WARN",
                scan.lines, scan.errors, scan.panics, scan.warnings
            ),
        },
        Err(e) => Check {
            name: "no panic or ERROR in the server log",
            ok: false,
            detail: format!("cannot read it: {e}"),
        },
    };
    checks.push(log_check);

    // --- attack ---
    let mut attack_json = Value::Null;
    if let Some(a) = &o.attack {
        let mut late = 0;
        let mut parts = Vec::new();
        let mut kinds = serde_json::Map::new();
        let mut at_once = 0;
        let mut total = 0;
        for (kind, r) in &a.kinds {
            late += r.late;
            at_once += r.closed_at_once;
            total += r.opened;
            let l = &r.lifetime_ms;
            parts.push(format!(
                "{} {} late of {} (closed after p50 {:.1} s, max {:.1} s)",
                kind.name(),
                r.late,
                r.opened,
                pct(l, 0.5) as f64 / 1000.0,
                l.max() as f64 / 1000.0
            ));
            kinds.insert(
                kind.name().into(),
                json!({
                    "opened": r.opened,
                    "connect_failures": r.connect_failures,
                    "closed_by_server": r.closed_by_server,
                    "closed_at_once": r.closed_at_once,
                    "closed_in_time": r.closed_in_time,
                    "late": r.late,
                    "open_at_end": r.open_at_end,
                    "overdue_at_end": r.overdue_at_end,
                    "answered": r.answered,
                    "answers": r.answers,
                    "lifetime_ms": {"p50": pct(l, 0.5), "p99": pct(l, 0.99), "max": l.max()},
                    "worst_late_ms": r.worst_late_ms,
                }),
            );
        }
        checks.push(Check {
            name: "attack connections closed within the timeouts",
            ok: late == 0 && total > 0,
            detail: format!(
                "{total} connections, peak {} open, {at_once} closed at once (cap); {}{}",
                a.peak_open,
                parts.join("; "),
                if opts.settings_present { "" } else { " — the node lacks server.head_timeout_ms/idle_timeout_ms: ran with its built-in timeouts" },
            ),
        });
        attack_json = json!({
            "source": "127.0.0.2",
            "peak_open": a.peak_open,
            "per_ip_cap": opts.per_ip_cap,
            "kinds": kinds,
        });
    }

    // --- CSRF ---
    let mut csrf_json = Vec::new();
    if opts.attack {
        let accepted: u64 = o.csrf.iter().map(|r| r.accepted).sum();
        let wrong: u64 = o
            .csrf
            .iter()
            .flat_map(|r| r.refused_otherwise.values())
            .sum();
        let right: u64 = o.csrf.iter().map(|r| r.refused_as_expected).sum();
        let cut: u64 = o.csrf.iter().flat_map(|r| r.capped.values()).sum();
        let skipped: u64 = o.csrf.iter().map(|r| r.skipped).sum();
        let unproven: Vec<&str> = o
            .csrf
            .iter()
            .filter(|r| r.refused_as_expected == 0)
            .map(|r| r.name)
            .collect();
        let head_ok = o.node.log_head == Some(ctx.ledger.max_acked())
            && ctx.ledger.max_acked() == ctx.ledger.acked();
        let drained = ctx.drained_by_csrf.load(Ordering::Relaxed) || o.node.readyz != Some(200);
        let mut wrongs: BTreeMap<String, u64> = BTreeMap::new();
        for r in &o.csrf {
            for (k, n) in &r.refused_otherwise {
                *wrongs.entry(format!("{}: {k}", r.name)).or_default() += n;
            }
        }
        checks.push(Check {
            name: "cross-site requests refused, nothing changed",
            ok: accepted == 0 && wrong == 0 && skipped == 0 && unproven.is_empty() && head_ok && canary_events == 0 && !drained,
            detail: format!(
                "{right} refused as expected, {wrong} refused otherwise{}, {accepted} ACCEPTED, {cut} not judged (address at its cap, or no answer), {skipped} drain attempts skipped; log head {} vs {} acknowledged; canary got {canary_events} events; /readyz {}{}",
                if wrongs.is_empty() { String::new() } else { format!(" ({})", wrongs.iter().map(|(k, n)| format!("{k} ×{n}")).collect::<Vec<_>>().join(", ")) },
                o.node.log_head.map_or("?".into(), |h| h.to_string()),
                acked,
                o.node.readyz.map_or("?".into(), |s| s.to_string()),
                if unproven.is_empty() { String::new() } else { format!("; never refused as expected: {}", unproven.join(", ")) },
            ),
        });
        for r in &o.csrf {
            csrf_json.push(json!({
                "variant": r.name,
                "expected": r.expected,
                "attempts": r.attempts,
                "refused_as_expected": r.refused_as_expected,
                "refused_otherwise": r.refused_otherwise,
                "accepted": r.accepted,
                "not_judged": r.capped,
                "skipped": r.skipped,
            }));
        }
    }

    let counts = |c: &Check| !(opts.timing_advisory && TIMING_CHECKS.contains(&c.name));
    let ok = checks.iter().all(|c| c.ok || !counts(c));

    // --- the JSON document ---
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for p in &o.publishers {
        let _ = latency.add(&p.latency);
    }
    let requests: u64 = o.publishers.iter().map(|p| p.requests).sum();
    let retries: u64 = o.publishers.iter().map(|p| p.retries).sum();
    let series: Vec<Value> = o
        .samples
        .iter()
        .step_by((o.samples.len() / 120).max(1))
        .map(|s| {
            json!([
                (s.t * 10.0).round() / 10.0,
                s.rss_kb,
                s.fds,
                s.open_streams,
                s.open_slow,
                s.attack_open
            ])
        })
        .collect();
    let sample_json = |s: Option<Sample>| {
        s.map(|s| json!({"t_s": s.t, "rss_kb": s.rss_kb, "open_files": s.fds, "open_streams": s.open_streams, "open_slow": s.open_slow, "attack_open": s.attack_open}))
    };
    let cpu = crate::probes::cpu_between(&o.samples, o.ramp_s, o.ramp_s + o.load_s);
    let cpu_json = cpu.map(|(server, soak, others)| {
        json!({"server_pct": server.round(), "soak_pct": soak.round(), "other_processes_pct": others.round(), "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)})
    });
    let max_rss = o.samples.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    let max_fds = o.samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let log_json = match &o.log {
        Ok(s) => {
            json!({"lines": s.lines, "errors": s.errors, "panics": s.panics, "warnings": s.warnings, "examples": s.examples, "warning_examples": s.warning_examples})
        }
        Err(e) => json!({"error": e}),
    };
    let doc = json!({
        "ok": ok,
        "checks": checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
        "scenario": {
            "profile": opts.profile,
            "load_s": opts.load.as_secs_f64(),
            "streams": opts.streams,
            "population": o.population,
            "slow_readers": opts.slow,
            "channels": opts.channels,
            "channels_per_subscriber": opts.channels_per_sub,
            "events_per_s": opts.rate,
            "publishers": opts.publishers,
            "churn_per_s": opts.churn,
            "leave_share": opts.leave_share,
            "token_ttl_s": [opts.ttl_min_s, opts.ttl_max_s],
            "kick_every_ms": opts.kick_every.as_millis() as u64,
            "subscriber_addresses": opts.sub_addrs,
            "attack": opts.attack,
            "attack_rate_per_s": opts.attack_rate,
            "head_timeout_ms": opts.head_timeout.as_millis() as u64,
            "idle_timeout_ms": opts.idle_timeout.as_millis() as u64,
            "timeout_slack_ms": opts.slack.as_millis() as u64,
            "server_timeout_settings": if opts.settings_present { "present" } else { "absent" },
            "fault": opts.fault.map(|f| format!("{f:?}")),
        },
        "timeline_s": {
            "ramp": o.ramp_s,
            "load": o.load_s,
            "drain": o.drain_s,
            "total": o.total_s,
            "all_drained": o.all_drained,
        },
        "publish": {
            "acknowledged": acked,
            "never_acknowledged": failed,
            "events_per_s": rate,
            "requests": requests,
            "retries": retries,
            "latency_ms": {"p50": ms(pct(&latency, 0.5)), "p99": ms(pct(&latency, 0.99)), "max": ms(latency.max())},
        },
        "streams": {
            "connects": stats.connects.load(Ordering::Relaxed),
            "open_mean_during_load": open_mean,
            "open_min_during_load": open_min,
            "client_closes": stats.client_closes.load(Ordering::Relaxed),
            "joins": stats.joins.load(Ordering::Relaxed),
            "leaves": stats.leaves.load(Ordering::Relaxed),
            "token_expired": stats.expired.load(Ordering::Relaxed),
            "kicked": stats.kicked.load(Ordering::Relaxed),
            "unexpected_ends": unexpected,
            "other_closings": other_closings,
            "stalls": stalls,
            "events_received": stats.events.load(Ordering::Relaxed),
            "errors": lock(&stats.errors).clone(),
        },
        "kicks": {"requests": o.kicks.requests, "closed": o.kicks.closed, "failures": o.kicks.failures},
        "delivery": {
            "subscribers": regular_n,
            "left_early": left,
            "owed": regular.owed,
            "delivered": regular.delivered,
            "missing": regular.missing,
            "duplicates": regular.duplicates,
            "not_owed": regular.unexpected,
            "order_violations": order_violations,
            "foreign_frames": foreign,
            "subscribers_wrong": failing,
            "not_drained": not_drained,
            "examples": examples,
        },
        "slow_readers": {
            "count": slow_n,
            "bytes": slow_bytes,
            "events": slow_events,
            "missing": slow.missing,
            "duplicates": slow.duplicates,
            "gaps": slow_gaps,
            "lost_to_retention": slow.excused,
            "wrong": slow_failing,
        },
        "healthz": {
            "probes": probes,
            "failures": o.health.failures,
            "first_failures": o.health.first_failures,
            "latency_ms": {"p50": ms(pct(h, 0.5)), "p99": ms(p99), "p99_9": ms(pct(&with_failures, 0.999)), "max": ms(h.max())},
        },
        "resources": {
            "start_definition": format!("median of the samples {:.0}–{:.0} s after the soak began: {:.0} s into the load (the warm-up), every stream open, publishing, churn, kicks and the attack running", o.baseline_at, o.baseline_at + o.window_s, o.baseline_at - o.ramp_s),
            "end_definition": format!("median of {:.0} s of samples from 2 s after every subscriber drained: the same streams open, the attack still running, publishing, churn and kicks stopped", o.window_s),
            "open_files_compared": "the node's open files minus the attack connections open at the same instant (as the attacker counts them)",
            "start": sample_json(o.baseline),
            "end": sample_json(o.end),
            "rss_change_pct": rss_change,
            "open_files_change_pct": fds_change,
            "max_rss_kb": max_rss,
            "max_open_files": max_fds,
            "series_columns": ["t_s", "rss_kb", "open_files", "open_streams", "open_slow", "attack_open"],
            "series": series,
        },
        "cpu_during_load_pct_of_one_core": cpu_json,
        "attack": attack_json,
        "csrf": csrf_json,
        "node": {"log_head": o.node.log_head, "readyz": o.node.readyz, "status_error": o.node.status_error},
        "server_log": log_json,
    });

    // --- the summary ---
    let mut s = String::new();
    let _ = writeln!(
        s,
        "soak: {:.0} s of load ({} build) after a {:.1} s ramp, drained in {:.1} s",
        o.load_s, opts.profile, o.ramp_s, o.drain_s
    );
    let _ = writeln!(
        s,
        "  load: {} streams (mean {open_mean:.0} open) + {} slow readers, {rate:.0} events/s on {} channels; {} connects ({} expired, {} kicked, {} client closes, {} joined)",
        opts.streams,
        opts.slow,
        opts.channels,
        stats.connects.load(Ordering::Relaxed),
        stats.expired.load(Ordering::Relaxed),
        stats.kicked.load(Ordering::Relaxed),
        stats.client_closes.load(Ordering::Relaxed),
        stats.joins.load(Ordering::Relaxed),
    );
    let attack_fig = o.attack.as_ref().map_or(String::from("no attack"), |a| {
        let total: u64 = a.kinds.iter().map(|(_, r)| r.opened).sum();
        let late: u64 = a.kinds.iter().map(|(_, r)| r.late).sum();
        format!(
            "attack {total} connections (peak {} open), {late} late",
            a.peak_open
        )
    });
    let _ = writeln!(
        s,
        "  figures: {} owed events, {} missing, {} duplicate; /healthz p99 {:.2} ms; RSS {rss_change:+.1} %, open files {fds_change:+.1} %; {attack_fig}",
        regular.owed,
        regular.missing,
        regular.duplicates,
        ms(p99),
    );
    if let Some((server, soak, others)) = cpu {
        let _ = writeln!(
            s,
            "  cpu during the load (% of one core): node {server:.0}, soak {soak:.0}, other processes {others:.0}"
        );
    }
    let _ = writeln!(
        s,
        "  resources: start = median of {:.0} s from {:.0} s into the load (all streams open, attack running); end = median of {:.0} s after the drain; open files without the attack's",
        o.window_s,
        o.baseline_at - o.ramp_s,
        o.window_s
    );
    for c in &checks {
        let _ = writeln!(
            s,
            "  {} {}: {}",
            match (c.ok, counts(c)) {
                (true, _) => "PASS",
                (false, true) => "FAIL",
                (false, false) => "ADVISORY (not counted)",
            },
            c.name,
            c.detail
        );
    }
    let failed_n = checks.iter().filter(|c| !c.ok && counts(c)).count();
    let _ = write!(
        s,
        "soak: {}",
        if ok {
            format!("ok ({} checks)", checks.len())
        } else {
            format!("FAILED ({failed_n} of {} checks)", checks.len())
        }
    );
    (doc, s, ok)
}

fn add(total: &mut Verdict, v: &Verdict) {
    total.owed += v.owed;
    total.delivered += v.delivered;
    total.missing += v.missing;
    total.duplicates += v.duplicates;
    total.unexpected += v.unexpected;
    total.excused += v.excused;
}
