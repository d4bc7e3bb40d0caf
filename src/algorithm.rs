//! The decision maths of both algorithms, without I/O.
//!
//! The in-process backend runs this code; the Lua scripts in `backend/*.lua`
//! are line-by-line translations of it (same order of floating-point
//! operations, so both produce identical numbers). The conformance suite in
//! `tests/` runs the same scenarios against both and compares.
//!
//! Time is in microseconds. A window of length `W` ending at `now` is
//! `(now - W, now]`.

use std::collections::VecDeque;
use std::time::Duration;

use crate::decision::{Decision, QuotaStatus};
use crate::policy::{Algorithm, Quota};

/// The stored state of one quota of one client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum QuotaState {
    /// Sliding log: the timestamp of every admitted unit, oldest first.
    Log(VecDeque<u64>),
    /// Sliding window counter.
    Counter(Counter),
}

/// Sliding window counter state: the start of the fixed window `cur` counts
/// in, and the count of the fixed window before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counter {
    pub start: u64,
    pub cur: u64,
    pub prev: u64,
}

impl QuotaState {
    pub(crate) fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::SlidingLog => QuotaState::Log(VecDeque::new()),
            Algorithm::SlidingWindow => QuotaState::Counter(Counter::default()),
        }
    }

    pub(crate) fn matches(&self, algorithm: Algorithm) -> bool {
        matches!(
            (self, algorithm),
            (QuotaState::Log(_), Algorithm::SlidingLog)
                | (QuotaState::Counter(_), Algorithm::SlidingWindow)
        )
    }
}

/// The counter as seen at `now`: rolled forward to the fixed window holding
/// `now`. Returns the rolled state and the time elapsed in that window.
///
/// If the stored window starts *after* `now`'s (the clock stepped back), the
/// stored counts are kept as they are: a clock step must not forget counts.
pub(crate) fn roll(c: Counter, now: u64, window: u64) -> (Counter, u64) {
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
pub(crate) fn estimate(c: Counter, elapsed: u64, window: u64) -> u64 {
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
pub(crate) fn counter_retry(c: Counter, elapsed: u64, window: u64, limit: u64, cost: u64) -> u64 {
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

/// Time until a counter's estimate falls to zero.
fn counter_reset(c: Counter, elapsed: u64, window: u64) -> u64 {
    if c.cur > 0 {
        2 * window - elapsed
    } else if c.prev > 0 {
        window - elapsed
    } else {
        0
    }
}

/// Drops log entries that have left the window.
fn trim(log: &mut VecDeque<u64>, now: u64, window: u64) {
    while log.front().is_some_and(|&t| t + window <= now) {
        log.pop_front();
    }
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
    // Phase 1: look, write nothing that counts.
    let mut denied: Option<(usize, u64)> = None;
    for (i, (state, quota)) in states.iter_mut().zip(quotas).enumerate() {
        let (limit, window) = (quota.limit(), quota.window_us());
        let retry = match state {
            QuotaState::Log(log) => {
                trim(log, now, window);
                let count = log.len() as u64;
                (count.saturating_add(cost) > limit).then(|| {
                    if cost > limit {
                        window
                    } else {
                        // The k-th oldest entry must leave before `cost` units fit.
                        let k = (count + cost - limit) as usize;
                        log[k - 1] + window - now
                    }
                })
            }
            QuotaState::Counter(c) => {
                let (rolled, elapsed) = roll(*c, now, window);
                (estimate(rolled, elapsed, window).saturating_add(cost) > limit)
                    .then(|| counter_retry(rolled, elapsed, window, limit, cost))
            }
        };
        if let Some(r) = retry
            && denied.is_none_or(|(_, best)| r > best)
        {
            denied = Some((i, r));
        }
    }
    // Phase 2: consume everywhere, or nowhere.
    let admit = denied.is_none();
    let mut keep = 0;
    let statuses = states
        .iter_mut()
        .zip(quotas)
        .map(|(state, quota)| {
            let (limit, window) = (quota.limit(), quota.window_us());
            let (used, reset) = match state {
                QuotaState::Log(log) => {
                    if admit {
                        let at = log.partition_point(|&t| t <= now);
                        for _ in 0..cost {
                            log.insert(at, now);
                        }
                    }
                    let reset = log.back().map_or(0, |&t| (t + window).saturating_sub(now));
                    (log.len() as u64, reset)
                }
                QuotaState::Counter(c) => {
                    let (mut rolled, elapsed) = roll(*c, now, window);
                    if admit {
                        rolled.cur += cost;
                        *c = rolled;
                    }
                    (
                        estimate(rolled, elapsed, window),
                        counter_reset(rolled, elapsed, window),
                    )
                }
            };
            keep = keep.max(reset);
            QuotaStatus {
                limit,
                window: quota.window(),
                remaining: limit.saturating_sub(used),
                reset_after: Duration::from_micros(reset),
            }
        })
        .collect();
    let decision = match denied {
        None => Decision::allowed(statuses),
        Some((i, r)) => Decision::denied(statuses, i, Duration::from_micros(r)),
    };
    (decision, keep)
}

#[cfg(test)]
mod tests {
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
        for alg in [Algorithm::SlidingLog, Algorithm::SlidingWindow] {
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
    fn multi_quota_all_or_nothing() {
        let q = [Quota::per_second(2), Quota::per_minute(3)];
        for alg in [Algorithm::SlidingLog, Algorithm::SlidingWindow] {
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
        for alg in [Algorithm::SlidingLog, Algorithm::SlidingWindow] {
            let q = [Quota::per_second(3)];
            let mut s = states(alg, 1);
            let (d, keep) = check(&mut s, &q, 5 * SEC, 4);
            assert_eq!(d.retry_after(), Some(Duration::from_secs(1)));
            assert_eq!(keep, 0);
        }
    }
}
