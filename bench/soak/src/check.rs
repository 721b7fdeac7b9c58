//! The exactly-once check. Every event carries its channel's sequence number (`{"s": n}`),
//! and each channel has one publisher that sends in order, so the ledger of acknowledged ids
//! says, for any resume position, exactly which events of a channel come after it.
//!
//! While the run goes, each subscriber folds what it receives on each of its channels into a
//! `ChanCheck` (first and last event, count, duplicates, holes) — constant memory however long
//! the run. At the end `verify` compares that with what the subscriber was owed: every event
//! of its channels after the position its first connection resumed from, up to the end of
//! the log (or, for a subscriber that left or a slow reader, up to the last event it got —
//! log order means everything of its channels before that was owed too).

use std::fmt::Write;

/// What one subscriber received on one channel, across all its connections.
#[derive(Debug, Clone, Default)]
pub struct ChanCheck {
    pub channel: usize,
    /// `(seq, id)` of the first and of the highest event received.
    pub first: Option<(u64, u64)>,
    pub last: Option<(u64, u64)>,
    pub count: u64,
    /// Events at or below the highest sequence number already received.
    pub dups: u64,
    /// Sequence numbers skipped over (holes), not counting those after a `gap`.
    pub holes: u64,
    /// Sequence numbers skipped right after a `gap` (retention dropped them: allowed).
    pub excused: u64,
    /// A `gap` arrived and no event of this channel since.
    pub pending_gap: bool,
    /// The first event came after a `gap`.
    pub gap_before_first: bool,
}

impl ChanCheck {
    pub fn new(channel: usize) -> ChanCheck {
        ChanCheck {
            channel,
            ..ChanCheck::default()
        }
    }

    pub fn on_event(&mut self, seq: u64, id: u64) {
        self.count += 1;
        match self.last {
            None => {
                self.first = Some((seq, id));
                self.last = Some((seq, id));
                self.gap_before_first = self.pending_gap;
            }
            Some((last, _)) if seq <= last => {
                self.dups += 1;
                return;
            }
            Some((last, _)) => {
                let skipped = seq - last - 1;
                if self.pending_gap {
                    self.excused += skipped;
                } else {
                    self.holes += skipped;
                }
                self.last = Some((seq, id));
            }
        }
        self.pending_gap = false;
    }

    pub fn on_gap(&mut self) {
        self.pending_gap = true;
    }
}

/// How far a subscriber was owed events.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// To the end of the log: it stayed to the end and had to drain.
    End,
    /// Up to this id (inclusive): it left, or reads slowly.
    Id(u64),
}

/// The verdict on one subscriber.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub owed: u64,
    /// Distinct owed events received.
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Events received that were not owed (before the resume position, or never acknowledged).
    pub unexpected: u64,
    /// Events lost to retention, announced by `gap` (allowed).
    pub excused: u64,
    /// What is wrong, for a person; empty when the subscriber got exactly what it was owed.
    pub problems: String,
}

