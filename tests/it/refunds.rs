//! Refunds on real `redis-server`s, looking at the keys themselves (the
//! outcomes are `tests/it/conformance.rs`' `refund_*` scenarios, on memory,
//! Redis and a cluster):
//!
//! - every key a refund leaves has a TTL, and a key that counts nothing any
//!   more is deleted;
//! - a key of the wrong type fails the refund alone, with the key fault a
//!   check gives (`BackendError::Key`); a value that is not ours is left
//!   as it is;
//! - a flushed script cache is reloaded;
//! - a ticket of another backend, a refund of nothing and a cost above the
//!   ticket's: nothing, or the ticket's cost, is given back.

use redis::Commands;
use tower_redis_ratelimit::{
    Algorithm, Backend, BackendError, Decision, Key, MemoryBackend, Policy, Quota, RedisBackend,
    Ticket,
};

use crate::support;

const ALGORITHMS: [Algorithm; 3] = [
    Algorithm::SlidingLog,
    Algorithm::SlidingWindow,
    Algorithm::Gcra,
];

/// 5 per minute and 8 per hour.
fn policy(algorithm: Algorithm) -> Policy {
    Policy::new(format!("refund-{algorithm:?}"))
        .algorithm(algorithm)
        .quota(Quota::per_minute(5))
        .quota(Quota::per_hour(8))
}

fn remaining(d: &Decision) -> Vec<u64> {
    d.quotas().iter().map(|q| q.remaining).collect()
}

async fn admit(backend: &RedisBackend, policy: &Policy, key: &Key, cost: u64) -> Ticket {
    let d = backend.check(policy, key, cost).await.unwrap();
    assert!(d.is_allowed(), "{d:?}");
    d.ticket().expect("an admission has a ticket")
}

/// Each of `keys`' TTL in ms, or `None` if it does not exist; a key
/// without a TTL fails the test.
fn ttls(conn: &mut redis::Connection, keys: &[String]) -> Vec<Option<i64>> {
    keys.iter()
        .map(|key| {
            let ttl: i64 = redis::cmd("PTTL").arg(key).query(conn).unwrap();
            assert_ne!(ttl, -1, "{key} has no TTL");
            (ttl != -2).then_some(ttl)
        })
        .collect()
}

#[tokio::test]
async fn refunds_leave_every_key_with_a_ttl_and_delete_what_counts_nothing() {
    let url = support::redis_url();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    for algorithm in ALGORITHMS {
        let backend = support::redis_backend(&url, "refund-ttl");
        let p = policy(algorithm);
        let key = Key::new("203.0.113.9");
        let keys = backend.redis_keys(&p, &key);
        let mut tickets = Vec::new();
        for cost in [1, 2, 1] {
            tickets.push((cost, admit(&backend, &p, &key, cost).await));
        }
        assert_eq!(remaining(&backend.peek(&p, &key).await.unwrap()), [1, 4]);
        // Part of the middle one, then the newest, then the oldest.
        let (_, middle) = tickets.remove(1);
        backend.refund(&p, &key, 1, &middle).await.unwrap();
        let seen = backend.peek(&p, &key).await.unwrap();
        assert_eq!(remaining(&seen), [2, 5], "{algorithm:?}");
        for ttl in ttls(&mut conn, &keys) {
            let ttl = ttl.expect("the keys still count");
            assert!(ttl > 0 && ttl <= 7_200_000, "{algorithm:?}: {ttl}");
        }
        let (_, newest) = tickets.pop().unwrap();
        backend.refund(&p, &key, 1, &newest).await.unwrap();
        let (_, oldest) = tickets.pop().unwrap();
        backend.refund(&p, &key, 1, &oldest).await.unwrap();
        let seen = backend.peek(&p, &key).await.unwrap();
        assert_eq!(remaining(&seen), [4, 7], "{algorithm:?}");
        let minute = ttls(&mut conn, &keys)[0].expect("one unit still counts");
        // The minute quota's key lives no longer than its state matters
        // (the log: its entry's minute; the counter: two fixed windows;
        // GCRA: one unit's interval).
        assert!(minute > 0 && minute <= 120_000, "{algorithm:?}: {minute}");

        // A client whose only request is refunded: nothing counts, nothing
        // is kept.
        let alone = Key::new("198.51.100.7");
        let ticket = admit(&backend, &p, &alone, 3).await;
        backend.refund(&p, &alone, 3, &ticket).await.unwrap();
        let keys = backend.redis_keys(&p, &alone);
        assert_eq!(ttls(&mut conn, &keys), [None, None], "{algorithm:?}");
        let seen = backend.peek(&p, &alone).await.unwrap();
        assert_eq!(remaining(&seen), [5, 8], "{algorithm:?}");
    }
}

