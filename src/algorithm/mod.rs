//! The counting algorithms, without I/O.
//!
//! Each algorithm has one home, a file with its pure model (the state of one
//! quota, the *look* phase telling whether and when `cost` units fit, the
//! *commit* phase consuming them and reporting usage) and its [`Spec`] (what
//! every backend needs to know about it), with its Lua script beside it: a
//! line-by-line translation of the model (same order of floating-point
//! operations, so both produce identical numbers).
//!
//! - [`sliding_log`]: [`Algorithm::SlidingLog`], `sliding_log.lua`;
//! - [`sliding_window`]: [`Algorithm::SlidingWindow`], `sliding_window.lua`;
//! - [`gcra`]: [`Algorithm::Gcra`], `gcra.lua`.
//!
//! This module holds what they share: the [`Algorithm`] enum, the dispatch
//! from it to each algorithm, [`check`], the all-or-nothing driver over
//! the quotas of a policy, [`refund`] and [`charge`] (a cost counted
//! unconditionally, into debt), and [`peek`], the read-only twin of check
//! (each algorithm has a second, read-only script for it). The in-process backend runs this code, the Redis
//! backend the scripts; the tests below check every model against its naive
//! definition (`reference.rs`), and the conformance suite in `tests/` runs the same
//! scenarios against both backends.
//!
//! Adding an algorithm: a variant of [`Algorithm`] (listed in
//! [`Algorithm::ALL`]), its file (model with its read-only `peek`, [`Spec`],
//! and for the tests its naive `Definition`), its scripts (check, peek,
//! refund and charge: see [`Spec`]), and one arm in each `match` of this
//! module. Backends and tests find it through [`Algorithm::ALL`] and
//! [`Algorithm::spec`].
//!
//! Time is in microseconds. A window of length `W` ending at `now` is
//! `(now - W, now]`.

use std::time::Duration;

use crate::decision::{Decision, Origin, QuotaStatus};
use crate::quota::Quota;

mod gcra;
#[cfg(test)]
pub(crate) mod reference;
mod sliding_log;
mod sliding_window;

/// How requests are counted within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// Exact sliding log: every admitted request is remembered, with its
    /// cost, until it leaves the window. Never admits more than the limit in
    /// any window; memory grows with the number of requests admitted in a
    /// window (one sorted-set member per admitted request in Redis, however
    /// costly: at most the limit).
    SlidingLog,
    /// Approximate sliding window counter: the previous fixed window's count,
    /// weighted by how much of it still overlaps the sliding window, plus the
    /// current window's count. O(1) memory per client. Exact under smooth
    /// traffic; adversarial bursts at a window boundary can admit up to about
    /// twice the limit within some window of length W.
    #[default]
    SlidingWindow,
    /// GCRA, the generic cell rate algorithm (as in governor, redis-cell and
    /// go-redis/redis_rate): a quota of `limit` per `window` is a steady rate
    /// of one unit per `window / limit` (the emission interval, rounded up to
    /// a whole microsecond) with a burst of `limit`. One number per client
    /// (the theoretical arrival time), O(1), the cheapest in Redis. Exact
    /// about the rate, not about counts per window: a client that spends its
    /// burst and then keeps to the rate may get up to about twice the limit
    /// within some window of length W. For a smaller burst at the same rate,
    /// scale the quota down (10 per 6 s: the rate of 100 per minute, a burst
    /// of 10).
    ///
    /// Headers: `remaining` is how many requests of cost 1 would be admitted
    /// now, one after the other; `reset` is when the whole limit is available
    /// again (the bucket has drained); the `Retry-After` of a denied request
    /// is exactly when its cost fits (for cost 1: the next unit back).
    Gcra,
}

impl Algorithm {
    /// Every algorithm (backends that prepare something per algorithm, such
    /// as a script cache, iterate over it).
    pub(crate) const ALL: &[Algorithm] = &[
        Algorithm::SlidingLog,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ];

    /// What backends need to know about this algorithm.
    pub(crate) fn spec(self) -> &'static Spec {
        match self {
            Algorithm::SlidingLog => &sliding_log::SPEC,
            Algorithm::SlidingWindow => &sliding_window::SPEC,
            Algorithm::Gcra => &gcra::SPEC,
        }
    }
}

#[cfg(test)]
impl Algorithm {
    /// The naive definition the tests compare the model with.
    pub(crate) fn definition(self) -> &'static dyn reference::Definition {
        match self {
            Algorithm::SlidingLog => &sliding_log::Definition,
            Algorithm::SlidingWindow => &sliding_window::Definition,
            Algorithm::Gcra => &gcra::Definition,
        }
    }
}

