//! axum 0.8 per-route limits, through the router called in process (with the
//! peer address axum's `ConnectInfo` gives):
//! `route_layer` on route groups versus the layer's own route table,
//! `key::PerRoute` with axum's `MatchedPath` (and its one shared
//! `!unmatched` bucket per client without it), `Router::layer` versus
//! `Router::route_layer` on 404 fallbacks, and the `ProblemJson` rejection.
//! Every `RateLimit`/`RateLimit-Policy` value seen is parsed with sfv.

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use http::{Method, StatusCode, header};
use tower_redis_ratelimit::key::{PeerIp, PerRoute};
use tower_redis_ratelimit::{Algorithm, Policy, ProblemJson, Quota, RateLimitLayer};

use crate::support;
use crate::support::headers;
use crate::support::web::{self, PEER, Sent};

/// Generous: a missed deadline would fail open and drop the headers.
const DEADLINE: Duration = Duration::from_secs(2);

/// The policy name and remaining count of a limited response.
fn state(sent: &Sent) -> (String, i64) {
    let (p, s) = headers::ietf(&sent.headers)
        .unwrap_or_else(|| panic!("no RateLimit headers: {:?}", sent.headers));
    (p.name, s.param("r"))
}

fn layer(policy: Policy) -> RateLimitLayer {
    RateLimitLayer::builder()
        .backend(support::still_memory())
        .default_policy(policy)
        .deadline(DEADLINE)
        .build()
        .unwrap()
}

/// A request from [`PEER`] to `app`, in process; its structured fields are
/// checked.
async fn send(app: &Router, method: Method, path: &str) -> Sent {
    web::call(app, method, path, PEER, &[]).await
}

/// What both per-route setups must do: auth gets its own 5/min and a 429,
/// the api its default 100/min, health no limit and no headers.
async fn auth_api_health(app: &Router) {
    let login = "/auth/login";
    for i in 0..5 {
        let sent = send(app, Method::POST, login).await;
        assert_eq!(sent.status, StatusCode::OK, "login {}", i + 1);
        assert_eq!(sent.body, "welcome");
        assert_eq!(sent.headers["ratelimit-policy"], "\"auth\";q=5;w=60");
        assert_eq!(state(&sent), ("auth".to_owned(), 4 - i));
    }
    let sent = send(app, Method::POST, login).await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);
    assert!((1..=60).contains(&headers::retry_after(&sent.headers)));
    assert_eq!(state(&sent), ("auth".to_owned(), 0));

    // The api policy is untouched by the exhausted auth policy.
    let hello = "/api/hello";
    let mut remaining = Vec::new();
    for _ in 0..10 {
        let sent = send(app, Method::GET, hello).await;
        assert_eq!(sent.status, StatusCode::OK);
        assert_eq!(sent.headers["ratelimit-policy"], "\"api\";q=100;w=60");
        let (name, r) = state(&sent);
        assert_eq!(name, "api");
        remaining.push(r);
    }
    // The clock stands still: no window boundary, one unit per request.
    assert_eq!(remaining, (90..=99).rev().collect::<Vec<_>>());

    for _ in 0..20 {
        let sent = send(app, Method::GET, "/health").await;
        assert_eq!(sent.status, StatusCode::OK);
        assert_eq!(sent.body, "ok");
        headers::assert_no_rate_limit_headers(&sent.headers);
    }
    let sent = send(app, Method::POST, login).await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS, "still limited");
}

/// Per-route limits with `route_layer`: one layer per route group, each with
/// its own default policy; /health sits outside every group.
#[tokio::test]
async fn route_layer_groups() {
    let auth = Router::new()
        .route("/auth/login", post(|| async { "welcome" }))
        .route_layer(layer(Policy::auth()));
    let api = Router::new()
        .route("/api/hello", get(|| async { "hello" }))
        .route_layer(layer(Policy::default_api()));
    let app = Router::new()
        .merge(auth)
        .merge(api)
        .route("/health", get(|| async { "ok" }));
    auth_api_health(&app).await;
}

/// The same limits with one `Router::layer` and the layer's route table.
#[tokio::test]
async fn layer_route_table() {
    let limits = RateLimitLayer::builder()
        .backend(support::still_memory())
        .default_policy(Policy::default_api())
        .route_method(Method::POST, "/auth/login", Policy::auth())
        .exempt("/health")
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/auth/login", post(|| async { "welcome" }))
        .route("/api/hello", get(|| async { "hello" }))
        .route("/health", get(|| async { "ok" }))
        .layer(limits);
    auth_api_health(&app).await;
}

