//! The local cache of blocked clients: a client the backend has just denied
//! is denied again locally, with zero backend calls, until its retry time or
//! the cache's max age, whichever comes first.
//!
//! The max age (the layer's `blocked_cache_max_age`, 1 s by default) bounds
//! how long a reset elsewhere goes unseen: after `Admin::reset` on another
//! instance, or a `DEL` of the client's keys in Redis, this instance asks the
//! backend again within the max age, even for a per-day quota whose retry
//! time is hours away. A flood from a blocked client then costs one backend
//! call per client per max age per instance, instead of one per request.
//!
//! This is safe because a denial can only last *longer* than the backend said
//! (other instances' traffic adds to the count, never removes from it): the
//! sliding log's retry-after is exact, and the counter's is rounded so that a
//! retry then succeeds. A cached denial covers requests of the same or a
//! higher cost; a cheaper request still asks the backend.
//!
//! Each shard is an LRU cache: when it is full, a new denial evicts the least
//! recently used entry in O(1), so a flood of new clients (many IPv6 /64s,
//! many API keys) costs the same per denial as a quiet day. Forgetting a
//! blocked client only costs one backend call for that client. Expired
//! entries are dropped when they are looked up or reach the LRU end.

use std::hash::RandomState;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lru::LruCache;

use crate::clock::{Clock, MonotonicClock};
use crate::decision::{Decision, QuotaStatus};
use crate::key::Key;
use crate::sharded::{SHARDS, Sharded};

/// A remembered denial; times in microseconds of the cache's clock.
#[derive(Debug)]
struct Entry {
    until: u64,
    cost: u64,
    decision: Decision,
    at: u64,
}

/// One shard: SipHash with its own random keys (client keys are
/// attacker-chosen), independent of the hash that picked the shard.
type Shard = LruCache<Key, Entry, RandomState>;

