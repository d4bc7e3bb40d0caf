//! [`RateLimitService`]: the middleware service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::limiter::{Limiter, Start};
use crate::response::OnRejection;

/// The rate-limiting service made by [`RateLimitLayer`](crate::RateLimitLayer).
///
/// `poll_ready` only asks the inner service; the rate-limit check happens in
/// the response future, so the service is always as ready as the one it wraps.
/// The inner service's error type passes through unchanged: rejections are
/// responses.
pub struct RateLimitService<S, R> {
    inner: S,
    limiter: Arc<Limiter>,
    on_rejection: R,
}

impl<S, R> RateLimitService<S, R> {
    pub(crate) fn new(inner: S, limiter: Arc<Limiter>, on_rejection: R) -> Self {
        Self {
            inner,
            limiter,
            on_rejection,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, R: Clone> Clone for RateLimitService<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
            on_rejection: self.on_rejection.clone(),
        }
    }
}

impl<S: fmt::Debug, R> fmt::Debug for RateLimitService<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimitService<S, R>
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
        let inner = std::mem::replace(&mut self.inner, clone);
        let limiter = Arc::clone(&self.limiter);
        let on_rejection = self.on_rejection.clone();
        let (parts, body) = request.into_parts();
        let start = limiter.begin(&parts);
        let request = Request::from_parts(parts, body);
        match start {
            Start::Pass => ResponseFuture::pass(limiter, on_rejection, inner, request),
            Start::Settled(verdict) => {
                ResponseFuture::settled(limiter, on_rejection, inner, request, verdict)
            }
            Start::Checking(pending, call) => {
                ResponseFuture::checking(limiter, on_rejection, inner, request, pending, call)
            }
        }
    }
}
