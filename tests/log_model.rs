//! One model-based property suite for every log backend: random interleavings of appends
//! (single, batched, multi-channel, with idempotency keys), filtered reads from any position,
//! clock ticks, retention passes and — for the file log — close-and-reopen, each checked
//! against a plain in-memory model of what the log promises (see `ssegate::log`).

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::value::RawValue;
use ssegate::log::file::FileLog;
use ssegate::log::memory::MemoryLog;
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
    Tick(u64),
    Retain,
    /// Close and reopen (file log only; a no-op for memory).
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

/// What the log promises, written the obvious way.
#[derive(Default)]
struct Model {
    opts: Option<LogOptions>,
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

    fn append(&mut self, items: &[AppendItem], now: u64) -> Vec<(Vec<u64>, bool)> {
        self.keys.retain(|_, (exp, _)| *exp > now);
        let mut out = Vec::new();
        for item in items {
            if let Some((_, pos)) = item.key.as_ref().and_then(|k| self.keys.get(k)) {
                out.push((pos.clone(), true));
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
            out.push((positions, false));
        }
        let keep = self.opts().retention_events as usize;
        while self.events.len() > keep {
            self.events.remove(0);
            self.trimmed += 1;
        }
        out
    }

    fn retain(&mut self, now: u64) {
        self.keys.retain(|_, (exp, _)| *exp > now);
        let age = self.opts().retention_age_ms;
        if age == 0 {
            return;
        }
        let cutoff = now.saturating_sub(age);
        while self.events.first().is_some_and(|e| e.time_ms < cutoff) {
            self.events.remove(0);
            self.trimmed += 1;
        }
    }
}

fn stored(e: &Event) -> Stored {
    assert_eq!(e.pos.hi, 0, "single-number positions");
    Stored {
        pos: e.pos.lo,
        channel: e.event.channel.clone(),
        data: e.event.data.get().to_owned(),
        time_ms: e.event.time_ms,
    }
}

enum Backend {
    Memory,
    File(tempfile::TempDir),
}

impl Backend {
    fn open(&self, opts: LogOptions) -> Arc<dyn EventLog> {
        match self {
            Backend::Memory => Arc::new(MemoryLog::new(opts)),
            Backend::File(dir) => {
                Arc::new(FileLog::open(&dir.path().join("log.redb"), opts).expect("open file log"))
            }
        }
    }
}

async fn run(backend: Backend, opts: LogOptions, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut log = backend.open(opts);
    let mut model = Model {
        opts: Some(opts),
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
                                NewEvent {
                                    channel: CHANNELS[c].to_owned(),
                                    kind: "t".into(),
                                    data: RawValue::from_string(format!(
                                        "{{\"n\":{}}}",
                                        model.counter
                                    ))
                                    .unwrap(),
                                    users: None,
                                    time_ms: now,
                                }
                            })
                            .collect(),
                    })
                    .collect();
                let got = log.append(items.clone(), now).await.expect("append");
                let want = model.append(&items, now);
                let got: Vec<(Vec<u64>, bool)> = got
                    .iter()
                    .map(|a| (a.positions.iter().map(|p| p.lo).collect(), a.duplicate))
                    .collect();
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
                let batch = log
                    .read(Position::seq(after), max, &filter, None)
                    .await
                    .expect("read");
                let next = batch.next.lo;
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
                let got: Vec<Stored> = batch.events.iter().map(|e| stored(e)).collect();
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
                    prop_assert_eq!(
                        gap.oldest.map(|p| p.lo),
                        model.events.first().map(|e| e.pos)
                    );
                }
            }
            Op::Tick(ms) => now += ms,
            Op::Retain => {
                log.enforce_retention(now).await.expect("retain");
                model.retain(now);
            }
            Op::Reopen => {
                if matches!(backend, Backend::File(_)) {
                    drop(log);
                    log = backend.open(opts);
                }
            }
        }
        let bounds = log.bounds().await.expect("bounds");
        prop_assert_eq!(
            bounds.head,
            Position::seq(model.last),
            "head at step {}",
            step
        );
        prop_assert_eq!(
            bounds.oldest.map(|p| p.lo),
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
    ) {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(run(Backend::File(dir), opts, ops))?;
    }
}
