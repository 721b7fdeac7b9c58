//! The comparison table (bench/compare.sh): one markdown table, every target a column, with
//! ratios to the best and the goals of the issue.

use super::hist::Pct;
use super::report::Report;

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

pub(super) fn thousands(v: f64) -> String {
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

pub(super) fn ms(v_us: f64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(12.0), "12");
        assert_eq!(thousands(-1000.0), "-1,000");
    }
}
