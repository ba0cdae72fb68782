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

# nginx_cfg DIR WORKERS MASTER_PROCESS HTTP_BODY
# Prints an nginx configuration for the benchmarks: WORKERS worker processes, `master_process`
# MASTER_PROCESS (on, or off to run the worker alone, as under callgrind), its pid file, error
# log (DIR/logs, which the caller makes) and temporary files in DIR, keep-alive for a million
# requests, and HTTP_BODY inside `http`. Used by bench.sh and bench_instructions.sh.
nginx_cfg() {
  local dir=$1 workers=$2 master=$3 body=$4 user=""
  [ "$(id -u)" -eq 0 ] && user="user root;"
  cat <<CFG
$user
worker_processes $workers;
daemon off;
master_process $master;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 65s;
$body
}
CFG
}

# nginx_proxy_http UPSTREAM LIMITS SERVER_LINES
# Prints the `http` body of the nginx proxy the benchmarks compare tollgate with (for
# nginx_cfg): in front of UPSTREAM (HOST:PORT) with a keep-alive pool, SERVER_LINES first in its
# server (listen and, for TLS, the certificate), and with LIMITS=1 two `limit_req` zones on the
# API key header and the client address (at rates no benchmark reaches), as HAProxy's two
# stick tables (haproxy_cfg).
nginx_proxy_http() {
  local upstream=$1 limits=$2 server=$3 zones="" req=""
  if [ "$limits" = 1 ]; then
    zones='  limit_req_zone $http_x_api_key zone=per_api_key:10m rate=100000000r/s;
  limit_req_zone $binary_remote_addr zone=per_ip:10m rate=100000000r/s;
  limit_req_status 429;
'
    req='
      limit_req zone=per_api_key burst=100000 nodelay;
      limit_req zone=per_ip burst=100000 nodelay;'
  fi
  printf '%s' "$zones"
  cat <<CFG
  upstream up {
    server $upstream;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    $server
    location / {$req
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_pass http://up;
    }
  }
CFG
}
