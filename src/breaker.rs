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
//! The breaker keeps one such circuit per *partition* of the backend's keys
//! ([`Backend::partitions`](crate::Backend::partitions)): a single Redis
//! node is one partition, so the breaker works as described for the whole
//! backend; a Redis Cluster backend has 64, one per group of 256 hash slots,
//! so while one master is down only the circuits of the groups it owns open
//! and the keys of the healthy masters are still limited. Each decision is
//! counted against its key's partition. The first circuit to open is logged
//! at `warn` with its partition; when many open at once (a dead master
//! owns a third of the groups) the others are logged at `debug`, with at
//! most one more `warn` a second saying how many are open; `info` once
//! every circuit is closed again. The `ratelimit_breaker_open` gauge counts
//! the open circuits.
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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing::{Instrument, Span};

use crate::backend::CheckFuture;
use crate::clock::{Clock, MonotonicClock};
use crate::decision::Decision;
use crate::error::BackendError;
use crate::failure::FailureLog;
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

/// One partition's circuit: its failure count, cool-down and probe slot.
struct Circuit {
    failures: AtomicU32,
    /// The clock reading (µs, plus one) until which the circuit is open;
    /// 0 = closed.
    open_until: AtomicU64,
    probing: AtomicBool,
    cooldown_us: AtomicU64,
}

impl Circuit {
    fn new(config: &CircuitBreaker) -> Self {
        Self {
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            cooldown_us: AtomicU64::new(micros(config.cooldown)),
        }
    }

    fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

/// The breaker's state, shared by every clone of a layer: one circuit per
/// partition of the backend ([`Backend::partitions`](crate::Backend::partitions)),
/// so that one failing cluster shard does not switch off limiting for the
/// keys of the healthy ones. A single-node backend has one partition.
pub(crate) struct Breaker {
    config: CircuitBreaker,
    clock: Arc<dyn Clock>,
    circuits: Box<[Circuit]>,
    /// How many circuits are open now.
    open: AtomicUsize,
    /// Rate-limits the opening warnings when many partitions open at once.
    warnings: FailureLog,
    /// Call durations and the open-partitions gauge (feature `metrics`).
    metrics: BackendMetrics,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("config", &self.config)
            .field("partitions", &self.circuits.len())
            .field("open", &self.open_partitions())
            .finish_non_exhaustive()
    }
}

