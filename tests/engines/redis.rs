//! A private redis-server for a test: never the machine's own on 6379.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use super::{Engine, EngineSpec};

const PROGRAM: &str = "/usr/bin/redis-server";

/// Persistence of the test server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing on disk (`--save "" --appendonly no`).
    None,
    /// An AOF in the engine's directory, fsync'd on every write: data survives
    /// [`Engine::restart`], even after a SIGKILL.
    Aof,
}

/// How to run redis-server on `{port}` (loopback only), with `extra` arguments.
pub fn spec(persistence: Persistence, extra: &[&str]) -> EngineSpec {
    let mut args: Vec<String> = [
        "--port",
        "{port}",
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--daemonize",
        "no",
        "--dir",
        "{dir}",
        "--logfile",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match persistence {
        Persistence::None => args.extend(["--appendonly".into(), "no".into()]),
        Persistence::Aof => {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from))
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    EngineSpec {
        name: "redis-server",
        program: PROGRAM.into(),
        args,
        ready: answers_ping,
    }
}

/// Starts a redis-server on a free port.
pub fn start(persistence: Persistence) -> Engine {
    Engine::start(spec(persistence, &[]))
}

/// `redis://127.0.0.1:<port>`.
pub fn url(engine: &Engine) -> String {
    format!("redis://127.0.0.1:{}", engine.port())
}

/// Ready probe: the server answers `PING` with `+PONG` (not `-LOADING` while it reads its
/// AOF back).
pub fn answers_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    &buf[..got] == b"+PONG\r\n"
}
