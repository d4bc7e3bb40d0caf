-- GCRA, refund. A translation of `Tat::refund` in gcra.rs and `refund` in
-- mod.rs: in every quota, the theoretical arrival time moves back by ARGV[1]
-- emission intervals, never before `now`; a key whose bucket is then empty
-- is deleted, others keep a TTL until it has drained.
-- KEYS[i]  the strings, as in gcra.lua.
-- ARGV[1]  units to give back (at most the request's cost),
-- ARGV[2], ARGV[3]  (unused),
-- ARGV[1+3i], ARGV[2+3i], ARGV[3+3i]  limit, window (us) and (unused)
--          reset of quota i.
-- Returns 1.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost = tonumber(ARGV[1])
-- Reads first, every quota's, then writes: a key of another type fails
-- the refund before it writes.
if cost > 0 then
  local tats = {}
  for i = 1, #KEYS do tats[i] = tonumber(redis.call('GET', KEYS[i])) or false end
  for i = 1, #KEYS do
    local limit, window = tonumber(ARGV[1 + 3 * i]), tonumber(ARGV[2 + 3 * i])
    local key, tat = KEYS[i], tats[i]
    -- Not ours (or nothing): nothing to give back.
    if tat and tat > now then
      tat = math.max(tat - cost * math.ceil(window / limit), now)
      if tat > now then
        redis.call('SET', key, tat, 'PX', math.ceil((tat - now) / 1000))
      else
        redis.call('DEL', key)
      end
    end
  end
end
return 1