/// Whole microseconds in `d`, saturating at `u64::MAX`.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Breaker {
    /// A breaker of `partitions` circuits (at least one).
    pub(crate) fn new(config: CircuitBreaker, partitions: usize) -> Self {
        Self::with_clock(config, partitions, Arc::new(MonotonicClock))
    }

    pub(crate) fn with_clock(
        config: CircuitBreaker,
        partitions: usize,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            config,
            circuits: (0..partitions.max(1))
                .map(|_| Circuit::new(&config))
                .collect(),
            open: AtomicUsize::new(0),
            warnings: FailureLog::with_clock(Arc::clone(&clock)),
            clock,
            metrics: BackendMetrics::new(),
        }
    }

    fn now_us(&self) -> u64 {
        // Never 0, which means "closed".
        self.clock.now_micros().saturating_add(1)
    }

    /// The circuit of `partition`; an out-of-range partition (a custom
    /// backend's mistake) wraps around rather than panicking.
    fn circuit(&self, partition: usize) -> &Circuit {
        &self.circuits[partition % self.circuits.len()]
    }

    /// How many partitions' circuits are open now.
    pub(crate) fn open_partitions(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Whether the circuit of `partition` is open now.
    #[cfg(test)]
    pub(crate) fn is_open(&self, partition: usize) -> bool {
        self.circuit(partition).is_open()
    }

    pub(crate) fn permit(&self, partition: usize) -> Permit {
        let circuit = self.circuit(partition);
        let until = circuit.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Permit::Call;
        }
        if self.now_us() < until {
            return Permit::Skip;
        }
        match circuit
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Permit::Probe,
            Err(_) => Permit::Skip,
        }
    }

    /// Records the outcome of a call made under `permit` for `partition`.
    /// `None` means the call was abandoned (the request went away) and
    /// proves nothing.
    pub(crate) fn record(
        &self,
        partition: usize,
        permit: Permit,
        ok: Option<bool>,
        error: Option<&BackendError>,
    ) {
        let circuit = self.circuit(partition);
        match (permit, ok) {
            (Permit::Skip, _) => {}
            (Permit::Probe, None) => circuit.probing.store(false, Ordering::Release),
            (Permit::Call, None) => {}
            (Permit::Call, Some(true)) => {
                // A call that started before the breaker opened says little
                // about a partly failing backend: only the probe closes it.
                if !circuit.is_open() {
                    circuit.failures.store(0, Ordering::Release);
                }
            }
            (Permit::Probe, Some(true)) => {
                circuit.failures.store(0, Ordering::Release);
                if circuit.open_until.swap(0, Ordering::AcqRel) != 0 {
                    circuit
                        .cooldown_us
                        .store(micros(self.config.cooldown), Ordering::Release);
                    self.closed(partition);
                }
                circuit.probing.store(false, Ordering::Release);
            }
            (Permit::Probe, Some(false)) => {
                let max = micros(self.config.max_cooldown);
                let next = circuit
                    .cooldown_us
                    .load(Ordering::Acquire)
                    .saturating_mul(2)
                    .min(max);
                circuit.cooldown_us.store(next, Ordering::Release);
                circuit
                    .open_until
                    .store(self.now_us().saturating_add(next), Ordering::Release);
                circuit.probing.store(false, Ordering::Release);
                tracing::debug!(
                    partition,
                    cooldown_ms = next / 1000,
                    "rate limiter probe failed"
                );
            }
            (Permit::Call, Some(false)) => {
                let failures = circuit.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures >= self.config.threshold && !circuit.is_open() {
                    let cooldown = circuit.cooldown_us.load(Ordering::Acquire);
                    let opened = circuit
                        .open_until
                        .compare_exchange(
                            0,
                            self.now_us().saturating_add(cooldown),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok();
                    if opened {
                        self.opened(partition, failures, error);
                    }
                }
            }
        }
    }

    /// A circuit opened: update the gauge and log. One backend (one
    /// partition) logs every opening at `warn`, as before partitions
    /// existed. With several partitions, a dead cluster node opens many
    /// circuits at once: the first opening (none was open) warns, naming its
    /// partition; further ones warn at most once a second with how many are
    /// open and how many openings went unwarned, the rest are `debug`.
    fn opened(&self, partition: usize, failures: u32, error: Option<&BackendError>) {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.metrics.breaker(open);
        let partitions = self.circuits.len();
        let error: &dyn std::fmt::Display = match error {
            Some(error) => error,
            None => &"backend deadline exceeded",
        };
        if partitions == 1 {
            tracing::warn!(
                failures,
                %error,
                "rate limiter backend failing; circuit breaker open, skipping it"
            );
            return;
        }
        let warning = self.warnings.warning();
        if open == 1 || warning.is_some() {
            tracing::warn!(
                partition,
                partitions,
                open_partitions = open,
                unwarned = warning.unwrap_or(0),
                failures,
                %error,
                "rate limiter backend failing for a partition of its keys; \
                 circuit breaker open, skipping it for those keys"
            );
        } else {
            tracing::debug!(
                partition,
                open_partitions = open,
                failures,
                %error,
                "rate limiter circuit breaker open for one more partition"
            );
        }
    }

    /// A circuit closed: update the gauge and log (`info` once every
    /// partition is closed again, else `debug`).
    fn closed(&self, partition: usize) {
        let open = self.open.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        self.metrics.breaker(open);
        if open == 0 {
            tracing::info!(
                partition,
                "rate limiter backend recovered; circuit breaker closed"
            );
        } else {
            tracing::debug!(
                partition,
                open_partitions = open,
                "rate limiter circuit breaker closed for one partition"
            );
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
    partition: usize,
    permit: Permit,
    done: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(self.partition, self.permit, None, None);
        }
    }
}

