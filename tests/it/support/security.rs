//! Shared by the `security_*` tests: a generous deadline, an exact policy
//! that fails closed, and a look at the keys written to Redis.
#![allow(dead_code)]

use std::time::Duration;

use tower_redis_ratelimit::{Algorithm, FailureMode, Policy, Quota};

/// The deadline of every layer in the security tests: generous, so that a
/// slow machine never turns into a failed decision.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// An exact (sliding log) per-minute policy that fails closed.
pub fn strict(name: &str, limit: u64) -> Policy {
    Policy::new(name)
        .quota(Quota::per_minute(limit))
        .algorithm(Algorithm::SlidingLog)
        .failure_mode(FailureMode::Closed)
}

/// Every Redis key matching the glob `pattern`.
pub fn keys_matching(conn: &mut redis::Connection, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::Commands::scan_match(conn, pattern)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    keys.sort();
    keys
}
