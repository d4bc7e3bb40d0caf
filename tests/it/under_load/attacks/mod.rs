//! Attacks on the limiter's own failure handling, each as a test that
//! failed before its fix: a client (or a key, a connection) must never be
//! able to switch limiting off for everyone (issue 17).
//!
//! Every module is one attack, run against a real `redis-server` for a
//! short, bounded load phase on loopback.

mod churn;
pub(crate) mod common;
mod cost;
mod fleet;
mod maxmemory;
mod memory_bytes;
mod poisoned;
#[cfg(feature = "serde")]
mod secrets;
mod zero_cost;
