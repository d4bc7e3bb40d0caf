//! Batching: checks waiting for the same connection go out as one script
//! call that decides them in order.
//!
//! A lone check is sent at once, as its algorithm's own `EVALSHA` (no timer,
//! no added latency). While a call is in flight, further checks queue; when
//! it returns, everything queued (up to the batch size) goes out as one call
//! of the batch script, which runs each check's algorithm in arrival order,
//! each seeing the writes of those before it, exactly as that many single
//! calls would. One call is in flight per connection at a time.
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

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use redis::{Script, ScriptInvocation};
use tokio::sync::oneshot;

use super::Inner;
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
    local keys, args = {}, {}
    for i = 1, nk do keys[i] = KEYS[k + i] end
    for i = 1, na do args[i] = ARGV[a + i] end
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
type Reply = Result<Vec<i64>, BackendError>;

/// A queued check.
struct Waiting {
    call: Call,
    reply: oneshot::Sender<Reply>,
}

/// The batching of one connection's checks.
pub(super) struct Batcher {
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Whether a call is in flight (or about to be sent).
    busy: bool,
    queue: VecDeque<Waiting>,
}

/// What to do with a check.
pub(super) enum Submitted {
    /// Send it now, alone; then call [`Batcher::done`] (see [`Lead`]).
    Lead(Call),
    /// Wait for its reply: it goes out in a batch.
    Queued(oneshot::Receiver<Reply>),
}

impl Batcher {
    /// Batches of up to `max` checks.
    pub(super) fn new(max: usize) -> Self {
        Self {
            max,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `call` now if nothing is in flight, else queues it.
    pub(super) fn submit(&self, call: Call) -> Submitted {
        let mut state = self.state();
        if state.busy {
            let (tx, rx) = oneshot::channel();
            state.queue.push_back(Waiting { call, reply: tx });
            Submitted::Queued(rx)
        } else {
            state.busy = true;
            Submitted::Lead(call)
        }
    }

    /// The next batch, or `None` (and nothing in flight any more) if no
    /// check is waiting.
    fn next_batch(&self) -> Option<Vec<Waiting>> {
        let mut state = self.state();
        if state.queue.is_empty() {
            state.busy = false;
            return None;
        }
        let n = state.queue.len().min(self.max);
        Some(state.queue.drain(..n).collect())
    }
}

/// A lone call in flight: when it ends (or its caller drops it), the checks
/// queued meanwhile go out.
pub(super) struct Lead(pub Arc<Inner>);

impl Drop for Lead {
    fn drop(&mut self) {
        done(&self.0);
    }
}

/// A call ended: sends what queued meanwhile, in a task of its own, or
/// marks the connection idle.
fn done(inner: &Arc<Inner>) {
    let Some(batcher) = &inner.batcher else {
        return;
    };
    let Some(batch) = batcher.next_batch() else {
        return;
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(drain(Arc::clone(inner), batch));
        }
        Err(_) => {
            // No runtime to send from (a check dropped outside one): fail
            // the waiting checks rather than leave them waiting.
            drop(batch);
            while batcher.next_batch().is_some() {}
        }
    }
}

/// Sends batches until no check is waiting.
async fn drain(inner: Arc<Inner>, mut batch: Vec<Waiting>) {
    loop {
        send(&inner, batch).await;
        let Some(batcher) = &inner.batcher else {
            return;
        };
        match batcher.next_batch() {
            Some(next) => batch = next,
            None => return,
        }
    }
}

/// Sends one batch (a lone check as its own script) and hands each check its
/// reply.
async fn send(inner: &Inner, batch: Vec<Waiting>) {
    if let [one] = batch.as_slice() {
        let invocation = one.call.invocation();
        let result = tokio::time::timeout(
            MAX_BATCH_TIME,
            inner.send::<Vec<i64>>(Request::Script(&invocation)),
        )
        .await
        .unwrap_or_else(|_| Err(abandoned()));
        let [one] = <[Waiting; 1]>::try_from(batch).ok().expect("one check");
        let _ = one.reply.send(result);
        return;
    }
    let invocation = batch_invocation(batch.iter().map(|w| &w.call));
    let result = tokio::time::timeout(
        MAX_BATCH_TIME,
        inner.send::<Vec<i64>>(Request::Script(&invocation)),
    )
    .await
    .unwrap_or_else(|_| Err(abandoned()));
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
