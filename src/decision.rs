//! The outcome of one rate-limit check.

use std::fmt;
use std::time::Duration;

/// The state of one quota after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaStatus {
    /// Units allowed per window.
    pub limit: u64,
    /// The window length.
    pub window: Duration,
    /// Units still available now (after this request, if it was admitted).
    pub remaining: u64,
    /// Time until the quota is fully restored if no further request arrives
    /// (zero when nothing is counted).
    pub reset_after: Duration,
}

/// The outcome of a check: admitted or denied, with every quota's state.
#[derive(Clone)]
pub struct Decision {
    quotas: Statuses,
    denied: Option<(usize, Duration)>,
}

/// A decision's quota states: in place for the usual single quota (no
/// allocation per decision), else in a vector.
#[derive(Clone)]
pub(crate) enum Statuses {
    One(QuotaStatus),
    Many(Vec<QuotaStatus>),
}

impl Statuses {
    fn as_slice(&self) -> &[QuotaStatus] {
        match self {
            Statuses::One(status) => std::slice::from_ref(status),
            Statuses::Many(statuses) => statuses,
        }
    }
}

/// One status in place, several (or none) in a vector.
impl FromIterator<QuotaStatus> for Statuses {
    fn from_iter<I: IntoIterator<Item = QuotaStatus>>(iter: I) -> Self {
        let mut iter = iter.into_iter();
        let Some(first) = iter.next() else {
            return Statuses::Many(Vec::new());
        };
        match iter.next() {
            None => Statuses::One(first),
            Some(second) => {
                let mut all = Vec::with_capacity(2 + iter.size_hint().0);
                all.extend([first, second]);
                all.extend(iter);
                Statuses::Many(all)
            }
        }
    }
}

/// As a derived `Debug` with `quotas: Vec<QuotaStatus>` would print it.
impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decision")
            .field("quotas", &self.quotas())
            .field("denied", &self.denied)
            .finish()
    }
}

impl PartialEq for Decision {
    fn eq(&self, other: &Self) -> bool {
        self.quotas() == other.quotas() && self.denied == other.denied
    }
}

impl Eq for Decision {}

impl Decision {
    /// An admitted request.
    pub fn allowed(quotas: Vec<QuotaStatus>) -> Self {
        Self {
            quotas: Statuses::Many(quotas),
            denied: None,
        }
    }

    /// A denied request: `quota` is the index of the quota that denied it (the
    /// one with the longest wait) and `retry_after` the time after which the same
    /// request would be admitted if nothing else arrives.
    pub fn denied(quotas: Vec<QuotaStatus>, quota: usize, retry_after: Duration) -> Self {
        Self {
            quotas: Statuses::Many(quotas),
            denied: Some((quota, retry_after)),
        }
    }

    /// [`Decision::allowed`] or (`denied`: the quota's index and the
    /// retry-after) [`Decision::denied`], from the backends: a single
    /// quota's status is kept in place.
    pub(crate) fn new(quotas: Statuses, denied: Option<(usize, Duration)>) -> Self {
        Self { quotas, denied }
    }

    /// Whether the request was admitted.
    pub fn is_allowed(&self) -> bool {
        self.denied.is_none()
    }

    /// Every quota's state, in policy order.
    pub fn quotas(&self) -> &[QuotaStatus] {
        self.quotas.as_slice()
    }

    /// The index of the quota that denied the request.
    pub fn denied_by(&self) -> Option<usize> {
        self.denied.map(|(i, _)| i)
    }

    /// How long to wait before retrying, when denied.
    pub fn retry_after(&self) -> Option<Duration> {
        self.denied.map(|(_, d)| d)
    }

    /// The quota closest to exhaustion: the denying one, else the one with the
    /// fewest remaining units (ties: the longest reset).
    pub fn tightest(&self) -> Option<&QuotaStatus> {
        if let Some(i) = self.denied_by() {
            return self.quotas().get(i);
        }
        self.quotas().iter().min_by(|a, b| {
            a.remaining
                .cmp(&b.remaining)
                .then(b.reset_after.cmp(&a.reset_after))
        })
    }
}

/// Why a request is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// A quota is exhausted (HTTP 429, gRPC `RESOURCE_EXHAUSTED`).
    Limited,
    /// The backend could not decide and the policy fails closed
    /// (HTTP 503, gRPC `UNAVAILABLE`).
    Unavailable,
    /// The request has no key and the policy denies keyless requests
    /// (HTTP 403, gRPC `PERMISSION_DENIED`).
    MissingKey,
    /// The request costs more than the policy's
    /// [max cost](crate::Policy::max_cost) allows: it can never be admitted,
    /// so it is refused without asking the backend (HTTP 413, gRPC
    /// `INVALID_ARGUMENT`, no retry time).
    CostTooHigh {
        /// The request's cost, as the policy's cost function computed it.
        cost: u64,
        /// The largest cost the policy admits for one request.
        max_cost: u64,
    },
    /// The client is on the policy's [deny-list](crate::Policy::deny):
    /// refused without asking the backend (HTTP 403, gRPC
    /// `PERMISSION_DENIED`, no retry time: waiting does not help).
    DenyListed,
}

/// A policy of one layer: its index in the layer's compiled policy list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PolicyId(pub(crate) usize);

/// What the layer does with one request: the single result of the decision
/// pipeline (see `limiter.rs`).
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Call the inner service; add this decision's rate-limit headers.
    Allow(PolicyId, Decision),
    /// Call the inner service without rate-limit headers: the request is not
    /// limited (exempt, no policy) or the backend failed open.
    AllowUnlimited,
    /// Answer with a rejection instead of calling the inner service.
    Deny(PolicyId, RejectReason, Option<Decision>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(remaining: u64) -> QuotaStatus {
        QuotaStatus {
            limit: 10,
            window: Duration::from_secs(1),
            remaining,
            reset_after: Duration::from_millis(remaining),
        }
    }

    /// A decision whose statuses are kept in place is the one made from a
    /// vector: equal, printed alike.
    #[test]
    fn statuses_in_place_or_in_a_vector_are_one_decision() {
        let retry = Some((1, Duration::from_secs(2)));
        for n in 0..4u64 {
            let statuses: Vec<QuotaStatus> = (0..n).map(status).collect();
            let in_place: Statuses = statuses.iter().copied().collect();
            assert_eq!(matches!(in_place, Statuses::One(_)), n == 1);
            let made = Decision::new(in_place.clone(), None);
            let allowed = Decision::allowed(statuses.clone());
            assert_eq!(made, allowed);
            assert_eq!(format!("{made:?}"), format!("{allowed:?}"));
            assert_eq!(made.quotas(), statuses);
            let made = Decision::new(in_place, retry);
            let denied = Decision::denied(statuses, 1, Duration::from_secs(2));
            assert_eq!(made, denied);
            assert_eq!(format!("{made:?}"), format!("{denied:?}"));
            assert_eq!(made.tightest(), denied.tightest());
        }
        assert_eq!(
            format!("{:?}", Decision::allowed(vec![status(3)])),
            "Decision { quotas: [QuotaStatus { limit: 10, window: 1s, remaining: 3, \
             reset_after: 3ms }], denied: None }"
        );
    }
}
