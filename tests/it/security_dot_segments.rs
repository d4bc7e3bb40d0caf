//! Security: dot segments, which axum and hyper do not resolve. A path that
//! only resolves to an exempt or lenient route (`/files/../health`) is
//! limited by the policy of the handler axum actually runs, and spellings of
//! `.` and `..` that axum routes into a `{param}` count against that route's
//! policy.
//!
//! Requests are written on raw connections, since an HTTP client would
//! resolve the dot segments before sending.
//!
//! Every backend is a real `RedisBackend`; the deadline is generous (2 s,
//! `support::security::DEADLINE`) so that a slow machine never turns into a
//! failed decision.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use tower_redis_ratelimit::RateLimitLayer;

use crate::support::redis_backend;
use crate::support::security::{DEADLINE, strict};

use crate::support;

/// A response read off a raw HTTP/1.1 connection.
struct RawResponse {
    status: StatusCode,
    /// The `RateLimit-Policy` header, if any.
    policy: Option<String>,
    body: String,
}

/// Sends `GET path` to the server at `base` exactly as written, on a fresh
/// connection: reqwest, like any WHATWG URL parser, would resolve `.`, `..`
/// and `%2e` before sending.
async fn raw_get(base: &str, path: &str) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("a response within 10 s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let policy = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("ratelimit-policy"))
        .map(|(_, value)| value.trim().to_owned());
    RawResponse {
        status: StatusCode::from_bytes(status.as_bytes()).unwrap(),
        policy,
        body: body.to_owned(),
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
    let base = support::web::serve(app).await;

    for _ in 0..4 {
        let sent = raw_get(&base, "/health").await;
        assert_eq!(
            (sent.status, sent.body.as_str()),
            (StatusCode::OK, "health")
        );
        assert_eq!(sent.policy, None, "exempt: no rate-limit headers");
    }
    let default = Some("\"default\";q=2;w=60".to_owned());
    for i in 0..2 {
        let sent = raw_get(&base, "/files/../health").await;
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
        let sent = raw_get(&base, path).await;
        assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(sent.policy, default, "{path}");
    }
    assert_eq!(
        files.load(Ordering::SeqCst),
        2,
        "the files handler ran twice"
    );
    // The real `/health` is still exempt.
    let sent = raw_get(&base, "/health").await;
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
    let base = support::web::serve(app).await;

    let strict_policy = Some("\"reports\";q=2;w=60".to_owned());
    for path in ["/reports/%2e", "/reports/."] {
        let sent = raw_get(&base, path).await;
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
        let sent = raw_get(&base, path).await;
        assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(sent.policy, strict_policy, "{path}");
    }
    assert_eq!(
        reports.load(Ordering::SeqCst),
        2,
        "the reports handler ran twice"
    );
    // Other paths stay under the lenient default.
    let sent = raw_get(&base, "/reports").await;
    assert_eq!((sent.status, sent.body.as_str()), (StatusCode::OK, "index"));
    assert_eq!(sent.policy, Some("\"lenient\";q=1000;w=60".to_owned()));
}
