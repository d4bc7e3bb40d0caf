//! Backend conformance: every scenario is written once against a small
//! [`Harness`] (a backend, a clock reading and a `sleep`) and runs against
//! both backends and, where meaningful, every algorithm (GCRA, whose numbers
//! follow from its emission interval rather than from windows, has scenarios
//! of its own: `gcra_*`).
//!
//! - `memory::*`: [`MemoryBackend`] on a [`FakeClock`]; `sleep` advances the
//!   clock, so every number is checked exactly, to the microsecond.
//! - `redis::*`: [`RedisBackend`] against a throwaway `redis-server`; `sleep`
//!   is a real sleep and the clock is Redis' own `TIME`. Timing assertions are
//!   brackets: a value the script computed at an unknown instant between two
//!   `TIME` readings must lie between the values for those two readings.
//!
//! Besides checks, the administration calls run here too: `peek` (reads,
//! consumes nothing) and `reset` (forgets a client); `tests/it/admin.rs` looks at
//! the Redis keys themselves (contents and TTLs unchanged by a peek). So do
//! refunds (`refund_*`): sequences of checks with refunds mixed in, decided
//! exactly as the model decides them, and the timing of each algorithm's
//! refund rule (the counter's previous window, entries that have left the
//! window); `tests/it/refunds.rs` looks at the keys (TTLs, key faults).
//! Charges likewise (`charge*`): sequences of checks with charges into
//! debt mixed in, decided as the model decides them, and each algorithm's
//! debt in time (its retry-after, honoured); `tests/it/charges.rs` looks at
//! the keys.
//!
//! The models themselves are compared with naive reference models by
//! property tests inside the crate: `algorithm::check` for every algorithm in
//! `src/algorithm/mod.rs`, the memory backend (several policies and clients)
//! in `src/backend/memory.rs`.

#[cfg(feature = "cluster")]
use crate::support::cluster as cluster_support;

use std::collections::HashMap;
use std::time::Duration;

use tower_redis_ratelimit::clock::{Clock, FakeClock};
use tower_redis_ratelimit::{
    Algorithm, Backend, Decision, Key, MemoryBackend, Policy, Quota, Ticket,
};

use crate::support;

const MS: u64 = 1_000;
const SEC: u64 = 1_000_000;
/// The window of the timing scenarios (short so the Redis runs stay fast).
const W: u64 = SEC;
/// The fake clock's origin: a multiple of every window used here.
const FAKE_START: u64 = 86_400_000 * SEC;

fn dur(us: u64) -> Duration {
    Duration::from_micros(us)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap()
}

fn policy(name: &str, alg: Algorithm) -> Policy {
    let tag = match alg {
        Algorithm::SlidingLog => "log",
        Algorithm::Gcra => "gcra",
        _ => "win",
    };
    Policy::new(format!("{name}-{tag}")).algorithm(alg)
}

fn quota(limit: u64, window_us: u64) -> Quota {
    Quota::new(limit, dur(window_us))
}

fn is_log(alg: Algorithm) -> bool {
    alg == Algorithm::SlidingLog
}

enum Time {
    Fake(FakeClock),
    Redis(::redis::aio::MultiplexedConnection),
}

/// A backend plus a clock: the fake one for memory, Redis `TIME` for Redis.
struct Harness {
    backend: Box<dyn Backend>,
    time: Time,
}

impl Harness {
    fn memory() -> Self {
        let clock = FakeClock::new(FAKE_START);
        Self {
            backend: Box::new(MemoryBackend::with_clock(clock.clone())),
            time: Time::Fake(clock),
        }
    }

    async fn redis(test: &str) -> Self {
        let url = support::redis_url();
        let backend = support::redis_backend(&url, test);
        let conn = ::redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server");
        Self {
            backend: Box::new(backend),
            time: Time::Redis(conn),
        }
    }

