//! Batching: checks waiting for the same lane go out as one script call
//! that decides them in order.
//!
//! A lone check is sent at once, as its algorithm's own `EVALSHA` (no timer,
//! no added latency). While a call is in flight, further checks queue; when
//! it returns, everything queued (up to the batch size) goes out as one call
//! of the batch script, which runs each check's algorithm in arrival order,
//! each seeing the writes of those before it, exactly as that many single
//! calls would. One call is in flight per lane at a time.
//!
//! Lanes: a single node or a Sentinel primary has one lane (0). On a Redis
//! Cluster a script call may only touch keys of one hash slot, so each hash
//! slot is a lane of its own (every key of a decision shares the hash tag
//! `{<policy>:<key>}`): checks are batched with those of the same slot only,
//! and the lanes run independently, each with its own call in flight. A
//! lane exists only while a call is in flight on it (its entry is removed
//! when it goes idle with nothing queued), so memory follows the load, not
//! the 16384 slots. On a cluster every call runs detached from its callers,
//! bounded and abandoned as `connection::cluster` describes: the lone call
//! through `Cluster::detached`, the batch calls in the lane's draining task,
//! each holding one of the same permits.
//!
//! The batch script is made at start-up from the algorithms' own scripts
//! (see `batch_lua`: the functions each defines above its `-- main` line),
//! and called as:
//!
//! ```text
//! ARGV[1]                 number of runs
//! then per run            code = alg + 4 * (fresh + 2 * (implicit + 2 * n)):
//!                           alg: the algorithm (1-based, `Algorithm::ALL`
//!                           order); n: how many identical checks in a row
//!                           the run stands for; fresh: 1 if the cost and
//!                           quotas follow, 0 if they are the previous run's;
//!                           implicit: 1 if the run's keys are the next ones
//!                           of KEYS, 0 if their indexes in KEYS follow
//!                         the nonce, if the algorithm takes one
//!                         if fresh: the quota count q, the cost, and each
//!                           quota's limit and window (µs)
//!                         unless implicit: the q keys' indexes in KEYS
//! KEYS                    every distinct key, once, in order of first use
//! ```
//!
//! So a check of one quota whose key is new to the batch takes one argument
//! when its cost and quotas are those of the check before it (distinct
//! clients of one policy), five when not, besides its key.
//!
//! It replies, per check in order, the length of that check's reply, then
//! the reply. A failed batch call (a connection error, a script error) fails
//! every check in it with that error; checks decided before a script error
//! inside the call keep their effect, as when a lone call fails after Redis
//! ran it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use redis::{Script, ScriptInvocation};
use tokio::sync::oneshot;

use super::Inner;
#[cfg(feature = "cluster")]
use super::connection::Connection;
use super::connection::Request;
use super::script::Call;
use crate::algorithm::Algorithm;
use crate::decision::Decision;
use crate::error::BackendError;

/// The default largest number of checks per batch call.
pub(super) const DEFAULT_MAX: usize = 64;

/// The largest batch size the builder accepts.
pub(super) const MAX_MAX: usize = 1024;

/// The longest a batch call may run before its checks fail (the
/// connection's own timeouts end it much sooner in practice); the batcher
/// then sends what queued meanwhile.
const MAX_BATCH_TIME: Duration = Duration::from_secs(10);

/// The line of an algorithm's script above which it defines the functions
/// the batch script calls (see `batch_lua`), and below which its script
/// decides one check with them (for the counter and GCRA, the first line of
/// `algorithm/state_main.lua`).
const MAIN: &str = "\n-- main\n";

