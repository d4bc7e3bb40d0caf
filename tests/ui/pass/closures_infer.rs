// Every closure entry point infers its argument types: no `|parts: &Parts|`,
// no `|r: &Rejection<'_>|`, no body type. Only this crate is imported for
// the types the closures use (`http` is re-exported, `Parts` through it).
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use tower_redis_ratelimit::http::request::Parts;
use tower_redis_ratelimit::http::{Response, StatusCode};
use tower_redis_ratelimit::key::Key;
use tower_redis_ratelimit::{Policy, Quota, RateLimitLayer};

fn tenant(parts: &Parts) -> Option<Key> {
    parts.headers.get("x-tenant").map(|v| Key::new(v.as_bytes()))
}

fn main() {
    let policy = Policy::new("api")
        .quota(Quota::per_minute(100))
        .key_fn(|parts| parts.headers.get("x-api-key").map(|v| Key::new(v.as_bytes())))
        .cost_fn(|parts| if parts.method == "POST" { 5 } else { 1 });
    let layer = RateLimitLayer::builder()
        .default_policy(policy)
        .route("/t", Policy::auth().key_fn(tenant))
        .build()
        .unwrap()
        .reject_fn(|rejection| {
            let mut response = Response::new(Body::from(rejection.policy.name().to_owned()));
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response
        });
    let _app: Router = Router::new()
        .route("/", get(|| async { "hi" }))
        .layer(layer);
}
