//! Security: path spellings. Spellings of a limited path (`//`, `/./`,
//! `%6C`, `;params`, trailing slash, case) that a lenient app routes to the
//! same handler are limited by the same policy.
//!
//! That each of these spellings reads as the limited route is checked in the
//! crate too (`src/routes/path.rs`); dot segments that axum routes elsewhere
//! are in `security_dot_segments.rs`.
//!
//! Every backend is a real `RedisBackend`; the deadline is generous (2 s,
//! `support::security::DEADLINE`) so that a slow machine never turns into a
//! failed decision.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::headers::RATELIMIT;
use tower_redis_ratelimit::{FailureMode, Policy, Quota, RateLimitLayer};

use crate::support::redis_backend;
use crate::support::security::DEADLINE;

use crate::support;

/// How a lenient application routes: decodes every `%XX`, drops `;params`,
/// empty and `.` segments, resolves `..`, ignores case. Deliberately written
/// independently of the crate's `normalize_path`.
fn lenient_route(path: &str) -> Vec<String> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            decoded.push((h * 16 + l) as u8);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8_lossy(&decoded).to_lowercase();
    let mut out: Vec<String> = Vec::new();
    for segment in decoded.split('/') {
        match segment.split(';').next().unwrap() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_owned()),
        }
    }
    out
}

/// A request with `path` exactly as written (no normalisation on the way).
fn raw_request(method: Method, path: &'static str) -> Request<String> {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(PathAndQuery::from_static(path));
    let uri = Uri::from_parts(parts).unwrap();
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(String::new())
        .unwrap();
    request
        .extensions_mut()
        .insert("203.0.113.50:40000".parse::<SocketAddr>().unwrap());
    request
}

/// `POST /auth/login` is limited to 5 per minute. A lenient app serves the
/// login handler for a dozen spellings of that path; sent three times each,
/// the handler runs exactly 5 times.
#[tokio::test]
async fn path_variants_cannot_dodge_the_login_policy() {
    const VARIANTS: [&str; 16] = [
        "/auth/login",
        "//auth/login",
        "/auth/login/",
        "/auth/./login",
        "/auth//login",
        "/auth/%6Cogin",
        "/auth/%6cogin",
        "/%61uth/%6C%6F%67%69%6E",
        "/auth/login;x=1",
        "/auth;v=2/login",
        "/AUTH/login",
        "/Auth/LOGIN",
        "/x/../auth/login",
        "/auth/login/.",
        "/auth/login?next=/home",
        "///auth///login///",
    ];
    let url = support::redis_url();
    let auth = Policy::auth().failure_mode(FailureMode::Closed);
    let layer = RateLimitLayer::builder()
        .backend(redis_backend(&url, "bypass"))
        .default_policy(
            Policy::new("generous")
                .quota(Quota::per_minute(10_000))
                .failure_mode(FailureMode::Closed),
        )
        .route_method(Method::POST, "/auth/login", auth)
        .case_insensitive_paths(true)
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let logins = Arc::new(AtomicUsize::new(0));
    let app = {
        let logins = Arc::clone(&logins);
        tower::service_fn(move |request: Request<String>| {
            let logins = Arc::clone(&logins);
            async move {
                let login = request.method() == Method::POST
                    && lenient_route(request.uri().path()) == ["auth", "login"];
                if login {
                    logins.fetch_add(1, Ordering::SeqCst);
                }
                let body = if login { "welcome" } else { "other" };
                Ok::<_, Infallible>(Response::new(body.to_owned()))
            }
        })
    };
    let service = layer.layer(app);

    let want = ["auth".to_owned(), "login".to_owned()];
    let mut admitted = 0;
    let mut denied = 0;
    for round in 0..3 {
        for variant in VARIANTS {
            let request = raw_request(Method::POST, variant);
            let path = request.uri().path().to_owned();
            assert_eq!(path, variant.split('?').next().unwrap(), "sent raw");
            assert_eq!(lenient_route(&path), want, "the app serves login at {path}");
            let response = service.clone().oneshot(request).await.unwrap();
            match response.status() {
                StatusCode::OK => {
                    assert_eq!(response.body(), "welcome");
                    admitted += 1;
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(
                        response.headers()["ratelimit-policy"],
                        "\"auth\";q=5;w=60",
                        "{variant} (round {round}) is limited by the auth policy"
                    );
                    denied += 1;
                }
                other => panic!("{variant}: unexpected {other}"),
            }
        }
    }
    assert_eq!(
        logins.load(Ordering::SeqCst),
        5,
        "the login handler ran 5 times"
    );
    assert_eq!((admitted, denied), (5, 3 * VARIANTS.len() - 5));

    // Other paths and methods go to the generous default, not to auth.
    for (method, path) in [
        (Method::GET, "/auth/login"),
        (Method::POST, "/auth/login2"),
        (Method::POST, "/auth/log%69n2"),
        (Method::POST, "/auth"),
    ] {
        let response = service
            .clone()
            .oneshot(raw_request(method, path))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.body(), "other");
        assert!(
            response.headers()[RATELIMIT]
                .to_str()
                .unwrap()
                .starts_with("\"generous\""),
            "{path}"
        );
    }
    assert_eq!(logins.load(Ordering::SeqCst), 5);
}