    /// The Redis backend on the test process' 3-master Redis Cluster
    /// ([`cluster_support::shared_cluster`]), under a key prefix of its own.
    /// All masters run on this machine, so any one's `TIME` is the clock.
    #[cfg(feature = "cluster")]
    async fn cluster(test: &str) -> Self {
        let cluster = cluster_support::shared_cluster();
        let backend = tower_redis_ratelimit::RedisBackend::cluster_builder(cluster.urls())
            .prefix(support::unique_prefix(test))
            .build()
            .expect("valid cluster configuration");
        let conn = ::redis::Client::open(cluster.urls()[0].as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a cluster node");
        Self {
            backend: Box::new(backend),
            time: Time::Redis(conn),
        }
    }

    /// Whether time is exact (fake clock): exact equalities are asserted.
    fn exact(&self) -> bool {
        matches!(self.time, Time::Fake(_))
    }

    /// Extra time slept past a computed instant on a real clock.
    fn margin(&self) -> u64 {
        if self.exact() { 0 } else { 50 * MS }
    }

    /// The backend's notion of now, in microseconds.
    async fn now(&self) -> u64 {
        match &self.time {
            Time::Fake(clock) => clock.now_micros(),
            Time::Redis(conn) => {
                let (s, us): (u64, u64) = ::redis::cmd("TIME")
                    .query_async(&mut conn.clone())
                    .await
                    .expect("redis TIME");
                s * SEC + us
            }
        }
    }

    async fn sleep(&self, us: u64) {
        match &self.time {
            Time::Fake(clock) => clock.advance(dur(us)),
            Time::Redis(_) => tokio::time::sleep(dur(us)).await,
        }
    }

    /// Sleeps until the backend's clock reads at least `t`.
    async fn sleep_until(&self, t: u64) {
        for _ in 0..1_000 {
            let now = self.now().await;
            if now >= t {
                return;
            }
            self.sleep(t - now).await;
        }
        panic!("clock never reached {t}");
    }

    /// Waits until the clock is at the very start of a fixed window of length
    /// `w` (exactly on the boundary for the fake clock, within its first 5 %
    /// for Redis) and returns that window's start.
    async fn align(&self, w: u64) -> u64 {
        for _ in 0..10 {
            let now = self.now().await;
            let e = now % w;
            if e == 0 || (!self.exact() && e <= w / 20) {
                return now - e;
            }
            self.sleep_until(now - e + w).await;
        }
        panic!("could not align to a window of {w} us");
    }

    /// Waits, if needed, so that no boundary of a fixed window of length `w`
    /// falls within the next `guard` microseconds.
    async fn avoid_boundary(&self, w: u64, guard: u64) {
        let now = self.now().await;
        if w - now % w < guard {
            self.sleep_until(now - now % w + w).await;
        }
    }

    async fn check(&self, policy: &Policy, key: &Key, cost: u64) -> Decision {
        self.backend
            .check(policy, key, cost)
            .await
            .unwrap_or_else(|e| panic!("backend error: {e}"))
    }

    async fn peek(&self, policy: &Policy, key: &Key) -> Decision {
        self.backend
            .peek(policy, key)
            .await
            .unwrap_or_else(|e| panic!("backend error on peek: {e}"))
    }

    async fn reset(&self, policy: &Policy, key: &Key) {
        self.backend
            .reset(policy, key)
            .await
            .unwrap_or_else(|e| panic!("backend error on reset: {e}"));
    }

    async fn refund(&self, policy: &Policy, key: &Key, cost: u64, ticket: &Ticket) {
        self.backend
            .refund(policy, key, cost, ticket)
            .await
            .unwrap_or_else(|e| panic!("backend error on refund: {e}"));
    }

    async fn charge(&self, policy: &Policy, key: &Key, cost: u64) {
        self.backend
            .charge(policy, key, cost)
            .await
            .unwrap_or_else(|e| panic!("backend error on charge: {e}"));
    }

    /// The decision and the clock just before and just after it: the backend
    /// decided at an instant in `[before, after]`.
    async fn check_timed(&self, policy: &Policy, key: &Key, cost: u64) -> (Decision, u64, u64) {
        let before = self.now().await;
        let decision = self.check(policy, key, cost).await;
        let after = self.now().await;
        (decision, before, after)
    }
}

fn retry_us(d: &Decision) -> u64 {
    micros(d.retry_after().expect("denied decision has a retry-after"))
}

#[track_caller]
fn assert_allowed(d: &Decision, what: &str) {
    assert!(d.is_allowed(), "{what}: expected admission, got {d:?}");
    assert_eq!(d.denied_by(), None, "{what}");
    assert_eq!(d.retry_after(), None, "{what}");
}

#[track_caller]
fn assert_denied(d: &Decision, by: usize, what: &str) {
    assert!(!d.is_allowed(), "{what}: expected denial, got {d:?}");
    assert_eq!(d.denied_by(), Some(by), "{what}: wrong quota: {d:?}");
    assert!(retry_us(d) > 0, "{what}: zero retry-after: {d:?}");
}

#[track_caller]
fn assert_between(value: u64, lo: u64, hi: u64, what: &str) {
    assert!(
        (lo..=hi).contains(&value),
        "{what}: {value} not in [{lo}, {hi}]"
    );
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// Limit N admits exactly N, then denies; other clients are unaffected.
async fn limit_reached_exactly(h: &Harness, alg: Algorithm) {
    let limits = [1u64, 5, 20];
    if !is_log(alg) {
        // The counter is exact within one fixed window.
        h.align(W).await;
    }
    for limit in limits {
        let p = policy(&format!("exact{limit}"), alg).quota(quota(limit, W));
        let key = Key::new("client-a");
        for i in 1..=limit {
            let d = h.check(&p, &key, 1).await;
            let what = format!("{alg:?} limit {limit} request {i}");
            assert_allowed(&d, &what);
            let q = d.quotas()[0];
            assert_eq!(q.limit, limit, "{what}");
            assert_eq!(q.window, dur(W), "{what}");
            assert_eq!(q.remaining, limit - i, "{what}");
            let reset = micros(q.reset_after);
            if is_log(alg) {
                // The newest entry is this request: the log empties one window later.
                assert_eq!(reset, W, "{what}");
            } else if h.exact() {
                assert_eq!(reset, 2 * W, "{what}");
            } else {
                assert_between(reset, W + 1, 2 * W, &what);
            }
        }
        for i in 0..3 {
            let d = h.check(&p, &key, 1).await;
            let what = format!("{alg:?} limit {limit} extra request {i}");
            assert_denied(&d, 0, &what);
            assert_eq!(d.quotas()[0].remaining, 0, "{what}");
            let r = retry_us(&d);
            let max = if is_log(alg) { W } else { 2 * W };
            assert_between(r, 1, max, &what);
        }
        let d = h.check(&p, &Key::new("client-b"), 1).await;
        assert_allowed(&d, "another client");
        assert_eq!(d.quotas()[0].remaining, limit - 1);
    }
}

/// A denied decision's retry-after is positive, bounded, and sufficient:
/// after waiting it the request is admitted. For the log it is exact to the
/// timestamp of the oldest entry.
async fn retry_after_is_correct(h: &Harness, alg: Algorithm) {
    let p = policy("retry", alg).quota(quota(3, W));
    let key = Key::new("retry-client");
    if is_log(alg) {
        let (d, a0, b0) = h.check_timed(&p, &key, 1).await;
        assert_allowed(&d, "1st");
        let t0 = a0;
        h.sleep_until(t0 + 300 * MS).await;
        let (d, a1, b1) = h.check_timed(&p, &key, 1).await;
        assert_allowed(&d, "2nd");
        h.sleep_until(t0 + 600 * MS).await;
        assert_allowed(&h.check(&p, &key, 1).await, "3rd");
        h.sleep_until(t0 + 700 * MS).await;
        let (d, c, e) = h.check_timed(&p, &key, 1).await;
        assert_denied(&d, 0, "4th");
        let r = retry_us(&d);
        assert_between(r, 1, W, "log retry-after within the window");
        // The oldest entry was written in [a0, b0] and the denial happened in
        // [c, e]: the oldest entry leaves at its timestamp + W.
        assert_between(
            r,
            a0 + W - e,
            b0 + W - c,
            "log retry-after = oldest + W - now",
        );
        if h.exact() {
            assert_eq!(r, 300 * MS);
            h.sleep(r - 1).await;
            let d = h.check(&p, &key, 1).await;
            assert_denied(&d, 0, "1 us before retry-after");
            assert_eq!(retry_us(&d), 1);
            h.sleep(1).await;
        } else {
            h.sleep(r + h.margin()).await;
        }
        let d = h.check(&p, &key, 1).await;
        assert_allowed(&d, "after retry-after");
        assert_eq!(d.quotas()[0].remaining, 0);
        // Now the next-oldest entry (the 2nd request) is the one to wait for.
        let (d, c, e) = h.check_timed(&p, &key, 1).await;
        if e < a1 + W {
            assert_denied(&d, 0, "the 2nd entry is still in the window");
            assert_between(
                retry_us(&d),
                a1 + W - e,
                b1 + W - c,
                "retry to the 2nd entry",
            );
            if h.exact() {
                assert_eq!(retry_us(&d), 300 * MS);
            }
        }
    } else {
        // Fill in the second half of a fixed window: the wait is the rest of
        // this window plus the previous count's decay below the limit.
        let s = h.align(W).await;
        h.sleep_until(s + W / 2).await;
        for i in 0..3 {
            assert_allowed(&h.check(&p, &key, 1).await, &format!("fill {i}"));
        }
        let (d, c, e) = h.check_timed(&p, &key, 1).await;
        assert_denied(&d, 0, "4th");
        let r = retry_us(&d);
        assert_between(r, 1, W, "counter retry-after within the window");
        // cur = 3: in the next window, floor(3 * (W - x) / W) + 1 <= 3 once
        // 3 * (W - x) / W < 3, i.e. from x = 1 µs (+1 µs against rounding).
        let target = decay_target(3, 2);
        let (e_lo, e_hi) = (c - s, e - s);
        assert_between(
            r,
            W - e_hi + target,
            W - e_lo + target,
            "counter retry formula",
        );
        if h.exact() {
            assert_eq!(r, W / 2 + target);
            // Exact to the microsecond (+1 µs against rounding).
            h.sleep(r - 2).await;
            assert_denied(&h.check(&p, &key, 1).await, 0, "just before retry-after");
            h.sleep(2).await;
        } else {
            h.sleep(r + h.margin()).await;
        }
        assert_allowed(&h.check(&p, &key, 1).await, "after retry-after");
    }
}

/// After a window everything is admitted again; log entries leave one by one
/// and the counter's previous window decays progressively.
async fn window_slides(h: &Harness, alg: Algorithm) {
    let m = h.margin();
    if is_log(alg) {
        let p = policy("slide", alg).quota(quota(3, W));
        let key = Key::new("slider");
        let t0 = h.now().await;
        for (i, offset) in [0, 250 * MS, 500 * MS].into_iter().enumerate() {
            h.sleep_until(t0 + offset).await;
            let d = h.check(&p, &key, 1).await;
            assert_allowed(&d, &format!("fill {i}"));
            assert_eq!(d.quotas()[0].remaining, 2 - i as u64);
        }
        h.sleep_until(t0 + 750 * MS).await;
        assert_denied(&h.check(&p, &key, 1).await, 0, "full");
        // Entries leave one at a time, each exactly one window after it came.
        for (i, offset) in [0, 250 * MS, 500 * MS].into_iter().enumerate() {
            if h.exact() {
                h.sleep_until(t0 + offset + W - 1).await;
                let d = h.check(&p, &key, 1).await;
                assert_denied(&d, 0, &format!("entry {i}, 1 us before it leaves"));
                assert_eq!(retry_us(&d), 1);
            }
            h.sleep_until(t0 + offset + W + m).await;
            let d = h.check(&p, &key, 1).await;
            assert_allowed(&d, &format!("entry {i} left"));
            assert_eq!(d.quotas()[0].remaining, 0);
            assert_denied(
                &h.check(&p, &key, 1).await,
                0,
                &format!("only entry {i} left"),
            );
        }
        // A full window after the last admission, the whole limit is back.
        h.sleep_until(t0 + 500 * MS + W + m + W + m).await;
        for i in 0..3 {
            let d = h.check(&p, &key, 1).await;
            assert_allowed(&d, &format!("refill {i}"));
            assert_eq!(d.quotas()[0].remaining, 2 - i);
        }
        assert_denied(&h.check(&p, &key, 1).await, 0, "full again");
    } else {
        let p = policy("slide", alg).quota(quota(10, W));
        let key = Key::new("slider");
        let s = h.align(W).await;
        for i in 0..10 {
            assert_allowed(&h.check(&p, &key, 1).await, &format!("fill {i}"));
        }
        assert_denied(&h.check(&p, &key, 1).await, 0, "full");
        // 41 % into the next window the previous 10 weigh floor(10 * 0.59) = 5
        // (the same up to 50 %): exactly 5 more fit.
        h.sleep_until(s + W + 410 * MS).await;
        for i in 0..5 {
            let d = h.check(&p, &key, 1).await;
            assert_allowed(&d, &format!("decayed slot {i}"));
            assert_eq!(d.quotas()[0].remaining, 4 - i);
        }
        let (d, c, e) = h.check_timed(&p, &key, 1).await;
        assert_denied(&d, 0, "decayed slots used up");
        // cur = 5, prev = 10: the previous window must weigh at most 4,
        // i.e. 10 * (W - x) / W < 5: from x = 500 ms + 1 µs (+1 µs margin).
        let r = retry_us(&d);
        let target = decay_target(10, 4);
        assert_between(
            r,
            target - (e - s - W),
            target - (c - s - W),
            "retry while the previous window decays",
        );
        if h.exact() {
            assert_eq!(r, target - 410 * MS);
        }
        h.sleep(r + m).await;
        assert_allowed(&h.check(&p, &key, 1).await, "after the decay");
        // Two windows after the last admission nothing is remembered.
        h.sleep_until(s + 3 * W + m).await;
        for i in 0..10 {
            let d = h.check(&p, &key, 1).await;
            assert_allowed(&d, &format!("refill {i}"));
            assert_eq!(d.quotas()[0].remaining, 9 - i);
        }
        assert_denied(&h.check(&p, &key, 1).await, 0, "full again");
    }
}

/// Two quotas (2 per second and 3 per minute) are checked together: a
/// request denied by one consumes nothing from the other, and `denied_by`
/// names the quota with the longest wait.
async fn multi_quota_all_or_nothing(h: &Harness, alg: Algorithm) {
    let p = policy("multi", alg)
        .quota(quota(2, W))
        .quota(Quota::per_minute(3));
    let key = Key::new("multi-client");
    let m = h.margin();
    let t0 = if is_log(alg) {
        h.now().await
    } else {
        // Keep the minute window's boundary out of the way, then start a second.
        h.avoid_boundary(60 * SEC, 8 * SEC).await;
        h.align(W).await
    };
    let (d, a0, b0) = h.check_timed(&p, &key, 1).await;
    assert_allowed(&d, "1st");
    assert_eq!(remaining(&d), [1, 2]);
    let d = h.check(&p, &key, 1).await;
    assert_allowed(&d, "2nd");
    assert_eq!(remaining(&d), [0, 1]);
    let mut retry = 0;
    for i in 0..5 {
        let (d, c, e) = h.check_timed(&p, &key, 1).await;
        let what = format!("denied by the second quota, try {i}");
        assert_denied(&d, 0, &what);
        // The minute quota was not charged by any of the denials.
        assert_eq!(remaining(&d), [0, 1], "{what}");
        retry = retry_us(&d);
        if is_log(alg) {
            assert_between(retry, a0 + W - e, b0 + W - c, &what);
            if h.exact() {
                assert_eq!(retry, W, "{what}");
            }
        } else if h.exact() {
            // cur = 2 at the window start: next window, once
            // floor(2 * weight) <= 1, i.e. from 1 µs in (+1 µs margin).
            assert_eq!(retry, W + decay_target(2, 1), "{what}");
        } else {
            assert_between(retry, W / 2, W + W / 2, &what);
        }
    }
    h.sleep(retry + m).await;
    let d = h.check(&p, &key, 1).await;
    assert_allowed(&d, "3rd, after the second quota's retry-after");
    assert_eq!(d.quotas()[1].remaining, 0);
    if h.exact() {
        let expect = if is_log(alg) { 1 } else { 0 };
        assert_eq!(d.quotas()[0].remaining, expect);
    }
    // Now both quotas deny a cost-2 request; the minute quota waits longest.
    let d = h.check(&p, &key, 2).await;
    assert_denied(&d, 1, "both quotas deny");
    // Log: the 2nd oldest entry leaves ~1 minute after t0. Counter: the rest
    // of the minute window (at least 8 s minus the test's run so far, see
    // avoid_boundary) plus 20 s of decay; both far beyond the 1 s quota's.
    let lo = if is_log(alg) { 30 * SEC } else { 10 * SEC };
    assert_between(retry_us(&d), lo, 120 * SEC, "the minute quota's wait");
    // Once the second quota has emptied, only the minute quota denies...
    if is_log(alg) {
        h.sleep_until(t0 + 2 * W + 3 * m).await;
    } else {
        h.sleep_until(t0 + 3 * W + m).await;
    }
    for i in 0..3 {
        let d = h.check(&p, &key, 1).await;
        let what = format!("denied by the minute quota, try {i}");
        assert_denied(&d, 1, &what);
        // ...and the second quota is charged nothing: still fully available.
        assert_eq!(remaining(&d), [2, 0], "{what}");
        if is_log(alg) && h.exact() {
            // The oldest entry (the 1st request, at t0) must leave.
            assert_eq!(retry_us(&d), 60 * SEC - 2 * W, "{what}");
        }
    }
}

fn remaining(d: &Decision) -> Vec<u64> {
    d.quotas().iter().map(|q| q.remaining).collect()
}

/// Cost 3 on limit 10: three admissions, then a cost-3 request is denied
/// while a cost-1 request still fits; cost above the limit never fits.
async fn cost_above_one(h: &Harness, alg: Algorithm) {
    let p = policy("cost", alg).quota(quota(10, W));
    let key = Key::new("costly");
    let t0 = if is_log(alg) {
        h.now().await
    } else {
        h.align(W).await
    };
    let mut brackets = Vec::new();
    for i in 0..3u64 {
        if is_log(alg) {
            h.sleep_until(t0 + i * 100 * MS).await;
        }
        let (d, a, b) = h.check_timed(&p, &key, 3).await;
        assert_allowed(&d, &format!("cost 3, #{i}"));
        assert_eq!(d.quotas()[0].remaining, 7 - 3 * i);
        brackets.push((a, b));
    }
    if is_log(alg) {
        h.sleep_until(t0 + 300 * MS).await;
    }
    let (d, c, e) = h.check_timed(&p, &key, 3).await;
    assert_denied(&d, 0, "cost 3 with 1 remaining");
    assert_eq!(d.quotas()[0].remaining, 1);
    let r = retry_us(&d);
    if is_log(alg) {
        // 9 + 3 - 10 = 2: the 2nd oldest unit (from the first request) must leave.
        let (a, b) = brackets[0];
        assert_between(r, a + W - e, b + W - c, "cost-3 retry");
        // Cost 5 needs the 4th oldest unit, from the second request, to leave.
        let (d, c, e) = h.check_timed(&p, &key, 5).await;
        assert_denied(&d, 0, "cost 5");
        let (a, b) = brackets[1];
        assert_between(retry_us(&d), a + W - e, b + W - c, "cost-5 retry");
        if h.exact() {
            assert_eq!(r, 700 * MS);
            assert_eq!(retry_us(&d), 800 * MS);
        }
    } else {
        // cur = 9: next window, once floor(9 * weight) <= 7.
        let target = decay_target(9, 7);
        assert_between(
            r,
            W - (e - t0) + target,
            W - (c - t0) + target,
            "cost-3 retry",
        );
        if h.exact() {
            assert_eq!(r, W + target);
        }
    }
    let d = h.check(&p, &key, 1).await;
    assert_allowed(&d, "cost 1 still fits");
    assert_eq!(d.quotas()[0].remaining, 0);
    assert_denied(&h.check(&p, &key, 1).await, 0, "cost 1 when full");
    // A cost above the limit can never be admitted: retry-after is one window.
    let d = h.check(&p, &key, 11).await;
    assert_denied(&d, 0, "cost above the limit");
    assert_eq!(retry_us(&d), W);
    assert_eq!(d.quotas()[0].remaining, 0);
    // The retry-after of a cost-3 request is enough for it.
    let d = h.check(&p, &key, 3).await;
    assert_denied(&d, 0, "cost 3 when full");
    h.sleep(retry_us(&d) + h.margin()).await;
    assert_allowed(&h.check(&p, &key, 3).await, "cost 3 after its retry-after");
}

/// Denials are free: after a hundred of them, the quota comes back exactly as
/// if they had never happened.
async fn denied_requests_consume_nothing(h: &Harness, alg: Algorithm) {
    let p = policy("free-denials", alg).quota(quota(5, W));
    let key = Key::new("hammer");
    let m = h.margin();
    let t0 = if is_log(alg) {
        h.now().await
    } else {
        h.align(W).await
    };
    for i in 0..5 {
        assert_allowed(&h.check(&p, &key, 1).await, &format!("fill {i}"));
    }
    // Every admitted unit was counted by now (on a loaded machine the fills
    // may take longer than the margin).
    let filled = h.now().await;
    // Hammer half a window later, so that any unit counted by a denial would
    // still be visible once the admitted ones have left (or decayed).
    h.sleep_until(t0 + W / 2).await;
    let mut last = u64::MAX;
    for i in 0..100 {
        let cost = if i % 10 == 9 { 4 } else { 1 };
        let d = h.check(&p, &key, cost).await;
        assert_denied(&d, 0, &format!("denial {i}"));
        assert_eq!(d.quotas()[0].remaining, 0);
        if cost == 1 {
            let r = retry_us(&d);
            assert!(r <= last, "retry-after grew after denials: {r} > {last}");
            last = r;
        }
    }
    if is_log(alg) {
        // The 5 admitted units have left; denied ones (had they counted)
        // would still be in the window.
        h.sleep_until(filled + W + m).await;
        for i in 0..5 {
            let d = h.check(&p, &key, 1).await;
            assert_allowed(&d, &format!("after the window, {i}"));
            assert_eq!(d.quotas()[0].remaining, 4 - i);
        }
        assert_denied(&h.check(&p, &key, 1).await, 0, "full again");
    } else {
        // 45 % into the next window the previous count weighs
        // floor(5 * 0.55) = 2 (for 40..60 %); denials would have added 100+.
        h.sleep_until(t0 + W + 450 * MS).await;
        for i in 0..3 {
            let d = h.check(&p, &key, 1).await;
            assert_allowed(&d, &format!("next window, {i}"));
            assert_eq!(d.quotas()[0].remaining, 2 - i);
        }
        assert_denied(&h.check(&p, &key, 1).await, 0, "next window full");
        h.sleep_until(t0 + 3 * W + m).await;
        for i in 0..5 {
            let d = h.check(&p, &key, 1).await;
            assert_allowed(&d, &format!("two windows later, {i}"));
            assert_eq!(d.quotas()[0].remaining, 4 - i);
        }
        assert_denied(&h.check(&p, &key, 1).await, 0, "full again");
    }
}

/// The counter's estimate around window boundaries matches
/// `floor(prev * (W - elapsed) / W) + cur`: exactly with the fake clock,
/// within one unit on Redis' clock.
async fn counter_estimate_at_window_boundaries(h: &Harness, alg: Algorithm) {
    assert!(!is_log(alg));
    const LIMIT: u64 = 10;
    let p = policy("estimate", alg).quota(quota(LIMIT, W));
    let key = Key::new("estimated");
    let s = h.align(W).await;
    // Admitted counts per fixed window start (the reference model).
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for i in 0..8 {
        let (d, _, b) = h.check_timed(&p, &key, 1).await;
        assert_allowed(&d, &format!("fill {i}"));
        assert_eq!(d.quotas()[0].remaining, LIMIT - 1 - i);
        *counts.entry(b - b % W).or_default() += 1;
    }
    let estimate = |counts: &HashMap<u64, u64>, now: u64| {
        let (start, e) = (now - now % W, now % W);
        let prev = counts.get(&(start - W)).copied().unwrap_or(0);
        let cur = counts.get(&start).copied().unwrap_or(0);
        (prev as f64 * ((W - e) as f64 / W as f64)).floor() as u64 + cur
    };
    let points: &[u64] = if h.exact() {
        // Both sides of each boundary, a quarter in, and after a long gap.
        &[W - 1, W, W + W / 4, 2 * W - 1, 2 * W, 3 * W + W / 2, 6 * W]
    } else {
        &[W + W / 4, W + 3 * W / 4, 2 * W + W / 10, 2 * W + 6 * W / 10]
    };
    for &offset in points {
        h.sleep_until(s + offset).await;
        let (d, a, b) = h.check_timed(&p, &key, 1).await;
        let what = format!("at window start + {offset} us");
        assert_allowed(&d, &what);
        let q = d.quotas()[0];
        // The decision counts this request too.
        let at_a = LIMIT - (estimate(&counts, a) + 1);
        let at_b = LIMIT - (estimate(&counts, b) + 1);
        if h.exact() {
            assert_eq!(q.remaining, at_a, "{what}");
            // Reset: the estimate reaches 0 at the end of the next window.
            assert_eq!(micros(q.reset_after), 2 * W - a % W, "{what}");
        } else {
            assert_between(
                q.remaining,
                at_a.min(at_b).saturating_sub(1),
                at_a.max(at_b) + 1,
                &what,
            );
            assert_between(micros(q.reset_after), W + 1, 2 * W, &what);
        }
        *counts.entry(b - b % W).or_default() += 1;
    }
    if h.exact() {
        // Spot-check the model itself against hand-computed values.
        let remaining_at = [1, 0, 2, 7, 6, 9, 9];
        let mut model: HashMap<u64, u64> = HashMap::from([(s, 8)]);
        for (&offset, expect) in points.iter().zip(remaining_at) {
            let t = s + offset;
            assert_eq!(
                LIMIT - (estimate(&model, t) + 1),
                expect,
                "model at {offset}"
            );
            *model.entry(t - t % W).or_default() += 1;
        }
    }
}

fn resets(d: &Decision) -> Vec<u64> {
    d.quotas().iter().map(|q| micros(q.reset_after)).collect()
}

/// Asserts that `seen`, a peek made at most `elapsed` µs after the decision
/// `d` with nothing admitted in between, reports the same remaining units
/// and (on a real clock, up to `elapsed` less) the same resets and
/// retry-after.
#[track_caller]
fn assert_peek_matches(h: &Harness, seen: &Decision, d: &Decision, elapsed: u64, what: &str) {
    assert_eq!(remaining(seen), remaining(d), "{what}: {seen:?} vs {d:?}");
    let pairs = resets(seen).into_iter().zip(resets(d));
    let retries = seen
        .retry_after()
        .map(micros)
        .zip(d.retry_after().map(micros));
    for (peeked, decided) in pairs.chain(retries) {
        if h.exact() {
            assert_eq!(peeked, decided, "{what}: {seen:?} vs {d:?}");
        } else {
            assert_between(peeked, decided.saturating_sub(elapsed), decided, what);
        }
    }
}

/// A peek consumes nothing: it reports what the last decision left (remaining
/// units, resets), peeks between checks change no later decision, and a peek
/// at a full quota is the denial a check of cost 1 would get. Two quotas, so
/// that the minute quota shows that peeks were never charged to it.
async fn peek_consumes_nothing(h: &Harness, alg: Algorithm) {
    let p = policy("peek", alg)
        .quota(quota(4, W))
        .quota(Quota::per_minute(6));
    let key = Key::new("peeked");
    let m = h.margin();
    // The counter is exact within one fixed window of each quota.
    h.avoid_boundary(60 * SEC, 8 * SEC).await;
    let s = h.align(W).await;

    let d = h.peek(&p, &key).await;
    assert_allowed(&d, "a peek at an unknown client");
    assert_eq!(remaining(&d), [4, 6]);
    assert_eq!(resets(&d), [0, 0]);
    for i in 0..4 {
        let (d, before, _) = h.check_timed(&p, &key, 1).await;
        assert_allowed(&d, &format!("request {i}"));
        for j in 0..3 {
            let seen = h.peek(&p, &key).await;
            // The check decided at or after `before`, the peek before now.
            let elapsed = h.now().await - before;
            let what = format!("peek {j} after request {i}");
            assert_peek_matches(h, &seen, &d, elapsed, &what);
            if i < 3 {
                assert_allowed(&seen, &what);
            } else {
                // Full: the next request would be denied, and the peek says when.
                assert_denied(&seen, 0, &what);
            }
        }
    }
    let (d, before, _) = h.check_timed(&p, &key, 1).await;
    assert_denied(&d, 0, "the 5th request, after a dozen peeks");
    assert_eq!(remaining(&d), [0, 2]);
    let seen = h.peek(&p, &key).await;
    let elapsed = h.now().await - before;
    assert_peek_matches(h, &seen, &d, elapsed, "a peek at a full quota");
    assert_denied(&seen, 0, "a peek at a full quota");
    if h.exact() {
        assert_eq!(seen, d, "on one clock, the peek is the check's denial");
    }
    // Two windows on, the second quota is free again; the minute quota still
    // holds exactly the 4 admitted requests.
    h.sleep_until(s + 2 * W + m).await;
    let seen = h.peek(&p, &key).await;
    assert_allowed(&seen, "the second quota is free again");
    assert_eq!(remaining(&seen), [4, 2]);
    for i in 0..2 {
        let d = h.check(&p, &key, 1).await;
        assert_allowed(&d, &format!("late request {i}"));
        assert_eq!(remaining(&d), [3 - i, 1 - i]);
    }
    let d = h.check(&p, &key, 1).await;
    assert_denied(&d, 1, "the minute quota is used up");
    let seen = h.peek(&p, &key).await;
    assert_denied(&seen, 1, "a peek names the minute quota too");
    assert_eq!(remaining(&seen), [2, 0]);
}

/// A reset forgets every quota of one client, and only of that client.
async fn reset_restores_the_quota(h: &Harness, alg: Algorithm) {
    let p = policy("reset", alg)
        .quota(quota(3, W))
        .quota(Quota::per_minute(5));
    let (a, b) = (Key::new("reset-a"), Key::new("reset-b"));
    h.avoid_boundary(60 * SEC, 8 * SEC).await;
    h.align(W).await;
    for i in 0..3 {
        assert_allowed(&h.check(&p, &a, 1).await, &format!("a, request {i}"));
    }
    assert_allowed(&h.check(&p, &b, 1).await, "b");
    assert_denied(&h.check(&p, &a, 1).await, 0, "a is full");

    h.reset(&p, &a).await;
    let seen = h.peek(&p, &a).await;
    assert_allowed(&seen, "a, after its reset");
    assert_eq!(remaining(&seen), [3, 5]);
    assert_eq!(resets(&seen), [0, 0], "nothing is counted");
    for i in 0..3 {
        let d = h.check(&p, &a, 1).await;
        assert_allowed(&d, &format!("a, request {i} after its reset"));
        assert_eq!(remaining(&d), [2 - i, 4 - i]);
    }
    assert_denied(&h.check(&p, &a, 1).await, 0, "a is full again");
    // b was not touched.
    assert_eq!(remaining(&h.peek(&p, &b).await), [2, 4]);
    // Resetting a client with nothing counted, or twice, is fine.
    h.reset(&p, &Key::new("nobody")).await;
    h.reset(&p, &b).await;
    h.reset(&p, &b).await;
    assert_eq!(remaining(&h.peek(&p, &b).await), [3, 5]);
}

/// GCRA, 5 per second: the burst of 5 at once, with `remaining` counting
/// down and `reset` growing by one emission interval (200 ms) per unit; then
/// a denial whose retry-after is exactly when the first unit is back, and
/// from then on one unit per interval. A cost above the limit never fits.
async fn gcra_burst_then_rate(h: &Harness, alg: Algorithm) {
    const T: u64 = W / 5;
    let p = policy("burst", alg).quota(quota(5, W));
    let key = Key::new("bursty");
    let m = h.margin();
    let (d, a0, b0) = h.check_timed(&p, &key, 1).await;
    assert_allowed(&d, "1st");
    assert_eq!(d.quotas()[0].remaining, 4);
    assert_between(
        micros(d.quotas()[0].reset_after),
        T - (b0 - a0),
        T,
        "1st reset",
    );
    for i in 1..5u64 {
        let (d, _, e) = h.check_timed(&p, &key, 1).await;
        let what = format!("burst request {i}");
        assert_allowed(&d, &what);
        assert_eq!(d.quotas()[0].remaining, 4 - i, "{what}");
        let reset = micros(d.quotas()[0].reset_after);
        // The level is (i + 1) T, drained since the first request.
        assert_between(reset, (i + 1) * T - (e - a0), (i + 1) * T, &what);
    }
    let (d, c, e) = h.check_timed(&p, &key, 1).await;
    assert_denied(&d, 0, "6th");
    assert_eq!(d.quotas()[0].remaining, 0);
    // The first unit is back T after the first request.
    let r = retry_us(&d);
    assert_between(r, (T + a0).saturating_sub(e), T + b0 - c, "retry-after");
    if h.exact() {
        assert_eq!(r, T);
        h.sleep(r - 1).await;
        assert_denied(&h.check(&p, &key, 1).await, 0, "1 us before retry-after");
        h.sleep(1).await;
    } else {
        h.sleep(r + m).await;
    }
    let d = h.check(&p, &key, 1).await;
    assert_allowed(&d, "after retry-after");
    assert_eq!(d.quotas()[0].remaining, 0);
    assert_denied(&h.check(&p, &key, 1).await, 0, "full again");
    // Two intervals later, two units are back (not more: the level was full).
    h.sleep(2 * T + m).await;
    for i in 0..2 {
        assert_allowed(&h.check(&p, &key, 1).await, &format!("steady {i}"));
    }
    assert_denied(&h.check(&p, &key, 1).await, 0, "full after the steady pair");
    // A cost above the limit can never be admitted: retry-after is one window.
    let d = h.check(&p, &key, 6).await;
    assert_denied(&d, 0, "cost above the limit");
    assert_eq!(retry_us(&d), W);
    // Once the level has drained (one window), the whole burst is back.
    h.sleep(W + m).await;
    let d = h.check(&p, &key, 5).await;
    assert_allowed(&d, "the whole burst, in one request of cost 5");
    assert_eq!(d.quotas()[0].remaining, 0);
}

/// GCRA: denials, whatever their cost, consume nothing, and two quotas are
/// charged all-or-nothing, the one with the longest wait named.
async fn gcra_denials_are_free_and_quotas_all_or_nothing(h: &Harness, alg: Algorithm) {
    let m = h.margin();
    let p = policy("gcra-free", alg).quota(quota(4, W));
    let key = Key::new("hammer");
    for i in 0..4 {
        assert_allowed(&h.check(&p, &key, 1).await, &format!("fill {i}"));
    }
    for i in 0..60 {
        let cost = if i % 10 == 9 { 3 } else { 1 };
        let d = h.check(&p, &key, cost).await;
        assert_denied(&d, 0, &format!("denial {i}"));
        assert_eq!(d.quotas()[0].remaining, 0);
    }
    h.sleep(W + m).await;
    for i in 0..4 {
        let d = h.check(&p, &key, 1).await;
        assert_allowed(&d, &format!("after draining, {i}"));
        assert_eq!(d.quotas()[0].remaining, 3 - i);
    }

    // 2 per second (T = 500 ms) and 3 per minute (T = 20 s).
    let p = policy("gcra-multi", alg)
        .quota(quota(2, W))
        .quota(Quota::per_minute(3));
    let key = Key::new("multi-client");
    assert_eq!(remaining(&h.check(&p, &key, 1).await), [1, 2]);
    assert_eq!(remaining(&h.check(&p, &key, 1).await), [0, 1]);
    let mut retry = 0;
    for i in 0..5 {
        let d = h.check(&p, &key, 1).await;
        let what = format!("denied by the second quota, try {i}");
        assert_denied(&d, 0, &what);
        assert_eq!(
            remaining(&d),
            [0, 1],
            "{what}: the minute quota is not charged"
        );
        retry = retry_us(&d);
        assert_between(retry, 1, W / 2, &what);
    }
    h.sleep(retry + m).await;
    let d = h.check(&p, &key, 1).await;
    assert_allowed(&d, "3rd, after the second quota's retry-after");
    assert_eq!(d.quotas()[1].remaining, 0);
    // Both deny a cost-2 request; the minute quota waits longest (~40 s).
    let d = h.check(&p, &key, 2).await;
    assert_denied(&d, 1, "both quotas deny");
    assert_between(retry_us(&d), 30 * SEC, 40 * SEC, "the minute quota's wait");
    h.sleep(2 * W + m).await;
    for i in 0..3 {
        let d = h.check(&p, &key, 1).await;
        let what = format!("denied by the minute quota, try {i}");
        assert_denied(&d, 1, &what);
        assert_eq!(
            remaining(&d),
            [2, 0],
            "{what}: the second quota is not charged"
        );
    }
}

/// Refunds mixed into a sequence of checks decide exactly as the model
/// (the memory backend on a fake clock, the same operations one by one):
/// same admissions, denying quotas and remaining units, and the same
/// remaining units in a peek after every refund. Whole and partial refunds
/// of admissions chosen at random (each refunded once), several clients,
/// a policy of one quota and one of two (all or nothing). Windows are an
/// hour or two, so the milliseconds the run takes change no count.
async fn refunds_match_the_model(h: &Harness, alg: Algorithm) {
    let model = MemoryBackend::with_clock(FakeClock::new(FAKE_START));
    let policies = [
        policy("refund-one", alg).quota(Quota::per_hour(5)),
        policy("refund-two", alg)
            .quota(Quota::per_hour(6))
            .quota(Quota::new(4, Duration::from_secs(7200))),
    ];
    // Away from the boundaries of the counters' fixed windows.
    h.avoid_boundary(7200 * SEC, 30 * SEC).await;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ alg as u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Admissions not yet refunded: (policy, key, cost, ticket, model's ticket).
    let mut open: Vec<(usize, Key, u64, Ticket, Ticket)> = Vec::new();
    let summary = |d: &Decision| -> (bool, Option<usize>, Vec<u64>) {
        (d.is_allowed(), d.denied_by(), remaining(d))
    };
    let (mut refunds, mut denials) = (0, 0);
    for step in 0..240 {
        let r = next();
        if r % 3 == 0 && !open.is_empty() {
            let (p, key, cost, ticket, model_ticket) = open.remove((r >> 8) as usize % open.len());
            let give = if r % 4 == 0 { 1 } else { cost };
            h.refund(&policies[p], &key, give, &ticket).await;
            model
                .refund(&policies[p], &key, give, &model_ticket)
                .await
                .unwrap();
            refunds += 1;
            let got = h.peek(&policies[p], &key).await;
            let want = model.peek(&policies[p], &key).await.unwrap();
            assert_eq!(
                summary(&got),
                summary(&want),
                "{alg:?} step {step}: peek after a refund of {give} of {cost}, {} {key:?}",
                policies[p].name()
            );
        } else {
            let p = (r >> 4) as usize % policies.len();
            let key = Key::new(format!("c{}", (r >> 12) % 3));
            let cost = [1, 1, 1, 2, 3][(r >> 20) as usize % 5];
            let got = h.check(&policies[p], &key, cost).await;
            let want = model.check(&policies[p], &key, cost).await.unwrap();
            assert_eq!(
                summary(&got),
                summary(&want),
                "{alg:?} step {step}: {} {key:?} cost {cost}",
                policies[p].name()
            );
            assert_eq!(got.ticket().is_some(), got.is_allowed());
            if let (Some(ticket), Some(model_ticket)) = (got.ticket(), want.ticket()) {
                assert_eq!(ticket.cost(), cost);
                open.push((p, key, cost, ticket, model_ticket));
            } else {
                denials += 1;
            }
        }
    }
    assert!(
        refunds > 40 && denials > 20,
        "{refunds} refunds, {denials} denials"
    );
}

/// Charges (`Backend::charge`) mixed into check sequences decide exactly as
/// the model ([`MemoryBackend`] on a fake clock) does: same admissions,
/// denying quotas and remaining units, and the same remaining units in a
/// peek after every charge. Charges often past the limit (into debt: every
/// later check denied, for the windows of an hour or two), resets now and
/// then so that clients are admitted again, several clients, a policy of
/// one quota and one of two.
async fn charges_match_the_model(h: &Harness, alg: Algorithm) {
    let model = MemoryBackend::with_clock(FakeClock::new(FAKE_START));
    let policies = [
        policy("charge-one", alg).quota(Quota::per_hour(5)),
        policy("charge-two", alg)
            .quota(Quota::per_hour(6))
            .quota(Quota::new(4, Duration::from_secs(7200))),
    ];
    // Away from the boundaries of the counters' fixed windows.
    h.avoid_boundary(7200 * SEC, 30 * SEC).await;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ alg as u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let summary = |d: &Decision| -> (bool, Option<usize>, Vec<u64>) {
        (d.is_allowed(), d.denied_by(), remaining(d))
    };
    let (mut charges, mut admissions, mut denials) = (0, 0, 0);
    for step in 0..240 {
        let r = next();
        let p = (r >> 4) as usize % policies.len();
        let key = Key::new(format!("c{}", (r >> 12) % 3));
        let what = format!("{alg:?} step {step}: {} {key:?}", policies[p].name());
        if r % 11 == 0 {
            h.reset(&policies[p], &key).await;
            model.reset(&policies[p], &key).await.unwrap();
        } else if r % 3 == 0 {
            let cost = [1, 2, 3, 7, 12][(r >> 20) as usize % 5];
            h.charge(&policies[p], &key, cost).await;
            model.charge(&policies[p], &key, cost).await.unwrap();
            charges += 1;
            let got = h.peek(&policies[p], &key).await;
            let want = model.peek(&policies[p], &key).await.unwrap();
            assert_eq!(
                summary(&got),
                summary(&want),
                "{what}: peek after a charge of {cost}"
            );
        } else {
            let cost = [1, 1, 1, 2, 3][(r >> 20) as usize % 5];
            let got = h.check(&policies[p], &key, cost).await;
            let want = model.check(&policies[p], &key, cost).await.unwrap();
            assert_eq!(summary(&got), summary(&want), "{what}: cost {cost}");
            if got.is_allowed() {
                admissions += 1;
            } else {
                denials += 1;
            }
        }
    }
    assert!(
        charges > 40 && admissions > 20 && denials > 20,
        "{charges} charges, {admissions} admissions, {denials} denials"
    );
}

/// A charge into debt in time, one quota of 4 per window: a charge of 10
/// makes the next check denied, with the retry-after of each algorithm's
/// rule, and honouring it admits:
///
/// - GCRA: the level is 10 intervals (T = W / 4), and a unit fits once it is
///   at most 3: 7 T after the charge;
/// - sliding log: the entry of 10 leaves the window whole, W after it;
/// - counter: the next fixed window, once 10 × its overlap weighs at most
///   3: 0.6 W into it (plus the 2 µs of `decayed_by`).
async fn charge_debt_in_time(h: &Harness, alg: Algorithm) {
    let p = policy("charge-time", alg).quota(quota(4, W));
    let key = Key::new("indebted");
    let m = h.margin();
    // Charge and check in one fixed window.
    h.avoid_boundary(W, 300 * MS).await;
    let a = h.now().await;
    h.charge(&p, &key, 10).await;
    let b = h.now().await;
    let fits_at = |charged: u64| match alg {
        Algorithm::Gcra => charged + 7 * (W / 4),
        Algorithm::SlidingLog => charged + W,
        _ => charged - charged % W + W + 3 * W / 5 + 2,
    };
    assert_eq!(remaining(&h.peek(&p, &key).await), [0]);
    let (d, c, e) = h.check_timed(&p, &key, 1).await;
    assert_denied(&d, 0, "in debt");
    let retry = retry_us(&d);
    assert_between(
        retry,
        fits_at(a).saturating_sub(e),
        fits_at(b).saturating_sub(c),
        "the debt's retry-after",
    );
    if h.exact() {
        // Not a microsecond early (the counter's retry-after may be 1 µs
        // late).
        h.sleep_until(e + retry - 2).await;
        assert_denied(&h.check(&p, &key, 1).await, 0, "just before");
    }
    h.sleep_until(e + retry + m).await;
    assert_allowed(&h.check(&p, &key, 1).await, "the retry-after honoured");
}

/// Each algorithm's refund rule in time, one quota of 4 per window:
///
/// - sliding log: the request's own entry leaves (the oldest one left then
///   decides the retry-after); an entry that has left the window gives
///   nothing back;
/// - counter: a refund in the next fixed window comes off the previous
///   count (the estimate drops by its weight); two windows on, nothing;
/// - GCRA: the level drops by the cost's intervals, never below empty.
async fn refund_rules_in_time(h: &Harness, alg: Algorithm) {
    let p = policy("refund-time", alg).quota(quota(4, W));
    let key = Key::new("refunded");
    let m = h.margin();
    match alg {
        Algorithm::SlidingLog => {
            let (d, a0, _) = h.check_timed(&p, &key, 1).await;
            let first = d.ticket().unwrap();
            let t0 = a0;
            h.sleep_until(t0 + 200 * MS).await;
            let (d, a1, b1) = h.check_timed(&p, &key, 1).await;
            let second = d.ticket().unwrap();
            h.sleep_until(t0 + 500 * MS).await;
            for _ in 0..2 {
                assert_allowed(&h.check(&p, &key, 1).await, "fill");
            }
            assert_denied(&h.check(&p, &key, 1).await, 0, "full");
            // The oldest entry leaves: the second one decides when.
            h.refund(&p, &key, 1, &first).await;
            assert_eq!(remaining(&h.peek(&p, &key).await), [1]);
            assert_allowed(&h.check(&p, &key, 1).await, "the refunded unit");
            let (d, c, e) = h.check_timed(&p, &key, 1).await;
            assert_denied(&d, 0, "full again");
            assert_between(retry_us(&d), a1 + W - e, b1 + W - c, "the second entry");
            // Once the second entry has left the window, its refund is a
            // no-op: the others (admitted 500 ms in) still count.
            h.sleep_until(b1 + W + m).await;
            let before = remaining(&h.peek(&p, &key).await);
            assert_eq!(before, [1]);
            h.refund(&p, &key, 1, &second).await;
            assert_eq!(remaining(&h.peek(&p, &key).await), before);
        }
        Algorithm::Gcra => {
            // T = 250 ms.
            const T: u64 = W / 4;
            let mut tickets = Vec::new();
            let (_, a0, _) = h.check_timed(&p, &key, 0).await;
            for _ in 0..4 {
                tickets.push(h.check(&p, &key, 1).await.ticket().unwrap());
            }
            assert_denied(&h.check(&p, &key, 1).await, 0, "full");
            h.refund(&p, &key, 1, &tickets[0]).await;
            let (d, _, e) = h.check_timed(&p, &key, 0).await;
            assert_eq!(remaining(&d), [1]);
            assert_between(
                micros(d.quotas()[0].reset_after),
                3 * T - (e - a0),
                3 * T,
                "level",
            );
            // More than the level left: empty, not below.
            h.sleep_until(a0 + 2 * T + T / 2).await;
            for ticket in &tickets[1..] {
                h.refund(&p, &key, 1, ticket).await;
            }
            let d = h.peek(&p, &key).await;
            assert_eq!(remaining(&d), [4]);
            assert_eq!(resets(&d), [0]);
            let d = h.check(&p, &key, 4).await;
            assert_allowed(&d, "the whole burst, no more");
            assert_denied(&h.check(&p, &key, 1).await, 0, "and no more");
        }
        _ => {
            let s = h.align(W).await;
            let mut tickets = Vec::new();
            for _ in 0..4 {
                tickets.push(h.check(&p, &key, 1).await.ticket().unwrap());
            }
            // Refunded in its own window: off the current count.
            h.refund(&p, &key, 1, &tickets.pop().unwrap()).await;
            assert_eq!(remaining(&h.peek(&p, &key).await), [1]);
            // Next window, at a quarter: the previous 3 weigh
            // floor(3 × 0.75) = 2; refunded, floor(2 × 0.75) = 1.
            h.sleep_until(s + W + W / 4).await;
            let before = h.now().await;
            let d = h.peek(&p, &key).await;
            h.refund(&p, &key, 1, &tickets.pop().unwrap()).await;
            let seen = h.peek(&p, &key).await;
            let after = h.now().await;
            if h.exact() {
                assert_eq!(remaining(&d), [2]);
                assert_eq!(remaining(&seen), [3]);
            } else if after < s + W + W / 2 {
                // Within [W/4, W/2): 3 weighs 1 or 2, then 2 weighs 1.
                assert_between(remaining(&seen)[0], 3, 3, "off the previous count");
                assert!(before >= s + W + W / 4);
            }
            // Two windows on: that count no longer matters.
            h.sleep_until(s + 2 * W + m).await;
            let before = h.peek(&p, &key).await;
            h.refund(&p, &key, 1, &tickets.pop().unwrap()).await;
            assert_eq!(remaining(&h.peek(&p, &key).await), remaining(&before));
            assert_eq!(remaining(&before), [4]);
        }
    }
}

/// The offset into a window from which a decaying count of `decaying` weighs
/// at most `room` units: the first `x` with `floor(decaying * (W - x) / W) <=
/// room`, i.e. `decaying * (W - x) / W < room + 1`, plus 1 µs against rounding.
fn decay_target(decaying: u64, room: u64) -> u64 {
    let first = W - ((room + 1) * W).div_ceil(decaying) + 1;
    first + 1
}

macro_rules! scenarios {
    ($($name:ident: [$($alg:ident),+];)*) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    // A fresh backend and clock per algorithm.
                    $( super::$name(&Harness::memory(), Algorithm::$alg).await; )+
                }
            )*
        }
        mod redis {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let h = Harness::redis(stringify!($name)).await;
                    // Different policy names per algorithm: run them side by side.
                    tokio::join!($( super::$name(&h, Algorithm::$alg) ),+);
                }
            )*
        }
        #[cfg(feature = "cluster")]
        mod cluster {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let h = Harness::cluster(stringify!($name)).await;
                    tokio::join!($( super::$name(&h, Algorithm::$alg) ),+);
                }
            )*
        }
    };
}

