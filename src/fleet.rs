//! A fleet's share of a policy, for [`FailureMode::Local`](crate::FailureMode::Local).
//!
//! While the backend is down, each application instance decides alone with
//! its in-process limiter. Applying the whole policy there, N instances
//! would admit N times the limit between them; so each applies its share:
//! every quota's limit divided by the number of live instances sharing the
//! backend ([`Backend::instances`](crate::Backend::instances), the last
//! count seen before the outage), rounded up, at least 1 ([`share`]).
//!
//! The local limiter ([`MemoryBackend`](crate::MemoryBackend)) is asked
//! with a *scaled* policy: the same name, algorithm and windows, each limit
//! replaced by its share. Its state is keyed by the policy's name and the
//! client key, and only checked against the algorithm and the number of
//! quotas, never the limits, so a client's state carries over when the
//! count changes, and stays meaningful: the sliding log and the sliding
//! window counter keep counts of admitted units (checked against the new
//! share), GCRA keeps the time the bucket takes to drain (the same
//! fraction of the window in use, whatever the limit).
//!
//! Cheap on the request path: the count is one atomic read in the backend,
//! and the scaled policy of the current count is built once and cached per
//! policy ([`Share`]); a count of 1 (or none) uses the policy itself.

use std::num::NonZeroU32;
use std::sync::{PoisonError, RwLock};

use crate::policy::Policy;
use crate::quota::Quota;

/// The share of `limit` one of `instances` instances admits on its own:
/// `ceil(limit / instances)`, at least 1.
///
/// Rounding up keeps a small limit usable (a limit of 5 over 8 instances is
/// 1 each, not 0); the fleet then admits at most `limit + instances - 1`
/// per window.
pub(crate) fn share(limit: u64, instances: NonZeroU32) -> u64 {
    limit.div_ceil(u64::from(instances.get())).max(1)
}

/// `policy` as one of `instances` instances applies it alone: the same
/// name, algorithm and windows, each limit replaced by its [`share`].
///
/// Only for the local limiter, which reads nothing else of a policy.
pub(crate) fn scaled(policy: &Policy, instances: NonZeroU32) -> Policy {
    policy.quotas().iter().fold(
        Policy::new(policy.name()).algorithm(policy.algorithm_kind()),
        |scaled, quota| scaled.quota(Quota::new(share(quota.limit(), instances), quota.window())),
    )
}

/// One policy's scaled version for the latest instance count, built on
/// first need and rebuilt when the count changes (rarely: the count is
/// refreshed about once a second, and frozen during an outage).
#[derive(Debug, Default)]
pub(crate) struct Share {
    cached: RwLock<Option<(NonZeroU32, Policy)>>,
}

impl Share {
    /// Calls `decide` with the policy one of `instances` instances applies:
    /// `policy` itself for one instance (or an unknown count), else its
    /// scaled version.
    pub(crate) fn with<R>(
        &self,
        policy: &Policy,
        instances: Option<NonZeroU32>,
        decide: impl FnOnce(&Policy) -> R,
    ) -> R {
        let n = match instances {
            Some(n) if n.get() > 1 => n,
            _ => return decide(policy),
        };
        {
            let cached = self.cached.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((count, scaled)) = cached.as_ref()
                && *count == n
            {
                return decide(scaled);
            }
        }
        let fresh = scaled(policy, n);
        *self.cached.write().unwrap_or_else(PoisonError::into_inner) = Some((n, fresh.clone()));
        decide(&fresh)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::algorithm::Algorithm;
    use crate::backend::MemoryBackend;
    use crate::clock::FakeClock;
    use crate::key::Key;

    fn n(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_share_is_the_limit_over_the_instances_rounded_up_and_never_zero() {
        assert_eq!(share(30, n(1)), 30);
        assert_eq!(share(30, n(3)), 10);
        assert_eq!(share(30, n(4)), 8, "7.5 rounds up");
        assert_eq!(share(31, n(3)), 11);
        assert_eq!(share(5, n(8)), 1, "never 0");
        assert_eq!(share(1, n(u32::MAX)), 1);
        assert_eq!(
            share(crate::Quota::MAX_LIMIT, n(1)),
            crate::Quota::MAX_LIMIT
        );
        // The fleet's total stays within one unit per instance of the limit.
        for limit in 1..200 {
            for instances in 1..20 {
                let total = share(limit, n(instances)) * u64::from(instances);
                assert!(total >= limit, "{limit} over {instances}");
                assert!(
                    total < limit + u64::from(instances),
                    "{limit} over {instances}"
                );
            }
        }
    }

    #[test]
    fn a_scaled_policy_keeps_the_name_algorithm_and_windows() {
        let policy = Policy::new("api")
            .quota(Quota::per_second(10))
            .quota(Quota::per_hour(1000))
            .algorithm(Algorithm::Gcra);
        let scaled = scaled(&policy, n(3));
        assert_eq!(scaled.name(), "api");
        assert_eq!(scaled.algorithm_kind(), Algorithm::Gcra);
        assert_eq!(
            scaled.quotas(),
            &[Quota::per_second(4), Quota::per_hour(334)]
        );
        scaled.validate().expect("a share is a valid quota");
    }

    #[test]
    fn the_scaled_policy_is_built_once_per_count() {
        let policy = Policy::new("api").quota(Quota::per_minute(30));
        let share = Share::default();
        let limit = |instances| share.with(&policy, instances, |p| p.quotas()[0].limit());
        assert_eq!(limit(None), 30, "no count: the policy itself");
        assert_eq!(limit(Some(n(1))), 30);
        share.with(&policy, Some(n(1)), |p| assert!(p.same_as(&policy)));
        assert_eq!(limit(Some(n(3))), 10);
        let first = share.with(&policy, Some(n(3)), Clone::clone);
        let again = share.with(&policy, Some(n(3)), Clone::clone);
        assert!(first.same_as(&again), "cached for the same count");
        assert_eq!(limit(Some(n(2))), 15);
        assert!(!first.same_as(&share.with(&policy, Some(n(2)), Clone::clone)));
    }

    /// The local limiter keeps a client's state when the count changes:
    /// what was admitted counts against the new share.
    #[test]
    fn a_clients_local_state_carries_over_when_the_count_changes() {
        for algorithm in [
            Algorithm::SlidingLog,
            Algorithm::SlidingWindow,
            Algorithm::Gcra,
        ] {
            let clock = FakeClock::new(1_000_000);
            let local = MemoryBackend::with_clock(clock.clone());
            let policy = Policy::new("api")
                .quota(Quota::per_minute(30))
                .algorithm(algorithm);
            let share = Share::default();
            let key = Key::new("203.0.113.9");
            let admitted = |instances: u32| {
                (0..100)
                    .take_while(|_| {
                        share.with(&policy, Some(n(instances)), |p| {
                            local.decide_now(p, &key, 1).is_allowed()
                        })
                    })
                    .count()
            };
            assert_eq!(admitted(3), 10, "{algorithm:?}: a third of 30");
            assert_eq!(admitted(3), 0, "{algorithm:?}");
            // Two instances left: the share is 15. The counts say 10 units
            // of it are used; GCRA's bucket, full, is as full at any rate.
            let more = if algorithm == Algorithm::Gcra { 0 } else { 5 };
            assert_eq!(admitted(2), more, "{algorithm:?}");
            // Back to three: 15 used, over the share of 10.
            assert_eq!(admitted(3), 0, "{algorithm:?}");
            // A window later everything is back.
            clock.advance(Duration::from_secs(120));
            assert_eq!(admitted(3), 10, "{algorithm:?}");
        }
    }
}
