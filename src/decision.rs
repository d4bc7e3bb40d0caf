//! The outcome of one rate-limit check.

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    quotas: Vec<QuotaStatus>,
    denied: Option<(usize, Duration)>,
}

impl Decision {
    /// An admitted request.
    pub fn allowed(quotas: Vec<QuotaStatus>) -> Self {
        Self {
            quotas,
            denied: None,
        }
    }

    /// A denied request: `quota` is the index of the quota that denied it (the
    /// one with the longest wait) and `retry_after` the time after which the same
    /// request would be admitted if nothing else arrives.
    pub fn denied(quotas: Vec<QuotaStatus>, quota: usize, retry_after: Duration) -> Self {
        Self {
            quotas,
            denied: Some((quota, retry_after)),
        }
    }

    /// Whether the request was admitted.
    pub fn is_allowed(&self) -> bool {
        self.denied.is_none()
    }

    /// Every quota's state, in policy order.
    pub fn quotas(&self) -> &[QuotaStatus] {
        &self.quotas
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
            return self.quotas.get(i);
        }
        self.quotas.iter().min_by(|a, b| {
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
