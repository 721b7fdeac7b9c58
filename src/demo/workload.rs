//! The simulated ETL workload of `ssegate demo`: pipeline runs writing numbered log lines on
//! `logs:{workspace}:{workflow}`, and notifications (`notification.created|read|deleted`)
//! on `notifications:{user}`, targeted at that user.
//!
//! Everything is published over HTTP to the demo's own gateway, like any backend service
//! would. Exactly once across restarts: the next state is computed on a copy, published with
//! idempotency keys derived from it (`demo:logs:w1:f1:17`), and kept — and saved to
//! `demo-workload.json` in the data directory — only once the publish is acknowledged. A
//! publish that fails (or whose answer a crash lost) is redone with the same keys, and the
//! gateway appends nothing twice. The lines themselves are a function of (workflow, run,
//! step), so a redone publish carries the same content.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use ssegate::auth::{Grants, Minter};

/// A demo user: who they are and which workflows' logs they may read.
pub struct User {
    pub id: &'static str,
    pub name: &'static str,
    /// Indexes into [`WORKFLOWS`].
    pub workflows: &'static [usize],
}

pub const USERS: [User; 2] = [
    User {
        id: "a",
        name: "Alice",
        workflows: &[0, 1],
    },
    User {
        id: "b",
        name: "Bob",
        workflows: &[1],
    },
];

pub struct Workflow {
    pub workspace: &'static str,
    pub id: &'static str,
    pub name: &'static str,
    source: &'static str,
    target: &'static str,
}

impl Workflow {
    pub fn channel(&self) -> String {
        format!("logs:{}:{}", self.workspace, self.id)
    }
}

pub const WORKFLOWS: [Workflow; 2] = [
    Workflow {
        workspace: "w1",
        id: "f1",
        name: "Orders → warehouse",
        source: "postgres://shop/orders",
        target: "warehouse.orders",
    },
    Workflow {
        workspace: "w1",
        id: "f2",
        name: "Customer enrichment",
        source: "mongodb://crm/customers",
        target: "warehouse.customers",
    },
];

pub fn user(id: &str) -> Option<&'static User> {
    USERS.iter().find(|u| u.id == id)
}

/// Ticks a pipeline waits between two runs.
const IDLE_TICKS: u32 = 6;
/// Line ids kept per pipeline, so that a page can start a little in the past.
const HISTORY_LINES: usize = 100;
/// Notifications kept per user; the oldest beyond are deleted (`notification.deleted`).
const MAX_NOTIFICATIONS: usize = 20;

#[derive(Clone, Default, Serialize, Deserialize)]
struct Pipeline {
    /// Number of the last line published on the workflow's channel (1, 2, …; never reset).
    seq: u64,
    run: u64,
    /// Next step of the current run.
    step: u32,
    /// Ticks left before the next run starts.
    idle: u32,
    /// (publish batch number, event id) of the latest lines, oldest first.
    recent: VecDeque<(u64, String)>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Notification {
    pub id: String,
    pub title: String,
    pub body: String,
    pub level: String,
    pub time: String,
    pub read: bool,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct State {
    pipelines: Vec<Pipeline>,
    /// Per user, oldest first.
    notifications: BTreeMap<String, Vec<Notification>>,
    next_notification: u64,
    /// Publish batches acknowledged so far.
    batches: u64,
    /// The id of the last event acknowledged: the state reflects everything up to here.
    last_event_id: Option<String>,
}

/// One event to publish, and what its id means for the state.
struct Out {
    channel: String,
    kind: &'static str,
    data: Value,
    key: String,
    users: Option<Vec<String>>,
    pipeline: Option<usize>,
}

/// What a page loads before streaming (`GET /demo/session`).
pub struct Snapshot {
    pub notifications: Vec<Notification>,
    /// Everything up to this id is reflected in `notifications`.
    pub last_event_id: Option<String>,
    /// Resume here to replay the latest lines of the user's workflows.
    pub history_from: Option<String>,
}

pub struct Workload {
    publish_url: String,
    http: reqwest::Client,
    minter: Minter,
    path: PathBuf,
    /// Held across a publish: the state changes only once its events are acknowledged, and
    /// one change at a time.
    state: Mutex<State>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no such notification")]
    NotFound,
    #[error("the gateway did not take the event: {0}")]
    Publish(String),
}

impl Workload {
    /// Loads the saved state from `data_dir` (or starts afresh).
    pub fn new(base_url: &str, minter: Minter, data_dir: &std::path::Path) -> Self {
        let path = data_dir.join("demo-workload.json");
        let mut state: State = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        state.pipelines.resize_with(WORKFLOWS.len(), || Pipeline {
            run: 1,
            ..Pipeline::default()
        });
        Self {
            publish_url: format!("{base_url}/v1/publish"),
            http: reqwest::Client::new(),
            minter,
            path,
            state: Mutex::new(state),
        }
    }

    /// Advances every pipeline by one step each `tick` until `shutdown`.
    pub async fn run(&self, tick: Duration, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let wait = if failures == 0 {
                tick
            } else {
                tick.max(Duration::from_millis(200 * u64::from(failures.min(10))))
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match self.change(|st, outs| st.tick(outs)).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(50) {
                        tracing::warn!(error = %e, failures, "demo workload: publish failed; retrying");
                    }
                }
            }
        }
    }

