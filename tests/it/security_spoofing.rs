//! Security: spoofed client addresses. Forwarding headers only count when
//! the TCP peer is a trusted proxy, and then only the rightmost untrusted
//! hop; IPv6 clients share a /64 bucket.
//!
//! Through a real axum router called in process, with the peer address
//! axum's `ConnectInfo` gives: the client connects from 127.0.0.1.
//!
//! Every backend is a real `RedisBackend`; the deadline is generous (2 s,
//! `support::security::DEADLINE`) so that a slow machine never turns into a
//! failed decision.

use axum::Router;
use axum::routing::get;
use http::{Method, StatusCode};
use tower_redis_ratelimit::key::{ClientIp, ForwardedHeader, Key};
use tower_redis_ratelimit::{Policy, RateLimitLayer, RedisBackend};

use crate::support::headers::remaining;
use crate::support::redis_backend;
use crate::support::security::{DEADLINE, keys_matching, strict};
use crate::support::web::{self, PEER};

use crate::support;

/// The spoofing app: one route per `ClientIp` configuration.
struct SpoofApp {
    app: Router,
    backend: RedisBackend,
    url: String,
}

/// `/none`: no trusted proxy, 10/min. `/xff`: trusts 127.0.0.1 via
/// X-Forwarded-For, 3/min. `/fwd`: trusts 127.0.0.1 via `Forwarded`, 3/min.
fn spoof_policies() -> [(&'static str, Policy); 3] {
    let trusted = ClientIp::new().trust_proxies(["127.0.0.1"]);
    [
        ("/none", strict("none", 10).key(ClientIp::new())),
        ("/xff", strict("xff", 3).key(trusted.clone())),
        (
            "/fwd",
            strict("fwd", 3).key(trusted.header(ForwardedHeader::Forwarded)),
        ),
    ]
}

async fn spoof_app(test: &str) -> SpoofApp {
    let url = support::redis_url();
    let backend = redis_backend(&url, test);
    let mut builder = RateLimitLayer::builder()
        .backend(backend.clone())
        .deadline(DEADLINE);
    let mut router = Router::new();
    for (path, policy) in spoof_policies() {
        builder = builder.route(path, policy);
        router = router.route(path, get(|| async { "ok" }));
    }
    let app = router.layer(builder.build().unwrap());
    SpoofApp { app, backend, url }
}

impl SpoofApp {
    /// GET `path` with these headers; returns the status and `r`.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, Option<u64>) {
        let sent = web::call(&self.app, Method::GET, path, PEER, headers).await;
        let status = sent.status;
        let r = remaining(&sent.headers);
        assert!(
            status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
            "{path} {headers:?}: unexpected {status}"
        );
        assert!(r.is_some(), "every decision carries headers");
        (status, r)
    }

    fn key_exists(&self, policy_path: &str, client: &str) -> bool {
        let (_, policy) = spoof_policies()
            .into_iter()
            .find(|(p, _)| *p == policy_path)
            .unwrap();
        let key = self
            .backend
            .redis_keys(&policy, &Key::new(client))
            .remove(0);
        redis::cmd("EXISTS")
            .arg(key)
            .query(&mut self.conn())
            .unwrap()
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

/// No trusted proxy: 100 requests with 100 different X-Forwarded-For (and
/// Forwarded, X-Real-IP) values are one client, the TCP peer: exactly 10
/// admitted, one Redis key.
#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let app = spoof_app("spoof-none").await;
    let mut admitted = 0;
    for i in 0..100 {
        let xff = format!("203.0.113.{i}");
        let fwd = format!("for=198.51.100.{i}");
        let (status, _) = app
            .get(
                "/none",
                &[
                    ("x-forwarded-for", &xff),
                    ("forwarded", &fwd),
                    ("x-real-ip", &xff),
                ],
            )
            .await;
        if status == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "one bucket for all spoofed addresses");
    assert!(app.key_exists("/none", "127.0.0.1"));
    let keys = keys_matching(
        &mut app.conn(),
        &format!("{}:{{none:*", app.backend.prefix()),
    );
    assert_eq!(keys.len(), 1, "{keys:?}");
}

/// Behind a trusted proxy (127.0.0.1), X-Forwarded-For decides, read from the
/// right: different clients get different buckets; hops the client prepends
/// (or trusted hops appended) change nothing.
#[tokio::test]
async fn trusted_proxy_uses_the_rightmost_untrusted_x_forwarded_for_address() {
    let app = spoof_app("spoof-xff").await;
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    for expect in [2, 1, 0] {
        assert_eq!(
            app.get("/xff", &xff("198.51.100.4")).await,
            (StatusCode::OK, Some(expect))
        );
    }
    for spoof in [
        "198.51.100.4",
        "6.6.6.6, 198.51.100.4",
        "6.6.6.6,198.51.100.4",
        "10.0.0.1, 2.2.2.2, 198.51.100.4",
        "198.51.100.4, 127.0.0.1",
        "garbage, 198.51.100.4",
        "198.51.100.4:8080",
    ] {
        assert_eq!(
            app.get("/xff", &xff(spoof)).await,
            (StatusCode::TOO_MANY_REQUESTS, Some(0)),
            "{spoof:?} is still 198.51.100.4"
        );
    }
    // Another client has its own bucket...
    for expect in [2, 1, 0] {
        assert_eq!(
            app.get("/xff", &xff("203.0.113.9")).await,
            (StatusCode::OK, Some(expect))
        );
    }
    assert_eq!(
        app.get("/xff", &xff("203.0.113.9")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...and the leftmost (client-written) hop is never the key.
    assert_eq!(
        app.get("/xff", &xff("198.51.100.4, 203.0.113.10")).await,
        (StatusCode::OK, Some(2))
    );
    assert_eq!(
        app.get("/xff", &xff("203.0.113.10")).await,
        (StatusCode::OK, Some(1))
    );
    // No header: the proxy itself is the client.
    assert_eq!(app.get("/xff", &[]).await, (StatusCode::OK, Some(2)));

    for client in ["198.51.100.4", "203.0.113.9", "203.0.113.10", "127.0.0.1"] {
        assert!(app.key_exists("/xff", client), "{client}");
    }
    for spoofed in ["6.6.6.6", "2.2.2.2", "10.0.0.1"] {
        assert!(!app.key_exists("/xff", spoofed), "{spoofed} got a bucket");
    }
}

/// The `Forwarded` variant: `for=` from the right, quoted and bracketed
/// forms, X-Forwarded-For ignored when the proxies write `Forwarded`.
#[tokio::test]
async fn trusted_proxy_with_forwarded_header() {
    let app = spoof_app("spoof-fwd").await;
    let fwd = |v: &'static str| [("forwarded", v)];
    for expect in [2, 1, 0] {
        assert_eq!(
            app.get("/fwd", &fwd("for=198.51.100.4")).await,
            (StatusCode::OK, Some(expect))
        );
    }
    for spoof in [
        "for=6.6.6.6, for=198.51.100.4",
        "for=6.6.6.6;proto=http, for=\"198.51.100.4:4711\";proto=https",
        "For=198.51.100.4",
        "for=198.51.100.4, for=127.0.0.1",
    ] {
        assert_eq!(
            app.get("/fwd", &fwd(spoof)).await,
            (StatusCode::TOO_MANY_REQUESTS, Some(0)),
            "{spoof:?} is still 198.51.100.4"
        );
    }
    // X-Forwarded-For is not the configured header: these are all the proxy
    // (127.0.0.1), one bucket.
    for (i, spoof) in ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"]
        .into_iter()
        .enumerate()
    {
        let (status, r) = app.get("/fwd", &[("x-forwarded-for", spoof)]).await;
        if i < 3 {
            assert_eq!((status, r), (StatusCode::OK, Some(2 - i as u64)));
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    // IPv6 in `Forwarded` is quoted and bracketed; /64 grouping applies.
    assert_eq!(
        app.get("/fwd", &fwd("for=\"[2001:db8::1]:4711\"")).await,
        (StatusCode::OK, Some(2))
    );
    assert_eq!(
        app.get("/fwd", &fwd("for=\"[2001:db8::2]\"")).await,
        (StatusCode::OK, Some(1))
    );
    assert!(app.key_exists("/fwd", "2001:db8::/64"));
    assert!(!app.key_exists("/fwd", "6.6.6.6"));
}

/// IPv6 clients are grouped by /64: 2001:db8::1 and 2001:db8::2 share a
/// bucket, 2001:db8:0:1::1 has its own.
#[tokio::test]
async fn ipv6_clients_share_a_slash_64_bucket() {
    let app = spoof_app("spoof-v6").await;
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    assert_eq!(
        app.get("/xff", &xff("2001:db8::1")).await,
        (StatusCode::OK, Some(2))
    );
    assert_eq!(
        app.get("/xff", &xff("2001:db8::1")).await,
        (StatusCode::OK, Some(1))
    );
    assert_eq!(
        app.get("/xff", &xff("2001:db8::2")).await,
        (StatusCode::OK, Some(0))
    );
    for same in ["2001:db8::2", "2001:db8::ffff:1", "[2001:db8::3]:443"] {
        assert_eq!(
            app.get("/xff", &xff(same)).await.0,
            StatusCode::TOO_MANY_REQUESTS,
            "{same} is in 2001:db8::/64"
        );
    }
    assert_eq!(
        app.get("/xff", &xff("2001:db8:0:1::1")).await,
        (StatusCode::OK, Some(2)),
        "another /64 is another client"
    );
    assert!(app.key_exists("/xff", "2001:db8::/64"));
    assert!(app.key_exists("/xff", "2001:db8:0:1::/64"));
}
