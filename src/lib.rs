//! Distributed rate limiting for [tower] services — axum, tonic, hyper —
//! backed by Redis.
//!
//! Add one [`RateLimitLayer`]. For each request it picks a [`Policy`] (a
//! default, per-route ones, exempt routes), derives the client's [`Key`]
//! (peer IP, an API-key header, anything), and asks the [`Backend`] for a
//! [`Decision`]: with Redis, ONE atomic Lua script call that checks and
//! consumes every quota of the policy, on Redis' clock. Admitted requests get
//! `RateLimit-Policy`/`RateLimit` headers; denied ones a 429 with
//! `Retry-After` (gRPC: `RESOURCE_EXHAUSTED`). If Redis is slow or down, the
//! decision is abandoned after a short deadline and the policy's
//! [`FailureMode`] applies (open by default): a dead Redis never breaks the app.
//!
//! # Quick start
//!
//! ```
//! use axum::{Router, routing::{get, post}};
//! use tower_redis_ratelimit::{MemoryBackend, Policy, RateLimitLayer};
//!
//! # fn main() -> Result<(), tower_redis_ratelimit::ConfigError> {
//! let limits = RateLimitLayer::builder()
//!     .backend(MemoryBackend::new()) // or RedisBackend::new("redis://127.0.0.1")?
//!     .default_policy(Policy::default_api()) // 100/min per client IP
//!     .route("/auth/login", Policy::auth()) // 5/min, exact
//!     .exempt("/health")
//!     .build()?;
//!
//! let app: Router = Router::new()
//!     .route("/api/hello", get(|| async { "hello" }))
//!     .route("/auth/login", post(|| async { "welcome" }))
//!     .route("/health", get(|| async { "ok" }))
//!     .layer(limits);
//! // The limits are per client IP: serve with the peer address, or every client
//! // shares one bucket (logged at ERROR with this fix).
//! // axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! # Frameworks
//!
//! - **axum**: `Router::layer` limits every request, including those that end
//!   in the 404 fallback; `Router::route_layer` limits only requests that
//!   matched a route, so per-group layers (`.route_layer(...)` on merged
//!   routers) are an alternative to the layer's own route table.
//!   [`key::PerRoute`] keys by axum's `MatchedPath` (`/users/{id}`, one bucket
//!   per client and route rather than per id).
//! - **tonic**: `Server::builder().layer(layer.on_rejection(GrpcRejection))`
//!   (tonic's body cannot be made from a `String`); per-method policies are
//!   routes such as `/helloworld.Greeter/SayHello`; with feature `tonic`,
//!   [`key::PeerIp`] reads tonic's `TcpConnectInfo`. Denials are
//!   `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`.
//! - **hyper**: insert the connection's `SocketAddr` as a request extension
//!   and adapt the tower service with `hyper_util::service::TowerToHyperService`.
//!
//! The client identity per framework, for [`key::PeerIp`] (the default key):
//!
//! | framework | the peer address comes from |
//! |---|---|
//! | axum | `app.into_make_service_with_connect_info::<SocketAddr>()` |
//! | tonic | this crate's feature `tonic` (reads tonic's `TcpConnectInfo`) |
//! | hyper | `request.extensions_mut().insert(peer_addr)` per connection |
//!
//! Without it every client shares one bucket (logged at `ERROR`, once per
//! policy, with the fix); `Header::new("x-api-key").or(PeerIp::new())`
//! falls back from one identity to another.
//!
//! See `examples/` for a complete server of each.
//!
//! # Names
//!
//! tower has a rate limiter of its own, `tower::limit::{RateLimitLayer,
//! RateLimit}` (blocking in `poll_ready`, not `Clone`: unsuitable for axum).
//! This crate's service is named [`RateLimitService`] so that the two never
//! clash; its layer keeps the plain name [`RateLimitLayer`], the one users
//! write. If a module imports both layers, rename tower's
//! (`use tower::limit::RateLimitLayer as TowerRateLimitLayer;`) or refer to
//! this crate's by path (`tower_redis_ratelimit::RateLimitLayer`).
//!
//! [`Policy`] is builder and value at once: `policy.algorithm(Algorithm::..)`
//! sets, and the getters whose plain name the setter holds read with a
//! suffix (`algorithm_kind()`, `failure_mode_kind()`); the others are plain
//! (`name()`, `quotas()`, `missing_key()`).
//!
//! # Modules
//!
//! - [`policy`](Policy): quotas, algorithms, presets, failure modes.
//! - [`key`]: who the client is.
//! - [`backend`]: Redis and in-process counters.
//! - [`Admin`] (`layer.admin()`): check, peek at and reset a client's quotas
//!   without a request (jobs, websockets, queues, operators' tools).
//! - [`headers`]: the response headers.
//! - [`metrics`]: the metrics (feature `metrics`) and the tracing span of
//!   each decision.
//!
//! [tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations)]
#![deny(unsafe_code)]

mod access;
mod adjust;
mod admin;
mod algorithm;
pub mod backend;
mod blocked;
mod breaker;
pub mod clock;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub mod config;
mod decision;
mod error;
mod failure;
mod fleet;
mod future;
mod grpc;
pub mod headers;
pub mod key;
mod layer;
mod limiter;
pub mod metrics;
#[cfg(test)]
mod module_graph;
mod policy;
mod quota;
mod response;
mod routes;
mod service;
mod sharded;

pub use crate::access::AccessList;
pub use crate::admin::{Admin, AdminError};
pub use crate::backend::{
    Backend, ChargeFuture, CheckFuture, MemoryBackend, MemoryBackendBuilder, RedisBackend,
    RedisBackendBuilder, RefundFuture, ResetFuture,
};
pub use crate::breaker::CircuitBreaker;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub use crate::config::Config;
pub use crate::decision::{Decision, QuotaStatus, RejectReason, Ticket};
pub use crate::error::{BackendError, ConfigError, FileError, PolicyError, RouteError};
pub use crate::future::ResponseFuture;
pub use crate::headers::HeaderStyle;
pub use crate::key::{Key, KeyExtractor};
pub use crate::layer::{RateLimitLayer, RateLimitLayerBuilder};
pub use crate::policy::{Algorithm, FailureMode, MissingKey, Policy, Quota};
pub use crate::response::{DefaultRejection, GrpcRejection, OnRejection, ProblemJson, Rejection};
pub use crate::service::RateLimitService;
/// The `http` crate, whose types the API uses (`Request`, `Response`,
/// `HeaderMap`, `Method`, and `http::request::Parts`, the request head that
/// key extractors, cost functions and rejections read): no need to add it to
/// your own dependencies.
pub use http;
