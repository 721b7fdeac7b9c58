//! Engines for tests: a server process (redis-server, nats-server, …) started on a free
//! loopback port in a temporary directory of its own, waited for until it answers, killed
//! when dropped, and restartable on the same port and directory (to test outages).
//!
//! Generic part here; one module per engine beside it (`redis`, and others may be added) says
//! how to run that engine and how to tell it is ready. A test file uses it with
//! `mod engines;`.
//!
//! ```ignore
//! let engine = Engine::start(EngineSpec {
//!     name: "my-server",
//!     program: "/usr/bin/my-server".into(),
//!     // `{port}` and `{dir}` are replaced by the chosen port and the engine's directory.
//!     args: vec!["--port".into(), "{port}".into(), "--dir".into(), "{dir}".into()],
//!     ready: tcp_accepts,
//! });
//! ```
#![allow(dead_code)]

pub mod kafka;
pub mod mongo_sim;
pub mod nats;
pub mod postgres;
pub mod redis;
pub mod tls;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long an engine may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run an engine.
#[derive(Clone)]
pub struct EngineSpec {
    /// For messages.
    pub name: &'static str,
    pub program: PathBuf,
    /// Arguments; `{port}` and `{dir}` in them are replaced by the port and the directory.
    pub args: Vec<String>,
    /// Whether the engine on this port is ready to serve (called repeatedly until true).
    pub ready: fn(u16) -> bool,
}

/// A running engine process. Killed (SIGKILL) when dropped; its directory is removed then.
pub struct Engine {
    spec: EngineSpec,
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Engine {
    /// Starts the engine on a free port, retrying with another port when the one picked was
    /// taken meanwhile; panics with the engine's output when it does not come up.
    pub fn start(spec: EngineSpec) -> Engine {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", spec.name))
            .tempdir()
            .expect("engine dir");
        let mut engine = Engine {
            spec,
            child: None,
            port: 0,
            dir,
        };
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            match engine.launch(port) {
                Ok(()) => return engine,
                Err(e) => last_error = e,
            }
        }
        panic!("{} did not start: {last_error}", engine.spec.name);
    }

    /// Starts the engine on `port`, which the caller chose (e.g. a port a client was already
    /// pointed at before the engine existed).
    pub fn start_on(spec: EngineSpec, port: u16) -> Engine {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", spec.name))
            .tempdir()
            .expect("engine dir");
        let mut engine = Engine {
            spec,
            child: None,
            port: 0,
            dir,
        };
        if let Err(e) = engine.launch(port) {
            panic!("{} did not start on port {port}: {e}", engine.spec.name);
        }
        engine
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The engine's own directory (its data, and `output.log` with what it printed).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process (SIGKILL, no chance to clean up) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the engine again on the same port and directory (after [`Engine::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        let name = self.spec.name;
        relaunch(name, port, Duration::from_secs(10), || self.launch(port));
    }

    /// What the engine printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default()
    }

    fn launch(&mut self, port: u16) -> Result<(), String> {
        let dir = self.dir.path().to_owned();
        let args: Vec<String> = self
            .spec
            .args
            .iter()
            .map(|a| {
                a.replace("{port}", &port.to_string())
                    .replace("{dir}", &dir.to_string_lossy())
            })
            .collect();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("output.log"))
            .map_err(|e| format!("output file: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("output file: {e}"))?;
        let mut child = Command::new(&self.spec.program)
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {} ({e}); is it installed?",
                    self.spec.program.display()
                )
            })?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("it exited ({status}); output:\n{}", self.output()));
            }
            if (self.spec.ready)(port) {
                self.child = Some(child);
                self.port = port;
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no answer on port {port}; output:\n{}",
                    self.output()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nobody listens on right now (the engine binds it a moment later).
/// Calls `launch` until it succeeds on `port` or `within` has passed: the port was just
/// released by the engine's previous run (another process could take it only by bad luck).
pub fn relaunch(
    what: &str,
    port: u16,
    within: Duration,
    mut launch: impl FnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + within;
    loop {
        match launch() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("{what} did not restart on port {port}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Ready probe: something accepts TCP connections on the port.
pub fn tcp_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(200),
    )
    .is_ok()
}