    pub async fn snapshot(&self, user: &User) -> Snapshot {
        let st = self.state.lock().await;
        let rings = || user.workflows.iter().map(|&w| &st.pipelines[w].recent);
        // Until the pipelines have written that many lines: from the start of the log ("0",
        // before every event).
        let history_from = if rings().all(|r| r.len() >= HISTORY_LINES) {
            rings()
                .filter_map(|r| r.front())
                .min_by_key(|(batch, _)| *batch)
                .map(|(_, id)| id.clone())
        } else {
            Some("0".into())
        };
        Snapshot {
            notifications: st.notifications.get(user.id).cloned().unwrap_or_default(),
            last_event_id: st.last_event_id.clone(),
            history_from,
        }
    }

    /// A notification for `user` from the bell's "send a test notification".
    pub async fn notify_test(&self, user: &str) -> Result<(), ActionError> {
        self.change(|st, outs| {
            let n = st.next_notification + 1;
            st.notify(
                user,
                format!("Test notification #{n}"),
                "Sent from the bell menu.".into(),
                "info",
                outs,
            );
            Ok(())
        })
        .await
        .map_err(|e| ActionError::Publish(e.to_string()))
    }

    pub async fn mark_read(&self, user: &str, id: &str) -> Result<(), ActionError> {
        self.user_action(user, id, |st, outs| {
            let list = st.notifications.entry(user.to_owned()).or_default();
            let n = list.iter_mut().find(|n| n.id == id).expect("checked");
            if !n.read {
                n.read = true;
                outs.push(notification_event(user, "notification.read", n, "read"));
            }
        })
        .await
    }

    pub async fn delete(&self, user: &str, id: &str) -> Result<(), ActionError> {
        self.user_action(user, id, |st, outs| {
            let list = st.notifications.entry(user.to_owned()).or_default();
            let at = list.iter().position(|n| n.id == id).expect("checked");
            let n = list.remove(at);
            outs.push(notification_event(
                user,
                "notification.deleted",
                &n,
                "deleted",
            ));
        })
        .await
    }

    async fn user_action(
        &self,
        user: &str,
        id: &str,
        f: impl FnOnce(&mut State, &mut Vec<Out>),
    ) -> Result<(), ActionError> {
        let mut found = false;
        self.change(|st, outs| {
            found = st
                .notifications
                .get(user)
                .is_some_and(|l| l.iter().any(|n| n.id == id));
            if found {
                f(st, outs);
            }
            Ok(())
        })
        .await
        .map_err(|e| ActionError::Publish(e.to_string()))?;
        if found {
            Ok(())
        } else {
            Err(ActionError::NotFound)
        }
    }

