//! Access control, property-tested: random users with random grants (literal segments, `*`,
//! `**`, `{sub}`, and claim-derived rules), random subscriptions (channels and patterns) and
//! random events (some targeted at users). Checked against a model written independently of
//! the gateway's matcher:
//!
//! - a subscription is accepted exactly when one grant covers every channel it can match;
//! - no user ever receives an event outside its grants or its targeting;
//! - every event a user's accepted subscriptions and targeting permit is delivered, once, in
//!   log order.
//!
//! 10,000 cases run in-process through the real JWT verification, grant derivation and hub
//! (dispatcher and log catch-up paths); a sample runs over real HTTP streams of the real
//! server binary.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{json, Value};
use ssegate::auth::{Auth, Principal};
use ssegate::channel::validate_subscription;
use ssegate::config::{AuthConfig, GrantRules};
use ssegate::hub::{ConnInfo, Cursor, CursorOptions, Hub};
use ssegate::log::memory::MemoryLog;
use ssegate::log::{AppendItem, EventLog, LogOptions, NewEvent};
use ssegate::metrics::Metrics;
use tokio_util::sync::CancellationToken;

const USERS: [&str; 3] = ["u1", "u2", "u3"];
/// Segments of generated channels (after the root segment).
const SEGS: [&str; 4] = ["a", "b", "u1", "u2"];
/// The claim-derived rule every case runs with: `team` is an array claim.
const RULE: &str = "{claims.root}:{claims.team}:**";

#[derive(Debug, Clone)]
struct UserSpec {
    name: &'static str,
    grants: Vec<String>,
    teams: Vec<&'static str>,
    subs: Vec<String>,
}

#[derive(Debug, Clone)]
struct EventSpec {
    /// Segments after the root.
    channel: Vec<&'static str>,
    users: Option<Vec<&'static str>>,
}

#[derive(Debug, Clone)]
struct Case {
    users: Vec<UserSpec>,
    events: Vec<EventSpec>,
    /// Deliver through the log catch-up path (connections opened after the events) instead
    /// of the live dispatcher.
    replay: bool,
}

fn seg(grant: bool) -> BoxedStrategy<&'static str> {
    if grant {
        prop_oneof![
            3 => proptest::sample::select(SEGS.to_vec()),
            1 => Just("{sub}"),
            2 => Just("*"),
        ]
        .boxed()
    } else {
        prop_oneof![
            3 => proptest::sample::select(SEGS.to_vec()),
            1 => Just("*"),
        ]
        .boxed()
    }
}

/// A pattern after the root: 1–3 segments and maybe a final `**`.
fn pattern(grant: bool) -> impl Strategy<Value = Vec<&'static str>> {
    (proptest::collection::vec(seg(grant), 0..3), any::<bool>()).prop_map(|(mut segs, dstar)| {
        if dstar || segs.is_empty() {
            segs.push("**");
        }
        segs
    })
}

fn user(name: &'static str) -> impl Strategy<Value = UserSpec> {
    (
        proptest::collection::vec(pattern(true), 0..4),
        proptest::sample::subsequence(vec!["a", "b"], 0..=2),
        proptest::collection::vec(pattern(false), 1..4),
    )
        .prop_map(move |(grants, teams, subs)| UserSpec {
            name,
            grants: grants.into_iter().map(|g| g.join(":")).collect(),
            teams,
            subs: subs.into_iter().map(|s| s.join(":")).collect(),
        })
}

fn event() -> impl Strategy<Value = EventSpec> {
    (
        proptest::collection::vec(proptest::sample::select(SEGS.to_vec()), 1..4),
        proptest::option::weighted(0.3, proptest::sample::subsequence(USERS.to_vec(), 0..=2)),
    )
        .prop_map(|(channel, users)| EventSpec { channel, users })
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::sample::subsequence(USERS.to_vec(), 1..=3),
        proptest::collection::vec(event(), 1..12),
        any::<bool>(),
    )
        .prop_flat_map(|(names, events, replay)| {
            let users: Vec<_> = names.into_iter().map(user).collect();
            (users, Just(events), Just(replay))
        })
        .prop_map(|(users, events, replay)| Case {
            users,
            events,
            replay,
        })
}

