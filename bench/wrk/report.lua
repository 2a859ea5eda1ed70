-- wrk script: optional pipelining (`-- DEPTH` after the URL sends DEPTH requests per write)
-- and a one-line JSON summary that bench/runner.py parses.
local pipeline_depth = 1

function init(args)
  pipeline_depth = tonumber(args[1] or "1")
  local parts = {}
  for i = 1, pipeline_depth do
    parts[i] = wrk.format("GET", "/")
  end
  batch = table.concat(parts)
end

function request()
  return batch
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%.1f,"p99_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
