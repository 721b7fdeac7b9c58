//! The JSON report of one generator process (or the merge of several), as written to stdout
//! and read back by `merge`, `table` and `cluster-table`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::hist::Pct;
use super::procfs::{MachineStats, ProcSample};

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

pub fn read_report(path: &Path) -> anyhow::Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a report", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
