-- One benchmark case for wrk (Debian's wrk 4.1, LuaJIT), configured by environment variables that
-- bench/harness.py sets:
--
--   BENCH_METHOD        GET or POST (default GET)
--   BENCH_HEADERS       request headers, one "Name: value" per line
--   BENCH_BODY          request body (POST)
--   BENCH_FEED          optional file of tab-separated fields, one line per request: every request uses a line
--                       once (authorization codes, refresh tokens, signed gateway headers...). {1}, {2}, ... in
--                       BENCH_HEADERS and BENCH_BODY are replaced by the line's fields. Lines are dealt to wrk's
--                       threads round robin; a thread that runs out stops (reported as "exhausted").
--   BENCH_FEED_CYCLE    "1": reuse the feed's lines in a loop (tokens that may be presented again)
--   BENCH_EXPECT        a Lua pattern every 2xx body must match (e.g. '"active":%s*true'); a 2xx body that does
--                       not is counted as "unexpected" (an error: an inactive token is not a successful
--                       introspection)
--   BENCH_THREADS       wrk's -t (to deal the feed)
--   BENCH_CONNECTIONS   wrk's -c (to undo wrk's latency correction, below)
--
-- done() prints one line "BENCH_RESULT {json}" with status counts, socket errors and latency percentiles.
--
-- Latency. wrk 4 "corrects" its histogram for coordinated omission before done() sees it (stats_correct in
-- wrk.c: every sample longer than the mean interval between requests of a connection adds synthetic samples),
-- which inflates p99 several times over on a closed-loop run. The correction is deterministic and only adds, so
-- it can be undone exactly: done() reads the histogram (one counter per microsecond) through LuaJIT's FFI and
-- inverts stats_correct from the top down. "measured" percentiles are those of the real per-request latencies;
-- wrk's own ("wrk_corrected") are reported beside them. The sum of the inverted histogram must equal the number
-- of recorded latencies; "histogram_check" says whether it did.

local ffi = require("ffi")

local method = os.getenv("BENCH_METHOD") or "GET"
local headers_spec = os.getenv("BENCH_HEADERS") or ""
local body_spec = os.getenv("BENCH_BODY")
local feed = os.getenv("BENCH_FEED")
if feed == "" then feed = nil end
local cycle = os.getenv("BENCH_FEED_CYCLE") == "1"
local expect = os.getenv("BENCH_EXPECT")
if expect == "" then expect = nil end
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local connections = tonumber(os.getenv("BENCH_CONNECTIONS") or "1")

