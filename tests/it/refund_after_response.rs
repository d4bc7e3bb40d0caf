//! Refunds decided by the response (`Policy::count_only_status`,
//! `Policy::refund_when`), through an axum app on both backends: the issue's
//! failed-login limit, `POST /auth/session` (200 with `x-password: letmein`,
//! else 401) under "session", 3 failed attempts per minute per client IP.
//!
//! - any number of successful sessions cost nothing; then exactly 3
//!   failures reach the handler, and every later attempt is 429;
//! - 20 concurrent wrong-password attempts across two instances sharing
//!   one Redis admit exactly 3 to the handler (each attempt is counted until
//!   its response, so concurrency cannot beat the limit);
//! - a predicate on the response head (`refund_when`) sees its status and
//!   headers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use http::{HeaderMap, Method, StatusCode};
use tower_redis_ratelimit::{Algorithm, Backend, Key, Policy, Quota, RateLimitLayer, RedisBackend};

use crate::support;
use crate::support::web::{PEER, oneshot, request};

fn session_policy(algorithm: Algorithm) -> Policy {
    Policy::new("session")
        .quota(Quota::per_minute(3))
        .algorithm(algorithm)
        .count_only_status([401, 403])
}

/// The app, and a count of the requests its handler saw.
fn app(backend: Arc<dyn Backend>, policy: Policy) -> (Router, RateLimitLayer, Arc<AtomicU64>) {
    let layer = RateLimitLayer::builder()
        .backend(backend)
        .default_policy(policy)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&seen);
    let router = Router::new()
        .route(
            "/auth/session",
            post(move |headers: HeaderMap| {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that concurrent attempts overlap.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if headers.get("x-password").is_some_and(|v| v == "letmein") {
                        StatusCode::OK
                    } else {
                        StatusCode::UNAUTHORIZED
                    }
                }
            }),
        )
        .layer(layer.clone());
    (router, layer, seen)
}

async fn attempt(app: &Router, password: &str) -> StatusCode {
    let req = request(
        Method::POST,
        "/auth/session",
        Some(PEER),
        &[("x-password", password)],
    );
    oneshot(app, req).await.status
}

/// Waits until the client's "session" quota has `remaining` units (a
/// refund runs after the response: on Redis, a moment later).
async fn settle(layer: &RateLimitLayer, remaining: u64) {
    let admin = layer.admin();
    let client = Key::new(PEER.ip().to_string());
    let left = || async { admin.peek("session", &client).await.unwrap().quotas()[0].remaining };
    let start = std::time::Instant::now();
    while left().await != remaining && start.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(left().await, remaining);
}

/// Sleeps past the next minute boundary of Redis' clock if it is less than
/// 15 s away: the counter counts exactly within one fixed minute.
async fn away_from_the_minute_boundary(url: &str) {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let (secs, _): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
    let left = 60 - secs % 60;
    if left < 15 {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

async fn successes_are_free_failures_count(
    backend: impl Fn() -> Arc<dyn Backend>,
    redis_url: Option<&str>,
) {
    for &algorithm in &[
        Algorithm::SlidingLog,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ] {
        if let Some(url) = redis_url.filter(|_| algorithm == Algorithm::SlidingWindow) {
            away_from_the_minute_boundary(url).await;
        }
        let (app, layer, seen) = app(backend(), session_policy(algorithm));
        for i in 0..50 {
            assert_eq!(
                attempt(&app, "letmein").await,
                StatusCode::OK,
                "session {i}"
            );
            settle(&layer, 3).await;
        }
        for i in 0..3 {
            let status = attempt(&app, "guess").await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{algorithm:?}: failure {i}"
            );
        }
        for i in 0..5 {
            let status = attempt(&app, "guess").await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{algorithm:?}: {i}");
            // The right password too: the failures used the quota up.
            let status = attempt(&app, "letmein").await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{algorithm:?}: {i}");
        }
        assert_eq!(seen.load(Ordering::SeqCst), 53, "{algorithm:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_sessions_cost_nothing_on_memory() {
    let memory = support::still_memory();
    successes_are_free_failures_count(|| Arc::new(memory.clone()), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_sessions_cost_nothing_on_redis() {
    let url = support::redis_url();
    let backend = || -> Arc<dyn Backend> { Arc::new(support::redis_backend(&url, "session")) };
    successes_are_free_failures_count(backend, Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_failures_on_two_instances_admit_exactly_the_limit() {
    let url = support::redis_url();
    let prefix = support::unique_prefix("session-two");
    let instance = || -> Arc<dyn Backend> {
        Arc::new(
            RedisBackend::builder(url.as_str())
                .prefix(prefix.as_str())
                .build()
                .unwrap(),
        )
    };
    let policy = session_policy(Algorithm::SlidingLog);
    let (one, _, seen_one) = app(instance(), policy.clone());
    let (two, _, seen_two) = app(instance(), policy);
    let attempts: Vec<_> = (0..20)
        .map(|i| {
            let app = if i % 2 == 0 { one.clone() } else { two.clone() };
            tokio::spawn(async move { attempt(&app, "guess").await })
        })
        .collect();
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    let failed = statuses
        .iter()
        .filter(|&&s| s == StatusCode::UNAUTHORIZED)
        .count();
    let limited = statuses
        .iter()
        .filter(|&&s| s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((failed, limited), (3, 17), "{statuses:?}");
    let seen = seen_one.load(Ordering::SeqCst) + seen_two.load(Ordering::SeqCst);
    assert_eq!(seen, 3);
}

#[tokio::test]
async fn the_predicate_sees_the_response_head() {
    // Refunded when the handler says the work was cached.
    let policy = Policy::new("work")
        .quota(Quota::per_minute(2))
        .refund_when(|status, headers| status.is_success() && headers.contains_key("x-cached"));
    let layer = RateLimitLayer::builder()
        .backend(support::still_memory())
        .default_policy(policy)
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/work",
            post(|headers: HeaderMap| async move {
                if headers.contains_key("x-warm") {
                    (StatusCode::OK, [("x-cached", "1")])
                } else {
                    (StatusCode::OK, [("x-computed", "1")])
                }
            }),
        )
        .layer(layer);
    let send = |warm: bool| {
        let extra: &[(&str, &str)] = if warm { &[("x-warm", "1")] } else { &[] };
        let req = request(Method::POST, "/work", Some(PEER), extra);
        let app = app.clone();
        async move { oneshot(&app, req).await.status }
    };
    for _ in 0..10 {
        assert_eq!(send(true).await, StatusCode::OK, "cached work is free");
    }
    assert_eq!(send(false).await, StatusCode::OK);
    assert_eq!(send(false).await, StatusCode::OK);
    assert_eq!(send(false).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send(true).await, StatusCode::TOO_MANY_REQUESTS);
}
