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
