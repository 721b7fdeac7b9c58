//! A connection's cursor on the log: produces the bytes of one SSE stream.
//!
//! Three modes, one position (`pos`: everything up to it was delivered or is not for us):
//!
//! - **Live**: frames come from the hub's queue; frames at or before `pos` are duplicates of
//!   what the log already gave us and are skipped. When the hub drops the connection out of
//!   live delivery (queue full), switch to CatchUp.
//! - **CatchUp**: read the log after `pos`, filtered by channels and user, one batch per
//!   chunk the client takes. At the head, raise the live flag and switch to Sealing.
//! - **Sealing**: live again, but events appended between our last read and the moment the
//!   flag rose were not queued for us; read the log once more to the head, then go Live. Any
//!   event both read here and queued by the hub is skipped by the `pos` check.
//!
//! A resume (`Last-Event-ID`) starts in Sealing: replay, then live, no gap, no duplicate.
//!
//! Besides, a channel added on the live connection may come with history to deliver first
//! ([`Control::Backfill`]): read from the log in steps, sent without `id:` lines, before
//! anything else.
//! Memory per connection is the bounded queue plus one batch; a stalled client costs no more.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{frame, lock, Control, Frame, Hub, Registration};
use crate::log::{Event, HistoryQuery, Position};

/// Bytes gathered into one chunk at most before handing it to the connection.
const MAX_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Live,
    CatchUp,
    Sealing,
}

pub struct CursorOptions {
    pub heartbeat: Duration,
    pub catchup_batch: usize,
    /// When the credentials expire: the stream ends with `closing` (`token_expired`).
    pub expires_at: Option<Instant>,
    /// Server shutdown: the stream ends with `closing` (`shutdown`).
    pub shutdown: CancellationToken,
}

pub struct Cursor {
    hub: Arc<Hub>,
    reg: Registration,
    /// Frames taken from the connection's queue in one swap and not yet sent (the two
    /// deques trade places, so a steady stream reuses their buffers).
    taken: VecDeque<Frame>,
    pos: Position,
    mode: Mode,
    opts: CursorOptions,
    /// Bytes to send before anything else (the preamble).
    pending: Option<Bytes>,
    /// History of an added channel still to deliver: (channel, after, through, limit).
    backfill: Option<(Arc<str>, Position, Position, Option<usize>)>,
    /// Events to send first, with their ids (a stream's `history`), oldest first.
    history: VecDeque<Arc<Event>>,
    done: bool,
}

impl Cursor {
    /// A cursor for a registered connection. With `resume_from`, history after it is replayed
    /// first; otherwise delivery starts at `head`, the log head read after registering.
    pub fn new(
        hub: Arc<Hub>,
        reg: Registration,
        start: Position,
        replay: bool,
        preamble: Bytes,
        opts: CursorOptions,
    ) -> Self {
        Self {
            hub,
            reg,
            taken: VecDeque::new(),
            pos: start,
            mode: if replay { Mode::Sealing } else { Mode::Live },
            opts,
            pending: Some(preamble),
            backfill: None,
            history: VecDeque::new(),
            done: false,
        }
    }

    /// Sends `events` (in log order, all at or before the start position) with their ids
    /// right after the preamble: a new stream's `history`.
    pub fn with_history(mut self, events: Vec<Arc<Event>>) -> Self {
        self.history = events.into();
        self
    }

