//! Batching: checks waiting for the same lane go out as one script call
//! that decides them in order.
//!
//! A lone check is sent at once, as its algorithm's own `EVALSHA` (no timer,
//! no added latency). A lane holds up to `Transport::depth` calls in flight
//! (one for now: see `transport::PIPELINE`); while it has no room, further
//! checks queue, and when room is
//! made everything queued (up to the batch size) goes out as one call of
//! the batch script, which runs each check's algorithm in arrival order,
//! each seeing the writes of those before it, exactly as that many single
//! calls would. So Redis runs one call while the application makes the
//! next, and batches grow with the load.
//!
//! Order: calls on one connection run in the order they reach it, and a
//! check's place is taken when it is made (`Batcher::submit`). A queued
//! check is sent only after every call before it has reached the
//! connection: a lead's call once its future has been polled (the request
//! is then in the connection's queue), a batch once the lane's draining
//! task has polled it, which it does for each batch before it takes the
//! next.
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
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::{Poll, Waker};

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
    /// How many calls may be in flight on one lane at once
    /// ([`Transport::depth`]).
    depth: usize,
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
    /// The checks waiting for room on the lane, in arrival order.
    queue: VecDeque<Waiting>,
    /// Calls sent on the lane (leads and batches) that have not ended.
    in_flight: usize,
    /// A lead was handed out whose call has not reached the connection yet
    /// (its future was not polled yet): nothing may be sent on the lane
    /// until it has, or a later check could overtake it.
    unwritten: bool,
    /// Whether the lane's draining task runs.
    draining: bool,
    /// The draining task, while it waits: woken when a check queues or a
    /// lead's call is written or ends.
    waker: Option<Waker>,
}

impl State {
    /// Whether a call may be sent on the lane now.
    fn has_room(&self, depth: usize) -> bool {
        !self.unwritten && self.in_flight < depth
    }

    /// Whether queued checks may go out now: wakes the draining task and
    /// returns `false`, or returns whether one must be started (marked as
    /// running).
    fn kick(&mut self, depth: usize) -> bool {
        if self.queue.is_empty() || !self.has_room(depth) {
            return false;
        }
        if self.draining {
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
            return false;
        }
        self.draining = true;
        true
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight == 0 && !self.draining
    }
}

/// What to do with a check.
pub(super) enum Submitted {
    /// Send it now, alone, holding a [`Lead`] until the call ends.
    Lead(Call),
    /// Wait for its reply: it goes out in a batch.
    Queued(oneshot::Receiver<Reply>),
}

impl Batcher {
    /// Batches of up to `max` checks, sent through `transport`, up to its
    /// [`Transport::depth`] calls in flight per lane.
    pub(super) fn new(max: usize, transport: Arc<Transport>) -> Self {
        let depth = transport.depth();
        Self::with_depth(max, depth, transport)
    }

