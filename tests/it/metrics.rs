//! The layer's metrics (feature `metrics`), recorded by a `DebuggingRecorder`
//! while a scripted sequence of requests runs against a real `redis-server`:
//! admissions, denials, blocked-cache hits, refusals before the backend,
//! shadow denials, and — with the server killed — failing open, closed and to
//! the local limiter. Every count is exact.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::metrics::{
    BACKEND_DURATION_SECONDS, BLOCKED_CACHE_HITS_TOTAL, BREAKER_OPEN,
};
use tower_redis_ratelimit::{
    Algorithm, CircuitBreaker, FailureMode, MemoryBackend, MissingKey, Policy, Quota,
    RateLimitLayer,
};

use crate::support::headers::{assert_no_rate_limit_headers, remaining};
use recorded::{Prometheus, Recorded, decisions, expect};

use crate::recorded;
use crate::support;

/// Sends one request through `layer`: `client` in `x-client` (none if
/// empty), `cost` in `x-cost`.
async fn send(layer: &RateLimitLayer, path: &str, client: &str, cost: u64) -> Response<String> {
    let service = layer.layer(tower::service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    }));
    let mut request = Request::get(path).header("x-cost", cost.to_string());
    if !client.is_empty() {
        request = request.header("x-client", client);
    }
    service
        .oneshot(request.body(String::new()).unwrap())
        .await
        .unwrap()
}

fn policy(name: &str, limit: u64) -> Policy {
    Policy::new(name)
        .quota(Quota::per_minute(limit))
        .algorithm(Algorithm::SlidingLog)
        .key(Header::new("x-client"))
}

