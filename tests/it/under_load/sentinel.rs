//! Redis Sentinel (feature `sentinel`): a primary, a replica and one
//! sentinel, real processes. Under sustained load from two backends (two
//! application instances), the primary is SIGKILLed; the sentinel promotes
//! the replica and the limiter must follow it: decisions fail open (the
//! policy's failure mode) for a bounded window only, no request waits
//! longer than the deadline, no error reaches a client, and limits are
//! exact on the new primary.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use tokio::sync::Mutex;
use tower::{Layer, Service, ServiceExt};
use tower_redis_ratelimit::key::Global;
use tower_redis_ratelimit::{Policy, Quota, RateLimitLayer, RedisBackend};

use crate::support::sentinel::{MASTER, SentinelSetup};

/// The layer's deadline.
const DEADLINE: Duration = Duration::from_millis(200);
/// Scheduling slack on top of the deadline (noisy 2-core machine).
const MARGIN: Duration = Duration::from_millis(300);
/// The longest acceptable fail-open window after the primary dies.
const MAX_WINDOW: Duration = Duration::from_secs(15);
/// Load tasks per backend.
const TASKS: usize = 3;
/// The width of a histogram bucket.
const BUCKET: Duration = Duration::from_millis(100);

fn inner()
-> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send> + Clone
{
    tower::service_fn(|_request: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    })
}

/// `/load`: a limit never reached (every decided request has rate-limit
/// headers; a failed-open one has none). `/exact/{n}`: 5 per minute.
fn layer(backend: RedisBackend) -> RateLimitLayer {
    RateLimitLayer::builder()
        .backend(backend)
        .route(
            "/load",
            Policy::new("load")
                .quota(Quota::per_minute(1_000_000_000))
                .key(Global),
        )
        .route(
            "/exact/{n}",
            Policy::new("exact").quota(Quota::per_minute(5)).key(Global),
        )
        .deadline(DEADLINE)
        .blocked_cache(0)
        .build()
        .unwrap()
}

/// One request: its status, whether the backend decided it (rate-limit
/// headers present), and how long it took.
async fn send(layer: &RateLimitLayer, path: &str) -> (StatusCode, bool, Duration) {
    let start = Instant::now();
    let response = layer
        .layer(inner())
        .oneshot(Request::get(path).body(String::new()).unwrap())
        .await
        .expect("the layer never fails a request");
    let decided = response.headers().contains_key("ratelimit");
    (response.status(), decided, start.elapsed())
}

