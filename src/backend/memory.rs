//! The in-process backend.

use std::mem::size_of;
use std::sync::Arc;

use hashbrown::HashTable;

use super::{Backend, ChargeFuture, CheckFuture, RefundFuture, ResetFuture};
use crate::algorithm::{self, QuotaState};
use crate::clock::{Clock, SystemClock};
use crate::decision::{Origin, Ticket};
use crate::error::ConfigError;
use crate::key::Key;
use crate::policy::Policy;
use crate::sharded::{SHARDS, Sharded};
/// A shard drops its expired entries every this many writes, or every
/// shard-capacity writes if that is more (so a sweep costs O(1) amortised).
const SWEEP_EVERY: usize = 1024;
/// When a shard needs room and no sweep is due, the entry closest to expiry
/// among each sample of this many (consecutive ones from a cursor going
/// round the map) is evicted.
const EVICTION_SAMPLE: usize = 8;
/// The most victims one walk over a shard's map picks before removing them
/// (on the stack: eviction allocates nothing).
const VICTIMS_PER_WALK: usize = 32;
/// What an entry costs besides its id and its states: the entry itself in
/// the map's table, and its control byte there.
const ENTRY_BYTES: usize = size_of::<Entry>() + 1;

/// In-process counters with the same algorithms and outcomes as
/// [`RedisBackend`](super::RedisBackend).
///
/// State lives in a sharded map of `(policy, key)` entries, dropped once
/// their counts have left every window. Memory is bounded twice, each bound
/// split evenly between the 16 shards:
///
/// - in clients: at most about [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY)
///   (100 000) entries;
/// - in bytes: at most about [`DEFAULT_MAX_BYTES`](Self::DEFAULT_MAX_BYTES)
///   (64 MiB) of counting state, as the backend accounts it after every
///   decision ([`bytes`](Self::bytes)).
///
/// Set either or both with [`MemoryBackend::builder`].
///
/// # What one client costs
///
/// An entry costs 57 bytes, plus its id (the policy's name, a separator and
/// the client's key, which is at most 65 bytes: longer keys are hashed),
/// plus 40 bytes per quota of its policy, plus, for
/// [`Algorithm::SlidingLog`](crate::Algorithm::SlidingLog) only, 16 bytes
/// per slot of each quota's log. A log holds one entry per request admitted
/// in its window, however costly (so at most the quota's limit); its room
/// grows by doubling and is kept until the client's entry expires: up to 16
/// bytes × the limit rounded up to a power of two. So, with one quota and a 15-byte id (`api` and an IPv4
/// address):
///
/// | algorithm | per client | clients in 64 MiB |
/// |---|---|---|
/// | sliding window, GCRA | 112 bytes | ≈ 600 000 (the capacity binds first) |
/// | sliding log, 10 requests in the window | 368 bytes | ≈ 180 000 (the capacity binds first) |
/// | sliding log, 5 000 requests in the window | ≈ 128 KiB | ≈ 500 |
///
/// The allocator adds its own few bytes per allocation (an entry makes two,
/// a sliding log one more per quota), and the map keeps the table it grew
/// to: the process grows by somewhat more than the bytes accounted, never
/// by an amount a client chooses.
///
/// # Eviction
///
/// When a shard would exceed either of its shares, it makes room: it first
/// drops its expired entries if a sweep is due (at most once per
/// shard-capacity writes), then evicts the entry closest to expiry among
/// each small sample (an expired one when the sample holds any), until it
/// is back within its shares. An evicted client's count is forgotten (its
/// next request starts afresh), as Redis does under `allkeys-lru`: size the
/// bounds for the clients you expect (the table above), or prefer the
/// sliding window or GCRA, whose clients cost a constant. The client being
/// decided is never evicted for its own growth: a shard holding only that
/// client may stay over its byte share by that one entry until the next
/// new client evicts it. Every decision costs O(1) amortised and allocates
/// nothing for a known client beyond what its log grows.
///
/// Each instance counts on its own: with several application instances, use
/// Redis for a shared limit.
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Box<dyn Clock>,
    shards: Sharded<Shard>,
    /// A shard's share of the capacity (entries).
    per_shard: usize,
    /// A shard's share of the byte budget.
    bytes_per_shard: usize,
}

/// A shard's entries, placed by the hash that chose the shard (SipHash with
/// random keys: client keys are attacker-chosen), so each decision hashes
/// its key once and allocates nothing for a known client.
struct Shard {
    map: HashTable<Entry>,
    /// The sum of the entries' [`Entry::bytes`], kept after every change.
    bytes: usize,
    /// Writes since the last sweep.
    writes: usize,
    /// Sweeps so far (a test helper).
    sweeps: u64,
    /// Where the next eviction sample starts: a bucket of `map`.
    cursor: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            map: HashTable::new(),
            bytes: 0,
            writes: 0,
            sweeps: 0,
            cursor: 0,
        }
    }
}

/// How much a shard may hold once it has made room.
#[derive(Clone, Copy)]
struct Room {
    /// Entries.
    len: usize,
    /// Bytes, as [`Entry::bytes`] counts them.
    bytes: usize,
}

impl Shard {
    /// Drops the entries expired at `now`.
    fn sweep(&mut self, now: u64) {
        let mut freed = 0;
        self.map.retain(|e| {
            let live = e.expires_at > now;
            if !live {
                freed += e.bytes();
            }
            live
        });
        self.bytes -= freed;
        self.writes = 0;
        self.sweeps += 1;
    }

    fn fits(&self, room: Room) -> bool {
        self.map.len() <= room.len && self.bytes <= room.bytes
    }

