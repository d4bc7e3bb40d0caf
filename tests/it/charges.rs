//! Charges (`Backend::charge`) on real `redis-server`s and the memory
//! backend, looking at the keys and at a large debt (the outcomes of
//! charges mixed into check sequences are `tests/it/conformance.rs`'
//! `charge*` scenarios, on memory, Redis and a cluster):
//!
//! - a charge of 5 000 units against 1 000 per minute: every key has a TTL
//!   covering the debt, the next check is denied with each algorithm's
//!   retry-after, and (on a fake clock) that retry-after in whole seconds,
//!   as `Retry-After` says it, admits, a second less does not;
//! - a key of the wrong type fails the charge alone, with the key fault a
//!   check gives (`BackendError::Key`), and the charge writes nothing;
//! - a flushed script cache is reloaded; a charge of 0 changes nothing;
//! - through a layer (`Policy::charge_from_header`): a response reporting
//!   5 000 tokens against 1 000 per minute is answered as usual, and the
//!   next request is refused with an honest `Retry-After` (to the second on
//!   a fake clock, within the second on Redis); a missing, invalid or 0
//!   header charges nothing; admission needs only that the client is not
//!   past its limit;
//! - two instances on one Redis: concurrent requests admit at most the
//!   budget plus the costs in flight, and every charge lands.

use std::time::Duration;

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use redis::Commands;
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::clock::FakeClock;
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{
    Algorithm, Backend, BackendError, Decision, Key, MemoryBackend, Policy, Quota, RateLimitLayer,
    RedisBackend,
};

use crate::support;
use crate::support::headers;

const SEC: u64 = 1_000_000;
const MINUTE: u64 = 60 * SEC;

const ALGORITHMS: [Algorithm; 3] = [
    Algorithm::SlidingLog,
    Algorithm::SlidingWindow,
    Algorithm::Gcra,
];

/// 1 000 tokens per minute.
fn tokens(algorithm: Algorithm) -> Policy {
    Policy::new(format!("tokens-{algorithm:?}"))
        .algorithm(algorithm)
        .quota(Quota::per_minute(1_000))
}

/// 5 per minute and 8 per hour.
fn two(algorithm: Algorithm) -> Policy {
    Policy::new(format!("charge-{algorithm:?}"))
        .algorithm(algorithm)
        .quota(Quota::per_minute(5))
        .quota(Quota::per_hour(8))
}

fn remaining(d: &Decision) -> Vec<u64> {
    d.quotas().iter().map(|q| q.remaining).collect()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap()
}

/// Redis' clock, in µs.
fn redis_now(conn: &mut redis::Connection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(conn).unwrap();
    s * SEC + us
}

/// When a unit fits again after a charge of 5 000 at `charged` against
/// 1 000 per minute (see `Backend::charge`).
fn fits_at(algorithm: Algorithm, charged: u64) -> u64 {
    match algorithm {
        // 4 000 units over the limit at 60 ms each, then one interval.
        Algorithm::Gcra => charged + 4 * MINUTE + 60_000,
        // The entry of 5 000 leaves the window whole.
        Algorithm::SlidingLog => charged + MINUTE,
        // The next fixed window, once 5 000 × its overlap is at most 999:
        // 48 s into it (plus the 2 µs of the estimate's rounding guard).
        _ => charged - charged % MINUTE + MINUTE + 48 * SEC + 2,
    }
}

