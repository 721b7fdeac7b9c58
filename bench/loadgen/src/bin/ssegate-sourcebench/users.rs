//! The users, two ways: SSE clients of the gateway, or pollers of the database. Each returns
//! the histogram of its latencies (milliseconds) when stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::Value;
use ssegate_loadgen::now_ms;
use ssegate_loadgen::token::{Grants, Minter};
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::db::connect;
use crate::{channel_of, new_hist, RunArgs};

pub type Reader = tokio::task::JoinHandle<Histogram<u64>>;

pub async fn start_sse_clients(
    args: &RunArgs,
    received: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<Reader>> {
    let base = args
        .gateway
        .clone()
        .context("--gateway is required in sse mode")?;
    let minter = Minter::new(&args.secret);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let connected = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    let mut readers = Vec::with_capacity(args.users);
    for u in 0..args.users {
        let (ws, wf) = channel_of(u % args.workflows);
        let channel = format!("logs:{ws}:{wf}");
        let token = minter.mint(
            &format!("u{u}"),
            Grants {
                subscribe: vec![channel.clone()],
                publish: vec![],
                admin: false,
            },
            3600,
        )?;
        let url = format!("{base}/v1/stream?channel={channel}");
        let (http, received, stop, connected, sem) = (
            http.clone(),
            received.clone(),
            stop.clone(),
            connected.clone(),
            sem.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let permit = sem.acquire_owned().await;
            let res = http.get(&url).bearer_auth(&token).send().await;
            drop(permit);
            let Ok(mut res) = res else { return hist };
            if !res.status().is_success() {
                eprintln!("stream refused: {}", res.status());
                return hist;
            }
            connected.fetch_add(1, Ordering::Relaxed);
            let mut buf: Vec<u8> = Vec::new();
            loop {
                let chunk = tokio::select! {
                    _ = stop.cancelled() => break,
                    c = res.chunk() => c,
                };
                let Ok(Some(chunk)) = chunk else { break };
                let now = now_ms();
                buf.extend_from_slice(&chunk);
                while let Some(end) = find_event_end(&buf) {
                    let frame: Vec<u8> = buf.drain(..end).collect();
                    if let Some(created) = created_ms_of_frame(&frame) {
                        hist.record(now.saturating_sub(created).max(1)).ok();
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (connected.load(Ordering::Relaxed) as usize) < args.users {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} SSE clients connected",
                connected.load(Ordering::Relaxed),
                args.users
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(readers)
}

/// The end (after the blank line) of the first complete SSE event in `buf`.
fn find_event_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// `created_ms` of the record in an event frame (`data: {envelope}`), if it is one.
fn created_ms_of_frame(frame: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(frame).ok()?;
    let mut has_id = false;
    let mut data = String::new();
    for line in text.lines() {
        if line.starts_with("id:") {
            has_id = true;
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    if !has_id {
        return None;
    }
    let v: Value = serde_json::from_str(&data).ok()?;
    v["data"]["created_ms"].as_u64()
}

pub async fn start_db_pollers(
    args: &RunArgs,
    db: &Client,
    received: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<Reader>> {
    let start_id: i64 = db
        .query_one("SELECT coalesce(max(id), 0) FROM bench_logs", &[])
        .await?
        .get(0);
    let sem = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    let mut clients = Vec::with_capacity(args.users);
    let mut opening = Vec::with_capacity(args.users);
    for _ in 0..args.users {
        let (url, sem) = (args.pg.clone(), sem.clone());
        opening.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            connect(&url).await
        }));
    }
    for o in opening {
        clients.push(o.await??);
    }
    let period = Duration::from_secs_f64(args.poll_secs);
    let mut readers = Vec::with_capacity(args.users);
    for (u, client) in clients.into_iter().enumerate() {
        let (_, wf) = channel_of(u % args.workflows);
        let (received, stop) = (received.clone(), stop.clone());
        // Browsers opened the page at different moments.
        let phase = Duration::from_secs_f64(rand::thread_rng().gen_range(0.0..args.poll_secs));
        readers.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let Ok(query) = client
                .prepare(
                    "SELECT id, created_ms FROM bench_logs WHERE workflow_id = $1 AND id > $2
                     ORDER BY id",
                )
                .await
            else {
                return hist;
            };
            let mut last = start_id;
            let mut next = Instant::now() + phase;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep_until(next) => {}
                }
                next += period;
                let Ok(rows) = client.query(&query, &[&wf, &last]).await else {
                    break;
                };
                let now = now_ms();
                for r in rows {
                    let id: i64 = r.get(0);
                    let created: i64 = r.get(1);
                    last = last.max(id);
                    hist.record(now.saturating_sub(created as u64).max(1)).ok();
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    Ok(readers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames() {
        let buf = b"id: 7\nevent: log.insert\ndata: {\"data\":{\"created_ms\":42}}\n\n: hb\n\n";
        let end = find_event_end(buf).unwrap();
        assert_eq!(created_ms_of_frame(&buf[..end]), Some(42));
        assert_eq!(created_ms_of_frame(b"event: connected\ndata: {}\n\n"), None);
    }
}
