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
//! The batch script is made at start-up from the algorithms' own scripts:
//! each body becomes a function of `(KEYS, ARGV)` (the parameters shadow the
//! globals), called once per check:
//!
//! ```text
//! ARGV[1]                 number of checks
//! then per check          algorithm (1-based, `Algorithm::ALL` order),
//!                         its key count k, its argument count a,
//!                         its a arguments (see `script`)
//! KEYS                    every check's k keys, one check after the other
//! ```
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
use crate::error::BackendError;

/// The default largest number of checks per batch call.
pub(super) const DEFAULT_MAX: usize = 64;

/// The largest batch size the builder accepts.
pub(super) const MAX_MAX: usize = 1024;

/// The longest a batch call may run before its checks fail (the
/// connection's own timeouts end it much sooner in practice); the batcher
/// then sends what queued meanwhile.
const MAX_BATCH_TIME: Duration = Duration::from_secs(10);

/// The Lua source of the batch script.
///
/// Each algorithm's body runs as a function whose parameters shadow the
/// globals `KEYS`, `ARGV` and `redis`. The `redis` it sees passes every
/// command through to Redis except three, which make a batch cheaper than
/// that many single calls while deciding exactly as they would:
///
/// - `TIME` is read once per batch: every check of a batch is decided at
///   the instant the batch starts (Redis runs the batch atomically, so no
///   other client can tell).
/// - `GET` of a string key is read from Redis once per batch, then from
///   the batch's own copy, which `SET key value PX ms` updates; each key's
///   last value and expiry are written back once, when the batch ends (also
///   when a check fails with a script error, so checks decided before it
///   keep their effect, as with single calls). A check of a hot key thus
///   costs one `GET` and one `SET` per batch, not per check.
/// - Any other command on a key first writes back that key's pending value
///   (and forgets the copy), so no command sees a stale value. The sorted
///   set of the sliding log is never copied.
///
/// Values written are kept as Redis stores them: a number is written in
/// its `%.17g` form (exact below 2^53), as the reading scripts expect.
pub(super) fn batch_lua() -> String {
    let mut lua = String::from(
        "local clock = redis.call('TIME')
local real = redis
local copy, pending, order = {}, {}, {}
local ok_reply = {ok = 'OK'}
local function write_back(key)
  local ms = pending[key]
  if ms ~= nil then
    real.call('SET', key, copy[key], 'PX', ms)
    pending[key] = nil
  end
end
local batched = setmetatable({}, {__index = real})
batched.call = function(command, key, ...)
  if command == 'TIME' then return clock end
  if command == 'GET' then
    local v = copy[key]
    if v == nil then
      v = real.call('GET', key)
      copy[key] = v
    end
    return v
  end
  if command == 'SET' and select('#', ...) == 3 and select(2, ...) == 'PX' then
    local value, _, ms = ...
    if type(value) == 'number' then value = string.format('%.17g', value) end
    if pending[key] == nil then order[#order + 1] = key end
    copy[key], pending[key] = value, ms
    return ok_reply
  end
  if key ~= nil and copy[key] ~= nil then
    write_back(key)
    copy[key] = nil
  end
  return real.call(command, key, ...)
end
-- Every argument but the nonce (the second) is a number: each distinct one
-- is converted once per batch, and the scripts' own `tonumber` of a number
-- costs nothing.
local number = setmetatable({}, {__index = function(t, s)
  local v = tonumber(s)
  t[s] = v
  return v
end})
local decide = {}
",
    );
    for (i, algorithm) in Algorithm::ALL.iter().enumerate() {
        lua.push_str(&format!(
            "decide[{}] = function(KEYS, ARGV, redis)\n{}\nend\n",
            i + 1,
            algorithm.spec().lua
        ));
    }
    lua.push_str(
        "local out = {}
local function run()
  local n = tonumber(ARGV[1])
  local k, a = 0, 1
  for _ = 1, n do
    local alg, nk, na = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    a = a + 3
    local keys, args
    if nk == 1 then keys = {KEYS[k + 1]} else
      keys = {}
      for i = 1, nk do keys[i] = KEYS[k + i] end
    end
    if na == 4 then
      args = {number[ARGV[a + 1]], ARGV[a + 2], number[ARGV[a + 3]], number[ARGV[a + 4]]}
    else
      args = {number[ARGV[a + 1]], ARGV[a + 2]}
      for i = 3, na do args[i] = number[ARGV[a + i]] end
    end
    k, a = k + nk, a + na
    local reply = decide[alg](keys, args, batched)
    out[#out + 1] = #reply
    for i = 1, #reply do out[#out + 1] = reply[i] end
  end
end
local ok, err = pcall(run)
for i = 1, #order do write_back(order[i]) end
if not ok then error(err, 0) end
return out
",
    );
    lua
}

/// The batch script.
static BATCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&batch_lua()));

