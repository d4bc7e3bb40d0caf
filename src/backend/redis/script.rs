//! The script protocol, without I/O: which script runs, its keys and
//! arguments, and what its reply means.
//!
//! Every algorithm's script (its [`Spec`](crate::algorithm::Spec)'s Lua
//! source) is called alike:
//!
//! ```text
//! KEYS[i]                 quota i's key, see `super::keyspace::keys`
//! ARGV[1]                 cost
//! ARGV[2]                 request nonce, unique per request across instances,
//!                         if the algorithm needs one (else empty)
//! ARGV[1+2i], ARGV[2+2i]  limit and window (microseconds) of quota i
//! ```
//!
//! and replies `{allowed, denied quota (1-based, 0 = none), retry-after µs,
//! remaining_1, reset_µs_1, ..., remaining_n, reset_µs_n}` (see `decode`).
//!
//! Every algorithm's read-only peek script (its `Spec`'s `peek_lua`) is
//! called and replies the same way, with a cost of [`PEEK_COST`] and no
//! nonce; it is sent as `EVALSHA_RO` where the server knows it (see
//! [`ReadOnlyCall`]). A reset is one `DEL` of every key of the client (see
//! `super::keyspace::keys`).

use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{Cmd, Script, ScriptInvocation};

use super::keyspace::{KeyList, keys};
use crate::algorithm::{Algorithm, PEEK_COST, Spec};
use crate::decision::{Decision, Nonce, Origin, QuotaStatus, Statuses, Ticket};
use crate::error::BackendError;
use crate::key::Key;
use crate::policy::{Policy, Quota};

/// One script per algorithm, in the order of `Algorithm::ALL`: the Lua
/// `part` of each algorithm's `Spec`.
fn per_algorithm(part: fn(&'static Spec) -> &'static str) -> Vec<Script> {
    Algorithm::ALL
        .iter()
        .map(|algorithm| Script::new(part(algorithm.spec())))
        .collect()
}

/// `algorithm`'s script in `table` (made by [`per_algorithm`]).
fn of(table: &'static [Script], algorithm: Algorithm) -> &'static Script {
    let index = Algorithm::ALL.iter().position(|&a| a == algorithm);
    &table[index.expect("every algorithm is in Algorithm::ALL")]
}

/// Every algorithm's script, in the order of `Algorithm::ALL`.
static SCRIPTS: LazyLock<Vec<Script>> = LazyLock::new(|| per_algorithm(|spec| spec.lua));

/// The script of `algorithm`.
pub(super) fn script(algorithm: Algorithm) -> &'static Script {
    of(&SCRIPTS, algorithm)
}

/// Every algorithm's read-only peek script, in the order of `Algorithm::ALL`.
static PEEK_SCRIPTS: LazyLock<Vec<Script>> = LazyLock::new(|| per_algorithm(|spec| spec.peek_lua));

/// The read-only peek script of `algorithm`.
pub(super) fn peek_script(algorithm: Algorithm) -> &'static Script {
    of(&PEEK_SCRIPTS, algorithm)
}

/// The arguments (`ARGV`) of a check of `cost` units against `quotas`.
pub(super) fn args(quotas: &[Quota], cost: u64, nonce: &str) -> Vec<String> {
    let mut args = Vec::with_capacity(2 + 2 * quotas.len());
    args.push(cost.to_string());
    args.push(nonce.to_owned());
    for quota in quotas {
        args.push(quota.limit().to_string());
        args.push(quota.window_us().to_string());
    }
    args
}

/// A check's script call, before it is sent alone ([`Call::evalsha`]) or
/// in a batch (see `super::batch`): what goes into its keys and arguments,
/// kept as they are written (numbers go straight into the command, no
/// string per argument).
#[derive(Debug)]
pub(super) struct Call {
    pub algorithm: Algorithm,
    /// Its keys, one per quota ([`Call::keys`]).
    pub key_list: KeyList,
    pub cost: u64,
    /// The request nonce, empty if the algorithm needs none.
    pub nonce: Nonce,
    /// The policy (shared, not copied): its quotas' limits and windows are
    /// arguments, and the reply is read against them (`decode`).
    pub policy: Policy,
}

