//! Security: what a hostile client can and cannot do to the limiter.
//!
//! - Spoofing: forwarding headers only count when the TCP peer is a trusted
//!   proxy, and then only the rightmost untrusted hop; IPv6 clients share a
//!   /64 bucket.
//! - Bypass: spellings of a limited path (`//`, `/./`, `%6C`, `;params`,
//!   trailing slash, case) that a lenient app routes to the same handler are
//!   limited by the same policy.
//! - Hostile identities (64 KiB, non-UTF-8, braces, glob and key syntax) and
//!   thousands of distinct keys never panic, never make Redis fail (every
//!   policy here fails closed, so a Redis error would surface as a 503), stay
//!   limited exactly, and leave only bounded keys with a TTL in Redis.
//!
//! Every backend is a real `RedisBackend`; the deadline is generous (2 s) so
//! that a slow machine never turns into a failed decision.

mod support;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::client_ip::{ClientIp, ForwardedHeader};
use tower_redis_ratelimit::headers::RATELIMIT;
use tower_redis_ratelimit::key::{Header, Key};
use tower_redis_ratelimit::{
    Algorithm, FailureMode, Policy, Quota, RateLimitLayer, RedisBackend, normalize_path,
};

use support::RedisServer;
use support::headers::remaining;
use support::redis_backend;

const DEADLINE: Duration = Duration::from_secs(2);

/// An exact (sliding log) per-minute policy that fails closed.
fn strict(name: &str, limit: u64) -> Policy {
    Policy::new(name)
        .quota(Quota::per_minute(limit))
        .algorithm(Algorithm::SlidingLog)
        .failure_mode(FailureMode::Closed)
}

/// Every Redis key matching the glob `pattern`.
fn keys_matching(conn: &mut redis::Connection, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::Commands::scan_match(conn, pattern)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    keys.sort();
    keys
}

// ---------------------------------------------------------------------------
// Spoofing, through a real axum server: the client connects from 127.0.0.1.

/// The spoofing app: one route per `ClientIp` configuration.
struct SpoofApp {
    base: String,
    client: reqwest::Client,
    backend: RedisBackend,
    url: String,
    _server: Option<RedisServer>,
}

/// `/none`: no trusted proxy, 10/min. `/xff`: trusts 127.0.0.1 via
/// X-Forwarded-For, 3/min. `/fwd`: trusts 127.0.0.1 via `Forwarded`, 3/min.
fn spoof_policies() -> [(&'static str, Policy); 3] {
    let trusted = ClientIp::new().trust_proxies(["127.0.0.1"]).unwrap();
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
    let (url, server) = support::redis_url();
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
    SpoofApp {
        base: support::web::serve(app).await,
        client: support::web::client(),
        backend,
        url,
        _server: server,
    }
}

impl SpoofApp {
    /// GET `path` with these headers; returns the status and `r`.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, Option<u64>) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let r = remaining(response.headers());
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

// ---------------------------------------------------------------------------
// Bypass: path spellings.

/// How a lenient application routes: decodes every `%XX`, drops `;params`,
/// empty and `.` segments, resolves `..`, ignores case. Deliberately written
/// independently of the crate's `normalize_path`.
fn lenient_route(path: &str) -> Vec<String> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            decoded.push((h * 16 + l) as u8);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8_lossy(&decoded).to_lowercase();
    let mut out: Vec<String> = Vec::new();
    for segment in decoded.split('/') {
        match segment.split(';').next().unwrap() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_owned()),
        }
    }
    out
}

/// A request with `path` exactly as written (no normalisation on the way).
fn raw_request(method: Method, path: &'static str) -> Request<String> {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(PathAndQuery::from_static(path));
    let uri = Uri::from_parts(parts).unwrap();
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(String::new())
        .unwrap();
    request
        .extensions_mut()
        .insert("203.0.113.50:40000".parse::<SocketAddr>().unwrap());
    request
}

