//! When the backend cannot decide: the policy's [`FailureMode`] turns the
//! failure into a [`Verdict`], and failures are logged without flooding the
//! log.
//!
//! A failed decision is logged at `warn` at most once per [`WARN_INTERVAL`]
//! (1 s) per layer, with the number of failures since the previous warning;
//! the others are logged at `debug`. Decisions skipped because the circuit
//! breaker is open are not logged at all: the breaker logs its transitions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{Clock, MonotonicClock};
use crate::decision::{Decision, PolicyId, RejectReason, Verdict};

/// At most one `warn` about failed decisions per this interval and layer
/// (the others are logged at `debug` and counted as suppressed).
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// What to do when the backend cannot decide (Redis down, slow, or erroring).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum FailureMode {
    /// Allow the request, without rate-limit headers, and log a warning.
    /// A dead Redis never breaks the application.
    #[default]
    Open,
    /// Deny the request: HTTP `503 Service Unavailable` with `Retry-After: 1`
    /// (gRPC: `UNAVAILABLE`). 503 rather than 429 because the client did nothing
    /// wrong: the limiter could not vouch for the request.
    Closed,
    /// Decide in-process (an in-memory limiter per application instance)
    /// until the backend answers again; then the backend decides again.
    ///
    /// Each instance applies its share of the policy: every quota's limit
    /// divided by the number of live instances sharing the backend
    /// ([`Backend::instances`](crate::Backend::instances)), rounded up, at
    /// least 1. So the fleet admits about the policy's limit during an
    /// outage, not N times it: at most `limit + N - 1` per window, from the
    /// rounding (measured: 3 instances, 30 per minute, Redis killed, one
    /// client spreading 300 requests over the three: 30 admitted, 90
    /// before the division). Windows, algorithm and headers are the
    /// policy's, the headers showing the share as the limit; a request
    /// costing more than the share is denied.
    ///
    /// [`RedisBackend`](crate::RedisBackend) counts the instances with a
    /// heartbeat (about one small script call per second per backend,
    /// started by the first check of a `Local` policy); an outage is shared
    /// out by the last count seen before it. Not divided: a backend that
    /// does not count ([`MemoryBackend`](crate::MemoryBackend), custom
    /// backends by default), an instance that has not yet reached Redis
    /// since it started, and instances started during the outage (each
    /// applies the whole limit); instances stopped during the outage leave
    /// the others with a smaller share than needed until Redis is back.
    /// Never unlimited.
    Local,
}

impl FailureMode {
    /// The verdict for a request of `policy` whose backend could not decide;
    /// `local` decides with the in-process limiter ([`FailureMode::Local`]).
    pub(crate) fn verdict(self, policy: PolicyId, local: impl FnOnce() -> Decision) -> Verdict {
        match self {
            FailureMode::Open => Verdict::AllowUnlimited,
            FailureMode::Closed => Verdict::Deny(policy, RejectReason::Unavailable, None),
            FailureMode::Local => {
                let decision = local();
                if decision.is_allowed() {
                    Verdict::Allow(policy, decision)
                } else {
                    Verdict::Deny(policy, RejectReason::Limited, Some(decision))
                }
            }
        }
    }
}

/// Rate-limits the warnings about failed decisions, per layer.
pub(crate) struct FailureLog {
    clock: Arc<dyn Clock>,
    /// The clock reading (µs, plus one) of the last warning; 0 = never.
    warned_at: AtomicU64,
    /// Failed decisions not warned about since the last warning.
    suppressed: AtomicU64,
}

impl std::fmt::Debug for FailureLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureLog")
            .field("suppressed", &self.suppressed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for FailureLog {
    fn default() -> Self {
        Self::with_clock(Arc::new(MonotonicClock))
    }
}

impl FailureLog {
    pub(crate) fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            warned_at: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Called for every failed decision. Returns `Some(suppressed)` when this
    /// failure should be logged at `warn`, with the number of failures left
    /// unwarned since the previous warning; `None` (and the failure is
    /// counted) otherwise. At most one `Some` per [`WARN_INTERVAL`].
    pub(crate) fn warning(&self) -> Option<u64> {
        let now = self.clock.now_micros().saturating_add(1);
        let interval = u64::try_from(WARN_INTERVAL.as_micros()).unwrap_or(u64::MAX);
        let last = self.warned_at.load(Ordering::Acquire);
        let due = last == 0 || now >= last.saturating_add(interval);
        if due
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::AcqRel);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::decision::QuotaStatus;

    #[test]
    fn failure_warnings_are_rate_limited_and_count_the_suppressed() {
        let clock = FakeClock::new(10);
        let log = FailureLog::with_clock(Arc::new(clock.clone()));
        assert_eq!(log.warning(), Some(0), "the first failure warns");
        for _ in 0..5 {
            clock.advance(Duration::from_micros(1));
            assert_eq!(log.warning(), None);
        }
        clock.set(9 + 1_000_000);
        assert_eq!(log.warning(), None, "not a second yet");
        clock.set(10 + 1_000_000);
        assert_eq!(log.warning(), Some(6));
        clock.set(11 + 1_000_000);
        assert_eq!(log.warning(), None);
        clock.set(10 + 5_000_000);
        assert_eq!(log.warning(), Some(1));
        // The real clock: one warning, then quiet.
        let log = FailureLog::default();
        assert_eq!(log.warning(), Some(0));
        assert_eq!(log.warning(), None);
    }

    #[test]
    fn each_mode_gives_its_verdict() {
        let id = PolicyId(3);
        let status = |remaining| QuotaStatus {
            limit: 5,
            window: Duration::from_secs(60),
            remaining,
            reset_after: Duration::from_secs(60),
        };
        let never = || -> Decision { unreachable!("only Local asks the local limiter") };
        assert!(matches!(
            FailureMode::Open.verdict(id, never),
            Verdict::AllowUnlimited
        ));
        assert!(matches!(
            FailureMode::Closed.verdict(id, never),
            Verdict::Deny(PolicyId(3), RejectReason::Unavailable, None)
        ));
        let allowed = FailureMode::Local.verdict(id, || Decision::allowed(vec![status(4)]));
        assert!(matches!(allowed, Verdict::Allow(PolicyId(3), d) if d.is_allowed()));
        let denied = FailureMode::Local.verdict(id, || {
            Decision::denied(vec![status(0)], 0, Duration::from_secs(12))
        });
        assert!(matches!(
            denied,
            Verdict::Deny(PolicyId(3), RejectReason::Limited, Some(_))
        ));
    }
}
