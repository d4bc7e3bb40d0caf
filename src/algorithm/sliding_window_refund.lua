-- Sliding window counter, refund. A translation of `Counter::refund` in
-- sliding_window.rs and `refund` in mod.rs (sliding_window.lua comes first):
-- ARGV[1] units leave the count of the fixed window the request was counted
-- in, if it is the current or the previous one at `now` (never below zero);
-- else nothing changes.
-- KEYS[i]  the strings, as in sliding_window.lua.
-- ARGV[1]  units to give back (at most the request's cost),
-- ARGV[2]  (unused), ARGV[3] microseconds since the check's reply arrived,
-- ARGV[1+3i], ARGV[2+3i], ARGV[3+3i]  limit, window (us) and the reset (us)
--          the check reported for quota i.
-- Returns 1.
--
-- Which fixed window counted the request: the check happened `e` into it,
-- `e = 2 window - reset` (an admission leaves a current count, so its reset
-- is `2 window - e`), at about `now - ARGV[3]` (off by the two replies'
-- travel time): the instant `e` into a window nearest to that, never after
-- `now`. Exact unless the replies took half a window.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost, age = tonumber(ARGV[1]), tonumber(ARGV[3])
local abs = math.abs

-- The start of the fixed window of length `window` that counted the request.
local function counted_in(window, reset)
  local about = now - age
  local e = 2 * window - reset
  if e < 0 or e >= window then return about - about % window end
  local best = nil
  for k = -1, 1 do
    local at = about - about % window + k * window + e
    if at <= now and (best == nil or abs(at - about) < abs(best - about)) then best = at end
  end
  if best == nil then return about - about % window end
  return best - e
end

-- Reads first, every quota's, then writes: a key of another type fails
-- the refund before it writes.
if cost > 0 then
  local values = {}
  for i = 1, #KEYS do values[i] = redis.call('GET', KEYS[i]) end
  for i = 1, #KEYS do
    local window, reset = tonumber(ARGV[2 + 3 * i]), tonumber(ARGV[3 + 3 * i])
    local key, v = KEYS[i], values[i]
    -- Not ours (or nothing): nothing to give back.
    if v and string.match(v, '^%d+ %d+ %d+$') then
      local s, c, p = state(v, now, window)
      local from = counted_in(window, reset)
      local changed = true
      if from == s then
        c = c - math.min(cost, c)
      elseif from + window == s then
        p = p - math.min(cost, p)
      else
        changed = false
      end
      if changed then
        if c > 0 or p > 0 then
          write(key, s, c, p, now, window)
        else
          redis.call('DEL', key)
        end
      end
    end
  end
end
return 1