/// The Lua source of the batch script.
///
/// Every check of a batch is decided at the instant the batch starts (`TIME`
/// is read once: Redis runs the batch atomically, so no other client can
/// tell the difference).
///
/// An algorithm whose script keeps a state per key (the counter, GCRA)
/// defines above its line `-- main` six functions on a quota's state as
/// three numbers: `state(value, now, window)` turns a key's stored value
/// into its state at `now`, `retry(x, y, z, now, limit, window, cost)` says
/// how long until a cost fits (0 or less: now), `count(...)` counts it,
/// `status(...)` gives the remaining units and reset, `check1(...)` does
/// all three for a check of one quota in one call (the common case: a Lua
/// call costs about as much as the maths), `write(key, x, y, z, now,
/// window)` stores a state. The batch reads each key once (`GET`),
/// keeps its state in parallel arrays indexed by the key's position in
/// `KEYS` (each key appears once there) from one check to the next, and
/// writes each changed key once when the batch ends (also when a check
/// fails with a script error, so that the checks decided before it keep
/// their effect, as with single calls; the batch's first write is made at
/// once, see `oom` in the script). No table is made per check, and a hot
/// key's checks cost one `GET` and one `SET` per batch, no parsing or
/// formatting per check.
///
/// The sliding log defines `decide(keys, n, qv, q, now, cost, nonce, full,
/// out, m)` instead, which the batch calls once per check (its state is the
/// sorted set itself), writing its reply straight into the batch's.
pub(super) fn batch_lua() -> String {
    let mut lua = String::from(
        "local clock = redis.call('TIME')
local now = clock[1] * 1000000 + clock[2]
-- Whether Redis is past maxmemory: unknown (nil) until the batch's first
-- write. Redis refuses a script's first write that may grow memory (`ZADD`,
-- `SET`) when it is, and lets every later write through: so the batch's
-- first write is made at once, when its check is decided, and tells; from
-- then on the batch refuses every check that would write if it was
-- refused, as that check alone would have been. (No probe: a probe that
-- writes nothing, such as a `ZADD XX`, fails with WRONGTYPE on the
-- counter's and GCRA's keys, an error Redis counts in `INFO errorstats`.)
local oom
-- A check that failed with a script error (a key of the wrong type, a
-- value that is not ours, maxmemory) replies {-1, code} and fails alone:
-- 1 wrong type, 2 out of memory, 3 anything else.
local function fault(e)
  if type(e) == 'table' then e = e.err end
  e = tostring(e)
  if string.find(e, 'WRONGTYPE', 1, true) then return 1 end
  if string.find(e, 'OOM', 1, true) then return 2 end
  return 3
end
-- Runs' codes repeat (every one-quota check of a new key of the same
-- policy has the same): each distinct one is converted once per batch.
local codes = {}
local nk = #KEYS
-- Per key (its index in KEYS): its state (x, y, z; nil until read), and
-- while it must be written, its algorithm (else nil) and window.
local X, Y, Z, dirty, windows = {}, {}, {}, {}, {}
-- Each algorithm's functions, made when a run first needs them (making
-- them all costs about a check's worth).
local api, make = {}, {}
",
    );
    for (i, algorithm) in Algorithm::ALL.iter().enumerate() {
        let script = algorithm.spec().lua;
        let (functions, _) = script
            .split_once(MAIN)
            .expect("every algorithm's script has a `-- main` line");
        let exports = if functions.contains("\nlocal function decide(") {
            "{decide = decide}"
        } else {
            "{state = state, retry = retry, count = count, status = status, check1 = check1, write = write}"
        };
        lua.push_str(&format!(
            "make[{}] = function()\n{functions}\nreturn {exports}\nend\n",
            i + 1
        ));
    }
    lua.push_str(
        "local out = {}
-- The current run's cost and quotas (limit, window of quota i at 2i - 1,
-- 2i), parsed once and kept while runs say they are the same; its keys'
-- indexes in KEYS, and its keys (for `decide`).
local cost, nq, qv, J, keys = 0, 0, {}, {}, {}
-- The batch's first write (see `oom`), made at once: key j's new state.
-- Nil if written, else the check's failure code.
local function first_write(write, j, x, y, z, window)
  local ok, e = pcall(write, KEYS[j], x, y, z, now, window)
  if ok then
    oom = false
    return nil
  end
  local code = fault(e)
  if code == 2 then oom = true end
  return code
