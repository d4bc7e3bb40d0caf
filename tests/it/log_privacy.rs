//! Client keys — IP addresses, API keys — never appear in the crate's logs,
//! at any level, in any decision: allowed, denied by Redis, denied from the
//! blocked-client cache, failed open with Redis killed (a real server), and
//! the circuit breaker's transitions. Spans show a short keyed hash instead.
//!
//! Everything is captured at TRACE, from every target, span openings and
//! closings included. As a control, the inner service logs the raw peer
//! address itself: the capture must see those lines, and only those.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{Algorithm, CircuitBreaker, Policy, Quota, RateLimitLayer};

use crate::support;

const IP: &str = "203.0.113.77";
const API_KEY: &str = "sk-live-SECRET";
/// What the inner service logs (the control).
const CONTROL: &str = "inner service saw peer";

/// Sends one request from `IP`, with the API key on `/key`.
async fn send(layer: &RateLimitLayer, path: &str) -> Response<String> {
    let service = layer.layer(tower::service_fn(|request: Request<String>| async move {
        let peer = request.extensions().get::<SocketAddr>().unwrap();
        tracing::info!("{CONTROL} {}", peer.ip());
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    }));
    let mut request = Request::get(path);
    if path == "/key" {
        request = request.header("x-api-key", API_KEY);
    }
    let mut request = request.body(String::new()).unwrap();
    request
        .extensions_mut()
        .insert(format!("{IP}:41000").parse::<SocketAddr>().unwrap());
    service.oneshot(request).await.unwrap()
}

#[tokio::test]
async fn no_raw_client_key_is_ever_logged() {
    // Every target at TRACE, span openings and closings included, of this
    // test's runtime (current-thread: it polls everything here).
    let captured = support::logs::capture_all_logs();

    let mut server = support::RedisServer::start();
    let url = server.url();
    let layer = || {
        let by_ip = Policy::new("by-ip")
            .quota(Quota::per_minute(2))
            .algorithm(Algorithm::SlidingLog);
        let by_key = Policy::new("by-key")
            .quota(Quota::per_minute(1))
            .key(Header::new("x-api-key"));
        RateLimitLayer::builder()
            .backend(support::redis_backend(&url, "log-privacy"))
            .default_policy(by_ip)
            .route("/key", by_key)
            .deadline(Duration::from_secs(2))
            .circuit_breaker(CircuitBreaker::new().failure_threshold(2))
            .build()
            .unwrap()
    };

    // Allowed, denied by Redis, denied from the cache; per IP and per key.
    let limiting = layer();
    let mut statuses = Vec::new();
    for path in ["/", "/", "/", "/", "/key", "/key", "/key"] {
        statuses.push(send(&limiting, path).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429, 200, 429, 429]);
    // Redis killed: failed open (logged with the error), the breaker opens
    // (logged), then decisions skip Redis. (A fresh layer: the first one
    // would answer these clients from its blocked-client cache.)
    server.kill();
    let failing = layer();
    for path in ["/", "/key", "/", "/key"] {
        assert_eq!(send(&failing, path).await.status(), StatusCode::OK);
    }

    let logs = captured.text();
    // The capture works: it holds the decisions, the failures, and the
    // control lines with the raw address.
    for needle in [
        "rate_limit{",
        "policy=\"by-ip\"",
        "policy=\"by-key\"",
        "outcome=\"allowed\"",
        "outcome=\"denied\"",
        "outcome=\"failed_open\"",
        "backend_us=",
        "rate limiter backend failed",
        "circuit breaker open",
    ] {
        assert!(logs.contains(needle), "no {needle:?} in:\n{logs}");
    }
    let control: Vec<&str> = logs.lines().filter(|l| l.contains(CONTROL)).collect();
    assert_eq!(control.len(), 7, "the inner service ran 7 times:\n{logs}");
    assert!(control.iter().all(|l| l.contains(IP)));

    // Apart from the control lines, no trace of either key.
    for line in logs.lines().filter(|l| !l.contains(CONTROL)) {
        for secret in [IP, "203.0.113", API_KEY, "SECRET"] {
            assert!(!line.contains(secret), "{secret:?} logged: {line}");
        }
    }

    // Each client is shown by one 8-hex-digit hash, the same in every line.
    let hashes: BTreeSet<&str> = logs
        .split("key_hash=")
        .skip(1)
        .map(|rest| &rest[..8])
        .collect();
    assert_eq!(hashes.len(), 2, "{hashes:?}");
    assert!(
        hashes
            .iter()
            .all(|h| h.bytes().all(|b| b.is_ascii_hexdigit())),
        "{hashes:?}"
    );
}
