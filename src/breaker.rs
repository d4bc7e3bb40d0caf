//! The circuit breaker and the deadline around every backend call.
//!
//! A decision is one backend call bounded by the layer's deadline
//! ([`Breaker::call`], the only way the crate calls a backend). The breaker
//! counts consecutive failures (errors and deadline misses); at the threshold
//! it *opens*: for a cool-down, decisions skip the backend entirely, so a dead
//! or stalled Redis adds no latency at all. After the cool-down one request
//! *probes* the backend; success closes the breaker, failure re-opens it with
//! a doubled cool-down (up to a maximum). Each transition is logged once
//! (`warn` when opening, `info` when recovering). Only the probe's success
//! closes an open breaker: a call that started before the breaker opened and
//! succeeds afterwards proves little about a partly failing backend, and
//! letting it close the breaker would make it flap.
//!
//! Time comes from an injected [`Clock`] (monotonic in production), so the
//! tests move a fake clock instead of sleeping.
//!
//! The call runs inside the decision's tracing span and is timed when
//! someone looks (the `metrics` feature's histogram, or an enabled span);
//! the breaker's gauge follows its transitions (see [`crate::metrics`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{Instrument, Span};

use crate::backend::CheckFuture;
use crate::clock::{Clock, MonotonicClock};
use crate::decision::Decision;
use crate::error::BackendError;
use crate::metrics::BackendMetrics;

/// Circuit breaker settings.
///
/// ```
/// use std::time::Duration;
/// use tower_redis_ratelimit::CircuitBreaker;
///
/// let breaker = CircuitBreaker::new()
///     .failure_threshold(3)
///     .cooldown(Duration::from_millis(200), Duration::from_secs(2));
/// # let _ = breaker;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    max_cooldown: Duration,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new()
    }
}

impl CircuitBreaker {
    /// The longest cool-down accepted; longer ones are clamped to it.
    pub const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

    /// Opens after 3 consecutive failures; first cool-down 250 ms, doubling
    /// up to 1 s (so limiting resumes within about a second of Redis' return).
    pub const fn new() -> Self {
        Self {
            threshold: 3,
            cooldown: Duration::from_millis(250),
            max_cooldown: Duration::from_secs(1),
        }
    }

    /// Consecutive failures that open the breaker (at least 1).
    #[must_use]
    pub const fn failure_threshold(mut self, failures: u32) -> Self {
        self.threshold = if failures == 0 { 1 } else { failures };
        self
    }

    /// The first cool-down and the longest one (cool-downs double after each
    /// failed probe).
    ///
    /// Both are clamped to between 1 ms and
    /// [`MAX_COOLDOWN`](Self::MAX_COOLDOWN) (1 hour), and `max` is raised to
    /// `first` when it is shorter.
    #[must_use]
    pub fn cooldown(mut self, first: Duration, max: Duration) -> Self {
        self.cooldown = first.clamp(Duration::from_millis(1), Self::MAX_COOLDOWN);
        self.max_cooldown = max.clamp(self.cooldown, Self::MAX_COOLDOWN);
        self
    }
}

/// What the breaker lets a decision do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Closed: call the backend.
    Call,
    /// Half-open: this call is the one probe.
    Probe,
    /// Open: do not call the backend.
    Skip,
}

/// The breaker's state, shared by every clone of a layer.
pub(crate) struct Breaker {
    config: CircuitBreaker,
    clock: Arc<dyn Clock>,
    failures: AtomicU32,
    /// The clock reading (µs, plus one) until which the breaker is open;
    /// 0 = closed.
    open_until: AtomicU64,
    probing: AtomicBool,
    cooldown_us: AtomicU64,
    /// Call durations and the open/closed gauge (feature `metrics`).
    metrics: BackendMetrics,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("config", &self.config)
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

/// Whole microseconds in `d`, saturating at `u64::MAX`.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Breaker {
    pub(crate) fn new(config: CircuitBreaker) -> Self {
        Self::with_clock(config, Arc::new(MonotonicClock))
    }

