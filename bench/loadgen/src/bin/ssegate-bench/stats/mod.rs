//! Measurements and what is made of them: HDR histograms ([`hist`]), `/proc` sampling of the
//! server, the log engine, this process and the machine ([`procfs`]), the JSON report
//! ([`report`]), merging the reports of several generator processes ([`merge`]), the human
//! summary ([`summary`]), the comparison table ([`table`]) and the cluster table
//! ([`cluster_table`]).

mod cluster_table;
mod hist;
mod merge;
mod procfs;
mod report;
mod summary;
mod table;

pub use cluster_table::cluster_table;
pub use hist::{hist_to_vec, new_hist, record, Pct};
pub use merge::merge;
pub use procfs::{
    machine_sample, machine_stats, node_stats, sample, sample_each, self_usage, with_descendants,
    ProcSample,
};
pub use report::{read_report, PublishStats, Report, ResumeStats, ServerStats};
pub use summary::summary;
pub use table::table;