// ---- The model: written without the gateway's matcher. ----

/// Whether grant-or-subscription segments `pat` match channel segments `ch` for `user`.
fn model_match(pat: &[&str], ch: &[&str], user: &str) -> bool {
    match (pat.first(), ch.first()) {
        (None, None) => true,
        (Some(&"**"), Some(_)) => pat.len() == 1,
        (Some(&"*"), Some(_)) => model_match(&pat[1..], &ch[1..], user),
        (Some(p), Some(c)) => {
            p.replace("{sub}", user) == *c && model_match(&pat[1..], &ch[1..], user)
        }
        _ => false,
    }
}

fn split(s: &str) -> Vec<&str> {
    s.split(':').collect()
}

/// Every channel under `root` with 1 to 4 further segments over `SEGS` — enough to tell any
/// two of the generated patterns apart.
fn universe(root: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut level = vec![root.to_owned()];
    for _ in 0..4 {
        level = level
            .iter()
            .flat_map(|p| SEGS.iter().map(move |s| format!("{p}:{s}")))
            .collect();
        out.extend(level.iter().cloned());
    }
    out
}

/// The user's grants as the model sees them: the claim's patterns plus the rule expanded by
/// hand, plus the sentinel grant.
fn model_grants(u: &UserSpec, root: &str) -> Vec<String> {
    let mut g: Vec<String> = u.grants.iter().map(|p| format!("{root}:{p}")).collect();
    g.extend(u.teams.iter().map(|t| format!("{root}:{t}:**")));
    g.push("z:{sub}".into());
    g
}

fn model_covers(grant: &str, sub: &str, user: &str, universe: &[String]) -> bool {
    let (g, s) = (split(grant), split(sub));
    universe
        .iter()
        .map(|c| split(c))
        .filter(|c| model_match(&s, c, user))
        .all(|c| model_match(&g, &c, user))
}

fn claims(u: &UserSpec, root: &str) -> Value {
    let grants: Vec<String> = u
        .grants
        .iter()
        .map(|p| format!("{root}:{p}"))
        .chain(["z:{sub}".to_owned()])
        .collect();
    json!({
        "sub": u.name,
        "exp": ssegate::time::now_ms() / 1000 + 600,
        "root": root,
        "team": u.teams,
        "ssegate": {"subscribe": grants},
    })
}

fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// What the model says about one user: accepted subscriptions, and the indexes of the
/// events (in publish order) it must receive.
struct Expect {
    accepted: Vec<String>,
    events: Vec<usize>,
    grants: Vec<String>,
}

fn expect(u: &UserSpec, events: &[EventSpec], root: &str, universe: &[String]) -> Expect {
    let grants = model_grants(u, root);
    let accepted: Vec<String> = u
        .subs
        .iter()
        .map(|s| format!("{root}:{s}"))
        .filter(|s| grants.iter().any(|g| model_covers(g, s, u.name, universe)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let events = events
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            let ch: Vec<&str> = std::iter::once(root)
                .chain(e.channel.iter().copied())
                .collect();
            accepted.iter().any(|s| model_match(&split(s), &ch, u.name))
                && e.users.as_ref().is_none_or(|us| us.contains(&u.name))
        })
        .map(|(i, _)| i)
        .collect();
    Expect {
        accepted,
        events,
        grants,
    }
}

// ---- In-process run through the real auth and hub. ----

fn auth() -> Auth {
    let cfg = AuthConfig {
        jwt_secret: Some(SECRET.into()),
        grants: GrantRules {
            subscribe: vec![RULE.into()],
            publish: vec![],
        },
        ..AuthConfig::default()
    };
    Auth::new(&cfg, reqwest::Client::new(), Arc::new(Metrics::default())).unwrap()
}

