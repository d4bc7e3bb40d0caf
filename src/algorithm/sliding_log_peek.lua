-- Sliding log, read-only peek. A translation of `Log::peek` in sliding_log.rs
-- and `peek` in mod.rs (sliding_log_read.lua comes first): every quota as a check of cost 0 would report it, and
-- whether ARGV[1] more units would fit now. Writes nothing and trims nothing:
-- entries that have left the window are skipped, not removed.
-- KEYS, ARGV, the members and the reply as in sliding_log.lua (the nonce is
-- unused).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local n = #KEYS
local format, max = string.format, math.max

local denied, retry = 0, -1
local tail = {}
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local key, from = KEYS[i], '(' .. format('%d', now - window)
  local count, _, newest = window_units(key, from, now, window)
  local reset = newest and max(newest + window - now, 0) or 0
  if count + cost > limit then
    local r = retry_after(key, from, now, window, limit, count, cost)
    if r > retry then denied, retry = i, r end
  end
  tail[#tail + 1] = max(limit - count, 0)
  tail[#tail + 1] = reset
end

local out = {denied == 0 and 1 or 0, denied, max(retry, 0)}
for j = 1, #tail do out[#out + 1] = tail[j] end
return out
