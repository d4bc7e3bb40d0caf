//! The in-process backend.

use std::sync::Arc;

use hashbrown::HashTable;

use super::{Backend, CheckFuture, ResetFuture};
use crate::algorithm::{self, QuotaState};
use crate::clock::{Clock, SystemClock};
use crate::error::ConfigError;
use crate::key::Key;
use crate::policy::Policy;
use crate::sharded::{SHARDS, Sharded};
/// A shard drops its expired entries every this many writes, or every
/// shard-capacity writes if that is more (so a sweep costs O(1) amortised).
const SWEEP_EVERY: usize = 1024;
/// When a full shard needs room and no sweep is due, the entry closest to
/// expiry among this many (the first ones the map yields) is evicted.
const EVICTION_SAMPLE: usize = 8;

/// In-process counters with the same algorithms and outcomes as
/// [`RedisBackend`](super::RedisBackend).
///
/// State lives in a sharded map of `(policy, key)` entries. Memory is bounded:
/// entries are dropped once their counts have left every window, and the
/// number of tracked clients is capped ([`MemoryBackend::with_capacity`],
/// default 100 000). When the map is full, a new client first makes the shard
/// drop its expired entries (at most once per shard-capacity writes); if
/// none is due or it freed nothing, the entry closest to expiry among a small
/// sample is evicted, which forgets that client's count (as Redis does under
/// `allkeys-lru`). Either way a new client costs O(1) amortised.
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
    per_shard: usize,
}

/// A shard's entries, placed by the hash that chose the shard (SipHash with
/// random keys: client keys are attacker-chosen), so each decision hashes
/// its key once and allocates nothing for a known client.
struct Shard {
    map: HashTable<Entry>,
    /// Writes since the last sweep.
    writes: usize,
    /// Sweeps so far (a test helper).
    sweeps: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            map: HashTable::new(),
            writes: 0,
            sweeps: 0,
        }
    }
}

impl Shard {
    /// Drops the entries expired at `now`.
    fn sweep(&mut self, now: u64) {
        self.map.retain(|e| e.expires_at > now);
        self.writes = 0;
        self.sweeps += 1;
    }