end
local function run()
  local m, a, k = 0, 1, 0
  for _ = 1, tonumber(ARGV[1]) do
    local code = codes[ARGV[a + 1]]
    if code == nil then
      code = tonumber(ARGV[a + 1])
      codes[ARGV[a + 1]] = code
    end
    a = a + 1
    local alg = code % 4
    code = (code - alg) / 4
    local fresh = code % 2
    code = (code - fresh) / 2
    local implicit = code % 2
    local runs = (code - implicit) / 2
    local f = api[alg]
    if f == nil then
      f = make[alg]()
      api[alg] = f
    end
    local decide, nonce = f.decide
    if decide then
      nonce = ARGV[a + 1]
      a = a + 1
    end
    if fresh == 1 then
      nq, cost = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
      a = a + 2
      for i = 1, 2 * nq do qv[i] = tonumber(ARGV[a + i]) end
      a = a + 2 * nq
    end
    if implicit == 1 then
      for i = 1, nq do J[i] = k + i end
      k = k + nq
    else
      for i = 1, nq do
        local j = tonumber(ARGV[a + i])
        J[i] = j
        if j > k then k = j end
      end
      a = a + nq
    end
    if decide then
      for i = 1, nq do keys[i] = KEYS[J[i]] end
      for _ = 1, runs do
        local at = m + 1
        local ok, e = pcall(decide, keys, nq, qv, 0, now, cost, nonce, oom == true, out, at)
        if ok then
          -- An admission wrote (a ZADD Redis let through).
          if out[at + 1] == 1 and cost > 0 then oom = false end
          out[at], m = e - at, e
        else
          for i = at + 1, at + 3 + 2 * nq do out[i] = nil end
          local code = fault(e)
          if code == 2 then oom = true end
          out[at], out[at + 1], out[at + 2], m = 2, -1, code, at + 2
        end
      end
    else
      local state, retry, count, status = f.state, f.retry, f.count, f.status
      -- A key that cannot be read fails the checks of this run only.
      local broken
      for i = 1, nq do
        local j = J[i]
        if X[j] == nil then
          local v = redis.pcall('GET', KEYS[j])
          if type(v) == 'table' then
            broken = fault(v)
            break
          end
          X[j], Y[j], Z[j] = state(v, now, qv[2 * i])
        end
      end
      if nq == 1 and not broken then
        -- One quota (the common case): one call per check.
        local j, limit, window, check1 = J[1], qv[1], qv[2], f.check1
        for _ = 1, runs do
          local wait, x, y, z, remaining, reset = check1(X[j], Y[j], Z[j], now, limit, window, cost)
          local failed, written
          if wait == 0 and cost > 0 then
            if oom then
              failed = 2
            elseif oom == nil then
              failed = first_write(f.write, j, x, y, z, window)
              written = failed == nil
            end
            if not failed then
              X[j], Y[j], Z[j] = x, y, z
              if not written then dirty[j], windows[j] = alg, window end
            end
          end
          if failed then
            out[m + 1], out[m + 2], out[m + 3] = 2, -1, failed
            m = m + 3
          elseif wait > 0 then
            out[m + 1], out[m + 2], out[m + 3], out[m + 4], out[m + 5], out[m + 6] =
              5, 0, 1, wait, remaining, reset
            m = m + 6
          else
            out[m + 1], out[m + 2], out[m + 3], out[m + 4], out[m + 5], out[m + 6] =
              5, 1, 0, 0, remaining, reset
            m = m + 6
          end
        end
        runs = 0
      end
      for _ = 1, runs do
        local denied, wait = 0, 0
        if not broken then
          for i = 1, nq do
            local j = J[i]
            local r = retry(X[j], Y[j], Z[j], now, qv[2 * i - 1], qv[2 * i], cost)
            if r > wait then denied, wait = i, r end
          end
        end
        local admit = denied == 0 and cost > 0
        -- A failure: the run's unreadable key, or an admission that cannot
        -- be written (past maxmemory: it fails, and counts nothing).
        local failed, written = broken
        if failed == nil and admit and oom then
          failed = 2
        elseif failed == nil and admit and oom == nil and nq > 0 then
          -- The batch's first write (see `oom`): its first key (the rest
          -- when the batch ends).
          local j = J[1]
          local x, y, z = count(X[j], Y[j], Z[j], now, qv[1], qv[2], cost)
          failed = first_write(f.write, j, x, y, z, qv[2])
          if failed == nil then written = j end
        end
        if failed then
          out[m + 1], out[m + 2], out[m + 3] = 2, -1, failed
          m = m + 3
        else
          out[m + 1], out[m + 2], out[m + 3], out[m + 4] =
            3 + 2 * nq, denied == 0 and 1 or 0, denied, wait
          m = m + 4
          for i = 1, nq do
            local j, limit, window = J[i], qv[2 * i - 1], qv[2 * i]
            local x, y, z = X[j], Y[j], Z[j]
            if admit then
              x, y, z = count(x, y, z, now, limit, window, cost)
              X[j], Y[j], Z[j] = x, y, z
              if j ~= written then dirty[j], windows[j] = alg, window end
            end
            out[m + 1], out[m + 2] = status(x, y, z, now, limit, window)
            m = m + 2
          end
        end
      end
    end
  end