#[tokio::test]
async fn a_debt_on_redis_keeps_its_keys_and_denies_until_it_has_drained() {
    let url = support::redis_url();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    for algorithm in ALGORITHMS {
        let backend = support::redis_backend(&url, "charge-debt");
        let p = tokens(algorithm);
        let key = Key::new("203.0.113.9");
        // Charge and check in one fixed window of a minute.
        let now = redis_now(&mut conn);
        if MINUTE - now % MINUTE < 2 * SEC {
            tokio::time::sleep(Duration::from_micros(MINUTE - now % MINUTE + 1_000)).await;
        }
        let a = redis_now(&mut conn);
        backend.charge(&p, &key, 5_000).await.unwrap();
        let b = redis_now(&mut conn);
        // The key's TTL covers the debt, no longer than it matters.
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&backend.redis_keys(&p, &key)[0])
            .query(&mut conn)
            .unwrap();
        let ttl = u64::try_from(ttl).unwrap_or_else(|_| panic!("{algorithm:?}: no TTL: {ttl}"));
        let (lo, hi) = match algorithm {
            Algorithm::Gcra => (5 * 60_000 - 1_000, 5 * 60_000),
            Algorithm::SlidingLog => (60_000 - 1_000, 60_000),
            _ => (60_000, 120_000),
        };
        assert!((lo..=hi).contains(&ttl), "{algorithm:?}: TTL {ttl} ms");
        let c = redis_now(&mut conn);
        let d = backend.check(&p, &key, 1).await.unwrap();
        let e = redis_now(&mut conn);
        assert!(!d.is_allowed(), "{algorithm:?}: {d:?}");
        assert_eq!(remaining(&d), [0], "{algorithm:?}");
        let retry = micros(d.retry_after().unwrap());
        let (lo, hi) = (fits_at(algorithm, a) - e, fits_at(algorithm, b) - c);
        assert!(
            (lo..=hi).contains(&retry),
            "{algorithm:?}: retry-after {retry} not in [{lo}, {hi}]"
        );
        // A peek says the same, and consumes nothing.
        let seen = backend.peek(&p, &key).await.unwrap();
        assert!(!seen.is_allowed(), "{algorithm:?}");
    }
}

#[tokio::test]
async fn a_debt_honoured_to_the_second_admits_on_the_model() {
    for algorithm in ALGORITHMS {
        // 10 s into a minute.
        let clock = FakeClock::new(86_400 * SEC * 1_000 + 10 * SEC);
        let backend = MemoryBackend::with_clock(clock.clone());
        let p = tokens(algorithm);
        let key = Key::new("k");
        backend.charge(&p, &key, 5_000).await.unwrap();
        let d = backend.check(&p, &key, 1).await.unwrap();
        assert!(!d.is_allowed(), "{algorithm:?}");
        let retry = micros(d.retry_after().unwrap());
        // The retry-after is exact (the counter's at most 1 µs late).
        let start = 86_400 * SEC * 1_000 + 10 * SEC;
        let exact = fits_at(algorithm, start) - start;
        assert!(
            (exact..=exact + 1).contains(&retry),
            "{algorithm:?}: {retry}, {exact}"
        );
        // `Retry-After` in whole seconds, rounded up: a second less is
        // still denied, that many seconds admit.
        let seconds = retry.div_ceil(SEC);
        let probe = backend.clone();
        clock.advance(Duration::from_secs(seconds - 1));
        assert!(
            !probe.peek(&p, &key).await.unwrap().is_allowed(),
            "{algorithm:?}: a second early"
        );
        clock.advance(Duration::from_secs(1));
        let d = backend.check(&p, &key, 1).await.unwrap();
        assert!(d.is_allowed(), "{algorithm:?}: {d:?}");
    }
}

