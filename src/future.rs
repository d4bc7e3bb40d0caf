//! [`ResponseFuture`]: moves a request between states — waiting for the
//! backend, calling the inner service, rejected — as the
//! [limiter](crate::limiter) decides. No decision is made here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::breaker::Guarded;
use crate::decision::{Decision, PolicyId, Verdict};
use crate::limiter::{Limiter, Pending};
use crate::response::OnRejection;

pin_project! {
    /// The response future of [`RateLimitService`](crate::RateLimitService).
    pub struct ResponseFuture<S, ReqBody, R>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        limiter: Arc<Limiter>,
        on_rejection: R,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Checking {
            // Already bounded by the deadline and the circuit breaker.
            call: Guarded,
            pending: Option<Pending>,
            request: Option<Request<ReqBody>>,
            inner: Option<S>,
        },
        Calling {
            #[pin]
            future: S::Future,
            // The headers to add to the response, if any.
            decision: Option<(PolicyId, Decision)>,
        },
        Rejected {
            response: Option<S::Response>,
        },
    }
}

impl<S, ReqBody, ResBody, R> ResponseFuture<S, ReqBody, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: OnRejection<ResBody>,
{
    /// Calls the inner service without rate-limit headers.
    pub(crate) fn pass(
        limiter: Arc<Limiter>,
        on_rejection: R,
        mut inner: S,
        request: Request<ReqBody>,
    ) -> Self {
        let state = State::Calling {
            future: inner.call(request),
            decision: None,
        };
        Self {
            state,
            limiter,
            on_rejection,
        }
    }

    /// Waits for the backend call, then follows the verdict.
    pub(crate) fn checking(
        limiter: Arc<Limiter>,
        on_rejection: R,
        inner: S,
        request: Request<ReqBody>,
        pending: Pending,
        call: Guarded,
    ) -> Self {
        let state = State::Checking {
            call,
            pending: Some(pending),
            request: Some(request),
            inner: Some(inner),
        };
        Self {
            state,
            limiter,
            on_rejection,
        }
    }

    /// Follows a verdict reached without waiting.
    pub(crate) fn settled(
        limiter: Arc<Limiter>,
        on_rejection: R,
        inner: S,
        request: Request<ReqBody>,
        verdict: Verdict,
    ) -> Self {
        let state = next_state(&limiter, &on_rejection, inner, request, verdict);
        Self {
            state,
            limiter,
            on_rejection,
        }
    }
}

/// The state a verdict leads to.
fn next_state<S, ReqBody, ResBody, R>(
    limiter: &Limiter,
    on_rejection: &R,
    mut inner: S,
    request: Request<ReqBody>,
    verdict: Verdict,
) -> State<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: OnRejection<ResBody>,
{
    match verdict {
        Verdict::Allow(id, decision) => State::Calling {
            future: inner.call(request),
            decision: Some((id, decision)),
        },
        Verdict::AllowUnlimited => State::Calling {
            future: inner.call(request),
            decision: None,
        },
        Verdict::Deny(id, reason, decision) => {
            let (parts, _body) = request.into_parts();
            let response = limiter.reject(on_rejection, &parts, id, reason, decision.as_ref());
            State::Rejected {
                response: Some(response),
            }
        }
    }
}

impl<S, ReqBody, ResBody, R> Future for ResponseFuture<S, ReqBody, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: OnRejection<ResBody>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking {
                    call,
                    pending,
                    request,
                    inner,
                } => {
                    let outcome = ready!(call.as_mut().poll(cx));
                    let pending = pending.take().expect("polled after completion");
                    let request = request.take().expect("polled after completion");
                    let inner = inner.take().expect("polled after completion");
                    let verdict = this.limiter.finish(pending, outcome);
                    let next = next_state(this.limiter, this.on_rejection, inner, request, verdict);
                    this.state.set(next);
                }
                StateProj::Calling { future, decision } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some((id, decision)) = decision.take() {
                        let limiter = &**this.limiter;
                        let policy = &limiter.policy(id).policy;
                        // Refused by an inner rate-limit layer, or refunded
                        // by the policy: this admission is given back, off
                        // the response's path.
                        if limiter.adjust.refunds(&response)
                            || policy.refunds(response.status(), response.headers())
                        {
                            let backend = &limiter.backend;
                            limiter.adjust.refund_later(
                                backend,
                                policy,
                                &decision,
                                limiter.deadline,
                            );
                        } else if let Some(cost) = policy.charge_for(response.headers()) {
                            // The cost the response reports, charged off
                            // the response's path (into debt if need be).
                            limiter.adjust.charge_later(
                                &limiter.backend,
                                policy,
                                &decision,
                                cost,
                                limiter.deadline,
                            );
                        }
                        limiter.decorate(&mut response, id, &decision);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Rejected { response } => {
                    return Poll::Ready(Ok(response.take().expect("polled after completion")));
                }
            }
        }
    }
}
