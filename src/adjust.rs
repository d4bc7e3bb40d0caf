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
        let mut refund = backend.refund(policy, client, ticket.cost(), &ticket);
        // In-process backends are done at once: no task.
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(result) = refund.as_mut().poll(&mut cx) {
            if let Err(error) = result {
                tracing::debug!(policy = %name, %error, "refund after the response failed");
            }
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(policy = %name, "refund after the response dropped: no Tokio runtime");
            return;
        };
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(policy = %name, "refund after the response dropped: too many in flight");
            return;
        }
        let in_flight = Arc::clone(&self.in_flight);
        let limit = deadline.max(MIN_TIME_LIMIT);
        runtime.spawn(async move {
            match tokio::time::timeout(limit, refund).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(policy = %name, %error, "refund after the response failed");
                }
                Err(_) => {
                    tracing::debug!(policy = %name, "refund after the response timed out");
                }
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
}
