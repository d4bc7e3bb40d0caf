//! Attack 4: filling the memory backend. Its bound was a number of clients
//! (100 000 by default), not bytes, and a sliding log holds one entry per
//! admitted request: 100 000 clients at the max cost, or clients sending
//! many cheap requests, grew the process by gigabytes. With its default
//! settings the backend must keep its counting state within its byte budget
//! ([`MemoryBackend::DEFAULT_MAX_BYTES`]) and the process within 256 MB of
//! growth.
//!
//! The cheap flood is scaled to the build: a release build
//! (`cargo test --release --test it under_load::attacks::memory_bytes`) sends 257 requests
//! from each of 100 000 clients (25.7 M decisions, 800 MB of logs without
//! the byte budget); a debug build, to stay within seconds, from 9 000 of
//! them (75 MB: above the budget, but not 256 MB).

use std::time::Instant;

use tower_redis_ratelimit::backend::Backend;
use tower_redis_ratelimit::{Algorithm, Key, MemoryBackend, Policy, Quota};

/// The most the process may grow under attack.
const RSS_BOUND: u64 = 256 << 20;

/// Clients of the cheap flood, each sending [`CHEAP_REQUESTS`].
const CHEAP_CLIENTS: u64 = if cfg!(debug_assertions) {
    9_000
} else {
    100_000
};

/// Cheap requests per client: one more than a power of two, so each log
/// has just doubled its room (to 8 KiB): the most bytes per request.
const CHEAP_REQUESTS: u64 = 257;

/// The process's resident set in bytes (`VmRSS` in `/proc/self/status`).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kb << 10
}

/// What the backend holds and the process has grown by since `before`,
/// checked against the bounds.
fn assert_bounded(backend: &MemoryBackend, before: u64, phase: &str, started: Instant) {
    let grown = rss().saturating_sub(before);
    let held = backend.bytes();
    eprintln!(
        "{phase}: {} clients, {} MB accounted, RSS +{} MB, in {:.1?}",
        backend.len(),
        held >> 20,
        grown >> 20,
        started.elapsed()
    );
    // The backend's own count, undisturbed by the tests running beside.
    assert!(
        held <= MemoryBackend::DEFAULT_MAX_BYTES,
        "{phase}: {held} bytes held"
    );
    assert!(
        grown <= RSS_BOUND,
        "{phase}: RSS grew by {} MB",
        grown >> 20
    );
}

#[tokio::test]
async fn attack_4_memory_backend_stays_within_its_byte_budget() {
    // Beside the other tests that only count (a few MB of theirs in this
    // process's RSS, against a bound of 256 MB), never beside a latency
    // test: this one keeps a core busy.
    let _loading = crate::support::loading().await;
    // Like the export policy: a sliding log of 5 000 units per hour, max
    // cost 500.
    let policy = Policy::new("export")
        .algorithm(Algorithm::SlidingLog)
        .quota(Quota::per_hour(5_000))
        .max_cost(500);
    let backend = MemoryBackend::new();
    let check = async |key: &Key, cost| backend.check(&policy, key, cost).await.unwrap();
    let before = rss();

    // Cheap requests: each admitted one is an entry of its client's log.
    let started = Instant::now();
    for i in 0..CHEAP_CLIENTS {
        let key = Key::new(format!("cheap{i}"));
        for n in 0..CHEAP_REQUESTS {
            assert!(check(&key, 1).await.is_allowed(), "client {i}, request {n}");
        }
    }
    let phase = format!("{CHEAP_CLIENTS} clients x {CHEAP_REQUESTS} at cost 1");
    assert_bounded(&backend, before, &phase, started);

    // The original attack: 100 000 clients at the max cost, each until
    // denied (10 requests).
    let started = Instant::now();
    for i in 0..100_000 {
        let key = Key::new(format!("heavy{i}"));
        while check(&key, 500).await.is_allowed() {}
    }
    assert_bounded(
        &backend,
        before,
        "then 100 000 clients at cost 500",
        started,
    );
}
