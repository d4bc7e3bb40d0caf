-- Sliding log (exact). A translation of sliding_log.rs and `check` in mod.rs.
-- KEYS[i]  one sorted set per quota; members are admitted units, scores are
--          admission times in microseconds (Redis server time).
-- ARGV[1]  cost, ARGV[2] request nonce (unique per request),
-- ARGV[1+2i], ARGV[2+2i]  limit and window (microseconds) of quota i.
-- Returns {allowed, denied quota (1-based, 0 = none), retry-after us,
--          remaining_1, reset_us_1, ..., remaining_n, reset_us_n}.
-- A denied request only drops entries that have left the window.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])
local nonce = ARGV[2]
local n = #KEYS

local counts = {}
local denied, retry = 0, 0
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[i])
  counts[i] = count
  if count + cost > limit then
    local r = window
    if cost <= limit then
      local k = count + cost - limit - 1
      r = redis.call('ZRANGE', KEYS[i], k, k, 'WITHSCORES')[2] + window - now
    end
    if r > retry then denied, retry = i, r end
  end
end

local admit = denied == 0 and cost > 0
local out = {denied == 0 and 1 or 0, denied, retry}
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local count = counts[i]
  local newest = nil
  if admit then
    if cost == 1 then
      redis.call('ZADD', KEYS[i], now, nonce .. ':1')
    else
      local j = 1
      while j <= cost do
        local last = math.min(j + 999, cost)
        local args = {}
        for u = j, last do
          args[#args + 1] = now
          args[#args + 1] = nonce .. ':' .. u
        end
        redis.call('ZADD', KEYS[i], unpack(args))
        j = last + 1
      end
    end
    redis.call('PEXPIRE', KEYS[i], math.ceil(window / 1000))
    -- The newest entry is this request's, unless an older one is later
    -- (the clock stepped back).
    if count == 0 then newest = now end
    count = count + cost
  end
  local reset = 0
  if count > 0 then
    if newest == nil then
      newest = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')[2]
    end
    reset = math.max(newest + window - now, 0)
  end
  out[2 * i + 2] = math.max(limit - count, 0)
  out[2 * i + 3] = reset
end
return out
