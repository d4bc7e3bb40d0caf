//! The administration handle (`layer.admin()`) on both backends, every
//! algorithm, against real `redis-server`s:
//!
//! - a peek consumes nothing: later decisions are those without it, and the
//!   client's Redis keys keep their contents (`DUMP`) and TTLs (`PTTL`) —
//!   even what has left the window is left in place;
//! - a reset gives the full quota back and lifts this instance's local
//!   block (the blocked-client cache) at once;
//! - a refund gives back what one admitted check took (whole or in part,
//!   never more), and lifts the local block too;
//! - on Redis 7 a peek is an `EVALSHA_RO`; a server that does not know it
//!   (renamed away, as on Redis 6) or an ACL user without it gets `EVALSHA`
//!   after one refusal; a flushed script cache is reloaded;
//! - clear errors: an unknown policy, a cost above the max cost, a custom
//!   backend without peek, reset, refund or charge;
//! - a charge counts whatever the quota: the client in debt is refused.
//!
//! `tests/it/conformance.rs` runs peek and reset scenarios on memory, Redis and
//! a Redis Cluster too.

use std::convert::Infallible;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_redis_ratelimit::key::Header;
use tower_redis_ratelimit::{
    AdminError, Algorithm, Backend, BackendError, ChargeFuture, CheckFuture, Decision, Key,
    MemoryBackend, Policy, Quota, RateLimitLayer, RedisBackend, RefundFuture, ResetFuture, Ticket,
};

use crate::support::headers;

use crate::support;

/// A backend that counts the checks reaching it (to tell the blocked-client
/// cache's answers from the backend's).
#[derive(Clone)]
struct Counting {
    inner: Arc<dyn Backend>,
    checks: Arc<AtomicU64>,
}

impl Counting {
    fn new(inner: impl Backend) -> Self {
        Self {
            inner: Arc::new(inner),
            checks: Arc::default(),
        }
    }

    fn checks(&self) -> u64 {
        self.checks.load(Ordering::SeqCst)
    }
}

impl Backend for Counting {
    fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture {
        self.checks.fetch_add(1, Ordering::SeqCst);
        self.inner.check(policy, key, cost)
    }

    fn peek(&self, policy: &Policy, key: &Key) -> CheckFuture {
        self.inner.peek(policy, key)
    }

    fn reset(&self, policy: &Policy, key: &Key) -> ResetFuture {
        self.inner.reset(policy, key)
    }

    fn refund(&self, policy: &Policy, key: &Key, cost: u64, ticket: &Ticket) -> RefundFuture {
        self.inner.refund(policy, key, cost, ticket)
    }

    fn charge(&self, policy: &Policy, key: &Key, cost: u64) -> ChargeFuture {
        self.inner.charge(policy, key, cost)
    }
}

/// A policy of 3 per hour for `algorithm`, keyed by the `x-client` header.
fn policy(algorithm: Algorithm) -> Policy {
    Policy::new(format!("admin-{algorithm:?}"))
        .quota(Quota::per_hour(3))
        .algorithm(algorithm)
        .key(Header::new("x-client"))
}

