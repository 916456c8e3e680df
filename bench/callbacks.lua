-- Replays pre-signed WeCom callbacks (one "path<TAB>body" per line), each wrk thread taking its own share
-- so no message id is sent twice.
local requests = {}
local threads_total = tonumber(os.getenv("BENCH_THREADS") or "1")
local counter = 0
local thread_id = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

function init(args)
  thread_id = tid or 0
  for line in io.lines(os.getenv("BENCH_REQUESTS")) do
    local tab = string.find(line, "\t", 1, true)
    requests[#requests + 1] = {string.sub(line, 1, tab - 1), string.sub(line, tab + 1)}
  end
  index = thread_id + 1
end

function request()
  local r = requests[index]
  index = index + threads_total
  if index > #requests then index = thread_id + 1 end
  return wrk.format("POST", r[1], {["Content-Type"] = "text/xml"}, r[2])
end
