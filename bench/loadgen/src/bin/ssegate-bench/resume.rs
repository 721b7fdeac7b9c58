//! The resume scenario: one client comes back many events behind, with `Last-Event-ID`.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ssegate_loadgen::now_us;
use ssegate_loadgen::wire::HttpClient;
use tokio::sync::Semaphore;

use crate::cli::{RunArgs, Target};
use crate::plan::{mint_tokens, publisher_token, source_ip, Plan};
use crate::publish::publish_request;
use crate::stats::{self, new_hist, Pct, Report};
use crate::subscriber::{sub_request, subscriber, Shared, SubConfig};

/// Resume: publish a marker, then `events` events, then connect with `Last-Event-ID` = the
/// marker's id and time until every missed event arrived.
pub async fn run_resume(
    args: &RunArgs,
    plan: Arc<Plan>,
    mut report: Report,
) -> anyhow::Result<Report> {
    let total = plan.events;
    let mut resume = stats::ResumeStats {
        supported: true,
        events: total,
        ..Default::default()
    };
    if plan.target == Target::Pushpin {
        resume.supported = false;
        resume.note = "pushpin keeps no message history: resuming with Last-Event-ID would need the backend to replay (GRIP prev-id/recovery), which is not part of pushpin itself".into();
        report.resume = Some(resume);
        return Ok(report);
    }
    let secret = args.jwt_secret.as_deref();
    let pub_token = match secret {
        Some(s) if plan.needs_tokens() => Some(publisher_token(s, plan.target)?),
        _ => None,
    };
    let channel = plan.channel(0);
    let mut client = HttpClient::new(
        plan.publish_url.addr,
        Ipv4Addr::LOCALHOST,
        Duration::from_secs(30),
    );
    // The marker: the client last saw this event.
    let req = publish_request(
        &plan,
        pub_token.as_deref(),
        &[(channel.clone(), 0)],
        now_us(),
    );
    let res = client
        .request(&req)
        .await
        .context("publishing the marker")?;
    if !(200..300).contains(&res.status) {
        bail!(
            "publishing the marker failed with {}: {}",
            res.status,
            String::from_utf8_lossy(&res.body)
        );
    }
    let marker = if plan.target == Target::SsegateMercure {
        // The hub answers with the update's id as plain text.
        let id = String::from_utf8_lossy(&res.body).trim().to_owned();
        if id.is_empty() {
            bail!("the hub's publish answer holds no update id");
        }
        id
    } else {
        let body: serde_json::Value = serde_json::from_slice(&res.body).with_context(|| {
            format!(
                "the publish answer is not JSON: {}",
                String::from_utf8_lossy(&res.body)
            )
        })?;
        match plan.target {
            Target::Ssegate => body["ids"][0].as_str().map(str::to_owned),
            _ => body["last_message_id"].as_str().map(str::to_owned),
        }
        .with_context(|| format!("no message id in the publish answer {body}"))?
    };

    // The backlog, published before the client comes back.
    let batch = if plan.target == Target::Ssegate {
        plan.batch.max(500) as u64
    } else {
        1
    };
    let workers = if plan.target == Target::Ssegate {
        1
    } else {
        plan.publishers.max(1)
    };
    let next = Arc::new(AtomicU64::new(1));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (plan, next, failures, channel, token) = (
            plan.clone(),
            next.clone(),
            failures.clone(),
            channel.clone(),
            pub_token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = HttpClient::new(
                plan.publish_url.addr,
                Ipv4Addr::LOCALHOST,
                Duration::from_secs(30),
            );
            loop {
                let k = next.fetch_add(batch, Relaxed);
                if k > total {
                    break;
                }
                let n = batch.min(total + 1 - k);
                let events: Vec<(String, u64)> = (k..k + n).map(|s| (channel.clone(), s)).collect();
                let req = publish_request(&plan, token.as_deref(), &events, now_us());
                match client.request(&req).await {
                    Ok(r) if (200..300).contains(&r.status) => {}
                    _ => {
                        failures.fetch_add(n, Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let failed = failures.load(Relaxed);
    if failed > 0 {
        bail!("{failed} backlog events could not be published");
    }

    // The client comes back.
    let token = match secret {
        Some(s) if plan.needs_tokens() => Some(mint_tokens(s, &plan, 0)?.remove(0)),
        _ => None,
    };
    let req = sub_request(&plan, &channel, token.as_deref(), Some(&marker));
    let sh = Arc::new(Shared::new());
    let cfg = Arc::new(SubConfig {
        addr: plan.url.addr,
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        read_buf: args.read_buf.max(65536),
    });
    let (gen_cpu0, _) = stats::self_usage();
    let start_wall = now_us();
    let t0 = Instant::now();
    let handle = tokio::spawn(subscriber(
        sh.clone(),
        cfg,
        0,
        req,
        source_ip(args.source_base, args.source_count, 0),
        Arc::new(Semaphore::new(1)),
    ));
    let limit = Duration::from_secs(60);
    while sh.deliveries.load(Relaxed) < total
        && t0.elapsed() < limit
        && sh.failed.load(Relaxed) == 0
        && !handle.is_finished()
    {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let received = sh.deliveries.load(Relaxed);
    resume.received = received;
    if received >= total {
        let last = sh.last_delivery_us.load(Relaxed);
        resume.ms = Some(last.saturating_sub(start_wall) as f64 / 1000.0);
    }
    resume.note = format!("Last-Event-ID: {marker}");
    sh.stopping.store(true, Relaxed);
    sh.cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
    let (gen_cpu1, gen_rss) = stats::self_usage();
    report.connected = sh.connected.load(Relaxed);
    report.generator.cpu_s = gen_cpu1 - gen_cpu0;
    report.generator.wall_s = t0.elapsed().as_secs_f64();
    report.generator.cpu_pct = report.generator.cpu_s / report.generator.wall_s * 100.0;
    report.generator.max_rss_kb = gen_rss;
    let mut lat = new_hist();
    lat.add(&*sh.latency[0].lock().expect("latency lock"))?;
    report.delivery.deliveries = received;
    report.delivery.expected = total;
    report.delivery.missing = total.saturating_sub(received);
    report.delivery.latency_us = Pct::of(&lat);
    report.histograms.latency = stats::hist_to_vec(&lat);
    report.errors = sh.errors.lock().expect("errors lock").clone();
    report.error_total = report.errors.values().sum();
    report.resume = Some(resume);
    Ok(report)
}