#[tokio::test]
async fn a_charge_of_a_key_of_another_type_fails_alone_and_writes_nothing() {
    let url = support::redis_url();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    for algorithm in ALGORITHMS {
        let backend = support::redis_backend(&url, "charge-fault");
        let p = two(algorithm);
        let (a, b) = (Key::new("a"), Key::new("b"));
        // A's hour key is a list: of another type for every algorithm.
        let keys = backend.redis_keys(&p, &a);
        let _: () = conn.rpush(&keys[1], "not ours").unwrap();
        let check = backend.check(&p, &a, 1).await;
        assert!(
            matches!(&check, Err(BackendError::Key(e)) if e.contains("WRONGTYPE")),
            "{algorithm:?}: {check:?}"
        );
        let charge = backend.charge(&p, &a, 3).await;
        assert!(
            matches!(&charge, Err(BackendError::Key(e)) if e.contains("WRONGTYPE")),
            "{algorithm:?}: {charge:?}"
        );
        // Nothing written: a's minute key does not exist.
        let minute: i64 = conn.exists(&keys[0]).unwrap();
        assert_eq!(minute, 0, "{algorithm:?}");
        // B is not affected.
        backend.charge(&p, &b, 3).await.unwrap();
        let seen = backend.peek(&p, &b).await.unwrap();
        assert_eq!(remaining(&seen), [2, 5], "{algorithm:?}");
    }
}

#[tokio::test]
async fn a_charge_reloads_a_flushed_script_cache_and_a_charge_of_nothing_is_nothing() {
    let server = support::RedisServer::start();
    let backend = RedisBackend::new(&server.url()).unwrap();
    let mut conn = server.conn();
    for algorithm in ALGORITHMS {
        let p = two(algorithm);
        let key = Key::new("flushed");
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
        backend.charge(&p, &key, 2).await.unwrap();
        assert_eq!(
            remaining(&backend.peek(&p, &key).await.unwrap()),
            [3, 6],
            "{algorithm:?}"
        );
        backend.charge(&p, &key, 0).await.unwrap();
        assert_eq!(
            remaining(&backend.peek(&p, &key).await.unwrap()),
            [3, 6],
            "{algorithm:?}"
        );
        // Past the limits: in debt in both quotas.
        backend.charge(&p, &key, 7).await.unwrap();
        let seen = backend.peek(&p, &key).await.unwrap();
        assert_eq!(remaining(&seen), [0, 0], "{algorithm:?}");
        assert!(!seen.is_allowed(), "{algorithm:?}");
    }
}

// ---------------------------------------------------------------------------
// Through a layer: charged from the response
// ---------------------------------------------------------------------------

/// 1 000 tokens per minute per `x-client`, charged from `x-tokens-used`.
fn charged_tokens(algorithm: Algorithm) -> Policy {
    tokens(algorithm)
        .key(Header::new("x-client"))
        .charge_from_header(http::HeaderName::from_static("x-tokens-used"))
}

/// A request of client `client` whose response reports `tokens` (as the
/// handler answers: the request's `x-tokens` header, `x-tokens-used` unset
/// without it), through `layer`: the status, remaining units and
/// `Retry-After` (seconds) of the response.
async fn generate(
    layer: &RateLimitLayer,
    client: &str,
    tokens: Option<&str>,
) -> (StatusCode, Option<u64>, Option<u64>) {
    let service = layer.layer(tower::service_fn(|req: Request<String>| async move {
        let mut response = Response::new(String::new());
        if let Some(used) = req.headers().get("x-tokens") {
            response.headers_mut().insert("x-tokens-used", used.clone());
        }
        Ok::<_, Infallible>(response)
    }));
    let mut request = Request::post("/api/generate").header("x-client", client);
    if let Some(tokens) = tokens {
        request = request.header("x-tokens", tokens);
    }
    let response = service
        .oneshot(request.body(String::new()).unwrap())
        .await
        .unwrap();
    let retry = response
        .headers()
        .contains_key(http::header::RETRY_AFTER)
        .then(|| headers::retry_after(response.headers()));
    (
        response.status(),
        headers::remaining(response.headers()),
        retry,
    )
}

/// When a request charged from its response (admitted at cost 0: while the
/// client is not past its limit) fits again after a charge of 5 000 at
/// `charged` against 1 000 per minute.
fn admitted_again_at(algorithm: Algorithm, charged: u64) -> u64 {
    match algorithm {
        // The level is back at the limit: 4 000 units at 60 ms each.
        Algorithm::Gcra => charged + 4 * MINUTE,
        Algorithm::SlidingLog => charged + MINUTE,
        // The next fixed window, once 5 000 × its overlap is at most 1 000:
        // an overlap below 1 001 / 5 000 of it (plus the 2 µs guard).
        _ => charged - charged % MINUTE + MINUTE + MINUTE - 12_012_000 + 2,
    }
}

