//! A value split into independently locked shards, one picked per key by a
//! randomly keyed hash (client keys are attacker-chosen, so the shard of a
//! key cannot be predicted). Used by the memory backend's counters and the
//! blocked-client cache.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The number of shards the crate's maps use: enough to keep two cores (or
/// a few more) from contending, few enough that each shard stays large.
pub(crate) const SHARDS: usize = 16;

/// `count` values of `T`, each behind its own lock.
#[derive(Debug)]
pub(crate) struct Sharded<T> {
    shards: Box<[Mutex<T>]>,
    hasher: RandomState,
}

impl<T> Sharded<T> {
    /// `count` shards (at least one), each made by `make`.
    pub(crate) fn new(count: usize, make: impl FnMut() -> T) -> Self {
        let mut make = make;
        Self {
            shards: (0..count.max(1)).map(|_| Mutex::new(make())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The number of shards.
    pub(crate) fn count(&self) -> usize {
        self.shards.len()
    }

    /// Locks the shard of `key`. A panic while a shard was locked leaves it
    /// usable: every shard holds counters or caches, never invariants
    /// spanning a lock.
    pub(crate) fn lock<K: Hash + ?Sized>(&self, key: &K) -> MutexGuard<'_, T> {
        lock(&self.shards[self.index(key)])
    }

    /// The index of the shard of `key`.
    pub(crate) fn index<K: Hash + ?Sized>(&self, key: &K) -> usize {
        self.hasher.hash_one(key) as usize % self.shards.len()
    }

    /// The hash of `key`, with the same random keys as the shard choice:
    /// for a map in the shard to reuse, so a key is hashed once.
    pub(crate) fn hash<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Locks the shard of a [`hash`](Self::hash). The shard is taken from
    /// bits 32 and up, so that a hash table in the shard, which places
    /// entries by the low bits and tags them with the top seven, still sees
    /// them spread evenly.
    pub(crate) fn lock_hashed(&self, hash: u64) -> MutexGuard<'_, T> {
        lock(&self.shards[self.index_hashed(hash)])
    }

    /// The index of the shard [`lock_hashed`](Self::lock_hashed) locks.
    pub(crate) fn index_hashed(&self, hash: u64) -> usize {
        (hash >> 32) as usize % self.shards.len()
    }

    /// Locks every shard in turn.
    pub(crate) fn each(&self) -> impl Iterator<Item = MutexGuard<'_, T>> {
        self.shards.iter().map(lock)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_one_shard_and_every_shard_reachable() {
        let map: Sharded<Vec<u32>> = Sharded::new(SHARDS, Vec::new);
        assert_eq!(map.count(), SHARDS);
        for i in 0..1000u32 {
            map.lock(&i).push(i);
        }
        for i in 0..1000u32 {
            assert!(map.lock(&i).contains(&i), "{i} stays in its shard");
        }
        let sizes: Vec<usize> = map.each().map(|s| s.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
        assert!(sizes.iter().all(|&n| n > 0), "{sizes:?}");
        assert_eq!(Sharded::new(0, || 0u8).count(), 1);
        // By hash: every shard reachable too.
        let map: Sharded<Vec<u32>> = Sharded::new(SHARDS, Vec::new);
        for i in 0..1000u32 {
            map.lock_hashed(map.hash(&i)).push(i);
        }
        assert!(map.each().all(|s| !s.is_empty()));
    }
}
