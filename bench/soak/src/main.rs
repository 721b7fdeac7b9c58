//! # ssegate-soak
//!
//! A soak benchmark of one ssegate node (started by `bench/soak.sh`): for a number of
//! minutes, thousands of SSE streams churn, resume, expire and get kicked while events are
//! published at a steady rate, slow readers lag and an attacker on another loopback address
//! holds connections open and forges cross-site requests. Then publishing stops, every
//! subscriber drains, and the program checks that each one received exactly the events it
//! was owed (no loss, no duplicate, in order, across all its reconnects), that the node's
//! memory and open files came back to where they were, that `/healthz` stayed fast, that
//! the attack connections were cut on time, that the forged requests changed nothing, and
//! that the server logged no error. JSON report on stdout (or `--report FILE`), summary on
//! stderr; exit 1 when a check fails.
//!
//! # Layout
//!
//! - `ctx`: options, shared counters, phase signals, addresses.
//! - `wire`: TCP from a chosen loopback address, a small HTTP/1.1 client, the SSE parser.
//! - `token`: HS256 tokens.
//! - `publisher`: the publishers and the ledger of acknowledged ids.
//! - `subscriber`: regular, slow and canary subscribers, the churn.
//! - `check`: the exactly-once check.
//! - `attacker`, `csrf`: the attacks from 127.0.0.2.
//! - `probes`: `/healthz`, RSS and open files, kicks, the server log, the node's state.
//! - `report`: checks, JSON, summary.

mod attacker;
mod check;
mod csrf;
mod ctx;
mod probes;
mod publisher;
mod report;
mod subscriber;
mod token;
mod wire;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use crate::ctx::{Ctx, Fault, Options, Stats};
use crate::publisher::Ledger;
use crate::report::Outcome;
use crate::subscriber::lock;

/// Length of the windows whose median samples are compared (start and end), seconds.
const WINDOW_S: f64 = 10.0;