    /// Batches of up to `max` checks, up to `depth` calls in flight per lane.
    fn with_depth(max: usize, depth: usize, transport: Arc<Transport>) -> Self {
        Self {
            max,
            depth: depth.max(1),
            transport,
            lanes: Mutex::default(),
        }
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, HashMap<Lane, State>> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `call` now, alone, if the lane has room and nothing waits on
    /// it; else queues it (and makes sure the queue drains).
    pub(super) fn submit(self: &Arc<Self>, lane: Lane, call: Call) -> Submitted {
        let mut lanes = self.lanes();
        let state = lanes.entry(lane).or_default();
        if state.queue.is_empty() && state.has_room(self.depth) {
            state.in_flight += 1;
            state.unwritten = true;
            return Submitted::Lead(call);
        }
        let (tx, rx) = oneshot::channel();
        state.queue.push_back(Waiting { call, reply: tx });
        let start = state.kick(self.depth);
        drop(lanes);
        if start {
            self.start_draining(lane);
        }
        Submitted::Queued(rx)
    }

    /// The lead of `lane` has reached the connection (or never will):
    /// checks queued behind it may go out.
    fn written(self: &Arc<Self>, lane: Lane) {
        let mut lanes = self.lanes();
        let Some(state) = lanes.get_mut(&lane) else {
            return;
        };
        state.unwritten = false;
        let start = state.kick(self.depth);
        drop(lanes);
        if start {
            self.start_draining(lane);
        }
    }

    /// A lead's call on `lane` ended (or was dropped).
    fn lead_done(self: &Arc<Self>, lane: Lane, written: bool) {
        let mut lanes = self.lanes();
        let Some(state) = lanes.get_mut(&lane) else {
            return;
        };
        state.in_flight -= 1;
        if !written {
            state.unwritten = false;
        }
        let start = state.kick(self.depth);
        if state.idle() {
            lanes.remove(&lane);
        }
        drop(lanes);
        if start {
            self.start_draining(lane);
        }
    }

    /// Starts `lane`'s draining task (marked as running by the caller).
    fn start_draining(self: &Arc<Self>, lane: Lane) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(drain(Arc::clone(self), lane));
            }
            Err(_) => {
                // No runtime to send from (a check made or dropped outside
                // one): fail the waiting checks rather than leave them
                // waiting.
                let mut lanes = self.lanes();
                if let Some(state) = lanes.get_mut(&lane) {
                    state.queue.clear();
                    state.draining = false;
                    if state.idle() {
                        lanes.remove(&lane);
                    }
                }
            }
        }
    }

    /// The next batch of `lane` if it has room for a call (counted in
    /// flight), else `None`.
    fn next_batch(&self, lane: Lane) -> Option<Vec<Waiting>> {
        let mut lanes = self.lanes();
        let state = lanes.get_mut(&lane)?;
        if state.queue.is_empty() || !state.has_room(self.depth) {
            return None;
        }
        state.in_flight += 1;
        let n = state.queue.len().min(self.max);
        Some(state.queue.drain(..n).collect())
    }

    /// `ended` of the draining task's calls on `lane` ended.
    fn ended(&self, lane: Lane, ended: usize) {
        if let Some(state) = self.lanes().get_mut(&lane) {
            state.in_flight -= ended;
        }
    }

    /// What the draining task of `lane`, with `flying` calls of its own in
    /// flight, does next (decided under the lock that checks queue under):
    /// send again if a check queued meanwhile and there is room; stop if it
    /// has nothing in flight (marked as stopped, the lane removed if idle:
    /// whatever makes room later starts a new task); else wait, `waker`
    /// stored to be woken when a check queues or room is made.
    fn next_step(&self, lane: Lane, flying: usize, waker: &Waker) -> Step {
        let mut lanes = self.lanes();
        let Some(state) = lanes.get_mut(&lane) else {
            return Step::Stop;
        };
        if !state.queue.is_empty() && state.has_room(self.depth) {
            return Step::Again;
        }
        if flying == 0 {
            state.draining = false;
            state.waker = None;
            if state.idle() {
                lanes.remove(&lane);
            }
            return Step::Stop;
        }
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            state.waker = Some(waker.clone());
        }
        Step::Wait
    }

    /// How many lanes are busy.
    #[cfg(test)]
    fn busy(&self) -> usize {
        self.lanes().len()
    }
}

/// A lone call on a lane, from [`Batcher::submit`]'s [`Submitted::Lead`]
/// until it ends (or is dropped).
pub(super) struct Lead {
    batcher: Arc<Batcher>,
    lane: Lane,
    written: bool,
}

impl Lead {
    /// The guard of the lone call that [`Batcher::submit`] answered with
    /// [`Submitted::Lead`] for `lane`.
    pub(super) fn new(batcher: Arc<Batcher>, lane: Lane) -> Self {
        Self {
            batcher,
            lane,
            written: false,
        }
    }

    /// Runs `call`, the lead's call: once it has been polled (its request
    /// handed to the connection), the lane's queued checks may follow it.
    pub(super) async fn run<F: Future>(mut self, call: F) -> F::Output {
        let mut call = std::pin::pin!(call);
        std::future::poll_fn(|cx| {
            let poll = call.as_mut().poll(cx);
            if !self.written {
                self.written = true;
                self.batcher.written(self.lane);
            }
            poll
        })
        .await
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.batcher.lead_done(self.lane, self.written);
    }
}

/// See [`Batcher::next_step`].
enum Step {
    Again,
    Stop,
    Wait,
}

