-- GCRA, charge. A translation of `Tat::charge` in gcra.rs and `charge` in
-- mod.rs (gcra.lua comes first): in every quota, ARGV[1] more units are
-- counted whatever the level (no admission check: the bucket may overflow,
-- into debt): the theoretical arrival time becomes max(TAT, now) + cost × T,
-- the level at most 100 × tau (and one charge at most 100 × the limit).
-- The key keeps a TTL until the bucket has drained.
-- KEYS[i]  the strings, as in gcra.lua.
-- ARGV[1]  units to count, ARGV[2] (unused),
-- ARGV[1+2i], ARGV[2+2i]  limit and window (us) of quota i.
-- Returns 1.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])
-- Reads first, every quota's, then writes: a key of another type fails
-- the charge before it writes.
if cost > 0 then
  local values = {}
  for i = 1, #KEYS do values[i] = redis.call('GET', KEYS[i]) end
  for i = 1, #KEYS do
    local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
    local level = state(values[i], now, window)
    local interval = ceil(window / limit)
    local most = max(100 * limit * interval, level)
    local units = math.min(cost, 100 * limit)
    level = math.min(level + units * interval, most)
    write(KEYS[i], level, 0, 0, now, window)
  end
end
return 1
