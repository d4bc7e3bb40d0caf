//! The response sent instead of calling the inner service.

use std::fmt::Write as _;

use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};

use crate::decision::{Decision, RejectReason};
use crate::headers::ceil_secs;
use crate::policy::Policy;

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
    /// second when the backend was unavailable. `None` when waiting does not
    /// help (no key, a cost above the max cost).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self.reason {
            RejectReason::Limited => self.decision.and_then(Decision::retry_after),
            RejectReason::Unavailable => Some(std::time::Duration::from_secs(1)),
            RejectReason::MissingKey
            | RejectReason::CostTooHigh { .. }
            | RejectReason::DenyListed => None,
        }
    }
}

pub(crate) use crate::grpc::is_grpc;

/// Builds the response for a rejected request.
///
/// The layer adds `Retry-After` (keeping the longer wait if the response
/// already has one) and the rate-limit headers afterwards, so an
/// implementation only chooses status and body. Any `Fn(&Rejection<'_>) -> Response<B> + Clone` closure implements it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot make a rejection response with body type `{B}`",
    label = "this rejection cannot build a `Response<{B}>`",
    note = "`DefaultRejection` and `ProblemJson` need a body made from a `String`; tonic's \
            (`tonic::body::Body`) is not: call `.on_rejection(GrpcRejection)` on the layer you \
            give `tonic::transport::Server::builder().layer(..)`",
    note = "for a closure, use `layer.reject_fn(|rejection| ..)`, which infers its argument \
            type and the body type"
)]
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
/// | [`CostTooHigh`](RejectReason::CostTooHigh) | 413 | 3 `INVALID_ARGUMENT` |
/// | [`DenyListed`](RejectReason::DenyListed) | 403 | 7 `PERMISSION_DENIED` |
///
/// A request costing more than the policy's max cost can never be admitted:
/// 413 and `INVALID_ARGUMENT` say so, where 429 and `RESOURCE_EXHAUSTED`
/// would invite clients to wait and retry the same request forever.
///
/// gRPC rejections are HTTP 200 with the status in the headers and an empty
/// body, as gRPC requires: a plain 429 would reach gRPC clients as
/// `UNAVAILABLE` and be retried at once.
///
/// It needs a response body that can be made from a `String` (axum's, hyper
/// with `http_body_util::Full<Bytes>`, ...). tonic's body cannot: behind
/// `tonic::transport::Server` use [`GrpcRejection`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultRejection;

impl<B: From<String>> OnRejection<B> for DefaultRejection {
    fn response(&self, r: &Rejection<'_>) -> Response<B> {
        let message = message(r);
        if r.is_grpc() {
            return grpc_response(r, &message, B::from(String::new()));
        }
        let mut res = Response::new(B::from(message + "\n"));
        *res.status_mut() = http_status(r.reason);
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res
    }
}

/// The rejection for gRPC servers whose response body has no text form, such
/// as tonic's (`tonic::body::Body` is `Default` but not `From<String>`):
///
/// ```
/// use tower_redis_ratelimit::{GrpcRejection, Policy, RateLimitLayer};
///
/// # fn main() -> Result<(), tower_redis_ratelimit::ConfigError> {
/// let limits = RateLimitLayer::builder()
///     .route("/helloworld.Greeter/SayHello", Policy::auth())
///     .build()?
///     .on_rejection(GrpcRejection);
/// let server = tonic::transport::Server::builder().layer(limits);
/// // server.add_service(GreeterServer::new(greeter)).serve(addr).await?;
/// # let _ = server;
/// # Ok(())
/// # }
/// ```
///
/// gRPC requests get the same trailers-only response as with
/// [`DefaultRejection`] (`grpc-status` 8, 14, 7 or 3, `grpc-message`,
/// `grpc-retry-pushback-ms`); anything else gets the HTTP status (429, 503,
/// 403, 413) with an empty body.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcRejection;

impl<B: Default> OnRejection<B> for GrpcRejection {
    fn response(&self, r: &Rejection<'_>) -> Response<B> {
        if r.is_grpc() {
            return grpc_response(r, &message(r), B::default());
        }
        let mut res = Response::new(B::default());
        *res.status_mut() = http_status(r.reason);
        res
    }
}

