//! Batching of the Redis backend: concurrent checks on one connection go out
//! as few script calls, and decide exactly as the same checks sent one by one.
//!
//! Each test starts its own `redis-server`(s) (they read `INFO
//! commandstats`, so they do not share `REDIS_URL`).

use std::time::{Duration, Instant};

use crate::support::RedisServer;
use crate::support::batching::{concurrently, one_by_one, policies, summary};
use tower_redis_ratelimit::{
    Algorithm, Backend, BackendError, Decision, Key, Policy, Quota, RedisBackend,
};

use crate::support;

/// A fixed pseudo-random sequence of (policy, key, cost).
fn sequence(n: usize, policies: usize) -> Vec<(usize, String, u64)> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let policy = (x % policies as u64) as usize;
            let key = format!("client-{}", (x >> 8) % 4);
            let cost = 1 + (x >> 16) % 3;
            (policy, key, cost)
        })
        .collect()
}

fn backend(server: &RedisServer, batch: usize) -> RedisBackend {
    RedisBackend::builder(server.url())
        .prefix("b")
        .batch(batch)
        .build()
        .expect("valid configuration")
}

/// `calls` of a command in `INFO commandstats`, 0 if never called.
fn calls(server: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.conn())
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

fn reset_stats(server: &RedisServer) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut server.conn())
        .unwrap();
}

