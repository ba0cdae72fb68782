# Sourced by the scripts: installs what a fresh Debian machine lacks.
# ensure COMMAND:PACKAGE ...   installs each PACKAGE whose COMMAND is not on the PATH
# (apt-get update first, sudo when not root).
ensure() {
  local need=() pair sudo=""
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "== installing: ${need[*]}"
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
}

# stop_all PID ...   SIGTERM to each process (and, at the end, SIGKILL to it and to the
# children it had, such as nginx workers), waiting up to 5 s for them to exit.
stop_all() {
  local p kids=()
  for p in "$@"; do mapfile -t -O "${#kids[@]}" kids < <(pgrep -P "$p" || true); done
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "$@" "${kids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

# haproxy_cfg PORT THREADS UPSTREAM LIMITS [BIND_OPTIONS] [X_FORWARDED_PROTO] [PIDFILE]
# Prints the HAProxy configuration the benchmarks compare tollgate with: one frontend on
# 127.0.0.1:PORT in front of UPSTREAM (HOST:PORT), THREADS threads, and with LIMITS=1 two stick
# tables tracking `http_req_rate` on the API key header and the client address, as nginx's two
# `limit_req` zones (at rates no benchmark reaches). Used by bench.sh and bench_instructions.sh.
haproxy_cfg() {
  local port=$1 threads=$2 upstream=$3 limits=$4 bind=${5:-} xfp=${6:-http} pidfile=${7:-}
  local track=""
  [ "$limits" = 1 ] && track="
  http-request track-sc0 req.hdr(x-api-key) table per_api_key
  http-request track-sc1 src table per_ip
  http-request deny deny_status 429 if { sc0_http_req_rate gt 100000000 } || { sc1_http_req_rate gt 100000000 }"
  cat <<CFG
global
  nbthread $threads
  maxconn 4096${pidfile:+
  pidfile $pidfile}

defaults
  mode http
  timeout connect 5s
  timeout client 65s
  timeout server 65s
  timeout http-keep-alive 65s
  option http-keep-alive

# The stick tables: one per limit key, as nginx's two limit_req zones.
backend per_api_key
  stick-table type string len 64 size 100k expire 10s store http_req_rate(1s)
backend per_ip
  stick-table type ip size 100k expire 10s store http_req_rate(1s)

frontend bench
  bind 127.0.0.1:$port${bind:+ $bind}$track
  option forwardfor
  http-request set-header X-Forwarded-Proto $xfp
  default_backend up

backend up
  http-reuse always
  server up $upstream
CFG
}
