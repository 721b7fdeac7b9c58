//! One run of the fanout, channels, idle or storm scenario (resume: [`crate::resume`]):
//! tokens and requests prepared, the connect phase, settling, the measured phase, and the
//! report with the server's, the engine's, the generator's and the machine's figures.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::cli::{name, RunArgs, Scenario};
use crate::delivery::publish_phase;
use crate::plan::{mint_tokens, publisher_token, source_ip, Plan};
use crate::resume::run_resume;
use crate::stats::{self, new_hist, Pct, ProcSample, Report};
use crate::subscriber::{sub_request, subscriber, Shared, SubConfig};
use crate::sync::Sync;

/// Runs one scenario (or this process's slice of it) and returns this process's report.
pub async fn run(args: RunArgs) -> anyhow::Result<Report> {
    let plan = Arc::new(Plan::new(&args)?);
    let leader = args.proc_index == 0;
    let sync = Sync {
        dir: args.sync_dir.clone().unwrap_or_default(),
        procs: args.procs,
        index: args.proc_index,
    };
    let mut report = Report {
        target: name(plan.target),
        scenario: name(plan.scenario),
        url: format!("http://{}{}", plan.url.host, plan.url.base),
        procs: args.procs,
        proc_index: Some(args.proc_index),
        subscribers: plan.subscribers,
        channels: plan.channels,
        label: args.label.clone().unwrap_or_default(),
        publish_url: format!("http://{}{}", plan.publish_url.host, plan.publish_url.base),
        subscribe_only: args.subscribe_only,
        ..Report::default()
    };
    report.generator.processes = 1;
    report.generator.threads = args.threads;

    if plan.scenario == Scenario::Resume {
        return run_resume(&args, plan, report).await;
    }

    // Everything a subscriber sends is prepared before the storm.
    let tokens = match &args.jwt_secret {
        Some(secret) if plan.needs_tokens() => Some(mint_tokens(secret, &plan, args.proc_index)?),
        _ => None,
    };
    let mut requests: Vec<Vec<u8>> = (0..plan.subscribers)
        .map(|j| {
            let token = tokens.as_ref().map(|t| t[j as usize].as_str());
            sub_request(&plan, &plan.channel(j % plan.channels), token, None)
        })
        .collect();
    drop(tokens);
    let mut subs_per_channel = vec![0u64; plan.channels as usize];
    for j in 0..plan.subscribers {
        subs_per_channel[(j % plan.channels) as usize] += 1;
    }
    let pub_token = match &args.jwt_secret {
        Some(secret) if plan.needs_tokens() => {
            Some(Arc::new(publisher_token(secret, plan.target)?))
        }
        _ => None,
    };

    let barrier_timeout = Duration::from_secs_f64(args.connect_timeout * 4.0 + 120.0);
    let server_pids = args.server_pid.clone();
    let measure = leader && !server_pids.is_empty();
    let engine_pids = if leader {
        args.engine_pid.clone()
    } else {
        Vec::new()
    };
    let measure_engine = !engine_pids.is_empty();
    let s_before = measure.then(|| stats::sample(&server_pids));
    let e_before = measure_engine.then(|| stats::sample(&engine_pids));
    let n_before = measure.then(|| stats::sample_each(&server_pids));
    if !sync.barrier("start", barrier_timeout).await? {
        report
            .notes
            .push("not every generator process reached the start barrier".into());
    }
    let (gen_cpu0, _) = stats::self_usage();
    let gen_t0 = Instant::now();
    let machine0 = stats::machine_sample();

    // Connect phase.
    let sh = Arc::new(Shared::new());
    let cfg = Arc::new(SubConfig {
        addr: plan.url.addr,
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        read_buf: args.read_buf.max(512),
    });
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let n = plan.subscribers;
    let mut handles = Vec::with_capacity(n as usize);
    for (j, req) in requests.drain(..).enumerate() {
        let src = source_ip(args.source_base, args.source_count, j as u64);
        handles.push(tokio::spawn(subscriber(
            sh.clone(),
            cfg.clone(),
            j,
            req,
            src,
            sem.clone(),
        )));
    }
    let phase_limit = Duration::from_secs_f64(args.connect_timeout * 2.0 + n as f64 / 200.0);
    loop {
        let done = sh.connected.load(Relaxed) + sh.failed.load(Relaxed);
        if done >= n {
            break;
        }
        if sh.start.elapsed() > phase_limit {
            report.notes.push(format!(
                "{} connections still pending after {:.0} s",
                n - done,
                phase_limit.as_secs_f64()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let connected = sh.connected.load(Relaxed);
    report.connected = connected;
    report.connect.duration_s = sh.last_established_us.load(Relaxed) as f64 / 1e6;
    if report.connect.duration_s > 0.0 {
        report.connect.rate_per_s = connected as f64 / report.connect.duration_s;
    }
    if !sync.barrier("connected", barrier_timeout).await? {
        report
            .notes
            .push("not every generator process reached the connected barrier".into());
    }
    // Settle: at least `settle` seconds, then (process 0, which watches the server) until
    // the server has finished its work on the new connections: some servers go on
    // registering subscriptions after they answered.
    tokio::time::sleep(Duration::from_secs_f64(plan.settle)).await;
    if measure {
        let quiet = wait_quiet(&server_pids, args.quiet_pct, Duration::from_secs(30)).await;
        if !quiet {
            report.notes.push(format!(
                "the server did not become quiet (< {}% CPU) within 30 s after connecting",
                args.quiet_pct
            ));
        }
    }
    if !sync.barrier("settled", barrier_timeout).await? {
        report
            .notes
            .push("not every generator process reached the settled barrier".into());
    }
    let s_connected = measure.then(|| stats::sample(&server_pids));
    let e_connected = measure_engine.then(|| stats::sample(&engine_pids));
    let n_connected = measure.then(|| stats::sample_each(&server_pids));

    // Measured phase.
    let phase_t0 = Instant::now();
    match plan.scenario {
        Scenario::Fanout | Scenario::Channels => {
            publish_phase(
                &plan,
                &sh,
                pub_token,
                subs_per_channel,
                &args,
                &sync,
                &mut report,
            )
            .await?;
        }
        Scenario::Idle => {
            tokio::time::sleep(Duration::from_secs_f64(plan.duration)).await;
        }
        Scenario::Storm | Scenario::Resume => {}
    }
    let phase_s = phase_t0.elapsed().as_secs_f64();
    let s_after = measure.then(|| stats::sample(&server_pids));
    let e_after = measure_engine.then(|| stats::sample(&engine_pids));
    let n_after = measure.then(|| stats::sample_each(&server_pids));
    if !sync.barrier("done", barrier_timeout).await? {
        report
            .notes
            .push("not every generator process reached the done barrier".into());
    }
    sh.stopping.store(true, Relaxed);
    sh.cancel.cancel();
    // Let the subscribers see the cancellation (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for h in handles {
            let _ = h.await;
        }
    })
    .await;

    let (gen_cpu1, gen_rss) = stats::self_usage();
    let wall = gen_t0.elapsed().as_secs_f64();
    if leader {
        report.machine = Some(stats::machine_stats(
            machine0,
            stats::machine_sample(),
            wall,
        ));
    }
    report.generator.cpu_s = gen_cpu1 - gen_cpu0;
    report.generator.wall_s = wall;
    report.generator.cpu_pct = report.generator.cpu_s / wall * 100.0;
    report.generator.max_rss_kb = gen_rss;

    if let (Some(b), Some(c), Some(a)) = (s_before, s_connected, s_after) {
        let mut sv = server_stats(&server_pids, b, c, a, connected, phase_s);
        if let (Some(nb), Some(nc), Some(na)) = (n_before, n_connected, n_after) {
            if server_pids.len() > 1 {
                sv.nodes = stats::node_stats(&server_pids, &nb, &nc, &na, phase_s);
            }
        }
        report.server = Some(sv);
    }
    if let (Some(b), Some(c), Some(a)) = (e_before, e_connected, e_after) {
        let mut ev = server_stats(&engine_pids, b, c, a, 0, phase_s);
        ev.rss_per_conn_bytes = None;
        ev.pss_per_conn_bytes = None;
        report.engine = Some(ev);
    }
    let mut lat = new_hist();
    for h in &sh.latency {
        lat.add(&*h.lock().expect("latency lock"))?;
    }
    let ttfb = sh.ttfb.lock().expect("ttfb lock").clone();
    report.delivery.deliveries = sh.deliveries.load(Relaxed);
    report.delivery.other_events = sh.other_events.load(Relaxed);
    report.delivery.latency_us = Pct::of(&lat);
    report.connect.ttfb_us = Pct::of(&ttfb);
    report.histograms.latency = stats::hist_to_vec(&lat);
    report.histograms.ttfb = stats::hist_to_vec(&ttfb);
    report.errors = sh.errors.lock().expect("errors lock").clone();
    report.error_total = report.errors.values().sum();
    finish_delivery(&mut report);
    Ok(report)
}

/// Waits until the processes use less than `pct`% of one core over 250 ms.
async fn wait_quiet(pids: &[u32], pct: f64, limit: Duration) -> bool {
    let t0 = Instant::now();
    let mut prev = stats::sample(pids).cpu_s;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = stats::sample(pids).cpu_s;
        if (now - prev) / 0.25 * 100.0 < pct {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        prev = now;
    }
}

fn finish_delivery(report: &mut Report) {
    let d = &mut report.delivery;
    d.missing = d.expected.saturating_sub(d.deliveries);
    if d.deliveries > d.expected && d.expected > 0 {
        report.notes.push(format!(
            "{} more deliveries than expected (duplicates?)",
            d.deliveries - d.expected
        ));
    }
    if d.duration_s > 0.0 {
        d.per_s = d.deliveries as f64 / d.duration_s;
    }
}

fn server_stats(
    pids: &[u32],
    before: ProcSample,
    connected: ProcSample,
    after: ProcSample,
    connections: u64,
    phase_s: f64,
) -> stats::ServerStats {
    let c = connections.max(1) as f64;
    stats::ServerStats {
        pids: stats::with_descendants(pids),
        before,
        connected,
        after,
        rss_per_conn_bytes: (connections > 0)
            .then(|| (connected.rss_kb as f64 - before.rss_kb as f64) * 1024.0 / c),
        pss_per_conn_bytes: (connections > 0)
            .then(|| (connected.pss_kb as f64 - before.pss_kb as f64) * 1024.0 / c),
        cpu_connect_s: connected.cpu_s - before.cpu_s,
        cpu_phase_s: after.cpu_s - connected.cpu_s,
        cpu_phase_pct: if phase_s > 0.0 {
            (after.cpu_s - connected.cpu_s) / phase_s * 100.0
        } else {
            0.0
        },
        nodes: Vec::new(),
    }
}
