// tonic's body cannot be made from a `String`, so the default rejection does
// not fit behind `tonic::transport::Server`: the error must say to use
// `GrpcRejection`.
// The compiler must say (each `//~ ` line, see tests/compile_fail.rs):
//~ `DefaultRejection` cannot make a rejection response with body type `tonic::body::Body`
//~ this rejection cannot build a `Response<tonic::body::Body>`
//~ call `.on_rejection(GrpcRejection)` on the layer you give `tonic::transport::Server::builder().layer(..)`
//~ for a closure, use `layer.reject_fn(|rejection| ..)`, which infers its argument type and the body type
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tower_redis_ratelimit::http::{Request, Response};
use tower_redis_ratelimit::{Policy, RateLimitLayer};

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
        .build()?;
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
