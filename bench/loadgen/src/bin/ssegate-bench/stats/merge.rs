//! Merging the reports of processes that ran slices of one scenario at the same time, with
//! deliveries split into same-node and cross-node groups.

use anyhow::bail;

use super::hist::{hist_from_vec, hist_to_vec, new_hist, Pct};
use super::report::{Group, Histograms, Locality, Report};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{cluster_table, record, table};

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
}
