-- wrk script for the many-keys rows of scripts/accuracy.py: every request is GET PATH with an
-- `x-api-key` of PREFIX-1 .. PREFIX-KEYS, picked uniformly at random (so a key's requests are
-- close to a Poisson process of rate requests/s / KEYS). At the end it prints one line that
-- accuracy.py parses:
--   MANYKEYS requests=N duration_us=N non2xx=N connect=N read=N write=N timeout=N
-- (non2xx: answers other than 2xx/3xx, so 429s and 5xx; the others: wrk's socket errors).
--
-- Usage: wrk -t1 -c16 -d10s -s scripts/bench/many_keys.lua URL -- KEYS PREFIX SEED [PATH]
--   KEYS default 50000, PREFIX default "mk", SEED default the time, PATH default /x

local keys, prefix, path = 50000, "mk", "/x"

function init(args)
  keys = tonumber(args[1]) or keys
  prefix = args[2] or prefix
  math.randomseed(tonumber(args[3]) or os.time())
  path = args[4] or path
  -- LuaJIT's first values after a seed are poorly spread: skip a few.
  for _ = 1, 10 do math.random() end
end

function request()
  return wrk.format("GET", path, { ["x-api-key"] = prefix .. "-" .. math.random(keys) })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "MANYKEYS requests=%d duration_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout))
end
