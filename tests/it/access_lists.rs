//! Allow- and deny-lists, through the real layer and router in process, on
//! the in-memory backend and on a real Redis: listed clients are decided without
//! a backend call (no script runs, no key is written), deny-listed ones get
//! a 403 without `Retry-After` (gRPC `PERMISSION_DENIED`), allow-listed ones
//! are never limited; networks match the client IP (behind the trusted
//! proxies when the key extractor has a `ClientIp`, else the peer's) whatever
//! extractor made the key (a client cannot list itself with
//! `X-Forwarded-For`); keys match as written under `.or()`, and a key
//! spelled as an address matches that client's IP, never an API key.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::{Method, Request, Response, StatusCode, header};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::key::{ClientIp, Header, KeyExtractor, PeerIp};
use tower_redis_ratelimit::{
    AccessList, Backend, ConfigError, GrpcRejection, Key, MemoryBackend, Policy, Quota,
    RateLimitLayer,
};

use crate::support::web::{self, Sent};

#[cfg(feature = "metrics")]
use crate::recorded;
use crate::support;

/// - `/` (default, "proxied"): 2/min per client behind the trusted proxy
///   127.0.0.1 (the test client plays the proxy, writing X-Forwarded-For);
///   allow-list 192.0.2.0/24 and the key 198.51.100.77, deny-list
///   203.0.113.0/24 and 192.0.2.66 (also allowed: the deny-list wins);
/// - `/direct` ("direct"): per peer IP, 127.0.0.0/8 denied;
/// - `/keyed` ("keyed"): per API key, the key `batch` allowed; the network
///   192.0.2.0/24 allowed too, matched against the peer (127.0.0.1: never,
///   whatever X-Forwarded-For says);
/// - `/or` ("or"): per API key, else per client behind the trusted proxy;
///   allow-list the key `batch-job`, the client 198.51.100.77 (written as a
///   key) and 192.0.2.0/24, deny-list 203.0.113.0/24.
fn layer(backend: Arc<dyn Backend>) -> RateLimitLayer {
    let proxied = Policy::new("proxied")
        .quota(Quota::per_minute(2))
        .key(ClientIp::new().trust_proxies(["127.0.0.1"]))
        .allow(
            AccessList::new()
                .networks(["192.0.2.0/24"])
                .keys(["198.51.100.77"]),
        )
        .deny(AccessList::new().networks(["203.0.113.0/24", "192.0.2.66"]));
    let direct = Policy::new("direct")
        .quota(Quota::per_minute(2))
        .key(PeerIp::new())
        .deny(AccessList::new().networks(["127.0.0.0/8"]));
    let keyed = Policy::new("keyed")
        .quota(Quota::per_minute(2))
        .key(Header::new("x-api-key"))
        .allow(AccessList::new().keys(["batch"]).networks(["192.0.2.0/24"]));
    let or = Policy::new("or")
        .quota(Quota::per_minute(2))
        .key(Header::new("x-api-key").or(ClientIp::new().trust_proxies(["127.0.0.1"])))
        .allow(
            AccessList::new()
                .keys(["batch-job", "198.51.100.77"])
                .networks(["192.0.2.0/24"]),
        )
        .deny(AccessList::new().networks(["203.0.113.0/24"]));
    RateLimitLayer::builder()
        .backend(backend)
        .default_policy(proxied)
        .route("/direct", direct)
        .route("/keyed", keyed)
        .route("/or", or)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn router(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/direct", get(|| async { "ok" }))
        .route("/keyed", get(|| async { "ok" }))
        .route("/or", get(|| async { "ok" }))
        .layer(layer)
}

/// A request from the peer 127.0.0.1 (the trusted proxy).
async fn get_with(app: &Router, path: &str, headers: &[(&str, &str)]) -> Sent {
    web::call(app, Method::GET, path, web::PEER, headers).await
}

fn assert_unlimited(sent: &Sent, what: &str) {
    assert_eq!(sent.status, StatusCode::OK, "{what}");
    assert!(
        !sent.headers.contains_key("ratelimit-policy"),
        "{what}: not limited, so no rate-limit headers: {:?}",
        sent.headers
    );
}

fn assert_deny_listed(sent: &Sent, what: &str) {
    assert_eq!(sent.status, StatusCode::FORBIDDEN, "{what}");
    assert!(
        !sent.headers.contains_key(header::RETRY_AFTER),
        "{what}: waiting does not help"
    );
    assert!(!sent.headers.contains_key("ratelimit"), "{what}");
    assert!(sent.body.contains("not allowed"), "{what}: {}", sent.body);
}

/// `limit` admitted, then 429.
async fn assert_limited(app: &Router, path: &str, headers: &[(&str, &str)], limit: usize) {
    for i in 0..limit {
        let sent = get_with(app, path, headers).await;
        assert_eq!(sent.status, StatusCode::OK, "{headers:?} request {i}");
        assert!(sent.headers.contains_key("ratelimit-policy"));
    }
    let sent = get_with(app, path, headers).await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS, "{headers:?}");
}

