//! Attack 2, poisoned keys: a few client keys hold a value of the wrong type
//! (written by someone else sharing the Redis, or left by an old version).
//!
//! Before issue 17 a script error for one check failed its whole batch and
//! counted as a backend failure for the one circuit breaker: with 1 % of
//! requests on 5 poisoned keys, 99 531 of 100 000 decisions failed open.
//! Now only the poisoned keys' own decisions fail (their failure mode).

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tokio::task::JoinSet;
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{Algorithm, Policy, Quota, RateLimitLayer};

use crate::support;
use crate::under_load::attacks::common::{Seen, Tally, app, send};

const CLIENTS: u64 = 500;
const POISONED: u64 = 5;
const REQUESTS: u64 = 12_000;
const TASKS: u64 = 48;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_key_fails_only_its_own_decisions() {
    let _heavy = crate::support::heavy().await;
    let server = support::RedisServer::start();
    let mut conn = server.conn();
    let backend = support::redis_backend(&server.url(), "attack-poison");
    for algorithm in [
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
        Algorithm::SlidingLog,
    ] {
        let policy = Policy::new(format!("poison-{algorithm:?}"))
            .algorithm(algorithm)
            .quota(Quota::per_hour(10_000))
            .key(Header::new("x-api-key"));
        for n in 0..POISONED {
            let key = tower_redis_ratelimit::key::Key::new(format!("c{n}"));
            for redis_key in backend.redis_keys(&policy, &key) {
                let () = redis::cmd("HSET")
                    .arg(redis_key)
                    .arg("not")
                    .arg("ours")
                    .query(&mut conn)
                    .unwrap();
            }
        }
        let layer = RateLimitLayer::builder()
            .backend(backend.clone())
            .default_policy(policy)
            .deadline(Duration::from_millis(500))
            .build()
            .unwrap();
        let service = app(&layer);
        let tally = Arc::new(Tally::default());
        let mut tasks = JoinSet::new();
        for t in 0..TASKS {
            let (service, tally) = (service.clone(), Arc::clone(&tally));
            tasks.spawn(async move {
                // Client i % CLIENTS: the poisoned ones get 1 % of requests.
                let mut i = t;
                while i < REQUESTS {
                    let request = Request::get("/")
                        .header("x-api-key", format!("c{}", i % CLIENTS))
                        .body(String::new())
                        .unwrap();
                    tally.add(send(&service, request).await);
                    i += TASKS;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let failed = tally.get(Seen::FailedOpen);
        eprintln!(
            "{algorithm:?}: {failed} of {} decisions failed open ({} poisoned)",
            tally.total(),
            REQUESTS * POISONED / CLIENTS
        );
        assert_eq!(tally.total(), REQUESTS);
        assert!(
            failed * 50 <= REQUESTS,
            "{algorithm:?}: {failed} of {REQUESTS} decisions failed open"
        );
        assert!(
            failed >= REQUESTS * POISONED / CLIENTS,
            "{algorithm:?}: the poisoned keys fail (open): {failed}"
        );
    }
}
