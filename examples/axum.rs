//! The crate's main job: an axum server with distributed rate limiting.
//!
//! ```text
//! cargo run --example axum                                   # in-memory backend
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example axum  # shared limits in Redis
//! ```
//!
//! - `GET /api/hello`: `Policy::default_api()` (100 per minute per client IP)
//! - `POST /auth/login`: `Policy::auth()` (5 per minute per client IP, exact)
//! - `GET /health`: exempt
//!
//! Environment: `BIND` (default `127.0.0.1:3000`), `REDIS_URL` (unset: memory).

use std::net::SocketAddr;

use axum::Router;
use axum::routing::{get, post};
use http::Method;
use tower_redis_ratelimit::backend::redact_url;
use tower_redis_ratelimit::{MemoryBackend, Policy, RateLimitLayer, RedisBackend};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let builder = RateLimitLayer::builder()
        .default_policy(Policy::default_api())
        .route_method(Method::POST, "/auth/login", Policy::auth())
        .exempt("/health");
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            println!("backend: redis at {}", redact_url(&url));
            builder.backend(RedisBackend::new(&url)?)
        }
        _ => {
            println!("backend: in-memory (set REDIS_URL to share limits through Redis)");
            builder.backend(MemoryBackend::new())
        }
    };
    let limits = builder.build()?;

    let app = Router::new()
        .route("/api/hello", get(|| async { "hello\n" }))
        .route("/auth/login", post(|| async { "welcome\n" }))
        .route("/health", get(|| async { "ok\n" }))
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