    /// Computes the next state on a copy, publishes its events, and keeps (and saves) it
    /// only once they are acknowledged.
    async fn change(
        &self,
        f: impl FnOnce(&mut State, &mut Vec<Out>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let mut outs = Vec::new();
        f(&mut next, &mut outs)?;
        if outs.is_empty() {
            *st = next;
            return Ok(());
        }
        let ids = self.publish(&outs).await?;
        next.batches += 1;
        for (out, id) in outs.iter().zip(&ids) {
            if let Some(p) = out.pipeline {
                let recent = &mut next.pipelines[p].recent;
                recent.push_back((next.batches, id.clone()));
                if recent.len() > HISTORY_LINES {
                    recent.pop_front();
                }
            }
        }
        next.last_event_id = ids.last().cloned();
        *st = next;
        self.save(&st);
        Ok(())
    }

    async fn publish(&self, outs: &[Out]) -> anyhow::Result<Vec<String>> {
        let body: Vec<Value> = outs
            .iter()
            .map(|o| {
                let mut e =
                    json!({"channel": o.channel, "type": o.kind, "data": o.data, "id": o.key});
                if let Some(users) = &o.users {
                    e["users"] = json!(users);
                }
                e
            })
            .collect();
        let token = self.minter.mint(
            "demo-etl",
            Grants {
                publish: vec!["logs:**".into(), "notifications:**".into()],
                ..Grants::default()
            },
            300,
        )?;
        let res = self
            .http
            .post(&self.publish_url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .json(&body)
            .send()
            .await
            .context("cannot reach the gateway")?;
        let status = res.status();
        let answer: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!("publish answered {status}: {answer}");
        }
        let ids: Vec<String> = serde_json::from_value(answer["ids"].clone())
            .context("publish answered without ids")?;
        anyhow::ensure!(
            ids.len() == outs.len(),
            "publish answered {} ids",
            ids.len()
        );
        Ok(ids)
    }

    /// Written atomically (rename); not fsync'd: a process crash keeps what was written, and
    /// after a machine crash the idempotency keys make a replayed step append nothing.
    fn save(&self, st: &State) {
        let tmp = self.path.with_extension("json.tmp");
        let result = serde_json::to_vec(st)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = result {
            tracing::warn!(error = %e, path = %self.path.display(), "demo workload: cannot save its state");
        }
    }
}

impl State {
    /// One step of every pipeline: a log line while a run is on, a notification to the
    /// workflow's users when it ends.
    fn tick(&mut self, outs: &mut Vec<Out>) -> anyhow::Result<()> {
        for (w, wf) in WORKFLOWS.iter().enumerate() {
            let p = &mut self.pipelines[w];
            if p.idle > 0 {
                p.idle -= 1;
                continue;
            }
            let (run, step) = (p.run, p.step);
            let script = run_script(w, run);
            let line = &script[step as usize];
            p.seq += 1;
            let channel = wf.channel();
            outs.push(Out {
                key: format!("demo:{channel}:{}", p.seq),
                channel,
                kind: "log.created",
                data: json!({
                    "seq": p.seq, "run": run, "step": step + 1, "steps": script.len(),
                    "stage": line.stage, "level": line.level, "line": line.text,
                }),
                users: None,
                pipeline: Some(w),
            });
            p.step += 1;
            if p.step as usize == script.len() {
                p.run += 1;
                p.step = 0;
                p.idle = IDLE_TICKS;
                let failed = line.level == "error";
                let title = format!(
                    "{} run #{run} {}",
                    wf.name,
                    if failed { "failed" } else { "succeeded" }
                );
                for u in USERS.iter().filter(|u| u.workflows.contains(&w)) {
                    let level = if failed { "error" } else { "success" };
                    self.notify(u.id, title.clone(), line.text.clone(), level, outs);
                }
            }
        }
        Ok(())
    }

