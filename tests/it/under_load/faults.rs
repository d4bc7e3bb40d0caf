//! Fault injection with load running: a real `redis-server` is SIGKILLed,
//! SIGSTOPped, restarted or has its script cache flushed while eight client
//! tasks hammer an axum server (127.0.0.1:0, `ConnectInfo`) through the
//! rate-limit layer (deadline 50 ms).
//!
//! What must hold:
//! - no request ever fails (every load response is 200, no connection error);
//! - while Redis is gone or stalled, latency stays bounded by the deadline
//!   plus the healthy baseline plus a margin, and once the circuit breaker has
//!   opened the median is back at the baseline;
//! - limiting resumes on its own within 2 s of Redis coming back;
//! - a flushed script cache never makes a decision fail or miscount;
//! - `FailureMode::Local` keeps the limit per instance while Redis is down and
//!   hands decisions back to Redis once it answers.
//!
//! Latency bounds use `MARGIN` (30 ms) on top of the deadline and of the
//! baseline measured in the same test (p99 for percentiles, max for the
//! slowest request), because the test machine is a noisy 2-core box running
//! client, server and Redis at once. The measured
//! percentiles are printed (`cargo test --test it under_load::faults:: -- --nocapture`).
//!
//! Every test takes `support::heavy()`: they measure latency and would disturb
//! each other (and the other load tests of the binary).

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http::{HeaderMap, StatusCode, header};
use tower_redis_ratelimit::headers::{RATELIMIT, RATELIMIT_POLICY};
use tower_redis_ratelimit::key::{Global, Key};
use tower_redis_ratelimit::{Algorithm, FailureMode, Policy, Quota, RateLimitLayer, RedisBackend};

use crate::support::RedisServer;
use crate::support::headers;
use crate::support::load::{CONCURRENCY, Load, assert_no_failures, baseline, show, stats, window};
use crate::support::logs::capture_logs;

use crate::support;

/// The deadline of the layer under test.
const DEADLINE: Duration = Duration::from_millis(50);
/// Slack on top of deadline + baseline for scheduling noise (2 cores shared by
/// 8 client tasks, the server, and Redis).
const MARGIN: Duration = Duration::from_millis(30);
/// How soon limiting must resume once Redis is back.
const RECOVERY: Duration = Duration::from_secs(2);
/// How long the baseline (healthy Redis) and each outage last.
const PHASE: Duration = Duration::from_millis(1500);
/// The limit of `/small` (per minute, one global bucket).
const SMALL_LIMIT: u64 = 3;
/// The limit of `/local` (per minute, one global bucket, `FailureMode::Local`).
const LOCAL_LIMIT: u64 = 5;
/// The limit of the `/count-*` routes (checked with exact remaining values).
const COUNT_LIMIT: u64 = 1000;

// ---------------------------------------------------------------------------
// The application under test.

/// `/load`: effectively unlimited (a million per second), so load is never
/// denied; fails open.
fn load_policy() -> Policy {
    Policy::new("load")
        .quota(Quota::per_second(1_000_000))
        .algorithm(Algorithm::SlidingWindow)
        .key(Global)
}

/// `/small`: 3 per minute, exact, fails open.
fn small_policy() -> Policy {
    Policy::new("small")
        .quota(Quota::per_minute(SMALL_LIMIT))
        .algorithm(Algorithm::SlidingLog)
        .key(Global)
}

/// `/local`: 5 per minute, decided in-process while Redis is down.
fn local_policy() -> Policy {
    Policy::new("local")
        .quota(Quota::per_minute(LOCAL_LIMIT))
        .algorithm(Algorithm::SlidingLog)
        .key(Global)
        .failure_mode(FailureMode::Local)
}

/// `/count-l` and `/count-w`: 1000 per 30 days (no window boundary is crossed
/// during a test, so remaining drops by exactly one per request).
fn count_policy(name: &str, algorithm: Algorithm) -> Policy {
    Policy::new(name)
        .quota(Quota::new(COUNT_LIMIT, Duration::from_secs(30 * 86_400)))
        .algorithm(algorithm)
        .key(Global)
}

struct App {
    base: String,
    client: support::web::Client,
    backend: RedisBackend,
}

