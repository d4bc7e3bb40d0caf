-- Sliding log, read-only peek. A translation of `Log::peek` in sliding_log.rs
-- and `peek` in mod.rs: every quota as a check of cost 0 would report it, and
-- whether ARGV[1] more units would fit now. Writes nothing and trims nothing:
-- entries that have left the window are skipped, not removed.
-- KEYS, ARGV, the members and the reply as in sliding_log.lua (the nonce is
-- unused).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local n = #KEYS
local sub, find, format, max = string.sub, string.find, string.format, math.max

-- The running sum and cost in a member (the sum's 16 digits, ':', the
-- cost, ':'). Not ours: nil, and the check fails alone.
local function entry(m)
  local to = find(m, ':', 18, true)
  return tonumber(sub(m, 1, 16)), to and tonumber(sub(m, 18, to - 1))
end

local denied, retry = 0, -1
local tail = {}
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local key, from = KEYS[i], '(' .. format('%d', now - window)
  local count, reset = 0, 0
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[1] then
    local sum = entry(last[1])
    local newest = tonumber(last[2])
    reset = max(newest + window - now, 0)
    if newest > now - window then
      local first = redis.call('ZRANGEBYSCORE', key, from, '+inf', 'LIMIT', 0, 1)
      local fsum, fcost = entry(first[1])
      count = sum - fsum + fcost
    end
  end
  if count + cost > limit then
    local r = window
    if cost <= limit then
      local need = count + cost - limit
      local olds = redis.call('ZRANGEBYSCORE', key, from, '+inf', 'WITHSCORES', 'LIMIT', 0, need)
      local left = 0
      for j = 1, #olds, 2 do
        local _, c = entry(olds[j])
        left = left + c
        if left >= need then
          r = tonumber(olds[j + 1]) + window - now
          break
        end
      end
    end
    if r > retry then denied, retry = i, r end
  end
  tail[#tail + 1] = max(limit - count, 0)
  tail[#tail + 1] = reset
end

local out = {denied == 0 and 1 or 0, denied, max(retry, 0)}
for j = 1, #tail do out[#out + 1] = tail[j] end
return out
