-- Sliding window counter (approximate). A translation of sliding_window.rs and
-- `check` in mod.rs, with the same floating-point operations in the same order.
-- KEYS[i]  one hash per quota: s = start of the current fixed window (us),
--          c = its count, p = the previous fixed window's count.
-- ARGV[1]  cost, ARGV[2] request nonce (unused here),
-- ARGV[1+2i], ARGV[2+2i]  limit and window (microseconds) of quota i.
-- Returns {allowed, denied quota (1-based, 0 = none), retry-after us,
--          remaining_1, reset_us_1, ..., remaining_n, reset_us_n}.
-- A denied request writes nothing.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local n = #KEYS

local starts, curs, prevs, elapsed = {}, {}, {}, {}
local denied, retry = 0, -1
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local e = math.fmod(now, window)
  local start = now - e
  local h = redis.call('HMGET', KEYS[i], 's', 'c', 'p')
  local s, c, p = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0
  if s ~= nil and s >= start then
    -- same fixed window (or a later one: the clock stepped back; keep counts)
    start = s
  elseif s ~= nil and s + window == start then
    p, c = c, 0
  else
    p, c = 0, 0
  end
  starts[i], curs[i], prevs[i], elapsed[i] = start, c, p, e
  local est = math.floor(p * ((window - e) / window)) + c
  if est + cost > limit then
    local r
    if cost > limit then
      r = window
    elseif c + cost <= limit then
      local overlap = math.ceil((limit - cost - c + 1) * window / p)
      local target = math.max(window + 2 - overlap, 0)
      r = math.max(target - e, 1)
    else
      local overlap = math.ceil((limit - cost + 1) * window / c)
      r = window - e + math.max(window + 2 - overlap, 0)
    end
    if r > retry then denied, retry = i, r end
  end
end

local out = {denied == 0 and 1 or 0, denied, math.max(retry, 0)}
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local c, p, e = curs[i], prevs[i], elapsed[i]
  if denied == 0 and cost > 0 then
    c = c + cost
    redis.call('HSET', KEYS[i], 's', starts[i], 'c', c, 'p', p)
    redis.call('PEXPIRE', KEYS[i], math.ceil((2 * window - e) / 1000))
  end
  local est = math.floor(p * ((window - e) / window)) + c
  local reset = 0
  if c > 0 then reset = 2 * window - e elseif p > 0 then reset = window - e end
  out[#out + 1] = math.max(limit - est, 0)
  out[#out + 1] = reset
end
return out
