//! A tonic gRPC server (`helloworld.Greeter/SayHello`) with per-method rate
//! limiting.
//!
//! ```text
//! cargo run --example tonic --features tonic                                   # in-memory backend
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example tonic --features tonic  # shared limits in Redis
//! ```
//!
//! `SayHello` is limited to 5 calls per minute per peer IP; the 6th gets
//! `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`. Try it with
//! `grpcurl -plaintext -import-path examples/proto -proto helloworld.proto
//! -d '{"name":"you"}' 127.0.0.1:50051 helloworld.Greeter/SayHello`.
//!
//! Environment: `BIND` (default `127.0.0.1:50051`), `REDIS_URL`, `REDIS_CLUSTER` or
//! `REDIS_SENTINEL` (unset: memory; see `examples/common/env.rs`).
//! The peer IP comes from tonic's `TcpConnectInfo`, read by `PeerIp` with this
//! crate's `tonic` feature. The service code is in `examples/common/greeter.rs`;
//! the protobuf code in `examples/proto/helloworld.rs` is generated (no build.rs).

#[path = "common/env.rs"]
mod env;
#[path = "common/greeter.rs"]
mod greeter;

use tower_redis_ratelimit::RateLimitLayerBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    env::init_tracing();

    let policy = greeter::say_hello_policy();
    let limits = greeter::limits(
        env::backend_from_env()?,
        policy,
        RateLimitLayerBuilder::DEFAULT_DEADLINE,
    )?;

    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:50051".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("listening on http://{} (gRPC)", listener.local_addr()?);
    greeter::serve(listener, limits, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
