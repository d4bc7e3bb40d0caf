// The tonic case done right: `.on_rejection(GrpcRejection)` makes the layer
// fit behind `tonic::transport::Server` (see ../tonic_without_grpc_rejection.rs).
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tower_redis_ratelimit::http::{Request, Response};
use tower_redis_ratelimit::{GrpcRejection, Policy, RateLimitLayer};

#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "echo.Echo";
}

impl Service<Request<Body>> for Echo {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        ready(Ok(Response::new(Body::empty())))
    }
}

async fn serve(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let limits = RateLimitLayer::builder()
        .default_policy(Policy::default_api())
        .build()?
        .on_rejection(GrpcRejection);
    tonic::transport::Server::builder()
        .layer(limits)
        .add_service(Echo)
        .serve(addr)
        .await?;
    Ok(())
}

fn main() {
    let _ = serve;
}