impl Call {
    /// The policy's quotas.
    pub(super) fn quotas(&self) -> &[Quota] {
        self.policy.quotas()
    }

    /// The call's keys, one per quota, in quota order.
    pub(super) fn keys(&self) -> impl Iterator<Item = &str> {
        self.key_list.iter(self.quotas())
    }

    /// The call alone as a plain `EVALSHA` of its algorithm's script (see
    /// the module docs): `NOSCRIPT` is the caller's to handle, or
    /// `Request::Eval`'s, which loads [`Call::script`] and calls again.
    pub(super) fn evalsha(&self) -> Cmd {
        self.evalsha_of(self.script())
    }

    /// The call's keys and arguments as a plain `EVALSHA` of `script`: its
    /// own, or its algorithm's charge script, which takes a check's.
    pub(super) fn evalsha_of(&self, script: &Script) -> Cmd {
        let quotas = self.quotas();
        let nonce = self.nonce.as_str();
        // EVALSHA, SHA1, key count, keys, cost, nonce, two per quota.
        let args = 5 + 3 * quotas.len();
        let bytes = 56 + self.key_list.as_str().len() + nonce.len() + 40 * (1 + quotas.len());
        let mut command = Cmd::with_capacity(args, bytes);
        command
            .arg("EVALSHA")
            .arg(script.get_hash())
            .arg(quotas.len());
        for key in self.keys() {
            command.arg(key);
        }
        command.arg(self.cost).arg(nonce);
        for quota in quotas {
            command.arg(quota.limit()).arg(quota.window_us());
        }
        command
    }

    /// The script the call runs alone.
    pub(super) fn script(&self) -> &'static Script {
        script(self.algorithm)
    }

    /// The call's quota count and cost, then each quota's limit and window
    /// (µs), as a run of the batch script takes them (see `super::batch`).
    pub(super) fn batch_args(&self) -> impl Iterator<Item = u64> + '_ {
        let quotas = self.quotas();
        [quotas.len() as u64, self.cost].into_iter().chain(
            quotas
                .iter()
                .flat_map(|quota| [quota.limit(), quota.window_us()]),
        )
    }

    /// Whether `other` is the same check: same algorithm, keys and
    /// arguments (so never two checks of an algorithm with nonces).
    pub(super) fn same_check(&self, other: &Call) -> bool {
        self.algorithm == other.algorithm
            && self.cost == other.cost
            && self.nonce == other.nonce
            && self.quotas() == other.quotas()
            && self.key_list == other.key_list
    }

    /// The decision in the script's reply to this call, with its ticket
    /// when admitted (see [`Call::stamp`]).
    pub(super) fn decode(&self, reply: &[i64]) -> Result<Decision, BackendError> {
        decode(reply, self.quotas()).map(|decision| self.stamp(decision))
    }

    /// `decision`, received now, marked (if it admits a cost above zero)
    /// with what a refund needs: the nonce and the instant.
    fn stamp(&self, decision: Decision) -> Decision {
        if !decision.is_allowed() || self.cost == 0 {
            return decision;
        }
        // In place: no allocation per admission.
        let nonce = (!self.nonce.as_str().is_empty()).then_some(self.nonce);
        let received = Instant::now();
        decision.stamped(self.cost, Origin::Redis { nonce, received })
    }
}

/// The script call checking `cost` units of every quota of `policy` for `key`.
pub(super) fn call(prefix: &str, nonces: &Nonces, policy: &Policy, key: &Key, cost: u64) -> Call {
    let algorithm = policy.algorithm_kind();
    Call {
        algorithm,
        key_list: KeyList::new(prefix, policy, key),
        cost,
        nonce: if algorithm.spec().nonce {
            nonces.next()
        } else {
            Nonce::NONE
        },
        policy: policy.clone(),
    }
}

