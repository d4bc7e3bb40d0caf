//! What the Redis backend leaves in Redis: key layout, hash tags and TTLs;
//! hostile client identities; configuration errors.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tower_redis_ratelimit::{
    Algorithm, Backend, ConfigError, Key, Policy, Quota, RedisBackend, key::MAX_READABLE_LEN,
};

use crate::support;

const MS: u64 = 1_000;
const SEC: u64 = 1_000_000;

fn sync_conn(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection()
        .expect("connect to the test redis-server")
}

/// Every key matching `pattern`, by SCAN (bounded), as raw bytes.
fn scan(conn: &mut redis::Connection, pattern: &str) -> BTreeSet<Vec<u8>> {
    let mut keys = BTreeSet::new();
    let mut cursor: u64 = 0;
    for _ in 0..100_000 {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .expect("SCAN");
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            return keys;
        }
    }
    panic!("SCAN did not finish");
}

fn redis_now_us(conn: &mut redis::Connection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(conn).unwrap();
    s * SEC + us
}

/// The hash tag Redis Cluster hashes: the text between the first `{` and the
/// first `}` after it, if non-empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = open + 1 + key[open + 1..].find('}')?;
    (close > open + 1).then(|| &key[open + 1..close])
}

fn window_us(q: &Quota) -> u64 {
    u64::try_from(q.window().as_micros()).unwrap()
}

