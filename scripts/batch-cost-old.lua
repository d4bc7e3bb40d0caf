-- The batch script as batch_lua() made it at commit d491bb3 (before the lean
-- rewrite of issue 18), kept for scripts/batch-cost.sh to measure against.
local clock = redis.call('TIME')
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
whole[1] = function(KEYS, ARGV, redis)
-- The sliding log's reads of one quota's sorted set, shared by
-- sliding_log.lua and sliding_log_peek.lua (each starts with this file).
-- Members as described in sliding_log.lua.
local sub, find = string.sub, string.find

-- The running sum and cost in a member (the sum's 16 digits, ':', the
-- cost, ':'). Not ours: nil, and the check fails alone.
local function entry(m)
  local to = find(m, ':', 18, true)
  return tonumber(sub(m, 1, 16)), to and tonumber(sub(m, 18, to - 1))
end

-- The units in `key` within the window (members scored after `from`, the
-- Lua form of `(now - window`), the newest member's running sum (0 when the
-- set is empty) and its score (nil when empty): two O(log n) reads.
local function window_units(key, from, now, window)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if not last[1] then return 0, 0, nil end
  local sum, newest = entry(last[1]), tonumber(last[2])
  if newest <= now - window then return 0, sum, newest end
  local first = redis.call('ZRANGEBYSCORE', key, from, '+inf', 'LIMIT', 0, 1)
  local fsum, fcost = entry(first[1])
  return sum - fsum + fcost, sum, newest
end

-- Microseconds until `cost` more units fit under `limit` in `key`, which
-- counts `count` now: the oldest counted entries leave until they do, at
-- most `need` entries (each holds at least one unit). A cost above the
-- limit never fits: the whole window.
local function retry_after(key, from, now, window, limit, count, cost)
  if cost > limit then return window end
  local need = count + cost - limit
  local olds = redis.call('ZRANGEBYSCORE', key, from, '+inf', 'WITHSCORES', 'LIMIT', 0, need)
  local left = 0
  for j = 1, #olds, 2 do
    local _, c = entry(olds[j])
    left = left + c
    if left >= need then return tonumber(olds[j + 1]) + window - now end
  end
  return window
end

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
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])
local nonce = ARGV[2]
local n = #KEYS
local format, max, ceil = string.format, math.max, math.ceil

local counts, sums, newest = {}, {}, {}
local denied, retry = 0, 0
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local key, from = KEYS[i], '(' .. format('%d', now - window)
  local count, sum, last = window_units(key, from, now, window)
  counts[i], sums[i], newest[i] = count, sum, last
  if count + cost > limit then
    local r = retry_after(key, from, now, window, limit, count, cost)
    if r > retry then denied, retry = i, r end
  end
end

local admit = denied == 0 and cost > 0
local out = {denied == 0 and 1 or 0, denied, retry}
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local key, count = KEYS[i], counts[i]
  if admit then
    -- Never before the newest entry (the clock stepped back).
    local at = max(now, newest[i] or now)
    redis.call('ZADD', key, at, format('%016d:%d:%s', sums[i] + cost, cost, nonce))
    redis.call('PEXPIRE', key, ceil((at + window - now) / 1000))
    redis.call('ZREMRANGEBYSCORE', key, '-inf', format('%d', now - window))
    newest[i] = at
    count = count + cost
  end
  local reset = 0
  if newest[i] then reset = max(newest[i] + window - now, 0) end
  out[2 * i + 2] = max(limit - count, 0)
  out[2 * i + 3] = reset
end
return out