/// What every backend needs to know about an algorithm, besides its model.
#[derive(Debug)]
pub(crate) struct Spec {
    /// The letter tagging its Redis keys (`<prefix>:{<policy>:<key>}:<tag><window
    /// in ms>`): two policies that share a name but count differently never
    /// read each other's data.
    pub tag: char,
    /// The Lua script running the model in Redis. Every script takes the same
    /// keys and arguments and replies alike (see `backend/redis/script.rs`).
    pub lua: &'static str,
    /// The read-only Lua script running [`peek`] in Redis: the same keys,
    /// arguments and reply as `lua`, and no write at all (it is sent with
    /// `EVALSHA_RO` where the server knows it).
    pub peek_lua: &'static str,
    /// The Lua script giving back what a request took (see [`refund`]):
    /// its own keys and arguments (see `backend/redis/script.rs`), one call
    /// per refund, and a reply of 1.
    pub refund_lua: &'static str,
    /// The Lua script counting a charge (see [`charge`]): called with the
    /// check's keys and arguments (the nonce: one of its own), one call
    /// per charge, and a reply of 1. Its cap of 100 is
    /// [`MAX_DEBT_WINDOWS`].
    pub charge_lua: &'static str,
    /// Whether the script needs a per-request nonce, unique across instances.
    pub nonce: bool,
    /// The largest limit a quota may have.
    pub max_limit: u64,
    /// The most the default max cost of a policy may be, below its smallest
    /// limit (`None`: the smallest limit alone).
    pub max_cost_cap: Option<u64>,
}

impl Spec {
    /// The default max cost of a policy whose smallest limit is
    /// `smallest_limit` (`None`: no quota).
    pub(crate) fn default_max_cost(&self, smallest_limit: Option<u64>) -> Option<u64> {
        match (smallest_limit, self.max_cost_cap) {
            (Some(limit), Some(cap)) => Some(limit.min(cap)),
            (Some(limit), None) => Some(limit),
            (None, cap) => cap,
        }
    }
}

/// The two phases of one algorithm on the state of one quota.
pub(crate) trait Model {
    /// Whether `cost` more units fit at `now` in a quota of `limit` units per
    /// `window`: `None` if they do, else how long until they would if nothing
    /// else were admitted (`window` if `cost > limit`: never). Writes nothing
    /// that counts (it may drop what has left the window).
    fn look(&mut self, now: u64, limit: u64, window: u64, cost: u64) -> Option<u64>;

    /// Consumes `cost` units at `now` if `admit` (only after a `look` that
    /// found they fit), and reports the usage.
    fn commit(&mut self, now: u64, limit: u64, window: u64, cost: u64, admit: bool) -> Usage;

    /// What `look` of `cost` and then `commit` of nothing would report at
    /// `now`, computed from the state as it is: drops nothing, writes nothing.
    fn peek(&self, now: u64, limit: u64, window: u64, cost: u64) -> (Option<u64>, Usage);

    /// Gives back, at `now`, `cost` units (at most `admitted`) of the
    /// request admitted at `at` for `admitted` units (see [`refund`]).
    fn refund(&mut self, refund: Refund, limit: u64, window: u64);

    /// Counts `cost` more units at `now` (at most [`charged`]'s), admitted
    /// or not: the state may go past the limit, into debt (see [`charge`]).
    fn charge(&mut self, now: u64, limit: u64, window: u64, cost: u64);
}

/// One refund, as every quota's model takes it: at `now`, give back
/// `cost` units (never more than `admitted`) of the request that a check
/// at `at` (on the same clock, never after `now`) admitted for `admitted`
/// units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refund {
    pub now: u64,
    pub at: u64,
    pub admitted: u64,
    pub cost: u64,
}

/// A quota's usage after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    /// The units counted now.
    pub used: u64,
    /// How long until nothing is counted any more (zero: nothing is), i.e.
    /// how long the state must be kept.
    pub reset: u64,
}

/// The stored state of one quota of one client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum QuotaState {
    /// [`Algorithm::SlidingLog`].
    Log(sliding_log::Log),
    /// [`Algorithm::SlidingWindow`].
    Counter(sliding_window::Counter),
    /// [`Algorithm::Gcra`].
    Rate(gcra::Tat),
}

impl QuotaState {
    pub(crate) fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::SlidingLog => QuotaState::Log(Default::default()),
            Algorithm::SlidingWindow => QuotaState::Counter(Default::default()),
            Algorithm::Gcra => QuotaState::Rate(Default::default()),
        }
    }

    /// The algorithm this state belongs to.
    pub(crate) fn algorithm(&self) -> Algorithm {
        match self {
            QuotaState::Log(_) => Algorithm::SlidingLog,
            QuotaState::Counter(_) => Algorithm::SlidingWindow,
            QuotaState::Rate(_) => Algorithm::Gcra,
        }
    }

    /// The heap bytes this state holds beside its own size: a sliding
    /// log's entries (at most one per admitted request in its window, so at
    /// most its limit), nothing for the counter and GCRA.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            QuotaState::Log(log) => log.bytes(),
            QuotaState::Counter(_) | QuotaState::Rate(_) => 0,
        }
    }

    pub(crate) fn matches(&self, algorithm: Algorithm) -> bool {
        self.algorithm() == algorithm
    }

    fn model(&mut self) -> &mut dyn Model {
        match self {
            QuotaState::Log(log) => log,
            QuotaState::Counter(counter) => counter,
            QuotaState::Rate(tat) => tat,
        }
    }

    fn model_ref(&self) -> &dyn Model {
        match self {
            QuotaState::Log(log) => log,
            QuotaState::Counter(counter) => counter,
            QuotaState::Rate(tat) => tat,
        }
    }
}

/// The cost a [`peek`] asks about: whether one more request would fit.
pub(crate) const PEEK_COST: u64 = 1;

/// The state of one quota after a decision.
fn status(quota: &Quota, Usage { used, reset }: Usage) -> QuotaStatus {
    let limit = quota.limit();
    QuotaStatus {
        limit,
        window: quota.window(),
        remaining: limit.saturating_sub(used),
        reset_after: Duration::from_micros(reset),
    }
}

