//! The `helloworld.Greeter` service and its rate limits, shared by
//! `examples/tonic.rs` and `tests/it/grpc_tonic.rs` (each includes this file as a
//! module with `#[path]`).

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tower_redis_ratelimit::{
    Algorithm, Backend, ConfigError, GrpcRejection, Policy, Quota, RateLimitLayer,
};

/// The code generated from `examples/proto/helloworld.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs, dead_code)]
pub mod pb {
    include!("../proto/helloworld.rs");
}

use pb::greeter_server::{Greeter, GreeterServer};
use pb::{HelloReply, HelloRequest};

/// The gRPC path of `SayHello`: `/<package>.<Service>/<Method>`. Per-method
/// policies are ordinary routes of the layer's route table.
pub const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// `SayHello`: 5 calls per minute per peer IP, exact (sliding log).
pub fn say_hello_policy() -> Policy {
    Policy::new("say_hello")
        .quota(Quota::per_minute(5))
        .algorithm(Algorithm::SlidingLog)
}

/// The layer: `policy` on `SayHello`, other methods unlimited. tonic's body
/// type cannot be made from a `String`, so rejections are [`GrpcRejection`]s
/// (trailers-only `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`).
pub fn limits(
    backend: impl Backend,
    policy: Policy,
    deadline: Duration,
) -> Result<RateLimitLayer<GrpcRejection>, ConfigError> {
    Ok(RateLimitLayer::builder()
        .backend(backend)
        .route(SAY_HELLO, policy)
        .deadline(deadline)
        .build()?
        .on_rejection(GrpcRejection))
}

/// Answers `SayHello` with a greeting.
#[derive(Debug, Default, Clone, Copy)]
pub struct MyGreeter;

#[tonic::async_trait]
impl Greeter for MyGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(HelloReply {
            message: format!("Hello {name}!"),
        }))
    }
}

/// Serves the Greeter behind `limits` on `listener` until `shutdown` resolves.
///
/// tonic adds each connection's `TcpConnectInfo` to its requests; with this
/// crate's `tonic` feature `PeerIp` reads the peer address from it.
pub async fn serve(
    listener: TcpListener,
    limits: RateLimitLayer<GrpcRejection>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .layer(limits)
        .add_service(GreeterServer::new(MyGreeter))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}
