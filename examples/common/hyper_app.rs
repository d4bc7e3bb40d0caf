//! The plain-hyper app and its rate limits, shared by `examples/hyper.rs` and
//! `tests/it/hyper_server.rs` (each includes this file as a module with `#[path]`).
//!
//! Same routes and policies as `examples/axum.rs`: `GET /api/hello`
//! (`Policy::default_api()`), `POST /auth/login` (`Policy::auth()`), `GET
//! /health` (exempt), 404 for anything else (405 for a known path with another
//! method).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_redis_ratelimit::{Backend, ConfigError, Policy, RateLimitLayer};

/// The response body: `Full<Bytes>` is `From<String>`, so the default
/// rejection can write its plain-text 429.
pub type Body = Full<Bytes>;

/// The example's limits on `backend`.
pub fn limits(backend: impl Backend, deadline: Duration) -> Result<RateLimitLayer, ConfigError> {
    RateLimitLayer::builder()
        .backend(backend)
        .default_policy(Policy::default_api())
        .route_method(Method::POST, "/auth/login", Policy::auth())
        .exempt("/health")
        .deadline(deadline)
        .build()
}

/// The application: a `service_fn` handler, unaware of rate limiting (generic
/// over the body, which it never reads).
pub async fn app<B>(request: Request<B>) -> Result<Response<Body>, Infallible> {
    let text = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    let (allowed, allow) = match request.uri().path() {
        "/api/hello" | "/health" => (Method::GET, "GET, HEAD"),
        "/auth/login" => (Method::POST, "POST"),
        _ => return Ok(text(StatusCode::NOT_FOUND, "not found\n")),
    };
    let method = request.method();
    if method != allowed && !(allowed == Method::GET && method == Method::HEAD) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static(allow));
        return Ok(response);
    }
    Ok(match request.uri().path() {
        "/api/hello" => text(StatusCode::OK, "hello\n"),
        "/auth/login" => text(StatusCode::OK, "welcome\n"),
        _ => text(StatusCode::OK, "ok\n"),
    })
}

/// Accepts connections on `listener` forever, serving HTTP/1.1 and h2c.
///
/// Each connection gets its own tower stack: a `map_request` that inserts the
/// peer `SocketAddr` as a request extension (read by `PeerIp`), the
/// rate-limit layer, then the app; `TowerToHyperService` adapts it for hyper.
pub async fn serve(listener: TcpListener, limits: RateLimitLayer) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // E.g. out of file descriptors: back off instead of spinning.
                eprintln!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = ServiceBuilder::new()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(peer);
                request
            })
            .layer(limits.clone())
            .service_fn(app);
        tokio::spawn(async move {
            let connection = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .await;
            if let Err(error) = connection {
                eprintln!("connection from {peer}: {error}");
            }
        });
    }
}
