//! The write path's own measurements (bench/writepath.sh): `append` (publish only, batches
//! as fast as acknowledged, for a time or an exact number of events), `fsync-floor` (what one
//! small append + fdatasync costs on the data directory's file system) and `wait-ready`
//! (time from a server's start to its first `/readyz` 200).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use ssegate_loadgen::now_us;
use ssegate_loadgen::wire::{self, HttpClient, Url};

use crate::cli::Target;
use crate::plan::publisher_token;
use crate::publish::request_to;
use crate::stats::{new_hist, record, Pct};

#[derive(Args, Clone, Debug)]
pub struct AppendArgs {
    /// Base URL of ssegate.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// HS256 secret of ssegate (auth.jwt_secret).
    #[arg(long, env = "SSEGATE_BENCH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Keep-alive publishers, each sending its next request when the previous one is answered.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Events per request (a JSON array when more than 1).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Seconds of publishing (unless --events).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Publish exactly this many events (then stop) instead of publishing for --duration.
    #[arg(long)]
    pub events: Option<u64>,
    /// Event i goes to channel PREFIX-(i mod channels).
    #[arg(long, default_value_t = 1)]
    pub channels: u64,
    #[arg(long, default_value = "bench-append")]
    pub channel_prefix: String,
    /// Give up (with --events) after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
}

/// What `append` prints (JSON on stdout).
#[derive(Debug, Default, Serialize)]
pub struct AppendReport {
    pub publishers: usize,
    pub batch: usize,
    pub requests: u64,
    pub events_acked: u64,
    pub events_failed: u64,
    /// From the first request to the last acknowledgement.
    pub duration_s: f64,
    pub events_per_s: f64,
    /// Request round trip.
    pub ack_us: Pct,
    /// JSON bytes of one event in the request body.
    pub body_bytes_per_event: f64,
    /// Lowest and highest id acknowledged (ids are numbers here).
    pub first_id: Option<u64>,
    pub last_id: Option<u64>,
    pub errors: BTreeMap<String, u64>,
}

