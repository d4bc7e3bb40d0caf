//! Batching on a real 3-master Redis Cluster (feature `cluster`): checks
//! are batched per hash slot, decide exactly as the same checks sent one by
//! one, and a lone check is still its own call of its algorithm's script.
//!
//! The tests that count calls (`INFO commandstats`, after `CONFIG
//! RESETSTAT`) or cached scripts, node-wide figures, borrow
//! [`exclusive_cluster`] (one test at a time); the one that kills a master
//! starts its own cluster; the others share the test process'
//! ([`shared_cluster`]). Each keeps to keys under a prefix of its own.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::batching::{concurrently, one_by_one, policies, summary};
use crate::support::cluster::{RedisCluster, exclusive_cluster, shared_cluster};
use crate::support::unique_prefix;
use tower_redis_ratelimit::{Algorithm, Backend, Decision, Key, Policy, Quota, RedisBackend};

/// How many ordinary identities [`sequence`] spreads its checks over.
const IDENTITIES: u64 = 24;

/// A fixed pseudo-random sequence of (policy, key, cost): a third of the
/// checks for one hot identity, the rest over [`IDENTITIES`] others.
fn sequence(n: usize, policies: usize) -> Vec<(usize, String, u64)> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let policy = (x % policies as u64) as usize;
            let key = if (x >> 24).is_multiple_of(3) {
                "hot".to_owned()
            } else {
                format!("client-{}", (x >> 8) % IDENTITIES)
            };
            let cost = 1 + (x >> 16) % 3;
            (policy, key, cost)
        })
        .collect()
}

fn backend(cluster: &RedisCluster, prefix: &str, batch: usize) -> RedisBackend {
    RedisBackend::cluster_builder(cluster.urls())
        .prefix(prefix)
        .batch(batch)
        .build()
        .expect("valid cluster configuration")
}

/// `calls` of a command in `INFO commandstats` of node `i`, 0 if never
/// called.
fn calls(cluster: &RedisCluster, i: usize, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut cluster.node_conn(i))
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// `calls` of a command summed over every node (here: every master).
fn total_calls(cluster: &RedisCluster, command: &str) -> u64 {
    (0..cluster.ports.len())
        .map(|i| calls(cluster, i, command))
        .sum()
}

/// The scripts node `i` holds in its cache (`INFO memory`).
fn cached_scripts(cluster: &RedisCluster, i: usize) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut cluster.node_conn(i))
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("number_of_cached_scripts:"))
        .map(|n| n.trim().parse().unwrap())
        .expect("INFO memory names number_of_cached_scripts")
}

fn reset_stats(cluster: &RedisCluster) {
    for i in 0..cluster.ports.len() {
        let () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut cluster.node_conn(i))
            .unwrap();
    }
}

/// Waits while the next hour boundary (where the sliding window counter's
/// fixed windows start) is less than 10 s away.
fn away_from_hour_boundary(cluster: &RedisCluster) {
    let (secs, _): (u64, u64) = redis::cmd("TIME").query(&mut cluster.node_conn(0)).unwrap();
    let left = 3600 - secs % 3600;
    if left < 10 {
        std::thread::sleep(Duration::from_secs(left + 1));
    }
}

