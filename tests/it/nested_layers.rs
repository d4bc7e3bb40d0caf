//! Stacked layers, through an axum router called in process: a
//! `route_layer` group (`login`, 2/min) under a global `.layer()` (`api`,
//! 100/min). Every layer that limited a request adds its headers to the one
//! response: the IETF lists are merged (the inner layer's items first), the
//! legacy single-valued headers describe the quota with the fewest units left
//! and `Retry-After` keeps the inner denial's wait. Every `RateLimit` and
//! `RateLimit-Policy` value is parsed with sfv. A request the inner layer
//! refuses gives its unit back to the outer one (by default; opt-out).

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use http::{HeaderMap, Method, StatusCode, header};
use tower_redis_ratelimit::{HeaderStyle, Policy, Quota, RateLimitLayer, RedisBackend};

use crate::support;
use crate::support::headers::{SfItem, parse_sf, retry_after};
use crate::support::web::{PEER, oneshot, request};

/// Generous: a missed deadline would fail open and drop the headers.
const DEADLINE: Duration = Duration::from_secs(2);

/// Refunds of refused requests are off here: these tests count on every
/// admission (the refund, which runs after the response, is the subject of
/// `refused_logins_spend_no_outer_quota`).
fn layer(backend: RedisBackend, policy: Policy, style: HeaderStyle) -> RateLimitLayer {
    RateLimitLayer::builder()
        .backend(backend)
        .default_policy(policy)
        .headers(style)
        .deadline(DEADLINE)
        .refund_refused_by_inner_layers(false)
        .build()
        .unwrap()
}

/// `/login` in a `route_layer` group limited by `login` (2/min), `/hello`
/// outside it; the whole router under a global `api` layer.
fn app(url: &str, style: HeaderStyle, api_limit: u64) -> Router {
    let backend = || support::redis_backend(url, "nested");
    let inner = layer(
        backend(),
        Policy::new("login").quota(Quota::per_minute(2)),
        style,
    );
    let outer = layer(
        backend(),
        Policy::new("api").quota(Quota::per_minute(api_limit)),
        style,
    );
    let login = Router::new()
        .route("/login", post(|| async { "welcome" }))
        .route_layer(inner);
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .merge(login)
        .layer(outer)
}

/// A list member: its name and two integer parameters.
type Item = (String, i64, i64);

/// `(name, q, w)` of each `RateLimit-Policy` item and `(name, r, t)` of each
/// `RateLimit` item, in order, both checked as RFC 8941 lists.
fn ietf(headers: &HeaderMap) -> (Vec<Item>, Vec<Item>) {
    let items = |name: &str, keys: [&str; 2]| -> Vec<Item> {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| parse_sf(v, keys))
            .map(|i: SfItem| (i.name.clone(), i.param(keys[0]), i.param(keys[1])))
            .collect()
    };
    (
        items("ratelimit-policy", ["q", "w"]),
        items("ratelimit", ["r", "t"]),
    )
}

fn legacy(headers: &HeaderMap) -> (u64, u64, u64) {
    let get = |name: &str| -> u64 {
        let values: Vec<_> = headers.get_all(name).iter().collect();
        assert_eq!(values.len(), 1, "one {name}: {headers:?}");
        values[0].to_str().unwrap().parse().unwrap()
    };
    (
        get("x-ratelimit-limit"),
        get("x-ratelimit-remaining"),
        get("x-ratelimit-reset"),
    )
}

/// A request to `app` from [`PEER`]; its headers are checked by the tests
/// (they carry several quotas).
async fn send(app: &Router, method: Method, path: &str) -> (StatusCode, HeaderMap) {
    let sent = oneshot(app, request(method, path, Some(PEER), &[])).await;
    (sent.status, sent.headers)
}

async fn post_login(app: &Router) -> (StatusCode, HeaderMap) {
    send(app, Method::POST, "/login").await
}