end
local ok, err = pcall(run)
for j = 1, nk do
  local alg = dirty[j]
  if alg then api[alg].write(KEYS[j], X[j], Y[j], Z[j], now, windows[j]) end
end
if not ok then error(err, 0) end
return out
",
    );
    lua
}

/// The batch script.
static BATCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&batch_lua()));

/// The batch call deciding `calls` in order (see `encode`).
pub(super) fn batch_invocation<'a>(
    calls: impl Iterator<Item = &'a Call>,
) -> ScriptInvocation<'static> {
    let mut invocation = BATCH_SCRIPT.prepare_invoke();
    encode(calls, &mut invocation);
    invocation
}

/// Where a batch call's keys and arguments go: its invocation (or, in the
/// tests, lists of words).
trait Words {
    fn key(&mut self, key: &str);
    fn number(&mut self, n: u64);
    fn text(&mut self, text: &str);
}

impl Words for ScriptInvocation<'static> {
    fn key(&mut self, key: &str) {
        ScriptInvocation::key(self, key);
    }

    fn number(&mut self, n: u64) {
        self.arg(n);
    }

    fn text(&mut self, text: &str) {
        self.arg(text);
    }
}

/// The keys and arguments of the batch call deciding `calls` in order (see
/// the module docs for the layout). A run of identical checks (same
/// algorithm, keys and arguments: a hot client's checks of the same cost;
/// never the sliding log's, whose nonces differ) goes out once, with its
/// length: Redis decides it that many times, one check after the other.
/// Each distinct key goes out once.
fn encode<'a>(calls: impl Iterator<Item = &'a Call>, out: &mut impl Words) {
    let mut runs: Vec<(&Call, usize)> = Vec::new();
    for call in calls {
        match runs.last_mut() {
            Some((last, n)) if last.same_check(call) => *n += 1,
            _ => runs.push((call, 1)),
        }
    }
    out.number(runs.len() as u64);
    // Each distinct key's index in KEYS (1-based), in order of first use.
    let mut index: HashMap<&str, u64> = HashMap::new();
    let mut previous: Option<&Call> = None;
    for (call, n) in runs {
        let alg = Algorithm::ALL.iter().position(|&a| a == call.algorithm);
        let alg = alg.expect("every algorithm is in Algorithm::ALL") as u64 + 1;
        let fresh = previous.is_none_or(|p| p.cost != call.cost || p.quotas != call.quotas);
        // The keys are the next ones of KEYS when none was used before (nor
        // twice in this check).
        let implicit = call
            .keys
            .iter()
            .enumerate()
            .all(|(i, key)| !index.contains_key(key.as_str()) && !call.keys[..i].contains(key));
        let (fresh_bit, implicit_bit) = (u64::from(fresh), u64::from(implicit));
        out.number(alg + 4 * (fresh_bit + 2 * (implicit_bit + 2 * n as u64)));
        if call.algorithm.spec().nonce {
            out.text(&call.nonce);
        }
        if fresh {
            for n in call.batch_args() {
                out.number(n);
            }
        }
        for key in &call.keys {
            let next = index.len() as u64 + 1;
            let i = *index.entry(key).or_insert_with(|| {
                out.key(key);
                next
            });
            if !implicit {
                out.number(i);
            }
        }
        previous = Some(call);
    }
}

