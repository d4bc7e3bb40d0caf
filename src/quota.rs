//! Quotas: how many units per window, and the bounds every quota and cost
//! must stay within.

use std::time::Duration;

/// The sliding log's default max cost per request: public as
/// [`Policy::DEFAULT_MAX_LOG_COST`](crate::Policy::DEFAULT_MAX_LOG_COST)
/// (kept here so that the algorithms, below the policy, read it too).
pub(crate) const DEFAULT_MAX_LOG_COST: u64 = 1_000;

/// A limit per window: at most `limit` units in any window of length `window`.
///
/// ```
/// use std::time::Duration;
/// use tower_redis_ratelimit::Quota;
///
/// let q = Quota::per_minute(100);
/// assert_eq!(q.limit(), 100);
/// assert_eq!(q.window(), Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u64,
    window: Duration,
}

impl Quota {
    /// The largest limit a quota may have.
    pub const MAX_LIMIT: u64 = 1_000_000_000;

    /// The largest limit of a quota counted with
    /// [`Algorithm::SlidingLog`](crate::Algorithm::SlidingLog), which stores
    /// one entry per admitted unit: 10 000 entries are about 1.2 MB in Redis
    /// and one admission of that cost takes tens of milliseconds (hence the
    /// [`Policy::DEFAULT_MAX_LOG_COST`](crate::Policy::DEFAULT_MAX_LOG_COST)
    /// per request). Use
    /// [`Algorithm::SlidingWindow`](crate::Algorithm::SlidingWindow) (O(1)
    /// per client) for larger limits.
    pub const MAX_LOG_LIMIT: u64 = 10_000;

    /// The shortest window a quota may have.
    pub const MIN_WINDOW: Duration = Duration::from_millis(1);

    /// The longest window a quota may have (365 days).
    pub const MAX_WINDOW: Duration = Duration::from_secs(365 * 24 * 3600);

    /// `limit` units per `window`. Checked when the layer is built.
    pub const fn new(limit: u64, window: Duration) -> Self {
        Self { limit, window }
    }

    /// `limit` units per second.
    pub const fn per_second(limit: u64) -> Self {
        Self::new(limit, Duration::from_secs(1))
    }

    /// `limit` units per minute.
    pub const fn per_minute(limit: u64) -> Self {
        Self::new(limit, Duration::from_secs(60))
    }

    /// `limit` units per hour.
    pub const fn per_hour(limit: u64) -> Self {
        Self::new(limit, Duration::from_secs(3600))
    }

    /// `limit` units per day.
    pub const fn per_day(limit: u64) -> Self {
        Self::new(limit, Duration::from_secs(86_400))
    }

    /// The number of units allowed per window.
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// The window length.
    pub const fn window(&self) -> Duration {
        self.window
    }

    /// The window in whole microseconds (the unit the algorithms work in).
    pub(crate) fn window_us(&self) -> u64 {
        self.window.as_micros() as u64
    }
}
