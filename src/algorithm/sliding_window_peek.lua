-- Sliding window counter, read-only peek. A translation of `Counter::peek` in
-- sliding_window.rs and `peek` in mod.rs, with the same floating-point
-- operations in the same order as sliding_window.lua: every quota as a check
-- of cost 0 would report it, and whether ARGV[1] more units would fit now.
-- Writes nothing.
-- KEYS, ARGV and the reply as in sliding_window.lua (the nonce is unused).
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])
local out = {1, 0, 0}
for i = 1, #KEYS do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local e = now % window
  local start = now - e
  local c, p = 0, 0
  local v = redis.call('GET', KEYS[i])
  if v then
    local s, sc, sp = string.match(v, '^(%d+) (%d+) (%d+)$')
    s = tonumber(s)
    if s == nil then
      -- not ours: as if absent
    elseif s >= start then
      -- same fixed window (or a later one: the clock stepped back; keep counts)
      c, p = tonumber(sc), tonumber(sp)
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
    if r > out[3] then out[1], out[2], out[3] = 0, i, r end
  end
  local reset = 0
  if c > 0 then reset = 2 * window - e elseif p > 0 then reset = window - e end
  out[2 * i + 2] = math.max(limit - est, 0)
  out[2 * i + 3] = reset
end
return out
