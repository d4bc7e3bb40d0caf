//! Sliding window counter (approximate): the previous fixed window's count,
//! weighted by its overlap with the sliding window, plus the current count.
//!
//! `sliding_window.lua` beside this file is the Redis translation of this
//! model, with the same floating-point operations in the same order: one
//! string `"<s> <c> <p>"` per quota (the current fixed window's start in µs,
//! its count, the previous window's count), read with one `GET` and written
//! with one `SET .. PX`. `sliding_window_peek.lua` translates [`Model::peek`].

use super::{Model, Refund, Spec, Usage};
use crate::quota::Quota;

/// What backends need to know about the sliding window counter.
pub(super) const SPEC: Spec = Spec {
    // `c`, not the `w` of the earlier layout (a hash): a key of the old
    // layout is never read as a string, which would be an error.
    tag: 'c',
    lua: concat!(
        include_str!("sliding_window.lua"),
        include_str!("state_main.lua")
    ),
    peek_lua: include_str!("sliding_window_peek.lua"),
    refund_lua: concat!(
        include_str!("sliding_window.lua"),
        include_str!("sliding_window_refund.lua")
    ),
    charge_lua: concat!(
        include_str!("sliding_window.lua"),
        include_str!("sliding_window_charge.lua")
    ),
    nonce: false,
    max_limit: Quota::MAX_LIMIT,
    // The counter does the same work whatever the cost.
    max_cost_cap: None,
};

/// The state of one quota: the start of the fixed window `cur` counts in, and
/// the count of the fixed window before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counter {
    pub start: u64,
    pub cur: u64,
    pub prev: u64,
}

/// The counter as seen at `now`: rolled forward to the fixed window holding
/// `now`. Returns the rolled state and the time elapsed in that window.
///
/// If the stored window starts *after* `now`'s (the clock stepped back), the
/// stored counts are kept as they are: a clock step must not forget counts.
fn roll(c: Counter, now: u64, window: u64) -> (Counter, u64) {
    let elapsed = now % window;
    let start = now - elapsed;
    let rolled = if c.start >= start {
        c
    } else if c.start + window == start {
        Counter {
            start,
            cur: 0,
            prev: c.cur,
        }
    } else {
        Counter {
            start,
            cur: 0,
            prev: 0,
        }
    };
    (rolled, elapsed)
}

/// The sliding estimate: the previous window's count weighted by its overlap
/// with the sliding window, plus the current count.
fn estimate(c: Counter, elapsed: u64, window: u64) -> u64 {
    let weight = (window - elapsed) as f64 / window as f64;
    ((c.prev as f64 * weight).floor() as u64).saturating_add(c.cur)
}

/// The first offset into a window at which `decaying` (the previous window's
/// count) weighs at most `room` units: the smallest `e` with
/// `floor(decaying * (W - e) / W) <= room`, plus 1 µs against rounding.
fn decayed_by(decaying: u64, room: u64, window: u64) -> u64 {
    let overlap = ((room + 1) as f64 * window as f64 / decaying as f64).ceil() as u64;
    (window + 2).saturating_sub(overlap)
}

/// How long until a request of `cost` fits, if nothing else is admitted.
/// Only meaningful when the request is denied now. Never shorter than the
/// real wait (the blocked-client cache relies on that) and at most 1 µs longer.
fn retry(c: Counter, elapsed: u64, window: u64, limit: u64, cost: u64) -> u64 {
    if cost > limit {
        return window;
    }
    if c.cur.saturating_add(cost) <= limit {
        // Wait, within this window, for the previous window's weight to decay.
        let target = decayed_by(c.prev, limit - cost - c.cur, window);
        target.saturating_sub(elapsed).max(1)
    } else {
        // Wait for the next window, where this window's count becomes the
        // decaying part.
        window - elapsed + decayed_by(c.cur, limit - cost, window)
    }
}

/// Time until the counts stop mattering: the estimate is zero from then on.
fn reset(c: Counter, elapsed: u64, window: u64) -> u64 {
    if c.cur > 0 {
        2 * window - elapsed
    } else if c.prev > 0 {
        window - elapsed
    } else {
        0
    }
}

