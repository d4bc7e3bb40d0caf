//! Races: many concurrent checks of one client, from several application
//! instances (separate backends, separate connections) against one Redis, and
//! from many tasks and threads against one in-process backend. The limit must
//! hold exactly: never one admission more, never one less.

use std::sync::Arc;
#[cfg(feature = "test-util")]
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Barrier;
#[cfg(feature = "test-util")]
use tower_redis_ratelimit::MemoryBackend;
#[cfg(feature = "test-util")]
use tower_redis_ratelimit::clock::FakeClock;
use tower_redis_ratelimit::{Algorithm, Backend, Decision, Key, Policy, Quota, RedisBackend};

use crate::support;

const INSTANCES: usize = 4;
const PER_INSTANCE: usize = 100;
const SEC: u64 = 1_000_000;

fn policy(name: &str, alg: Algorithm, quotas: &[Quota]) -> Policy {
    quotas
        .iter()
        .fold(Policy::new(name).algorithm(alg), |p, q| p.quota(*q))
}

/// The memory backend's decision of one unit, from a plain thread: its
/// future is ready at once, so one poll, without a runtime, gets it.
#[cfg(feature = "test-util")]
fn decide_now(backend: &MemoryBackend, policy: &Policy, key: &Key) -> Decision {
    let mut context = Context::from_waker(Waker::noop());
    match backend.check(policy, key, 1).as_mut().poll(&mut context) {
        Poll::Ready(decision) => decision.expect("the memory backend never fails"),
        Poll::Pending => panic!("the memory backend decides at once"),
    }
}

/// Fires `tasks` checks of one key at once (released together by a barrier),
/// spreading them round-robin over `backends`; returns every decision.
async fn storm<B: Backend + Clone>(backends: &[B], policy: &Policy, tasks: usize) -> Vec<Decision> {
    let barrier = Arc::new(Barrier::new(tasks));
    let key = Key::new("one-hot-client");
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let backend = backends[i % backends.len()].clone();
            let (policy, key, barrier) = (policy.clone(), key.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                backend.check(&policy, &key, 1).await
            })
        })
        .collect();
    let mut decisions = Vec::with_capacity(tasks);
    for h in handles {
        let result = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("check finished")
            .expect("task did not panic");
        decisions.push(result.unwrap_or_else(|e| panic!("backend error: {e}")));
    }
    decisions
}

/// Waits, if needed, so that no fixed-window boundary of `window` (on the
/// Redis clock) falls within the next few seconds: a counter's boundary in the
/// middle of the storm would legitimately let the previous window decay.
async fn avoid_boundary(url: &str, window: Duration) {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let now = s * SEC + us;
    let w = window.as_micros() as u64;
    let left = w - now % w;
    if left < 6 * SEC {
        tokio::time::sleep(Duration::from_micros(left + 50_000)).await;
    }
}

