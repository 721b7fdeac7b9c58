//! Private redis-server and nats-server processes for the benchmark (as tests/engines does):
//! each on a free loopback port, in a directory of its own, killed when dropped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct Engine {
    child: Child,
    pub port: u16,
    pub url: String,
}

impl Engine {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// redis-server without persistence (the index and the stream in memory only).
pub fn redis(program: &Path, dir: &Path) -> anyhow::Result<Engine> {
    let port = free_port()?;
    let args = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        &dir.to_string_lossy(),
        "--logfile",
        "",
    ]
    .map(String::from);
    start(
        program,
        &args,
        dir,
        port,
        format!("redis://127.0.0.1:{port}"),
        |p| probe(p, b"PING\r\n", b"+PONG"),
    )
}

/// nats-server with JetStream, storing in `dir/jetstream`.
pub fn nats(program: &Path, dir: &Path) -> anyhow::Result<Engine> {
    let port = free_port()?;
    let store = dir.join("jetstream");
    let args = [
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-js",
        "-sd",
        &store.to_string_lossy(),
    ]
    .map(String::from);
    start(
        program,
        &args,
        dir,
        port,
        format!("nats://127.0.0.1:{port}"),
        |p| probe(p, b"", b"INFO "),
    )
}

fn start(
    program: &Path,
    args: &[String],
    dir: &Path,
    port: u16,
    url: String,
    ready: fn(u16) -> bool,
) -> anyhow::Result<Engine> {
    std::fs::create_dir_all(dir)?;
    let out = std::fs::File::create(dir.join("output.log"))?;
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    let mut engine = Engine { child, port, url };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready(port) {
        if let Ok(Some(status)) = engine.child.try_wait() {
            bail!("{} exited ({status}): {}", program.display(), output(dir));
        }
        if Instant::now() > deadline {
            bail!("{} did not answer: {}", program.display(), output(dir));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(engine)
}

fn output(dir: &Path) -> String {
    std::fs::read_to_string(PathBuf::from(dir).join("output.log")).unwrap_or_default()
}

/// Sends `send` and expects the answer to start with `expect`.
fn probe(port: u16, send: &[u8], expect: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if !send.is_empty() && s.write_all(send).is_err() {
        return false;
    }
    let mut buf = vec![0u8; expect.len()];
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf[..got] == *expect
}

/// `used_memory` of a redis-server, bytes (`INFO memory`).
pub fn redis_used_memory(port: u16) -> Option<u64> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"INFO memory\r\n").ok()?;
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    while !text.contains("used_memory:") || !text.contains("\r\nused_memory_human") {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}