/// One check on a policy of its own, until the cluster connection is made
/// (batching starts once it is).
async fn connect(backend: &RedisBackend) {
    let policy = Policy::new("warm-up").quota(Quota::per_hour(1000));
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        backend.check(&policy, &Key::new("warm-up"), 1),
    )
    .await
    .expect("the cluster answers");
    result.expect("the cluster decides");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_checks_on_a_cluster_decide_as_single_calls_in_order() {
    // It compares the batched and the single calls' times.
    let _heavy = crate::support::heavy().await;
    let cluster = exclusive_cluster().await;
    away_from_hour_boundary(&cluster);
    let policies = policies();
    let n = 900;
    let seq = sequence(n, policies.len());
    // The same slots under two prefixes (the prefix is outside the hash
    // tag): one backend batching, one sending each check alone.
    let batched = backend(&cluster, &unique_prefix("batched"), 64);
    let single = backend(&cluster, &unique_prefix("single"), 1);
    connect(&batched).await;
    connect(&single).await;

    // The checks spread over many slots, on every master, and one hot
    // identity takes a third of them.
    let shards = cluster.shards_seen_by(0);
    assert_eq!(shards.len(), 3, "{shards:?}");
    let slots: HashSet<u16> = seq
        .iter()
        .map(|(p, key, _)| cluster.keyslot(0, &format!("{{{}:{key}}}", policies[*p].name())))
        .collect();
    let masters: HashSet<u16> = slots
        .iter()
        .map(|&slot| shards.iter().find(|s| s.owns(slot)).unwrap().port)
        .collect();
    let hot = seq.iter().filter(|(_, key, _)| key == "hot").count();
    eprintln!(
        "{n} checks over {} slots on {} masters, {hot} for the hot identity",
        slots.len(),
        masters.len()
    );
    assert!(slots.len() >= 100, "{} slots", slots.len());
    assert_eq!(masters.len(), 3);
    assert!(hot > n / 4, "{hot} hot checks");

    reset_stats(&cluster);
    let started = Instant::now();
    let got = concurrently(&batched, &policies, &seq).await;
    let batched_time = started.elapsed();
    let per_master: Vec<u64> = (0..3).map(|i| calls(&cluster, i, "evalsha")).collect();
    let batched_calls: u64 = per_master.iter().sum();
    reset_stats(&cluster);
    let started = Instant::now();
    let want = one_by_one(&single, &policies, &seq).await;
    let single_time = started.elapsed();
    let single_calls = total_calls(&cluster, "evalsha");
    eprintln!(
        "batched: {batched_calls} EVALSHA calls ({per_master:?} per master, {:.2} per check) \
         in {batched_time:?}; one by one: {single_calls} in {single_time:?}",
        batched_calls as f64 / n as f64
    );

    let mut denied = [0usize; 2];
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(summary(g), summary(w), "check {i}: {:?}", seq[i]);
        if let Some(by) = g.denied_by() {
            denied[by] += 1;
        }
    }
    // The sequence exercised denials by either quota, and admissions.
    assert!(denied[0] > 0 && denied[1] > 0, "{denied:?}");
    assert!(got.iter().any(Decision::is_allowed));
    // Every master decided some checks, in batches: far fewer calls than
    // checks (a lone call, then batches, per slot; plus a script load per
    // script and master: a NOSCRIPT reply counts as a call).
    assert!(per_master.iter().all(|&c| c > 0), "{per_master:?}");
    assert!(
        batched_calls * 2 <= n as u64,
        "{batched_calls} EVALSHA calls for {n} checks"
    );
    // One by one: one call per check, plus at most a load per algorithm
    // and master.
    assert!(
        (n as u64..=n as u64 + 9).contains(&single_calls),
        "{single_calls} EVALSHA calls for {n} checks one by one"
    );
}

#[tokio::test]
async fn a_lone_check_on_a_cluster_is_its_own_call() {
    let cluster = exclusive_cluster().await;
    // Only the scripts this test loads are cached.
    for i in 0..cluster.ports.len() {
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut cluster.node_conn(i))
            .unwrap();
    }
    let backend = backend(&cluster, &unique_prefix("lone"), 64);
    connect(&backend).await;
    let policy = Policy::new("lone").quota(Quota::per_hour(1000));
    let key = Key::new("k");
    backend.check(&policy, &key, 1).await.unwrap(); // loads the script
    reset_stats(&cluster);
    let started = Instant::now();
    for i in 0..50 {
        let d = backend.check(&policy, &key, 1).await.unwrap();
        assert_eq!(d.quotas()[0].remaining, 1000 - 2 - i);
    }
    let elapsed = started.elapsed();
    assert_eq!(total_calls(&cluster, "evalsha"), 50, "one call per check");
    assert_eq!(total_calls(&cluster, "script|load"), 0);
    // Only the algorithm's own script ever ran: the batch script was never
    // loaded anywhere.
    for i in 0..3 {
        assert!(cached_scripts(&cluster, i) <= 1, "node {i}");
    }
    // No timer: 50 round trips on loopback take well under a second.
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");

    // Concurrent checks of that client do batch: the batch script is then
    // loaded on its master, next to the algorithm's own.
    let checks: Vec<_> = (0..40)
        .map(|_| tokio::spawn(backend.check(&policy, &key, 1)))
        .collect();
    for check in checks {
        check.await.unwrap().unwrap();
    }
    let slot = cluster.keyslot(0, "{lone:k}");
    let shards = cluster.shards_seen_by(0);
    let master = cluster.index_of(shards.iter().find(|s| s.owns(slot)).unwrap().port);
    assert_eq!(cached_scripts(&cluster, master), 2);
    let d = backend.check(&policy, &key, 1).await.unwrap();
    assert_eq!(d.quotas()[0].remaining, 1000 - 2 - 50 - 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_checks_never_stall_a_slot() {
    let backend = backend(shared_cluster(), &unique_prefix("dropped"), 8);
    connect(&backend).await;
    let policy = Policy::new("drop").quota(Quota::per_hour(1000));
    for _ in 0..20 {
        // Lone calls and queued ones dropped before they are polled, on a
        // few slots.
        let checks: Vec<_> = (0..30)
            .map(|i| backend.check(&policy, &Key::new(format!("k{}", i % 4)), 1))
            .collect();
        for (i, check) in checks.into_iter().enumerate() {
            if i % 3 == 0 {
                drop(check);
            } else {
                tokio::time::timeout(Duration::from_secs(5), check)
                    .await
                    .expect("never stalls")
                    .unwrap();
            }
        }
    }
    let d = backend.check(&policy, &Key::new("k1"), 1).await.unwrap();
    // Dropped checks still run on a cluster (a lone call is spawned when
    // the check is made, a queued one goes out in its slot's batch), before
    // this last one in its slot's order: 8 checks of `k1` in each round.
    assert_eq!(d.quotas()[0].remaining, 1000 - 20 * 8 - 1, "{d:?}");
}

/// How a check of [`a_master_killed_under_batched_load_strands_no_check`]
/// ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Decided,
    Failed,
    /// Not within the layer's usual 50 ms deadline.
    Late,
}

