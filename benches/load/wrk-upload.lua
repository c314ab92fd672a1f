-- wrk script of benches/load/loadbench.py (targets gateway-wrk, gateway-idem).
--
--   wrk -t1 -cN -dDs -s wrk-upload.lua URL -- BODY_FILE JWT KEYED NONCE
--
-- POSTs BODY_FILE as image/jpeg with `Authorization: Bearer JWT`. Every
-- request is formatted by request() (wrk.format), with or without a key, so
-- the baseline (KEYED = 0) pays the same Lua and copying costs as the keyed
-- run (KEYED = 1), which adds `Idempotency-Key: NONCE-THREAD-COUNTER`: a
-- key never sent before (NONCE is fresh per wrk run), so every keyed upload
-- is stored and none is replayed.
--
-- done() prints one `LOADBENCH k=v ...` line (wrk's latency histogram, µs;
-- its error counters) and one `LOADBENCH_STATUS status count` line per
-- answer status, plus the answers that said `Idempotent-Replayed`.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)
end

local keyed, nonce, counter = false, "", 0
statuses = {}
replayed = 0

function init(args)
   local f = assert(io.open(args[1], "rb"))
   wrk.body = f:read("*a")
   f:close()
   wrk.method = "POST"
   wrk.headers["Authorization"] = "Bearer " .. args[2]
   wrk.headers["Content-Type"] = "image/jpeg"
   keyed = args[3] == "1"
   nonce = args[4] or ""
end

function request()
   if keyed then
      counter = counter + 1
      wrk.headers["Idempotency-Key"] = string.format("%s-%d-%d", nonce, tid, counter)
   end
   return wrk.format()
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if headers["idempotent-replayed"] or headers["Idempotent-Replayed"] then
      replayed = replayed + 1
   end
end

function done(summary, latency, requests)
   local total, replays = {}, 0
   for _, t in ipairs(threads) do
      for status, n in pairs(t:get("statuses") or {}) do
         total[status] = (total[status] or 0) + n
      end
      replays = replays + (t:get("replayed") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      "LOADBENCH duration_us=%d requests=%d bytes=%d p50_us=%d p99_us=%d max_us=%d "
         .. "connect=%d read=%d write=%d status=%d timeout=%d replayed=%d\n",
      summary.duration, summary.requests, summary.bytes,
      latency:percentile(50.0), latency:percentile(99.0), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout, replays))
   for status, n in pairs(total) do
      io.write(string.format("LOADBENCH_STATUS %d %d\n", status, n))
   end
end
