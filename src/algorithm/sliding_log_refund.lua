-- Sliding log, refund. A translation of `Log::refund` in sliding_log.rs and
-- `refund` in mod.rs (sliding_log_read.lua comes first): in every quota's
-- set, the request's own member (found by its nonce) gives back ARGV[1]
-- units if it is still in the window: it leaves the set, or, for a partial
-- refund, holds fewer units. A member that has left the window, or is gone,
-- is left alone.
-- KEYS[i]  the sets, as in sliding_log.lua.
-- ARGV[1]  units to give back (at most the request's cost),
-- ARGV[2]  the request's nonce, ARGV[3] (unused here),
-- ARGV[1+3i], ARGV[2+3i], ARGV[3+3i]  limit, window (us) and (unused)
--          reset of quota i.
-- Returns 1.
--
-- The members' running sums stay a running sum: every member newer than
-- the refunded one is rewritten with its sum lowered by the units given
-- back (usually a few: the requests admitted while the refunded one ran;
-- at most the limit). The key's TTL is set again to when its newest member
-- leaves the window (the set is deleted when nothing is left).
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])
local suffix = ':' .. ARGV[2]
local format, sub, min, ceil = string.format, string.sub, math.min, math.ceil

-- The member of `key` ending with `suffix`, its score and its rank; nil
-- if none. Searched from the newest member on, in growing chunks: a
-- refund usually follows its request closely.
local function find(key)
  local n = redis.call('ZCARD', key)
  local top, chunk = n - 1, 8
  while top >= 0 do
    local low = top - chunk + 1
    if low < 0 then low = 0 end
    local ms = redis.call('ZRANGE', key, low, top, 'WITHSCORES')
    for j = #ms - 1, 1, -2 do
      if sub(ms[j], -#suffix) == suffix then
        return ms[j], tonumber(ms[j + 1]), low + (j - 1) / 2
      end
    end
    top, chunk = low - 1, chunk * 4
  end
  return nil
end

-- Reads first, every quota's, then writes: a key that cannot be read (of
-- another type, a member not ours) fails the refund before it writes.
-- The writes use the commands the check uses (ZADD, ZREMRANGEBYSCORE,
-- PEXPIRE: the minimal ACL rule needs nothing more): every member from the
-- refunded one's score on is removed, and those to keep are added back
-- (older members of that very score as they were, newer ones lowered).
if cost > 0 and ARGV[2] ~= '' then
  local found = {}
  for i = 1, #KEYS do
    local key, window = KEYS[i], tonumber(ARGV[2 + 3 * i])
    local m, score, rank = find(key)
    if m and score > now - window then
      local sum, c = entry(m)
      local at = format('%d', score)
      -- Members of the refunded one's score, in order: those before it are
      -- older.
      local same = redis.call('ZRANGEBYSCORE', key, at, at)
      local older = {}
      for j = 1, #same do
        if same[j] == m then break end
        older[#older + 1] = same[j]
      end
      local newer = redis.call('ZRANGE', key, rank + 1, -1, 'WITHSCORES')
      local sums = {}
      for j = 1, #newer, 2 do sums[j] = entry(newer[j]) + 0 end
      found[i] = {m, at, sum + 0, c + 0, older, newer, sums}
    end
  end
  for i = 1, #KEYS do
    local f = found[i]
    if f then
      local key, window = KEYS[i], tonumber(ARGV[2 + 3 * i])
      local m, at, sum, c, older, newer, sums = f[1], f[2], f[3], f[4], f[5], f[6], f[7]
      local back = min(cost, c)
      redis.call('ZREMRANGEBYSCORE', key, at, '+inf')
      for j = 1, #older do redis.call('ZADD', key, at, older[j]) end
      if c > back then
        redis.call('ZADD', key, at, format('%016d:%d', sum - back, c - back) .. suffix)
      end
      for j = 1, #newer, 2 do
        redis.call('ZADD', key, newer[j + 1], format('%016d', sums[j] - back) .. sub(newer[j], 17))
      end
      local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      if last[1] then
        redis.call('PEXPIRE', key, ceil((tonumber(last[2]) + window - now) / 1000))
      end
    end
  end
end
return 1