    pub(crate) fn with_clock(config: CircuitBreaker, clock: Arc<dyn Clock>) -> Self {
        Self {
            config,
            clock,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            cooldown_us: AtomicU64::new(micros(config.cooldown)),
            metrics: BackendMetrics::new(),
        }
    }

    fn now_us(&self) -> u64 {
        // Never 0, which means "closed".
        self.clock.now_micros().saturating_add(1)
    }

    /// Whether the breaker is open now (test and metrics helper).
    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    pub(crate) fn permit(&self) -> Permit {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Permit::Call;
        }
        if self.now_us() < until {
            return Permit::Skip;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Permit::Probe,
            Err(_) => Permit::Skip,
        }
    }

    /// Records the outcome of a call made under `permit`. `None` means the
    /// call was abandoned (the request went away) and proves nothing.
    pub(crate) fn record(&self, permit: Permit, ok: Option<bool>, error: Option<&BackendError>) {
        match (permit, ok) {
            (Permit::Skip, _) => {}
            (Permit::Probe, None) => self.probing.store(false, Ordering::Release),
            (Permit::Call, None) => {}
            (Permit::Call, Some(true)) => {
                // A call that started before the breaker opened says little
                // about a partly failing backend: only the probe closes it.
                if !self.is_open() {
                    self.failures.store(0, Ordering::Release);
                }
            }
            (Permit::Probe, Some(true)) => {
                self.failures.store(0, Ordering::Release);
                if self.open_until.swap(0, Ordering::AcqRel) != 0 {
                    self.cooldown_us
                        .store(micros(self.config.cooldown), Ordering::Release);
                    self.metrics.breaker(false);
                    tracing::info!("rate limiter backend recovered; circuit breaker closed");
                }
                self.probing.store(false, Ordering::Release);
            }
            (Permit::Probe, Some(false)) => {
                let max = micros(self.config.max_cooldown);
                let next = self
                    .cooldown_us
                    .load(Ordering::Acquire)
                    .saturating_mul(2)
                    .min(max);
                self.cooldown_us.store(next, Ordering::Release);
                self.open_until
                    .store(self.now_us().saturating_add(next), Ordering::Release);
                self.probing.store(false, Ordering::Release);
                tracing::debug!(cooldown_ms = next / 1000, "rate limiter probe failed");
            }
            (Permit::Call, Some(false)) => {
                let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures >= self.config.threshold && !self.is_open() {
                    let cooldown = self.cooldown_us.load(Ordering::Acquire);
                    let opened = self
                        .open_until
                        .compare_exchange(
                            0,
                            self.now_us().saturating_add(cooldown),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok();
                    if opened {
                        self.metrics.breaker(true);
                        match error {
                            Some(error) => tracing::warn!(
                                failures,
                                %error,
                                "rate limiter backend failing; circuit breaker open, skipping it"
                            ),
                            None => tracing::warn!(
                                failures,
                                "rate limiter backend failing; circuit breaker open, skipping it"
                            ),
                        }
                    }
                }
            }
        }
    }
}

/// What became of one backend call.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The breaker is open: the backend was not called.
    Skipped,
    /// The backend did not answer within the deadline.
    TimedOut(Duration),
    /// The backend answered with an error.
    Failed(BackendError),
    /// The backend decided.
    Decided(Decision),
}

/// A finished guarded call.
#[derive(Debug)]
pub(crate) struct Called {
    /// What became of it.
    pub(crate) outcome: Outcome,
    /// How long the backend took, when the call was made and timed.
    pub(crate) took: Option<Duration>,
}

impl From<Outcome> for Called {
    fn from(outcome: Outcome) -> Self {
        Self {
            outcome,
            took: None,
        }
    }
}

/// A backend call under the breaker and the deadline.
pub(crate) type Guarded = Pin<Box<dyn Future<Output = Called> + Send>>;

/// Records "abandoned" if the guarded call is dropped before it finishes.
struct Guard {
    breaker: Arc<Breaker>,
    permit: Permit,
    done: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(self.permit, None, None);
        }
    }
}

