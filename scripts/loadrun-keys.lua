-- wrk script of scripts/loadrun.sh: every request carries an x-api-key
-- header, cycling through LOADRUN_KEYS distinct values client-0,
-- client-1, ... (default 10 000; 1: one hot key). Each wrk thread starts
-- at a different point of the cycle, so that the threads do not send the
-- same key at the same moment.
local keys = tonumber(os.getenv("LOADRUN_KEYS") or "10000")
if keys == nil or keys < 1 or keys ~= math.floor(keys) then
  error("LOADRUN_KEYS must be a positive integer")
end

local threads = 0
function setup(thread)
  thread:set("index", threads)
  threads = threads + 1
end

local counter = 0
function init(args)
  counter = math.floor((index or 0) * keys * 0.618) % keys
end

function request()
  counter = (counter + 1) % keys
  return wrk.format("GET", "/api/ping", { ["x-api-key"] = "client-" .. counter })
end
