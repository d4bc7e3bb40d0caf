//! GCRA, the generic cell rate algorithm (exact rate, O(1)): one number per
//! quota, the *theoretical arrival time* (TAT), the instant at which the
//! client's bucket would be empty again.
//!
//! `gcra.lua` beside this file is the Redis translation of this model, in
//! integer arithmetic only: one string key per quota holding the TAT in
//! microseconds, written with one `SET .. PX`. `gcra_peek.lua` translates
//! [`Model::peek`].
//!
//! # How a [`Quota`](crate::Quota) maps to GCRA
//!
//! A quota of `limit` units per `window` is a rate of `limit / window` with a
//! burst of `limit`: a client with no recent traffic may spend the whole
//! limit at once, and then earns one unit back every *emission interval*
//! `T = window / limit` (rounded up to a whole microsecond, so the rate is
//! never above the quota's, and at most one unit per microsecond). The
//! tolerance is `τ = limit × T` (the window, give or take the rounding).
//! For a smaller burst at the same rate, scale both: 10 per 6 s is the rate
//! of 100 per minute with a burst of 10.
//!
//! Admitting `cost` units at `now` moves the TAT to `max(TAT, now) + cost ×
//! T`, and is allowed when the new TAT is at most `now + τ`. So GCRA is exact
//! about the *rate* (over any interval of length `t`, at most `limit + t / T`
//! units), not about fixed counts per window: a client that spends its burst
//! and then keeps to the rate gets up to about `2 × limit` units in some
//! window of length `window`, as the sliding window counter may under
//! adversarial traffic. Use [`Algorithm::SlidingLog`](crate::Algorithm::SlidingLog)
//! when no window may ever hold more than the limit.
//!
//! # What the headers say
//!
//! With `L = max(TAT - now, 0)`, the part of the bucket still in use:
//!
//! - `remaining` (`r`): how many requests of cost 1 would be admitted now,
//!   one after the other: `floor((τ - L) / T)`, i.e. `limit - ceil(L / T)`;
//! - `reset` (`t`): when the quota is whole again (every unit back): `L`,
//!   which is also how long the key is kept (its TTL);
//! - `Retry-After` of a denied request of `cost` units: exactly when they
//!   fit, `L + cost × T - τ` (for cost 1, the next unit back; at least 1 µs,
//!   rounded up to whole seconds in headers). A cost above the limit never
//!   fits, and reports one window, as the other algorithms do.

use super::{Model, Refund, Spec, Usage};
use crate::quota::Quota;

/// What backends need to know about GCRA.
pub(super) const SPEC: Spec = Spec {
    tag: 'g',
    lua: concat!(include_str!("gcra.lua"), include_str!("state_main.lua")),
    peek_lua: include_str!("gcra_peek.lua"),
    refund_lua: include_str!("gcra_refund.lua"),
    charge_lua: concat!(include_str!("gcra.lua"), include_str!("gcra_charge.lua")),
    nonce: false,
    max_limit: Quota::MAX_LIMIT,
    // Same work whatever the cost.
    max_cost_cap: None,
};

/// The state of one quota: the theoretical arrival time in microseconds
/// (zero: never used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Tat(pub u64);

/// The emission interval of a quota: `window / limit`, rounded up.
pub(crate) fn interval(limit: u64, window: u64) -> u64 {
    window.div_ceil(limit.max(1))
}

impl Tat {
    /// The part of the bucket in use at `now`.
    fn level(self, now: u64) -> u64 {
        self.0.saturating_sub(now)
    }
}

/// `limit - ceil(level / T)`, as units used: `ceil(level / T)`.
fn used(level: u64, t: u64) -> u64 {
    level.div_ceil(t)
}

impl Model for Tat {
    fn look(&mut self, now: u64, limit: u64, window: u64, cost: u64) -> Option<u64> {
        self.peek(now, limit, window, cost).0
    }