    /// Makes room for one new entry in a shard holding `capacity` or more:
    /// sweeps when one is due, else evicts the entry closest to expiry among
    /// a sample (an expired one when the sample holds any).
    fn make_room(&mut self, capacity: usize, now: u64) {
        if self.map.len() < capacity {
            return;
        }
        if self.writes >= capacity {
            self.sweep(now);
        }
        while self.map.len() >= capacity {
            let Some((hash, id)) = self
                .map
                .iter()
                .take(EVICTION_SAMPLE)
                .min_by_key(|e| e.expires_at)
                .map(|e| (e.hash, e.id.as_ptr()))
            else {
                return;
            };
            if let Ok(victim) = self.map.find_entry(hash, |e| e.id.as_ptr() == id) {
                victim.remove();
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
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field(
                "capacity",
                &(self.inner.per_shard * self.inner.shards.count()),
            )
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
                shards: Sharded::new(SHARDS, Shard::default),
                per_shard: capacity.div_ceil(SHARDS),
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

    /// The decision, synchronously: the [`Backend`] impl wraps this, and
    /// [`FailureMode::Local`](crate::FailureMode::Local) decides with it.
    pub(crate) fn check_now(&self, policy: &Policy, key: &Key, cost: u64) -> crate::Decision {
        let inner = &*self.inner;
        let now = inner.clock.now_micros();
        let (name, text) = (policy.name(), key.as_str());
        let hash = inner.shards.hash(&(name, text));
        let mut shard = inner.shards.lock_hashed(hash);

        let algorithm = policy.algorithm_kind();
        let quotas = policy.quotas();
        let fresh_quotas = || quotas.iter().map(|_| QuotaState::new(algorithm)).collect();
        let shard = &mut *shard;
        let (decision, keep) = match shard.map.find_entry(hash, |e| e.is(name, text)) {
            Ok(mut found) => {
                let entry = found.get_mut();
                let stale = entry.expires_at <= now
                    || entry.quotas.len() != quotas.len()
                    || !entry.quotas.iter().all(|q| q.matches(algorithm));
                if stale {
                    entry.quotas = fresh_quotas();
                }
                let (decision, keep) = algorithm::check(&mut entry.quotas, quotas, now, cost);
                if keep > 0 {
                    entry.expires_at = now.saturating_add(keep);
                } else {
                    // Nothing counts any more: the entry would only take room.
                    found.remove();
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
                let (decision, keep) = algorithm::check(&mut entry.quotas, quotas, now, cost);
                if keep > 0 {
                    entry.expires_at = now.saturating_add(keep);
                    shard.make_room(inner.per_shard, now);
                    shard.map.insert_unique(hash, entry, |e| e.hash);
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
        match shard.map.find(hash, |e| e.is(name, text)) {
            // The entry `check_now` would use as it is.
            Some(entry)
                if entry.expires_at > now
                    && entry.quotas.len() == quotas.len()
                    && entry.quotas.iter().all(|q| q.matches(algorithm)) =>
            {
                algorithm::peek(&entry.quotas, quotas, now)
            }
            // None, or one `check_now` would start afresh.
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
        if let Ok(found) = shard.map.find_entry(hash, |e| e.is(name, text)) {
            found.remove();
        }
    }

    /// Sweeps done so far, over all shards (a test helper).
    #[cfg(test)]
    fn sweeps(&self) -> u64 {
        self.inner.shards.each().map(|s| s.sweeps).sum()
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
        Box::pin(std::future::ready(Ok(self.check_now(policy, key, cost))))
    }

    // Administration: peek and reset.

    fn peek(&self, policy: &Policy, key: &Key) -> CheckFuture {
        Box::pin(std::future::ready(Ok(self.peek_now(policy, key))))
    }

    fn reset(&self, policy: &Policy, key: &Key) -> ResetFuture {
        self.reset_now(policy, key);
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
    fn a_full_backend_answers_new_keys_in_o1_and_stays_bounded() {
        let clock = FakeClock::new(1_000_000_000);
        let capacity = 1024;
        let backend = MemoryBackend::with_capacity(clock.clone(), capacity).unwrap();
        let policy = Policy::new("p").quota(Quota::per_minute(2));
        // Fill it with live entries, then rotate through many more keys.
        for i in 0..capacity {
            assert!(
                backend
                    .check_now(&policy, &Key::new(format!("a{i}")), 1)
                    .is_allowed()
            );
        }
        let sweeps_when_full = backend.sweeps();
        let rotated = 20_000;
        for i in 0..rotated {
            let key = Key::new(format!("b{i}"));
            let decision = backend.check_now(&policy, &key, 1);
            assert!(decision.is_allowed(), "a new key is answered: {i}");
            assert_eq!(decision.quotas()[0].remaining, 1);
            assert!(backend.len() <= capacity, "len {}", backend.len());
            // The newest client is tracked: its second request counts.
            if i % 1000 == 0 {
                assert_eq!(backend.check_now(&policy, &key, 1).quotas()[0].remaining, 0);
            }
        }
        assert_eq!(backend.len(), capacity, "full, not over-evicted");
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
                    .check_now(&policy, &Key::new(format!("c{i}")), 1)
                    .is_allowed()
            );
            assert!(backend.len() <= capacity);
        }
        // The last client is tracked: its second request counts.
        let key = Key::new(format!("c{}", 2 * capacity - 1));
        assert_eq!(backend.check_now(&policy, &key, 1).quotas()[0].remaining, 0);
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
            let d = backend.check_now(policy, &Key::new(key), 1);
            assert_eq!(d.quotas()[0].remaining, 1, "{} {key:?}", policy.name());
        }
        assert_eq!(backend.len(), 4);
        for (policy, key) in pairs {
            let d = backend.check_now(policy, &Key::new(key), 1);
            assert_eq!(d.quotas()[0].remaining, 0, "{} {key:?}", policy.name());
        }
        assert_eq!(backend.len(), 4);
    }

    #[test]
    fn denied_first_request_keeps_nothing() {
        let backend = MemoryBackend::with_clock(FakeClock::new(5));
        let policy = Policy::new("p").quota(Quota::per_second(1));
        assert!(!backend.check_now(&policy, &Key::new("a"), 2).is_allowed());
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
                assert!(backend.check_now(&policy, &a, 1).is_allowed());
                assert!(backend.check_now(&policy, &b, 1).is_allowed());
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
            assert!(!backend.check_now(&policy, &b, 1).is_allowed());
            backend.reset_now(&policy, &b);
            // Resetting what is not there is fine.
            backend.reset_now(&policy, &b);
            assert!(backend.is_empty(), "{algorithm:?}");
        }
    }

    /// Several policies (every algorithm, one to three quotas, two of equal
    /// windows) and clients on one backend, random request sequences: every
    /// decision, and a peek before it, agrees with the reference model of its
    /// (policy, client), and both outcomes occur often.
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
            for (n, &(advance, pi, ki, cost)) in steps.iter().enumerate() {
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
                let got = backend.check_now(policy, &keys[ki], cost);
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
}