/// - `/api` (default): 2 per minute, cost from `x-cost`, keyless requests
///   denied, fails open;
/// - `/local`: 1 per minute, falls back to the local limiter;
/// - `/closed`: 100 per minute, fails closed;
/// - `/shadow`: 1 per minute in shadow mode;
/// - `/health`: exempt.
///
/// The breaker opens after 2 failures and stays open for the test.
fn layer(url: &str) -> RateLimitLayer {
    let api = policy("api", 2)
        .on_missing_key(MissingKey::Deny)
        .cost_fn(|parts| parts.headers["x-cost"].to_str().unwrap().parse().unwrap());
    RateLimitLayer::builder()
        .backend(support::redis_backend(url, "metrics"))
        .default_policy(api)
        .route(
            "/local",
            policy("local", 1).failure_mode(FailureMode::Local),
        )
        .route(
            "/closed",
            policy("closed", 100).failure_mode(FailureMode::Closed),
        )
        .route("/shadow", policy("shadow", 1).shadow(true))
        .exempt("/health")
        // Generous: a slow machine must not turn a decision into a timeout.
        .deadline(Duration::from_secs(2))
        .circuit_breaker(
            CircuitBreaker::new()
                .failure_threshold(2)
                .cooldown(Duration::from_secs(600), Duration::from_secs(600)),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_scripted_sequence_is_counted_exactly() {
    let mut recorded = Recorded::install();
    let mut server = support::RedisServer::start();
    let layer = layer(&server.url());
    let status = |r: &Response<String>| r.status();

    // Not limited: not counted.
    assert_eq!(
        status(&send(&layer, "/health", "a", 1).await),
        StatusCode::OK
    );
    assert!(recorded.counters().is_empty(), "{:?}", recorded.counters());

    // Two admissions, then the backend's denial, then two from the cache.
    for _ in 0..2 {
        assert_eq!(status(&send(&layer, "/api", "a", 1).await), StatusCode::OK);
    }
    let denied = send(&layer, "/api", "a", 1).await;
    assert_eq!(status(&denied), StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..2 {
        let cached = send(&layer, "/api", "a", 1).await;
        assert_eq!(status(&cached), StatusCode::TOO_MANY_REQUESTS);
    }
    // Refused before the backend: no key (403), cost above the max (413).
    assert_eq!(
        status(&send(&layer, "/api", "", 1).await),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&send(&layer, "/api", "b", 3).await),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Shadow mode: one admission, then two would-be denials let through
    // with the denial's headers and without Retry-After.
    for r in [0, 0, 0] {
        let response = send(&layer, "/shadow", "s", 1).await;
        assert_eq!(status(&response), StatusCode::OK);
        assert_eq!(remaining(response.headers()), Some(r));
        assert!(!response.headers().contains_key(header::RETRY_AFTER));
    }
    // (Gauges first: every read drains the debugging recorder.)
    let redis = "{backend=redis}";
    assert_eq!(
        recorded.gauges(),
        [(format!("{BREAKER_OPEN}{redis}"), 0.0)]
            .into_iter()
            .collect(),
        "set to 0 by the first call"
    );
    assert_eq!(
        recorded
            .samples(&format!("{BACKEND_DURATION_SECONDS}{redis}"))
            .len(),
        6,
        "3 calls for /api and 3 for /shadow; none for the cache hits and refusals"
    );

    // Redis dies. The first two calls fail (and open the breaker); the
    // others skip the backend.
    server.kill();
    let open = send(&layer, "/api", "c", 1).await;
    assert_eq!(status(&open), StatusCode::OK, "fails open");
    assert_no_rate_limit_headers(open.headers());
    let local = send(&layer, "/local", "d", 1).await;
    assert_eq!(status(&local), StatusCode::OK, "the local limiter admits");
    assert_eq!(remaining(local.headers()), Some(0));
    let local = send(&layer, "/local", "d", 1).await;
    assert_eq!(status(&local), StatusCode::TOO_MANY_REQUESTS, "and denies");
    let closed = send(&layer, "/closed", "e", 1).await;
    assert_eq!(
        status(&closed),
        StatusCode::SERVICE_UNAVAILABLE,
        "fails closed"
    );

    assert_eq!(
        recorded.gauges(),
        [(format!("{BREAKER_OPEN}{redis}"), 1.0)]
            .into_iter()
            .collect(),
        "the breaker opened"
    );
    assert_eq!(
        recorded.counters(),
        expect([
            (decisions("api", "allowed"), 2),
            // 1 from Redis, 2 from the cache, no key, cost too high.
            (decisions("api", "denied"), 5),
            (decisions("api", "failed_open"), 1),
            (format!("{BLOCKED_CACHE_HITS_TOTAL}{{policy=api}}"), 2),
            (decisions("shadow", "allowed"), 1),
            (decisions("shadow", "shadow_denied"), 2),
            (decisions("local", "local_allowed"), 1),
            (decisions("local", "local_denied"), 1),
            (decisions("closed", "failed_closed"), 1),
        ])
    );
    let calls = recorded.samples(&format!("{BACKEND_DURATION_SECONDS}{redis}"));
    assert_eq!(calls.len(), 8, "6 decided, 2 failed, the rest skipped");
    assert!(
        calls.iter().all(|s| (0.0..2.5).contains(s)),
        "seconds, within the deadline: {calls:?}"
    );
}

/// The breaker gauge follows both transitions (read from the Prometheus
/// exporter, which keeps a gauge's value between reads), and the memory
/// backend has its own label.
#[tokio::test]
async fn the_breaker_gauge_follows_open_and_close() {
    let prometheus = Prometheus::install();
    let mut server = support::RedisServer::start();
    let layer = RateLimitLayer::builder()
        .backend(support::redis_backend(&server.url(), "gauge"))
        .default_policy(policy("g", 100))
        .deadline(Duration::from_secs(2))
        .circuit_breaker(
            CircuitBreaker::new()
                .failure_threshold(1)
                .cooldown(Duration::from_millis(50), Duration::from_millis(50)),
        )
        .build()
        .unwrap();
    let gauge = format!("{BREAKER_OPEN}{{backend=\"redis\"}}");
    assert_eq!(prometheus.samples().get(&gauge), None, "no call yet");
    assert_eq!(send(&layer, "/", "a", 1).await.status(), StatusCode::OK);
    assert_eq!(prometheus.samples().get(&gauge), Some(0.0));
    server.kill();
    let open = send(&layer, "/", "a", 1).await;
    assert_no_rate_limit_headers(open.headers());
    assert_eq!(prometheus.samples().get(&gauge), Some(1.0), "opened");
    assert_eq!(prometheus.samples().get(&gauge), Some(1.0), "and stays");
    server.restart();
    // Only a successful probe gives a Redis decision (headers) while the
    // breaker is open, and it closes the breaker.
    let start = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let response = send(&layer, "/", "a", 1).await;
        if remaining(response.headers()).is_some() {
            break;
        }
        assert_eq!(prometheus.samples().get(&gauge), Some(1.0), "still open");
        assert!(start.elapsed() < Duration::from_secs(10), "never closed");
    }
    assert_eq!(prometheus.samples().get(&gauge), Some(0.0), "closed");

    let memory = RateLimitLayer::new(MemoryBackend::new(), policy("m", 1)).unwrap();
    send(&memory, "/", "a", 1).await;
    let samples = prometheus.samples();
    assert_eq!(
        samples.get(&format!("{BREAKER_OPEN}{{backend=\"memory\"}}")),
        Some(0.0)
    );
    assert_eq!(
        samples.get(&format!(
            "{BACKEND_DURATION_SECONDS}_count{{backend=\"memory\"}}"
        )),
        Some(1.0),
        "{}",
        samples.text
    );
}

/// Each backend names its `backend` label; a custom one says `custom` unless
/// it overrides `metrics_label`, and an `Arc` forwards to what it holds.
#[test]
fn backends_name_their_metrics_label() {
    use std::sync::Arc;
    use tower_redis_ratelimit::{Backend, CheckFuture, Key, RedisBackend};

    struct Custom;
    impl Backend for Custom {
        fn check(&self, _: &Policy, _: &Key, _: u64) -> CheckFuture {
            unreachable!("never called")
        }
    }

    // Building never connects: no server needed.
    let redis = RedisBackend::new("redis://127.0.0.1:1").unwrap();
    assert_eq!(redis.metrics_label(), "redis");
    assert_eq!(Arc::new(redis).metrics_label(), "redis");
    assert_eq!(MemoryBackend::new().metrics_label(), "memory");
    assert_eq!(Custom.metrics_label(), "custom");
    #[cfg(feature = "cluster")]
    assert_eq!(
        RedisBackend::cluster(["redis://127.0.0.1:1", "redis://127.0.0.1:2"])
            .unwrap()
            .metrics_label(),
        "redis_cluster"
    );
}

/// `ratelimit_adjustments_total`: a charge from the response
/// (`Policy::charge_from_header`) is counted as `kind = charge`: `ok`, or
/// `failed` when the backend fails it (the response unaffected); a response
/// reporting nothing charges nothing, and counts nothing.
#[tokio::test]
async fn charges_after_the_response_are_counted() {
    use std::sync::Arc;
    use tower_redis_ratelimit::metrics::ADJUSTMENTS_TOTAL;
    use tower_redis_ratelimit::{Backend, BackendError, ChargeFuture, CheckFuture, Key};

    /// The memory backend, whose charges fail.
    struct Failing(MemoryBackend);
    impl Backend for Failing {
        fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture {
            self.0.check(policy, key, cost)
        }
        fn charge(&self, _: &Policy, _: &Key, _: u64) -> ChargeFuture {
            Box::pin(async { Err(BackendError::Protocol("charges fail here".to_owned())) })
        }
    }

    let mut recorded = Recorded::install();
    for (name, backend, outcome) in [
        (
            "tokens",
            Arc::new(MemoryBackend::new()) as Arc<dyn Backend>,
            "ok",
        ),
        (
            "tokens-failing",
            Arc::new(Failing(MemoryBackend::new())),
            "failed",
        ),
    ] {
        let layer = RateLimitLayer::builder()
            .backend(backend)
            .default_policy(
                policy(name, 10).charge_from_header(http::HeaderName::from_static("x-tokens-used")),
            )
            .build()
            .unwrap();
        let service = layer.layer(tower::service_fn(|req: Request<String>| async move {
            let mut response = Response::new(String::new());
            if let Some(used) = req.headers().get("x-tokens") {
                response.headers_mut().insert("x-tokens-used", used.clone());
            }
            Ok::<_, Infallible>(response)
        }));
        let send = |tokens: Option<&'static str>| {
            let mut request = Request::post("/generate").header("x-client", "a");
            if let Some(tokens) = tokens {
                request = request.header("x-tokens", tokens);
            }
            service
                .clone()
                .oneshot(request.body(String::new()).unwrap())
        };
        assert_eq!(send(None).await.unwrap().status(), StatusCode::OK);
        assert_eq!(send(Some("4")).await.unwrap().status(), StatusCode::OK);
        let counters = recorded.counters();
        let key = format!("{ADJUSTMENTS_TOTAL}{{policy={name},kind=charge,outcome={outcome}}}");
        assert_eq!(counters.get(&key), Some(&1), "{counters:?}");
    }
}

/// A charge after the response while Redis is down (it died while the
/// handler ran): the response is handed back at once, unaffected, and the
/// failed charge is counted (`kind = charge, outcome = failed`) once given
/// up.
#[tokio::test]
async fn a_charge_while_redis_is_down_never_delays_the_response() {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use tower_redis_ratelimit::metrics::ADJUSTMENTS_TOTAL;

    let mut recorded = Recorded::install();
    let server = Arc::new(Mutex::new(support::RedisServer::start()));
    let backend = support::redis_backend(&server.lock().unwrap().url(), "charge-down");
    let deadline = Duration::from_millis(300);
    let layer = RateLimitLayer::builder()
        .backend(backend)
        .default_policy(
            policy("tokens-down", 1_000)
                .charge_from_header(http::HeaderName::from_static("x-tokens-used")),
        )
        .deadline(deadline)
        .build()
        .unwrap();
    let dying = Arc::clone(&server);
    let service = layer.layer(tower::service_fn(move |_: Request<String>| {
        let dying = Arc::clone(&dying);
        async move {
            // Admitted; Redis dies before the charge.
            dying.lock().unwrap().kill();
            let mut response = Response::new("done".to_owned());
            response
                .headers_mut()
                .insert("x-tokens-used", http::HeaderValue::from_static("500"));
            Ok::<_, Infallible>(response)
        }
    }));
    let request = Request::post("/generate")
        .header("x-client", "a")
        .body(String::new())
        .unwrap();
    let started = Instant::now();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "done");
    assert!(started.elapsed() < deadline, "{:?}", started.elapsed());
    // Given up within a second or so (at least a second: MIN_TIME_LIMIT).
    let key = format!("{ADJUSTMENTS_TOTAL}{{policy=tokens-down,kind=charge,outcome=failed}}");
    for _ in 0..400 {
        if recorded.counters().get(&key) == Some(&1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let counters = recorded.counters();
    assert_eq!(counters.get(&key), Some(&1), "{counters:?}");
}

/// `ratelimit_adjustments_total`: a request the inner layer refuses is
/// refunded to the outer one (`ok`), and a refund the backend fails is
/// counted as `failed`, the response unaffected.
#[tokio::test]
async fn refunds_after_the_response_are_counted() {
    use std::sync::Arc;
    use tower_redis_ratelimit::metrics::ADJUSTMENTS_TOTAL;
    use tower_redis_ratelimit::{Backend, BackendError, CheckFuture, Key, RefundFuture, Ticket};

    /// The memory backend, whose refunds fail.
    struct Failing(MemoryBackend);
    impl Backend for Failing {
        fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture {
            self.0.check(policy, key, cost)
        }
        fn refund(&self, _: &Policy, _: &Key, _: u64, _: &Ticket) -> RefundFuture {
            Box::pin(async { Err(BackendError::Protocol("refunds fail here".to_owned())) })
        }
    }

    let mut recorded = Recorded::install();
    let build = |name: &str, limit: u64, backend: Arc<dyn Backend>| {
        RateLimitLayer::builder()
            .backend(backend)
            .default_policy(policy(name, limit))
            .build()
            .unwrap()
    };
    let ok = |_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) };
    for (outer, outcome) in [
        (build("api", 10, Arc::new(MemoryBackend::new())), "ok"),
        (
            build("api-failing", 10, Arc::new(Failing(MemoryBackend::new()))),
            "failed",
        ),
    ] {
        let inner = build("login", 1, Arc::new(MemoryBackend::new()));
        let service = outer.layer(inner.layer(tower::service_fn(ok)));
        let send = || {
            let request = Request::get("/login")
                .header("x-client", "a")
                .body(String::new())
                .unwrap();
            service.clone().oneshot(request)
        };
        assert_eq!(send().await.unwrap().status(), StatusCode::OK);
        let refused = send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let name = outer.admin().policies().next().unwrap().name().to_owned();
        let counters = recorded.counters();
        let key = format!("{ADJUSTMENTS_TOTAL}{{policy={name},kind=refund,outcome={outcome}}}");
        assert_eq!(counters.get(&key), Some(&1), "{counters:?}");
    }
}
