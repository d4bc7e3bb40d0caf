-- a different x-api-key per request, from 10 000 clients
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/api/ping", { ["x-api-key"] = "client-" .. (counter % 10000) })
end