    fn notify(
        &mut self,
        user: &str,
        title: String,
        body: String,
        level: &str,
        outs: &mut Vec<Out>,
    ) {
        self.next_notification += 1;
        let n = Notification {
            id: format!("n{}", self.next_notification),
            title,
            body,
            level: level.into(),
            time: ssegate::time::rfc3339_ms(ssegate::time::now_ms()),
            read: false,
        };
        outs.push(notification_event(
            user,
            "notification.created",
            &n,
            "created",
        ));
        let list = self.notifications.entry(user.to_owned()).or_default();
        list.push(n);
        while list.len() > MAX_NOTIFICATIONS {
            let old = list.remove(0);
            outs.push(notification_event(
                user,
                "notification.deleted",
                &old,
                "deleted",
            ));
        }
    }
}

fn notification_event(user: &str, kind: &'static str, n: &Notification, what: &str) -> Out {
    let data = if kind == "notification.created" {
        json!(n)
    } else {
        json!({ "id": n.id })
    };
    Out {
        channel: format!("notifications:{user}"),
        kind,
        data,
        key: format!("demo:{user}:{}:{what}", n.id),
        users: Some(vec![user.to_owned()]),
        pipeline: None,
    }
}

struct Line {
    stage: &'static str,
    level: &'static str,
    text: String,
}

/// The lines of run `run` of workflow `w`: the same every time they are asked for.
fn run_script(w: usize, run: u64) -> Vec<Line> {
    let wf = &WORKFLOWS[w];
    let mut rng = SplitMix(run.wrapping_mul(31).wrapping_add(w as u64 + 1));
    let batches = 3 + rng.below(4);
    let rows_per_batch = 1000 * (1 + rng.below(5));
    let fails = rng.below(6) == 0;
    let mut lines = Vec::new();
    let mut add = |stage, level, text: String| lines.push(Line { stage, level, text });
    add(
        "run",
        "info",
        format!("run #{run} started (trigger: schedule)"),
    );
    add("extract", "info", format!("connecting to {}", wf.source));
    for b in 1..=batches {
        add(
            "extract",
            "info",
            format!("read batch {b}/{batches} ({rows_per_batch} rows)"),
        );
    }
    let rejected = rng.below(20);
    add(
        "transform",
        "info",
        format!("validated {} rows", batches * rows_per_batch),
    );
    if rejected > 12 {
        add(
            "transform",
            "warn",
            format!("{rejected} rows rejected: missing customer_id"),
        );
    }
    add(
        "transform",
        "info",
        format!("deduplicated: {} rows dropped", rng.below(50)),
    );
    for b in 1..=batches {
        if fails && b == batches {
            add(
                "load",
                "warn",
                format!("timeout writing batch {b}/{batches}; retrying"),
            );
            add(
                "run",
                "error",
                format!("run #{run} failed: {} is locked by another job", wf.target),
            );
            return lines;
        }
        add(
            "load",
            "info",
            format!("wrote batch {b}/{batches} to {}", wf.target),
        );
    }
    let secs = 2 + rng.below(30);
    add(
        "run",
        "info",
        format!(
            "run #{run} succeeded in {secs}.{}s ({} rows)",
            rng.below(10),
            batches * rows_per_batch - rejected
        ),
    );
    lines
}

/// A tiny deterministic generator: the same run always gets the same lines.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_the_same_every_time_and_ends_with_its_outcome() {
        for w in 0..WORKFLOWS.len() {
            for run in 1..50 {
                let a: Vec<String> = run_script(w, run).into_iter().map(|l| l.text).collect();
                let b: Vec<String> = run_script(w, run).into_iter().map(|l| l.text).collect();
                assert_eq!(a, b);
                let last = a.last().unwrap();
                assert!(
                    last.contains("succeeded") || last.contains("failed"),
                    "{last}"
                );
            }
        }
    }

    #[test]
    fn ticks_number_lines_consecutively_and_notify_the_workflows_users() {
        let mut st = State {
            pipelines: vec![
                Pipeline {
                    run: 1,
                    ..Pipeline::default()
                };
                WORKFLOWS.len()
            ],
            ..State::default()
        };
        let mut seqs: Vec<Vec<u64>> = vec![Vec::new(); WORKFLOWS.len()];
        let mut notified = BTreeMap::<String, usize>::new();
        for _ in 0..200 {
            let mut outs = Vec::new();
            st.tick(&mut outs).unwrap();
            for o in outs {
                match o.pipeline {
                    Some(w) => seqs[w].push(o.data["seq"].as_u64().unwrap()),
                    None if o.kind == "notification.created" => {
                        *notified.entry(o.users.unwrap()[0].clone()).or_default() += 1
                    }
                    None => {}
                }
            }
        }
        for s in &seqs {
            assert!(s.len() > 50);
            assert!(s.windows(2).all(|w| w[1] == w[0] + 1));
        }
        // Alice sees both workflows, Bob only the second: Alice is told of more runs.
        assert!(
            notified["a"] > notified["b"] && notified["b"] > 0,
            "{notified:?}"
        );
    }
}