/// One observation: time since the kill (negative: before), decided?
struct Sample {
    at: f64,
    decided: bool,
    status: StatusCode,
    took: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_follows_a_failover_within_the_window() {
    let _heavy = crate::support::heavy().await;
    let mut setup = SentinelSetup::start();
    let old_port = setup.primary.port;
    let backends: Vec<RedisBackend> = (0..2)
        .map(|_| {
            RedisBackend::sentinel_builder([setup.sentinel_url()], MASTER)
                .connect_timeout(Duration::from_millis(500))
                .response_timeout(Duration::from_millis(500))
                .build()
                .unwrap()
        })
        .collect();
    let layers: Vec<RateLimitLayer> = backends.iter().cloned().map(layer).collect();

    // Both instances decide before the kill.
    for layer in &layers {
        let warm = Instant::now();
        while !send(layer, "/load").await.1 {
            assert!(warm.elapsed() < Duration::from_secs(10), "never decided");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let kill_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for layer in &layers {
        for _ in 0..TASKS {
            let layer = layer.clone();
            let stop = Arc::clone(&stop);
            let kill_at = Arc::clone(&kill_at);
            tasks.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                // Bounded: at most 30 s of load.
                while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(30) {
                    let sent_at = Instant::now();
                    let (status, decided, took) = send(&layer, "/load").await;
                    let at = match *kill_at.lock().await {
                        Some(kill) if sent_at >= kill => (sent_at - kill).as_secs_f64(),
                        Some(kill) => -(kill - sent_at).as_secs_f64(),
                        None => -1.0,
                    };
                    samples.push(Sample {
                        at,
                        decided,
                        status,
                        took,
                    });
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                samples
            }));
        }
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    *kill_at.lock().await = Some(Instant::now());
    setup.primary.kill();
    let killed = Instant::now();

    // Wait for the promotion, then for 3 s of load on the new primary.
    let promoted = loop {
        let port = tokio::task::block_in_place(|| setup.master_port());
        if port.is_some_and(|p| p != old_port) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(25),
            "the sentinel promoted no replica in 25 s:\n{}",
            setup.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }

    // Every request answered 200 (allowed or failed open) within the deadline.
    let slowest = samples.iter().map(|s| s.took).max().unwrap();
    assert!(
        samples.iter().all(|s| s.status == StatusCode::OK),
        "a request was refused"
    );
    assert!(slowest <= DEADLINE + MARGIN, "a request took {slowest:?}");

    // The fail-open window: from the kill to the last request not decided.
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= 0.0).collect();
    let failed: Vec<&Sample> = after.iter().copied().filter(|s| !s.decided).collect();
    let window = failed.iter().map(|s| s.at).fold(0.0, f64::max);
    let buckets = (window / BUCKET.as_secs_f64()).ceil() as usize + 5;
    let mut histogram = vec![(0u32, 0u32); buckets];
    for s in &after {
        let i = (s.at / BUCKET.as_secs_f64()) as usize;
        if i < buckets {
            if s.decided {
                histogram[i].0 += 1;
            } else {
                histogram[i].1 += 1;
            }
        }
    }
    let shown: Vec<String> = histogram
        .iter()
        .enumerate()
        .map(|(i, (ok, open))| format!("{:>5.1}s decided={ok} failed_open={open}", i as f64 / 10.0))
        .collect();
    println!(
        "sentinel failover: primary SIGKILLed; sentinel named the new primary after {:.1} s; \
         decisions failed open for {window:.1} s ({} of {} requests after the kill); \
         slowest request {slowest:?}; per 100 ms:\n{}",
        promoted.as_secs_f64(),
        failed.len(),
        after.len(),
        shown.join("\n")
    );
    assert!(
        window <= MAX_WINDOW.as_secs_f64(),
        "failed open for {window:.1} s (over {MAX_WINDOW:?})"
    );
    // Limiting resumed for good: the last second of load was all decided.
    let end = after.iter().map(|s| s.at).fold(0.0, f64::max);
    let tail: Vec<_> = after.iter().filter(|s| s.at > end - 1.0).collect();
    assert!(
        !tail.is_empty() && tail.iter().all(|s| s.decided),
        "still failing open at the end"
    );

    // Limits are exact on the new primary, shared by both instances.
    let path = "/exact/after-failover";
    let mut admitted = 0;
    for i in 0..12 {
        let (status, decided, _) = send(&layers[i % 2], path).await;
        assert!(decided, "request {i} was not decided by Redis");
        if status == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 5,
        "exactly the limit is admitted after the failover"
    );
}

#[test]
fn sentinel_backends_are_checked_at_build_and_never_show_passwords() {
    assert!(RedisBackend::sentinel(Vec::<String>::new(), MASTER).is_err());
    assert!(RedisBackend::sentinel(["redis://127.0.0.1:26379"], "").is_err());
    assert!(RedisBackend::sentinel(["http://127.0.0.1:26379"], MASTER).is_err());
    let backend = RedisBackend::sentinel_builder(["redis://:s3cret@127.0.0.1:26379"], MASTER)
        .master_url("redis://limiter:hunter2@ignored/0")
        .build()
        .unwrap();
    let shown = format!("{backend:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("hunter2"),
        "{shown}"
    );
    assert!(shown.contains("redis://:***@127.0.0.1:26379"), "{shown}");
    assert!(shown.contains(MASTER), "{shown}");
}
