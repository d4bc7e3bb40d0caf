//! One request cannot stall Redis for everyone: a request that costs more
//! than its policy's max cost is refused by the layer itself (HTTP 413, gRPC
//! `INVALID_ARGUMENT`) without a single Redis command, while costs up to the
//! max cost are decided by Redis as usual.
//!
//! Every policy here fails closed, so a Redis error would surface as a 503.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::key::{Header, Key};
use tower_redis_ratelimit::{
    Algorithm, ConfigError, FailureMode, Policy, PolicyError, Quota, RateLimitLayer, RedisBackend,
};

use crate::support::headers::{assert_no_rate_limit_headers, remaining};

use crate::support;

/// How many `EVALSHA` commands the server has run.
fn evalsha_calls(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
        .and_then(|stats| stats.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .map_or(0, |calls| calls.parse().unwrap())
}

/// A policy keyed by `x-client` whose cost is the `x-cost` header (default 1).
fn costed(name: &str, quota: Quota, algorithm: Algorithm) -> Policy {
    Policy::new(name)
        .quota(quota)
        .algorithm(algorithm)
        .key(Header::new("x-client"))
        .cost_fn(support::cost_header)
        .failure_mode(FailureMode::Closed)
}

fn layer(backend: &RedisBackend, policy: &Policy) -> RateLimitLayer {
    RateLimitLayer::builder()
        .backend(backend.clone())
        .default_policy(policy.clone())
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn send(layer: &RateLimitLayer, client: &str, cost: u64, grpc: bool) -> Response<String> {
    let service = layer.layer(tower::service_fn(|_request: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    }));
    let mut request = Request::post("/bulk")
        .header("x-client", client)
        .header("x-cost", cost.to_string());
    if grpc {
        request = request.header(header::CONTENT_TYPE, "application/grpc");
    }
    service
        .oneshot(request.body(String::new()).unwrap())
        .await
        .unwrap()
}

fn exists(conn: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query::<u64>(conn).unwrap() == 1
}

fn zcard(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("ZCARD").arg(key).query(conn).unwrap()
}

#[tokio::test]
async fn sliding_log_cost_above_the_max_is_refused_without_redis() {
    let server = support::RedisServer::start();
    let mut conn = server.conn();
    let backend = support::redis_backend(&server.url(), "max-cost-log");
    let policy = costed("bulk", Quota::per_hour(10_000), Algorithm::SlidingLog);
    assert_eq!(
        policy.effective_max_cost(),
        Some(Policy::DEFAULT_MAX_LOG_COST)
    );
    let layer = layer(&backend, &policy);
    let big_key = backend.redis_keys(&policy, &Key::new("big")).remove(0);

    // The first call also loads the script: count from after it.
    assert_eq!(
        send(&layer, "warm", 1, false).await.status(),
        StatusCode::OK
    );
    let before = evalsha_calls(&mut conn);

    for cost in [10_000, Policy::DEFAULT_MAX_LOG_COST + 1, u64::MAX] {
        let res = send(&layer, "big", cost, false).await;
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE, "cost {cost}");
        assert!(
            !res.headers().contains_key(header::RETRY_AFTER),
            "no retry can succeed: {:?}",
            res.headers()
        );
        assert_no_rate_limit_headers(res.headers());
        let body = res.into_body();
        assert!(
            body.contains(&format!(
                "request cost {cost} is above the maximum of {} per request \
                 for policy bulk",
                Policy::DEFAULT_MAX_LOG_COST
            )) && body.contains("can never be admitted"),
            "{body}"
        );

        let res = send(&layer, "big", cost, true).await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "a gRPC trailers-only response"
        );
        assert_eq!(res.headers()["grpc-status"], "3", "INVALID_ARGUMENT");
        assert!(!res.headers().contains_key("grpc-retry-pushback-ms"));
    }
    assert_eq!(
        evalsha_calls(&mut conn),
        before,
        "Redis never saw the costly requests"
    );
    assert!(!exists(&mut conn, &big_key), "nothing was written for them");

    // Up to the max cost, Redis decides as usual.
    let res = send(&layer, "big", Policy::DEFAULT_MAX_LOG_COST, false).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        remaining(res.headers()),
        Some(10_000 - Policy::DEFAULT_MAX_LOG_COST)
    );
    assert_eq!(evalsha_calls(&mut conn), before + 1);
    // One member per request, whatever its cost.
    assert_eq!(zcard(&mut conn, &big_key), 1);
    assert_eq!(send(&layer, "big", 2, false).await.status(), StatusCode::OK);
    assert_eq!(zcard(&mut conn, &big_key), 2);
    let res = send(&layer, "big", 1, false).await;
    assert_eq!(
        remaining(res.headers()),
        Some(10_000 - Policy::DEFAULT_MAX_LOG_COST - 3)
    );

    // Still refused locally afterwards, and the count is unchanged.
    let res = send(&layer, "big", 10_000, false).await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(evalsha_calls(&mut conn), before + 3);
    assert_eq!(zcard(&mut conn, &big_key), 3);
}