/// Checks one subscriber's channels against `ledger` (per channel, the id of sequence
/// number n at index n-1). `start` is the position its first connection resumed from.
pub fn verify(chans: &[ChanCheck], start: u64, until: Until, ledger: &[Vec<u64>]) -> Verdict {
    let mut v = Verdict::default();
    for ch in chans {
        let Some(ids) = ledger.get(ch.channel) else {
            v.unexpected += ch.count;
            let _ = write!(v.problems, "c{}: not a soak channel; ", ch.channel);
            continue;
        };
        let first_owed = ids.partition_point(|&id| id <= start) as u64 + 1;
        let last_owed = match until {
            Until::End => ids.len() as u64,
            Until::Id(bound) => ids.partition_point(|&id| id <= bound) as u64,
        };
        let owed = (last_owed + 1).saturating_sub(first_owed);
        v.owed += owed;
        v.duplicates += ch.dups;
        v.excused += ch.excused;
        let (Some((fs, fid)), Some((ls, lid))) = (ch.first, ch.last) else {
            v.missing += owed;
            if owed > 0 {
                let _ = write!(v.problems, "c{}: none of {owed} owed events; ", ch.channel);
            }
            continue;
        };
        // Received sequence numbers increase from fs to ls (duplicates aside); holes inside
        // are counted as they come, the ends are compared with what was owed.
        let front = if ch.gap_before_first {
            v.excused += fs.saturating_sub(first_owed);
            0
        } else {
            fs.min(last_owed + 1).saturating_sub(first_owed)
        };
        let back = last_owed.saturating_sub(ls.max(first_owed.saturating_sub(1)));
        let early = first_owed.saturating_sub(fs).min(ch.count);
        let late = ls.saturating_sub(last_owed).min(ch.count);
        let missing = ch.holes + front + back;
        v.missing += missing;
        v.unexpected += early + late;
        v.delivered += (ch.count - ch.dups).saturating_sub(early + late);
        let id_of = |seq: u64| ids.get(seq as usize - 1).copied();
        let mut wrong_ids = Vec::new();
        if fs >= 1 && id_of(fs).is_some_and(|id| id != fid) {
            wrong_ids.push(format!(
                "seq {fs} had id {fid}, acknowledged as {:?}",
                id_of(fs)
            ));
        }
        if ls >= 1 && id_of(ls).is_some_and(|id| id != lid) {
            wrong_ids.push(format!(
                "seq {ls} had id {lid}, acknowledged as {:?}",
                id_of(ls)
            ));
        }
        if missing + ch.dups + early + late > 0 || !wrong_ids.is_empty() {
            let _ = write!(
                v.problems,
                "c{}: owed seq {first_owed}..={last_owed}, got {fs}..={ls} ({} events, {} duplicate, {} holes{}{}); ",
                ch.channel,
                ch.count,
                ch.dups,
                ch.holes,
                if early + late > 0 { format!(", {} not owed", early + late) } else { String::new() },
                if wrong_ids.is_empty() { String::new() } else { format!(", {}", wrong_ids.join(", ")) },
            );
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Channel 0 has seqs 1..=10 at ids 10, 20, …, 100.
    fn ledger() -> Vec<Vec<u64>> {
        vec![(1..=10).map(|s| s * 10).collect()]
    }

    fn received(seqs: &[u64]) -> Vec<ChanCheck> {
        let mut c = ChanCheck::new(0);
        for &s in seqs {
            c.on_event(s, s * 10);
        }
        vec![c]
    }

    #[test]
    fn exactly_the_owed_events_pass() {
        // Resumed from id 35: owed seqs 4..=10.
        let v = verify(
            &received(&[4, 5, 6, 7, 8, 9, 10]),
            35,
            Until::End,
            &ledger(),
        );
        assert_eq!((v.owed, v.delivered, v.missing, v.duplicates), (7, 7, 0, 0));
        assert!(v.problems.is_empty(), "{}", v.problems);
    }

    #[test]
    fn a_loss_anywhere_fails() {
        for lost in 4..=10 {
            let seqs: Vec<u64> = (4..=10).filter(|&s| s != lost).collect();
            let v = verify(&received(&seqs), 35, Until::End, &ledger());
            assert_eq!(v.missing, 1, "lost {lost}");
            assert!(!v.problems.is_empty());
        }
    }

    #[test]
    fn a_duplicate_or_reorder_fails() {
        let v = verify(
            &received(&[4, 5, 5, 6, 7, 8, 9, 10]),
            35,
            Until::End,
            &ledger(),
        );
        assert_eq!(v.duplicates, 1);
        assert!(!v.problems.is_empty());
        let v = verify(
            &received(&[4, 6, 5, 7, 8, 9, 10]),
            35,
            Until::End,
            &ledger(),
        );
        assert!(!v.problems.is_empty());
    }

    #[test]
    fn events_before_the_resume_position_fail() {
        let v = verify(
            &received(&[3, 4, 5, 6, 7, 8, 9, 10]),
            35,
            Until::End,
            &ledger(),
        );
        assert_eq!(v.unexpected, 1);
        assert!(!v.problems.is_empty());
    }

    #[test]
    fn a_subscriber_that_left_owes_up_to_its_last_id() {
        let v = verify(&received(&[4, 5, 6]), 35, Until::Id(60), &ledger());
        assert!(v.problems.is_empty(), "{}", v.problems);
        assert_eq!(v.owed, 3);
        // Its last event overall was id 75 (another channel): seq 7 (id 70) was owed too.
        let v = verify(&received(&[4, 5, 6]), 35, Until::Id(75), &ledger());
        assert_eq!(v.missing, 1);
    }

    #[test]
    fn nothing_received_of_owed_events_fails() {
        let v = verify(&received(&[]), 35, Until::End, &ledger());
        assert_eq!(v.missing, 7);
        let v = verify(&received(&[]), 100, Until::End, &ledger());
        assert!(v.problems.is_empty());
    }

    #[test]
    fn holes_after_a_gap_are_excused() {
        let mut c = ChanCheck::new(0);
        c.on_event(4, 40);
        c.on_gap();
        c.on_event(8, 80);
        let v = verify(&[c], 35, Until::Id(80), &ledger());
        assert!(v.problems.is_empty(), "{}", v.problems);
        assert_eq!(v.excused, 3);
    }
}