local function split(text, sep)
  local out = {}
  local start = 1
  while true do
    local i = string.find(text, sep, start, true)
    if not i then
      out[#out + 1] = string.sub(text, start)
      return out
    end
    out[#out + 1] = string.sub(text, start, i - 1)
    start = i + #sep
  end
end

local function fill(template, fields)
  if not template or not fields then return template end
  return (string.gsub(template, "{(%d+)}", function(n) return fields[tonumber(n)] or "" end))
end

local function header_table(fields)
  local out = {}
  for _, line in ipairs(split(headers_spec, "\n")) do
    if line ~= "" then
      local name, value = string.match(line, "^([^:]+):%s*(.*)$")
      if name then out[name] = fill(value, fields) end
    end
  end
  return out
end

-- static part (no feed): wrk builds the request once
wrk.method = method
wrk.headers = header_table(nil)
if body_spec and body_spec ~= "" then wrk.body = body_spec end

-- main state: remember the threads to collect their counters in done()
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

-- thread state (globals, so that done() can read them with thread:get)
non2xx = 0
unexpected = 0
exhausted = 0
statuses = {}
error_sample = ""
prepared = 0
local reqs = nil
local nreq = 0
local idx = 0

function init(args)
  if not feed then return end
  reqs = {}
  local i = 0
  for line in io.lines(feed) do
    if line ~= "" then
      if i % nthreads == tid then
        local fields = split(line, "\t")
        reqs[#reqs + 1] = wrk.format(method, nil, header_table(fields), fill(body_spec, fields))
      end
      i = i + 1
    end
  end
  nreq = #reqs
  prepared = nreq
end

if feed then
  function request()
    if idx >= nreq and cycle and nreq > 0 then idx = 0 end
    if idx >= nreq then
      exhausted = exhausted + 1
      wrk.thread:stop()
      return reqs[nreq] or wrk.format()
    end
    idx = idx + 1
    return reqs[idx]
  end
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if error_sample == "" and body then error_sample = string.sub(body, 1, 300) end
  elseif expect and not (body and string.find(body, expect)) then
    unexpected = unexpected + 1
    if error_sample == "" and body then error_sample = string.sub(body, 1, 300) end
  end
end

-- JSON helpers ------------------------------------------------------------------------------------------------
local function jstr(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

local function jnum(x)
  if x ~= x or x == math.huge or x == -math.huge then return "null" end
  if x == math.floor(x) and math.abs(x) < 1e15 then return string.format("%d", x) end
  return string.format("%.3f", x)
end

local PCTS = {50, 90, 99, 99.9}

-- wrk's stats_percentile on a histogram O[min..max]
local function percentiles(O, lo, hi, total)
  local out = {}
  for _, p in ipairs(PCTS) do
    local rank = math.floor((p / 100.0) * total + 0.5)
    if rank < 1 then rank = 1 end
    local acc = 0
    local value = hi
    for v = lo, hi do
      acc = acc + O[v]
      if acc >= rank then value = v break end
    end
    out[#out + 1] = value
  end
  return out
end

local function measured_latency(summary, latency)
  -- wrk 4.1: typedef struct { uint64_t count, limit, min, max; uint64_t data[]; } stats; the userdata holds stats*
  local ok, p = pcall(function() return ffi.cast("uint64_t **", latency)[0] end)
  if not ok or p == nil then return nil, "ffi cast failed" end
  local lo, hi = tonumber(p[2]), tonumber(p[3])
  if latency.min ~= lo or latency.max ~= hi then return nil, "stats layout differs" end
  if tonumber(summary.requests) == 0 or hi < lo then return nil, "no samples" end
  local per_conn = math.floor(summary.requests / connections)
  local e = 0
  if per_conn > 0 then e = math.floor(summary.duration / per_conn) end
  local O = ffi.new("double[?]", hi + 2)
  local S = ffi.new("double[?]", hi + 2)  -- S[v] = sum over k >= 1 of O[v + k*e]
  local total, sum, negative = 0, 0, 0
  for v = hi, lo, -1 do
    local c = tonumber(p[4 + v])
    local s = 0
    if e > 0 and v + e <= hi then s = O[v + e] + S[v + e] end
    S[v] = s
    local o = c
    if e > 0 and v > e then o = c - s end
    if o < 0 then negative = negative + 1 o = 0 end
    O[v] = o
    total = total + o
    sum = sum + o * v
  end
  local real_lo = lo
  while real_lo < hi and O[real_lo] == 0 do real_lo = real_lo + 1 end
  return {O = O, lo = real_lo, hi = hi, total = total, mean = sum / total, interval = e, negative = negative}
end

function done(summary, latency, requests)
  local agg_non2xx, agg_unexpected, agg_exhausted, agg_prepared = 0, 0, 0, 0
  local agg_statuses = {}
  local sample = ""
  for _, t in ipairs(threads) do
    agg_non2xx = agg_non2xx + (t:get("non2xx") or 0)
    agg_unexpected = agg_unexpected + (t:get("unexpected") or 0)
    agg_exhausted = agg_exhausted + (t:get("exhausted") or 0)
    agg_prepared = agg_prepared + (t:get("prepared") or 0)
    local st = t:get("statuses") or {}
    for k, v in pairs(st) do agg_statuses[k] = (agg_statuses[k] or 0) + v end
    local es = t:get("error_sample") or ""
    if sample == "" then sample = es end
  end
  local parts = {}
  local function add(k, v) parts[#parts + 1] = jstr(k) .. ":" .. v end
  add("requests", jnum(summary.requests))
  add("duration_us", jnum(summary.duration))
  add("bytes", jnum(summary.bytes))
  local e = summary.errors
  add("socket_errors", "{" .. table.concat({
    '"connect":' .. jnum(e.connect), '"read":' .. jnum(e.read), '"write":' .. jnum(e.write),
    '"timeout":' .. jnum(e.timeout)}, ",") .. "}")
  add("wrk_status_errors", jnum(e.status))
  add("non2xx", jnum(agg_non2xx))
  add("unexpected", jnum(agg_unexpected))
  add("exhausted", jnum(agg_exhausted))
  add("prepared", jnum(agg_prepared))
  local st = {}
  for k, v in pairs(agg_statuses) do st[#st + 1] = jstr(k) .. ":" .. jnum(v) end
  add("statuses", "{" .. table.concat(st, ",") .. "}")
  add("error_sample", jstr(sample))
  local corrected = {}
  for i, p in ipairs(PCTS) do corrected[i] = jnum(latency:percentile(p)) end
  add("wrk_corrected_us", "{\"p50\":" .. corrected[1] .. ",\"p90\":" .. corrected[2] .. ",\"p99\":" .. corrected[3]
      .. ",\"p99.9\":" .. corrected[4] .. ",\"max\":" .. jnum(latency.max) .. ",\"mean\":" .. jnum(latency.mean) .. "}")
  local m, why = measured_latency(summary, latency)
  if m then
    local pv = percentiles(m.O, m.lo, m.hi, m.total)
    add("measured_us", "{\"p50\":" .. jnum(pv[1]) .. ",\"p90\":" .. jnum(pv[2]) .. ",\"p99\":" .. jnum(pv[3])
        .. ",\"p99.9\":" .. jnum(pv[4]) .. ",\"max\":" .. jnum(m.hi) .. ",\"mean\":" .. jnum(m.mean)
        .. ",\"samples\":" .. jnum(m.total) .. "}")
    local expected = summary.requests - e.timeout
    local check = "ok"
    if m.negative > 0 or math.abs(m.total - expected) > 0.5 then
      check = string.format("mismatch: %d samples after inversion, %d responses, %d negative buckets",
                            m.total, expected, m.negative)
    end
    add("histogram_check", jstr(check))
    add("correction_interval_us", jnum(m.interval))
  else
    add("measured_us", "null")
    add("histogram_check", jstr(why or "unavailable"))
  end
  io.write("BENCH_RESULT {" .. table.concat(parts, ",") .. "}\n")
end
