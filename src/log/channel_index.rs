//! An in-process index of event positions by channel: how the memory and file logs answer
//! [`EventLog::history`](super::EventLog::history) without scanning the log.
//!
//! One `VecDeque` of positions per channel, in log order. Appends push at the back;
//! retention pops from the front (see [`ChannelIndex::trim_before`]). A lookup is a binary
//! search for its upper bound, then a walk back over that channel's positions only.
//! Memory: about 16 bytes per retained event plus one map entry per channel.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{Event, Filter, History, HistoryQuery, Position};

#[derive(Default)]
pub struct ChannelIndex {
    channels: HashMap<Box<str>, VecDeque<Position>>,
    entries: usize,
}

impl ChannelIndex {
    /// Records that `pos` (later than every position recorded for `channel`) holds an event
    /// of `channel`.
    pub fn push(&mut self, channel: &str, pos: Position) {
        match self.channels.get_mut(channel) {
            Some(q) => q.push_back(pos),
            None => {
                self.channels.insert(channel.into(), VecDeque::from([pos]));
            }
        }
        self.entries += 1;
    }

    /// Forgets every position before `oldest` (retention dropped those events). Costs one
    /// step per channel plus one per position forgotten; channels left empty are forgotten.
    pub fn trim_before(&mut self, oldest: Position) {
        let mut removed = 0;
        self.channels.retain(|_, q| {
            while q.front().is_some_and(|p| *p < oldest) {
                q.pop_front();
                removed += 1;
            }
            !q.is_empty()
        });
        self.entries -= removed;
    }

    /// Forgets `pos` of `channel` if it is that channel's oldest position: retention of one
    /// event whose channel is known, without a pass over every channel.
    pub fn pop_oldest(&mut self, channel: &str, pos: Position) {
        let Some(q) = self.channels.get_mut(channel) else {
            return;
        };
        if q.front() == Some(&pos) {
            q.pop_front();
            self.entries -= 1;
            if q.is_empty() {
                self.channels.remove(channel);
            }
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.channels.clear();
        self.entries = 0;
    }

    /// Positions recorded.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The positions of `q.channel` in `(q.after, q.through]`, newest first.
    pub fn newest_first<'a>(&'a self, q: &HistoryQuery<'_>) -> impl Iterator<Item = Position> + 'a {
        let (after, through) = (q.after, q.through);
        let positions = self.channels.get(q.channel);
        let end = positions.map_or(0, |p| p.partition_point(|x| *x <= through));
        positions
            .into_iter()
            .flat_map(move |p| p.range(..end).rev())
            .take_while(move |p| **p > after)
            .copied()
    }
}

/// Builds a [`History`] from candidate positions, newest first: `fetch` gives the event at a
/// position (`None`: retention dropped it, and so every older one), `filter` decides. Stops
/// at `limit` events or [`HISTORY_SCAN`](super::HISTORY_SCAN) candidates; `more` says a
/// candidate was left over.
pub fn collect<E>(
    positions: impl Iterator<Item = Position>,
    limit: usize,
    filter: Filter<'_>,
    mut fetch: impl FnMut(Position) -> Result<Option<Arc<Event>>, E>,
) -> Result<History, E> {
    let mut history = History::default();
    for (looked, pos) in positions.enumerate() {
        if history.events.len() >= limit || looked == super::HISTORY_SCAN {
            history.more = true;
            break;
        }
        history.looked_back_to = Some(pos);
        match fetch(pos)? {
            None => break,
            Some(event) if filter(&event) => history.events.push(event),
            Some(_) => {}
        }
    }
    history.events.reverse();
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(channel: &str, after: u64, through: u64, limit: usize) -> HistoryQuery<'_> {
        HistoryQuery {
            channel,
            after: Position::seq(after),
            through: Position::seq(through),
            limit,
        }
    }

    #[test]
    fn newest_first_within_the_range_and_trimmed() {
        let mut index = ChannelIndex::default();
        for i in 1..=10 {
            index.push(if i % 2 == 0 { "even" } else { "odd" }, Position::seq(i));
        }
        let got: Vec<u64> = index
            .newest_first(&q("even", 2, 8, 10))
            .map(|p| p.lo)
            .collect();
        assert_eq!(got, [8, 6, 4]);
        assert_eq!(index.newest_first(&q("none", 0, 10, 10)).count(), 0);
        index.trim_before(Position::seq(5));
        let got: Vec<u64> = index
            .newest_first(&q("odd", 0, 99, 10))
            .map(|p| p.lo)
            .collect();
        assert_eq!(got, [9, 7, 5]);
        assert_eq!(index.len(), 6);
        index.pop_oldest("odd", Position::seq(5));
        index.pop_oldest("odd", Position::seq(9));
        assert_eq!(index.len(), 5);
    }
}
