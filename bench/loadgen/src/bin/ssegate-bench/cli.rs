//! The command line: subcommands, targets, scenarios and the options of a run.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "ssegate-bench",
    about = "Load generator for ssegate, nchan and pushpin"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run one scenario (or one process's slice of it); JSON on stdout, summary on stderr.
    Run(Box<RunArgs>),
    /// Merge the JSON reports of processes that ran slices of one scenario together.
    Merge { files: Vec<PathBuf> },
    /// Print the comparison table (markdown) of merged reports.
    Table { files: Vec<PathBuf> },
    /// Print the cluster table (markdown) of merged reports: one column per report (e.g. an
    /// engine with 1 node and with 3 nodes), latency split into same-node and cross-node.
    ClusterTable { files: Vec<PathBuf> },
    /// Publish only (ssegate): batches as fast as acknowledged, for --duration or exactly
    /// --events events; JSON on stdout, a summary on stderr.
    Append(crate::writepath::AppendArgs),
    /// Time appends of --bytes bytes each followed by fdatasync in --dir: p50/p99 µs.
    FsyncFloor(crate::writepath::FloorArgs),
    /// Poll `GET /readyz` until 200; print the milliseconds since --since-us.
    WaitReady(crate::writepath::ReadyArgs),
    /// Serve GRIP stream holds for pushpin: `GET /stream/{channel}`.
    GripBackend {
        #[arg(long, default_value = "127.0.0.1:7998")]
        listen: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// ssegate's own protocol: `GET /v1/stream?channel=`, `POST /v1/publish` (JSON).
    Ssegate,
    /// ssegate's Mercure hub: `GET /.well-known/mercure?match=<topic>` (or `topic=`, see
    /// --mercure-matcher), `POST /.well-known/mercure` (form), draft-07 tokens.
    SsegateMercure,
    Nchan,
    Pushpin,
}

/// The default base of the Mercure topics: topic N is `https://bench.example/<channel N>`.
pub const MERCURE_TOPIC_BASE: &str = "https://bench.example/";

/// The query parameter a Mercure subscriber names its one topic with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MercureMatcher {
    /// `match=<topic>`: the newer protocol's exact match.
    Match,
    /// `topic=<topic>`: the draft-07 selector (a topic without a template is an exact match).
    Topic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Many subscribers on one channel, publishing as fast as acknowledged.
    Fanout,
    /// Many connections over many channels at a fixed total rate: latency.
    Channels,
    /// Idle connections: server memory per connection.
    Idle,
    /// Open connections as fast as possible: connections per second.
    Storm,
    /// One client resuming many events behind with Last-Event-ID.
    Resume,
}

pub fn name<T: ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "ssegate")]
    pub target: Target,
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Base URL of the server (subscriptions; publishing too except for pushpin).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Where to publish (default: the target's own; pushpin: http://127.0.0.1:5561/publish/).
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Subscribers of this process (default: the scenario's).
    #[arg(long)]
    pub subscribers: Option<u64>,
    /// Channels of this process (default: the scenario's); subscriber j is on channel
    /// offset + j mod channels.
    #[arg(long)]
    pub channels: Option<u64>,
    #[arg(long, default_value_t = 0)]
    pub channel_offset: u64,
    /// Channel names are PREFIX-N (default bench-SCENARIO).
    #[arg(long)]
    pub channel_prefix: Option<String>,
    /// ssegate-mercure: topic N is this IRI followed by channel N's name.
    #[arg(long, default_value = MERCURE_TOPIC_BASE)]
    pub mercure_topic_base: String,
    /// ssegate-mercure: how a subscriber names its topic.
    #[arg(long, value_enum, default_value = "match")]
    pub mercure_matcher: MercureMatcher,
    /// Events per second this process publishes; 0 = as fast as acknowledged.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of publishing (idle: seconds held after measuring).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Concurrent publishers (each waits for its acknowledgement).
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Events per publish request (ssegate: JSON array; pushpin: items; nchan and
    /// ssegate-mercure: always 1).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Resume: events the client is behind.
    #[arg(long)]
    pub events: Option<u64>,
    /// HS256 secret of ssegate (auth.jwt_secret; ssegate-mercure: mercure.jwt_secret): a
    /// token is minted per connection.
    #[arg(long, env = "SSEGATE_BENCH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// First source address; subscribers are spread over --source-count consecutive ones.
    #[arg(long, default_value = "127.0.0.1")]
    pub source_base: Ipv4Addr,
    #[arg(long, default_value_t = 16)]
    pub source_count: u32,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Longest time for one connection to be established, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// Server processes to measure (RSS, CPU); their descendants are included.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Generator processes running this scenario together, and which one this is (0 measures
    /// the server).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    #[arg(long, default_value_t = 0)]
    pub proc_index: usize,
    /// Directory where the processes meet at barriers (required with --procs > 1).
    #[arg(long)]
    pub sync_dir: Option<PathBuf>,
    /// Runtime worker threads (1: single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds to wait after all connections are established before measuring or
    /// publishing (default: idle 2, others 1).
    #[arg(long)]
    pub settle: Option<f64>,
    /// After connecting, wait until the server uses less than this much CPU (% of one core,
    /// over 250 ms) before measuring (at most 30 s).
    #[arg(long, default_value_t = 20.0)]
    pub quiet_pct: f64,
    /// After publishing, wait at most this long without a new delivery for the missing ones.
    #[arg(long, default_value_t = 3.0)]
    pub drain_timeout: f64,
    /// Read buffer per subscriber, bytes.
    #[arg(long, default_value_t = 8192)]
    pub read_buf: usize,
    /// Smoke test: exit 1 unless every subscriber connected, something was delivered and
    /// nothing failed.
    #[arg(long)]
    pub check: bool,
    /// Subscribe only (fanout, channels): another process of the run (same --sync-dir)
    /// publishes. Every process writes what it published into the sync directory, so each
    /// one counts the deliveries its own subscribers should get. --publish-url then names
    /// the node the events are published to: subscribers with --url equal to it are
    /// "same-node", the others "cross-node" in the merged report.
    #[arg(long)]
    pub subscribe_only: bool,
    /// Free-form label kept in the report (e.g. the log engine of a cluster run).
    #[arg(long)]
    pub label: Option<String>,
    /// Processes of a shared log engine (redis-server, nats-server) to measure like the
    /// server but reported apart (process 0 only).
    #[arg(long, value_delimiter = ',')]
    pub engine_pid: Vec<u32>,
}