/// A call of a read-only script: `EVALSHA_RO` (Redis 7.0 and later: the
/// server refuses any write, and replicas may run it) or, on servers without
/// it, `EVALSHA`. Either way a `NOSCRIPT` reply means: load the script, then
/// call again (the connection does it).
#[derive(Debug)]
pub(super) struct ReadOnlyCall {
    script: &'static Script,
    keys: Vec<String>,
    args: Vec<String>,
}

impl ReadOnlyCall {
    /// The script, to load it after a `NOSCRIPT` reply.
    pub(super) fn script(&self) -> &'static Script {
        self.script
    }

    /// The command: `EVALSHA_RO` if `read_only`, else `EVALSHA`, then the
    /// script's SHA1, the number of keys, the keys and the arguments.
    pub(super) fn command(&self, read_only: bool) -> Cmd {
        let mut cmd = redis::cmd(if read_only { "EVALSHA_RO" } else { "EVALSHA" });
        cmd.arg(self.script.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }
}

/// The read-only call peeking at every quota of `policy` for `key`.
pub(super) fn peek_call(prefix: &str, policy: &Policy, key: &Key) -> ReadOnlyCall {
    ReadOnlyCall {
        script: peek_script(policy.algorithm_kind()),
        keys: keys(prefix, policy, key),
        args: args(policy.quotas(), PEEK_COST, ""),
    }
}

/// The command forgetting every count of `policy` for `key`: one `DEL` of
/// all its keys (one hash tag, so one cluster slot). `None` if the policy
/// has no quota, hence no key.
pub(super) fn reset_command(prefix: &str, policy: &Policy, key: &Key) -> Option<Cmd> {
    let keys = keys(prefix, policy, key);
    if keys.is_empty() {
        return None;
    }
    let mut cmd = redis::cmd("DEL");
    cmd.arg(keys);
    Some(cmd)
}

/// Every algorithm's refund script, in the order of `Algorithm::ALL`.
static REFUND_SCRIPTS: LazyLock<Vec<Script>> =
    LazyLock::new(|| per_algorithm(|spec| spec.refund_lua));

/// The refund script of `algorithm`.
pub(super) fn refund_script(algorithm: Algorithm) -> &'static Script {
    of(&REFUND_SCRIPTS, algorithm)
}

/// The refund script call giving back `cost` units (at most the ticket's)
/// of the request `ticket` admitted, in every quota of `policy` for `key`:
///
/// ```text
/// KEYS[i]                             quota i's key
/// ARGV[1]                             units to give back
/// ARGV[2]                             the request's nonce (empty if none)
/// ARGV[3]                             µs since the check's reply arrived
/// ARGV[1+3i], ARGV[2+3i], ARGV[3+3i]  limit, window (µs) and the reset
///                                     (µs) the check reported, of quota i
/// ```
///
/// and the script replies 1. `None` if there is nothing to send: the
/// ticket is not Redis' (another backend took the units), nothing is
/// given back, or the policy has no quota.
pub(super) fn refund_call(
    prefix: &str,
    policy: &Policy,
    key: &Key,
    cost: u64,
    ticket: &Ticket,
) -> Option<ScriptInvocation<'static>> {
    let Origin::Redis { nonce, received } = &ticket.stamp.origin else {
        return None;
    };
    let cost = cost.min(ticket.stamp.cost);
    let keys = keys(prefix, policy, key);
    if cost == 0 || keys.is_empty() {
        return None;
    }
    let algorithm = policy.algorithm_kind();
    let mut invocation = refund_script(algorithm).prepare_invoke();
    for key in &keys {
        invocation.key(key);
    }
    let age = u64::try_from(received.elapsed().as_micros()).unwrap_or(u64::MAX);
    invocation
        .arg(cost)
        .arg(nonce.as_ref().map_or("", Nonce::as_str))
        .arg(age);
    for (i, quota) in policy.quotas().iter().enumerate() {
        let reset = ticket.resets.get(i).copied().unwrap_or(0);
        invocation
            .arg(quota.limit())
            .arg(quota.window_us())
            .arg(reset);
    }
    Some(invocation)
}