/// Splits a chunk of the stream into (has id, event type, data) frames.
fn frames(chunk: &Bytes) -> Vec<(bool, String, String)> {
    let text = std::str::from_utf8(chunk).unwrap();
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty() && !f.starts_with(':') && !f.starts_with("retry:"))
        .map(|f| {
            let mut id = false;
            let (mut ev, mut data) = (String::new(), String::new());
            for line in f.lines() {
                if line.starts_with("id: ") {
                    id = true;
                } else if let Some(v) = line.strip_prefix("event: ") {
                    ev = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v.to_owned();
                }
            }
            (id, ev, data)
        })
        .collect()
}

async fn run_in_process(auth: &Auth, case: &Case) -> Result<(), TestCaseError> {
    let root = "r";
    let universe = universe(root);
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new(LogOptions {
        retention_events: 1_000_000,
        retention_age_ms: 0,
        dedupe_window_ms: 1_000,
        file_cache_bytes: 0,
    }));
    let hub = Hub::new(log.clone(), 64);
    let shutdown = CancellationToken::new();

    let mut principals: Vec<(Principal, Vec<String>, Expect)> = Vec::new();
    for u in &case.users {
        let p = auth
            .verify_jwt(&sign(&claims(u, root)))
            .await
            .expect("valid token");
        let exp = expect(u, &case.events, root, &universe);
        // The gateway's decision for each requested subscription, as `check_channels` makes it.
        let mut accepted = BTreeSet::new();
        for s in u.subs.iter().map(|s| format!("{root}:{s}")) {
            prop_assert!(
                validate_subscription(&s).is_ok(),
                "generated {} is valid",
                s
            );
            if p.may_subscribe(&s) {
                accepted.insert(s);
            }
        }
        let accepted: Vec<String> = accepted.into_iter().collect();
        prop_assert_eq!(
            &accepted,
            &exp.accepted,
            "accepted subscriptions of {}",
            u.name
        );
        principals.push((p, accepted, exp));
    }

    let append = |log: Arc<dyn EventLog>| async move {
        let mut items: Vec<AppendItem> = case
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| AppendItem {
                key: None,
                events: vec![NewEvent::new(
                    format!("{root}:{}", e.channel.join(":")),
                    "t".into(),
                    serde_json::value::RawValue::from_string(format!("{{\"i\":{i}}}")).unwrap(),
                    e.users
                        .as_ref()
                        .map(|us| us.iter().map(|u| u.to_string()).collect()),
                    0,
                    usize::MAX,
                )
                .unwrap()],
            })
            .collect();
        // One sentinel per user, last.
        items.extend(case.users.iter().map(|u| AppendItem {
            key: None,
            events: vec![NewEvent::new(
format!("z:{}", u.name),
"sentinel".into(),
serde_json::value::RawValue::from_string("null".into()).unwrap(),
None,
0,
usize::MAX,
)
.unwrap()],
        }));
        log.append(items, 0).await.expect("append");
    };

    if case.replay {
        append(log.clone()).await;
    } else {
        tokio::spawn(hub.clone().run(shutdown.clone()));
        // Current-thread runtime: let the dispatcher reach its first wait at the head.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }
    let mut cursors = Vec::new();
    for (p, accepted, _) in &principals {
        let mut subs = accepted.clone();
        subs.push(format!("z:{}", p.user));
        let reg = hub.register(p.user.clone(), &subs, ConnInfo::default());
        cursors.push(Cursor::new(
            hub.clone(),
            reg,
            ssegate::log::Position::ZERO,
            case.replay,
            Bytes::new(),
            CursorOptions {
                heartbeat: Duration::from_secs(3600),
                catchup_batch: 5,
                expires_at: None,
                shutdown: shutdown.clone(),
            },
        ));
    }
    if !case.replay {
        append(log.clone()).await;
    }

    for ((p, _, exp), cursor) in principals.iter().zip(cursors.iter_mut()) {
        let mut got: Vec<usize> = Vec::new();
        'read: loop {
            let chunk = tokio::time::timeout(Duration::from_secs(10), cursor.next_chunk())
                .await
                .expect("the sentinel arrives")
                .expect("stream open");
            for (has_id, ev, data) in frames(&chunk) {
                let env: Value = serde_json::from_str(&data).unwrap();
                if ev == "sentinel" {
                    let own = format!("z:{}", p.user);
                    prop_assert_eq!(env["channel"].as_str(), Some(own.as_str()));
                    break 'read;
                }
                prop_assert!(has_id, "live and replayed events carry ids");
                // Safety, independently of the accepted set: within a grant and targeted.
                let channel = env["channel"].as_str().unwrap().to_owned();
                prop_assert!(
                    exp.grants
                        .iter()
                        .any(|g| model_match(&split(g), &split(&channel), &p.user)),
                    "{} received {} outside its grants {:?}",
                    p.user,
                    channel,
                    exp.grants
                );
                got.push(env["data"]["i"].as_u64().unwrap() as usize);
            }
        }
        for i in &got {
            let users = &case.events[*i].users;
            prop_assert!(
                users
                    .as_ref()
                    .is_none_or(|us| us.contains(&p.user.as_str())),
                "{} received event {} targeted at {:?}",
                p.user,
                i,
                users
            );
        }
        prop_assert_eq!(&got, &exp.events, "events delivered to {}", p.user);
    }
    shutdown.cancel();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn no_user_receives_an_event_outside_its_grants_and_every_permitted_event_arrives(c in case()) {
        thread_local! {
            static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            static AUTH: Auth = auth();
        }
        RT.with(|rt| AUTH.with(|auth| rt.block_on(run_in_process(auth, &c))))?;
    }
}