/// The quota with the longest wait among `retries` (the first one wins
/// ties), and that wait; `None` if every quota admits the request.
fn longest(retries: impl IntoIterator<Item = Option<u64>>) -> Option<(usize, u64)> {
    let mut denied: Option<(usize, u64)> = None;
    for (i, retry) in retries.into_iter().enumerate() {
        if let Some(r) = retry
            && denied.is_none_or(|(_, best)| r > best)
        {
            denied = Some((i, r));
        }
    }
    denied
}

/// What the quotas look like at `now`, without consuming, dropping or
/// writing anything: every quota's status as a check of cost 0 would report
/// it, and whether a request of [`PEEK_COST`] would be admitted (if not, the
/// denying quota and the retry-after that check would report).
///
/// So a denied peek is exactly the decision a check of [`PEEK_COST`] would
/// make, and an admitted one has the statuses of a check of cost 0.
pub(crate) fn peek(states: &[QuotaState], quotas: &[Quota], now: u64) -> Decision {
    debug_assert_eq!(states.len(), quotas.len());
    let mut retries = Vec::with_capacity(quotas.len());
    let statuses = states
        .iter()
        .zip(quotas)
        .map(|(state, quota)| {
            let (retry, usage) =
                state
                    .model_ref()
                    .peek(now, quota.limit(), quota.window_us(), PEEK_COST);
            retries.push(retry);
            status(quota, usage)
        })
        .collect();
    let denied = longest(retries).map(|(i, r)| (i, Duration::from_micros(r)));
    Decision::new(statuses, denied)
}

/// Gives back what a request took, in every quota (see [`Model::refund`] in
/// each algorithm's file for the exact rule):
///
/// - sliding log: the request's own entry leaves the log (its cost is
///   lowered, for a partial refund), if it is still in the window; else
///   nothing changes;
/// - sliding window counter: `cost` units leave the count of the fixed
///   window the request was counted in, if it is the current or the
///   previous one (never below zero); else nothing changes;
/// - GCRA: the theoretical arrival time moves back by `cost` emission
///   intervals, never before `now` (a bucket is at most empty).
///
/// `refund.cost` is capped at `refund.admitted`. Returns how long the state
/// must be kept now (zero: nothing is counted any more).
pub(crate) fn refund(states: &mut [QuotaState], quotas: &[Quota], refund: Refund) -> u64 {
    debug_assert_eq!(states.len(), quotas.len());
    let refund = Refund {
        cost: refund.cost.min(refund.admitted),
        ..refund
    };
    let mut keep = 0;
    for (state, quota) in states.iter_mut().zip(quotas) {
        let (limit, window) = (quota.limit(), quota.window_us());
        if refund.cost > 0 && refund.at <= refund.now {
            state.model().refund(refund, limit, window);
        }
        let (_, usage) = state.model_ref().peek(refund.now, limit, window, 0);
        keep = keep.max(usage.reset);
    }
    keep
}

/// The most debt a quota holds, in windows' worth of its limit: one charge
/// counts at most `MAX_DEBT_WINDOWS × limit` units, and GCRA's level and the
/// counter's current count stop there too (a debt drains in about that
/// many windows at most), so that every stored number stays exact (below
/// 2^53 in Redis' Lua).
pub(crate) const MAX_DEBT_WINDOWS: u64 = 100;

/// The units one charge of `cost` counts in a quota of `limit`: `cost`, at
/// most [`MAX_DEBT_WINDOWS`] × `limit`.
pub(crate) fn charged(cost: u64, limit: u64) -> u64 {
    cost.min(limit.saturating_mul(MAX_DEBT_WINDOWS))
}

/// Counts `cost` more units in every quota at `now`, unconditionally (no
/// admission check): the quotas may go past their limits, into debt, and
/// checks are denied until the debt has drained. Exactly what an admission
/// of `cost` would count (see [`charged`] for the cap):
///
/// - sliding log: one entry of `cost` at `now` (never before the newest
///   entry), which leaves the window whole after one window;
/// - sliding window counter: the current fixed window's count grows by
///   `cost` (the estimate drains as the window slides on), at most to
///   `MAX_DEBT_WINDOWS × limit`;
/// - GCRA: `TAT = max(TAT, now) + cost × T`, at most `now +
///   MAX_DEBT_WINDOWS × τ`.
///
/// Returns how long the state must be kept now (zero: nothing is counted).
pub(crate) fn charge(states: &mut [QuotaState], quotas: &[Quota], now: u64, cost: u64) -> u64 {
    debug_assert_eq!(states.len(), quotas.len());
    let mut keep = 0;
    for (state, quota) in states.iter_mut().zip(quotas) {
        let (limit, window) = (quota.limit(), quota.window_us());
        let model = state.model();
        if cost > 0 {
            model.charge(now, limit, window, charged(cost, limit));
        }
        let (_, usage) = model.peek(now, limit, window, 0);
        keep = keep.max(usage.reset);
    }
    keep
}

