//! A server that does not pass the peer address on (axum without
//! `into_make_service_with_connect_info`, hyper without the `SocketAddr`
//! extension), through the real router or service called in process, with
//! requests from two loopback clients (127.0.0.2, 127.0.0.3) that carry the
//! peer address as such a server would (none, or the extension the fix
//! inserts):
//!
//! - no key, no escape: every client shares the one keyless bucket, so the
//!   per-IP limit holds as a global one (never no limit at all);
//! - the mistake is logged once, at ERROR, naming the fix for the server at
//!   hand (axum's `into_make_service_with_connect_info::<SocketAddr>()`, the
//!   hyper extension) and the fallback chain;
//! - with the fix, or a `Header::new("x-api-key").or(PeerIp::new())` chain,
//!   clients are apart again.
//!
//! tonic's case is in `tests/it/missing_identity_tonic.rs` (feature `tonic`).
//! `key_fn` closures infer their argument type, as `cost_fn`'s do.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Method, Request, StatusCode};
use tower::ServiceBuilder;
use tower_redis_ratelimit::key::{Header, KeyExtractor as _, PeerIp};
use tower_redis_ratelimit::{Policy, Quota, RateLimitLayer};

use crate::support::RedisServer;
use crate::support::logs::{Logs, capture_logs};
use crate::support::web;

use crate::hyper_app;
use crate::support;

const AXUM_FIX: &str = "into_make_service_with_connect_info::<SocketAddr>()";
const HYPER_FIX: &str = "insert the connection's peer `SocketAddr` into each request's extensions";
const FALLBACK: &str = "Header::new(\"x-api-key\").or(PeerIp::new())";

/// The layer on the Redis at `url`, under a key prefix of its own.
fn limits(url: &str, policy: Policy) -> RateLimitLayer {
    RateLimitLayer::builder()
        .backend(support::redis_backend(url, "missing-identity"))
        .default_policy(policy)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// 2 per minute per client IP.
fn per_ip() -> Policy {
    Policy::new("per-ip").quota(Quota::per_minute(2))
}

/// The status of `GET path` on `app`, with `ConnectInfo(peer)` if given (what
/// axum's `into_make_service_with_connect_info` inserts) and an `x-api-key`
/// if given.
async fn get_status(
    app: &Router,
    path: &str,
    peer: Option<SocketAddr>,
    api_key: Option<&str>,
) -> StatusCode {
    let extra: Vec<(&str, &str)> = api_key.map(|key| ("x-api-key", key)).into_iter().collect();
    let request = web::request(Method::GET, path, peer, &extra);
    web::call_service(app, request).await.status
}

/// The captured ERROR lines about a missing key.
fn missing_key_errors(logs: &Logs) -> Vec<String> {
    logs.text()
        .lines()
        .filter(|line| line.contains("request without a client key"))
        .map(|line| {
            assert!(line.contains("ERROR"), "not an error: {line}");
            line.to_owned()
        })
        .collect()
}

/// Two clients from two addresses (127.0.0.2, 127.0.0.3), 3 requests each on
/// a 2/min policy, sent by `status_from(peer)`: how many of the 6 were
/// admitted. 4 per IP; 2 if they share one bucket.
async fn admitted_of_two_clients(
    mut status_from: impl AsyncFnMut(SocketAddr) -> StatusCode,
) -> usize {
    let mut admitted = 0;
    for last in [2, 3] {
        for _ in 0..3 {
            if status_from(web::peer(last)).await == StatusCode::OK {
                admitted += 1;
            }
        }
    }
    admitted
}

fn axum_app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(layer)
}

