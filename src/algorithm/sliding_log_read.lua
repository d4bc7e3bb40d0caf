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

