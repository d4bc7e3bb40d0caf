//! Connection churn: `CLIENT KILL TYPE normal` every 100 ms (anyone who can
//! reach Redis with an ordinary user, or a proxy or load balancer that drops
//! idle connections) must not switch limiting off.
//!
//! Before the fix, every kill failed the calls in flight on the killed
//! connection, the circuit breaker opened, and each probe after its
//! cool-down went out on a connection killed meanwhile and failed too: the
//! breaker stayed open for the whole attack and most decisions failed open.
//! Now a call whose connection dropped is retried once on a fresh one.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::headers::RATELIMIT;
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{Policy, Quota, RateLimitLayer};

use crate::support;

/// Concurrent callers of the service.
const CALLERS: usize = 48;
/// Load before the attack: Redis decides (nearly) everything.
const WARM_UP: Duration = Duration::from_secs(1);
/// How long the connections are killed, and how often.
const ATTACK: Duration = Duration::from_secs(6);
const KILL_EVERY: Duration = Duration::from_millis(100);
/// Load after the last kill.
const QUIET: Duration = Duration::from_secs(3);
/// From this long after the last kill, limiting must be back.
const SETTLE: Duration = Duration::from_secs(2);

/// The layer's deadline: above the default 50 ms, so that a loaded test
/// machine's scheduling stalls (which time out every call in flight, and
/// open the breaker, with or without kills) do not count. The kills do not
/// need it: a killed connection fails a call at once (broken pipe, reset),
/// and a probe on a connection killed meanwhile failed whatever the
/// deadline.
const DEADLINE: Duration = Duration::from_millis(200);

/// The most that may fail open during the attack, and after it settled.
const MAX_OPEN_DURING: f64 = 0.50;
const MAX_OPEN_AFTER: f64 = 0.01;

/// One decision: when its request started, and whether it failed open (an
/// admitted request without rate-limit headers: Redis did not decide).
#[derive(Clone, Copy)]
struct Sample {
    start: Instant,
    failed_open: bool,
}

/// The share of `samples` started in `[from, to)` that failed open, and
/// how many there were.
fn open_share(samples: &[Sample], from: Instant, to: Instant) -> (f64, usize) {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.start >= from && s.start < to)
        .collect();
    assert!(
        window.len() >= 100,
        "too little load: {} decisions",
        window.len()
    );
    let open = window.iter().filter(|s| s.failed_open).count();
    (open as f64 / window.len() as f64, window.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_do_not_switch_limiting_off() {
    let _heavy = crate::support::heavy().await;
    let server = support::RedisServer::start();
    let backend = support::redis_backend(&server.url(), "churn");
    under_churn(backend, &server, Spare::Attacker).await;
}

/// The same attack on the primary of a Sentinel deployment. The sentinel's
/// own connections are spared: killed every 100 ms, its pings to the
/// primary could fail for its `down-after-milliseconds` and start a
/// failover, another scenario (`tests/it/under_load/sentinel.rs`).
#[cfg(feature = "sentinel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_to_a_sentinel_primary_do_not_switch_limiting_off() {
    use support::sentinel::{MASTER, SentinelSetup};
    let _heavy = crate::support::heavy().await;
    let setup = SentinelSetup::start();
    let backend =
        tower_redis_ratelimit::RedisBackend::sentinel_builder([setup.sentinel_url()], MASTER)
            .prefix(support::unique_prefix("churn-sentinel"))
            .build()
            .unwrap();
    under_churn(backend, &setup.primary, Spare::Sentinel).await;
    assert_eq!(
        setup.master_port(),
        Some(setup.primary.port),
        "no failover: the primary stayed the same"
    );
}

/// Whose connections of type normal the attacker spares, besides its own.
#[derive(Clone, Copy)]
enum Spare {
    /// None: `CLIENT KILL TYPE normal SKIPME yes`.
    Attacker,
    /// The sentinel's (named `sentinel-<id>-cmd` and `-pubsub`).
    Sentinel,
}

