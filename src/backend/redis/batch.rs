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
//! bounded and abandoned as `super::cluster` describes: the lone call
//! through `Cluster::detached`, the batch calls in the lane's draining task,
//! each holding one of the same permits.
//!
//! The batcher knows the deployment only through the transport seam
//! (`super::transport`): it asks it for a check's lane, sends its calls
//! through it, and lets it bound the calls of a lane's task.
//!
//! The batch script is made at start-up from the algorithms' own scripts
//! (see `batch_lua`: the counter and GCRA through the functions their
//! scripts define, the sliding log as a whole), and called as:
//!
//! ```text
//! ARGV[1]                 number of runs
//! then per run            algorithm (1-based, `Algorithm::ALL` order),
//!                         how many identical checks in a row it stands for,
//!                         their key count k, their argument count a,
//!                         their a arguments (see `script`)
//! KEYS                    every run's k keys, one run after the other
//! ```
//!
//! It replies, per check in order, the length of that check's reply, then
//! the reply. A failed batch call (a connection error, a script error) fails
//! every check in it with that error; checks decided before a script error
//! inside the call keep their effect, as when a lone call fails after Redis
//! ran it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use redis::{Script, ScriptInvocation};
use tokio::sync::oneshot;

use super::script::Call;
use super::transport::{Lane, Request, Transport, failure};
use crate::algorithm::Algorithm;
use crate::decision::Decision;
use crate::error::BackendError;

/// The default largest number of checks per batch call.
pub(super) const DEFAULT_MAX: usize = 64;

/// The largest batch size the builder accepts.
pub(super) const MAX_MAX: usize = 1024;

/// The line of an algorithm's script above which it defines `state`,
/// `decide` and `write` (see `batch_lua`): the first line of
/// `algorithm/state_main.lua`, the single check such scripts end with.
const MAIN: &str = "\n-- main\n";

