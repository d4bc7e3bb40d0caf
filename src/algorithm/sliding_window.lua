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
-- This file defines `state`, `retry`, `count`, `status`, `check1` and
-- `write`, on a
-- quota's state as three numbers (no table); the script is this file
-- followed by state_main.lua (one check). The batch script
-- (backend/redis/batch.rs) calls the functions alone, keeping each key's
-- state from one check to the next.

local floor, ceil, max = math.floor, math.ceil, math.max
local match, format = string.match, string.format

-- The state of one quota at `now`, from its stored value `v` (false: none):
-- start, current count, previous count, rolled to the fixed window of `now`.
local function state(v, now, window)
  local start = now - now % window
  if v then
    local s, c, p = match(v, '^(%d+) (%d+) (%d+)$')
    s = tonumber(s)
    if s == nil then
      -- not ours: start afresh
    elseif s >= start then
      -- same fixed window (or a later one: the clock stepped back; keep counts)
      return s, tonumber(c), tonumber(p)
    elseif s + window == start then
      return start, 0, tonumber(c)
    end
  end
  return start, 0, 0
end

-- Microseconds until `cost` units fit in the quota (`limit` per `window`)
-- in state `s, c, p` at `now`; 0 if they fit now.
local function retry(s, c, p, now, limit, window, cost)
  local e = now % window
  if floor(p * ((window - e) / window)) + c + cost <= limit then return 0 end
  if cost > limit then return window end
  if c + cost <= limit then
    local overlap = ceil((limit - cost - c + 1) * window / p)
    return max(max(window + 2 - overlap, 0) - e, 1)
  end
  local overlap = ceil((limit - cost + 1) * window / c)
  return window - e + max(window + 2 - overlap, 0)
end

-- The state after `cost` units are counted.
local function count(s, c, p, now, limit, window, cost)
  return s, c + cost, p
end

-- The quota's remaining units and reset (us) in state `s, c, p` at `now`.
local function status(s, c, p, now, limit, window)
  local e = now % window
  local est = floor(p * ((window - e) / window)) + c
  local reset = 0
  if c > 0 then reset = 2 * window - e elseif p > 0 then reset = window - e end
  return max(limit - est, 0), reset
end

-- One quota's whole check in one call (a Lua call costs about as much as
-- the maths): the retry-after (0: `cost` units fit, and are then counted
-- if any), the state after, and the remaining units and reset.
local function check1(s, c, p, now, limit, window, cost)
  local e = now % window
  local est = floor(p * ((window - e) / window)) + c
  if est + cost > limit then
    local wait = retry(s, c, p, now, limit, window, cost)
    local reset = 0
    if c > 0 then reset = 2 * window - e elseif p > 0 then reset = window - e end
    return wait, s, c, p, max(limit - est, 0), reset
  end
  c, est = c + cost, est + cost
  local reset = 0
  if c > 0 then reset = 2 * window - e elseif p > 0 then reset = window - e end
  return 0, s, c, p, max(limit - est, 0), reset
end

-- Stores the state `s, c, p` of a quota at `now`, until it stops mattering.
local function write(key, s, c, p, now, window)
  redis.call('SET', key, format('%d %d %d', s, c, p),
    'PX', ceil((2 * window - now % window) / 1000))
end
