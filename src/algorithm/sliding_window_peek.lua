-- Sliding window counter, read-only peek. A translation of `Counter::peek` in
-- sliding_window.rs and `peek` in mod.rs, with the same floating-point
-- operations in the same order as sliding_window.lua: every quota as a check
-- of cost 0 would report it, and whether ARGV[1] more units would fit now.
-- Writes nothing.
-- KEYS, ARGV and the reply as in sliding_window.lua (the nonce is unused).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local n = #KEYS

local denied, retry = 0, -1
local tail = {}
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
  local reset = 0
  if c > 0 then reset = 2 * window - e elseif p > 0 then reset = window - e end
  tail[#tail + 1] = math.max(limit - est, 0)
  tail[#tail + 1] = reset
end

local out = {denied == 0 and 1 or 0, denied, math.max(retry, 0)}
for j = 1, #tail do out[#out + 1] = tail[j] end
return out