    /// Makes the shard fit in `room`, never evicting the entry in bucket
    /// `keep` (the one being decided, if any): sweeps when one is due (every
    /// `sweep_every` writes), then evicts the entry closest to expiry among
    /// each sample of [`EVICTION_SAMPLE`] (an expired one when the sample
    /// holds any), until it fits or holds nothing but `keep`.
    ///
    /// Samples are consecutive entries from a cursor that goes round the
    /// map's buckets, so every entry is a candidate in turn, wherever its
    /// hash placed it. A walk picks up to [`VICTIMS_PER_WALK`] victims, and
    /// an entry is evicted at most once per insertion: O(1) amortised per
    /// decision.
    fn make_room(&mut self, room: Room, sweep_every: usize, now: u64, keep: Option<usize>) {
        if self.fits(room) {
            return;
        }
        if self.writes >= sweep_every {
            self.sweep(now);
        }
        let others = |s: &Self| s.map.len() - usize::from(keep.is_some());
        while !self.fits(room) && others(self) > 0 {
            let buckets = self.map.num_buckets();
            let mut index = self.cursor % buckets;
            let mut scanned = 0;
            let mut victims = [0_usize; VICTIMS_PER_WALK];
            let mut picked = 0;
            let (mut len, mut bytes) = (self.map.len(), self.bytes);
            // At most once round the map per walk, so no bucket twice.
            while (len > room.len || bytes > room.bytes)
                && picked < VICTIMS_PER_WALK
                && scanned < buckets
            {
                // (bucket, expiry, bytes) of the sample's victim.
                let mut victim: Option<(usize, u64, usize)> = None;
                let mut sampled = 0;
                while sampled < EVICTION_SAMPLE && scanned < buckets {
                    if let Some(e) = self.map.get_bucket(index)
                        && Some(index) != keep
                    {
                        sampled += 1;
                        if victim.is_none_or(|(_, expiry, _)| e.expires_at < expiry) {
                            victim = Some((index, e.expires_at, e.bytes()));
                        }
                    }
                    index += 1;
                    if index == buckets {
                        index = 0;
                    }
                    scanned += 1;
                }
                let Some((bucket, _, size)) = victim else {
                    break;
                };
                victims[picked] = bucket;
                picked += 1;
                len -= 1;
                bytes -= size;
            }
            self.cursor = index;
            // Removing an entry moves no other.
            for &bucket in &victims[..picked] {
                if let Ok(victim) = self.map.get_bucket_entry(bucket) {
                    self.bytes -= victim.get().bytes();
                    victim.remove();
                }
            }
        }
    }
}

struct Entry {
    /// `<policy>\0<key>`: the names of policies and the text of keys hold
    /// no NUL, so two pairs never share one.
    id: Box<str>,
    /// The hash of `(policy, key)` that placed the entry.
    hash: u64,
    quotas: Vec<QuotaState>,
    expires_at: u64,
}

impl Entry {
    /// Whether this is the entry of `policy`'s `key`, without building its id.
    fn is(&self, policy: &str, key: &str) -> bool {
        let id = self.id.as_bytes();
        id.len() == policy.len() + 1 + key.len()
            && id.starts_with(policy.as_bytes())
            && id[policy.len()] == 0
            && id.ends_with(key.as_bytes())
    }