impl Model for Counter {
    fn look(&mut self, now: u64, limit: u64, window: u64, cost: u64) -> Option<u64> {
        self.peek(now, limit, window, cost).0
    }

    fn peek(&self, now: u64, limit: u64, window: u64, cost: u64) -> (Option<u64>, Usage) {
        // Rolled on a copy: looking writes nothing.
        let (rolled, elapsed) = roll(*self, now, window);
        let used = estimate(rolled, elapsed, window);
        let retry = (used.saturating_add(cost) > limit)
            .then(|| retry(rolled, elapsed, window, limit, cost));
        (
            retry,
            Usage {
                used,
                reset: reset(rolled, elapsed, window),
            },
        )
    }

    fn commit(&mut self, now: u64, _limit: u64, window: u64, cost: u64, admit: bool) -> Usage {
        let (mut rolled, elapsed) = roll(*self, now, window);
        if admit {
            rolled.cur += cost;
            *self = rolled;
        }
        Usage {
            used: estimate(rolled, elapsed, window),
            reset: reset(rolled, elapsed, window),
        }
    }

    /// The request was counted in the fixed window holding `at`: if that
    /// is the current window at `now`, `cost` units leave the current
    /// count; if it is the previous one, they leave the previous count (the
    /// request now weighs there); never below zero. A request counted in an
    /// older window counts no more: nothing changes.
    fn refund(&mut self, refund: Refund, _limit: u64, window: u64) {
        let Refund { now, at, cost, .. } = refund;
        let (mut rolled, _) = roll(*self, now, window);
        let counted_in = at - at % window;
        if counted_in == rolled.start {
            rolled.cur -= cost.min(rolled.cur);
        } else if counted_in + window == rolled.start {
            rolled.prev -= cost.min(rolled.prev);
        } else {
            return;
        }
        *self = rolled;
    }

    /// The current fixed window's count grows by `cost`, at most to
    /// `MAX_DEBT_WINDOWS × limit`.
    fn charge(&mut self, now: u64, limit: u64, window: u64, cost: u64) {
        let (mut rolled, _) = roll(*self, now, window);
        let most = super::MAX_DEBT_WINDOWS.saturating_mul(limit);
        rolled.cur = rolled.cur.saturating_add(cost).min(most.max(rolled.cur));
        *self = rolled;
    }
}

/// The sliding window counter by definition: fixed windows `[kW, (k+1)W)`
/// count the units admitted in them, and the estimate at `at`, `e` into its
/// window, is `floor(prev * ((W - e) / W)) + cur`, computed in `f64` as
/// documented (and as Lua computes it).
#[cfg(test)]
pub(super) struct Definition;

#[cfg(test)]
impl super::reference::Definition for Definition {
    fn units(&self, history: &[(u64, u64)], _limit: u64, window: u64, at: u64) -> u64 {
        let (start, elapsed) = (at - at % window, at % window);
        let admitted_in = |from: u64| -> u64 {
            history
                .iter()
                .filter(|&&(t, _)| t - t % window == from)
                .map(|&(_, cost)| cost)
                .sum()
        };
        let cur = admitted_in(start);
        let prev = start.checked_sub(window).map_or(0, admitted_in);
        let weight = (window - elapsed) as f64 / window as f64;
        (prev as f64 * weight).floor() as u64 + cur
    }

    /// Until the newest fixed window holding units is neither the current
    /// nor the previous one.
    fn reset(&self, history: &[(u64, u64)], _limit: u64, window: u64, now: u64) -> u64 {
        history
            .iter()
            .map(|&(t, _)| (t - t % window + 2 * window).saturating_sub(now))
            .max()
            .unwrap_or(0)
    }

    /// Nothing older than two windows counts.
    fn horizon(&self, window: u64) -> Option<u64> {
        Some(2 * window)
    }

    /// The retry-after is never shorter than the real wait and at most 2 µs
    /// longer: 1 µs from rounding the overlap up, and 1 µs more for a
    /// client in debt (a charge put the current window's count past the
    /// limit), whose wait runs into the window after next (found by
    /// proptest: 424 446 µs against 424 444 µs).
    fn retry_slack(&self) -> u64 {
        2
    }
}
