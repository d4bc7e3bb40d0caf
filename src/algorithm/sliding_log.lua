-- Sliding log (exact). A translation of sliding_log.rs and `check` in mod.rs.
-- KEYS[i]  one sorted set per quota; members are admitted units, scores are
--          admission times in microseconds (Redis server time).
-- ARGV[1]  cost, ARGV[2] request nonce (unique per request),
-- ARGV[1+2i], ARGV[2+2i]  limit and window (microseconds) of quota i.
-- Returns {allowed, denied quota (1-based, 0 = none), retry-after us,
--          remaining_1, reset_us_1, ..., remaining_n, reset_us_n}.
-- A denied request only drops entries that have left the window.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local nonce = ARGV[2]
local n = #KEYS

local denied, retry = 0, -1
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[i])
  if count + cost > limit then
    local r = window
    if cost <= limit then
      local kth = redis.call('ZRANGE', KEYS[i], count + cost - limit - 1, count + cost - limit - 1, 'WITHSCORES')
      r = tonumber(kth[2]) + window - now
    end
    if r > retry then denied, retry = i, r end
  end
end

local out = {denied == 0 and 1 or 0, denied, math.max(retry, 0)}
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  if denied == 0 and cost > 0 then
    local args, j = {}, 1
    while j <= cost do
      local last = math.min(j + 999, cost)
      for u = j, last do
        args[#args + 1] = now
        args[#args + 1] = nonce .. ':' .. u
      end
      redis.call('ZADD', KEYS[i], unpack(args))
      args, j = {}, last + 1
    end
    redis.call('PEXPIRE', KEYS[i], math.ceil(window / 1000))
  end
  local count = redis.call('ZCARD', KEYS[i])
  local reset = 0
  if count > 0 then
    local newest = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
    reset = math.max(tonumber(newest[2]) + window - now, 0)
  end
  out[#out + 1] = math.max(limit - count, 0)
  out[#out + 1] = reset
end
return out
