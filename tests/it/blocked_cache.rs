//! The blocked-client cache: once Redis has denied a client, the layer denies
//! that client's further requests locally, with zero Redis calls, until the
//! retry time or the cache's max age, whichever comes first — and asks Redis
//! again afterwards.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{Algorithm, Policy, Quota, RateLimitLayer};

use crate::support;

fn evalsha_calls(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

async fn send(layer: &RateLimitLayer, client: &str, cost: &str) -> Response<String> {
    let svc = layer.layer(tower::service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    }));
    let req = Request::builder()
        .uri("/x")
        .header("x-client", client)
        .header("x-cost", cost)
        .body(String::new())
        .unwrap();
    svc.oneshot(req).await.unwrap()
}

fn layer(url: &str, capacity: usize) -> RateLimitLayer {
    let backend = support::redis_backend(url, "blocked");
    let policy = Policy::new("p")
        .quota(Quota::new(3, Duration::from_millis(1500)))
        .algorithm(Algorithm::SlidingLog)
        .key(Header::new("x-client"))
        .cost_fn(support::cost_header);
    RateLimitLayer::builder()
        .backend(backend)
        .default_policy(policy)
        .deadline(Duration::from_secs(2))
        .blocked_cache(capacity)
        .build()
        .unwrap()
}

#[tokio::test]
async fn denied_clients_are_answered_locally_until_their_retry_time() {
    let server = support::RedisServer::start();
    let mut conn = server.conn();
    let layer = layer(&server.url(), 1000);

    // Use up the quota (cost 1 each) and get the first denial from Redis.
    // (The very first call also loads the script: measure from after it.)
    assert_eq!(send(&layer, "a", "1").await.status(), StatusCode::OK);
    let start = evalsha_calls(&mut conn);
    for _ in 0..2 {
        assert_eq!(send(&layer, "a", "1").await.status(), StatusCode::OK);
    }
    let first = send(&layer, "a", "2").await;
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    let calls = evalsha_calls(&mut conn);
    assert_eq!(calls, start + 3);

    // Same or higher cost: denied locally, with headers, no Redis call.
    for cost in ["2", "3", "2"] {
        let res = send(&layer, "a", cost).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry = support::headers::retry_after(res.headers());
        assert!((1..=2).contains(&retry), "retry-after {retry}");
        assert!(res.headers().contains_key("ratelimit"));
    }
    assert_eq!(
        evalsha_calls(&mut conn),
        calls,
        "no Redis call for blocked client"
    );

    // A cheaper request and another client still ask Redis.
    assert_eq!(
        send(&layer, "a", "1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(send(&layer, "b", "1").await.status(), StatusCode::OK);
    assert_eq!(evalsha_calls(&mut conn), calls + 2);

    // After the window, Redis decides again and admits.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(send(&layer, "a", "2").await.status(), StatusCode::OK);
    assert_eq!(evalsha_calls(&mut conn), calls + 3);
}

#[tokio::test]
async fn capacity_zero_turns_the_cache_off() {
    let server = support::RedisServer::start();
    let mut conn = server.conn();
    let layer = layer(&server.url(), 0);
    send(&layer, "a", "1").await;
    let start = evalsha_calls(&mut conn);
    for _ in 0..2 {
        send(&layer, "a", "1").await;
    }
    for _ in 0..3 {
        assert_eq!(
            send(&layer, "a", "1").await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(evalsha_calls(&mut conn), start + 5);
}

#[tokio::test]
async fn a_blocked_client_stays_denied_when_redis_dies() {
    let mut server = support::RedisServer::start();
    let layer = layer(&server.url(), 1000);
    for _ in 0..3 {
        assert_eq!(send(&layer, "a", "1").await.status(), StatusCode::OK);
    }
    assert_eq!(
        send(&layer, "a", "1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    server.kill();
    // The policy fails open, but this client is known to be over its limit.
    assert_eq!(
        send(&layer, "a", "1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client fails open (Redis is gone).
    let other = send(&layer, "b", "1").await;
    assert_eq!(other.status(), StatusCode::OK);
    assert!(!other.headers().contains_key("ratelimit"));
}

#[tokio::test]
async fn local_fallback_denials_are_not_remembered() {
    let mut server = support::RedisServer::start();
    let backend = support::redis_backend(&server.url(), "blocked-local");
    let policy = Policy::new("local")
        .quota(Quota::per_minute(2))
        .key(Header::new("x-client"))
        .failure_mode(tower_redis_ratelimit::FailureMode::Local);
    let layer = RateLimitLayer::builder()
        .backend(backend)
        .default_policy(policy)
        .build()
        .unwrap();
    server.kill();
    // The in-process fallback limits: 2 admitted, then denied.
    assert_eq!(send(&layer, "a", "1").await.status(), StatusCode::OK);
    assert_eq!(send(&layer, "a", "1").await.status(), StatusCode::OK);
    assert_eq!(
        send(&layer, "a", "1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Redis comes back empty: it admits again within the breaker's cool-down,
    // because the fallback's denial was not cached.
    server.restart();
    let start = std::time::Instant::now();
    loop {
        let res = send(&layer, "a", "1").await;
        if res.status() == StatusCode::OK {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "Redis never decided again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A per-day denial is repeated locally for at most the max age; then one
/// request asks Redis again (and is denied again, and cached again): one
/// Redis call per max age per blocked client, however hard it hammers.
#[tokio::test]
async fn denials_are_repeated_locally_for_at_most_the_max_age() {
    let server = support::RedisServer::start();
    let mut conn = server.conn();
    let backend = support::redis_backend(&server.url(), "blocked-max-age");
    // The exact log: a denial's retry time is about a day at any hour (the
    // counter's is the rest of the current UTC day).
    let policy = Policy::new("daily")
        .algorithm(Algorithm::SlidingLog)
        .quota(Quota::per_day(2))
        .key(Header::new("x-client"));
    let max_age = Duration::from_millis(300);
    let layer = RateLimitLayer::builder()
        .backend(backend)
        .default_policy(policy)
        .deadline(Duration::from_secs(2))
        .blocked_cache_max_age(max_age)
        .build()
        .unwrap();
    for _ in 0..2 {
        assert_eq!(send(&layer, "a", "1").await.status(), StatusCode::OK);
    }
    let first = send(&layer, "a", "1").await;
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    let after_first = evalsha_calls(&mut conn);
    let denied_at = std::time::Instant::now();
    // Hammer for three max ages: each local entry lives at most 300 ms.
    let mut requests = 0;
    while denied_at.elapsed() < max_age * 3 {
        let res = send(&layer, "a", "1").await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        // The retry time repeated is the backend's (about a day), not the max age.
        assert!(support::headers::retry_after(res.headers()) > 3_600);
        requests += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = evalsha_calls(&mut conn) - after_first;
    assert!(requests > 30, "{requests} requests");
    assert!(
        (2..=4).contains(&asked),
        "{asked} Redis calls for {requests} requests over 3 max ages"
    );
}
