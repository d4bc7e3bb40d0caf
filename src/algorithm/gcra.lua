-- GCRA. A translation of gcra.rs and `check` in mod.rs, in integer
-- arithmetic (every value is a whole number below 2^53).
-- KEYS[i]  one string per quota: the theoretical arrival time (us).
-- ARGV[1]  cost, ARGV[2] request nonce (unused here),
-- ARGV[1+2i], ARGV[2+2i]  limit and window (microseconds) of quota i.
-- Returns {allowed, denied quota (1-based, 0 = none), retry-after us,
--          remaining_1, reset_us_1, ..., remaining_n, reset_us_n}.
-- A denied request writes nothing.
--
-- This file defines `state`, `retry`, `count`, `status`, `check1` and
-- `write`, on a
-- quota's state as three numbers (here the level, then two unused zeros; no
-- table); the script is this file followed by state_main.lua (one check).
-- The batch script (backend/redis/batch.rs) calls the functions alone,
-- keeping each key's state from one check to the next.

local ceil, max = math.ceil, math.max

-- The state of one quota at `now`, from its stored value `v` (false: none):
-- the level, the time until the bucket has drained (us, at least 0).
local function state(v, now, window)
  local level = (tonumber(v) or 0) - now
  if level < 0 then level = 0 end
  return level, 0, 0
end

-- Microseconds until `cost` units fit in the quota (`limit` per `window`)
-- at `level`; 0 (or less) if they fit now.
local function retry(level, _, _, now, limit, window, cost)
  if cost > limit then return window end
  return level + (cost - limit) * ceil(window / limit)
end

-- The state after `cost` units are counted.
local function count(level, y, z, now, limit, window, cost)
  return level + cost * ceil(window / limit), y, z
end

-- The quota's remaining units and reset (us) at `level`.
local function status(level, _, _, now, limit, window)
  return max(limit - ceil(level / ceil(window / limit)), 0), level
end

-- One quota's whole check in one call (a Lua call costs about as much as
-- the maths): the retry-after (0: `cost` units fit, and are then counted
-- if any), the state after, and the remaining units and reset.
local function check1(level, y, z, now, limit, window, cost)
  local interval = ceil(window / limit)
  local wait = window
  if cost <= limit then wait = level + (cost - limit) * interval end
  if wait > 0 then
    return wait, level, y, z, max(limit - ceil(level / interval), 0), level
  end
  level = level + cost * interval
  return 0, level, y, z, max(limit - ceil(level / interval), 0), level
end

-- Stores the `level` of a quota at `now`, until the bucket has drained.
local function write(key, level, _, _, now, window)
  redis.call('SET', key, now + level, 'PX', ceil(level / 1000))
end
