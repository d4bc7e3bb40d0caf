//! The in-process backend.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

use super::{Backend, CheckFuture};
use crate::algorithm::{self, QuotaState};
use crate::clock::{Clock, SystemClock};
use crate::error::ConfigError;
use crate::key::Key;
use crate::policy::Policy;

const SHARDS: usize = 16;
/// Every this many writes a shard drops its expired entries.
const SWEEP_EVERY: u32 = 1024;

/// In-process counters with the same algorithms and outcomes as
/// [`RedisBackend`](super::RedisBackend).
///
/// State lives in a sharded map of `(policy, key)` entries. Memory is bounded:
/// entries are dropped once their counts have left every window, and the
/// number of tracked clients is capped ([`MemoryBackend::with_capacity`],
/// default 100 000). When the map is full of live entries the one closest to
/// expiry is evicted, which forgets that client's count (as Redis does under
/// `allkeys-lru`).
///
/// Each instance counts on its own: with several application instances, use
/// Redis for a shared limit.
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Box<dyn Clock>,
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Entry>,
    writes: u32,
}

struct Entry {
    quotas: Vec<QuotaState>,
    expires_at: u64,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("capacity", &(self.inner.per_shard * SHARDS))
            .field("len", &self.len())
            .finish()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// The default capacity: this many tracked `(policy, client)` pairs.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// A backend on the system clock with the default capacity.
    pub fn new() -> Self {
        Self::build(SystemClock, Self::DEFAULT_CAPACITY)
    }

    /// A backend on the given clock (e.g. a [`FakeClock`](crate::clock::FakeClock)
    /// in tests), with the default capacity.
    pub fn with_clock(clock: impl Clock) -> Self {
        Self::build(clock, Self::DEFAULT_CAPACITY)
    }

    /// A backend tracking at most about `capacity` `(policy, client)` pairs
    /// (rounded up to a multiple of 16).
    pub fn with_capacity(clock: impl Clock, capacity: usize) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::ZeroCapacity);
        }
        Ok(Self::build(clock, capacity))
    }

    fn build(clock: impl Clock, capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                clock: Box::new(clock),
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                per_shard: capacity.div_ceil(SHARDS),
                hasher: RandomState::new(),
            }),
        }
    }

    /// The number of entries held now (live or not yet swept).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The decision, synchronously (the [`Backend`] impl wraps this).
    pub fn check_now(&self, policy: &Policy, key: &Key, cost: u64) -> crate::Decision {
        let inner = &*self.inner;
        let now = inner.clock.now_micros();
        let mut id = String::with_capacity(policy.name().len() + 1 + key.as_str().len());
        id.push_str(policy.name());
        id.push('\0');
        id.push_str(key.as_str());
        let shard_ix = (inner.hasher.hash_one(&id) as usize) % SHARDS;
        let mut shard = inner.shards[shard_ix]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);

        let algorithm = policy.algorithm_kind();
        let quotas = policy.quotas();
        let mut entry = shard.map.remove(&id).unwrap_or_else(|| Entry {
            quotas: Vec::new(),
            expires_at: 0,
        });
        let fresh = entry.expires_at <= now
            || entry.quotas.len() != quotas.len()
            || !entry.quotas.iter().all(|q| q.matches(algorithm));
        if fresh {
            entry.quotas = quotas.iter().map(|_| QuotaState::new(algorithm)).collect();
        }
        let (decision, keep) = algorithm::check(&mut entry.quotas, quotas, now, cost);
        if keep > 0 {
            entry.expires_at = now + keep;
            shard.writes = shard.writes.wrapping_add(1);
            if shard.writes.is_multiple_of(SWEEP_EVERY) {
                shard.map.retain(|_, e| e.expires_at > now);
            }
            if shard.map.len() >= inner.per_shard {
                shard.map.retain(|_, e| e.expires_at > now);
                if shard.map.len() >= inner.per_shard
                    && let Some(victim) = shard
                        .map
                        .iter()
                        .min_by_key(|(_, e)| e.expires_at)
                        .map(|(k, _)| k.clone())
                {
                    shard.map.remove(&victim);
                }
            }
            shard.map.insert(id, entry);
        }
        decision
    }
}

impl Backend for MemoryBackend {
    fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture {
        Box::pin(std::future::ready(Ok(self.check_now(policy, key, cost))))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Quota;
    use crate::clock::FakeClock;

    #[test]
    fn capacity_bounds_memory_and_expiry_frees_it() {
        let clock = FakeClock::new(1_000_000_000);
        let backend = MemoryBackend::with_capacity(clock.clone(), 64).unwrap();
        let policy = Policy::new("p").quota(Quota::per_second(1));
        for i in 0..10_000 {
            backend.check_now(&policy, &Key::new(format!("c{i}")), 1);
        }
        assert!(backend.len() <= 64, "len {}", backend.len());
        clock.advance(Duration::from_secs(3));
        // Writes to a shard sweep it once it is full; every entry is expired.
        for i in 0..2_000 {
            backend.check_now(&policy, &Key::new(format!("d{i}")), 1);
        }
        assert!(backend.len() <= 64);
        assert_eq!(
            MemoryBackend::with_capacity(clock, 0).unwrap_err(),
            ConfigError::ZeroCapacity
        );
    }

    #[test]
    fn denied_first_request_keeps_nothing() {
        let backend = MemoryBackend::with_clock(FakeClock::new(5));
        let policy = Policy::new("p").quota(Quota::per_second(1));
        assert!(!backend.check_now(&policy, &Key::new("a"), 2).is_allowed());
        assert!(backend.is_empty());
    }
}