/// `POST /auth/login` is limited to 5 per minute. A lenient app serves the
/// login handler for a dozen spellings of that path; sent three times each,
/// the handler runs exactly 5 times.
#[tokio::test]
async fn path_variants_cannot_dodge_the_login_policy() {
    const VARIANTS: [&str; 16] = [
        "/auth/login",
        "//auth/login",
        "/auth/login/",
        "/auth/./login",
        "/auth//login",
        "/auth/%6Cogin",
        "/auth/%6cogin",
        "/%61uth/%6C%6F%67%69%6E",
        "/auth/login;x=1",
        "/auth;v=2/login",
        "/AUTH/login",
        "/Auth/LOGIN",
        "/x/../auth/login",
        "/auth/login/.",
        "/auth/login?next=/home",
        "///auth///login///",
    ];
    let (url, _server) = support::redis_url();
    let auth = Policy::auth().failure_mode(FailureMode::Closed);
    let layer = RateLimitLayer::builder()
        .backend(redis_backend(&url, "bypass"))
        .default_policy(
            Policy::new("generous")
                .quota(Quota::per_minute(10_000))
                .failure_mode(FailureMode::Closed),
        )
        .route_method(Method::POST, "/auth/login", auth)
        .case_insensitive_paths(true)
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let logins = Arc::new(AtomicUsize::new(0));
    let app = {
        let logins = Arc::clone(&logins);
        tower::service_fn(move |request: Request<String>| {
            let logins = Arc::clone(&logins);
            async move {
                let login = request.method() == Method::POST
                    && lenient_route(request.uri().path()) == ["auth", "login"];
                if login {
                    logins.fetch_add(1, Ordering::SeqCst);
                }
                let body = if login { "welcome" } else { "other" };
                Ok::<_, Infallible>(Response::new(body.to_owned()))
            }
        })
    };
    let service = layer.layer(app);

    let want = ["auth".to_owned(), "login".to_owned()];
    let mut admitted = 0;
    let mut denied = 0;
    for round in 0..3 {
        for variant in VARIANTS {
            let request = raw_request(Method::POST, variant);
            let path = request.uri().path().to_owned();
            assert_eq!(path, variant.split('?').next().unwrap(), "sent raw");
            assert_eq!(lenient_route(&path), want, "the app serves login at {path}");
            assert_eq!(normalize_path(&path, true), want, "{path}");
            let response = service.clone().oneshot(request).await.unwrap();
            match response.status() {
                StatusCode::OK => {
                    assert_eq!(response.body(), "welcome");
                    admitted += 1;
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(
                        response.headers()["ratelimit-policy"],
                        "\"auth\";q=5;w=60",
                        "{variant} (round {round}) is limited by the auth policy"
                    );
                    denied += 1;
                }
                other => panic!("{variant}: unexpected {other}"),
            }
        }
    }
    assert_eq!(
        logins.load(Ordering::SeqCst),
        5,
        "the login handler ran 5 times"
    );
    assert_eq!((admitted, denied), (5, 3 * VARIANTS.len() - 5));

    // Other paths and methods go to the generous default, not to auth.
    for (method, path) in [
        (Method::GET, "/auth/login"),
        (Method::POST, "/auth/login2"),
        (Method::POST, "/auth/log%69n2"),
        (Method::POST, "/auth"),
    ] {
        let response = service
            .clone()
            .oneshot(raw_request(method, path))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.body(), "other");
        assert!(
            response.headers()[RATELIMIT]
                .to_str()
                .unwrap()
                .starts_with("\"generous\""),
            "{path}"
        );
    }
    assert_eq!(logins.load(Ordering::SeqCst), 5);
}

// ---------------------------------------------------------------------------
// Hostile identities.

/// The inner service of the identity tests.
fn ok_service()
-> impl tower::Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send {
    tower::service_fn(|_request: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    })
}

