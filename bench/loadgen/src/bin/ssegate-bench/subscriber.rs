//! Subscribers: one raw TCP connection each, a hand-written request, and the body scanned
//! incrementally for the `t` of every delivery. Everything they measure goes into [`Shared`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ssegate_loadgen::scan::{Dechunk, SseScan};
use ssegate_loadgen::{now_us, wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::cli::{MercureMatcher, Target};
use crate::plan::Plan;
use crate::stats::{new_hist, record};

/// Lock shards of the latency histogram (subscriber i records into shard i mod SHARDS).
const SHARDS: usize = 16;

/// What every subscriber task reports into.
pub struct Shared {
    /// Start of the connect phase.
    pub start: Instant,
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    /// Microseconds after `start` at which the latest connection was established.
    pub last_established_us: AtomicU64,
    pub ttfb: Mutex<Histogram<u64>>,
    pub latency: Vec<Mutex<Histogram<u64>>>,
    pub deliveries: AtomicU64,
    pub other_events: AtomicU64,
    /// Wall clock (unix µs) of the last delivery.
    pub last_delivery_us: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub cancel: CancellationToken,
    pub stopping: AtomicBool,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_established_us: AtomicU64::new(0),
            ttfb: Mutex::new(new_hist()),
            latency: (0..SHARDS).map(|_| Mutex::new(new_hist())).collect(),
            deliveries: AtomicU64::new(0),
            other_events: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            cancel: CancellationToken::new(),
            stopping: AtomicBool::new(false),
        }
    }

    pub fn error(&self, kind: impl Into<String>) {
        *self
            .errors
            .lock()
            .expect("errors lock")
            .entry(kind.into())
            .or_default() += 1;
    }

    fn deliver(&self, shard: usize, ts: &mut Vec<u64>, now: u64) {
        if ts.is_empty() {
            return;
        }
        let n = ts.len() as u64;
        {
            let mut h = self.latency[shard % SHARDS].lock().expect("latency lock");
            for t in ts.drain(..) {
                record(&mut h, now.saturating_sub(t));
            }
        }
        self.deliveries.fetch_add(n, Relaxed);
        self.last_delivery_us.fetch_max(now, Relaxed);
    }
}

/// Decodes a response body: chunked transfer coding (when used), then SSE.
struct Body {
    dechunk: Option<Dechunk>,
    sse: SseScan,
    ended: bool,
}

impl Body {
    fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        match &mut self.dechunk {
            Some(d) => {
                let sse = &mut self.sse;
                self.ended = d.feed(data, |b| sse.feed(b))?;
            }
            None => self.sse.feed(data),
        }
        Ok(())
    }
}

fn io_kind(prefix: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    let k = match e.kind() {
        ConnectionRefused => "refused",
        ConnectionReset => "reset",
        ConnectionAborted => "aborted",
        TimedOut => "timeout",
        AddrNotAvailable => "addr_not_available",
        AddrInUse => "addr_in_use",
        BrokenPipe => "broken_pipe",
        UnexpectedEof => "eof",
        _ => {
            return match e.raw_os_error() {
                Some(24) => format!("{prefix}_too_many_open_files"),
                Some(n) => format!("{prefix}_os_error_{n}"),
                None => format!("{prefix}_other"),
            }
        }
    };
    format!("{prefix}_{k}")
}

