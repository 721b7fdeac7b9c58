//! One model-based property suite for every log backend: random interleavings of appends
//! (single, batched, multi-channel, with idempotency keys), filtered reads from any position,
//! clock ticks, retention passes and — for the file and redis logs — close-and-reopen, each
//! checked against a plain in-memory model of what the log promises (see `ssegate::log`).
//!
//! The model numbers events 1, 2, 3, …. The memory and file logs must issue exactly those
//! positions; the redis log issues stream ids (`<ms>-<seq>`), so there the k-th event it
//! appended is compared with the model's k-th, and reads start from its real positions.
//!
//! The nats log follows the same model with the semantics its module documents
//! (`ssegate::log::nats`): positions `<stream seq>-<slot>` (mapped like redis), idempotency
//! per append rather than per item ([`DedupeScope::PerAppend`]), retention counting appends
//! rather than events ([`RetentionUnit::Appends`]), and no age retention or dedupe expiry in
//! the model (the server applies both on its own clock; `nats_log.rs` tests them).

mod engines;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::value::RawValue;
use ssegate::log::config::EngineConfig;
use ssegate::log::file::{FileLog, FileOptions, SyncMode};
use ssegate::log::memory::MemoryLog;
use ssegate::log::nats::NatsLog;
use ssegate::log::redis::RedisLog;
use ssegate::log::{AppendItem, Event, EventLog, LogOptions, NewEvent, Position};

const CHANNELS: [&str; 3] = ["a", "b:1", "b:2"];
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];

#[derive(Debug, Clone)]
enum Op {
    /// Items: (idempotency key index, channel indexes of its events).
    Append(Vec<(Option<usize>, Vec<usize>)>),
    /// Read after a position picked in `0..=head + 2` (scaled from `pick`), at most `max`
    /// events, keeping those on channels whose bit is set in `mask`.
    Read {
        pick: u16,
        max: usize,
        mask: u8,
    },
    /// History of one channel in `(after, through]` (both picked like `Read`'s), at most
    /// `limit`, keeping every event or (`odd`) those whose number is odd.
    History {
        channel: usize,
        after: u16,
        through: u16,
        limit: usize,
        odd: bool,
    },
    Tick(u64),
    Retain,
    /// Close and reopen (file and redis logs; a no-op for memory).
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let item = (
        proptest::option::weighted(0.4, 0..KEYS.len()),
        proptest::collection::vec(0..CHANNELS.len(), 1..3),
    );
    prop_oneof![
        4 => proptest::collection::vec(item, 1..4).prop_map(Op::Append),
        4 => (any::<u16>(), 1usize..6, 1u8..8).prop_map(|(pick, max, mask)| Op::Read { pick, max, mask }),
        3 => (0..CHANNELS.len(), any::<u16>(), any::<u16>(), 0usize..5, any::<bool>()).prop_map(
            |(channel, after, through, limit, odd)| Op::History { channel, after, through, limit, odd }
        ),
        2 => (1u64..80).prop_map(Op::Tick),
        1 => Just(Op::Retain),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Stored {
    pos: u64,
    channel: String,
    data: String,
    time_ms: u64,
}

/// Whom an idempotency key protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum DedupeScope {
    /// Each item, by its own key (memory, file, redis).
    #[default]
    PerItem,
    /// An append as a whole, by the list of its items' keys (nats: one JetStream message per
    /// append, one `Nats-Msg-Id`).
    PerAppend,
}

/// What retention by count counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum RetentionUnit {
    #[default]
    Events,
    /// Appends, whatever their size (nats: `max_msgs`); goes with
    /// [`DedupeScope::PerAppend`], whose path counts them.
    Appends,
}

/// The positions an append reports for one item.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    /// Those of the model's events with these numbers.
    Events(Vec<u64>),
    /// Exactly these (a nats duplicate whose original message retention dropped: rebuilt
    /// from the request's shape).
    Real(Vec<Position>),
}

/// Positions the nats log gives the events of an append of `counts` stored at `seq`
/// (`lo` = 2 × index, + 1 for the message's last event; see `ssegate::log::nats`).
fn nats_positions(seq: u64, counts: &[usize]) -> Vec<Vec<Position>> {
    let total: usize = counts.iter().sum();
    let mut idx = 0u64;
    counts
        .iter()
        .map(|&c| {
            (0..c)
                .map(|_| {
                    idx += 1;
                    Position {
                        hi: seq,
                        lo: 2 * (idx - 1) + u64::from(idx == total as u64),
                    }
                })
                .collect()
        })
        .collect()
}

