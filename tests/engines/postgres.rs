//! A private PostgreSQL 15 for a test — never the machine's own on 5432: `initdb` in a
//! temporary directory, `wal_level = logical`, listening on a free loopback port with its
//! Unix socket in that directory. Stopped (fast shutdown) and removed when dropped.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, `initdb` and `postgres` run
//! as the `postgres` system user (through `setpriv`, which execs, so the child we hold is the
//! postmaster itself) in a directory handed to that user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, relaunch};

const BIN: &str = "/usr/lib/postgresql/15/bin";
/// The system user PostgreSQL runs as when we are root.
const SYSTEM_USER: &str = "postgres";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running PostgreSQL server with the `postgres` superuser (trust authentication on
/// loopback) and the `postgres` database.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// `-c name=value` settings beyond the defaults, kept for restarts.
    settings: Vec<String>,
}

impl Postgres {
    /// `initdb` and start on a free port.
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// The same with extra settings (`"shared_preload_libraries=pg_stat_statements"`).
    pub fn start_with(settings: &[&str]) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("postgres-")
            .tempdir()
            .expect("postgres dir");
        if as_root() {
            let (uid, gid) = system_user_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.path().join("data");
        let out = run_as_db_user(Command::new(format!("{BIN}/initdb")))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .output()
            .expect("run initdb (is postgresql-15 installed?)");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            dir,
            port: 0,
            child: None,
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        let mut last = String::new();
        for _ in 0..5 {
            match pg.launch(free_port()) {
                Ok(()) => return pg,
                Err(e) => last = e,
            }
        }
        panic!("postgres did not start: {last}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The data directory (`postmaster.pid` is there).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Process id of the postmaster.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the server logged.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default()
    }

    /// Fast shutdown (SIGINT: clients are disconnected, the server stops cleanly); waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts again on the same port and data (after [`Postgres::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        relaunch("postgres", port, Duration::from_secs(20), || {
            self.launch(port)
        });
    }

    /// Runs SQL with psql; returns its unaligned, tuples-only output. Panics on an error.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(format!("{BIN}/psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Turns TLS on (`ssl = on`, reloaded: no restart) with this certificate and key, copied
    /// into the data directory as PostgreSQL wants them (owned by the server's user, 0600).
    pub fn enable_tls(&self, cert: &Path, key: &Path) {
        let data = self.data_dir();
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            let dest = data.join(to);
            std::fs::copy(from, &dest).expect("copy a TLS file");
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
            if as_root() {
                let (uid, gid) = system_user_ids();
                std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).expect("chown");
            }
        }
        self.psql("ALTER SYSTEM SET ssl = on");
        self.psql("SELECT pg_reload_conf()");
        // The reload is asynchronous: wait until the server says TLS is on.
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.psql("SHOW ssl") != "on" {
            assert!(
                Instant::now() < deadline,
                "ssl never turned on:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn launch(&mut self, port: u16) -> Result<(), String> {
        let dir = self.dir.path();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("output.log"))
            .map_err(|e| format!("output file: {e}"))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = run_as_db_user(Command::new(format!("{BIN}/postgres")));
        cmd.arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "wal_level=logical",
                "-c",
                "max_replication_slots=20",
                "-c",
                "max_wal_senders=20",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
            ]);
        for s in &self.settings {
            cmd.args(["-c", s]);
        }
        let mut child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run postgres: {e}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("it exited ({status}); output:\n{}", self.output()));
            }
            if is_ready(port) {
                self.child = Some(child);
                self.port = port;
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer on port {port}:\n{}", self.output()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_ready(port: u16) -> bool {
    Command::new(format!("{BIN}/pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

fn as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn system_user_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, SYSTEM_USER])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no {SYSTEM_USER:?} system user to run PostgreSQL as"))
    };
    (id("-u"), id("-g"))
}

/// `cmd` as it must run: as the `postgres` user when we are root, else as we are.
fn run_as_db_user(cmd: Command) -> Command {
    if !as_root() {
        return cmd;
    }
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args([
            &format!("--reuid={SYSTEM_USER}"),
            &format!("--regid={SYSTEM_USER}"),
            "--init-groups",
            "--",
        ])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    wrapped
}
