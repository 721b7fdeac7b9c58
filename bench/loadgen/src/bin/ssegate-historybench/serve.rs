//! The end-to-end figure: a real `ssegate serve` on the filled file log, asked
//! `GET /v1/channels/{c}/history?limit=N` over HTTP/1.1 keep-alive, one request at a time.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::Rng;
use ssegate_loadgen::token::{Grants, Minter};

use crate::engines::free_port;
use crate::{channel, Cli, Latencies};

/// A running `ssegate serve`; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    /// From spawn to the first `/readyz` 200.
    pub ready_in: Duration,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `bin serve` on the file log in `data_dir` (the defaults of `[log]`, limits
    /// raised as the other benchmarks do) and waits for `/readyz`.
    pub async fn start(bin: &Path, data_dir: &Path, secret: &str) -> anyhow::Result<Server> {
        let port = free_port()?;
        let out = std::fs::File::create(data_dir.with_extension("serve.log"))?;
        let t0 = Instant::now();
        let child = Command::new(bin)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .env("SSEGATE_AUTH__JWT_SECRET", secret)
            .env("SSEGATE_LOG__KIND", "file")
            .env("RUST_LOG", "warn")
            .env("SSEGATE_LIMITS__CONNECT_RATE_PER_IP", "1000000")
            .env("SSEGATE_LIMITS__CONNECT_BURST_PER_IP", "1000000")
            .env("SSEGATE_LIMITS__PUBLISH_RATE", "0")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            ready_in: Duration::ZERO,
        };
        let client = reqwest::Client::new();
        let deadline = t0 + Duration::from_secs(300);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!(
                    "ssegate serve exited ({status}): {}",
                    std::fs::read_to_string(data_dir.with_extension("serve.log"))
                        .unwrap_or_default()
                );
            }
            if let Ok(res) = client.get(format!("{}/readyz", server.url)).send().await {
                if res.status() == 200 {
                    server.ready_in = t0.elapsed();
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                bail!("ssegate serve not ready after 300 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cli.warmup` then `cli.queries` requests for random channels, one at a time; each
/// answer must hold `expect` events.
pub async fn measure(
    server: &Server,
    secret: &str,
    cli: &Cli,
    expect: usize,
    rng: &mut StdRng,
) -> anyhow::Result<Latencies> {
    let token = Minter::new(secret).mint(
        "historybench",
        Grants {
            subscribe: vec!["hist:*".into()],
            ..Grants::default()
        },
        3600,
    )?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let mut lat = Latencies::default();
    for i in 0..cli.warmup + cli.queries {
        let c = channel(rng.gen_range(0..cli.channels));
        let url = format!("{}/v1/channels/{c}/history?limit={}", server.url, cli.limit);
        let t = Instant::now();
        let res = client.get(&url).bearer_auth(&token).send().await?;
        let status = res.status();
        let body = res.bytes().await?;
        let took = t.elapsed();
        if status != 200 {
            bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&body));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let n = v["events"].as_array().map_or(0, Vec::len);
        if i >= cli.warmup {
            lat.record(took, n == expect, body.len());
        }
    }
    Ok(lat)
}
