//! A REAL nginx for a test: Debian's `/usr/sbin/nginx` (master + 1 worker, foreground) on a
//! free loopback port with a temporary prefix directory, configured with the shipped site
//! file (`deploy/nginx/ssegate.conf`) in front of one or more ssegate nodes (plain
//! round-robin, as shipped). Only these values of the site file are changed: the upstream
//! servers, the `listen` address, the access log path, and whatever a test asks for. Each
//! replaced directive must occur exactly once, so a change of the shipped file's shape fails
//! the test instead of testing something else; the configuration is checked with `nginx -t`.
//!
//! Without `/usr/sbin/nginx`, [`Nginx::start`] prints `skipped: …` and gives `None`, unless
//! `SSEGATE_TEST_REQUIRE_NGINX=1`, which makes that a failure (for CI, which installs it).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NGINX: &str = "/usr/sbin/nginx";
/// The shipped site file.
pub const SITE: &str = include_str!("../../deploy/nginx/ssegate.conf");

/// A running nginx. Stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Nginx {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx in front of `upstreams` (`http://127.0.0.1:PORT` each), with the site
    /// file's directives `replace`d (`from` → `to`) too. `None` (after printing `skipped: …`)
    /// when nginx is not installed.
    pub fn start(upstreams: &[&str], replace: &[(&str, String)]) -> Option<Nginx> {
        if !Path::new(NGINX).exists() {
            let msg = format!(
                "skipped: {NGINX} is missing (apt-get install -y -q --no-install-recommends nginx)"
            );
            if std::env::var("SSEGATE_TEST_REQUIRE_NGINX").as_deref() == Ok("1") {
                panic!("{msg}, and SSEGATE_TEST_REQUIRE_NGINX=1");
            }
            eprintln!("{msg}");
            println!("{msg}");
            return None;
        }
        let upstreams: Vec<&str> = upstreams
            .iter()
            .map(|u| {
                u.strip_prefix("http://")
                    .expect("upstream is http://host:port")
            })
            .collect();
        // A port picked here may be taken by someone else before nginx binds it: try again.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Nginx::try_start(&upstreams, replace) {
                Ok(nginx) => return Some(nginx),
                Err(e) => last_error = e,
            }
        }
        panic!("nginx did not start: {last_error}");
    }

    fn try_start(upstreams: &[&str], replace: &[(&str, String)]) -> Result<Nginx, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        // nginx's worker runs as `nobody` when the tests run as root: it must reach the
        // temp directories (request bodies of large publishes are written there).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let site = site_config(upstreams, port, replace, p);
        std::fs::write(p.join("ssegate.conf"), &site).unwrap();
        std::fs::write(p.join("nginx.conf"), main_config(p)).unwrap();
        let conf = p.join("nginx.conf");
        let args = |extra: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            v.extend([
                "-p".into(),
                format!("{}/", p.display()),
                "-c".into(),
                conf.display().to_string(),
                "-e".into(),
                p.join("error.log").display().to_string(),
            ]);
            v
        };
        let check = Command::new(NGINX)
            .args(args(&["-t"]))
            .output()
            .expect("run nginx -t");
        let said = String::from_utf8_lossy(&check.stderr).into_owned();
        assert!(
            check.status.success(),
            "nginx -t refused the configuration:\n{said}\n--- site ---\n{site}"
        );
        let child = Command::new(NGINX)
            .args(args(&[]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                return Err(format!("nginx exited ({status}):\n{}", nginx.error_log()));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nginx does not listen on {port}:\n{}",
                    nginx.error_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The site's access log (format `ssegate`: it names the upstream of each request).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ssegate.access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (a SIGKILLed master would leave them behind).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped site file with the test's upstreams, listen address, access log and
/// `replace`ments. The upstream stays plain round-robin (no stickiness directive).
fn site_config(upstreams: &[&str], port: u16, replace: &[(&str, String)], dir: &Path) -> String {
    let mut site = SITE.to_owned();
    let servers: Vec<String> = upstreams.iter().map(|u| format!("server {u};")).collect();
    replace_directive(&mut site, "server 127.0.0.1:8080;", &servers.join("\n    "));
    replace_directive(
        &mut site,
        "listen 80;",
        &format!("listen 127.0.0.1:{port};"),
    );
    replace_directive(
        &mut site,
        "access_log /var/log/nginx/ssegate.access.log ssegate;",
        &format!(
            "access_log {} ssegate;",
            dir.join("ssegate.access.log").display()
        ),
    );
    for (from, to) in replace {
        replace_directive(&mut site, from, to);
    }
    for stickiness in ["ip_hash", "hash ", "sticky", "least_conn"] {
        assert!(
            !site.lines().any(|l| l.trim_start().starts_with(stickiness)),
            "the upstream is plain round-robin: no `{stickiness}`"
        );
    }
    site
}

fn replace_directive(text: &mut String, from: &str, to: &str) {
    let mut found = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if line.trim() == from {
                found += 1;
                line.replace(from, to)
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(
        found, 1,
        "deploy/nginx/ssegate.conf should have `{from}` exactly once"
    );
    *text = lines.join("\n") + "\n";
}

/// A minimal main configuration, everything inside the temp prefix. Like Debian's
/// nginx.conf it has `gzip on`; it also lists event streams in `gzip_types` (a plausible
/// global setting), which the site's stream location must override.
fn main_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{
    worker_connections 1024;
}}
http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body_temp;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    gzip on;
    gzip_min_length 1;
    gzip_types text/event-stream application/json;
    include {d}/ssegate.conf;
}}
"
    )
}