/// Connects, sends the request, reads the response head and the first body bytes.
async fn open_stream(
    addr: SocketAddr,
    src: Ipv4Addr,
    req: &[u8],
    buf: &mut [u8],
) -> Result<(tokio::net::TcpStream, Body), String> {
    let mut stream = wire::connect_from(src, addr)
        .await
        .map_err(|e| io_kind("connect", &e))?;
    stream
        .write_all(req)
        .await
        .map_err(|e| io_kind("write", &e))?;
    let mut head_buf: Vec<u8> = Vec::new();
    loop {
        let n = stream
            .read(buf)
            .await
            .map_err(|e| io_kind("read_head", &e))?;
        if n == 0 {
            return Err("closed_before_response".into());
        }
        head_buf.extend_from_slice(&buf[..n]);
        let head = match wire::parse_head(&head_buf) {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(_) => return Err("bad_response_head".into()),
        };
        if head.status != 200 {
            let body = &head_buf[head.len..];
            return Err(match wire::error_code(body) {
                Some(code) => format!("http_{}_{code}", head.status),
                None => format!("http_{}", head.status),
            });
        }
        let mut body = Body {
            dechunk: head.chunked.then(Dechunk::default),
            sse: SseScan::default(),
            ended: false,
        };
        let mut rest = head_buf.split_off(head.len);
        // Established once the first body bytes arrived.
        while rest.is_empty() {
            let n = stream
                .read(buf)
                .await
                .map_err(|e| io_kind("read_first", &e))?;
            if n == 0 {
                return Err("closed_before_first_byte".into());
            }
            rest.extend_from_slice(&buf[..n]);
        }
        body.feed(&rest).map_err(|_| "bad_chunking".to_string())?;
        return Ok((stream, body));
    }
}

pub struct SubConfig {
    pub addr: SocketAddr,
    pub connect_timeout: Duration,
    pub read_buf: usize,
}

pub async fn subscriber(
    sh: Arc<Shared>,
    cfg: Arc<SubConfig>,
    idx: usize,
    req: Vec<u8>,
    src: Ipv4Addr,
    sem: Arc<Semaphore>,
) {
    let Ok(permit) = sem.acquire_owned().await else {
        return;
    };
    let mut buf = vec![0u8; cfg.read_buf];
    let t0 = Instant::now();
    let opened = tokio::time::timeout(
        cfg.connect_timeout,
        open_stream(cfg.addr, src, &req, &mut buf),
    )
    .await;
    drop(req);
    let (mut stream, mut body) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(kind)) => {
            sh.error(kind);
            sh.failed.fetch_add(1, Relaxed);
            return;
        }
        Err(_) => {
            sh.error("connect_timeout");
            sh.failed.fetch_add(1, Relaxed);
            return;
        }
    };
    let now = now_us();
    record(
        &mut sh.ttfb.lock().expect("ttfb lock"),
        t0.elapsed().as_micros() as u64,
    );
    sh.last_established_us
        .fetch_max(sh.start.elapsed().as_micros() as u64, Relaxed);
    sh.connected.fetch_add(1, Relaxed);
    drop(permit);
    sh.deliver(idx, &mut body.sse.ts, now);

    let cancelled = sh.cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        if body.ended {
            if !sh.stopping.load(Relaxed) {
                sh.error("stream_ended");
            }
            break;
        }
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            r = stream.read(&mut buf) => match r {
                Ok(0) => {
                    if !sh.stopping.load(Relaxed) {
                        sh.error("stream_ended");
                    }
                    break;
                }
                Ok(n) => {
                    let now = now_us();
                    if body.feed(&buf[..n]).is_err() {
                        sh.error("bad_chunking");
                        break;
                    }
                    sh.deliver(idx, &mut body.sse.ts, now);
                }
                Err(e) => {
                    if !sh.stopping.load(Relaxed) {
                        sh.error(io_kind("read", &e));
                    }
                    break;
                }
            }
        }
    }
    if body.sse.other > 0 {
        sh.other_events.fetch_add(body.sse.other, Relaxed);
    }
}

pub fn sub_request(
    plan: &Plan,
    channel: &str,
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> Vec<u8> {
    let base = &plan.url.base;
    let path = match plan.target {
        Target::Ssegate => format!("{base}/v1/stream?channel={channel}"),
        Target::SsegateMercure => {
            let param = match plan.mercure_matcher {
                MercureMatcher::Match => "match",
                MercureMatcher::Topic => "topic",
            };
            let topic = wire::form_encode(&plan.topic(channel));
            format!("{base}/.well-known/mercure?{param}={topic}")
        }
        Target::Nchan => format!("{base}/sub/{channel}"),
        Target::Pushpin => format!("{base}/stream/{channel}"),
    };
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
        plan.url.host
    );
    if let Some(t) = token {
        r += &format!("Authorization: Bearer {t}\r\n");
    }
    if let Some(id) = last_event_id {
        r += &format!("Last-Event-ID: {id}\r\n");
    }
    r += "\r\n";
    r.into_bytes()
}