impl Breaker {
    /// Runs one backend call under the breaker and `deadline`: the only way
    /// the crate calls a backend. When the breaker is open the backend is not
    /// called at all and the outcome is [`Outcome::Skipped`] at once.
    ///
    /// `backend` is the backend's metrics label; the call runs in `span`,
    /// and is timed if the `metrics` feature or that span wants it.
    pub(crate) fn call(
        self: &Arc<Self>,
        deadline: Duration,
        backend: &'static str,
        span: &Span,
        check: impl FnOnce() -> CheckFuture,
    ) -> Guarded {
        let permit = self.permit();
        if permit == Permit::Skip {
            return Box::pin(std::future::ready(Outcome::Skipped.into()));
        }
        self.metrics.start(backend);
        let started = (BackendMetrics::TIMED || !span.is_disabled()).then(Instant::now);
        let future = span.in_scope(check);
        let mut guard = Guard {
            breaker: Arc::clone(self),
            permit,
            done: false,
        };
        let call = async move {
            let outcome = match tokio::time::timeout(deadline, future).await {
                Ok(Ok(decision)) => Outcome::Decided(decision),
                Ok(Err(error)) => Outcome::Failed(error),
                Err(_) => Outcome::TimedOut(deadline),
            };
            let took = started.map(|started| started.elapsed());
            guard.done = true;
            if let Some(took) = took {
                guard.breaker.metrics.call_took(took);
            }
            let (ok, error) = match &outcome {
                Outcome::Decided(_) => (true, None),
                Outcome::Failed(error) => (false, Some(error)),
                Outcome::TimedOut(_) | Outcome::Skipped => (false, None),
            };
            guard.breaker.record(permit, Some(ok), error);
            Called { outcome, took }
        };
        Box::pin(call.instrument(span.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    fn fail(b: &Breaker, p: Permit) {
        b.record(p, Some(false), None);
    }

    fn breaker(config: CircuitBreaker) -> (Breaker, FakeClock) {
        let clock = FakeClock::new(1_000_000);
        (Breaker::with_clock(config, Arc::new(clock.clone())), clock)
    }

    #[test]
    fn opens_at_threshold_probes_after_cooldown_and_recovers() {
        let cfg = CircuitBreaker::new()
            .failure_threshold(2)
            .cooldown(Duration::from_millis(20), Duration::from_millis(40));
        let (b, clock) = breaker(cfg);
        assert_eq!(b.permit(), Permit::Call);
        fail(&b, Permit::Call);
        assert_eq!(b.permit(), Permit::Call);
        fail(&b, Permit::Call);
        assert_eq!(b.permit(), Permit::Skip);
        clock.advance(Duration::from_millis(19));
        assert_eq!(b.permit(), Permit::Skip, "still cooling down");
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.permit(), Permit::Skip, "one probe at a time");
        fail(&b, Permit::Probe);
        assert_eq!(b.cooldown_us.load(Ordering::Relaxed), 40_000);
        clock.advance(Duration::from_millis(39));
        assert_eq!(b.permit(), Permit::Skip, "the cool-down doubled");
        clock.advance(Duration::from_millis(1));
        let p = b.permit();
        assert_eq!(p, Permit::Probe);
        b.record(p, Some(true), None);
        assert!(!b.is_open());
        assert_eq!(b.permit(), Permit::Call);
        assert_eq!(b.cooldown_us.load(Ordering::Relaxed), 20_000);
    }

    #[test]
    fn abandoned_probe_frees_the_probe_slot() {
        let cfg = CircuitBreaker::new()
            .failure_threshold(1)
            .cooldown(Duration::from_millis(1), Duration::from_millis(1));
        let (b, clock) = breaker(cfg);
        fail(&b, Permit::Call);
        clock.advance(Duration::from_millis(3));
        let p = b.permit();
        assert_eq!(p, Permit::Probe);
        b.record(p, None, None);
        assert_eq!(b.permit(), Permit::Probe);
    }

    #[test]
    fn a_late_call_success_does_not_close_an_open_breaker() {
        let cfg = CircuitBreaker::new()
            .failure_threshold(2)
            .cooldown(Duration::from_secs(60), Duration::from_secs(60));
        let (b, _clock) = breaker(cfg);
        // Three calls start while closed; two fail (opening it), one succeeds late.
        let (p1, p2, p3) = (b.permit(), b.permit(), b.permit());
        assert_eq!((p1, p2, p3), (Permit::Call, Permit::Call, Permit::Call));
        fail(&b, p1);
        fail(&b, p2);
        assert!(b.is_open());
        b.record(p3, Some(true), None);
        assert!(b.is_open(), "only a probe closes the breaker");
        assert_eq!(b.permit(), Permit::Skip);
        // While closed, a success still resets the failure count.
        let (b, _clock) = breaker(cfg);
        fail(&b, Permit::Call);
        b.record(Permit::Call, Some(true), None);
        fail(&b, Permit::Call);
        assert!(!b.is_open(), "the count was reset by the success");
    }

    #[test]
    fn huge_cooldowns_are_clamped_and_do_not_overflow() {
        let cfg = CircuitBreaker::new()
            .failure_threshold(1)
            .cooldown(Duration::MAX, Duration::MAX);
        assert_eq!(cfg.cooldown, CircuitBreaker::MAX_COOLDOWN);
        assert_eq!(cfg.max_cooldown, CircuitBreaker::MAX_COOLDOWN);
        let short = CircuitBreaker::new().cooldown(Duration::ZERO, Duration::ZERO);
        assert_eq!(short.cooldown, Duration::from_millis(1));
        assert_eq!(short.max_cooldown, Duration::from_millis(1));
        let (b, _clock) = breaker(cfg);
        fail(&b, Permit::Call);
        assert_eq!(b.permit(), Permit::Skip);
        // A failed probe doubles the cool-down: it stays at the clamp.
        b.record(Permit::Probe, Some(false), None);
        assert_eq!(
            b.cooldown_us.load(Ordering::Relaxed),
            micros(CircuitBreaker::MAX_COOLDOWN)
        );
        assert_eq!(b.permit(), Permit::Skip);
    }

    #[tokio::test]
    async fn call_reports_each_outcome_and_skips_when_open() {
        use crate::decision::QuotaStatus;
        let cfg = CircuitBreaker::new()
            .failure_threshold(2)
            .cooldown(Duration::from_secs(60), Duration::from_secs(60));
        let b = Arc::new(Breaker::new(cfg));
        let deadline = Duration::from_millis(20);
        let span = Span::none();
        let decided = b
            .call(deadline, "memory", &span, || {
                Box::pin(async {
                    Ok(Decision::allowed(vec![QuotaStatus {
                        limit: 1,
                        window: Duration::from_secs(1),
                        remaining: 0,
                        reset_after: Duration::from_secs(1),
                    }]))
                })
            })
            .await;
        assert!(matches!(decided.outcome, Outcome::Decided(d) if d.is_allowed()));
        assert_eq!(
            decided.took.is_some(),
            cfg!(feature = "metrics"),
            "timed only for the histogram or an enabled span"
        );
        let failed = b
            .call(deadline, "memory", &span, || {
                Box::pin(async { Err(BackendError::Protocol("x".into())) })
            })
            .await;
        assert!(matches!(
            failed.outcome,
            Outcome::Failed(BackendError::Protocol(_))
        ));
        let late = b
            .call(deadline, "memory", &span, || {
                Box::pin(std::future::pending())
            })
            .await;
        assert!(matches!(late.outcome, Outcome::TimedOut(d) if d == deadline));
        if let Some(took) = late.took {
            assert!(took >= deadline, "{took:?}");
        }
        assert!(b.is_open(), "two failures in a row");
        let mut called = false;
        let skipped = b
            .call(deadline, "memory", &span, || {
                called = true;
                Box::pin(std::future::pending())
            })
            .await;
        assert!(matches!(skipped.outcome, Outcome::Skipped));
        assert!(skipped.took.is_none(), "no call, no duration");
        assert!(!called, "an open breaker does not call the backend");
    }
}
