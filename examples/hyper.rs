//! A plain hyper 1.x server with distributed rate limiting, no framework.
//!
//! ```text
//! cargo run --example hyper                                   # in-memory backend
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example hyper  # shared limits in Redis
//! ```
//!
//! - `GET /api/hello`: `Policy::default_api()` (100 per minute per client IP)
//! - `POST /auth/login`: `Policy::auth()` (5 per minute per client IP, exact)
//! - `GET /health`: exempt
//! - anything else: 404
//!
//! Environment: `BIND` (default `127.0.0.1:3001`), `REDIS_URL`, `REDIS_CLUSTER` or
//! `REDIS_SENTINEL` (unset: memory; see `examples/common/env.rs`).
//! The app, the tower stack and the accept loop are in
//! `examples/common/hyper_app.rs`: the peer `SocketAddr` is inserted as a
//! request extension so that `PeerIp` finds it, and
//! `hyper_util::service::TowerToHyperService` turns the tower service into a
//! hyper one.

#[path = "common/env.rs"]
mod env;
#[path = "common/hyper_app.rs"]
mod hyper_app;

use tower_redis_ratelimit::RateLimitLayerBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    env::init_tracing();

    let limits = hyper_app::limits(
        env::backend_from_env()?,
        RateLimitLayerBuilder::DEFAULT_DEADLINE,
    )?;

    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3001".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    tokio::select! {
        () = hyper_app::serve(listener, limits) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