/// Splits a batch reply into `n` replies; `None` if it is not `n` replies,
/// each prefixed with its length.
pub(super) fn split(reply: &[i64], n: usize) -> Option<Vec<&[i64]>> {
    let mut out = Vec::with_capacity(n);
    let mut rest = reply;
    for _ in 0..n {
        let (&len, tail) = rest.split_first()?;
        let len = usize::try_from(len).ok()?;
        if len > tail.len() {
            return None;
        }
        out.push(&tail[..len]);
        rest = &tail[len..];
    }
    rest.is_empty().then_some(out)
}

/// The outcome of one check: its decision, or the call's error.
pub(super) type Reply = Result<Decision, BackendError>;

/// A queued check.
struct Waiting {
    call: Call,
    reply: oneshot::Sender<Reply>,
}

/// The batching of one backend's checks, in independent lanes.
pub(super) struct Batcher {
    max: usize,
    /// The busy lanes: a lane has an entry while a call is in flight on it
    /// (or is about to be sent), and only then. A map, not an array of the
    /// 16384 slots: an array would take 640 KiB per backend (one lane on a
    /// single node), and the map's lookups cost about 50 ns per lone check
    /// (measured: insert and remove under the lock), nothing beside a
    /// round trip to Redis. Its capacity stays at the most lanes ever busy
    /// at once: at most 16384 small entries.
    lanes: Mutex<HashMap<u16, State>>,
}

/// A busy lane.
#[derive(Default)]
struct State {
    /// The checks waiting for the call in flight to end.
    queue: VecDeque<Waiting>,
}

/// What to do with a check.
pub(super) enum Submitted {
    /// Send it now, alone, holding a [`Lead`] until the call ends.
    Lead(Call),
    /// Wait for its reply: it goes out in a batch.
    Queued(oneshot::Receiver<Reply>),
}

impl Batcher {
    /// Batches of up to `max` checks.
    pub(super) fn new(max: usize) -> Self {
        Self {
            max,
            lanes: Mutex::default(),
        }
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, HashMap<u16, State>> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `call` now if nothing is in flight on `lane`, else queues it.
    pub(super) fn submit(&self, lane: u16, call: Call) -> Submitted {
        let mut lanes = self.lanes();
        match lanes.get_mut(&lane) {
            Some(state) => {
                let (tx, rx) = oneshot::channel();
                state.queue.push_back(Waiting { call, reply: tx });
                Submitted::Queued(rx)
            }
            None => {
                lanes.insert(lane, State::default());
                Submitted::Lead(call)
            }
        }
    }

    /// The next batch of `lane`, or `None` (and the lane idle, its entry
    /// gone) if no check is waiting.
    fn next_batch(&self, lane: u16) -> Option<Vec<Waiting>> {
        let mut lanes = self.lanes();
        let state = lanes.get_mut(&lane)?;
        if state.queue.is_empty() {
            lanes.remove(&lane);
            return None;
        }
        let n = state.queue.len().min(self.max);
        Some(state.queue.drain(..n).collect())
    }

    /// How many lanes are busy.
    #[cfg(test)]
    fn busy(&self) -> usize {
        self.lanes().len()
    }
}

/// A lone call in flight on a lane: when it ends (or is dropped), the
/// checks queued meanwhile on that lane go out.
pub(super) struct Lead {
    inner: Arc<Inner>,
    lane: u16,
}

impl Lead {
    /// The guard of the lone call that [`Batcher::submit`] answered with
    /// [`Submitted::Lead`] for `lane`.
    pub(super) fn new(inner: Arc<Inner>, lane: u16) -> Self {
        Self { inner, lane }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        done(&self.inner, self.lane);
    }
}

/// A call on `lane` ended: sends what queued meanwhile, in a task of its
/// own, or marks the lane idle.
fn done(inner: &Arc<Inner>, lane: u16) {
    let Some(batcher) = &inner.batcher else {
        return;
    };
    let Some(batch) = batcher.next_batch(lane) else {
        return;
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(drain(Arc::clone(inner), lane, batch));
        }
        Err(_) => {
            // No runtime to send from (a check dropped outside one): fail
            // the waiting checks rather than leave them waiting.
            drop(batch);
            while batcher.next_batch(lane).is_some() {}
        }
    }
}