/// RFC 9457 problem details (`application/problem+json`) for HTTP rejections;
/// gRPC requests still get the trailers-only response of [`DefaultRejection`].
///
/// The body has the standard members `type`, `title`, `status` and `detail`,
/// and the extension member `retry_after` (whole seconds, the same value as
/// the `Retry-After` header) when a retry time is known:
///
/// ```json
/// {"type":"about:blank","title":"Too Many Requests","status":429,
///  "detail":"rate limit exceeded for policy auth; retry in 42 s","retry_after":42}
/// ```
///
/// ```
/// use tower_redis_ratelimit::{Policy, ProblemJson, RateLimitLayer};
///
/// # fn main() -> Result<(), tower_redis_ratelimit::ConfigError> {
/// let layer = RateLimitLayer::builder()
///     .default_policy(Policy::default_api())
///     .build()?
///     .on_rejection(ProblemJson::new().type_uri("https://example.com/problems/rate-limited"));
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ProblemJson {
    type_uri: Option<std::sync::Arc<str>>,
}

impl ProblemJson {
    /// Problem details with `"type": "about:blank"` (the status says it all).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the `type` member, a URI identifying the problem type.
    #[must_use]
    pub fn type_uri(mut self, uri: impl Into<String>) -> Self {
        self.type_uri = Some(uri.into().into());
        self
    }

