-- Sliding window counter (approximate). A translation of sliding_window.rs and
-- `check` in mod.rs, with the same floating-point operations in the same order.
-- KEYS[i]  one string per quota, "<s> <c> <p>": s = start of the current
--          fixed window (us), c = its count, p = the previous window's count.
-- ARGV[1]  cost, ARGV[2] request nonce (unused here),
-- ARGV[1+2i], ARGV[2+2i]  limit and window (microseconds) of quota i.
-- Returns {allowed, denied quota (1-based, 0 = none), retry-after us,
--          remaining_1, reset_us_1, ..., remaining_n, reset_us_n}.
-- A denied request writes nothing.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])
local n = #KEYS

-- Per quota: start, current count, previous count, elapsed, estimate.
local st = {}
local denied, retry = 0, 0
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local e = now % window
  local start = now - e
  local c, p = 0, 0
  local v = redis.call('GET', KEYS[i])
  if v then
    local s, sc, sp = string.match(v, '^(%d+) (%d+) (%d+)$')
    s = tonumber(s)
    if s == nil then
      -- not ours: start afresh
    elseif s >= start then
      -- same fixed window (or a later one: the clock stepped back; keep counts)
      start, c, p = s, tonumber(sc), tonumber(sp)
    elseif s + window == start then
      p = tonumber(sc)
    end
  end
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
  local j = 5 * i
  st[j - 4], st[j - 3], st[j - 2], st[j - 1], st[j] = start, c, p, e, est
end

local out = {denied == 0 and 1 or 0, denied, retry}
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local j = 5 * i
  local c, p, e, est = st[j - 3], st[j - 2], st[j - 1], st[j]
  if denied == 0 and cost > 0 then
    c, est = c + cost, est + cost
    redis.call('SET', KEYS[i], string.format('%d %d %d', st[j - 4], c, p), 'PX', math.ceil((2 * window - e) / 1000))
  end
  local reset = 0
  if c > 0 then reset = 2 * window - e elseif p > 0 then reset = window - e end
  out[2 * i + 2] = math.max(limit - est, 0)
  out[2 * i + 3] = reset
end
return out
