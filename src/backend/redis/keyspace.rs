//! The key layout, in one place: every Redis key the backend writes, the
//! hash tag all keys of one decision share, and (feature `cluster`) the
//! hash slot of a tag and the slot groups (partitions) of a cluster.
//!
//! ```text
//! <prefix>:{<policy>:<client key>}:<tag><window in ms>   a quota's counts
//! <prefix>:{instances}                                   the fleet
//! ```
//!
//! Deployments keep their keys across versions (mixed-version fleets
//! during a rolling upgrade read each other's counts): the strings made
//! here never change.

use std::fmt;

use crate::key::Key;
use crate::policy::{Policy, Quota};

/// The hash tag every key of one decision shares: `<policy>:<client key>`,
/// written between braces in each key. Neither part can hold a brace
/// (validated policy names, sanitised keys), so Redis Cluster hashes
/// exactly this text, and all keys of a decision live in one slot (a script
/// may only touch keys of one slot).
#[derive(Clone, Copy, Debug)]
pub(super) struct HashTag<'a> {
    policy: &'a str,
    key: &'a str,
}

impl<'a> HashTag<'a> {
    /// The hash tag of `policy`'s decisions for `key`.
    pub(super) fn of(policy: &'a Policy, key: &'a Key) -> Self {
        Self {
            policy: policy.name(),
            key: key.as_str(),
        }
    }

    /// One of `n` groups (`0..n`, `n` at least 1), the same for every
    /// decision of the tag: FNV-1a over the tag's text. Spreads the
    /// decisions of a single node over its lanes (see
    /// `super::transport::LANES`); not the cluster's slot (no CRC16 needed).
    pub(super) fn spread(self, n: u16) -> u16 {
        let mut hash: u32 = 0x811c_9dc5;
        for part in [self.policy.as_bytes(), b":", self.key.as_bytes()] {
            for &byte in part {
                hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
            }
        }
        // The result is below `n`, itself a u16.
        u16::try_from(hash % u32::from(n.max(1))).unwrap_or(0)
    }

    /// The hash slot of every key of the decision.
    #[cfg(feature = "cluster")]
    pub(super) fn slot(self) -> u16 {
        slot_of_tag(&[self.policy.as_bytes(), b":", self.key.as_bytes()])
    }

    /// The partition (group of slots) of every key of the decision.
    #[cfg(feature = "cluster")]
    pub(super) fn partition(self) -> usize {
        partition_of_slot(self.slot())
    }
}

/// The tag's text, as it stands between the braces of a key.
impl fmt::Display for HashTag<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.policy)?;
        f.write_str(":")?;
        f.write_str(self.key)
    }
}

/// The Redis key of every quota of `policy` for `key`, in quota order:
/// `<prefix>:{<policy>:<key>}:<tag><window in ms>`, `tag` being the
/// algorithm's letter. All keys of one decision share one hash tag, hence one
/// cluster slot.
pub(super) fn keys(prefix: &str, policy: &Policy, key: &Key) -> Vec<String> {
    let list = KeyList::new(prefix, policy, key);
    list.iter(policy.quotas()).map(str::to_owned).collect()
}

/// The keys of [`keys`], written one after another into one string (one
/// allocation per decision, however many quotas): each is the common head
/// `<prefix>:{<policy>:<key>}:<tag>` followed by its quota's window in
/// milliseconds, so the quotas tell where each ends ([`KeyList::iter`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyList {
    text: String,
    /// The length of the head every key starts with.
    head: usize,
}

impl KeyList {
    /// The keys of every quota of `policy` for `key`.
    pub(super) fn new(prefix: &str, policy: &Policy, key: &Key) -> Self {
        let letter = policy.algorithm_kind().spec().tag;
        let (name, key) = (policy.name(), key.as_str());
        // `<prefix>:{<name>:<key>}:<letter>`.
        let head = prefix.len() + name.len() + key.len() + 5 + letter.len_utf8();
        let quotas = policy.quotas();
        let mut text = String::with_capacity(quotas.len() * (head + 20));
        let mut digits = itoa::Buffer::new();
        for quota in quotas {
            for part in [prefix, ":{", name, ":", key, "}:"] {
                text.push_str(part);
            }
            text.push(letter);
            text.push_str(digits.format(quota.window().as_millis()));
        }
        Self { text, head }
    }

