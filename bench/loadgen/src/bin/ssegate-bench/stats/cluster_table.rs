//! The cluster table (bench/cluster.sh): one column per merged report, latency split into
//! same-node and cross-node subscribers.

use super::hist::Pct;
use super::report::{Group, Report};
use super::table::{ms, thousands};

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
