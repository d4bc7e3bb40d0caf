//! Attack: take Redis away from a fleet. With `FailureMode::Local` each
//! instance decides alone while Redis is down; if each applied the whole
//! limit, N instances would admit N times the limit, and a client spreading
//! its requests over them (round-robin behind a load balancer) gets that.
//! Each instance must apply its share of the limit instead.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{Backend, FailureMode, Policy, Quota, RateLimitLayer, RedisBackend};

use crate::support::{self, RedisServer};

/// The policy's limit, per minute, for the whole fleet.
const LIMIT: u64 = 30;
/// The application instances sharing one Redis.
const INSTANCES: u64 = 3;
/// How long the fleet serves traffic with Redis up (every instance has
/// announced itself several times by then).
const HEALTHY: Duration = Duration::from_secs(5);
/// The requests of the client once Redis is gone.
const REQUESTS: u64 = 300;

/// One application instance: a layer over its own `RedisBackend` (one
/// connection, one instance id) under the fleet's shared key prefix.
fn instance(url: &str, prefix: &str) -> (RateLimitLayer, RedisBackend) {
    let backend = RedisBackend::builder(url)
        .prefix(prefix)
        .build()
        .expect("a valid URL");
    let policy = Policy::new("fleet")
        .quota(Quota::per_minute(LIMIT))
        .key(Header::new("x-client"))
        .failure_mode(FailureMode::Local);
    let layer = RateLimitLayer::builder()
        .backend(backend.clone())
        .default_policy(policy)
        .deadline(Duration::from_millis(100))
        .build()
        .expect("a valid configuration");
    (layer, backend)
}

async fn send(layer: &RateLimitLayer, client: &str) -> StatusCode {
    let inner = tower::service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let request = Request::get("/")
        .header("x-client", client)
        .body(String::new())
        .unwrap();
    let response = layer.layer(inner).oneshot(request).await.unwrap();
    response.status()
}

/// 3 instances, Redis killed, one client round-robin over them: at most
/// the limit plus one rounding unit per instance is admitted (before the
/// fleet share: 3 × 30 = 90).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_admits_the_fleets_limit_not_n_times_it() {
    // Three instances serving a little load, counted, not timed: beside the
    // other tests that only count.
    let _loading = crate::support::loading().await;
    let mut server = RedisServer::start();
    let prefix = support::unique_prefix("fleet");
    let fleet: Vec<_> = (0..INSTANCES)
        .map(|_| instance(&server.url(), &prefix))
        .collect();

    // Redis up: the fleet serves other clients (Redis decides).
    let start = Instant::now();
    let mut round = 0;
    while start.elapsed() < HEALTHY {
        round += 1;
        for (layer, _) in &fleet {
            let client = format!("client-{round}");
            assert_eq!(send(layer, &client).await, StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Each instance counts the fleet, in one bounded key with a TTL.
    for (_, backend) in &fleet {
        assert_eq!(backend.instances().map(|n| n.get()), Some(INSTANCES as u32));
    }
    let key = format!("{prefix}:{{instances}}");
    let mut conn = server.conn();
    let members: u64 = redis::cmd("ZCARD").arg(&key).query(&mut conn).unwrap();
    assert_eq!(members, INSTANCES);
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
    assert!((1..=5000).contains(&ttl), "PTTL {ttl}");

    server.kill();
    let mut admitted = 0;
    for i in 0..REQUESTS {
        let (layer, _) = &fleet[(i % INSTANCES) as usize];
        match send(layer, "spreader").await {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("request {i}: {other}"),
        }
    }
    eprintln!("admitted {admitted} of {REQUESTS} with Redis down (limit {LIMIT})");
    assert!(
        (LIMIT..=LIMIT + INSTANCES * 3).contains(&admitted),
        "{INSTANCES} instances admitted {admitted} with Redis down: the limit is {LIMIT}"
    );
}

/// Sends one request to each layer, each from a client of its own, until
/// `done` holds (at most 10 s).
async fn serve_until(fleet: &[(RateLimitLayer, RedisBackend)], mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut round = 0;
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "never done");
        round += 1;
        for (layer, _) in fleet {
            send(layer, &format!("client-{round}")).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An instance dropped stops announcing itself and leaves the count within
/// a few seconds: the key holds live instances only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_instance_leaves_the_count() {
    // Three instances serving a little load, counted, not timed: beside the
    // other tests that only count.
    let _loading = crate::support::loading().await;
    let server = RedisServer::start();
    let prefix = support::unique_prefix("fleet-drop");
    let mut fleet: Vec<_> = (0..2).map(|_| instance(&server.url(), &prefix)).collect();
    let count = |fleet: &[(RateLimitLayer, RedisBackend)]| fleet[0].1.instances();
    serve_until(&fleet, || count(&fleet).is_some_and(|n| n.get() == 2)).await;
    drop(fleet.pop());
    let dropped = Instant::now();
    serve_until(&fleet, || count(&fleet).is_some_and(|n| n.get() == 1)).await;
    let left = dropped.elapsed();
    // Forgotten 5 s after its last announcement, seen at the next one.
    assert!(left <= Duration::from_millis(6500), "{left:?}");
    let key = format!("{prefix}:{{instances}}");
    let members: u64 = redis::cmd("ZCARD")
        .arg(&key)
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(members, 1);
}

/// Past `maxmemory` (policy `noeviction`) Redis refuses the announcement,
/// as it refuses the limiter's other writes: nothing is stored, and the
/// instance count stays unknown (no division).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_respect_maxmemory() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory-policy", "noeviction"])
        .exec(&mut conn)
        .unwrap();
    redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "1"])
        .exec(&mut conn)
        .unwrap();
    let prefix = support::unique_prefix("fleet-oom");
    let (layer, backend) = instance(&server.url(), &prefix);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        send(&layer, "someone").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(backend.instances(), None);
    let keys: u64 = redis::cmd("DBSIZE").query(&mut conn).unwrap();
    assert_eq!(keys, 0, "nothing written past maxmemory");
    // Memory back: the instance is counted.
    redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "0"])
        .exec(&mut conn)
        .unwrap();
    serve_until(std::slice::from_ref(&(layer, backend.clone())), || {
        backend.instances().is_some()
    })
    .await;
    assert_eq!(backend.instances().map(|n| n.get()), Some(1));
}