/// What the log promises, written the obvious way.
#[derive(Default)]
struct Model {
    opts: Option<LogOptions>,
    dedupe: DedupeScope,
    unit: RetentionUnit,
    /// With [`DedupeScope::PerAppend`]: the list of keys → (expiry, each item's positions,
    /// the append's number).
    appends: HashMap<String, (u64, Vec<Vec<u64>>, u64)>,
    /// Appends stored so far (a nats stream sequence).
    stored_appends: u64,
    /// With [`RetentionUnit::Appends`]: the event count of each retained append, oldest first.
    sizes: std::collections::VecDeque<usize>,
    /// Retained events, oldest first; positions `trimmed + 1 ..= last`.
    events: Vec<Stored>,
    last: u64,
    trimmed: u64,
    /// key → (expiry, positions).
    keys: HashMap<String, (u64, Vec<u64>)>,
    counter: u64,
}

impl Model {
    fn opts(&self) -> LogOptions {
        self.opts.expect("options")
    }

    fn append(&mut self, items: &[AppendItem], now: u64) -> Vec<(Want, bool)> {
        self.keys.retain(|_, (exp, _)| *exp > now);
        self.appends.retain(|_, (exp, _, _)| *exp > now);
        if self.dedupe == DedupeScope::PerAppend {
            return self.append_whole(items, now);
        }
        let mut out = Vec::new();
        for item in items {
            if let Some((_, pos)) = item.key.as_ref().and_then(|k| self.keys.get(k)) {
                out.push((Want::Events(pos.clone()), true));
                continue;
            }
            let mut positions = Vec::new();
            for e in &item.events {
                self.last += 1;
                positions.push(self.last);
                self.events.push(Stored {
                    pos: self.last,
                    channel: e.channel.clone(),
                    data: e.data.get().to_owned(),
                    time_ms: e.time_ms,
                });
            }
            if let Some(key) = &item.key {
                let exp = now + self.opts().dedupe_window_ms;
                self.keys.insert(key.clone(), (exp, positions.clone()));
            }
            out.push((Want::Events(positions), false));
        }
        self.trim_to_count();
        out
    }

    /// [`DedupeScope::PerAppend`]: the append is a duplicate when an append with the same
    /// list of keys (at least one) is remembered; its positions are then the original's, or,
    /// when retention dropped the original, those of the request's shape at its place.
    fn append_whole(&mut self, items: &[AppendItem], now: u64) -> Vec<(Want, bool)> {
        let keys: Vec<Option<&str>> = items.iter().map(|i| i.key.as_deref()).collect();
        let id = keys
            .iter()
            .any(Option::is_some)
            .then(|| format!("{keys:?}"));
        if let Some((_, original, number)) = id.as_ref().and_then(|id| self.appends.get(id)) {
            let retained = original
                .iter()
                .flatten()
                .next()
                .is_some_and(|p| *p > self.trimmed);
            if retained {
                return original
                    .iter()
                    .map(|p| (Want::Events(p.clone()), true))
                    .collect();
            }
            let counts: Vec<usize> = items.iter().map(|i| i.events.len()).collect();
            return nats_positions(*number, &counts)
                .into_iter()
                .map(|p| (Want::Real(p), true))
                .collect();
        }
        let mut per_item = Vec::new();
        for item in items {
            let mut positions = Vec::new();
            for e in &item.events {
                self.last += 1;
                positions.push(self.last);
                self.events.push(Stored {
                    pos: self.last,
                    channel: e.channel.clone(),
                    data: e.data.get().to_owned(),
                    time_ms: e.time_ms,
                });
            }
            per_item.push(positions);
        }
        self.stored_appends += 1;
        self.sizes
            .push_back(items.iter().map(|i| i.events.len()).sum());
        if let Some(id) = id {
            let exp = now + self.opts().dedupe_window_ms;
            self.appends
                .insert(id, (exp, per_item.clone(), self.stored_appends));
        }
        self.trim_to_count();
        per_item
            .into_iter()
            .map(|p| (Want::Events(p), false))
            .collect()
    }

    /// Retention by count, in the backend's unit.
    fn trim_to_count(&mut self) {
        let keep = self.opts().retention_events as usize;
        match self.unit {
            RetentionUnit::Events => {
                while self.events.len() > keep {
                    self.events.remove(0);
                    self.trimmed += 1;
                }
            }
            RetentionUnit::Appends => {
                while self.sizes.len() > keep {
                    let n = self.sizes.pop_front().expect("an append");
                    self.events.drain(..n);
                    self.trimmed += n as u64;
                }
            }
        }
    }