/// The Lua source of the batch script.
///
/// Every check of a batch is decided at the instant the batch starts (`TIME`
/// is read once: Redis runs the batch atomically, so no other client can
/// tell the difference).
///
/// An algorithm whose script has a line `-- main` (the counter, GCRA)
/// defines above it three functions, which the batch calls rather than the
/// whole script: `state(value, now, window)` turns a key's stored value into
/// its state at `now`, `decide(states, now, cost, ARGV, n)` decides a check
/// against its quotas' states (counting the cost in them if admitted) and
/// replies, `write(key, state, now, window)` stores a state. The batch reads
/// each key once (`GET`), keeps its state from one check to the next, and
/// writes each changed key once when the batch ends (also when a check fails
/// with a script error, so that the checks decided before it keep their
/// effect, as with single calls). Checks of one hot key thus cost one `GET`
/// and one `SET` per batch, and no parsing or formatting per check.
///
/// Any other algorithm's whole script (the sliding log's) runs once per
/// check, as a function whose parameters `KEYS`, `ARGV` and `redis` shadow
/// the globals; the `redis` it sees answers `TIME` with the batch's.
pub(super) fn batch_lua() -> String {
    let mut lua = String::from(
        "local clock = redis.call('TIME')
local now = clock[1] * 1000000 + clock[2]
local real = redis
-- Whether Redis is past maxmemory. Redis refuses a script's first write
-- that may grow memory (`ZADD`, `SET`) when it is, and lets every later
-- write through: so the batch asks once, first, with a `ZADD XX` of a
-- member no script writes (a no-op whatever the key holds; past
-- maxmemory, refused before it runs), and then refuses every check that
-- would write, as that check alone would have been refused.
local oom = false
do
  local ok, e = pcall(real.call, 'ZADD', KEYS[1], 'XX', 0, '-')
  if not ok then
    if type(e) == 'table' then e = e.err end
    oom = string.find(tostring(e), 'OOM', 1, true) ~= nil
  end
end
local OOM = {err = 'OOM command not allowed when used memory > maxmemory (batch)'}
-- The redis of whole scripts (made when first needed).
local batched
local function time_of_batch(command, ...)
  if command == 'TIME' then return clock end
  if oom and command == 'ZADD' then error(OOM) end
  return real.call(command, ...)
end
-- A check that failed with a script error (a key of the wrong type, a
-- value that is not ours, maxmemory) replies {-1, code} and fails alone:
-- 1 wrong type, 2 out of memory, 3 anything else.
local function fault(e)
  if type(e) == 'table' then e = e.err end
  e = tostring(e)
  if string.find(e, 'WRONGTYPE', 1, true) then return {-1, 1} end
  if string.find(e, 'OOM', 1, true) then return {-1, 2} end
  return {-1, 3}
end
-- Every argument but the nonce (the second) is a number: each distinct one
-- is converted once per batch, and the scripts' own `tonumber` of a number
-- costs nothing.
local numbers = {}
local function number(s)
  local v = numbers[s]
  if v == nil then
    v = tonumber(s)
    numbers[s] = v
  end
  return v
end
-- Per key: its state, and while it must be written, its writer and window.
local kept, writer, window_of, order = {}, {}, {}, {}
local api, whole = {}, {}
",
    );
    for (i, algorithm) in Algorithm::ALL.iter().enumerate() {
        let script = algorithm.spec().lua;
        match script.split_once(MAIN) {
            Some((functions, _)) => lua.push_str(&format!(
                "api[{}] = (function()\n{functions}\nreturn {{state = state, decide = decide, write = write}}\nend)()\n",
                i + 1
            )),
            None => lua.push_str(&format!(
                "whole[{}] = function(KEYS, ARGV, redis)\n{script}\nend\n",
                i + 1
            )),
        }
    }
    lua.push_str(
        "local out = {}
local function run()
  local m = 0
  local k, a = 0, 1
  for _ = 1, number(ARGV[1]) do
    local alg, runs = number(ARGV[a + 1]), number(ARGV[a + 2])
    local nk, na = number(ARGV[a + 3]), number(ARGV[a + 4])
    a = a + 4
    local args
    if na == 4 then
      args = {number(ARGV[a + 1]), ARGV[a + 2], number(ARGV[a + 3]), number(ARGV[a + 4])}
    else
      args = {number(ARGV[a + 1]), ARGV[a + 2]}
      for i = 3, na do args[i] = number(ARGV[a + i]) end
    end
    local f = api[alg]
    local qs, keys = {}, {}
    -- A key that cannot be read fails the checks of this run only.
    local broken
    for i = 1, nk do
      local key = KEYS[k + i]
      keys[i] = key
      if f and not broken then
        local q = kept[key]
        if q == nil then
          local ok, v = pcall(real.call, 'GET', key)
          if ok then
            q = f.state(v, now, args[2 + 2 * i])
            kept[key] = q
          else
            broken = fault(v)
          end
        end
        qs[i] = q
      end
    end
    for _ = 1, runs do
      local reply
      if broken then
        reply = broken
      elseif f then
        local saved
        if oom then
          -- An admission cannot be written: it fails, and counts nothing.
          saved = {}
          for i = 1, nk do saved[i] = {unpack(qs[i])} end
        end
        local changed
        reply, changed = f.decide(qs, now, args[1], args, nk)
        if changed and oom then
          for i = 1, nk do
            local q, s = qs[i], saved[i]
            for j = 1, #s do q[j] = s[j] end
          end
          reply = {-1, 2}
        elseif changed then
          for i = 1, nk do
            local key = keys[i]
            if writer[key] == nil then
              order[#order + 1] = key
              writer[key] = f.write
            end
            window_of[key] = args[2 + 2 * i]
          end
        end
      else
        if batched == nil then
          batched = setmetatable({call = time_of_batch}, {__index = real})
        end
        local ok, r = pcall(whole[alg], keys, args, batched)
        if ok then reply = r else reply = fault(r) end
      end
      local len = #reply
      out[m + 1] = len
      for i = 1, len do out[m + 1 + i] = reply[i] end
      m = m + 1 + len
    end
    k, a = k + nk, a + na
  end
end
local ok, err = pcall(run)
for i = 1, #order do
  local key = order[i]
  writer[key](key, kept[key], now, window_of[key])
end
if not ok then error(err, 0) end
return out
",
    );
    lua
}

/// The batch script.
static BATCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&batch_lua()));