    /// The JSON document for a rejection.
    pub fn body(&self, r: &Rejection<'_>) -> String {
        let status = http_status(r.reason);
        let problem = Problem {
            type_uri: self.type_uri.as_deref().unwrap_or("about:blank"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: message(r),
            retry_after: r.retry_after().map(|after| ceil_secs(after).max(1)),
        };
        serde_json::to_string(&problem).expect("a struct of strings and integers serialises")
    }
}

/// An RFC 9457 problem details document, members in this order.
#[derive(serde::Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    type_uri: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

impl<B: From<String>> OnRejection<B> for ProblemJson {
    fn response(&self, r: &Rejection<'_>) -> Response<B> {
        if r.is_grpc() {
            return grpc_response(r, &message(r), B::from(String::new()));
        }
        let mut res = Response::new(B::from(self.body(r)));
        *res.status_mut() = http_status(r.reason);
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        res
    }
}

/// The human-readable explanation of a rejection.
fn message(r: &Rejection<'_>) -> String {
    match (r.reason, r.retry_after()) {
        (RejectReason::Limited, Some(after)) => format!(
            "rate limit exceeded for policy {}; retry in {} s",
            r.policy.name(),
            ceil_secs(after).max(1)
        ),
        (RejectReason::Limited, None) => "rate limit exceeded".to_owned(),
        (RejectReason::Unavailable, _) => "rate limiter unavailable; retry shortly".to_owned(),
        (RejectReason::MissingKey, _) => "request has no client identity".to_owned(),
        (RejectReason::DenyListed, _) => "client is not allowed".to_owned(),
        (RejectReason::CostTooHigh { cost, max_cost }, _) => format!(
            "request cost {cost} is above the maximum of {max_cost} per request for policy {}; \
             it can never be admitted, retrying will not help",
            r.policy.name()
        ),
    }
}

fn http_status(reason: RejectReason) -> StatusCode {
    match reason {
        RejectReason::Limited => StatusCode::TOO_MANY_REQUESTS,
        RejectReason::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        RejectReason::MissingKey | RejectReason::DenyListed => StatusCode::FORBIDDEN,
        RejectReason::CostTooHigh { .. } => StatusCode::PAYLOAD_TOO_LARGE,
    }
}

/// A gRPC trailers-only response: HTTP 200, the status in the headers.
fn grpc_response<B>(r: &Rejection<'_>, message: &str, body: B) -> Response<B> {
    let code = match r.reason {
        RejectReason::Limited => "8",
        RejectReason::Unavailable => "14",
        RejectReason::MissingKey | RejectReason::DenyListed => "7",
        RejectReason::CostTooHigh { .. } => "3",
    };
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static(code));
    if let Ok(v) = HeaderValue::try_from(grpc_percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    if let (RejectReason::Limited, Some(after)) = (r.reason, r.retry_after()) {
        let ms = after.as_micros().div_ceil(1000).max(1) as u64;
        h.insert("grpc-retry-pushback-ms", ms.into());
    }
    res
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

    use std::time::Duration;

    use crate::decision::QuotaStatus;

    fn limited(parts: &Parts, policy: &Policy, decision: &Decision) -> String {
        let r = Rejection {
            request: parts,
            policy,
            reason: RejectReason::Limited,
            decision: Some(decision),
        };
        ProblemJson::new().body(&r)
    }

    #[test]
    fn problem_json() {
        let parts = http::Request::new(()).into_parts().0;
        let policy = Policy::auth();
        let status = QuotaStatus {
            limit: 5,
            window: Duration::from_secs(60),
            remaining: 0,
            reset_after: Duration::from_millis(41_200),
        };
        let decision = Decision::denied(vec![status], 0, Duration::from_millis(41_200));
        assert_eq!(
            limited(&parts, &policy, &decision),
            "{\"type\":\"about:blank\",\"title\":\"Too Many Requests\",\"status\":429,\
             \"detail\":\"rate limit exceeded for policy auth; retry in 42 s\",\"retry_after\":42}"
        );
        let r = Rejection {
            request: &parts,
            policy: &policy,
            reason: RejectReason::MissingKey,
            decision: None,
        };
        let custom = ProblemJson::new().type_uri("urn:x:\"quoted\"\\");
        assert_eq!(
            custom.body(&r),
            "{\"type\":\"urn:x:\\\"quoted\\\"\\\\\",\"title\":\"Forbidden\",\"status\":403,\
             \"detail\":\"request has no client identity\"}"
        );
        let res: Response<String> = custom.response(&r);
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn problem_body_is_json_whatever_the_type_uri() {
        let tricky = "urn:x:\"q\"\\\n\u{1}\u{7f}é\u{2028}";
        let policy = Policy::auth();
        let parts = http::Request::new(()).into_parts().0;
        let r = Rejection {
            request: &parts,
            policy: &policy,
            reason: RejectReason::Unavailable,
            decision: None,
        };
        let body = ProblemJson::new().type_uri(tricky).body(&r);
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["type"], tricky);
        assert_eq!(doc["status"], 503);
        assert_eq!(doc["retry_after"], 1);
        assert!(body.starts_with("{\"type\":"), "{body}");
    }

    #[test]
    fn grpc_rejection_with_a_default_only_body() {
        #[derive(Default, Debug, PartialEq)]
        struct Empty;
        let policy = Policy::auth();
        let decision = Decision::denied(Vec::new(), 0, Duration::from_micros(1500));
        let mut parts = http::Request::new(()).into_parts().0;
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let r = Rejection {
            request: &parts,
            policy: &policy,
            reason: RejectReason::Limited,
            decision: Some(&decision),
        };
        let res: Response<Empty> = GrpcRejection.response(&r);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "8");
        assert_eq!(res.headers()["grpc-retry-pushback-ms"], "2");
        assert_eq!(
            res.headers()["grpc-message"],
            "rate limit exceeded for policy auth; retry in 1 s"
        );
        parts.headers.remove(header::CONTENT_TYPE);
        let r = Rejection {
            request: &parts,
            policy: &policy,
            reason: RejectReason::Unavailable,
            decision: None,
        };
        let res: Response<Empty> = GrpcRejection.response(&r);
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!res.headers().contains_key("grpc-status"));
    }

    #[test]
    fn cost_too_high_can_never_be_admitted() {
        let policy = Policy::auth();
        let mut parts = http::Request::new(()).into_parts().0;
        let reason = RejectReason::CostTooHigh {
            cost: 10_000,
            max_cost: 5,
        };
        let r = Rejection {
            request: &parts,
            policy: &policy,
            reason,
            decision: None,
        };
        assert_eq!(r.retry_after(), None, "waiting does not help");
        let res: Response<String> = DefaultRejection.response(&r);
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            res.body(),
            "request cost 10000 is above the maximum of 5 per request for policy auth; \
             it can never be admitted, retrying will not help\n"
        );
        assert!(!res.headers().contains_key(header::RETRY_AFTER));
        let json = ProblemJson::new().body(&r);
        assert!(
            json.starts_with(
                "{\"type\":\"about:blank\",\"title\":\"Payload Too Large\",\"status\":413,"
            ),
            "{json}"
        );
        assert!(!json.contains("retry_after"), "{json}");
        let res: Response<String> = GrpcRejection.response(&r);
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        let r = Rejection {
            request: &parts,
            policy: &policy,
            reason,
            decision: None,
        };
        for res in [
            DefaultRejection.response(&r),
            GrpcRejection.response(&r),
            ProblemJson::new().response(&r),
        ] {
            let res: Response<String> = res;
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()["grpc-status"], "3");
            assert!(!res.headers().contains_key("grpc-retry-pushback-ms"));
            let message = res.headers()["grpc-message"].to_str().unwrap();
            assert!(message.contains("can never be admitted"), "{message}");
        }
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(grpc_percent_encode("a b%c\né"), "a b%25c%0A%C3%A9");
    }
}