fn layer(backend: impl Backend, policy: &Policy) -> RateLimitLayer {
    RateLimitLayer::builder()
        .backend(backend)
        .default_policy(policy.clone())
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// One request from `client` through the layer: its status and the
/// remaining units the `RateLimit` header reports.
async fn send(layer: &RateLimitLayer, client: &str) -> (StatusCode, Option<u64>) {
    let svc = layer.layer(tower::service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let req = Request::builder()
        .uri("/x")
        .header("x-client", client)
        .body(String::new())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    (res.status(), headers::remaining(res.headers()))
}

/// Through a layer on `backend`, for every algorithm: peeks between requests
/// change nothing; a client denied by the backend is then denied by the
/// blocked-client cache; `admin.reset` admits it at once, with its full
/// quota, where a reset of the backend alone does not.
async fn peek_and_reset_through_a_layer(backend: impl Fn(&str) -> Arc<dyn Backend>) {
    for &algorithm in &[Algorithm::SlidingLog, Algorithm::SlidingWindow] {
        let p = policy(algorithm);
        let counting = Counting::new(backend(&format!("{algorithm:?}")));
        let layer = layer(counting.clone(), &p);
        let admin = layer.admin();
        let (a, b) = (Key::new("a"), Key::new("b"));
        let name = p.name();

        for i in 0..3 {
            let seen = admin.peek(name, &a).await.unwrap();
            assert!(seen.is_allowed(), "{algorithm:?}");
            assert_eq!(seen.quotas()[0].remaining, 3 - i, "{algorithm:?}");
            assert_eq!(send(&layer, "a").await, (StatusCode::OK, Some(2 - i)));
        }
        let seen = admin.peek(name, &a).await.unwrap();
        assert_eq!(seen.denied_by(), Some(0), "{algorithm:?}: full");
        let retry = seen.retry_after().unwrap();
        // The log waits for the oldest unit (an hour); the counter at least
        // for the end of the fixed hour it counts in.
        assert!(retry > Duration::ZERO && retry <= Duration::from_secs(7200));
        if algorithm == Algorithm::SlidingLog {
            assert!(retry > Duration::from_secs(3500), "{retry:?}");
        }
        for _ in 0..2 {
            assert_eq!(send(&layer, "b").await.0, StatusCode::OK);
        }

        // The backend's denial, then the blocked-client cache's.
        let before = counting.checks();
        assert_eq!(send(&layer, "a").await.0, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(counting.checks(), before + 1, "{algorithm:?}");
        assert_eq!(send(&layer, "a").await.0, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            counting.checks(),
            before + 1,
            "{algorithm:?}: answered locally"
        );

        // Resetting the backend alone leaves this instance's block in place...
        counting.reset(&p, &a).await.unwrap();
        assert_eq!(admin.peek(name, &a).await.unwrap().quotas()[0].remaining, 3);
        assert_eq!(send(&layer, "a").await.0, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(counting.checks(), before + 1, "{algorithm:?}: still local");
        // ...`admin.reset` lifts it too: admitted at once, full quota.
        admin.reset(name, &a).await.unwrap();
        assert_eq!(send(&layer, "a").await, (StatusCode::OK, Some(2)));
        assert_eq!(counting.checks(), before + 2, "{algorithm:?}");
        // The other client was not touched.
        assert_eq!(admin.peek(name, &b).await.unwrap().quotas()[0].remaining, 1);
        assert_eq!(send(&layer, "b").await, (StatusCode::OK, Some(0)));

        // `admin.check` consumes like a request.
        let d = admin.check(name, &a, 2).await.unwrap();
        assert!(d.is_allowed());
        assert_eq!(d.quotas()[0].remaining, 0);
        assert_eq!(send(&layer, "a").await.0, StatusCode::TOO_MANY_REQUESTS);
    }
}

#[cfg(feature = "test-util")]
#[tokio::test]
async fn memory_peek_and_reset_through_a_layer() {
    // A clock that stands still: nothing leaves the window meanwhile.
    let clock = tower_redis_ratelimit::clock::FakeClock::new(86_400_000_000_000);
    peek_and_reset_through_a_layer(|_| Arc::new(MemoryBackend::with_clock(clock.clone()))).await;
}

#[tokio::test]
async fn redis_peek_and_reset_through_a_layer() {
    let url = support::redis_url();
    // The counter counts exactly within one fixed hour: keep the next hour
    // boundary (on Redis' clock) out of the test's few seconds.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let (secs, _): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
    let to_boundary = 3600 - secs % 3600;
    if to_boundary < 10 {
        tokio::time::sleep(Duration::from_secs(to_boundary + 1)).await;
    }
    peek_and_reset_through_a_layer(|test| Arc::new(support::redis_backend(&url, test))).await;
}

/// Through a layer on `backend`, for every algorithm: `admin.refund` gives
/// back what one `admin.check` took (part of it, then the rest, never more
/// than it took), a client blocked by this instance's cache is asked about
/// again at once, and other clients are not touched.
async fn refund_through_a_layer(backend: impl Fn(&str) -> Arc<dyn Backend>) {
    for algorithm in [
        Algorithm::SlidingLog,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ] {
        let p = policy(algorithm);
        let counting = Counting::new(backend(&format!("refund-{algorithm:?}")));
        let layer = layer(counting.clone(), &p);
        let admin = layer.admin();
        let (a, b) = (Key::new("a"), Key::new("b"));
        let name = p.name();
        let remaining = |d: Decision| d.quotas()[0].remaining;

        // A job of cost 2 and a request: full.
        let job = admin.check(name, &a, 2).await.unwrap();
        let ticket = job.ticket().expect("an admitted check has a ticket");
        assert_eq!(ticket.cost(), 2);
        assert_eq!(send(&layer, "a").await, (StatusCode::OK, Some(0)));
        assert_eq!(send(&layer, "b").await, (StatusCode::OK, Some(2)));
        // Denied by the backend, then by the blocked-client cache.
        assert_eq!(send(&layer, "a").await.0, StatusCode::TOO_MANY_REQUESTS);
        let before = counting.checks();
        assert_eq!(send(&layer, "a").await.0, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(counting.checks(), before, "{algorithm:?}: answered locally");

        // The job cost 1 after all: one unit back, and the client is asked
        // about again (admitted, as its unit is back).
        admin.refund(name, &a, 1, &ticket).await.unwrap();
        assert_eq!(remaining(admin.peek(name, &a).await.unwrap()), 1);
        assert_eq!(send(&layer, "a").await, (StatusCode::OK, Some(0)));
        assert_eq!(counting.checks(), before + 1, "{algorithm:?}");

        // A refund of a denied check's decision: there is no ticket.
        let denied = admin.check(name, &a, 1).await.unwrap();
        assert!(!denied.is_allowed() && denied.ticket().is_none());

        // A new job, refunded whole, with a cost above what it took: what
        // it took comes back, no more.
        admin.reset(name, &a).await.unwrap();
        let job = admin.check(name, &a, 1).await.unwrap();
        assert_eq!(remaining(job.clone()), 2);
        admin
            .refund(name, &a, 3, &job.ticket().unwrap())
            .await
            .unwrap();
        assert_eq!(remaining(admin.peek(name, &a).await.unwrap()), 3);
        // The other client was not touched.
        assert_eq!(remaining(admin.peek(name, &b).await.unwrap()), 2);

        // An unknown policy.
        let err = admin.refund("nope", &a, 1, &ticket).await.unwrap_err();
        assert!(matches!(err, AdminError::UnknownPolicy { .. }), "{err:?}");
    }
}

#[cfg(feature = "test-util")]
#[tokio::test]
async fn memory_refund_through_a_layer() {
    let clock = tower_redis_ratelimit::clock::FakeClock::new(86_400_000_000_000);
    refund_through_a_layer(|_| Arc::new(MemoryBackend::with_clock(clock.clone()))).await;
}

#[tokio::test]
async fn redis_refund_through_a_layer() {
    let url = support::redis_url();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let (secs, _): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
    let to_boundary = 3600 - secs % 3600;
    if to_boundary < 10 {
        tokio::time::sleep(Duration::from_secs(to_boundary + 1)).await;
    }
    refund_through_a_layer(|test| Arc::new(support::redis_backend(&url, test))).await;
}

/// Through a layer on `backend`, for every algorithm: `admin.charge`
/// counts whatever the quota (into debt: 5 against 3 per hour), so the
/// client's next request is refused with a `Retry-After`, a peek says
/// denied, other clients are not touched, a charge of 0 changes nothing,
/// and an unknown policy is an error.
async fn charge_through_a_layer(backend: impl Fn(&str) -> Arc<dyn Backend>) {
    for algorithm in [
        Algorithm::SlidingLog,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ] {
        let p = policy(algorithm);
        let layer = layer(backend(&format!("charge-{algorithm:?}")), &p);
        let admin = layer.admin();
        let (a, b) = (Key::new("a"), Key::new("b"));
        let name = p.name();
        let remaining = |d: Decision| d.quotas()[0].remaining;

        admin.charge(name, &a, 0).await.unwrap();
        assert_eq!(remaining(admin.peek(name, &a).await.unwrap()), 3);
        admin.charge(name, &a, 1).await.unwrap();
        assert_eq!(send(&layer, "a").await, (StatusCode::OK, Some(1)));
        // Past the limit: into debt.
        admin.charge(name, &a, 5).await.unwrap();
        let seen = admin.peek(name, &a).await.unwrap();
        assert!(!seen.is_allowed(), "{algorithm:?}: {seen:?}");
        assert_eq!(remaining(seen.clone()), 0);
        let retry = seen.retry_after().expect("a denial has a retry-after");
        assert!(retry > Duration::ZERO, "{algorithm:?}");
        assert_eq!(
            send(&layer, "a").await.0,
            StatusCode::TOO_MANY_REQUESTS,
            "{algorithm:?}"
        );
        // The other client was not touched.
        assert_eq!(send(&layer, "b").await, (StatusCode::OK, Some(2)));
        assert_eq!(remaining(admin.peek(name, &b).await.unwrap()), 2);

        let err = admin.charge("nope", &a, 1).await.unwrap_err();
        assert!(matches!(err, AdminError::UnknownPolicy { .. }), "{err:?}");
    }
}

#[cfg(feature = "test-util")]
#[tokio::test]
async fn memory_charge_through_a_layer() {
    let clock = tower_redis_ratelimit::clock::FakeClock::new(86_400_000_000_000);
    charge_through_a_layer(|_| Arc::new(MemoryBackend::with_clock(clock.clone()))).await;
}

#[tokio::test]
async fn redis_charge_through_a_layer() {
    let url = support::redis_url();
    charge_through_a_layer(|test| Arc::new(support::redis_backend(&url, test))).await;
}

// ---------------------------------------------------------------------------
// Redis keys under peeks
// ---------------------------------------------------------------------------

/// Every key's serialized value (`DUMP`; `None`: no key) and `PTTL`.
fn snapshot(conn: &mut redis::Connection, keys: &[String]) -> Vec<(Option<Vec<u8>>, i64)> {
    keys.iter()
        .map(|key| {
            let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg(key).query(conn).unwrap();
            let pttl: i64 = redis::cmd("PTTL").arg(key).query(conn).unwrap();
            (dump, pttl)
        })
        .collect()
}

/// `calls` of one command in `INFO commandstats` (0 if never called).
fn calls(conn: &mut redis::Connection, command: &str) -> u64 {
    info_count(
        conn,
        "commandstats",
        &format!("cmdstat_{command}:"),
        "calls=",
    )
}

/// `count` of one error code in `INFO errorstats` (0 if never replied).
fn errors(conn: &mut redis::Connection, code: &str) -> u64 {
    info_count(conn, "errorstats", &format!("errorstat_{code}:"), "count=")
}

fn info_count(conn: &mut redis::Connection, section: &str, line: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query(conn).unwrap();
    info.lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.split(field).nth(1))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Asserts that `n` peeks leave every key as it was: the same contents and
/// no TTL pushed back (a TTL only runs down). Returns the last peek.
async fn peek_changes_nothing(
    backend: &RedisBackend,
    conn: &mut redis::Connection,
    policy: &Policy,
    key: &Key,
    n: usize,
) -> tower_redis_ratelimit::Decision {
    let keys = backend.redis_keys(policy, key);
    let before = snapshot(conn, &keys);
    let mut last = None;
    for _ in 0..n {
        last = Some(backend.peek(policy, key).await.unwrap());
    }
    let after = snapshot(conn, &keys);
    for ((dump_before, ttl_before), (dump_after, ttl_after)) in before.iter().zip(&after) {
        assert_eq!(dump_before, dump_after, "{policy:?}: contents changed");
        assert!(
            ttl_after <= ttl_before,
            "{ttl_after} > {ttl_before}: TTL pushed back"
        );
        assert_eq!(*ttl_after < 0, *ttl_before < 0, "{before:?} -> {after:?}");
    }
    last.unwrap()
}

/// On Redis 7, peeks are `EVALSHA_RO` calls that change no key, member or
/// TTL — including members that have left the window (a check trims them)
/// and a counter whose fixed window has rolled over.
#[tokio::test]
async fn redis_peeks_change_no_key_and_use_evalsha_ro() {
    let server = support::RedisServer::start();
    let mut conn = server.conn();
    let backend = support::redis_backend(&server.url(), "peek-keys");
    let window = Duration::from_secs(1);
    for &algorithm in &[Algorithm::SlidingLog, Algorithm::SlidingWindow] {
        let p = Policy::new(format!("keys-{algorithm:?}"))
            .algorithm(algorithm)
            .quota(Quota::new(4, window))
            .quota(Quota::per_hour(10));
        let key = Key::new("k");
        // Nothing stored yet: a peek creates nothing.
        let seen = peek_changes_nothing(&backend, &mut conn, &p, &key, 3).await;
        assert_eq!(seen.quotas()[0].remaining, 4);
        let keys = backend.redis_keys(&p, &key);
        let exists: u64 = redis::cmd("EXISTS").arg(&keys).query(&mut conn).unwrap();
        assert_eq!(exists, 0, "{algorithm:?}");

        assert!(backend.check(&p, &key, 1).await.unwrap().is_allowed());
        let ro_before = calls(&mut conn, "evalsha_ro");
        let evalsha_before = calls(&mut conn, "evalsha");
        tokio::time::sleep(window * 6 / 10).await;
        assert!(backend.check(&p, &key, 2).await.unwrap().is_allowed());
        let seen = peek_changes_nothing(&backend, &mut conn, &p, &key, 5).await;
        // The hour quota: 7 left (the counter: 8 just after an hour
        // boundary, where the previous hour's 3 weigh 2).
        let hour = seen.quotas()[1].remaining;
        assert!(hour == 7 || algorithm == Algorithm::SlidingWindow && hour == 8);
        assert_eq!(
            calls(&mut conn, "evalsha_ro"),
            ro_before + 5,
            "{algorithm:?}"
        );
        assert_eq!(
            calls(&mut conn, "evalsha"),
            evalsha_before + 1,
            "{algorithm:?}"
        );

        // The first unit has left the 1 s window (the counter: its fixed
        // window has rolled over); the keys are still there.
        tokio::time::sleep(window / 2).await;
        let seen = peek_changes_nothing(&backend, &mut conn, &p, &key, 5).await;
        assert!(seen.quotas()[0].remaining >= 2, "{algorithm:?}: {seen:?}");
        if algorithm == Algorithm::SlidingLog {
            let members: u64 = redis::cmd("ZCARD").arg(&keys[0]).query(&mut conn).unwrap();
            // One member per request, whatever its cost.
            assert_eq!(members, 2, "a peek trims nothing");
            assert_eq!(seen.quotas()[0].remaining, 2, "but counts only the last 2");
            // A check trims.
            let d = backend.check(&p, &key, 1).await.unwrap();
            assert_eq!(d.quotas()[0].remaining, 1);
            let members: u64 = redis::cmd("ZCARD").arg(&keys[0]).query(&mut conn).unwrap();
            assert_eq!(members, 2, "one trimmed, one added");
        }

        // A reset is one DEL of every key.
        let dels = calls(&mut conn, "del");
        backend.reset(&p, &key).await.unwrap();
        assert_eq!(calls(&mut conn, "del"), dels + 1);
        let exists: u64 = redis::cmd("EXISTS").arg(&keys).query(&mut conn).unwrap();
        assert_eq!(exists, 0, "{algorithm:?}");
    }
}

#[tokio::test]
async fn redis_peek_reloads_a_flushed_script() {
    let server = support::RedisServer::start();
    let mut conn = server.conn();
    let backend = support::redis_backend(&server.url(), "flush");
    let p = Policy::auth();
    let key = Key::new("k");
    // The first peek already finds no script, loads it, and calls again.
    assert_eq!(
        backend.peek(&p, &key).await.unwrap().quotas()[0].remaining,
        5
    );
    assert!(backend.check(&p, &key, 1).await.unwrap().is_allowed());
    let () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
    assert_eq!(
        backend.peek(&p, &key).await.unwrap().quotas()[0].remaining,
        4
    );
    assert_eq!(
        errors(&mut conn, "NOSCRIPT"),
        3,
        "two peeks and a check loaded"
    );
}

// ---------------------------------------------------------------------------
// Servers without EVALSHA_RO
// ---------------------------------------------------------------------------

/// A `redis-server` started with extra arguments, killed on drop.
struct CustomServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl CustomServer {
    fn start(extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("trr-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..20 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
            let child = Command::new(bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--dir", dir.to_str().unwrap()])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (see tests/it/support/mod.rs)");
            let mut server = Self {
                child,
                port,
                dir: dir.clone(),
            };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("could not start redis-server {extra:?}");
    }

    /// Whether our server answers (false: it exited, its port was taken).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let client = redis::Client::open(self.url()).unwrap();
            if let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for CustomServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Peeks at a client with 2 of 5 used on a server that refuses
/// `EVALSHA_RO` with `code` errors: the first peek meets one refusal, then
/// every peek is one `EVALSHA` and no refusal.
async fn peeks_fall_back(backend: &RedisBackend, conn: &mut redis::Connection, code: &str) {
    let p = Policy::auth();
    let key = Key::new("old-server");
    for _ in 0..2 {
        assert!(backend.check(&p, &key, 1).await.unwrap().is_allowed());
    }
    let peek = || async {
        let seen = backend.peek(&p, &key).await.unwrap();
        assert!(seen.is_allowed());
        assert_eq!(seen.quotas()[0].remaining, 3);
    };
    let refused = errors(conn, code);
    peek().await; // refused once, then the script is loaded
    assert_eq!(errors(conn, code), refused + 1, "EVALSHA_RO was tried");
    let evalsha = calls(conn, "evalsha");
    for _ in 0..5 {
        peek().await;
    }
    assert_eq!(
        errors(conn, code),
        refused + 1,
        "EVALSHA_RO was not tried again"
    );
    assert_eq!(calls(conn, "evalsha"), evalsha + 5);
    assert_eq!(calls(conn, "evalsha_ro"), 0);
}

/// A server that does not know `EVALSHA_RO` (as Redis 6, simulated on Redis
/// 7 by renaming the command away): one refusal, then `EVALSHA` for good.
#[tokio::test]
async fn peek_falls_back_to_evalsha_without_evalsha_ro() {
    let server = CustomServer::start(&["--rename-command", "EVALSHA_RO", ""]);
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let backend = RedisBackend::new(&server.url()).unwrap();
    peeks_fall_back(&backend, &mut conn, "ERR").await;
}

/// An ACL user allowed `EVALSHA` but not `EVALSHA_RO`: the same fallback.
#[tokio::test]
async fn peek_falls_back_to_evalsha_for_an_acl_user_without_evalsha_ro() {
    let server = support::RedisServer::start();
    let mut conn = server.conn();
    let () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                "app",
                "on",
                ">app-pw",
                "~*",
                "+@all",
                "-evalsha_ro",
            ][..],
        )
        .query(&mut conn)
        .unwrap();
    let url = format!("redis://app:app-pw@127.0.0.1:{}/", server.port);
    let backend = RedisBackend::new(&url).unwrap();
    peeks_fall_back(&backend, &mut conn, "NOPERM").await;
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A backend with `check` only: peek, reset, refund and charge use the default
/// methods.
struct CheckOnly(MemoryBackend);

impl Backend for CheckOnly {
    fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture {
        self.0.check(policy, key, cost)
    }
}

#[tokio::test]
async fn admin_errors_are_clear() {
    let layer = RateLimitLayer::builder()
        .backend(CheckOnly(MemoryBackend::new()))
        .default_policy(Policy::default_api())
        .route("/auth/login", Policy::auth())
        .build()
        .unwrap();
    let admin = layer.admin();
    let key = Key::new("203.0.113.9");
    let names: Vec<&str> = admin.policies().map(Policy::name).collect();
    assert_eq!(names, ["api", "auth"]);
    assert_eq!(admin.policy("auth").unwrap().quotas()[0].limit(), 5);
    assert!(admin.policy("nope").is_none());

    let err = admin.peek("nope", &key).await.unwrap_err();
    assert!(
        matches!(&err, AdminError::UnknownPolicy { name, known } if name == "nope" && known == &["api", "auth"]),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the layer has no policy named \"nope\" (its policies: api, auth)"
    );
    assert!(matches!(
        admin.reset("nope", &key).await,
        Err(AdminError::UnknownPolicy { .. })
    ));
    assert!(matches!(
        admin.check("nope", &key, 1).await,
        Err(AdminError::UnknownPolicy { .. })
    ));

    // The sliding log's default max cost is 5 here (its limit).
    let err = admin.check("auth", &key, 6).await.unwrap_err();
    assert!(
        matches!(
            err,
            AdminError::CostTooHigh {
                cost: 6,
                max_cost: 5,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(admin.check("auth", &key, 5).await.unwrap().is_allowed());

    let ticket = admin
        .check("api", &key, 1)
        .await
        .unwrap()
        .ticket()
        .expect("the memory backend's admission");
    for (result, operation) in [
        (admin.peek("auth", &key).await.map(drop), "peek"),
        (admin.reset("auth", &key).await, "reset"),
        (admin.refund("api", &key, 1, &ticket).await, "refund"),
        (admin.charge("api", &key, 1).await, "charge"),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(&err, AdminError::Backend(BackendError::Unsupported { operation: o }) if *o == operation),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("backend: this backend does not support `{operation}`")
        );
    }
}