#[tokio::test]
async fn a_refund_of_a_key_of_another_type_fails_alone() {
    let url = support::redis_url();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    for algorithm in ALGORITHMS {
        let backend = support::redis_backend(&url, "refund-fault");
        let p = policy(algorithm);
        let (a, b) = (Key::new("a"), Key::new("b"));
        let ticket_a = admit(&backend, &p, &a, 1).await;
        let ticket_b = admit(&backend, &p, &b, 1).await;
        // A's hour key becomes a list: of another type for every algorithm.
        let hour = backend.redis_keys(&p, &a)[1].clone();
        let _: () = conn.del(&hour).unwrap();
        let _: () = conn.rpush(&hour, "not ours").unwrap();
        let check = backend.check(&p, &a, 1).await;
        assert!(
            matches!(&check, Err(BackendError::Key(e)) if e.contains("WRONGTYPE")),
            "{algorithm:?}: {check:?}"
        );
        let refund = backend.refund(&p, &a, 1, &ticket_a).await;
        assert!(
            matches!(&refund, Err(BackendError::Key(e)) if e.contains("WRONGTYPE")),
            "{algorithm:?}: {refund:?}"
        );
        // The refund wrote nothing: a's minute key still counts its request.
        let minute: i64 = conn.exists(&backend.redis_keys(&p, &a)[0]).unwrap();
        assert_eq!(minute, 1, "{algorithm:?}");
        // B is not affected.
        backend.refund(&p, &b, 1, &ticket_b).await.unwrap();
        assert_eq!(
            remaining(&backend.peek(&p, &b).await.unwrap()),
            [5, 8],
            "{algorithm:?}"
        );
    }
    // A string that is not ours, where the counter or GCRA expects theirs,
    // is left as it is.
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let backend = support::redis_backend(&url, "refund-foreign");
        let p = policy(algorithm);
        let key = Key::new("c");
        let ticket = admit(&backend, &p, &key, 1).await;
        let minute = backend.redis_keys(&p, &key)[0].clone();
        let _: () = conn.set_ex(&minute, "someone else's", 60).unwrap();
        backend.refund(&p, &key, 1, &ticket).await.unwrap();
        let value: String = conn.get(&minute).unwrap();
        assert_eq!(value, "someone else's", "{algorithm:?}");
    }
}

#[tokio::test]
async fn a_refund_reloads_a_flushed_script_cache() {
    let server = support::RedisServer::start();
    let backend = RedisBackend::new(&server.url()).unwrap();
    let mut conn = server.conn();
    for algorithm in ALGORITHMS {
        let p = policy(algorithm);
        let key = Key::new("flushed");
        let ticket = admit(&backend, &p, &key, 2).await;
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
        backend.refund(&p, &key, 2, &ticket).await.unwrap();
        let seen = backend.peek(&p, &key).await.unwrap();
        assert_eq!(remaining(&seen), [5, 8], "{algorithm:?}");
    }
}

#[tokio::test]
async fn tickets_give_back_at_most_what_their_backend_took() {
    let url = support::redis_url();
    let redis = support::redis_backend(&url, "refund-foreign-ticket");
    let memory = MemoryBackend::new();
    for algorithm in ALGORITHMS {
        let p = policy(algorithm);
        let key = Key::new("d");
        let on_redis = admit(&redis, &p, &key, 2).await;
        let d = memory.check(&p, &key, 2).await.unwrap();
        let on_memory = d.ticket().unwrap();
        assert_eq!((on_redis.cost(), on_memory.cost()), (2, 2));
        // Each backend took nothing of the other's ticket.
        redis.refund(&p, &key, 2, &on_memory).await.unwrap();
        memory.refund(&p, &key, 2, &on_redis).await.unwrap();
        assert_eq!(remaining(&redis.peek(&p, &key).await.unwrap()), [3, 6]);
        assert_eq!(remaining(&memory.peek(&p, &key).await.unwrap()), [3, 6]);
        // A refund of nothing gives nothing back; one of more than the
        // request took, what it took.
        redis.refund(&p, &key, 0, &on_redis).await.unwrap();
        memory.refund(&p, &key, 0, &on_memory).await.unwrap();
        assert_eq!(remaining(&redis.peek(&p, &key).await.unwrap()), [3, 6]);
        let other = admit(&redis, &p, &key, 1).await;
        memory.check(&p, &key, 1).await.unwrap();
        redis.refund(&p, &key, u64::MAX, &on_redis).await.unwrap();
        memory.refund(&p, &key, u64::MAX, &on_memory).await.unwrap();
        assert_eq!(remaining(&redis.peek(&p, &key).await.unwrap()), [4, 7]);
        assert_eq!(remaining(&memory.peek(&p, &key).await.unwrap()), [4, 7]);
        // A denial and a check of cost 0 took nothing: no ticket.
        let denied = redis.check(&p, &key, 5).await.unwrap();
        assert!(!denied.is_allowed() && denied.ticket().is_none());
        assert!(redis.check(&p, &key, 0).await.unwrap().ticket().is_none());
        redis.refund(&p, &key, 1, &other).await.unwrap();
    }
}