#[tokio::test]
async fn axum_without_connect_info_shares_one_bucket_and_names_the_fix() {
    let logs = capture_logs();
    let redis = RedisServer::start();
    let app = axum_app(limits(&redis.url(), per_ip()));
    // The mistake: `axum::serve(listener, app)` passes no peer address, so
    // the requests carry none.
    assert_eq!(
        admitted_of_two_clients(async |_| get_status(&app, "/hello", None, None).await).await,
        2,
        "no key, no escape: one shared bucket"
    );
    let errors = missing_key_errors(&logs);
    assert_eq!(errors.len(), 1, "logged once per policy: {errors:?}");
    let line = &errors[0];
    assert!(line.contains("policy=per-ip"), "{line}");
    assert!(line.contains(AXUM_FIX), "{line}");
    assert!(line.contains(FALLBACK), "{line}");
    // axum's router ran (MatchedPath): no talk of tonic or hyper.
    assert!(!line.contains("tonic") && !line.contains("hyper"), "{line}");
    // The shared bucket is `!none`, in Redis.
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k.contains("!none")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn axum_with_connect_info_keys_each_client_apart() {
    let app = axum_app(limits(&support::redis_url(), per_ip()));
    let admitted =
        admitted_of_two_clients(async |peer| get_status(&app, "/hello", Some(peer), None).await)
            .await;
    assert_eq!(admitted, 4, "2 per IP");
}

#[tokio::test]
async fn a_fallback_chain_keys_by_api_key_without_the_peer_address() {
    let policy = per_ip().key(Header::new("x-api-key").or(PeerIp::new()));
    let app = axum_app(limits(&support::redis_url(), policy));
    for key in ["k-1", "k-2"] {
        for i in 0..3 {
            let status = get_status(&app, "/hello", None, Some(key)).await;
            let want = if i < 2 {
                StatusCode::OK
            } else {
                StatusCode::TOO_MANY_REQUESTS
            };
            assert_eq!(status, want, "{key} request {}", i + 1);
        }
    }
    // Keyless requests share the fallback's `!none` bucket: still limited.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get_status(&app, "/hello", None, None).await);
    }
    assert_eq!(statuses[2], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
}

/// The hyper example's app behind `limits`, called in process as a hyper
/// server would call it for a connection from `peer`: the server inserts the
/// peer address into the request only if `with_peer`.
async fn hyper_status(limits: &RateLimitLayer, peer: SocketAddr, with_peer: bool) -> StatusCode {
    let service = ServiceBuilder::new()
        .map_request(move |mut request: Request<Body>| {
            if with_peer {
                request.extensions_mut().insert::<SocketAddr>(peer);
            }
            request
        })
        .layer(limits.clone())
        .service_fn(hyper_app::app);
    let request = web::request(Method::GET, "/api/hello", None, &[]);
    web::call_service(&service, request).await.status
}

#[tokio::test]
async fn hyper_without_the_peer_extension_shares_one_bucket_and_names_the_fix() {
    let logs = capture_logs();
    let layer = limits(&support::redis_url(), per_ip());
    let admitted =
        admitted_of_two_clients(async |peer| hyper_status(&layer, peer, false).await).await;
    assert_eq!(admitted, 2);
    let errors = missing_key_errors(&logs);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let line = &errors[0];
    // Nothing says which server this is: both HTTP fixes, no gRPC one.
    assert!(line.contains(HYPER_FIX), "{line}");
    assert!(line.contains(AXUM_FIX), "{line}");
    assert!(!line.contains("tonic"), "{line}");

    // The fix: the extension.
    let layer = limits(&support::redis_url(), per_ip());
    let admitted =
        admitted_of_two_clients(async |peer| hyper_status(&layer, peer, true).await).await;
    assert_eq!(admitted, 4);
}

/// A key extractor whose keys are the client's doing (a header) logs a
/// WARN without a fix: nothing is wrong with the server.
#[tokio::test]
async fn a_missing_header_is_a_warning_without_a_hint() {
    let logs = capture_logs();
    let policy = Policy::new("by-header")
        .quota(Quota::per_minute(2))
        .key(Header::new("x-api-key"));
    let app = axum_app(limits(&support::redis_url(), policy));
    let status = get_status(&app, "/hello", Some(web::peer(2)), None).await;
    assert_eq!(status, StatusCode::OK);
    let text = logs.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request without a client key"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains("policy=by-header"), "{}", lines[0]);
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    assert!(!lines[0].contains("Fix:"), "{}", lines[0]);
}

/// `key_fn` closures infer their argument type (no `|parts: &Parts|`).
#[test]
fn key_fn_infers() {
    let policy = per_ip().key_fn(|parts| {
        parts
            .headers
            .get("x-tenant")
            .map(|v| tower_redis_ratelimit::Key::new(v.as_bytes()))
    });
    RateLimitLayer::builder()
        .default_policy(policy)
        .build()
        .unwrap();
}