/// One round of kills on `conn`'s server; how many connections it killed.
fn kill_round(conn: &mut redis::Connection, spare: Spare) -> u64 {
    match spare {
        Spare::Attacker => redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query(conn)
            .unwrap(),
        Spare::Sentinel => {
            let me: u64 = redis::cmd("CLIENT").arg("ID").query(conn).unwrap();
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .arg("TYPE")
                .arg("normal")
                .query(conn)
                .unwrap();
            let field = |line: &str, name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            let mut kills = redis::pipe();
            for line in list.lines() {
                let id = field(line, "id").and_then(|id| id.parse::<u64>().ok());
                let sentinel = field(line, "name").is_some_and(|n| n.starts_with("sentinel-"));
                if let Some(id) = id.filter(|&id| id != me && !sentinel) {
                    kills.cmd("CLIENT").arg("KILL").arg("ID").arg(id);
                }
            }
            let killed: Vec<u64> = kills.query(conn).unwrap_or_default();
            killed.iter().sum()
        }
    }
}

/// Loads a layer on `backend` from [`CALLERS`] tasks while its connections
/// to `target` are killed every [`KILL_EVERY`] for [`ATTACK`], then
/// [`QUIET`]; checks how many decisions failed open.
async fn under_churn(
    backend: tower_redis_ratelimit::RedisBackend,
    target: &support::RedisServer,
    spare: Spare,
) {
    let server = target;
    // A default-API-like policy (sliding window, per client, failing open)
    // with a limit no caller reaches: every admission must carry headers.
    let policy = Policy::new("api")
        .quota(Quota::per_minute(100_000_000))
        .key(Header::new("x-client"));
    let layer = RateLimitLayer::builder()
        .backend(backend)
        .default_policy(policy)
        .deadline(DEADLINE)
        .build()
        .unwrap();
    let service = layer.layer(tower::service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));

    let start = Instant::now();
    let attack_from = start + WARM_UP;
    let end = attack_from + ATTACK + QUIET;
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (service, stop) = (service.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let client = format!("client-{caller}");
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let request = Request::get("/api")
                        .header("x-client", &client)
                        .body(String::new())
                        .unwrap();
                    let started = Instant::now();
                    let response = service.clone().oneshot(request).await.unwrap();
                    assert_eq!(response.status(), StatusCode::OK, "nothing is denied");
                    samples.push(Sample {
                        start: started,
                        failed_open: !response.headers().contains_key(RATELIMIT),
                    });
                    // As a server's connection task does between requests: a
                    // decision skipped by the open breaker is ready at once,
                    // and a loop of them would never let other tasks run.
                    tokio::task::yield_now().await;
                }
                samples
            })
        })
        .collect();

    // The attacker, on a thread of its own (on time whatever the load),
    // through its own connection, which it spares.
    let mut attacker = server.conn();
    let attacker = std::thread::spawn(move || {
        std::thread::sleep(attack_from.saturating_duration_since(Instant::now()));
        let (mut kills, mut killed, mut last_kill) = (0u64, 0u64, Instant::now());
        while last_kill + KILL_EVERY < attack_from + ATTACK {
            let n = kill_round(&mut attacker, spare);
            (kills, killed, last_kill) = (kills + 1, killed + n, Instant::now());
            std::thread::sleep(KILL_EVERY);
        }
        (kills, killed, last_kill)
    });
    let (kills, killed, last_kill) = tokio::task::spawn_blocking(move || attacker.join().unwrap())
        .await
        .unwrap();

    let mut samples = Vec::new();
    for caller in callers {
        samples.extend(caller.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let (baseline, n_base) = open_share(&samples, start + Duration::from_millis(200), attack_from);
    let (during, n_during) = open_share(&samples, attack_from, last_kill);
    let (after, n_after) = open_share(&samples, last_kill + SETTLE, end);
    eprintln!(
        "churn: {kills} kills ({killed} connections); failed open: baseline {:.2} % of {n_base}, \
         during the kills {:.2} % of {n_during}, from {SETTLE:?} after the last kill {:.2} % \
         of {n_after}",
        baseline * 100.0,
        during * 100.0,
        after * 100.0
    );
    assert!(kills >= 50, "the attack ran: {kills} kills");
    assert!(
        killed >= 5,
        "the kills hit the limiter's connections: {killed} killed in {kills} kills"
    );
    assert!(
        baseline <= MAX_OPEN_AFTER,
        "Redis decided the baseline: {:.2} % failed open",
        baseline * 100.0
    );
    assert!(
        during <= MAX_OPEN_DURING,
        "{:.1} % of the decisions failed open during the kills (at most {:.0} %)",
        during * 100.0,
        MAX_OPEN_DURING * 100.0
    );
    assert!(
        after <= MAX_OPEN_AFTER,
        "{:.2} % failed open from {SETTLE:?} after the last kill (at most {:.0} %)",
        after * 100.0,
        MAX_OPEN_AFTER * 100.0
    );
}
