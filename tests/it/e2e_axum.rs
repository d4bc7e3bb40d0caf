//! End to end: an axum 0.8 server on a loopback port, the layer keyed by the
//! peer IP from `ConnectInfo`, a real HTTP client, and a real Redis (the main
//! scenario also runs on the memory backend). Every `RateLimit` and
//! `RateLimit-Policy` header seen is parsed as an RFC 8941 structured field.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, Method, StatusCode, header};
use tower_redis_ratelimit::{
    Backend, HeaderStyle, MemoryBackend, Policy, RateLimitLayer, RateLimitLayerBuilder,
    RedisBackend, Rejection,
};

use crate::support::headers::{assert_no_rate_limit_headers, ietf, retry_after};
use crate::support::web::{client, send, serve};

use crate::support;

/// Generous: these tests check decisions and headers, not latency, and a
/// missed deadline would fail open and drop the headers.
const DEADLINE: Duration = Duration::from_secs(2);

/// The example's configuration on `backend`.
fn builder(backend: impl Backend) -> RateLimitLayerBuilder {
    RateLimitLayer::builder()
        .backend(backend)
        .default_policy(Policy::default_api())
        .route_method(Method::POST, "/auth/login", Policy::auth())
        .exempt("/health")
        .deadline(DEADLINE)
}

/// A Redis backend on the shared server, with a unique prefix.
fn redis_backend(test: &str) -> RedisBackend {
    support::redis_backend(&support::redis_url(), test)
}

fn routes() -> Router {
    Router::new()
        .route("/api/hello", get(|| async { "hello" }))
        .route("/auth/login", post(|| async { "welcome" }))
        .route("/health", get(|| async { "ok" }))
}

/// The example app: auth 5/min exact with a 429 on the 6th, api 100/min with
/// its policy header, health never limited.
async fn main_scenario(backend: impl Backend) {
    let base = serve(routes().layer(builder(backend).build().unwrap())).await;
    let client = client();
    let login = format!("{base}/auth/login");

    for i in 0..5 {
        let sent = send(&client, Method::POST, &login).await;
        assert_eq!(sent.status, StatusCode::OK, "login {}", i + 1);
        assert_eq!(sent.body, "welcome");
        assert!(!sent.headers.contains_key(header::RETRY_AFTER));
        let (p, s) = ietf(&sent.headers).expect("admitted login carries RateLimit headers");
        assert_eq!(p.name, "auth");
        assert_eq!((p.param("q"), p.param("w")), (5, 60));
        assert_eq!(s.name, "auth");
        assert_eq!(s.param("r"), 4 - i, "remaining decreases one per login");
        assert!((1..=60).contains(&s.param("t")), "{:?}", s);
    }
    let sent = send(&client, Method::POST, &login).await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);
    assert_ne!(sent.body, "welcome");
    let retry = retry_after(&sent.headers);
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let (p, s) = ietf(&sent.headers).expect("429 carries RateLimit headers");
    assert_eq!(
        (p.name.as_str(), p.param("q"), p.param("w")),
        ("auth", 5, 60)
    );
    assert_eq!((s.name.as_str(), s.param("r")), ("auth", 0));
    assert!((1..=60).contains(&s.param("t")));
    assert_eq!(
        sent.headers["ratelimit-policy"], "\"auth\";q=5;w=60",
        "exact serialisation"
    );

    // The api policy is separate from auth and counts down on its own.
    let hello = format!("{base}/api/hello");
    let mut remaining = Vec::new();
    for _ in 0..10 {
        let sent = send(&client, Method::GET, &hello).await;
        assert_eq!(sent.status, StatusCode::OK);
        assert_eq!(sent.body, "hello");
        assert_eq!(sent.headers["ratelimit-policy"], "\"api\";q=100;w=60");
        let (_, s) = ietf(&sent.headers).unwrap();
        assert_eq!(s.name, "api");
        assert!((1..=120).contains(&s.param("t")), "{:?}", s);
        remaining.push(s.param("r"));
    }
    assert_eq!(remaining[0], 99, "{remaining:?}");
    // A fixed-window boundary between two requests may keep r equal once.
    assert!(remaining.windows(2).all(|w| w[1] <= w[0]), "{remaining:?}");
    assert!(remaining[9] <= 91, "{remaining:?}");

    // Health: exempt, never limited, never any rate-limit header.
    let health = format!("{base}/health");
    for _ in 0..20 {
        let sent = send(&client, Method::GET, &health).await;
        assert_eq!(sent.status, StatusCode::OK);
        assert_eq!(sent.body, "ok");
        assert_no_rate_limit_headers(&sent.headers);
    }

    // Login is still limited after all that.
    let sent = send(&client, Method::POST, &login).await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn example_app_on_redis() {
    let backend = redis_backend("e2e_main");
    main_scenario(backend).await;
}

#[tokio::test]
async fn example_app_on_memory() {
    main_scenario(MemoryBackend::new()).await;
}