#[tokio::test]
async fn inner_denial_keeps_its_headers_under_an_outer_layer_ietf() {
    let app = app(&support::redis_url(), HeaderStyle::Ietf, 100);
    for i in 0..2 {
        let (status, headers) = post_login(&app).await;
        assert_eq!(status, StatusCode::OK, "login {}", i + 1);
        let (policy, state) = ietf(&headers);
        assert_eq!(
            policy,
            vec![("login".into(), 2, 60), ("api".into(), 100, 60)]
        );
        assert_eq!(state[0].0, "login");
        assert_eq!(state[0].1, 1 - i);
        assert_eq!(state[1].0, "api");
        assert_eq!(state[1].1, 99 - i);
        assert!(!headers.contains_key(header::RETRY_AFTER));
    }
    let (status, headers) = post_login(&app).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (policy, state) = ietf(&headers);
    // The outer policy's items are added, not substituted for the denial's.
    assert_eq!(
        policy,
        vec![("login".into(), 2, 60), ("api".into(), 100, 60)]
    );
    assert_eq!(state.len(), 2, "{headers:?}");
    assert_eq!((state[0].0.as_str(), state[0].1), ("login", 0));
    assert_eq!((state[1].0.as_str(), state[1].1), ("api", 97));
    // The inner denial's wait, not the outer admission's (it has none).
    // (The sliding window counter may ask for up to two windows.)
    let after = retry_after(&headers);
    assert!((1..=120).contains(&after), "{after}");
    assert_eq!(headers.get_all(header::RETRY_AFTER).iter().count(), 1);

    // Outside the group only the outer layer limits.
    let (_, headers) = send(&app, Method::GET, "/hello").await;
    let (policy, state) = ietf(&headers);
    assert_eq!(policy, vec![("api".into(), 100, 60)]);
    assert_eq!((state[0].0.as_str(), state[0].1), ("api", 96));
}

#[tokio::test]
async fn inner_denial_keeps_its_headers_under_an_outer_layer_legacy() {
    let app = app(&support::redis_url(), HeaderStyle::Legacy, 100);
    let (status, headers) = post_login(&app).await;
    assert_eq!(status, StatusCode::OK);
    // The legacy headers hold one quota: the one with the fewest units left.
    let (limit, remaining, _) = legacy(&headers);
    assert_eq!((limit, remaining), (2, 1), "login's 2/1, not api's 100/99");
    assert!(!headers.contains_key("ratelimit"));
    post_login(&app).await;
    let (status, headers) = post_login(&app).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (limit, remaining, reset) = legacy(&headers);
    assert_eq!(
        (limit, remaining),
        (2, 0),
        "the denial, not the outer 100/97"
    );
    assert!((1..=120).contains(&reset), "{reset}");
    assert!((1..=120).contains(&retry_after(&headers)), "{headers:?}");

    let (_, headers) = send(&app, Method::GET, "/hello").await;
    assert_eq!(legacy(&headers).0, 100);
    assert_eq!(legacy(&headers).1, 96);
}

#[tokio::test]
async fn outer_denial_never_reaches_the_inner_layer() {
    let app = app(&support::redis_url(), HeaderStyle::Both, 1);
    let (status, headers) = post_login(&app).await;
    assert_eq!(status, StatusCode::OK);
    let (policy, _) = ietf(&headers);
    assert_eq!(policy, vec![("login".into(), 2, 60), ("api".into(), 1, 60)]);
    // api (1/min) has 0 left, login 1: the legacy headers show api's.
    let (limit, remaining, _) = legacy(&headers);
    assert_eq!((limit, remaining), (1, 0));
    let (status, headers) = post_login(&app).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (policy, state) = ietf(&headers);
    assert_eq!(
        policy,
        vec![("api".into(), 1, 60)],
        "the inner layer never ran"
    );
    assert_eq!((state[0].0.as_str(), state[0].1), ("api", 0));
    assert!((1..=120).contains(&retry_after(&headers)));
}

