//! Adjustments after the response: a request this layer admitted is given
//! back to its policy when an inner rate-limit layer refused it (stacked
//! layers: one refusal spends one quota), or when the policy says so from
//! the response's head ([`Policy::refund_when`]).
//!
//! Every rejection a layer makes carries a [`Refused`] marker in its
//! response's extensions; a layer above it that admitted the request finds
//! the marker when the response comes back through it, and refunds its
//! admission ([`Backend::refund`], with the decision's ticket) off the
//! response's path: the response is handed back at once, the refund runs
//! in the background (bounded in time and in number), and a failed refund
//! is logged, never the response's concern.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::Response;

use crate::backend::Backend;
use crate::decision::Decision;
use crate::policy::Policy;

/// The most refunds one layer runs in the background at once; more are
/// dropped (and logged): a flood of refusals cannot pile up tasks.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// The shortest time a background refund may take before it is given up
/// (the layer's deadline, if longer).
const MIN_TIME_LIMIT: Duration = Duration::from_secs(1);

/// Counts one refund's `outcome` (`ok`, `failed`, `dropped`) for `policy`
/// in `ratelimit_adjustments_total` (feature `metrics`).
fn count(policy: &str, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(
        crate::metrics::ADJUSTMENTS_TOTAL,
        "policy" => policy.to_owned(),
        "kind" => "refund",
        "outcome" => outcome,
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (policy, outcome);
}

/// The mark of a response a rate-limit layer made to refuse a request (in
/// the response's extensions).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refused;

/// A layer's adjustments after the response.
#[derive(Debug)]
pub(crate) struct Adjustments {
    /// Whether an admission refused by an inner layer is refunded.
    refund_refused: bool,
    /// Refunds running in the background now.
    in_flight: Arc<AtomicUsize>,
}

impl Adjustments {
    pub(crate) fn new(refund_refused: bool) -> Self {
        Self {
            refund_refused,
            in_flight: Arc::default(),
        }
    }

    /// Marks `response` as a refusal by this layer.
    pub(crate) fn mark_refused<B>(response: &mut Response<B>) {
        response.extensions_mut().insert(Refused);
    }

    /// Whether this layer gives back its admission of the request
    /// `response` answers: an inner rate-limit layer refused it.
    pub(crate) fn refunds<B>(&self, response: &Response<B>) -> bool {
        self.refund_refused && response.extensions().get::<Refused>().is_some()
    }

    /// Gives back, off the response's path, what `decision` took of
    /// `policy` in `backend` (nothing if the decision carries no ticket or
    /// no client: the backend did not admit it). A backend that answers at
    /// once (in-process) refunds here; others in a background task, given
    /// up after `deadline` (at least a second). Outside a Tokio runtime, or
    /// with [`MAX_IN_FLIGHT`] refunds running, the refund is dropped and
    /// logged.
    pub(crate) fn refund_later(
        &self,
        backend: &Arc<dyn Backend>,
        policy: &Policy,
        decision: &Decision,
        deadline: Duration,
    ) {
        let (Some(ticket), Some(client)) = (decision.ticket(), decision.client()) else {
            return;
        };
        let name = policy.name().to_owned();
        // A slot first: a refund beyond the bound is never even started.
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(policy = %name, "refund after the response dropped: too many in flight");
            count(&name, "dropped");
            return;
        }
        let mut refund = backend.refund(policy, client, ticket.cost(), &ticket);
        // In-process backends are done at once: no task.
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(result) = refund.as_mut().poll(&mut cx) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            match result {
                Ok(()) => count(&name, "ok"),
                Err(error) => {
                    tracing::debug!(policy = %name, %error, "refund after the response failed");
                    count(&name, "failed");
                }
            }
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(policy = %name, "refund after the response dropped: no Tokio runtime");
            count(&name, "dropped");
            return;
        };
        let in_flight = Arc::clone(&self.in_flight);
        let limit = deadline.max(MIN_TIME_LIMIT);
        runtime.spawn(async move {
            match tokio::time::timeout(limit, refund).await {
                Ok(Ok(())) => count(&name, "ok"),
                Ok(Err(error)) => {
                    tracing::debug!(policy = %name, %error, "refund after the response failed");
                    count(&name, "failed");
                }
                Err(_) => {
                    tracing::debug!(policy = %name, "refund after the response timed out");
                    count(&name, "failed");
                }
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::backend::{CheckFuture, RefundFuture};
    use crate::decision::{Origin, QuotaStatus, Ticket};
    use crate::key::Key;
    use crate::quota::Quota;

    /// A backend whose refunds never end (a stalled Redis), counting them.
    struct Stalled(AtomicU64);

    impl Backend for Stalled {
        fn check(&self, _: &Policy, _: &Key, _: u64) -> CheckFuture {
            unreachable!("only refunds here")
        }

        fn refund(&self, _: &Policy, _: &Key, _: u64, _: &Ticket) -> RefundFuture {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::pending())
        }
    }

    fn admitted(client: Option<&str>) -> Decision {
        let status = QuotaStatus {
            limit: 5,
            window: Duration::from_secs(60),
            remaining: 4,
            reset_after: Duration::from_secs(60),
        };
        let decision = Decision::allowed(vec![status]).stamped(1, Origin::Memory { at: 1 });
        match client {
            Some(key) => decision.with_client(Key::new(key)),
            None => decision,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn background_refunds_are_bounded_in_number_and_time() {
        let stalled = Arc::new(Stalled(AtomicU64::new(0)));
        let backend: Arc<dyn Backend> = stalled.clone();
        let policy = Policy::new("p").quota(Quota::per_minute(5));
        let adjust = Adjustments::new(true);
        let deadline = Duration::from_millis(50);
        // Nothing to refund without a ticket and a client.
        adjust.refund_later(&backend, &policy, &admitted(None), deadline);
        let denied = Decision::denied(Vec::new(), 0, Duration::from_secs(1));
        adjust.refund_later(&backend, &policy, &denied, deadline);
        assert_eq!(stalled.0.load(Ordering::SeqCst), 0);
        // A flood: at most MAX_IN_FLIGHT wait at once, the rest are dropped.
        let decision = admitted(Some("203.0.113.9"));
        for _ in 0..MAX_IN_FLIGHT + 100 {
            adjust.refund_later(&backend, &policy, &decision, deadline);
        }
        assert_eq!(adjust.in_flight.load(Ordering::SeqCst), MAX_IN_FLIGHT);
        // The dropped ones were never started.
        assert_eq!(stalled.0.load(Ordering::SeqCst), MAX_IN_FLIGHT as u64);
        // Given up after a second (the deadline is shorter): room again.
        tokio::time::sleep(MIN_TIME_LIMIT + Duration::from_millis(1)).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(adjust.in_flight.load(Ordering::SeqCst), 0);
        adjust.refund_later(&backend, &policy, &decision, deadline);
        assert_eq!(adjust.in_flight.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn only_a_rate_limit_refusal_is_marked() {
        let adjust = Adjustments::new(true);
        let mut response = Response::new(());
        assert!(!adjust.refunds(&response));
        Adjustments::mark_refused(&mut response);
        assert!(adjust.refunds(&response));
        assert!(!Adjustments::new(false).refunds(&response));
    }
}