/// The listed requests of the scenario (no backend call expected), then
/// the unlisted ones.
async fn scenario(app: &Router, listed_done: impl AsyncFnOnce()) {
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];
    // Allowed by network and by key (the key is the client's IP text): far
    // past the limit of 2.
    for _ in 0..5 {
        assert_unlimited(&get_with(app, "/", &xff("192.0.2.5")).await, "allowed net");
        assert_unlimited(
            &get_with(app, "/", &xff("198.51.100.77")).await,
            "allowed key",
        );
        assert_unlimited(
            &get_with(app, "/keyed", &[("x-api-key", "batch")]).await,
            "allowed API key",
        );
        // Denied: by network, and on both lists.
        assert_deny_listed(&get_with(app, "/", &xff("203.0.113.9")).await, "denied net");
        assert_deny_listed(
            &get_with(app, "/", &xff("192.0.2.66")).await,
            "on both lists",
        );
        // The peer 127.0.0.1 is denied on /direct whatever the header says.
        assert_deny_listed(
            &get_with(app, "/direct", &xff("192.0.2.5")).await,
            "denied peer",
        );
        // Under `.or()`: the key as written, whichever extractor made it...
        let key_from =
            |key: &'static str, ip: &'static str| [("x-api-key", key), ("x-forwarded-for", ip)];
        assert_unlimited(
            &get_with(app, "/or", &key_from("batch-job", "198.51.100.1")).await,
            "allowed key under or",
        );
        assert_unlimited(
            &get_with(app, "/or", &xff("198.51.100.77")).await,
            "allowed address (written as a key) under or",
        );
        // ...and networks match the client IP even when an API key made the key.
        assert_unlimited(
            &get_with(app, "/or", &key_from("k-1", "192.0.2.5")).await,
            "API key from an allowed network",
        );
        assert_unlimited(
            &get_with(app, "/or", &key_from("k-1", "198.51.100.77")).await,
            "API key from an allowed address",
        );
        assert_deny_listed(
            &get_with(app, "/or", &key_from("batch-job", "203.0.113.9")).await,
            "allowed key from a denied network",
        );
    }
    listed_done().await;
    // Unlisted clients are limited as usual.
    assert_limited(app, "/", &xff("198.51.100.1"), 2).await;
    // A client writing a listed address to the left of its own, through the
    // trusted proxy, is keyed (and listed) by its own address only.
    assert_limited(
        app,
        "/",
        &[("x-forwarded-for", "192.0.2.5, 198.51.100.2")],
        2,
    )
    .await;
    // The keyed policy's networks match the peer, never X-Forwarded-For.
    assert_limited(
        app,
        "/keyed",
        &[("x-api-key", "other"), ("x-forwarded-for", "192.0.2.5")],
        2,
    )
    .await;
    // Hostile keys under `.or()`: an API key spelled as the listed address,
    // or as the bucket's tagged key, lists nobody.
    assert_limited(
        app,
        "/or",
        &[
            ("x-api-key", "198.51.100.77"),
            ("x-forwarded-for", "198.51.100.3"),
        ],
        2,
    )
    .await;
    assert_limited(
        app,
        "/or",
        &[
            ("x-api-key", "1:batch-job"),
            ("x-forwarded-for", "198.51.100.3"),
        ],
        2,
    )
    .await;
    // A listed network prepended through the proxy does not list an API key.
    assert_limited(
        app,
        "/or",
        &[
            ("x-api-key", "k-2"),
            ("x-forwarded-for", "192.0.2.5, 198.51.100.4"),
        ],
        2,
    )
    .await;
}

