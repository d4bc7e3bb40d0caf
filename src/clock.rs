//! Time sources: the one clock abstraction of the crate, used by the
//! in-process backend, the circuit breaker and the blocked-client cache (each
//! testable with a fake clock instead of sleeping: `FakeClock`, with the
//! feature `test-util`).
//!
//! The Redis backend always uses the Redis server's clock (`TIME` inside the
//! script), so that application servers with skewed clocks agree.

use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[cfg(any(test, feature = "test-util"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use self::fake::FakeClock;

/// A source of the current time in microseconds since some fixed origin.
pub trait Clock: Send + Sync + 'static {
    /// Microseconds since the clock's origin.
    fn now_micros(&self) -> u64;
}

/// The system clock (microseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }
}

/// A monotonic clock: microseconds since its first use in the process. For
/// deadlines and cool-downs, which must not jump with the wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now_micros(&self) -> u64 {
        static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);
        u64::try_from(ORIGIN.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

#[cfg(any(test, feature = "test-util"))]
mod fake {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::Clock;

    /// A clock that moves only when told to; clones share the same time
    /// (feature `test-util`: test machinery, for your own tests of a layer on
    /// a [`MemoryBackend`](crate::MemoryBackend)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_redis_ratelimit::clock::{Clock, FakeClock};
    ///
    /// let clock = FakeClock::new(1_000);
    /// clock.advance(Duration::from_millis(2));
    /// assert_eq!(clock.now_micros(), 3_000);
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    #[derive(Debug, Clone, Default)]
    pub struct FakeClock(Arc<AtomicU64>);

    impl FakeClock {
        /// A clock reading `start_micros`.
        pub fn new(start_micros: u64) -> Self {
            Self(Arc::new(AtomicU64::new(start_micros)))
        }

        /// Moves the clock forward.
        pub fn advance(&self, by: Duration) {
            self.0.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
        }

        /// Sets the clock.
        pub fn set(&self, micros: u64) {
            self.0.store(micros, Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn now_micros(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }
}
