#!/usr/bin/env bash
# Redis traffic per node against the request rate (`docs/performance.md`, targets: one pipelined round trip per
# sync interval, proportional to the buckets that changed, independent of the request rate).
#
# Starts its own redis-server (no persistence), the example rating-api upstream and one tollgate
# node in shared mode (sync_interval_ms 100) on free loopback ports, then drives a handful of
# hot API keys (plus the one per-ip bucket of 127.0.0.1) at a low and a high request rate. wrk
# is paced with a Lua `delay()` per connection (Debian's wrk has no -R): rate ~ connections x
# 1000 / (delay_ms + latency); what counts is the achieved rate, which is printed. Before
# each phase `CONFIG RESETSTAT`; after it, Redis commands/s = the sum of `calls` in
# `INFO commandstats` (minus this script's own CONFIG/INFO) / the phase's seconds.
#
# Usage: scripts/redis_traffic.sh
#   REDIS_RATES="1000 10000"   target request rates, one phase each (plus an idle phase first)
#   REDIS_SECONDS=10           seconds per phase
#   REDIS_KEYS=5               hot API keys
#   REDIS_KEEP=1               keep the temporary directory
#
# Exit status: 0 when Redis commands/s stay flat (at most 1.25x) while the achieved request
# rate at least doubles; 2 when they do not, or the phases cannot show it; 1 on an error or
# more than 1% non-2xx.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RATES=${REDIS_RATES:-1000 10000}
SECS=${REDIS_SECONDS:-10}
NKEYS=${REDIS_KEYS:-5}
SYNC_MS=100

. scripts/lib.sh
ensure redis-server:redis-server redis-cli:redis-tools wrk:wrk curl:curl python3:python3 \
  cmake:cmake cc:build-essential

echo "== cargo build --release"
cargo build --release --bins
TOLLGATE=$ROOT/target/release/tollgate
RATING=$ROOT/target/release/rating-api

