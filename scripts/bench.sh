#!/usr/bin/env bash
# Proxy CPU per request and latency, side by side (`docs/performance.md`), all in front of the
# same upstream (an nginx returning a small JSON body itself):
#   tollgate_on    tollgate, limits on (per-api-key on the `x-api-key` header, and per-ip)
#   tollgate_off   the same build, the same route without limits
#   bare_pingora   examples/bare_proxy.rs: pingora 0.9's ProxyHttp with no limiter and no
#                  routing, the one upstream from the command line: the floor under tollgate
#   haproxy        Debian's HAProxy, stick-table limits on the same two keys
#   nginx          nginx reverse proxy with limit_req on the same two keys
#
# Usage: scripts/bench.sh
#   BENCH_ROUNDS=5        rounds; each round measures every proxy once, in a rotating order
#   BENCH_SECONDS=10      wrk duration per proxy per round
#   BENCH_CONNECTIONS=50  wrk connections (one wrk thread per proxy worker)
#   BENCH_WARMUP=2        seconds of unmeasured load per proxy before the first round
#   BENCH_WORKERS="1 2"   one table per worker count, in this order (default both)
#   BENCH_LATENCY_SECONDS duration of each one-client latency run (default BENCH_SECONDS,
#                         at most 5)
#   BENCH_NO_TARGETS=1    print the target comparison but do not exit non-zero on a miss
#   BENCH_PERF=1          afterwards, `perf record -g` tollgate (limits on) under the same load
#                         for BENCH_SECONDS and print the top of `perf report`
#   BENCH_KEEP=1          keep the temporary directory (configs, logs, wrk outputs)
#   BENCH_PIN=1           pin the measured proxies to the last W CPUs (W = workers) and wrk +
#                         the upstream to the others (taskset), so that scheduling does not mix
#                         them; default on when the machine has 2 CPUs or more. A table whose
#                         W workers do not leave a CPU to the load runs unpinned.
#   BENCH_KERNEL=1        after the target table's rounds, one more run of each proxy under the
#                         same load with its kernel side counted (perf stat): syscalls,
#                         getpeername and wake-ups of other tasks per request, and how busy the
#                         load's CPU was (see "The kernel view" below); needs perf
#   BENCH_H2=1            the HTTP/2-over-TLS table (below), default on; BENCH_H2=0 skips it
#   BENCH_H2_PROFILE=1    after that table, where tollgate_on's time goes under its load: its
#                         threads' scheduler accounting, its syscalls per request against
#                         nginx's, who else ran on its CPU, a CPU profile (perf; 4 more runs of
#                         BENCH_SECONDS + 2)
#
# Tables. For each W in BENCH_WORKERS a fresh set of processes is started: tollgate `threads: W`
# (twice: limits on, limits off), bare_pingora with W threads (pingora's ServerConf), HAProxy
# `nbthread W`, nginx `worker_processes W`, the upstream nginx with W workers (not measured),
# and wrk -tW -c$BENCH_CONNECTIONS. Each row of a table is the medians over the rounds of
# CPU µs/request (total, user, system), req/s and the p50 and p99 of wrk --latency; then the
# ratios of the median CPU per request tollgate_on / nginx, / haproxy, / bare_pingora,
# bare_pingora / nginx, tollgate_on / tollgate_off (and tollgate_off / nginx), with each round's
# ratio to show the spread, and p99 tollgate_on / nginx. On a 2-core machine the 2-worker table
# cannot give the proxy cores of its own: proxy, wrk and upstream share both, so it measures
# contention with the load generator rather than the proxies alone (the script says so).
#
# One-client latency row: with the 1-worker set (the first table's when 1 is not in
# BENCH_WORKERS), `wrk -t1 -c1 --latency` against the upstream directly and through nginx,
# haproxy, bare_pingora and tollgate_on, BENCH_ROUNDS rotating rounds of BENCH_LATENCY_SECONDS:
# the median p50 of each, the latency each proxy adds (p50 through it - p50 direct) and the
# ratio tollgate_on-added / nginx-added. This wrk runs on the proxies' CPU(s), not on the
# upstream's: then the direct path and each proxied path cross between CPUs the same number
# of times (twice a request, to the upstream and back), and the difference is the proxy's own
# work. With wrk on the upstream's CPU the direct path would stay on one CPU and each proxied
# path would cross four times; on a VM a cross-CPU wakeup costs tens of µs (a one-client round
# trip from one CPU to the other took 72 µs where one on the same CPU took 10 µs), which would
# add the same 100+ µs to every proxy and hide the difference between them.
#
# HTTP/2 over TLS (BENCH_H2=1), with the 1-worker set (the first table's when 1 is not in
# BENCH_WORKERS), in front of the same upstream and pinned as that table: a second set of
# proxies whose listeners take TLS and offer h2 by ALPN, with a self-signed EC P-256
# certificate made in the temporary directory (openssl req -x509 -newkey ec prime256v1), all
# with plain HTTP/1.1 keep-alive to the upstream: tollgate_on and tollgate_off (`listeners[].tls`
# {cert, key}), HAProxy (`bind ... ssl crt CERT+KEY.pem alpn h2,http/1.1`, the same stick
# tables), nginx (`listen ... ssl http2`, `ssl_protocols TLSv1.2 TLSv1.3` as the others offer,
# the same limit_req; `keepalive_requests 1000000` covers its h2 connections, nginx 1.22's
# `http2_max_requests` being obsolete). No bare_pingora: examples/bare_proxy.rs listens in plain
# TCP only. Each proxy must answer 200 over HTTP/2 with the upstream's body (curl --http2 -k)
# before anything is measured. Load: h2load -tW -c20 -m10 (200 requests in flight) -D
# BENCH_SECONDS -H 'x-api-key: bench' on the load CPU(s), bounded by `timeout`, BENCH_ROUNDS
# rotating rounds after BENCH_WARMUP seconds each. Rows, medians over the rounds: CPU
# µs/request (total, user, system; requests = h2load's "done"), req/s, latency: h2load's mean
# "time for request" (it reports min, max, mean and sd) and the p50 and p99 of its --log-file
# (per request, start to end of response); failed (h2load's count: errors, timeouts, statuses
# >= 400), core % (the proxy's CPU time / the run's wall time: 100 = its whole CPU) and up
# conn/1k (connections the upstream accepted per 1,000 requests, from its stub_status: a proxy
# that keeps fewer idle upstream connections than there are requests in flight opens new ones;
# pingora's pool keeps 128, nginx's `keepalive 64`). Then the ratios of the median CPU per
# request tollgate_on / nginx, / haproxy and / tollgate_off. No target (informational), but a
# proxy not answering over h2, h2load exiting non-zero or not in h2, or more than 1% failed
# requests make the exit status 1.
#
# What tollgate waits on under h2: nothing; its rate is its CPU per request. Figures from two
# quiet runs of this script (1 worker; BENCH_H2_PROFILE=1 prints them for each run): its one
# proxy thread was on its CPU 96.4-97.1% of the wall time, runnable but kept off it 2.5-3.1%
# (preempted 0.015-0.016 times per request, by the timer and background threads of the proxies
# pinned to the same CPU, and ksoftirqd) and asleep 0.4-0.5%, with 0.0001 voluntary switches
# per request (a few a second): it almost never blocks. It makes 3.59-3.61 syscalls per request
# (nginx 5.65-6.05): sendto 1.13, recvfrom 1.13, getpeername 0.97 (pingora checking a pooled
# upstream connection's peer before reusing it; none since pingora-core patch 17), epoll_wait 0.077 (returning at once), and
# 0.027-0.028 new upstream connections per request at 10 syscalls each; no futex, so no lock
# waited on. Its CPU was busy 99.8%: user 66-68%, system 15-17%, softirq 15-19% (loopback
# delivery). The upstream connections it opens (28-66 per 1,000 requests: 200 requests in
# flight, pingora's pool keeps 128 idle) cost little: with -m6 (120 in flight) it opened none
# and used 42-44 us per request against 43-47 with -m10 (by hand, two runs each). CPU profile:
# 58-59% tollgate's own code (h2, pingora, tokio, mimalloc; no symbol above 3%), 32% kernel
# (10% _raw_spin_unlock_irqrestore, mostly sendto's loopback delivery waking the peer on the
# other CPU), 8-9% libc (memmove 6-7%). A core not used whole, as in an earlier 16,000 req/s at
# 44-46 us per request, comes from other load on the machine: with a cargo build on its CPU,
# tollgate_on made 8,100 req/s on 38% of that CPU, with 1,237 involuntary against 129 voluntary
# switches in 4 s: the run queue, not a syscall or a lock.
#
# The kernel view (BENCH_KERNEL=1): a proxy's system time per request is not its own alone. At
# this load each proxy is the bottleneck, so the slower it is, the more often wrk and the
# upstream on the load's CPU have nothing to do and sleep, and the more of its sends must wake
# them (sched_waking, charged to the sender): measured on 2026-12-01, nginx woke a peer 0.06-0.10
# times per request (the load's CPU 90% busy), HAProxy 0.11 (70%), tollgate 0.62-0.67 (53%) and
# bare pingora 0.47-0.55 (55%), with about the same syscalls per request (4.05 tollgate's since
# pingora-core patch 17, 5.05 nginx's and bare pingora's, its getpeername included). The path
# that wakes a reader (sock_def_readable, inclusive, perf record -g) took 3.6 us of tollgate's
# system time per request (of 12-14) against 1.3 of nginx's (of 8-10). Informational: no target.
#
# Targets, checked on the 1-worker table (else the first) and the latency row, each printed
# PASS or FAIL: CPU µs/request tollgate_on / nginx <= 1.5; p99 tollgate_on / nginx <= 1.5; added
# p50 latency tollgate_on / nginx <= 1.5; CPU µs/request tollgate_on / tollgate_off <= 1.03.
# Exit status: 1 when something failed (a proxy did not answer, wrk or h2load failed, more than
# 1% of responses were errors), 2 when a target is missed (0 with BENCH_NO_TARGETS=1), else 0.
#
# Fairness: the same worker count for each; access logs off on all (tollgate `access_log: false`,
# nginx `access_log off`, HAProxy has no `log` line); keep-alive to the upstream on all
# (tollgate and bare_pingora: pingora's connection pool; nginx `keepalive 64`; HAProxy
# `http-reuse always`). Tollgate with limits on charges two limits per request (per-api-key
# and per-ip), both with capacity 1e9 and 1e9 tokens/s so that every request is admitted; nginx
# mirrors them with two limit_req zones ($http_x_api_key and $binary_remote_addr) at
# 100000000r/s, `burst=100000 nodelay` (nginx accounts in milliseconds: without a burst, a
# second request in the same millisecond is refused whatever the rate); HAProxy tracks
# req.hdr(x-api-key) and src in two stick tables (`store http_req_rate(1s)`) and denies with
# 429 above 100000000 requests/s, which is never reached. tollgate, nginx and HAProxy add
# X-Forwarded-For and X-Forwarded-Proto; bare_pingora forwards the request as it came.
# CPU per request = (utime + stime) of the proxy process(es) over the run (/proc/PID/stat,
# nginx: master + workers; HAProxy, tollgate and bare_pingora are one process each) / requests
# wrk completed, and each of user and system (kernel) time alone. Only ratios from one run mean
# anything on a shared machine. Everything listens on and talks to 127.0.0.1 only; every wrk
# and h2load run is bounded by `timeout`, and the processes and the temporary directory are
# removed on exit, whatever the exit (trap).
set -euo pipefail
export LC_NUMERIC=C
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${BENCH_ROUNDS:-5}
SECS=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNECTIONS:-50}
WARMUP=${BENCH_WARMUP:-2}
PERF=${BENCH_PERF:-0}
WORKERS=${BENCH_WORKERS:-1 2}
LAT_SECS=${BENCH_LATENCY_SECONDS:-$((SECS < 5 ? SECS : 5))}
NO_TARGETS=${BENCH_NO_TARGETS:-0}
H2=${BENCH_H2:-1}
H2_PROFILE=${BENCH_H2_PROFILE:-0}
KERNEL=${BENCH_KERNEL:-0}
H2_CONNS=20
H2_STREAMS=10
NCPU=$(nproc)
PIN=${BENCH_PIN:-$([ "$NCPU" -ge 2 ] && echo 1 || echo 0)}
read -r -a WORKER_LIST <<<"$WORKERS"
for w in "${WORKER_LIST[@]}"; do
  [[ $w =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_WORKERS: '$w' is not a positive integer"; exit 1; }
done
[ ${#WORKER_LIST[@]} -gt 0 ] || { echo "BENCH_WORKERS is empty"; exit 1; }
# The table the targets are checked on, and whose processes serve the latency row.
TARGET_W=${WORKER_LIST[0]}
for w in "${WORKER_LIST[@]}"; do [ "$w" = 1 ] && TARGET_W=1; done

. scripts/lib.sh
ensure nginx:nginx haproxy:haproxy wrk:wrk curl:curl python3:python3 taskset:util-linux \
  cmake:cmake cc:build-essential
if [ "$PERF" = 1 ] || [ "$KERNEL" = 1 ]; then ensure perf:linux-perf; fi
if [ "$H2" = 1 ]; then ensure h2load:nghttp2-client openssl:openssl; fi
if [ "$H2" = 1 ] && [ "$H2_PROFILE" = 1 ]; then ensure perf:linux-perf ss:iproute2; fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

echo "== cargo build --release --bins --example bare_proxy"
cargo build --release --bins --example bare_proxy
TOLLGATE=$ROOT/target/release/tollgate
BARE=$ROOT/target/release/examples/bare_proxy
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

free_ports() { # $1 = how many free loopback ports, printed on one line
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

BODY='{"item":"42","rating":4.5,"votes":1234,"source":"bench"}'
nginx_conf() { # $1 = directory name, $2 = worker processes, $3 = http block body
  mkdir -p "$DIR/$1/logs"
  nginx_cfg "$DIR/$1" "$2" on "$3" >"$DIR/$1/nginx.conf"
}

tollgate_conf() { # $1 = name, $2 = port, $3 = admin port, $4 = route limits (JSON array), $5 = threads,
  # [$6 = cert, $7 = key: a TLS listener, with h2 by ALPN]
  local listener="{ \"address\": \"127.0.0.1:$2\" }"
  [ $# -ge 7 ] && listener="{ \"address\": \"127.0.0.1:$2\", \"tls\": { \"cert\": \"$6\", \"key\": \"$7\" } }"
  cat >"$DIR/$1.json" <<EOF
{
  "node_id": "bench-$1",
  "listeners": [$listener],
  "admin": { "address": "127.0.0.1:$3", "token": null },
  "upstreams": { "up": { "servers": ["127.0.0.1:$UP_PORT"] } },
  "limits": {
    "per-api-key": { "capacity": 1000000000, "refill_per_second": 1000000000, "key": ["header:x-api-key"] },
    "per-ip": { "capacity": 1000000000, "refill_per_second": 1000000000, "key": ["client_ip"] }
  },
  "routes": [ { "name": "bench", "match": { "path_prefix": "/" }, "upstream": "up", "limits": $4 } ],
  "threads": $5,
  "access_log": false,
  "grace_period_seconds": 1
}
EOF
  "$TOLLGATE" check -c "$DIR/$1.json" >/dev/null
}

haproxy_conf() { # $1 = directory name, $2 = port, $3 = threads, [$4 = bind options, $5 = X-Forwarded-Proto]
  mkdir -p "$DIR/$1"
  haproxy_cfg "$2" "$3" "127.0.0.1:$UP_PORT" 1 "${4:-}" "${5:-http}" "$DIR/$1/haproxy.pid" \
    >"$DIR/$1/haproxy.cfg"
  "$HAPROXY" -c -q -f "$DIR/$1/haproxy.cfg"
}

nginx_proxy() { # the http block of the nginx proxy (upstream: UP_PORT); $1 = its server's first
  # line(s): listen and, for TLS, the certificate
  nginx_proxy_http "127.0.0.1:$UP_PORT" 1 "$1"
}

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

upstream_accepts() { # connections the upstream nginx has accepted so far (its stub_status; the
  # request for it is one of them)
  curl -s --max-time 2 "http://127.0.0.1:$UP_STATUS/" | awk 'NR == 3 { print $1 }'
}

# A single wrk run, bounded, on the CPUs in WRK_PIN. $1 = port, $2 = seconds, $3 = output
# file, $4 = threads, $5 = connections.
WRK_PIN=()
run_wrk() {
  timeout $(($2 + 30)) "${WRK_PIN[@]}" wrk -t"$4" -c"$5" -d"${2}s" --latency -H 'x-api-key: bench' \
    "http://127.0.0.1:$1/rating/42" >"$3" 2>&1
}

fail=0
ORDER=(tollgate_on tollgate_off bare_pingora haproxy nginx)
LAT_ORDER=(direct nginx haproxy bare_pingora tollgate_on)
LATENCY=$DIR/latency.tsv

start() { # $1 = name, $2 = worker count, then the command; sets PID[$1], adds it to PIDS
  local name=$1 w=$2
  shift 2
  "$@" >"$DIR/$name-w$w.log" 2>&1 &
  PID[$name]=$!
  PIDS+=("$!")
}

# One table: start the W-worker set, check it, warm it up, measure the rounds, (for TARGET_W)
# the latency row and perf, print the medians, stop the set.
run_table() { # $1 = W
  local W=$1 p r i out port ok
  local u0 s0 u1 s1 c0 c1 reqs rps p50 p99 bad cpu_us
  PIN_PROXY=()
  PIN_LOAD=()
  local pin_note="none"
  if [ "$PIN" = 1 ] && [ "$NCPU" -gt "$W" ]; then
    PIN_PROXY=(taskset -c "$((NCPU - W))-$((NCPU - 1))")
    PIN_LOAD=(taskset -c "0-$((NCPU - W - 1))")
    pin_note="proxies ${PIN_PROXY[*]}, wrk and upstream ${PIN_LOAD[*]}"
  elif [ "$PIN" = 1 ]; then
    pin_note="none: $W proxy workers on $NCPU CPUs leave no CPU to wrk and the upstream"
  fi
  WRK_PIN=("${PIN_LOAD[@]}")

  local UP_PORT NGX_PORT HAP_PORT BARE_PORT ON_PORT ON_ADMIN OFF_PORT OFF_ADMIN UP_STATUS
  read -r UP_PORT NGX_PORT HAP_PORT BARE_PORT ON_PORT ON_ADMIN OFF_PORT OFF_ADMIN UP_STATUS < <(free_ports 9)

  local up=upstream-w$W ngx=nginx-w$W hap=haproxy-w$W
  nginx_conf "$up" "$W" "
  server {
    listen 127.0.0.1:$UP_PORT;
    location / { default_type application/json; return 200 '$BODY'; }
  }
  server {
    listen 127.0.0.1:$UP_STATUS;
    location / { stub_status; }
  }"
  nginx_conf "$ngx" "$W" "$(nginx_proxy "listen 127.0.0.1:$NGX_PORT;")"
  haproxy_conf "$hap" "$HAP_PORT" "$W"
  tollgate_conf "tollgate_on-w$W" "$ON_PORT" "$ON_ADMIN" '["per-api-key", "per-ip"]' "$W"
  tollgate_conf "tollgate_off-w$W" "$OFF_PORT" "$OFF_ADMIN" '[]' "$W"

  declare -gA PID=() PORT=()
  start upstream "$W" "${PIN_LOAD[@]}" "$NGINX" -p "$DIR/$up" -c "$DIR/$up/nginx.conf" -e "$DIR/$up/logs/error.log"
  start nginx "$W" "${PIN_PROXY[@]}" "$NGINX" -p "$DIR/$ngx" -c "$DIR/$ngx/nginx.conf" -e "$DIR/$ngx/logs/error.log"
  start haproxy "$W" "${PIN_PROXY[@]}" "$HAPROXY" -db -f "$DIR/$hap/haproxy.cfg"
  start bare_pingora "$W" "${PIN_PROXY[@]}" "$BARE" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UP_PORT" "$W"
  start tollgate_on "$W" env TOLLGATE_LOG=warn "${PIN_PROXY[@]}" "$TOLLGATE" run -c "$DIR/tollgate_on-w$W.json"
  start tollgate_off "$W" env TOLLGATE_LOG=warn "${PIN_PROXY[@]}" "$TOLLGATE" run -c "$DIR/tollgate_off-w$W.json"
  PORT=([direct]=$UP_PORT [nginx]=$NGX_PORT [haproxy]=$HAP_PORT [bare_pingora]=$BARE_PORT
    [tollgate_on]=$ON_PORT [tollgate_off]=$OFF_PORT)

  # Every proxy must answer 200 with the upstream's body before anything is measured.
  for p in direct "${ORDER[@]}"; do
    port=${PORT[$p]}
    ok=0
    out=""
    for _ in $(seq 100); do
      out=$(curl -s --max-time 2 -o "$DIR/check.$p" -w '%{http_code}' -H 'x-api-key: bench' \
        "http://127.0.0.1:$port/rating/42" 2>/dev/null || true)
      if [ "$out" = 200 ] && [ "$(cat "$DIR/check.$p" 2>/dev/null)" = "$BODY" ]; then ok=1; break; fi
      sleep 0.1
    done
    if [ $ok != 1 ]; then
      echo "FAIL: $p on 127.0.0.1:$port did not answer 200 with the upstream body (last: $out)"
      tail -n 5 "$DIR"/*.log "$DIR"/*/logs/error.log 2>/dev/null || true
      exit 1
    fi
  done

  echo
  echo "=============== $W worker(s) each ==============="
  echo "== proxies (pids): tollgate_on ${PID[tollgate_on]} (threads $W, limits per-api-key + per-ip)," \
    "tollgate_off ${PID[tollgate_off]} (threads $W, no limits), bare_pingora ${PID[bare_pingora]} (threads $W)," \
    "haproxy ${PID[haproxy]} (nbthread $W, 2 stick tables), nginx master ${PID[nginx]} worker(s)" \
    "$(pgrep -P "${PID[nginx]}" | tr '\n' ' ')(worker_processes $W, limit_req x2);" \
    "access logs off on all; upstream nginx (worker_processes $W) on 127.0.0.1:$UP_PORT"
  echo "== pinning: $pin_note"
  if [ "$W" -ge "$NCPU" ]; then
    echo "== NOTE: $W proxy workers on a $NCPU-CPU machine: proxy, wrk and the upstream share the CPUs," \
      "so this table measures contention with the load generator, not the proxies alone"
  fi
  echo "== load: wrk -t$W -c$CONNS -d${SECS}s --latency -H 'x-api-key: bench', $ROUNDS rounds, CLK_TCK $HZ"

  for p in "${ORDER[@]}"; do
    run_wrk "${PORT[$p]}" "$WARMUP" "$DIR/warmup.$p.w$W" "$W" "$CONNS" || true
  done

  local results=$DIR/results.w$W.tsv n=${#ORDER[@]}
  : >"$results"
  for r in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
      p=${ORDER[$(((i + r - 1) % n))]}
      out=$DIR/wrk.$p.w$W.$r
      read -r u0 s0 < <(cpu_ticks "${PID[$p]}")
      run_wrk "${PORT[$p]}" "$SECS" "$out" "$W" "$CONNS" ||
        { echo "FAIL: wrk on $p exited non-zero"; cat "$out"; exit 1; }
      read -r u1 s1 < <(cpu_ticks "${PID[$p]}")
      c0=$((u0 + s0))
      c1=$((u1 + s1))
      read -r reqs _ rps p50 p99 bad < <(python3 "$SUMMARIZE" wrk "$out")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$r" $((c1 - c0)) "$reqs" "$rps" "$p50" "$p99" \
        "$bad" "$HZ" $((u1 - u0)) $((s1 - s0)) >>"$results"
      cpu_us=$(python3 -c "print(f'{($c1 - $c0) / $HZ * 1e6 / max($reqs, 1):.2f}')")
      printf 'w%s round %s  %-13s %8s req  %9s req/s  p50 %7.3f ms  p99 %7.3f ms  CPU %7s us/req  non-2xx+errors %s\n' \
        "$W" "$r" "$p" "$reqs" "$rps" "$p50" "$p99" "$cpu_us" "$bad"
      if [ "$reqs" -eq 0 ] || [ $((bad * 100)) -gt "$reqs" ]; then
        echo "FAIL: $p round $r: $bad of $reqs responses were not 2xx/3xx or failed (> 1%)"
        fail=1
      fi
    done
  done

  echo
  echo "== $W worker(s) each: medians over $ROUNDS rounds of ${SECS}s (CPU in us per request; access logs off)"
  python3 "$SUMMARIZE" table "$results"
  if [ "$W" -ge "$NCPU" ]; then
    echo "(NOTE: $W workers on $NCPU CPUs: these figures include contention with wrk and the upstream)"
  fi
  if [ "$W" = "$TARGET_W" ]; then
    cp "$results" "$DIR/results.target.tsv"
    echo
    echo "== one client: wrk -t1 -c1 -d${LAT_SECS}s --latency, direct to the upstream and through each" \
      "$W-worker proxy, $ROUNDS rotating rounds"
    echo "   (wrk on the proxies' CPUs: ${PIN_PROXY[*]:-unpinned}; see the header of scripts/bench.sh)"
    WRK_PIN=("${PIN_PROXY[@]}")
    : >"$LATENCY"
    n=${#LAT_ORDER[@]}
    for r in $(seq "$ROUNDS"); do
      for i in $(seq 0 $((n - 1))); do
        p=${LAT_ORDER[$(((i + r - 1) % n))]}
        out=$DIR/lat.$p.$r
        run_wrk "${PORT[$p]}" "$LAT_SECS" "$out" 1 1 ||
          { echo "FAIL: wrk -c1 on $p exited non-zero"; cat "$out"; exit 1; }
        read -r reqs _ rps p50 p99 bad < <(python3 "$SUMMARIZE" wrk "$out")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$r" "$reqs" "$rps" "$p50" "$p99" "$bad" >>"$LATENCY"
        if [ "$reqs" -eq 0 ] || [ $((bad * 100)) -gt "$reqs" ]; then
          echo "FAIL: one client, $p round $r: $bad of $reqs responses were not 2xx/3xx or failed (> 1%)"
          fail=1
        fi
      done
    done
    python3 "$SUMMARIZE" latency "$LATENCY"
    WRK_PIN=("${PIN_LOAD[@]}")
    if [ "$KERNEL" = 1 ]; then kernel_view "$W"; fi

    if [ "$PERF" = 1 ]; then
      echo
      echo "== perf record -F 999 -g -p ${PID[tollgate_on]} (tollgate_on, $W worker(s)) for ${SECS}s under the same load"
      perf record -F 999 -g -p "${PID[tollgate_on]}" -o "$DIR/perf.data" -- sleep "$SECS" >"$DIR/perf.log" 2>&1 &
      local perf_pid=$!
      run_wrk "${PORT[tollgate_on]}" "$SECS" "$DIR/wrk.perf" "$W" "$CONNS" || true
      wait "$perf_pid" || true
      perf report -i "$DIR/perf.data" --no-children --stdio 2>/dev/null | head -60 || true
      echo "-- by shared object (self time)"
      perf report -i "$DIR/perf.data" --no-children --stdio -g none --sort dso 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -8 || true
      echo "-- flat profile (top 15 symbols, self time)"
      perf report -i "$DIR/perf.data" --no-children --stdio -g none --percent-limit 0.5 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -15 || true
    fi
  fi

  if [ "$W" = "$TARGET_W" ] && [ "$H2" = 1 ]; then run_h2_table "$W"; fi

  stop_all "${PIDS[@]}"
  PIDS=()
}

# BENCH_KERNEL=1: one more run of each proxy under the table's load, its kernel side counted
# (see "The kernel view" in the header). Called from run_table (PID, PORT, PIN_*).
kernel_view() { # $1 = W
  local W=$1 p pids out u0 s0 u1 s1 reqs threads=$ROOT/scripts/bench/threads.py
  local ev=raw_syscalls:sys_enter,syscalls:sys_enter_getpeername,sched:sched_waking
  echo
  echo "== kernel view: one more ${SECS}s run of each proxy under the same load, perf stat -e $ev" \
    "on the proxy's process(es)"
  printf '   %-14s%9s%9s%11s%13s%10s   %s\n' proxy "user us" "sys us" "syscalls" "getpeername" \
    wakings "load CPU(s) ${PIN_LOAD[2]:-all} busy"
  for p in "${ORDER[@]}"; do
    pids=${PID[$p]}
    [ "$p" = nginx ] && pids=$(pgrep -P "${PID[nginx]}" | paste -sd, -)
    out=$DIR/kernel.$p
    read -r u0 s0 < <(cpu_ticks "${PID[$p]}")
    python3 "$threads" cpus "$out.cpus0"
    if ! perf stat -e "$ev" -p "$pids" -x, -o "$out.stat" -- \
      timeout $((SECS + 30)) "${PIN_LOAD[@]}" wrk -t"$W" -c"$CONNS" -d"${SECS}s" --latency \
      -H 'x-api-key: bench' "http://127.0.0.1:${PORT[$p]}/rating/42" >"$out.wrk" 2>&1; then
      echo "   $p: perf stat failed: $(tail -n 2 "$out.stat" "$out.wrk" 2>/dev/null | tr '\n' ' ')"
      continue
    fi
    python3 "$threads" cpus "$out.cpus1"
    read -r u1 s1 < <(cpu_ticks "${PID[$p]}")
    read -r reqs _ < <(python3 "$SUMMARIZE" wrk "$out.wrk")
    python3 "$threads" kernel "$out.stat" "$reqs" "$p" $((u1 - u0)) $((s1 - s0)) \
      "$out.cpus0" "$out.cpus1" "${PIN_LOAD[2]:-all}"
  done
  echo "   (per request; wakings: sched_waking events the proxy raised, peers it woke from sleep)"
}

# One h2load run, bounded, on the load CPU(s). $1 = port, $2 = seconds, $3 = output file,
# $4 = threads, [$5 = per-request log file].
run_h2load() {
  timeout $(($2 + 30)) "${PIN_LOAD[@]}" h2load -t"$4" -c"$H2_CONNS" -m"$H2_STREAMS" -D "$2" \
    -H 'x-api-key: bench' ${5:+--log-file="$5"} "https://127.0.0.1:$1/rating/42" >"$3" 2>&1
}

# BENCH_H2_PROFILE=1: where tollgate_on's proxy thread spends an h2 run, and what it waits on
# (see the header), in four more runs of the same load: scheduler accounting with nothing
# attached, syscall counts (perf stat, against nginx's), who else ran on the proxy CPU (perf
# sched), and a CPU profile (perf record).
H2_SYSCALLS=(sendto recvfrom read write readv writev sendmsg recvmsg getpeername getsockname
  socket connect accept4 close setsockopt getsockopt ioctl epoll_wait epoll_pwait epoll_ctl futex
  madvise mmap munmap sched_yield)
h2_profile() { # $1 = W
  local W=$1 pid=${PID[h2_tollgate_on]} port=${PORT[h2_tollgate_on]} prof=$DIR/h2profile
  local threads=$ROOT/scripts/bench/threads.py lp a0 a1 rps reqs p pids ev="" s
  local pcpus=${PIN_PROXY[2]:-all} lcpus=${PIN_LOAD[2]:-}
  mkdir -p "$prof"
  for s in "${H2_SYSCALLS[@]}"; do ev+="syscalls:sys_enter_$s,"; done
  ev+="raw_syscalls:sys_enter"
  echo
  echo "== BENCH_H2_PROFILE: tollgate_on (pid $pid) under the same h2 load, four more runs"

  echo "-- 1. its threads over ${SECS}s in the middle of a $((SECS + 2))s run, nothing attached" \
    "(/proc/PID/task/*/schedstat: on CPU, runnable but waiting for the CPU, asleep)"
  run_h2load "$port" $((SECS + 2)) "$prof/load.1" "$W" &
  lp=$!
  sleep 1
  python3 "$threads" snap "$pid" "$prof/s0"
  a0=$(upstream_accepts)
  sleep "$SECS"
  a1=$(upstream_accepts)
  python3 "$threads" snap "$pid" "$prof/s1"
  wait "$lp" || true
  rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$prof/load.1")
  python3 "$threads" diff "$prof/s0" "$prof/s1" "${rps:-0}" "$pcpus${lcpus:+,$lcpus}"
  echo "   upstream connections opened in the window: $((a1 - a0 - 1)), established at its end:" \
    "$(ss -Htn state established "( dport = :$UP_PORT )" 2>/dev/null | wc -l) (all proxies)"

  echo "-- 2. syscalls per request over a whole ${SECS}s run (perf stat -e 'syscalls:sys_enter_*'," \
    "counted in the kernel, nothing lost), tollgate_on and then nginx"
  for p in tollgate_on nginx; do
    pids=${PID[h2_$p]}
    [ "$p" = nginx ] && pids=$(pgrep -P "${PID[h2_nginx]}" | paste -sd, -)
    if perf stat -e "$ev" -p "$pids" -x, -o "$prof/stat.$p" -- \
      timeout $((SECS + 30)) "${PIN_LOAD[@]}" h2load -t"$W" -c"$H2_CONNS" -m"$H2_STREAMS" -D "$SECS" \
      -H 'x-api-key: bench' "https://127.0.0.1:${PORT[h2_$p]}/rating/42" >"$prof/load.2.$p" 2>&1; then
      read -r reqs _ < <(python3 "$SUMMARIZE" h2load "$prof/load.2.$p")
      python3 "$threads" syscalls "$prof/stat.$p" "$reqs" "${p/nginx/nginx workers}"
    else
      echo "   perf stat failed: $(tail -n 2 "$prof/stat.$p" "$prof/load.2.$p" 2>/dev/null | tr '\n' ' ')"
    fi
  done

  echo "-- 3. who ran on the proxy CPU(s) ($pcpus) over ${SECS}s of a run (perf sched record; top 8 by" \
    "run time; delay = runnable until on a CPU)"
  run_h2load "$port" $((SECS + 2)) "$prof/load.3" "$W" &
  lp=$!
  sleep 1
  if [ "$pcpus" = all ]; then
    perf sched record -a -o "$prof/sched.data" -- sleep "$SECS" >"$prof/sched.log" 2>&1 || true
  else
    perf sched record -C "$pcpus" -o "$prof/sched.data" -- sleep "$SECS" >"$prof/sched.log" 2>&1 || true
  fi
  wait "$lp" || true
  perf sched latency -i "$prof/sched.data" --sort runtime 2>/dev/null |
    awk -F'|' 'NF >= 5 && $1 !~ /^ *-+ *$/ && n++ < 9 { printf "  %s|%s|%s|%s|%s\n", $1, $2, $3, $4, $5 }' || true

  echo "-- 4. CPU profile over ${SECS}s of a run (perf record -F 999 -g; self time)"
  run_h2load "$port" $((SECS + 2)) "$prof/load.4" "$W" &
  lp=$!
  sleep 1
  perf record -F 999 -g -p "$pid" -o "$prof/perf.data" -- sleep "$SECS" >"$prof/perf.log" 2>&1 || true
  wait "$lp" || true
  perf report -i "$prof/perf.data" --no-children --stdio -g none --sort dso 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -5 | sed 's/^/  /' || true
  perf report -i "$prof/perf.data" --no-children --stdio -g none --sort sym --percent-limit 1 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -12 | cut -c1-150 | sed 's/^/  /' || true
}

# The HTTP/2-over-TLS table: its own set of proxies (TLS listeners, h2 by ALPN) in front of the
# running upstream, W workers each, pinned as the HTTP/1 table; rounds, medians, and with
# BENCH_H2_PROFILE=1 where tollgate's time goes. Called from run_table (UP_PORT, PIN_*, PID).
H2_ORDER=(tollgate_on tollgate_off haproxy nginx)
run_h2_table() { # $1 = W
  local W=$1 p r i n out ok got key
  local u0 s0 u1 s1 c0 c1 t0 t1 a0 a1 reqs rps p50 p99 bad mean proto cpu_us
  local H2_NGX H2_HAP H2_ON H2_ON_ADMIN H2_OFF H2_OFF_ADMIN tls=$DIR/tls
  read -r H2_NGX H2_HAP H2_ON H2_ON_ADMIN H2_OFF H2_OFF_ADMIN < <(free_ports 6)
  mkdir -p "$tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -keyout "$tls/key.pem" -out "$tls/cert.pem" >"$tls/openssl.log" 2>&1 ||
    { echo "FAIL: openssl req"; cat "$tls/openssl.log"; exit 1; }
  cat "$tls/cert.pem" "$tls/key.pem" >"$tls/haproxy.pem"

  local ngx=nginx-h2-w$W hap=haproxy-h2-w$W
  nginx_conf "$ngx" "$W" "$(nginx_proxy "listen 127.0.0.1:$H2_NGX ssl http2;
    ssl_certificate $tls/cert.pem;
    ssl_certificate_key $tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;")"
  haproxy_conf "$hap" "$H2_HAP" "$W" "ssl crt $tls/haproxy.pem alpn h2,http/1.1" https
  tollgate_conf "tollgate_on-h2-w$W" "$H2_ON" "$H2_ON_ADMIN" '["per-api-key", "per-ip"]' "$W" \
    "$tls/cert.pem" "$tls/key.pem"
  tollgate_conf "tollgate_off-h2-w$W" "$H2_OFF" "$H2_OFF_ADMIN" '[]' "$W" "$tls/cert.pem" "$tls/key.pem"

  start h2_nginx "$W" "${PIN_PROXY[@]}" "$NGINX" -p "$DIR/$ngx" -c "$DIR/$ngx/nginx.conf" -e "$DIR/$ngx/logs/error.log"
  start h2_haproxy "$W" "${PIN_PROXY[@]}" "$HAPROXY" -db -f "$DIR/$hap/haproxy.cfg"
  start h2_tollgate_on "$W" env TOLLGATE_LOG=warn "${PIN_PROXY[@]}" "$TOLLGATE" run -c "$DIR/tollgate_on-h2-w$W.json"
  start h2_tollgate_off "$W" env TOLLGATE_LOG=warn "${PIN_PROXY[@]}" "$TOLLGATE" run -c "$DIR/tollgate_off-h2-w$W.json"
  PORT+=([h2_nginx]=$H2_NGX [h2_haproxy]=$H2_HAP [h2_tollgate_on]=$H2_ON [h2_tollgate_off]=$H2_OFF)

  # Every proxy must answer 200 over HTTP/2 with the upstream's body before anything is measured.
  for p in "${H2_ORDER[@]}"; do
    ok=0
    got=""
    for _ in $(seq 100); do
      got=$(curl -s -k --http2 --max-time 2 -o "$DIR/check.h2.$p" -w '%{http_code} HTTP/%{http_version}' \
        -H 'x-api-key: bench' "https://127.0.0.1:${PORT[h2_$p]}/rating/42" 2>/dev/null || true)
      if [ "$got" = "200 HTTP/2" ] && [ "$(cat "$DIR/check.h2.$p" 2>/dev/null)" = "$BODY" ]; then ok=1; break; fi
      sleep 0.1
    done
    if [ $ok != 1 ]; then
      echo "FAIL: $p (TLS) on 127.0.0.1:${PORT[h2_$p]} did not answer 200 over HTTP/2 with the upstream body (last: $got)"
      tail -n 5 "$DIR"/h2_*.log "$DIR/$ngx/logs/error.log" 2>/dev/null || true
      exit 1
    fi
  done

  echo
  echo "=============== HTTP/2 over TLS, $W worker(s) each ==============="
  echo "== proxies (pids), TLS listeners with h2 by ALPN, plain HTTP/1.1 keep-alive to the same upstream:" \
    "tollgate_on ${PID[h2_tollgate_on]}, tollgate_off ${PID[h2_tollgate_off]} (threads $W)," \
    "haproxy ${PID[h2_haproxy]} (nbthread $W, bind ssl alpn h2,http/1.1), nginx master ${PID[h2_nginx]}" \
    "worker(s) $(pgrep -P "${PID[h2_nginx]}" | tr '\n' ' ')(listen ssl http2, keepalive_requests 1000000);" \
    "no bare_pingora (examples/bare_proxy.rs listens in plain TCP only)"
  echo "== certificate: self-signed EC P-256 (openssl req -x509 -newkey ec prime256v1)"
  if [ ${#PIN_PROXY[@]} -gt 0 ]; then
    echo "== pinning: proxies ${PIN_PROXY[*]}, h2load and upstream ${PIN_LOAD[*]}"
  else
    echo "== pinning: none"
  fi
  echo "== load: h2load -t$W -c$H2_CONNS -m$H2_STREAMS -D $SECS -H 'x-api-key: bench', $ROUNDS rounds;" \
    "latency: h2load's mean time for request, p50/p99 from its --log-file"

  if [ "$WARMUP" -gt 0 ]; then
    for p in "${H2_ORDER[@]}"; do
      run_h2load "${PORT[h2_$p]}" "$WARMUP" "$DIR/h2warmup.$p" "$W" || true
    done
  fi

  local results=$DIR/results.h2.tsv reqlog=$DIR/h2.requests.log
  n=${#H2_ORDER[@]}
  : >"$results"
  for r in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
      p=${H2_ORDER[$(((i + r - 1) % n))]}
      key=h2_$p
      out=$DIR/h2load.$p.$r
      a0=$(upstream_accepts)
      t0=$(date +%s.%N)
      read -r u0 s0 < <(cpu_ticks "${PID[$key]}")
      run_h2load "${PORT[$key]}" "$SECS" "$out" "$W" "$reqlog" ||
        { echo "FAIL: h2load on $p exited non-zero"; cat "$out"; exit 1; }
      read -r u1 s1 < <(cpu_ticks "${PID[$key]}")
      t1=$(date +%s.%N)
      a1=$(upstream_accepts)
      c0=$((u0 + s0))
      c1=$((u1 + s1))
      read -r reqs _ rps p50 p99 bad mean proto < <(python3 "$SUMMARIZE" h2load "$out" "$reqlog")
      rm -f "$reqlog"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$r" $((c1 - c0)) "$reqs" "$rps" \
        "$p50" "$p99" "$bad" "$HZ" $((u1 - u0)) $((s1 - s0)) "$mean" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" \
        $((a1 - a0 - 1)) >>"$results"
      cpu_us=$(python3 -c "print(f'{($c1 - $c0) / $HZ * 1e6 / max($reqs, 1):.2f}')")
      printf 'h2 round %s  %-13s %8s req  %9s req/s  mean %7.3f ms  p50 %7.3f ms  p99 %7.3f ms  CPU %7s us/req  upstream conns %6s  failed %s  %s\n' \
        "$r" "$p" "$reqs" "$rps" "$mean" "$p50" "$p99" "$cpu_us" $((a1 - a0 - 1)) "$bad" "$proto"
      if [ "$proto" != h2 ]; then
        echo "FAIL: $p round $r: h2load did not speak h2 (ALPN: $proto)"
        fail=1
      fi
      if [ "$reqs" -eq 0 ] || [ $((bad * 100)) -gt "$reqs" ]; then
        echo "FAIL: $p round $r: $bad of $reqs requests failed (status >= 400 or errors; > 1%)"
        fail=1
      fi
    done
  done

  echo
  echo "== HTTP/2 over TLS, $W worker(s) each: medians over $ROUNDS rounds of ${SECS}s (CPU in us per request;" \
    "latency: h2load's mean, and p50/p99 of its per-request log; informational, no target)"
  python3 "$SUMMARIZE" h2table "$results"
  printf '   TLS as h2load saw it:'
  for p in "${H2_ORDER[@]}"; do
    printf ' %s %s %s;' "$p" "$(sed -n 's/^TLS Protocol: //p' "$DIR/h2load.$p.$ROUNDS")" \
      "$(sed -n 's/^Cipher: //p' "$DIR/h2load.$p.$ROUNDS")"
  done
  echo
  if [ "$W" -ge "$NCPU" ]; then
    echo "(NOTE: $W workers on $NCPU CPUs: these figures include contention with h2load and the upstream)"
  fi

  if [ "$H2_PROFILE" = 1 ]; then h2_profile "$W"; fi
}

echo "== $NCPU CPUs; tables for ${WORKERS} worker(s); targets on the $TARGET_W-worker table"
for w in "${WORKER_LIST[@]}"; do run_table "$w"; done

echo
echo "== targets ($TARGET_W-worker table; one-client latency row)"
targets_rc=0
python3 "$SUMMARIZE" targets "$DIR/results.target.tsv" "$LATENCY" || targets_rc=$?

[ $fail = 0 ] || exit 1
if [ $targets_rc != 0 ]; then
  if [ "$NO_TARGETS" = 1 ]; then
    echo "targets missed (BENCH_NO_TARGETS=1: exit status 0)"
  else
    echo "targets missed: exit status 2 (BENCH_NO_TARGETS=1 to report without failing)"
    exit 2
  fi
fi
