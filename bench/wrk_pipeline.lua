-- wrk script: send N requests (the first script argument, default 16) in each write, so the
-- client's cost per request is small and the server under test becomes the bottleneck.
init = function(args)
  local depth = tonumber(args[1]) or 16
  local requests = {}
  for i = 1, depth do
    requests[i] = wrk.format()
  end
  batch = table.concat(requests)
end

request = function()
  return batch
end
