-- wrk script for bench/load.py: distinct requests, and one JSON summary line.
--
--   wrk ... -s bench/wrk.lua URL -- get <path template>
--       GETs; "{n}" in the template becomes a number no other request of the run
--       uses, as six hex digits (so every request can be a new cache key).
--   wrk ... -s bench/wrk.lua URL -- upload <file> [<file> ...]
--       POSTs the files in turn as raw bodies, each with eight distinct bytes
--       appended after the image data, so every upload is a new SHA-1.
--
-- done() prints `RESULT {...}` with requests, duration, p50/p99 latency, errors and
-- the body bytes sent.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local mode, template, files
local counter = 0
sent = 0

function init(args)
  mode = args[1]
  if mode == "get" then
    template = args[2]
  elseif mode == "upload" then
    files = {}
    for i = 2, #args do
      local handle = assert(io.open(args[i], "rb"))
      table.insert(files, handle:read("*a"))
      handle:close()
    end
  else
    error("mode must be get or upload")
  end
end

-- A number unique across threads: threads interleave, thread i takes i, i+T, i+2T...
local function unique()
  counter = counter + 1
  return counter * 64 + thread_index
end

function request()
  local n = unique()
  if mode == "get" then
    return wrk.format("GET", (template:gsub("{n}", string.format("%06x", n % 0x1000000))))
  end
  local body = files[counter % #files + 1] .. string.format("%08x", n)
  sent = sent + #body
  return wrk.format("POST", nil, { ["Content-Type"] = "application/octet-stream" }, body)
end

function done(summary, latency, requests)
  local bytes = 0
  for _, thread in ipairs(threads) do
    bytes = bytes + (thread:get("sent") or 0)
  end
  local errors = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"bytes_sent": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.connect, errors.read, errors.write, errors.status, errors.timeout, bytes))
end