    /// The next bytes of the stream; `None` when the stream is over.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(p) = self.pending.take() {
            return Some(p);
        }
        if !self.history.is_empty() {
            let mut buf = BytesMut::new();
            let mut frames = 0;
            while buf.len() < MAX_CHUNK {
                let Some(event) = self.history.pop_front() else {
                    break;
                };
                buf.extend_from_slice(&self.reg.conn.event_frame(&event));
                frames += 1;
            }
            self.count_delivered(frames);
            return Some(buf.freeze());
        }
        loop {
            if self.backfill.is_some() {
                match self.read_backfill().await {
                    Some(chunk) => return Some(chunk),
                    None => continue,
                }
            }
            if let Some(control) = self.reg.conn.take_control() {
                match control {
                    Control::Send(bytes) => return Some(bytes),
                    Control::Close(reason) => return Some(self.close(reason)),
                    Control::Backfill {
                        channel,
                        after,
                        through,
                        limit,
                    } => {
                        self.backfill = Some((channel, after, through, limit));
                        continue;
                    }
                }
            }
            if self.opts.shutdown.is_cancelled() {
                return Some(self.close("shutdown"));
            }
            if self.opts.expires_at.is_some_and(|t| t <= Instant::now()) {
                return Some(self.close("token_expired"));
            }
            if self.mode != Mode::Live {
                match self.read_log().await {
                    Some(chunk) => return Some(chunk),
                    None => continue,
                }
            }
            if let Some(chunk) = self.drain_queue() {
                return Some(chunk);
            }
            if !self.reg.conn.live.load(Ordering::Acquire) {
                self.mode = Mode::CatchUp;
                self.hub
                    .stats
                    .catchup_entries
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // One timer for both the heartbeat and the credentials' expiry; a shutdown wakes
            // the connection through the hub (`Hub::close_all`), so no future waits on it here.
            let heartbeat_at = Instant::now() + self.opts.heartbeat;
            let deadline = self
                .opts
                .expires_at
                .map_or(heartbeat_at, |e| e.min(heartbeat_at));
            tokio::select! {
                _ = self.reg.conn.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    if deadline == heartbeat_at {
                        return Some(Bytes::from_static(frame::HEARTBEAT));
                    }
                }
            }
        }
    }

    fn count_delivered(&self, frames: usize) {
        if frames > 0 {
            let n = frames as u64;
            self.reg.conn.delivered.fetch_add(n, Ordering::Relaxed);
            self.hub
                .stats
                .events_delivered
                .fetch_add(n, Ordering::Relaxed);
        }
    }

    fn close(&mut self, reason: &'static str) -> Bytes {
        self.done = true;
        *super::lock(&self.reg.conn.close_reason) = Some(reason);
        self.reg
            .conn
            .control_frame("closing", &serde_json::json!({ "reason": reason }))
    }

    /// Frames already queued, after `pos`, gathered into one chunk (a single frame is sent
    /// as the shared `Bytes` itself, without a copy).
    fn drain_queue(&mut self) -> Option<Bytes> {
        if self.taken.is_empty() {
            let mut queue = lock(&self.reg.conn.queue);
            if queue.is_empty() {
                return None;
            }
            std::mem::swap(&mut *queue, &mut self.taken);
        }
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        let mut frames = 0;
        while let Some(f) = self.taken.pop_front() {
            if f.pos <= self.pos {
                continue;
            }
            self.pos = f.pos;
            frames += 1;
            match first.take() {
                None if buf.is_empty() => first = Some(f.bytes),
                None => buf.extend_from_slice(&f.bytes),
                Some(b) => {
                    buf.reserve(b.len() + f.bytes.len());
                    buf.extend_from_slice(&b);
                    buf.extend_from_slice(&f.bytes);
                }
            }
            if buf.len() >= MAX_CHUNK {
                break;
            }
        }
        // A burst grew the buffers; an idle connection should not keep them.
        if self.taken.is_empty() && self.taken.capacity() > 64 {
            self.taken = VecDeque::new();
        }
        self.count_delivered(frames);
        first.or_else(|| (!buf.is_empty()).then(|| buf.freeze()))
    }

    /// One catch-up step; `None` when it produced nothing to send (mode may have changed).
    async fn read_log(&mut self) -> Option<Bytes> {
        let conn = self.reg.conn.clone();
        let filter = |e: &Event| conn.wants(e);
        let batch = self.read_or_pause(self.pos, &filter).await?;
        let mut buf = BytesMut::new();
        if let Some(gap) = batch.gap {
            self.hub.stats.gaps.fetch_add(1, Ordering::Relaxed);
            let oldest = gap.oldest.map(|p| p.to_string());
            buf.extend_from_slice(&conn.control_frame(
                "gap",
                &serde_json::json!({
                    "last_event_id": self.pos.to_string(),
                    "oldest_id": oldest,
                    "reason": gap.reason(),
                }),
            ));
        }
        self.count_delivered(batch.events.len());
        for event in &batch.events {
            buf.extend_from_slice(&conn.event_frame(event));
        }
        self.pos = self.pos.max(batch.next);
        if batch.at_head {
            if self.mode == Mode::CatchUp {
                conn.live.store(true, Ordering::Release);
                self.mode = Mode::Sealing;
            } else {
                self.mode = Mode::Live;
            }
        }
        (!buf.is_empty()).then(|| buf.freeze())
    }
}