    /// The keys, in the order of `quotas` (the quotas of the policy they
    /// were made for).
    pub(super) fn iter<'a>(&'a self, quotas: &'a [Quota]) -> impl Iterator<Item = &'a str> + 'a {
        let mut rest = self.text.as_str();
        quotas.iter().map(move |quota| {
            let len = self.head + decimal_digits(quota.window().as_millis());
            let (key, tail) = rest.split_at(len);
            rest = tail;
            key
        })
    }

    /// Every key, one after another.
    pub(super) fn as_str(&self) -> &str {
        &self.text
    }
}

/// How many decimal digits `n` has.
fn decimal_digits(n: u128) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// The key of a fleet's instances: `<prefix>:{instances}`. The limiter's
/// own keys are `<prefix>:{<policy>:<client>}:..`, whose hash tags hold a
/// colon, so none is this key.
pub(super) fn fleet_key(prefix: &str) -> String {
    format!("{prefix}:{{instances}}")
}

/// Redis Cluster's hash slots.
#[cfg(feature = "cluster")]
const SLOTS: u16 = 16_384;

/// The partitions of a cluster backend (see
/// [`Backend::partitions`](crate::Backend::partitions)): groups of
/// `16384 / PARTITIONS` consecutive hash slots, each with its own
/// circuit-breaker circuit. Masters own ranges of consecutive slots, so
/// a group is owned by one master, except a group straddling the
/// boundary between two masters' ranges: while one of those masters is
/// down, the other's keys in that group (at most 256 slots on each side
/// of each boundary) fail like the dead master's once the circuit opens.
/// 64 keeps that share small while each group still sees enough traffic
/// to notice a failure quickly.
#[cfg(feature = "cluster")]
pub(super) const PARTITIONS: usize = 64;

/// Redis Cluster's hash slot of `key` (CRC16/XMODEM of its hash tag, or
/// of the whole key when it has none), as `CLUSTER KEYSLOT` computes it.
#[cfg(all(test, feature = "cluster"))]
fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(0) | None => key,
            Some(len) => &key[open + 1..open + 1 + len],
        },
        None => key,
    };
    slot_of_tag(&[hashed])
}

/// The hash slot of a key whose hash tag is the concatenation of
/// `parts` (no allocation: the CRC runs over the parts in turn).
#[cfg(feature = "cluster")]
fn slot_of_tag(parts: &[&[u8]]) -> u16 {
    let mut crc = crc16::State::<crc16::XMODEM>::new();
    for part in parts {
        crc.update(part);
    }
    crc.get() % SLOTS
}