    fn retain(&mut self, now: u64) {
        self.keys.retain(|_, (exp, _)| *exp > now);
        self.appends.retain(|_, (exp, _, _)| *exp > now);
        let age = self.opts().retention_age_ms;
        if age == 0 {
            return;
        }
        assert_eq!(
            self.unit,
            RetentionUnit::Events,
            "the model has no age retention by appends"
        );
        let cutoff = now.saturating_sub(age);
        while self.events.first().is_some_and(|e| e.time_ms < cutoff) {
            self.events.remove(0);
            self.trimmed += 1;
        }
    }
}

/// The backend's positions of the model's events: `real[k - 1]` is the position of the
/// model's event `k`.
struct Positions {
    /// The backend must issue exactly the model's numbers (`Position::seq(k)`).
    exact: bool,
    real: Vec<Position>,
}

impl Positions {
    /// A newly appended event's position.
    fn record(&mut self, p: Position) -> Result<(), TestCaseError> {
        if let Some(last) = self.real.last() {
            prop_assert!(p > *last, "position {} after {} does not increase", p, last);
        }
        if self.exact {
            prop_assert_eq!(p, Position::seq(self.real.len() as u64 + 1));
        }
        self.real.push(p);
        Ok(())
    }

    /// The backend position for model position `n` (`0..=last + 2`): before everything,
    /// an event's, or one that far past the head.
    fn to_real(&self, n: u64) -> Position {
        let len = self.real.len() as u64;
        match n {
            0 => Position::ZERO,
            n if n <= len => self.real[n as usize - 1],
            n => {
                let head = self.real.last().copied().unwrap_or(Position::ZERO);
                Position {
                    hi: head.hi,
                    lo: head.lo + (n - len),
                }
            }
        }
    }

    /// The model position of a backend position (`ZERO` or an event's).
    fn to_model(&self, p: Position) -> Result<u64, TestCaseError> {
        if p == Position::ZERO {
            return Ok(0);
        }
        match self.real.binary_search(&p) {
            Ok(i) => Ok(i as u64 + 1),
            Err(_) => Err(TestCaseError::fail(format!(
                "position {p} is no event's position"
            ))),
        }
    }
}

fn stored(e: &Event, positions: &Positions) -> Result<Stored, TestCaseError> {
    Ok(Stored {
        pos: positions.to_model(e.pos)?,
        channel: e.event.channel.clone(),
        data: e.event.data.get().to_owned(),
        time_ms: e.event.time_ms,
    })
}

enum Backend {
    Memory,
    File(tempfile::TempDir, u64),
    /// A stream of its own on a shared redis-server.
    Redis {
        url: String,
        stream: String,
    },
    /// A stream of its own on a shared nats-server.
    Nats {
        url: String,
        stream: String,
    },
}

impl Backend {
    async fn open(&self, opts: LogOptions) -> Arc<dyn EventLog> {
        match self {
            Backend::Memory => Arc::new(MemoryLog::new(opts)),
            Backend::File(dir, segment_bytes) => Arc::new(
                FileLog::open(
                    dir.path(),
                    opts,
                    FileOptions {
                        sync: SyncMode::Always,
                        segment_bytes: *segment_bytes,
                    },
                )
                .expect("open file log"),
            ),
            Backend::Redis { url, stream } => {
                let cfg = EngineConfig {
                    url: url.clone(),
                    stream: stream.clone(),
                    tls_ca_file: None,
                };
                RedisLog::open(&cfg, opts).await.expect("open redis log")
            }
            Backend::Nats { url, stream } => {
                let cfg = EngineConfig {
                    url: url.clone(),
                    stream: stream.clone(),
                    tls_ca_file: None,
                };
                NatsLog::open(&cfg, None, opts)
                    .await
                    .expect("open nats log")
            }
        }
    }
}