/// The batch call deciding `calls` in order. A run of identical checks
/// (same algorithm, keys and arguments: a hot client's checks of the same
/// cost; never the sliding log's, whose nonces differ) goes out once, with
/// its length: Redis decides it that many times, one check after the other.
pub(super) fn batch_invocation<'a>(
    calls: impl Iterator<Item = &'a Call>,
) -> ScriptInvocation<'static> {
    let mut runs: Vec<(&Call, usize)> = Vec::new();
    for call in calls {
        match runs.last_mut() {
            Some((last, n)) if last.same_check(call) => *n += 1,
            _ => runs.push((call, 1)),
        }
    }
    let mut invocation = BATCH_SCRIPT.prepare_invoke();
    invocation.arg(runs.len());
    for (call, n) in runs {
        let index = Algorithm::ALL.iter().position(|&a| a == call.algorithm);
        let index = index.expect("every algorithm is in Algorithm::ALL") + 1;
        invocation
            .arg(index)
            .arg(n)
            .arg(call.keys.len())
            .arg(call.arg_count());
        call.push_args(&mut invocation);
        for key in &call.keys {
            invocation.key(key);
        }
    }
    invocation
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
    /// Where the calls go.
    transport: Arc<Transport>,
    /// The busy lanes: a lane has an entry while a call is in flight on it
    /// (or is about to be sent), and only then. A map, not an array of the
    /// 16384 slots: an array would take 640 KiB per backend (one lane on a
    /// single node), and the map's lookups cost about 50 ns per lone check
    /// (measured: insert and remove under the lock), nothing beside a
    /// round trip to Redis. Its capacity stays at the most lanes ever busy
    /// at once: at most 16384 small entries.
    lanes: Mutex<HashMap<Lane, State>>,
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
    /// Batches of up to `max` checks, sent through `transport`.
    pub(super) fn new(max: usize, transport: Arc<Transport>) -> Self {
        Self {
            max,
            transport,
            lanes: Mutex::default(),
        }
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, HashMap<Lane, State>> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `call` now if nothing is in flight on `lane`, else queues it.
    pub(super) fn submit(&self, lane: Lane, call: Call) -> Submitted {
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
    fn next_batch(&self, lane: Lane) -> Option<Vec<Waiting>> {
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
    batcher: Arc<Batcher>,
    lane: Lane,
}

impl Lead {
    /// The guard of the lone call that [`Batcher::submit`] answered with
    /// [`Submitted::Lead`] for `lane`.
    pub(super) fn new(batcher: Arc<Batcher>, lane: Lane) -> Self {
        Self { batcher, lane }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        done(&self.batcher, self.lane);
    }
}

/// A call on `lane` ended: sends what queued meanwhile, in a task of its
/// own, or marks the lane idle.
fn done(batcher: &Arc<Batcher>, lane: Lane) {
    let Some(batch) = batcher.next_batch(lane) else {
        return;
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(drain(Arc::clone(batcher), lane, batch));
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
async fn drain(batcher: Arc<Batcher>, lane: Lane, mut batch: Vec<Waiting>) {
    loop {
        send(&batcher.transport, batch).await;
        match batcher.next_batch(lane) {
            Some(next) => batch = next,
            None => return,
        }
    }
}

/// Sends `invocation` from a lane's draining task, under the transport's
/// bounds for such calls ([`Transport::bounded`]: on a cluster those of a
/// detached call).
async fn call(
    transport: &Transport,
    invocation: &ScriptInvocation<'static>,
) -> Result<Vec<i64>, BackendError> {
    let call = transport.send::<Vec<i64>>(Request::Script(invocation));
    transport.bounded(call).await
}

/// Sends one batch (a lone check as its own script) and hands each check its
/// decision.
async fn send(transport: &Transport, batch: Vec<Waiting>) {
    if let [one] = batch.as_slice() {
        let result = call(transport, &one.call.invocation())
            .await
            .map_err(super::script::key_fault);
        let [one] = <[Waiting; 1]>::try_from(batch).ok().expect("one check");
        let _ = one
            .reply
            .send(result.and_then(|reply| one.call.decode(&reply)));
        return;
    }
    let invocation = batch_invocation(batch.iter().map(|w| &w.call));
    let result = call(transport, &invocation).await;
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

/// The same error, for every check of a failed batch.
fn copy(error: &BackendError) -> BackendError {
    match error {
        BackendError::Connection(e) => match e.downcast_ref::<redis::RedisError>() {
            Some(e) => failure(e.clone()),
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
    use std::time::Duration;

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
        let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
        let second = Duration::from_secs(1);
        let transport = Transport::single(client, second, second);
        let batcher = Batcher::new(2, Arc::new(transport));
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

    #[test]
    fn the_batch_script_wraps_every_algorithm() {
        let lua = batch_lua();
        let mut with_functions = 0;
        for algorithm in Algorithm::ALL {
            let script = algorithm.spec().lua;
            match script.split_once(MAIN) {
                Some((functions, main)) => {
                    with_functions += 1;
                    assert!(lua.contains(functions), "{algorithm:?}");
                    for name in ["state", "decide", "write"] {
                        let definition = format!("\nlocal function {name}(");
                        assert!(functions.contains(&definition), "{algorithm:?} {name}");
                    }
                    // The single check calls the same functions.
                    assert!(main.contains("decide(qs, now, "), "{algorithm:?}");
                }
                None => {
                    assert!(lua.contains(script));
                    // A `return` must end a block: the body's last statement
                    // is its `return`, so the function's `end` may follow it.
                    let last = script.trim_end().lines().last().unwrap();
                    assert!(last.trim_start().starts_with("return "), "{algorithm:?}");
                }
            }
        }
        assert_eq!(with_functions, 2, "the counter and GCRA");
    }
}