fn per_route_policy() -> Policy {
    Policy::new("per-route")
        .quota(Quota::per_minute(3))
        .algorithm(Algorithm::SlidingLog)
        .key(PerRoute::new(PeerIp::new()))
}

fn users_and_items() -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/items/{id}", get(|| async { "item" }))
}

/// With `route_layer`, `PerRoute` sees axum's `MatchedPath`: /users/1,
/// /users/2, /users/3 share the `/users/{id}` bucket of the client, so the 4th
/// distinct id is denied, while `/items/{id}` has a bucket of its own.
#[tokio::test]
async fn per_route_uses_matched_path_under_route_layer() {
    let app = users_and_items().route_layer(layer(per_route_policy()));
    for (i, id) in [1, 2, 3].into_iter().enumerate() {
        let sent = send(&app, Method::GET, &format!("/users/{id}")).await;
        assert_eq!(sent.status, StatusCode::OK, "/users/{id}");
        assert_eq!(state(&sent), ("per-route".to_owned(), 2 - i as i64));
    }
    let sent = send(&app, Method::GET, "/users/4").await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(state(&sent).1, 0);
    let sent = send(&app, Method::GET, "/users/1").await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);

    let sent = send(&app, Method::GET, "/items/1").await;
    assert_eq!(sent.status, StatusCode::OK);
    assert_eq!(state(&sent), ("per-route".to_owned(), 2));
}

/// `Router::layer` also wraps each matched route (after routing), so
/// `MatchedPath` is there too. The 404 fallback has no route template, so
/// `PerRoute` gives every unmatched path of a client one shared bucket
/// (`!unmatched`), apart from its route buckets: probing `/nope/1`,
/// `/nope/2`, ... cannot multiply the quota.
#[tokio::test]
async fn per_route_under_router_layer_and_on_the_fallback() {
    let app = users_and_items().layer(layer(per_route_policy()));
    for (i, id) in [1, 2, 3].into_iter().enumerate() {
        let sent = send(&app, Method::GET, &format!("/users/{id}")).await;
        assert_eq!(sent.status, StatusCode::OK, "/users/{id}");
        assert_eq!(state(&sent).1, 2 - i as i64, "/users/{id}");
    }
    let sent = send(&app, Method::GET, "/users/4").await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);

    // Distinct unmatched paths draw from one fresh bucket, not the exhausted
    // `/users/{id}` one, and not one bucket each.
    for (path, r) in [("/nope/1", 2), ("/nope/2", 1), ("/other/3", 0)] {
        let sent = send(&app, Method::GET, path).await;
        assert_eq!(sent.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(state(&sent), ("per-route".to_owned(), r), "{path}");
    }
    for path in ["/nope/4", "/nope/1", "/users"] {
        let sent = send(&app, Method::GET, path).await;
        assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(state(&sent).1, 0, "{path}");
    }
    // The exhausted unmatched bucket does not touch `/items/{id}`.
    let sent = send(&app, Method::GET, "/items/9").await;
    assert_eq!(sent.status, StatusCode::OK);
    assert_eq!(state(&sent).1, 2);
}

/// A layer wrapping the whole `Router` as a tower service runs before
/// routing: no `MatchedPath`, so every request is unmatched and `PerRoute`
/// keys by client alone. `/users/1`, `/users/2`, ... and `/items/1` share one
/// bucket per client, so varying the id cannot multiply the quota.
#[tokio::test]
async fn per_route_outside_the_router_is_one_bucket_per_client() {
    use tower::Layer as _;

    let service = layer(per_route_policy()).layer(users_and_items());
    for (path, r) in [("/users/1", 2), ("/users/2", 1), ("/items/1", 0)] {
        let sent =
            web::call_service(&service, web::request(Method::GET, path, Some(PEER), &[])).await;
        assert_eq!(sent.status, StatusCode::OK, "{path}");
        assert_eq!(state(&sent), ("per-route".to_owned(), r), "{path}");
    }
    // Fresh ids, other spellings and 404s are all the same exhausted bucket.
    for path in ["/users/4", "/items/2", "//users/1/", "/nope"] {
        let sent =
            web::call_service(&service, web::request(Method::GET, path, Some(PEER), &[])).await;
        assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(state(&sent).1, 0, "{path}");
        assert!(
            (1..=60).contains(&headers::retry_after(&sent.headers)),
            "{path}"
        );
    }
}