    /// The bytes this entry holds: its slot in the map, its id, its states
    /// and what they hold on the heap. O(quotas).
    fn bytes(&self) -> usize {
        ENTRY_BYTES
            + self.id.len()
            + self.quotas.capacity() * size_of::<QuotaState>()
            + self
                .quotas
                .iter()
                .map(QuotaState::heap_bytes)
                .sum::<usize>()
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shards = self.inner.shards.count();
        f.debug_struct("MemoryBackend")
            .field("capacity", &(self.inner.per_shard * shards))
            .field("max_bytes", &(self.inner.bytes_per_shard * shards))
            .field("len", &self.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// Configures a [`MemoryBackend`]: made by [`MemoryBackend::builder`]. Nothing
/// is checked until [`build`](Self::build).
#[must_use]
pub struct MemoryBackendBuilder {
    clock: Box<dyn Clock>,
    capacity: usize,
    max_bytes: usize,
}

/// Shows the bounds (not the clock).
impl std::fmt::Debug for MemoryBackendBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackendBuilder")
            .field("capacity", &self.capacity)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl MemoryBackendBuilder {
    /// The clock (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// Tracks at most about `capacity` `(policy, client)` pairs, rounded up
    /// to a multiple of 16 (default
    /// [`DEFAULT_CAPACITY`](MemoryBackend::DEFAULT_CAPACITY)).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Keeps at most about `max_bytes` bytes of counting state, rounded up to
    /// a multiple of 16 (default
    /// [`DEFAULT_MAX_BYTES`](MemoryBackend::DEFAULT_MAX_BYTES)). See
    /// [`MemoryBackend`] for what a client costs.
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Checks the bounds and builds the backend.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroCapacity`] if the capacity is zero,
    /// [`ConfigError::ZeroByteBudget`] if the byte budget is.
    pub fn build(self) -> Result<MemoryBackend, ConfigError> {
        if self.capacity == 0 {
            return Err(ConfigError::ZeroCapacity);
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::ZeroByteBudget);
        }
        Ok(MemoryBackend::assemble(
            self.clock,
            self.capacity,
            self.max_bytes,
        ))
    }
}

impl MemoryBackend {
    /// The default capacity: this many tracked `(policy, client)` pairs.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// The default byte budget: this many bytes of counting state (64 MiB),
    /// as [`bytes`](Self::bytes) accounts them.
    pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

    /// A backend on the system clock with the default capacity and byte
    /// budget.
    pub fn new() -> Self {
        Self::assemble(
            Box::new(SystemClock),
            Self::DEFAULT_CAPACITY,
            Self::DEFAULT_MAX_BYTES,
        )
    }

    /// A backend on the given clock (e.g. the fake clock of the feature
    /// `test-util`, in tests), with the default capacity and byte budget.
    pub fn with_clock(clock: impl Clock) -> Self {
        Self::assemble(
            Box::new(clock),
            Self::DEFAULT_CAPACITY,
            Self::DEFAULT_MAX_BYTES,
        )
    }

    /// A builder, for other bounds than the default ones (or another clock).
    ///
    /// ```
    /// use tower_redis_ratelimit::MemoryBackend;
    ///
    /// // Up to a million clients in 256 MiB.
    /// let backend = MemoryBackend::builder()
    ///     .capacity(1_000_000)
    ///     .max_bytes(256 << 20)
    ///     .build()?;
    /// # let _ = backend;
    /// # Ok::<(), tower_redis_ratelimit::ConfigError>(())
    /// ```
    pub fn builder() -> MemoryBackendBuilder {
        MemoryBackendBuilder {
            clock: Box::new(SystemClock),
            capacity: Self::DEFAULT_CAPACITY,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }

    fn assemble(clock: Box<dyn Clock>, capacity: usize, max_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                clock,
                shards: Sharded::new(SHARDS, Shard::default),
                per_shard: capacity.div_ceil(SHARDS),
                bytes_per_shard: max_bytes.div_ceil(SHARDS),
            }),
        }
    }

    /// The number of entries held now (live or not yet swept).
    pub fn len(&self) -> usize {
        self.inner.shards.each().map(|s| s.map.len()).sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of counting state held now, as the byte budget counts them
    /// (the entries, their ids, their states and the logs' room; not the
    /// allocator's own overhead nor the map's empty slots).
    pub fn bytes(&self) -> usize {
        self.inner.shards.each().map(|s| s.bytes).sum()
    }

    /// The decision, synchronously: the [`Backend`] impl wraps this, and
    /// [`FailureMode::Local`](crate::FailureMode::Local) decides with it.
    pub(crate) fn decide_now(&self, policy: &Policy, key: &Key, cost: u64) -> crate::Decision {
        self.update_now(policy, key, |states, quotas, now| {
            algorithm::check(states, quotas, now, cost)
        })
    }

    /// A charge, synchronously: counts `cost` more units in the entry of
    /// `policy` and `key`, created if need be, admitted or not (see
    /// `algorithm::charge`).
    pub(crate) fn charge_now(&self, policy: &Policy, key: &Key, cost: u64) {
        self.update_now(policy, key, |states, quotas, now| {
            ((), algorithm::charge(states, quotas, now, cost))
        });
    }

    /// Runs `update` on the quotas of `policy`'s entry for `key` (fresh
    /// ones if there is none, or it is stale), at `now`; `update` returns
    /// its result and how long the entry must be kept (zero: it is dropped).
    #[inline]
    fn update_now<T>(
        &self,
        policy: &Policy,
        key: &Key,
        update: impl FnOnce(&mut [QuotaState], &[crate::Quota], u64) -> (T, u64),
    ) -> T {
        let inner = &*self.inner;
        let now = inner.clock.now_micros();
        let (name, text) = (policy.name(), key.as_str());
        let hash = inner.shards.hash(&(name, text));
        let mut shard = inner.shards.lock_hashed(hash);
        let sweep_every = inner.per_shard;
        let share = Room {
            len: inner.per_shard,
            bytes: inner.bytes_per_shard,
        };

        let algorithm = policy.algorithm_kind();
        let quotas = policy.quotas();
        let fresh_quotas = || quotas.iter().map(|_| QuotaState::new(algorithm)).collect();
        let shard = &mut *shard;
        // The full hash first: a table tag's false match is then told
        // apart without reading the entry's id.
        let (decision, keep) = match shard
            .map
            .find_entry(hash, |e| e.hash == hash && e.is(name, text))
        {
            Ok(mut found) => {
                let entry = found.get_mut();
                let before = entry.bytes();
                let stale = entry.expires_at <= now
                    || entry.quotas.len() != quotas.len()
                    || !entry.quotas.iter().all(|q| q.matches(algorithm));
                if stale {
                    entry.quotas = fresh_quotas();
                }
                let (decision, keep) = update(&mut entry.quotas, quotas, now);
                if keep > 0 {
                    entry.expires_at = now.saturating_add(keep);
                    // Accounted after every decision: a log grows when a
                    // request is admitted, a stale entry starts afresh.
                    let after = entry.bytes();
                    shard.bytes = shard.bytes - before + after;
                    if shard.bytes > share.bytes {
                        let bucket = found.bucket_index();
                        shard.make_room(share, sweep_every, now, Some(bucket));
                    }
                } else {
                    // Nothing counts any more: the entry would only take room.
                    found.remove();
                    shard.bytes -= before;
                }
                (decision, keep)
            }
            Err(_) => {
                let mut entry = Entry {
                    id: entry_id(name, text),
                    hash,
                    quotas: fresh_quotas(),
                    expires_at: 0,
                };
                let (decision, keep) = update(&mut entry.quotas, quotas, now);
                if keep > 0 {
                    entry.expires_at = now.saturating_add(keep);
                    let bytes = entry.bytes();
                    let room = Room {
                        len: share.len - 1,
                        bytes: share.bytes.saturating_sub(bytes),
                    };
                    shard.make_room(room, sweep_every, now, None);
                    shard.map.insert_unique(hash, entry, |e| e.hash);
                    shard.bytes += bytes;
                }
                (decision, keep)
            }
        };
        if keep > 0 {
            shard.writes += 1;
            if shard.writes >= SWEEP_EVERY.max(inner.per_shard) {
                shard.sweep(now);
            }
        }
        decision
    }

    /// A peek, synchronously: every quota of `policy` for `key` as
    /// `algorithm::peek` sees it, reading the entry in place. Creates,
    /// refreshes and drops nothing.
    pub(crate) fn peek_now(&self, policy: &Policy, key: &Key) -> crate::Decision {
        let inner = &*self.inner;
        let now = inner.clock.now_micros();
        let (name, text) = (policy.name(), key.as_str());
        let hash = inner.shards.hash(&(name, text));
        let shard = inner.shards.lock_hashed(hash);
        let algorithm = policy.algorithm_kind();
        let quotas = policy.quotas();
        match shard.map.find(hash, |e| e.hash == hash && e.is(name, text)) {
            // The entry `decide_now` would use as it is.
            Some(entry)
                if entry.expires_at > now
                    && entry.quotas.len() == quotas.len()
                    && entry.quotas.iter().all(|q| q.matches(algorithm)) =>
            {
                algorithm::peek(&entry.quotas, quotas, now)
            }
            // None, or one `decide_now` would start afresh.
            _ => {
                let fresh: Vec<QuotaState> =
                    quotas.iter().map(|_| QuotaState::new(algorithm)).collect();
                algorithm::peek(&fresh, quotas, now)
            }
        }
    }

    /// A reset, synchronously: drops the entry of `policy` and `key`.
    pub(crate) fn reset_now(&self, policy: &Policy, key: &Key) {
        let (name, text) = (policy.name(), key.as_str());
        let hash = self.inner.shards.hash(&(name, text));
        let mut shard = self.inner.shards.lock_hashed(hash);
        if let Ok(found) = shard
            .map
            .find_entry(hash, |e| e.hash == hash && e.is(name, text))
        {
            let (entry, _) = found.remove();
            shard.bytes -= entry.bytes();
        }
    }

    /// A refund, synchronously: gives back `cost` units (at most the
    /// ticket's) of the request `ticket` admitted, in the entry of `policy`
    /// and `key` (see `algorithm::refund`). A ticket of another backend, an
    /// entry that is gone, expired or of another shape: nothing to give
    /// back. Drops the entry once it counts nothing.
    pub(crate) fn refund_now(&self, policy: &Policy, key: &Key, cost: u64, ticket: &Ticket) {
        let Origin::Memory { at } = ticket.stamp.origin else {
            return;
        };
        let inner = &*self.inner;
        let now = inner.clock.now_micros();
        let (name, text) = (policy.name(), key.as_str());
        let hash = inner.shards.hash(&(name, text));
        let mut shard = inner.shards.lock_hashed(hash);
        let shard = &mut *shard;
        let algorithm = policy.algorithm_kind();
        let quotas = policy.quotas();
        let Ok(mut found) = shard.map.find_entry(hash, |e| e.is(name, text)) else {
            return;
        };
        let entry = found.get_mut();
        let live = entry.expires_at > now
            && entry.quotas.len() == quotas.len()
            && entry.quotas.iter().all(|q| q.matches(algorithm));
        if !live {
            return;
        }
        let before = entry.bytes();
        let refund = algorithm::Refund {
            now,
            at,
            admitted: ticket.stamp.cost,
            cost,
        };
        let keep = algorithm::refund(&mut entry.quotas, quotas, refund);
        if keep > 0 {
            entry.expires_at = now.saturating_add(keep);
            let after = entry.bytes();
            shard.bytes = shard.bytes - before + after;
        } else {
            found.remove();
            shard.bytes -= before;
        }
    }

    /// Sweeps done so far, over all shards (a test helper).
    #[cfg(test)]
    fn sweeps(&self) -> u64 {
        self.inner.shards.each().map(|s| s.sweeps).sum()
    }

    /// Every shard's entries, accounted bytes, and bytes recounted from its
    /// entries (a test helper).
    #[cfg(test)]
    fn shard_bytes(&self) -> Vec<(usize, usize, usize)> {
        self.inner
            .shards
            .each()
            .map(|s| (s.map.len(), s.bytes, s.map.iter().map(Entry::bytes).sum()))
            .collect()
    }

    /// The index of the shard holding `policy`'s `key` (a test helper).
    #[cfg(test)]
    fn shard_of(&self, policy: &Policy, key: &Key) -> usize {
        let hash = self.inner.shards.hash(&(policy.name(), key.as_str()));
        self.inner.shards.index_hashed(hash)
    }
}

/// The id of `policy`'s entry for `key`.
fn entry_id(policy: &str, key: &str) -> Box<str> {
    let mut id = String::with_capacity(policy.len() + 1 + key.len());
    id.push_str(policy);
    id.push('\0');
    id.push_str(key);
    id.into()
}

impl Backend for MemoryBackend {
    fn check(&self, policy: &Policy, key: &Key, cost: u64) -> CheckFuture {
        Box::pin(std::future::ready(Ok(self.decide_now(policy, key, cost))))
    }

    fn check_now(
        &self,
        policy: &Policy,
        key: &Key,
        cost: u64,
    ) -> Option<Result<crate::Decision, crate::BackendError>> {
        Some(Ok(self.decide_now(policy, key, cost)))
    }

    // Administration: peek and reset.

    fn peek(&self, policy: &Policy, key: &Key) -> CheckFuture {
        Box::pin(std::future::ready(Ok(self.peek_now(policy, key))))
    }

    fn reset(&self, policy: &Policy, key: &Key) -> ResetFuture {
        self.reset_now(policy, key);
        Box::pin(std::future::ready(Ok(())))
    }

    fn refund(&self, policy: &Policy, key: &Key, cost: u64, ticket: &Ticket) -> RefundFuture {
        self.refund_now(policy, key, cost, ticket);
        Box::pin(std::future::ready(Ok(())))
    }

    fn charge(&self, policy: &Policy, key: &Key, cost: u64) -> ChargeFuture {
        self.charge_now(policy, key, cost);
        Box::pin(std::future::ready(Ok(())))
    }

    fn metrics_label(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::time::Duration;

    use proptest::collection::vec;
    use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

    use super::*;
    use crate::algorithm::reference::{Reference, strategy};
    use crate::clock::FakeClock;
    use crate::{Algorithm, Quota};

    #[test]
    fn capacity_bounds_memory_and_expiry_frees_it() {
        let clock = FakeClock::new(1_000_000_000);
        let backend = MemoryBackend::builder()
            .clock(clock.clone())
            .capacity(64)
            .build()
            .unwrap();
        let policy = Policy::new("p").quota(Quota::per_second(1));
        for i in 0..10_000 {
            backend.decide_now(&policy, &Key::new(format!("c{i}")), 1);
        }
        assert!(backend.len() <= 64, "len {}", backend.len());
        clock.advance(Duration::from_secs(3));
        // Writes to a shard sweep it once it is full; every entry is expired.
        for i in 0..2_000 {
            backend.decide_now(&policy, &Key::new(format!("d{i}")), 1);
        }
        assert!(backend.len() <= 64);
        assert_eq!(
            MemoryBackend::builder()
                .clock(clock)
                .capacity(0)
                .build()
                .unwrap_err(),
            ConfigError::ZeroCapacity
        );
    }

    #[test]
    fn a_full_backend_answers_new_keys_in_o1_and_stays_bounded() {
        let clock = FakeClock::new(1_000_000_000);
        let capacity = 1024;
        let backend = MemoryBackend::builder()
            .clock(clock.clone())
            .capacity(capacity)
            .build()
            .unwrap();
        let policy = Policy::new("p").quota(Quota::per_minute(2));
        // Fill it with live entries, then rotate through many more keys.
        for i in 0..capacity {
            assert!(
                backend
                    .decide_now(&policy, &Key::new(format!("a{i}")), 1)
                    .is_allowed()
            );
        }
        let sweeps_when_full = backend.sweeps();
        let rotated = 20_000;
        for i in 0..rotated {
            let key = Key::new(format!("b{i}"));
            let decision = backend.decide_now(&policy, &key, 1);
            assert!(decision.is_allowed(), "a new key is answered: {i}");
            assert_eq!(decision.quotas()[0].remaining, 1);
            assert!(backend.len() <= capacity, "len {}", backend.len());
            // The newest client is tracked: its second request counts.
            if i % 1000 == 0 {
                assert_eq!(
                    backend.decide_now(&policy, &key, 1).quotas()[0].remaining,
                    0
                );
            }
        }
        assert_eq!(backend.len(), capacity, "full, not over-evicted");
        // Samples go round the whole map: the first clients, the closest to
        // expiry, were all evicted, wherever their hashes placed them.
        let first_kept = (0..capacity)
            .filter(|i| {
                let key = Key::new(format!("a{i}"));
                backend.peek_now(&policy, &key).quotas()[0].remaining == 1
            })
            .count();
        assert_eq!(first_kept, 0);
        // Sweeps (O(shard) each) happen at most once per shard-capacity
        // writes per shard: far fewer than one per new key.
        let per_shard = capacity / SHARDS;
        let sweeps = backend.sweeps() - sweeps_when_full;
        let bound = (rotated + rotated / 1000) / per_shard as u64 + SHARDS as u64;
        assert!(
            sweeps <= bound,
            "{sweeps} sweeps for {rotated} new keys (bound {bound})"
        );
        // Once everything has expired, new keys reuse the room.
        clock.advance(Duration::from_secs(61));
        for i in 0..2 * capacity {
            assert!(
                backend
                    .decide_now(&policy, &Key::new(format!("c{i}")), 1)
                    .is_allowed()
            );
            assert!(backend.len() <= capacity);
        }
        // The last client is tracked: its second request counts.
        let key = Key::new(format!("c{}", 2 * capacity - 1));
        assert_eq!(
            backend.decide_now(&policy, &key, 1).quotas()[0].remaining,
            0
        );
        assert_eq!(backend.len(), capacity);
    }

    #[test]
    fn policy_and_key_pairs_never_share_an_entry() {
        let backend = MemoryBackend::with_clock(FakeClock::new(1_000_000_000));
        let quota = Quota::per_minute(2);
        let (a, ab) = (
            Policy::new("a").quota(quota),
            Policy::new("ab").quota(quota),
        );
        let pairs = [(&a, "bc"), (&ab, "c"), (&a, "b"), (&ab, "")];
        for (policy, key) in pairs {
            let d = backend.decide_now(policy, &Key::new(key), 1);
            assert_eq!(d.quotas()[0].remaining, 1, "{} {key:?}", policy.name());
        }
        assert_eq!(backend.len(), 4);
        for (policy, key) in pairs {
            let d = backend.decide_now(policy, &Key::new(key), 1);
            assert_eq!(d.quotas()[0].remaining, 0, "{} {key:?}", policy.name());
        }
        assert_eq!(backend.len(), 4);
    }

    #[test]
    fn denied_first_request_keeps_nothing() {
        let backend = MemoryBackend::with_clock(FakeClock::new(5));
        let policy = Policy::new("p").quota(Quota::per_second(1));
        assert!(!backend.decide_now(&policy, &Key::new("a"), 2).is_allowed());
        assert!(backend.is_empty());
    }

    #[test]
    fn reset_drops_the_entry_and_peek_keeps_none() {
        let clock = FakeClock::new(1_000_000_000);
        let backend = MemoryBackend::with_clock(clock.clone());
        for &algorithm in Algorithm::ALL {
            let policy = Policy::new(format!("p-{algorithm:?}"))
                .algorithm(algorithm)
                .quota(Quota::per_second(2))
                .quota(Quota::per_minute(3));
            let (a, b) = (Key::new("a"), Key::new("b"));
            // A peek at an unknown client: the full quotas, no entry made.
            let d = backend.peek_now(&policy, &a);
            assert!(d.is_allowed());
            assert_eq!(d.quotas()[0].remaining, 2);
            assert_eq!(d.quotas()[1].remaining, 3);
            assert!(backend.is_empty(), "{algorithm:?}");
            for _ in 0..2 {
                assert!(backend.decide_now(&policy, &a, 1).is_allowed());
                assert!(backend.decide_now(&policy, &b, 1).is_allowed());
            }
            let d = backend.peek_now(&policy, &a);
            assert_eq!(d.denied_by(), Some(0), "{algorithm:?}");
            assert_eq!(d.quotas()[1].remaining, 1);
            backend.reset_now(&policy, &a);
            assert_eq!(backend.len(), 1, "{algorithm:?}: only a's entry left");
            let d = backend.peek_now(&policy, &a);
            assert!(d.is_allowed());
            assert_eq!(d.quotas()[0].remaining, 2);
            assert_eq!(d.quotas()[1].remaining, 3);
            // b is untouched.
            assert!(!backend.decide_now(&policy, &b, 1).is_allowed());
            backend.reset_now(&policy, &b);
            // Resetting what is not there is fine.
            backend.reset_now(&policy, &b);
            assert!(backend.is_empty(), "{algorithm:?}");
        }
    }

    /// Several policies (every algorithm, one to three quotas, two of equal
    /// windows) and clients on one backend, random request sequences with
    /// charges (into debt) mixed in: every decision, and a peek before it,
    /// agrees with the reference model of its (policy, client), and both
    /// outcomes occur often.
    #[test]
    fn matches_the_reference_models() {
        const MS: u64 = 1_000;
        const SEC: u64 = 1_000_000;
        const START: u64 = 86_400_000 * SEC;
        let quota_sets: [&[(u64, u64)]; 4] = [
            &[(7, SEC)],
            &[(5, SEC), (12, 4 * SEC)],
            &[(3, 250 * MS), (6, SEC), (20, 10 * SEC)],
            // Equal windows: both quotas often wait for the same unit (ties).
            &[(2, 500 * MS), (3, 500 * MS)],
        ];
        let mut policies = Vec::new();
        for &algorithm in Algorithm::ALL {
            for (i, quotas) in quota_sets.iter().enumerate() {
                let policy = quotas.iter().fold(
                    Policy::new(format!("random{i}-{algorithm:?}")).algorithm(algorithm),
                    |p, &(limit, w)| p.quota(Quota::new(limit, Duration::from_micros(w))),
                );
                policies.push(policy);
            }
        }
        let keys = [Key::new("k0"), Key::new("k1"), Key::new("k2")];
        let step = (
            strategy::advance(),
            0..policies.len(),
            0..keys.len(),
            strategy::cost(),
            proptest::bool::weighted(0.1),
        );
        let tally = Cell::new((0_u32, 0_u32));
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 128,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let result = runner.run(&vec(step, 1..300), |steps| {
            let clock = FakeClock::new(START);
            let backend = MemoryBackend::with_clock(clock.clone());
            let mut models: HashMap<(usize, usize), Reference> = HashMap::new();
            // Below the caps the reference does not model: at most 20
            // charges, each of at most the policy's smallest limit.
            let mut charges = 0;
            for (n, &(advance, pi, ki, cost, charging)) in steps.iter().enumerate() {
                clock.advance(Duration::from_micros(advance));
                let now = clock.now_micros();
                let policy = &policies[pi];
                let algorithm = policy.algorithm_kind();
                let model = models
                    .entry((pi, ki))
                    .or_insert_with(|| Reference::new(algorithm, policy.quotas()));
                // A peek first: it agrees with the model's and keeps nothing.
                let held = backend.len();
                let peeked = backend.peek_now(policy, &keys[ki]);
                model
                    .peek(now, algorithm::PEEK_COST)
                    .agrees(&peeked, algorithm)
                    .map_err(|e| TestCaseError::fail(format!("step {n}, peek: {e}")))?;
                if backend.len() != held {
                    return Err(TestCaseError::fail(format!(
                        "step {n}: a peek changed the map"
                    )));
                }
                if charging && charges < 20 {
                    charges += 1;
                    let smallest = policy.quotas().iter().map(Quota::limit).min();
                    let cost = cost.min(smallest.unwrap_or(0));
                    backend.charge_now(policy, &keys[ki], cost);
                    model.charge(now, cost);
                    continue;
                }
                let got = backend.decide_now(policy, &keys[ki], cost);
                model
                    .check(now, cost)
                    .agrees(&got, algorithm)
                    .map_err(|e| {
                        TestCaseError::fail(format!(
                            "step {n}: policy {} key {ki} cost {cost} at +{} us: {e}",
                            policy.name(),
                            now - START
                        ))
                    })?;
                let (admitted, denied) = tally.get();
                tally.set(if got.is_allowed() {
                    (admitted + 1, denied)
                } else {
                    (admitted, denied + 1)
                });
            }
            Ok(())
        });
        if let Err(error) = result {
            panic!("{error}");
        }
        let (admitted, denied) = tally.get();
        assert!(admitted > 1_000 && denied > 1_000, "{admitted} / {denied}");
    }

    /// A sliding log of `limit` units per hour.
    fn log_policy(name: &str, limit: u64) -> Policy {
        Policy::new(name)
            .algorithm(Algorithm::SlidingLog)
            .quota(Quota::per_hour(limit))
    }

    /// `n` keys of `policy` that land in `shard`, named `<prefix><i>`.
    fn keys_in_shard(
        backend: &MemoryBackend,
        policy: &Policy,
        shard: usize,
        prefix: &str,
        n: usize,
    ) -> Vec<Key> {
        (0..)
            .map(|i| Key::new(format!("{prefix}{i}")))
            .filter(|key| backend.shard_of(policy, key) == shard)
            .take(n)
            .collect()
    }

    /// Every shard's accounted bytes are its entries' bytes.
    fn assert_accounted(backend: &MemoryBackend) {
        for (i, (_, accounted, recounted)) in backend.shard_bytes().into_iter().enumerate() {
            assert_eq!(accounted, recounted, "shard {i}");
        }
    }

    #[test]
    fn a_client_costs_what_the_docs_say() {
        // The sizes `MemoryBackend`'s docs quote (64-bit targets).
        assert_eq!(ENTRY_BYTES, 57);
        assert_eq!(size_of::<QuotaState>(), 40);
        let backend = MemoryBackend::with_clock(FakeClock::new(1_000_000_000));
        let key = Key::new("203.0.113.7");
        for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
            let policy = Policy::new("api")
                .algorithm(algorithm)
                .quota(Quota::per_minute(100));
            backend.decide_now(&policy, &key, 1);
            // The entry, "api\0203.0.113.7", one state.
            assert_eq!(backend.bytes(), 112, "{algorithm:?}");
            backend.reset_now(&policy, &key);
        }
        let policy = log_policy("api", 5_000);
        for _ in 0..10 {
            backend.decide_now(&policy, &key, 500);
        }
        // Ten log entries in room for 16.
        assert_eq!(backend.bytes(), 112 + 16 * 16);
        assert_eq!(backend.len(), 1);
    }

    #[test]
    fn bytes_follow_every_decision_up_and_down() {
        let clock = FakeClock::new(1_000_000_000);
        let backend = MemoryBackend::with_clock(clock.clone());
        let policy = log_policy("log", 5_000);
        let key = Key::new("a");
        assert_eq!(backend.bytes(), 0);
        // Each admitted request is an entry of the log: the bytes grow with
        // the log's room, never shrink while it fills.
        let mut last = 0;
        for i in 0..1_000 {
            assert!(backend.decide_now(&policy, &key, 1).is_allowed());
            let bytes = backend.bytes();
            assert!(bytes >= last, "request {i}: {bytes} < {last}");
            assert!(
                bytes >= ENTRY_BYTES + 16 * (i + 1) && bytes <= ENTRY_BYTES + 100 + 32 * (i + 1),
                "request {i}: {bytes}"
            );
            last = bytes;
            assert_accounted(&backend);
        }
        // A denied request adds nothing.
        assert!(!backend.decide_now(&policy, &key, 4_001).is_allowed());
        assert_eq!(backend.bytes(), last);
        // A reset frees the entry.
        backend.reset_now(&policy, &key);
        assert_eq!(backend.bytes(), 0);
        // An expired entry starts afresh: back to one log entry.
        for _ in 0..100 {
            backend.decide_now(&policy, &key, 1);
        }
        let full = backend.bytes();
        clock.advance(Duration::from_secs(3_601));
        assert!(backend.decide_now(&policy, &key, 1).is_allowed());
        let fresh = backend.bytes();
        // The entry, "log\0a", one state, room for 4 log entries.
        assert_eq!(fresh, ENTRY_BYTES + 5 + 40 + 4 * 16, "of {full}");
        assert!(fresh < full);
        assert_accounted(&backend);
        // An expired entry whose request is denied is dropped.
        clock.advance(Duration::from_secs(3_601));
        assert!(!backend.decide_now(&policy, &key, 5_001).is_allowed());
        assert_eq!((backend.len(), backend.bytes()), (0, 0));
        // Sweeps free what they drop.
        let backend = MemoryBackend::builder()
            .clock(clock.clone())
            .capacity(1024)
            .build()
            .unwrap();
        let short = Policy::new("short").quota(Quota::per_second(1));
        for i in 0..5_000 {
            backend.decide_now(&short, &Key::new(format!("s{i}")), 1);
        }
        let sweeps = backend.sweeps();
        clock.advance(Duration::from_secs(2));
        for i in 0..20_000 {
            backend.decide_now(&policy, &Key::new(format!("t{i}")), 1);
            if i % 1_000 == 0 {
                assert_accounted(&backend);
            }
        }
        assert!(backend.sweeps() > sweeps);
        assert_accounted(&backend);
    }

    /// A backend on `clock` with the default capacity and `max_bytes` of
    /// counting state.
    fn budgeted(clock: &FakeClock, max_bytes: usize) -> MemoryBackend {
        MemoryBackend::builder()
            .clock(clock.clone())
            .max_bytes(max_bytes)
            .build()
            .unwrap()
    }

    #[test]
    fn the_byte_budget_keeps_every_shard_within_its_share() {
        let clock = FakeClock::new(1_000_000_000);
        // 4 KiB a shard: a few clients with small logs.
        let max_bytes = 64 << 10;
        let share = max_bytes / SHARDS;
        let backend = budgeted(&clock, max_bytes);
        let policy = log_policy("log", 5_000);
        let keys: Vec<Key> = (0..300).map(|i| Key::new(format!("k{i}"))).collect();
        for round in 0..40 {
            for key in &keys {
                assert!(backend.decide_now(&policy, key, 1).is_allowed());
                for (i, (len, accounted, recounted)) in
                    backend.shard_bytes().into_iter().enumerate()
                {
                    assert_eq!(accounted, recounted, "round {round}, shard {i}");
                    assert!(
                        accounted <= share,
                        "round {round}, shard {i}: {accounted} bytes in {len} entries"
                    );
                }
            }
            clock.advance(Duration::from_millis(1));
        }
        assert!(backend.bytes() <= max_bytes);
        // Fewer clients than were seen: the budget, not the capacity, bound
        // them.
        assert!(backend.len() < keys.len(), "{}", backend.len());
        assert_eq!(
            MemoryBackend::builder()
                .clock(clock.clone())
                .capacity(1)
                .max_bytes(0)
                .build()
                .unwrap_err(),
            ConfigError::ZeroByteBudget
        );
        assert_eq!(
            MemoryBackend::builder()
                .clock(clock)
                .capacity(0)
                .max_bytes(1)
                .build()
                .unwrap_err(),
            ConfigError::ZeroCapacity
        );
    }

    #[test]
    fn a_client_is_not_evicted_by_its_own_growth() {
        let clock = FakeClock::new(1_000_000_000);
        let max_bytes = 64 << 10;
        let share = max_bytes / SHARDS;
        let backend = budgeted(&clock, max_bytes);
        let policy = log_policy("log", 5_000);
        let heavy = Key::new("heavy");
        let shard = backend.shard_of(&policy, &heavy);
        let others = keys_in_shard(&backend, &policy, shard, "other", 10);
        for key in &others {
            backend.decide_now(&policy, key, 1);
        }
        assert_eq!(backend.len(), 10);
        // The heavy client's log grows past the shard's share: the others
        // make room, its own count is never forgotten.
        for n in 1..=1_000 {
            let decision = backend.decide_now(&policy, &heavy, 1);
            assert_eq!(decision.quotas()[0].remaining, 5_000 - n, "request {n}");
            let (len, bytes, _) = backend.shard_bytes()[shard];
            assert!(bytes <= share || len == 1, "request {n}: {bytes} in {len}");
        }
        // Alone over the share: kept, counting on.
        let (len, bytes, _) = backend.shard_bytes()[shard];
        assert_eq!(len, 1);
        assert!(bytes > share, "{bytes}");
        assert_eq!(
            backend.decide_now(&policy, &heavy, 1).quotas()[0].remaining,
            3_999
        );
        // A new client of the shard evicts it (its count is forgotten) and
        // the shard is back within its share.
        let newcomer = keys_in_shard(&backend, &policy, shard, "new", 1);
        backend.decide_now(&policy, &newcomer[0], 1);
        let (len, bytes, _) = backend.shard_bytes()[shard];
        assert_eq!(len, 1);
        assert!(bytes <= share);
        assert_eq!(
            backend.decide_now(&policy, &heavy, 1).quotas()[0].remaining,
            4_999
        );
        assert_accounted(&backend);
    }

    #[test]
    fn a_growing_client_evicts_expired_clients_first() {
        let clock = FakeClock::new(1_000_000_000);
        // 6 KiB a shard.
        let max_bytes = 96 << 10;
        let share = max_bytes / SHARDS;
        let backend = budgeted(&clock, max_bytes);
        let policy = log_policy("log", 5_000);
        let short = Policy::new("short")
            .algorithm(Algorithm::SlidingLog)
            .quota(Quota::per_second(100));
        let heavy = Key::new("heavy");
        let shard = backend.shard_of(&policy, &heavy);
        // Three live clients and three about to expire (20 log entries,
        // 618 or 620 bytes each), all in one sample.
        let live = keys_in_shard(&backend, &policy, shard, "live", 3);
        let expiring = keys_in_shard(&backend, &short, shard, "gone", 3);
        for _ in 0..20 {
            for key in &live {
                backend.decide_now(&policy, key, 1);
            }
            for key in &expiring {
                backend.decide_now(&short, key, 1);
            }
        }
        clock.advance(Duration::from_secs(2));
        // The heavy client grows until the shard must make room: from 2 154
        // bytes (128 log entries' room) to 4 202 (256), 7 916 in all.
        loop {
            backend.decide_now(&policy, &heavy, 1);
            if backend.len() < 7 {
                break;
            }
        }
        let (len, bytes, _) = backend.shard_bytes()[shard];
        assert!(bytes <= share, "{bytes}");
        // The expired ones went, and only they.
        assert_eq!(len, 4);
        for key in &live {
            let decision = backend.peek_now(&policy, key);
            assert_eq!(decision.quotas()[0].remaining, 4_980, "{key:?} kept");
        }
        assert_accounted(&backend);
    }
}
