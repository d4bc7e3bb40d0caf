//! A reset reaches every instance: two layers, each with its own backend
//! (its own connections) on one real Redis, stand for two instances of an
//! application. A client blocked on both under a per-day quota is reset —
//! with `Admin::reset` on one instance, or with a raw `DEL` of its keys in
//! Redis — and every instance admits it again within the blocked-cache max
//! age (1 s by default), though both still hold a day-long local denial.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http::{Method, StatusCode};
use tower_redis_ratelimit::{Admin, Algorithm, Key, Policy, Quota, RateLimitLayer, RedisBackend};

use crate::support::web;

use crate::support;

/// A per-day quota of 2 per client IP on the exact log: a denial's retry
/// time is about a day at any hour (the counter's is the rest of the
/// current UTC day).
fn policy() -> Policy {
    Policy::new("daily")
        .algorithm(Algorithm::SlidingLog)
        .quota(Quota::per_day(2))
}

fn backend(url: &str, prefix: &str) -> RedisBackend {
    RedisBackend::builder(url).prefix(prefix).build().unwrap()
}

/// One instance: the layer over its own backend, under a router called in
/// process.
fn instance(url: &str, prefix: &str, max_age: Option<Duration>) -> (Router, Admin) {
    let mut builder = RateLimitLayer::builder()
        .backend(backend(url, prefix))
        .default_policy(policy())
        .deadline(Duration::from_secs(2));
    if let Some(max_age) = max_age {
        builder = builder.blocked_cache_max_age(max_age);
    }
    let layer = builder.build().unwrap();
    let admin = layer.admin();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    (app, admin)
}

/// `GET /` from the loopback client ([`web::PEER`]).
async fn get_root(app: &Router) -> web::Sent {
    web::call(app, Method::GET, "/", web::PEER, &[]).await
}

async fn status(app: &Router) -> StatusCode {
    get_root(app).await.status
}

/// Uses up the client's daily quota through `a`, then gets a denial from
/// each instance, so both hold it in their blocked-client cache.
async fn block_on_both(a: &Router, b: &Router) {
    for _ in 0..2 {
        assert_eq!(status(a).await, StatusCode::OK);
    }
    for app in [a, b, a, b] {
        let sent = get_root(app).await;
        assert_eq!(sent.status, StatusCode::TOO_MANY_REQUESTS);
        let retry = support::headers::retry_after(&sent.headers);
        assert!(retry > 3_600, "a day-long denial, retry-after {retry}");
    }
}

/// Polls instance `name` every 20 ms until it admits; returns how long that
/// took.
async fn admitted_within(app: &Router, name: &str, bound: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if status(app).await == StatusCode::OK {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "instance {name} still denies {:?} after the reset",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The loopback client's key, as `PeerIp` makes it.
fn client_key() -> Key {
    Key::new("127.0.0.1")
}

#[tokio::test]
async fn admin_reset_on_one_instance_reaches_the_other_within_a_second() {
    let url = support::redis_url();
    let prefix = support::unique_prefix("reset-admin");
    let (a, admin_a) = instance(&url, &prefix, None);
    let (b, _) = instance(&url, &prefix, None);
    block_on_both(&a, &b).await;

    let reset_at = Instant::now();
    admin_a.reset("daily", &client_key()).await.unwrap();
    // Instance A forgot its own denial at once.
    assert_eq!(status(&a).await, StatusCode::OK);
    // Instance B never heard of the reset: its cached denial runs out
    // within the max age, then Redis (reset) admits.
    let took = admitted_within(&b, "B", Duration::from_millis(1_500)).await;
    let since_reset = reset_at.elapsed();
    eprintln!("instance B admitted {took:?} after polling began ({since_reset:?} after the reset)");
    assert!(
        since_reset < Duration::from_millis(1_500),
        "{since_reset:?}"
    );
    // Both admitted one request each of the fresh quota of 2: the next is denied.
    assert_eq!(status(&a).await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_raw_del_in_redis_reaches_every_instance_within_a_second() {
    let url = support::redis_url();
    let prefix = support::unique_prefix("reset-del");
    let (a, _) = instance(&url, &prefix, None);
    let (b, _) = instance(&url, &prefix, None);
    block_on_both(&a, &b).await;

    // An operator deletes the client's keys by hand.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)
        .unwrap();
    assert!(!keys.is_empty(), "the client's counters are in Redis");
    let deleted: u64 = redis::cmd("DEL").arg(&keys).query(&mut conn).unwrap();
    assert_eq!(deleted, keys.len() as u64);

    let reset_at = Instant::now();
    let took_a = admitted_within(&a, "A", Duration::from_millis(1_500)).await;
    let took_b = admitted_within(&b, "B", Duration::from_millis(1_500)).await;
    eprintln!(
        "after DEL: A admitted after {took_a:?}, B after {took_b:?} ({:?} in all)",
        reset_at.elapsed()
    );
    assert!(reset_at.elapsed() < Duration::from_millis(1_500));
}

#[tokio::test]
async fn the_bound_is_configurable_and_zero_turns_the_cache_off() {
    let url = support::redis_url();

    // Max age zero: no local denial at all, the reset is seen at once.
    let prefix = support::unique_prefix("reset-zero");
    let (a, admin_a) = instance(&url, &prefix, Some(Duration::ZERO));
    let (b, _) = instance(&url, &prefix, Some(Duration::ZERO));
    block_on_both(&a, &b).await;
    admin_a.reset("daily", &client_key()).await.unwrap();
    assert_eq!(status(&b).await, StatusCode::OK, "B asked Redis");

    // A long max age: instance B keeps its day-long denial past a second,
    // which is what the default bound prevents.
    let prefix = support::unique_prefix("reset-long");
    let (a, admin_a) = instance(&url, &prefix, Some(Duration::from_secs(3_600)));
    let (b, _) = instance(&url, &prefix, Some(Duration::from_secs(3_600)));
    block_on_both(&a, &b).await;
    admin_a.reset("daily", &client_key()).await.unwrap();
    assert_eq!(status(&a).await, StatusCode::OK, "A forgot its own");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        status(&b).await,
        StatusCode::TOO_MANY_REQUESTS,
        "B still answers from its cache"
    );
}
