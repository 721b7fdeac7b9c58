//! A private nats-server with JetStream for a test: never the machine's own on 4222.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use super::{Engine, EngineSpec};

const PROGRAM: &str = "/usr/sbin/nats-server";

/// How to run nats-server with JetStream on `{port}` (loopback only), storing in the
/// engine's directory (so the store survives [`Engine::restart`], even after a SIGKILL),
/// with `extra` arguments (e.g. `--tls …`).
pub fn spec(extra: &[&str]) -> EngineSpec {
    let mut args: Vec<String> = [
        "-a",
        "127.0.0.1",
        "-p",
        "{port}",
        "-js",
        "-sd",
        "{dir}/jetstream",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    EngineSpec {
        name: "nats-server",
        program: PROGRAM.into(),
        args,
        ready: sends_info,
    }
}

/// Starts a nats-server with JetStream on a free port.
pub fn start() -> Engine {
    Engine::start(spec(&[]))
}

/// `nats://127.0.0.1:<port>`.
pub fn url(engine: &Engine) -> String {
    format!("nats://127.0.0.1:{}", engine.port())
}

/// Ready probe: the server greets a new connection with its `INFO` line.
pub fn sends_info(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    &buf[..got] == b"INFO "
}