/// Every algorithm's charge script, in the order of `Algorithm::ALL`.
static CHARGE_SCRIPTS: LazyLock<Vec<Script>> =
    LazyLock::new(|| per_algorithm(|spec| spec.charge_lua));

/// The charge script of `algorithm`.
pub(super) fn charge_script(algorithm: Algorithm) -> &'static Script {
    of(&CHARGE_SCRIPTS, algorithm)
}

/// The charge call counting `cost` more units, unconditionally, in every
/// quota of `policy` for `key`: a check's call (keys, arguments, a nonce of
/// its own if the algorithm needs one), sent as an `EVALSHA` of the charge
/// script ([`Call::evalsha_of`]), which replies 1. `None` if there is
/// nothing to send: a cost of 0, or a policy without a quota.
pub(super) fn charge_call(
    prefix: &str,
    nonces: &Nonces,
    policy: &Policy,
    key: &Key,
    cost: u64,
) -> Option<Call> {
    (cost > 0 && !policy.quotas().is_empty()).then(|| call(prefix, nonces, policy, key, cost))
}

/// Whether `error` says that the server does not know, or does not let this
/// user run, `EVALSHA_RO` (Redis before 7.0, the command renamed away, or an
/// ACL allowing `EVALSHA` only): then `EVALSHA` is used instead.
pub(super) fn read_only_refused(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    let text = error.to_string().to_ascii_lowercase();
    // Only a refusal of the command itself: a script error or a refused key
    // names no command.
    let refused = match error.kind() {
        ErrorKind::Server(ServerErrorKind::ResponseError) => text.contains("unknown command"),
        ErrorKind::Server(ServerErrorKind::NoPerm) => text.contains("command"),
        _ => false,
    };
    refused && text.contains("evalsha_ro")
}

/// Request nonces, unique across instances: `<instance>.<sequence>` in hex
/// (e.g. the sliding log's members are `<nonce>:<unit>`).
pub(super) struct Nonces {
    instance: u64,
    seq: AtomicU64,
}

impl Nonces {
    pub(super) fn new() -> Self {
        Self {
            instance: RandomState::new().hash_one(std::process::id()),
            seq: AtomicU64::new(0),
        }
    }

    /// The next nonce: `format!("{instance:x}.{seq:x}")`, written in place.
    pub(super) fn next(&self) -> Nonce {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut nonce = Nonce::NONE;
        nonce.push_hex(self.instance);
        nonce.push(b'.');
        nonce.push_hex(seq);
        nonce
    }
}

/// The failure of one check of a batch whose script error the batch script
/// caught (its reply `{-1, code}`, see `batch::batch_lua`): that check's
/// key, not the backend.
fn fault(code: i64) -> BackendError {
    BackendError::Key(
        match code {
            1 => "WRONGTYPE: a key of this client holds a value of another type",
            2 => "OOM: Redis is past maxmemory, so this admission cannot be counted",
            _ => "a key of this client holds a value the script cannot read",
        }
        .to_owned(),
    )
}

/// `error` as the failure of one check's key when it is a script's own
/// error at run time (a key of the wrong type or holding a value that is
/// not ours, an admission refused past `maxmemory`): Redis names the
/// script (`@user_script`) in those, and in no error of the connection or
/// of the server as a whole (`NOSCRIPT`, `BUSY`, `LOADING`, `READONLY`, a
/// refused command). Other errors are left as they are.
pub(super) fn key_fault(error: BackendError) -> BackendError {
    match error {
        BackendError::Connection(e)
            if e.downcast_ref::<redis::RedisError>()
                .is_some_and(is_script_error) =>
        {
            BackendError::Key(e.to_string())
        }
        other => other,
    }
}

fn is_script_error(error: &redis::RedisError) -> bool {
    error.kind() != redis::ErrorKind::Io && error.to_string().contains("user_script")
}

