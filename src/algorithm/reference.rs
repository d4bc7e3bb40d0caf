//! Naive reference models of the algorithms, for tests: obviously correct
//! rather than fast.
//!
//! A [`Reference`] keeps every admitted request, `(time, cost)`, and derives
//! each answer from that history by the algorithm's [`Definition`] (in the
//! algorithm's own file): how many units a quota counts at a given instant,
//! and until when anything is counted. The real wait of a denied request is
//! the first instant at which it fits, found by bisection: with nothing
//! admitted meanwhile, no algorithm's count ever grows.
//!
//! [`Expected::agrees`] compares a decision with the reference's: exactly,
//! except that a retry-after may be longer than the real wait by the
//! algorithm's documented slack (never shorter).

use std::time::Duration;

use super::Algorithm;
use crate::decision::{Decision, QuotaStatus};
use crate::quota::Quota;

/// An algorithm by its definition, over the history of admitted requests,
/// `(time, cost)`, oldest first, none after the instant asked about.
/// Requests older than the definition's [horizon](Definition::horizon) are
/// forgotten, and the whole history once nothing counts any more.
pub(crate) trait Definition: Sync {
    /// The units a quota of `limit` per `window` counts at `at`.
    fn units(&self, history: &[(u64, u64)], limit: u64, window: u64, at: u64) -> u64;

    /// How long after `now` something is still counted (zero: nothing is).
    fn reset(&self, history: &[(u64, u64)], limit: u64, window: u64, now: u64) -> u64;

    /// How far back, at most, a request may still count for a quota of
    /// length `window` (`None`: no fixed bound).
    fn horizon(&self, window: u64) -> Option<u64>;

    /// How much longer than the real wait a retry-after may be.
    fn retry_slack(&self) -> u64;
}

/// The reference model of one client under one policy.
#[derive(Debug, Clone)]
pub(crate) struct Reference {
    algorithm: Algorithm,
    quotas: Vec<Quota>,
    /// Every admitted request, `(time, cost)`, cost above zero, oldest first
    /// (requests that can no longer count are forgotten).
    history: Vec<(u64, u64)>,
}

/// What the reference makes of one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Expected {
    pub allowed: bool,
    /// Per quota, after the decision.
    pub statuses: Vec<QuotaStatus>,
    /// Per quota: `None` if the request fits now, else the real wait until
    /// it fits if nothing else is admitted (one window if it never fits).
    pub waits: Vec<Option<u64>>,
}

impl Reference {
    pub(crate) fn new(algorithm: Algorithm, quotas: &[Quota]) -> Self {
        Self {
            algorithm,
            quotas: quotas.to_vec(),
            history: Vec::new(),
        }
    }

    /// Decides a request of `cost` units at `now` (never before the previous
    /// request) and records it if admitted.
    pub(crate) fn check(&mut self, now: u64, cost: u64) -> Expected {
        debug_assert!(self.history.last().is_none_or(|&(t, _)| t <= now));
        let waits: Vec<Option<u64>> = self
            .quotas
            .iter()
            .map(|q| self.wait(q.limit(), q.window_us(), now, cost))
            .collect();
        let allowed = waits.iter().all(Option::is_none);
        if allowed && cost > 0 {
            self.history.push((now, cost));
        }
        let statuses = self.statuses(now);
        // Forget what the definition looks at no more.
        if statuses.iter().all(|s| s.reset_after.is_zero()) {
            self.history.clear();
        }
        let definition = self.algorithm.definition();
        let horizons: Option<Vec<u64>> = self
            .quotas
            .iter()
            .map(|q| definition.horizon(q.window_us()))
            .collect();
        if let Some(longest) = horizons.and_then(|h| h.into_iter().max()) {
            self.history.retain(|&(t, _)| t + longest > now);
        }
        Expected {
            allowed,
            statuses,
            waits,
        }
    }