fn api_key_request(value: HeaderValue) -> Request<String> {
    let mut request = Request::get("/api").body(String::new()).unwrap();
    request.headers_mut().insert("x-api-key", value);
    request
}

/// Hostile `x-api-key` values: huge, non-UTF-8, braces, glob and key syntax.
/// Each is its own client, limited exactly (3 admitted, the 4th denied, all
/// with headers, no 503), and stored under one bounded key with a TTL.
#[tokio::test]
async fn hostile_identities_are_limited_exactly_and_stored_safely() {
    // Newlines cannot reach a key extractor at all: header values reject them.
    assert!(HeaderValue::from_bytes(b"a\nb").is_err());
    assert!(HeaderValue::from_bytes(b"a\r\nFLUSHALL").is_err());
    assert!(HeaderValue::from_bytes(b"a\0b").is_err());

    let visible: Vec<u8> = (0..64 * 1024).map(|i| b'!' + (i % 94) as u8).collect();
    let high: Vec<u8> = (0x80..=0xFF).collect();
    let mut mixed_high = b"{user}".to_vec();
    mixed_high.extend_from_slice(&[0xC3, 0x28, 0xFF, 0xFE, b'}', 0x80]);
    let values: Vec<Vec<u8>> = vec![
        vec![b'a'; 64 * 1024],
        visible,
        high,
        mixed_high,
        b"{tag}".to_vec(),
        b"}{".to_vec(),
        b"a}{b:{c}".to_vec(),
        b"*".to_vec(),
        b"user?[a-z]*".to_vec(),
        b"key with spaces".to_vec(),
        b"\ttab".to_vec(),
        b"rl:{api:1.2.3.4}:l60000".to_vec(),
        b"#0000000000000000000000000000000000000000000000000000000000000000".to_vec(),
        b"%00%0d%0a".to_vec(),
        b"\"quoted\"".to_vec(),
        vec![b'k'; 64],
        vec![b'k'; 65],
    ];

    let (url, server) = support::redis_url();
    let backend = redis_backend(&url, "hostile");
    let policy = strict("hostile", 3).key(Header::new("x-api-key"));
    let layer = RateLimitLayer::builder()
        .backend(backend.clone())
        .default_policy(policy.clone())
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let service = layer.layer(ok_service());

    for value in &values {
        let header = HeaderValue::from_bytes(value).expect("a valid header value");
        let short = String::from_utf8_lossy(&value[..value.len().min(24)]).into_owned();
        for expect in [2, 1, 0] {
            let response = service
                .clone()
                .oneshot(api_key_request(header.clone()))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{short:?}");
            assert_eq!(remaining(response.headers()), Some(expect), "{short:?}");
        }
        let response = service
            .clone()
            .oneshot(api_key_request(header))
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "{short:?}"
        );
        assert_eq!(remaining(response.headers()), Some(0));
    }

    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut expected = HashSet::new();
    for value in &values {
        let key = backend.redis_keys(&policy, &Key::new(value)).remove(0);
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
        assert!(ttl > 0 && ttl <= 60_000, "{key}: PTTL {ttl}");
        let entries: u64 = redis::cmd("ZCARD").arg(&key).query(&mut conn).unwrap();
        assert_eq!(entries, 3, "{key}");
        expected.insert(key);
    }
    assert_eq!(expected.len(), values.len(), "one bucket per identity");
    let stored: HashSet<String> = keys_matching(&mut conn, &format!("{}:*", backend.prefix()))
        .into_iter()
        .collect();
    assert_eq!(stored, expected, "nothing else was written");
    for key in &stored {
        // `<prefix>:{hostile:<at most 65 bytes>}:l<window ms>`
        let bound = backend.prefix().len() + ":{hostile:".len() + 65 + "}:l60000".len();
        assert!(key.len() <= bound, "{key}");
        assert_eq!(key.matches('{').count(), 1, "{key}");
        assert_eq!(key.matches('}').count(), 1, "{key}");
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'?' && b != b'['),
            "{key}"
        );
    }
    drop(server);
}

