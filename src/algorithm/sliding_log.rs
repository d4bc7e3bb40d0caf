//! Sliding log (exact): every admitted unit is remembered until it leaves
//! the window.
//!
//! `sliding_log.lua` beside this file is the Redis translation of this model:
//! one sorted set per quota, members are admitted units, scores their
//! admission times. `sliding_log_peek.lua` translates [`Model::peek`]: it
//! reads the set without trimming it.

use std::collections::VecDeque;

use super::{Model, Spec, Usage};
use crate::quota::{DEFAULT_MAX_LOG_COST, MAX_LOG_LIMIT};

/// What backends need to know about the sliding log.
pub(super) const SPEC: Spec = Spec {
    tag: 'l',
    lua: include_str!("sliding_log.lua"),
    peek_lua: include_str!("sliding_log_peek.lua"),
    // Sorted-set members must be unique per admitted unit across instances.
    nonce: true,
    max_limit: MAX_LOG_LIMIT,
    max_cost_cap: Some(DEFAULT_MAX_LOG_COST),
};

/// The state of one quota: the timestamp of every admitted unit, oldest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Log(VecDeque<u64>);

impl Log {
    /// Drops the entries that have left the window.
    fn trim(&mut self, now: u64, window: u64) {
        while self.0.front().is_some_and(|&t| t + window <= now) {
            self.0.pop_front();
        }
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
        let gone = self.0.partition_point(|&t| t + window <= now);
        let count = (self.0.len() - gone) as u64;
        let retry = (count.saturating_add(cost) > limit).then(|| {
            if cost > limit {
                window
            } else {
                // The k-th oldest entry still counted must leave before
                // `cost` units fit.
                let k = (count + cost - limit) as usize;
                self.0[gone + k - 1] + window - now
            }
        });
        let reset = self
            .0
            .back()
            .map_or(0, |&t| (t + window).saturating_sub(now));
        (retry, Usage { used: count, reset })
    }

    fn commit(&mut self, now: u64, _limit: u64, window: u64, cost: u64, admit: bool) -> Usage {
        if admit {
            let at = self.0.partition_point(|&t| t <= now);
            for _ in 0..cost {
                self.0.insert(at, now);
            }
        }
        let reset = self
            .0
            .back()
            .map_or(0, |&t| (t + window).saturating_sub(now));
        Usage {
            used: self.0.len() as u64,
            reset,
        }
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