fn layer_on(backend: Arc<dyn Backend>, policy: Policy) -> RateLimitLayer {
    RateLimitLayer::builder()
        .backend(backend)
        .default_policy(policy)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_response_reporting_5000_tokens_refuses_the_next_request_to_the_second() {
    for algorithm in ALGORITHMS {
        let start = 86_400 * SEC * 1_000 + 10 * SEC;
        let clock = FakeClock::new(start);
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::with_clock(clock.clone()));
        let layer = layer_on(Arc::clone(&backend), charged_tokens(algorithm));
        // Nothing charged: no header, an invalid one, 0.
        for tokens in [None, Some("many"), Some("-5"), Some("0"), Some("")] {
            let (status, remaining, _) = generate(&layer, "a", tokens).await;
            assert_eq!(status, StatusCode::OK, "{algorithm:?} {tokens:?}");
            assert_eq!(remaining, Some(1_000), "{algorithm:?} {tokens:?}");
        }
        // Admitted at cost 0 (the headers show the quota as decided), then
        // charged 5 000: into debt.
        let (status, remaining, _) = generate(&layer, "a", Some("5000")).await;
        assert_eq!((status, remaining), (StatusCode::OK, Some(1_000)));
        let (status, remaining, retry) = generate(&layer, "a", Some("1")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{algorithm:?}");
        assert_eq!(remaining, Some(0), "{algorithm:?}");
        // Honest: the exact wait, rounded up to whole seconds.
        let exact = admitted_again_at(algorithm, start) - start;
        let retry = retry.expect("a refusal has a Retry-After");
        assert_eq!(retry, exact.div_ceil(SEC), "{algorithm:?}");
        // Another client is not touched.
        assert_eq!(generate(&layer, "b", None).await.0, StatusCode::OK);
        // A second early: still refused. (Fresh layers on the backend: the
        // blocked-client cache runs on real time, not the fake clock.)
        clock.advance(Duration::from_secs(retry - 1));
        let fresh = || layer_on(Arc::clone(&backend), charged_tokens(algorithm));
        assert_eq!(
            generate(&fresh(), "a", None).await.0,
            StatusCode::TOO_MANY_REQUESTS,
            "{algorithm:?}: a second early"
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            generate(&fresh(), "a", None).await.0,
            StatusCode::OK,
            "{algorithm:?}: the Retry-After honoured"
        );
    }
}

#[tokio::test]
async fn a_response_reporting_5000_tokens_on_redis_refuses_the_next_request_honestly() {
    let url = support::redis_url();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    for algorithm in ALGORITHMS {
        let backend: Arc<dyn Backend> = Arc::new(support::redis_backend(&url, "charge-layer"));
        let layer = layer_on(Arc::clone(&backend), charged_tokens(algorithm));
        let now = redis_now(&mut conn);
        if MINUTE - now % MINUTE < 3 * SEC {
            tokio::time::sleep(Duration::from_micros(MINUTE - now % MINUTE + 1_000)).await;
        }
        let a = redis_now(&mut conn);
        let (status, _, _) = generate(&layer, "a", Some("5000")).await;
        assert_eq!(status, StatusCode::OK, "{algorithm:?}");
        // The charge runs after the response: a moment later on Redis.
        let admin = layer.admin();
        let client = Key::new("a");
        let name = format!("tokens-{algorithm:?}");
        for _ in 0..1_000 {
            if !admin.peek(&name, &client).await.unwrap().is_allowed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (status, remaining, retry) = generate(&layer, "a", None).await;
        let e = redis_now(&mut conn);
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{algorithm:?}");
        assert_eq!(remaining, Some(0), "{algorithm:?}");
        // Honest: when the request fits, rounded up to whole seconds, from
        // some instant between the charge and the refusal.
        let retry = retry.expect("a refusal has a Retry-After");
        let (lo, hi) = (
            (admitted_again_at(algorithm, a) - e).div_ceil(SEC),
            (admitted_again_at(algorithm, e) - a).div_ceil(SEC),
        );
        assert!(
            (lo..=hi).contains(&retry),
            "{algorithm:?}: Retry-After {retry} not in [{lo}, {hi}]"
        );
    }
}

/// The token target across two instances sharing one Redis: 10
/// concurrent requests, each reporting 300 tokens against 1 000 per minute
/// (GCRA). Admission needs only that the budget is not spent, so requests
/// in flight together are all admitted (never more than the budget plus
/// the costs in flight: 10 × 300 <= 1 000 + 9 × 300); every charge lands,
/// from both instances, and the next requests on either are refused with
/// the `Retry-After` of the whole debt (for 10, 3 000 tokens: 2 minutes
/// until the level is back at the budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_two_instances_are_all_charged() {
    let url = support::redis_url();
    let prefix = support::unique_prefix("tokens-two");
    let instance = || {
        let backend: Arc<dyn Backend> = Arc::new(
            RedisBackend::builder(url.as_str())
                .prefix(prefix.as_str())
                .build()
                .unwrap(),
        );
        layer_on(backend, charged_tokens(Algorithm::Gcra))
    };
    let (one, two) = (instance(), instance());
    let send = |layer: RateLimitLayer| async move {
        let service = layer.layer(tower::service_fn(|_: Request<String>| async {
            // Slow enough that the requests overlap.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let mut response = Response::new(String::new());
            response
                .headers_mut()
                .insert("x-tokens-used", http::HeaderValue::from_static("300"));
            Ok::<_, Infallible>(response)
        }));
        let request = Request::post("/api/generate")
            .header("x-client", "a")
            .body(String::new())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        let retry = response
            .headers()
            .contains_key(http::header::RETRY_AFTER)
            .then(|| headers::retry_after(response.headers()));
        (response.status(), retry)
    };
    let wave = |n: usize| {
        (0..n)
            .map(|i| {
                let layer = if i % 2 == 0 { one.clone() } else { two.clone() };
                tokio::spawn(send(layer))
            })
            .collect::<Vec<_>>()
    };
    let mut admitted = 0;
    for request in wave(10) {
        let (status, _) = request.await.unwrap();
        if status == StatusCode::OK {
            admitted += 1;
        }
    }
    // All, usually (they are in flight together); on a slow machine, a
    // request admitted after 4 charges have landed is refused. Never more
    // than the budget plus the costs in flight, and at least until the
    // budget is spent.
    assert!(admitted * 300 <= 1_000 + 9 * 300, "{admitted} admitted");
    assert!(admitted >= 4, "{admitted} admitted");
    // Every charge lands (after the responses: a moment later).
    let admin = one.admin();
    let client = Key::new("a");
    let debt = Duration::from_millis(admitted * 300 * 60);
    let mut level = Duration::ZERO;
    for _ in 0..1_000 {
        let seen = admin.peek("tokens-Gcra", &client).await.unwrap();
        level = seen.quotas()[0].reset_after;
        if level + Duration::from_secs(10) > debt {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // 300 tokens at 60 ms each per admitted request, less the moments since.
    assert!(
        level + Duration::from_secs(10) > debt,
        "{level:?}, {debt:?}"
    );
    let wait = (debt - Duration::from_secs(60)).as_secs();
    for request in wave(4) {
        let (status, retry) = request.await.unwrap();
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        let retry = retry.expect("a refusal has a Retry-After");
        assert!(
            (wait - 10..=wait).contains(&retry),
            "Retry-After {retry}, {wait}"
        );
    }
}
