//! Shadow mode (`Policy::shadow(true)`): every decision is made and counted,
//! nothing is denied. Through a real axum router (called in process) and a
//! real `redis-server`; with the `metrics` feature the
//! decisions are counted too (`shadow_denied` where enforcement says
//! `denied`).

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{
    Algorithm, FailureMode, MissingKey, Policy, Quota, RateLimitLayer, RedisBackend,
};

use crate::support::headers::{assert_no_rate_limit_headers, ietf, retry_after};
use crate::support::web::{PEER, call};

#[cfg(feature = "metrics")]
use crate::recorded;
use crate::support;

/// 3 per minute per `x-api-key`, exact.
fn trial(shadow: bool) -> Policy {
    Policy::new("trial")
        .quota(Quota::per_minute(3))
        .algorithm(Algorithm::SlidingLog)
        .key(Header::new("x-api-key"))
        .shadow(shadow)
}

/// An app limiting `/api` with [`trial`], its counters under `prefix`.
fn router(url: &str, prefix: &str, shadow: bool) -> Router {
    let backend = RedisBackend::builder(url).prefix(prefix).build().unwrap();
    let layer = RateLimitLayer::builder()
        .backend(backend)
        .default_policy(trial(shadow))
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    Router::new()
        .route("/api", get(|| async { "ok" }))
        .layer(layer)
}

fn evalsha_calls(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// `(status, r, t)` of one request, after checking the policy header.
async fn get_api(app: &Router) -> (StatusCode, i64, i64, HeaderMap) {
    let sent = call(app, Method::GET, "/api", PEER, &[("x-api-key", "k")]).await;
    let (policy, state) = ietf(&sent.headers).expect("rate-limit headers");
    assert_eq!(sent.headers["ratelimit-policy"], "\"trial\";q=3;w=60");
    assert_eq!(policy.name, "trial");
    if sent.status == StatusCode::OK {
        assert_eq!(sent.body, "ok");
    }
    (
        sent.status,
        state.param("r"),
        state.param("t"),
        sent.headers,
    )
}

#[tokio::test]
async fn over_limit_requests_pass_with_the_would_be_headers_and_are_counted() {
    #[cfg(feature = "metrics")]
    let mut recorded = recorded::Recorded::install();
    let server = support::RedisServer::start();
    let mut conn = server.conn();
    let url = server.url();

    // Shadow mode: five requests against a limit of three all pass; the
    // last two carry the headers of the denial they would have been.
    let prefix = support::unique_prefix("shadow");
    let app = router(&url, &prefix, true);
    let (status, r, _, _) = get_api(&app).await;
    assert_eq!((status, r), (StatusCode::OK, 2));
    let before = evalsha_calls(&mut conn); // (after the script is loaded)
    for expected in [1, 0, 0, 0] {
        let (status, r, t, headers) = get_api(&app).await;
        assert_eq!(status, StatusCode::OK, "shadow mode denies nothing");
        assert_eq!(r, expected);
        assert!((1..=60).contains(&t), "t={t}");
        assert!(
            !headers.contains_key(header::RETRY_AFTER),
            "no Retry-After on a 200: {headers:?}"
        );
    }
    assert_eq!(
        evalsha_calls(&mut conn),
        before + 4,
        "a shadowed client keeps asking Redis: its denials are not cached"
    );
    #[cfg(feature = "metrics")]
    assert_eq!(
        recorded.counters(),
        recorded::expect([
            (recorded::decisions("trial", "allowed"), 3),
            (recorded::decisions("trial", "shadow_denied"), 2),
        ])
    );

    // Turned off, on the same counters: Redis counted only the three
    // admissions, as enforcement would have, so the client is denied now.
    let app = router(&url, &prefix, false);
    let (status, r, _, headers) = get_api(&app).await;
    assert_eq!((status, r), (StatusCode::TOO_MANY_REQUESTS, 0));
    assert!((1..=60).contains(&retry_after(&headers)));

    // The same sequence without shadow mode, on fresh counters: denied,
    // the second denial from the blocked-client cache.
    let app = router(&url, &support::unique_prefix("enforced"), false);
    let before = evalsha_calls(&mut conn);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, _, _, headers) = get_api(&app).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!((1..=60).contains(&retry_after(&headers)));
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(
        evalsha_calls(&mut conn),
        before + 4,
        "one denial was cached"
    );
    #[cfg(feature = "metrics")]
    assert_eq!(
        recorded.counters(),
        recorded::expect([
            (recorded::decisions("trial", "allowed"), 6),
            (recorded::decisions("trial", "shadow_denied"), 2),
            (recorded::decisions("trial", "denied"), 3),
            (
                "ratelimit_blocked_cache_hits_total{policy=trial}".to_owned(),
                1
            ),
        ])
    );
}