DIR=$(mktemp -d /tmp/tollgate-redis.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all "${PIDS[@]}"
  if [ "${REDIS_KEEP:-0}" = 1 ]; then echo "kept $DIR"; else rm -rf "$DIR"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r REDIS_PORT UP_PORT GW_PORT ADMIN_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --daemonize no \
  --dir "$DIR" --logfile "$DIR/redis.log" &
PIDS+=($!)
"$RATING" --listen "127.0.0.1:$UP_PORT" >"$DIR/rating-api.log" 2>&1 &
PIDS+=($!)

R() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
for _ in $(seq 100); do [ "$(R ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
[ "$(R ping 2>/dev/null)" = PONG ] || { echo "FAIL: redis-server did not start"; cat "$DIR/redis.log"; exit 1; }

cat >"$DIR/tollgate.json" <<EOF
{
  "node_id": "traffic-1",
  "listeners": [{ "address": "127.0.0.1:$GW_PORT" }],
  "admin": { "address": "127.0.0.1:$ADMIN_PORT", "token": null },
  "redis": { "url": "redis://127.0.0.1:$REDIS_PORT/0", "sync_interval_ms": $SYNC_MS, "key_prefix": "traffic", "timeout_ms": 200 },
  "upstreams": { "rating-api": { "servers": ["127.0.0.1:$UP_PORT"] } },
  "limits": {
    "per-api-key": { "capacity": 1000000000, "refill_per_second": 1000000000, "key": ["header:x-api-key"] },
    "per-ip": { "capacity": 1000000000, "refill_per_second": 1000000000, "key": ["client_ip"] }
  },
  "routes": [ { "name": "rating", "match": { "path_prefix": "/" }, "upstream": "rating-api", "limits": ["per-api-key", "per-ip"] } ],
  "access_log": false
}
EOF
"$TOLLGATE" check -c "$DIR/tollgate.json" >/dev/null
TOLLGATE_LOG=warn "$TOLLGATE" run -c "$DIR/tollgate.json" >"$DIR/tollgate.log" 2>&1 &
PIDS+=($!)

ok=0
for _ in $(seq 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-api-key: hot-1' "http://127.0.0.1:$GW_PORT/rating/42" 2>/dev/null || true)
  [ "$code" = 200 ] && { ok=1; break; }
  sleep 0.1
done
[ $ok = 1 ] || { echo "FAIL: tollgate did not answer 200 (last: $code)"; tail -20 "$DIR/tollgate.log"; exit 1; }
health=$(curl -s "http://127.0.0.1:$ADMIN_PORT/health")
case "$health" in *'"connected"'*) ;; *) echo "FAIL: tollgate not connected to redis: $health"; exit 1 ;; esac

# wrk script: rotate over the hot keys; pace each connection with delay().
lua() { # $1 = delay in ms
  cat <<EOF
local keys = {}
for i = 1, $NKEYS do keys[i] = "hot-" .. i end
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/rating/42", { ["x-api-key"] = keys[(n % #keys) + 1] })
end
delay = function() return $1 end
EOF
}

# A phase: RESETSTAT, load (or idle) for SECS, then read commandstats.
# Prints: name target achieved_rps requests bad seconds redis_calls; writes per-command calls.
phase() { # $1 = name, $2 = target rate (0 = idle)
  local name=$1 rate=$2 conns delay t0 t1 out=$DIR/wrk.$1 reqs=0 bad=0
  R config resetstat >/dev/null
  t0=$(date +%s.%N)
  if [ "$rate" -gt 0 ]; then
    conns=$(((rate + 199) / 200))
    [ "$conns" -lt 2 ] && conns=2
    delay=$((conns * 1000 / rate))
    lua "$delay" >"$DIR/pace.$name.lua"
    timeout $((SECS + 30)) wrk -t1 -c"$conns" -d"${SECS}s" -s "$DIR/pace.$name.lua" \
      "http://127.0.0.1:$GW_PORT/" >"$out" 2>&1 || { echo "FAIL: wrk exited non-zero"; cat "$out"; exit 1; }
    reqs=$(awk '/requests in/ {print $1}' "$out")
    bad=$(awk -F': *' '/Non-2xx/ {print $2}' "$out")
    bad=${bad:-0}
  else
    sleep "$SECS"
  fi
  t1=$(date +%s.%N)
  R info commandstats >"$DIR/stats.$name"
  python3 - "$name" "$rate" "$reqs" "$bad" "$t0" "$t1" "$DIR/stats.$name" <<'EOF' >>"$DIR/phases.tsv"
import re, sys
name, rate, reqs, bad, t0, t1, path = sys.argv[1:]
secs = float(t1) - float(t0)
calls = {}
for line in open(path):
    m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line.strip())
    if m:
        calls[m.group(1)] = int(m.group(2))
# This script's own commands: CONFIG RESETSTAT and INFO (the INFO reading these stats).
for own in ("config|resetstat", "config", "info"):
    calls.pop(own, None)
detail = ",".join(f"{k}={v}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1]))
print(f"{name}\t{rate}\t{int(reqs) / secs:.1f}\t{reqs}\t{bad}\t{secs:.3f}\t{sum(calls.values())}\t{detail or '-'}")
EOF
}

: >"$DIR/phases.tsv"
echo "== one tollgate node (sync_interval_ms $SYNC_MS), $NKEYS hot API keys + 1 per-ip bucket, ${SECS}s per phase"
# Warm-up: create the buckets and do their first (fresh) read before anything is measured.
timeout 20 wrk -t1 -c2 -d2s "http://127.0.0.1:$GW_PORT/" -s <(lua 1) >/dev/null 2>&1 || true
sleep 0.5
phase idle 0
for rate in $RATES; do phase "rate-$rate" "$rate"; done

python3 - "$DIR/phases.tsv" "$SYNC_MS" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
sync_ms = int(sys.argv[2])
print(f"{'phase':<12}{'target/s':>9}{'achieved/s':>11}{'requests':>10}{'non-2xx':>8}{'secs':>7}"
      f"{'redis cmds':>11}{'cmds/s':>9}{'cmds/sync':>10}")
res = []
for name, rate, rps, reqs, bad, secs, calls, detail in rows:
    cps = int(calls) / float(secs)
    res.append((name, float(rps), cps, int(reqs), int(bad), detail))
    print(f"{name:<12}{rate:>9}{float(rps):>11.0f}{reqs:>10}{bad:>8}{float(secs):>7.1f}"
          f"{calls:>11}{cps:>9.1f}{cps * sync_ms / 1000:>10.2f}")
print()
for name, _, _, _, _, detail in res:
    print(f"  {name:<12} commands: {detail}")
loaded = [r for r in res if r[1] > 0]
if len(loaded) >= 2:
    lo, hi = loaded[0], loaded[-1]
    print()
    print(f"request rate ratio {hi[0]}/{lo[0]} = {hi[1] / lo[1]:.2f}   "
          f"redis cmds/s ratio = {hi[2] / lo[2]:.3f}   (flat = 1.0: independent of the request rate)")
bad = [r for r in res if r[3] and r[4] * 100 > r[3]]
if bad:
    print("FAIL: more than 1% non-2xx in " + ", ".join(r[0] for r in bad))
    sys.exit(1)
# The target: Redis traffic independent of the request rate. Flat within 25% while the request
# rate at least doubles; a figure that cannot be compared (one loaded phase, or a load that did
# not double) is a failure too, not a pass.
if len(loaded) < 2 or hi[1] < 2 * lo[1]:
    print("FAIL: need two loaded phases whose achieved rates differ by 2x or more")
    sys.exit(2)
flat = hi[2] / lo[2]
if flat > 1.25:
    print(f"FAIL: redis cmds/s grew {flat:.3f}x with the request rate (target at most 1.25)")
    sys.exit(2)
print(f"PASS: redis cmds/s ratio {flat:.3f} (target at most 1.25) for {hi[1] / lo[1]:.1f}x the requests")
EOF
