#!/usr/bin/env bash
# Proxy CPU per request, side by side (`docs/performance.md`): tollgate with limits on, the same build
# with limits off, and nginx as a reverse proxy with limit_req, all in front of the same
# upstream (an nginx returning a small JSON body itself).
#
# Usage: scripts/bench.sh
#   BENCH_ROUNDS=5        rounds; each round measures every proxy once, in a rotating order
#   BENCH_SECONDS=10      wrk duration per proxy per round
#   BENCH_CONNECTIONS=50  wrk connections (one wrk thread)
#   BENCH_WARMUP=2        seconds of unmeasured load per proxy before the first round
#   BENCH_PERF=1          afterwards, `perf record -g` tollgate (limits on) under the same load
#                         for BENCH_SECONDS and print the top of `perf report`
#   BENCH_KEEP=1          keep the temporary directory (configs, logs, wrk outputs)
#   BENCH_PIN=1           pin the measured proxies to the last CPU and wrk + the upstream to
#                         the others (taskset), so that scheduling does not mix them; default
#                         on when the machine has 2 CPUs or more
#
# Fairness: one worker each (tollgate `threads: 1`, nginx `worker_processes 1`; the upstream
# nginx has its own single worker and is not measured), access logs off on both (tollgate
# `access_log: false`, nginx `access_log off`), keep-alive to the upstream on both. Tollgate with
# limits on charges two limits per request (per-api-key on the `x-api-key` header and per-ip),
# both with capacity 1e9 and 1e9 tokens/s so that every request is admitted; nginx mirrors them
# with two limit_req zones ($http_x_api_key and $binary_remote_addr) at 100000000r/s,
# `burst=100000 nodelay` (nginx accounts in milliseconds: without a burst, a second request in
# the same millisecond is refused whatever the rate).
# CPU per request = (utime + stime) of the proxy process(es) over the run (/proc/PID/stat,
# nginx: master + worker) / requests wrk completed; the table also splits it into user and
# system (kernel) time. Only ratios from one run mean anything on
# a shared machine. Everything listens on and talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${BENCH_ROUNDS:-5}
SECS=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNECTIONS:-50}
WARMUP=${BENCH_WARMUP:-2}
PERF=${BENCH_PERF:-0}
NCPU=$(nproc)
PIN=${BENCH_PIN:-$([ "$NCPU" -ge 2 ] && echo 1 || echo 0)}
PIN_PROXY=()
PIN_LOAD=()
if [ "$PIN" = 1 ] && command -v taskset >/dev/null 2>&1; then
  PIN_PROXY=(taskset -c "$((NCPU - 1))")
  PIN_LOAD=(taskset -c "0-$((NCPU - 2))")
fi

. scripts/lib.sh
ensure nginx:nginx wrk:wrk curl:curl python3:python3 cmake:cmake cc:build-essential
if [ "$PERF" = 1 ]; then ensure perf:linux-perf; fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "== cargo build --release"
cargo build --release --bins
TOLLGATE=$ROOT/target/release/tollgate
SUMMARIZE=$ROOT/scripts/bench/summarize.py
HZ=$(getconf CLK_TCK)

DIR=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all "${PIDS[@]}"
  if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "kept $DIR"; else rm -rf "$DIR"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Six free loopback ports.
read -r UP_PORT NGX_PORT ON_PORT ON_ADMIN OFF_PORT OFF_ADMIN < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)

BODY='{"item":"42","rating":4.5,"votes":1234,"source":"bench"}'
USER_LINE=""
[ "$(id -u)" -eq 0 ] && USER_LINE="user root;"

nginx_conf() { # $1 = name, $2 = http block body
  mkdir -p "$DIR/$1/logs"
  cat >"$DIR/$1/nginx.conf" <<EOF
$USER_LINE
worker_processes 1;
daemon off;
master_process on;
pid $DIR/$1/nginx.pid;
error_log $DIR/$1/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $DIR/$1/client_body;
  proxy_temp_path $DIR/$1/proxy;
  fastcgi_temp_path $DIR/$1/fastcgi;
  uwsgi_temp_path $DIR/$1/uwsgi;
  scgi_temp_path $DIR/$1/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 65s;
$2
}
EOF
}

nginx_conf upstream "
  server {
    listen 127.0.0.1:$UP_PORT;
    location / { default_type application/json; return 200 '$BODY'; }
  }"

