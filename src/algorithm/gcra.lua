-- GCRA. A translation of gcra.rs and `check` in mod.rs, in integer
-- arithmetic (every value is a whole number below 2^53).
-- KEYS[i]  one string per quota: the theoretical arrival time (us).
-- ARGV[1]  cost, ARGV[2] request nonce (unused here),
-- ARGV[1+2i], ARGV[2+2i]  limit and window (microseconds) of quota i.
-- Returns {allowed, denied quota (1-based, 0 = none), retry-after us,
--          remaining_1, reset_us_1, ..., remaining_n, reset_us_n}.
-- A denied request writes nothing.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])
local n = #KEYS
local levels = {}
local denied, retry = 0, 0
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local level = (tonumber(redis.call('GET', KEYS[i])) or 0) - now
  if level < 0 then level = 0 end
  levels[i] = level
  local r = window
  if cost <= limit then
    local interval = math.ceil(window / limit)
    r = level + (cost - limit) * interval
  end
  if r > retry then denied, retry = i, r end
end

local out = {denied == 0 and 1 or 0, denied, retry}
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local interval = math.ceil(window / limit)
  local level = levels[i]
  if denied == 0 and cost > 0 then
    level = level + cost * interval
    redis.call('SET', KEYS[i], now + level, 'PX', math.ceil(level / 1000))
  end
  out[2 * i + 2] = math.max(limit - math.ceil(level / interval), 0)
  out[2 * i + 3] = level
end
return out
