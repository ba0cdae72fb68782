#!/usr/bin/env bash
# Builds tollgate, starts the example Rating API on 127.0.0.1:8000 and the gateway standalone
# (no Redis) with conf/tollgate.json, shows a 200 and a 429, and keeps both running until
# Ctrl-C. Installs cmake (needed by pingora's build) when missing.
#
# scripts/demo.sh --shared: a private Redis, the example Rating API and three nodes (a, b, c)
# sharing their buckets through that Redis, all on free loopback ports. It sends traffic on one
# key through all three, shows the bucket as Redis holds it, kills Redis for 3 s while traffic
# goes on, restarts it empty, and checks that Redis ends up holding every admitted request.
# Exits 1 if a check fails; otherwise the nodes keep running until Ctrl-C. Everything it
# started is stopped on exit. Installs redis-server, redis-tools, curl and cmake when missing.
#   DEMO_BIN_DIR=DIR   run the tollgate and rating-api binaries in DIR instead of building
#                      (default: cargo build --release --bins, then target/release)
#   DEMO_NO_WAIT=1     exit once the checks are done instead of running until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--shared" ]; then
  # shellcheck source=scripts/lib.sh
  . scripts/lib.sh
  ensure redis-server:redis-server redis-cli:redis-tools curl:curl
  BIN=${DEMO_BIN_DIR:-}
  if [ -z "$BIN" ]; then
    ensure cmake:cmake
    cargo build --release --bins
    BIN=target/release
  fi
  for b in tollgate rating-api; do
    [ -x "$BIN/$b" ] || { echo "demo: no $BIN/$b" >&2; exit 1; }
  done
  BIN=$(cd "$BIN" && pwd)

  CAP=10 RATE=2 SYNC_MS=100        # the limit: a burst of 10, then 2 requests a second
  LIMIT=per-api-key KEY=demo LIGHT=light
  HASH="tollgate:$LIMIT:$KEY"      # {key_prefix}:{limit}:{key}
  NODES=(a b c)
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-demo.XXXXXX")
  PIDS=()     # the upstream and the nodes
  REDIS=""    # redis-server (a new pid once restarted)
  FAILED=0

  cleanup() {
    trap - EXIT INT TERM
    local all=("${PIDS[@]}")
    if [ -n "$REDIS" ]; then all+=("$REDIS"); fi
    if [ ${#all[@]} -gt 0 ]; then stop_all "${all[@]}"; fi
    rm -rf "$TMP"
  }
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo $((t / 1000)); }

  # pick VAR: sets VAR to a loopback port nothing listens on, below Linux's ephemeral range,
  # not handed out before.
  TAKEN=" "
  pick() {
    local p
    while :; do
      p=$((20000 + RANDOM % 12000))
      case "$TAKEN" in *" $p "*) continue ;; esac
      TAKEN+="$p "
      if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        printf -v "$1" %s "$p"
        return 0
      fi
    done
  }

  # start_redis: an empty redis-server without persistence on RPORT; waits for PONG.
  start_redis() {
    redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP" \
      --logfile "$TMP/redis.log" &
    REDIS=$!
    for _ in $(seq 100); do
      [ "$(redis-cli -p "$RPORT" ping 2>/dev/null)" = PONG ] && return 0
      kill -0 "$REDIS" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$REDIS" 2>/dev/null || true
    wait "$REDIS" 2>/dev/null || true
    REDIS=""
    return 1
  }

  show_logs() {
    local f
    for f in "$TMP"/*.log; do echo "-- end of $f:"; tail -n 20 "$f"; done
  }

  # hit NODE KEY: one GET /rating/42 through NODE with x-api-key KEY; sets CODE (000 if the
  # connection failed) and counts the answers on the demo key.
  declare -A OK NO PROXY ADMIN NODE_PID
  OTHER=0
  hit() {
    CODE=$(curl -s -o /dev/null -D "$TMP/headers" -w '%{http_code}' -H "x-api-key: $2" \
      "http://127.0.0.1:${PROXY[$1]}/rating/42" || true)
    [ "$2" = "$KEY" ] || return 0
    case "$CODE" in
      200) OK[$1]=$((${OK[$1]:-0} + 1)) ;;
      429) NO[$1]=$((${NO[$1]:-0} + 1)) ;;
      *) OTHER=$((OTHER + 1)) ;;
    esac
  }
  # show NODE: the status and the rate-limit headers of the last answer.
  show() {
    printf '  %s -> %s%s\n' "$1" "$CODE" "$(tr -d '\r' <"$TMP/headers" |
      awk 'tolower($0) ~ /^(ratelimit|retry-after)/ { printf "  %s", $0 }')"
  }
  admitted() { local n s=0; for n in "${NODES[@]}"; do s=$((s + ${OK[$n]:-0})); done; echo $s; }
  refused() { local n s=0; for n in "${NODES[@]}"; do s=$((s + ${NO[$n]:-0})); done; echo $s; }

  # load MS: rounds of one request through a, b and c on the demo key, 50 ms apart, for MS
  # milliseconds; prints each node's answers in order (+ 200, . 429) and the totals; sets
  # LOAD_OK, LOAD_NO and LOAD_MS.
  load() {
    local -A line=()
    local n start ok0 no0
    ok0=$(admitted) no0=$(refused) start=$(now_ms)
    while [ $(($(now_ms) - start)) -lt "$1" ]; do
      for n in "${NODES[@]}"; do
        hit "$n" "$KEY"
        case "$CODE" in 200) line[$n]+="+" ;; 429) line[$n]+="." ;; *) line[$n]+="!" ;; esac
      done
      sleep 0.05
    done
    LOAD_MS=$(($(now_ms) - start)) LOAD_OK=$(($(admitted) - ok0)) LOAD_NO=$(($(refused) - no0))
    for n in "${NODES[@]}"; do printf '  %s  %s\n' "$n" "${line[$n]}"; done
    printf '  %d admitted (+), %d refused (.) in %d.%d s; %d/s refills %d.%d in that time\n' \
      "$LOAD_OK" "$LOAD_NO" $((LOAD_MS / 1000)) $((LOAD_MS % 1000 / 100)) "$RATE" \
      $((RATE * LOAD_MS / 1000)) $((RATE * LOAD_MS % 1000 / 100))
  }

  hgetall() {
    echo "\$ redis-cli -p $RPORT HGETALL $HASH"
    redis-cli -p "$RPORT" HGETALL "$HASH" | awk 'NR % 2 { f = $0; next } { printf "  %-12s %s\n", f, $0 }'
  }
  inspect() {
    echo "\$ tollgate inspect -c a.json --limit $LIMIT --key $KEY"
    (cd "$TMP" && "$BIN/tollgate" inspect -c a.json --limit "$LIMIT" --key "$KEY") | sed 's/^/  /'
  }
  consumed_sum() {
    redis-cli -p "$RPORT" HGETALL "$HASH" 2>/dev/null |
      awk 'NR % 2 { f = $0; next } f ~ /:consumed$/ { s += $0 } END { print s + 0 }'
  }
  # expect MESSAGE TEST...: runs the test command, prints "ok: MESSAGE" or "FAILED: MESSAGE".
  expect() {
    local msg=$1
    shift
    if "$@"; then echo "ok: $msg"; else echo "FAILED: $msg"; FAILED=$((FAILED + 1)); fi
  }

  # -- start everything
  for try in 1 2 3; do
    pick RPORT
    start_redis && break
    if [ "$try" = 3 ]; then echo "redis-server did not start:"; cat "$TMP/redis.log"; exit 1; fi
  done
  "$BIN/rating-api" --listen 127.0.0.1:0 >"$TMP/upstream.log" 2>&1 &
  PIDS+=($!)
  UPSTREAM=""
  for _ in $(seq 100); do
    UPSTREAM=$(sed -n 's/^rating-api listening on //p' "$TMP/upstream.log")
    [ -n "$UPSTREAM" ] && break
    sleep 0.1
  done
  [ -n "$UPSTREAM" ] || { echo "rating-api did not start:"; cat "$TMP/upstream.log"; exit 1; }
  port=""
  for n in "${NODES[@]}"; do
    pick port
    PROXY[$n]=$port
    pick port
    ADMIN[$n]=$port
    cat >"$TMP/$n.json" <<JSON
{
  "node_id": "$n",
  "listeners": [{ "address": "127.0.0.1:${PROXY[$n]}" }],
  "admin": { "address": "127.0.0.1:${ADMIN[$n]}", "token": null },
  "redis": { "url": "redis://127.0.0.1:$RPORT/0", "sync_interval_ms": $SYNC_MS, "key_prefix": "tollgate", "timeout_ms": 50, "quiet_buckets": false },
  "upstreams": { "rating-api": { "servers": ["$UPSTREAM"] } },
  "limits": { "$LIMIT": { "capacity": $CAP, "refill_per_second": $RATE, "key": ["header:x-api-key"] } },
  "routes": [{ "name": "rating", "match": { "path_prefix": "/" }, "upstream": "rating-api", "limits": ["$LIMIT"] }],
  "threads": 2,
  "grace_period_seconds": 0
}
JSON
    TOLLGATE_LOG=info "$BIN/tollgate" run -c "$TMP/$n.json" >"$TMP/$n.log" 2>&1 &
    NODE_PID[$n]=$!
    PIDS+=($!)
  done
  for n in "${NODES[@]}"; do
    for _ in $(seq 300); do
      curl -fs "http://127.0.0.1:${ADMIN[$n]}/health" >/dev/null 2>&1 && break
      kill -0 "${NODE_PID[$n]}" 2>/dev/null || break
      sleep 0.1
    done
    curl -fs "http://127.0.0.1:${ADMIN[$n]}/health" >/dev/null 2>&1 ||
      { echo "node $n did not start:"; cat "$TMP/$n.log"; exit 1; }
  done
  echo "Redis on 127.0.0.1:$RPORT, the Rating API on $UPSTREAM, nodes a, b, c on ports" \
    "${PROXY[a]}, ${PROXY[b]}, ${PROXY[c]}"
  echo "Limit $LIMIT: capacity $CAP, refill $RATE/s, keyed by x-api-key. Each node decides from"
  echo "memory and syncs with Redis every $SYNC_MS ms, writing every change (quiet_buckets off; by"
  echo "default a light key that one node alone touches stays out of Redis)."

  echo
  echo "== 1. One key (x-api-key: $KEY) through a, b, c in turn, 0.1 s apart: one bucket"
  for _ in 1 2 3 4 5 6; do
    for n in "${NODES[@]}"; do hit "$n" "$KEY"; show "$n"; sleep 0.1; done
  done
  sleep 0.2 # the last sync
  echo
  echo "== 2. The bucket in Redis: one hash, each node writing only its own fields"
  inspect
  hgetall

  echo
  echo "== 3. Steady overload: rounds of one request through a, b and c on the key, for 7 s"
  echo "-- with Redis, 2 s"
  load 2000
  expect "the overloaded key got 429s ($LOAD_NO of $((LOAD_OK + LOAD_NO)))" [ "$LOAD_NO" -gt 0 ]
  echo "-- Redis killed (SIGKILL); traffic goes on, 3 s"
  kill -KILL "$REDIS"
  wait "$REDIS" 2>/dev/null || true
  REDIS=""
  load 3000
  expect "limiting goes on without Redis: 200s and 429s ($LOAD_OK and $LOAD_NO)" \
    [ $((LOAD_OK > 0 && LOAD_NO > 0)) = 1 ]
  # Each node keeps its last share of the bucket: together they admit about the refill.
  expect "no more admitted than the limit allows ($LOAD_OK <= $CAP + 2 x $RATE/s x ${LOAD_MS} ms)" \
    [ $((LOAD_OK * 1000)) -le $(((CAP * 1000) + 2 * RATE * LOAD_MS)) ]
  for _ in $(seq 50); do
    curl -s "http://127.0.0.1:${ADMIN[a]}/health" | grep -q degraded && break
    sleep 0.1
  done
  echo "\$ curl -s http://127.0.0.1:${ADMIN[a]}/health"
  echo "  $(curl -s "http://127.0.0.1:${ADMIN[a]}/health")"
  echo "   Meanwhile another key, within its limit, one request through each node:"
  light_ok=0
  for n in "${NODES[@]}"; do
    hit "$n" "$LIGHT"
    show "$n"
    if [ "$CODE" = 200 ]; then light_ok=$((light_ok + 1)); fi
  done
  expect "the key within its limit got only 200s ($light_ok of ${#NODES[@]})" \
    [ "$light_ok" -eq ${#NODES[@]} ]
  echo "-- Redis restarted empty (no dump); traffic goes on, 2 s"
  start_redis || { echo "redis-server did not restart on port $RPORT:"; cat "$TMP/redis.log"; exit 1; }
  load 2000

  echo
  echo "== 4. Nothing lost: the nodes pushed their fields to the empty Redis again"
  total=$(admitted)
  start=$(now_ms)
  while [ "$(consumed_sum)" != "$total" ] && [ $(($(now_ms) - start)) -lt 15000 ]; do sleep 0.1; done
  echo "\$ grep -h 'restarted empty' a.log b.log c.log"
  (cd "$TMP" && grep -h "restarted empty" a.log b.log c.log || true) | sed 's/^/  /'
  inspect
  hgetall
  printf '  %-5s %22s %20s\n' node "admitted (200s here)" "consumed (in Redis)"
  for n in "${NODES[@]}"; do
    printf '  %-5s %22s %20s\n' "$n" "${OK[$n]:-0}" \
      "$(redis-cli -p "$RPORT" HGET "$HASH" "$n:consumed")"
  done
  sum=$(consumed_sum)
  printf '  %-5s %22s %20s\n' all "$total" "$sum"
  expect "every answer was a 200 or a 429 ($OTHER others)" [ "$OTHER" -eq 0 ]
  expect "Redis holds every admitted request: sum of consumed $sum, admitted $total" \
    [ "$sum" -eq "$total" ]
  for n in "${NODES[@]}"; do
    c=$(redis-cli -p "$RPORT" HGET "$HASH" "$n:consumed")
    expect "node $n: consumed ${c:-none}, admitted ${OK[$n]:-0}" [ "${c:-x}" = "${OK[$n]:-0}" ]
  done

  if [ "$FAILED" -gt 0 ]; then
    echo
    echo "$FAILED check(s) FAILED; the logs:"
    show_logs
    exit 1
  fi
  echo
  echo "All checks passed. The nodes, and their admin APIs (/health, /metrics, /rating?limit=L&key=K):"
  for n in "${NODES[@]}"; do
    echo "  $n  proxy http://127.0.0.1:${PROXY[$n]}  admin http://127.0.0.1:${ADMIN[$n]}/"
  done
  echo "Try: curl -i -H 'x-api-key: $KEY' http://127.0.0.1:${PROXY[b]}/rating/42"
  echo "     curl -s 'http://127.0.0.1:${ADMIN[c]}/rating?limit=$LIMIT&key=$KEY'"
  echo "     redis-cli -p $RPORT HGETALL $HASH"
  if [ "${DEMO_NO_WAIT:-}" = 1 ]; then exit 0; fi
  echo "Redis on 127.0.0.1:$RPORT. Ctrl-C stops everything."
  wait
  exit 0
fi

if ! command -v cmake >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake >/dev/null
fi
cargo build --release --bins

LOG=target/demo-gateway.log
./target/release/rating-api --listen 127.0.0.1:8000 >/dev/null &
UP=$!
./target/release/tollgate run -c conf/tollgate.json 2>"$LOG" &
GW=$!
trap 'kill $GW $UP 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:9091/health >/dev/null 2>&1 && break
  kill -0 $GW 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.1
done
head -n 1 "$LOG"

echo
echo "== one request through the gateway (200):"
echo "\$ curl -i -H 'x-api-key: demo' http://127.0.0.1:8080/rating/42"
curl -si -H 'x-api-key: demo' http://127.0.0.1:8080/rating/42 | sed -n '1p;/^ratelimit/Ip'
echo
echo "== 11 more with the same key: the bucket (capacity 10, 1 token/s) runs dry (429):"
for _ in $(seq 1 10); do curl -s -o /dev/null -H 'x-api-key: demo' http://127.0.0.1:8080/rating/42; done
echo "\$ curl -i -H 'x-api-key: demo' http://127.0.0.1:8080/rating/42"
curl -si -H 'x-api-key: demo' http://127.0.0.1:8080/rating/42
echo
echo
echo "== try it yourself:"
echo "  curl -i -H 'x-api-key: demo' http://127.0.0.1:8080/rating/42"
echo "  curl -s 'http://127.0.0.1:9091/rating?limit=per-api-key&key=demo'"
echo "  curl -s http://127.0.0.1:9091/metrics | grep ^tollgate_"
echo "  tail -f $LOG    # the gateway's log: one line per request"
if [ "${DEMO_NO_WAIT:-}" = 1 ]; then exit 0; fi
echo "Gateway on 127.0.0.1:8080, admin on 127.0.0.1:9091, upstream on 127.0.0.1:8000. Ctrl-C stops."
wait $GW