/// Serves the test app on 127.0.0.1:0 against the Redis at `url`.
///
/// `/load`, `/small` and `/local` sit behind the layer under test (deadline
/// 50 ms). `/count-l` and `/count-w` sit behind a second layer on the same
/// backend with a 2 s deadline, so that a missing header there can only mean
/// a failed decision, never a slow machine.
async fn start_app(url: &str, test: &str) -> App {
    let backend = support::redis_backend(url, test);
    let fast = RateLimitLayer::builder()
        .backend(backend.clone())
        .route("/load", load_policy())
        .route("/small", small_policy())
        .route("/local", local_policy())
        .deadline(DEADLINE)
        // Recovery is detected by Redis' 429s on /small; the blocked-client
        // cache would answer those locally (tests/it/blocked_cache.rs covers it).
        .blocked_cache(0)
        .build()
        .unwrap();
    let patient = RateLimitLayer::builder()
        .backend(backend.clone())
        .route("/count-l", count_policy("count-l", Algorithm::SlidingLog))
        .route(
            "/count-w",
            count_policy("count-w", Algorithm::SlidingWindow),
        )
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let ok = || async { "ok" };
    let app = Router::new()
        .route("/load", get(ok))
        .route("/small", get(ok))
        .route("/local", get(ok))
        .layer(fast)
        .merge(
            Router::new()
                .route("/count-l", get(ok))
                .route("/count-w", get(ok))
                .layer(patient),
        );
    App {
        base: support::web::serve(app).await,
        client: support::web::client(),
        backend,
    }
}

/// One response, reduced to what the tests look at.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
}

impl Got {
    fn limited(&self) -> bool {
        self.headers.contains_key(RATELIMIT)
    }

    /// `r` of the `RateLimit` header.
    fn remaining(&self) -> Option<u64> {
        headers::remaining(&self.headers)
    }
}

