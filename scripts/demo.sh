#!/usr/bin/env bash
# Builds tollgate, starts the example Rating API on 127.0.0.1:8000 and the gateway standalone
# (no Redis) with conf/tollgate.json, shows a 200 and a 429, and keeps both running until
# Ctrl-C. Installs cmake (needed by pingora's build) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

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
echo "Gateway on 127.0.0.1:8080, admin on 127.0.0.1:9091, upstream on 127.0.0.1:8000. Ctrl-C stops."
wait $GW