/// Checks and (if every quota admits it) consumes `cost` units from every quota,
/// all-or-nothing. `states[i]` belongs to `quotas[i]`.
///
/// Returns the decision and how long the state must be kept (zero: nothing to
/// keep).
pub(crate) fn check(
    states: &mut [QuotaState],
    quotas: &[Quota],
    now: u64,
    cost: u64,
) -> (Decision, u64) {
    debug_assert_eq!(states.len(), quotas.len());
    // Phase 1: look, write nothing that counts. The longest wait decides;
    // the first quota wins ties.
    let denied = longest(states.iter_mut().zip(quotas).map(|(state, quota)| {
        state
            .model()
            .look(now, quota.limit(), quota.window_us(), cost)
    }));
    // Phase 2: consume everywhere, or nowhere.
    let admit = denied.is_none();
    let mut keep = 0;
    let statuses = states
        .iter_mut()
        .zip(quotas)
        .map(|(state, quota)| {
            let usage = state
                .model()
                .commit(now, quota.limit(), quota.window_us(), cost, admit);
            keep = keep.max(usage.reset);
            status(quota, usage)
        })
        .collect();
    let denied = denied.map(|(i, r)| (i, Duration::from_micros(r)));
    let decision = Decision::new(statuses, denied).stamped(cost, Origin::Memory { at: now });
    (decision, keep)
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::reference::{Reference, strategy};
    use super::*;

    const SEC: u64 = 1_000_000;

    fn states(alg: Algorithm, n: usize) -> Vec<QuotaState> {
        (0..n).map(|_| QuotaState::new(alg)).collect()
    }

    #[test]
    fn counter_estimate_at_window_boundaries() {
        let w = 60 * SEC;
        let q = [Quota::per_minute(100)];
        let mut s = states(Algorithm::SlidingWindow, 1);
        // 80 requests early in window [0, 60s).
        let t0 = 600 * SEC; // aligned window start
        for _ in 0..80 {
            assert!(check(&mut s, &q, t0 + SEC, 1).0.is_allowed());
        }
        // At the very start of the next window, the previous 80 weigh fully.
        let (d, _) = check(&mut s, &q, t0 + w, 1);
        assert!(d.is_allowed());
        assert_eq!(d.quotas()[0].remaining, 100 - 80 - 1);
        // Halfway through: 80 * 0.5 + 1 (the request above) + 1.
        let (d, _) = check(&mut s, &q, t0 + w + w / 2, 1);
        assert_eq!(d.quotas()[0].remaining, 100 - 40 - 2);
        // Two windows later everything is forgotten.
        let (d, _) = check(&mut s, &q, t0 + 3 * w, 1);
        assert_eq!(d.quotas()[0].remaining, 99);
    }

    #[test]
    fn counter_retry_is_exact_enough() {
        let q = [Quota::per_second(10)];
        let mut s = states(Algorithm::SlidingWindow, 1);
        let t0 = 100 * SEC;
        for _ in 0..10 {
            assert!(check(&mut s, &q, t0, 1).0.is_allowed());
        }
        // Denied in the same window: must wait for the next window, where the
        // previous 10 weigh floor(10 * (W - e) / W) = 9 from e = 1 µs on.
        let (d, _) = check(&mut s, &q, t0 + SEC / 2, 1);
        let r = d.retry_after().unwrap().as_micros() as u64;
        assert!(!d.is_allowed());
        assert_eq!(r, 500_002);
        // Exact to the microsecond, plus 1 µs against rounding.
        assert!(!check(&mut s, &q, t0 + SEC / 2 + r - 2, 1).0.is_allowed());
        assert!(check(&mut s, &q, t0 + SEC / 2 + r, 1).0.is_allowed());
    }

    #[test]
    fn counter_keeps_counts_when_the_clock_steps_back() {
        let q = [Quota::per_minute(10)];
        let mut s = states(Algorithm::SlidingWindow, 1);
        let t0 = 6_000 * SEC;
        for _ in 0..10 {
            assert!(check(&mut s, &q, t0 + SEC, 1).0.is_allowed());
        }
        // An NTP step 30 s back, into the previous window: still full.
        assert!(!check(&mut s, &q, t0 - 29 * SEC, 1).0.is_allowed());
        assert!(!check(&mut s, &q, t0 + 2 * SEC, 1).0.is_allowed());
    }

    #[test]
    fn huge_costs_are_denied_without_overflow() {
        for &alg in Algorithm::ALL {
            let q = [Quota::per_second(10)];
            let mut s = states(alg, 1);
            for _ in 0..10 {
                assert!(check(&mut s, &q, 5 * SEC, 1).0.is_allowed());
            }
            let (d, _) = check(&mut s, &q, 5 * SEC, u64::MAX);
            assert!(!d.is_allowed(), "{alg:?}");
            assert!(!check(&mut s, &q, 5 * SEC, 1).0.is_allowed(), "{alg:?}");
        }
    }

    #[test]
    fn log_is_exact_and_retry_is_exact() {
        let q = [Quota::per_second(3)];
        let mut s = states(Algorithm::SlidingLog, 1);
        for t in [0, 100, 200] {
            assert!(check(&mut s, &q, 10 * SEC + t * 1000, 1).0.is_allowed());
        }
        let (d, _) = check(&mut s, &q, 10 * SEC + 500_000, 1);
        assert_eq!(d.retry_after(), Some(Duration::from_millis(500)));
        assert!(!check(&mut s, &q, 11 * SEC - 1, 1).0.is_allowed());
        assert!(check(&mut s, &q, 11 * SEC, 1).0.is_allowed());
        // Cost 2 at 11.05s: entries at 10.1 and 10.2 and 11.0 -> the 2nd oldest
        // (10.2) must leave.
        let (d, _) = check(&mut s, &q, 11 * SEC + 50_000, 2);
        assert_eq!(d.retry_after(), Some(Duration::from_millis(150)));
    }

    #[test]
    fn gcra_spends_the_burst_then_earns_one_unit_per_interval() {
        // 4 per second: one unit back every 250 ms, a burst of 4.
        let q = [Quota::per_second(4)];
        let mut s = states(Algorithm::Gcra, 1);
        let t0 = 10 * SEC;
        for left in (0..4).rev() {
            let (d, keep) = check(&mut s, &q, t0, 1);
            assert!(d.is_allowed());
            assert_eq!(d.quotas()[0].remaining, left);
            assert_eq!(keep, (4 - left) * 250_000);
        }
        // Full: the next unit is back 250 ms after the burst, exactly.
        let (d, _) = check(&mut s, &q, t0 + 100_000, 1);
        assert_eq!(d.denied_by(), Some(0));
        assert_eq!(d.retry_after(), Some(Duration::from_millis(150)));
        assert_eq!(d.quotas()[0].remaining, 0);
        assert_eq!(d.quotas()[0].reset_after, Duration::from_millis(900));
        assert!(!check(&mut s, &q, t0 + 250_000 - 1, 1).0.is_allowed());
        let (d, _) = check(&mut s, &q, t0 + 250_000, 1);
        assert!(d.is_allowed());
        assert_eq!(d.quotas()[0].remaining, 0);
        assert_eq!(d.quotas()[0].reset_after, Duration::from_secs(1));
        // Two units need two intervals of room: 950 ms used, 500 ms more,
        // 1 s of tolerance.
        let (d, _) = check(&mut s, &q, t0 + 300_000, 2);
        assert_eq!(d.retry_after(), Some(Duration::from_millis(450)));
        // Half a second idle gives two units back.
        let (d, _) = check(&mut s, &q, t0 + 750_000, 2);
        assert!(d.is_allowed());
        assert_eq!(d.quotas()[0].remaining, 0);
    }

    #[test]
    fn gcra_rounds_the_interval_up_and_keeps_the_whole_burst() {
        // 3 per second: T = 333 334 µs (never faster than the quota), and
        // the tolerance is 3 T, so the burst of 3 fits at once.
        let q = [Quota::per_second(3)];
        let mut s = states(Algorithm::Gcra, 1);
        let t0 = 20 * SEC;
        for _ in 0..3 {
            assert!(check(&mut s, &q, t0, 1).0.is_allowed());
        }
        let (d, keep) = check(&mut s, &q, t0, 1);
        assert_eq!(d.retry_after(), Some(Duration::from_micros(333_334)));
        assert_eq!(keep, 1_000_002);
        // 1 per µs at most, even for a limit above the window in µs.
        let q = [Quota::new(5_000, Duration::from_millis(1))];
        let mut s = states(Algorithm::Gcra, 1);
        let (d, _) = check(&mut s, &q, t0, 5_000);
        assert!(d.is_allowed());
        assert_eq!(d.quotas()[0].reset_after, Duration::from_micros(5_000));
        assert!(!check(&mut s, &q, t0 + 1, 2).0.is_allowed());
    }

    #[test]
    fn gcra_keeps_its_level_when_the_clock_steps_back() {
        let q = [Quota::per_minute(10)];
        let mut s = states(Algorithm::Gcra, 1);
        let t0 = 6_000 * SEC;
        for _ in 0..10 {
            assert!(check(&mut s, &q, t0, 1).0.is_allowed());
        }
        assert!(!check(&mut s, &q, t0 - 30 * SEC, 1).0.is_allowed());
        assert!(!check(&mut s, &q, t0 + 2 * SEC, 1).0.is_allowed());
        assert!(check(&mut s, &q, t0 + 6 * SEC, 1).0.is_allowed());
    }

    #[test]
    fn multi_quota_all_or_nothing() {
        let q = [Quota::per_second(2), Quota::per_minute(3)];
        for &alg in Algorithm::ALL {
            let mut s = states(alg, 2);
            let t = 120 * SEC;
            assert!(check(&mut s, &q, t, 1).0.is_allowed());
            assert!(check(&mut s, &q, t, 1).0.is_allowed());
            let (d, _) = check(&mut s, &q, t, 1);
            assert_eq!(d.denied_by(), Some(0), "{alg:?}");
            // Denied: the minute quota was not charged.
            assert_eq!(d.quotas()[1].remaining, 1, "{alg:?}");
            let (d, _) = check(&mut s, &q, t + 2 * SEC, 1);
            assert!(d.is_allowed(), "{alg:?}");
            let (d, _) = check(&mut s, &q, t + 4 * SEC, 1);
            assert_eq!(d.denied_by(), Some(1), "{alg:?}");
        }
    }

    #[test]
    fn cost_above_limit_never_fits() {
        for &alg in Algorithm::ALL {
            let q = [Quota::per_second(3)];
            let mut s = states(alg, 1);
            let (d, keep) = check(&mut s, &q, 5 * SEC, 4);
            assert_eq!(d.retry_after(), Some(Duration::from_secs(1)));
            assert_eq!(keep, 0);
        }
    }

    /// Runs `steps` (clock advance, cost) from `start` through [`check`] and
    /// the reference model, comparing every decision and how long the state
    /// is kept (until the last quota resets).
    fn agree_with_the_reference(
        algorithm: Algorithm,
        quotas: &[Quota],
        start: u64,
        steps: &[(u64, u64)],
    ) -> Result<(), TestCaseError> {
        let mut states = states(algorithm, quotas.len());
        let mut reference = Reference::new(algorithm, quotas);
        let mut now = start;
        for (step, &(advance, cost)) in steps.iter().enumerate() {
            now += advance;
            let what = format!("step {step}, +{} us, cost {cost}", now - start);
            peek_agrees(&states, quotas, now, &reference, algorithm)
                .map_err(|e| TestCaseError::fail(format!("{what}, peek: {e}")))?;
            let (got, keep) = check(&mut states, quotas, now, cost);
            reference
                .check(now, cost)
                .agrees(&got, algorithm)
                .map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
            let longest_reset = got.quotas().iter().map(|q| q.reset_after).max();
            prop_assert_eq!(Some(Duration::from_micros(keep)), longest_reset, "{}", what);
        }
        Ok(())
    }

    /// A peek at `now` changes no state, agrees with the reference's peek,
    /// and is what a check would report on a copy of the state: exactly a
    /// check of [`PEEK_COST`] when that is denied, else admitted with the
    /// statuses of a check of cost 0.
    fn peek_agrees(
        states: &[QuotaState],
        quotas: &[Quota],
        now: u64,
        reference: &Reference,
        algorithm: Algorithm,
    ) -> Result<(), String> {
        let before = states.to_vec();
        let peeked = peek(states, quotas, now);
        if states != before.as_slice() {
            return Err(format!("the state changed: {before:?} -> {states:?}"));
        }
        reference.peek(now, PEEK_COST).agrees(&peeked, algorithm)?;
        let (one, _) = check(&mut before.clone(), quotas, now, PEEK_COST);
        let (zero, _) = check(&mut before.clone(), quotas, now, 0);
        let expected = if one.is_allowed() {
            Decision::allowed(zero.quotas().to_vec())
        } else {
            one
        };
        if peeked != expected {
            return Err(format!(
                "got {peeked:?}, a check on a copy says {expected:?}"
            ));
        }
        Ok(())
    }

    /// After a refund or a charge at `now`: a peek agrees with the
    /// reference ([`peek_agrees`]), and the state is kept (`keep`, µs) as
    /// long as the reference's longest reset.
    fn adjusted_agrees(
        states: &[QuotaState],
        quotas: &[Quota],
        now: u64,
        reference: &Reference,
        algorithm: Algorithm,
        keep: u64,
        what: &str,
    ) -> Result<(), TestCaseError> {
        peek_agrees(states, quotas, now, reference, algorithm)
            .map_err(|e| TestCaseError::fail(format!("{what}, peek: {e}")))?;
        let longest = reference
            .peek(now, 0)
            .statuses
            .iter()
            .map(|q| q.reset_after)
            .max();
        prop_assert_eq!(Some(Duration::from_micros(keep)), longest, "{}", what);
        Ok(())
    }

    /// A step of a sequence with refunds: clock advance, the request's cost,
    /// and (instead of the request) a refund (see `strategy::refund`).
    type RefundStep = (u64, u64, Option<(usize, u64)>);

    /// Runs `steps` from `start` through [`check`], [`refund`] and the
    /// reference model: a request, or a refund of one of the admissions
    /// not yet refunded; every decision, and every peek after a refund,
    /// must agree, and a refund must keep the state as long as the
    /// reference still counts something.
    fn refunds_agree_with_the_reference(
        algorithm: Algorithm,
        quotas: &[Quota],
        start: u64,
        steps: &[RefundStep],
    ) -> Result<(), TestCaseError> {
        let mut states = states(algorithm, quotas.len());
        let mut reference = Reference::new(algorithm, quotas);
        // Admissions not yet refunded: (instant, cost).
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        let mut now = start;
        for (step, &(advance, cost, refunding)) in steps.iter().enumerate() {
            now += advance;
            let what = format!("step {step}, +{} us", now - start);
            match refunding {
                Some((which, part)) if !admitted.is_empty() => {
                    let (at, took) = admitted.remove(which % admitted.len());
                    let keep = refund(
                        &mut states,
                        quotas,
                        Refund {
                            now,
                            at,
                            admitted: took,
                            cost: part,
                        },
                    );
                    reference.refund(at, took, part);
                    let what = format!("{what}, refund of {part} of {took} at +{}", at - start);
                    adjusted_agrees(&states, quotas, now, &reference, algorithm, keep, &what)?;
                }
                _ => {
                    let (got, _) = check(&mut states, quotas, now, cost);
                    reference
                        .check(now, cost)
                        .agrees(&got, algorithm)
                        .map_err(|e| TestCaseError::fail(format!("{what}, cost {cost}: {e}")))?;
                    let ticket = got.ticket();
                    prop_assert_eq!(ticket.is_some(), got.is_allowed() && cost > 0);
                    if let Some(ticket) = ticket {
                        prop_assert_eq!(ticket.cost(), cost);
                        admitted.push((now, cost));
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs `steps` from `start` through [`check`], [`charge`] and the
    /// reference model: a step is a request, or (flagged) a charge of its
    /// cost; every decision, and every peek after a
    /// charge, must agree, and a charge must keep the state as long as the
    /// reference still counts something.
    fn charges_agree_with_the_reference(
        algorithm: Algorithm,
        quotas: &[Quota],
        start: u64,
        steps: &[(u64, u64, bool)],
    ) -> Result<(), TestCaseError> {
        let mut states = states(algorithm, quotas.len());
        let mut reference = Reference::new(algorithm, quotas);
        let mut now = start;
        // Below the caps the reference does not model: at most 20 charges,
        // each of at most the smallest limit.
        let smallest = quotas.iter().map(Quota::limit).min().unwrap_or(0);
        let mut charges = 0;
        for (step, &(advance, cost, charging)) in steps.iter().enumerate() {
            now += advance;
            let charging = charging && charges < 20;
            let cost = if charging { cost.min(smallest) } else { cost };
            let what = format!("step {step}, +{} us, cost {cost}", now - start);
            if charging {
                charges += 1;
                let keep = charge(&mut states, quotas, now, cost);
                reference.charge(now, cost);
                let what = format!("{what}, charge");
                adjusted_agrees(&states, quotas, now, &reference, algorithm, keep, &what)?;
            } else {
                let (got, _) = check(&mut states, quotas, now, cost);
                reference
                    .check(now, cost)
                    .agrees(&got, algorithm)
                    .map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
            }
        }
        Ok(())
    }

    #[test]
    fn a_charge_into_debt_denies_until_it_has_drained() {
        let q = [Quota::per_minute(1_000)];
        let w = 60 * SEC;
        let t0 = 600 * SEC;
        for &algorithm in Algorithm::ALL {
            let mut s = states(algorithm, 1);
            let keep = charge(&mut s, &q, t0 + SEC, 5_000);
            assert!(keep > 0, "{algorithm:?}");
            let (denied, _) = check(&mut s.clone(), &q, t0 + SEC, 1);
            assert!(!denied.is_allowed(), "{algorithm:?}");
            assert_eq!(denied.quotas()[0].remaining, 0, "{algorithm:?}");
            let retry = denied.retry_after().unwrap().as_micros() as u64;
            // Exact (the counter: at most 1 µs late): just before, denied;
            // then admitted.
            let (early, _) = check(&mut s.clone(), &q, t0 + SEC + retry - 2, 1);
            assert!(!early.is_allowed(), "{algorithm:?}");
            let (then, _) = check(&mut s.clone(), &q, t0 + SEC + retry, 1);
            assert!(then.is_allowed(), "{algorithm:?}");
            let expected = match algorithm {
                // The debt of 4 000 units over the limit drains at 1 000 per
                // minute, plus the emission interval of the next unit.
                Algorithm::Gcra => 4 * w + w / 1_000,
                // The entry leaves the window whole.
                Algorithm::SlidingLog => w,
                // The next window, once 5 000 × overlap is at most 999.
                _ => retry,
            };
            assert_eq!(retry, expected, "{algorithm:?}");
        }
        // The counter: next window from t0 + 60 s, 4/5 of it in.
        let mut s = states(Algorithm::SlidingWindow, 1);
        charge(&mut s, &q, t0 + SEC, 5_000);
        let (denied, _) = check(&mut s, &q, t0 + SEC, 1);
        let retry = denied.retry_after().unwrap().as_micros() as u64;
        assert!((w - SEC + w * 4 / 5..=w - SEC + w * 4 / 5 + 2).contains(&retry));
        // A charge is capped at 100 windows' worth.
        let mut s = states(Algorithm::Gcra, 1);
        let keep = charge(&mut s, &q, t0, u64::MAX);
        assert_eq!(keep, MAX_DEBT_WINDOWS * w);
        let keep = charge(&mut s, &q, t0, 1);
        assert_eq!(keep, MAX_DEBT_WINDOWS * w);
    }

    #[test]
    fn refunds_give_back_what_the_request_took() {
        let q = [Quota::per_second(3)];
        let t0 = 10 * SEC;
        // The log: the request's own entry leaves; one outside the window
        // is left alone.
        let mut s = states(Algorithm::SlidingLog, 1);
        for t in [0, 100_000, 200_000] {
            assert!(check(&mut s, &q, t0 + t, 1).0.is_allowed());
        }
        let back = |at, cost| Refund {
            now: t0 + 300_000,
            at,
            admitted: 1,
            cost,
        };
        let keep = refund(&mut s, &q, back(t0 + 100_000, 1));
        assert_eq!(keep, SEC - 100_000);
        let d = peek(&s, &q, t0 + 300_000);
        assert_eq!(d.quotas()[0].remaining, 1);
        // The oldest entry (t0) is now the one to wait for, then t0 + 200 ms.
        let (d, _) = check(&mut s, &q, t0 + 300_000, 1);
        assert!(d.is_allowed());
        let (d, _) = check(&mut s, &q, t0 + 300_000, 1);
        assert_eq!(d.retry_after(), Some(Duration::from_millis(700)));
        let late = Refund {
            now: t0 + SEC,
            ..back(t0, 1)
        };
        let before = s.clone();
        refund(&mut s, &q, late);
        assert_eq!(s, before, "an entry that has left the window stays");

        // The counter: from the current fixed window's count, else from the
        // previous one's, never below zero, never more than taken.
        let mut s = states(Algorithm::SlidingWindow, 1);
        for _ in 0..3 {
            assert!(check(&mut s, &q, t0 + 500_000, 1).0.is_allowed());
        }
        let took = |at, cost, now| Refund {
            now,
            at,
            admitted: 1,
            cost,
        };
        refund(&mut s, &q, took(t0 + 500_000, 5, t0 + 600_000));
        assert_eq!(peek(&s, &q, t0 + 600_000).quotas()[0].remaining, 1);
        // Next window, halfway: the previous count (2) weighs 1.
        refund(&mut s, &q, took(t0 + 500_000, 1, t0 + SEC + 500_000));
        assert_eq!(peek(&s, &q, t0 + SEC + 500_000).quotas()[0].remaining, 3);
        let keep = refund(&mut s, &q, took(t0 + 500_000, 1, t0 + SEC + 500_000));
        assert_eq!(keep, 0, "nothing counted any more");
        let before = s.clone();
        refund(&mut s, &q, took(t0 + 500_000, 1, t0 + SEC + 500_000));
        assert_eq!(s, before, "never below zero");

        // GCRA (T = 333 334 µs): the TAT moves back by the cost's
        // intervals, never before now.
        let mut s = states(Algorithm::Gcra, 1);
        for _ in 0..3 {
            assert!(check(&mut s, &q, t0, 1).0.is_allowed());
        }
        let tat = |s: &[QuotaState]| match s[0] {
            QuotaState::Rate(gcra::Tat(t)) => t,
            _ => unreachable!(),
        };
        assert_eq!(tat(&s), t0 + 1_000_002);
        let keep = refund(&mut s, &q, took(t0, 1, t0 + 100_000));
        assert_eq!(tat(&s), t0 + 666_668);
        assert_eq!(keep, 566_668);
        assert_eq!(peek(&s, &q, t0 + 100_000).quotas()[0].remaining, 1);
        // Two units given back while only 0.5668 s of level is left: the
        // bucket is empty, not below.
        let keep = refund(
            &mut s,
            &q,
            Refund {
                admitted: 2,
                ..took(t0, 2, t0 + 100_000)
            },
        );
        assert_eq!((tat(&s), keep), (t0 + 100_000, 0));
        // A refund never gives back more than the request took.
        let mut s = states(Algorithm::Gcra, 1);
        assert!(check(&mut s, &q, t0, 1).0.is_allowed());
        assert!(check(&mut s, &q, t0, 1).0.is_allowed());
        refund(&mut s, &q, took(t0, 3, t0));
        assert_eq!(tat(&s), t0 + 333_334);
    }

    #[test]
    fn peek_reads_without_dropping_what_has_left_the_window() {
        let q = [Quota::per_second(3)];
        for alg in [Algorithm::SlidingLog, Algorithm::SlidingWindow] {
            let mut s = states(alg, 1);
            let t0 = 10 * SEC;
            for t in [0, 100_000, 200_000] {
                assert!(check(&mut s, &q, t0 + t, 1).0.is_allowed());
            }
            let before = s.clone();
            // Full: the next request would wait for the oldest unit (log) or
            // for the next window (counter).
            let d = peek(&s, &q, t0 + 500_000);
            assert_eq!(d.quotas()[0].remaining, 0, "{alg:?}");
            assert_eq!(d.denied_by(), Some(0), "{alg:?}");
            let expected_retry = if alg == Algorithm::SlidingLog {
                500_000
            } else {
                500_002
            };
            assert_eq!(d.retry_after(), Some(Duration::from_micros(expected_retry)));
            // Long after: nothing counts, yet nothing was dropped.
            let d = peek(&s, &q, t0 + 5 * SEC);
            assert!(d.is_allowed(), "{alg:?}");
            assert_eq!(d.quotas()[0].remaining, 3, "{alg:?}");
            assert_eq!(d.quotas()[0].reset_after, Duration::ZERO, "{alg:?}");
            assert_eq!(s, before, "{alg:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(768))]

        /// Every algorithm's model, through [`check`] and [`peek`] (before
        /// every check), agrees with its naive definition, over any request
        /// sequence against one to three quotas.
        #[test]
        fn every_algorithm_agrees_with_its_definition(
            algorithm in prop::sample::select(Algorithm::ALL),
            quotas in strategy::quotas(),
            start in strategy::start(),
            steps in vec((strategy::advance(), strategy::cost()), 1..200),
        ) {
            agree_with_the_reference(algorithm, &quotas, start, &steps)?;
        }

        /// The sliding log's and the counter's refunds make the state of a
        /// history without what was given back: checks, peeks and how long
        /// the state is kept agree with the naive definition, over request
        /// sequences with whole and partial refunds mixed in.
        #[test]
        fn refunds_agree_with_the_definitions(
            algorithm in prop::sample::select(vec![Algorithm::SlidingLog, Algorithm::SlidingWindow]),
            quotas in strategy::quotas(),
            start in strategy::start(),
            steps in vec((strategy::advance(), strategy::cost(), strategy::refund()), 1..200),
        ) {
            refunds_agree_with_the_reference(algorithm, &quotas, start, &steps)?;
        }

        /// Charges (unconditional, possibly into debt) mixed into request
        /// sequences: every algorithm's checks, peeks and how long the state
        /// is kept agree with the naive definition, whose history simply
        /// gains the charged units.
        #[test]
        fn charges_agree_with_the_definitions(
            algorithm in prop::sample::select(Algorithm::ALL),
            quotas in strategy::quotas(),
            start in strategy::start(),
            steps in vec((strategy::advance(), strategy::cost(), prop::bool::weighted(0.2)), 1..200),
        ) {
            charges_agree_with_the_reference(algorithm, &quotas, start, &steps)?;
        }
    }
}