    fn peek(&self, now: u64, limit: u64, window: u64, cost: u64) -> (Option<u64>, Usage) {
        let t = interval(limit, window);
        let tau = limit * t;
        let level = self.level(now);
        let retry = if cost > limit {
            Some(window)
        } else {
            // cost <= limit, so cost * t <= tau: no overflow.
            let needed = level + cost * t;
            (needed > tau).then(|| needed - tau)
        };
        (
            retry,
            Usage {
                used: used(level, t),
                reset: level,
            },
        )
    }

    fn commit(&mut self, now: u64, limit: u64, window: u64, cost: u64, admit: bool) -> Usage {
        let t = interval(limit, window);
        let mut level = self.level(now);
        if admit && cost > 0 {
            // Admitted: cost <= limit, so level + cost * t <= tau.
            level += cost * t;
            self.0 = now + level;
        }
        Usage {
            used: used(level, t),
            reset: level,
        }
    }

    /// The TAT moves back by `cost` emission intervals, never before `now`:
    /// `TAT' = max(TAT - cost × T, now)`, i.e. the level drops by
    /// `cost × T`, never below empty.
    ///
    /// Admissions only move the TAT forward, so, each request refunded at
    /// most once, `TAT - cost × T` is never below the state just before the
    /// request, `max(TAT before it, its instant)`: a refund never gives back
    /// more than its request took. Compared with never having admitted the
    /// request: the same level when, without it, the bucket would not have
    /// stood empty at a later admission (steady or bursty traffic); else
    /// up to `cost × T` lower, by the time the bucket would have stood
    /// empty (one number of state cannot replay the history).
    fn refund(&mut self, refund: Refund, limit: u64, window: u64) {
        let Refund { now, cost, .. } = refund;
        if self.0 > now {
            let back = cost.saturating_mul(interval(limit, window));
            self.0 = self.0.saturating_sub(back).max(now);
        }
    }

    /// `TAT = max(TAT, now) + cost × T`, the level at most
    /// `MAX_DEBT_WINDOWS × τ`.
    fn charge(&mut self, now: u64, limit: u64, window: u64, cost: u64) {
        let t = interval(limit, window);
        let most = super::MAX_DEBT_WINDOWS * limit * t;
        let level = self.level(now).saturating_add(cost.saturating_mul(t));
        self.0 = now + level.min(most.max(self.level(now)));
    }
}

/// GCRA by definition, in the closed form of the leaky bucket: the level at
/// `at` is the largest excess, over every suffix of the history starting at
/// a request `k`, of the units admitted since (each worth `T`) over the time
/// elapsed since `k`, or zero; the units counted are `ceil(level / T)`.
#[cfg(test)]
pub(super) struct Definition;

#[cfg(test)]
impl Definition {
    fn level(history: &[(u64, u64)], t: u64, at: u64) -> u64 {
        let mut suffix = 0_u64;
        let mut level = 0_u64;
        for &(time, cost) in history.iter().rev() {
            suffix += cost * t;
            level = level.max((suffix + time).saturating_sub(at));
        }
        level
    }
}

#[cfg(test)]
impl super::reference::Definition for Definition {
    fn units(&self, history: &[(u64, u64)], limit: u64, window: u64, at: u64) -> u64 {
        let t = interval(limit, window);
        used(Self::level(history, t, at), t)
    }

    /// Until the level is zero: every unit is back.
    fn reset(&self, history: &[(u64, u64)], limit: u64, window: u64, now: u64) -> u64 {
        Self::level(history, interval(limit, window), now)
    }

    /// Exact.
    fn retry_slack(&self) -> u64 {
        0
    }

    /// The level right after an admission is at most `τ = limit × T`, so
    /// once that long has passed since a request, it no longer counts: the
    /// history before a gap of `τ` can be forgotten, but not a fixed span.
    fn horizon(&self, _window: u64) -> Option<u64> {
        None
    }
}
