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