/// Sends batches of `lane` until no check is waiting on it.
async fn drain(inner: Arc<Inner>, lane: u16, mut batch: Vec<Waiting>) {
    loop {
        send(&inner, batch).await;
        let Some(batcher) = &inner.batcher else {
            return;
        };
        match batcher.next_batch(lane) {
            Some(next) => batch = next,
            None => return,
        }
    }
}

/// Sends `invocation` from a lane's draining task: bounded and abandoned
/// like a detached call on a cluster, else abandoned after
/// [`MAX_BATCH_TIME`].
async fn call(
    inner: &Inner,
    invocation: &ScriptInvocation<'static>,
) -> Result<Vec<i64>, BackendError> {
    let call = inner.send::<Vec<i64>>(Request::Script(invocation));
    #[cfg(feature = "cluster")]
    if let Connection::Cluster(cluster) = &inner.connection {
        return cluster.bounded(call).await;
    }
    tokio::time::timeout(MAX_BATCH_TIME, call)
        .await
        .unwrap_or_else(|_| Err(abandoned()))
}

/// Sends one batch (a lone check as its own script) and hands each check its
/// decision.
async fn send(inner: &Inner, batch: Vec<Waiting>) {
    if let [one] = batch.as_slice() {
        let result = call(inner, &one.call.invocation())
            .await
            .map_err(super::script::key_fault);
        let [one] = <[Waiting; 1]>::try_from(batch).ok().expect("one check");
        let _ = one
            .reply
            .send(result.and_then(|reply| one.call.decode(&reply)));
        return;
    }
    let invocation = batch_invocation(batch.iter().map(|w| &w.call));
    let result = call(inner, &invocation).await;
    match result {
        Ok(reply) => match split(&reply, batch.len()) {
            Some(replies) => {
                for (waiting, reply) in batch.into_iter().zip(replies) {
                    let _ = waiting.reply.send(waiting.call.decode(reply));
                }
            }
            None => {
                for waiting in batch {
                    let error = BackendError::Protocol(format!("batch reply {reply:?}"));
                    let _ = waiting.reply.send(Err(error));
                }
            }
        },
        Err(error) => {
            for waiting in batch {
                let _ = waiting.reply.send(Err(copy(&error)));
            }
        }
    }
}

fn abandoned() -> BackendError {
    BackendError::Protocol("redis batch call abandoned after 10 s".to_owned())
}

/// The same error, for every check of a failed batch.
fn copy(error: &BackendError) -> BackendError {
    match error {
        BackendError::Connection(e) => match e.downcast_ref::<redis::RedisError>() {
            Some(e) => super::failure(e.clone()),
            None => BackendError::Connection(e.to_string().into()),
        },
        BackendError::Protocol(m) => BackendError::Protocol(m.clone()),
        BackendError::Key(m) => BackendError::Key(m.clone()),
        other => BackendError::Protocol(other.to_string()),
    }
}

