-- Sliding window counter, charge. A translation of `Counter::charge` in
-- sliding_window.rs and `charge` in mod.rs (sliding_window.lua comes
-- first): in every quota, ARGV[1] more units join the current fixed
-- window's count whatever the estimate (no admission check: into debt if
-- need be), the count at most 100 × the limit. The key keeps its TTL until
-- the count stops mattering, as after a check.
-- KEYS[i]  the strings, as in sliding_window.lua.
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
    local s, c, p = state(values[i], now, window)
    c = math.min(c + cost, max(100 * limit, c))
    write(KEYS[i], s, c, p, now, window)
  end
end
return 1
