//! Batching: checks waiting for the same lane go out as one script call
//! that decides them in order.
//!
//! A check on an idle lane is sent at once, as its algorithm's own
//! `EVALSHA` (no timer, no added latency). Checks that find the lane busy
//! queue; the lane's draining task sends what is queued (up to the batch
//! size) as one call of the batch script, which runs each check's
//! algorithm in arrival order, each seeing the writes of those before it,
//! exactly as that many single calls would, and keeps up to
//! `Transport::depth` such calls in flight (1 for now, see
//! `transport::PIPELINE`). Batches grow with the load.
//!
//! Order: calls on one connection run in the order they reach it, and a
//! check's place is taken when it is made (`Batcher::submit`). Nothing is
//! sent beside a lone check's call; the draining task polls each batch
//! call once (handing its request to the connection) before it takes the
//! next batch, and polls its calls in that order. Its calls are plain
//! `EVALSHA`s of the batch script and their outcomes are taken in call
//! order: one that met `NOSCRIPT` (a new server, `SCRIPT FLUSH`, a
//! failover) is sent again, loading the script, before the next outcome is
//! looked at, and no new batch goes out until every call sent before the
//! reload has ended; so a reload cannot reorder them (as redis-rs' own
//! reload-and-retry of each call would, in whatever order their tasks ran).
//!
//! Lanes: every key of a decision shares the hash tag `{<policy>:<key>}`,
//! and the tag picks the lane, so all checks of one client key go through
//! one lane, in order. A single node or a Sentinel primary has
//! `transport::LANES` lanes (a hash of the tag picks one), whose calls share
//! the connection: Redis runs one lane's batch while the application makes
//! another's. On a Redis Cluster a script call may only touch keys of one
//! hash slot, so each hash slot is a lane of its own: checks are batched
//! with those of the same slot only. The lanes run independently, each
//! with its own call in flight. A
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
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::{Poll, Waker};

use redis::{Cmd, Script};
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

/// The batch call deciding `calls` in order, as a plain `EVALSHA` (see
/// `encode`): `NOSCRIPT` is its caller's to handle, or `Request::Eval`'s,
/// which loads [`BATCH_SCRIPT`] and calls again. Keys and arguments are
/// written straight into the command, from the calls.
fn batch_evalsha<'a>(calls: impl Iterator<Item = &'a Call>) -> Cmd {
    let mut words = Plain::default();
    encode(calls, &mut words);
    let keys_len: usize = words.keys.iter().map(|key| key.len()).sum();
    let texts_len: usize = (words.args.iter())
        .map(|word| match word {
            Word::Number(_) => 20,
            Word::Text(text) => text.len(),
        })
        .sum();
    // EVALSHA, SHA1, key count; each argument's length besides its bytes.
    let args = 3 + words.keys.len() + words.args.len();
    let mut command = Cmd::with_capacity(args, 56 + keys_len + texts_len);
    command
        .arg("EVALSHA")
        .arg(BATCH_SCRIPT.get_hash())
        .arg(words.keys.len());
    for key in &words.keys {
        command.arg(*key);
    }
    for arg in &words.args {
        match arg {
            Word::Number(n) => command.arg(*n),
            Word::Text(text) => command.arg(*text),
        };
    }
    command
}

/// A plain call's keys and arguments, in the order `encode` gives them,
/// borrowed from the calls.
#[derive(Default)]
struct Plain<'a> {
    keys: Vec<&'a str>,
    args: Vec<Word<'a>>,
}

enum Word<'a> {
    Number(u64),
    Text(&'a str),
}

impl<'a> Plain<'a> {
    fn key(&mut self, key: &'a str) {
        self.keys.push(key);
    }

    fn number(&mut self, n: u64) {
        self.args.push(Word::Number(n));
    }

    fn text(&mut self, text: &'a str) {
        self.args.push(Word::Text(text));
    }
}