/// The reply of a queued check.
pub(super) async fn wait(rx: oneshot::Receiver<Reply>) -> Reply {
    rx.await.unwrap_or_else(|_| {
        Err(BackendError::Protocol(
            "the batch of this check was dropped".to_owned(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_checks_every_length() {
        assert_eq!(
            split(&[3, 1, 0, 0, 5, 0, 1, 9, 2, 3], 2),
            Some(vec![&[1, 0, 0][..], &[0, 1, 9, 2, 3][..]])
        );
        assert_eq!(split(&[], 0), Some(vec![]));
        for (reply, n) in [
            (&[3, 1, 0][..], 1),
            (&[3, 1, 0, 0, 7][..], 1),
            (&[-1, 1][..], 1),
            (&[3, 1, 0, 0][..], 2),
        ] {
            assert_eq!(split(reply, n), None, "{reply:?}");
        }
    }

    fn a_call(n: u64) -> Call {
        let policy = crate::Policy::new("lanes").quota(crate::Quota::per_hour(10));
        let key = crate::Key::new(format!("k{n}"));
        super::super::script::call("t", &super::super::script::Nonces::new(), &policy, &key, 1)
    }

    #[test]
    fn lanes_are_independent_and_idle_lanes_leave_nothing() {
        let batcher = Batcher::new(2);
        // The first check of each lane leads; the next ones queue there.
        for lane in [7, 9, 16_383] {
            assert!(matches!(
                batcher.submit(lane, a_call(0)),
                Submitted::Lead(_)
            ));
        }
        let mut waiting = Vec::new();
        for n in 0..3 {
            match batcher.submit(7, a_call(n)) {
                Submitted::Queued(rx) => waiting.push(rx),
                Submitted::Lead(_) => panic!("lane 7 is busy"),
            }
        }
        assert_eq!(batcher.busy(), 3);
        // Lane 7 drains in batches of at most 2, in arrival order.
        let first = batcher.next_batch(7).unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].call.keys, a_call(0).keys);
        assert_eq!(first[1].call.keys, a_call(1).keys);
        assert_eq!(batcher.next_batch(7).unwrap().len(), 1);
        // Still busy until a look finds nothing waiting; then gone.
        assert_eq!(batcher.busy(), 3);
        assert!(batcher.next_batch(7).is_none());
        assert!(batcher.next_batch(9).is_none());
        assert_eq!(batcher.busy(), 1);
        // An idle lane leads again; an unknown lane has nothing.
        assert!(matches!(batcher.submit(7, a_call(5)), Submitted::Lead(_)));
        assert!(batcher.next_batch(12).is_none());
        assert!(batcher.next_batch(7).is_none());
        assert!(batcher.next_batch(16_383).is_none());
        assert_eq!(batcher.busy(), 0);
    }

    /// A batch call's words: its keys, and its arguments as text.
    #[derive(Default)]
    struct Recorded {
        keys: Vec<String>,
        args: Vec<String>,
    }

    impl Words for Recorded {
        fn key(&mut self, key: &str) {
            self.keys.push(key.to_owned());
        }

        fn number(&mut self, n: u64) {
            self.args.push(n.to_string());
        }

        fn text(&mut self, text: &str) {
            self.args.push(text.to_owned());
        }
    }

    fn check(policy: &crate::Policy, key: &str, cost: u64) -> Call {
        let nonces = super::super::script::Nonces::new();
        super::super::script::call("t", &nonces, policy, &crate::Key::new(key), cost)
    }

    #[test]
    fn batch_calls_follow_the_documented_layout() {
        use crate::{Policy, Quota};
        let hour = Quota::per_hour(10);
        let two = Quota::new(5, std::time::Duration::from_secs(7200));
        let counter = Policy::new("p").quota(hour);
        // Same name, so its first key is the counter's.
        let both = Policy::new("p").quota(hour).quota(two);
        let log = Policy::new("l")
            .algorithm(Algorithm::SlidingLog)
            .quota(hour);
        let calls = [
            check(&counter, "a", 1), // run 1: fresh, new key 1
            check(&counter, "a", 1), // ... the same check: run 1 is 2 long
            check(&counter, "b", 1), // run 2: same cost and quotas, new key 2
            check(&counter, "a", 2), // run 3: another cost, key 1 again
            check(&both, "b", 2),    // run 4: other quotas, keys 2 and 3
            check(&log, "a", 2),     // run 5: the log's nonce, new key 4
            check(&log, "a", 2),     // run 6: another nonce, key 4 again
        ];
        let mut out = Recorded::default();
        encode(calls.iter(), &mut out);
        let code = |alg: u64, fresh: u64, implicit: u64, n: u64| {
            (alg + 4 * (fresh + 2 * (implicit + 2 * n))).to_string()
        };
        let (log_alg, counter_alg) = (1, 2);
        assert_eq!(Algorithm::ALL[0], Algorithm::SlidingLog);
        assert_eq!(Algorithm::ALL[1], Algorithm::SlidingWindow);
        let (h, t) = ("3600000000", "7200000000");
        let (n1, n2) = (calls[5].nonce.as_str(), calls[6].nonce.as_str());
        let want: Vec<String> = [
            vec![6.to_string()],
            vec![
                code(counter_alg, 1, 1, 2),
                "1".into(),
                "1".into(),
                "10".into(),
                h.into(),
            ],
            vec![code(counter_alg, 0, 1, 1)],
            vec![
                code(counter_alg, 1, 0, 1),
                "1".into(),
                "2".into(),
                "10".into(),
                h.into(),
                "1".into(),
            ],
            [code(counter_alg, 1, 0, 1)]
                .into_iter()
                .chain(["2", "2", "10", h, "5", t, "2", "3"].map(String::from))
                .collect(),
            vec![
                code(log_alg, 1, 1, 1),
                n1.into(),
                "1".into(),
                "2".into(),
                "10".into(),
                h.into(),
            ],
            vec![code(log_alg, 0, 0, 1), n2.into(), "4".into()],
        ]
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(out.args, want);
        let keys: Vec<&str> = vec![
            &calls[0].keys[0],
            &calls[2].keys[0],
            &calls[4].keys[1],
            &calls[5].keys[0],
        ];
        assert_eq!(out.keys, keys);
        assert_eq!(calls[4].keys[0], calls[2].keys[0]);
        assert_ne!(n1, n2);
    }

    /// Writes the batch script to the file named by `BATCH_LUA_OUT`, for
    /// `scripts/batch-cost.sh`.
    #[test]
    #[ignore = "a tool for scripts/batch-cost.sh, not a test"]
    fn write_batch_lua() {
        let path = std::env::var("BATCH_LUA_OUT").expect("BATCH_LUA_OUT names the file");
        std::fs::write(path, batch_lua()).expect("written");
    }

    #[test]
    fn the_batch_script_wraps_every_algorithm() {
        let lua = batch_lua();
        let mut with_state = 0;
        for algorithm in Algorithm::ALL {
            let script = algorithm.spec().lua;
            let (functions, main) = script.split_once(MAIN).expect("a `-- main` line");
            assert!(lua.contains(functions), "{algorithm:?}");
            let defines = |name: &str| functions.contains(&format!("\nlocal function {name}("));
            if defines("decide") {
                // The log: the single check calls the function the batch does.
                assert!(
                    main.contains("decide(KEYS, #KEYS, ARGV, 2, "),
                    "{algorithm:?}"
                );
            } else {
                with_state += 1;
                for name in ["state", "retry", "count", "status", "check1", "write"] {
                    assert!(defines(name), "{algorithm:?} {name}");
                    assert!(main.contains(&format!(" {name}(")), "{algorithm:?} {name}");
                }
            }
        }
        assert_eq!(with_state, 2, "the counter and GCRA");
    }
}
