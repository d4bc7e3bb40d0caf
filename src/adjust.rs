//! Adjustments after the response: a request this layer admitted is given
//! back to its policy when an inner rate-limit layer refused it (stacked
//! layers: one refusal spends one quota), or when the policy says so from
//! the response's head ([`Policy::refund_when`]); and a request is charged
//! the cost its response reports ([`Policy::charge_from_header`], with
//! [`Backend::charge`]), into debt if need be.
//!
//! Every rejection a layer makes carries a [`Refused`] marker in its
//! response's extensions; a layer above it that admitted the request finds
//! the marker when the response comes back through it, and refunds its
//! admission ([`Backend::refund`], with the decision's ticket) off the
//! response's path: the response is handed back at once, the refund runs
//! in the background (bounded in time and in number), and a failed refund
//! is logged, never the response's concern.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::Response;

use crate::backend::Backend;
use crate::decision::Decision;
use crate::error::BackendError;
use crate::policy::Policy;

/// The most adjustments (refunds and charges) one layer runs in the
/// background at once; more are dropped (and logged): a flood of refusals
/// or charges cannot pile up tasks.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// The shortest time a background refund may take before it is given up
/// (the layer's deadline, if longer).
const MIN_TIME_LIMIT: Duration = Duration::from_secs(1);

/// What an adjustment does: the `kind` label of its metric.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Gives back what an admission took ([`Backend::refund`]).
    Refund,
    /// Counts a cost reported by the response ([`Backend::charge`]).
    Charge,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Refund => "refund",
            Kind::Charge => "charge",
        }
    }
}

/// Counts one adjustment's `outcome` (`ok`, `failed`, `dropped`) for
/// `policy` in `ratelimit_adjustments_total` (feature `metrics`).
fn count(policy: &str, kind: Kind, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(
        crate::metrics::ADJUSTMENTS_TOTAL,
        "policy" => policy.to_owned(),
        "kind" => kind.label(),
        "outcome" => outcome,
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (policy, kind, outcome);
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
        self.run_later(Kind::Refund, policy, deadline, || {
            backend.refund(policy, client, ticket.cost(), &ticket)
        });
    }

    /// Counts `cost` more units of `policy` for the client `decision` was
    /// made for, in `backend`, off the response's path (see
    /// [`Backend::charge`]): nothing if the decision carries no client (the
    /// backend did not admit it) or `cost` is 0. Run, bounded and counted
    /// as [`refund_later`](Self::refund_later) runs a refund.
    pub(crate) fn charge_later(
        &self,
        backend: &Arc<dyn Backend>,
        policy: &Policy,
        decision: &Decision,
        cost: u64,
        deadline: Duration,
    ) {
        let Some(client) = decision.client() else {
            return;
        };
        if cost == 0 {
            return;
        }
        self.run_later(Kind::Charge, policy, deadline, || {
            backend.charge(policy, client, cost)
        });
    }

    /// Runs the adjustment `start` makes, off the response's path: at once
    /// if it is ready at once (in-process backends), else in a background
    /// task given up after `deadline` (at least a second). Outside a Tokio
    /// runtime, or with [`MAX_IN_FLIGHT`] adjustments running, it is
    /// dropped (never started) and logged.
    fn run_later(
        &self,
        kind: Kind,
        policy: &Policy,
        deadline: Duration,
        start: impl FnOnce() -> Pin<Box<dyn Future<Output = Result<(), BackendError>> + Send>>,
    ) {
        let name = policy.name().to_owned();
        let what = kind.label();
        // A slot first: an adjustment beyond the bound is never even started.
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(policy = %name, "{what} after the response dropped: too many in flight");
            count(&name, kind, "dropped");
            return;
        }
        let mut adjustment = start();
        // In-process backends are done at once: no task.
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(result) = adjustment.as_mut().poll(&mut cx) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            match result {
                Ok(()) => count(&name, kind, "ok"),
                Err(error) => {
                    tracing::debug!(policy = %name, %error, "{what} after the response failed");
                    count(&name, kind, "failed");
                }
            }
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(policy = %name, "{what} after the response dropped: no Tokio runtime");
            count(&name, kind, "dropped");
            return;
        };
        let in_flight = Arc::clone(&self.in_flight);
        let limit = deadline.max(MIN_TIME_LIMIT);
        runtime.spawn(async move {
            match tokio::time::timeout(limit, adjustment).await {
                Ok(Ok(())) => count(&name, kind, "ok"),
                Ok(Err(error)) => {
                    tracing::debug!(policy = %name, %error, "{what} after the response failed");
                    count(&name, kind, "failed");
                }
                Err(_) => {
                    tracing::debug!(policy = %name, "{what} after the response timed out");
                    count(&name, kind, "failed");
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
    use crate::backend::{ChargeFuture, CheckFuture, RefundFuture};
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

        fn charge(&self, _: &Policy, _: &Key, _: u64) -> ChargeFuture {
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

    #[tokio::test(start_paused = true)]
    async fn background_charges_share_the_bound() {
        let stalled = Arc::new(Stalled(AtomicU64::new(0)));
        let backend: Arc<dyn Backend> = stalled.clone();
        let policy = Policy::new("p").quota(Quota::per_minute(5));
        let adjust = Adjustments::new(true);
        let deadline = Duration::from_millis(50);
        // Nothing to charge without a client, or for a cost of 0.
        adjust.charge_later(&backend, &policy, &admitted(None), 5, deadline);
        // A cost-0 admission keeps its client for the charge.
        let zero = Decision::allowed(Vec::new()).keep_client(Key::new("203.0.113.9"));
        adjust.charge_later(&backend, &policy, &zero, 0, deadline);
        assert_eq!(stalled.0.load(Ordering::SeqCst), 0);
        for _ in 0..MAX_IN_FLIGHT + 10 {
            adjust.charge_later(&backend, &policy, &zero, 5, deadline);
        }
        // Refunds and charges share one bound.
        adjust.refund_later(&backend, &policy, &admitted(Some("a")), deadline);
        assert_eq!(adjust.in_flight.load(Ordering::SeqCst), MAX_IN_FLIGHT);
        assert_eq!(stalled.0.load(Ordering::SeqCst), MAX_IN_FLIGHT as u64);
        tokio::time::sleep(MIN_TIME_LIMIT + Duration::from_millis(1)).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(adjust.in_flight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_charge_is_the_response_header_as_a_positive_integer() {
        let policy = Policy::new("p")
            .quota(Quota::per_minute(5))
            .charge_from_header(http::HeaderName::from_static("x-tokens-used"));
        assert!(policy.charges());
        let charge = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("x-tokens-used", value.parse().unwrap());
            policy.charge_for(&headers)
        };
        assert_eq!(charge("5000"), Some(5_000));
        assert_eq!(charge(" 12 "), Some(12));
        for nothing in ["0", "", "-3", "1.5", "many", "18446744073709551616"] {
            assert_eq!(charge(nothing), None, "{nothing:?}");
        }
        assert_eq!(policy.charge_for(&http::HeaderMap::new()), None);
        assert!(!Policy::new("q").charges());
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