#[tokio::test]
async fn every_key_has_a_tight_ttl_and_the_documented_layout() {
    let url = support::redis_url();
    let prefix = support::unique_prefix("layout");
    let backend = RedisBackend::builder(url.as_str())
        .prefix(prefix.as_str())
        .build()
        .unwrap();
    use Algorithm::{Gcra, SlidingLog, SlidingWindow};
    let policies = [
        Policy::new("log-min")
            .algorithm(SlidingLog)
            .quota(Quota::per_minute(5)),
        Policy::new("win-2s")
            .algorithm(SlidingWindow)
            .quota(Quota::new(5, Duration::from_secs(2))),
        Policy::new("multi-log")
            .algorithm(SlidingLog)
            .quota(Quota::per_second(2))
            .quota(Quota::per_minute(3)),
        Policy::new("multi-win")
            .algorithm(SlidingWindow)
            .quota(Quota::per_second(2))
            .quota(Quota::per_minute(3))
            .quota(Quota::per_hour(4)),
        Policy::new("short-log")
            .algorithm(SlidingLog)
            .quota(Quota::new(3, Duration::from_millis(300))),
        Policy::new("short-win")
            .algorithm(SlidingWindow)
            .quota(Quota::new(3, Duration::from_millis(300))),
        Policy::new("gcra-min")
            .algorithm(Gcra)
            .quota(Quota::per_minute(5)),
        Policy::new("multi-gcra")
            .algorithm(Gcra)
            .quota(Quota::per_second(2))
            .quota(Quota::per_hour(4)),
        Policy::new("short-gcra")
            .algorithm(Gcra)
            .quota(Quota::new(3, Duration::from_millis(300))),
    ];
    let keys = [
        Key::new("alice"),
        Key::new("203.0.113.9"),
        Key::from_ip("2001:db8::1".parse().unwrap(), 64),
        Key::new("{not-a-tag}"),
    ];
    let mut expected: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for (pi, p) in policies.iter().enumerate() {
        for (ki, k) in keys.iter().enumerate() {
            let mut admitted = 0;
            for i in 0..6 {
                let cost = if i == 2 { 2 } else { 1 };
                let d = backend.check(p, k, cost).await.expect("no redis error");
                admitted += u32::from(d.is_allowed());
            }
            assert!(admitted >= 2, "{} / {k}: {admitted}", p.name());
            for (qi, name) in backend.redis_keys(p, k).into_iter().enumerate() {
                expected.insert(name, (pi, ki, qi));
            }
        }
        // A client whose only request was denied leaves nothing behind.
        let d = backend
            .check(p, &Key::new("never-admitted"), 100)
            .await
            .unwrap();
        assert!(!d.is_allowed());
    }

    let mut conn = sync_conn(&url);
    let found: BTreeSet<String> = scan(&mut conn, &format!("{prefix}:*"))
        .into_iter()
        .map(|k| String::from_utf8(k).expect("keys are UTF-8"))
        .collect();
    let expected_names: BTreeSet<String> = expected.keys().cloned().collect();
    assert_eq!(
        found, expected_names,
        "exactly one key per quota of every admitted client"
    );

    let now = redis_now_us(&mut conn);
    for (name, &(pi, ki, qi)) in &expected {
        let (p, k) = (&policies[pi], &keys[ki]);
        let q = &p.quotas()[qi];
        let w = window_us(q);
        // Layout: <prefix>:{<policy>:<key>}:<w|c|g><window in ms>.
        let letter = match p.algorithm_kind() {
            SlidingLog => 'w',
            SlidingWindow => 'c',
            _ => 'g',
        };
        assert_eq!(
            name,
            &format!(
                "{prefix}:{{{}:{}}}:{letter}{}",
                p.name(),
                k.as_str(),
                q.window().as_millis()
            )
        );
        // All keys of one decision hash by the same tag (one slot).
        assert_eq!(
            hash_tag(name),
            Some(format!("{}:{}", p.name(), k.as_str()).as_str()),
            "{name}"
        );
        let pttl: i64 = redis::cmd("PTTL").arg(name).query(&mut conn).unwrap();
        let ty: String = redis::cmd("TYPE").arg(name).query(&mut conn).unwrap();
        // No longer than the data matters, measured from now (+2 ms rounding).
        let needed_ms = if letter == 'w' {
            assert_eq!(ty, "zset", "{name}");
            let card: u64 = redis::cmd("ZCARD").arg(name).query(&mut conn).unwrap();
            assert!((1..=q.limit()).contains(&card), "{name}: {card} entries");
            let newest: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(name)
                .arg(-1)
                .arg(-1)
                .arg("WITHSCORES")
                .query(&mut conn)
                .unwrap();
            let newest = newest[0].1 as u64;
            // The newest entry leaves the window at newest + W.
            (newest + w).saturating_sub(now).div_ceil(MS)
        } else if letter == 'c' {
            // A string "<start> <count> <previous count>".
            assert_eq!(ty, "string", "{name}");
            let value: String = redis::cmd("GET").arg(name).query(&mut conn).unwrap();
            let fields: Vec<u64> = value
                .split(' ')
                .map(|f| f.parse().expect("whole numbers"))
                .collect();
            let [s, c, p] = fields[..] else {
                panic!("{name}: {value:?}")
            };
            assert!((1..=q.limit()).contains(&c), "{name}: count {c}");
            assert!(p <= q.limit(), "{name}: previous count {p}");
            assert_eq!(s % w, 0, "{name}: window start {s} is aligned");
            // The current window's count stops mattering two windows after its start.
            (s + 2 * w).saturating_sub(now).div_ceil(MS)
        } else {
            // A string: the theoretical arrival time in µs, at most the
            // tolerance (limit × interval) ahead.
            assert_eq!(ty, "string", "{name}");
            let tat: u64 = redis::cmd("GET").arg(name).query(&mut conn).unwrap();
            let tolerance = q.limit() * w.div_ceil(q.limit());
            assert!(tat > now && tat <= now + tolerance, "{name}: TAT {tat}");
            // Nothing counts once the TAT has passed.
            (tat - now).div_ceil(MS)
        };
        let max_ms = match letter {
            'w' => w / MS,
            'c' => 2 * w / MS,
            _ => (q.limit() * w.div_ceil(q.limit())).div_ceil(MS),
        };
        assert!(pttl > 0, "{name}: no TTL ({pttl})");
        let pttl = pttl as u64;
        assert!(pttl <= max_ms, "{name}: PTTL {pttl} ms > {max_ms} ms");
        assert!(
            pttl <= needed_ms + 2,
            "{name}: PTTL {pttl} ms, needed only {needed_ms} ms"
        );
    }

    // The TTLs really expire: the 300 ms policies' keys are gone after
    // 2 x 300 ms (+ margin), the longer ones are still there.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for (name, &(pi, ..)) in &expected {
        let exists: bool = redis::cmd("EXISTS").arg(name).query(&mut conn).unwrap();
        let short = policies[pi].name().starts_with("short-");
        let long = policies[pi]
            .quotas()
            .iter()
            .all(|q| q.window() >= Duration::from_secs(60));
        if short {
            assert!(!exists, "{name} outlived its windows");
        } else if long {
            assert!(exists, "{name} expired early");
        }
    }
    // And a client whose keys expired starts from a full quota.
    let d = backend.check(&policies[4], &keys[0], 1).await.unwrap();
    assert!(d.is_allowed());
    assert_eq!(d.quotas()[0].remaining, 2);
}

