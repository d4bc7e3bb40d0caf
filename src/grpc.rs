//! How a gRPC call is recognised: the one fact about gRPC that both the key
//! extractors (which explain a missing peer address per framework) and the
//! rejection responses (a gRPC status instead of an HTTP 429) need. A leaf
//! module, so neither depends on the other.

use http::header;
use http::request::Parts;

/// Whether the request is a gRPC call (`content-type: application/grpc*`).
pub(crate) fn is_grpc(request: &Parts) -> bool {
    request
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}