// ---- A sample over real HTTP streams. ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_holds_over_real_http_streams() {
    let server = Server::start(&[("AUTH__GRANTS__SUBSCRIBE", &format!("[\"{RULE}\"]"))]);
    let publisher = publisher();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    });
    let cases: Vec<Case> = (0..24)
        .map(|_| case().new_tree(&mut runner).unwrap().current())
        .collect();
    for (n, case) in cases.iter().enumerate() {
        // Each case in its own namespace, so cases never see each other's events.
        let root = format!("h{n}");
        let universe = universe(&root);
        let mut streams = Vec::new();
        for u in &case.users {
            let token = sign(&claims(u, &root));
            let exp = expect(u, &case.events, &root, &universe);
            // A request with a refused subscription is refused whole (403), changing nothing.
            let refused: Vec<String> = u
                .subs
                .iter()
                .map(|s| format!("{root}:{s}"))
                .filter(|s| !exp.accepted.contains(s))
                .collect();
            if let Some(r) = refused.first() {
                let url = format!("{}/v1/stream?channel={r}", server.url);
                let sse = Sse::connect(&url, &[bearer(&token)]).await;
                assert_eq!(
                    sse.status, 403,
                    "case {n}: {} may not subscribe to {r}",
                    u.name
                );
            }
            let mut subs: Vec<String> = exp.accepted.clone();
            subs.push(format!("z:{}", u.name));
            let refs: Vec<&str> = subs.iter().map(String::as_str).collect();
            let (sse, _) = Sse::open(&server.stream_url(&refs), &[bearer(&token)]).await;
            streams.push((u.name, sse, exp));
        }
        let mut batch: Vec<Value> = case
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut ev = json!({"channel": format!("{root}:{}", e.channel.join(":")), "type": "t", "data": {"i": i}});
                if let Some(us) = &e.users {
                    ev["users"] = json!(us);
                }
                ev
            })
            .collect();
        batch.extend(case.users.iter().map(
            |u| json!({"channel": format!("z:{}", u.name), "type": "sentinel", "data": null}),
        ));
        let (status, body) = server.publish(&publisher, &Value::Array(batch)).await;
        assert_eq!(status, 200, "{body}");
        for (name, sse, exp) in &mut streams {
            let mut got = Vec::new();
            loop {
                let e = sse.next(Duration::from_secs(20)).await.expect("sentinel");
                if e.event == "sentinel" {
                    break;
                }
                let env = envelope(&e);
                let channel = env["channel"].as_str().unwrap();
                assert!(
                    exp.grants
                        .iter()
                        .any(|g| model_match(&split(g), &split(channel), name)),
                    "case {n}: {name} received {channel} outside its grants"
                );
                got.push(env["data"]["i"].as_u64().unwrap() as usize);
            }
            assert_eq!(got, exp.events, "case {n}: events delivered to {name}");
        }
    }
}
