//! `ssegate-bench`: a load generator for SSE gateways — ssegate, and for comparison the nginx
//! module nchan and pushpin — with the same scenarios and the same measurements for all three.
//!
//! - `ssegate-bench run --target ssegate|nchan|pushpin --scenario fanout|channels|idle|storm|resume ...`
//!   runs one scenario (or one slice of it: `--subscribers`, `--channels`, `--channel-offset`,
//!   `--procs`/`--proc-index`/`--sync-dir` to run in step with other processes) and prints
//!   one JSON object on stdout, a human summary on stderr.
//! - `ssegate-bench merge A.json B.json ...` merges the reports of processes that ran slices
//!   of the same scenario at the same time.
//! - `ssegate-bench table *.json` prints the comparison table (markdown).
//! - `ssegate-bench cluster-table *.json` prints the cluster table (bench/cluster.sh): one
//!   column per merged report, latency split into same-node and cross-node subscribers
//!   (`--publish-url` on another node than `--url`; `--subscribe-only` processes leave the
//!   publishing to another process of the run).
//! - `ssegate-bench grip-backend --listen 127.0.0.1:PORT` is the GRIP backend behind pushpin.
//! - `ssegate-bench append`, `fsync-floor` and `wait-ready` are the write path's own
//!   measurements (bench/writepath.sh): publish-only batches for a time or an exact number of
//!   events, the cost of one small append + fdatasync, the time from start to `/readyz` 200.
//!
//! Subscribers are cheap on purpose: a raw TCP connection each (bound to one of several
//! 127.x source addresses so that ephemeral ports never run out), a hand-written request and
//! an incremental scanner that takes `"t":<unix micros>` out of `data:` lines. Latency is
//! delivery time minus that timestamp (same clock: everything runs on this machine).
//! Traffic goes to loopback addresses only.
//!
//! # Layout
//!
//! - `cli`: subcommands, targets, scenarios, the options of a run; `plan`: the run's sizes
//!   after defaults and checks, channel names, source addresses, tokens;
//! - `subscriber`: the subscriber connections and what they record; `publish`: publish
//!   requests in each target's format, paced publishers;
//! - `run`: the fanout, channels, idle and storm scenarios (connect, settle, measure,
//!   report); `delivery`: the measured phase of fanout and channels; `resume`: the resume
//!   scenario; `sync`: barriers between the processes of one run;
//! - `stats`: histograms, `/proc` sampling, the report, merging, the summary and the tables;
//! - `grip`: the GRIP backend behind pushpin;
//! - `writepath`: `append`, `fsync-floor`, `wait-ready`.

mod cli;
mod delivery;
mod grip;
mod plan;
mod publish;
mod resume;
mod run;
mod stats;
mod subscriber;
mod sync;
mod writepath;

use clap::Parser;

use cli::{Cli, Command};

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let check = args.check;
            let threads = args.threads;
            let report = runtime(threads)?.block_on(run::run(*args))?;
            println!("{}", serde_json::to_string(&report)?);
            eprintln!("{}", stats::summary(&report));
            if check {
                let mut problems = Vec::new();
                if report.connected < report.subscribers {
                    problems.push(format!(
                        "only {} of {} subscribers connected",
                        report.connected, report.subscribers
                    ));
                }
                if report.delivery.deliveries == 0 {
                    problems.push("nothing was delivered".into());
                }
                if report.error_total > 0 {
                    problems.push(format!("errors: {:?}", report.errors));
                }
                if !problems.is_empty() {
                    eprintln!("CHECK FAILED: {}", problems.join("; "));
                    std::process::exit(1);
                }
                eprintln!("check passed");
            }
            Ok(())
        }
        Command::Merge { files } => {
            let parts = files
                .iter()
                .map(|f| stats::read_report(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let merged = stats::merge(parts)?;
            println!("{}", serde_json::to_string(&merged)?);
            eprintln!("{}", stats::summary(&merged));
            Ok(())
        }
        Command::Table { files } => {
            let reports = files
                .iter()
                .map(|f| stats::read_report(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            print!("{}", stats::table(&reports));
            Ok(())
        }
        Command::ClusterTable { files } => {
            let reports = files
                .iter()
                .map(|f| stats::read_report(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            print!("{}", stats::cluster_table(&reports));
            Ok(())
        }
        Command::Append(args) => {
            let report = runtime(1)?.block_on(writepath::append(args))?;
            println!("{}", serde_json::to_string(&report)?);
            eprintln!("{}", writepath::append_summary(&report));
            Ok(())
        }
        Command::FsyncFloor(args) => {
            let r = writepath::fsync_floor(&args)?;
            println!("{}", serde_json::to_string(&r)?);
            eprintln!(
                "fsync floor in {}: {} appends of {} bytes + fdatasync, µs p50 {} p90 {} p99 {} max {}",
                r.dir, r.count, r.bytes, r.us.p50, r.us.p90, r.us.p99, r.us.max
            );
            Ok(())
        }
        Command::WaitReady(args) => {
            let r = runtime(1)?.block_on(writepath::wait_ready(args))?;
            println!("{}", serde_json::to_string(&r)?);
            match r.ready_ms {
                Some(ms) => eprintln!("ready after {ms:.1} ms ({} polls)", r.polls),
                None => {
                    eprintln!("not ready ({} polls)", r.polls);
                    std::process::exit(1);
                }
            }
            Ok(())
        }
        Command::GripBackend { listen } => runtime(1)?.block_on(grip::serve(&listen)),
    }
}