/// The batch call deciding `calls` in order.
pub(super) fn batch_invocation<'a>(
    calls: impl ExactSizeIterator<Item = &'a Call>,
) -> ScriptInvocation<'static> {
    let mut invocation = BATCH_SCRIPT.prepare_invoke();
    invocation.arg(calls.len());
    for call in calls {
        let index = Algorithm::ALL.iter().position(|&a| a == call.algorithm);
        let index = index.expect("every algorithm is in Algorithm::ALL") + 1;
        invocation
            .arg(index)
            .arg(call.keys.len())
            .arg(call.args.len());
        for arg in &call.args {
            invocation.arg(arg);
        }
        for key in &call.keys {
            invocation.key(key);
        }
    }
    invocation
}

/// Splits a batch reply into `n` replies; `None` if it is not `n` replies,
/// each prefixed with its length.
pub(super) fn split(reply: &[i64], n: usize) -> Option<Vec<Vec<i64>>> {
    let mut out = Vec::with_capacity(n);
    let mut rest = reply;
    for _ in 0..n {
        let (&len, tail) = rest.split_first()?;
        let len = usize::try_from(len).ok()?;
        if len > tail.len() {
            return None;
        }
        out.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    rest.is_empty().then_some(out)
}

/// The reply of one check: its raw script reply, or the call's error.
pub(super) type Reply = Result<Vec<i64>, BackendError>;

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
async fn call(inner: &Inner, invocation: &ScriptInvocation<'static>) -> Reply {
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
/// reply.
async fn send(inner: &Inner, batch: Vec<Waiting>) {
    if let [one] = batch.as_slice() {
        let result = call(inner, &one.call.invocation()).await;
        let [one] = <[Waiting; 1]>::try_from(batch).ok().expect("one check");
        let _ = one.reply.send(result);
        return;
    }
    let invocation = batch_invocation(batch.iter().map(|w| &w.call));
    let result = call(inner, &invocation).await;
    match result {
        Ok(reply) => match split(&reply, batch.len()) {
            Some(replies) => {
                for (waiting, reply) in batch.into_iter().zip(replies) {
                    let _ = waiting.reply.send(Ok(reply));
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
        BackendError::Redis(e) => BackendError::Redis(e.clone()),
        BackendError::Protocol(m) => BackendError::Protocol(m.clone()),
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
            Some(vec![vec![1, 0, 0], vec![0, 1, 9, 2, 3]])
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

    #[test]
    fn the_batch_script_wraps_every_algorithm() {
        let lua = batch_lua();
        for algorithm in Algorithm::ALL {
            assert!(lua.contains(algorithm.spec().lua));
        }
        // A `return` must end a block: each body's last statement is its
        // `return`, so the function's `end` may follow it.
        for algorithm in Algorithm::ALL {
            let last = algorithm.spec().lua.trim_end().lines().last().unwrap();
            assert!(last.trim_start().starts_with("return "), "{algorithm:?}");
        }
    }
}