nginx_conf nginx-proxy "
  limit_req_zone \$http_x_api_key zone=per_api_key:10m rate=100000000r/s;
  limit_req_zone \$binary_remote_addr zone=per_ip:10m rate=100000000r/s;
  limit_req_status 429;
  upstream up {
    server 127.0.0.1:$UP_PORT;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      limit_req zone=per_api_key burst=100000 nodelay;
      limit_req zone=per_ip burst=100000 nodelay;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_pass http://up;
    }
  }"

tollgate_conf() { # $1 = name, $2 = port, $3 = admin port, $4 = route limits (JSON array)
  cat >"$DIR/$1.json" <<EOF
{
  "node_id": "bench-$1",
  "listeners": [{ "address": "127.0.0.1:$2" }],
  "admin": { "address": "127.0.0.1:$3", "token": null },
  "upstreams": { "up": { "servers": ["127.0.0.1:$UP_PORT"] } },
  "limits": {
    "per-api-key": { "capacity": 1000000000, "refill_per_second": 1000000000, "key": ["header:x-api-key"] },
    "per-ip": { "capacity": 1000000000, "refill_per_second": 1000000000, "key": ["client_ip"] }
  },
  "routes": [ { "name": "bench", "match": { "path_prefix": "/" }, "upstream": "up", "limits": $4 } ],
  "threads": 1,
  "access_log": false,
  "grace_period_seconds": 1
}
EOF
  "$TOLLGATE" check -c "$DIR/$1.json" >/dev/null
}
tollgate_conf tollgate_on "$ON_PORT" "$ON_ADMIN" '["per-api-key", "per-ip"]'
tollgate_conf tollgate_off "$OFF_PORT" "$OFF_ADMIN" '[]'

"${PIN_LOAD[@]}" "$NGINX" -p "$DIR/upstream" -c "$DIR/upstream/nginx.conf" -e "$DIR/upstream/logs/error.log" \
  >"$DIR/upstream/logs/stdout.log" 2>&1 &
PIDS+=($!)
"${PIN_PROXY[@]}" "$NGINX" -p "$DIR/nginx-proxy" -c "$DIR/nginx-proxy/nginx.conf" -e "$DIR/nginx-proxy/logs/error.log" \
  >"$DIR/nginx-proxy/logs/stdout.log" 2>&1 &
NGX_PID=$!
PIDS+=($NGX_PID)
TOLLGATE_LOG=warn "${PIN_PROXY[@]}" "$TOLLGATE" run -c "$DIR/tollgate_on.json" >"$DIR/tollgate_on.log" 2>&1 &
ON_PID=$!
PIDS+=($ON_PID)
TOLLGATE_LOG=warn "${PIN_PROXY[@]}" "$TOLLGATE" run -c "$DIR/tollgate_off.json" >"$DIR/tollgate_off.log" 2>&1 &
OFF_PID=$!
PIDS+=($OFF_PID)

declare -A PORT=([tollgate_on]=$ON_PORT [tollgate_off]=$OFF_PORT [nginx]=$NGX_PORT)
declare -A PID=([tollgate_on]=$ON_PID [tollgate_off]=$OFF_PID [nginx]=$NGX_PID)

# Every proxy must answer 200 with the upstream's body before anything is measured.
for p in upstream tollgate_on tollgate_off nginx; do
  port=${PORT[$p]:-$UP_PORT}
  ok=0
  for _ in $(seq 100); do
    out=$(curl -s -o "$DIR/check.$p" -w '%{http_code}' -H 'x-api-key: bench' "http://127.0.0.1:$port/rating/42" 2>/dev/null || true)
    if [ "$out" = 200 ] && [ "$(cat "$DIR/check.$p")" = "$BODY" ]; then ok=1; break; fi
    sleep 0.1
  done
  if [ $ok != 1 ]; then
    echo "FAIL: $p on 127.0.0.1:$port did not answer 200 with the upstream body (last: $out)"
    tail -5 "$DIR"/*.log "$DIR"/*/logs/error.log 2>/dev/null || true
    exit 1
  fi
done

cpu_ticks() { # "utime stime" of a process and its direct children (nginx workers), in ticks
  local pids=("$1") user=0 sys=0 p u s
  mapfile -t -O 1 pids < <(pgrep -P "$1" || true)
  for p in "${pids[@]}"; do
    [ -r "/proc/$p/stat" ] || continue
    read -r u s < <(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12, $13}')
    user=$((user + u))
    sys=$((sys + s))
  done
  echo "$user $sys"
}

