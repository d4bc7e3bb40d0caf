//! The local cache of blocked clients: a client the backend has just denied
//! is denied again locally, with zero backend calls, until its retry time.
//!
//! This is safe because a denial can only last *longer* than the backend said
//! (other instances' traffic adds to the count, never removes from it): the
//! sliding log's retry-after is exact, and the counter's is rounded so that a
//! retry then succeeds. A cached denial covers requests of the same or a
//! higher cost; a cheaper request still asks the backend.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::decision::{Decision, QuotaStatus};
use crate::key::Key;

const SHARDS: usize = 16;

#[derive(Debug)]
struct Entry {
    until: Instant,
    cost: u64,
    decision: Decision,
    at: Instant,
}

/// Denied `(policy, key)` pairs and when they may retry: `SHARDS` maps per
/// policy, keyed by the client key alone, so lookups borrow the key.
#[derive(Debug)]
pub(crate) struct BlockedCache {
    shards: Vec<Mutex<HashMap<Key, Entry>>>,
    per_shard: usize,
    hasher: RandomState,
}

impl BlockedCache {
    /// A cache of at most about `capacity` blocked clients over `policies`
    /// policies (capacity 0 disables it).
    pub(crate) fn new(capacity: usize, policies: usize) -> Self {
        let shards = SHARDS * policies.max(1);
        Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(shards),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, policy: usize, key: &Key) -> &Mutex<HashMap<Key, Entry>> {
        let ix = policy * SHARDS + self.hasher.hash_one(key) as usize % SHARDS;
        &self.shards[ix % self.shards.len()]
    }

    /// The denial to repeat for this request, if the client is still blocked.
    pub(crate) fn get(&self, policy: usize, key: &Key, cost: u64) -> Option<Decision> {
        if self.per_shard == 0 {
            return None;
        }
        let now = Instant::now();
        let mut shard = self
            .shard(policy, key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.get(key)?;
        if entry.until <= now {
            shard.remove(key);
            return None;
        }
        if cost < entry.cost {
            return None;
        }
        // Age the stored decision: less time to wait, same counts.
        let elapsed = now - entry.at;
        let quotas = entry
            .decision
            .quotas()
            .iter()
            .map(|q| QuotaStatus {
                reset_after: q.reset_after.saturating_sub(elapsed),
                ..*q
            })
            .collect();
        let retry = entry.until - now;
        Some(Decision::denied(
            quotas,
            entry.decision.denied_by().unwrap_or(0),
            retry,
        ))
    }

    /// Remembers a denial.
    pub(crate) fn insert(&self, policy: usize, key: &Key, cost: u64, decision: &Decision) {
        let Some(retry) = decision.retry_after() else {
            return;
        };
        if self.per_shard == 0 || retry < Duration::from_millis(1) {
            return;
        }
        let now = Instant::now();
        let mut shard = self
            .shard(policy, key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= self.per_shard {
            shard.retain(|_, e| e.until > now);
            if shard.len() >= self.per_shard {
                // Still full of live entries: forgetting one only costs a
                // backend call for that client.
                if let Some(victim) = shard.keys().next().cloned() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            key.clone(),
            Entry {
                until: now + retry,
                cost,
                decision: decision.clone(),
                at: now,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(retry_ms: u64) -> Decision {
        Decision::denied(
            vec![QuotaStatus {
                limit: 5,
                window: Duration::from_secs(60),
                remaining: 0,
                reset_after: Duration::from_secs(60),
            }],
            0,
            Duration::from_millis(retry_ms),
        )
    }

    #[test]
    fn repeats_denials_until_retry_time_for_same_or_higher_cost() {
        let cache = BlockedCache::new(100, 2);
        let k = Key::new("a");
        assert!(cache.get(0, &k, 1).is_none());
        cache.insert(0, &k, 2, &denied(40));
        assert!(
            cache.get(0, &k, 1).is_none(),
            "cheaper request asks the backend"
        );
        let d = cache.get(0, &k, 2).unwrap();
        assert!(!d.is_allowed());
        assert!(d.retry_after().unwrap() <= Duration::from_millis(40));
        assert!(cache.get(1, &k, 2).is_none(), "other policy");
        assert!(cache.get(0, &Key::new("b"), 2).is_none(), "other key");
        std::thread::sleep(Duration::from_millis(45));
        assert!(cache.get(0, &k, 5).is_none(), "expired");
    }

    #[test]
    fn bounded_and_disableable() {
        let cache = BlockedCache::new(32, 1);
        for i in 0..1000 {
            cache.insert(0, &Key::new(format!("k{i}")), 1, &denied(10_000));
        }
        let len: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(len <= 32, "{len}");
        let off = BlockedCache::new(0, 1);
        off.insert(0, &Key::new("a"), 1, &denied(10_000));
        assert!(off.get(0, &Key::new("a"), 1).is_none());
    }
}