/// `Router::layer` limits requests that end in the 404 fallback;
/// `Router::route_layer` only wraps matched routes, so 404s pass unlimited.
#[tokio::test]
async fn router_layer_limits_404_fallback_route_layer_does_not() {
    let tight = || {
        Policy::new("tight")
            .quota(Quota::per_minute(2))
            .algorithm(Algorithm::SlidingLog)
    };
    let hello = || Router::new().route("/api/hello", get(|| async { "hello" }));

    let app = hello().route_layer(layer(tight()));
    for _ in 0..5 {
        let sent = send(&app, Method::GET, "/nope").await;
        assert_eq!(sent.status, StatusCode::NOT_FOUND);
        headers::assert_no_rate_limit_headers(&sent.headers);
    }
    // The matched route is limited, and the 404s above consumed nothing.
    let sent = send(&app, Method::GET, "/api/hello").await;
    assert_eq!(sent.status, StatusCode::OK);
    assert_eq!(state(&sent), ("tight".to_owned(), 1));

    let app = hello().layer(layer(tight()));
    for r in [1, 0] {
        let sent = send(&app, Method::GET, "/nope").await;
        assert_eq!(sent.status, StatusCode::NOT_FOUND);
        assert_eq!(state(&sent), ("tight".to_owned(), r));
    }
    let sent = send(&app, Method::GET, "/nope").await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);
    // The fallback traffic exhausted the same per-IP bucket as the real route.
    let sent = send(&app, Method::GET, "/api/hello").await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);
}

/// `ProblemJson`: an RFC 9457 body with `application/problem+json` for HTTP,
/// the trailers-only gRPC response for `application/grpc` requests.
#[tokio::test]
async fn problem_json_rejection() {
    let limits = RateLimitLayer::builder()
        .backend(support::still_memory())
        .default_policy(Policy::default_api())
        .route_method(Method::POST, "/auth/login", Policy::auth())
        .deadline(DEADLINE)
        .build()
        .unwrap()
        .on_rejection(ProblemJson::new().type_uri("https://example.com/problems/rate-limited"));
    let app = Router::new()
        .route("/auth/login", post(|| async { "welcome" }))
        .layer(limits);
    let login = "/auth/login";
    for _ in 0..5 {
        let sent = send(&app, Method::POST, login).await;
        assert_eq!(sent.status, StatusCode::OK);
        assert_eq!(sent.body, "welcome");
    }

    let sent = send(&app, Method::POST, login).await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        sent.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let retry = headers::retry_after(&sent.headers);
    let doc: serde_json::Value = serde_json::from_str(&sent.body)
        .unwrap_or_else(|e| panic!("{:?} is not JSON: {e}", sent.body));
    let object = doc.as_object().expect("a JSON object");
    let mut members: Vec<&str> = object.keys().map(String::as_str).collect();
    members.sort_unstable();
    assert_eq!(
        members,
        ["detail", "retry_after", "status", "title", "type"]
    );
    assert_eq!(doc["type"], "https://example.com/problems/rate-limited");
    assert_eq!(doc["title"], "Too Many Requests");
    assert_eq!(doc["status"], 429);
    assert_eq!(
        doc["detail"],
        format!("rate limit exceeded for policy auth; retry in {retry} s")
    );
    assert_eq!(doc["retry_after"], retry, "same value as Retry-After");
    assert_eq!(state(&sent), ("auth".to_owned(), 0));

    // A gRPC call (by content type) still gets a trailers-only response.
    let sent = web::call(
        &app,
        Method::POST,
        login,
        PEER,
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(sent.status, StatusCode::OK, "gRPC errors are HTTP 200");
    assert_eq!(sent.headers[header::CONTENT_TYPE], "application/grpc");
    assert_eq!(sent.headers["grpc-status"], "8");
    assert!(sent.body.is_empty(), "{:?}", sent.body);
    let pushback: u64 = sent.headers["grpc-retry-pushback-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60_000).contains(&pushback));
    let message = sent.headers["grpc-message"].to_str().unwrap();
    assert!(
        message.starts_with("rate limit exceeded for policy auth"),
        "{message}"
    );
}
