//! Deadline and circuit breaker around every backend call.
//!
//! A decision is one backend call bounded by the layer's deadline. The
//! breaker counts consecutive failures (errors and deadline misses); at the
//! threshold it *opens*: for a cool-down, decisions skip the backend
//! entirely, so a dead or stalled Redis adds no latency at all. After the
//! cool-down one request *probes* the backend; success closes the breaker,
//! failure re-opens it with a doubled cool-down (up to a maximum). Each
//! transition is logged once (`warn` when opening, `info` when recovering).
//! Only the probe's success closes an open breaker: a call that started
//! before the breaker opened and succeeds afterwards proves little about a
//! partly failing backend, and letting it close the breaker would make it
//! flap.
//!
//! A failed decision is logged at `warn` at most once per `WARN_INTERVAL`
//! (1 s) per layer, with the number of failures since the previous warning
//! (`Breaker::failure_warning`); the others are logged at `debug`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::backend::CheckFuture;
use crate::error::BackendError;

/// At most one `warn` about failed decisions per this interval and layer
/// (the others are logged at `debug` and counted as suppressed).
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(1);

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
#[derive(Debug)]
pub(crate) struct Breaker {
    config: CircuitBreaker,
    origin: Instant,
    failures: AtomicU32,
    /// Microseconds since `origin` until which the breaker is open; 0 = closed.
    open_until: AtomicU64,
    probing: AtomicBool,
    cooldown_us: AtomicU64,
    /// Microseconds since `origin` of the last failure warning; 0 = never.
    warned_at: AtomicU64,
    /// Failed decisions not warned about since the last warning.
    suppressed: AtomicU64,
}

/// Whole microseconds in `d`, saturating at `u64::MAX`.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Breaker {
    pub(crate) fn new(config: CircuitBreaker) -> Self {
        Self {
            config,
            origin: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            cooldown_us: AtomicU64::new(micros(config.cooldown)),
            warned_at: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        // Never 0, which means "closed".
        micros(self.origin.elapsed()).saturating_add(1)
    }

    /// Called for every failed decision (not for skipped ones). Returns
    /// `Some(suppressed)` when this failure should be logged at `warn`, with
    /// the number of failures left unwarned since the previous warning;
    /// `None` (and the failure is counted) otherwise. At most one `Some` per
    /// [`WARN_INTERVAL`].
    pub(crate) fn failure_warning(&self) -> Option<u64> {
        self.failure_warning_at(self.now_us())
    }

    fn failure_warning_at(&self, now: u64) -> Option<u64> {
        let last = self.warned_at.load(Ordering::Acquire);
        let due = last == 0 || now >= last.saturating_add(micros(WARN_INTERVAL));
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

/// Runs `check` under the breaker and the deadline. Returns `None` when the
/// breaker is open (the backend is not called at all).
pub(crate) fn guarded(
    breaker: &Arc<Breaker>,
    deadline: Duration,
    check: impl FnOnce() -> CheckFuture,
) -> Option<CheckFuture> {
    let permit = breaker.permit();
    if permit == Permit::Skip {
        return None;
    }
    let future = check();
    let mut guard = Guard {
        breaker: Arc::clone(breaker),
        permit,
        done: false,
    };
    Some(Box::pin(async move {
        let result = match tokio::time::timeout(deadline, future).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Timeout(deadline)),
        };
        guard.done = true;
        guard
            .breaker
            .record(permit, Some(result.is_ok()), result.as_ref().err());
        result
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(b: &Breaker, p: Permit) {
        b.record(p, Some(false), None);
    }

    #[test]
    fn opens_at_threshold_probes_after_cooldown_and_recovers() {
        let cfg = CircuitBreaker::new()
            .failure_threshold(2)
            .cooldown(Duration::from_millis(20), Duration::from_millis(40));
        let b = Breaker::new(cfg);
        assert_eq!(b.permit(), Permit::Call);
        fail(&b, Permit::Call);
        assert_eq!(b.permit(), Permit::Call);
        fail(&b, Permit::Call);
        assert_eq!(b.permit(), Permit::Skip);
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.permit(), Permit::Skip, "one probe at a time");
        fail(&b, Permit::Probe);
        assert_eq!(b.cooldown_us.load(Ordering::Relaxed), 40_000);
        std::thread::sleep(Duration::from_millis(45));
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
        let b = Breaker::new(cfg);
        fail(&b, Permit::Call);
        std::thread::sleep(Duration::from_millis(3));
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
        let b = Breaker::new(cfg);
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
        let b = Breaker::new(cfg);
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
        let b = Breaker::new(cfg);
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

    #[test]
    fn failure_warnings_are_rate_limited_and_count_the_suppressed() {
        let b = Breaker::new(CircuitBreaker::new());
        let second = micros(WARN_INTERVAL);
        assert_eq!(b.failure_warning_at(10), Some(0), "the first failure warns");
        for t in 0..5 {
            assert_eq!(b.failure_warning_at(20 + t), None);
        }
        assert_eq!(b.failure_warning_at(9 + second), None, "not a second yet");
        assert_eq!(b.failure_warning_at(10 + second), Some(6));
        assert_eq!(b.failure_warning_at(11 + second), None);
        assert_eq!(b.failure_warning_at(10 + 5 * second), Some(1));
        // The real clock: one warning, then quiet.
        let b = Breaker::new(CircuitBreaker::new());
        assert_eq!(b.failure_warning(), Some(0));
        assert_eq!(b.failure_warning(), None);
    }
}
