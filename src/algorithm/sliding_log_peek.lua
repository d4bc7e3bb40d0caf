-- Sliding log, read-only peek. A translation of `Log::peek` in sliding_log.rs
-- and `peek` in mod.rs: every quota as a check of cost 0 would report it, and
-- whether ARGV[1] more units would fit now. Writes nothing and trims nothing:
-- entries that have left the window are skipped, not removed.
-- KEYS, ARGV and the reply as in sliding_log.lua (the nonce is unused).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local n = #KEYS

local denied, retry = 0, -1
local tail = {}
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  -- Scores are whole microseconds: an entry still counts if its score is
  -- above now - window.
  local from = now - window + 1
  local count = redis.call('ZCOUNT', KEYS[i], from, '+inf')
  if count + cost > limit then
    local r = window
    if cost <= limit then
      local kth = redis.call('ZRANGEBYSCORE', KEYS[i], from, '+inf', 'WITHSCORES', 'LIMIT', count + cost - limit - 1, 1)
      r = tonumber(kth[2]) + window - now
    end
    if r > retry then denied, retry = i, r end
  end
  local reset = 0
  local newest = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
  if #newest > 0 then
    reset = math.max(tonumber(newest[2]) + window - now, 0)
  end
  tail[#tail + 1] = math.max(limit - count, 0)
  tail[#tail + 1] = reset
end

local out = {denied == 0 and 1 or 0, denied, math.max(retry, 0)}
for j = 1, #tail do out[#out + 1] = tail[j] end
return out