/// The keys and arguments of the batch call deciding `calls` in order (see
/// the module docs for the layout). A run of identical checks (same
/// algorithm, keys and arguments: a hot client's checks of the same cost;
/// never the sliding log's, whose nonces differ) goes out once, with its
/// length: Redis decides it that many times, one check after the other.
/// Each distinct key goes out once.
fn encode<'a>(calls: impl Iterator<Item = &'a Call>, out: &mut Plain<'a>) {
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
        let fresh = previous.is_none_or(|p| p.cost != call.cost || p.quotas() != call.quotas());
        // The keys are the next ones of KEYS when none was used before (nor
        // twice in this check).
        let implicit = call
            .keys()
            .enumerate()
            .all(|(i, key)| !index.contains_key(key) && !call.keys().take(i).any(|k| k == key));
        let (fresh_bit, implicit_bit) = (u64::from(fresh), u64::from(implicit));
        out.number(alg + 4 * (fresh_bit + 2 * (implicit_bit + 2 * n as u64)));
        if call.algorithm.spec().nonce {
            out.text(call.nonce.as_str());
        }
        if fresh {
            for n in call.batch_args() {
                out.number(n);
            }
        }
        for key in call.keys() {
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
    /// How many batch calls may be in flight on one lane at once
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
    /// Calls in flight on the lane: the lead's, or the draining task's.
    in_flight: usize,
    /// Whether the call in flight is a lead's (sent from its caller's task,
    /// which reloads a flushed script itself): nothing is sent beside it.
    lead: bool,
    /// Whether the lane's draining task runs.
    draining: bool,
    /// The draining task, while it waits: woken when a check queues or the
    /// lead's call ends.
    waker: Option<Waker>,
}

