//! The measured phase of the fanout and channels scenarios: publish (unless
//! `--subscribe-only`), learn how many deliveries this process's subscribers should get
//! (from every process of the run), and wait for them.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ssegate_loadgen::now_us;

use crate::cli::RunArgs;
use crate::plan::Plan;
use crate::publish::publish;
use crate::stats::Report;
use crate::subscriber::Shared;
use crate::sync::Sync;

/// Publishes (unless --subscribe-only), learns how many deliveries this process's
/// subscribers should get, and waits for them (bounded).
pub async fn publish_phase(
    plan: &Arc<Plan>,
    sh: &Arc<Shared>,
    pub_token: Option<Arc<String>>,
    subs_per_channel: Vec<u64>,
    args: &RunArgs,
    sync: &Sync,
    report: &mut Report,
) -> anyhow::Result<()> {
    let start_wall = now_us();
    let acked_by_channel = if args.subscribe_only {
        vec![0; plan.channels as usize]
    } else {
        publish(plan, sh, pub_token, args, report).await
    };
    let expected = if sync.procs > 1 {
        // Other processes may have published on this process's channels (--subscribe-only):
        // every process tells what it published, and each counts for its own subscribers.
        let wait = Duration::from_secs_f64(plan.duration * 2.0 + 10.0 + 30.0 + 240.0);
        let acked = exchange_acked(sync, plan, &acked_by_channel, wait, report).await?;
        acked
            .iter()
            .filter(|(c, _)| **c >= plan.channel_offset)
            .filter_map(|(c, n)| {
                subs_per_channel
                    .get((c - plan.channel_offset) as usize)
                    .map(|s| s * n)
            })
            .sum()
    } else {
        acked_by_channel
            .iter()
            .zip(&subs_per_channel)
            .map(|(n, s)| n * s)
            .sum()
    };
    // Drain: wait for the missing deliveries while they keep coming.
    let mut last_count = sh.deliveries.load(Relaxed);
    let mut last_progress = Instant::now();
    let drain_limit = Instant::now() + Duration::from_secs(120);
    while sh.deliveries.load(Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let c = sh.deliveries.load(Relaxed);
        if c != last_count {
            last_count = c;
            last_progress = Instant::now();
        } else if last_progress.elapsed().as_secs_f64() > args.drain_timeout {
            break;
        }
        if Instant::now() > drain_limit {
            break;
        }
    }
    let last_delivery = sh.last_delivery_us.load(Relaxed);
    report.delivery.expected = expected;
    report.delivery.duration_s = if last_delivery > start_wall {
        (last_delivery - start_wall) as f64 / 1e6
    } else {
        0.0
    };
    Ok(())
}

/// Writes what this process published (global channel → acknowledged events) into the sync
/// directory, waits until every process has, and returns the sum over all processes.
async fn exchange_acked(
    sync: &Sync,
    plan: &Plan,
    acked_by_channel: &[u64],
    wait: Duration,
    report: &mut Report,
) -> anyhow::Result<BTreeMap<u64, u64>> {
    let mine: Vec<(u64, u64)> = acked_by_channel
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| (plan.channel_offset + c as u64, *n))
        .collect();
    let file = sync.dir.join(format!("acked-{}.json", sync.index));
    let tmp = sync.dir.join(format!(".acked-{}.tmp", sync.index));
    std::fs::write(&tmp, serde_json::to_vec(&mine)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &file)?;
    if !sync.barrier("published", wait).await? {
        report.notes.push(
            "not every generator process reached the published barrier: expected deliveries are undercounted".into(),
        );
    }
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(&sync.dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("acked-") && name.ends_with(".json")) {
            continue;
        }
        let text = std::fs::read(entry.path())?;
        let theirs: Vec<(u64, u64)> = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a list of counts", entry.path().display()))?;
        for (c, n) in theirs {
            *all.entry(c).or_default() += n;
        }
    }
    Ok(all)
}
