-- main
-- One check, for the algorithms whose script defines `state`, `retry`,
-- `count`, `status`, `check1` and `write` (the counter, GCRA): appended to their
-- functions to make their script (see `lua` in their `Spec`). The batch
-- script (backend/redis/batch.rs) takes the functions alone, everything
-- above this line.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local n, cost = #KEYS, tonumber(ARGV[1])
if n == 1 then
  local limit, window = tonumber(ARGV[3]), tonumber(ARGV[4])
  local x, y, z = state(redis.call('GET', KEYS[1]), now, window)
  local wait, remaining, reset
  wait, x, y, z, remaining, reset = check1(x, y, z, now, limit, window, cost)
  -- A denied request writes nothing.
  if wait > 0 then return {0, 1, wait, remaining, reset} end
  if cost > 0 then write(KEYS[1], x, y, z, now, window) end
  return {1, 0, 0, remaining, reset}
end
-- Each quota's state: three numbers from 3i - 2.
local qs = {}
local denied, wait = 0, 0
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local x, y, z = state(redis.call('GET', KEYS[i]), now, window)
  qs[3 * i - 2], qs[3 * i - 1], qs[3 * i] = x, y, z
  local r = retry(x, y, z, now, limit, window, cost)
  if r > wait then denied, wait = i, r end
end
-- A denied request writes nothing.
local admit = denied == 0 and cost > 0
local out = {denied == 0 and 1 or 0, denied, wait, 0, 0}
for i = 1, n do
  local limit, window = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local x, y, z = qs[3 * i - 2], qs[3 * i - 1], qs[3 * i]
  if admit then
    x, y, z = count(x, y, z, now, limit, window, cost)
    write(KEYS[i], x, y, z, now, window)
  end
  out[2 * i + 2], out[2 * i + 3] = status(x, y, z, now, limit, window)
end
return out
