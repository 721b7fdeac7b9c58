//! The human summary of a report (stderr).

use super::report::Report;

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