/// The partition of a hash slot.
#[cfg(feature = "cluster")]
fn partition_of_slot(slot: u16) -> usize {
    usize::from(slot) / (usize::from(SLOTS) / PARTITIONS)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::algorithm::Algorithm;
    use crate::policy::Quota;

    #[test]
    fn spread_is_stable_in_range_and_uses_every_group() {
        let policy = Policy::new("api").quota(Quota::per_minute(10));
        let mut seen = [0u32; 2];
        for n in 0..1000 {
            let key = Key::new(format!("client-{n}"));
            let group = HashTag::of(&policy, &key).spread(2);
            assert_eq!(group, HashTag::of(&policy, &key).spread(2), "stable");
            seen[usize::from(group)] += 1;
            assert_eq!(HashTag::of(&policy, &key).spread(1), 0);
            assert_eq!(HashTag::of(&policy, &key).spread(0), 0, "0 groups: one");
        }
        // FNV-1a spreads 1 000 keys over two groups nearly evenly.
        assert!(seen.iter().all(|&n| (400..=600).contains(&n)), "{seen:?}");
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let key = Key::new("203.0.113.9");
        let log = Policy::auth().quota(Quota::per_hour(50));
        assert_eq!(
            keys("rl", &log, &key),
            [
                "rl:{auth:203.0.113.9}:w60000",
                "rl:{auth:203.0.113.9}:w3600000"
            ]
        );
        let counter = Policy::default_api().quota(Quota::new(5, Duration::from_millis(1500)));
        assert_eq!(
            keys("app:v2", &counter, &key),
            [
                "app:v2:{api:203.0.113.9}:c60000",
                "app:v2:{api:203.0.113.9}:c1500"
            ]
        );
        let gcra = Policy::new("pay")
            .algorithm(Algorithm::Gcra)
            .quota(Quota::per_second(10));
        assert_eq!(keys("rl", &gcra, &key), ["rl:{pay:203.0.113.9}:g1000"]);
        assert!(keys("rl", &Policy::new("none"), &key).is_empty());
        assert_eq!(HashTag::of(&gcra, &key).to_string(), "pay:203.0.113.9");
    }

    #[test]
    fn a_key_list_holds_the_keys_one_after_another() {
        let key = Key::new("203.0.113.9");
        let policy = Policy::new("p")
            .quota(Quota::per_second(1))
            .quota(Quota::new(1, Duration::from_millis(9)))
            .quota(Quota::new(1, Duration::from_millis(10)))
            .quota(Quota::per_hour(2));
        let list = KeyList::new("rl", &policy, &key);
        let want: Vec<String> = (policy.quotas().iter())
            .map(|q| format!("rl:{{p:203.0.113.9}}:c{}", q.window().as_millis()))
            .collect();
        let got: Vec<&str> = list.iter(policy.quotas()).collect();
        assert_eq!(got, want);
        assert_eq!(list.as_str(), want.concat());
        for n in [0u128, 1, 9, 10, 99, 100, 12_345, u128::from(u64::MAX)] {
            assert_eq!(decimal_digits(n), n.to_string().len(), "{n}");
        }
    }

    #[test]
    fn the_fleet_key_is_one_hash_tag_no_decision_key_has() {
        assert_eq!(fleet_key("rl"), "rl:{instances}");
        let policy = Policy::new("instances").quota(Quota::per_minute(1));
        let decision_keys = keys("rl", &policy, &Key::new("x"));
        assert!(
            decision_keys
                .iter()
                .all(|k| !k.starts_with("rl:{instances}"))
        );
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn slots_follow_redis_hash_tags() {
        // Values of `CLUSTER KEYSLOT` (the cluster tests compare with a
        // live server too).
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"bar"), 5_061);
        assert_eq!(slot(b"{foo}:anything"), 12_182);
        assert_eq!(slot(b"x{foo}y{bar}"), 12_182, "the first tag counts");
        assert_eq!(slot(b"{}foo"), slot(b"{}foo"), "an empty tag hashes all");
        assert_ne!(slot(b"{}foo"), slot(b""));
        assert_eq!(slot(b"{foo"), slot(b"{foo"));
        assert_eq!(slot_of_tag(&[b"f", b"o", b"o"]), 12_182);
        assert_eq!(partition_of_slot(12_182), 12_182 / 256);
        assert_eq!(partition_of_slot(SLOTS - 1), PARTITIONS - 1);
        assert!((0..=255u8).all(|b| partition_of_slot(slot_of_tag(&[&[b]])) < PARTITIONS));
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn a_decision_hashes_its_keys_tag() {
        let key = Key::new("203.0.113.9");
        let policy = Policy::auth().quota(Quota::per_hour(50));
        let tag = HashTag::of(&policy, &key);
        for k in keys("rl", &policy, &key) {
            assert_eq!(slot(k.as_bytes()), tag.slot(), "{k}");
        }
        assert_eq!(tag.slot(), slot(b"auth:203.0.113.9"));
        assert_eq!(tag.partition(), partition_of_slot(tag.slot()));
    }
}