struct AppendShared {
    next: AtomicU64,
    requests: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    first_id: AtomicU64,
    last_id: AtomicU64,
    ack: Mutex<hdrhistogram::Histogram<u64>>,
    last_ack: Mutex<Option<Instant>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

/// Publishes batches as fast as they are acknowledged, for a time or a number of events.
pub async fn append(a: AppendArgs) -> anyhow::Result<AppendReport> {
    let url = Url::parse(&a.url)?;
    let token = publisher_token(&a.jwt_secret, Target::Ssegate)?;
    let batch = a.batch.max(1);
    let channels = a.channels.max(1);
    let prefix = Arc::new(a.channel_prefix.clone());
    // The request of a full batch is made once: the generator's time goes to the wire.
    let full = Arc::new(request_to(
        Target::Ssegate,
        &url,
        Some(&token),
        &batch_events(&prefix, channels, 0, batch as u64),
        now_us(),
    ));
    let body_len = wire::find(&full, b"\r\n\r\n").map_or(0, |i| full.len() - i - 4);
    let sh = Arc::new(AppendShared {
        next: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_id: AtomicU64::new(u64::MAX),
        last_id: AtomicU64::new(0),
        ack: Mutex::new(new_hist()),
        last_ack: Mutex::new(None),
        errors: Mutex::new(BTreeMap::new()),
    });
    let start = Instant::now();
    let deadline = start
        + Duration::from_secs_f64(match a.events {
            Some(_) => a.timeout,
            None => a.duration,
        });
    let tasks: Vec<_> = (0..a.publishers.max(1))
        .map(|i| {
            let (sh, full, url, token) = (sh.clone(), full.clone(), url.clone(), token.clone());
            let prefix = prefix.clone();
            let total = a.events;
            tokio::spawn(async move {
                let src = Ipv4Addr::new(127, 0, 210, 1 + (i % 250) as u8);
                let mut client = HttpClient::new(url.addr, src, Duration::from_secs(30));
                loop {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let k = sh.next.fetch_add(batch as u64, Relaxed);
                    let n = match total {
                        Some(total) if k >= total => break,
                        Some(total) => (batch as u64).min(total - k),
                        None => batch as u64,
                    };
                    let tail;
                    let req: &[u8] = if n == batch as u64 {
                        &full
                    } else {
                        tail = request_to(
                            Target::Ssegate,
                            &url,
                            Some(&token),
                            &batch_events(&prefix, channels, k, n),
                            now_us(),
                        );
                        &tail
                    };
                    let sent = Instant::now();
                    let res = client.request(req).await;
                    sh.requests.fetch_add(1, Relaxed);
                    let kind = match res {
                        Ok(r) if (200..300).contains(&r.status) => {
                            let done = Instant::now();
                            record(
                                &mut sh.ack.lock().expect("ack lock"),
                                (done - sent).as_micros() as u64,
                            );
                            sh.acked.fetch_add(n, Relaxed);
                            if let Some((first, last)) = id_range(&r.body) {
                                sh.first_id.fetch_min(first, Relaxed);
                                sh.last_id.fetch_max(last, Relaxed);
                            }
                            let mut l = sh.last_ack.lock().expect("last ack lock");
                            if l.is_none_or(|l| l < done) {
                                *l = Some(done);
                            }
                            continue;
                        }
                        Ok(r) => match wire::error_code(&r.body) {
                            Some(code) => format!("publish_http_{}_{code}", r.status),
                            None => format!("publish_http_{}", r.status),
                        },
                        Err(_) => "publish_io".to_owned(),
                    };
                    sh.failed.fetch_add(n, Relaxed);
                    *sh.errors
                        .lock()
                        .expect("errors lock")
                        .entry(kind)
                        .or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let end = sh.last_ack.lock().expect("last ack").unwrap_or(start);
    let duration_s = (end - start).as_secs_f64();
    let acked = sh.acked.load(Relaxed);
    let first = sh.first_id.load(Relaxed);
    let last = sh.last_id.load(Relaxed);
    let report = AppendReport {
        publishers: a.publishers.max(1),
        batch,
        requests: sh.requests.load(Relaxed),
        events_acked: acked,
        events_failed: sh.failed.load(Relaxed),
        duration_s,
        events_per_s: if duration_s > 0.0 {
            acked as f64 / duration_s
        } else {
            0.0
        },
        ack_us: Pct::of(&sh.ack.lock().expect("ack")),
        body_bytes_per_event: body_len as f64 / batch as f64,
        first_id: (first != u64::MAX).then_some(first),
        last_id: (last != 0).then_some(last),
        errors: sh.errors.lock().expect("errors").clone(),
    };
    Ok(report)
}

/// Events k..k+n: (channel, seq), event i on channel PREFIX-(i mod channels).
fn batch_events(prefix: &str, channels: u64, k: u64, n: u64) -> Vec<(String, u64)> {
    (k..k + n)
        .map(|s| (format!("{prefix}-{}", s % channels), s))
        .collect()
}

/// The first and last id of a publish answer `{"ids":["1042",…]}` (numeric ids only).
fn id_range(body: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let list = &text[text.find('[')? + 1..text.rfind(']')?];
    let id = |s: &str| s.trim().trim_matches('"').parse::<u64>().ok();
    Some((id(list.split(',').next()?)?, id(list.rsplit(',').next()?)?))
}

pub fn append_summary(r: &AppendReport) -> String {
    let mut s = format!(
        "append: {} events acknowledged in {:.2} s ({:.0}/s; {} publishers × {} events per request, ack p50 {} µs p99 {} µs; {:.0} body bytes per event)",
        r.events_acked, r.duration_s, r.events_per_s, r.publishers, r.batch, r.ack_us.p50, r.ack_us.p99, r.body_bytes_per_event
    );
    if let (Some(f), Some(l)) = (r.first_id, r.last_id) {
        s += &format!("; ids {f}..{l}");
    }
    if r.events_failed > 0 {
        s += &format!("\n  {} events failed: {:?}", r.events_failed, r.errors);
    }
    s
}

#[derive(Args, Clone, Debug)]
pub struct FloorArgs {
    /// Directory on the file system to measure (a scratch file is made there and removed).
    #[arg(long)]
    pub dir: PathBuf,
    /// Appends to time.
    #[arg(long, default_value_t = 2000)]
    pub count: usize,
    /// Bytes per append.
    #[arg(long, default_value_t = 300)]
    pub bytes: usize,
}

/// What `fsync-floor` prints (JSON on stdout).
#[derive(Debug, Default, Serialize)]
pub struct FloorReport {
    pub dir: String,
    pub count: usize,
    pub bytes: usize,
    /// One write of `bytes` at the end of the file + fdatasync, microseconds.
    pub us: Pct,
}

/// Times `count` appends of `bytes` bytes, each followed by fdatasync: the floor under a
/// durable publish's latency on this file system.
pub fn fsync_floor(a: &FloorArgs) -> anyhow::Result<FloorReport> {
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let path = a
        .dir
        .join(format!("fsync-floor.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let buf = vec![b'x'; a.bytes.max(1)];
    let mut h = new_hist();
    let res = (|| -> std::io::Result<()> {
        for _ in 0..a.count.max(1) {
            let t = Instant::now();
            f.write_all(&buf)?;
            f.sync_data()?;
            record(&mut h, t.elapsed().as_micros() as u64);
        }
        Ok(())
    })();
    drop(f);
    let _ = std::fs::remove_file(&path);
    res.with_context(|| format!("append + fdatasync to {} failed", path.display()))?;
    Ok(FloorReport {
        dir: a.dir.display().to_string(),
        count: a.count.max(1),
        bytes: buf.len(),
        us: Pct::of(&h),
    })
}

#[derive(Args, Clone, Debug)]
pub struct ReadyArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// When the server was started (unix µs, e.g. bash's $EPOCHREALTIME without the dot);
    /// default: now.
    #[arg(long)]
    pub since_us: Option<u64>,
    /// Milliseconds between polls.
    #[arg(long, default_value_t = 2)]
    pub interval_ms: u64,
    /// Give up after this many seconds (exit 1).
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

/// What `wait-ready` prints (JSON on stdout).
#[derive(Debug, Default, Serialize)]
pub struct ReadyReport {
    /// From --since-us to the first answer of any status (the listener is up).
    pub first_answer_ms: Option<f64>,
    /// From --since-us to the first `/readyz` 200.
    pub ready_ms: Option<f64>,
    pub polls: u64,
}

/// Polls `GET /readyz` every `interval_ms` until it answers 200.
pub async fn wait_ready(a: ReadyArgs) -> anyhow::Result<ReadyReport> {
    let url = Url::parse(&a.url)?;
    let since = a.since_us.unwrap_or_else(now_us);
    let req = format!(
        "GET {}/readyz HTTP/1.1\r\nHost: {}\r\n\r\n",
        url.base, url.host
    );
    let mut client = HttpClient::new(url.addr, Ipv4Addr::LOCALHOST, Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs_f64(a.timeout);
    let mut r = ReadyReport::default();
    let ms = || now_us().saturating_sub(since) as f64 / 1000.0;
    while Instant::now() < deadline {
        r.polls += 1;
        if let Ok(res) = client.request(req.as_bytes()).await {
            let t = ms();
            r.first_answer_ms.get_or_insert(t);
            if res.status == 200 {
                r.ready_ms = Some(t);
                return Ok(r);
            }
        }
        tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_ranges() {
        assert_eq!(id_range(br#"{"ids":["7"]}"#), Some((7, 7)));
        assert_eq!(id_range(br#"{"ids":["7","8","9"]}"#), Some((7, 9)));
        assert_eq!(id_range(br#"{"ids":["a"]}"#), None);
        assert_eq!(id_range(b"oops"), None);
    }

    #[test]
    fn the_fsync_floor_is_measured() {
        let dir = std::env::temp_dir().join(format!("ssegate-floor-{}", std::process::id()));
        let r = fsync_floor(&FloorArgs {
            dir: dir.clone(),
            count: 3,
            bytes: 10,
        })
        .unwrap();
        assert_eq!(r.us.count, 3);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }
}