end
api[2] = (function()
-- Sliding window counter (approximate). A translation of sliding_window.rs and
-- `check` in mod.rs, with the same floating-point operations in the same order.
-- KEYS[i]  one string per quota, "<s> <c> <p>": s = start of the current
--          fixed window (us), c = its count, p = the previous window's count.
-- ARGV[1]  cost, ARGV[2] request nonce (unused here),
-- ARGV[1+2i], ARGV[2+2i]  limit and window (microseconds) of quota i.
-- Returns {allowed, denied quota (1-based, 0 = none), retry-after us,
--          remaining_1, reset_us_1, ..., remaining_n, reset_us_n}.
-- A denied request writes nothing.
--
-- This file defines `state`, `decide` and `write`; the script is this file
-- followed by state_main.lua (one check). The batch script
-- (backend/redis/batch.rs) calls the functions alone, keeping each key's
-- state from one check to the next.

local floor, ceil, max = math.floor, math.ceil, math.max

-- The state of one quota at `now`, from its stored value `v` (false: none):
-- {start, current count, previous count}, rolled to the fixed window of `now`.
local function state(v, now, window)
  local start = now - now % window
  local c, p = 0, 0
  if v then
    local s, sc, sp = string.match(v, '^(%d+) (%d+) (%d+)$')
    s = tonumber(s)
    if s == nil then
      -- not ours: start afresh
    elseif s >= start then
      -- same fixed window (or a later one: the clock stepped back; keep counts)
      start, c, p = s, tonumber(sc), tonumber(sp)
    elseif s + window == start then
      p = tonumber(sc)
    end
  end
  return {start, c, p}
end

-- Decides `cost` units against the states `qs` (quota order) at `now`; if
-- admitted, counts them in `qs`. Returns the reply and whether `qs` changed.
local function decide(qs, now, cost, ARGV, n)
  local denied, retry = 0, 0
  for i = 1, n do
    local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
    local q, e = qs[i], now % window
    local c, p = q[2], q[3]
    local est = floor(p * ((window - e) / window)) + c
    if est + cost > limit then
      local r
      if cost > limit then
        r = window
      elseif c + cost <= limit then
        local overlap = ceil((limit - cost - c + 1) * window / p)
        local target = max(window + 2 - overlap, 0)
        r = max(target - e, 1)
      else
        local overlap = ceil((limit - cost + 1) * window / c)
        r = window - e + max(window + 2 - overlap, 0)
      end
      if r > retry then denied, retry = i, r end
    end
  end

  local admit = denied == 0 and cost > 0
  -- Sized for one quota up front (a table grown one entry at a time is
  -- copied as it grows).
  local out = {denied == 0 and 1 or 0, denied, retry, 0, 0}
  for i = 1, n do
    local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
    local q, e = qs[i], now % window
    local c, p = q[2], q[3]
    local est = floor(p * ((window - e) / window)) + c
    if admit then
      c, est = c + cost, est + cost
      q[2] = c
    end
    local reset = 0
    if c > 0 then reset = 2 * window - e elseif p > 0 then reset = window - e end
    out[2 * i + 2] = max(limit - est, 0)
    out[2 * i + 3] = reset
  end
  return out, admit
end

-- Stores the state `q` of a quota at `now`, until it stops mattering.
local function write(key, q, now, window)
  redis.call('SET', key, string.format('%d %d %d', q[1], q[2], q[3]),
    'PX', ceil((2 * window - now % window) / 1000))
end

return {state = state, decide = decide, write = write}
end)()
api[3] = (function()
-- GCRA. A translation of gcra.rs and `check` in mod.rs, in integer
-- arithmetic (every value is a whole number below 2^53).
-- KEYS[i]  one string per quota: the theoretical arrival time (us).
-- ARGV[1]  cost, ARGV[2] request nonce (unused here),
-- ARGV[1+2i], ARGV[2+2i]  limit and window (microseconds) of quota i.
-- Returns {allowed, denied quota (1-based, 0 = none), retry-after us,
--          remaining_1, reset_us_1, ..., remaining_n, reset_us_n}.
-- A denied request writes nothing.
--
-- This file defines `state`, `decide` and `write`; the script is this file
-- followed by state_main.lua (one check). The batch script
-- (backend/redis/batch.rs) calls the functions alone, keeping each key's
-- state from one check to the next.

local floor, ceil, max = math.floor, math.ceil, math.max

-- The state of one quota at `now`, from its stored value `v` (false: none):
-- {level}, the time until the bucket has drained (us, at least 0).
local function state(v, now, window)
  local level = (tonumber(v) or 0) - now
  if level < 0 then level = 0 end
  return {level}
end

-- Decides `cost` units against the states `qs` (quota order) at `now`; if
-- admitted, counts them in `qs`. Returns the reply and whether `qs` changed.
local function decide(qs, now, cost, ARGV, n)
  local denied, retry = 0, 0
  for i = 1, n do
    local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
    local r = window
    if cost <= limit then
      local interval = ceil(window / limit)
      r = qs[i][1] + (cost - limit) * interval
    end
    if r > retry then denied, retry = i, r end
  end

  local admit = denied == 0 and cost > 0
  -- Sized for one quota up front (a table grown one entry at a time is
  -- copied as it grows).
  local out = {denied == 0 and 1 or 0, denied, retry, 0, 0}
  for i = 1, n do
    local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
    local interval = ceil(window / limit)
    local level = qs[i][1]
    if admit then
      level = level + cost * interval
      qs[i][1] = level
    end
    out[2 * i + 2] = max(limit - ceil(level / interval), 0)
    out[2 * i + 3] = level
  end
  return out, admit
end

-- Stores the state `q` of a quota at `now`, until the bucket has drained.
local function write(key, q, now, window)
  redis.call('SET', key, now + q[1], 'PX', ceil(q[1] / 1000))
end

return {state = state, decide = decide, write = write}
end)()
local out = {}
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