    /// Gives back `cost` units (at most `admitted`) of the request admitted
    /// at `at` for `admitted` units: by definition, for the sliding log and
    /// the counter, the history becomes one where that request cost less
    /// (was never admitted, for a whole refund). The first request of that
    /// instant and cost is the one (any of several alike gives the same
    /// history); one no longer in the history (it counts no more) is left
    /// alone. Not a definition of GCRA's refund, whose single number of
    /// state cannot replay a history (see `Tat::refund`).
    pub(crate) fn refund(&mut self, at: u64, admitted: u64, cost: u64) {
        debug_assert_ne!(self.algorithm, Algorithm::Gcra);
        let found = self
            .history
            .iter()
            .position(|&(t, c)| t == at && c == admitted);
        if let Some(i) = found {
            let back = cost.min(admitted);
            if back == admitted {
                self.history.remove(i);
            } else {
                self.history[i].1 -= back;
            }
        }
    }

    /// Counts `cost` units at `now` (never before the previous request)
    /// unconditionally, admitted or not: by definition, the history gains
    /// the request, which may take the quotas past their limits. (Below
    /// the charge's caps, `algorithm::MAX_DEBT_WINDOWS`, which this
    /// reference does not model.)
    pub(crate) fn charge(&mut self, now: u64, cost: u64) {
        debug_assert!(self.history.last().is_none_or(|&(t, _)| t <= now));
        if cost > 0 {
            self.history.push((now, cost));
        }
    }

    /// What a peek at `now` (never before the last request) reports: the
    /// statuses of a request of cost 0 and whether one of `cost` would be
    /// admitted. Records nothing.
    pub(crate) fn peek(&self, now: u64, cost: u64) -> Expected {
        debug_assert!(self.history.last().is_none_or(|&(t, _)| t <= now));
        let waits: Vec<Option<u64>> = self
            .quotas
            .iter()
            .map(|q| self.wait(q.limit(), q.window_us(), now, cost))
            .collect();
        Expected {
            allowed: waits.iter().all(Option::is_none),
            statuses: self.statuses(now),
            waits,
        }
    }

    /// Every quota's status at `now`, by the definition, over the history.
    fn statuses(&self, now: u64) -> Vec<QuotaStatus> {
        let definition = self.algorithm.definition();
        self.quotas
            .iter()
            .map(|q| {
                let used = definition.units(&self.history, q.limit(), q.window_us(), now);
                let reset = definition.reset(&self.history, q.limit(), q.window_us(), now);
                QuotaStatus {
                    limit: q.limit(),
                    window: q.window(),
                    remaining: q.limit().saturating_sub(used),
                    reset_after: Duration::from_micros(reset),
                }
            })
            .collect()
    }

    /// `None` if `cost` units fit now in a quota of `limit` per `window`,
    /// else the real wait.
    fn wait(&self, limit: u64, window: u64, now: u64, cost: u64) -> Option<u64> {
        let definition = self.algorithm.definition();
        let fits = |at: u64| {
            let units = definition.units(&self.history, limit, window, at);
            units.saturating_add(cost) <= limit
        };
        if fits(now) {
            return None;
        }
        if cost > limit {
            // Never: by convention, one window.
            return Some(window);
        }
        // Once nothing admitted by now counts any more (two windows on, or
        // for GCRA the reset), it fits: bisect for the first instant that
        // does (`lo` never fits, `hi` always does).
        let reset = definition.reset(&self.history, limit, window, now);
        let (mut lo, mut hi) = (now, now + (2 * window).max(reset) + 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi - now)
    }
}

impl Expected {
    /// The longest wait and the first quota with it (the one a decision
    /// names).
    fn longest_wait(&self) -> Option<(usize, u64)> {
        let mut longest: Option<(usize, u64)> = None;
        for (i, wait) in self.waits.iter().enumerate() {
            if let Some(w) = *wait
                && longest.is_none_or(|(_, best)| w > best)
            {
                longest = Some((i, w));
            }
        }
        longest
    }