/// A backend's answer, as [`Breaker::start`] asks for it.
pub(crate) enum Checked {
    /// Decided synchronously (the memory backend, called directly).
    Now(Decision),
    /// A backend call to poll.
    Later(CheckFuture),
}

/// A guarded backend call, as [`Breaker::start`] leaves it.
pub(crate) enum Call {
    /// Finished already: the breaker was open, or the backend decided
    /// synchronously.
    Ready(Called),
    /// Still running: poll it to its end.
    Waiting(Guarded),
}

impl Breaker {
    /// Runs one backend call under the breaker and `deadline`: the only way
    /// the crate calls a backend. When the circuit of `partition` (the key's
    /// [`Backend::partition`](crate::Backend::partition)) is open the backend
    /// is not called at all and the outcome is [`Outcome::Skipped`] at once.
    ///
    /// A decision made synchronously ([`Checked::Now`], the memory
    /// backend's) is [`Call::Ready`] at once, as is a skipped call; a backend
    /// future is [`Call::Waiting`], bounded by the deadline.
    ///
    /// `backend` is the backend's metrics label; the call runs in `span`,
    /// and is timed if the `metrics` feature or that span wants it.
    // The `Err` below carries a finished call out of the span's closure at
    // once, never up a call stack: boxing it would cost an allocation per
    // in-process decision for nothing.
    #[allow(clippy::result_large_err)]
    pub(crate) fn start(
        self: &Arc<Self>,
        deadline: Duration,
        backend: &'static str,
        span: &Span,
        partition: usize,
        check: impl FnOnce() -> Checked,
    ) -> Call {
        let permit = self.permit(partition);
        if permit == Permit::Skip {
            return Call::Ready(Outcome::Skipped.into());
        }
        self.metrics.start(backend);
        let started = (BackendMetrics::TIMED || !span.is_disabled()).then(Instant::now);
        // A decision made already (the memory backend's) needs no deadline
        // timer, no boxed future and no further state.
        let later = span.in_scope(|| match check() {
            Checked::Now(decision) => {
                let outcome = Outcome::Decided(decision);
                Err(self.ended(partition, permit, started, outcome))
            }
            Checked::Later(future) => Ok(future),
        });
        let future = match later {
            Ok(future) => future,
            Err(called) => return Call::Ready(called),
        };
        let mut guard = Guard {
            breaker: Arc::clone(self),
            partition,
            permit,
            done: false,
        };
        let call = async move {
            let outcome = match tokio::time::timeout(deadline, future).await {
                Ok(Ok(decision)) => Outcome::Decided(decision),
                Ok(Err(error)) => Outcome::Failed(error),
                Err(_) => Outcome::TimedOut(deadline),
            };
            guard.done = true;
            guard.breaker.ended(partition, permit, started, outcome)
        };
        Call::Waiting(Box::pin(call.instrument(span.clone())))
    }

    /// Records a call that ended (its duration, and its outcome for the
    /// circuit of `partition`).
    fn ended(
        &self,
        partition: usize,
        permit: Permit,
        started: Option<Instant>,
        outcome: Outcome,
    ) -> Called {
        let took = started.map(|started| started.elapsed());
        if let Some(took) = took {
            self.metrics.call_took(took);
        }
        let (ok, error) = match &outcome {
            Outcome::Decided(_) => (true, None),
            // The backend answered: only this client's key is at fault (a
            // value of the wrong type, maxmemory), and a fault of one key
            // must not switch limiting off for every other client.
            Outcome::Failed(BackendError::Key(_)) => (true, None),
            Outcome::Failed(error) => (false, Some(error)),
            Outcome::TimedOut(_) | Outcome::Skipped => (false, None),
        };
        self.record(partition, permit, Some(ok), error);
        Called { outcome, took }
    }