/// A check of [`a_master_killed_under_batched_load_strands_no_check`]: the
/// hot identity (by master), when it was made, and how it ended.
type Sample = (usize, Duration, Outcome);

/// How many checks of the killed master's hot identity (`1`) were decided
/// since its last undecided one; 0 before it has any.
fn settled(samples: &[Sample]) -> usize {
    let Some(last_undecided) = samples
        .iter()
        .filter(|&&(m, _, o)| m == 1 && o != Outcome::Decided)
        .map(|&(_, at, _)| at)
        .max()
    else {
        return 0;
    };
    samples
        .iter()
        .filter(|&&(m, at, o)| m == 1 && at > last_undecided && o == Outcome::Decided)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_batched_load_strands_no_check() {
    let _heavy = crate::support::heavy().await;
    const DEADLINE: Duration = Duration::from_millis(50);
    const BURST: usize = 10;
    let mut cluster = RedisCluster::start_with_replicas();
    let backend = backend(&cluster, &unique_prefix("failover"), 64);
    connect(&backend).await;
    let policy = Policy::new("hot")
        .algorithm(Algorithm::SlidingWindow)
        .quota(Quota::per_hour(1_000_000));
    // One hot identity on each master.
    let shards = cluster.shards_seen_by(0);
    assert_eq!(shards.len(), 3, "{shards:?}");
    let hot: Vec<String> = (0..3)
        .map(|m| {
            (0..1000)
                .map(|i| format!("hot-{i}"))
                .find(|id| shards[m].owns(cluster.keyslot(0, &format!("{{hot:{id}}}"))))
                .expect("an identity on each master")
        })
        .collect();
    let victim = cluster.index_of(shards[1].port);
    reset_stats(&cluster);

    // Bursts of concurrent checks on each hot identity every 10 ms (so
    // batches are in flight on each master when one dies); the master of
    // `hot[1]` is killed after half a second. The load goes on until
    // `hot[1]` has been decided [`SETTLED`] times in a row since its last
    // miss (its replica took over, and its lane flows again), with every
    // check made so far ended; or for [`AT_MOST`].
    const KILL_AFTER: Duration = Duration::from_millis(500);
    const SETTLED: usize = 2000;
    const AT_MOST: Duration = Duration::from_secs(20);
    let ended: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let started = Instant::now();
    let mut running = Vec::new();
    let mut killed_at = None;
    let mut next = tokio::time::Instant::now();
    loop {
        if killed_at.is_none() && started.elapsed() >= KILL_AFTER {
            cluster.kill(victim);
            killed_at = Some(started.elapsed());
        }
        for (m, id) in hot.iter().enumerate() {
            for _ in 0..BURST {
                let at = started.elapsed();
                let check = backend.check(&policy, &Key::new(id.as_str()), 1);
                let ended = Arc::clone(&ended);
                running.push(tokio::spawn(async move {
                    let outcome = match tokio::time::timeout(DEADLINE, check).await {
                        Ok(Ok(_)) => Outcome::Decided,
                        Ok(Err(_)) => Outcome::Failed,
                        Err(_) => Outcome::Late,
                    };
                    ended.lock().unwrap().push((m, at, outcome));
                }));
            }
        }
        next += Duration::from_millis(10);
        tokio::time::sleep_until(next.max(tokio::time::Instant::now())).await;
        let done = |ended: &Mutex<Vec<Sample>>| {
            started.elapsed() >= AT_MOST || settled(&ended.lock().unwrap()) >= SETTLED
        };
        if killed_at.is_some() && done(&ended) {
            // The checks still running end within their deadline: judge
            // again with all of them (a late miss means going on).
            for task in running.drain(..) {
                task.await.unwrap();
            }
            if done(&ended) {
                break;
            }
        }
    }
    let killed_at = killed_at.unwrap();
    let mut samples = std::mem::take(&mut *ended.lock().unwrap());
    samples.sort_by_key(|&(_, at, _)| at);

    // The killed master's hot identity: decided again once its replica took
    // over (the last undecided check, then only decisions), well within
    // the 15 s the failover tests allow.
    let last_undecided = samples
        .iter()
        .filter(|(m, _, o)| *m == 1 && *o != Outcome::Decided)
        .map(|(_, at, _)| *at)
        .max()
        .expect("the killed master's checks failed for a while");
    let recovered = last_undecided.saturating_sub(killed_at);
    let decided_after = samples
        .iter()
        .filter(|(m, at, o)| *m == 1 && *at > last_undecided && *o == Outcome::Decided)
        .count();
    // The healthy masters' hot identities: decided throughout, but for the
    // loaded machine's rare deadline misses and the few ticks in which the
    // client learns that the topology changed (it stalls every lane for
    // about 100 ms, as it notices the dead master and as the replica takes
    // over): at most 1 % of the checks of 14 s of such load, what the test
    // allowed when its load went on for a fixed 14 s.
    const HEALTHY_MISSES: usize = 14_000 / 10 * 2 * BURST / 100;
    let healthy: Vec<_> = samples.iter().filter(|(m, _, _)| *m != 1).collect();
    let healthy_undecided = healthy
        .iter()
        .filter(|(_, _, o)| *o != Outcome::Decided)
        .count();
    // Batches kept flowing on every master, the promoted replica included.
    let survivors: Vec<usize> = (0..cluster.ports.len())
        .filter(|&i| cluster.alive(i))
        .collect();
    let evalsha: u64 = survivors
        .iter()
        .map(|&i| calls(&cluster, i, "evalsha"))
        .sum();
    eprintln!(
        "{} checks; the killed master's hot identity decided again {} ms after the kill \
         ({decided_after} decided since); healthy masters' hot identities: {healthy_undecided} \
         of {} undecided; {evalsha} EVALSHA calls on the surviving nodes",
        samples.len(),
        recovered.as_millis(),
        healthy.len()
    );
    assert!(recovered < Duration::from_secs(15), "{recovered:?}");
    assert!(decided_after > 1000, "only {decided_after} decided after");
    assert!(
        healthy_undecided <= HEALTHY_MISSES,
        "{healthy_undecided} of {} healthy checks undecided",
        healthy.len()
    );
    assert!(
        evalsha * 2 <= samples.len() as u64,
        "{evalsha} EVALSHA calls for {} checks",
        samples.len()
    );

    // Every lane settles: a burst on each identity is decided, batched, with
    // exact counts on the promoted replica.
    let before = backend
        .check(&policy, &Key::new(hot[1].as_str()), 1)
        .await
        .expect("the promoted replica decides");
    let checks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(backend.check(&policy, &Key::new(hot[1].as_str()), 1)))
        .collect();
    for check in checks {
        tokio::time::timeout(Duration::from_secs(5), check)
            .await
            .expect("a settled lane decides")
            .unwrap()
            .unwrap();
    }
    let after = backend
        .check(&policy, &Key::new(hot[1].as_str()), 1)
        .await
        .unwrap();
    assert_eq!(
        before.quotas()[0].remaining - after.quotas()[0].remaining,
        51
    );
}