impl State {
    /// Whether the draining task may send a batch now.
    fn has_room(&self, depth: usize) -> bool {
        !self.lead && self.in_flight < depth
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

/// What a lane's draining task does next (see [`Batcher::next_step`]).
enum Step {
    /// Look at the queue again: a check queued meanwhile, and there is room.
    Again,
    /// End: nothing in flight, nothing it may send.
    Stop,
    /// Wait for a reply, a check or room.
    Wait,
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

    /// Sends `call` now, alone, if nothing is in flight or waiting on
    /// `lane`; else queues it (and makes sure the queue drains).
    pub(super) fn submit(self: &Arc<Self>, lane: Lane, call: Call) -> Submitted {
        let mut lanes = self.lanes();
        let state = lanes.entry(lane).or_default();
        if state.queue.is_empty() && state.in_flight == 0 {
            state.in_flight = 1;
            state.lead = true;
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

    /// The lead's call on `lane` ended (or was dropped).
    fn lead_done(self: &Arc<Self>, lane: Lane) {
        let mut lanes = self.lanes();
        let Some(state) = lanes.get_mut(&lane) else {
            return;
        };
        state.in_flight -= 1;
        state.lead = false;
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

    /// The next batch of `lane` if it has room for a call (then counted in
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
    /// flight, does next, decided under the lock checks queue under: look
    /// again if a check queued meanwhile and it may send (`sending`: not
    /// while it resends after a script reload); stop if it has nothing in
    /// flight (marked as stopped, the lane removed if idle: whatever makes
    /// room later starts a new task); else wait, `waker` stored to be woken
    /// when a check queues or the lead's call ends.
    fn next_step(&self, lane: Lane, flying: usize, sending: bool, waker: &Waker) -> Step {
        let mut lanes = self.lanes();
        let Some(state) = lanes.get_mut(&lane) else {
            return Step::Stop;
        };
        if sending && !state.queue.is_empty() && state.has_room(self.depth) {
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
        self.batcher.lead_done(self.lane);
    }
}

/// A batch call's reply, or its error.
type Outcome = Result<Vec<i64>, BackendError>;

/// A call in flight from a lane's draining task.
struct Flying {
    batch: Vec<Waiting>,
    /// Whether it is a call of the batch script (else, a lone check's own
    /// script).
    as_batch: bool,
    call: Pin<Box<dyn Future<Output = Outcome> + Send>>,
    /// Its outcome, once it came (outcomes are handed out in call order).
    outcome: Option<Outcome>,
    /// Whether it was sent again after a script reload.
    resent: bool,
}

/// Sends the batches of `lane` while checks wait and the lane has room: up
/// to [`Transport::depth`] calls in flight, each polled once (its request
/// handed to the connection) before the next batch is taken, so Redis runs
/// them in the order their checks queued while the application makes the
/// next one.
///
/// The calls are plain `EVALSHA`s. If one meets `NOSCRIPT` (a new server,
/// `SCRIPT FLUSH`, a failover) so may those sent after it; left to redis-rs,
/// each would be reloaded and sent again in whatever order their tasks run.
/// Here outcomes are taken in call order: a call that met `NOSCRIPT` is sent
/// again (reloading the script) and its outcome awaited before the next
/// call's outcome is looked at, and no new batch goes out until every call
/// sent before the reload has ended. (A call that followed one that met
/// `NOSCRIPT` but found the script, loaded meanwhile by another client, has
/// run before it: those checks were pending together, none answered.)
async fn drain(batcher: Arc<Batcher>, lane: Lane) {
    let mut flying: VecDeque<Flying> = VecDeque::new();
    let mut reloading = false;
    std::future::poll_fn(|cx| {
        loop {
            if !reloading {
                while let Some(batch) = batcher.next_batch(lane) {
                    // Calls in flight together are all of the batch script,
                    // so that if one meets `NOSCRIPT` those after it do
                    // too. A lone check on a lane of one call at a time
                    // goes out as its own, cheaper script.
                    let as_batch = batch.len() > 1 || batcher.depth > 1;
                    let transport = Arc::clone(&batcher.transport);
                    let call = Box::pin(lane_call(transport, &batch, as_batch, false));
                    flying.push_back(Flying {
                        batch,
                        as_batch,
                        call,
                        outcome: None,
                        resent: false,
                    });
                    poll_call(flying.back_mut().expect("just pushed"), cx);
                }
            }
            for call in flying.iter_mut() {
                poll_call(call, cx);
            }
            let mut ended = 0;
            while let Some(front) = flying.front_mut() {
                match &front.outcome {
                    None => break,
                    Some(Err(error)) if !front.resent && is_noscript(error) => {
                        reloading = true;
                        front.resent = true;
                        front.outcome = None;
                        front.call = Box::pin(lane_call(
                            Arc::clone(&batcher.transport),
                            &front.batch,
                            front.as_batch,
                            true,
                        ));
                        poll_call(front, cx);
                    }
                    Some(_) => {
                        let done = flying.pop_front().expect("a front");
                        let outcome = done.outcome.expect("an outcome");
                        hand_out(done.batch, outcome, done.as_batch);
                        ended += 1;
                    }
                }
            }
            if flying.is_empty() {
                reloading = false;
            }
            if ended > 0 {
                batcher.ended(lane, ended);
                continue;
            }
            match batcher.next_step(lane, flying.len(), !reloading, cx.waker()) {
                Step::Again => {}
                Step::Stop => return Poll::Ready(()),
                Step::Wait => return Poll::Pending,
            }
        }
    })
    .await;
}

/// Polls a call still in flight, keeping its outcome if it came.
fn poll_call(call: &mut Flying, cx: &mut std::task::Context<'_>) {
    if call.outcome.is_none()
        && let Poll::Ready(outcome) = call.call.as_mut().poll(cx)
    {
        call.outcome = Some(outcome);
    }
}

/// Whether a call failed because Redis does not have its script.
fn is_noscript(error: &BackendError) -> bool {
    match error {
        BackendError::Connection(e) => e.downcast_ref::<redis::RedisError>().is_some_and(|e| {
            e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
        }),
        _ => false,
    }
}

/// The call deciding `batch` (`as_batch`: of the batch script, else of a
/// lone check's own), under the transport's bounds for a lane's calls
/// ([`Transport::bounded`]: on a cluster those of a detached call). A plain
/// `EVALSHA`, whose `NOSCRIPT` is its caller's to handle; or, `reloading`,
/// the same `EVALSHA` through `Request::Eval`, which loads the script on
/// `NOSCRIPT` and calls again.
fn lane_call(
    transport: Arc<Transport>,
    batch: &[Waiting],
    as_batch: bool,
    reloading: bool,
) -> impl Future<Output = Outcome> + Send + 'static {
    let (command, script) = match batch {
        [one] if !as_batch => (one.call.evalsha(), one.call.script()),
        _ => (batch_evalsha(batch.iter().map(|w| &w.call)), &*BATCH_SCRIPT),
    };
    async move {
        let request = if reloading {
            Request::Eval(&command, script)
        } else {
            Request::Command(&command)
        };
        let call = transport.send::<Vec<i64>>(request);
        transport.bounded(call).await
    }
}

/// Hands each check of `batch` its decision from the call's outcome
/// (`as_batch`: the batch script's reply).
fn hand_out(batch: Vec<Waiting>, outcome: Outcome, as_batch: bool) {
    if !as_batch {
        let result = outcome.map_err(super::script::key_fault);
        let [one] = <[Waiting; 1]>::try_from(batch).ok().expect("one check");
        let _ = one
            .reply
            .send(result.and_then(|reply| one.call.decode(&reply)));
        return;
    }
    match outcome {
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

    fn key_strings(call: &Call) -> Vec<String> {
        call.keys().map(str::to_owned).collect()
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
            batch.iter().map(|w| key_strings(&w.call)).collect()
        };
        let mut waiting = Vec::new();

        // The first check of an idle lane leads; nothing goes out beside a
        // lead's call (its caller reloads a flushed script on its own).
        assert!(leads(&batcher.submit(7, a_call(0))));
        waiting.push(queued(batcher.submit(7, a_call(1))));
        assert!(batcher.next_batch(7).is_none(), "the lead is in flight");
        batcher.lead_done(7);
        // Then up to two calls in flight, batches of at most 2, in order.
        assert_eq!(
            keys(&batcher.next_batch(7).unwrap()),
            [key_strings(&a_call(1))]
        );
        // Nothing waits, but a call is in flight: a new check queues.
        waiting.push(queued(batcher.submit(7, a_call(2))));
        waiting.push(queued(batcher.submit(7, a_call(3))));
        waiting.push(queued(batcher.submit(7, a_call(4))));
        assert_eq!(
            keys(&batcher.next_batch(7).unwrap()),
            [key_strings(&a_call(2)), key_strings(&a_call(3))]
        );
        assert!(batcher.next_batch(7).is_none(), "two calls in flight");
        batcher.ended(7, 1);
        assert_eq!(
            keys(&batcher.next_batch(7).unwrap()),
            [key_strings(&a_call(4))]
        );
        batcher.ended(7, 2);

        // Lanes are independent: lane 9 leads while lane 7 drains.
        assert!(leads(&batcher.submit(9, a_call(0))));
        assert_eq!(batcher.busy(), 2);

        // A draining task with nothing left stops, and the idle lane goes.
        let waker = std::task::Waker::noop();
        assert!(matches!(batcher.next_step(7, 0, true, waker), Step::Stop));
        assert_eq!(batcher.busy(), 1);
        batcher.lead_done(9);
        assert_eq!(batcher.busy(), 0);

        // While it resends after a script reload, a draining task sends no
        // new batch, even with room: it waits for its calls in flight.
        assert!(leads(&batcher.submit(5, a_call(0))));
        waiting.push(queued(batcher.submit(5, a_call(1))));
        batcher.lead_done(5);
        assert_eq!(
            keys(&batcher.next_batch(5).unwrap()),
            [key_strings(&a_call(1))]
        );
        waiting.push(queued(batcher.submit(5, a_call(2))));
        assert!(matches!(batcher.next_step(5, 1, false, waker), Step::Wait));
        assert!(matches!(batcher.next_step(5, 1, true, waker), Step::Again));
        drop(waiting);
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
        let mut out = Plain::default();
        encode(calls.iter(), &mut out);
        let args: Vec<String> = (out.args.iter())
            .map(|word| match word {
                Word::Number(n) => n.to_string(),
                Word::Text(text) => text.to_string(),
            })
            .collect();
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
        assert_eq!(args, want);
        let key = |call: usize, quota: usize| calls[call].keys().nth(quota).unwrap();
        let keys: Vec<&str> = vec![key(0, 0), key(2, 0), key(4, 1), key(5, 0)];
        assert_eq!(out.keys, keys);
        assert_eq!(key(4, 0), key(2, 0));
        assert_ne!(n1, n2);
    }

    /// The batch reads Redis' clock once, whatever it decides (the single
    /// checks' own `TIME` is below their `-- main` line, left out). With
    /// `BATCH_LUA_OUT` set, also writes the script there, for
    /// `scripts/batch-cost.sh`.
    #[test]
    fn write_batch_lua() {
        let lua = batch_lua();
        assert_eq!(lua.matches("redis.call('TIME')").count(), 1, "{lua}");
        if let Ok(path) = std::env::var("BATCH_LUA_OUT") {
            std::fs::write(path, &lua).expect("written");
        }
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
