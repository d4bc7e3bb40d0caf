//! Attack 1, cost amplification: clients within their own quota send bursts
//! of maximum-cost requests, so that Redis slows, decisions miss their
//! deadline, the circuit breaker opens and an over-quota client gets
//! through (or, failing closed, honest clients get 503s).
//!
//! Before issue 17 a sliding-log request of cost n added n sorted-set
//! members: each burst of 64 requests at cost 500 asked Redis for 32 000,
//! batch calls took 92–450 ms, and the over-quota client got thousands of
//! requests admitted in 10 s. Now a request is one member whatever its
//! cost, so the bursts cost Redis what cheap requests do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use tokio::task::JoinSet;
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{FailureMode, Policy, RateLimitLayer};

use crate::support;
use crate::under_load::attacks::common::{
    Seen, Tally, app, export_policy, send, slowest_script, slowlog_from,
};

/// How long the bursts last.
const ATTACK: Duration = Duration::from_secs(5);
/// Concurrent requests per burst, and tasks sending bursts.
const BURST: usize = 64;
const ATTACKERS: usize = 6;
/// The layers' deadline: above the default 50 ms, so that a debug build on
/// a busy 2-core machine does not miss it for reasons of its own; Redis'
/// own time per script is checked against 10 ms in `SLOWLOG`.
const DEADLINE: Duration = Duration::from_millis(250);

/// The README's export policy: 5 000 rows per hour, the cost from the
/// `x-rows` header, at most 500 per request; keyed by API key (a fresh key
/// costs an attacker nothing).
fn export(name: &str, mode: FailureMode) -> Policy {
    export_policy(name)
        .key(Header::new("x-api-key"))
        .failure_mode(mode)
}

fn request(key: &str, rows: u64) -> Request<String> {
    Request::post("/export")
        .header("x-api-key", key)
        .header("x-rows", rows.to_string())
        .body(String::new())
        .unwrap()
}

/// Runs the bursts for [`ATTACK`] while `victim` sends one request at a time
/// with API key `key`; returns what the bursts and the victim saw.
async fn attack(layer: &RateLimitLayer, key: &'static str) -> (Arc<Tally>, Arc<Tally>) {
    let service = app(layer);
    let bursts = Arc::new(Tally::default());
    let victim = Arc::new(Tally::default());
    let until = Instant::now() + ATTACK;
    let fresh = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..ATTACKERS {
        let (service, bursts, fresh) = (service.clone(), Arc::clone(&bursts), Arc::clone(&fresh));
        tasks.spawn(async move {
            while Instant::now() < until {
                let mut burst = JoinSet::new();
                for _ in 0..BURST {
                    let n = fresh.fetch_add(1, Ordering::Relaxed);
                    let service = service.clone();
                    burst
                        .spawn(async move { send(&service, request(&format!("a{n}"), 500)).await });
                }
                while let Some(seen) = burst.join_next().await {
                    bursts.add(seen.unwrap());
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }
    {
        let (service, victim) = (service.clone(), Arc::clone(&victim));
        tasks.spawn(async move {
            while Instant::now() < until {
                victim.add(send(&service, request(key, 1)).await);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    (bursts, victim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_bursts_neither_open_the_breaker_nor_admit_an_over_quota_client() {
    let _heavy = crate::support::heavy().await;
    let server = support::RedisServer::start();
    let mut conn = server.conn();
    let backend = support::redis_backend(&server.url(), "attack-cost");

    // Failing open: a client that spent its quota keeps asking.
    let layer = RateLimitLayer::builder()
        .backend(backend.clone())
        .default_policy(export("export", FailureMode::Open))
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let service = app(&layer);
    for _ in 0..10 {
        assert_eq!(send(&service, request("spent", 500)).await, Seen::Admitted);
    }
    assert_eq!(send(&service, request("spent", 1)).await, Seen::Denied);
    slowlog_from(&mut conn, 10_000);
    let (bursts, victim) = attack(&layer, "spent").await;
    let (slowest, slow) = slowest_script(&mut conn);
    let failed_open = bursts.get(Seen::FailedOpen) + victim.get(Seen::FailedOpen);
    eprintln!(
        "cost attack, failing open: {} burst requests ({} admitted, {} failed open), \
         over-quota client {} requests: {} admitted, {} failed open; \
         {slow} scripts above 10 ms (slowest {slowest} us)",
        bursts.total(),
        bursts.get(Seen::Admitted),
        bursts.get(Seen::FailedOpen),
        victim.total(),
        victim.get(Seen::Admitted),
        victim.get(Seen::FailedOpen),
    );
    assert!(bursts.get(Seen::Admitted) >= 500, "the bursts ran");
    assert!(
        victim.get(Seen::Admitted) + victim.get(Seen::FailedOpen) <= 10,
        "the over-quota client got through"
    );
    // A few decisions may miss the deadline on a busy test machine (a
    // debug build on 2 cores); before issue 17 nearly all did, as the
    // breaker opened.
    let all = bursts.total() + victim.total();
    assert!(
        failed_open * 20 <= all,
        "{failed_open} of {all} decisions failed open"
    );
    // On a quiet machine no script reaches 10 ms (a batch of 64 checks
    // takes about 1 ms); a loaded 2-core machine deschedules Redis now and
    // then, which SLOWLOG counts as the script's time. Before issue 17: 13
    // to 20 scripts above 10 ms per run, the slowest 420-520 ms.
    assert!(
        slow <= 3 && slowest <= 50_000,
        "{slow} limiter scripts above 10 ms, the slowest {slowest} us"
    );

    // Failing closed: an honest client within its quota is not refused.
    let layer = RateLimitLayer::builder()
        .backend(backend)
        .default_policy(export("export-closed", FailureMode::Closed))
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let (bursts, honest) = attack(&layer, "honest").await;
    eprintln!(
        "cost attack, failing closed: {} burst requests ({} 503), honest client {} requests: {} 503",
        bursts.total(),
        bursts.get(Seen::Unavailable),
        honest.total(),
        honest.get(Seen::Unavailable),
    );
    assert!(honest.total() >= 200, "the honest client was served");
    assert!(
        honest.get(Seen::Unavailable) * 200 <= honest.total(),
        "{} of {} honest requests got 503",
        honest.get(Seen::Unavailable),
        honest.total()
    );
}