#[tokio::test]
async fn explicit_max_cost_opts_in_and_bounds_sliding_window_policies() {
    let server = support::RedisServer::start();
    let mut conn = server.conn();
    let backend = support::redis_backend(&server.url(), "max-cost-window");

    // A sliding-window policy is bounded by its smallest limit: a costlier
    // request could never be admitted, so it is answered without Redis.
    let open = costed("open", Quota::per_minute(100), Algorithm::SlidingWindow);
    assert_eq!(open.effective_max_cost(), Some(100));
    let open = layer(&backend, &open);
    assert_eq!(send(&open, "warm", 1, false).await.status(), StatusCode::OK);
    let before = evalsha_calls(&mut conn);
    let res = send(&open, "a", 101, false).await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(evalsha_calls(&mut conn), before, "no backend call");
    let res = send(&open, "a", 100, false).await;
    assert_eq!(res.status(), StatusCode::OK, "the whole limit at once fits");
    assert_eq!(evalsha_calls(&mut conn), before + 1);

    let bounded = costed("bounded", Quota::per_minute(100), Algorithm::SlidingWindow).max_cost(10);
    let bounded = layer(&backend, &bounded);
    let before = evalsha_calls(&mut conn);
    for cost in [11, 100, 101] {
        let res = send(&bounded, "a", cost, false).await;
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE, "cost {cost}");
    }
    assert_eq!(evalsha_calls(&mut conn), before);
    let res = send(&bounded, "a", 10, false).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(remaining(res.headers()), Some(90));
    assert_eq!(evalsha_calls(&mut conn), before + 1);

    // A sliding log may opt in to costs above the default, up to its limit.
    let raised = costed("raised", Quota::per_hour(3_000), Algorithm::SlidingLog).max_cost(3_000);
    let raised_layer = layer(&backend, &raised);
    let res = send(&raised_layer, "a", 2_000, false).await;
    assert_eq!(res.status(), StatusCode::OK);
    let key = backend.redis_keys(&raised, &Key::new("a")).remove(0);
    assert_eq!(zcard(&mut conn, &key), 1, "one member for 2 000 units");
    assert_eq!(
        send(&raised_layer, "a", 3_001, false).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[test]
fn a_fixed_cost_above_the_max_cost_fails_the_build() {
    let build = |policy: Policy| RateLimitLayer::builder().default_policy(policy).build();
    let log = || {
        Policy::new("log")
            .quota(Quota::per_hour(10_000))
            .algorithm(Algorithm::SlidingLog)
    };
    assert_eq!(
        build(log().cost(Policy::DEFAULT_MAX_LOG_COST + 1)).unwrap_err(),
        ConfigError::Policy(PolicyError::CostAboveMaxCost {
            policy: "log".into(),
            cost: Policy::DEFAULT_MAX_LOG_COST + 1,
            max_cost: Policy::DEFAULT_MAX_LOG_COST,
        })
    );
    assert!(build(log().cost(Policy::DEFAULT_MAX_LOG_COST)).is_ok());
    assert!(build(log().max_cost(5_000).cost(5_000)).is_ok());
    assert_eq!(
        build(log().max_cost(10_001)).unwrap_err(),
        ConfigError::Policy(PolicyError::InvalidMaxCost {
            policy: "log".into(),
            max_cost: 10_001,
            limit: 10_000,
        })
    );
    assert!(matches!(
        build(log().max_cost(0)),
        Err(ConfigError::Policy(PolicyError::InvalidMaxCost {
            max_cost: 0,
            ..
        }))
    ));
}
