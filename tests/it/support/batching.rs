//! What the batching tests share (`tests/it/batching.rs`, and
//! `tests/it/under_load/cluster_batching.rs` on a cluster): policies of every algorithm
//! with one and two quotas, a summary of what must agree between a batched
//! and a single decision, and the two ways of sending a sequence of checks.

use std::time::Duration;

use tower_redis_ratelimit::{Algorithm, Backend, Decision, Key, Policy, Quota, RedisBackend};

/// Hour-long windows: the few milliseconds between two runs of a sequence
/// change no decision and no remaining count.
pub fn policies() -> Vec<Policy> {
    let mut out = Vec::new();
    for algorithm in [
        Algorithm::SlidingLog,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ] {
        let name = format!("{algorithm:?}").to_lowercase();
        // The second quota is the tighter one: it denies, and the first must
        // then count nothing (all or nothing).
        out.push(
            Policy::new(format!("{name}-two"))
                .algorithm(algorithm)
                .quota(Quota::per_hour(9))
                .quota(Quota::new(6, Duration::from_secs(7200))),
        );
        out.push(
            Policy::new(format!("{name}-one"))
                .algorithm(algorithm)
                .quota(Quota::per_hour(5)),
        );
    }
    out
}

/// What must agree between a batched and a single decision.
pub fn summary(d: &Decision) -> (bool, Option<usize>, Vec<u64>) {
    (
        d.is_allowed(),
        d.denied_by(),
        d.quotas().iter().map(|q| q.remaining).collect(),
    )
}

/// Makes every check of `seq` at once, in order, then waits for them all.
pub async fn concurrently(
    backend: &RedisBackend,
    policies: &[Policy],
    seq: &[(usize, String, u64)],
) -> Vec<Decision> {
    // A check takes its place in its lane's order when it is made.
    let tasks: Vec<_> = seq
        .iter()
        .map(|(p, key, cost)| tokio::spawn(backend.check(&policies[*p], &Key::new(key), *cost)))
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        let decision = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("a batched check ends")
            .unwrap();
        out.push(decision.expect("redis answers"));
    }
    out
}

/// Sends every check of `seq` alone, one after the other.
pub async fn one_by_one(
    backend: &RedisBackend,
    policies: &[Policy],
    seq: &[(usize, String, u64)],
) -> Vec<Decision> {
    let mut out = Vec::new();
    for (p, key, cost) in seq {
        out.push(
            backend
                .check(&policies[*p], &Key::new(key), *cost)
                .await
                .expect("redis answers"),
        );
    }
    out
}
