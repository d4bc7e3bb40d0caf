//! The crate's main job: an axum server with distributed rate limiting.
//!
//! ```text
//! cargo run --example axum --features metrics                # in-memory backend
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example axum --features metrics
//! CONFIG=examples/limits.toml cargo run --example axum --features metrics,serde
//! ```
//!
//! - `GET /api/hello`: `Policy::default_api()` (100 per minute per client IP)
//! - `POST /auth/login`: `Policy::auth()` (5 per minute per client IP, exact)
//! - `POST /auth/session`: 200 with the header `x-password: letmein`, else
//!   401; policy "session": 3 failed attempts per minute per client IP
//!   (exact; a successful login is refunded after its response, so only
//!   failures count)
//! - `POST /api/generate`: answers with `x-tokens-used` set to the request's
//!   `x-tokens` header (default 100); policy "tokens": 1 000 tokens per
//!   minute per client IP, charged from that response header (a request is
//!   admitted while the client is within its budget; a large answer takes
//!   it into debt, and later requests wait, with an exact `Retry-After`)
//! - `GET /health`: exempt
//! - `GET /metrics`: exempt; the limiter's metrics in Prometheus' text format
//!   (with the `metrics` feature; without it the page has none of them)
//!
//! Environment: `BIND` (default `127.0.0.1:3000`); `CONFIG` (a TOML file of
//! policies, routes, exemptions and backend, feature `serde`; unset: the
//! limits above); `REDIS_URL` (`redis://` or `rediss://`), `REDIS_CLUSTER`
//! (comma-separated nodes) or `REDIS_SENTINEL` (comma-separated sentinels,
//! with `REDIS_SENTINEL_MASTER`), and `REDIS_CA_CERT` (a PEM file) for a
//! private CA: they override the file's backend (unset: the file's, else
//! memory). All of them: `examples/common/env.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tower_redis_ratelimit::metrics::BACKEND_DURATION_SECONDS;
use tower_redis_ratelimit::{Algorithm, Policy, Quota, RateLimitLayer};

#[path = "common/config.rs"]
mod config;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    // The recorder first, so that the layer built below describes its
    // metrics to it. It only renders: `/metrics` serves its text.
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(BACKEND_DURATION_SECONDS.to_owned()),
            &[
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            ],
        )?
        .install_recorder()?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    if !cfg!(feature = "metrics") {
        println!("built without the `metrics` feature: /metrics shows no rate-limit metrics");
    }

    let defaults = RateLimitLayer::builder()
        .default_policy(Policy::default_api())
        .route_method(Method::POST, "/auth/login", Policy::auth())
        .route_method(Method::POST, "/auth/session", session_policy())
        .route_method(Method::POST, "/api/generate", tokens_policy())
        .exempt("/health")
        .exempt("/metrics");
    let (limits, description) = config::limits(defaults)?;
    println!("{description}");

    let app = Router::new()
        .route("/api/hello", get(|| async { "hello\n" }))
        .route("/auth/login", post(|| async { "welcome\n" }))
        .route("/auth/session", post(session))
        .route("/api/generate", post(generate))
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
        .layer(limits);

    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

/// Brute-force protection that counts failures, not logins: 3 failed
/// attempts per minute per client IP; a response other than 401 gives its
/// unit back (concurrent attempts are still bounded by 3: each counts until
/// its response).
fn session_policy() -> Policy {
    Policy::new("session")
        .quota(Quota::per_minute(3))
        .algorithm(Algorithm::SlidingLog)
        .count_only_status([401])
}

/// A stand-in for a password check.
async fn session(headers: HeaderMap) -> (StatusCode, &'static str) {
    if headers.get("x-password").is_some_and(|p| p == "letmein") {
        (StatusCode::OK, "session started\n")
    } else {
        (StatusCode::UNAUTHORIZED, "wrong password\n")
    }
}

/// A token budget: 1 000 tokens per minute per client IP, charged after
/// the response from its `x-tokens-used` header.
fn tokens_policy() -> Policy {
    Policy::new("tokens")
        .quota(Quota::per_minute(1_000))
        .algorithm(Algorithm::Gcra)
        .charge_from_header(HeaderName::from_static("x-tokens-used"))
}

/// A stand-in for a language model: reports as many tokens used as the
/// request's `x-tokens` header asks (default 100).
async fn generate(headers: HeaderMap) -> (HeaderMap, &'static str) {
    let tokens = headers
        .get("x-tokens")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(100);
    let mut answer = HeaderMap::new();
    answer.insert("x-tokens-used", HeaderValue::from(tokens));
    (answer, "generated\n")
}