const USAGE: &str = "\
ssegate-soak --url http://127.0.0.1:PORT --server-pid PID --server-log FILE [options]
  (the node's HS256 secret in $SOAK_JWT_SECRET)

  --minutes M            length of the load phase (2)
  --warmup-s S           the baseline sample is taken S s into the load (load/3, 30..120)
  --drain-s S            longest wait for every subscriber to drain (60)
  --streams N            regular streams held open (2000)
  --slow N               slow readers (50)
  --channels N           channels (200)
  --channels-per-sub N   channels of each regular subscriber (3)
  --rate N               events published per second (1000)
  --publishers N         publishers (8)
  --churn N              client disconnects and connects per second (100)
  --leave-share F        share of those that leave for good, replaced by new ones (0.2)
  --token-ttl MIN-MAX    subscriber token lifetime, seconds (20-40)
  --kick-every-ms MS     an admin kicks a random user this often (3000)
  --sub-addrs N          source addresses of the regular streams, 127.0.0.10.. (20)
  --no-attack            no attack connections, no cross-site requests
  --attack-rate N        attack connections opened per second at most (500)
  --head-timeout-ms MS   the node's server.head_timeout_ms (2000)
  --idle-timeout-ms MS   the node's server.idle_timeout_ms (5000)
  --per-ip-cap N         the node's limits.max_open_connections_per_ip (1100)
  --slack-ms MS          tolerance on those timeouts (1000)
  --allowed-origin URL   the node's cors.allowed_origins entry (https://app.example)
  --settings absent      the node lacks the timeout settings (reported as such)
  --fault skip|dup       debug: one subscriber drops or doubles one event mid-run, to show
                         the exactly-once check fails
  --fault append         debug: one event appended to the canary's channel (with a bearer
                         token), to show the cross-site check sees a change
  --report FILE          write the JSON report there instead of stdout
  --profile NAME         build profile of the node, for the report (debug)
  --timing-advisory      report the timing checks (/healthz p99) without failing on them";

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        url: String::new(),
        server_pid: 0,
        server_log: Default::default(),
        secret: std::env::var("SOAK_JWT_SECRET").unwrap_or_default(),
        load: Duration::from_secs(120),
        warmup: Duration::ZERO,
        drain: Duration::from_secs(60),
        streams: 2000,
        slow: 50,
        channels: 200,
        channels_per_sub: 3,
        rate: 1000,
        publishers: 8,
        churn: 100,
        leave_share: 0.2,
        ttl_min_s: 20,
        ttl_max_s: 40,
        kick_every: Duration::from_millis(3000),
        sub_addrs: 20,
        attack: true,
        attack_rate: 500,
        head_timeout: Duration::from_millis(2000),
        idle_timeout: Duration::from_millis(5000),
        per_ip_cap: 1100,
        slack: Duration::from_millis(1000),
        allowed_origin: "https://app.example".into(),
        settings_present: true,
        fault: None,
        report: None,
        profile: "debug".into(),
        timing_advisory: false,
    };
    let mut warmup = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--timing-advisory" {
            o.timing_advisory = true;
            continue;
        }
        if flag == "--no-attack" {
            o.attack = false;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag}: bad value {value:?}");
        let ms = |v: &str| v.parse::<u64>().map(Duration::from_millis);
        match flag.as_str() {
            "--url" => o.url = value,
            "--server-pid" => o.server_pid = value.parse().map_err(bad)?,
            "--server-log" => o.server_log = value.into(),
            "--minutes" => {
                let m: f64 = value
                    .parse()
                    .map_err(|_| format!("{flag}: bad value {value:?}"))?;
                if !(m > 0.0 && m < 24.0 * 60.0) {
                    return Err(format!("{flag}: out of range"));
                }
                o.load = Duration::from_secs_f64(m * 60.0);
            }
            "--warmup-s" => warmup = Some(Duration::from_secs(value.parse().map_err(bad)?)),
            "--drain-s" => o.drain = Duration::from_secs(value.parse().map_err(bad)?),
            "--streams" => o.streams = value.parse().map_err(bad)?,
            "--slow" => o.slow = value.parse().map_err(bad)?,
            "--channels" => o.channels = value.parse().map_err(bad)?,
            "--channels-per-sub" => o.channels_per_sub = value.parse().map_err(bad)?,
            "--rate" => o.rate = value.parse().map_err(bad)?,
            "--publishers" => o.publishers = value.parse().map_err(bad)?,
            "--churn" => o.churn = value.parse().map_err(bad)?,
            "--leave-share" => {
                o.leave_share = value.parse().map_err(|_| format!("{flag}: bad value"))?;
                if !(0.0..=1.0).contains(&o.leave_share) {
                    return Err(format!("{flag}: between 0 and 1"));
                }
            }
            "--token-ttl" => {
                let (a, b) = value
                    .split_once('-')
                    .ok_or_else(|| format!("{flag}: MIN-MAX"))?;
                o.ttl_min_s = a.parse().map_err(|_| format!("{flag}: MIN-MAX"))?;
                o.ttl_max_s = b.parse().map_err(|_| format!("{flag}: MIN-MAX"))?;
                if o.ttl_min_s == 0 || o.ttl_min_s > o.ttl_max_s {
                    return Err(format!("{flag}: 0 < MIN <= MAX"));
                }
            }
            "--kick-every-ms" => o.kick_every = ms(&value).map_err(bad)?,
            "--sub-addrs" => o.sub_addrs = value.parse().map_err(bad)?,
            "--attack-rate" => o.attack_rate = value.parse().map_err(bad)?,
            "--head-timeout-ms" => o.head_timeout = ms(&value).map_err(bad)?,
            "--idle-timeout-ms" => o.idle_timeout = ms(&value).map_err(bad)?,
            "--per-ip-cap" => o.per_ip_cap = value.parse().map_err(bad)?,
            "--slack-ms" => o.slack = ms(&value).map_err(bad)?,
            "--allowed-origin" => o.allowed_origin = value,
            "--settings" => o.settings_present = value != "absent",
            "--fault" => {
                o.fault = Some(match value.as_str() {
                    "skip" => Fault::Skip,
                    "dup" => Fault::Dup,
                    "append" => Fault::Append,
                    _ => return Err(format!("{flag}: skip, dup or append")),
                })
            }
            "--report" => o.report = Some(value.into()),
            "--profile" => o.profile = value,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.url.is_empty() || o.server_pid == 0 || o.server_log.as_os_str().is_empty() {
        return Err("--url, --server-pid and --server-log are required".into());
    }
    if o.secret.len() < 16 {
        return Err("$SOAK_JWT_SECRET must hold the node's HS256 secret".into());
    }
    if o.publishers == 0
        || o.channels == 0
        || o.channels > 1000
        || o.sub_addrs == 0
        || o.sub_addrs > 200
    {
        return Err(
            "--publishers, --channels (≤ 1000) and --sub-addrs (≤ 200) must be positive".into(),
        );
    }
    let load = o.load.as_secs_f64();
    o.warmup = warmup.unwrap_or_else(|| Duration::from_secs_f64((load / 3.0).clamp(30.0, 120.0)));
    if o.warmup.as_secs_f64() + WINDOW_S + 1.0 > load {
        o.warmup = Duration::from_secs_f64((load - WINDOW_S - 1.0).max(0.0) / 2.0);
    }
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("ssegate-soak: {e}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let target = match wire::Target::parse(&opts.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ssegate-soak: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ssegate-soak: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        let (finals, _) = watch::channel(None);
        let ctx = Arc::new(Ctx {
            minter: token::Minter::new(&opts.secret),
            ledger: Ledger::new(opts.channels),
            opts,
            target,
            t0: Instant::now(),
            stats: Stats::default(),
            load_stop: CancellationToken::new(),
            finish: CancellationToken::new(),
            finals,
            fault: AtomicU8::new(0),
            drained_by_csrf: AtomicBool::new(false),
            registry: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        });
        // Every phase has its own deadline; this is the backstop if one does not hold.
        let budget = ctx.opts.load + ctx.opts.drain + Duration::from_secs(180);
        tokio::spawn(async move {
            sleep(budget).await;
            eprintln!("ssegate-soak: not finished after {budget:?}: giving up");
            std::process::exit(3);
        });
        let outcome = run(ctx.clone()).await;
        let (doc, summary, ok) = report::build(&ctx, &outcome);
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        match &ctx.opts.report {
            Some(path) => {
                if let Err(e) = std::fs::write(path, text + "\n") {
                    eprintln!("ssegate-soak: cannot write {}: {e}", path.display());
                }
            }
            None => println!("{text}"),
        }
        eprintln!("{summary}");
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

async fn run(ctx: Arc<Ctx>) -> Outcome {
    let opts = &ctx.opts;
    // The probes get a thread of their own, so that the load's tasks never delay them: what
    // they measure is the node.
    let samples = Arc::new(Mutex::new(Vec::new()));
    let (health_tx, health) = tokio::sync::oneshot::channel();
    let probes = {
        let (ctx, samples) = (ctx.clone(), samples.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => rt.block_on(async {
                    let sampler = probes::run_sampler(ctx.clone(), samples);
                    let (health, ()) = tokio::join!(probes::run_healthz(ctx), sampler);
                    let _ = health_tx.send(health);
                }),
                Err(e) => eprintln!("ssegate-soak: no runtime for the probes: {e}"),
            }
        })
    };

    // --- ramp: every stream opens, 200 a second ---
    // Churned streams spend 100–600 ms offline, and reconnecting takes a while: that many
    // more subscribers keep about `streams` open.
    let offline = f64::from(opts.churn) * 0.6;
    let population = opts.streams + offline.ceil() as usize;
    subscriber::spawn_canary(&ctx);
    for i in 0..opts.slow {
        subscriber::spawn_slow(&ctx, i);
    }
    let mut ramp = tokio::time::interval(Duration::from_millis(5));
    for _ in 0..population {
        ramp.tick().await;
        subscriber::spawn_regular(&ctx);
    }
    let ramp_deadline = Instant::now() + Duration::from_secs(60);
    let ramp_complete = loop {
        let s = &ctx.stats;
        if s.open_streams.load(Ordering::Relaxed) >= opts.streams as i64
            && s.open_slow.load(Ordering::Relaxed) >= opts.slow as i64
        {
            break true;
        }
        if Instant::now() >= ramp_deadline {
            break false;
        }
        sleep(Duration::from_millis(50)).await;
    };
    let ramp_s = ctx.secs();

    // --- load ---
    let attack_stop = CancellationToken::new();
    let (attacker, csrf) = if opts.attack {
        (
            Some(tokio::spawn(attacker::run_attacker(
                ctx.clone(),
                attack_stop.clone(),
            ))),
            Some(tokio::spawn(csrf::run_csrf(
                ctx.clone(),
                attack_stop.clone(),
            ))),
        )
    } else {
        (None, None)
    };
    let publishers: Vec<_> = (0..opts.publishers)
        .map(|k| tokio::spawn(publisher::run_publisher(ctx.clone(), k)))
        .collect();
    let churn = tokio::spawn(subscriber::run_churn(ctx.clone()));
    let kicker = tokio::spawn(probes::run_kicker(ctx.clone()));
    let load_start = Instant::now();
    let baseline_at = ramp_s + opts.warmup.as_secs_f64();
    let mut armed = opts.fault.is_none();
    let mut aborted = false;
    while load_start.elapsed() < opts.load {
        sleep(Duration::from_millis(200)).await;
        if !armed && load_start.elapsed() >= opts.load / 2 {
            armed = true;
            match opts.fault {
                Some(Fault::Skip) => ctx.fault.store(1, Ordering::Relaxed),
                Some(Fault::Dup) => ctx.fault.store(2, Ordering::Relaxed),
                Some(Fault::Append) => csrf::append_behind_the_ledger(&ctx).await,
                None => {}
            }
        }
        if ctx.drained_by_csrf.load(Ordering::Relaxed) {
            eprintln!("ssegate-soak: a cross-site drain was accepted; stopping the load");
            aborted = true;
            break;
        }
    }
    ctx.load_stop.cancel();
    let load_s = load_start.elapsed().as_secs_f64();
    let mut publisher_reports = Vec::new();
    for p in publishers {
        if let Ok(r) = p.await {
            publisher_reports.push(r);
        }
    }
    let _ = churn.await;
    let kicks = kicker.await.unwrap_or_default();

    // --- drain: every regular subscriber gets every event ---
    ctx.finals.send_replace(Some(Arc::new(ctx.ledger.finals())));
    let drain_start = Instant::now();
    let all_drained = loop {
        let members = lock(&ctx.registry).len() as i64;
        if ctx.stats.drained.load(Ordering::Relaxed) >= members {
            break true;
        }
        if drain_start.elapsed() >= opts.drain {
            break false;
        }
        sleep(Duration::from_millis(100)).await;
    };
    let drain_s = drain_start.elapsed().as_secs_f64();

    // --- the end sample: 2 s to settle, then a window of samples ---
    sleep(Duration::from_secs(2)).await;
    let end_from = ctx.secs();
    sleep(Duration::from_secs_f64(WINDOW_S + 0.5)).await;
    let end_to = ctx.secs();
    let node = probes::node_state(&ctx).await;

    // --- stop everything, collect ---
    attack_stop.cancel();
    ctx.finish.cancel();
    let attack = match attacker {
        Some(a) => a.await.ok(),
        None => None,
    };
    let csrf = match csrf {
        Some(c) => c.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let tasks = std::mem::take(&mut *lock(&ctx.tasks));
    let mut subscribers = Vec::with_capacity(tasks.len());
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(15), t).await {
            Ok(Ok(r)) => subscribers.push(r),
            _ => ctx.stats.error("a subscriber did not end within 15 s"),
        }
    }
    let health = health.await.unwrap_or_else(|_| probes::HealthReport {
        latency: hdrhistogram::Histogram::new(3).expect("histogram"),
        failures: 0,
        first_failures: vec!["the probe thread failed".into()],
    });
    let _ = tokio::task::spawn_blocking(move || probes.join()).await;
    let samples = std::mem::take(&mut *lock(&samples));
    let baseline = probes::median_sample(&samples, baseline_at, baseline_at + WINDOW_S);
    let end = probes::median_sample(&samples, end_from, end_to);
    let log = probes::scan_log(&opts.server_log).map_err(|e| e.to_string());
    Outcome {
        ramp_s,
        ramp_complete,
        population,
        load_s,
        drain_s,
        all_drained,
        total_s: ctx.secs(),
        baseline_at,
        window_s: WINDOW_S,
        baseline,
        end,
        samples,
        publishers: publisher_reports,
        subscribers,
        health,
        kicks,
        attack,
        csrf,
        node,
        log,
        aborted,
    }
}