/// Spellings of `/auth/login` that axum does not route (404/405) still count
/// against, and are denied by, the auth bucket: the layer normalises paths.
#[tokio::test]
async fn path_variants_share_the_auth_bucket() {
    let backend = redis_backend("e2e_paths");
    let base = serve(routes().layer(builder(backend).build().unwrap())).await;
    let client = client();

    let mut expected_r = 4;
    // Two real logins, then three variants, draining the same 5-per-minute bucket.
    for path in [
        "/auth/login",
        "/auth/login",
        "//auth/login",
        "/auth/login/",
        "/auth/%6Cogin",
    ] {
        let sent = send(&client, Method::POST, &format!("{base}{path}")).await;
        assert_ne!(sent.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        let (p, s) = ietf(&sent.headers).unwrap_or_else(|| panic!("{path}: no headers"));
        assert_eq!(
            (p.name.as_str(), s.name.as_str()),
            ("auth", "auth"),
            "{path}"
        );
        assert_eq!(s.param("r"), expected_r, "{path}");
        expected_r -= 1;
    }
    // The canonical path is exhausted by the variants' consumption...
    let sent = send(&client, Method::POST, &format!("{base}/auth/login")).await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);
    // ...and every variant is denied too.
    for path in [
        "//auth/login",
        "/auth/login/",
        "/auth//login",
        "/auth/%6Cogin",
        "/auth/login;x=1",
    ] {
        let sent = send(&client, Method::POST, &format!("{base}{path}")).await;
        assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert!(retry_after(&sent.headers) >= 1, "{path}");
        let (p, _) = ietf(&sent.headers).unwrap();
        assert_eq!(p.name, "auth", "{path}");
    }
    // The auth rule is POST-only: GET /auth/login falls to the default policy.
    let sent = send(&client, Method::GET, &format!("{base}/auth/login")).await;
    assert_eq!(sent.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(ietf(&sent.headers).unwrap().0.name, "api");
}

/// `HeaderStyle::Legacy`: X-RateLimit-* instead of the IETF headers.
#[tokio::test]
async fn legacy_headers() {
    let backend = redis_backend("e2e_legacy");
    let layer = builder(backend)
        .headers(HeaderStyle::Legacy)
        .build()
        .unwrap();
    let base = serve(routes().layer(layer)).await;
    let client = client();
    let int = |headers: &HeaderMap, name: &str| -> u64 {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name}: {headers:?}"))
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };

    let mut last = u64::MAX;
    for _ in 0..3 {
        let sent = send(&client, Method::GET, &format!("{base}/api/hello")).await;
        assert_eq!(sent.status, StatusCode::OK);
        assert!(!sent.headers.contains_key("ratelimit"));
        assert!(!sent.headers.contains_key("ratelimit-policy"));
        assert_eq!(int(&sent.headers, "x-ratelimit-limit"), 100);
        let remaining = int(&sent.headers, "x-ratelimit-remaining");
        assert!(remaining < 100 && remaining <= last);
        last = remaining;
        assert!((1..=120).contains(&int(&sent.headers, "x-ratelimit-reset")));
    }
    assert_eq!(last, 97);

    for i in 0..6 {
        let sent = send(&client, Method::POST, &format!("{base}/auth/login")).await;
        assert!(!sent.headers.contains_key("ratelimit"));
        assert_eq!(int(&sent.headers, "x-ratelimit-limit"), 5);
        assert_eq!(
            int(&sent.headers, "x-ratelimit-remaining"),
            4u64.saturating_sub(i)
        );
        if i < 5 {
            assert_eq!(sent.status, StatusCode::OK);
        } else {
            assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);
            let retry = retry_after(&sent.headers);
            assert!((1..=60).contains(&retry));
            assert!(int(&sent.headers, "x-ratelimit-reset") >= 1);
        }
    }
    let sent = send(&client, Method::GET, &format!("{base}/health")).await;
    assert_no_rate_limit_headers(&sent.headers);
}

/// A custom JSON rejection still gets `Retry-After` and the rate-limit
/// headers from the layer.
#[tokio::test]
async fn custom_json_rejection_gets_retry_after() {
    let backend = redis_backend("e2e_custom");
    let layer = builder(backend)
        .build()
        .unwrap()
        .on_rejection(|r: &Rejection<'_>| -> Response {
            let body: HashMap<&str, String> = HashMap::from([
                ("error", "rate_limited".to_owned()),
                ("policy", r.policy.name().to_owned()),
                ("path", r.request.uri.path().to_owned()),
            ]);
            (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response()
        });
    let base = serve(routes().layer(layer)).await;
    let client = client();

    for _ in 0..5 {
        let sent = send(&client, Method::POST, &format!("{base}/auth/login")).await;
        assert_eq!(sent.status, StatusCode::OK);
    }
    let sent = send(&client, Method::POST, &format!("{base}/auth/login")).await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(sent.headers[header::CONTENT_TYPE], "application/json");
    let body: HashMap<String, String> = axum::Json::from_bytes(sent.body.as_bytes())
        .map(|axum::Json(b)| b)
        .unwrap_or_else(|e| panic!("body {:?} is not JSON: {e}", sent.body));
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["policy"], "auth");
    assert_eq!(body["path"], "/auth/login");
    let retry = retry_after(&sent.headers);
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let (p, s) = ietf(&sent.headers).expect("the layer adds RateLimit headers");
    assert_eq!((p.name.as_str(), s.param("r")), ("auth", 0));

    // Admitted requests are unaffected by the custom rejection.
    let sent = send(&client, Method::GET, &format!("{base}/api/hello")).await;
    assert_eq!(sent.status, StatusCode::OK);
    assert_eq!(sent.body, "hello");
}
