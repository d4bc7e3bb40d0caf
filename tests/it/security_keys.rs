//! Security: hostile identities and keys. Hostile identities (64 KiB,
//! non-UTF-8, braces, glob and key syntax) and thousands of distinct keys
//! never panic, never make Redis fail (every policy here fails closed, so a
//! Redis error would surface as a 503), stay limited exactly, and leave only
//! bounded keys with a TTL in Redis.
//!
//! Every backend is a real `RedisBackend`; the deadline is generous (2 s,
//! `support::security::DEADLINE`) so that a slow machine never turns into a
//! failed decision.

use std::collections::HashSet;
use std::convert::Infallible;

use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::RateLimitLayer;
use tower_redis_ratelimit::key::{Header, Key};

use crate::support::RedisServer;
use crate::support::headers::remaining;
use crate::support::redis_backend;
use crate::support::security::{DEADLINE, keys_matching, strict};

use crate::support;

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
        b"rl:{api:1.2.3.4}:w60000".to_vec(),
        b"#0000000000000000000000000000000000000000000000000000000000000000".to_vec(),
        b"%00%0d%0a".to_vec(),
        b"\"quoted\"".to_vec(),
        vec![b'k'; 64],
        vec![b'k'; 65],
    ];

    let url = support::redis_url();
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
        // `<prefix>:{hostile:<at most 65 bytes>}:w<window ms>`
        let bound = backend.prefix().len() + ":{hostile:".len() + 65 + "}:w60000".len();
        assert!(key.len() <= bound, "{key}");
        assert_eq!(key.matches('{').count(), 1, "{key}");
        assert_eq!(key.matches('}').count(), 1, "{key}");
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'?' && b != b'['),
            "{key}"
        );
    }
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