impl Cursor {
    /// One step of a channel's history ([`Control::Backfill`]); `None` when it produced
    /// nothing to send.
    async fn read_backfill(&mut self) -> Option<Bytes> {
        let (channel, after, through, limit) = self.backfill.clone()?;
        let conn = self.reg.conn.clone();
        let filter = |e: &Event| e.pos <= through && conn.wants_as_history(e, &channel);
        let mut buf = BytesMut::new();
        let gap_frame = |oldest: Option<Position>, reason: &str| {
            frame::control_frame(
                "gap",
                &serde_json::json!({
                    "channel": &*channel,
                    "last_event_id": after.to_string(),
                    "oldest_id": oldest.map(|p| p.to_string()),
                    "reason": reason,
                }),
            )
        };
        let (events, next) = match limit {
            Some(limit) => {
                let q = HistoryQuery {
                    channel: &channel,
                    after,
                    through,
                    limit,
                };
                match self.hub.log().history(q, &filter).await {
                    Ok(history) => {
                        // Fewer than asked for after a `since` retention passed: say what
                        // is missing (one event read tells).
                        if !history.more && after != Position::ZERO {
                            let accept = |_: &Event| true;
                            let read = self.hub.log().read(after, 1, &accept, None).await;
                            if let Some(gap) = read.ok().and_then(|b| b.gap) {
                                self.hub.stats.gaps.fetch_add(1, Ordering::Relaxed);
                                buf.extend_from_slice(&gap_frame(gap.oldest, gap.reason()));
                            }
                        }
                        (history.events, through)
                    }
                    Err(e) => {
                        // The stream goes on live; the client is told its history is missing.
                        if let Some(suppressed) = self.hub.read_errors.allow() {
                            tracing::warn!(error = %e, suppressed, "a channel's history cannot be read; sent a gap instead");
                        }
                        self.hub.stats.gaps.fetch_add(1, Ordering::Relaxed);
                        buf.extend_from_slice(&gap_frame(None, "unavailable"));
                        (Vec::new(), through)
                    }
                }
            }
            None => {
                let batch = self.read_or_pause(after, &filter).await?;
                if let Some(gap) = batch.gap {
                    self.hub.stats.gaps.fetch_add(1, Ordering::Relaxed);
                    buf.extend_from_slice(&gap_frame(gap.oldest, gap.reason()));
                }
                let next = if batch.at_head { through } else { batch.next };
                (batch.events, next)
            }
        };
        // A channel removed meanwhile gets no more of its history.
        let still_subscribed = conn.channels().iter().any(|c| **c == *channel);
        if still_subscribed {
            self.count_delivered(events.len());
        }
        for event in events.iter().filter(|_| still_subscribed) {
            buf.extend_from_slice(&frame::history_frame(event));
        }
        self.backfill =
            (still_subscribed && next < through).then_some((channel, next, through, None));
        (!buf.is_empty()).then(|| buf.freeze())
    }

    /// Reads the log after `after`; on failure, logs, pauses a moment and returns `None`.
    async fn read_or_pause(
        &self,
        after: Position,
        filter: crate::log::Filter<'_>,
    ) -> Option<crate::log::ReadBatch> {
        match self
            .hub
            .log()
            .read(after, self.opts.catchup_batch, filter, None)
            .await
        {
            Ok(batch) => Some(batch),
            Err(e) => {
                self.log_error_and_pause(&e).await;
                None
            }
        }
    }

    /// After a failed log read: logs (at most once a minute) and waits a moment.
    async fn log_error_and_pause(&self, e: &crate::log::LogError) {
        let conn = &self.reg.conn;
        if let Some(suppressed) = self.hub.read_errors.allow() {
            tracing::warn!(error = %e, suppressed, "connections cannot read the log; retrying");
        }
        tokio::select! {
            _ = self.opts.shutdown.cancelled() => {}
            _ = conn.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}
