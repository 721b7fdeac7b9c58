//! `ssegate-tlsbench`: HTTP/1.1 vs HTTP/2 over TLS, the fanout scenario (bench/http2.sh).
//!
//! N subscribers stream one channel from an ssegate listening with TLS; P publishers publish
//! as fast as they are acknowledged for D seconds. With `--http 1` every subscriber has its own
//! TLS connection (what browsers do with HTTP/1.1) and every publisher one keep-alive
//! connection; with `--http 2` the subscribers' streams are multiplexed over
//! `--streams-per-connection` streams per TLS connection (what a browser does with all the
//! tabs of one origin) and the publishers share one connection. Prints one JSON object on
//! stdout (deliveries/s, publish→delivery latency p50/p99/p99.9, missing deliveries) and a
//! human line on stderr. Traffic goes to loopback only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use ssegate_loadgen::now_us;
use ssegate_loadgen::scan::SseScan;
use ssegate_loadgen::token::{Grants, Minter};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const CHANNEL: &str = "bench:fanout";

#[derive(Parser)]
#[command(
    name = "ssegate-tlsbench",
    about = "HTTP/1.1 vs HTTP/2 over TLS: fanout"
)]
struct Args {
    /// The gateway, e.g. https://127.0.0.1:8443 (loopback only).
    #[arg(long)]
    url: String,
    /// The certificate (PEM) to trust: the server's self-signed one.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// The gateway's JWT secret (tokens are minted here).
    #[arg(long, env = "SSEGATE_BENCH_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// 1 or 2.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    http: u8,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// HTTP/2: streams carried by one TLS connection.
    #[arg(long, default_value_t = 100)]
    streams_per_connection: usize,
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

/// One way of sending requests on a TLS connection, by protocol.
#[derive(Clone)]
enum Sender {
    H1(Arc<tokio::sync::Mutex<http1::SendRequest<Full<Bytes>>>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        Ok(match self {
            Sender::H1(s) => {
                let mut s = s.lock().await;
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                let mut s = s.clone();
                s.ready().await?;
                s.send_request(req).await?
            }
        })
    }
}

struct Target {
    addr: SocketAddr,
    host: String,
    tls: TlsConnector,
}

impl Target {
    async fn connect(&self, http: u8) -> anyhow::Result<Sender> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.host.clone())?;
        let tls = TokioIo::new(self.tls.connect(name, tcp).await?);
        if http == 2 {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(16 << 20)
                .handshake(tls)
                .await?;
            tokio::spawn(conn);
            Ok(Sender::H2(send))
        } else {
            let (send, conn) = http1::handshake(tls).await?;
            tokio::spawn(conn);
            Ok(Sender::H1(Arc::new(tokio::sync::Mutex::new(send))))
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    connected: AtomicU64,
}

async fn subscriber(
    sender: Sender,
    host: String,
    token: String,
    counters: Arc<Counters>,
    latency: Arc<Mutex<Histogram<u64>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let req = Request::get(format!("/v1/stream?channel={CHANNEL}"))
        .header("host", host)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))?;
    let res = sender.send(req).await?;
    if !res.status().is_success() {
        bail!("stream refused: {}", res.status());
    }
    counters.connected.fetch_add(1, Relaxed);
    let mut body = res.into_body();
    let mut scan = SseScan::default();
    let mut local = histogram();
    while !stop.load(Relaxed) {
        let frame = match tokio::time::timeout(Duration::from_millis(200), body.frame()).await {
            Err(_) => continue,
            Ok(None) => break,
            Ok(Some(f)) => f?,
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        scan.feed(data);
        if !scan.ts.is_empty() {
            let now = now_us();
            counters.delivered.fetch_add(scan.ts.len() as u64, Relaxed);
            for t in scan.ts.drain(..) {
                local.saturating_record(now.saturating_sub(t).max(1));
            }
        }
    }
    latency
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .add(&local)?;
    Ok(())
}

