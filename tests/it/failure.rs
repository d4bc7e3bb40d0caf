//! Failure handling through the real layer and a real `RedisBackend`: Redis
//! absent, killed, frozen (SIGSTOP) or not yet started. Requests must never
//! wait much longer than the layer's deadline, must fail open (inner service
//! called, no rate-limit headers) or closed (503 + `Retry-After: 1`, inner
//! service never called) as the policy says, and limiting must come back on
//! its own once Redis does.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode, header};
use tower::{Layer, Service, ServiceExt};
use tower_redis_ratelimit::headers::{RATELIMIT, RATELIMIT_POLICY};
use tower_redis_ratelimit::key::Global;
use tower_redis_ratelimit::{Algorithm, FailureMode, Policy, Quota, RateLimitLayer};

use crate::support::RedisServer;
use crate::support::headers::{assert_no_rate_limit_headers, retry_after};

use crate::support;

/// The layer's deadline for one backend decision.
const DEADLINE: Duration = Duration::from_millis(50);
/// Scheduling slack allowed on top of the deadline (noisy 2-core machine).
const MARGIN: Duration = Duration::from_millis(150);
/// How long limiting may take to come back after Redis does.
const RECOVERY: Duration = Duration::from_secs(5);
/// The limit of the fail-open policy (`/open`).
const OPEN_LIMIT: u64 = 3;

/// The inner service: counts its calls and answers 200 "ok".
fn inner(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send {
    tower::service_fn(move |_request: Request<String>| {
        let calls = Arc::clone(&calls);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(Response::new("ok".to_owned()))
        }
    })
}

/// `/open`: 3 per minute, fails open. `/closed`: 1000 per minute, fails
/// closed. Both on one global key, on one `RedisBackend`, deadline 50 ms.
fn layer_for(url: &str, test: &str) -> RateLimitLayer {
    let backend = support::redis_backend(url, test);
    let open = Policy::new("fail-open")
        .quota(Quota::per_minute(OPEN_LIMIT))
        .algorithm(Algorithm::SlidingLog)
        .key(Global);
    let closed = Policy::new("fail-closed")
        .quota(Quota::per_minute(1000))
        .key(Global)
        .failure_mode(FailureMode::Closed);
    RateLimitLayer::builder()
        .backend(backend)
        .route("/open", open)
        .route("/closed", closed)
        .deadline(DEADLINE)
        // These tests are about the backend failing; the blocked-client cache
        // would keep denying the client Redis denied before the kill (see
        // tests/it/blocked_cache.rs).
        .blocked_cache(0)
        .build()
        .expect("valid configuration")
}

/// A layered service over a call-counting inner service.
struct Harness {
    layer: RateLimitLayer,
    calls: Arc<AtomicUsize>,
    /// The slowest request seen so far.
    max_latency: Duration,
}