/// A batch call in flight, from a lane's draining task.
type Flying = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Sends the batches of `lane` while checks wait and the lane has room: up
/// to [`Transport::depth`] calls in flight (a lead's included), each handed
/// to the connection in the order its checks queued (the task polls each
/// new call once before it takes the next batch), so that Redis runs them
/// in that order while the next batch is being made.
async fn drain(batcher: Arc<Batcher>, lane: Lane) {
    let mut flying: VecDeque<Flying> = VecDeque::new();
    std::future::poll_fn(|cx| {
        loop {
            while let Some(batch) = batcher.next_batch(lane) {
                let mut call: Flying = Box::pin(send(Arc::clone(&batcher.transport), batch));
                if call.as_mut().poll(cx).is_ready() {
                    batcher.ended(lane, 1);
                } else {
                    flying.push_back(call);
                }
            }
            let before = flying.len();
            flying.retain_mut(|call| call.as_mut().poll(cx).is_pending());
            let ended = before - flying.len();
            if ended > 0 {
                batcher.ended(lane, ended);
                continue;
            }
            match batcher.next_step(lane, flying.len(), cx.waker()) {
                Step::Again => {}
                Step::Stop => return Poll::Ready(()),
                Step::Wait => return Poll::Pending,
            }
        }
    })
    .await;
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
async fn send(transport: Arc<Transport>, batch: Vec<Waiting>) {
    let transport = &*transport;
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

    fn queued(submitted: Submitted) -> oneshot::Receiver<Reply> {
        match submitted {
            Submitted::Queued(rx) => rx,
            Submitted::Lead(_) => panic!("expected to queue"),
        }
    }

    fn leads(submitted: &Submitted) -> bool {
        matches!(submitted, Submitted::Lead(_))
    }

    /// The lane state machine, step by step (the draining tasks it starts
    /// never run: the test does not yield to the runtime).
    #[tokio::test]
    async fn lanes_pipeline_in_order_and_idle_lanes_leave_nothing() {
        let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
        let second = Duration::from_secs(1);
        let transport = Transport::single(client, second, second);
        let batcher = Arc::new(Batcher::with_depth(2, 2, Arc::new(transport)));
        let keys = |batch: &[Waiting]| -> Vec<Vec<String>> {
            batch.iter().map(|w| w.call.keys.clone()).collect()
        };
        let mut waiting = Vec::new();

        // The first check of a lane leads. Until its call is written
        // (polled), nothing may follow it, even with room on the lane.
        assert!(leads(&batcher.submit(7, a_call(0))));
        waiting.push(queued(batcher.submit(7, a_call(1))));
        assert!(batcher.next_batch(7).is_none(), "the lead is not written");
        batcher.written(7);
        // Room for one more call: the queue goes out, in order.
        assert_eq!(keys(&batcher.next_batch(7).unwrap()), [a_call(1).keys]);
        // Two calls in flight: no room until one ends.
        waiting.push(queued(batcher.submit(7, a_call(2))));
        waiting.push(queued(batcher.submit(7, a_call(3))));
        waiting.push(queued(batcher.submit(7, a_call(4))));
        assert!(batcher.next_batch(7).is_none(), "two calls in flight");
        batcher.lead_done(7, true);
        // Batches of at most 2, in arrival order.
        assert_eq!(
            keys(&batcher.next_batch(7).unwrap()),
            [a_call(2).keys, a_call(3).keys]
        );
        assert!(batcher.next_batch(7).is_none(), "two calls in flight");
        batcher.ended(7, 2);
        assert_eq!(keys(&batcher.next_batch(7).unwrap()), [a_call(4).keys]);
        batcher.ended(7, 1);

        // Lanes are independent: lane 9 leads while lane 7 drains.
        assert!(leads(&batcher.submit(9, a_call(0))));
        assert_eq!(batcher.busy(), 2);

        // A draining task with nothing left stops, and the idle lane goes.
        let waker = std::task::Waker::noop();
        assert!(matches!(batcher.next_step(7, 0, waker), Step::Stop));
        assert_eq!(batcher.busy(), 1);
        // A lead dropped before it was polled frees its lane.
        batcher.lead_done(9, false);
        assert_eq!(batcher.busy(), 0);

        // With room and nothing waiting, a second check leads too (the
        // first lead written); a third (no room) queues.
        assert!(leads(&batcher.submit(5, a_call(0))));
        batcher.written(5);
        assert!(leads(&batcher.submit(5, a_call(2))));
        batcher.written(5);
        assert!(!leads(&batcher.submit(5, a_call(3))), "two calls in flight");
        // A draining task waits while its own call is in flight and the
        // lane has no room.
        assert!(matches!(batcher.next_step(5, 1, waker), Step::Wait));
        drop(waiting);
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
