//! Sliding log (exact): every admitted unit is remembered until it leaves
//! the window.
//!
//! `sliding_log.lua` beside this file is the Redis translation of this model:
//! one sorted set per quota, one member per admitted request (its cost and
//! the running sum of costs in the member, its admission time as the
//! score). `sliding_log_peek.lua` translates [`Model::peek`]: it reads the
//! set without trimming it. Both start with `sliding_log_read.lua`, their
//! shared reads.

use std::collections::VecDeque;

use super::{Model, Refund, Spec, Usage};
use crate::quota::{self, Quota};

/// What backends need to know about the sliding log.
pub(super) const SPEC: Spec = Spec {
    tag: 'w',
    lua: concat!(
        include_str!("sliding_log_read.lua"),
        include_str!("sliding_log.lua")
    ),
    peek_lua: concat!(
        include_str!("sliding_log_read.lua"),
        include_str!("sliding_log_peek.lua")
    ),
    // Sorted-set members must be unique per admitted unit across instances.
    nonce: true,
    refund_lua: concat!(
        include_str!("sliding_log_read.lua"),
        include_str!("sliding_log_refund.lua")
    ),
    charge_lua: concat!(
        include_str!("sliding_log_read.lua"),
        include_str!("sliding_log_charge.lua")
    ),
    max_limit: Quota::MAX_LOG_LIMIT,
    max_cost_cap: Some(quota::DEFAULT_MAX_LOG_COST),
};

/// The state of one quota: one weighted entry per admitted request (its
/// admission time and its cost), oldest first, and the units they hold.
///
/// A request of cost n is one entry, not n: a quota of limit L holds at
/// most L entries however costly the requests ([`Log::bytes`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Log {
    entries: VecDeque<(u64, u64)>,
    /// The sum of the entries' costs.
    units: u64,
}

impl Log {
    /// Drops the entries that have left the window.
    fn trim(&mut self, now: u64, window: u64) {
        while let Some(&(t, cost)) = self.entries.front() {
            if t + window > now {
                break;
            }
            self.units -= cost;
            self.entries.pop_front();
        }
        // A client that slowed down gives back what its busiest window took.
        if self.entries.capacity() > 64 && self.entries.len() * 4 <= self.entries.capacity() {
            self.entries.shrink_to(self.entries.len() * 2);
        }
    }

    /// The heap bytes the state holds.
    pub(crate) fn bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(u64, u64)>()
    }

    /// How long until `need` units of the entries from `first` on have left
    /// the window (`window` if they hold fewer).
    fn until_left(&self, first: usize, need: u64, now: u64, window: u64) -> u64 {
        let mut left = 0;
        for &(t, cost) in self.entries.range(first..) {
            left += cost;
            if left >= need {
                return t + window - now;
            }
        }
        window
    }

    /// How long until nothing is counted any more.
    fn reset(&self, now: u64, window: u64) -> u64 {
        self.entries
            .back()
            .map_or(0, |&(t, _)| (t + window).saturating_sub(now))
    }
}

impl Model for Log {
    fn look(&mut self, now: u64, limit: u64, window: u64, cost: u64) -> Option<u64> {
        self.trim(now, window);
        self.peek(now, limit, window, cost).0
    }

    fn peek(&self, now: u64, limit: u64, window: u64, cost: u64) -> (Option<u64>, Usage) {
        // The entries that have left the window, oldest first, are skipped,
        // not dropped.
        let gone = self.entries.partition_point(|&(t, _)| t + window <= now);
        let gone_units: u64 = self.entries.range(..gone).map(|&(_, c)| c).sum();
        let count = self.units - gone_units;
        let retry = (count.saturating_add(cost) > limit).then(|| {
            if cost > limit {
                window
            } else {
                // The oldest entries still counted must leave until `cost`
                // units fit.
                self.until_left(gone, count + cost - limit, now, window)
            }
        });
        let reset = self.reset(now, window);
        (retry, Usage { used: count, reset })
    }

    fn commit(&mut self, now: u64, _limit: u64, window: u64, cost: u64, admit: bool) -> Usage {
        if admit && cost > 0 {
            // Never before the newest entry (the clock stepped back): the
            // entries stay in admission order, and leave no earlier than
            // the clock says.
            let at = self.entries.back().map_or(now, |&(t, _)| t.max(now));
            self.entries.push_back((at, cost));
            self.units += cost;
        }
        Usage {
            used: self.units,
            reset: self.reset(now, window),
        }
    }

    /// The request's entry is the first one of its instant and cost (any
    /// of several alike gives the same log). If it is still in the window
    /// at `now`, `cost` units leave it, and it leaves the log once it holds
    /// none; an entry that has left the window (or was already refunded)
    /// is left alone. Redis finds the entry by the request's nonce instead
    /// (`sliding_log_refund.lua`), with the same outcome.
    fn refund(&mut self, refund: Refund, _limit: u64, window: u64) {
        let Refund {
            now,
            at,
            admitted,
            cost,
        } = refund;
        if at.saturating_add(window) <= now {
            return;
        }
        let found = self
            .entries
            .iter()
            .position(|&(t, c)| t == at && c == admitted);
        let Some(index) = found else {
            return;
        };
        let back = cost.min(admitted);
        if back == admitted {
            self.entries.remove(index);
        } else {
            self.entries[index].1 -= back;
        }
        self.units -= back;
    }

    /// One entry of `cost` at `now` (never before the newest entry), as an
    /// admission would add, after dropping what has left the window.
    fn charge(&mut self, now: u64, limit: u64, window: u64, cost: u64) {
        self.trim(now, window);
        self.commit(now, limit, window, cost, true);
    }
}

/// The sliding log by definition: the units admitted in `(at - W, at]`.
#[cfg(test)]
pub(super) struct Definition;

#[cfg(test)]
impl super::reference::Definition for Definition {
    fn units(&self, history: &[(u64, u64)], _limit: u64, window: u64, at: u64) -> u64 {
        history
            .iter()
            .filter(|&&(t, _)| t + window > at)
            .map(|&(_, cost)| cost)
            .sum()
    }

    /// Until the newest unit leaves.
    fn reset(&self, history: &[(u64, u64)], _limit: u64, window: u64, now: u64) -> u64 {
        history
            .iter()
            .map(|&(t, _)| (t + window).saturating_sub(now))
            .max()
            .unwrap_or(0)
    }

    /// Nothing older than two windows counts.
    fn horizon(&self, window: u64) -> Option<u64> {
        Some(2 * window)
    }

    /// Exact.
    fn retry_slack(&self) -> u64 {
        0
    }
}