# A single wrk run, bounded: prints the parsed fields (see summarize.py wrk).
run_wrk() { # $1 = proxy, $2 = seconds, $3 = output file
  timeout $(($2 + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${2}s" --latency -H 'x-api-key: bench' \
    "http://127.0.0.1:${PORT[$1]}/rating/42" >"$3" 2>&1
}

NGX_WORKERS=$(pgrep -P "$NGX_PID" | tr '\n' ' ')
echo "== proxies: tollgate_on pid $ON_PID (threads 1, limits per-api-key + per-ip), tollgate_off pid $OFF_PID" \
  "(threads 1, no limits), nginx master $NGX_PID worker(s) $NGX_WORKERS(worker_processes 1, limit_req x2);" \
  "access logs off on all; upstream nginx on 127.0.0.1:$UP_PORT"
echo "== pinning: proxies ${PIN_PROXY[*]:-(none)}, wrk and upstream ${PIN_LOAD[*]:-(none)}"
echo "== load: wrk -t1 -c$CONNS -d${SECS}s --latency -H 'x-api-key: bench', $ROUNDS rounds, CLK_TCK $HZ"

for p in tollgate_on tollgate_off nginx; do
  run_wrk "$p" "$WARMUP" "$DIR/warmup.$p" || true
done

ORDER=(tollgate_on tollgate_off nginx)
RESULTS=$DIR/results.tsv
: >"$RESULTS"
fail=0
for r in $(seq "$ROUNDS"); do
  for i in 0 1 2; do
    p=${ORDER[$(((i + r - 1) % 3))]}
    out=$DIR/wrk.$p.$r
    read -r u0 s0 < <(cpu_ticks "${PID[$p]}")
    run_wrk "$p" "$SECS" "$out" || { echo "FAIL: wrk on $p exited non-zero"; cat "$out"; exit 1; }
    read -r u1 s1 < <(cpu_ticks "${PID[$p]}")
    c0=$((u0 + s0))
    c1=$((u1 + s1))
    read -r reqs _secs rps p50 p99 bad < <(python3 "$SUMMARIZE" wrk "$out")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$r" $((c1 - c0)) "$reqs" "$rps" "$p50" "$p99" "$bad" "$HZ" \
      $((u1 - u0)) $((s1 - s0)) >>"$RESULTS"
    cpu_us=$(python3 -c "print(f'{($c1 - $c0) / $HZ * 1e6 / max($reqs, 1):.2f}')")
    printf 'round %s  %-13s %8s req  %9s req/s  p50 %7s ms  p99 %7s ms  CPU %7s us/req  non-2xx+errors %s\n' \
      "$r" "$p" "$reqs" "$rps" "$p50" "$p99" "$cpu_us" "$bad"
    if [ "$reqs" -eq 0 ] || [ $((bad * 100)) -gt "$reqs" ]; then
      echo "FAIL: $p round $r: $bad of $reqs responses were not 2xx/3xx or failed (> 1%)"
      fail=1
    fi
  done
done

echo
echo "== medians over $ROUNDS rounds of ${SECS}s (1 worker each, access logs off)"
python3 "$SUMMARIZE" table "$RESULTS"

if [ "$PERF" = 1 ]; then
  echo
  echo "== perf record -F 999 -g -p $ON_PID (tollgate_on) for ${SECS}s under the same load"
  perf record -F 999 -g -p "$ON_PID" -o "$DIR/perf.data" -- sleep "$SECS" >"$DIR/perf.log" 2>&1 &
  PERF_PID=$!
  run_wrk tollgate_on "$SECS" "$DIR/wrk.perf" || true
  wait "$PERF_PID" || true
  perf report -i "$DIR/perf.data" --no-children --stdio 2>/dev/null | head -60 || true
  echo "-- by shared object (self time)"
  perf report -i "$DIR/perf.data" --no-children --stdio -g none --sort dso 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -8 || true
  echo "-- flat profile (top 15 symbols, self time)"
  perf report -i "$DIR/perf.data" --no-children --stdio -g none --percent-limit 0.5 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -15 || true
fi

[ $fail = 0 ] || exit 1
