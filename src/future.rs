//! [`ResponseFuture`]: check with the backend, then call the inner service or reject.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::request::Parts;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::backend::CheckFuture;
use crate::decision::Decision;
use crate::error::BackendError;
use crate::headers::set_retry_after;
use crate::key::Key;
use crate::layer::Shared;
use crate::policy::FailureMode;
use crate::response::{OnRejection, RejectReason, Rejection};

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit).
    pub struct ResponseFuture<S, ReqBody, R>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        ctx: Option<Ctx<R>>,
    }
}

struct Ctx<R> {
    shared: Arc<Shared>,
    policy: usize,
    on_rejection: R,
}

/// What a pending check is about.
pub(crate) struct Checked {
    pub shared: Arc<Shared>,
    pub policy: usize,
    pub key: Key,
    pub cost: u64,
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Checking {
            // Already bounded by the deadline and the circuit breaker.
            check: CheckFuture,
            request: Option<Request<ReqBody>>,
            inner: Option<S>,
            key: Key,
            cost: u64,
        },
        Calling {
            #[pin]
            future: S::Future,
            decision: Option<Decision>,
        },
        Rejected {
            response: Option<S::Response>,
        },
    }
}

impl<S, ReqBody, R> ResponseFuture<S, ReqBody, R>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn passthrough(future: S::Future) -> Self {
        Self {
            state: State::Calling {
                future,
                decision: None,
            },
            ctx: None,
        }
    }

    pub(crate) fn checking(
        check: CheckFuture,
        request: Request<ReqBody>,
        inner: S,
        checked: Checked,
        on_rejection: R,
    ) -> Self {
        Self {
            state: State::Checking {
                check,
                request: Some(request),
                inner: Some(inner),
                key: checked.key,
                cost: checked.cost,
            },
            ctx: Some(Ctx {
                shared: checked.shared,
                policy: checked.policy,
                on_rejection,
            }),
        }
    }
}

impl<S, ReqBody, ResBody, R> ResponseFuture<S, ReqBody, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: OnRejection<ResBody>,
{
    /// A request rejected before any backend call (no key, a cost above the
    /// policy's max cost, or a client the blocked cache already knows is
    /// denied).
    pub(crate) fn rejected(
        shared: Arc<Shared>,
        policy: usize,
        on_rejection: R,
        parts: Parts,
        reason: RejectReason,
        decision: Option<&Decision>,
    ) -> Self {
        let ctx = Ctx {
            shared,
            policy,
            on_rejection,
        };
        let response = ctx.reject(&parts, reason, decision);
        Self {
            state: State::Rejected {
                response: Some(response),
            },
            ctx: None,
        }
    }
}

impl<R> Ctx<R> {
    fn reject<B>(
        &self,
        parts: &Parts,
        reason: RejectReason,
        decision: Option<&Decision>,
    ) -> Response<B>
    where
        R: OnRejection<B>,
    {
        let (policy, headers) = &self.shared.policies[self.policy];
        let rejection = Rejection {
            request: parts,
            policy,
            reason,
            decision,
        };
        let mut response = self.on_rejection.response(&rejection);
        if let Some(after) = rejection.retry_after() {
            set_retry_after(response.headers_mut(), after);
        }
        if let Some(decision) = decision {
            headers.apply(response.headers_mut(), self.shared.style, decision);
        }
        response
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
                    check,
                    request,
                    inner,
                    key,
                    cost,
                } => {
                    let outcome = ready!(check.as_mut().poll(cx));
                    let ctx = this.ctx.as_ref().expect("checking state has a context");
                    let request = request.take().expect("polled after completion");
                    let mut inner = inner.take().expect("polled after completion");
                    let (policy, _) = &ctx.shared.policies[ctx.policy];
                    let outcome = match outcome {
                        Ok(decision) => {
                            if !decision.is_allowed() {
                                // Only the backend's denials are remembered: a
                                // local fallback's must end when the backend returns.
                                ctx.shared.blocked.insert(ctx.policy, key, *cost, &decision);
                            }
                            Ok(decision)
                        }
                        Err(error) => {
                            // Skipped decisions (breaker open) are not logged:
                            // the breaker logs its transitions. Failed ones log
                            // at warn at most once a second per layer (with the
                            // number of failures since the last warn), else at
                            // debug.
                            if !matches!(error, BackendError::CircuitOpen) {
                                let (name, mode) = (policy.name(), policy.failure_mode_kind());
                                match ctx.shared.breaker.failure_warning() {
                                    Some(suppressed) => tracing::warn!(
                                        policy = name,
                                        %error,
                                        ?mode,
                                        suppressed,
                                        "rate limiter backend failed; applying the failure mode"
                                    ),
                                    None => tracing::debug!(
                                        policy = name,
                                        %error,
                                        ?mode,
                                        "rate limiter backend failed; applying the failure mode"
                                    ),
                                }
                            }
                            match policy.failure_mode_kind() {
                                FailureMode::Local => {
                                    Ok(ctx.shared.local.check_now(policy, key, *cost))
                                }
                                mode => Err(mode),
                            }
                        }
                    };
                    let next = match outcome {
                        Ok(decision) if decision.is_allowed() => State::Calling {
                            future: inner.call(request),
                            decision: Some(decision),
                        },
                        Ok(decision) => {
                            let (parts, _body) = request.into_parts();
                            let response =
                                ctx.reject(&parts, RejectReason::Limited, Some(&decision));
                            State::Rejected {
                                response: Some(response),
                            }
                        }
                        Err(FailureMode::Closed) => {
                            let (parts, _body) = request.into_parts();
                            let response = ctx.reject(&parts, RejectReason::Unavailable, None);
                            State::Rejected {
                                response: Some(response),
                            }
                        }
                        // Open (and any future non-denying mode): serve without headers.
                        Err(_) => State::Calling {
                            future: inner.call(request),
                            decision: None,
                        },
                    };
                    this.state.set(next);
                }
                StateProj::Calling { future, decision } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let (Some(decision), Some(ctx)) = (decision.take(), this.ctx.as_ref()) {
                        let (_, headers) = &ctx.shared.policies[ctx.policy];
                        headers.apply(response.headers_mut(), ctx.shared.style, &decision);
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
