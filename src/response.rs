//! The response sent instead of calling the inner service.

use std::fmt::Write as _;

use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};

use crate::decision::Decision;
use crate::headers::ceil_secs;
use crate::policy::Policy;

/// Why a request is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// A quota is exhausted (HTTP 429, gRPC `RESOURCE_EXHAUSTED`).
    Limited,
    /// The backend could not decide and the policy fails closed
    /// (HTTP 503, gRPC `UNAVAILABLE`).
    Unavailable,
    /// The request has no key and the policy denies keyless requests
    /// (HTTP 403, gRPC `PERMISSION_DENIED`).
    MissingKey,
}

/// Everything known about a rejected request.
#[derive(Debug)]
#[non_exhaustive]
pub struct Rejection<'a> {
    /// The request head.
    pub request: &'a Parts,
    /// The policy that rejected it.
    pub policy: &'a Policy,
    /// Why.
    pub reason: RejectReason,
    /// The backend's decision, when [`RejectReason::Limited`].
    pub decision: Option<&'a Decision>,
}

impl Rejection<'_> {
    /// Whether the request is a gRPC call (`content-type: application/grpc*`).
    pub fn is_grpc(&self) -> bool {
        is_grpc(self.request)
    }

    /// The wait before a retry can succeed: the decision's retry-after, or one
    /// second when the backend was unavailable.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self.reason {
            RejectReason::Limited => self.decision.and_then(Decision::retry_after),
            RejectReason::Unavailable => Some(std::time::Duration::from_secs(1)),
            RejectReason::MissingKey => None,
        }
    }
}

pub(crate) fn is_grpc(request: &Parts) -> bool {
    request
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Builds the response for a rejected request.
///
/// The layer adds `Retry-After` (unless the response already has one) and the
/// rate-limit headers afterwards, so an implementation only chooses status and
/// body. Any `Fn(&Rejection<'_>) -> Response<B> + Clone` closure implements it.
pub trait OnRejection<B>: Clone + Send + Sync + 'static {
    /// The response for this rejection.
    fn response(&self, rejection: &Rejection<'_>) -> Response<B>;
}

impl<B, F> OnRejection<B> for F
where
    F: Fn(&Rejection<'_>) -> Response<B> + Clone + Send + Sync + 'static,
{
    fn response(&self, rejection: &Rejection<'_>) -> Response<B> {
        self(rejection)
    }
}

/// The default rejection: plain text for HTTP, a trailers-only response for gRPC.
///
/// | reason | HTTP | gRPC (`grpc-status`) |
/// |---|---|---|
/// | [`Limited`](RejectReason::Limited) | 429 | 8 `RESOURCE_EXHAUSTED`, with `grpc-retry-pushback-ms` |
/// | [`Unavailable`](RejectReason::Unavailable) | 503 | 14 `UNAVAILABLE` |
/// | [`MissingKey`](RejectReason::MissingKey) | 403 | 7 `PERMISSION_DENIED` |
///
/// gRPC rejections are HTTP 200 with the status in the headers and an empty
/// body, as gRPC requires: a plain 429 would reach gRPC clients as
/// `UNAVAILABLE` and be retried at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultRejection;

impl<B: From<String>> OnRejection<B> for DefaultRejection {
    fn response(&self, r: &Rejection<'_>) -> Response<B> {
        let retry = r.retry_after();
        let message = match (r.reason, retry) {
            (RejectReason::Limited, Some(after)) => format!(
                "rate limit exceeded for policy {}; retry in {} s",
                r.policy.name(),
                ceil_secs(after).max(1)
            ),
            (RejectReason::Limited, None) => "rate limit exceeded".to_owned(),
            (RejectReason::Unavailable, _) => "rate limiter unavailable; retry shortly".to_owned(),
            (RejectReason::MissingKey, _) => "request has no client identity".to_owned(),
        };
        if r.is_grpc() {
            let code = match r.reason {
                RejectReason::Limited => "8",
                RejectReason::Unavailable => "14",
                RejectReason::MissingKey => "7",
            };
            let mut res = Response::new(B::from(String::new()));
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from_static(code));
            if let Ok(v) = HeaderValue::try_from(grpc_percent_encode(&message)) {
                h.insert("grpc-message", v);
            }
            if let (RejectReason::Limited, Some(after)) = (r.reason, retry) {
                let ms = after.as_micros().div_ceil(1000).max(1) as u64;
                h.insert("grpc-retry-pushback-ms", ms.into());
            }
            return res;
        }
        let status = match r.reason {
            RejectReason::Limited => StatusCode::TOO_MANY_REQUESTS,
            RejectReason::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            RejectReason::MissingKey => StatusCode::FORBIDDEN,
        };
        let mut res = Response::new(B::from(message + "\n"));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res
    }
}

/// Percent-encodes a `grpc-message` (bytes outside visible ASCII and `%`).
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding() {
        assert_eq!(grpc_percent_encode("a b%c\né"), "a b%25c%0A%C3%A9");
    }
}