/// The same stack on the memory backend: the merge does not depend on it.
#[tokio::test]
async fn nested_layers_on_the_memory_backend() {
    let memory = |policy: Policy| {
        RateLimitLayer::builder()
            .backend(support::still_memory())
            .default_policy(policy)
            .headers(HeaderStyle::Both)
            .build()
            .unwrap()
    };
    let login = Router::new()
        .route("/login", post(|| async { "welcome" }))
        .route_layer(memory(Policy::new("login").quota(Quota::per_minute(1))));
    let app = Router::new()
        .merge(login)
        .layer(memory(Policy::new("api").quota(Quota::per_minute(10))));
    post_login(&app).await;
    let (status, headers) = post_login(&app).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (policy, state) = ietf(&headers);
    assert_eq!(
        policy,
        vec![("login".into(), 1, 60), ("api".into(), 10, 60)]
    );
    assert_eq!((state[0].1, state[1].1), (0, 8));
    assert_eq!(legacy(&headers).1, 0);
}

/// The stack of the issue: `api` (`.layer()`) over `auth` (a `route_layer`)
/// on `backend`. A login the inner layer refuses gives its unit of `api`
/// back (by default): after five logins and five refusals, `api` has spent
/// five units, not ten; opted out, ten.
async fn refused_logins_spend_no_outer_quota(
    backend: impl Fn() -> std::sync::Arc<dyn tower_redis_ratelimit::Backend>,
    refund: bool,
) {
    let build = |policy: Policy, refund: bool| {
        RateLimitLayer::builder()
            .backend(backend())
            .default_policy(policy)
            .deadline(DEADLINE)
            .refund_refused_by_inner_layers(refund)
            .build()
            .unwrap()
    };
    let inner = build(Policy::new("auth").quota(Quota::per_minute(5)), true);
    let outer = build(Policy::new("api").quota(Quota::per_minute(100)), refund);
    let admin = outer.admin();
    let login = Router::new()
        .route("/login", post(|| async { "welcome" }))
        .route_layer(inner);
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .merge(login)
        .layer(outer);
    let client = tower_redis_ratelimit::Key::new(PEER.ip().to_string());
    let api = || async { admin.peek("api", &client).await.unwrap().quotas()[0].remaining };
    for i in 0..5 {
        assert_eq!(post_login(&app).await.0, StatusCode::OK, "login {i}");
    }
    assert_eq!(api().await, 95);
    for i in 0..5 {
        let (status, headers) = post_login(&app).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "refused login {i}");
        // The headers show `api` as decided, before its refund.
        let (_, state) = ietf(&headers);
        assert_eq!((state[1].0.as_str(), state[1].1), ("api", 94));
        // The refund runs after the response: wait for it (at once on
        // memory, a Redis call on Redis).
        let want = if refund { 95 } else { 94 - i };
        let start = std::time::Instant::now();
        while api().await != want && start.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(api().await, want, "refund {refund}, refused login {i}");
        if !refund {
            break;
        }
    }
    let (_, headers) = send(&app, Method::GET, "/hello").await;
    let (_, state) = ietf(&headers);
    let want = if refund { 94 } else { 93 };
    assert_eq!((state[0].0.as_str(), state[0].1), ("api", want));
}

#[tokio::test]
async fn a_login_refused_inside_is_refunded_outside_on_redis() {
    let url = support::redis_url();
    for refund in [true, false] {
        refused_logins_spend_no_outer_quota(
            || std::sync::Arc::new(support::redis_backend(&url, "stacked-refund")),
            refund,
        )
        .await;
    }
}

#[tokio::test]
async fn a_login_refused_inside_is_refunded_outside_on_memory() {
    for refund in [true, false] {
        let backend = support::still_memory();
        refused_logins_spend_no_outer_quota(|| std::sync::Arc::new(backend.clone()), refund).await;
    }
}
