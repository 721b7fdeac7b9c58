//! A run's plan: the scenario's sizes after defaults and checks, channel names, source
//! addresses, and the tokens the plan needs.

use std::net::Ipv4Addr;

use anyhow::bail;
use ssegate_loadgen::token::{Grants, Minter};
use ssegate_loadgen::wire::Url;

use crate::cli::{name, MercureMatcher, RunArgs, Scenario, Target};

/// The scenario's sizes after defaults.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub scenario: Scenario,
    pub url: Url,
    pub publish_url: Url,
    pub subscribers: u64,
    pub channels: u64,
    pub channel_offset: u64,
    pub prefix: String,
    pub rate: f64,
    pub duration: f64,
    pub publishers: usize,
    pub batch: usize,
    pub events: u64,
    pub settle: f64,
    /// ssegate-mercure: topic N is `mercure_topic_base` + channel N.
    pub mercure_topic_base: String,
    pub mercure_matcher: MercureMatcher,
}

impl Plan {
    pub fn new(a: &RunArgs) -> anyhow::Result<Plan> {
        let (subs, chans, rate, dur, pubs) = match a.scenario {
            Scenario::Fanout => (1_000, 1, 0.0, 10.0, 8),
            Scenario::Channels => (19_000, 1_000, 2_000.0, 30.0, 32),
            Scenario::Idle => (19_000, 1_000, 0.0, 3.0, 0),
            Scenario::Storm => (19_000, 1_000, 0.0, 0.0, 0),
            Scenario::Resume => (1, 1, 0.0, 0.0, 16),
        };
        let url = Url::parse(&a.url)?;
        let publish_url = match (&a.publish_url, a.target) {
            (Some(u), _) => Url::parse(u)?,
            (None, Target::Pushpin) => Url::parse("http://127.0.0.1:5561/publish/")?,
            (None, _) => url.clone(),
        };
        let mut plan = Plan {
            target: a.target,
            scenario: a.scenario,
            url,
            publish_url,
            subscribers: a.subscribers.unwrap_or(subs),
            channels: a.channels.unwrap_or(chans).max(1),
            channel_offset: a.channel_offset,
            prefix: a
                .channel_prefix
                .clone()
                .unwrap_or_else(|| format!("bench-{}", name(a.scenario))),
            rate: a.rate.unwrap_or(rate),
            duration: a.duration.unwrap_or(dur),
            publishers: a.publishers.unwrap_or(pubs),
            batch: a.batch.max(1),
            events: a.events.unwrap_or(10_000),
            settle: a.settle.unwrap_or(if a.scenario == Scenario::Idle {
                2.0
            } else {
                1.0
            }),
            mercure_topic_base: a.mercure_topic_base.clone(),
            mercure_matcher: a.mercure_matcher,
        };
        // One event per request: nchan's publish, and a Mercure update (one form, one topic).
        if matches!(plan.target, Target::Nchan | Target::SsegateMercure) {
            plan.batch = 1;
        }
        if plan.scenario == Scenario::Resume {
            plan.subscribers = 1;
            plan.channels = 1;
        }
        if plan.needs_tokens() && a.jwt_secret.is_none() {
            bail!(
                "--target {} needs --jwt-secret (or SSEGATE_BENCH_JWT_SECRET)",
                name(plan.target)
            );
        }
        let last_source = u32::from(a.source_base).saturating_add(a.source_count.max(1) - 1);
        if !a.source_base.is_loopback() || !Ipv4Addr::from(last_source).is_loopback() {
            bail!("--source-base/--source-count must stay within 127.0.0.0/8");
        }
        if !(plan.rate >= 0.0 && plan.rate.is_finite()) {
            bail!("--rate must be 0 or more");
        }
        if a.procs > 1 && a.sync_dir.is_none() {
            bail!("--procs > 1 needs --sync-dir");
        }
        if a.proc_index >= a.procs {
            bail!("--proc-index must be less than --procs");
        }
        if plan.scenario == Scenario::Resume && a.procs > 1 {
            bail!("the resume scenario runs in one process");
        }
        if a.subscribe_only {
            if !matches!(plan.scenario, Scenario::Fanout | Scenario::Channels) {
                bail!("--subscribe-only is for the fanout and channels scenarios");
            }
            if a.procs < 2 {
                bail!("--subscribe-only needs another process that publishes (--procs 2 or more, the same --sync-dir)");
            }
            plan.publishers = 0;
        }
        let fds = plan.subscribers + plan.publishers as u64 + 64;
        if let Some(limit) = open_files_limit() {
            if fds > limit {
                bail!(
                    "{} subscribers + {} publishers need about {fds} file descriptors but this process may open {limit}: raise `ulimit -n` or split the run over several processes (--subscribers, --channel-offset, --procs)",
                    plan.subscribers,
                    plan.publishers
                );
            }
        }
        Ok(plan)
    }

    pub fn channel(&self, local: u64) -> String {
        format!("{}-{}", self.prefix, self.channel_offset + local)
    }

    /// The Mercure topic of a channel: the topic base followed by the channel's name.
    pub fn topic(&self, channel: &str) -> String {
        format!("{}{channel}", self.mercure_topic_base)
    }

    /// Whether the target wants a token on every subscription and publish (ssegate's
    /// protocols; the peers run without authentication).
    pub fn needs_tokens(&self) -> bool {
        matches!(self.target, Target::Ssegate | Target::SsegateMercure)
    }
}

fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// One token per subscriber of this process: ssegate's allowed its own channel only, a
/// Mercure one (draft-07) `{"mercure":{"subscribe":["*"]}}` with a `sub` of its own.
pub fn mint_tokens(secret: &str, plan: &Plan, proc_index: usize) -> anyhow::Result<Vec<String>> {
    let minter = Minter::new(secret);
    (0..plan.subscribers)
        .map(|j| {
            let sub = format!("bench-p{proc_index}-u{j}");
            if plan.target == Target::SsegateMercure {
                return minter.mint_mercure(&sub, &["*"], &[], 7200);
            }
            let grants = Grants {
                subscribe: vec![plan.channel(j % plan.channels)],
                ..Grants::default()
            };
            minter.mint(&sub, grants, 7200)
        })
        .collect()
}

/// The publishers' token: may publish to every channel (Mercure: `{"publish":["*"]}`).
pub fn publisher_token(secret: &str, target: Target) -> anyhow::Result<String> {
    if target == Target::SsegateMercure {
        return Minter::new(secret).mint_mercure("bench-publisher", &[], &["*"], 7200);
    }
    let grants = Grants {
        publish: vec!["*".into()],
        ..Grants::default()
    };
    Minter::new(secret).mint("bench-publisher", grants, 7200)
}

/// Subscriber `j`'s source address: `count` consecutive addresses from `base`, in turn.
pub fn source_ip(base: Ipv4Addr, count: u32, j: u64) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add((j % count.max(1) as u64) as u32))
}
