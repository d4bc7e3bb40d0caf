//! [`RateLimit`]: the middleware service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::error::BackendError;
use crate::failure;
use crate::future::{Checked, ResponseFuture};
use crate::layer::Shared;
use crate::policy::MAX_LIMIT;
use crate::response::{OnRejection, RejectReason};
use crate::routes::Action;

/// The rate-limiting service made by [`RateLimitLayer`](crate::RateLimitLayer).
///
/// `poll_ready` only asks the inner service; the rate-limit check happens in
/// the response future, so the service is always as ready as the one it wraps.
/// The inner service's error type passes through unchanged: rejections are
/// responses.
pub struct RateLimit<S, R> {
    inner: S,
    shared: Arc<Shared>,
    on_rejection: R,
}

impl<S, R> RateLimit<S, R> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, on_rejection: R) -> Self {
        Self {
            inner,
            shared,
            on_rejection,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, R: Clone> Clone for RateLimit<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            on_rejection: self.on_rejection.clone(),
        }
    }
}

impl<S: fmt::Debug, R> fmt::Debug for RateLimit<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    R: OnRejection<ResBody>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Take the service that was made ready; leave a clone for next time.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = &self.shared;
        let ix = match shared.routes.select(request.method(), request.uri().path()) {
            Some(Action::Limit(ix)) => ix,
            Some(Action::Exempt) | None => return ResponseFuture::passthrough(inner.call(request)),
        };
        let policy = &shared.policies[ix].0;
        let (parts, body) = request.into_parts();
        let Some(key) = policy.key_for(&parts) else {
            return ResponseFuture::rejected(
                Arc::clone(shared),
                ix,
                self.on_rejection.clone(),
                parts,
                RejectReason::MissingKey,
                None,
            );
        };
        let cost = policy.cost_for(&parts);
        // A cost above the policy's max cost can never be admitted; refusing
        // it here keeps one request from making the backend work in
        // proportion to its cost (the sliding log stores one entry per unit).
        if let Some(max_cost) = policy.effective_max_cost()
            && cost > max_cost
        {
            return ResponseFuture::rejected(
                Arc::clone(shared),
                ix,
                self.on_rejection.clone(),
                parts,
                RejectReason::CostTooHigh { cost, max_cost },
                None,
            );
        }
        // Any cost above MAX_LIMIT is denied alike; clamping keeps the
        // arithmetic far from overflow whatever a cost function returns.
        let cost = cost.min(MAX_LIMIT + 1);
        // A client denied moments ago is denied again without a backend call.
        if let Some(decision) = shared.blocked.get(ix, &key, cost) {
            return ResponseFuture::rejected(
                Arc::clone(shared),
                ix,
                self.on_rejection.clone(),
                parts,
                RejectReason::Limited,
                Some(&decision),
            );
        }
        let check = failure::guarded(&shared.breaker, shared.deadline, || {
            shared.backend.check(policy, &key, cost)
        })
        .unwrap_or_else(|| Box::pin(std::future::ready(Err(BackendError::CircuitOpen))));
        ResponseFuture::checking(
            check,
            Request::from_parts(parts, body),
            inner,
            Checked {
                shared: Arc::clone(shared),
                policy: ix,
                key,
                cost,
            },
            self.on_rejection.clone(),
        )
    }
}