async fn publisher(
    sender: Sender,
    host: String,
    token: String,
    until: Instant,
    counters: Arc<Counters>,
    seq: Arc<AtomicU64>,
) {
    while Instant::now() < until {
        let s = seq.fetch_add(1, Relaxed);
        let body = format!(
            r#"{{"channel":"{CHANNEL}","type":"b","data":{{"t":{},"s":{s}}}}}"#,
            now_us()
        );
        let req = Request::post("/v1/publish")
            .header("host", &host)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)));
        let outcome = match req {
            Ok(req) => match sender.send(req).await {
                Ok(res) => {
                    let status = res.status();
                    let body = res.into_body().collect().await.map(|b| b.to_bytes());
                    if status.is_success() {
                        Ok(())
                    } else {
                        let body = body.unwrap_or_default();
                        Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
                    }
                }
                Err(e) => Err(format!("{e:#}")),
            },
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                counters.acked.fetch_add(1, Relaxed);
            }
            Err(e) => {
                if counters.failed.fetch_add(1, Relaxed) == 0 {
                    eprintln!("publish failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rest = args
        .url
        .strip_prefix("https://")
        .context("--url must start with https://")?;
    let addr: SocketAddr = rest
        .trim_end_matches('/')
        .parse()
        .context("--url: https://IP:PORT")?;
    if !addr.ip().is_loopback() {
        bail!("--url must be a loopback address");
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca).context("--ca")? {
        roots.add(cert?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![if args.http == 2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let target = Arc::new(Target {
        addr,
        host: addr.ip().to_string(),
        tls: TlsConnector::from(Arc::new(tls)),
    });
    let minter = Minter::new(&args.secret);
    let host = addr.to_string();

    // Subscribers: one connection each (h1), or streams_per_connection per connection (h2).
    let counters = Arc::new(Counters::default());
    let latency = Arc::new(Mutex::new(histogram()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut subs = tokio::task::JoinSet::new();
    let per_conn = if args.http == 2 {
        args.streams_per_connection.max(1)
    } else {
        1
    };
    let mut sender = None;
    let connect_started = Instant::now();
    for j in 0..args.subscribers {
        if j % per_conn == 0 {
            sender = Some(target.connect(args.http).await.context("connect")?);
        }
        let grants = Grants {
            subscribe: vec![CHANNEL.into()],
            ..Default::default()
        };
        subs.spawn(subscriber(
            sender.clone().context("a connection")?,
            host.clone(),
            minter.mint(&format!("tls-u{j}"), grants, 7200)?,
            counters.clone(),
            latency.clone(),
            stop.clone(),
        ));
    }
    let connections = args.subscribers.div_ceil(per_conn);
    while (counters.connected.load(Relaxed) as usize) < args.subscribers {
        if connect_started.elapsed() > Duration::from_secs(60) {
            bail!(
                "only {} of {} subscribers connected in 60 s",
                counters.connected.load(Relaxed),
                args.subscribers
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Publishers: one keep-alive connection each (h1), or all on one connection (h2).
    let publish_token = minter.mint(
        "tls-publisher",
        Grants {
            publish: vec![CHANNEL.into()],
            ..Default::default()
        },
        7200,
    )?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let seq = Arc::new(AtomicU64::new(0));
    let mut pubs = tokio::task::JoinSet::new();
    let shared = target.connect(args.http).await?;
    for _ in 0..args.publishers {
        let sender = if args.http == 2 {
            shared.clone()
        } else {
            target.connect(1).await?
        };
        pubs.spawn(publisher(
            sender,
            host.clone(),
            publish_token.clone(),
            until,
            counters.clone(),
            seq.clone(),
        ));
    }
    while pubs.join_next().await.is_some() {}
    let publish_secs = started.elapsed().as_secs_f64();
    // Let the last events arrive (at most 10 s).
    let expected = counters.acked.load(Relaxed) * args.subscribers as u64;
    let grace = Instant::now();
    while counters.delivered.load(Relaxed) < expected && grace.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_secs = started.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    while let Some(r) = subs.join_next().await {
        if let Ok(Err(e)) = r {
            eprintln!("subscriber: {e:#}");
        }
    }
    let h = latency
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let delivered = h.len();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let report = serde_json::json!({
        "http": args.http,
        "subscribers": args.subscribers,
        "connections": connections,
        "publishers": args.publishers,
        "connect_secs": connect_secs,
        "publish_secs": publish_secs,
        "acked": counters.acked.load(Relaxed),
        "publish_failed": counters.failed.load(Relaxed),
        "delivered": delivered,
        "missing": expected.saturating_sub(delivered),
        "deliveries_per_sec": delivered as f64 / total_secs.max(publish_secs),
        "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / 1000.0},
    });
    eprintln!(
        "HTTP/{}: {} subscribers on {} TLS connections, {} events acknowledged ({:.0}/s), {} deliveries ({:.0}/s), missing {}, latency p50 {:.2} ms p99 {:.2} ms",
        args.http,
        args.subscribers,
        connections,
        counters.acked.load(Relaxed),
        counters.acked.load(Relaxed) as f64 / publish_secs,
        delivered,
        report["deliveries_per_sec"].as_f64().unwrap_or(0.0),
        report["missing"],
        ms(0.5),
        ms(0.99),
    );
    println!("{report}");
    if counters.acked.load(Relaxed) == 0 || delivered == 0 {
        bail!("nothing was published or delivered");
    }
    Ok(())
}
