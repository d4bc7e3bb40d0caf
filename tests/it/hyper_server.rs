//! Plain hyper 1.x end to end: the hyper example's app, tower stack and accept
//! loop (shared code in `examples/common/hyper_app.rs`) on a loopback port,
//! with a real HTTP client. The peer address reaches `PeerIp` as a
//! `SocketAddr` request extension inserted per connection.

use std::time::Duration;

use http::{Method, StatusCode, header};
use tower_redis_ratelimit::{MemoryBackend, MissingKey, Policy, Quota, RateLimitLayer};

use crate::support::headers;
use crate::support::web::{bind_loopback, client, send};

use crate::hyper_app;
use crate::support;

/// Generous: a missed deadline would fail open and drop the headers.
const DEADLINE: Duration = Duration::from_secs(2);

/// Serves the example's stack with `limits` on 127.0.0.1:0; returns its base URL.
async fn serve(limits: RateLimitLayer) -> String {
    let (listener, base) = bind_loopback().await;
    tokio::spawn(hyper_app::serve(listener, limits));
    base
}

/// The example's routes and policies: auth 5/min then 429 with Retry-After and
/// RateLimit headers (on every connection from the same IP), api 100/min,
/// health exempt, 404 and 405 still counted by the default policy.
#[tokio::test]
async fn example_routes_and_429() {
    let base = serve(hyper_app::limits(MemoryBackend::new(), DEADLINE).unwrap()).await;
    let client = client();
    let login = format!("{base}/auth/login");

    for i in 0..5 {
        let sent = send(&client, Method::POST, &login).await;
        assert_eq!(sent.status, StatusCode::OK, "login {}", i + 1);
        assert_eq!(sent.body, "welcome\n");
        assert!(!sent.headers.contains_key(header::RETRY_AFTER));
        let (p, s) = headers::ietf(&sent.headers).expect("admitted login has RateLimit headers");
        assert_eq!(
            (p.name.as_str(), p.param("q"), p.param("w")),
            ("auth", 5, 60)
        );
        assert_eq!(s.param("r"), 4 - i);
    }
    let sent = send(&client, Method::POST, &login).await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        sent.headers[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    assert!(
        sent.body.starts_with("rate limit exceeded for policy auth"),
        "{:?}",
        sent.body
    );
    let retry = headers::retry_after(&sent.headers);
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(sent.headers["ratelimit-policy"], "\"auth\";q=5;w=60");
    let (_, s) = headers::ietf(&sent.headers).expect("429 has RateLimit headers");
    assert_eq!(s.param("r"), 0);
    assert!((1..=60).contains(&s.param("t")));

    // A fresh client (new connection, same IP) is denied too: the key is the
    // peer IP, not the connection.
    let sent = send(&support::web::client(), Method::POST, &login).await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);

    // The api policy counts on its own.
    let hello = format!("{base}/api/hello");
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let sent = send(&client, Method::GET, &hello).await;
        assert_eq!(sent.status, StatusCode::OK);
        assert_eq!(sent.body, "hello\n");
        assert_eq!(sent.headers["ratelimit-policy"], "\"api\";q=100;w=60");
        remaining.push(headers::ietf(&sent.headers).unwrap().1.param("r"));
    }
    assert_eq!(remaining[0], 99, "{remaining:?}");
    assert!(remaining.windows(2).all(|w| w[1] <= w[0]), "{remaining:?}");

    // Health: exempt, never any rate-limit header.
    for _ in 0..10 {
        let sent = send(&client, Method::GET, &format!("{base}/health")).await;
        assert_eq!(sent.status, StatusCode::OK);
        assert_eq!(sent.body, "ok\n");
        headers::assert_no_rate_limit_headers(&sent.headers);
    }

    // Unknown paths and wrong methods are answered by the app, under the
    // default policy.
    let sent = send(&client, Method::GET, &format!("{base}/nope")).await;
    assert_eq!(sent.status, StatusCode::NOT_FOUND);
    assert_eq!(headers::ietf(&sent.headers).unwrap().0.name, "api");
    let sent = send(&client, Method::GET, &login).await;
    assert_eq!(sent.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(sent.headers[header::ALLOW], "POST");
    assert_eq!(headers::ietf(&sent.headers).unwrap().0.name, "api");
}

/// The per-connection `map_request` really gives `PeerIp` the peer address:
/// with `MissingKey::Deny`, a keyless request would be a 403.
#[tokio::test]
async fn peer_address_extension_reaches_peer_ip() {
    let limits = RateLimitLayer::builder()
        .backend(MemoryBackend::new())
        .default_policy(
            Policy::new("strict")
                .quota(Quota::per_minute(3))
                .on_missing_key(MissingKey::Deny),
        )
        .deadline(DEADLINE)
        .headers(tower_redis_ratelimit::HeaderStyle::Both)
        .build()
        .unwrap();
    let base = serve(limits).await;
    let client = client();
    let url = format!("{base}/api/hello");
    for i in 0..3 {
        let sent = send(&client, Method::GET, &url).await;
        assert_eq!(sent.status, StatusCode::OK, "request {}", i + 1);
        assert_eq!(sent.headers["x-ratelimit-limit"], "3");
        assert_eq!(
            sent.headers["x-ratelimit-remaining"],
            (2 - i).to_string().as_str()
        );
    }
    let sent = send(&client, Method::GET, &url).await;
    assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(sent.headers["x-ratelimit-remaining"], "0");
    assert!(headers::retry_after(&sent.headers) >= 1);
    let (p, _) = headers::ietf(&sent.headers).expect("Both sends the IETF headers too");
    assert_eq!(p.name, "strict");
}
