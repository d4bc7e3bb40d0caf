//! Security: dot segments, which axum and hyper do not resolve. A path that
//! only resolves to an exempt or lenient route (`/files/../health`) is
//! limited by the policy of the handler axum actually runs, and spellings of
//! `.` and `..` that axum routes into a `{param}` count against that route's
//! policy.
//!
//! Requests are made in process through the router, with their paths as
//! written: an HTTP client would resolve the dot segments before sending.
//!
//! Every backend is a real `RedisBackend`; the deadline is generous (2 s,
//! `support::security::DEADLINE`) so that a slow machine never turns into a
//! failed decision.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use http::{Method, StatusCode};
use tower_redis_ratelimit::RateLimitLayer;

use crate::support::redis_backend;
use crate::support::security::{DEADLINE, strict};
use crate::support::web;

use crate::support;

/// What the tests read of a response.
struct Reply {
    status: StatusCode,
    /// The `RateLimit-Policy` header, if any.
    policy: Option<String>,
    body: String,
}

/// Calls `app` in process with `GET path` exactly as written: the request
/// target goes through `http::Uri`'s parser, as hyper's server puts it, and
/// nothing resolves `.`, `..` or `%2e` (an HTTP client, like any WHATWG URL
/// parser, would before sending).
async fn raw_get(app: &Router, path: &str) -> Reply {
    let sent = web::call(app, Method::GET, path, web::PEER, &[]).await;
    Reply {
        status: sent.status,
        policy: sent
            .headers
            .get("ratelimit-policy")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: sent.body,
    }
}

/// A handler answering `body` and counting its runs.
fn counted(body: &'static str, runs: &Arc<AtomicUsize>) -> axum::routing::MethodRouter {
    let runs = Arc::clone(runs);
    get(move || {
        runs.fetch_add(1, Ordering::SeqCst);
        async move { body }
    })
}

/// `/health` is exempt and the default allows 2 per minute. axum routes
/// `/files/../health` to `/files/{*path}` (it does not resolve `..`), so the
/// layer must not treat it as `/health`: it is limited by the default.
#[tokio::test]
async fn dot_segments_do_not_borrow_an_exemption() {
    let url = support::redis_url();
    let layer = RateLimitLayer::builder()
        .backend(redis_backend(&url, "dots_exempt"))
        .default_policy(strict("default", 2))
        .exempt("/health")
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let (health, files) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let app = Router::new()
        .route("/health", counted("health", &health))
        .route("/files/{*path}", counted("files", &files))
        .layer(layer);

    for _ in 0..4 {
        let sent = raw_get(&app, "/health").await;
        assert_eq!(
            (sent.status, sent.body.as_str()),
            (StatusCode::OK, "health")
        );
        assert_eq!(sent.policy, None, "exempt: no rate-limit headers");
    }
    let default = Some("\"default\";q=2;w=60".to_owned());
    for i in 0..2 {
        let sent = raw_get(&app, "/files/../health").await;
        assert_eq!(sent.status, StatusCode::OK, "request {i}");
        assert_eq!(sent.body, "files", "axum routes the literal path");
        assert_eq!(sent.policy, default, "request {i}");
    }
    for path in [
        "/files/../health",
        "/files/./../health",
        "/files/%2e%2e/health",
        "/files/%2E%2E/health",
        "/files/..;x/health",
        "/files/x",
    ] {
        let sent = raw_get(&app, path).await;
        assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(sent.policy, default, "{path}");
    }
    assert_eq!(
        files.load(Ordering::SeqCst),
        2,
        "the files handler ran twice"
    );
    // The real `/health` is still exempt.
    let sent = raw_get(&app, "/health").await;
    assert_eq!((sent.status, sent.policy), (StatusCode::OK, None));
    assert_eq!(health.load(Ordering::SeqCst), 5);
}

/// `/reports/{id}` is limited to 2 per minute under a lenient default. axum
/// routes `/reports/.`, `/reports/%2e`, `/reports/%2E%2E` and `/reports/..;x`
/// to the reports handler, so they must all count against the strict policy
/// (which is also what a dot-resolving reading would pick, were it limited).
#[tokio::test]
async fn dot_segments_get_the_stricter_policy() {
    let url = support::redis_url();
    let layer = RateLimitLayer::builder()
        .backend(redis_backend(&url, "dots_strict"))
        .default_policy(strict("lenient", 1_000))
        .route("/reports/{id}", strict("reports", 2))
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let reports = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/reports/{id}", counted("reports", &reports))
        .route("/reports", get(|| async { "index" }))
        .layer(layer);

    let strict_policy = Some("\"reports\";q=2;w=60".to_owned());
    for path in ["/reports/%2e", "/reports/."] {
        let sent = raw_get(&app, path).await;
        assert_eq!(
            (sent.status, sent.body.as_str()),
            (StatusCode::OK, "reports")
        );
        assert_eq!(sent.policy, strict_policy, "{path}");
    }
    for path in [
        "/reports/%2E%2E",
        "/reports/..;x",
        "/reports/%2e",
        "/reports/.",
        "/reports/7",
    ] {
        let sent = raw_get(&app, path).await;
        assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(sent.policy, strict_policy, "{path}");
    }
    assert_eq!(
        reports.load(Ordering::SeqCst),
        2,
        "the reports handler ran twice"
    );
    // Other paths stay under the lenient default.
    let sent = raw_get(&app, "/reports").await;
    assert_eq!((sent.status, sent.body.as_str()), (StatusCode::OK, "index"));
    assert_eq!(sent.policy, Some("\"lenient\";q=1000;w=60".to_owned()));
}