/// 5 000 distinct identities (readable, hashed, long) are all decided (no
/// 503), Redis holds exactly one key per identity, each with a TTL, and its
/// memory grows by a bounded amount per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_distinct_keys_are_all_decided_and_bounded_in_redis() {
    const CLIENTS: usize = 5_000;
    let server = RedisServer::start();
    let mut conn = server.conn();
    let used_memory = |conn: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("memory").query(conn).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = used_memory(&mut conn);

    let backend = redis_backend(&server.url(), "many");
    let policy = strict("many", 2).key(Header::new("x-api-key"));
    let layer = RateLimitLayer::builder()
        .backend(backend)
        .default_policy(policy)
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let service = layer.layer(ok_service());
    let identity = |i: usize| -> Vec<u8> {
        match i % 3 {
            0 => format!("user-{i}").into_bytes(),
            1 => {
                let mut v = format!("{{evil}}:{i}").into_bytes();
                v.push(0xFF);
                v
            }
            _ => format!("{i}-{}", "x".repeat(100)).into_bytes(),
        }
    };

    let mut admitted = 0;
    for pass in 0..2 {
        for chunk in (0..CLIENTS).collect::<Vec<_>>().chunks(100) {
            let mut tasks = tokio::task::JoinSet::new();
            for &i in chunk {
                let request = api_key_request(HeaderValue::from_bytes(&identity(i)).unwrap());
                let service = service.clone();
                tasks.spawn(async move {
                    let response = service.oneshot(request).await.unwrap();
                    (response.status(), remaining(response.headers()))
                });
            }
            while let Some(result) = tasks.join_next().await {
                let (status, r) = result.unwrap();
                assert_eq!(status, StatusCode::OK, "pass {pass}");
                assert_eq!(r, Some(1 - pass), "pass {pass}");
                admitted += 1;
            }
        }
        let keys: u64 = redis::cmd("DBSIZE").query(&mut conn).unwrap();
        assert_eq!(
            keys, CLIENTS as u64,
            "one key per identity after pass {pass}"
        );
    }
    assert_eq!(admitted, 2 * CLIENTS);

    let after = used_memory(&mut conn);
    let per_key = after.saturating_sub(before) / CLIENTS as u64;
    eprintln!("redis used_memory {before} -> {after} bytes: {per_key} bytes per identity");
    assert!(per_key <= 1024, "{per_key} bytes per identity");

    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("PTTL").arg(key);
    }
    let ttls: Vec<i64> = pipe.query(&mut conn).unwrap();
    assert!(
        ttls.iter().all(|&t| t > 0 && t <= 60_000),
        "every key expires within the window"
    );
    assert!(keys.iter().all(|k| k.len() <= 100), "bounded key names");
}

// ---------------------------------------------------------------------------
// Bypass: dot segments, which axum and hyper do not resolve.

/// A response read off a raw HTTP/1.1 connection.
struct RawResponse {
    status: StatusCode,
    /// The `RateLimit-Policy` header, if any.
    policy: Option<String>,
    body: String,
}

/// Sends `GET path` to the server at `base` exactly as written, on a fresh
/// connection: reqwest, like any WHATWG URL parser, would resolve `.`, `..`
/// and `%2e` before sending.
async fn raw_get(base: &str, path: &str) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("a response within 10 s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let policy = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("ratelimit-policy"))
        .map(|(_, value)| value.trim().to_owned());
    RawResponse {
        status: StatusCode::from_bytes(status.as_bytes()).unwrap(),
        policy,
        body: body.to_owned(),
    }
}

/// A handler answering `body` and counting its runs.
fn counted(body: &'static str, runs: &Arc<AtomicUsize>) -> axum::routing::MethodRouter {
    let runs = Arc::clone(runs);
    get(move || {
        runs.fetch_add(1, Ordering::SeqCst);
        async move { body }
    })
}