    /// [`start`](Self::start) as one future, ready or not (for the tests).
    #[cfg(test)]
    pub(crate) fn call(
        self: &Arc<Self>,
        deadline: Duration,
        backend: &'static str,
        span: &Span,
        partition: usize,
        check: impl FnOnce() -> CheckFuture,
    ) -> Guarded {
        match self.start(deadline, backend, span, partition, || {
            Checked::Later(check())
        }) {
            Call::Ready(called) => Box::pin(std::future::ready(called)),
            Call::Waiting(call) => call,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    fn fail(b: &Breaker, p: Permit) {
        b.record(0, p, Some(false), None);
    }

    fn breaker(config: CircuitBreaker) -> (Breaker, FakeClock) {
        let clock = FakeClock::new(1_000_000);
        (
            Breaker::with_clock(config, 1, Arc::new(clock.clone())),
            clock,
        )
    }

    fn cooldown_us(b: &Breaker) -> u64 {
        b.circuit(0).cooldown_us.load(Ordering::Relaxed)
    }

    #[test]
    fn opens_at_threshold_probes_after_cooldown_and_recovers() {
        let cfg = CircuitBreaker::new()
            .failure_threshold(2)
            .cooldown(Duration::from_millis(20), Duration::from_millis(40));
        let (b, clock) = breaker(cfg);
        assert_eq!(b.permit(0), Permit::Call);
        fail(&b, Permit::Call);
        assert_eq!(b.permit(0), Permit::Call);
        fail(&b, Permit::Call);
        assert_eq!(b.permit(0), Permit::Skip);
        clock.advance(Duration::from_millis(19));
        assert_eq!(b.permit(0), Permit::Skip, "still cooling down");
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.permit(0), Permit::Probe);
        assert_eq!(b.permit(0), Permit::Skip, "one probe at a time");
        fail(&b, Permit::Probe);
        assert_eq!(cooldown_us(&b), 40_000);
        clock.advance(Duration::from_millis(39));
        assert_eq!(b.permit(0), Permit::Skip, "the cool-down doubled");
        clock.advance(Duration::from_millis(1));
        let p = b.permit(0);
        assert_eq!(p, Permit::Probe);
        b.record(0, p, Some(true), None);
        assert!(!b.is_open(0));
        assert_eq!(b.permit(0), Permit::Call);
        assert_eq!(cooldown_us(&b), 20_000);
    }

    #[test]
    fn abandoned_probe_frees_the_probe_slot() {
        let cfg = CircuitBreaker::new()
            .failure_threshold(1)
            .cooldown(Duration::from_millis(1), Duration::from_millis(1));
        let (b, clock) = breaker(cfg);
        fail(&b, Permit::Call);
        clock.advance(Duration::from_millis(3));
        let p = b.permit(0);
        assert_eq!(p, Permit::Probe);
        b.record(0, p, None, None);
        assert_eq!(b.permit(0), Permit::Probe);
    }

    #[test]
    fn a_late_call_success_does_not_close_an_open_breaker() {
        let cfg = CircuitBreaker::new()
            .failure_threshold(2)
            .cooldown(Duration::from_secs(60), Duration::from_secs(60));
        let (b, _clock) = breaker(cfg);
        // Three calls start while closed; two fail (opening it), one succeeds late.
        let (p1, p2, p3) = (b.permit(0), b.permit(0), b.permit(0));
        assert_eq!((p1, p2, p3), (Permit::Call, Permit::Call, Permit::Call));
        fail(&b, p1);
        fail(&b, p2);
        assert!(b.is_open(0));
        b.record(0, p3, Some(true), None);
        assert!(b.is_open(0), "only a probe closes the breaker");
        assert_eq!(b.permit(0), Permit::Skip);
        // While closed, a success still resets the failure count.
        let (b, _clock) = breaker(cfg);
        fail(&b, Permit::Call);
        b.record(0, Permit::Call, Some(true), None);
        fail(&b, Permit::Call);
        assert!(!b.is_open(0), "the count was reset by the success");
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
        assert_eq!(b.permit(0), Permit::Skip);
        // A failed probe doubles the cool-down: it stays at the clamp.
        b.record(0, Permit::Probe, Some(false), None);
        assert_eq!(cooldown_us(&b), micros(CircuitBreaker::MAX_COOLDOWN));
        assert_eq!(b.permit(0), Permit::Skip);
    }

    #[tokio::test]
    async fn call_reports_each_outcome_and_skips_when_open() {
        use crate::decision::QuotaStatus;
        let cfg = CircuitBreaker::new()
            .failure_threshold(2)
            .cooldown(Duration::from_secs(60), Duration::from_secs(60));
        let b = Arc::new(Breaker::new(cfg, 1));
        let deadline = Duration::from_millis(20);
        let span = Span::none();
        let decided = b
            .call(deadline, "memory", &span, 0, || {
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
            .call(deadline, "memory", &span, 0, || {
                Box::pin(async { Err(BackendError::Protocol("x".into())) })
            })
            .await;
        assert!(matches!(
            failed.outcome,
            Outcome::Failed(BackendError::Protocol(_))
        ));
        let late = b
            .call(deadline, "memory", &span, 0, || {
                Box::pin(std::future::pending())
            })
            .await;
        assert!(matches!(late.outcome, Outcome::TimedOut(d) if d == deadline));
        if let Some(took) = late.took {
            assert!(took >= deadline, "{took:?}");
        }
        assert!(b.is_open(0), "two failures in a row");
        let mut called = false;
        let skipped = b
            .call(deadline, "memory", &span, 0, || {
                called = true;
                Box::pin(std::future::pending())
            })
            .await;
        assert!(matches!(skipped.outcome, Outcome::Skipped));
        assert!(skipped.took.is_none(), "no call, no duration");
        assert!(!called, "an open breaker does not call the backend");
    }

    #[test]
    fn partitions_fail_and_recover_independently() {
        let cfg = CircuitBreaker::new()
            .failure_threshold(2)
            .cooldown(Duration::from_millis(10), Duration::from_millis(10));
        let clock = FakeClock::new(1_000_000);
        let b = Breaker::with_clock(cfg, 4, Arc::new(clock.clone()));
        for partition in [1, 3] {
            for _ in 0..2 {
                b.record(partition, Permit::Call, Some(false), None);
            }
        }
        assert_eq!(b.open_partitions(), 2);
        assert_eq!(b.permit(0), Permit::Call, "a healthy partition is called");
        assert_eq!(b.permit(2), Permit::Call);
        assert_eq!(b.permit(1), Permit::Skip);
        assert_eq!(b.permit(3), Permit::Skip);
        // Failures spread over partitions open none of them.
        b.record(0, Permit::Call, Some(false), None);
        b.record(2, Permit::Call, Some(false), None);
        assert_eq!(b.open_partitions(), 2);
        // Each open partition has its own probe.
        clock.advance(Duration::from_millis(10));
        assert_eq!(b.permit(1), Permit::Probe);
        assert_eq!(b.permit(3), Permit::Probe);
        b.record(1, Permit::Probe, Some(true), None);
        assert_eq!(b.open_partitions(), 1);
        assert!(!b.is_open(1) && b.is_open(3));
        b.record(3, Permit::Probe, Some(true), None);
        assert_eq!(b.open_partitions(), 0);
        // An out-of-range partition wraps around instead of panicking.
        assert_eq!(b.permit(7), Permit::Call);
        // Zero partitions means one.
        assert_eq!(Breaker::new(cfg, 0).circuits.len(), 1);
    }
}