/// The decision in a script's reply to a check of `quotas`; a reply of any
/// other shape (or with negative numbers) is a protocol error.
pub(super) fn decode(reply: &[i64], quotas: &[Quota]) -> Result<Decision, BackendError> {
    let bad = || BackendError::Protocol(format!("{reply:?}"));
    if let [-1, code] = reply {
        return Err(fault(*code));
    }
    if reply.len() != 3 + 2 * quotas.len() {
        return Err(bad());
    }
    let non_neg = |v: i64| u64::try_from(v).map_err(|_| bad());
    let statuses = quotas
        .iter()
        .zip(reply[3..].chunks_exact(2))
        .map(|(q, pair)| {
            Ok(QuotaStatus {
                limit: q.limit(),
                window: q.window(),
                remaining: non_neg(pair[0])?,
                reset_after: Duration::from_micros(non_neg(pair[1])?),
            })
        })
        .collect::<Result<Statuses, BackendError>>()?;
    match (reply[0], reply[1]) {
        (1, 0) => Ok(Decision::new(statuses, None)),
        (0, i) if i >= 1 && (i as usize) <= quotas.len() => {
            let retry_after = Duration::from_micros(non_neg(reply[2])?);
            Ok(Decision::new(statuses, Some((i as usize - 1, retry_after))))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn two_quotas() -> [Quota; 2] {
        [Quota::per_second(10), Quota::per_minute(100)]
    }

    fn status(quota: Quota, remaining: u64, reset_us: u64) -> QuotaStatus {
        QuotaStatus {
            limit: quota.limit(),
            window: quota.window(),
            remaining,
            reset_after: Duration::from_micros(reset_us),
        }
    }

    #[test]
    fn decode_allowed() {
        let [a, b] = two_quotas();
        let d = decode(&[1, 0, 0, 9, 1_000_000, 99, 60_000_000], &[a, b]).unwrap();
        assert_eq!(
            d,
            Decision::allowed(vec![status(a, 9, 1_000_000), status(b, 99, 60_000_000)])
        );
        // The retry-after of an admission is ignored, as the scripts send 0.
        let d = decode(&[1, 0, 7, 9, 1, 99, 2], &[a, b]).unwrap();
        assert!(d.is_allowed());
        assert_eq!(d.retry_after(), None);
    }

    #[test]
    fn decode_denied() {
        let [a, b] = two_quotas();
        let reply = [0, 2, 30_000_000, 4, 500_000, 0, 30_000_000];
        let d = decode(&reply, &[a, b]).unwrap();
        assert_eq!(
            d,
            Decision::denied(
                vec![status(a, 4, 500_000), status(b, 0, 30_000_000)],
                1,
                Duration::from_secs(30)
            )
        );
        assert_eq!(d.denied_by(), Some(1));
        let d = decode(&[0, 1, 1, 0, 1, 5, 1], &[a, b]).unwrap();
        assert_eq!(d.denied_by(), Some(0));
        assert_eq!(d.retry_after(), Some(Duration::from_micros(1)));
    }

    #[track_caller]
    fn assert_protocol_error(reply: &[i64], quotas: &[Quota]) {
        match decode(reply, quotas) {
            Err(BackendError::Protocol(message)) => {
                assert_eq!(message, format!("{reply:?}"));
            }
            other => panic!("{reply:?}: {other:?}"),
        }
    }

    #[test]
    fn decode_rejects_bad_lengths() {
        let [a, b] = two_quotas();
        for reply in [
            &[][..],
            &[1, 0, 0],
            &[1, 0, 0, 9, 1],
            &[1, 0, 0, 9, 1, 99],
            &[1, 0, 0, 9, 1, 99, 2, 0],
        ] {
            assert_protocol_error(reply, &[a, b]);
        }
        assert_protocol_error(&[1, 0, 0, 9, 1, 99, 2], &[a]);
    }

    #[test]
    fn decode_rejects_negative_values() {
        let [a, b] = two_quotas();
        for reply in [
            [1, 0, 0, -1, 1, 99, 2],
            [1, 0, 0, 9, -1, 99, 2],
            [1, 0, 0, 9, 1, 99, i64::MIN],
            [0, 1, -1, 0, 1, 99, 2],
            [0, 2, 5, 0, -5, 0, 2],
        ] {
            assert_protocol_error(&reply, &[a, b]);
        }
    }

    #[test]
    fn decode_rejects_bad_flags_and_denied_indexes() {
        let [a, b] = two_quotas();
        for head in [
            [0, 0, 5],  // denied, by no quota
            [0, 3, 5],  // denied by a third quota of two
            [0, -1, 5], // a negative index
            [1, 1, 0],  // admitted, yet denied by a quota
            [2, 0, 0],  // not a flag
            [-1, 0, 0],
        ] {
            let mut reply = head.to_vec();
            reply.extend([9, 1, 99, 2]);
            assert_protocol_error(&reply, &[a, b]);
        }
    }

    #[test]
    fn a_lone_call_is_evalsha_of_its_keys_and_args() {
        let [a, b] = two_quotas();
        let nonces = Nonces::new();
        let key = Key::new("203.0.113.9");
        for &algorithm in Algorithm::ALL {
            let policy = Policy::new("p").quota(a).quota(b).algorithm(algorithm);
            let call = call("rl", &nonces, &policy, &key, 3);
            let nonce = call.nonce.as_str();
            assert_eq!(nonce.is_empty(), !algorithm.spec().nonce);
            let keys = keys("rl", &policy, &key);
            let mut want = redis::cmd("EVALSHA");
            want.arg(script(algorithm).get_hash())
                .arg(keys.len())
                .arg(&keys)
                .arg(args(policy.quotas(), 3, nonce));
            assert_eq!(
                call.evalsha().get_packed_command(),
                want.get_packed_command(),
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn args_follow_the_documented_layout() {
        let [a, b] = two_quotas();
        assert_eq!(
            args(&[a, b], 3, "ab.1"),
            ["3", "ab.1", "10", "1000000", "100", "60000000"]
        );
        assert_eq!(args(&[a], 1, ""), ["1", "", "10", "1000000"]);
    }

    #[test]
    fn nonces_are_unique_and_only_for_algorithms_that_need_them() {
        let nonces = Nonces::new();
        let seen: HashSet<String> = (0..1000)
            .map(|_| nonces.next().as_str().to_owned())
            .collect();
        assert_eq!(seen.len(), 1000);
        let first = Nonces::new().next();
        let (instance, seq) = first.as_str().split_once('.').unwrap();
        assert!(u64::from_str_radix(instance, 16).is_ok(), "{first:?}");
        assert_eq!(seq, "0");
        // Written in place as `format!` writes it.
        for (instance, seq) in [
            (0, 0),
            (1, 15),
            (16, 255),
            (u64::MAX, u64::MAX),
            (0xabc, 1 << 60),
        ] {
            let nonces = Nonces {
                instance,
                seq: AtomicU64::new(seq),
            };
            assert_eq!(nonces.next().as_str(), format!("{instance:x}.{seq:x}"));
        }
        assert_eq!(Nonce::NONE.as_str(), "");
        assert!(Algorithm::SlidingLog.spec().nonce);
        assert!(!Algorithm::SlidingWindow.spec().nonce);
        assert!(!Algorithm::Gcra.spec().nonce);
    }

    /// A command's words, as text.
    fn words(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
                other => panic!("not a plain word: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn peek_calls_follow_the_documented_layout() {
        let key = Key::new("203.0.113.9");
        for &algorithm in Algorithm::ALL {
            let policy = Policy::new("p")
                .algorithm(algorithm)
                .quota(Quota::per_second(10))
                .quota(Quota::per_minute(100));
            let call = peek_call("rl", &policy, &key);
            assert_eq!(call.script().get_hash(), peek_script(algorithm).get_hash());
            let [k1, k2] = <[String; 2]>::try_from(keys("rl", &policy, &key)).unwrap();
            let sha = peek_script(algorithm).get_hash().to_owned();
            // Cost 1 (PEEK_COST), no nonce, then each quota's limit and window.
            let tail = [k1, k2, "1".into(), "".into()]
                .into_iter()
                .chain(["10", "1000000", "100", "60000000"].map(String::from));
            let expected: Vec<String> = ["EVALSHA_RO".to_owned(), sha.clone(), "2".to_owned()]
                .into_iter()
                .chain(tail.clone())
                .collect();
            assert_eq!(words(&call.command(true)), expected, "{algorithm:?}");
            let expected: Vec<String> = ["EVALSHA".to_owned(), sha, "2".to_owned()]
                .into_iter()
                .chain(tail)
                .collect();
            assert_eq!(words(&call.command(false)), expected, "{algorithm:?}");
        }
        assert_eq!(PEEK_COST, 1);
    }

    #[test]
    fn peek_replies_decode_like_check_replies() {
        // A peek at a full sliding log (5 per minute) whose oldest entry
        // leaves in 57 s: denied for a request of cost 1.
        let quota = Quota::per_minute(5);
        let d = decode(&[0, 1, 57_000_000, 0, 59_000_000], &[quota]).unwrap();
        assert_eq!(
            d,
            Decision::denied(
                vec![status(quota, 0, 59_000_000)],
                0,
                Duration::from_secs(57)
            )
        );
        // A client with nothing counted.
        let d = decode(&[1, 0, 0, 5, 0], &[quota]).unwrap();
        assert_eq!(d, Decision::allowed(vec![status(quota, 5, 0)]));
        assert_protocol_error(&[1, 0, 0, 5], &[quota]);
    }

    #[test]
    fn reset_is_one_del_of_every_key() {
        let key = Key::new("203.0.113.9");
        let policy = Policy::auth().quota(Quota::per_hour(20));
        let cmd = reset_command("rl", &policy, &key).unwrap();
        assert_eq!(
            words(&cmd),
            [
                "DEL",
                "rl:{auth:203.0.113.9}:w60000",
                "rl:{auth:203.0.113.9}:w3600000"
            ]
        );
        assert!(reset_command("rl", &Policy::new("none"), &key).is_none());
    }

    #[test]
    fn only_a_refusal_of_evalsha_ro_itself_falls_back() {
        use redis::{ErrorKind, RedisError, ServerErrorKind};
        let error = |kind, detail: &str| RedisError::from((kind, "server", detail.to_owned()));
        let err = ErrorKind::Server(ServerErrorKind::ResponseError);
        let noperm = ErrorKind::Server(ServerErrorKind::NoPerm);
        // Redis 6 and a renamed command; an ACL without `+evalsha_ro`.
        for (kind, detail) in [
            (
                err,
                "unknown command `EVALSHA_RO`, with args beginning with: `ab`, ",
            ),
            (
                err,
                "unknown command 'evalsha_ro', with args beginning with: 'ab' ",
            ),
            (
                noperm,
                "User app has no permissions to run the 'evalsha_ro' command",
            ),
        ] {
            assert!(read_only_refused(&error(kind, detail)), "{detail}");
        }
        for (kind, detail) in [
            // A script error, a refused key, a missing script, other commands.
            (
                err,
                "user_script:3: Write commands are not allowed from read-only scripts",
            ),
            (noperm, "No permissions to access a key"),
            (
                ErrorKind::Server(ServerErrorKind::NoScript),
                "No matching script",
            ),
            (err, "unknown command 'FOO', with args beginning with: "),
            (ErrorKind::Io, "unknown command `EVALSHA_RO`"),
        ] {
            assert!(!read_only_refused(&error(kind, detail)), "{detail}");
        }
    }

    #[test]
    fn refunds_have_their_own_scripts_and_send_only_what_redis_took() {
        let mut hashes = HashSet::new();
        for &algorithm in Algorithm::ALL {
            let refund = refund_script(algorithm).get_hash();
            assert_ne!(refund, script(algorithm).get_hash(), "{algorithm:?}");
            assert_ne!(refund, peek_script(algorithm).get_hash(), "{algorithm:?}");
            assert!(hashes.insert(refund), "{algorithm:?}");
        }
        let key = Key::new("203.0.113.9");
        let nonces = Nonces::new();
        for &algorithm in Algorithm::ALL {
            let policy = Policy::new("p")
                .algorithm(algorithm)
                .quota(Quota::per_minute(10));
            let call = call("rl", &nonces, &policy, &key, 2);
            // An admission carries a ticket of its cost and, for the log,
            // its nonce; a denial none.
            let admitted = call.decode(&[1, 0, 0, 8, 60_000_000]).unwrap();
            let ticket = admitted.ticket().unwrap();
            assert_eq!(ticket.cost(), 2);
            match &ticket.stamp.origin {
                Origin::Redis { nonce, .. } => {
                    assert_eq!(
                        nonce.as_ref().map(Nonce::as_str),
                        Some(call.nonce.as_str()).filter(|n| !n.is_empty())
                    );
                }
                other => panic!("{other:?}"),
            }
            let denied = call.decode(&[0, 1, 5, 0, 60_000_000]).unwrap();
            assert!(denied.ticket().is_none());
            assert!(refund_call("rl", &policy, &key, 1, &ticket).is_some());
            // Nothing to give back: nothing sent.
            assert!(refund_call("rl", &policy, &key, 0, &ticket).is_none());
            assert!(refund_call("rl", &Policy::new("none"), &key, 1, &ticket).is_none());
            // A ticket of the in-process model: Redis took nothing.
            let memory = Decision::allowed(vec![])
                .stamped(2, Origin::Memory { at: 1 })
                .ticket()
                .unwrap();
            assert!(refund_call("rl", &policy, &key, 2, &memory).is_none());
        }
    }

    #[test]
    fn charges_have_their_own_scripts_and_send_something_to_count() {
        let mut hashes = HashSet::new();
        for &algorithm in Algorithm::ALL {
            let charge = charge_script(algorithm).get_hash();
            assert_ne!(charge, script(algorithm).get_hash(), "{algorithm:?}");
            assert_ne!(charge, peek_script(algorithm).get_hash(), "{algorithm:?}");
            assert_ne!(charge, refund_script(algorithm).get_hash(), "{algorithm:?}");
            assert!(hashes.insert(charge), "{algorithm:?}");
            // The cap the Lua spells out is the model's.
            let cap = format!("{} * limit", crate::algorithm::MAX_DEBT_WINDOWS);
            assert!(algorithm.spec().charge_lua.contains(&cap), "{algorithm:?}");
        }
        let key = Key::new("203.0.113.9");
        let nonces = Nonces::new();
        for &algorithm in Algorithm::ALL {
            let policy = Policy::new("p")
                .algorithm(algorithm)
                .quota(Quota::per_minute(10));
            assert!(charge_call("rl", &nonces, &policy, &key, 5_000).is_some());
            // Nothing to count: nothing sent.
            assert!(charge_call("rl", &nonces, &policy, &key, 0).is_none());
            assert!(charge_call("rl", &nonces, &Policy::new("none"), &key, 1).is_none());
        }
    }

    #[test]
    fn every_algorithm_has_its_own_script_and_tag() {
        let mut hashes = HashSet::new();
        let mut tags = HashSet::new();
        for &algorithm in Algorithm::ALL {
            let spec = algorithm.spec();
            assert_eq!(
                script(algorithm).get_hash(),
                Script::new(spec.lua).get_hash()
            );
            assert!(hashes.insert(script(algorithm).get_hash()), "{algorithm:?}");
            assert_eq!(
                peek_script(algorithm).get_hash(),
                Script::new(spec.peek_lua).get_hash()
            );
            assert!(
                hashes.insert(peek_script(algorithm).get_hash()),
                "{algorithm:?}: its peek script is its own"
            );
            assert!(tags.insert(spec.tag), "{algorithm:?}");
        }
    }
}