async fn redis_instances_admit_exactly(
    test: &str,
    alg: Algorithm,
    quotas: &[Quota],
    expected: usize,
) {
    let url = support::redis_url();
    let prefix = support::unique_prefix(test);
    // Four application instances: four backends, four connections.
    let backends: Vec<RedisBackend> = (0..INSTANCES)
        .map(|_| {
            RedisBackend::builder(url.as_str())
                .prefix(prefix.as_str())
                .build()
                .unwrap()
        })
        .collect();
    let policy = policy(test, alg, quotas);
    if alg == Algorithm::SlidingWindow {
        for q in quotas {
            avoid_boundary(&url, q.window()).await;
        }
    }
    let decisions = storm(&backends, &policy, INSTANCES * PER_INSTANCE).await;
    let allowed: Vec<&Decision> = decisions.iter().filter(|d| d.is_allowed()).collect();
    assert_eq!(allowed.len(), expected, "{test}: admitted");
    // Every admitted request saw a distinct remaining count: 0..expected.
    let tightest = quotas
        .iter()
        .enumerate()
        .min_by_key(|(_, q)| q.limit())
        .map(|(i, _)| i)
        .unwrap();
    let mut seen: Vec<u64> = allowed
        .iter()
        .map(|d| d.quotas()[tightest].remaining)
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..expected as u64).collect::<Vec<_>>(),
        "{test}: remaining"
    );
    for d in decisions.iter().filter(|d| !d.is_allowed()) {
        assert_eq!(d.denied_by(), Some(tightest), "{test}: {d:?}");
        assert!(d.retry_after().unwrap() > Duration::ZERO);
    }
    // Redis holds exactly what was admitted, in every quota's key (for the log,
    // one member per unit: request ids from different instances never clash).
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    // Four instances, four connections (plus this one).
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
    assert!(clients.lines().count() > INSTANCES, "{clients}");
    let key = Key::new("one-hot-client");
    let names = backends[0].redis_keys(&policy, &key);
    assert_eq!(names.len(), quotas.len());
    for name in names {
        let stored: u64 = match alg {
            Algorithm::SlidingLog => redis::cmd("ZCARD").arg(&name).query(&mut conn).unwrap(),
            // The counter's string "<start> <count> <previous count>".
            _ => {
                let value: String = redis::cmd("GET").arg(&name).query(&mut conn).unwrap();
                value.split(' ').nth(1).unwrap().parse().unwrap()
            }
        };
        assert_eq!(stored, expected as u64, "{name}");
    }
    // And every instance now sees the client as exhausted.
    for b in &backends {
        let d = b.check(&policy, &key, 1).await.unwrap();
        assert!(!d.is_allowed(), "{test}: admitted after the storm");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_redis_instances_sliding_log_admit_exactly_the_limit() {
    redis_instances_admit_exactly(
        "storm-log",
        Algorithm::SlidingLog,
        &[Quota::per_minute(50)],
        50,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_redis_instances_sliding_window_admit_exactly_the_limit() {
    redis_instances_admit_exactly(
        "storm-win",
        Algorithm::SlidingWindow,
        &[Quota::per_minute(50)],
        50,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_redis_instances_two_quotas_sliding_log_admit_exactly_the_tighter() {
    redis_instances_admit_exactly(
        "storm-log2",
        Algorithm::SlidingLog,
        &[Quota::per_minute(50), Quota::per_hour(30)],
        30,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_redis_instances_two_quotas_sliding_window_admit_exactly_the_tighter() {
    redis_instances_admit_exactly(
        "storm-win2",
        Algorithm::SlidingWindow,
        &[Quota::per_minute(50), Quota::per_hour(30)],
        30,
    )
    .await;
}

#[cfg(feature = "test-util")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_backend_many_tasks_admit_exactly_the_limit() {
    for alg in [Algorithm::SlidingLog, Algorithm::SlidingWindow] {
        for (quotas, expected) in [
            (vec![Quota::per_minute(50)], 50),
            (vec![Quota::per_minute(50), Quota::per_hour(30)], 30),
        ] {
            // A frozen clock: no boundary, no decay, the count alone decides.
            let backend = MemoryBackend::with_clock(FakeClock::new(86_400 * SEC));
            let p = policy("mem-storm", alg, &quotas);
            let decisions = storm(&[backend], &p, 400).await;
            let admitted = decisions.iter().filter(|d| d.is_allowed()).count();
            assert_eq!(admitted, expected, "{alg:?} {quotas:?}");
        }
    }
}

#[cfg(feature = "test-util")]
#[test]
fn memory_backend_many_threads_admit_exactly_the_limit() {
    for alg in [Algorithm::SlidingLog, Algorithm::SlidingWindow] {
        let backend = MemoryBackend::with_clock(FakeClock::new(86_400 * SEC));
        let p = policy("thread-storm", alg, &[Quota::per_minute(50)]);
        let barrier = std::sync::Barrier::new(8);
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        (0..50)
                            .filter(|_| decide_now(&backend, &p, &Key::new("hot")).is_allowed())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 50, "{alg:?}");
        // Other clients were never involved.
        assert!(decide_now(&backend, &p, &Key::new("cold")).is_allowed());
    }
}