/// Identities a client could send, each with a reason to be scary.
fn hostile_identities(prefix: &str) -> Vec<Vec<u8>> {
    let ten_kb = "x".repeat(10 * 1024).into_bytes();
    let mut ten_kb_other = ten_kb.clone();
    *ten_kb_other.last_mut().unwrap() = b'y';
    vec![
        b"{".to_vec(),
        b"}".to_vec(),
        b"{}".to_vec(),
        b"{a}b{c}".to_vec(),
        b"}{".to_vec(),
        b"line\nbreak".to_vec(),
        b"cr\r\nlf".to_vec(),
        b"\r".to_vec(),
        b"\n".to_vec(),
        b"*3\r\n$8\r\nFLUSHALL\r\n".to_vec(),
        b"nul\0byte".to_vec(),
        b"\0".to_vec(),
        b"\0\0".to_vec(),
        (1u8..32).collect(),
        b"\x7f\x1b[31mred".to_vec(),
        ten_kb,
        ten_kb_other,
        // Not UTF-8; the first two are the same text after lossy decoding.
        b"\xff".to_vec(),
        b"\xfe".to_vec(),
        b"\xff\xfe\xfd".to_vec(),
        b"\xc3\x28".to_vec(),
        "ünïcödé".as_bytes().to_vec(),
        b" ".to_vec(),
        b"  ".to_vec(),
        b"with space".to_vec(),
        b" padded ".to_vec(),
        b"".to_vec(),
        b"*".to_vec(),
        b"a?[b-c]\\".to_vec(),
        // Look like other keys, prefixes or the sanitised form of another identity.
        format!("{prefix}:{{hostile-log:victim}}:w60000").into_bytes(),
        format!("{prefix}:{{hostile-win:victim}}:c60000").into_bytes(),
        format!("{prefix}:{{hostile-gcra:victim}}:g60000").into_bytes(),
        format!("{prefix}:victim").into_bytes(),
        b"rl:{api:203.0.113.9}:w60000".to_vec(),
        Key::new("{").as_str().as_bytes().to_vec(),
        Key::new("{").as_str().as_bytes()[1..].to_vec(),
        b"victim:".to_vec(),
        b"VICTIM".to_vec(),
        "x".repeat(MAX_READABLE_LEN).into_bytes(),
        "x".repeat(MAX_READABLE_LEN + 1).into_bytes(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn hostile_identities_are_limited_exactly_and_never_reach_redis_raw() {
    let url = support::redis_url();
    let prefix = support::unique_prefix("hostile");
    let backend = RedisBackend::builder(url.as_str())
        .prefix(prefix.as_str())
        .build()
        .unwrap();
    let mut conn = sync_conn(&url);
    // Keep the hour counter's boundary out of the way (3 checks must share a window).
    let now = redis_now_us(&mut conn);
    let hour = 3600 * SEC;
    if hour - now % hour < 10 * SEC {
        tokio::time::sleep(Duration::from_micros(hour - now % hour + 100 * MS)).await;
    }

    let identities = hostile_identities(&prefix);
    let raw_unique: BTreeSet<&Vec<u8>> = identities.iter().collect();
    assert_eq!(
        raw_unique.len(),
        identities.len(),
        "test identities are distinct"
    );
    let keys: Vec<Key> = identities.iter().map(Key::new).collect();
    let key_texts: BTreeSet<&str> = keys.iter().map(Key::as_str).collect();
    assert_eq!(
        key_texts.len(),
        keys.len(),
        "distinct identities, distinct keys"
    );
    let victim = Key::new("victim");
    assert!(!key_texts.contains(victim.as_str()));

    let policies = [
        Policy::new("hostile-log")
            .algorithm(Algorithm::SlidingLog)
            .quota(Quota::per_hour(3)),
        Policy::new("hostile-win")
            .algorithm(Algorithm::SlidingWindow)
            .quota(Quota::per_hour(3)),
        Policy::new("hostile-gcra")
            .algorithm(Algorithm::Gcra)
            .quota(Quota::per_hour(3)),
    ];
    let victim_raw = b"victim".to_vec();
    let mut expected = BTreeSet::new();
    for p in &policies {
        let all = identities.iter().zip(&keys).chain([(&victim_raw, &victim)]);
        for (raw, key) in all {
            let shown = String::from_utf8_lossy(&raw[..raw.len().min(40)]).into_owned();
            let what = format!("{} / {shown:?}", p.name());
            // The sanitised key is short, printable and brace-free.
            let text = key.as_str();
            assert!(text.len() <= 65, "{what}: {text}");
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}'),
                "{what}: {text:?}"
            );
            for i in 0..3u64 {
                let d = backend
                    .check(p, key, 1)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: redis error {e}"));
                assert!(d.is_allowed(), "{what}: request {i} denied: {d:?}");
                // Remaining 2 on the first request: nobody else used this bucket.
                assert_eq!(d.quotas()[0].remaining, 2 - i, "{what}");
            }
            let d = backend.check(p, key, 1).await.unwrap();
            assert!(!d.is_allowed(), "{what}: 4th request admitted");
            assert_eq!(d.quotas()[0].remaining, 0, "{what}");
            expected.insert(backend.redis_keys(p, key).remove(0).into_bytes());
        }
    }

    let found = scan(&mut conn, &format!("{prefix}:*"));
    assert_eq!(found, expected, "one key per identity and policy");
    assert_eq!(found.len(), policies.len() * (identities.len() + 1));
    for name in &found {
        let shown = String::from_utf8_lossy(name);
        assert!(name.len() < 200, "{shown}");
        assert!(name.iter().all(u8::is_ascii_graphic), "{shown:?}");
        assert_eq!(name.iter().filter(|&&b| b == b'{').count(), 1, "{shown}");
        assert_eq!(name.iter().filter(|&&b| b == b'}').count(), 1, "{shown}");
        // The client part of the key holds no raw hostile bytes.
        let text = std::str::from_utf8(name).unwrap();
        let tag = hash_tag(text).unwrap();
        let (policy, client) = tag.split_once(':').unwrap();
        assert!(policy.starts_with("hostile-"), "{shown}");
        for raw in &identities {
            // Bytes that no sanitised key is made of (or a length none has).
            let foreign = raw.len() > 65
                || raw
                    .iter()
                    .any(|&b| !(b.is_ascii_alphanumeric() || b"._:/@-#".contains(&b)));
            if foreign {
                assert!(
                    !contains(client.as_bytes(), raw),
                    "{shown} contains hostile bytes {:?}",
                    String::from_utf8_lossy(raw)
                );
            }
        }
    }
}

/// Keys of the earlier counter layout (a hash `{s, c, p}` tagged `w`), left
/// by an older version during an upgrade, are never read: the counter's keys
/// are strings tagged `c` now, so no script ever meets a value of the wrong
/// type (a `WRONGTYPE` error would fail open).
#[tokio::test]
async fn keys_of_the_earlier_counter_layout_are_never_read() {
    let url = support::redis_url();
    let prefix = support::unique_prefix("old-layout");
    let backend = RedisBackend::builder(url.as_str())
        .prefix(prefix.as_str())
        .build()
        .unwrap();
    let policy = Policy::new("api")
        .algorithm(Algorithm::SlidingWindow)
        .quota(Quota::per_minute(3));
    let key = Key::new("203.0.113.9");
    let mut conn = sync_conn(&url);
    let now = redis_now_us(&mut conn);
    let old = format!("{prefix}:{{api:203.0.113.9}}:w60000");
    let () = redis::cmd("HSET")
        .arg(&old)
        .arg("s")
        .arg(now - now % 60_000_000)
        .arg("c")
        .arg(3)
        .arg("p")
        .arg(0)
        .query(&mut conn)
        .unwrap();
    let [new] = <[String; 1]>::try_from(backend.redis_keys(&policy, &key)).unwrap();
    assert_ne!(new, old);
    for left in (0..3).rev() {
        let d = backend
            .check(&policy, &key, 1)
            .await
            .expect("no redis error");
        assert_eq!(d.quotas()[0].remaining, left);
    }
    assert!(!backend.check(&policy, &key, 1).await.unwrap().is_allowed());
    let peeked = backend.peek(&policy, &key).await.expect("no redis error");
    assert!(!peeked.is_allowed());
    let ty: String = redis::cmd("TYPE").arg(&old).query(&mut conn).unwrap();
    assert_eq!(ty, "hash", "the old key is left alone (its TTL ends it)");
    let ty: String = redis::cmd("TYPE").arg(&new).query(&mut conn).unwrap();
    assert_eq!(ty, "string");
}

#[test]
fn invalid_prefixes_and_urls_are_config_errors() {
    let long = "p".repeat(65);
    for bad in [
        "",
        "{",
        "}",
        "a{b}",
        "rl{x",
        "with space",
        "new\nline",
        "tab\t",
        "star*",
        "ünï",
        &long,
    ] {
        let err = RedisBackend::builder("redis://127.0.0.1:6379")
            .prefix(bad)
            .build()
            .expect_err(bad);
        assert_eq!(
            err,
            ConfigError::InvalidPrefix {
                prefix: bad.to_owned()
            }
        );
        assert!(err.to_string().contains("prefix"), "{err}");
    }
    for good in ["rl", "app:rl", "a.b-c_d:E9", &"p".repeat(64)] {
        let b = RedisBackend::builder("redis://127.0.0.1:6379")
            .prefix(good)
            .build()
            .expect(good);
        assert_eq!(b.prefix(), good);
    }
    for bad in [
        "",
        "not a url",
        "http://127.0.0.1:6379/",
        "redis://127.0.0.1:notaport/",
        "redis://127.0.0.1:6379/notadb",
    ] {
        match RedisBackend::new(bad) {
            Err(ConfigError::RedisUrl(msg)) => assert!(!msg.is_empty(), "{bad}"),
            other => panic!("{bad:?}: expected a RedisUrl error, got {other:?}"),
        }
        assert!(matches!(
            RedisBackend::builder(bad).prefix("ok").build(),
            Err(ConfigError::RedisUrl(_))
        ));
    }
    // The prefix is checked before the URL.
    assert!(matches!(
        RedisBackend::builder("not a url").prefix("{").build(),
        Err(ConfigError::InvalidPrefix { .. })
    ));
}

#[test]
fn building_against_a_dead_port_neither_blocks_nor_fails() {
    let url = format!("redis://127.0.0.1:{}/", support::dead_port());
    // Outside any async runtime: building connects nothing.
    let started = Instant::now();
    let backend = RedisBackend::new(&url).expect("a dead server is not a config error");
    let with_builder = RedisBackend::builder(url.as_str())
        .prefix("dead")
        .connect_timeout(Duration::from_secs(30))
        .build()
        .expect("a dead server is not a config error");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "building took {:?}",
        started.elapsed()
    );
    assert_eq!(backend.prefix(), "rl");
    assert_eq!(with_builder.prefix(), "dead");
    // The first check reports the failure (for the layer's failure mode)
    // instead of hanging.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let policy = Policy::new("dead").quota(Quota::per_second(1));
    let started = Instant::now();
    let result = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            backend.check(&policy, &Key::new("k"), 1),
        )
        .await
    });
    match result {
        Ok(Err(_)) => {}
        Ok(Ok(d)) => panic!("a dead server decided {d:?}"),
        Err(_) => panic!("a check against a dead server hung"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
