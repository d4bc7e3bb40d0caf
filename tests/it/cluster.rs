//! The Redis backend on a real 3-master Redis Cluster (feature `cluster`):
//! multi-key scripts are legal because every decision's keys share one hash
//! tag, keys spread over all masters, limits are exact across instances, and
//! a cluster that is not there never blocks a request.
//!
//! The tests share the test process' cluster ([`shared_cluster`], each
//! under a prefix of its own), but for the one that flushes every master's
//! scripts, which borrows [`exclusive_cluster`].

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::key::Global;
use tower_redis_ratelimit::{
    Algorithm, Backend, FailureMode, Key, Policy, Quota, RateLimitLayer, RedisBackend,
};

use crate::support::cluster::{RedisCluster, exclusive_cluster, shared_cluster};
use crate::support::unique_prefix;

const ALGORITHMS: [Algorithm; 2] = [Algorithm::SlidingLog, Algorithm::SlidingWindow];

fn backend(cluster: &RedisCluster, prefix: &str) -> RedisBackend {
    RedisBackend::cluster_builder(cluster.urls())
        .prefix(prefix)
        .build()
        .expect("valid cluster configuration")
}

/// Every key under `prefix` on node `i` (each master holds only its own
/// slots).
fn node_keys(cluster: &RedisCluster, i: usize, prefix: &str) -> Vec<String> {
    let mut conn = cluster.node_conn(i);
    redis::Commands::scan_match(&mut conn, format!("{prefix}:*"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn limits_are_exact_keys_spread_and_every_key_has_a_ttl() {
    let cluster = shared_cluster();
    let prefix = unique_prefix("spread");
    let backend = backend(cluster, &prefix);
    for alg in ALGORITHMS {
        let policy = Policy::new(format!("p-{alg:?}"))
            .quota(Quota::per_minute(3))
            .quota(Quota::per_hour(10))
            .algorithm(alg);
        // 60 clients: their keys hash to slots on every master.
        for c in 0..60 {
            let key = Key::new(format!("client-{c}"));
            for i in 0..3 {
                let d = backend.check(&policy, &key, 1).await.unwrap();
                assert!(d.is_allowed(), "{alg:?} client {c} request {i}");
                assert_eq!(d.quotas()[0].remaining, 2 - i);
                assert_eq!(d.quotas()[1].remaining, 9 - i);
            }
            let d = backend.check(&policy, &key, 1).await.unwrap();
            assert_eq!(d.denied_by(), Some(0), "{alg:?} client {c}");
            // Denied: the hour quota was not charged.
            assert_eq!(d.quotas()[1].remaining, 7);
        }
    }
    let mut total = 0;
    for node in 0..3 {
        let keys = node_keys(cluster, node, &prefix);
        assert!(!keys.is_empty(), "node {node} holds some limiter keys");
        let mut conn = cluster.node_conn(node);
        let mut tags = HashSet::new();
        for key in &keys {
            let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).unwrap();
            assert!(ttl > 0, "{key} has a TTL");
            let tag = &key[key.find('{').unwrap()..=key.find('}').unwrap()];
            tags.insert(tag.to_owned());
        }
        // Both quotas of a decision live together on one node.
        for tag in &tags {
            let on_node = keys.iter().filter(|k| k.contains(tag.as_str())).count();
            assert_eq!(on_node, 2, "{tag}: both quota keys on node {node}");
        }
        total += keys.len();
    }
    assert_eq!(total, 2 * 60 * 2, "one key per quota per client per policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_instances_admit_exactly_the_limit() {
    let cluster = shared_cluster();
    let prefix = unique_prefix("four-instances");
    for alg in ALGORITHMS {
        let policy = Arc::new(
            Policy::new(format!("shared-{alg:?}"))
                .quota(Quota::per_minute(50))
                .algorithm(alg),
        );
        let instances: Vec<RedisBackend> = (0..4).map(|_| backend(cluster, &prefix)).collect();
        let mut tasks = Vec::new();
        for backend in &instances {
            for _ in 0..100 {
                let backend = backend.clone();
                let policy = Arc::clone(&policy);
                tasks.push(tokio::spawn(async move {
                    backend
                        .check(&policy, &Key::new("one-client"), 1)
                        .await
                        .unwrap()
                        .is_allowed()
                }));
            }
        }
        let mut allowed = 0;
        for t in tasks {
            allowed += usize::from(t.await.unwrap());
        }
        assert_eq!(allowed, 50, "{alg:?}: exactly the limit across 4 instances");
    }
}

#[tokio::test]
async fn script_flush_on_every_master_is_transparent() {
    // Not the shared cluster: flushing its scripts would make the tests
    // beside this one reload theirs.
    let cluster = exclusive_cluster().await;
    let backend = backend(&cluster, &unique_prefix("flush"));
    let policy = Policy::new("flush")
        .quota(Quota::per_minute(100))
        .algorithm(Algorithm::SlidingLog);
    let keys: Vec<Key> = (0..20).map(|i| Key::new(format!("k{i}"))).collect();
    for round in 0..3u64 {
        for node in 0..3 {
            let mut conn = cluster.node_conn(node);
            let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
        }
        for key in &keys {
            let d = backend.check(&policy, key, 1).await.unwrap();
            assert!(d.is_allowed());
            assert_eq!(d.quotas()[0].remaining, 100 - round - 1);
        }
    }
}

#[tokio::test]
async fn through_the_layer_the_sixth_login_is_429() {
    let layer = RateLimitLayer::builder()
        .backend(backend(shared_cluster(), &unique_prefix("layer")))
        .default_policy(Policy::auth().key(Global))
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let svc = layer.layer(tower::service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    }));
    for i in 0..6 {
        let res = svc
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        let want = if i < 5 {
            StatusCode::OK
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(res.status(), want, "request {}", i + 1);
        assert!(res.headers().contains_key("ratelimit"));
    }
}

#[tokio::test]
async fn an_absent_cluster_never_blocks() {
    // Nothing listens on these ports.
    let urls: Vec<String> = (0..3)
        .map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            format!("redis://127.0.0.1:{port}/")
        })
        .collect();
    let started = Instant::now();
    let backend = RedisBackend::cluster(urls).expect("building connects nothing");
    assert!(started.elapsed() < Duration::from_millis(200));
    let deadline = Duration::from_millis(50);
    for mode in [FailureMode::Open, FailureMode::Closed] {
        let layer = RateLimitLayer::builder()
            .backend(backend.clone())
            .default_policy(Policy::default_api().key(Global).failure_mode(mode))
            .deadline(deadline)
            .build()
            .unwrap();
        let svc = layer.layer(tower::service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new("ok".to_owned()))
        }));
        for _ in 0..5 {
            let t = Instant::now();
            let res = svc
                .clone()
                .oneshot(Request::new(String::new()))
                .await
                .unwrap();
            assert!(
                t.elapsed() < deadline + Duration::from_millis(150),
                "{:?}",
                t.elapsed()
            );
            let want = match mode {
                FailureMode::Open => StatusCode::OK,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            assert_eq!(res.status(), want);
        }
    }
}
