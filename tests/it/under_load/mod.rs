//! The tests that load the machine or kill what the limiter talks to: the
//! attacks on its failure handling, Redis faults under load, batching and
//! failover on a cluster, a Sentinel deployment's failover. Most of them
//! take `support::heavy()` and run one at a time, each once the process has
//! quietened; those that count but measure no latency (the memory attacks,
//! the fleet's shares) take `support::loading()` and run together.
//!
//! They sit under one module named to sort last on purpose: libtest starts
//! tests in name order, so the light tests all run first, many at a time
//! (see `.cargo/config.toml`), and the heavy ones then take their turns on a
//! quiet machine, with only their few light neighbours beside them.

mod attacks;
#[cfg(feature = "cluster")]
mod cluster_batching;
#[cfg(feature = "cluster")]
mod cluster_failover;
mod faults;
#[cfg(feature = "sentinel")]
mod sentinel;