/// `/health` is exempt and the default allows 2 per minute. axum routes
/// `/files/../health` to `/files/{*path}` (it does not resolve `..`), so the
/// layer must not treat it as `/health`: it is limited by the default.
#[tokio::test]
async fn dot_segments_do_not_borrow_an_exemption() {
    let (url, _server) = support::redis_url();
    let layer = RateLimitLayer::builder()
        .backend(redis_backend(&url, "dots_exempt"))
        .default_policy(strict("default", 2))
        .exempt("/health")
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let (health, files) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let app = Router::new()
        .route("/health", counted("health", &health))
        .route("/files/{*path}", counted("files", &files))
        .layer(layer);
    let base = support::web::serve(app).await;

    for _ in 0..4 {
        let sent = raw_get(&base, "/health").await;
        assert_eq!(
            (sent.status, sent.body.as_str()),
            (StatusCode::OK, "health")
        );
        assert_eq!(sent.policy, None, "exempt: no rate-limit headers");
    }
    let default = Some("\"default\";q=2;w=60".to_owned());
    for i in 0..2 {
        let sent = raw_get(&base, "/files/../health").await;
        assert_eq!(sent.status, StatusCode::OK, "request {i}");
        assert_eq!(sent.body, "files", "axum routes the literal path");
        assert_eq!(sent.policy, default, "request {i}");
    }
    for path in [
        "/files/../health",
        "/files/./../health",
        "/files/%2e%2e/health",
        "/files/%2E%2E/health",
        "/files/..;x/health",
        "/files/x",
    ] {
        let sent = raw_get(&base, path).await;
        assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(sent.policy, default, "{path}");
    }
    assert_eq!(
        files.load(Ordering::SeqCst),
        2,
        "the files handler ran twice"
    );
    // The real `/health` is still exempt.
    let sent = raw_get(&base, "/health").await;
    assert_eq!((sent.status, sent.policy), (StatusCode::OK, None));
    assert_eq!(health.load(Ordering::SeqCst), 5);
}

/// `/reports/{id}` is limited to 2 per minute under a lenient default. axum
/// routes `/reports/.`, `/reports/%2e`, `/reports/%2E%2E` and `/reports/..;x`
/// to the reports handler, so they must all count against the strict policy
/// (which is also what a dot-resolving reading would pick, were it limited).
#[tokio::test]
async fn dot_segments_get_the_stricter_policy() {
    let (url, _server) = support::redis_url();
    let layer = RateLimitLayer::builder()
        .backend(redis_backend(&url, "dots_strict"))
        .default_policy(strict("lenient", 1_000))
        .route("/reports/{id}", strict("reports", 2))
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let reports = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/reports/{id}", counted("reports", &reports))
        .route("/reports", get(|| async { "index" }))
        .layer(layer);
    let base = support::web::serve(app).await;

    let strict_policy = Some("\"reports\";q=2;w=60".to_owned());
    for path in ["/reports/%2e", "/reports/."] {
        let sent = raw_get(&base, path).await;
        assert_eq!(
            (sent.status, sent.body.as_str()),
            (StatusCode::OK, "reports")
        );
        assert_eq!(sent.policy, strict_policy, "{path}");
    }
    for path in [
        "/reports/%2E%2E",
        "/reports/..;x",
        "/reports/%2e",
        "/reports/.",
        "/reports/7",
    ] {
        let sent = raw_get(&base, path).await;
        assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(sent.policy, strict_policy, "{path}");
    }
    assert_eq!(
        reports.load(Ordering::SeqCst),
        2,
        "the reports handler ran twice"
    );
    // Other paths stay under the lenient default.
    let sent = raw_get(&base, "/reports").await;
    assert_eq!((sent.status, sent.body.as_str()), (StatusCode::OK, "index"));
    assert_eq!(sent.policy, Some("\"lenient\";q=1000;w=60".to_owned()));
}
