//! Configurations that could never do what they say are `ConfigError`s that
//! say what to write instead: axum 0.7 route syntax (checked against axum
//! 0.8 itself, which panics on it), two policies on one pattern, two
//! different policies with one name, and a layer with no policy at all.

use std::panic::{AssertUnwindSafe, catch_unwind};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Method, Request, StatusCode};
use tower::ServiceExt;
use tower_redis_ratelimit::{ConfigError, Policy, Quota, RateLimitLayer, RouteError};

fn build_with_route(pattern: &str) -> Result<RateLimitLayer, ConfigError> {
    RateLimitLayer::builder()
        .default_policy(Policy::default_api())
        .route(pattern, Policy::auth())
        .build()
}

/// Whether axum 0.8 accepts `pattern` as a route.
fn axum_accepts(pattern: &str) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = catch_unwind(AssertUnwindSafe(|| {
        let _ = Router::<()>::new().route(pattern, get(|| async { "ok" }));
    }))
    .is_ok();
    std::panic::set_hook(hook);
    ok
}

#[tokio::test]
async fn axum_07_syntax_is_refused_with_the_08_spelling() {
    for (old, new, path) in [
        ("/users/:id", "/users/{id}", "/users/7"),
        (
            "/users/:id/posts/:post",
            "/users/{id}/posts/{post}",
            "/users/7/posts/9",
        ),
        ("/files/*path", "/files/{*path}", "/files/a/b.txt"),
        ("/:tenant/*", "/{tenant}/{*rest}", "/acme/x/y"),
    ] {
        // axum 0.8 itself refuses the old spelling...
        assert!(!axum_accepts(old), "axum 0.8 accepts {old}");
        let err = build_with_route(old).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Route(RouteError::OldSyntax {
                pattern: old.to_owned(),
                suggestion: new.to_owned(),
            })
        );
        let message = err.to_string();
        assert!(message.contains(&format!("write {new:?}")), "{message}");
        // ...and the suggestion is a pattern both accept, which matches the
        // path the old one was meant for, in axum and in the layer.
        assert!(axum_accepts(new), "{new}");
        let layer = build_with_route(new).unwrap();
        let app = Router::new()
            .route(new, get(|| async { "ok" }))
            .layer(layer);
        let request = Request::builder()
            .uri(path)
            .extension(std::net::SocketAddr::from(([192, 0, 2, 1], 4000)))
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{new} {path}");
        assert_eq!(
            response.headers()["ratelimit-policy"],
            "\"auth\";q=5;w=60",
            "the route's policy applies to {path}"
        );
    }
    // `:` and `*` inside a segment are literal text, for axum and the layer.
    for literal in ["/a:b", "/v1/files*", "/x/y:z"] {
        assert!(axum_accepts(literal), "{literal}");
        build_with_route(literal).unwrap();
    }
}

/// From a configuration file, the same mistake names its field too, and
/// keeps the builder's error (with the axum 0.8 spelling) as its source.
#[cfg(feature = "serde")]
#[test]
fn axum_07_syntax_in_a_configuration_file_names_its_field() {
    let text = "[policies.api]\nquotas = [\"1/s\"]\n\
                [[routes]]\npath = \"/health\"\npolicy = \"api\"\n\
                [[routes]]\npath = \"/users/:id\"\nmethod = \"GET\"\npolicy = \"api\"\n";
    let config =
        tower_redis_ratelimit::Config::from_deserializer(text.parse::<toml::Table>().unwrap())
            .unwrap();
    let err = config.build().unwrap_err();
    let ConfigError::File(file) = &err else {
        panic!("not located in the file: {err:?}");
    };
    assert_eq!(file.path(), "routes[1].path");
    assert_eq!(
        file.error(),
        Some(&ConfigError::Route(RouteError::OldSyntax {
            pattern: "/users/:id".to_owned(),
            suggestion: "/users/{id}".to_owned(),
        }))
    );
    assert!(
        err.to_string()
            .starts_with("routes[1].path: route \"/users/:id\" uses the axum 0.7 syntax"),
        "{err}"
    );
    assert!(err.to_string().ends_with("write \"/users/{id}\""), "{err}");
}

#[test]
fn a_second_policy_on_one_pattern_is_refused() {
    let err = RateLimitLayer::builder()
        .route("/login", Policy::auth())
        .route("/login", Policy::new("strict").quota(Quota::per_minute(1)))
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Route(RouteError::Duplicate { pattern, first }) if pattern == "/login" && first == "/login"),
        "{err:?}"
    );
    // Per method, the same pattern is two rules, both live.
    RateLimitLayer::builder()
        .route("/login", Policy::auth())
        .route_method(
            Method::POST,
            "/login",
            Policy::new("strict").quota(Quota::per_minute(1)),
        )
        .build()
        .unwrap();
}

#[test]
fn one_name_for_two_policies_names_both_routes() {
    let err = RateLimitLayer::builder()
        .default_policy(Policy::default_api())
        .route("/a", Policy::new("shared").quota(Quota::per_minute(5)))
        .route_method(
            Method::PUT,
            "/b",
            Policy::new("shared").quota(Quota::per_minute(5)),
        )
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "two different policies are named `shared` (route \"/a\" and route PUT \"/b\"), so their \
         counters would collide: to share one limit, build the policy once and pass clones of \
         that one value (`let policy = Policy::new(\"shared\")...;`, then \
         `.route(.., policy.clone())`); otherwise give each policy its own name"
    );
    // Which is what works.
    let shared = Policy::new("shared").quota(Quota::per_minute(5));
    RateLimitLayer::builder()
        .route("/a", shared.clone())
        .route_method(Method::PUT, "/b", shared)
        .build()
        .unwrap();
}

#[test]
fn a_layer_without_a_policy_is_refused() {
    for builder in [
        RateLimitLayer::builder(),
        RateLimitLayer::builder()
            .exempt("/health")
            .exempt("/metrics"),
    ] {
        let err = builder.build().unwrap_err();
        assert_eq!(err, ConfigError::NoPolicy);
        assert!(
            err.to_string()
                .contains("`.default_policy(Policy::default_api())`"),
            "{err}"
        );
    }
}