/// Sends one request to `path`, with `x-api-key` unless `key` is empty and
/// `x-cost: cost`.
async fn send(layer: &RateLimitLayer, path: &str, key: &str, cost: u64) -> Response<String> {
    let service = layer.layer(tower::service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    }));
    let mut request = Request::get(path).header("x-cost", cost.to_string());
    if !key.is_empty() {
        request = request.header("x-api-key", key);
    }
    service
        .oneshot(request.body(String::new()).unwrap())
        .await
        .unwrap()
}

/// Refusals that have no decision behind them — no key, a cost above the
/// max cost, failing closed — are let through without rate-limit headers;
/// the local limiter's denials get its headers. Redis is a real server,
/// killed before the requests.
#[tokio::test]
async fn refusals_without_a_backend_decision_are_let_through_too() {
    #[cfg(feature = "metrics")]
    let mut recorded = recorded::Recorded::install();
    let mut server = support::RedisServer::start();
    let url = server.url();
    server.kill();
    let layer = |shadow: bool| {
        let strict = Policy::new("strict")
            .quota(Quota::per_minute(5))
            .key(Header::new("x-api-key"))
            .on_missing_key(MissingKey::Deny)
            .failure_mode(FailureMode::Closed)
            .cost_fn(|parts| parts.headers["x-cost"].to_str().unwrap().parse().unwrap())
            .max_cost(1)
            .shadow(shadow);
        let local = trial(shadow).failure_mode(FailureMode::Local);
        RateLimitLayer::builder()
            .backend(support::redis_backend(&url, "shadow-refusals"))
            .default_policy(strict)
            .route("/local", local)
            .deadline(Duration::from_millis(500))
            .build()
            .unwrap()
    };

    let enforcing = layer(false);
    let statuses = [
        send(&enforcing, "/", "", 1).await.status(),
        send(&enforcing, "/", "k", 2).await.status(),
        send(&enforcing, "/", "k", 1).await.status(),
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::FORBIDDEN,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::SERVICE_UNAVAILABLE
        ]
    );

    let shadow = layer(true);
    for (key, cost) in [("", 1), ("k", 2), ("k", 1)] {
        let response = send(&shadow, "/", key, cost).await;
        assert_eq!(response.status(), StatusCode::OK, "key {key:?} cost {cost}");
        assert_eq!(response.body(), "ok");
        assert_no_rate_limit_headers(response.headers());
    }
    // The local limiter (3 per minute) decides; its fourth answer would be
    // a denial.
    for r in [2, 1, 0, 0] {
        let response = send(&shadow, "/local", "k", 1).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(support::headers::remaining(response.headers()), Some(r));
        assert!(!response.headers().contains_key(header::RETRY_AFTER));
    }

    #[cfg(feature = "metrics")]
    assert_eq!(
        recorded.counters(),
        recorded::expect([
            (recorded::decisions("strict", "denied"), 2),
            (recorded::decisions("strict", "failed_closed"), 1),
            (recorded::decisions("strict", "shadow_denied"), 3),
            (recorded::decisions("trial", "local_allowed"), 3),
            (recorded::decisions("trial", "shadow_denied"), 1),
        ])
    );
}