#[tokio::test]
async fn memory_access_lists() {
    let app = router(layer(Arc::new(support::still_memory())));
    scenario(&app, async || {}).await;
}

fn evalsha_calls(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn redis_access_lists_without_a_script_call() {
    let server = support::RedisServer::start();
    let mut conn = server.conn();
    let backend = support::redis_backend(&server.url(), "access");
    let layer = layer(Arc::new(backend.clone()));
    let admin = layer.admin();
    let app = router(layer);
    scenario(&app, async || {
        let mut conn = server.conn();
        assert_eq!(
            evalsha_calls(&mut conn),
            0,
            "no script ran for listed clients"
        );
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
        assert!(keys.is_empty(), "nothing written: {keys:?}");
    })
    .await;
    // The unlisted requests did reach Redis, under their own keys.
    assert!(evalsha_calls(&mut conn) >= 9);
    let proxied = admin.policy("proxied").unwrap();
    let keys = backend.redis_keys(proxied, &Key::new("198.51.100.1"));
    let exists: u64 = redis::cmd("EXISTS").arg(&keys).query(&mut conn).unwrap();
    assert_eq!(exists, 1);
    for listed in ["192.0.2.5", "203.0.113.9", "198.51.100.77"] {
        let keys = backend.redis_keys(proxied, &Key::new(listed));
        let exists: u64 = redis::cmd("EXISTS").arg(&keys).query(&mut conn).unwrap();
        assert_eq!(exists, 0, "{listed}");
    }
}

#[tokio::test]
async fn grpc_deny_listed_is_permission_denied_without_pushback() {
    let layer = layer(Arc::new(MemoryBackend::new())).on_rejection(GrpcRejection);
    let service = layer.layer(tower::service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let mut request = Request::post("/direct")
        .header("content-type", "application/grpc")
        .body(String::new())
        .unwrap();
    request
        .extensions_mut()
        .insert("127.0.0.1:5000".parse::<std::net::SocketAddr>().unwrap());
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "trailers-only");
    assert_eq!(response.headers()["grpc-status"], "7");
    assert!(!response.headers().contains_key("grpc-retry-pushback-ms"));
    assert!(!response.headers().contains_key(header::RETRY_AFTER));
}

/// A network that does not parse, in an access list or in a key
/// extractor's trusted proxies, is reported by the layer's build (not
/// midway through the chain that made it).
#[test]
fn invalid_networks_are_config_errors_at_build() {
    let build = |policy: Policy| RateLimitLayer::builder().default_policy(policy).build();
    let api = || Policy::new("api").quota(Quota::per_minute(10));
    let bad = || ConfigError::InvalidNetwork {
        network: "not-a-network".into(),
    };
    let list = AccessList::new().networks(["10.0.0.0/8", "not-a-network"]);
    assert_eq!(build(api().allow(list.clone())).unwrap_err(), bad());
    assert_eq!(build(api().deny(list)).unwrap_err(), bad());
    let proxies = ClientIp::new().trust_proxies(["10.0.0.0/8", "not-a-network"]);
    assert_eq!(build(api().key(proxies.clone())).unwrap_err(), bad());
    assert_eq!(
        build(api().key(Header::new("x-api-key").or(proxies))).unwrap_err(),
        bad()
    );
    let mapped = ClientIp::new().trust_proxies(["::ffff:0:0/95"]);
    assert!(matches!(
        build(api().key(mapped)).unwrap_err(),
        ConfigError::MappedNetworkTooWide { .. }
    ));
    let fine = ClientIp::new().trust_proxies(["10.0.0.0/8"]);
    assert!(build(api().key(fine).allow(AccessList::new().networks(["::1"]))).is_ok());
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn listed_decisions_have_their_outcome_labels() {
    use recorded::{Recorded, decisions, expect};

    let mut recorded = Recorded::install();
    let layer = layer(Arc::new(MemoryBackend::new()));
    let send = async |path: &str, xff: &str| {
        let service = layer.layer(tower::service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
        let mut request = Request::get(path)
            .header("x-forwarded-for", xff)
            .body(String::new())
            .unwrap();
        request
            .extensions_mut()
            .insert("127.0.0.1:5000".parse::<std::net::SocketAddr>().unwrap());
        service.oneshot(request).await.unwrap().status()
    };
    for _ in 0..3 {
        assert_eq!(send("/", "192.0.2.5").await, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(send("/", "203.0.113.1").await, StatusCode::FORBIDDEN);
    }
    assert_eq!(send("/direct", "192.0.2.5").await, StatusCode::FORBIDDEN);
    assert_eq!(send("/", "198.51.100.1").await, StatusCode::OK);
    assert_eq!(
        recorded.counters(),
        expect([
            (decisions("proxied", "allow_listed"), 3),
            (decisions("proxied", "deny_listed"), 2),
            (decisions("direct", "deny_listed"), 1),
            (decisions("proxied", "allowed"), 1),
        ])
    );
}

/// Issue 21: under `Header::new("x-api-key").or(PeerIp::new())` (and with
/// a `ClientIp` fallback), an office network is allow-listed for requests
/// carrying an API key too, a denied network stays denied with one, and an
/// untrusted peer cannot borrow a listed address through X-Forwarded-For.
/// On a real Redis: listed requests write nothing.
#[tokio::test]
async fn networks_match_requests_keyed_by_api_key_on_redis() {
    let server = support::RedisServer::start();
    let backend = support::redis_backend(&server.url(), "access-or");
    let lists = |policy: Policy| {
        policy
            .quota(Quota::per_minute(2))
            .allow(
                AccessList::new()
                    .networks(["127.0.0.8/29"])
                    .keys(["batch-job"]),
            )
            .deny(AccessList::new().networks(["127.0.0.16/29"]))
    };
    let peer = lists(Policy::new("peer")).key(Header::new("x-api-key").or(PeerIp::new()));
    let proxied = lists(Policy::new("proxied"))
        .key(Header::new("x-api-key").or(ClientIp::new().trust_proxies(["127.0.0.1"])));
    let layer = RateLimitLayer::builder()
        .backend(backend)
        .route("/peer", peer)
        .route("/proxied", proxied)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/peer", get(|| async { "ok" }))
        .route("/proxied", get(|| async { "ok" }))
        .layer(layer);
    let call = async |path: &str, peer: u8, headers: &[(&str, &str)]| {
        web::call(&app, Method::GET, path, web::peer(peer), headers).await
    };
    let key = [("x-api-key", "k-1")];
    for _ in 0..4 {
        assert_unlimited(&call("/peer", 9, &key).await, "API key, office peer");
        assert_unlimited(
            &call("/peer", 2, &[("x-api-key", "batch-job")]).await,
            "listed key",
        );
        assert_deny_listed(&call("/peer", 17, &key).await, "API key, denied peer");
        assert_deny_listed(
            &call("/peer", 17, &[("x-api-key", "batch-job")]).await,
            "listed key, denied peer: the deny-list wins",
        );
        // Through the trusted proxy, the client it names.
        let office = [("x-api-key", "k-1"), ("x-forwarded-for", "127.0.0.9")];
        assert_unlimited(
            &call("/proxied", 1, &office).await,
            "API key, office client",
        );
        let denied = [("x-api-key", "k-1"), ("x-forwarded-for", "127.0.0.17")];
        assert_deny_listed(
            &call("/proxied", 1, &denied).await,
            "API key, denied client",
        );
    }
    let mut conn = server.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(keys.is_empty(), "listed requests write nothing: {keys:?}");
    // Spoofed X-Forwarded-For from an untrusted peer (127.0.0.2) counts for
    // nothing, whichever fallback the key has; nor does a key spelled as
    // the office address.
    let spoofed = [("x-api-key", "k-2"), ("x-forwarded-for", "127.0.0.9")];
    let spelled = [("x-api-key", "127.0.0.9")];
    for (path, headers) in [
        ("/peer", &spoofed[..]),
        ("/proxied", &spoofed[..]),
        ("/peer", &spelled[..]),
    ] {
        for i in 0..2 {
            let sent = call(path, 2, headers).await;
            assert_eq!(
                sent.status,
                StatusCode::OK,
                "{path} {headers:?} request {i}"
            );
            assert!(sent.headers.contains_key("ratelimit-policy"));
        }
        let sent = call(path, 2, headers).await;
        assert_eq!(
            sent.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{path} {headers:?}"
        );
    }
}