async fn run(backend: Backend, opts: LogOptions, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut log = backend.open(opts).await;
    let mut positions = Positions {
        exact: matches!(backend, Backend::Memory | Backend::File(..)),
        real: Vec::new(),
    };
    let nats = matches!(backend, Backend::Nats { .. });
    let mut model = Model {
        opts: Some(opts),
        dedupe: if nats {
            DedupeScope::PerAppend
        } else {
            DedupeScope::PerItem
        },
        unit: if nats {
            RetentionUnit::Appends
        } else {
            RetentionUnit::Events
        },
        ..Model::default()
    };
    let mut now = 1_000_000u64;
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append(spec) => {
                let items: Vec<AppendItem> = spec
                    .iter()
                    .map(|(key, chans)| AppendItem {
                        key: key.map(|k| KEYS[k].to_owned()),
                        events: chans
                            .iter()
                            .map(|&c| {
                                model.counter += 1;
                                NewEvent::new(
                                    CHANNELS[c].to_owned(),
                                    "t".into(),
                                    RawValue::from_string(format!("{{\"n\":{}}}", model.counter))
                                        .unwrap(),
                                    None,
                                    now,
                                    usize::MAX,
                                )
                                .unwrap()
                            })
                            .collect(),
                    })
                    .collect();
                let got = log.append(items.clone(), now).await.expect("append");
                let want = model.append(&items, now);
                for appended in got.iter().filter(|a| !a.duplicate) {
                    for p in &appended.positions {
                        positions.record(*p)?;
                    }
                }
                let got: Vec<(Want, bool)> = got
                    .iter()
                    .zip(&want)
                    .map(|(a, (w, _))| {
                        if matches!(w, Want::Real(_)) {
                            return Ok((Want::Real(a.positions.clone()), a.duplicate));
                        }
                        let model_positions = a
                            .positions
                            .iter()
                            .map(|p| positions.to_model(*p))
                            .collect::<Result<Vec<u64>, _>>()?;
                        Ok((Want::Events(model_positions), a.duplicate))
                    })
                    .collect::<Result<_, TestCaseError>>()?;
                prop_assert_eq!(got, want, "append results at step {}", step);
            }
            Op::Read { pick, max, mask } => {
                let after = u64::from(pick) % (model.last + 3);
                let wanted = |c: &str| {
                    CHANNELS
                        .iter()
                        .position(|x| *x == c)
                        .is_some_and(|i| mask & (1 << i) != 0)
                };
                let filter = |e: &Event| wanted(&e.event.channel);
                let after_real = positions.to_real(after);
                let batch = log
                    .read(after_real, max, &filter, None)
                    .await
                    .expect("read");
                let next = if batch.next == after_real {
                    after
                } else {
                    positions.to_model(batch.next)?
                };
                prop_assert!(next >= after, "next {} before after {}", next, after);
                prop_assert!(
                    next <= model.last.max(after),
                    "next {} past the head {}",
                    next,
                    model.last
                );
                let want: Vec<Stored> = model
                    .events
                    .iter()
                    .filter(|e| e.pos > after && e.pos <= next && wanted(&e.channel))
                    .cloned()
                    .collect();
                let got: Vec<Stored> = batch
                    .events
                    .iter()
                    .map(|e| stored(e, &positions))
                    .collect::<Result<_, _>>()?;
                prop_assert_eq!(&got, &want, "read after {} (step {})", after, step);
                prop_assert!(got.len() <= max);
                if after < model.last {
                    prop_assert!(next > after, "a read with events ahead makes progress");
                }
                if batch.at_head {
                    prop_assert_eq!(next, model.last.max(after), "at_head means the head");
                }
                let expect_gap = after < model.trimmed;
                prop_assert_eq!(batch.gap.is_some(), expect_gap, "gap after {}", after);
                if let Some(gap) = batch.gap {
                    let oldest = gap.oldest.map(|p| positions.to_model(p)).transpose()?;
                    prop_assert_eq!(oldest, model.events.first().map(|e| e.pos));
                }
            }
            Op::History {
                channel,
                after,
                through,
                limit,
                odd,
            } => {
                let span = model.last + 3;
                let (a, t) = (u64::from(after) % span, u64::from(through) % span);
                let (after, through) = (a.min(t), a.max(t));
                let channel = CHANNELS[channel];
                let number = |data: &str| -> u64 {
                    data.trim_start_matches("{\"n\":")
                        .trim_end_matches('}')
                        .parse()
                        .unwrap()
                };
                let keep = |data: &str| !odd || number(data) % 2 == 1;
                let filter = |e: &Event| keep(e.event.data.get());
                let q = ssegate::log::HistoryQuery {
                    channel,
                    after: positions.to_real(after),
                    through: positions.to_real(through),
                    limit,
                };
                let history = log.history(q, &filter).await.expect("history");
                let got: Vec<Stored> = history
                    .events
                    .iter()
                    .map(|e| stored(e, &positions))
                    .collect::<Result<_, _>>()?;
                let in_range: Vec<&Stored> = model
                    .events
                    .iter()
                    .filter(|e| e.pos > after && e.pos <= through && e.channel == channel)
                    .collect();
                let matching: Vec<Stored> = in_range
                    .iter()
                    .filter(|e| keep(&e.data))
                    .map(|e| (*e).clone())
                    .collect();
                let want = matching[matching.len().saturating_sub(limit)..].to_vec();
                prop_assert_eq!(
                    &got,
                    &want,
                    "history of {} in ({}, {}] (step {})",
                    channel,
                    after,
                    through,
                    step
                );
                let older = got
                    .first()
                    .is_some_and(|first| in_range.iter().any(|e| e.pos < first.pos));
                let more = got.len() == limit && (older || (limit == 0 && !in_range.is_empty()));
                if limit > 0 {
                    prop_assert_eq!(history.more, more, "more (step {})", step);
                }
            }
            Op::Tick(ms) => now += ms,
            Op::Retain => {
                log.enforce_retention(now).await.expect("retain");
                model.retain(now);
            }
            Op::Reopen => {
                if !matches!(backend, Backend::Memory) {
                    drop(log);
                    log = backend.open(opts).await;
                }
            }
        }
        let bounds = log.bounds().await.expect("bounds");
        prop_assert_eq!(
            positions.to_model(bounds.head)?,
            model.last,
            "head at step {}",
            step
        );
        if positions.exact {
            prop_assert_eq!(bounds.head, Position::seq(model.last));
        }
        let oldest = bounds.oldest.map(|p| positions.to_model(p)).transpose()?;
        prop_assert_eq!(
            oldest,
            model.events.first().map(|e| e.pos),
            "oldest at step {}",
            step
        );
    }
    Ok(())
}

