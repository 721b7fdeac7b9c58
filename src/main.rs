//! The `ssegate` command: `serve`, `publish`, `token`, `check-config`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use ssegate::auth::{Grants, Minter};
use ssegate::config::Config;
use ssegate::server;

mod demo;

/// mimalloc: the publish path allocates per event (parsing, the event, its frame) from
/// several threads; glibc's malloc spent about 40 % of the CPU of a batch-publish run in
/// its own locks and bookkeeping (perf, docs/benchmarks.md "Write path").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ssegate",
    version,
    about = "A real-time gateway over Server-Sent Events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (overrides server.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Development mode: works with no configuration, creates and reuses a signing key in
        /// the data directory, prints ready-to-use tokens and curl commands.
        #[arg(long)]
        dev: bool,
    },
    /// Run the demo: the gateway with a demo signing key, a web app on the same origin
    /// (two demo users, live pipeline logs, notifications, an admin page) and a simulated
    /// ETL workload. Prints the URL and the demo users.
    Demo(demo::DemoArgs),
    /// Publish one event to a running gateway.
    Publish {
        #[arg(long, required = true)]
        channel: Vec<String>,
        #[arg(long = "type", default_value = "message")]
        kind: String,
        /// JSON payload.
        #[arg(long, default_value = "null")]
        data: String,
        /// Idempotency key.
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Publisher token (default: $SSEGATE_TOKEN).
        #[arg(long, env = "SSEGATE_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Mint a token signed with the configured secret (or the development key).
    Token {
        #[arg(long)]
        sub: String,
        /// Channel patterns the token may subscribe to.
        #[arg(long, num_args = 1..)]
        subscribe: Vec<String>,
        /// Channel patterns the token may publish to.
        #[arg(long, num_args = 1..)]
        publish: Vec<String>,
        #[arg(long)]
        admin: bool,
        /// Channel patterns whose presence the token may read.
        #[arg(long, num_args = 1..)]
        presence: Vec<String>,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig { file: PathBuf },
    /// Inspect or repair the file log of a stopped node (`log check`, `log repair`).
    Log {
        #[command(subcommand)]
        action: LogAction,
    },
    /// Create a publisher key for a backend service: prints the key (give it to the
    /// service) and the `[[auth.publisher_keys]]` entry (its digest) for the config.
    PublisherKey {
        /// Who publishes with it.
        #[arg(long)]
        name: String,
        /// Channel patterns it may publish to.
        #[arg(long, num_args = 1.., required_unless_present = "admin")]
        publish: Vec<String>,
        /// May use the admin API (drain, kick, broadcast, status).
        #[arg(long)]
        admin: bool,
    },
}

#[derive(Subcommand)]
enum LogAction {
    /// Read every record and report damage, a torn tail or missing data. Exit code 0: the
    /// log is clean; 1: it has damaged records or cannot start.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Make a log that `check` finds at fault start again, keeping every good event and
    /// every id: damaged and missing ids are recorded as lost (readers get a gap), a torn
    /// tail is cut, an unreadable segment is set aside.
    Repair {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn load_config(file: Option<&Path>, data_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut cfg = Config::load(file, std::env::vars())?;
    if let Some(dir) = data_dir {
        cfg.server.data_dir = dir;
    }
    Ok(cfg)
}

fn main() -> anyhow::Result<()> {
    ssegate::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            dev,
        } => {
            let mut cfg = load_config(config.as_deref(), data_dir)?;
            init_tracing(cfg.server.log_format);
            if let Some(listen) = listen {
                cfg.server.listen = listen;
            }
            if dev && cfg.auth.jwt_secret.is_none() {
                cfg.auth.jwt_secret = Some(server::dev_secret(&cfg.server.data_dir)?);
            }
            tokio::runtime::Runtime::new()?.block_on(serve(cfg, dev))
        }
        Command::Demo(args) => {
            let cfg = demo::config(&args)?;
            init_tracing(cfg.server.log_format);
            let shutdown = CancellationToken::new();
            tokio::runtime::Runtime::new()?.block_on(async {
                tokio::spawn(on_signal(shutdown.clone()));
                demo::run(args, cfg, shutdown).await
            })
        }
        Command::Publish {
            channel,
            kind,
            data,
            id,
            url,
            token,
        } => {
            let data: serde_json::Value =
                serde_json::from_str(&data).context("--data must be JSON")?;
            let mut body = serde_json::json!({ "type": kind, "data": data });
            if channel.len() == 1 {
                body["channel"] = channel[0].clone().into();
            } else {
                body["channels"] = channel.into();
            }
            if let Some(id) = id {
                body["id"] = id.into();
            }
            tokio::runtime::Runtime::new()?.block_on(async move {
                let res = reqwest::Client::new()
                    .post(format!("{}/v1/publish", url.trim_end_matches('/')))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .with_context(|| format!("cannot reach {url}"))?;
                let status = res.status();
                let text = res.text().await?;
                println!("{text}");
                if !status.is_success() {
                    bail!("publish failed with {status}");
                }
                Ok(())
            })
        }
        Command::Token {
            sub,
            subscribe,
            publish,
            admin,
            presence,
            ttl,
            config,
            data_dir,
        } => {
            let cfg = load_config(config.as_deref(), data_dir)?;
            let secret = match &cfg.auth.jwt_secret {
                Some(s) => s.clone(),
                None => {
                    let path = cfg.server.data_dir.join(server::DEV_SECRET_FILE);
                    if !path.exists() {
                        bail!(
                            "no signing key: set auth.jwt_secret (or SSEGATE_AUTH__JWT_SECRET), or run `ssegate serve --dev` once to create a development key in {}",
                            cfg.server.data_dir.display()
                        );
                    }
                    eprintln!(
                        "note: signing with the development key in {}",
                        path.display()
                    );
                    server::dev_secret(&cfg.server.data_dir)?
                }
            };
            let grants = Grants {
                subscribe,
                publish,
                admin,
                presence,
            };
            let token = Minter::new(&secret, &cfg.auth).mint(
                &sub,
                grants,
                Duration::from(ttl).as_secs(),
            )?;
            println!("{token}");
            Ok(())
        }
        Command::PublisherKey {
            name,
            publish,
            admin,
        } => {
            for p in &publish {
                ssegate::channel::validate_pattern(p)
                    .with_context(|| format!("--publish {p:?}"))?;
            }
            use rand::Rng;
            let bytes: [u8; 32] = rand::thread_rng().gen();
            let key: String = std::iter::once("sk_".to_owned())
                .chain(bytes.iter().map(|b| format!("{b:02x}")))
                .collect();
            let patterns: Vec<String> = publish.iter().map(|p| format!("{p:?}")).collect();
            println!("{key}");
            eprintln!(
                "\nGive the key above to the service (Authorization: Bearer <key>). Add to the config:\n\n\
                 [[auth.publisher_keys]]\nname = {name:?}\nsha256 = \"{digest}\"\npublish = [{patterns}]\nadmin = {admin}\n",
                digest = ssegate::auth::hex_sha256(key.as_bytes()),
                patterns = patterns.join(", "),
            );
            Ok(())
        }
        Command::Log { action } => match action {
            LogAction::Check { config, data_dir } => {
                let cfg = load_config(config.as_deref(), data_dir)?;
                let report = ssegate::log::file::repair::check(&cfg.server.data_dir)?;
                print!("{}", report.text);
                if !report.ok {
                    std::process::exit(1);
                }
                Ok(())
            }
            LogAction::Repair { config, data_dir } => {
                let cfg = load_config(config.as_deref(), data_dir)?;
                let margin = 2 * ssegate::log::file::roll_events(&cfg.log.options());
                for line in ssegate::log::file::repair::repair(&cfg.server.data_dir, margin)? {
                    println!("{line}");
                }
                Ok(())
            }
        },
        Command::CheckConfig { file } => {
            let cfg = Config::load(Some(&file), std::env::vars())?;
            print!("{}", cfg.to_toml_masked());
            eprintln!("{}: OK", file.display());
            Ok(())
        }
    }
}

async fn serve(cfg: Config, dev: bool) -> anyhow::Result<()> {
    // Ready before announced: the log is open when the "listening" line appears.
    let gateway = server::Gateway::open(cfg.clone()).await?;
    let listener = server::bind(&cfg.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ssegate listening on http://{addr}")?;
        if let (true, Some(secret)) = (dev, &cfg.auth.jwt_secret) {
            print_dev_help(&mut out, &cfg, secret, addr)?;
        }
        out.flush()?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    Ok(gateway.serve(listener, shutdown).await?)
}

fn print_dev_help(
    out: &mut impl Write,
    cfg: &Config,
    secret: &str,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let auth = Minter::new(secret, &cfg.auth);
    let day = 24 * 3600;
    let sub_token = auth.mint(
        "dev-user",
        Grants {
            subscribe: vec!["**".into()],
            ..Grants::default()
        },
        day,
    )?;
    let pub_token = auth.mint(
        "dev-publisher",
        Grants {
            publish: vec!["**".into()],
            admin: true,
            ..Grants::default()
        },
        day,
    )?;
    writeln!(
        out,
        "\nDevelopment mode: signing key in {dir}/{file}, log in {dir} (tokens valid 24 h)\n\
         \nSubscriber token (subscribe: **):\n  {sub_token}\n\
         \nPublisher token (publish: **, admin):\n  {pub_token}\n\
         \nSubscribe:\n  curl -N -H 'Authorization: Bearer {sub_token}' 'http://{addr}/v1/stream?channel=demo:hello'\n\
         \nPublish:\n  curl -H 'Authorization: Bearer {pub_token}' -H 'Content-Type: application/json' \\\n    -d '{{\"channel\":\"demo:hello\",\"type\":\"greeting\",\"data\":{{\"text\":\"hi\"}}}}' http://{addr}/v1/publish\n\
         \nResume after event 1:\n  curl -N -H 'Authorization: Bearer {sub_token}' -H 'Last-Event-ID: 1' 'http://{addr}/v1/stream?channel=demo:hello'\n",
        dir = cfg.server.data_dir.display(),
        file = server::DEV_SECRET_FILE,
    )?;
    Ok(())
}

async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}

fn init_tracing(format: ssegate::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        ssegate::config::LogFormat::Json => builder.json().flatten_event(true).init(),
        // Field values quoted and escaped unless plain, so none can pass for another field
        // or another line (a user id, a path, an error text).
        ssegate::config::LogFormat::Pretty => {
            builder.fmt_fields(ssegate::logfmt::SafeFields).init()
        }
    }
}
