-- Sliding log, charge. A translation of `Log::charge` in sliding_log.rs and
-- `charge` in mod.rs (sliding_log_read.lua comes first): in every quota's
-- set, one member of ARGV[1] units (at most 100 × the limit) at `now`
-- (never before the newest member), whatever the units in the window (no
-- admission check: into debt if need be). It leaves the window whole, one
-- window later. Members that have left the window are trimmed, and the
-- key's TTL is set to when the new member leaves, as after an admission.
-- KEYS[i]  the sets, as in sliding_log.lua.
-- ARGV[1]  units to count, ARGV[2] the charge's nonce (unique),
-- ARGV[1+2i], ARGV[2+2i]  limit and window (us) of quota i.
-- Returns 1.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local cost, nonce = tonumber(ARGV[1]), ARGV[2]
local format, max, min, ceil = string.format, math.max, math.min, math.ceil

-- Reads first, every quota's, then writes: a key that cannot be read (of
-- another type, a member not ours) fails the charge before it writes.
if cost > 0 then
  local sums, lasts = {}, {}
  for i = 1, #KEYS do
    local window = tonumber(ARGV[2 + 2 * i])
    local _, sum, last = window_units(KEYS[i], '(' .. format('%d', now - window), now, window)
    sums[i], lasts[i] = sum, last or false
  end
  for i = 1, #KEYS do
    local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
    local key, units = KEYS[i], min(cost, 100 * limit)
    local at = max(now, lasts[i] or now)
    redis.call('ZADD', key, at, format('%016d:%d:%s', sums[i] + units, units, nonce))
    redis.call('PEXPIRE', key, ceil((at + window - now) / 1000))
    redis.call('ZREMRANGEBYSCORE', key, '-inf', format('%d', now - window))
  end
end
return 1
