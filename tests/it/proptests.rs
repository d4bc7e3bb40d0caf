//! Property tests for `Key::new` and `Key::from_ip` (Redis key parts), and
//! for the Lua scripts against the model: every algorithm's check and peek
//! scripts, run by a real `redis-server` on a clock the test sets, reply
//! exactly what the memory backend (the Rust model) decides, over random
//! request sequences, and so do the refund scripts, with refunds mixed into
//! the sequences. The path readings' property tests live with the code,
//! in `src/routes/path.rs`; the models' own, against naive definitions, in
//! `src/algorithm/mod.rs`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tower_redis_ratelimit::clock::{Clock, FakeClock};
use tower_redis_ratelimit::key::{Key, MAX_READABLE_LEN};
use tower_redis_ratelimit::{Algorithm, Backend, Decision, MemoryBackend, Policy, Quota};

use crate::support;

/// `cases` cases, failures kept beside this file
/// (`proptests.proptest-regressions`) and replayed first. Proptest's default
/// would look for them in `tests/proptest-regressions/`, beside this binary's
/// `main.rs`.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

fn is_readable(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_READABLE_LEN
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b))
}

fn check_key(key: &Key) -> Result<(), TestCaseError> {
    let text = key.as_str();
    prop_assert!(
        !text.is_empty() && text.len() <= MAX_READABLE_LEN + 1,
        "{key:?}"
    );
    prop_assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/@#-".contains(&b)),
        "{key:?}"
    );
    prop_assert!(!text.contains(['{', '}']), "{key:?}");
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// `Key::new` never panics and always yields a safe Redis key part:
    /// 1..=65 bytes of `[A-Za-z0-9._:/@#-]`, never a brace. Readable input
    /// maps to itself; anything else to `#` + 64 hex digits.
    #[test]
    fn keys_are_always_safe(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let key = Key::new(&bytes);
        check_key(&key)?;
        if is_readable(&bytes) {
            prop_assert_eq!(key.as_str().as_bytes(), &bytes[..]);
        } else {
            let text = key.as_str();
            prop_assert_eq!(text.len(), 65);
            prop_assert!(text.starts_with('#'));
            prop_assert!(text[1..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        prop_assert_eq!(Key::new(&bytes), key, "deterministic");
    }

    /// Readable identities (biased generator, so they are actually readable)
    /// map to themselves.
    #[test]
    fn readable_keys_map_to_themselves(text in "[A-Za-z0-9._:/@-]{1,64}") {
        let key = Key::new(&text);
        prop_assert_eq!(key.as_str(), text.as_str());
    }

    /// Different identities never share a key.
    #[test]
    fn distinct_identities_get_distinct_keys(
        a in proptest::collection::vec(any::<u8>(), 0..80),
        b in proptest::collection::vec(any::<u8>(), 0..80),
        readable in "[a-z0-9.]{1,70}",
    ) {
        let inputs = [a.clone(), b.clone(), readable.clone().into_bytes()];
        let distinct: HashSet<&Vec<u8>> = inputs.iter().collect();
        let keys: HashSet<Key> = inputs.iter().map(Key::new).collect();
        prop_assert_eq!(keys.len(), distinct.len());
    }

    /// Keys of IP addresses are safe too, for every prefix length.
    #[test]
    fn ip_keys_are_safe(v4 in any::<u32>(), v6 in any::<u128>(), prefix in any::<u8>()) {
        check_key(&Key::from_ip(IpAddr::V4(Ipv4Addr::from(v4)), prefix))?;
        let key = Key::from_ip(IpAddr::V6(Ipv6Addr::from(v6)), prefix);
        check_key(&key)?;
        prop_assert!(!key.as_str().starts_with('#'), "IP keys stay readable: {key:?}");
    }
}

/// `script` reading the clock from its last two arguments (seconds and
/// microseconds, as `TIME` replies) instead of `TIME`, and setting every
/// key's expiry an hour away: the scripts' expiries run on Redis' real
/// clock, not the test's, so a key whose state lasts a few test-clock
/// milliseconds would expire between two steps on a slow machine (expired
/// state reads like drained state: the scripts roll it forward on the test
/// clock). The keys' real TTLs are `redis_keys`' subject.
fn on_test_clock(script: &str) -> String {
    const TIME: &str = "redis.call('TIME')";
    assert_eq!(script.matches(TIME).count(), 1, "one TIME call");
    const LONG_TTLS: &str = "local real_redis = redis
local redis = setmetatable({
  call = function(command, ...)
    local args = {...}
    if command == 'PEXPIRE' then args[2] = 3600000 end
    for i = 1, #args - 1 do
      if command == 'SET' and args[i] == 'PX' then args[i + 1] = 3600000 end
    end
    return real_redis.call(command, unpack(args))
  end,
}, {__index = real_redis})
";
    format!(
        "{LONG_TTLS}{}",
        script.replace(TIME, "{ARGV[#ARGV - 1], ARGV[#ARGV]}")
    )
}

/// The reply a script gives for `decision` (see `backend/redis/script.rs`).
fn as_reply(decision: &Decision) -> Vec<i64> {
    let mut reply = vec![
        i64::from(decision.is_allowed()),
        decision.denied_by().map_or(0, |i| i as i64 + 1),
        decision
            .retry_after()
            .map_or(0, |r| i64::try_from(r.as_micros()).unwrap()),
    ];
    for q in decision.quotas() {
        reply.push(q.remaining as i64);
        reply.push(i64::try_from(q.reset_after.as_micros()).unwrap());
    }
    reply
}

/// One to three quotas of 1 to 20 per 1 ms to 4 s.
fn quotas() -> impl Strategy<Value = Vec<Quota>> {
    let window_ms = prop_oneof![
        3 => prop::sample::select(vec![250_u64, 500, 1_000, 4_000]),
        1 => 1_u64..=3_000,
    ];
    let quota = (1_u64..=20, window_ms)
        .prop_map(|(limit, ms)| Quota::new(limit, Duration::from_millis(ms)));
    prop::collection::vec(quota, 1..=3)
}

/// Clock advance (mostly small, on a 10 ms grid, sometimes odd or long) and
/// cost (mostly 1, sometimes 0 or above most limits) of each request.
fn steps() -> impl Strategy<Value = Vec<(u64, u64)>> {
    let advance = prop_oneof![
        20 => Just(0_u64),
        60 => (0_u64..7).prop_map(|k| k * 10_000),
        18 => 0_u64..60_000,
        2 => 0_u64..9_000_000,
    ];
    let cost = prop_oneof![1 => Just(0_u64), 12 => Just(1), 6 => 1_u64..=4, 1 => 18_u64..=24];
    prop::collection::vec((advance, cost), 1..120)
}

static CASE: AtomicU64 = AtomicU64::new(0);

/// One generated case's parts: the policy of `quotas`, its Redis keys
/// (unique to the case), the memory backend on a fake clock at `start`, a
/// runtime to drive it, and the client key.
struct Case {
    /// The case's number (its keys' and nonces' prefix).
    case: u64,
    policy: Policy,
    keys: Vec<String>,
    clock: FakeClock,
    memory: MemoryBackend,
    runtime: tokio::runtime::Runtime,
    key: Key,
}

impl Case {
    fn new(algorithm: Algorithm, quotas: &[Quota], start: u64, name: &str, tag: char) -> Self {
        let case = CASE.fetch_add(1, Ordering::Relaxed);
        let policy = quotas
            .iter()
            .fold(Policy::new("prop").algorithm(algorithm), |p, &q| p.quota(q));
        // Keys by quota index: policies never have two quotas of one window
        // (a configuration error), but the generated ones may.
        let keys = (0..quotas.len())
            .map(|i| format!("{name}{case}:{{k}}:{tag}{i}"))
            .collect();
        let clock = FakeClock::new(start);
        let memory = MemoryBackend::with_clock(clock.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        Self {
            case,
            policy,
            keys,
            clock,
            memory,
            runtime,
            key: Key::new("k"),
        }
    }
}

/// Runs `steps` through the memory backend (the model, on a fake clock) and
/// through the scripts in Redis (on the same instants): a peek, then a
/// check, at every step; every reply must be the model's decision.
fn scripts_agree(
    conn: &mut redis::Connection,
    algorithm: Algorithm,
    quotas: &[Quota],
    start: u64,
    steps: &[(u64, u64)],
) -> Result<(), TestCaseError> {
    let (check, peek, tag) = crate::support::scripts::shipped(algorithm);
    let (check, peek) = (on_test_clock(check), on_test_clock(peek));
    let Case {
        case,
        policy,
        keys,
        clock,
        memory,
        runtime,
        key,
    } = Case::new(algorithm, quotas, start, "prop", tag);
    for (n, &(advance, cost)) in steps.iter().enumerate() {
        clock.advance(Duration::from_micros(advance));
        let now = clock.now_micros();
        let run = |conn: &mut redis::Connection, script: &str, cost: u64, nonce: String| {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(script)
                .arg(keys.len())
                .arg(&keys)
                .arg(cost)
                .arg(nonce);
            for q in quotas {
                cmd.arg(q.limit()).arg(q.window().as_micros() as u64);
            }
            cmd.arg(now / 1_000_000).arg(now % 1_000_000);
            cmd.query::<Vec<i64>>(conn)
        };
        let what = format!("{algorithm:?} step {n} at +{} us, cost {cost}", now - start);
        let expected = as_reply(&runtime.block_on(memory.peek(&policy, &key)).unwrap());
        let got = run(conn, &peek, 1, String::new())
            .map_err(|e| TestCaseError::fail(format!("{what}, peek: redis error {e}")))?;
        prop_assert_eq!(&got, &expected, "{}, peek", what);
        let expected = as_reply(&runtime.block_on(memory.check(&policy, &key, cost)).unwrap());
        let got = run(conn, &check, cost, format!("{case}.{n}"))
            .map_err(|e| TestCaseError::fail(format!("{what}: redis error {e}")))?;
        prop_assert_eq!(&got, &expected, "{}", what);
        // The long expiries took: every key written lives for an hour.
        for key in &keys {
            let ttl: i64 = redis::cmd("PTTL").arg(key).query(conn).unwrap();
            prop_assert!(
                ttl == -2 || ttl > 3_000_000,
                "{}: {} expires in {} ms",
                what,
                key,
                ttl
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(96))]

    /// The scripts are exact translations of the model.
    #[test]
    fn scripts_reply_what_the_model_decides(
        algorithm in prop::sample::select(vec![
            Algorithm::SlidingLog,
            Algorithm::SlidingWindow,
            Algorithm::Gcra,
        ]),
        quotas in quotas(),
        offset in 0_u64..20_000_000,
        steps in steps(),
    ) {
        let url = support::redis_url();
        let mut conn = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
        // A day boundary plus an offset, in 2026.
        let start = 1_798_761_600_000_000 + offset;
        scripts_agree(&mut conn, algorithm, &quotas, start, &steps)?;
    }
}

/// A step: clock advance, a check's cost, and instead of the check a
/// refund (`Some((which, cost))`) of one of the admissions not yet refunded
/// (`which` modulo their number), of `cost` units (above the admission's
/// cost: all of it).
type RefundStep = (u64, u64, Option<(usize, u64)>);

/// Steps with refunds mixed in (see [`RefundStep`]).
fn refund_steps() -> impl Strategy<Value = Vec<RefundStep>> {
    let advance = prop_oneof![
        20 => Just(0_u64),
        60 => (0_u64..7).prop_map(|k| k * 10_000),
        18 => 0_u64..60_000,
        2 => 0_u64..9_000_000,
    ];
    let cost = prop_oneof![1 => Just(0_u64), 12 => Just(1), 6 => 1_u64..=4, 1 => 18_u64..=24];
    let refund = prop_oneof![
        2 => Just(None),
        1 => (any::<usize>(), prop_oneof![3 => Just(u64::MAX), 1 => 1_u64..=3]).prop_map(Some),
    ];
    prop::collection::vec((advance, cost, refund), 1..120)
}

/// An admission not yet refunded: the model's decision (its ticket) and,
/// for the script, its nonce, instant and reported resets.
struct Admitted {
    decision: Decision,
    nonce: String,
    at: u64,
    resets: Vec<u64>,
}

/// Runs `steps` through the memory backend (the model, on a fake clock) and
/// the scripts in Redis (on the same instants): checks as in
/// [`scripts_agree`], and refunds of earlier admissions, each followed by a
/// peek, whose reply must be the model's.
fn refund_scripts_agree(
    conn: &mut redis::Connection,
    algorithm: Algorithm,
    quotas: &[Quota],
    start: u64,
    steps: &[RefundStep],
) -> Result<(), TestCaseError> {
    let (check, peek, tag) = crate::support::scripts::shipped(algorithm);
    let refund = on_test_clock(crate::support::scripts::shipped_refund(algorithm));
    let (check, peek) = (on_test_clock(check), on_test_clock(peek));
    let Case {
        case,
        policy,
        keys,
        clock,
        memory,
        runtime,
        key,
    } = Case::new(algorithm, quotas, start, "prop-refund", tag);
    let mut open: Vec<Admitted> = Vec::new();
    for (n, &(advance, cost, refunding)) in steps.iter().enumerate() {
        clock.advance(Duration::from_micros(advance));
        let now = clock.now_micros();
        let time = |cmd: &mut redis::Cmd| {
            cmd.arg(now / 1_000_000).arg(now % 1_000_000);
        };
        let what = format!("{algorithm:?} step {n} at +{} us", now - start);
        if let Some((which, part)) = refunding.filter(|_| !open.is_empty()) {
            let admitted = open.remove(which % open.len());
            let ticket = admitted.decision.ticket().unwrap();
            runtime
                .block_on(memory.refund(&policy, &key, part, &ticket))
                .unwrap();
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(&refund)
                .arg(keys.len())
                .arg(&keys)
                .arg(part.min(ticket.cost()))
                .arg(&admitted.nonce)
                .arg(now - admitted.at);
            for (q, reset) in quotas.iter().zip(&admitted.resets) {
                cmd.arg(q.limit())
                    .arg(q.window().as_micros() as u64)
                    .arg(reset);
            }
            time(&mut cmd);
            let what = format!(
                "{what}, refund of {part} of {} admitted at +{}",
                ticket.cost(),
                admitted.at - start
            );
            let replied: i64 = cmd
                .query(conn)
                .map_err(|e| TestCaseError::fail(format!("{what}: redis error {e}")))?;
            prop_assert_eq!(replied, 1, "{}", what);
            let expected = as_reply(&runtime.block_on(memory.peek(&policy, &key)).unwrap());
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(&peek).arg(keys.len()).arg(&keys).arg(1).arg("");
            for q in quotas {
                cmd.arg(q.limit()).arg(q.window().as_micros() as u64);
            }
            time(&mut cmd);
            let got: Vec<i64> = cmd
                .query(conn)
                .map_err(|e| TestCaseError::fail(format!("{what}, peek: redis error {e}")))?;
            prop_assert_eq!(&got, &expected, "{}, peek", what);
        } else {
            let nonce = format!("{case}.{n}");
            let decision = runtime.block_on(memory.check(&policy, &key, cost)).unwrap();
            let expected = as_reply(&decision);
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(&check)
                .arg(keys.len())
                .arg(&keys)
                .arg(cost)
                .arg(&nonce);
            for q in quotas {
                cmd.arg(q.limit()).arg(q.window().as_micros() as u64);
            }
            time(&mut cmd);
            let got: Vec<i64> = cmd
                .query(conn)
                .map_err(|e| TestCaseError::fail(format!("{what}: redis error {e}")))?;
            prop_assert_eq!(&got, &expected, "{}, cost {}", what, cost);
            if decision.ticket().is_some() {
                let resets = got[3..].chunks(2).map(|pair| pair[1] as u64).collect();
                open.push(Admitted {
                    decision,
                    nonce,
                    at: now,
                    resets,
                });
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    /// The refund scripts are exact translations of the model: after any
    /// refund, whole or partial, of any earlier admission, the scripts'
    /// state reads as the model's.
    #[test]
    fn refund_scripts_give_back_what_the_model_does(
        algorithm in prop::sample::select(vec![
            Algorithm::SlidingLog,
            Algorithm::SlidingWindow,
            Algorithm::Gcra,
        ]),
        quotas in quotas(),
        offset in 0_u64..20_000_000,
        steps in refund_steps(),
    ) {
        let url = support::redis_url();
        let mut conn = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
        let start = 1_798_761_600_000_000 + offset;
        refund_scripts_agree(&mut conn, algorithm, &quotas, start, &steps)?;
    }
}

/// A step: clock advance, a cost, and whether it is charged (else checked).
type ChargeStep = (u64, u64, bool);

/// Steps with charges mixed in (see [`ChargeStep`]): charges of a few
/// units, past most limits, and now and then far past the cap of 100
/// windows' worth.
fn charge_steps() -> impl Strategy<Value = Vec<ChargeStep>> {
    let advance = prop_oneof![
        20 => Just(0_u64),
        60 => (0_u64..7).prop_map(|k| k * 10_000),
        18 => 0_u64..60_000,
        2 => 0_u64..9_000_000,
    ];
    let cost = prop_oneof![1 => Just(0_u64), 12 => Just(1), 6 => 1_u64..=4, 2 => 18_u64..=40, 1 => Just(100_000)];
    prop::collection::vec((advance, cost, prop::bool::weighted(0.25)), 1..120)
}

/// Runs `steps` through the memory backend (the model, on a fake clock) and
/// the scripts in Redis (on the same instants): checks as in
/// [`scripts_agree`], and charges, each followed by a peek, whose reply
/// must be the model's.
fn charge_scripts_agree(
    conn: &mut redis::Connection,
    algorithm: Algorithm,
    quotas: &[Quota],
    start: u64,
    steps: &[ChargeStep],
) -> Result<(), TestCaseError> {
    let (check, peek, tag) = crate::support::scripts::shipped(algorithm);
    let charge = on_test_clock(crate::support::scripts::shipped_charge(algorithm));
    let (check, peek) = (on_test_clock(check), on_test_clock(peek));
    let Case {
        case,
        policy,
        keys,
        clock,
        memory,
        runtime,
        key,
    } = Case::new(algorithm, quotas, start, "prop-charge", tag);
    for (n, &(advance, cost, charging)) in steps.iter().enumerate() {
        clock.advance(Duration::from_micros(advance));
        let now = clock.now_micros();
        let what = format!("{algorithm:?} step {n} at +{} us, cost {cost}", now - start);
        let run = |script: &str, cost: u64, nonce: &str| {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(script)
                .arg(keys.len())
                .arg(&keys)
                .arg(cost)
                .arg(nonce);
            for q in quotas {
                cmd.arg(q.limit()).arg(q.window().as_micros() as u64);
            }
            cmd.arg(now / 1_000_000).arg(now % 1_000_000);
            cmd
        };
        let nonce = format!("{case}.{n}");
        if charging {
            runtime
                .block_on(memory.charge(&policy, &key, cost))
                .unwrap();
            let replied: i64 = run(&charge, cost, &nonce)
                .query(conn)
                .map_err(|e| TestCaseError::fail(format!("{what}, charge: redis error {e}")))?;
            prop_assert_eq!(replied, 1, "{}, charge", what);
            let expected = as_reply(&runtime.block_on(memory.peek(&policy, &key)).unwrap());
            let got: Vec<i64> = run(&peek, 1, "")
                .query(conn)
                .map_err(|e| TestCaseError::fail(format!("{what}, peek: redis error {e}")))?;
            prop_assert_eq!(&got, &expected, "{}, peek after a charge", what);
        } else {
            let expected = as_reply(&runtime.block_on(memory.check(&policy, &key, cost)).unwrap());
            let got: Vec<i64> = run(&check, cost, &nonce)
                .query(conn)
                .map_err(|e| TestCaseError::fail(format!("{what}: redis error {e}")))?;
            prop_assert_eq!(&got, &expected, "{}", what);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    /// The charge scripts are exact translations of the model: after any
    /// charge (into debt, up to the cap), the scripts' state reads as the
    /// model's, and later checks decide as the model does.
    #[test]
    fn charge_scripts_count_what_the_model_does(
        algorithm in prop::sample::select(vec![
            Algorithm::SlidingLog,
            Algorithm::SlidingWindow,
            Algorithm::Gcra,
        ]),
        quotas in quotas(),
        offset in 0_u64..20_000_000,
        steps in charge_steps(),
    ) {
        let url = support::redis_url();
        let mut conn = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
        let start = 1_798_761_600_000_000 + offset;
        charge_scripts_agree(&mut conn, algorithm, &quotas, start, &steps)?;
    }
}