/// The clients of one policy that were denied, and when they may retry: a
/// sharded LRU keyed by the client key alone, so lookups borrow the key.
pub(crate) struct BlockedClients {
    /// `None` when the cache is disabled.
    shards: Option<Sharded<Shard>>,
    /// How many entries the shards hold, kept under their locks: while
    /// none is held (no client blocked lately, the usual case), a lookup
    /// reads no clock, hashes nothing and takes no lock.
    len: AtomicUsize,
    /// The longest an entry is kept, whatever its retry time, in microseconds.
    max_age: u64,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for BlockedClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockedClients")
            .field("enabled", &self.shards.is_some())
            .field("max_age_us", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl BlockedClients {
    /// A cache of at most about `capacity` blocked clients, each kept at most
    /// `max_age` (a capacity of 0 or a zero max age disables it).
    pub(crate) fn new(capacity: usize, max_age: Duration) -> Self {
        Self::with_clock(capacity, max_age, Arc::new(MonotonicClock))
    }

    pub(crate) fn with_clock(capacity: usize, max_age: Duration, clock: Arc<dyn Clock>) -> Self {
        let max_age = u64::try_from(max_age.as_micros()).unwrap_or(u64::MAX);
        let capacity = if max_age == 0 { 0 } else { capacity };
        let shards = NonZeroUsize::new(capacity.div_ceil(SHARDS)).map(|per_shard| {
            Sharded::new(SHARDS, || {
                // Unbounded then resized: the same bound as `with_hasher`, but
                // the map grows on demand instead of allocating every slot up
                // front.
                let mut shard = LruCache::unbounded_with_hasher(RandomState::new());
                shard.resize(per_shard);
                shard
            })
        });
        Self {
            shards,
            len: AtomicUsize::new(0),
            max_age,
            clock,
        }
    }

    /// The denial to repeat for this request, if the client is still blocked
    /// and the entry is younger than the max age. The retry time repeated is
    /// the backend's (aged), not the max age: the client really must wait
    /// that long unless it is reset.
    pub(crate) fn get(&self, key: &Key, cost: u64) -> Option<Decision> {
        let shards = self.shards.as_ref()?;
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = self.clock.now_micros();
        let mut shard = shards.lock(key);
        let entry = shard.get(key)?;
        if entry.until <= now || now.saturating_sub(entry.at) >= self.max_age {
            self.pop(&mut shard, key);
            return None;
        }
        if cost < entry.cost {
            return None;
        }
        // Age the stored decision: less time to wait, same counts.
        let elapsed = Duration::from_micros(now.saturating_sub(entry.at));
        let quotas = entry
            .decision
            .quotas()
            .iter()
            .map(|q| QuotaStatus {
                reset_after: q.reset_after.saturating_sub(elapsed),
                ..*q
            })
            .collect();
        let denied_by = entry.decision.denied_by().unwrap_or(0);
        let retry_after = Duration::from_micros(entry.until - now);
        Some(Decision::new(quotas, Some((denied_by, retry_after))))
    }

    /// Forgets `key`'s denial, if any: its next request asks the backend
    /// (after an administrative reset, say).
    pub(crate) fn remove(&self, key: &Key) {
        if let Some(shards) = &self.shards {
            self.pop(&mut shards.lock(key), key);
        }
    }

    /// Drops `key`'s entry from its (locked) shard, keeping the count.
    fn pop(&self, shard: &mut Shard, key: &Key) {
        if shard.pop(key).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Remembers a denial until its retry time, or for the max age if that
    /// is shorter. O(1): when the shard is full, its least recently used
    /// entry makes room.
    pub(crate) fn insert(&self, key: &Key, cost: u64, decision: &Decision) {
        let Some(retry) = decision.retry_after() else {
            return;
        };
        if retry < Duration::from_millis(1) {
            return;
        }
        let Some(shards) = &self.shards else {
            return;
        };
        let now = self.clock.now_micros();
        let retry = u64::try_from(retry.as_micros()).unwrap_or(u64::MAX);
        let entry = Entry {
            until: now.saturating_add(retry),
            cost,
            decision: decision.clone(),
            at: now,
        };
        // `push` hands back the entry it replaced or evicted: then the count
        // is unchanged.
        if shards.lock(key).push(key.clone(), entry).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

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

    fn len(cache: &BlockedClients) -> usize {
        let held = cache
            .shards
            .as_ref()
            .map_or(0, |s| s.each().map(|s| s.len()).sum());
        assert_eq!(
            cache.len.load(Ordering::Relaxed),
            held,
            "the count is exact"
        );
        held
    }

    #[test]
    fn repeats_denials_until_retry_time_for_same_or_higher_cost() {
        let clock = FakeClock::new(1_000_000);
        let cache = BlockedClients::with_clock(50, Duration::MAX, Arc::new(clock.clone()));
        let other_policy = BlockedClients::with_clock(50, Duration::MAX, Arc::new(clock.clone()));
        let k = Key::new("a");
        assert!(cache.get(&k, 1).is_none());
        cache.insert(&k, 2, &denied(40));
        assert!(
            cache.get(&k, 1).is_none(),
            "cheaper request asks the backend"
        );
        let d = cache.get(&k, 2).unwrap();
        assert!(!d.is_allowed());
        assert!(d.retry_after().unwrap() <= Duration::from_millis(40));
        assert!(other_policy.get(&k, 2).is_none(), "other policy");
        assert!(cache.get(&Key::new("b"), 2).is_none(), "other key");
        clock.advance(Duration::from_millis(25));
        let d = cache.get(&k, 2).unwrap();
        assert_eq!(d.retry_after(), Some(Duration::from_millis(15)), "aged");
        assert_eq!(d.quotas()[0].reset_after, Duration::from_millis(59_975));
        clock.advance(Duration::from_millis(15));
        assert!(cache.get(&k, 5).is_none(), "expired");
        assert_eq!(len(&cache), 0, "the expired entry was dropped");
    }

    #[test]
    fn entries_expire_at_the_max_age_before_the_retry_time() {
        let clock = FakeClock::new(1_000_000);
        let max_age = Duration::from_secs(1);
        let cache = BlockedClients::with_clock(50, max_age, Arc::new(clock.clone()));
        let day = Key::new("day");
        let short = Key::new("short");
        // A per-day denial, and one shorter than the max age.
        cache.insert(&day, 1, &denied(86_400_000));
        cache.insert(&short, 1, &denied(300));
        clock.advance(Duration::from_millis(999));
        let d = cache.get(&day, 1).expect("still within the max age");
        assert_eq!(
            d.retry_after(),
            Some(Duration::from_millis(86_400_000 - 999)),
            "the backend's retry time is repeated, not the max age"
        );
        assert!(
            cache.get(&short, 1).is_none(),
            "its own retry time came first"
        );
        clock.advance(Duration::from_millis(1));
        assert!(cache.get(&day, 1).is_none(), "the max age has passed");
        assert_eq!(len(&cache), 0, "expired entries were dropped");
        // A zero max age disables the cache.
        let off = BlockedClients::with_clock(50, Duration::ZERO, Arc::new(clock.clone()));
        off.insert(&day, 1, &denied(86_400_000));
        assert!(off.get(&day, 1).is_none());
        assert!(off.shards.is_none());
    }

    #[test]
    fn remove_forgets_one_client() {
        let cache = BlockedClients::new(50, Duration::MAX);
        let (a, b) = (Key::new("a"), Key::new("b"));
        cache.insert(&a, 1, &denied(60_000));
        cache.insert(&b, 1, &denied(60_000));
        cache.remove(&a);
        assert!(cache.get(&a, 1).is_none(), "a was forgotten");
        assert!(cache.get(&b, 1).is_some(), "b is still blocked");
        assert_eq!(len(&cache), 1);
        // Removing an unknown client, or from a disabled cache, is a no-op.
        cache.remove(&Key::new("c"));
        BlockedClients::new(0, Duration::MAX).remove(&a);
        assert_eq!(len(&cache), 1);
    }

    #[test]
    fn bounded_and_disableable() {
        let cache = BlockedClients::new(32, Duration::MAX);
        for i in 0..1000 {
            cache.insert(&Key::new(format!("k{i}")), 1, &denied(10_000));
        }
        assert!(len(&cache) <= 32, "{}", len(&cache));
        let off = BlockedClients::new(0, Duration::MAX);
        off.insert(&Key::new("a"), 1, &denied(10_000));
        assert!(off.get(&Key::new("a"), 1).is_none());
    }

    #[test]
    fn full_of_live_entries_keeps_the_newest() {
        // 16 shards of 4: every shard overflows many times over.
        let cache = BlockedClients::new(64, Duration::MAX);
        let keys: Vec<Key> = (0..2000).map(|i| Key::new(format!("k{i}"))).collect();
        for key in &keys {
            cache.insert(key, 1, &denied(60_000));
        }
        assert_eq!(len(&cache), 64, "every shard full, none over");
        // In each shard, exactly the 4 last-inserted clients are remembered.
        let mut seen = [0; SHARDS];
        for key in keys.iter().rev() {
            let ix = cache.shards.as_ref().unwrap().index(key);
            let newest = seen[ix] < 4;
            seen[ix] += 1;
            assert_eq!(cache.get(key, 1).is_some(), newest, "{key:?}");
        }
        assert!(cache.get(&keys[1999], 1).is_some());
        assert!(cache.get(&keys[0], 1).is_none());
    }

    #[test]
    fn a_blocked_client_asking_again_stays_cached() {
        let cache = BlockedClients::new(SHARDS * 2, Duration::MAX);
        let hammering = Key::new("hammering");
        cache.insert(&hammering, 1, &denied(60_000));
        for i in 0..1000 {
            assert!(cache.get(&hammering, 1).is_some(), "after {i} inserts");
            cache.insert(&Key::new(format!("k{i}")), 1, &denied(60_000));
        }
    }
}
