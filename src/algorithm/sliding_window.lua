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

