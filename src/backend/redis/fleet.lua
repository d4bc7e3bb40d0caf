-- The fleet heartbeat: one application instance announces itself and counts
-- the live instances sharing the key prefix (see fleet.rs beside this file).
-- KEYS[1]  <prefix>:{instances}, a sorted set: members are instance ids,
--          scores the Redis server time (ms) of their latest announcement.
-- ARGV[1]  this instance's id,
-- ARGV[2]  how long (ms) an instance counts after its latest announcement;
--          also the key's TTL, so the set vanishes with the fleet.
-- Returns {live instances, 1 if announced or 0 if maxmemory refused it}.
-- The announcement is the script's first write, so Redis applies maxmemory
-- to it (it does not check a script's later writes): past maxmemory under
-- `noeviction` it is refused, and the script only drops stale members.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local key, stale = KEYS[1], tonumber(ARGV[2])
local added = redis.pcall('ZADD', key, now, ARGV[1])
local announced = 1
if type(added) == 'table' and added.err then
  announced = 0
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - stale)
redis.call('PEXPIRE', key, stale)
return {redis.call('ZCARD', key), announced}
