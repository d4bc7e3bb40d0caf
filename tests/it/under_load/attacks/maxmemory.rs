//! Attack 3, maxmemory: random API keys make the limiter write a new key per
//! request into a Redis it shares with the application's cache.
//!
//! Before issue 17 the sliding-log script's first write (`ZREMRANGEBYSCORE`,
//! a write Redis does not check against maxmemory) let every later `ZADD`
//! through: with `maxmemory 8mb` and `noeviction` Redis grew to 32–54 MB
//! and refused the application's own `SET`s. Now the first write of a
//! decision is the one Redis checks, and a batch asks once for all its
//! checks: limiter writes stop at maxmemory (the failure mode applies).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use tokio::task::JoinSet;
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{Algorithm, Policy, Quota, RateLimitLayer};

use crate::support;
use crate::under_load::attacks::common::{Seen, Tally, app, info_field, send};

const MAXMEMORY: u64 = 8 << 20;
/// Load per algorithm: Redis reaches maxmemory within the first second (the
/// test checks that it did).
const PHASE: Duration = Duration::from_secs(2);
const TASKS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_writes_stop_at_maxmemory() {
    // Counts and bytes, no latency: beside the other tests that only count.
    let _loading = crate::support::loading().await;
    for algorithm in [
        Algorithm::SlidingLog,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ] {
        // A fresh server per algorithm: each starts empty, below maxmemory.
        let server = support::RedisServer::start();
        let mut conn = server.conn();
        for (name, value) in [
            ("maxmemory", MAXMEMORY.to_string()),
            ("maxmemory-policy", "noeviction".to_owned()),
        ] {
            let () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(value)
                .query(&mut conn)
                .unwrap();
        }
        // The application's cache fills Redis to 512 KB below maxmemory.
        let mut n = 0;
        while info_field(&mut conn, "memory", "used_memory") < MAXMEMORY - (512 << 10) {
            let mut pipe = redis::pipe();
            for _ in 0..64 {
                pipe.cmd("SET")
                    .arg(format!("cache:{n}"))
                    .arg(vec![b'x'; 4096])
                    .ignore();
                n += 1;
            }
            let () = pipe.query(&mut conn).unwrap();
        }
        let backend = support::redis_backend(&server.url(), "attack-oom");
        let layer = RateLimitLayer::builder()
            .backend(backend)
            .default_policy(
                Policy::new("oom")
                    .algorithm(algorithm)
                    .quota(Quota::per_minute(5))
                    .key(Header::new("x-api-key")),
            )
            .build()
            .unwrap();
        let service = app(&layer);
        let tally = Arc::new(Tally::default());
        let fresh = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + PHASE;
        let mut tasks = JoinSet::new();
        for _ in 0..TASKS {
            let (service, tally, fresh) = (service.clone(), Arc::clone(&tally), Arc::clone(&fresh));
            tasks.spawn(async move {
                while Instant::now() < until {
                    let n = fresh.fetch_add(1, Ordering::Relaxed);
                    // A long random-looking key, as an attacker would send.
                    let key = format!(
                        "{n:016x}-{:032x}",
                        u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    );
                    let request = Request::get("/")
                        .header("x-api-key", key)
                        .body(String::new())
                        .unwrap();
                    tally.add(send(&service, request).await);
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let used = info_field(&mut conn, "memory", "used_memory");
        eprintln!(
            "{algorithm:?}: {} requests ({} admitted, {} failed open), used_memory {:.1} MB",
            tally.total(),
            tally.get(Seen::Admitted),
            tally.get(Seen::FailedOpen),
            used as f64 / 1048576.0,
        );
        assert!(
            tally.get(Seen::FailedOpen) > 0,
            "{algorithm:?}: the phase reached maxmemory"
        );
        assert!(
            used <= MAXMEMORY + (1 << 20),
            "{algorithm:?}: used_memory {used} is past maxmemory {MAXMEMORY} + 1 MB"
        );
    }
}