fn options() -> impl Strategy<Value = LogOptions> {
    (2u64..25, prop_oneof![Just(0u64), 40u64..200], 20u64..150).prop_map(
        |(retention_events, retention_age_ms, dedupe_window_ms)| LogOptions {
            retention_events,
            retention_age_ms,
            dedupe_window_ms,
            file_cache_bytes: 1 << 20,
        },
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn memory_log_behaves_like_the_model(
        opts in options(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        runtime().block_on(run(Backend::Memory, opts, ops))?;
    }
}

proptest! {
    // Each append is an fsync: fewer, still varied, cases.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn file_log_behaves_like_the_model(
        opts in options(),
        ops in proptest::collection::vec(op(), 1..80),
        // Tiny segments roll at almost every commit, so retention deletes whole segments
        // (and carries their keys forward) all the time; large ones never roll.
        segment_bytes in prop_oneof![Just(64u64 << 20), 100u64..600],
    ) {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(run(Backend::File(dir, segment_bytes), opts, ops))?;
    }
}

/// Against a redis-server of this test's own (started once, a fresh stream per case): each
/// step is a round trip or two, so fewer cases than the memory log.
#[test]
fn redis_log_behaves_like_the_model() {
    let redis = engines::redis::start(engines::redis::Persistence::None);
    let url = engines::redis::url(&redis);
    let cases = AtomicU64::new(0);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(
        &(options(), proptest::collection::vec(op(), 1..80)),
        |(opts, ops)| {
            let backend = Backend::Redis {
                url: url.clone(),
                stream: format!("model-{}", cases.fetch_add(1, Ordering::Relaxed)),
            };
            runtime().block_on(run(backend, opts, ops))
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Against a nats-server (JetStream) of this test's own, started once, a fresh stream per
/// case. The server applies age retention and the dedupe window on its own clock, which the
/// model's ticks cannot drive: cases have no age limit and a window longer than any case
/// (`nats_log.rs` tests both with real time).
#[test]
fn nats_log_behaves_like_the_model() {
    let nats = engines::nats::start();
    let url = engines::nats::url(&nats);
    let cases = AtomicU64::new(0);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let opts = options().prop_map(|o| LogOptions {
        retention_age_ms: 0,
        dedupe_window_ms: 600_000,
        ..o
    });
    let result = runner.run(
        &(opts, proptest::collection::vec(op(), 1..80)),
        |(opts, ops)| {
            let backend = Backend::Nats {
                url: url.clone(),
                stream: format!("model-{}", cases.fetch_add(1, Ordering::Relaxed)),
            };
            runtime().block_on(run(backend, opts, ops))
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