impl App {
    async fn get(&self, path: &str) -> Got {
        let sent = self
            .client
            .get(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        Got {
            status: sent.status,
            headers: sent.headers,
        }
    }

    /// Polls `path` until a response carries rate-limit headers (a decision
    /// by Redis, for fail-open policies); returns how long that took.
    async fn wait_limiting(&self, path: &str) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.get(path).await;
            if got.limited() {
                assert!(got.headers.contains_key(RATELIMIT_POLICY));
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{path} never carried rate-limit headers"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends `/small` until it is denied by Redis (bounded); returns how many
    /// were admitted with headers first.
    async fn exhaust_small(&self) -> u64 {
        let mut admitted = 0;
        for _ in 0..SMALL_LIMIT + 20 {
            let got = self.get("/small").await;
            match got.status {
                StatusCode::OK if got.limited() => admitted += 1,
                StatusCode::OK => {} // a missed deadline fails open
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(got.remaining(), Some(0));
                    assert!(got.headers.contains_key(header::RETRY_AFTER));
                    return admitted;
                }
                other => panic!("unexpected status {other} on /small"),
            }
        }
        panic!("/small was never limited");
    }

    /// After Redis came back: polls `/small` every 10 ms until Redis denies it
    /// again. Returns (time to the first response with headers, time to the
    /// first 429), measured from `since`.
    async fn wait_small_denied(&self, since: Instant) -> (Duration, Duration) {
        let mut first_headers = None;
        loop {
            let got = self.get("/small").await;
            if got.limited() && first_headers.is_none() {
                first_headers = Some(since.elapsed());
            }
            match got.status {
                StatusCode::OK => {}
                StatusCode::TOO_MANY_REQUESTS => {
                    assert!(got.limited(), "a 429 carries rate-limit headers");
                    assert_eq!(got.remaining(), Some(0));
                    return (first_headers.unwrap(), since.elapsed());
                }
                other => panic!("unexpected status {other} on /small"),
            }
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "/small was not limited again within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The tests.

/// SIGKILL under load: not one request fails, the outage p99 stays within
/// deadline + baseline p99 + margin, the breaker logs its opening once, and
/// after a restart on the same port limiting resumes within 2 s (headers,
/// then a 429 from the fresh server's counters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_fails_nothing_and_limiting_resumes_after_restart() {
    let _heavy = support::heavy().await;
    let logs = capture_logs();
    let mut server = RedisServer::start();
    let app = start_app(&server.url(), "kill").await;
    app.wait_limiting("/load").await;
    assert!(app.exhaust_small().await >= 1);

    let t0 = Instant::now();
    let load = Load::start(&app.client, format!("{}/load", app.base));
    tokio::time::sleep(PHASE).await;

    let t_kill = Instant::now();
    server.kill();
    let t_dead = Instant::now();
    tokio::time::sleep(PHASE).await;

    let t_restart = Instant::now();
    server.restart();
    let t_up = Instant::now();
    let (headers_after, denied_after) = app.wait_small_denied(t_up).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = load.finish().await;

    assert_no_failures(&samples);
    let base = baseline(&samples, t0, t_kill);
    let outage = stats(&window(&samples, t_kill, t_restart));
    show("outage (SIGKILL)", &outage);
    let after = stats(&window(&samples, t_up + denied_after, Instant::now()));
    show("after restart", &after);
    eprintln!(
        "restart took {:?}; /small: headers {headers_after:?}, 429 {denied_after:?} after Redis was up",
        t_up - t_restart
    );

    let bound = DEADLINE + base.p99 + MARGIN;
    assert!(
        outage.p99 <= bound,
        "outage p99 {:?} > deadline + baseline p99 + margin = {bound:?}",
        outage.p99
    );
    let dead = stats(&window(&samples, t_dead, t_restart));
    assert_eq!(
        dead.open, dead.n,
        "with Redis dead every request fails open (no headers)"
    );
    assert!(
        denied_after <= RECOVERY,
        "limiting resumed only {denied_after:?} after the restart"
    );
    assert!(
        after.n > 0 && after.open * 10 <= after.n,
        "Redis decides the load again: {after:?}"
    );

    let opened = logs.lines("circuit breaker open");
    let closed = logs.lines("circuit breaker closed");
    eprintln!("log lines: breaker open {opened}, breaker closed {closed}");
    assert!(
        (1..=2).contains(&opened),
        "one outage logs the breaker opening once (got {opened})"
    );
    assert!(
        (1..=2).contains(&closed),
        "one recovery logs once (got {closed})"
    );
}

/// The worst moment for Redis to come back: late in a 1 s cool-down, after
/// the connection manager's own reconnect attempts (triggered by the last
/// failed probe, retried for a few hundred ms) have given up. The next probe
/// must bring limiting back although the manager still holds that failed
/// attempt; limiting resumes within the cool-down (1 s), not a cool-down
/// later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_late_in_a_cool_down_recovers_at_the_next_probe() {
    let _heavy = support::heavy().await;
    let logs = capture_logs();
    let mut server = RedisServer::start();
    let app = start_app(&server.url(), "probe").await;
    app.wait_limiting("/load").await;
    assert!(app.exhaust_small().await >= 1);
    let load = Load::start(&app.client, format!("{}/load", app.base));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();

    // Cool-downs 250 ms, 500 ms, then 1 s: wait for the third failed probe,
    // then restart 600 ms into the 1 s cool-down.
    let start = Instant::now();
    while logs.lines("probe failed") < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the breaker never probed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.restart();
    let t_up = Instant::now();
    let (headers_after, denied_after) = app.wait_small_denied(t_up).await;
    let samples = load.finish().await;
    assert_no_failures(&samples);
    eprintln!(
        "restart late in a cool-down: /small headers {headers_after:?}, 429 {denied_after:?} after Redis was up"
    );
    assert!(
        denied_after <= Duration::from_secs(1),
        "limiting resumed only {denied_after:?} after Redis was back: the first probe after the restart failed"
    );
}

/// SIGSTOP under load: Redis accepts but never answers. Every request still
/// finishes within deadline + baseline max + margin; once the breaker opens,
/// the median is back at the baseline (the backend is skipped). After SIGCONT
/// Redis' counters (kept through the stall) deny `/small` again within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_under_load_is_bounded_by_the_deadline_and_the_breaker_restores_latency() {
    let _heavy = support::heavy().await;
    let logs = capture_logs();
    let server = RedisServer::start();
    let app = start_app(&server.url(), "stop").await;
    app.wait_limiting("/load").await;
    assert!(app.exhaust_small().await >= 1);

    let t0 = Instant::now();
    let load = Load::start(&app.client, format!("{}/load", app.base));
    tokio::time::sleep(PHASE).await;

    let t_stop = Instant::now();
    server.signal("STOP");
    tokio::time::sleep(PHASE).await;

    let t_cont = Instant::now();
    server.signal("CONT");
    let (headers_after, denied_after) = app.wait_small_denied(t_cont).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = load.finish().await;

    assert_no_failures(&samples);
    let base = baseline(&samples, t0, t_stop);
    let stalled = window(&samples, t_stop, t_cont);
    let outage = stats(&stalled);
    show("outage (SIGSTOP)", &outage);
    let later = stats(&stalled[stalled.len() / 2..]);
    show("later half of outage", &later);
    let slow = stalled
        .iter()
        .filter(|s| s.latency >= DEADLINE - Duration::from_millis(5))
        .count();
    eprintln!(
        "requests that waited for the deadline: {slow}; /small after SIGCONT: headers {headers_after:?}, 429 {denied_after:?}"
    );

    // The slowest request against the slowest healthy one.
    let bound = DEADLINE + base.max + MARGIN;
    assert!(
        outage.max <= bound,
        "a request took {:?} with Redis stalled (deadline + baseline max + margin = {bound:?})",
        outage.max
    );
    assert!(
        slow >= 1,
        "the stall was never felt: did SIGSTOP work? {outage:?}"
    );
    // The first wave (one request per client task) and roughly one probe per
    // cool-down wait for the deadline; everything else skips the backend.
    assert!(
        slow <= 3 * CONCURRENCY,
        "{slow} requests waited for a stalled Redis: the breaker did not open"
    );
    // Without the breaker every request would wait the full 50 ms; 10 ms
    // absorbs load changes on the shared machine between the two phases.
    let near = base.p50 + Duration::from_millis(10);
    assert!(
        later.p50 <= near,
        "breaker open, yet the median is {:?} (baseline p50 {:?})",
        later.p50,
        base.p50
    );
    assert!(
        denied_after <= RECOVERY,
        "limiting resumed only {denied_after:?} after SIGCONT"
    );
    let opened = logs.lines("circuit breaker open");
    assert!(
        (1..=2).contains(&opened),
        "breaker opening logged {opened} times"
    );
}

/// Whether Redis' script cache holds the two scripts of the crate.
fn scripts_cached(conn: &mut redis::Connection) -> Vec<bool> {
    let shipped = |algorithm| redis::Script::new(support::scripts::shipped(algorithm).0);
    let log = shipped(Algorithm::SlidingLog);
    let window = shipped(Algorithm::SlidingWindow);
    redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(log.get_hash())
        .arg(window.get_hash())
        .query(conn)
        .unwrap()
}

/// `SCRIPT FLUSH` while load runs: the next decision of each algorithm still
/// comes from Redis (headers present) and keeps counting exactly where it
/// left off; the load never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_under_load_keeps_decisions_exact() {
    let _heavy = support::heavy().await;
    let server = RedisServer::start();
    let app = start_app(&server.url(), "flush").await;
    app.wait_limiting("/load").await;
    let mut conn = server.conn();