impl Harness {
    fn new(layer: RateLimitLayer) -> Self {
        Self {
            layer,
            calls: Arc::new(AtomicUsize::new(0)),
            max_latency: Duration::ZERO,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Sends one request through the layer; returns the response and how long
    /// the whole call took.
    async fn send(&mut self, path: &str) -> (Response<String>, Duration) {
        let service = self.layer.layer(inner(Arc::clone(&self.calls)));
        let request = Request::get(path).body(String::new()).unwrap();
        let start = Instant::now();
        let response = service.oneshot(request).await.unwrap();
        let took = start.elapsed();
        self.max_latency = self.max_latency.max(took);
        (response, took)
    }

    /// Sends one request while the backend is failing: it must fail open
    /// (`/open`) or closed (`/closed`) within deadline + margin.
    async fn send_failing(&mut self, path: &str) {
        let before = self.calls();
        let (response, took) = self.send(path).await;
        assert!(
            took <= DEADLINE + MARGIN,
            "{path} took {took:?} with the backend failing (deadline {DEADLINE:?})"
        );
        match path {
            "/open" => {
                assert_eq!(response.status(), StatusCode::OK, "{path} fails open");
                assert_eq!(response.body(), "ok");
                assert_no_rate_limit_headers(response.headers());
                assert_eq!(
                    self.calls(),
                    before + 1,
                    "fail open calls the inner service"
                );
            }
            "/closed" => {
                assert_eq!(
                    response.status(),
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{path} fails closed"
                );
                assert_eq!(response.headers()[header::RETRY_AFTER], "1");
                assert!(!response.headers().contains_key(RATELIMIT));
                assert_eq!(
                    self.calls(),
                    before,
                    "fail closed never calls the inner service"
                );
            }
            _ => unreachable!(),
        }
    }

    /// Polls `path` until a decision comes from Redis again (the response
    /// carries rate-limit headers); returns how long that took.
    async fn wait_until_limiting(&mut self, path: &str) -> Duration {
        let start = Instant::now();
        loop {
            let (response, _) = self.send(path).await;
            if response.headers().contains_key(RATELIMIT) {
                assert!(response.headers().contains_key(RATELIMIT_POLICY));
                return start.elapsed();
            }
            assert!(
                start.elapsed() < RECOVERY,
                "limiting on {path} did not resume within {RECOVERY:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `/open` until it is denied (bounded) and checks the denial.
    /// Returns how many requests were admitted with rate-limit headers.
    async fn exhaust_open(&mut self) -> u64 {
        let mut admitted = 0;
        for _ in 0..(OPEN_LIMIT + 20) {
            let before = self.calls();
            let (response, _) = self.send("/open").await;
            match response.status() {
                StatusCode::OK if response.headers().contains_key(RATELIMIT) => admitted += 1,
                // A check that missed the deadline fails open; it may still
                // have consumed a unit in Redis.
                StatusCode::OK => {}
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(
                        self.calls(),
                        before,
                        "a denied request never reaches the inner service"
                    );
                    let retry = retry_after(response.headers());
                    assert!((1..=60).contains(&retry), "Retry-After {retry}");
                    assert!(
                        response.headers()[RATELIMIT]
                            .to_str()
                            .unwrap()
                            .contains(";r=0;"),
                        "{:?}",
                        response.headers()[RATELIMIT]
                    );
                    assert!(admitted <= OPEN_LIMIT);
                    return admitted;
                }
                other => panic!("unexpected status {other}"),
            }
        }
        panic!("/open was never limited");
    }
}

/// Nothing listens at the Redis URL: every request fails open within the
/// deadline (or closed, per policy), and building never blocks or fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_fails_open_within_deadline_or_closed_per_policy() {
    let url = format!("redis://127.0.0.1:{}/", support::dead_port());
    let start = Instant::now();
    let layer = layer_for(&url, "unreachable");
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "building took {:?}",
        start.elapsed()
    );
    let mut h = Harness::new(layer);

    for _ in 0..20 {
        h.send_failing("/open").await;
    }
    assert_eq!(h.calls(), 20);
    for _ in 0..10 {
        h.send_failing("/closed").await;
    }
    assert_eq!(
        h.calls(),
        20,
        "no fail-closed request reached the inner service"
    );
    eprintln!("unreachable: max latency {:?}", h.max_latency);
}

/// Redis is SIGKILLed mid-test: limiting works before, requests fail open
/// (or closed) within the deadline while it is gone, and limiting resumes by
/// itself once a server is back on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted() {
    let mut server = RedisServer::start();
    let mut h = Harness::new(layer_for(&server.url(), "killed"));

    // Normal operation: the first decisions come from Redis, then the limit bites.
    h.wait_until_limiting("/open").await;
    let admitted = h.exhaust_open().await;
    assert!(
        admitted >= 1,
        "no request was admitted with headers before the limit"
    );
    let (response, _) = h.send("/closed").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key(RATELIMIT));

    server.kill();
    let killed_max = {
        h.max_latency = Duration::ZERO;
        for _ in 0..20 {
            h.send_failing("/open").await;
            h.send_failing("/closed").await;
        }
        h.max_latency
    };

    server.restart();
    let took = h.wait_until_limiting("/open").await;
    // The new server is empty: the limit applies afresh, then bites again.
    let admitted = h.exhaust_open().await;
    assert!(admitted >= 1);
    let (response, _) = h.send("/closed").await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "fail-closed route admits again"
    );
    assert!(response.headers().contains_key(RATELIMIT));
    eprintln!(
        "killed: max latency while down {killed_max:?}; limiting resumed {took:?} after restart"
    );
}

/// Redis is frozen (SIGSTOP): connections stay open but nothing answers.
/// Requests still finish within the deadline, failing open (or closed), and
/// limiting resumes after SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_fails_within_deadline_then_recovers() {
    let server = RedisServer::start();
    let mut h = Harness::new(layer_for(&server.url(), "stopped"));
    h.wait_until_limiting("/open").await;
    h.wait_until_limiting("/closed").await;

    server.signal("STOP");
    h.max_latency = Duration::ZERO;
    for _ in 0..15 {
        h.send_failing("/open").await;
        h.send_failing("/closed").await;
    }
    let stopped_max = h.max_latency;
    server.signal("CONT");

    let took = h.wait_until_limiting("/closed").await;
    let (response, _) = h.send("/closed").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key(RATELIMIT));
    eprintln!("stopped: max latency while stopped {stopped_max:?}; recovered {took:?} after CONT");
}

/// The layer is built while Redis is down (no runtime needed, no blocking, no
/// error); requests fail open until the server comes up, then are limited.
#[test]
fn layer_built_while_redis_down_limits_once_it_is_up() {
    let mut server = RedisServer::start();
    server.kill();

    // Outside any Tokio runtime: building connects nothing.
    let start = Instant::now();
    let layer = layer_for(&server.url(), "late");
    let built_in = start.elapsed();
    assert!(
        built_in < Duration::from_millis(200),
        "building took {built_in:?}"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut h = Harness::new(layer);
        for _ in 0..5 {
            h.send_failing("/open").await;
            h.send_failing("/closed").await;
        }
        let down_max = h.max_latency;

        server.restart();
        let took = h.wait_until_limiting("/open").await;
        let admitted = h.exhaust_open().await;
        assert!(admitted >= 1);
        eprintln!("late start: built in {built_in:?}; max latency while down {down_max:?}; limiting {took:?} after start");
        drop(server);
    });
}