/// Waits while the next hour boundary (where the sliding window counter's
/// fixed windows start) is less than 10 s away.
fn away_from_hour_boundary(server: &RedisServer) {
    let (secs, _): (u64, u64) = redis::cmd("TIME").query(&mut server.conn()).unwrap();
    let left = 3600 - secs % 3600;
    if left < 10 {
        std::thread::sleep(Duration::from_secs(left + 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_checks_decide_as_single_calls_in_order() {
    let batched_server = RedisServer::start();
    let single_server = RedisServer::start();
    away_from_hour_boundary(&batched_server);
    let policies = policies();
    let seq = sequence(400, policies.len());
    let batched = backend(&batched_server, 16);
    let single = backend(&single_server, 1);

    reset_stats(&batched_server);
    let got = concurrently(&batched, &policies, &seq).await;
    let batched_calls = calls(&batched_server, "evalsha");
    let want = one_by_one(&single, &policies, &seq).await;

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
    // 400 checks at once: one lone call, then batches of at most 16 (and
    // one script load per script: a NOSCRIPT reply counts as a call).
    assert!(
        (25..=40).contains(&batched_calls),
        "{batched_calls} EVALSHA calls for 400 checks"
    );
    assert_eq!(calls(&single_server, "evalsha"), 400 + 3, "one per check");
    // No error inside the batches either (a probe of maxmemory that failed
    // with WRONGTYPE on every counter and GCRA batch once did).
    let errors: String = redis::cmd("INFO")
        .arg("errorstats")
        .query(&mut batched_server.conn())
        .unwrap();
    assert!(!errors.contains("WRONGTYPE"), "{errors}");
}

/// A hot client's identical checks go out as one run that Redis decides
/// that many times: through the limit (admitted, then denied) and across
/// both quotas (all or nothing), exactly as single calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_identical_checks_decide_as_single_calls() {
    let batched_server = RedisServer::start();
    let single_server = RedisServer::start();
    away_from_hour_boundary(&batched_server);
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .query(&mut batched_server.conn())
        .unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-max-len")
        .arg(1000)
        .query(&mut batched_server.conn())
        .unwrap();
    let policies = policies();
    // 3 × 80 checks per policy: one hot client, cost 1 then 2 then 1.
    let seq: Vec<(usize, String, u64)> = (0..policies.len())
        .flat_map(|p| {
            [1, 2, 1]
                .into_iter()
                .flat_map(move |cost| (0..80).map(move |_| (p, "hot".to_owned(), cost)))
        })
        .collect();
    let batched = backend(&batched_server, 64);
    let single = backend(&single_server, 1);
    let got = concurrently(&batched, &policies, &seq).await;
    let want = one_by_one(&single, &policies, &seq).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(summary(g), summary(w), "check {i}: {:?}", seq[i]);
    }
    assert!(got.iter().any(Decision::is_allowed));
    assert!(
        got.iter().any(|d| d.denied_by() == Some(1)),
        "the tighter quota denied"
    );

    // The batch calls carried runs: `EVALSHA sha 1 <key> <runs> <code> ...`,
    // the code being `algorithm + 4 * (fresh + 2 * (implicit + 2 * run
    // length))`, with one run standing for many checks.
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1000)
        .query(&mut batched_server.conn())
        .unwrap();
    let longest_run = log
        .iter()
        .filter_map(|entry| {
            let redis::Value::Array(fields) = entry else {
                return None;
            };
            let args: Vec<String> = redis::from_redis_value(fields.get(3)?.clone()).ok()?;
            (args.first()?.eq_ignore_ascii_case("evalsha")
                && args.get(2)? == "1"
                && args.get(4)? == "1")
                .then(|| Some(args.get(5)?.parse::<usize>().ok()? / 16))
                .flatten()
        })
        .max()
        .unwrap_or(0);
    assert!(
        longest_run >= 10,
        "longest run of one batch call: {longest_run}"
    );
}

#[tokio::test]
async fn a_lone_check_goes_out_at_once_as_its_own_call() {
    let server = RedisServer::start();
    let backend = backend(&server, 64);
    let policy = Policy::new("lone").quota(Quota::per_hour(1000));
    let key = Key::new("k");
    backend.check(&policy, &key, 1).await.unwrap(); // loads the script
    reset_stats(&server);
    let started = Instant::now();
    for _ in 0..50 {
        backend.check(&policy, &key, 1).await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(calls(&server, "evalsha"), 50);
    assert_eq!(calls(&server, "script|load"), 0, "no batch script needed");
    // No timer: 50 round trips on loopback take well under a second.
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_survive_a_script_flush_and_share_calls() {
    let server = RedisServer::start();
    let backend = backend(&server, 64);
    let policies = policies();
    let seq = sequence(200, policies.len());
    for round in 0..3 {
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut server.conn())
            .unwrap();
        reset_stats(&server);
        let decisions = concurrently(&backend, &policies, &seq).await;
        assert_eq!(decisions.len(), 200);
        let evalsha = calls(&server, "evalsha");
        assert!(
            evalsha < 20,
            "round {round}: {evalsha} calls for 200 checks"
        );
    }
}

/// A script error for one check of a batch (here a foreign key of another
/// type) fails that check alone, as a fault of its key
/// (`BackendError::Key`): the checks before and after it in the same batch
/// are decided and written back, as single calls would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_error_in_a_batch_fails_that_check_alone() {
    let server = RedisServer::start();
    let backend = backend(&server, 64);
    for algorithm in [
        Algorithm::SlidingLog,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ] {
        let policy = Policy::new(format!("err-{algorithm:?}"))
            .algorithm(algorithm)
            .quota(Quota::per_hour(10));
        let bad = Key::new("bad");
        let [bad_key] = <[String; 1]>::try_from(backend.redis_keys(&policy, &bad)).unwrap();
        let () = redis::cmd("RPUSH")
            .arg(&bad_key)
            .arg("not ours")
            .query(&mut server.conn())
            .unwrap();
        let (a, b) = (Key::new("a"), Key::new("b"));
        // A lone call, then one batch: b (twice, one key copy), the bad key,
        // b again.
        let checks = vec![
            backend.check(&policy, &a, 1),
            backend.check(&policy, &b, 1),
            backend.check(&policy, &b, 2),
            backend.check(&policy, &bad, 1),
            backend.check(&policy, &b, 1),
        ];
        let results: Vec<_> = futures_join(checks).await;
        for (i, result) in results.iter().enumerate() {
            if i == 3 {
                assert!(
                    matches!(result, Err(BackendError::Key(e)) if e.contains("WRONGTYPE")),
                    "{algorithm:?}: the bad key fails alone: {result:?}"
                );
            } else {
                assert!(
                    result.as_ref().is_ok_and(|d| d.is_allowed()),
                    "{algorithm:?} check {i}: {result:?}"
                );
            }
        }
        // Alone too, the bad key fails as a fault of its key.
        let alone = backend.check(&policy, &bad, 1).await;
        assert!(matches!(alone, Err(BackendError::Key(_))), "{alone:?}");
        // b's three checks (4 units) were written back.
        let d = backend.check(&policy, &b, 1).await.unwrap();
        assert_eq!(d.quotas()[0].remaining, 10 - 4 - 1, "{algorithm:?}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&backend.redis_keys(&policy, &b)[0])
            .query(&mut server.conn())
            .unwrap();
        assert!(ttl > 0, "written back with its expiry: {ttl}");
    }
}

/// Polls every future at once (each has taken its place when it was made).
async fn futures_join<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("ends")
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_fails_each_of_its_checks() {
    let backend = RedisBackend::builder(format!("redis://127.0.0.1:{}", support::dead_port()))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let policy = Policy::new("down").quota(Quota::per_hour(10));
    let tasks: Vec<_> = (0..100)
        .map(|i| tokio::spawn(backend.check(&policy, &Key::new(format!("k{}", i % 3)), 1)))
        .collect();
    for task in tasks {
        let result = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("a failed batch never leaves a check waiting")
            .unwrap();
        assert!(result.is_err(), "{result:?}");
    }
    assert!(backend.last_error().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_checks_never_stall_the_queue() {
    let server = RedisServer::start();
    let backend = backend(&server, 8);
    let policy = Policy::new("drop").quota(Quota::per_hour(1000));
    for _ in 0..20 {
        // The lone call and some queued ones dropped before they are polled.
        let checks: Vec<_> = (0..30)
            .map(|i| backend.check(&policy, &Key::new(format!("k{i}")), 1))
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
    // Dropped checks may still run (as a check cancelled by the deadline).
    assert!(d.quotas()[0].remaining <= 1000 - 21);
}

#[test]
fn batch_sizes_are_checked() {
    assert!(
        RedisBackend::builder("redis://127.0.0.1/")
            .batch(1024)
            .build()
            .is_ok()
    );
    assert!(
        RedisBackend::builder("redis://127.0.0.1/")
            .batch(0)
            .build()
            .is_ok()
    );
    let err = RedisBackend::builder("redis://127.0.0.1/")
        .batch(1025)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("1024"), "{err}");
    assert_eq!(
        err,
        tower_redis_ratelimit::ConfigError::BatchTooLarge {
            batch: 1025,
            max: 1024
        }
    );
    let off = RedisBackend::builder("redis://127.0.0.1/").batching(false);
    assert!(format!("{off:?}").contains("batch: 1"), "{off:?}");
}

/// The batch script's less common paths, against single calls: policies
/// sharing a name whose quota sets overlap (a check whose keys are partly
/// new to its batch, partly seen), one-quota runs among two-quota runs,
/// and keys of another type or holding a value that is not ours in the
/// middle of runs (each such check fails alone, or starts afresh, exactly
/// as alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_runs_and_bad_keys_decide_as_single_calls() {
    let batched_server = RedisServer::start();
    let single_server = RedisServer::start();
    away_from_hour_boundary(&batched_server);
    let batched = backend(&batched_server, 64);
    let single = backend(&single_server, 1);
    let mut policies = Vec::new();
    for algorithm in [
        Algorithm::SlidingLog,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ] {
        let name = format!("mix-{algorithm:?}");
        let hour = Quota::per_hour(9);
        let two_hours = Quota::new(6, Duration::from_secs(7200));
        policies.push(
            Policy::new(&name)
                .algorithm(algorithm)
                .quota(hour)
                .quota(two_hours),
        );
        policies.push(Policy::new(&name).algorithm(algorithm).quota(two_hours));
        policies.push(Policy::new(&name).algorithm(algorithm).quota(hour));
    }
    // The same foreign values on both servers: a list (wrong type) and a
    // string that is not ours (a sorted set's key holding a string is of
    // the wrong type too).
    for server in [&batched_server, &single_server] {
        for policy in &policies {
            for key in batched.redis_keys(policy, &Key::new("list")) {
                let () = redis::cmd("RPUSH")
                    .arg(&key)
                    .arg("x")
                    .query(&mut server.conn())
                    .unwrap_or(());
            }
            for key in batched.redis_keys(policy, &Key::new("junk")) {
                let () = redis::cmd("SET")
                    .arg(&key)
                    .arg("12 not ours")
                    .query(&mut server.conn())
                    .unwrap();
            }
        }
    }
    let keys = ["a", "b", "c", "list", "junk", "d"];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let seq: Vec<(usize, String, u64)> = (0..600)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let policy = (x % policies.len() as u64) as usize;
            let key = keys[((x >> 8) % keys.len() as u64) as usize].to_owned();
            (policy, key, 1 + (x >> 16) % 2)
        })
        .collect();
    let outcome = |r: Result<Decision, BackendError>| match r {
        Ok(d) => Ok(summary(&d)),
        Err(BackendError::Key(e)) => Err(e.contains("WRONGTYPE")),
        Err(other) => panic!("{other}"),
    };
    let tasks: Vec<_> = seq
        .iter()
        .map(|(p, key, cost)| tokio::spawn(batched.check(&policies[*p], &Key::new(key), *cost)))
        .collect();
    let mut got = Vec::new();
    for task in tasks {
        got.push(outcome(task.await.unwrap()));
    }
    for (i, (p, key, cost)) in seq.iter().enumerate() {
        let want = outcome(single.check(&policies[*p], &Key::new(key), *cost).await);
        assert_eq!(got[i], want, "check {i}: {:?}", seq[i]);
    }
    // Every kind of outcome happened: admissions, denials, faults.
    assert!(got.iter().any(|g| matches!(g, Ok((true, _, _)))));
    assert!(got.iter().any(|g| matches!(g, Ok((false, _, _)))));
    assert!(got.iter().any(|g| g == &Err(true)));
}