    let load = Load::start(&app.client, format!("{}/load", app.base));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t_flush = Instant::now();

    let mut used = [0_u64; 2];
    let paths = ["/count-l", "/count-w"];
    for round in 0..5 {
        for (i, path) in paths.iter().enumerate() {
            let got = app.get(path).await;
            used[i] += 1;
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(got.remaining(), Some(COUNT_LIMIT - used[i]), "{path}");
        }
        // Scripts are cached (the algorithms' own, or the batch script when
        // these checks went out in a batch with the load's).
        let info: String = redis::cmd("INFO").arg("memory").query(&mut conn).unwrap();
        let cached = info
            .lines()
            .find_map(|l| l.strip_prefix("number_of_cached_scripts:"))
            .map(|n| n.trim().parse::<u64>().unwrap());
        assert!(cached.unwrap() > 0, "{info}");
        let () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
        // The load reloads the window script at once; nothing runs the log
        // script in between.
        assert!(
            !scripts_cached(&mut conn)[0],
            "SCRIPT FLUSH emptied the cache"
        );
        // Alternate which algorithm sees the flushed cache first.
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1]
        } else {
            vec![1, 0]
        };
        for i in order {
            let got = app.get(paths[i]).await;
            used[i] += 1;
            assert_eq!(
                got.status,
                StatusCode::OK,
                "{} after SCRIPT FLUSH",
                paths[i]
            );
            assert!(
                got.limited(),
                "{} failed open after SCRIPT FLUSH (round {round})",
                paths[i]
            );
            assert_eq!(
                got.remaining(),
                Some(COUNT_LIMIT - used[i]),
                "{} miscounted after SCRIPT FLUSH (round {round})",
                paths[i]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t_end = Instant::now();
    let samples = load.finish().await;

    assert_no_failures(&samples);
    let during = stats(&window(&samples, t_flush, t_end));
    show("load during flushes", &during);
    assert!(
        during.open * 10 <= during.n,
        "Redis kept deciding the load through the flushes: {during:?}"
    );

    // Redis holds exactly what was counted.
    let key = Key::new("global");
    let log_key = app
        .backend
        .redis_keys(&count_policy("count-l", Algorithm::SlidingLog), &key)
        .remove(0);
    let entries: u64 = redis::cmd("ZCARD").arg(&log_key).query(&mut conn).unwrap();
    assert_eq!(entries, used[0]);
}

/// `FailureMode::Local` with load running: while Redis is dead the policy's
/// limit still holds (in this instance): 5 admitted, the 6th denied with
/// headers. Once Redis is back it decides again: its fresh counters admit,
/// the key is written there, and its limit bites at 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_failure_mode_keeps_the_limit_while_redis_is_dead() {
    let _heavy = support::heavy().await;
    let mut server = RedisServer::start();
    let app = start_app(&server.url(), "local").await;
    app.wait_limiting("/load").await;
    let redis_key = app
        .backend
        .redis_keys(&local_policy(), &Key::new("global"))
        .remove(0);

    // Healthy: Redis decides and holds the key.
    let got = app.get("/local").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.remaining(), Some(LOCAL_LIMIT - 1));
    let exists: bool = redis::cmd("EXISTS")
        .arg(&redis_key)
        .query(&mut server.conn())
        .unwrap();
    assert!(exists, "{redis_key} was written");

    let load = Load::start(&app.client, format!("{}/load", app.base));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();

    // The in-process limiter decides, from its own (empty) state.
    for i in 0..LOCAL_LIMIT {
        let got = app.get("/local").await;
        assert_eq!(got.status, StatusCode::OK, "local request {}", i + 1);
        assert_eq!(
            got.remaining(),
            Some(LOCAL_LIMIT - 1 - i),
            "{:?}",
            got.headers
        );
    }
    for _ in 0..3 {
        let got = app.get("/local").await;
        assert_eq!(
            got.status,
            StatusCode::TOO_MANY_REQUESTS,
            "the local limiter holds the limit"
        );
        assert_eq!(got.remaining(), Some(0));
        let retry = headers::retry_after(&got.headers);
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }

    // Redis back with an empty dataset: the local limiter (exhausted for a
    // minute) would deny, so a 200 can only come from Redis.
    server.restart();
    let t_up = Instant::now();
    let first = loop {
        let got = app.get("/local").await;
        if got.status == StatusCode::OK {
            break got;
        }
        assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            t_up.elapsed() < Duration::from_secs(10),
            "Redis never decided again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let resumed = t_up.elapsed();
    let mut conn = server.conn();
    let entries: u64 = redis::cmd("ZCARD")
        .arg(&redis_key)
        .query(&mut conn)
        .unwrap();
    assert!(entries >= 1, "Redis holds the decision");
    assert_eq!(
        first.remaining(),
        Some(LOCAL_LIMIT - entries),
        "the decision is Redis' own count"
    );
    let ttl: i64 = redis::cmd("PTTL").arg(&redis_key).query(&mut conn).unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "PTTL {ttl}");

    // Redis' limit bites at 5 again.
    let mut admitted = 1;
    let denied = loop {
        let got = app.get("/local").await;
        match got.status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => break got,
            other => panic!("unexpected {other}"),
        }
        assert!(
            admitted <= LOCAL_LIMIT,
            "Redis admitted more than the limit"
        );
    };
    assert_eq!(denied.remaining(), Some(0));
    let entries: u64 = redis::cmd("ZCARD")
        .arg(&redis_key)
        .query(&mut conn)
        .unwrap();
    assert_eq!(entries, LOCAL_LIMIT, "Redis counted every admission");
    let samples = load.finish().await;
    assert_no_failures(&samples);
    eprintln!(
        "local: Redis decided again {resumed:?} after restart; {admitted} admitted by Redis afterwards; {} load requests, none failed",
        samples.len()
    );
    assert!(
        resumed <= RECOVERY,
        "Redis decided again only after {resumed:?}"
    );
}