    /// Whether `got`, made by `algorithm`, is this decision: the same outcome
    /// and statuses and, when denied, a retry-after within the algorithm's
    /// slack of both the longest wait and the named quota's (with no slack:
    /// exactly the longest wait, the first quota with it named). Else, what
    /// differs.
    pub(crate) fn agrees(&self, got: &Decision, algorithm: Algorithm) -> Result<(), String> {
        let differ = |what: &str| Err(format!("{what}: got {got:?}, expected {self:?}"));
        if got.is_allowed() != self.allowed {
            return differ("outcome");
        }
        if got.quotas() != self.statuses.as_slice() {
            return differ("statuses");
        }
        let Some((first, longest)) = self.longest_wait() else {
            return Ok(());
        };
        let (Some(by), Some(retry)) = (got.denied_by(), got.retry_after()) else {
            return differ("denial without a quota or a retry-after");
        };
        let Some(own) = self.waits.get(by).copied().flatten() else {
            return differ("named a quota that admits the request");
        };
        let retry = u64::try_from(retry.as_micros()).expect("a retry-after in µs fits u64");
        let slack = algorithm.definition().retry_slack();
        if !(longest..=longest + slack).contains(&retry) || !(own..=own + slack).contains(&retry) {
            return differ("retry-after");
        }
        if slack == 0 && by != first {
            return differ("denying quota");
        }
        Ok(())
    }
}

/// Proptest strategies for request sequences.
pub(crate) mod strategy {
    use std::time::Duration;

    use proptest::prelude::*;

    use crate::quota::Quota;

    const MS: u64 = 1_000;
    const SEC: u64 = 1_000_000;

    /// A limit of 1 to 20 per a window of whole milliseconds (as policies
    /// require), often a round one so that quotas share windows.
    pub(crate) fn quota() -> impl Strategy<Value = Quota> {
        let window_ms = prop_oneof![
            3 => prop::sample::select(vec![250_u64, 500, 1_000, 4_000, 10_000]),
            1 => 1_u64..=3_000,
        ];
        (1_u64..=20, window_ms).prop_map(|(limit, ms)| Quota::new(limit, Duration::from_millis(ms)))
    }

    /// One to three quotas. Windows may be equal: both quotas then often wait
    /// for the same unit (ties).
    pub(crate) fn quotas() -> impl Strategy<Value = Vec<Quota>> {
        prop::collection::vec(quota(), 1..=3)
    }

    /// The first instant: a day boundary plus an offset, often on the 10 ms
    /// grid.
    pub(crate) fn start() -> impl Strategy<Value = u64> {
        let offset = prop_oneof![(0_u64..2_000).prop_map(|k| k * 10 * MS), 0..20 * SEC];
        offset.prop_map(|offset| 86_400 * SEC + offset)
    }

    /// How far the clock moves before a request: mostly small steps on a
    /// 10 ms grid (so that units often leave a window, and fixed windows
    /// begin, exactly at the instant of a check), bursts at one instant, odd
    /// microsecond steps, and sometimes a long gap.
    pub(crate) fn advance() -> impl Strategy<Value = u64> {
        prop_oneof![
            20 => Just(0),
            60 => (0_u64..7).prop_map(|k| k * 10 * MS),
            18 => 0..60 * MS,
            2 => 0..12 * SEC,
        ]
    }

    /// A step of a sequence with refunds: a request (`None`), or a refund
    /// (`Some((which, cost))`) of one of the admissions not yet refunded
    /// (`which` modulo their number), of `cost` units: mostly the whole
    /// cost (any cost above it gives back the whole), sometimes part of it.
    pub(crate) fn refund() -> impl Strategy<Value = Option<(usize, u64)>> {
        prop_oneof![
            3 => Just(None),
            1 => (any::<usize>(), prop_oneof![3 => Just(u64::MAX), 1 => 1_u64..=3]).prop_map(Some),
        ]
    }

    /// A request's cost: mostly 1, often up to 4, sometimes 0 (a read) or
    /// 18 to 24 (above most limits).
    pub(crate) fn cost() -> impl Strategy<Value = u64> {
        prop_oneof![
            1 => Just(0),
            12 => Just(1),
            6 => 1_u64..=4,
            1 => 18_u64..=24,
        ]
    }
}
