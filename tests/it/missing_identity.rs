//! A server that does not pass the peer address on (axum without
//! `into_make_service_with_connect_info`, hyper without the `SocketAddr`
//! extension), end to end on loopback with real clients bound to different
//! loopback addresses (127.0.0.2, 127.0.0.3):
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

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_redis_ratelimit::key::{Header, KeyExtractor as _, PeerIp};
use tower_redis_ratelimit::{Policy, Quota, RateLimitLayer, RedisBackend};

use crate::support::RedisServer;
use crate::support::logs::{Logs, capture_logs};
use crate::support::web::bind_loopback;

use crate::hyper_app;
use crate::support;

const AXUM_FIX: &str = "into_make_service_with_connect_info::<SocketAddr>()";
const HYPER_FIX: &str = "insert the connection's peer `SocketAddr` into each request's extensions";
const FALLBACK: &str = "Header::new(\"x-api-key\").or(PeerIp::new())";

fn limits(redis: &RedisServer, policy: Policy) -> RateLimitLayer {
    RateLimitLayer::builder()
        .backend(RedisBackend::new(&redis.url()).unwrap())
        .default_policy(policy)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// 2 per minute per client IP.
fn per_ip() -> Policy {
    Policy::new("per-ip").quota(Quota::per_minute(2))
}

/// A client whose connections come from `127.0.0.<last>`.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get_status(client: &reqwest::Client, url: &str, api_key: Option<&str>) -> StatusCode {
    let mut request = client.get(url);
    if let Some(key) = api_key {
        request = request.header("x-api-key", key);
    }
    request.send().await.unwrap().status()
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

/// Two clients from two addresses, 3 requests each on a 2/min policy: how
/// many of the 6 were admitted. 4 per IP; 2 if they share one bucket.
async fn admitted_of_two_clients(url: &str) -> usize {
    let mut admitted = 0;
    for last in [2, 3] {
        let client = client_from(last);
        for _ in 0..3 {
            if get_status(&client, url, None).await == StatusCode::OK {
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
    let (listener, base) = bind_loopback().await;
    let app = axum_app(limits(&redis, per_ip()));
    // The mistake: `axum::serve(listener, app)` passes no peer address.
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!("{base}/hello");
    assert_eq!(
        admitted_of_two_clients(&url).await,
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
    let redis = RedisServer::start();
    let base = support::web::serve(axum_app(limits(&redis, per_ip()))).await;
    let url = format!("{base}/hello");
    assert_eq!(admitted_of_two_clients(&url).await, 4, "2 per IP");
}

#[tokio::test]
async fn a_fallback_chain_keys_by_api_key_without_the_peer_address() {
    let redis = RedisServer::start();
    let (listener, base) = bind_loopback().await;
    let policy = per_ip().key(Header::new("x-api-key").or(PeerIp::new()));
    let app = axum_app(limits(&redis, policy));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!("{base}/hello");
    let client = client_from(2);
    for key in ["k-1", "k-2"] {
        for i in 0..3 {
            let status = get_status(&client, &url, Some(key)).await;
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
        statuses.push(get_status(&client, &url, None).await);
    }
    assert_eq!(statuses[2], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
}

/// Serves the hyper example's app behind `limits`, inserting the peer
/// address into the requests only if `with_peer`.
async fn serve_hyper(listener: TcpListener, limits: RateLimitLayer, with_peer: bool) {
    loop {
        let (stream, peer) = listener.accept().await.unwrap();
        let service = ServiceBuilder::new()
            .map_request(move |mut request: http::Request<hyper::body::Incoming>| {
                if with_peer {
                    request.extensions_mut().insert::<SocketAddr>(peer);
                }
                request
            })
            .layer(limits.clone())
            .service_fn(hyper_app::app);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .await;
        });
    }
}

#[tokio::test]
async fn hyper_without_the_peer_extension_shares_one_bucket_and_names_the_fix() {
    let logs = capture_logs();
    let redis = RedisServer::start();
    let (listener, base) = bind_loopback().await;
    tokio::spawn(serve_hyper(listener, limits(&redis, per_ip()), false));
    let url = format!("{base}/api/hello");
    assert_eq!(admitted_of_two_clients(&url).await, 2);
    let errors = missing_key_errors(&logs);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let line = &errors[0];
    // Nothing says which server this is: both HTTP fixes, no gRPC one.
    assert!(line.contains(HYPER_FIX), "{line}");
    assert!(line.contains(AXUM_FIX), "{line}");
    assert!(!line.contains("tonic"), "{line}");

    // The fix: the extension.
    let redis = RedisServer::start();
    let (listener, base) = bind_loopback().await;
    tokio::spawn(serve_hyper(listener, limits(&redis, per_ip()), true));
    assert_eq!(
        admitted_of_two_clients(&format!("{base}/api/hello")).await,
        4
    );
}

/// A key extractor whose keys are the client's doing (a header) logs a
/// WARN without a fix: nothing is wrong with the server.
#[tokio::test]
async fn a_missing_header_is_a_warning_without_a_hint() {
    let logs = capture_logs();
    let redis = RedisServer::start();
    let policy = Policy::new("by-header")
        .quota(Quota::per_minute(2))
        .key(Header::new("x-api-key"));
    let base = support::web::serve(axum_app(limits(&redis, policy))).await;
    let status = get_status(&client_from(2), &format!("{base}/hello"), None).await;
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
