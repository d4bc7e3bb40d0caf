-- main
-- One check, for the algorithms whose script defines `state`, `decide` and
-- `write` (the counter, GCRA): appended to their functions to make their
-- script (see `lua` in their `Spec`). The batch script (backend/redis/
-- batch.rs) takes the functions alone, everything above this line.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local n = #KEYS
local qs = {}
for i = 1, n do
  qs[i] = state(redis.call('GET', KEYS[i]), now, tonumber(ARGV[2 + 2 * i]))
end
local out, changed = decide(qs, now, tonumber(ARGV[1]), ARGV, n)
if changed then
  for i = 1, n do write(KEYS[i], qs[i], now, tonumber(ARGV[2 + 2 * i])) end
end
return out