scenarios! {
    limit_reached_exactly: [SlidingLog, SlidingWindow];
    retry_after_is_correct: [SlidingLog, SlidingWindow];
    window_slides: [SlidingLog, SlidingWindow];
    multi_quota_all_or_nothing: [SlidingLog, SlidingWindow];
    cost_above_one: [SlidingLog, SlidingWindow];
    denied_requests_consume_nothing: [SlidingLog, SlidingWindow];
    counter_estimate_at_window_boundaries: [SlidingWindow];
    peek_consumes_nothing: [SlidingLog, SlidingWindow, Gcra];
    reset_restores_the_quota: [SlidingLog, SlidingWindow, Gcra];
    gcra_burst_then_rate: [Gcra];
    gcra_denials_are_free_and_quotas_all_or_nothing: [Gcra];
    refunds_match_the_model: [SlidingLog, SlidingWindow, Gcra];
    refund_rules_in_time: [SlidingLog, SlidingWindow, Gcra];
    charges_match_the_model: [SlidingLog, SlidingWindow, Gcra];
    charge_debt_in_time: [SlidingLog, SlidingWindow, Gcra];
}

/// Batching (Redis, one node): checks made at once go out as a few batch
/// calls, each deciding its checks in order; together they must decide
/// exactly as the model ([`MemoryBackend`]) deciding the same checks one by
/// one in the order they were made: same admissions, same denying quota
/// (multi-quota policies, all or nothing), same remaining counts. Windows
/// are an hour or two, so the few milliseconds the Redis run takes change
/// nothing (retry-after values are checked by the scenarios above).
mod batching {
    use super::*;

