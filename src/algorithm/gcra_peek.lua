-- GCRA, read-only peek. A translation of `Tat::peek` in gcra.rs and `peek`
-- in mod.rs: every quota as a check of cost 0 would report it, and whether
-- ARGV[1] more units would fit now. Writes nothing.
-- KEYS, ARGV and the reply as in gcra.lua (the nonce is unused).
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])
local out = {1, 0, 0}
for i = 1, #KEYS do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local interval = math.ceil(window / limit)
  local level = (tonumber(redis.call('GET', KEYS[i])) or 0) - now
  if level < 0 then level = 0 end
  local r = window
  if cost <= limit then r = level + (cost - limit) * interval end
  if r > out[3] then out[1], out[2], out[3] = 0, i, r end
  out[2 * i + 2] = math.max(limit - math.ceil(level / interval), 0)
  out[2 * i + 3] = level
end
return out
