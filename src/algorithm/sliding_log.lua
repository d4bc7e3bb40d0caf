-- Sliding log (exact), one weighted entry per admitted request. A translation
-- of sliding_log.rs and `check` in mod.rs; sliding_log_read.lua comes first.
-- KEYS[i]  one sorted set per quota. One member per admitted request,
--          "<sum>:<cost>:<nonce>": its cost, and <sum> the units admitted to
--          this set up to and including it (a running sum, 16 digits with
--          leading zeros, so members of one score sort in admission order);
--          its score is the admission time in microseconds (Redis server
--          time), never before the newest member's. So the units
--          in the window are the newest member's sum minus (the oldest
--          counted member's sum - its cost): two O(log n) reads, whatever the
--          limit and the costs.
-- ARGV[1]  cost, ARGV[2] request nonce (unique per request),
-- ARGV[1+2i], ARGV[2+2i]  limit and window (microseconds) of quota i.
-- Returns {allowed, denied quota (1-based, 0 = none), retry-after us,
--          remaining_1, reset_us_1, ..., remaining_n, reset_us_n}.
-- Reads come first, so the first write is the ZADD of an admission, which
-- Redis refuses when it is past maxmemory (a denied request writes nothing).
-- Entries that have left the window are trimmed when a request is admitted
-- (each once: amortised O(1)); until then the key's TTL bounds them.
--
-- This file defines `decide` (above `-- main`), then decides one check. The
-- batch script (backend/redis/batch.rs) calls `decide` alone, once per check.
local format, max, ceil = string.format, math.max, math.ceil

-- Each quota's limit, window, count, running sum and newest score, from
-- 5i - 4: one table (each upvalue of `decide` costs the single check),
-- reused from one check to the next (no table per check), sized for one
-- quota up front.
local seen = {0, 0, 0, 0, 0}

-- Decides `cost` units (request `nonce`) against the sets `keys[1..n]` at
-- `now`, quota i's limit and window being `qv[q + 2i - 1]` and `qv[q + 2i]`
-- (numbers, or their strings), and writes the reply into out[m + 1] on;
-- returns the index of its last element. `full`: Redis is past maxmemory
-- and would let this admission's ZADD through (the batch has written
-- already), so an admission fails instead, writing nothing.
local function decide(keys, n, qv, q, now, cost, nonce, full, out, m)
  local denied, retry = 0, 0
  for i = 1, n do
    local limit, window = tonumber(qv[q + 2 * i - 1]), tonumber(qv[q + 2 * i])
    local key, from = keys[i], '(' .. format('%d', now - window)
    local count, sum, last = window_units(key, from, now, window)
    local b = 5 * i
    seen[b - 4], seen[b - 3], seen[b - 2], seen[b - 1], seen[b] = limit, window, count, sum, last
    if count + cost > limit then
      local r = retry_after(key, from, now, window, limit, count, cost)
      if r > retry then denied, retry = i, r end
    end
  end

  local admit = denied == 0 and cost > 0
  if admit and full then
    error('OOM command not allowed when used memory > maxmemory (batch)', 0)
  end
  out[m + 1], out[m + 2], out[m + 3] = denied == 0 and 1 or 0, denied, retry
  for i = 1, n do
    local b = 5 * i
    local limit, window, count, sum, at = seen[b - 4], seen[b - 3], seen[b - 2], seen[b - 1], seen[b]
    local key = keys[i]
    if admit then
      -- Never before the newest entry (the clock stepped back).
      at = max(now, at or now)
      redis.call('ZADD', key, at, format('%016d:%d:%s', sum + cost, cost, nonce))
      redis.call('PEXPIRE', key, ceil((at + window - now) / 1000))
      redis.call('ZREMRANGEBYSCORE', key, '-inf', format('%d', now - window))
      count = count + cost
    end
    local reset = 0
    if at then reset = max(at + window - now, 0) end
    out[m + 2 * i + 2] = max(limit - count, 0)
    out[m + 2 * i + 3] = reset
  end
  return m + 3 + 2 * n
end

-- main
local t = redis.call('TIME')
-- Sized for one quota up front (a table grown one element at a time is
-- copied as it grows).
local out = {0, 0, 0, 0, 0}
decide(KEYS, #KEYS, ARGV, 2, t[1] * 1000000 + t[2], tonumber(ARGV[1]), ARGV[2], false, out, 0)
return out