    fn policies() -> Vec<Policy> {
        let mut out = Vec::new();
        for alg in &[
            Algorithm::SlidingLog,
            Algorithm::SlidingWindow,
            Algorithm::Gcra,
        ] {
            let name = format!("{alg:?}").to_lowercase();
            out.push(
                Policy::new(format!("{name}-two"))
                    .algorithm(*alg)
                    .quota(Quota::per_hour(9))
                    .quota(Quota::new(6, Duration::from_secs(7200))),
            );
            out.push(
                Policy::new(format!("{name}-rev"))
                    .algorithm(*alg)
                    .quota(Quota::new(4, Duration::from_secs(7200)))
                    .quota(Quota::per_hour(8)),
            );
            out.push(
                Policy::new(format!("{name}-one"))
                    .algorithm(*alg)
                    .quota(Quota::per_hour(5)),
            );
        }
        out
    }

    fn summary(d: &Decision) -> (bool, Option<usize>, Vec<u64>) {
        let remaining = d.quotas().iter().map(|q| q.remaining).collect();
        (d.is_allowed(), d.denied_by(), remaining)
    }

    #[tokio::test]
    async fn batched_checks_decide_as_the_model_one_by_one() {
        let h = Harness::redis("batching").await;
        let model = MemoryBackend::with_clock(FakeClock::new(FAKE_START));
        let policies = policies();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let seq: Vec<(usize, Key, u64)> = (0..600)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let cost = [1, 1, 2, 3, 7][(x >> 20) as usize % 5];
                let key = Key::new(format!("c{}", (x >> 8) % 5));
                ((x % policies.len() as u64) as usize, key, cost)
            })
            .collect();
        // Away from the hour boundary where the counters' fixed windows start.
        let left = 3600 * SEC - h.now().await % (3600 * SEC);
        if left < 10 * SEC {
            h.sleep(left + SEC).await;
        }
        // All made at once, in order: one lone call, then batches.
        let checks: Vec<_> = seq
            .iter()
            .map(|(p, key, cost)| tokio::spawn(h.backend.check(&policies[*p], key, *cost)))
            .collect();
        let mut denied_by = [0; 2];
        for (i, ((p, key, cost), check)) in seq.iter().zip(checks).enumerate() {
            let got = check.await.unwrap().expect("redis answers");
            let want = model.check(&policies[*p], key, *cost).await.unwrap();
            assert_eq!(
                summary(&got),
                summary(&want),
                "check {i}: {} {key:?} cost {cost}",
                policies[*p].name()
            );
            if let Some(by) = got.denied_by() {
                denied_by[by] += 1;
            }
        }
        assert!(denied_by[0] > 0 && denied_by[1] > 0, "{denied_by:?}");
    }
}
